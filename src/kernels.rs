//! The CUDA modules embedded at build time (see build.rs), one fatbin per `kernels/*.cu`.
#![allow(missing_docs)]
include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Every embedded module as (name, fatbin); the fatbin is `None` when built without nvcc.
pub const MODULES: &[(&str, Option<&[u8]>)] = &[
    ("token_logprobs", TOKEN_LOGPROBS),
    ("seq_reduce", SEQ_REDUCE),
    ("preference_loss", PREFERENCE_LOSS),
    ("shared_prefix_attention", SHARED_PREFIX_ATTENTION),
    ("grpo", GRPO),
    ("group_loss", GROUP_LOSS),
    ("linear_token_logprobs", LINEAR_TOKEN_LOGPROBS),
    ("vocab_parallel", VOCAB_PARALLEL),
];

/// True when the kernels were compiled into this build.
pub const fn built() -> bool {
    let mut i = 0;
    while i < MODULES.len() {
        if MODULES[i].1.is_none() {
            return false;
        }
        i += 1;
    }
    true
}
