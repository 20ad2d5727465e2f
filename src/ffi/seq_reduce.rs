//! C ABI of the per-sequence reductions and their backward.

use super::plumbing::*;
use crate::error::Result;
use crate::seq_reduce::{DeviceSeqLayout, ReduceMode, SeqReducePtrs, TokenGradPtrs};

/// The token inputs, layout and mode both reduction entry points decode.
#[allow(clippy::too_many_arguments)]
pub(super) fn reduce_inputs(
    logp: u64,
    mask: u64,
    weights: u64,
    n_tokens: i64,
    cu_seqlens: u64,
    n_seqs: i64,
    seq_len: i64,
    mode: u32,
) -> Result<(SeqReducePtrs, usize, DeviceSeqLayout, ReduceMode)> {
    Ok((
        SeqReducePtrs { logp, mask, weights, ref_logp: 0 },
        size("n_tokens", n_tokens)?,
        seq_layout(cu_seqlens, n_seqs, seq_len)?,
        reduce_mode(mode)?,
    ))
}

/// Per-sequence scores of masked per-token log-probs ([`Gpu::seq_reduce_raw`](crate::Gpu::seq_reduce_raw)): `mode` 0 sum,
/// 1 mean, 2 weighted sum, 3 weighted mean; `cu_seqlens` 0 selects the padded layout. Writes
/// `scores` (`[n_seqs]` f32, or 0) and `stats` (`[n_seqs, 10]` f32, or 0; the backward needs them).
///
/// # Safety
/// As [`Gpu::seq_reduce_raw`](crate::Gpu::seq_reduce_raw).
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn prefk_seq_reduce(
    device: i32,
    stream: u64,
    logp: u64,
    mask: u64,
    weights: u64,
    n_tokens: i64,
    cu_seqlens: u64,
    n_seqs: i64,
    seq_len: i64,
    mode: u32,
    scores: u64,
    stats: u64,
    status: u64,
) -> i32 {
    ffi(|| {
        let (tokens, n, layout, mode) =
            reduce_inputs(logp, mask, weights, n_tokens, cu_seqlens, n_seqs, seq_len, mode)?;
        // SAFETY: forwarded to the caller.
        unsafe { gpu(device)?.seq_reduce_raw(stream, &tokens, n, layout, mode, scores, stats, status) }
    })
}

/// The backward of [`prefk_seq_reduce`]: `grad_logp[t] = dscores[s] · d score_s / d logp_t`
/// (`[n_tokens]` f32, 0 on masked tokens), from the forward's `stats`.
///
/// # Safety
/// As [`Gpu::seq_reduce_backward_raw`](crate::Gpu::seq_reduce_backward_raw).
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn prefk_seq_reduce_backward(
    device: i32,
    stream: u64,
    logp: u64,
    mask: u64,
    weights: u64,
    n_tokens: i64,
    cu_seqlens: u64,
    n_seqs: i64,
    seq_len: i64,
    mode: u32,
    dscores: u64,
    stats: u64,
    grad_logp: u64,
) -> i32 {
    ffi(|| {
        let (tokens, n, layout, mode) =
            reduce_inputs(logp, mask, weights, n_tokens, cu_seqlens, n_seqs, seq_len, mode)?;
        let ptrs = TokenGradPtrs { dscores, stats, grad_logp };
        // SAFETY: forwarded to the caller.
        unsafe { gpu(device)?.seq_reduce_backward_raw(stream, &tokens, n, layout, mode, &ptrs) }
    })
}
