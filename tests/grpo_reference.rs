//! The f64 reference of the GRPO family: finite differences for every loss type and option,
//! hand-checked values, identities, bad input.
#![allow(clippy::needless_range_loop)] // tests index several parallel arrays by position
use pref_kernels::grpo::reference::{grpo_loss, quantile_f32, GrpoTokens};
use pref_kernels::grpo::{GrpoConfig, GrpoLossType, ImportanceLevel};
use pref_kernels::seq_reduce::SeqLayout;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

struct Batch {
    logp: Vec<f32>,
    old: Vec<f32>,
    sampling: Vec<f32>,
    reference: Vec<f32>,
    mask: Vec<u8>,
    isw: Vec<f32>,
    entropy: Vec<f32>,
    adv: Vec<f32>,
    cu: Vec<i32>,
}

fn batch(seed: u64) -> Batch {
    let mut r = StdRng::seed_from_u64(seed);
    let lens = [5usize, 0, 9, 1, 7, 6];
    let mut cu = vec![0i32];
    for l in lens {
        cu.push(cu.last().unwrap() + l as i32);
    }
    let t = *cu.last().unwrap() as usize;
    let logp: Vec<f32> = (0..t).map(|_| r.random_range(-4.0f32..-0.05)).collect();
    Batch {
        old: logp.iter().map(|&l| l + r.random_range(-0.5f32..0.5)).collect(),
        sampling: logp.iter().map(|&l| l + r.random_range(-0.45f32..0.5)).collect(),
        reference: logp.iter().map(|&l| l + r.random_range(-0.4f32..0.4)).collect(),
        mask: (0..t).map(|i| u8::from(i % 4 != 2)).collect(),
        isw: (0..t).map(|_| r.random_range(0.5f32..1.5)).collect(),
        entropy: (0..t).map(|_| r.random_range(0.1f32..4.0)).collect(),
        adv: (0..lens.len())
            .map(|s| if s % 2 == 0 { r.random_range(0.2f32..1.5) } else { -r.random_range(0.2f32..1.5) })
            .collect(),
        logp,
        cu,
    }
}

fn configs() -> Vec<(String, GrpoConfig, bool, bool)> {
    // (name, config, off-policy, vLLM weights)
    let types = [
        ("grpo", GrpoLossType::Grpo),
        ("bnpo", GrpoLossType::Bnpo),
        ("dr_grpo", GrpoLossType::DrGrpo { max_completion_length: 12 }),
        ("dapo", GrpoLossType::Dapo { normalizer: None }),
        ("dapo_global", GrpoLossType::Dapo { normalizer: Some(57.0) }),
        ("cispo", GrpoLossType::Cispo { normalizer: None }),
        ("sapo", GrpoLossType::Sapo { tau_pos: 1.0, tau_neg: 1.05 }),
        ("luspo", GrpoLossType::Luspo),
        ("vespo", GrpoLossType::vespo(None)),
        (
            "vespo_global",
            GrpoLossType::Vespo {
                normalizer: Some(41.0),
                k_pos: 1.5,
                lambda_pos: 2.5,
                k_neg: 2.5,
                lambda_neg: 1.5,
            },
        ),
    ];
    let mut out = vec![];
    for (name, lt) in types {
        for level in [ImportanceLevel::Token, ImportanceLevel::Sequence] {
            let base = GrpoConfig { importance: level, ..GrpoConfig::with_loss_type(lt) };
            let tag = format!("{name}/{level:?}");
            out.push((format!("{tag}/plain"), base, true, false));
            out.push((format!("{tag}/on_policy"), base, false, false));
            out.push((
                format!("{tag}/delta_eps_high"),
                GrpoConfig { delta: Some(1.6), epsilon_high: 0.28, ..base },
                true,
                true,
            ));
            out.push((
                format!("{tag}/kl"),
                GrpoConfig { beta: 0.04, bias_corrected_kl: false, ..base },
                true,
                false,
            ));
            out.push((
                format!("{tag}/kl_bias_corrected"),
                GrpoConfig { beta: 0.1, bias_corrected_kl: true, ..base },
                true,
                true,
            ));
            out.push((
                format!("{tag}/entropy_bonus_and_mask"),
                GrpoConfig { entropy_coef: 0.01, top_entropy_quantile: 0.6, grad_scale: 0.5, ..base },
                true,
                true,
            ));
            // With vLLM weights the off-policy mask reads the sampling log-probs (tokens()).
            let off_policy = GrpoConfig {
                off_policy_mask_threshold: Some(0.02),
                accumulation_steps: 3,
                entropy_coef: 0.02,
                ..base
            };
            out.push((format!("{tag}/off_policy_mask_accumulation"), off_policy, true, false));
            out.push((format!("{tag}/off_policy_mask_sampling"), off_policy, true, true));
        }
    }
    out
}

fn is_vespo(cfg: &GrpoConfig) -> bool {
    matches!(cfg.loss_type, GrpoLossType::Vespo { .. })
}

fn tokens<'a>(b: &'a Batch, logp: &'a [f32], entropy: &'a [f32], off: bool, isw: bool) -> GrpoTokens<'a> {
    GrpoTokens {
        logp,
        old_logp: off.then_some(&b.old[..]),
        sampling_logp: isw.then_some(&b.sampling[..]),
        ref_logp: Some(&b.reference),
        mask: Some(&b.mask),
        is_weights: isw.then_some(&b.isw[..]),
        entropy: Some(entropy),
    }
}

/// Central difference with the exact f32 step as the denominator.
fn fd(x: f32, h: f32, f: impl Fn(f32) -> f64) -> f64 {
    let (xp, xm) = (x + h, x - h);
    (f(xp) - f(xm)) / (xp as f64 - xm as f64)
}

#[test]
fn grpo_gradients_match_finite_differences_for_every_loss_type_and_option() {
    let b = batch(11);
    let layout = SeqLayout::Packed { cu_seqlens: &b.cu };
    let h = 1e-3f32;
    for (name, cfg, off, isw) in configs() {
        // VESPO's phi is detached (TRL's no_grad): its gradient is not that of the loss when phi's
        // log-ratio moves, so the differenced function moves old_logp with logp (phi fixed); the
        // bias-corrected KL's ratio would then stand still too, so that pairing is left to the
        // hand-checked values and the TRL comparison.
        if is_vespo(&cfg) && cfg.beta != 0.0 && cfg.bias_corrected_kl {
            continue;
        }
        let want = grpo_loss(&tokens(&b, &b.logp, &b.entropy, off, isw), &layout, &b.adv, &cfg).unwrap();
        assert!(want.loss.is_finite(), "{name}");
        // Kinks (clip bounds, the delta cap, the entropy threshold) are skipped: finite differences
        // do not apply there.
        let near_kink = |t: usize| {
            let s =
                (0..b.cu.len() - 1).find(|&s| (b.cu[s] as usize..b.cu[s + 1] as usize).contains(&t)).unwrap();
            let rho = if !off {
                1.0
            } else if cfg.importance == ImportanceLevel::Token {
                ((b.logp[t] - b.old[t]) as f64).exp()
            } else {
                let ts: Vec<usize> =
                    (b.cu[s] as usize..b.cu[s + 1] as usize).filter(|&u| b.mask[u] != 0).collect();
                (ts.iter().map(|&u| (b.logp[u] - b.old[u]) as f64).sum::<f64>() / ts.len().max(1) as f64)
                    .exp()
            };
            let bounds = [
                1.0 - cfg.epsilon_low as f64,
                1.0 + cfg.epsilon_high as f64,
                cfg.delta.unwrap_or(99.0) as f64,
            ];
            // The off-policy mask switches where a sequence's mean KL crosses the threshold.
            let near_gate = cfg.off_policy_mask_threshold.is_some_and(|thr| {
                let samp = if isw {
                    &b.sampling
                } else if off {
                    &b.old
                } else {
                    &b.logp
                };
                let ts: Vec<usize> =
                    (b.cu[s] as usize..b.cu[s + 1] as usize).filter(|&u| b.mask[u] != 0).collect();
                let kl =
                    ts.iter().map(|&u| (samp[u] - b.logp[u]) as f64).sum::<f64>() / ts.len().max(1) as f64;
                (kl - thr as f64).abs() < 0.01
            });
            bounds.iter().any(|&x| (rho - x).abs() < 0.02)
                || (b.entropy[t] as f64 - want.entropy_threshold).abs() < 0.01
                || near_gate
        };
        let mut checked = 0;
        for t in 0..b.logp.len() {
            // On-policy (old = logp.detach()) has the gradient of the loss with old held at the
            // current logp: that is the function differenced.
            let f = |x: f32| {
                let mut l = b.logp.clone();
                l[t] = x;
                let mut old = if off { b.old.clone() } else { b.logp.clone() };
                if is_vespo(&cfg) {
                    old[t] += x - b.logp[t];
                }
                let mut tk = tokens(&b, &l, &b.entropy, off, isw);
                tk.old_logp = Some(&old);
                if !off && !isw {
                    // on-policy: the off-policy mask reads old = logp.detach(), held too
                    tk.sampling_logp = Some(&b.logp);
                }
                grpo_loss(&tk, &layout, &b.adv, &cfg).unwrap().loss
            };
            let g = fd(b.logp[t], h, f) * cfg.grad_scale as f64;
            let fe = |x: f32| {
                let mut e = b.entropy.clone();
                e[t] = x;
                grpo_loss(&tokens(&b, &b.logp, &e, off, isw), &layout, &b.adv, &cfg).unwrap().loss
            };
            let ge = fd(b.entropy[t], h, fe) * cfg.grad_scale as f64;
            // At the sequence level every token's ratio moves with any token: skip the whole
            // sequence when its ratio sits at a kink.
            if near_kink(t) {
                continue;
            }
            checked += 1;
            let tol = 2e-5 + 1e-4 * g.abs();
            assert!(
                (want.grad_logp[t] - g).abs() <= tol,
                "{name}: dL/dlogp[{t}] = {} vs fd {g}",
                want.grad_logp[t]
            );
            assert!(
                (want.grad_entropy[t] - ge).abs() <= 2e-5 + 1e-4 * ge.abs(),
                "{name}: dL/dH[{t}] = {} vs fd {ge}",
                want.grad_entropy[t]
            );
            if b.mask[t] == 0 {
                assert_eq!((want.grad_logp[t], want.grad_entropy[t]), (0.0, 0.0), "{name}: masked token {t}");
            }
        }
        assert!(checked >= b.logp.len() / 2, "{name}: only {checked} tokens away from kinks");
    }
}

#[test]
fn grpo_hand_checked_values_and_identities() {
    // One completion, two tokens, A = 1, eps 0.2, dapo (local count 2): ratios e^0.5 (clipped
    // high: -1.2, no gradient) and e^-0.1 (unclipped: -0.904837, gradient -0.904837 / 2).
    let logp = [-1.0f32, -2.0];
    let old = [-1.5f32, -1.9];
    let cu = [0i32, 2];
    let t = GrpoTokens {
        logp: &logp,
        old_logp: Some(&old),
        sampling_logp: None,
        ref_logp: None,
        mask: None,
        is_weights: None,
        entropy: None,
    };
    let out = grpo_loss(&t, &SeqLayout::Packed { cu_seqlens: &cu }, &[1.0], &GrpoConfig::trl()).unwrap();
    let r1 = (-0.1f32 as f64).exp();
    assert!((out.loss - (-1.2 - r1) / 2.0).abs() < 1e-6, "{}", out.loss);
    assert!(
        out.grad_logp[0].abs() < 1e-12 && (out.grad_logp[1] + r1 / 2.0).abs() < 1e-6,
        "{:?}",
        out.grad_logp
    );
    assert_eq!(out.metrics[4], 0.5); // clip_ratio/high_mean: one of two tokens

    // On-policy, beta 0: grpo's gradient is that of -mean_s(mean_t A_s logp_t); dapo's of
    // -sum A logp / N. The loss value is -mean_s A_s (ratio 1).
    let b = batch(5);
    let layout = SeqLayout::Packed { cu_seqlens: &b.cu };
    let tk = GrpoTokens { old_logp: None, is_weights: None, ..tokens(&b, &b.logp, &b.entropy, false, false) };
    let n_seqs = b.cu.len() - 1;
    let counts: Vec<f64> = (0..n_seqs)
        .map(|s| (b.cu[s] as usize..b.cu[s + 1] as usize).filter(|&u| b.mask[u] != 0).count() as f64)
        .collect();
    let grpo = grpo_loss(&tk, &layout, &b.adv, &GrpoConfig::with_loss_type(GrpoLossType::Grpo)).unwrap();
    let dapo = grpo_loss(&tk, &layout, &b.adv, &GrpoConfig::trl()).unwrap();
    let total: f64 = counts.iter().sum();
    let mean_a: f64 =
        (0..n_seqs).filter(|&s| counts[s] > 0.0).map(|s| b.adv[s] as f64).sum::<f64>() / n_seqs as f64;
    assert!((grpo.loss + mean_a).abs() < 1e-9, "{} vs {}", grpo.loss, -mean_a);
    for s in 0..n_seqs {
        for u in b.cu[s] as usize..b.cu[s + 1] as usize {
            let m = b.mask[u] as f64;
            let want = -(b.adv[s] as f64) * m / (n_seqs as f64 * counts[s].max(1.0));
            assert!((grpo.grad_logp[u] - want).abs() < 1e-12, "grpo token {u}");
            assert!((dapo.grad_logp[u] + b.adv[s] as f64 * m / total).abs() < 1e-12, "dapo token {u}");
        }
    }
    // Bias-corrected KL uses the raw ratio, uncapped by delta (TRL multiplies before the cap):
    // ratio 2, k3 = e^-1, A = 0: loss = beta * 2 k3, d/dlogp = beta * 2 (dk3 + k3) = 2 beta.
    let (l, o, r) = ([0.0f32], [-(2.0f32.ln())], [-1.0f32]);
    let t = GrpoTokens {
        logp: &l,
        old_logp: Some(&o),
        sampling_logp: None,
        ref_logp: Some(&r),
        mask: None,
        is_weights: None,
        entropy: None,
    };
    let cfg = GrpoConfig { delta: Some(1.5), beta: 0.1, bias_corrected_kl: true, ..GrpoConfig::trl() };
    let out = grpo_loss(&t, &SeqLayout::Packed { cu_seqlens: &[0, 1] }, &[0.0], &cfg).unwrap();
    let rho = (o[0] as f64).exp().recip();
    assert!((out.loss - 0.1 * rho * (-1.0f64).exp()).abs() < 1e-7, "{}", out.loss);
    assert!((out.grad_logp[0] - 0.1 * rho).abs() < 1e-7, "{}", out.grad_logp[0]);
    // GSPO clip metrics count sequences, not tokens (TRL's (B, 1) ratios): one short clipped
    // sequence of two is 0.5, however long the other.
    let l = [-1.0f32; 10];
    let mut o = [-1.0f32; 10];
    o[0] = -1.0 + 2.0f32.ln(); // ratio 0.5
    let t = GrpoTokens {
        logp: &l,
        old_logp: Some(&o),
        sampling_logp: None,
        ref_logp: None,
        mask: None,
        is_weights: None,
        entropy: None,
    };
    let cfg = GrpoConfig { importance: ImportanceLevel::Sequence, ..GrpoConfig::trl() };
    let out = grpo_loss(&t, &SeqLayout::Packed { cu_seqlens: &[0, 1, 10] }, &[-1.0, -1.0], &cfg).unwrap();
    assert_eq!((out.metrics[3], out.metrics[5]), (0.5, 0.5));

    // torch.quantile's linear interpolation.
    assert_eq!(quantile_f32(vec![4.0, 1.0, 3.0, 2.0], 0.5), 2.5);
    assert_eq!(quantile_f32(vec![7.0], 0.3), 7.0);
    assert_eq!(quantile_f32(vec![0.0, 10.0], 0.75), 7.5); // torch.lerp's upper branch
                                                          // A rank that rounds up to n - 1 + epsilon in f32 stays on the last element.
    let big: Vec<f32> = (0..16_777_220).map(|i| i as f32).collect();
    assert!(quantile_f32(big, 0.99999994).is_finite());
}

#[test]
fn grpo_bad_input_is_refused() {
    let b = batch(3);
    let layout = SeqLayout::Packed { cu_seqlens: &b.cu };
    let tk = tokens(&b, &b.logp, &b.entropy, true, false);
    let err = |cfg: GrpoConfig| grpo_loss(&tk, &layout, &b.adv, &cfg).unwrap_err().to_string();
    let base = GrpoConfig::trl();
    assert!(err(GrpoConfig { epsilon_low: 1.0, ..base }).contains("epsilon_low"));
    assert!(err(GrpoConfig { epsilon_high: f32::NAN, ..base }).contains("epsilon_high"));
    assert!(err(GrpoConfig { delta: Some(1.1), ..base }).contains("delta"));
    assert!(err(GrpoConfig { beta: -0.1, ..base }).contains("beta"));
    assert!(err(GrpoConfig { top_entropy_quantile: 0.0, ..base }).contains("top_entropy_quantile"));
    assert!(err(GrpoConfig { loss_type: GrpoLossType::DrGrpo { max_completion_length: 0 }, ..base })
        .contains("max_completion_length"));
    assert!(err(GrpoConfig { loss_type: GrpoLossType::Dapo { normalizer: Some(0.0) }, ..base })
        .contains("normalizer"));
    assert!(err(GrpoConfig { loss_type: GrpoLossType::Sapo { tau_pos: 0.0, tau_neg: 1.0 }, ..base })
        .contains("sapo"));
    // Missing inputs and lengths.
    let no_ref = GrpoTokens { ref_logp: None, ..tk };
    assert!(grpo_loss(&no_ref, &layout, &b.adv, &GrpoConfig { beta: 0.1, ..base })
        .unwrap_err()
        .to_string()
        .contains("ref_logp"));
    let no_h = GrpoTokens { entropy: None, ..tk };
    assert!(grpo_loss(&no_h, &layout, &b.adv, &GrpoConfig { entropy_coef: 0.1, ..base })
        .unwrap_err()
        .to_string()
        .contains("entropy"));
    assert!(grpo_loss(&tk, &layout, &b.adv[1..], &base).unwrap_err().to_string().contains("advantage"));
    let mut nan_adv = b.adv.clone();
    nan_adv[0] = f32::NAN;
    assert!(grpo_loss(&tk, &layout, &nan_adv, &base).unwrap_err().to_string().contains("finite"));
    let short = GrpoTokens { old_logp: Some(&b.old[1..]), ..tk };
    assert!(grpo_loss(&short, &layout, &b.adv, &base).unwrap_err().to_string().contains("old_logp"));
}
