//! Token log-probs from hidden states and the LM-head weight (the fused LM head):
//! `logits = hidden · weightᵀ (+ bias)`, `[N, H] × [V, H]ᵀ`, then the token log-probs op, without
//! an `[N, V]` logits tensor on the device.
//!
//! The rows whose target is not `ignore_index` are planned on the host into chunks that fit a
//! caller-given workspace budget; each chunk is one GEMM into `[m, V]` workspace logits, the
//! token log-probs kernels on them and, for a backward, d/dlogits in place followed by two GEMMs
//! (`d_weight += dLᵀ X` in f32, chunk order; `d_hidden = dL · W`). Ignored rows never reach a
//! GEMM. GEMMs are cuBLAS on CUDA and a host GEMM on the emulator.
//!
//! Layers: [`reference`](mod@reference) (f64, naive GEMMs: the oracle), the safe API
//! ([`crate::Gpu::linear_logprobs_forward`], [`crate::Gpu::linear_logprobs_backward`] for any
//! per-token loss, and the whole preference step [`crate::Gpu::linear_preference_step`], chunked
//! by pairs so each chunk's loss gradient is known inside it: three GEMMs per token).
use crate::error::{ensure, Result};

pub(crate) mod launch;
pub(crate) mod plan;
pub mod reference;
mod shard;

pub use launch::{
    LinearConfig, LinearForwardOutputs, LinearForwardViews, LinearGradBuffers, LinearGradViews, LinearHead,
    LinearRun, DEFAULT_WORKSPACE_BYTES,
};
pub use plan::{min_workspace_bytes, workspace_bytes_per_row};

/// Shape of a linear log-probs problem: `n_rows` hidden states of width `hidden`, a vocabulary of
/// `vocab` rows in the weight (row-major `[vocab, hidden]`, contiguous).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearShape {
    /// N tokens.
    pub n_rows: usize,
    /// H, the model width (>= 1).
    pub hidden: usize,
    /// V (>= 1).
    pub vocab: usize,
}

impl LinearShape {
    /// Checks the sizes (H, V >= 1; N·H, V·H and N·V fit in i64) and the lengths of the inputs.
    pub fn validate(
        &self,
        hidden_len: usize,
        weight_len: usize,
        bias_len: Option<usize>,
        targets_len: usize,
    ) -> Result<()> {
        ensure(self.hidden >= 1 && self.vocab >= 1, "shape", || {
            format!("H and V must be >= 1, got {self:?}")
        })?;
        let fits = |a: usize, b: usize| a.checked_mul(b).filter(|&x| x <= i64::MAX as usize);
        let (nh, vh) = (fits(self.n_rows, self.hidden), fits(self.vocab, self.hidden));
        ensure(nh.is_some() && vh.is_some() && fits(self.n_rows, self.vocab).is_some(), "shape", || {
            format!("{self:?}: N·H, V·H or N·V exceeds i64::MAX")
        })?;
        ensure(nh == Some(hidden_len), "hidden", || {
            format!("needs N·H = {} elements ({self:?}), got {hidden_len}", nh.unwrap_or(0))
        })?;
        ensure(vh == Some(weight_len), "weight", || {
            format!(
                "needs V·H = {} elements ({self:?}: a contiguous [V, H] weight), got {weight_len}",
                vh.unwrap_or(0)
            )
        })?;
        if let Some(b) = bias_len {
            ensure(b == self.vocab, "bias", || format!("needs V = {} elements, got {b}", self.vocab))?;
        }
        ensure(targets_len == self.n_rows, "targets", || {
            format!("needs N = {} targets, got {targets_len}", self.n_rows)
        })
    }
}
