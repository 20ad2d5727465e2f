//! C ABI of the fused LM head: hidden states `[N, H]` and the LM-head weight `[V, H]` (+ an f32
//! bias `[V]`) in, log-probs / gradients out, on the caller's stream, into the caller's buffers
//! (the chunk workspace, at most `workspace_bytes`, is allocated and freed inside the call). Each
//! call reads the targets back once to plan its chunks and synchronizes the stream at its end.
use super::args::*;
use super::plumbing::read_args;
use super::vocab_parallel::shard;
use super::{dtype, ffi, gpu, host_vec, index_type, loss_config, size};
use crate::dtype::{DType, IndexType, LogitElement, TargetIndex};
use crate::error::{ensure, invalid, Result};
use crate::linear_token_logprobs::{
    LinearConfig, LinearForwardViews, LinearGradViews, LinearHead, LinearRun, LinearShape, OrderedWorkspace,
    TopkViews,
};
use crate::params::VP_STATS;
use crate::preference_loss::{Pairs, METRICS_LEN, PAIR_COLUMNS};
use crate::runtime::args::check_ptr;
use crate::runtime::{BackendKind, Gpu, Stream, View, ViewMut};
use crate::seq_reduce::SeqLayout;
use crate::step::{LinearGrpoBatch, LinearGrpoViews, LinearStepBatch, LinearStepViews};
use crate::token_logprobs::EntropyGrad;
use crate::vocab_parallel::VocabShard;
use crate::TokenLogprobsConfig;
use half::{bf16, f16};

/// The pointers and sizes every linear entry point shares.
#[derive(Clone, Copy)]
struct Head {
    hidden: u64,
    weight: u64,
    bias: u64,
    targets: u64,
    shape: LinearShape,
}

fn head(hidden: u64, weight: u64, bias: u64, targets: u64, n_rows: i64, h: i64, v: i64) -> Result<Head> {
    let shape =
        LinearShape { n_rows: size("n_rows", n_rows)?, hidden: size("hidden", h)?, vocab: size("vocab", v)? };
    Ok(Head { hidden, weight, bias, targets, shape })
}

/// Bytes of `workspace_bytes` the fused LM head needs for chunks of `rows` rows (1 for the token
/// log-probs; the largest pair group's tokens for the preference step) at hidden size `hidden`,
/// vocabulary `vocab` and `dtype_code`; -1 for an invalid argument or an overflow.
#[no_mangle]
pub extern "C" fn prefk_linear_workspace_bytes(dtype_code: u32, hidden: i64, vocab: i64, rows: i64) -> i64 {
    let Ok(dt) = dtype(dtype_code) else { return -1 };
    if hidden < 1 || vocab < 1 || rows < 0 {
        return -1;
    }
    let shape = LinearShape { n_rows: rows as usize, hidden: hidden as usize, vocab: vocab as usize };
    crate::linear_token_logprobs::min_workspace_bytes(&shape, dt, rows as usize)
        .and_then(|b| i64::try_from(b).ok())
        .unwrap_or(-1)
}

/// Bytes of a stream-ordered call's `workspace` holding one chunk of `rows` rows (`rows = n_rows`:
/// the whole batch in one chunk) at hidden size `hidden`, vocabulary `vocab` and `dtype_code`; -1
/// for an invalid argument or an overflow. A call over more rows splits a workspace into two
/// slots (chunks of about `rows / 2` rows, a second stream running one chunk's row pass while the
/// next chunk's GEMM fills the other): twice this size keeps chunks of `rows` rows.
#[no_mangle]
pub extern "C" fn prefk_linear_ordered_workspace_bytes(
    dtype_code: u32,
    hidden: i64,
    vocab: i64,
    rows: i64,
) -> i64 {
    let Ok(dt) = dtype(dtype_code) else { return -1 };
    if hidden < 1 || vocab < 1 || rows < 0 {
        return -1;
    }
    let shape = LinearShape { n_rows: rows as usize, hidden: hidden as usize, vocab: vocab as usize };
    crate::linear_token_logprobs::ordered_workspace_bytes(&shape, dt, rows as usize)
        .and_then(|b| i64::try_from(b).ok())
        .unwrap_or(-1)
}

/// A stream-ordered call's workspace and status word (`workspace` 0: the host-planned loop).
#[derive(Clone, Copy)]
struct Ordered {
    workspace: u64,
    workspace_bytes: i64,
    status: u64,
}

impl Ordered {
    /// The caller's workspace and status as views, or `None` for a host-planned call.
    ///
    /// # Safety
    /// Non-zero pointers are device memory of `backend`: `workspace_bytes` bytes, one u32.
    unsafe fn views<'a>(&self, backend: BackendKind) -> Result<Option<OrderedWorkspace<'a>>> {
        if self.workspace == 0 {
            ensure(self.status == 0, "status", || {
                "is for stream-ordered calls: give a workspace too".into()
            })?;
            return Ok(None);
        }
        let bytes = size("workspace_bytes", self.workspace_bytes)?;
        // SAFETY: forwarded to the caller.
        unsafe {
            Ok(Some(OrderedWorkspace {
                workspace: view_mut("workspace", self.workspace, bytes, backend)?,
                status: if self.status != 0 {
                    Some(view_mut("status", self.status, 1, backend)?)
                } else {
                    None
                },
            }))
        }
    }
}

fn elems(arg: &'static str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b).ok_or_else(|| invalid(arg, format!("{a} x {b} elements overflow")))
}

/// A read-only view of `len` elements at `ptr`, checked for null (when non-empty) and alignment.
///
/// # Safety
/// As [`View::from_raw`], once the checks pass.
unsafe fn view<'a, T>(arg: &'static str, ptr: u64, len: usize, backend: BackendKind) -> Result<View<'a, T>> {
    check_ptr(arg, ptr, std::mem::align_of::<T>(), len > 0)?;
    // SAFETY: forwarded to the caller; non-null and aligned checked above.
    Ok(unsafe { View::from_raw(ptr, len, backend) })
}

/// As [`view`], writable.
///
/// # Safety
/// As [`ViewMut::from_raw`], once the checks pass.
unsafe fn view_mut<'a, T>(
    arg: &'static str,
    ptr: u64,
    len: usize,
    backend: BackendKind,
) -> Result<ViewMut<'a, T>> {
    check_ptr(arg, ptr, std::mem::align_of::<T>(), len > 0)?;
    // SAFETY: forwarded to the caller; non-null and aligned checked above.
    Ok(unsafe { ViewMut::from_raw(ptr, len, backend) })
}

/// The head's views and its targets.
///
/// # Safety
/// The pointers of `h` are device memory of `backend` of the sizes its shape gives.
unsafe fn head_views<'a, T: LogitElement, I: TargetIndex>(
    h: &Head,
    backend: BackendKind,
) -> Result<(LinearHead<'a, T>, View<'a, I>)> {
    let s = h.shape;
    // SAFETY: forwarded to the caller.
    unsafe {
        let head = LinearHead {
            hidden: view("hidden", h.hidden, elems("hidden", s.n_rows, s.hidden)?, backend)?,
            weight: view("weight", h.weight, elems("weight", s.vocab, s.hidden)?, backend)?,
            bias: if h.bias != 0 { Some(view("bias", h.bias, s.vocab, backend)?) } else { None },
            shape: s,
        };
        Ok((head, view("targets", h.targets, s.n_rows, backend)?))
    }
}

/// Gradient output views.
///
/// # Safety
/// Device memory of `backend` of the sizes `h`'s shape gives; `d_bias` non-zero exactly with a bias.
unsafe fn grad_views<'a, T>(
    h: &Head,
    d_hidden: u64,
    d_weight: u64,
    d_bias: u64,
    backend: BackendKind,
) -> Result<LinearGradViews<'a, T>> {
    let s = h.shape;
    ensure((d_bias != 0) == (h.bias != 0), "d_bias", || {
        "give d_bias exactly when the head has a bias".into()
    })?;
    // SAFETY: forwarded to the caller.
    unsafe {
        Ok(LinearGradViews {
            d_hidden: view_mut("d_hidden", d_hidden, elems("d_hidden", s.n_rows, s.hidden)?, backend)?,
            d_weight: view_mut("d_weight", d_weight, elems("d_weight", s.vocab, s.hidden)?, backend)?,
            d_bias: if d_bias != 0 { Some(view_mut("d_bias", d_bias, s.vocab, backend)?) } else { None },
        })
    }
}

fn linear_config(
    ignore_index: i64,
    temperature: f32,
    entropy: bool,
    workspace_bytes: i64,
) -> Result<LinearConfig> {
    Ok(LinearConfig {
        token: TokenLogprobsConfig {
            ignore_index,
            temperature,
            compute_entropy: entropy,
            check_targets: true,
        },
        workspace_bytes: size("workspace_bytes", workspace_bytes)?,
    })
}

/// Calls `$f::<T, I>($args)` for the run-time dtype and index type.
macro_rules! by_types {
    ($dtype:expr, $index:expr, $f:ident($($arg:expr),*)) => {
        match ($dtype, $index) {
            (DType::F32, IndexType::I32) => $f::<f32, i32>($($arg),*),
            (DType::F32, IndexType::I64) => $f::<f32, i64>($($arg),*),
            (DType::F16, IndexType::I32) => $f::<f16, i32>($($arg),*),
            (DType::F16, IndexType::I64) => $f::<f16, i64>($($arg),*),
            (DType::BF16, IndexType::I32) => $f::<bf16, i32>($($arg),*),
            (DType::BF16, IndexType::I64) => $f::<bf16, i64>($($arg),*),
        }
    };
}

struct ForwardOut {
    logp: u64,
    lse: u64,
    entropy: u64,
    log_sum_sq: u64,
    mean_logits: u64,
    is_top1: u64,
    topk_logp: u64,
    topk_ids: u64,
    top_k: usize,
}

/// # Safety
/// As [`prefk_linear_token_logprobs_forward`].
unsafe fn forward<T: LogitElement, I: TargetIndex>(
    g: &Gpu,
    stream: &Stream,
    h: &Head,
    out: &ForwardOut,
    ordered: Ordered,
    cfg: &LinearConfig,
) -> Result<LinearRun> {
    let b = g.backend();
    let n = h.shape.n_rows;
    // SAFETY: forwarded to the caller.
    unsafe {
        let (head, targets) = head_views::<T, I>(h, b)?;
        let optional =
            |name, p: u64| if p != 0 { view_mut::<f32>(name, p, n, b).map(Some) } else { Ok(None) };
        let topk = if out.top_k > 0 {
            let len = crate::token_logprobs::topk_len(n, out.top_k)?;
            Some(TopkViews {
                k: out.top_k,
                logp: view_mut("topk_logp", out.topk_logp, len, b)?,
                ids: view_mut("topk_ids", out.topk_ids, len, b)?,
            })
        } else {
            ensure(out.topk_logp == 0 && out.topk_ids == 0, "top_k", || {
                "is 0 but topk_logp or topk_ids is given".into()
            })?;
            None
        };
        let views = LinearForwardViews {
            logp: view_mut("logp", out.logp, n, b)?,
            lse: view_mut("lse", out.lse, n, b)?,
            entropy: optional("entropy", out.entropy)?,
            log_sum_sq: optional("log_sum_sq", out.log_sum_sq)?,
            mean_logits: optional("mean_logits", out.mean_logits)?,
            is_top1: if out.is_top1 != 0 {
                Some(view_mut::<u8>("is_top1", out.is_top1, n, b)?)
            } else {
                None
            },
            topk,
        };
        match ordered.views(b)? {
            Some(ws) => {
                g.linear_token_logprobs_forward_ordered(stream, &head, &targets, views, ws, &cfg.token)
            }
            None => g.linear_token_logprobs_forward_into(stream, &head, &targets, views, cfg),
        }
    }
}

/// Log-probs (and entropy when `entropy` is non-zero) of `hidden · weightᵀ (+ bias)` at
/// `temperature`, `[n_rows]` f32 each, without an `[N, V]` logits tensor
/// ([`Gpu::linear_token_logprobs_forward_into`](crate::Gpu::linear_token_logprobs_forward_into)). `dtype_code` is the hidden states' and weight's
/// dtype; `bias` is 0 or `[vocab]` f32. Writes the number of chunks to `n_chunks` when non-null.
///
/// # Safety
/// `args` points to a readable [`PrefkLinearTokenLogprobsForwardArgs`] whose `struct_size` is set (`PrefkLinearTokenLogprobsForwardArgs::new()`).
/// Every non-zero pointer is device memory of `device` (emulator: emulator allocations or
/// registered host memory) of the documented size; `stream` is 0 or a live stream of the device's
/// primary context; `n_chunks` is null or a valid host `i64`.
#[no_mangle]
pub unsafe extern "C" fn prefk_linear_token_logprobs_forward(
    args: *const PrefkLinearTokenLogprobsForwardArgs,
) -> i32 {
    ffi(|| {
        // SAFETY: the caller passes one argument struct (see # Safety).
        let PrefkLinearTokenLogprobsForwardArgs {
            device,
            stream,
            dtype_code,
            index_code,
            hidden,
            weight,
            bias,
            targets,
            logp,
            lse,
            entropy,
            n_rows,
            hidden_dim,
            vocab,
            ignore_index,
            temperature,
            workspace_bytes,
            n_chunks,
            log_sum_sq,
            mean_logits,
            is_top1,
            topk_logp,
            topk_ids,
            top_k,
            workspace,
            status,
            ..
        } = unsafe { read_args(args) }?;
        let g = gpu(device)?;
        let h = head(hidden, weight, bias, targets, n_rows, hidden_dim, vocab)?;
        let cfg = linear_config(ignore_index, temperature, entropy != 0, workspace_bytes)?;
        let top_k = size("top_k", top_k)?;
        let out =
            ForwardOut { logp, lse, entropy, log_sum_sq, mean_logits, is_top1, topk_logp, topk_ids, top_k };
        let ordered = Ordered { workspace, workspace_bytes, status };
        // SAFETY: forwarded to the caller.
        let s = unsafe { g.borrow_stream(stream) };
        // SAFETY: forwarded to the caller.
        let run = unsafe {
            by_types!(dtype(dtype_code)?, index_type(index_code)?, forward(&g, &s, &h, &out, ordered, &cfg))
        }?;
        if !n_chunks.is_null() {
            // SAFETY: the caller passes null or a valid host i64.
            unsafe { *n_chunks = run.n_chunks as i64 };
        }
        Ok(())
    })
}

struct BackwardArgs {
    grad_logp: u64,
    grad_entropy: u64,
    d_hidden: u64,
    d_weight: u64,
    d_bias: u64,
}

/// # Safety
/// As [`prefk_linear_token_logprobs_backward`].
unsafe fn backward<T: LogitElement, I: TargetIndex>(
    g: &Gpu,
    stream: &Stream,
    h: &Head,
    a: &BackwardArgs,
    ordered: Ordered,
    cfg: &LinearConfig,
) -> Result<LinearRun> {
    let b = g.backend();
    let n = h.shape.n_rows;
    // SAFETY: forwarded to the caller.
    unsafe {
        let (head, targets) = head_views::<T, I>(h, b)?;
        let gl = view::<f32>("grad_logp", a.grad_logp, n, b)?;
        let ge =
            if a.grad_entropy != 0 { Some(view::<f32>("grad_entropy", a.grad_entropy, n, b)?) } else { None };
        let grads = grad_views::<T>(h, a.d_hidden, a.d_weight, a.d_bias, b)?;
        match ordered.views(b)? {
            Some(ws) => g.linear_token_logprobs_backward_ordered(
                stream,
                &head,
                &targets,
                &gl,
                ge.as_ref(),
                grads,
                ws,
                &cfg.token,
            ),
            None => {
                g.linear_token_logprobs_backward_into(stream, &head, &targets, &gl, ge.as_ref(), grads, cfg)
            }
        }
    }
}

/// The backward of [`prefk_linear_token_logprobs_forward`] for any per-token loss: from dL/dlogp (and
/// dL/dH when `grad_entropy` is non-zero), `[n_rows]` f32, writes `d_hidden` `[n_rows, hidden]`
/// (the hidden states' dtype), `d_weight` `[vocab, hidden]` f32 and, with a bias, `d_bias`
/// `[vocab]` f32 (all overwritten) ([`Gpu::linear_token_logprobs_backward_into`](crate::Gpu::linear_token_logprobs_backward_into)).
///
/// # Safety
/// `args` points to a readable [`PrefkLinearTokenLogprobsBackwardArgs`] whose `struct_size` is set (`PrefkLinearTokenLogprobsBackwardArgs::new()`).
/// As [`prefk_linear_token_logprobs_forward`].
#[no_mangle]
pub unsafe extern "C" fn prefk_linear_token_logprobs_backward(
    args: *const PrefkLinearTokenLogprobsBackwardArgs,
) -> i32 {
    ffi(|| {
        // SAFETY: the caller passes one argument struct (see # Safety).
        let PrefkLinearTokenLogprobsBackwardArgs {
            device,
            stream,
            dtype_code,
            index_code,
            hidden,
            weight,
            bias,
            targets,
            grad_logp,
            grad_entropy,
            d_hidden,
            d_weight,
            d_bias,
            n_rows,
            hidden_dim,
            vocab,
            ignore_index,
            temperature,
            workspace_bytes,
            workspace,
            status,
            ..
        } = unsafe { read_args(args) }?;
        let g = gpu(device)?;
        let h = head(hidden, weight, bias, targets, n_rows, hidden_dim, vocab)?;
        let cfg = linear_config(ignore_index, temperature, false, workspace_bytes)?;
        let a = BackwardArgs { grad_logp, grad_entropy, d_hidden, d_weight, d_bias };
        let ordered = Ordered { workspace, workspace_bytes, status };
        // SAFETY: forwarded to the caller.
        let s = unsafe { g.borrow_stream(stream) };
        // SAFETY: forwarded to the caller.
        unsafe {
            by_types!(dtype(dtype_code)?, index_type(index_code)?, backward(&g, &s, &h, &a, ordered, &cfg))
        }?;
        Ok(())
    })
}

/// # Safety
/// As [`prefk_linear_shard_partials`].
unsafe fn shard_forward<T: LogitElement, I: TargetIndex>(
    g: &Gpu,
    stream: &Stream,
    h: &Head,
    sh: VocabShard,
    partials: u64,
    cfg: &LinearConfig,
) -> Result<LinearRun> {
    let b = g.backend();
    // SAFETY: forwarded to the caller.
    unsafe {
        let (head, targets) = head_views::<T, I>(h, b)?;
        let out = view_mut("partials", partials, elems("partials", h.shape.n_rows, VP_STATS)?, b)?;
        g.linear_shard_partials_into(stream, &head, sh, &targets, out, cfg)
    }
}

/// A vocabulary shard's partial statistics (`[n_rows, 5]` f32 into `partials`, see
/// `prefk_vocab_shard_partials`) of `hidden · weightᵀ (+ bias)` where `weight` `[shard_vocab,
/// hidden]` (and `bias`) are the LM head's rows `[vocab_start, vocab_start + shard_vocab)` of
/// `vocab`, without the shard's logits tensor ([`Gpu::linear_shard_partials_into`](crate::Gpu::linear_shard_partials_into)). The entropy
/// term when `compute_entropy` is non-zero.
///
/// # Safety
/// `args` points to a readable [`PrefkLinearShardPartialsArgs`] whose `struct_size` is set (`PrefkLinearShardPartialsArgs::new()`).
/// As [`prefk_linear_token_logprobs_forward`].
#[no_mangle]
pub unsafe extern "C" fn prefk_linear_shard_partials(args: *const PrefkLinearShardPartialsArgs) -> i32 {
    ffi(|| {
        // SAFETY: the caller passes one argument struct (see # Safety).
        let PrefkLinearShardPartialsArgs {
            device,
            stream,
            dtype_code,
            index_code,
            hidden,
            weight,
            bias,
            targets,
            partials,
            n_rows,
            hidden_dim,
            shard_vocab,
            vocab_start,
            vocab,
            ignore_index,
            temperature,
            compute_entropy,
            workspace_bytes,
            ..
        } = unsafe { read_args(args) }?;
        let g = gpu(device)?;
        let sh = shard(vocab_start, shard_vocab, vocab)?;
        let h = head(hidden, weight, bias, targets, n_rows, hidden_dim, shard_vocab)?;
        let cfg = linear_config(ignore_index, temperature, compute_entropy != 0, workspace_bytes)?;
        // SAFETY: forwarded to the caller.
        let s = unsafe { g.borrow_stream(stream) };
        // SAFETY: forwarded to the caller.
        unsafe {
            by_types!(
                dtype(dtype_code)?,
                index_type(index_code)?,
                shard_forward(&g, &s, &h, sh, partials, &cfg)
            )
        }?;
        Ok(())
    })
}

struct ShardBackwardArgs {
    stats: u64,
    entropy: u64,
    grads: BackwardArgs,
}

/// # Safety
/// As [`prefk_linear_shard_backward`].
unsafe fn shard_backward<T: LogitElement, I: TargetIndex>(
    g: &Gpu,
    stream: &Stream,
    h: &Head,
    sh: VocabShard,
    a: &ShardBackwardArgs,
    cfg: &LinearConfig,
) -> Result<LinearRun> {
    let b = g.backend();
    let n = h.shape.n_rows;
    // SAFETY: forwarded to the caller.
    unsafe {
        let (head, targets) = head_views::<T, I>(h, b)?;
        let stats = view::<f32>("stats", a.stats, crate::token_logprobs::stats_len(n)?, b)?;
        let gl = view::<f32>("grad_logp", a.grads.grad_logp, n, b)?;
        let ent = if a.grads.grad_entropy != 0 {
            ensure(a.entropy != 0, "entropy", || "grad_entropy needs the forward's entropy".into())?;
            Some((
                view::<f32>("entropy", a.entropy, n, b)?,
                view::<f32>("grad_entropy", a.grads.grad_entropy, n, b)?,
            ))
        } else {
            None
        };
        let eg = ent.as_ref().map(|(e, ge)| EntropyGrad { entropy: e, grad_entropy: ge });
        let grads = grad_views::<T>(h, a.grads.d_hidden, a.grads.d_weight, a.grads.d_bias, b)?;
        g.linear_shard_backward_into(stream, &head, sh, &targets, &stats, &gl, eg, grads, cfg)
    }
}

/// The backward of [`prefk_linear_shard_partials`] from the finalize's global softmax `stats`
/// (`[n_rows, 2]` f32; and `entropy`
/// with dL/dH when `grad_entropy` is non-zero): writes this shard's `d_weight` `[shard_vocab,
/// hidden]` f32 (and `d_bias`) and its **partial** `d_hidden` `[n_rows, hidden]`, which the caller
/// sums over the tensor-parallel group ([`Gpu::linear_shard_backward_into`](crate::Gpu::linear_shard_backward_into)).
///
/// # Safety
/// `args` points to a readable [`PrefkLinearShardBackwardArgs`] whose `struct_size` is set (`PrefkLinearShardBackwardArgs::new()`).
/// As [`prefk_linear_token_logprobs_forward`].
#[no_mangle]
pub unsafe extern "C" fn prefk_linear_shard_backward(args: *const PrefkLinearShardBackwardArgs) -> i32 {
    ffi(|| {
        // SAFETY: the caller passes one argument struct (see # Safety).
        let PrefkLinearShardBackwardArgs {
            device,
            stream,
            dtype_code,
            index_code,
            hidden,
            weight,
            bias,
            targets,
            stats,
            entropy,
            grad_logp,
            grad_entropy,
            d_hidden,
            d_weight,
            d_bias,
            n_rows,
            hidden_dim,
            shard_vocab,
            vocab_start,
            vocab,
            ignore_index,
            temperature,
            workspace_bytes,
            ..
        } = unsafe { read_args(args) }?;
        let g = gpu(device)?;
        let sh = shard(vocab_start, shard_vocab, vocab)?;
        let h = head(hidden, weight, bias, targets, n_rows, hidden_dim, shard_vocab)?;
        let cfg = linear_config(ignore_index, temperature, false, workspace_bytes)?;
        let a = ShardBackwardArgs {
            stats,
            entropy,
            grads: BackwardArgs { grad_logp, grad_entropy, d_hidden, d_weight, d_bias },
        };
        // SAFETY: forwarded to the caller.
        let s = unsafe { g.borrow_stream(stream) };
        // SAFETY: forwarded to the caller.
        unsafe {
            by_types!(dtype(dtype_code)?, index_type(index_code)?, shard_backward(&g, &s, &h, sh, &a, &cfg))
        }?;
        Ok(())
    })
}

/// The step's host-side description (copied out of the caller's host arrays).
struct StepArgs {
    weights: u64,
    ref_logp: u64,
    ref_seq: u64,
    cu_seqlens: Option<Vec<i32>>,
    padded: (usize, usize),
    pairs: Option<(Vec<i32>, Vec<i32>)>,
    logp: u64,
    d_hidden: u64,
    d_weight: u64,
    d_bias: u64,
    loss: crate::preference_loss::LossConfig,
}

/// # Safety
/// As [`prefk_linear_preference_step`].
unsafe fn step<T: LogitElement, I: TargetIndex>(
    g: &Gpu,
    stream: &Stream,
    h: &Head,
    a: &StepArgs,
    cfg: &LinearConfig,
) -> Result<crate::preference_loss::PreferenceLossOutputs> {
    let b = g.backend();
    let n = h.shape.n_rows;
    let seqs = match &a.cu_seqlens {
        Some(cu) => SeqLayout::Packed { cu_seqlens: cu },
        None => SeqLayout::Padded { n_seqs: a.padded.0, seq_len: a.padded.1 },
    };
    let pairs = match &a.pairs {
        Some((c, r)) => Pairs::Explicit { chosen: c, rejected: r },
        None => Pairs::FirstHalfChosen,
    };
    // SAFETY: forwarded to the caller.
    unsafe {
        let (head, targets) = head_views::<T, I>(h, b)?;
        let opt = |arg, p: u64, len| if p != 0 { view::<f32>(arg, p, len, b).map(Some) } else { Ok(None) };
        let batch = LinearStepBatch {
            targets,
            weights: opt("weights", a.weights, n)?,
            ref_logp: opt("ref_logp", a.ref_logp, n)?,
            ref_seq: opt("ref_seq", a.ref_seq, seqs.n_seqs())?,
            seqs,
            pairs,
        };
        let out = LinearStepViews {
            logp: view_mut("logp", a.logp, n, b)?,
            grads: grad_views::<T>(h, a.d_hidden, a.d_weight, a.d_bias, b)?,
        };
        g.linear_preference_step_into(stream, &head, &batch, &a.loss, cfg, out).map(|(loss, _)| loss)
    }
}

/// The whole preference step from hidden states, chunked by whole groups of pairs
/// ([`Gpu::linear_preference_step_into`](crate::Gpu::linear_preference_step_into)): loss terms, divergence and aggregation as
/// [`super::prefk_preference_loss`]; sequences packed (`cu_seqlens`: `n_seqs + 1` **host** i32) or
/// padded (`cu_seqlens` null: `n_seqs` x `seq_len`); pairs first-half-chosen (`chosen` null) or
/// explicit (`n_pairs` **host** i32 each). Token mask: `targets != ignore_index`. Writes `logp`
/// `[n_rows]` f32, the gradients as [`prefk_linear_token_logprobs_backward`], the metrics (16 f32, in
/// `METRIC_NAMES` order) into `metrics` and the per-pair values (`n_pairs` x 6 f32) into
/// `pair_out` when non-null, both **host** memory; with `pair_out`, `n_pairs` must be the batch's
/// pair count (`n_seqs / 2` when the first half is chosen), checked before anything is written.
///
/// # Safety
/// `args` points to a readable [`PrefkLinearPreferenceStepArgs`] whose `struct_size` is set (`PrefkLinearPreferenceStepArgs::new()`).
/// As [`prefk_linear_token_logprobs_forward`]; `weights`, `ref_logp` (`[n_rows]`), `ref_seq`
/// (`[n_seqs]`) are 0 or device f32; the host arrays are null or valid for their lengths.
#[no_mangle]
pub unsafe extern "C" fn prefk_linear_preference_step(args: *const PrefkLinearPreferenceStepArgs) -> i32 {
    ffi(|| {
        // SAFETY: the caller passes one argument struct (see # Safety).
        let PrefkLinearPreferenceStepArgs {
            device,
            stream,
            dtype_code,
            index_code,
            hidden,
            weight,
            bias,
            targets,
            weights,
            ref_logp,
            ref_seq,
            cu_seqlens,
            n_seqs,
            seq_len,
            chosen,
            rejected,
            n_pairs,
            terms,
            n_terms,
            divergence,
            alpha,
            aggregation,
            logp,
            d_hidden,
            d_weight,
            d_bias,
            metrics,
            pair_out,
            n_rows,
            hidden_dim,
            vocab,
            ignore_index,
            temperature,
            workspace_bytes,
            ..
        } = unsafe { read_args(args) }?;
        let g = gpu(device)?;
        let h = head(hidden, weight, bias, targets, n_rows, hidden_dim, vocab)?;
        let cfg = linear_config(ignore_index, temperature, false, workspace_bytes)?;
        let n_seqs = size("n_seqs", n_seqs)?;
        ensure(!metrics.is_null(), "metrics", || "a host buffer of 16 f32 is required".into())?;
        // SAFETY: the caller's host arrays are null or valid for the lengths given.
        let a = unsafe {
            StepArgs {
                weights,
                ref_logp,
                ref_seq,
                cu_seqlens: if cu_seqlens.is_null() {
                    None
                } else {
                    Some(host_vec("cu_seqlens", cu_seqlens, elems("cu_seqlens", n_seqs, 1)? + 1)?)
                },
                padded: (n_seqs, if cu_seqlens.is_null() { size("seq_len", seq_len)? } else { 0 }),
                pairs: if chosen.is_null() {
                    None
                } else {
                    let np = size("n_pairs", n_pairs)?;
                    Some((host_vec("chosen", chosen, np)?, host_vec("rejected", rejected, np)?))
                },
                logp,
                d_hidden,
                d_weight,
                d_bias,
                loss: loss_config(terms, n_terms, divergence, alpha, aggregation, 1.0)?,
            }
        };
        // SAFETY: forwarded to the caller.
        let s = unsafe { g.borrow_stream(stream) };
        // SAFETY: forwarded to the caller.
        let out =
            unsafe { by_types!(dtype(dtype_code)?, index_type(index_code)?, step(&g, &s, &h, &a, &cfg)) }?;
        if !pair_out.is_null() {
            ensure(n_pairs == out.pairs.len() as i64, "n_pairs", || {
                format!(
                    "pair_out holds n_pairs = {n_pairs} rows but the batch has {} pairs (first half chosen: n_seqs / 2)",
                    out.pairs.len()
                )
            })?;
        }
        // SAFETY: `metrics` holds 16 host f32; `pair_out` is null or holds n_pairs x 6 (checked equal
        // to the rows written).
        unsafe {
            std::ptr::copy_nonoverlapping(out.metrics.as_ptr(), metrics, METRICS_LEN);
            if !pair_out.is_null() {
                for (i, row) in out.pairs.iter().enumerate() {
                    std::ptr::copy_nonoverlapping(row.as_ptr(), pair_out.add(i * PAIR_COLUMNS), PAIR_COLUMNS);
                }
            }
        }
        Ok(())
    })
}

/// The GRPO step's host-side description (the caller's host arrays copied out).
struct GrpoStepArgs {
    mask: u64,
    per_token: [u64; 4],
    advantages: u64,
    cu_seqlens: Option<Vec<i32>>,
    padded: (usize, usize),
    logp: u64,
    entropy: u64,
    d_hidden: u64,
    d_weight: u64,
    d_bias: u64,
    grpo: crate::grpo::GrpoConfig,
}

/// # Safety
/// As [`prefk_linear_grpo_step`].
unsafe fn grpo_step<T: LogitElement, I: TargetIndex>(
    g: &Gpu,
    stream: &Stream,
    h: &Head,
    a: &GrpoStepArgs,
    cfg: &LinearConfig,
) -> Result<crate::grpo::GrpoOutputs> {
    let b = g.backend();
    let n = h.shape.n_rows;
    let seqs = match &a.cu_seqlens {
        Some(cu) => SeqLayout::Packed { cu_seqlens: cu },
        None => SeqLayout::Padded { n_seqs: a.padded.0, seq_len: a.padded.1 },
    };
    // SAFETY: forwarded to the caller.
    unsafe {
        let (head, targets) = head_views::<T, I>(h, b)?;
        let opt = |arg, p: u64| if p != 0 { view::<f32>(arg, p, n, b).map(Some) } else { Ok(None) };
        let [old, sampling, refl, is_w] = a.per_token;
        let batch = LinearGrpoBatch {
            targets,
            mask: if a.mask != 0 { Some(view::<u8>("mask", a.mask, n, b)?) } else { None },
            old_logp: opt("old_logp", old)?,
            sampling_logp: opt("sampling_logp", sampling)?,
            ref_logp: opt("ref_logp", refl)?,
            is_weights: opt("is_weights", is_w)?,
            advantages: view("advantages", a.advantages, seqs.n_seqs(), b)?,
            seqs,
        };
        let out = LinearGrpoViews {
            logp: view_mut("logp", a.logp, n, b)?,
            entropy: if a.entropy != 0 { Some(view_mut("entropy", a.entropy, n, b)?) } else { None },
            grads: grad_views::<T>(h, a.d_hidden, a.d_weight, a.d_bias, b)?,
        };
        g.linear_grpo_step_into(stream, &head, &batch, &a.grpo, cfg, out).map(|(loss, _)| loss)
    }
}

/// The whole GRPO-family step from hidden states, chunked by whole sequences
/// ([`Gpu::linear_grpo_step_into`](crate::Gpu::linear_grpo_step_into)): three GEMMs per counted
/// token. `config` as [`super::prefk_grpo_loss`] (not the top-entropy mask; not VESPO with
/// `is_weights`); sequences packed (`cu_seqlens`: `n_seqs + 1` **host** i32) or padded
/// (`cu_seqlens` null: `n_seqs` x `seq_len`). Writes `logp` (and `entropy`, given exactly with
/// `compute_entropy`) `[n_rows]` f32, the gradients as [`prefk_linear_token_logprobs_backward`]
/// and the 8 metrics (`GRPO_METRIC_NAMES` order, the loss first) into the **host** `metrics`.
///
/// # Safety
/// `args` points to a readable [`PrefkLinearGrpoStepArgs`] whose `struct_size` is set
/// (`PrefkLinearGrpoStepArgs::new()`); `config` to one host struct. As
/// [`prefk_linear_token_logprobs_forward`]; `mask` (u8), `old_logp`, `sampling_logp`, `ref_logp`,
/// `is_weights` (`[n_rows]` f32) are 0 or device memory, `advantages` `[n_seqs]` device f32; the
/// host arrays are null or valid for their lengths.
#[no_mangle]
pub unsafe extern "C" fn prefk_linear_grpo_step(args: *const PrefkLinearGrpoStepArgs) -> i32 {
    ffi(|| {
        // SAFETY: the caller passes one argument struct (see # Safety).
        let PrefkLinearGrpoStepArgs {
            device,
            stream,
            config,
            hidden,
            weight,
            bias,
            targets,
            mask,
            old_logp,
            sampling_logp,
            ref_logp,
            is_weights,
            advantages,
            cu_seqlens,
            n_seqs,
            seq_len,
            logp,
            entropy,
            d_hidden,
            d_weight,
            d_bias,
            metrics,
            n_rows,
            hidden_dim,
            vocab,
            ignore_index,
            temperature,
            workspace_bytes,
            compute_entropy,
            dtype_code,
            index_code,
            ..
        } = unsafe { read_args(args) }?;
        ensure(!config.is_null(), "config", || "is null".into())?;
        ensure(!metrics.is_null(), "metrics", || {
            format!("a host buffer of {} f32 is required", crate::grpo::GRPO_METRICS_LEN)
        })?;
        let g = gpu(device)?;
        let h = head(hidden, weight, bias, targets, n_rows, hidden_dim, vocab)?;
        let cfg = linear_config(ignore_index, temperature, compute_entropy != 0, workspace_bytes)?;
        let n_seqs = size("n_seqs", n_seqs)?;
        // SAFETY: the caller passes one host struct at `config` and host arrays valid for the
        // lengths given.
        let a = unsafe {
            GrpoStepArgs {
                mask,
                per_token: [old_logp, sampling_logp, ref_logp, is_weights],
                advantages,
                cu_seqlens: if cu_seqlens.is_null() {
                    None
                } else {
                    Some(host_vec("cu_seqlens", cu_seqlens, elems("cu_seqlens", n_seqs, 1)? + 1)?)
                },
                padded: (n_seqs, if cu_seqlens.is_null() { size("seq_len", seq_len)? } else { 0 }),
                logp,
                entropy,
                d_hidden,
                d_weight,
                d_bias,
                grpo: super::grpo::grpo_config_of(&*config)?,
            }
        };
        // SAFETY: forwarded to the caller.
        let s = unsafe { g.borrow_stream(stream) };
        // SAFETY: forwarded to the caller.
        let out = unsafe {
            by_types!(dtype(dtype_code)?, index_type(index_code)?, grpo_step(&g, &s, &h, &a, &cfg))
        }?;
        // SAFETY: `metrics` holds GRPO_METRICS_LEN host f32.
        unsafe { std::ptr::copy_nonoverlapping(out.metrics.as_ptr(), metrics, out.metrics.len()) };
        Ok(())
    })
}
