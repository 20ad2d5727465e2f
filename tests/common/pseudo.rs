//! The deterministic random inputs the integration tests share (a xorshift generator: no
//! dependency, the same values on every platform and run).

/// `n` values uniform in `[lo, hi)` from a xorshift generator seeded with `seed`.
pub fn pseudo(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}
