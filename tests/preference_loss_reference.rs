//! Tests of the preference-loss reference: gradients against finite differences for every loss,
//! known identities, hand-checked values from the spec's formulas, layouts, and bad input.
#![allow(clippy::needless_range_loop)] // tests index several parallel arrays by position
mod common;

use common::{batch, Batch};
use pref_kernels::preference_loss::reference::{forward_backward, forward_backward_weighted, wpo_weights};
use pref_kernels::preference_loss::{BarrierDenominator, FDivergence, Loss, LossConfig, Pairs};
use pref_kernels::seq_reduce::{ReduceMode, SeqLayout, TokenInputs};
use proptest::prelude::*;

fn tok(b: &Batch, weights: bool) -> TokenInputs<'_> {
    TokenInputs {
        logp: &b.logp,
        mask: Some(&b.mask),
        weights: weights.then_some(&b.weights[..]),
        ref_logp: Some(&b.ref_logp),
    }
}

fn run(
    b: &Batch,
    pairs: &Pairs,
    cfg: &LossConfig,
) -> pref_kernels::preference_loss::reference::PreferenceLossRef {
    let needs_ref = cfg.needs_reference();
    let t = TokenInputs { ref_logp: needs_ref.then_some(&b.ref_logp[..]), ..tok(b, true) };
    forward_backward(&t, &SeqLayout::Packed { cu_seqlens: &b.cu_seqlens }, pairs, None, cfg).unwrap()
}

#[path = "common/configs.rs"]
mod configs;
use configs::all_configs;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn every_loss_gradient_matches_finite_differences(b in batch(Just(4usize), 6), explicit in any::<bool>()) {
        let chosen = [0i32, 1, 3];
        let rejected = [2i32, 3, 0];
        let pairs = if explicit { Pairs::Explicit { chosen: &chosen, rejected: &rejected } } else { Pairs::FirstHalfChosen };
        for (name, cfg) in all_configs() {
            let r = run(&b, &pairs, &cfg);
            prop_assert!(r.loss.is_finite(), "{name}: loss {}", r.loss);
            let h = 2e-4f32; // small: ORPO is sharply curved near logp = 0
            for t in 0..b.logp.len() {
                let f = |delta: f32| -> (f64, f32) {
                    let mut x = b.clone();
                    x.logp[t] += delta;
                    (run(&x, &pairs, &cfg).loss, x.logp[t])
                };
                let ((fp, xp), (f0, x0), (fm, xm)) = (f(h), f(0.0), f(-h));
                let ((fp2, xp2), (fm2, xm2)) = (f(h / 2.0), f(-h / 2.0));
                // grad_scale multiplies the gradient (an upstream dL), not the loss.
                let gs = cfg.grad_scale as f64;
                let (step, step2) = (xp as f64 - xm as f64, xp2 as f64 - xm2 as f64);
                let central = gs * (fp - fm) / step;
                let central2 = gs * (fp2 - fm2) / step2;
                // Richardson: central differences err by c·step², so this cancels the step²
                // term where the loss is sharply curved (forward KL's e^{-Δ} under IPO's
                // square). The steps are the f32 ones actually taken, not exactly 2:1.
                let r2 = (step / step2).powi(2);
                let richardson = (r2 * central2 - central) / (r2 - 1.0);
                let right = gs * (fp - f0) / (xp as f64 - x0 as f64);
                let left = gs * (f0 - fm) / (x0 as f64 - xm as f64);
                let g = r.grad_logp[t];
                // A difference of f64 losses carries their rounding, ~|loss|·ε per evaluation
                // (64 ε allows for the ops that produce the loss): forward KL is unclamped, as
                // TRL's, so one pair's loss can reach 1e14 and bury another pair's gradient.
                let noise = 64.0 * f64::EPSILON * gs * fp.abs().max(fm.abs()).max(f0.abs()) / step2;
                let tol = 1e-4 * (1.0 + g.abs()) + noise;
                // At a kink (hinge) or a jump (the TAB-PO gate), one one-sided difference matches.
                let ok = (central - g).abs() < tol
                    || (richardson - g).abs() < tol
                    || (right - g).abs() < 30.0 * tol
                    || (left - g).abs() < 30.0 * tol;
                prop_assert!(ok, "{name}: token {t}: analytic {g}, central {central}, Richardson {richardson}, left {left}, right {right}");
                if b.mask[t] == 0 {
                    prop_assert_eq!(g, 0.0, "{}: masked token {} has gradient", name, t);
                }
            }
        }
    }

    #[test]
    fn packed_and_padded_layouts_give_the_same_results(b in batch(Just(6usize), 7)) {
        let (p, l) = b.padded();
        for (name, cfg) in all_configs() {
            let a = run(&b, &Pairs::FirstHalfChosen, &cfg);
            let t = TokenInputs { ref_logp: cfg.needs_reference().then_some(&p.ref_logp[..]), ..tok(&p, true) };
            let c = forward_backward(&t, &SeqLayout::Padded { n_seqs: 6, seq_len: l }, &Pairs::FirstHalfChosen, None, &cfg).unwrap();
            prop_assert!((a.loss - c.loss).abs() <= 1e-12 * (1.0 + a.loss.abs()), "{}", name);
            prop_assert_eq!(a.metrics, c.metrics, "{}", name);
            for s in 0..6 {
                let (pa, pb) = (b.cu_seqlens[s] as usize, s * l);
                for k in 0..(b.cu_seqlens[s + 1] - b.cu_seqlens[s]) as usize {
                    prop_assert_eq!(a.grad_logp[pa + k], c.grad_logp[pb + k], "{}", name);
                }
            }
        }
    }

    #[test]
    fn swapping_chosen_and_rejected_flips_the_margin(b in batch(Just(2usize), 6)) {
        let (c, r) = ([0i32], [1i32]);
        for cfg in [LossConfig::dpo(0.1), LossConfig::tabpo(), LossConfig::token_weighted_dpo(0.1)] {
            let a = run(&b, &Pairs::Explicit { chosen: &c, rejected: &r }, &cfg);
            let s = run(&b, &Pairs::Explicit { chosen: &r, rejected: &c }, &cfg);
            prop_assert!((a.metrics[5] + s.metrics[5]).abs() < 1e-12);
            prop_assert_eq!(a.metrics[3], s.metrics[4]);
        }
    }

    #[test]
    fn identities_between_losses(b in batch(Just(4usize), 6)) {
        let p = Pairs::FirstHalfChosen;
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * (1.0 + x.abs());
        // Robust with epsilon 0 is sigmoid; sigmoid with smoothing 0 is the plain form.
        let sig = run(&b, &p, &LossConfig::dpo(0.3));
        let rob = run(&b, &p, &LossConfig::single(Loss::Robust { beta: 0.3, label_smoothing: 0.0 }));
        prop_assert!(close(sig.loss, rob.loss));
        prop_assert!(sig.grad_logp.iter().zip(&rob.grad_logp).all(|(x, y)| close(*x, *y)));
        let plain: f64 = sig.pairs.iter().map(|q| {
            let z = q[1] - q[2]; // beta * (delta_c - delta_r)
            (1.0 + (-z).exp()).ln()
        }).sum::<f64>() / 2.0;
        prop_assert!(close(sig.loss, plain));
        // cDPO: (1 - e) DPO(z) + e DPO(-z).
        let c = run(&b, &p, &LossConfig::single(Loss::Sigmoid { beta: 0.3, label_smoothing: 0.2 }));
        let mixed: f64 = sig.pairs.iter().map(|q| {
            let z = q[1] - q[2];
            let e = 0.2f32 as f64; // hyperparameters are f32
            (1.0 - e) * (1.0 + (-z).exp()).ln() + e * (1.0 + z.exp()).ln()
        }).sum::<f64>() / 2.0;
        prop_assert!(close(c.loss, mixed));
        // alpha divergence with alpha = 1 is reverse KL.
        let a1 = run(&b, &p, &LossConfig { divergence: FDivergence::Alpha { alpha: 1.0 }, ..LossConfig::dpo(0.3) });
        prop_assert!(close(a1.loss, sig.loss));
        // TAB-PO with lambda 0 and uniform weights is DPO on mean scores.
        let mut u = b.clone();
        u.weights.iter_mut().for_each(|w| *w = 1.0);
        let tab = run(&u, &p, &LossConfig::single(Loss::TabPo { beta: 0.5, tau: 0.66, lambda: 0.0, barrier: BarrierDenominator::GatedWeightMassClamp1, seq_norm: ReduceMode::WeightedMean }));
        let mean_dpo = run(&u, &p, &LossConfig { aggregation: ReduceMode::Mean, ..LossConfig::dpo(0.5) });
        prop_assert!(close(tab.loss, mean_dpo.loss), "{} vs {}", tab.loss, mean_dpo.loss);
        prop_assert!(tab.grad_logp.iter().zip(&mean_dpo.grad_logp).all(|(x, y)| close(*x, *y)));
        // Combined terms add up.
        let mix = LossConfig { terms: vec![(Loss::dpo(), 0.7), (Loss::Hinge { beta: 0.1 }, 0.3)], ..LossConfig::dpo(0.1) };
        let (m, d, h) = (run(&b, &p, &mix), run(&b, &p, &LossConfig::dpo(0.1)), run(&b, &p, &LossConfig::single(Loss::Hinge { beta: 0.1 })));
        let (w1, w2) = (0.7f32 as f64, 0.3f32 as f64);
        prop_assert!(close(m.loss, w1 * d.loss + w2 * h.loss));
        prop_assert!(m.grad_logp.iter().zip(d.grad_logp.iter().zip(&h.grad_logp)).all(|(x, (y, z))| close(*x, w1 * y + w2 * z)));
    }
}

/// One pair: chosen = tokens [-1, -2] (ref [-1.5, -2]), rejected = [-4] (ref [-3]); weights
/// [1, 3] and [2]. Sums: S_c = -3, S_c^ref = -3.5, S_r = -4, S_r^ref = -3: Δc = 0.5, Δr = -1.
/// Means: S̄c = -1.5, S̄r = -4. Weighted means: (-1 - 6)/4 = -1.75, ref (-1.5 - 6)/4 = -1.875.
#[test]
fn hand_checked_values_from_the_spec_formulas() {
    let logp = [-1.0f32, -2.0, -4.0];
    let ref_logp = [-1.5f32, -2.0, -3.0];
    let weights = [1.0f32, 3.0, 2.0];
    let cu = [0i32, 2, 3];
    let sp = |x: f64| (1.0 + x.exp()).ln();
    let sg = |x: f64| 1.0 / (1.0 + (-x).exp());
    // Hyperparameters are f32: compare with their exact f32 values.
    let f = |v: f32| v as f64;
    let (dc, dr, b) = (0.5f64, -1.0f64, f(0.1));
    let x = b * (dc - dr);
    let run = |cfg: LossConfig, with_ref: bool| {
        let t = TokenInputs {
            logp: &logp,
            mask: None,
            weights: Some(&weights),
            ref_logp: with_ref.then_some(&ref_logp[..]),
        };
        forward_backward(&t, &SeqLayout::Packed { cu_seqlens: &cu }, &Pairs::FirstHalfChosen, None, &cfg)
            .unwrap()
            .loss
    };
    let s = LossConfig::single;
    let q = sg(x);
    let (eps, e1, tau) = (f(1e-3), f(0.1), f(0.05));
    let cases: Vec<(&str, f64, f64)> = vec![
        ("sigmoid", run(s(Loss::Sigmoid { beta: 0.1, label_smoothing: 0.0 }), true), sp(-x)),
        (
            "cdpo",
            run(s(Loss::Sigmoid { beta: 0.1, label_smoothing: 0.1 }), true),
            (1.0 - e1) * sp(-x) + e1 * sp(x),
        ),
        (
            "robust",
            run(s(Loss::Robust { beta: 0.1, label_smoothing: 0.1 }), true),
            ((1.0 - e1) * sp(-x) - e1 * sp(x)) / (1.0 - 2.0 * e1),
        ),
        ("hinge", run(s(Loss::Hinge { beta: 0.1 }), true), 1.0 - x),
        ("ipo", run(s(Loss::Ipo { beta: 0.1 }), true), (0.5 / 2.0 - (-1.0) / 1.0 - 1.0 / (2.0 * b)).powi(2)),
        (
            "exo_pair",
            run(s(Loss::ExoPair { beta: 0.1, epsilon: 1e-3 }), true),
            q * (q.ln() - (1.0 - eps).ln()) + (1.0 - q) * ((1.0 - q).ln() - eps.ln()),
        ),
        (
            "nca_pair",
            run(s(Loss::NcaPair { beta: 0.1 }), true),
            -sg(b * dc).ln() - 0.5 * sg(-b * dc).ln() - 0.5 * sg(-b * dr).ln(),
        ),
        ("bco_pair", run(s(Loss::BcoPair { beta: 0.1 }), true), -sg(b * dc).ln() - sg(-b * dr).ln()),
        (
            "sppo_hard",
            run(s(Loss::SppoHard { beta: 0.1 }), true),
            (dc - 0.5 / b).powi(2) + (dr + 0.5 / b).powi(2),
        ),
        ("apo_zero", run(s(Loss::ApoZero { beta: 0.1 }), true), 1.0 - sg(b * dc) + sg(b * dr)),
        ("apo_down", run(s(Loss::ApoDown { beta: 0.1 }), true), sg(b * dc) + 1.0 - sg(x)),
        (
            "discopop",
            run(s(Loss::DiscoPop { beta: 0.1, tau: 0.05 }), true),
            (1.0 - sg(x / tau)) * sp(-x) + sg(x / tau) * (-x).exp(),
        ),
        ("simpo", run(s(Loss::simpo()), false), sp(-(2.0 * (-1.5 - -4.0) - 0.5))),
        (
            "cpo",
            run(s(Loss::Cpo { beta: 0.1, label_smoothing: 0.0, hinge: false }), false),
            sp(-(b * (-3.0 - -4.0))),
        ),
        ("orpo", run(s(Loss::Orpo { beta: 0.1 }), false), {
            let l1m = |v: f64| (1.0 - v.exp()).ln();
            -b * sg((-1.5 - -4.0) - (l1m(-1.5) - l1m(-4.0))).ln()
        }),
        ("nll", run(s(Loss::Nll), false), 1.5),
        ("tgdpo", run(s(Loss::Tgdpo { beta: 0.1, alpha: 0.5 }), true), {
            // Token weights carry the rewards r̂: chosen u = [0.5, 0], r̂ = [1, 3]; rejected u = [-1], r̂ = [2].
            let (u_c, u_r) = (0.5, -1.0);
            let z = b * (1.0 + 0.5 * b * 1.0) * u_c - b * (1.0 - 0.5 * b * 2.0) * u_r;
            sp(-z)
        }),
        ("tabpo", run(LossConfig::tabpo(), true), {
            // z = (-1.75 - -4) - (-1.875 - -3) = 1.125; gate logp < ln 0.66 = -0.4155: both chosen
            // tokens. w~ = w * 2 / 4 = [0.5, 1.5]; D = max(2, 1) = 2; B = (0.5 * 1 + 1.5 * 2) / 2.
            sp(-0.5 * 1.125) + 0.5 * (0.5 * 1.0 + 1.5 * 2.0) / 2.0
        }),
    ];
    for (name, got, want) in cases {
        assert!((got - want).abs() < 1e-12 * (1.0 + want.abs()), "{name}: got {got}, want {want}");
    }
}

#[test]
fn bad_configurations_and_inputs_are_clear_errors() {
    let logp = [-1.0f32, -2.0, -4.0, -1.0];
    let t = TokenInputs { logp: &logp, mask: None, weights: None, ref_logp: Some(&logp) };
    let cu = [0i32, 2, 3, 4];
    let l = SeqLayout::Packed { cu_seqlens: &cu };
    let err = |cfg: LossConfig, t: &TokenInputs, pairs: Pairs| {
        forward_backward(t, &l, &pairs, None, &cfg).unwrap_err().to_string()
    };
    let fh = Pairs::FirstHalfChosen;
    let ex = Pairs::Explicit { chosen: &[0], rejected: &[1] };
    assert!(err(LossConfig::dpo(0.0), &t, ex).contains("beta"));
    assert!(err(LossConfig::dpo(-1.0), &t, ex).contains("beta"));
    let tab = |tau| {
        LossConfig::single(Loss::TabPo {
            beta: 0.5,
            tau,
            lambda: 0.5,
            barrier: BarrierDenominator::GatedWeightMassClamp1,
            seq_norm: ReduceMode::WeightedMean,
        })
    };
    let tw = TokenInputs { weights: Some(&logp), ..t };
    assert!(err(tab(1.0), &tw, ex).contains("tau"));
    assert!(err(tab(0.0), &tw, ex).contains("tau"));
    assert!(err(LossConfig::single(Loss::Sigmoid { beta: 0.1, label_smoothing: 0.5 }), &t, ex)
        .contains("label_smoothing"));
    assert!(err(LossConfig::single(Loss::ExoPair { beta: 0.1, epsilon: 0.0 }), &t, ex).contains("epsilon"));
    assert!(err(LossConfig::dpo(0.1), &t, fh).contains("even"));
    assert!(err(LossConfig::dpo(0.1), &t, Pairs::Explicit { chosen: &[0], rejected: &[3] })
        .contains("out of range"));
    assert!(err(LossConfig::dpo(0.1), &t, Pairs::Explicit { chosen: &[0, 1], rejected: &[2] })
        .contains("lengths differ"));
    let noref = TokenInputs { ref_logp: None, ..t };
    assert!(err(LossConfig::dpo(0.1), &noref, ex).contains("reference"));
    assert!(err(LossConfig::tabpo(), &t, ex).contains("weights"));
    let short = [-1.0f32; 3];
    assert!(err(LossConfig::dpo(0.1), &TokenInputs { ref_logp: Some(&short), ..t }, ex).contains("ref_logp"));
    let both =
        forward_backward(&t, &l, &ex, Some(&[0.0, 0.0, 0.0]), &LossConfig::dpo(0.1)).unwrap_err().to_string();
    assert!(both.contains("not both"));
    let five = LossConfig { terms: vec![(Loss::dpo(), 1.0); 5], ..LossConfig::dpo(0.1) };
    assert!(err(five, &t, ex).contains("terms"));
}

#[test]
fn per_sequence_reference_equals_per_token_sums() {
    let logp = [-1.0f32, -2.0, -4.0, -0.5];
    let ref_logp = [-1.5f32, -2.0, -3.0, -0.25];
    let cu = [0i32, 2, 3, 4];
    let l = SeqLayout::Packed { cu_seqlens: &cu };
    let p = Pairs::Explicit { chosen: &[0, 2], rejected: &[1, 1] };
    let a = forward_backward(
        &TokenInputs { logp: &logp, mask: None, weights: None, ref_logp: Some(&ref_logp) },
        &l,
        &p,
        None,
        &LossConfig::dpo(0.2),
    )
    .unwrap();
    let b = forward_backward(
        &TokenInputs { logp: &logp, mask: None, weights: None, ref_logp: None },
        &l,
        &p,
        Some(&[-3.5, -3.0, -0.25]),
        &LossConfig::dpo(0.2),
    )
    .unwrap();
    assert_eq!(a, b);
    // Sequence 1 is rejected in both pairs: its gradient is the sum of the two pairs' terms.
    assert!(a.grad_logp[2] > 0.0);
}

/// WPO: every pair's loss times the detached w_c w_r, the NLL term times their mean; the
/// weights are TRL's exp(mean over the mask of logp - log sum p^2).
#[test]
fn wpo_weights_scale_each_pair_and_the_nll() {
    let logp = [-1.0f32, -2.0, -4.0, -0.5, -3.0, -1.5];
    let ref_logp = [-1.5f32, -2.0, -3.0, -0.25, -2.0, -1.0];
    let lss = [-0.7f32, -1.1, -2.0, -0.3, -0.9, -1.2];
    let mask = [1u8, 1, 1, 0, 1, 1];
    let cu = [0i32, 2, 4, 5, 6];
    let l = SeqLayout::Packed { cu_seqlens: &cu };
    let t = TokenInputs { logp: &logp, mask: Some(&mask), weights: None, ref_logp: Some(&ref_logp) };
    let w = wpo_weights(&t, &lss, &l).unwrap();
    let want_w0 = (((-1.0f64 - -0.7) + (-2.0 - -1.1)) / 2.0).exp();
    assert!((w[0] - want_w0).abs() < 1e-7, "{} vs {want_w0}", w[0]);
    assert!((w[1] - ((-4.0f64 - -2.0) / 1.0).exp()).abs() < 1e-7); // the masked token is not counted
    let wf: Vec<f32> = w.iter().map(|&x| x as f32).collect();
    let cfg = LossConfig { terms: vec![(Loss::dpo(), 1.0), (Loss::Nll, 0.5)], ..LossConfig::dpo(0.1) };
    let p = Pairs::FirstHalfChosen;
    let plain = forward_backward(&t, &l, &p, None, &cfg).unwrap();
    let got = forward_backward_weighted(&t, &l, &p, None, Some(&wf), &cfg).unwrap();
    let om: Vec<f64> = (0..2).map(|i| wf[i] as f64 * wf[i + 2] as f64).collect();
    let mean_om = (om[0] + om[1]) / 2.0;
    let dpo: f64 = (0..2).map(|i| om[i] * plain.pairs[i][0]).sum::<f64>() / 2.0;
    // plain.pairs[i][0] holds w_dpo * phi_dpo only (the NLL is a batch term).
    let want = dpo + 0.5 * mean_om * plain.metrics[2];
    assert!((got.loss - want).abs() < 1e-12, "{} vs {want}", got.loss);
    for i in 0..2 {
        assert!((got.pairs[i][0] - om[i] * plain.pairs[i][0]).abs() < 1e-12);
        assert_eq!(got.pairs[i][1..5], plain.pairs[i][1..5], "rewards and scores are not weighted");
    }
    // The gradient: finite differences with the weights held (TRL detaches them).
    for k in 0..logp.len() {
        let f = |d: f32| {
            let mut x = logp;
            x[k] += d;
            let tk = TokenInputs { logp: &x, ..t };
            forward_backward_weighted(&tk, &l, &p, None, Some(&wf), &cfg).unwrap().loss
        };
        let g = (f(1e-3) - f(-1e-3)) / (((logp[k] + 1e-3) - (logp[k] - 1e-3)) as f64);
        assert!((got.grad_logp[k] - g).abs() < 1e-6, "token {k}: {} vs {g}", got.grad_logp[k]);
    }
    // AOT sorts samples: WPO weights are refused, as TRL.
    let aot = LossConfig::single(Loss::Aot { beta: 0.1, label_smoothing: 0.0 });
    let e = forward_backward_weighted(&t, &l, &p, None, Some(&wf), &aot).unwrap_err().to_string();
    assert!(e.contains("aot"), "{e}");
}

/// LD-DPO: the first min(N_c, N_r) completion tokens weigh 1, the longer side's rest alpha.
#[test]
fn ld_weights_weigh_the_tail_past_the_shorter_side() {
    use pref_kernels::preference_loss::ld_weights;
    // Two pairs over padded rows of 4: chosen 0 (3 tokens), 1 (1 token); rejected 2 (2), 3 (4).
    let mask = [0u8, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1];
    let l = SeqLayout::Padded { n_seqs: 4, seq_len: 4 };
    let w = ld_weights(&l, Some(&mask), &Pairs::FirstHalfChosen, 0.5).unwrap();
    assert_eq!(
        w,
        [0.0, 1.0, 1.0, 0.5, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5],
        "pair 0 shares 2 tokens, pair 1 one"
    );
    // With these weights, weighted-sum DPO scores shared + alpha * tail for policy and reference.
    let logp: Vec<f32> = (0..16).map(|i| -0.1 * (i + 1) as f32).collect();
    let ref_logp: Vec<f32> = logp.iter().map(|x| x * 0.9).collect();
    let t = TokenInputs { logp: &logp, mask: Some(&mask), weights: Some(&w), ref_logp: Some(&ref_logp) };
    let cfg = LossConfig { aggregation: ReduceMode::WeightedSum, ..LossConfig::dpo(0.1) };
    let r = forward_backward(&t, &l, &Pairs::FirstHalfChosen, None, &cfg).unwrap();
    let chosen0 = (logp[1] + logp[2]) as f64 + 0.5 * logp[3] as f64;
    assert!((r.pairs[0][3] - chosen0).abs() < 1e-6, "{} vs {chosen0}", r.pairs[0][3]);
    let e = ld_weights(&l, Some(&mask), &Pairs::Explicit { chosen: &[0, 0], rejected: &[1, 2] }, 0.5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than one pair"), "{e}");
}
