//! Fidelity of the f64 loss reference to TRL and the official codes at the edges: gradients at
//! extreme margins against exact values (formed from exp of a negative argument only), IPO with
//! an f-divergence (TRL's full transforms, whose constants survive the per-side length
//! normalization), combinations TRL refuses, TAB-PO's logged metrics, the clamps that used to
//! change results, and empty sequences. The kernels are held to the same cases in tests/gpu.
use pref_kernels::preference_loss::reference::{forward_backward, PreferenceLossRef};
use pref_kernels::preference_loss::{FDivergence, Loss, LossConfig, Pairs};
use pref_kernels::seq_reduce::{SeqLayout, TokenInputs};

/// σ'(u) = e^{-|u|} / (1 + e^{-|u|})^2: exact in f64 for any |u| (no 1 - σ cancellation).
fn sigmoid_prime(u: f64) -> f64 {
    let e = (-u.abs()).exp();
    e / ((1.0 + e) * (1.0 + e))
}
fn sigmoid(u: f64) -> f64 {
    if u >= 0.0 {
        1.0 / (1.0 + (-u).exp())
    } else {
        u.exp() / (1.0 + u.exp())
    }
}
fn softplus(u: f64) -> f64 {
    u.max(0.0) + (-u.abs()).exp().ln_1p()
}

/// One pair of one-token sequences with log-ratios `dc`, `dr` (policy log-prob -1 on each).
fn one_pair(dc: f64, dr: f64, cfg: &LossConfig) -> PreferenceLossRef {
    let logp = [-1.0f32, -1.0];
    let ref_logp = [(-1.0 - dc) as f32, (-1.0 - dr) as f32];
    assert_eq!(-1.0 - ref_logp[0] as f64, dc, "dc must be exact in f32");
    assert_eq!(-1.0 - ref_logp[1] as f64, dr, "dr must be exact in f32");
    let tokens = TokenInputs { logp: &logp, mask: None, weights: None, ref_logp: Some(&ref_logp) };
    forward_backward(
        &tokens,
        &SeqLayout::Padded { n_seqs: 2, seq_len: 1 },
        &Pairs::FirstHalfChosen,
        None,
        cfg,
    )
    .unwrap()
}

fn close(what: &str, got: f64, want: f64, rtol: f64) {
    assert!(
        (got - want).abs() <= rtol * want.abs() || got == want,
        "{what}: got {got:e}, want {want:e} (rel err {:e})",
        ((got - want) / want).abs()
    );
    assert!(want != 0.0, "{what}: the exact value underflowed; pick a smaller margin");
}

#[test]
fn gradients_stay_exact_at_extreme_margins() {
    let beta = 0.1f32 as f64; // the configs hold f32 hyperparameters
    for target in [20.0f64, 30.0, 40.0, 60.0, 100.0, -40.0, -100.0] {
        // u = beta * dc for apo_zero / apo_down's chosen term; x = beta (dc - dr) = u for the margin losses.
        let dc = (target * 10.0).round();
        let u = beta * dc;
        let apo_zero = one_pair(dc, 0.0, &LossConfig::single(Loss::ApoZero { beta: 0.1 }));
        close(&format!("apo_zero u={u}"), apo_zero.grad_logp[0], -beta * sigmoid_prime(u), 1e-12);

        // apo_down: x = beta (dc - dr), dr = 50; d/d dc = beta sigma'(beta dc) - beta sigma'(x), d/d dr = beta sigma'(x).
        let apo_down = one_pair(dc, 50.0, &LossConfig::single(Loss::ApoDown { beta: 0.1 }));
        let x = beta * (dc - 50.0);
        close(
            &format!("apo_down chosen u={u}"),
            apo_down.grad_logp[0],
            beta * sigmoid_prime(u) - beta * sigmoid_prime(x),
            1e-9,
        );
        close(&format!("apo_down rejected u={u}"), apo_down.grad_logp[1], beta * sigmoid_prime(x), 1e-12);

        let exo = one_pair(dc, 0.0, &LossConfig::single(Loss::ExoPair { beta: 0.1, epsilon: 1e-3 }));
        let eps32 = 1e-3f32 as f64;
        let want = beta * sigmoid_prime(u) * (u - ((1.0 - eps32) / eps32).ln());
        close(&format!("exo_pair u={u}"), exo.grad_logp[0], want, 1e-12);

        let tau = 0.05f32 as f64;
        let dp = one_pair(dc, 0.0, &LossConfig::single(Loss::DiscoPop { beta: 0.1, tau: 0.05 }));
        let e = (-u).exp();
        let want = beta
            * (sigmoid_prime(u / tau) / tau * (e - softplus(-u))
                - sigmoid(-u / tau) * sigmoid(-u)
                - sigmoid(u / tau) * e);
        close(&format!("discopop u={u}"), dp.grad_logp[0], want, 1e-12);
    }
}

#[test]
fn ipo_with_an_f_divergence_uses_trls_full_transforms() {
    // Chosen 2 tokens, rejected 3: the transforms' constants times (1/2 - 1/3) stay in the loss.
    let logp = [-0.5f32, -1.25, -0.75, -2.0, -0.5];
    let ref_logp = [-1.0f32, -1.0, -1.5, -1.0, -0.25];
    let tokens = TokenInputs { logp: &logp, mask: None, weights: None, ref_logp: Some(&ref_logp) };
    let layout_cu = [0i32, 2, 5];
    let layout = SeqLayout::Packed { cu_seqlens: &layout_cu };
    let dc: f64 = (0..2).map(|t| logp[t] as f64 - ref_logp[t] as f64).sum();
    let dr: f64 = (2..5).map(|t| logp[t] as f64 - ref_logp[t] as f64).sum();
    let beta = 0.3f32 as f64;
    let alpha = 0.5f32 as f64;
    for (div, psi) in [
        (FDivergence::ForwardKl, Box::new(|d: f64| 1.0 - (-d).exp()) as Box<dyn Fn(f64) -> f64>),
        (FDivergence::JensenShannon, Box::new(|d: f64| std::f64::consts::LN_2 - softplus(-d))),
        (
            FDivergence::Alpha { alpha: 0.5 },
            Box::new(move |d: f64| (((alpha - 1.0) * d).exp() - 1.0) / (alpha - 1.0)),
        ),
    ] {
        let cfg = LossConfig { divergence: div, ..LossConfig::single(Loss::Ipo { beta: 0.3 }) };
        let r = forward_backward(&tokens, &layout, &Pairs::FirstHalfChosen, None, &cfg).unwrap();
        let h = psi(dc) / 2.0 - psi(dr) / 3.0 - 1.0 / (2.0 * beta);
        close(&format!("IPO + {div:?}"), r.loss, h * h, 1e-12);
    }
}

#[test]
fn f_divergences_trl_refuses_are_refused() {
    for loss in [
        Loss::NcaPair { beta: 0.1 },
        Loss::BcoPair { beta: 0.1 },
        Loss::SppoHard { beta: 0.1 },
        Loss::ApoZero { beta: 0.1 },
        Loss::ApoDown { beta: 0.1 },
        Loss::Aot { beta: 0.1, label_smoothing: 0.0 },
        Loss::AotUnpaired { beta: 0.1, label_smoothing: 0.0 },
    ] {
        for div in [FDivergence::ForwardKl, FDivergence::JensenShannon, FDivergence::Alpha { alpha: 0.5 }] {
            let cfg = LossConfig { divergence: div, ..LossConfig::single(loss) };
            let e = cfg.validate(pref_kernels::preference_loss::RefSource::PerToken).unwrap_err().to_string();
            assert!(e.contains("supports only the reverse-KL f-divergence"), "{e}");
            assert!(e.contains(&format!("{div:?}")), "{e}");
        }
        LossConfig::single(loss).validate(pref_kernels::preference_loss::RefSource::PerToken).unwrap();
    }
}

#[test]
fn tabpo_logs_the_official_metrics() {
    // Two pairs of 3-token sequences, some chosen tokens under the confidence gate (p < 0.66).
    let logp = [-0.1f32, -2.0, -0.9, -1.5, -0.2, -0.05, -0.7, -1.1, -0.3, -2.5, -0.6, -0.4];
    let ref_logp = [-0.3f32, -1.5, -1.0, -1.0, -0.4, -0.1, -0.5, -1.0, -0.2, -2.0, -0.9, -0.5];
    let weights = [1.0f32, 1.5, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
    let tokens = TokenInputs { logp: &logp, mask: None, weights: Some(&weights), ref_logp: Some(&ref_logp) };
    let cfg = LossConfig::tabpo();
    let r = forward_backward(
        &tokens,
        &SeqLayout::Padded { n_seqs: 4, seq_len: 3 },
        &Pairs::FirstHalfChosen,
        None,
        &cfg,
    )
    .unwrap();
    let (lambda, beta) = (0.5f64, 0.5f32 as f64);
    let names = pref_kernels::preference_loss::METRIC_NAMES;
    let metric = |n: &str| r.metrics[names.iter().position(|m| *m == n).unwrap()];
    // Official: loss/dpo (our loss/pref) = mean(-logsigmoid(beta z)); loss/barrier = mean(B) * lambda.
    let pref: f64 = r.pairs.iter().map(|p| softplus(-(p[1] - p[2]))).sum::<f64>() / 2.0;
    let barrier: f64 = r.pairs.iter().map(|p| p[5]).sum::<f64>() / 2.0 * lambda;
    assert!(barrier > 0.0, "the test batch must exercise the barrier");
    close("loss/pref", metric("loss/pref"), pref, 1e-12);
    close("loss/barrier", metric("loss/barrier"), barrier, 1e-12);
    close("loss", r.loss, pref + barrier, 1e-12);
    let _ = beta;
}

#[test]
fn no_clamp_changes_a_finite_result() {
    // Forward KL at -d = 85 (beyond the old clamp at 80): psi = 1 - e^85 exactly.
    let cfg =
        LossConfig { divergence: FDivergence::ForwardKl, ..LossConfig::single(Loss::Ipo { beta: 0.5 }) };
    let r = one_pair(-85.0, 0.0, &cfg);
    let h = (1.0 - 85f64.exp()) - 0.0 - 1.0;
    close("IPO + forward KL at d = -85", r.loss, h * h, 1e-12);
    // ORPO at a mean log-prob of -2e-7 (above the old clamp at -1e-6): exact odds ratio gradient.
    let (lc, lr) = (-2e-7f32, -0.5f32);
    let logp = [lc, lr];
    let tokens = TokenInputs { logp: &logp, mask: None, weights: None, ref_logp: None };
    let cfg = LossConfig::single(Loss::Orpo { beta: 0.1 });
    let r = forward_backward(
        &tokens,
        &SeqLayout::Padded { n_seqs: 2, seq_len: 1 },
        &Pairs::FirstHalfChosen,
        None,
        &cfg,
    )
    .unwrap();
    let (xc, xr) = (lc as f64, lr as f64);
    let lo = (xc - xr) - ((-xc.exp_m1()).ln() - (-xr.exp_m1()).ln());
    let beta = 0.1f32 as f64;
    close("ORPO loss", r.loss, beta * softplus(-lo), 1e-12);
    close("ORPO chosen gradient", r.grad_logp[0], -beta * sigmoid(-lo) / -xc.exp_m1(), 1e-12);
    // DiscoPOP at x = -90 (beyond the old clamp at -80).
    let r = one_pair(-900.0, 0.0, &LossConfig::single(Loss::DiscoPop { beta: 0.1, tau: 0.05 }));
    let x = 0.1f32 as f64 * -900.0;
    let tau = 0.05f32 as f64;
    close(
        "discopop at x = -90",
        r.loss,
        sigmoid(-x / tau) * softplus(-x) + sigmoid(x / tau) * (-x).exp(),
        1e-12,
    );
}

#[test]
fn empty_sequences_score_zero_for_simpo_cpo_orpo() {
    // Chosen sequence empty (all masked); the originals divide by its length 0 (NaN).
    let logp = [-0.4f32, -0.9, -1.2, -0.3];
    let mask = [0u8, 0, 1, 1];
    let tokens = TokenInputs { logp: &logp, mask: Some(&mask), weights: None, ref_logp: None };
    let layout = SeqLayout::Padded { n_seqs: 2, seq_len: 2 };
    let sr = (-1.2f32 as f64 + -0.3f32 as f64) / 2.0; // SimPO and ORPO: mean scores
    let sr_sum = -1.2f32 as f64 + -0.3f32 as f64; // CPO: summed, as TRL
    for (name, cfg, want) in [
        (
            "simpo",
            LossConfig::single(Loss::SimPo { beta: 2.0, gamma: 0.5, label_smoothing: 0.0, hinge: false }),
            softplus(-(2.0 * (0.0 - sr) - 0.5)),
        ),
        (
            "cpo",
            LossConfig::single(Loss::Cpo { beta: 0.1, label_smoothing: 0.0, hinge: false }),
            softplus(-(0.1f32 as f64 * (0.0 - sr_sum))),
        ),
        ("orpo", LossConfig::single(Loss::Orpo { beta: 0.1 }), 0.0),
    ] {
        let r = forward_backward(&tokens, &layout, &Pairs::FirstHalfChosen, None, &cfg).unwrap();
        assert!(r.loss.is_finite() && r.grad_logp.iter().all(|g| g.is_finite()), "{name}");
        assert!((r.loss - want).abs() <= 1e-12 * (1.0 + want.abs()), "{name}: loss {} want {want}", r.loss);
        assert_eq!(&r.grad_logp[..2], &[0.0, 0.0], "{name}: masked tokens");
    }
}
