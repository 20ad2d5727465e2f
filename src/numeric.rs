//! Summation for the f64 references: pairwise, so a sum of n terms has error O(log n · ε) rather
//! than sequential summation's O(n · ε), which keeps the oracle at ~1e-16 relative for rows of
//! 262,144 columns and beyond.

/// Sum of `xs` by recursive halving (blocks of 32 summed in order at the leaves).
pub(crate) fn pairwise_sum(xs: &[f64]) -> f64 {
    const LEAF: usize = 32;
    if xs.len() <= LEAF {
        return xs.iter().sum();
    }
    let (a, b) = xs.split_at(xs.len() / 2);
    pairwise_sum(a) + pairwise_sum(b)
}

/// Pairwise sum of the values an iterator yields.
pub(crate) fn pairwise_sum_iter(it: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = it.collect();
    pairwise_sum(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_beats_sequential_on_a_long_row() {
        // 2^20 copies of 0.1 plus one large term: the exact sum is known in higher precision.
        let n = 1 << 20;
        let mut xs = vec![0.1f64; n];
        xs[0] = 1e6;
        let exact = 1e6 + (n as f64 - 1.0) * 0.1; // exact to ~1 ulp (one product, one sum)
        let seq: f64 = xs.iter().sum();
        let pw = pairwise_sum(&xs);
        assert!((pw - exact).abs() <= 4.0 * f64::EPSILON * exact, "pairwise {pw} vs {exact}");
        assert!((seq - exact).abs() > (pw - exact).abs(), "sequential {seq} should be worse than {pw}");
        assert_eq!(pairwise_sum(&[]), 0.0);
        assert_eq!(pairwise_sum_iter([1.0, 2.0, 3.0].into_iter()), 6.0);
    }
}
