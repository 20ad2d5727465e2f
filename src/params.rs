//! `#[repr(C)]` mirrors of the structs in `kernels/params.h`, passed by value to the kernels.
//!
//! The header is the source of truth. These structs are hand-kept in sync and checked at compile
//! time (size and a few offsets) against the values the header's `static_assert`s pin, and
//! field by field against the header by `tests/params_header.rs`; with the `regen-bindings`
//! feature, bindgen regenerates them from the header into `generated` and that test compares
//! the two layouts too.
#![allow(missing_docs)]
use std::mem::{offset_of, size_of};

/// Status bit: a target was outside `[0, vocab)` and not `ignore_index`.
pub const STATUS_BAD_TARGET: u32 = 1;

/// f32 softmax statistics per row (`PREFK_SOFTMAX_STATS`), written by the forward passes and read
/// by the backward passes: the row max `m` of the raw logits and `log2 Σ_v 2^((x_v − m)·log2(e)/T)`.
/// The backward forms `p_v` from `x_v − m` (exact near the max) instead of from a rounded lse.
pub const SOFTMAX_STATS: usize = 2;
/// Index of the row max `m` (in the logits' units, not divided by T).
pub const STATS_MAX: usize = 0;
/// Index of `log2 Σ_v 2^((x_v − m)·log2(e)/T)`; `lse = m/T + ln2·this`.
pub const STATS_LOG2_SUM: usize = 1;

/// Mirror of `TokenLogprobsFwdParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TokenLogprobsFwdParams {
    pub logits: u64,
    pub targets: u64,
    pub logp: u64,
    pub lse: u64,
    pub entropy: u64,
    pub status: u64,
    pub n_rows: i64,
    pub row_stride: i64,
    pub vocab: i64,
    pub ignore_index: i64,
    pub inv_temperature: f32,
    pub reserved: u32,
    pub stats: u64,
    pub log_sum_sq: u64,
    pub mean_logits: u64,
    pub is_top1: u64,
}

/// Largest k of the top-k log-probs (`PREFK_TOPK_MAX`).
pub const TOPK_MAX: usize = 64;

/// Mirror of `TokenTopkParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TokenTopkParams {
    pub logits: u64,
    pub targets: u64,
    pub stats: u64,
    pub topk_logp: u64,
    pub topk_ids: u64,
    pub status: u64,
    pub n_rows: i64,
    pub row_stride: i64,
    pub vocab: i64,
    pub ignore_index: i64,
    pub k: i64,
    pub inv_temperature: f32,
    pub reserved: u32,
}

/// Mirror of `TokenLogprobsBwdParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TokenLogprobsBwdParams {
    pub logits: u64,
    pub targets: u64,
    pub stats: u64,
    pub grad_logp: u64,
    pub grad_logits: u64,
    pub status: u64,
    pub n_rows: i64,
    pub logits_stride: i64,
    pub grad_stride: i64,
    pub vocab: i64,
    pub ignore_index: i64,
    pub inv_temperature: f32,
    pub reserved: u32,
    pub entropy: u64,
    pub grad_entropy: u64,
}

const _: () = {
    assert!(size_of::<TokenLogprobsFwdParams>() == 120);
    assert!(offset_of!(TokenLogprobsFwdParams, is_top1) == 112);
    assert!(size_of::<TokenTopkParams>() == 96);
    assert!(offset_of!(TokenTopkParams, k) == 80);
    assert!(offset_of!(TokenTopkParams, inv_temperature) == 88);
    assert!(offset_of!(TokenLogprobsFwdParams, log_sum_sq) == 96);
    assert!(offset_of!(TokenLogprobsFwdParams, stats) == 88);
    assert!(offset_of!(TokenLogprobsFwdParams, status) == 40);
    assert!(offset_of!(TokenLogprobsFwdParams, n_rows) == 48);
    assert!(offset_of!(TokenLogprobsFwdParams, ignore_index) == 72);
    assert!(offset_of!(TokenLogprobsFwdParams, inv_temperature) == 80);
    assert!(size_of::<TokenLogprobsBwdParams>() == 112);
    assert!(offset_of!(TokenLogprobsBwdParams, status) == 40);
    assert!(offset_of!(TokenLogprobsBwdParams, n_rows) == 48);
    assert!(offset_of!(TokenLogprobsBwdParams, ignore_index) == 80);
    assert!(offset_of!(TokenLogprobsBwdParams, inv_temperature) == 88);
};

// SAFETY: plain-old-data #[repr(C)] structs of integers/floats, layout-checked above against the
// header the kernels are compiled with.
unsafe impl cudarc::driver::DeviceRepr for TokenLogprobsFwdParams {}
unsafe impl cudarc::driver::DeviceRepr for TokenLogprobsBwdParams {}
unsafe impl cudarc::driver::DeviceRepr for TokenTopkParams {}

/// Status bit: `cu_seqlens` not non-decreasing within `[0, n_tokens]`.
pub const STATUS_BAD_SEQLENS: u32 = 2;
/// Status bit: a pair index outside `[0, n_seqs)`.
pub const STATUS_BAD_PAIR: u32 = 4;
/// Status bit: a gather/scatter row index of the fused LM head outside its range.
pub const STATUS_BAD_ROW_INDEX: u32 = 8;

/// Mirror of `SeqStatsParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SeqStatsParams {
    pub logp: u64,
    pub mask: u64,
    pub weights: u64,
    pub ref_logp: u64,
    pub cu_seqlens: u64,
    pub stats: u64,
    pub scores: u64,
    pub status: u64,
    pub n_tokens: i64,
    pub n_seqs: i64,
    pub seq_len: i64,
    pub log_tau: f32,
    pub mode: u32,
}

/// Mirror of `TokenGradParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TokenGradParams {
    pub logp: u64,
    pub mask: u64,
    pub weights: u64,
    pub cu_seqlens: u64,
    pub seq_coef: u64,
    pub dscores: u64,
    pub stats: u64,
    pub grad_logp: u64,
    pub n_tokens: i64,
    pub n_seqs: i64,
    pub seq_len: i64,
    pub log_tau: f32,
    pub mode: u32,
    pub scale: f32,
    pub reserved: u32,
}

/// Mirror of `LossTerm`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossTerm {
    pub kind: u32,
    pub weight: f32,
    pub beta: f32,
    pub p0: f32,
    pub p1: f32,
    pub p2: f32,
    pub agg: u32,
    pub flags: u32,
}

/// Most loss terms per call (`PREFK_MAX_LOSS_TERMS`).
pub const MAX_LOSS_TERMS: usize = 4;

/// Mirror of `PreferenceLossParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PreferenceLossParams {
    pub stats: u64,
    pub ref_seq: u64,
    pub chosen: u64,
    pub rejected: u64,
    pub pair_out: u64,
    pub metrics: u64,
    pub pair_coef: u64,
    pub seq_coef: u64,
    pub status: u64,
    pub n_seqs: i64,
    pub n_pairs: i64,
    pub n_terms: u32,
    pub divergence: u32,
    pub alpha_div: f32,
    pub grad_scale: f32,
    pub terms: [LossTerm; MAX_LOSS_TERMS],
    /// Pairs the mean divides by (0: `n_pairs`): a chunk of a larger batch gives the batch's.
    pub batch_pairs: i64,
    /// Chosen tokens the NLL term divides by (< 0: the sub-batch's own count).
    pub batch_nll_count: f32,
    pub flags: u32,
    pub seq_weights: u64,
    pub pair_sort: u64,
}

const _: () = {
    assert!(size_of::<SeqStatsParams>() == 96);
    assert!(offset_of!(SeqStatsParams, n_tokens) == 64);
    assert!(offset_of!(SeqStatsParams, log_tau) == 88);
    assert!(size_of::<TokenGradParams>() == 104);
    assert!(offset_of!(TokenGradParams, n_tokens) == 64);
    assert!(offset_of!(TokenGradParams, scale) == 96);
    assert!(size_of::<LossTerm>() == 32);
    assert!(offset_of!(LossTerm, agg) == 24);
    assert!(size_of::<PreferenceLossParams>() == 264);
    assert!(offset_of!(PreferenceLossParams, pair_sort) == 256);
    assert!(offset_of!(PreferenceLossParams, batch_pairs) == 232);
    assert!(offset_of!(PreferenceLossParams, n_seqs) == 72);
    assert!(offset_of!(PreferenceLossParams, n_terms) == 88);
    assert!(offset_of!(PreferenceLossParams, terms) == 104);
};

// SAFETY: plain-old-data #[repr(C)] structs, layout-checked above against kernels/params.h.
unsafe impl cudarc::driver::DeviceRepr for SeqStatsParams {}
unsafe impl cudarc::driver::DeviceRepr for TokenGradParams {}
unsafe impl cudarc::driver::DeviceRepr for PreferenceLossParams {}

/// Mirror of `SharedPrefixAttentionParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SharedPrefixAttentionParams {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub o: u64,
    pub lse: u64,
    pub dout: u64,
    pub dq: u64,
    pub dk: u64,
    pub dv: u64,
    pub delta: u64,
    pub tiles: u64,
    pub seg_lo2: u64,
    pub n_tokens: i64,
    pub n_tiles: i64,
    pub q_heads: i32,
    pub kv_heads: i32,
    pub scale: f32,
    pub reserved: u32,
}

const _: () = {
    assert!(size_of::<SharedPrefixAttentionParams>() == 128);
    assert!(offset_of!(SharedPrefixAttentionParams, n_tokens) == 96);
    assert!(offset_of!(SharedPrefixAttentionParams, scale) == 120);
};

// SAFETY: plain-old-data #[repr(C)] struct, layout-checked above against kernels/params.h.
unsafe impl cudarc::driver::DeviceRepr for SharedPrefixAttentionParams {}

/// Mirror of `GrpoParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GrpoParams {
    pub logp: u64,
    pub old_logp: u64,
    pub sampling_logp: u64,
    pub ref_logp: u64,
    pub mask: u64,
    pub is_weights: u64,
    pub entropy: u64,
    pub advantages: u64,
    pub cu_seqlens: u64,
    pub seq_work: u64,
    pub threshold: u64,
    pub metrics: u64,
    pub grad_logp: u64,
    pub grad_entropy: u64,
    pub status: u64,
    pub n_tokens: i64,
    pub n_seqs: i64,
    pub seq_len: i64,
    pub agg: u32,
    pub surrogate: u32,
    pub flags: u32,
    pub eps_low: f32,
    pub eps_high: f32,
    pub delta: f32,
    pub beta: f32,
    pub entropy_coef: f32,
    pub quantile: f32,
    pub agg_param: f32,
    pub tau_pos: f32,
    pub tau_neg: f32,
    pub grad_scale: f32,
    pub accum_steps: f32,
    pub off_policy_threshold: f32,
    pub vespo_k_pos: f32,
    pub vespo_lambda_pos: f32,
    pub vespo_k_neg: f32,
    pub vespo_lambda_neg: f32,
    pub batch_seqs: f32,
    pub batch_tokens: f32,
    pub reserved: u32,
}

/// Fields per sequence of the GRPO workspace (`PREFK_GRPO_SEQ_FIELDS`).
pub const GRPO_SEQ_FIELDS: usize = 15;

const _: () = {
    assert!(size_of::<GrpoParams>() == 232);
    assert!(offset_of!(GrpoParams, n_tokens) == 120);
    assert!(offset_of!(GrpoParams, agg) == 144);
    assert!(offset_of!(GrpoParams, grad_scale) == 192);
    assert!(offset_of!(GrpoParams, vespo_lambda_neg) == 216);
    assert!(offset_of!(GrpoParams, batch_tokens) == 224);
};

// SAFETY: plain-old-data #[repr(C)] struct, layout-checked above against kernels/params.h.
unsafe impl cudarc::driver::DeviceRepr for GrpoParams {}

/// Mirror of `GroupLossParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GroupLossParams {
    pub stats: u64,
    pub ref_seq: u64,
    pub labels: u64,
    pub seq_coef: u64,
    pub seq_out: u64,
    pub scratch: u64,
    pub metrics: u64,
    pub n_seqs: i64,
    pub group_size: i64,
    pub kind: u32,
    pub flags: u32,
    pub beta: f32,
    pub p0: f32,
    pub p1: f32,
    pub kl_given: f32,
    pub grad_scale: f32,
    pub reserved: u32,
}

const _: () = {
    assert!(size_of::<GroupLossParams>() == 104);
    assert!(offset_of!(GroupLossParams, kind) == 72);
    assert!(offset_of!(GroupLossParams, grad_scale) == 96);
};

// SAFETY: plain-old-data #[repr(C)] struct, layout-checked above against kernels/params.h.
unsafe impl cudarc::driver::DeviceRepr for GroupLossParams {}

/// Mirror of `LinearRowsParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinearRowsParams {
    pub src: u64,
    pub dst: u64,
    pub index: u64,
    pub status: u64,
    pub n_rows: i64,
    pub width: i64,
    pub src_stride: i64,
    pub dst_stride: i64,
    pub bound: i64,
}

/// Mirror of `LinearBiasParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinearBiasParams {
    pub bias: u64,
    pub logits: u64,
    pub n_rows: i64,
    pub vocab: i64,
}

const _: () = {
    assert!(size_of::<LinearRowsParams>() == 72);
    assert!(offset_of!(LinearRowsParams, n_rows) == 32);
    assert!(size_of::<LinearBiasParams>() == 32);
};

// SAFETY: plain-old-data #[repr(C)] structs, layout-checked above against kernels/params.h.
unsafe impl cudarc::driver::DeviceRepr for LinearRowsParams {}
unsafe impl cudarc::driver::DeviceRepr for LinearBiasParams {}

/// Status bit: a used row's target is held by no vocabulary shard, or by several (the shards do
/// not tile the vocabulary).
pub const STATUS_BAD_SHARDS: u32 = 16;
/// f32 partial statistics per row and vocabulary shard (`PREFK_VP_STATS`).
pub const VP_STATS: usize = 5;
/// Index of the shard's max `m` of the raw logits `x` in a partial row.
pub const VP_MAX: usize = 0;
/// Index of `Σ 2^d`, `d = (x - m)·log2(e)/T`.
pub const VP_SUMEXP: usize = 1;
/// Index of `Σ 2^d·d` (base 2; NaN without entropy).
pub const VP_ENTROPY: usize = 2;
/// Index of the target's raw logit `x_t` (0 when the shard does not hold the target).
pub const VP_TARGET: usize = 3;
/// Index of the owner flag (1 when the shard holds the target, else 0).
pub const VP_OWNER: usize = 4;

/// Mirror of `VocabShardFwdParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VocabShardFwdParams {
    pub logits: u64,
    pub targets: u64,
    pub partials: u64,
    pub status: u64,
    pub n_rows: i64,
    pub row_stride: i64,
    pub shard_vocab: i64,
    pub vocab_start: i64,
    pub vocab: i64,
    pub ignore_index: i64,
    pub inv_temperature: f32,
    pub reserved: u32,
}

/// Mirror of `VocabFinalizeParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VocabFinalizeParams {
    pub partials: u64,
    pub targets: u64,
    pub logp: u64,
    pub lse: u64,
    pub entropy: u64,
    pub status: u64,
    pub n_rows: i64,
    pub n_shards: i64,
    pub vocab: i64,
    pub ignore_index: i64,
    pub stats: u64,
    pub inv_temperature: f32,
    pub reserved: u32,
}

/// Mirror of `VocabShardBwdParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VocabShardBwdParams {
    pub rows: TokenLogprobsBwdParams,
    pub vocab_start: i64,
    pub vocab: i64,
}

const _: () = {
    assert!(size_of::<VocabShardFwdParams>() == 88);
    assert!(offset_of!(VocabShardFwdParams, inv_temperature) == 80);
    assert!(size_of::<VocabFinalizeParams>() == 96);
    assert!(offset_of!(VocabFinalizeParams, inv_temperature) == 88);
    assert!(size_of::<VocabShardBwdParams>() == 128);
    assert!(offset_of!(VocabShardBwdParams, vocab_start) == 112);
};

// SAFETY: plain-old-data #[repr(C)] structs, layout-checked above against kernels/params.h.
unsafe impl cudarc::driver::DeviceRepr for VocabShardFwdParams {}
unsafe impl cudarc::driver::DeviceRepr for VocabFinalizeParams {}
unsafe impl cudarc::driver::DeviceRepr for VocabShardBwdParams {}

/// bindgen's output for `kernels/params.h` (feature `regen-bindings`, needs libclang).
#[cfg(feature = "regen-bindings")]
#[allow(non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code, missing_docs, clippy::all)]
pub mod generated {
    include!(concat!(env!("OUT_DIR"), "/params_bindings.rs"));
}
