//! The f64 references of the group / listwise losses (KTO, LiPO-λ, PRO): finite differences,
//! hand-checked values, identities with DPO, bad input.
#![allow(clippy::needless_range_loop)] // tests index several parallel arrays by position
use pref_kernels::group_loss::reference::group_loss;
use pref_kernels::group_loss::{GroupLoss, KtoKl, KtoRole};
use pref_kernels::preference_loss::reference::forward_backward;
use pref_kernels::preference_loss::{LossConfig, Pairs};
use pref_kernels::seq_reduce::{SeqLayout, TokenInputs};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Central difference with the exact f32 step as the denominator.
fn fd(x: f32, h: f32, f: impl Fn(f32) -> f64) -> f64 {
    let (xp, xm) = (x + h, x - h);
    (f(xp) - f(xm)) / (xp as f64 - xm as f64)
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
