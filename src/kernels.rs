//! The CUDA modules embedded at build time (see build.rs), one fatbin per `kernels/*.cu`.
#![allow(missing_docs)]
include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Every embedded module as (name, fatbin); the fatbin is `None` when built without nvcc.
pub const MODULES: &[(&str, Option<&[u8]>)] = &[
    ("token_logprobs", TOKEN_LOGPROBS),
    ("seq_reduce", SEQ_REDUCE),
    ("pref_loss", PREF_LOSS),
    ("prefix_attn", PREFIX_ATTN),
    ("grpo", GRPO),
    ("group_loss", GROUP_LOSS),
    ("linear_logprobs", LINEAR_LOGPROBS),
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
