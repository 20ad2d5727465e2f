//! Per-sequence log-prob reductions over masked, padded or packed (variable-length) batches, and
//! their backward (broadcast of a per-sequence gradient to its tokens).
//!
//! Per sequence s over its tokens t (m = loss mask, w = optional token weight, default 1):
//! `count = sum m`, `weight_mass = sum m w`, `sum = sum m logp`, `weighted_sum = sum m w logp`, and a
//! score by [`ReduceMode`]:
//!
//! | mode | score | d score / d logp_t |
//! |---|---|---|
//! | `Sum` | `sum` | `m_t` |
//! | `Mean` | `sum / max(count, 1)` | `m_t / max(count, 1)` |
//! | `WeightedSum` | `weighted_sum` | `m_t w_t` |
//! | `WeightedMean` | `weighted_sum / max(weight_mass, 1e-6)` | `m_t w_t / max(weight_mass, 1e-6)` |
//!
//! **Empty sequences** (no token with m = 1, including zero-length ones): every statistic is 0, the
//! score is 0 in every mode (the clamps above never divide by zero) and the backward writes 0.
//! The clamps follow TRL (`clamp(min=1)` on lengths) and TAB-PO (`max(W, 1e-6)`).
//!
//! Layouts ([`SeqLayout`]): packed tokens with `cu_seqlens` (i32, length S + 1, non-decreasing,
//! `cu_seqlens[S] <= n_tokens`; tokens outside every sequence belong to none and get zero
//! gradient), or padded `[B, L]` (sequence b = tokens `[b L, (b + 1) L)`, the mask marks valid
//! tokens) — the same thing with implicit uniform offsets.
use crate::error::{ensure, invalid, Result};

pub(crate) mod launch;
pub mod reference;

pub use launch::{DeviceSeqLayout, DeviceSeqs, DeviceTokens, SeqReducePtrs, TokenGradPtrs};

/// Smallest weight mass used as a divisor (TAB-PO's clamp).
pub const WEIGHT_MASS_EPS: f64 = 1e-6;

/// How a sequence's token log-probs are aggregated into its score.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceMode {
    /// `sum m logp` (DPO, CPO).
    Sum = 0,
    /// `sum m logp / max(count, 1)` (SimPO, ORPO, IPO's length normalization).
    Mean = 1,
    /// `sum m w logp` (TIS-DPO).
    WeightedSum = 2,
    /// `sum m w logp / max(sum m w, 1e-6)` (TAB-PO).
    WeightedMean = 3,
}

impl ReduceMode {
    /// True for the modes that read token weights.
    pub fn uses_weights(self) -> bool {
        matches!(self, ReduceMode::WeightedSum | ReduceMode::WeightedMean)
    }
}

/// Where the sequences lie in the token arrays (host view; the GPU API takes the same on device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqLayout<'a> {
    /// Packed variable-length sequences: sequence s is tokens `cu_seqlens[s] .. cu_seqlens[s + 1]`.
    Packed {
        /// Offsets, length S + 1.
        cu_seqlens: &'a [i32],
    },
    /// Padded `[n_seqs, seq_len]`: sequence s is tokens `s * seq_len .. (s + 1) * seq_len`.
    Padded {
        /// Number of sequences B.
        n_seqs: usize,
        /// Padded length L.
        seq_len: usize,
    },
}

impl SeqLayout<'_> {
    /// Number of sequences.
    pub fn n_seqs(&self) -> usize {
        match self {
            SeqLayout::Packed { cu_seqlens } => cu_seqlens.len().saturating_sub(1),
            SeqLayout::Padded { n_seqs, .. } => *n_seqs,
        }
    }

    /// Token range of sequence `s`.
    pub fn range(&self, s: usize) -> std::ops::Range<usize> {
        match self {
            SeqLayout::Packed { cu_seqlens } => cu_seqlens[s] as usize..cu_seqlens[s + 1] as usize,
            SeqLayout::Padded { seq_len, .. } => s * seq_len..(s + 1) * seq_len,
        }
    }

    /// Checks the layout against `n_tokens`: offsets non-decreasing, within `[0, n_tokens]`.
    pub fn validate(&self, n_tokens: usize) -> Result<()> {
        match self {
            SeqLayout::Packed { cu_seqlens } => {
                ensure(!cu_seqlens.is_empty(), "cu_seqlens", || {
                    "needs at least one offset (S + 1 >= 1)".into()
                })?;
                for (s, w) in cu_seqlens.windows(2).enumerate() {
                    ensure(w[0] >= 0 && w[0] <= w[1], "cu_seqlens", || {
                        format!(
                            "must be non-decreasing from >= 0; cu_seqlens[{s}] = {}, cu_seqlens[{}] = {}",
                            w[0],
                            s + 1,
                            w[1]
                        )
                    })?;
                }
                let last = *cu_seqlens.last().unwrap();
                ensure(last >= 0 && last as usize <= n_tokens, "cu_seqlens", || {
                    format!("last offset {last} exceeds n_tokens ({n_tokens})")
                })
            }
            SeqLayout::Padded { n_seqs, seq_len } => {
                let total = n_seqs
                    .checked_mul(*seq_len)
                    .ok_or_else(|| invalid("seq_len", "n_seqs * seq_len overflows"))?;
                ensure(total <= n_tokens, "seq_len", || {
                    format!("n_seqs * seq_len = {total} exceeds n_tokens ({n_tokens})")
                })
            }
        }
    }
}

/// Per-token inputs (host view).
#[derive(Debug, Clone, Copy)]
pub struct TokenInputs<'a> {
    /// Per-token policy log-probs, length T (e.g. from the token log-probs op).
    pub logp: &'a [f32],
    /// Loss mask, 1 on response tokens; `None` = every token counts.
    pub mask: Option<&'a [u8]>,
    /// Token weights; `None` = 1.
    pub weights: Option<&'a [f32]>,
    /// Per-token reference log-probs (used by the preference losses); `None` = not given.
    pub ref_logp: Option<&'a [f32]>,
}

impl TokenInputs<'_> {
    /// Number of tokens T.
    pub fn n_tokens(&self) -> usize {
        self.logp.len()
    }

    /// Checks that every given array has length T and the layout fits.
    pub fn validate(&self, layout: &SeqLayout) -> Result<()> {
        let t = self.n_tokens();
        ensure(t <= i64::MAX as usize, "logp", || "too many tokens".into())?;
        if let Some(m) = self.mask {
            ensure(m.len() == t, "mask", || format!("length must equal logp's ({t}), got {}", m.len()))?;
        }
        if let Some(w) = self.weights {
            ensure(w.len() == t, "weights", || format!("length must equal logp's ({t}), got {}", w.len()))?;
        }
        if let Some(r) = self.ref_logp {
            ensure(r.len() == t, "ref_logp", || format!("length must equal logp's ({t}), got {}", r.len()))?;
        }
        layout.validate(t)
    }
}

/// Number of f32 statistics per sequence computed by the GPU statistics kernel
/// (see `kernels/params.h`: count, weight mass, sums of logp / w logp / logp - ref / w (logp - ref),
/// gated sums).
pub const SEQ_STATS_LEN: usize = 10;
