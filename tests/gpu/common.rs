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
