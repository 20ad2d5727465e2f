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

/// Names of every `extern "C"` entry point of a module, as the launch code looks them up.
pub fn entry_points(module: &str) -> Vec<String> {
    match module {
        "token_logprobs" => crate::token_logprobs::launch::entry_points(),
        "seq_reduce" => vec!["seq_stats".into(), "token_grad".into()],
        "pref_loss" => vec!["pair_loss".into()],
        "prefix_attn" => crate::prefix_attn::launch::entry_points(),
        _ => Vec::new(),
    }
}
