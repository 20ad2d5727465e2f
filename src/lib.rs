//! # pref-kernels
//!
//! Hand-written CUDA kernels for preference-optimization training (DPO family, TAB-PO, GRPO):
//! fused token log-probs from logits without materializing the log-softmax, and (in later
//! modules) per-sequence reductions, fused preference losses and shared-prefix attention.
//!
//! Every op comes in three layers:
//! - a CPU reference accumulating in f64 (`<op>::reference`), the oracle of the tests;
//! - a safe GPU API on cudarc buffers ([`Gpu`] methods), running on the caller's stream;
//! - an unsafe raw API on `u64` device pointers plus a raw `CUstream` (`*_raw` methods), for
//!   trainers that own their memory (PyTorch `data_ptr()`, candle, burn).
//!
//! The crate builds and its CPU path works on machines with no CUDA at all: the driver is loaded
//! dynamically, and [`Gpu::new`] returns a clear error (no driver, old driver, kernels not built)
//! instead of panicking.
#![warn(missing_docs)]

pub mod dtype;
pub mod error;
pub mod ffi;
pub mod group_loss;
pub mod grpo;
pub mod kernels;
pub mod linear_token_logprobs;
mod lm_head;
mod numeric;
pub mod params;
pub mod preference_loss;
pub mod runtime;
pub mod seq_reduce;
pub mod shared_prefix_attention;
pub mod step;
pub mod token_logprobs;
pub mod vocab_parallel;

pub use dtype::{DType, IndexType, LogitElement, TargetIndex};
pub use error::{Error, Result};
pub use runtime::{
    gpu_available, Backend, BackendKind, DeviceBuffer, EmulatorChecks, Gpu, Stream, View, ViewMut,
};
pub use token_logprobs::{LogitsLayout, TokenLogprobsConfig};

/// Re-export of the cudarc version this crate is built against, so callers use matching types.
pub use cudarc;
/// Re-export of `half` (f16 / bf16 host types).
pub use half;

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The Rust examples of `docs/`, compiled as doctests like the README's.
#[cfg(doctest)]
pub mod doc_examples {
    #[doc = include_str!("../docs/losses.md")]
    pub struct Losses;
    #[doc = include_str!("../docs/grpo.md")]
    pub struct Grpo;
    #[doc = include_str!("../docs/fused-head.md")]
    pub struct FusedHead;
    #[doc = include_str!("../docs/vocab-parallel.md")]
    pub struct VocabParallel;
    #[doc = include_str!("../docs/attention.md")]
    pub struct Attention;
    #[doc = include_str!("../docs/rust-and-c-api.md")]
    pub struct RustAndCApi;
}
