//! The CUDA modules embedded at build time (see build.rs), one fatbin per `kernels/*.cu`.
#![allow(missing_docs)]
include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Every embedded module as (name, fatbin); the fatbin is `None` when built without nvcc.
pub const MODULES: &[(&str, Option<&[u8]>)] = &[
    ("token_logprobs", TOKEN_LOGPROBS),
    ("seq_reduce", SEQ_REDUCE),
    ("pref_loss", PREF_LOSS),
    ("prefix_attn", PREFIX_ATTN),
];

/// True when the kernels were compiled into this build.
pub const fn built() -> bool {
    TOKEN_LOGPROBS.is_some() && SEQ_REDUCE.is_some() && PREF_LOSS.is_some() && PREFIX_ATTN.is_some()
}
