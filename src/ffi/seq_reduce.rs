//! C ABI of the per-sequence reductions and their backward.

use super::args::*;
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
/// `args` points to a readable [`PrefkSeqReduceArgs`] whose `struct_size` is set (`PrefkSeqReduceArgs::new()`).
/// As [`Gpu::seq_reduce_raw`](crate::Gpu::seq_reduce_raw).
#[no_mangle]
pub unsafe extern "C" fn prefk_seq_reduce(args: *const PrefkSeqReduceArgs) -> i32 {
    ffi(|| {
        // SAFETY: the caller passes one argument struct (see # Safety).
        let PrefkSeqReduceArgs {
            device,
            stream,
            logp,
            mask,
            weights,
            n_tokens,
            cu_seqlens,
            n_seqs,
            seq_len,
            mode,
            scores,
            stats,
            status,
            ..
        } = unsafe { read_args(args) }?;
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
/// `args` points to a readable [`PrefkSeqReduceBackwardArgs`] whose `struct_size` is set (`PrefkSeqReduceBackwardArgs::new()`).
/// As [`Gpu::seq_reduce_backward_raw`](crate::Gpu::seq_reduce_backward_raw).
#[no_mangle]
pub unsafe extern "C" fn prefk_seq_reduce_backward(args: *const PrefkSeqReduceBackwardArgs) -> i32 {
    ffi(|| {
        // SAFETY: the caller passes one argument struct (see # Safety).
        let PrefkSeqReduceBackwardArgs {
            device,
            stream,
            logp,
            mask,
            weights,
            n_tokens,
            cu_seqlens,
            n_seqs,
            seq_len,
            mode,
            dscores,
            stats,
            grad_logp,
            ..
        } = unsafe { read_args(args) }?;
        let (tokens, n, layout, mode) =
            reduce_inputs(logp, mask, weights, n_tokens, cu_seqlens, n_seqs, seq_len, mode)?;
        let ptrs = TokenGradPtrs { dscores, stats, grad_logp };
        // SAFETY: forwarded to the caller.
        unsafe { gpu(device)?.seq_reduce_backward_raw(stream, &tokens, n, layout, mode, &ptrs) }
    })
}
