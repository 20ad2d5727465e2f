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

/// A device buffer of `n` NaNs (at least one element): outputs are poisoned before a kernel
/// writes them, so an element it does not write fails the comparison.
pub fn poisoned(gpu: &pref_kernels::Gpu, n: usize) -> pref_kernels::DeviceBuffer<f32> {
    gpu.default_stream().clone_htod(&vec![f32::NAN; n.max(1)]).unwrap()
}

#[track_caller]
pub fn check_grad(what: &str, got: &[f32], want: &[f64]) {
    let max = want.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert_close(&format!("{what}[{i}]"), g as f64, w, 1e-6 * max + 1e-30, 1e-4);
    }
}

/// Per-token batches of the sequence losses (GRPO family, group losses): packed completions.
pub struct Host {
    pub logp: Vec<f32>,
    pub old: Vec<f32>,
    pub sampling: Vec<f32>,
    pub reference: Vec<f32>,
    pub mask: Vec<u8>,
    pub isw: Vec<f32>,
    pub entropy: Vec<f32>,
    pub adv: Vec<f32>,
    pub cu: Vec<i32>,
}

/// `n_seqs` completions of 0 ..= max_len tokens (some empty, some of one token), 20% masked.
pub fn host(r: &mut StdRng, n_seqs: usize, max_len: usize) -> Host {
    let mut cu = vec![0i32];
    for s in 0..n_seqs {
        let len = match s % 7 {
            3 => 0,
            5 => 1,
            _ => r.random_range(0..=max_len),
        };
        cu.push(cu.last().unwrap() + len as i32);
    }
    let t = *cu.last().unwrap() as usize;
    let logp: Vec<f32> = (0..t).map(|_| r.random_range(-5.0f32..-0.02)).collect();
    Host {
        old: logp.iter().map(|&l| l + r.random_range(-0.4f32..0.4)).collect(),
        sampling: logp.iter().map(|&l| l + r.random_range(-0.4f32..0.45)).collect(),
        reference: logp.iter().map(|&l| l + r.random_range(-0.5f32..0.5)).collect(),
        mask: (0..t).map(|_| u8::from(r.random_ratio(4, 5))).collect(),
        isw: (0..t).map(|_| r.random_range(0.3f32..2.0)).collect(),
        entropy: (0..t).map(|_| r.random_range(0.05f32..5.0)).collect(),
        adv: (0..n_seqs).map(|_| r.random_range(-2.0f32..2.0)).collect(),
        logp,
        cu,
    }
}
