//! The f64 references of the GRPO family, KTO, LiPO-λ, PRO and the entropy gradient: finite
//! differences for every loss type and option, hand-checked values, identities, bad input.
#![allow(clippy::needless_range_loop)] // tests index several parallel arrays by position
use pref_kernels::group_loss::reference::group_loss;
use pref_kernels::group_loss::{GroupLoss, KtoKl, KtoRole};
use pref_kernels::grpo::reference::{grpo_loss, quantile_f32, GrpoTokens};
use pref_kernels::grpo::{GrpoConfig, GrpoLossType, ImportanceLevel};
use pref_kernels::pref_loss::reference::forward_backward;
use pref_kernels::pref_loss::{LossConfig, Pairs};
use pref_kernels::seq_reduce::{SeqLayout, TokenInputs};
use pref_kernels::token_logprobs::reference as tl_ref;
use pref_kernels::{LogitsLayout, TokenLogprobsConfig};
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

fn seq_batch(seed: u64, n_seqs: usize) -> (Vec<f32>, Vec<f32>, Vec<u8>, Vec<i32>) {
    let mut r = StdRng::seed_from_u64(seed);
    let mut cu = vec![0i32];
    for s in 0..n_seqs {
        cu.push(cu.last().unwrap() + 2 + (s % 5) as i32);
    }
    let t = *cu.last().unwrap() as usize;
    let logp: Vec<f32> = (0..t).map(|_| r.random_range(-3.0f32..-0.05)).collect();
    let reference = logp.iter().map(|&l| l + r.random_range(-0.8f32..0.8)).collect();
    (logp, reference, (0..t).map(|i| u8::from(i % 5 != 1)).collect(), cu)
}

fn kto(beta: f32, desirable_weight: f32, kl: KtoKl, apo_zero_unpaired: bool) -> GroupLoss {
    GroupLoss::Kto { beta, desirable_weight, undesirable_weight: 1.0, kl, apo_zero_unpaired }
}

fn group_cases() -> Vec<(&'static str, GroupLoss, Vec<f32>)> {
    let roles = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|s| match s % 4 {
                0 | 3 => KtoRole::Desirable,
                1 => KtoRole::Undesirable,
                _ => KtoRole::KlSample,
            } as u8 as f32)
            .collect()
    };
    let psi: Vec<f32> = (0..12).map(|s| ((s * 7) % 5) as f32 * 0.25).collect();
    let rewards: Vec<f32> = (0..12).map(|s| 3.0 - (s % 4) as f32 * 0.7 - (s / 4) as f32 * 0.1).collect();
    vec![
        ("kto", GroupLoss::kto(), roles(12)),
        ("kto_given", kto(0.1, 1.33, KtoKl::Given(0.3), false), roles(12)),
        ("apo_zero_unpaired", kto(0.1, 1.0, KtoKl::FromSamples, true), roles(12)),
        ("lipo", GroupLoss::Lipo { beta: 0.5, list_size: 4, lambda_weights: true }, psi.clone()),
        ("lipo_unit", GroupLoss::Lipo { beta: 0.5, list_size: 3, lambda_weights: false }, psi),
        ("pro", GroupLoss::Pro { list_size: 4, sft_weight: 0.05 }, rewards.clone()),
        ("pro_n3_sft2", GroupLoss::Pro { list_size: 3, sft_weight: 2.0 }, {
            let mut r = rewards;
            for c in r.chunks_mut(3) {
                c.sort_by(|a, b| b.total_cmp(a));
            }
            r
        }),
    ]
}

#[test]
fn group_losses_match_finite_differences() {
    let (logp, reference, mask, cu) = seq_batch(21, 12);
    let layout = SeqLayout::Packed { cu_seqlens: &cu };
    for (name, loss, labels) in group_cases() {
        let tok = |l: &[f32]| -> f64 {
            let t = TokenInputs { logp: l, mask: Some(&mask), weights: None, ref_logp: Some(&reference) };
            group_loss(&t, &layout, None, &labels, &loss).unwrap().loss
        };
        let t = TokenInputs { logp: &logp, mask: Some(&mask), weights: None, ref_logp: Some(&reference) };
        let want = group_loss(&t, &layout, None, &labels, &loss).unwrap();
        assert!(want.loss.is_finite() && want.loss != 0.0, "{name}: {}", want.loss);
        for i in 0..logp.len() {
            let g = fd(logp[i], 1e-3, |x| {
                let mut l = logp.clone();
                l[i] = x;
                tok(&l)
            });
            assert!(
                (want.grad_logp[i] - g).abs() <= 2e-6 + 1e-4 * g.abs(),
                "{name}: grad[{i}] = {} vs fd {g}",
                want.grad_logp[i]
            );
        }
        // KL samples get no gradient; so do masked tokens.
        for s in 0..12 {
            for i in cu[s] as usize..cu[s + 1] as usize {
                if mask[i] == 0 || (name.starts_with("kto") && labels[s] == 2.0) {
                    assert_eq!(want.grad_logp[i], 0.0, "{name}: token {i}");
                }
            }
        }
    }
}

#[test]
fn group_losses_hand_checked_and_identities() {
    // KTO: one desirable (log-ratio 2), one undesirable (-1), two KL samples (0.5, 1.5): z0 = 1.
    let logp = [-1.0f32, -2.0, -3.0, -4.0];
    let reference = [-3.0f32, -1.0, -3.5, -5.5];
    let cu = [0i32, 1, 2, 3, 4];
    let layout = SeqLayout::Packed { cu_seqlens: &cu };
    let t = TokenInputs { logp: &logp, mask: None, weights: None, ref_logp: Some(&reference) };
    let out = group_loss(&t, &layout, None, &[1.0, 0.0, 2.0, 2.0], &GroupLoss::kto()).unwrap();
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    let want = ((1.0 - sig(0.1 * (2.0 - 1.0))) + (1.0 - sig(0.1 * (1.0 + 1.0)))) / 2.0;
    assert!((out.loss - want).abs() < 1e-8 && out.metrics[1] == 1.0, "{out:?}");
    assert!((out.metrics[2] - 0.2).abs() < 1e-8 && (out.metrics[3] + 0.1).abs() < 1e-8);

    // LiPO with K = 2 and unit lambda is DPO (sigmoid, same beta, sum scores, mean over pairs).
    let (logp, reference, mask, cu) = seq_batch(8, 10);
    let layout = SeqLayout::Packed { cu_seqlens: &cu };
    let t = TokenInputs { logp: &logp, mask: Some(&mask), weights: None, ref_logp: Some(&reference) };
    let labels: Vec<f32> = (0..10).map(|s| if s % 2 == 0 { 1.0 } else { 0.0 }).collect();
    let lipo = group_loss(
        &t,
        &layout,
        None,
        &labels,
        &GroupLoss::Lipo { beta: 0.1, list_size: 2, lambda_weights: false },
    )
    .unwrap();
    let chosen: Vec<i32> = (0..5).map(|p| 2 * p).collect();
    let rejected: Vec<i32> = (0..5).map(|p| 2 * p + 1).collect();
    let dpo = forward_backward(
        &t,
        &layout,
        &Pairs::Explicit { chosen: &chosen, rejected: &rejected },
        None,
        &LossConfig::dpo(0.1),
    )
    .unwrap();
    assert!((lipo.loss - dpo.loss).abs() < 1e-12, "{} vs {}", lipo.loss, dpo.loss);
    for i in 0..logp.len() {
        assert!((lipo.grad_logp[i] - dpo.grad_logp[i]).abs() < 1e-12, "token {i}");
    }

    // PRO, n = 2: log(1e-10 + e^{s0 T} + e^{s1 T}) - s0 T with T = r0 - r1, plus w (n-1)^2 (-S_0).
    let logp = [-1.0f32, -3.0, -2.0, -2.0];
    let cu = [0i32, 2, 4];
    let t = TokenInputs { logp: &logp, mask: None, weights: None, ref_logp: None };
    let out = group_loss(&t, &SeqLayout::Packed { cu_seqlens: &cu }, None, &[2.0, 0.5], &GroupLoss::pro(2))
        .unwrap();
    let (s0, s1, tt) = (-2.0f64, -2.0, 1.5);
    let want = (1e-10 + (s0 * tt).exp() + (s1 * tt).exp()).ln() - s0 * tt + 0.05 * 4.0;
    assert!((out.loss - want).abs() < 1e-8, "{} vs {want}", out.loss);
}

#[test]
fn group_losses_bad_input_is_refused() {
    let (logp, reference, _, cu) = seq_batch(2, 6);
    let layout = SeqLayout::Packed { cu_seqlens: &cu };
    let t = TokenInputs { logp: &logp, mask: None, weights: None, ref_logp: Some(&reference) };
    let err = |labels: &[f32], loss: GroupLoss| {
        group_loss(&t, &layout, None, labels, &loss).unwrap_err().to_string()
    };
    assert!(err(&[1.0; 6], GroupLoss::lipo(4)).contains("divide"));
    assert!(err(&[1.0; 6], GroupLoss::lipo(1)).contains("list"));
    assert!(err(&[1.0; 5], GroupLoss::kto()).contains("label"));
    assert!(err(&[1.0, 0.0, 5.0, 1.0, 1.0, 1.0], GroupLoss::kto()).contains("KtoRole"));
    assert!(err(&[1.0, 2.0, 0.0, 1.0, 1.0, 1.0], GroupLoss::pro(3)).contains("non-increasing"));
    assert!(err(&[f32::NAN; 6], GroupLoss::lipo(2)).contains("finite"));
    assert!(err(&[1.0; 6], kto(0.0, 1.0, KtoKl::FromSamples, false)).contains("beta"));
    assert!(err(&[1.0; 6], kto(0.1, 1.0, KtoKl::Given(f32::INFINITY), false)).contains("kl"));
    let no_ref = TokenInputs { ref_logp: None, ..t };
    assert!(group_loss(&no_ref, &layout, None, &[1.0; 6], &GroupLoss::kto())
        .unwrap_err()
        .to_string()
        .contains("ref"));
}

#[test]
fn entropy_gradient_matches_finite_differences() {
    let mut r = StdRng::seed_from_u64(4);
    let (n, v) = (3, 37);
    let logits: Vec<f32> = (0..n * v).map(|_| r.random_range(-4.0f32..4.0)).collect();
    let targets = [3i64, -100, 36];
    let layout = LogitsLayout::contiguous(n, v);
    for temperature in [1.0f32, 0.7] {
        let cfg = TokenLogprobsConfig { temperature, ..Default::default() };
        let (gl, ge) = ([0.3f32, 0.9, -1.1], [-0.7f32, 2.0, 0.4]);
        let grad = tl_ref::backward_with_entropy(&logits, layout, &targets, &gl, &ge, &cfg).unwrap();
        let objective = |x: &[f32]| -> f64 {
            let f = tl_ref::forward(x, layout, &targets, &cfg).unwrap();
            (0..n).map(|i| gl[i] as f64 * f.logp[i] + ge[i] as f64 * f.entropy[i]).sum()
        };
        for i in 0..n * v {
            let g = fd(logits[i], 1e-3, |x| {
                let mut l = logits.clone();
                l[i] = x;
                objective(&l)
            });
            assert!(
                (grad[i] - g).abs() < 1e-6 + 1e-4 * g.abs(),
                "T {temperature}: [{i}] {} vs fd {g}",
                grad[i]
            );
        }
        assert!(grad[v..2 * v].iter().all(|&g| g == 0.0), "ignored row");
    }
}
