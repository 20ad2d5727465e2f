//! Property tests of the f64 CPU reference of the token log-probs op: the oracle the GPU is
//! compared against must itself satisfy the math.
#![allow(clippy::needless_range_loop)] // tests index several parallel arrays by position
use half::{bf16, f16};
use pref_kernels::token_logprobs::reference as tl_ref;
use pref_kernels::token_logprobs::reference::{backward, forward};
use pref_kernels::{Error, LogitsLayout, TokenLogprobsConfig};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
#[path = "common/pseudo.rs"]
mod pseudo;
use pseudo::pseudo;

fn cfg() -> TokenLogprobsConfig {
    TokenLogprobsConfig::default()
}

/// A random logits matrix (finite, realistic scale) with targets, some rows ignored.
fn batch() -> impl Strategy<Value = (Vec<f32>, LogitsLayout, Vec<i64>)> {
    (1usize..6, 1usize..40, 0usize..3).prop_flat_map(|(n, v, pad)| {
        let stride = v + pad;
        (
            prop::collection::vec(-8.0f32..8.0, n * stride),
            Just(LogitsLayout { n_rows: n, vocab: v, row_stride: stride }),
            prop::collection::vec(prop_oneof![4 => 0..v as i64, 1 => Just(-100i64)], n),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn topk_is_sorted_distinct_and_agrees_with_the_forward((x, layout, t) in batch(), k in 1usize..64) {
        // Integers in [-3, 3]: many exact ties, which the order must break by ascending id.
        let x: Vec<f32> = x.iter().map(|v| (v / 2.7).round()).collect();
        let k = k.min(layout.vocab);
        let f = forward(&x, layout, &t, &cfg()).unwrap();
        let top = tl_ref::topk(&x, layout, &t, k, &cfg()).unwrap();
        for row in 0..layout.n_rows {
            let (ids, lp) = (&top.ids[row * k..][..k], &top.logp[row * k..][..k]);
            if t[row] == -100 {
                prop_assert!(ids.iter().all(|&i| i == -1) && lp.iter().all(|&l| l == 0.0));
                prop_assert!(!f.is_top1[row] && f.mean_logits[row] == 0.0);
                continue;
            }
            let xr = &x[row * layout.row_stride..][..layout.vocab];
            for j in 1..k {
                let (a, b) = (ids[j - 1] as usize, ids[j] as usize);
                prop_assert!(xr[a] > xr[b] || (xr[a] == xr[b] && a < b), "order at {j}: {a} then {b}");
                prop_assert!(lp[j - 1] >= lp[j]);
            }
            // Nothing left out is larger than the last one kept.
            let last = ids[k - 1] as usize;
            for v in 0..layout.vocab {
                if !ids.contains(&(v as i64)) {
                    prop_assert!(xr[v] < xr[last] || (xr[v] == xr[last] && v > last));
                }
            }
            if let Some(j) = ids.iter().position(|&i| i == t[row]) {
                prop_assert!((lp[j] - f.logp[row]).abs() <= 1e-12);
            }
            // is_top1: the target is the first (lowest-id) maximum, i.e. the top-1 id.
            prop_assert_eq!(f.is_top1[row], ids[0] == t[row]);
            let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / layout.vocab as f64;
            prop_assert!((f.mean_logits[row] - mean).abs() <= 1e-9 * (1.0 + mean.abs()));
        }
    }

    #[test]
    fn logp_is_at_most_zero_and_entropy_is_bounded((x, layout, t) in batch()) {
        let r = forward(&x, layout, &t, &cfg()).unwrap();
        for row in 0..layout.n_rows {
            prop_assert!(r.logp[row] <= 1e-12, "logp {} > 0", r.logp[row]);
            prop_assert!(r.entropy[row] >= -1e-12);
            prop_assert!(r.entropy[row] <= (layout.vocab as f64).ln() + 1e-9);
        }
    }

    #[test]
    fn probabilities_over_all_targets_sum_to_one((x, layout, _t) in batch()) {
        for row in 0..layout.n_rows {
            let one = LogitsLayout { n_rows: layout.vocab, vocab: layout.vocab, row_stride: 0 };
            // Every target of the same row: a stride-0 "batch" would be invalid, so copy the row.
            let rowv = &x[row * layout.row_stride..row * layout.row_stride + layout.vocab];
            let copies: Vec<f32> = (0..layout.vocab).flat_map(|_| rowv.iter().copied()).collect();
            let targets: Vec<i32> = (0..layout.vocab as i32).collect();
            let r = forward(&copies, LogitsLayout { row_stride: layout.vocab, ..one }, &targets, &cfg()).unwrap();
            let total: f64 = r.logp.iter().map(|l| l.exp()).sum();
            prop_assert!((total - 1.0).abs() < 1e-12, "sum exp(logp) = {total}");
        }
    }

    #[test]
    fn adding_a_constant_to_a_row_changes_nothing((x, layout, t) in batch(), c in -64i32..64) {
        // An integer shift of values with few mantissa bits is exact in f32.
        let xr: Vec<f32> = x.iter().map(|v| (v * 4.0).round() / 4.0).collect();
        let xs: Vec<f32> = xr.iter().map(|v| v + c as f32).collect();
        let a = forward(&xr, layout, &t, &cfg()).unwrap();
        let b = forward(&xs, layout, &t, &cfg()).unwrap();
        for row in 0..layout.n_rows {
            prop_assert!((a.logp[row] - b.logp[row]).abs() < 1e-12);
            prop_assert!((a.entropy[row] - b.entropy[row]).abs() < 1e-12);
        }
    }

    #[test]
    fn temperature_equals_dividing_the_logits((x, layout, t) in batch(), k in -2i32..3) {
        let temp = 2f32.powi(k); // powers of two: x / T is exact
        let scaled: Vec<f32> = x.iter().map(|v| v / temp).collect();
        let a = forward(&x, layout, &t, &TokenLogprobsConfig { temperature: temp, ..cfg() }).unwrap();
        let b = forward(&scaled, layout, &t, &cfg()).unwrap();
        for row in 0..layout.n_rows {
            prop_assert!((a.logp[row] - b.logp[row]).abs() < 1e-12);
            prop_assert!((a.lse[row] - b.lse[row]).abs() < 1e-12);
            prop_assert!((a.entropy[row] - b.entropy[row]).abs() < 1e-12);
        }
    }

    #[test]
    fn backward_matches_finite_differences(
        (x, layout, t) in batch(),
        g in prop::collection::vec(-2.0f32..2.0, 6),
        temp in 0.5f32..2.0,
    ) {
        let c = TokenLogprobsConfig { temperature: temp, ..cfg() };
        let g = &g[..layout.n_rows];
        let grad = backward(&x, layout, &t, g, &c).unwrap();
        // Objective: sum_r g_r * logp_r, differentiated numerically per logit. The denominator is
        // the actual f32 step, so rounding of x +- h does not bias the check.
        let objective = |xs: &[f32]| -> f64 {
            let r = forward(xs, layout, &t, &c).unwrap();
            r.logp.iter().zip(g).map(|(l, &gr)| l * gr as f64).sum()
        };
        for row in 0..layout.n_rows {
            for v in 0..layout.vocab {
                let i = row * layout.row_stride + v;
                let (mut xp, mut xm) = (x.clone(), x.clone());
                xp[i] += 1e-2;
                xm[i] -= 1e-2;
                let fd = (objective(&xp) - objective(&xm)) / (xp[i] as f64 - xm[i] as f64);
                let an = grad[row * layout.vocab + v];
                prop_assert!((fd - an).abs() < 1e-4 * (1.0 + an.abs()), "row {row} v {v}: fd {fd} vs {an}");
            }
        }
    }

    #[test]
    fn gradient_rows_sum_to_zero_and_ignored_rows_are_exactly_zero(
        (x, layout, t) in batch(),
        g in prop::collection::vec(-2.0f32..2.0, 6),
    ) {
        let g = &g[..layout.n_rows];
        let grad = backward(&x, layout, &t, g, &cfg()).unwrap();
        let fwd = forward(&x, layout, &t, &cfg()).unwrap();
        for row in 0..layout.n_rows {
            let gr = &grad[row * layout.vocab..(row + 1) * layout.vocab];
            if t[row] == -100 {
                prop_assert!(gr.iter().all(|&v| v == 0.0));
                prop_assert!(fwd.logp[row] == 0.0 && fwd.lse[row] == 0.0 && fwd.entropy[row] == 0.0);
            } else {
                prop_assert!(gr.iter().sum::<f64>().abs() < 1e-12 * (1.0 + g[row].abs() as f64 * layout.vocab as f64));
            }
        }
    }
}

#[test]
fn half_precision_inputs_are_read_exactly() {
    let xs = [0.5f32, -1.25, 3.0, 7.5];
    let layout = LogitsLayout::contiguous(1, 4);
    let a = forward(&xs, layout, &[2i32], &cfg()).unwrap();
    let h: Vec<f16> = xs.iter().map(|&v| f16::from_f32(v)).collect();
    let b: Vec<bf16> = xs.iter().map(|&v| bf16::from_f32(v)).collect();
    assert_eq!(a, forward(&h, layout, &[2i32], &cfg()).unwrap());
    assert_eq!(a, forward(&b, layout, &[2i64], &cfg()).unwrap());
}

#[test]
fn hand_checked_values() {
    // logits [0, ln 3]: softmax = [1/4, 3/4].
    let x = [0.0f32, 3f32.ln()];
    let r = forward(&x, LogitsLayout::contiguous(1, 2), &[1i64], &cfg()).unwrap();
    assert!((r.logp[0] - (0.75f64).ln()).abs() < 1e-7);
    let h = -(0.25f64 * 0.25f64.ln() + 0.75 * 0.75f64.ln());
    assert!((r.entropy[0] - h).abs() < 1e-7);
    let g = backward(&x, LogitsLayout::contiguous(1, 2), &[1i64], &[2.0], &cfg()).unwrap();
    assert!((g[0] + 0.5).abs() < 1e-7 && (g[1] - 0.5).abs() < 1e-7);
}

#[test]
fn confident_target_gradient_has_full_relative_precision() {
    // p(target) = 1 - ~1e-13: 1 - p must come from expm1, not a subtraction.
    let x = [30.0f32, 0.0, 0.0];
    let g = backward(&x, LogitsLayout::contiguous(1, 3), &[0i32], &[1.0], &cfg()).unwrap();
    let exact = 2.0 * (-30f64).exp() / (1.0 + 2.0 * (-30f64).exp());
    assert!((g[0] - exact).abs() / exact < 1e-12, "{} vs {exact}", g[0]);
}

#[test]
fn nan_and_inf_logits_give_nan() {
    let layout = LogitsLayout::contiguous(3, 3);
    let x = [0.0f32, f32::NAN, 1.0, 0.0, f32::INFINITY, 1.0, 0.0, f32::NEG_INFINITY, 1.0];
    let r = forward(&x, layout, &[0i32, 0, 0], &cfg()).unwrap();
    assert!(r.logp[0].is_nan() && r.lse[0].is_nan());
    assert!(r.logp[1].is_nan() && r.lse[1].is_nan());
    // -inf is a legitimate "masked out" logit: finite results, that entry has p = 0.
    assert!(r.logp[2].is_finite() && r.entropy[2].is_finite());
}

#[test]
fn bad_inputs_are_clear_errors() {
    let x = vec![0.0f32; 8];
    let l = LogitsLayout::contiguous(2, 4);
    let err = |e: Error| e.to_string();
    assert!(matches!(
        forward(&x, l, &[0i32, 4], &cfg()),
        Err(Error::TargetOutOfRange { row: 1, target: 4, vocab: 4 })
    ));
    assert!(matches!(forward(&x, l, &[-1i32, 0], &cfg()), Err(Error::TargetOutOfRange { row: 0, .. })));
    let e = err(forward(&x, l, &[0i32], &cfg()).unwrap_err());
    assert!(e.contains("targets") && e.contains("n_rows (2)"), "{e}");
    let e = err(forward(&x[..7], l, &[0i32, 0], &cfg()).unwrap_err());
    assert!(e.contains("logits") && e.contains("8"), "{e}");
    let e = err(
        forward(&x, LogitsLayout { n_rows: 2, vocab: 4, row_stride: 3 }, &[0i32, 0], &cfg()).unwrap_err()
    );
    assert!(e.contains("row_stride"), "{e}");
    let e = err(forward(&x, LogitsLayout::contiguous(2, 0), &[0i32, 0], &cfg()).unwrap_err());
    assert!(e.contains("vocab"), "{e}");
    for temp in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let c = TokenLogprobsConfig { temperature: temp, ..cfg() };
        let e = err(forward(&x, l, &[0i32, 0], &c).unwrap_err());
        assert!(e.contains("temperature"), "{e}");
    }
    let e = err(backward(&x, l, &[0i32, 0], &[1.0], &cfg()).unwrap_err());
    assert!(e.contains("grad_logp"), "{e}");
    // Shape overflow is caught before any indexing.
    let huge = LogitsLayout { n_rows: 1 << 30, vocab: 1 << 30, row_stride: usize::MAX / 2 };
    assert!(huge.validate().is_err());
    // An empty batch is valid and produces nothing.
    let r = forward(&x, LogitsLayout::contiguous(0, 4), &[] as &[i32], &cfg()).unwrap();
    assert!(r.logp.is_empty());
}

/// The oracle's own precision on a long row (V = 262144): its logsumexp and entropy agree with a
/// compensated (Neumaier) summation of the same terms to ~1e-16, as pairwise summation gives
/// (sequential summation drifts to ~1e-14 here).
#[test]
fn the_reference_stays_at_f64_precision_on_long_rows() {
    let v = 262144usize;
    let logits = pseudo(v, 0x1234_5678_9abc_def1, -4.0, 4.0);
    let layout = pref_kernels::LogitsLayout::contiguous(1, v);
    let cfg = pref_kernels::TokenLogprobsConfig { compute_entropy: true, ..Default::default() };
    let r = pref_kernels::token_logprobs::reference::forward(&logits, layout, &[3i64], &cfg).unwrap();
    let neumaier = |xs: &mut dyn Iterator<Item = f64>| {
        let (mut sum, mut c) = (0.0f64, 0.0f64);
        for x in xs {
            let t = sum + x;
            c += if sum.abs() >= x.abs() { (sum - t) + x } else { (x - t) + sum };
            sum = t;
        }
        sum + c
    };
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let z = neumaier(&mut logits.iter().map(|&x| (x as f64 - m).exp()));
    let lse = m + z.ln();
    assert!((r.lse[0] - lse).abs() <= 2e-16 * lse.abs(), "lse {} vs {lse}", r.lse[0]);
    let h = -neumaier(&mut logits.iter().map(|&x| {
        let lp = x as f64 - lse;
        lp.exp() * lp
    }));
    assert!((r.entropy[0] - h).abs() <= 4e-16 * h.abs(), "entropy {} vs {h}", r.entropy[0]);
}

/// Central difference with the exact f32 step as the denominator.
fn fd_step(x: f32, h: f32, f: impl Fn(f32) -> f64) -> f64 {
    let (xp, xm) = (x + h, x - h);
    (f(xp) - f(xm)) / (xp as f64 - xm as f64)
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
            let g = fd_step(logits[i], 1e-3, |x| {
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
