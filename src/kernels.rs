//! The CUDA modules embedded at build time (see build.rs), one fatbin per `kernels/*.cu`.
#![allow(missing_docs)]
include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Every embedded module as (name, fatbin); the fatbin is `None` when built without nvcc.
pub const MODULES: &[(&str, Option<&[u8]>)] = &[("token_logprobs", TOKEN_LOGPROBS)];

/// True when the kernels were compiled into this build.
pub const fn built() -> bool {
    TOKEN_LOGPROBS.is_some()
}
