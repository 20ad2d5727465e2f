//! LD-DPO's token weights (TRL `ld_alpha`): a pair's chosen and rejected completions share their
//! first `min(N_c, N_r)` completion tokens at weight 1; each longer side's remaining tokens count
//! `α`. With these weights and [`ReduceMode::WeightedSum`](crate::seq_reduce::ReduceMode) the
//! DPO-family losses score `shared + α · tail` for policy and reference alike, as TRL 1.16's
//! `_compute_loss` does; IPO and `sigmoid_norm` still divide by the unweighted completion count.
use super::Pairs;
use crate::error::{ensure, Result};
use crate::seq_reduce::SeqLayout;

/// Per-token LD-DPO weights for `pairs` over `layout`; `mask` as the loss mask (the completion
/// tokens, `None` = every token). Tokens of sequences in no pair get weight 1, masked tokens 0.
/// Each sequence may belong to at most one pair (TRL's batch is `[chosen..., rejected...]`).
pub fn ld_weights(layout: &SeqLayout, mask: Option<&[u8]>, pairs: &Pairs, alpha: f32) -> Result<Vec<f32>> {
    ensure(alpha.is_finite(), "ld_alpha", || format!("must be finite, got {alpha}"))?;
    let n_tokens = match layout {
        SeqLayout::Packed { cu_seqlens } => cu_seqlens.last().map_or(0, |&t| t.max(0) as usize),
        SeqLayout::Padded { n_seqs, seq_len } => n_seqs * seq_len,
    };
    let n_tokens = mask.map_or(n_tokens, <[u8]>::len);
    layout.validate(n_tokens)?;
    let n_seqs = layout.n_seqs();
    pairs.validate(n_seqs)?;
    let counted = |t: usize| mask.is_none_or(|m| m[t] != 0);
    let count = |s: usize| layout.range(s).filter(|&t| counted(t)).count();
    // The shared length of each sequence's pair (None: in no pair).
    let mut shared: Vec<Option<usize>> = vec![None; n_seqs];
    for i in 0..pairs.n_pairs(n_seqs) {
        let (c, r) = pairs.pair(i, n_seqs);
        for s in [c, r] {
            ensure(shared[s].is_none() && c != r, "pairs", || {
                format!("sequence {s} is in more than one pair side: LD-DPO's shared length is per pair")
            })?;
        }
        let n = count(c).min(count(r));
        shared[c] = Some(n);
        shared[r] = Some(n);
    }
    let mut w = vec![0.0f32; n_tokens];
    for (s, shared) in shared.iter().enumerate() {
        let mut pos = 0usize;
        for t in layout.range(s) {
            if !counted(t) {
                continue;
            }
            pos += 1;
            w[t] = match shared {
                Some(n) if pos > *n => alpha,
                _ => 1.0,
            };
        }
    }
    Ok(w)
}
