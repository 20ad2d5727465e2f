//! Host-side helpers that build TAB-PO token weights from token ids (tokenizer work, not kernel
//! work): positional chosen/rejected difference up-weighting, caller-given important spans with
//! per-category weights, and the per-sequence renormalization to mean 1.

/// Multiplies both sequences' weights by `factor` (official 1.2) at every response position k <
/// min(len_c, len_r) where the token ids differ (positional alignment from the response start,
/// as the reference collator does).
pub fn up_weight_differences(
    chosen_ids: &[i64],
    rejected_ids: &[i64],
    w_chosen: &mut [f32],
    w_rejected: &mut [f32],
    factor: f32,
) {
    let n = chosen_ids.len().min(rejected_ids.len()).min(w_chosen.len()).min(w_rejected.len());
    for k in 0..n {
        if chosen_ids[k] != rejected_ids[k] {
            w_chosen[k] *= factor;
            w_rejected[k] *= factor;
        }
    }
}

/// An important character span of the response text with its category weight (official: Code
/// values 1.1, Sub-code values 1.2, Span values 1.1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightedSpan {
    /// Start character offset (inclusive).
    pub start: usize,
    /// End character offset (exclusive).
    pub end: usize,
    /// Weight of tokens overlapping the span.
    pub weight: f32,
}

/// Sets `w_t = max(w_t, span.weight)` for every token whose character range `[a, b)` (from the
/// tokenizer's offset mapping) overlaps a span.
pub fn apply_span_weights(weights: &mut [f32], token_offsets: &[(usize, usize)], spans: &[WeightedSpan]) {
    for (w, &(a, b)) in weights.iter_mut().zip(token_offsets) {
        for s in spans {
            if a < s.end && s.start < b {
                *w = w.max(s.weight);
            }
        }
    }
}

/// Renormalizes one sequence's weights so their mean over valid (mask = 1) tokens is 1:
/// `w̃ = w · N / max(W, 1e-6)` with `N = max(Σ m, 1)`, `W = Σ m w` (TAB-PO). Masked tokens keep
/// their value.
pub fn renormalize_to_mean_one(weights: &mut [f32], mask: &[u8]) {
    let (mut n, mut wm) = (0.0f64, 0.0f64);
    for (w, &m) in weights.iter().zip(mask) {
        if m != 0 {
            n += 1.0;
            wm += *w as f64;
        }
    }
    let scale = n.max(1.0) / wm.max(1e-6);
    for (w, &m) in weights.iter_mut().zip(mask) {
        if m != 0 {
            *w = (*w as f64 * scale) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_spans_and_renormalization() {
        let (mut wc, mut wr) = (vec![1.0f32; 4], vec![1.0f32; 3]);
        up_weight_differences(&[1, 2, 3, 4], &[1, 9, 3], &mut wc, &mut wr, 1.2);
        assert_eq!(wc, [1.0, 1.2, 1.0, 1.0]);
        assert_eq!(wr, [1.0, 1.2, 1.0]);
        let mut w = vec![1.0f32; 4];
        apply_span_weights(
            &mut w,
            &[(0, 3), (3, 5), (5, 9), (9, 12)],
            &[WeightedSpan { start: 4, end: 6, weight: 1.1 }],
        );
        assert_eq!(w, [1.0, 1.1, 1.1, 1.0]);
        let mut w = vec![1.0f32, 3.0, 2.0, 100.0];
        renormalize_to_mean_one(&mut w, &[1, 1, 1, 0]);
        let mean = (w[0] + w[1] + w[2]) / 3.0;
        assert!((mean - 1.0).abs() < 1e-6 && w[3] == 100.0);
    }
}
