//! C ABI of the token log-probs op (logits in, log-probs / entropy / gradients out).

use super::plumbing::*;
use crate::error::ensure;
use crate::token_logprobs::{TokenLogprobsBwdPtrs, TokenLogprobsConfig, TokenLogprobsFwdPtrs};
use crate::LogitsLayout;

/// Token log-probs forward ([`Gpu::token_logprobs_forward_raw`](crate::Gpu::token_logprobs_forward_raw)). `stats` (`[n_rows, 2]` f32,
/// what the backward reads), `entropy`, `log_sum_sq` (`[n_rows]` f32 log Σ p², WPO's term; needs
/// `entropy`) and `status` may be 0.
///
/// # Safety
/// As [`Gpu::token_logprobs_forward_raw`](crate::Gpu::token_logprobs_forward_raw): every non-zero pointer is device memory of `device`
/// sized for the shapes given, `stream` is 0 or a live stream of that device's primary context.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn prefk_token_logprobs_forward(
    device: i32,
    stream: u64,
    dtype_code: u32,
    index_code: u32,
    logits: u64,
    targets: u64,
    logp: u64,
    lse: u64,
    stats: u64,
    entropy: u64,
    log_sum_sq: u64,
    status: u64,
    n_rows: i64,
    vocab: i64,
    row_stride: i64,
    ignore_index: i64,
    temperature: f32,
) -> i32 {
    ffi(|| {
        let layout = LogitsLayout {
            n_rows: size("n_rows", n_rows)?,
            vocab: size("vocab", vocab)?,
            row_stride: size("row_stride", row_stride)?,
        };
        let cfg = TokenLogprobsConfig {
            ignore_index,
            temperature,
            compute_entropy: entropy != 0,
            check_targets: false,
        };
        let ptrs = TokenLogprobsFwdPtrs { logits, targets, logp, lse, entropy, status, stats, log_sum_sq };
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

/// Token log-probs backward ([`Gpu::token_logprobs_backward_raw`](crate::Gpu::token_logprobs_backward_raw)); in place when
/// `grad_logits == logits`.
///
/// # Safety
/// As [`Gpu::token_logprobs_backward_raw`](crate::Gpu::token_logprobs_backward_raw).
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn prefk_token_logprobs_backward(
    device: i32,
    stream: u64,
    dtype_code: u32,
    index_code: u32,
    logits: u64,
    targets: u64,
    stats: u64,
    grad_logp: u64,
    grad_logits: u64,
    status: u64,
    n_rows: i64,
    vocab: i64,
    row_stride: i64,
    grad_stride: i64,
    ignore_index: i64,
    temperature: f32,
) -> i32 {
    // SAFETY: forwarded to the caller; no entropy gradient.
    unsafe {
        prefk_token_logprobs_backward_entropy(
            device,
            stream,
            dtype_code,
            index_code,
            logits,
            targets,
            stats,
            0,
            grad_logp,
            0,
            grad_logits,
            status,
            n_rows,
            vocab,
            row_stride,
            grad_stride,
            ignore_index,
            temperature,
        )
    }
}

/// Token log-probs backward with the entropy's gradient: as [`prefk_token_logprobs_backward`], and
/// when `grad_entropy` is non-zero d/dlogits also holds `-grad_entropy · p_v (log p_v + H) / T`
/// (`entropy`: the forward's `[n_rows]` f32 entropy, required then).
///
/// # Safety
/// As [`Gpu::token_logprobs_backward_raw`](crate::Gpu::token_logprobs_backward_raw); `entropy` and `grad_entropy` are 0 or hold `n_rows` f32.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn prefk_token_logprobs_backward_entropy(
    device: i32,
    stream: u64,
    dtype_code: u32,
    index_code: u32,
    logits: u64,
    targets: u64,
    stats: u64,
    entropy: u64,
    grad_logp: u64,
    grad_entropy: u64,
    grad_logits: u64,
    status: u64,
    n_rows: i64,
    vocab: i64,
    row_stride: i64,
    grad_stride: i64,
    ignore_index: i64,
    temperature: f32,
) -> i32 {
    ffi(|| {
        ensure(grad_entropy == 0 || entropy != 0, "entropy", || {
            "grad_entropy needs the forward's entropy".into()
        })?;
        let layout = LogitsLayout {
            n_rows: size("n_rows", n_rows)?,
            vocab: size("vocab", vocab)?,
            row_stride: size("row_stride", row_stride)?,
        };
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
