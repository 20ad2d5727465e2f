//! CPU reference of the per-sequence reductions, accumulating in f64.
use super::{ReduceMode, SeqLayout, TokenInputs, WEIGHT_MASS_EPS};
use crate::error::{ensure, Result};
use crate::numeric::pairwise_sum;

/// Per-sequence sums (f64). `gate` refers to TAB-PO's confidence gate `logp < log_tau`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SeqStats {
    /// `sum m`.
    pub count: f64,
    /// `sum m w`.
    pub weight_mass: f64,
    /// `sum m logp`.
    pub sum: f64,
    /// `sum m w logp`.
    pub weighted_sum: f64,
    /// `sum m ref`.
    pub ref_sum: f64,
    /// `sum m w ref`.
    pub ref_weighted_sum: f64,
    /// `sum m gate w`.
    pub gated_weight_mass: f64,
    /// `sum m gate`.
    pub gated_count: f64,
    /// `sum m gate w logp`.
    pub gated_weighted_sum: f64,
}

impl SeqStats {
    /// The policy score under `mode`.
    pub fn score(&self, mode: ReduceMode) -> f64 {
        aggregate(mode, self.sum, self.weighted_sum, self)
    }
    /// The reference score under `mode` (from per-token reference log-probs).
    pub fn ref_score(&self, mode: ReduceMode) -> f64 {
        aggregate(mode, self.ref_sum, self.ref_weighted_sum, self)
    }
    /// `(c0, c1)` with `d score / d logp_t = m_t (c0 + c1 w_t)`.
    pub fn token_coef(&self, mode: ReduceMode) -> (f64, f64) {
        match mode {
            ReduceMode::Sum => (1.0, 0.0),
            ReduceMode::Mean => (1.0 / self.count.max(1.0), 0.0),
            ReduceMode::WeightedSum => (0.0, 1.0),
            ReduceMode::WeightedMean => (0.0, 1.0 / self.weight_mass.max(WEIGHT_MASS_EPS)),
        }
    }
}

fn aggregate(mode: ReduceMode, sum: f64, wsum: f64, s: &SeqStats) -> f64 {
    match mode {
        ReduceMode::Sum => sum,
        ReduceMode::Mean => sum / s.count.max(1.0),
        ReduceMode::WeightedSum => wsum,
        ReduceMode::WeightedMean => wsum / s.weight_mass.max(WEIGHT_MASS_EPS),
    }
}

/// Statistics of every sequence; `log_tau` is the TAB-PO gate threshold (`-inf` disables it).
pub fn seq_stats(tokens: &TokenInputs, layout: &SeqLayout, log_tau: f64) -> Result<Vec<SeqStats>> {
    tokens.validate(layout)?;
    Ok((0..layout.n_seqs())
        .map(|s| {
            // Per-token terms, then one pairwise sum per statistic (oracle precision ~1e-16).
            let mut terms: [Vec<f64>; 9] = Default::default();
            for t in layout.range(s) {
                if tokens.mask.is_some_and(|m| m[t] == 0) {
                    continue;
                }
                let w = tokens.weights.map_or(1.0, |w| w[t] as f64);
                let l = tokens.logp[t] as f64;
                let r = tokens.ref_logp.map_or(0.0, |r| r[t] as f64);
                let gate = if l < log_tau { 1.0 } else { 0.0 };
                for (k, v) in [1.0, w, l, w * l, r, w * r, gate * w, gate, gate * w * l].into_iter().enumerate() {
                    terms[k].push(v);
                }
            }
            let [count, weight_mass, sum, weighted_sum, ref_sum, ref_weighted_sum, gated_weight_mass, gated_count, gated_weighted_sum] =
                terms.map(|v| pairwise_sum(&v));
            SeqStats {
                count,
                weight_mass,
                sum,
                weighted_sum,
                ref_sum,
                ref_weighted_sum,
                gated_weight_mass,
                gated_count,
                gated_weighted_sum,
            }
        })
        .collect())
}

/// Per-sequence scores under `mode`.
pub fn reduce(tokens: &TokenInputs, layout: &SeqLayout, mode: ReduceMode) -> Result<Vec<f64>> {
    Ok(seq_stats(tokens, layout, f64::NEG_INFINITY)?.iter().map(|s| s.score(mode)).collect())
}

/// Backward: `dlogp[t] = dscore[s] * d score_s / d logp_t` for the sequence s holding t; 0 for
/// masked tokens and tokens outside every sequence.
pub fn reduce_backward(
    tokens: &TokenInputs,
    layout: &SeqLayout,
    mode: ReduceMode,
    dscore: &[f32],
) -> Result<Vec<f64>> {
    let stats = seq_stats(tokens, layout, f64::NEG_INFINITY)?;
    ensure(dscore.len() == stats.len(), "dscore", || {
        format!("length must equal the number of sequences ({}), got {}", stats.len(), dscore.len())
    })?;
    let mut grad = vec![0.0; tokens.n_tokens()];
    for (s, st) in stats.iter().enumerate() {
        let (c0, c1) = st.token_coef(mode);
        for t in layout.range(s) {
            if tokens.mask.is_some_and(|m| m[t] == 0) {
                continue;
            }
            let w = tokens.weights.map_or(1.0, |w| w[t] as f64);
            grad[t] = dscore[s] as f64 * (c0 + c1 * w);
        }
    }
    Ok(grad)
}
