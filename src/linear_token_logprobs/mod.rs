//! Token log-probs from hidden states and the LM-head weight (the fused LM head):
//! `logits = hidden · weightᵀ (+ bias)`, `[N, H] × [V, H]ᵀ`, then the token log-probs op, without
//! an `[N, V]` logits tensor on the device.
//!
//! The rows whose target is not `ignore_index` are planned on the host into chunks that fit a
//! caller-given workspace budget; each chunk is one GEMM into `[m, V]` workspace logits, the
//! token log-probs kernels on them and, for a backward, d/dlogits in place followed by two GEMMs
//! (`d_weight += dLᵀ X` in f32, chunk order; `d_hidden = dL · W`). Ignored rows never reach a
//! GEMM. GEMMs are cuBLAS on CUDA and a host GEMM on the emulator. The stream-ordered variants
//! ([`crate::Gpu::linear_token_logprobs_forward_ordered`] and its backward) project every row
//! instead, in the caller's workspace, with no host synchronization: what a PyTorch op and a
//! CUDA graph need.
//!
//! Layers: [`reference`](mod@reference) (f64, naive GEMMs: the oracle), the safe API
//! ([`crate::Gpu::linear_token_logprobs_forward`], [`crate::Gpu::linear_token_logprobs_backward`] for any
//! per-token loss, and the whole preference step [`crate::Gpu::linear_preference_step`], chunked
//! by pairs so each chunk's loss gradient is known inside it: three GEMMs per token).

pub(crate) mod launch;
pub(crate) mod ordered;
pub mod reference;

pub use crate::lm_head::{
    min_workspace_bytes, workspace_bytes_per_row, LinearConfig, LinearForwardOutputs, LinearForwardViews,
    LinearGradBuffers, LinearGradViews, LinearHead, LinearRun, LinearShape, TopkViews,
    DEFAULT_WORKSPACE_BYTES,
};
pub use ordered::{ordered_workspace_bytes, OrderedWorkspace, ORDERED_WORKSPACE_ALIGN};
