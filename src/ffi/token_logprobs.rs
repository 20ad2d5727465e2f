//! C ABI of the token log-probs op (logits in, log-probs / entropy / gradients out).

use super::args::*;
use super::plumbing::*;
use crate::error::ensure;
use crate::token_logprobs::{TokenLogprobsBwdPtrs, TokenLogprobsConfig, TokenLogprobsFwdPtrs, TokenTopkPtrs};

/// Token log-probs forward ([`Gpu::token_logprobs_forward_raw`](crate::Gpu::token_logprobs_forward_raw)). `stats` (`[n_rows, 2]` f32,
/// what the backward reads), `entropy`, `log_sum_sq` (`[n_rows]` f32 log Σ p², WPO's term; needs
/// `entropy`) and `status` may be 0.
///
/// # Safety
/// `args` points to a readable [`PrefkTokenLogprobsForwardArgs`] whose `struct_size` is set (`PrefkTokenLogprobsForwardArgs::new()`).
/// As [`Gpu::token_logprobs_forward_raw`](crate::Gpu::token_logprobs_forward_raw): every non-zero pointer is device memory of `device`
/// sized for the shapes given, `stream` is 0 or a live stream of that device's primary context.
#[no_mangle]
pub unsafe extern "C" fn prefk_token_logprobs_forward(args: *const PrefkTokenLogprobsForwardArgs) -> i32 {
    ffi(|| {
        // SAFETY: the caller passes one argument struct (see # Safety).
        let PrefkTokenLogprobsForwardArgs {
            device,
            stream,
            dtype_code,
            index_code,
            logits,
            targets,
            logp,
            lse,
            stats,
            entropy,
            log_sum_sq,
            status,
            n_rows,
            vocab,
            row_stride,
            ignore_index,
            temperature,
            mean_logits,
            is_top1,
            ..
        } = unsafe { read_args(args) }?;
        let layout = logits_layout(n_rows, vocab, row_stride)?;
        let cfg = TokenLogprobsConfig {
            ignore_index,
            temperature,
            compute_entropy: entropy != 0,
            check_targets: false,
        };
        let ptrs = TokenLogprobsFwdPtrs {
            logits,
            targets,
            logp,
            lse,
            entropy,
            status,
            stats,
            log_sum_sq,
            mean_logits,
            is_top1,
        };
        // SAFETY: forwarded to the caller.
        unsafe {
            gpu(device)?.token_logprobs_forward_raw(
                stream,
                dtype(dtype_code)?,
                index_type(index_code)?,
                layout,
                &ptrs,
                &cfg,
            )
        }
    })
}

/// Top-k log-probs ([`Gpu::token_logprobs_topk_raw`](crate::Gpu::token_logprobs_topk_raw)): per
/// row the `k` largest log-probs and their ids, from the logits and a forward's `stats`.
///
/// # Safety
/// `args` points to a readable [`PrefkTokenLogprobsTopkArgs`] whose `struct_size` is set (`PrefkTokenLogprobsTopkArgs::new()`).
/// As [`Gpu::token_logprobs_topk_raw`](crate::Gpu::token_logprobs_topk_raw): every non-zero pointer is device memory of `device`
/// sized for the shapes given, `stream` is 0 or a live stream of that device's primary context.
#[no_mangle]
pub unsafe extern "C" fn prefk_token_logprobs_topk(args: *const PrefkTokenLogprobsTopkArgs) -> i32 {
    ffi(|| {
        // SAFETY: the caller passes one argument struct (see # Safety).
        let PrefkTokenLogprobsTopkArgs {
            device,
            stream,
            dtype_code,
            index_code,
            logits,
            targets,
            stats,
            topk_logp,
            topk_ids,
            status,
            n_rows,
            vocab,
            row_stride,
            ignore_index,
            k,
            temperature,
            ..
        } = unsafe { read_args(args) }?;
        let layout = logits_layout(n_rows, vocab, row_stride)?;
        let cfg =
            TokenLogprobsConfig { ignore_index, temperature, compute_entropy: false, check_targets: false };
        let ptrs = TokenTopkPtrs { logits, targets, stats, topk_logp, topk_ids, status };
        // SAFETY: forwarded to the caller.
        unsafe {
            gpu(device)?.token_logprobs_topk_raw(
                stream,
                dtype(dtype_code)?,
                index_type(index_code)?,
                layout,
                size("k", k)?,
                &ptrs,
                &cfg,
            )
        }
    })
}

/// Token log-probs backward ([`Gpu::token_logprobs_backward_raw`](crate::Gpu::token_logprobs_backward_raw)); in place when
/// `grad_logits == logits`.
///
/// # Safety
/// `args` points to a readable [`PrefkTokenLogprobsBackwardArgs`] whose `struct_size` is set (`PrefkTokenLogprobsBackwardArgs::new()`).
/// As [`Gpu::token_logprobs_backward_raw`](crate::Gpu::token_logprobs_backward_raw).
#[no_mangle]
pub unsafe extern "C" fn prefk_token_logprobs_backward(args: *const PrefkTokenLogprobsBackwardArgs) -> i32 {
    let a = match ffi_args(args) {
        Ok(a) => a,
        Err(rc) => return rc,
    };
    let e = PrefkTokenLogprobsBackwardEntropyArgs {
        device: a.device,
        stream: a.stream,
        dtype_code: a.dtype_code,
        index_code: a.index_code,
        logits: a.logits,
        targets: a.targets,
        stats: a.stats,
        grad_logp: a.grad_logp,
        grad_logits: a.grad_logits,
        status: a.status,
        n_rows: a.n_rows,
        vocab: a.vocab,
        row_stride: a.row_stride,
        grad_stride: a.grad_stride,
        ignore_index: a.ignore_index,
        temperature: a.temperature,
        ..PrefkTokenLogprobsBackwardEntropyArgs::new()
    };
    // SAFETY: forwarded to the caller; no entropy gradient.
    unsafe { prefk_token_logprobs_backward_entropy(&e) }
}

/// Token log-probs backward with the entropy's gradient: as [`prefk_token_logprobs_backward`], and
/// when `grad_entropy` is non-zero d/dlogits also holds `-grad_entropy · p_v (log p_v + H) / T`
/// (`entropy`: the forward's `[n_rows]` f32 entropy, required then).
///
/// # Safety
/// `args` points to a readable [`PrefkTokenLogprobsBackwardEntropyArgs`] whose `struct_size` is set (`PrefkTokenLogprobsBackwardEntropyArgs::new()`).
/// As [`Gpu::token_logprobs_backward_raw`](crate::Gpu::token_logprobs_backward_raw); `entropy` and `grad_entropy` are 0 or hold `n_rows` f32.
#[no_mangle]
pub unsafe extern "C" fn prefk_token_logprobs_backward_entropy(
    args: *const PrefkTokenLogprobsBackwardEntropyArgs,
) -> i32 {
    ffi(|| {
        // SAFETY: the caller passes one argument struct (see # Safety).
        let PrefkTokenLogprobsBackwardEntropyArgs {
            device,
            stream,
            dtype_code,
            index_code,
            logits,
            targets,
            stats,
            entropy,
            grad_logp,
            grad_entropy,
            grad_logits,
            status,
            n_rows,
            vocab,
            row_stride,
            grad_stride,
            ignore_index,
            temperature,
            ..
        } = unsafe { read_args(args) }?;
        ensure(grad_entropy == 0 || entropy != 0, "entropy", || {
            "grad_entropy needs the forward's entropy".into()
        })?;
        let layout = logits_layout(n_rows, vocab, row_stride)?;
        let cfg =
            TokenLogprobsConfig { ignore_index, temperature, compute_entropy: false, check_targets: false };
        let ptrs = TokenLogprobsBwdPtrs {
            logits,
            targets,
            stats,
            grad_logp,
            grad_logits,
            status,
            entropy: if grad_entropy != 0 { entropy } else { 0 },
            grad_entropy,
        };
        // SAFETY: forwarded to the caller.
        unsafe {
            gpu(device)?.token_logprobs_backward_raw(
                stream,
                dtype(dtype_code)?,
                index_type(index_code)?,
                layout,
                size("grad_stride", grad_stride)?,
                &ptrs,
                &cfg,
            )
        }
    })
}
