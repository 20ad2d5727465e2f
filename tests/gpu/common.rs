//! Helpers for the GPU tests: random inputs, poisoning, tolerance checks.
#![allow(dead_code)]
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A deterministic generator for one test, derived from the run's seed and the test's tag.
pub fn rng(seed: u64, tag: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ tag.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Realistic logits: roughly N(0, 2^2) via a sum of uniforms, plus occasional large spikes.
pub fn logits(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u: f32 = (0..4).map(|_| rng.random_range(-1.0f32..1.0)).sum::<f32>() * 1.7;
            if rng.random_ratio(1, 997) {
                u + 12.0
            } else {
                u
            }
        })
        .collect()
}

/// Asserts `|got - want| <= atol + rtol * |want|`, with NaN only matching NaN.
#[track_caller]
pub fn assert_close(what: &str, got: f64, want: f64, atol: f64, rtol: f64) {
    if want.is_nan() || got.is_nan() {
        assert!(want.is_nan() && got.is_nan(), "{what}: got {got}, want {want}");
        return;
    }
    let err = (got - want).abs();
    assert!(
        err <= atol + rtol * want.abs(),
        "{what}: got {got}, want {want} (err {err:e}, atol {atol:e}, rtol {rtol:e})"
    );
}

/// The softmax statistics a log-probs forward writes for its backward (`[n_rows, 2]`: the row max
/// of the raw logits, log2 Σ 2^((x − max)·log2(e)/T)), computed on the host in f64 for rows of
/// `vocab` values `row_stride` apart; ignored rows (target `ignore_index`) hold 0.
pub fn softmax_stats<T: pref_kernels::LogitElement, I: pref_kernels::TargetIndex>(
    host: &[T],
    layout: pref_kernels::LogitsLayout,
    targets: &[I],
    cfg: &pref_kernels::TokenLogprobsConfig,
) -> Vec<f32> {
    let inv_t = 1.0 / cfg.temperature as f64;
    let mut out = vec![0f32; 2 * layout.n_rows];
    for (r, t) in targets.iter().enumerate() {
        if t.to_i64() == cfg.ignore_index {
            continue;
        }
        let row: Vec<f64> =
            host[r * layout.row_stride..][..layout.vocab].iter().map(|x| x.to_f64()).collect();
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = row.iter().map(|&x| ((x - m) * inv_t).exp()).sum();
        out[2 * r] = m as f32;
        out[2 * r + 1] = s.log2() as f32;
    }
    out
}

/// Tolerances of the kernels against the f64 references on the very same (rounded) inputs, derived
/// rather than tuned: input rounding cancels, so what remains is the kernels' f32 arithmetic and
/// the one rounding of an f16/bf16 output. The GPU's exp2f is within 2 ulp and log2f within 1 ulp
/// (CUDA programming guide, single-precision function table: what ex2.approx / lg2.approx give);
/// the emulator's libm is closer, so a bound that holds here with these terms holds on a GPU.
pub mod tol {
    use pref_kernels::{DType, LogitElement};

    /// f32 unit roundoff.
    pub const U: f64 = 1.0 / 16_777_216.0;

    /// Absolute error of a row's log-prob, lse, entropy or log Σp² (natural log, logits up to
    /// ~|45| in units of T): each term 2^d carries 2 ulp (exp2f) plus |d| 2^-23 from forming
    /// d = (x − m) log2(e) / T; a thread sums V/256 terms in sequence and the tree 8 more levels
    /// ((V/256 + 8) u of the sum, worst case); log2f adds 1 ulp of log2 s, and (x_t − m)/T its own
    /// rounding: ~3e-6 at small V, 2e-5 leaves 4x, plus the worst case of the long sums.
    pub fn row_atol(vocab: usize) -> f64 {
        2e-5 + (vocab as f64 / 256.0 + 8.0) * U
    }

    /// Relative error of an f32 gradient entry of a softmax row before its output rounding:
    /// p_v = 2^(d − log2 s) to ln2 (|d| + |log2 s|) 2^-23 + 2 ulp (~3e-6 at |d| <= 45).
    pub const GRAD_F32_REL: f64 = 1e-5;

    /// Half an ulp of the output dtype, relative (0 for f32).
    pub fn rounding(dtype: DType) -> f64 {
        match dtype {
            DType::F32 => 0.0,
            DType::F16 => 2f64.powi(-11),
            DType::BF16 => 2f64.powi(-8),
        }
    }

    /// Relative tolerance of a gradient entry written as `T`: the f32 error, then one rounding.
    pub fn grad_rtol<T: LogitElement>() -> f64 {
        GRAD_F32_REL + rounding(T::DTYPE)
    }
}
