"""The kernels as torch custom ops (`torch.ops.pref_kernels.*`), each with a fake (meta) kernel and an
autograd formula, so they run in eager mode and under torch.compile as opaque ops with no graph
break. CUDA tensors run on the current stream through their data pointers (no copies); CPU tensors
run through the emulator, with their storages registered for the call so every access is checked.

Inputs are validated here (device, dtype, shape, strides) with ValueError / TypeError; what the
kernels check (lengths, layouts, configurations, out-of-range targets and indices) comes back as
PrefKernelsError with the crate's message.
"""
import ctypes
import os
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import _lib
from ._lib import (DTYPE_CODES, INDEX_CODES, PrefkLossTerm, call, check_status, device_code, host_memory, lib,
                   ptr, stream_of)

METRICS_LEN = 16
PAIR_COLUMNS = 6

# CUDA graphs (torch.compile(mode="reduce-overhead")) may capture an op only if it neither waits on
# the host nor allocates outside PyTorch's caching allocator. These do: the fused LM head plans its
# chunks from the targets read back to the host and allocates its workspace itself, the preference
# step and the group losses read their pair / label tables on the host. They carry
# torch.Tag.cudagraph_unsafe (where this torch has it), so Inductor leaves them out of a graph; every
# other op is capture-safe (no synchronization, outputs and workspaces from torch).
GRAPH_UNSAFE_OPS = ("linear_preference_step", "linear_grpo_step", "linear_shard_partials", "linear_shard_backward",
                    "group_loss")


def custom_op(name, **kwargs):
    """torch.library.custom_op, with the cudagraph_unsafe tag for the ops of GRAPH_UNSAFE_OPS."""
    tag = getattr(torch.Tag, "cudagraph_unsafe", None)
    if name.split("::")[-1] in GRAPH_UNSAFE_OPS and tag is not None:
        import inspect
        if "tags" in inspect.signature(torch.library.custom_op).parameters:
            kwargs["tags"] = (tag,)
    return torch.library.custom_op(name, **kwargs)


def _same_device(name, t, ref):
    if t is not None and t.device != ref.device:
        raise ValueError(f"pref_kernels: {name} is on {t.device} but the op runs on {ref.device}")


def _contiguous(name, t):
    if t is not None and not t.is_contiguous():
        raise ValueError(f"pref_kernels: {name} must be contiguous (got strides {tuple(t.stride())}); call .contiguous()")


def _dtype(name, t, allowed):
    if t is not None and t.dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise TypeError(f"pref_kernels: {name} must be {names}, got {str(t.dtype).removeprefix('torch.')}")


def _vector(name, t, n):
    if t is not None and (t.dim() != 1 or t.shape[0] != n):
        raise ValueError(f"pref_kernels: {name} must have shape [{n}], got {list(t.shape)}")


_F32 = (torch.float32,)
_MASK = (torch.uint8, torch.bool)


def _input(name, t, dtypes, n, ref):
    """An optional [n] input: its dtype, shape, contiguity and device."""
    _dtype(name, t, dtypes)
    _vector(name, t, n)
    _contiguous(name, t)
    _same_device(name, t, ref)


def _stats_input(stats, n, ref):
    """The softmax statistics [n, 2] f32 a log-probs forward wrote for its backward."""
    _dtype("stats", stats, _F32)
    if stats.dim() != 2 or tuple(stats.shape) != (n, 2):
        raise ValueError(f"pref_kernels: stats must have shape [{n}, 2] (the forward's softmax statistics), "
                         f"got {list(stats.shape)}")
    _contiguous("stats", stats)
    _same_device("stats", stats, ref)


def _token_batch(logp, cu_seqlens, n_seqs, per_token=(), per_seq=()):
    """Checks per-token log-probs [T] (f32) with the batch tensors that come with them: `per_token`
    (name, tensor) pairs of length T (f32; "mask" bool/uint8), `per_seq` pairs of length
    S = `n_seqs` (f32), `cu_seqlens` [S + 1] int32. Returns T."""
    if logp.dim() != 1:
        raise ValueError(f"pref_kernels: logp must be per-token log-probs of shape [T] (a padded [B, T] batch "
                         f"flattened, with n_seqs=B and seq_len=T, or a packed one with cu_seqlens), got shape "
                         f"{list(logp.shape)}")
    t = logp.shape[0]
    _input("logp", logp, _F32, t, logp)
    _input("cu_seqlens", cu_seqlens, (torch.int32,), n_seqs + 1, logp)
    for name, x in per_token:
        _input(name, x, _MASK if name == "mask" else _F32, t, logp)
    for name, x in per_seq:
        _input(name, x, _F32, n_seqs, logp)
    return t


def _as_u8(mask):
    """A bool mask as the kernels read it (uint8, the same bytes)."""
    return mask.view(torch.uint8) if mask is not None and mask.dtype == torch.bool else mask


def _pair_count(chosen, rejected, n_seqs):
    """The number of pairs: n_seqs // 2 when the first half is chosen (no index vectors), else the
    length of the (equal-length, non-empty) index vectors."""
    if (chosen is None) != (rejected is None):
        raise ValueError("pref_kernels: give both chosen and rejected index vectors, or neither")
    if chosen is None:
        return n_seqs // 2
    if chosen.dim() != 1 or rejected.shape != chosen.shape:
        raise ValueError(f"pref_kernels: chosen and rejected must be equal-length vectors, got "
                         f"{list(chosen.shape)} and {list(rejected.shape)}")
    if chosen.numel() == 0:
        # An empty index vector would read as "no pairs given" (first half chosen) at the C ABI.
        raise ValueError("pref_kernels: chosen / rejected are empty: give at least one pair, or neither")
    return chosen.shape[0]


def _loss_terms(kinds, term_weights, betas, p0, p1, flags):
    """The C ABI's loss-term array."""
    if not (len(kinds) == len(term_weights) == len(betas) == len(p0) == len(p1) == len(flags)) or not kinds:
        raise ValueError("pref_kernels: kinds, term_weights, betas, p0, p1 and flags must be non-empty and equal length")
    return (PrefkLossTerm * len(kinds))(*[PrefkLossTerm(k, w, b, a, c, f) for k, w, b, a, c, f in
                                          zip(kinds, term_weights, betas, p0, p1, flags)])


def _out(shape, dtype, device):
    """An output buffer, uninitialized (the tests replace this with a NaN-filled one, so that an
    element a kernel fails to write shows up)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return torch.empty(shape, dtype=dtype, device=device)


def _status(like):
    return torch.zeros(1, dtype=torch.int32, device=like.device)


# ---- token log-probs ---------------------------------------------------------------------------

def _check_logits(logits, targets):
    if logits.dim() != 2:
        raise ValueError(f"pref_kernels: logits must be [N, V], got shape {list(logits.shape)}")
    _dtype("logits", logits, DTYPE_CODES)
    _dtype("targets", targets, INDEX_CODES)
    if logits.shape[1] > 0 and logits.stride(1) != 1:
        raise ValueError("pref_kernels: logits rows must be contiguous (stride(1) == 1); a row stride is allowed")
    _vector("targets", targets, logits.shape[0])
    _contiguous("targets", targets)
    _same_device("targets", targets, logits)


@custom_op("pref_kernels::token_logprobs", mutates_args=())
def token_logprobs(logits: Tensor, targets: Tensor, ignore_index: int, temperature: float,
                   compute_entropy: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """log p(target) per row of logits [N, V] (f32/f16/bf16) at `temperature`, its log-sum-exp,
    when `compute_entropy` the entropy and log sum_v p_v^2 (WPO's term; else empty tensors), all
    f32 [N], and the softmax statistics [N, 2] f32 the backward reads (row max of the raw logits,
    log2 of the sum relative to it). Rows whose target is `ignore_index` give 0."""
    _check_logits(logits, targets)
    n, v = logits.shape
    logp = _out(n, torch.float32, logits.device)
    lse = _out(n, torch.float32, logits.device)
    entropy = _out(n if compute_entropy else 0, torch.float32, logits.device)
    log_sum_sq = _out(n if compute_entropy else 0, torch.float32, logits.device)
    stats = _out((n, 2), torch.float32, logits.device)
    if n == 0:
        return logp, lse, entropy, stats, log_sum_sq
    status = _status(logits)
    with host_memory([logits, targets, status], [logp, lse, entropy, stats, log_sum_sq]):
        call("prefk_token_logprobs_forward",
             device=device_code(logits), stream=stream_of(logits), dtype_code=DTYPE_CODES[logits.dtype],
             index_code=INDEX_CODES[targets.dtype], logits=ptr(logits), targets=ptr(targets), logp=ptr(logp),
             lse=ptr(lse), stats=ptr(stats), entropy=ptr(entropy), log_sum_sq=ptr(log_sum_sq), status=ptr(status),
             n_rows=n, vocab=v, row_stride=logits.stride(0), ignore_index=ignore_index, temperature=temperature)
    check_status(status, logits.device.type == "cpu")
    return logp, lse, entropy, stats, log_sum_sq


@token_logprobs.register_fake
def _(logits, targets, ignore_index, temperature, compute_entropy):
    n = logits.shape[0]
    f = dict(dtype=torch.float32, device=logits.device)
    k = n if compute_entropy else 0
    return (logits.new_empty(n, **f), logits.new_empty(n, **f), logits.new_empty(k, **f),
            logits.new_empty((n, 2), **f), logits.new_empty(k, **f))


@custom_op("pref_kernels::token_stats", mutates_args=())
def token_stats(logits: Tensor, targets: Tensor, ignore_index: int, temperature: float,
                top_k: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Not differentiable: per row of logits [N, V], log p(target) (f32 [N]), the mean logit / T
    (f32 [N]) and whether the target is the first argmax (bool [N]), from one pass over the row; and
    the `top_k` largest log-probs with their ids ([N, k] f32 / int64; one more kernel over the rows,
    reading the first pass's softmax statistics). Ignored rows: 0, False, top-k 0 and id -1."""
    _check_logits(logits, targets)
    n, v = logits.shape
    dev = logits.device
    logp, lse, stats = _out(n, torch.float32, dev), _out(n, torch.float32, dev), _out((n, 2), torch.float32, dev)
    mean, top1 = _out(n, torch.float32, dev), _out(n, torch.bool, dev)
    topk_logp, topk_ids = _out((n, top_k), torch.float32, dev), _out((n, top_k), torch.int64, dev)
    if n == 0:
        return logp, mean, top1, topk_logp, topk_ids
    status = _status(logits)
    common = dict(device=device_code(logits), stream=stream_of(logits), dtype_code=DTYPE_CODES[logits.dtype],
                  index_code=INDEX_CODES[targets.dtype], logits=ptr(logits), targets=ptr(targets), stats=ptr(stats),
                  status=ptr(status), n_rows=n, vocab=v, row_stride=logits.stride(0), ignore_index=ignore_index,
                  temperature=temperature)
    with host_memory([logits, targets, status], [logp, lse, stats, mean, top1, topk_logp, topk_ids]):
        call("prefk_token_logprobs_forward", logp=ptr(logp), lse=ptr(lse), entropy=0, log_sum_sq=0,
             mean_logits=ptr(mean), is_top1=ptr(top1), **common)
        if top_k > 0:
            call("prefk_token_logprobs_topk", topk_logp=ptr(topk_logp), topk_ids=ptr(topk_ids), k=top_k, **common)
    check_status(status, logits.device.type == "cpu")
    return logp, mean, top1, topk_logp, topk_ids


@token_stats.register_fake
def _(logits, targets, ignore_index, temperature, top_k):
    n = logits.shape[0]
    f = dict(dtype=torch.float32, device=logits.device)
    return (logits.new_empty(n, **f), logits.new_empty(n, **f), logits.new_empty(n, dtype=torch.bool),
            logits.new_empty((n, top_k), **f), logits.new_empty((n, top_k), dtype=torch.int64))


@custom_op("pref_kernels::token_logprobs_backward", mutates_args=())
def token_logprobs_backward(logits: Tensor, targets: Tensor, stats: Tensor, entropy: Optional[Tensor],
                            grad_logp: Tensor, grad_entropy: Optional[Tensor], ignore_index: int,
                            temperature: float) -> Tensor:
    """d/dlogits [N, V] (logits' dtype) of sum(grad_logp * logp + grad_entropy * entropy), in one pass,
    from the forward's softmax statistics `stats` [N, 2]."""
    _check_logits(logits, targets)
    n, v = logits.shape
    _stats_input(stats, n, logits)
    for name, t in (("grad_logp", grad_logp), ("entropy", entropy), ("grad_entropy", grad_entropy)):
        _input(name, t, _F32, n, logits)
    if grad_entropy is not None and entropy is None:
        raise ValueError("pref_kernels: grad_entropy needs the forward's entropy (compute_entropy=True)")
    grad = _out((n, v), logits.dtype, logits.device)
    if n == 0 or v == 0:
        return grad
    status = _status(logits)
    with host_memory([logits, targets, stats, entropy, grad_logp, grad_entropy, status], [grad]):
        call("prefk_token_logprobs_backward_entropy",
             device=device_code(logits), stream=stream_of(logits), dtype_code=DTYPE_CODES[logits.dtype],
             index_code=INDEX_CODES[targets.dtype], logits=ptr(logits), targets=ptr(targets), stats=ptr(stats),
             entropy=ptr(entropy), grad_logp=ptr(grad_logp), grad_entropy=ptr(grad_entropy), grad_logits=ptr(grad),
             status=ptr(status), n_rows=n, vocab=v, row_stride=logits.stride(0), grad_stride=v,
             ignore_index=ignore_index, temperature=temperature)
    check_status(status, logits.device.type == "cpu")
    return grad


@token_logprobs_backward.register_fake
def _(logits, targets, stats, entropy, grad_logp, grad_entropy, ignore_index, temperature):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _token_logprobs_setup(ctx, inputs, output):
    logits, targets, ignore_index, temperature, compute_entropy = inputs
    logp, lse, entropy, stats, log_sum_sq = output
    ctx.save_for_backward(logits, targets, stats, entropy if compute_entropy else None)
    ctx.args = (ignore_index, temperature, compute_entropy)
    # log sum p^2 only feeds WPO's detached weights: not differentiable here.
    ctx.mark_non_differentiable(lse, stats, log_sum_sq)


def _token_logprobs_grad(ctx, grad_logp, grad_lse, grad_entropy, grad_stats, grad_log_sum_sq):
    logits, targets, stats, entropy = ctx.saved_tensors
    ignore_index, temperature, compute_entropy = ctx.args
    if grad_logp is None:
        grad_logp = stats.new_zeros(stats.shape[0])
    if not compute_entropy:
        grad_entropy = None
    grad = torch.ops.pref_kernels.token_logprobs_backward(
        logits, targets, stats, entropy, grad_logp.float().contiguous(),
        None if grad_entropy is None else grad_entropy.float().contiguous(), ignore_index, temperature)
    return grad, None, None, None, None


torch.library.register_autograd("pref_kernels::token_logprobs", _token_logprobs_grad,
                                setup_context=_token_logprobs_setup)


# ---- preference losses -------------------------------------------------------------------------

@custom_op("pref_kernels::preference_loss", mutates_args=())
def preference_loss(logp: Tensor, mask: Optional[Tensor], weights: Optional[Tensor], ref_logp: Optional[Tensor],
                    ref_seq: Optional[Tensor], cu_seqlens: Optional[Tensor], n_seqs: int, seq_len: int,
                    chosen: Optional[Tensor], rejected: Optional[Tensor], kinds: List[int],
                    term_weights: List[float], betas: List[float], p0: List[float], p1: List[float],
                    flags: List[int], divergence: int, alpha: float, aggregation: int,
                    seq_weights: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The fused preference loss on per-token log-probs [T] (f32): returns (loss [] f32, metrics [16]
    in METRIC_NAMES order, per-pair values [P, 6] in PAIR_COLUMN_NAMES order, dloss/dlogp [T]).
    Padded layout (cu_seqlens None: n_seqs x seq_len) or packed (cu_seqlens [n_seqs + 1] int32);
    pairs first-half-chosen (chosen None) or explicit int32 index vectors; `seq_weights` [S] are
    WPO's detached sequence weights (every pair's loss times w_c w_r)."""
    t = _token_batch(logp, cu_seqlens, n_seqs, (("mask", mask), ("weights", weights), ("ref_logp", ref_logp)),
                     (("ref_seq", ref_seq), ("seq_weights", seq_weights)))
    for name, x in (("chosen", chosen), ("rejected", rejected)):
        _dtype(name, x, (torch.int32,))
        _contiguous(name, x)
        _same_device(name, x, logp)
    n_pairs = _pair_count(chosen, rejected, n_seqs)
    terms = _loss_terms(kinds, term_weights, betas, p0, p1, flags)
    dev = logp.device
    metrics = _out(METRICS_LEN, torch.float32, dev)
    pair_out = _out((n_pairs, PAIR_COLUMNS), torch.float32, dev)
    grad = _out(t, torch.float32, dev)
    work_len = _lib.lib().prefk_preference_loss_workspace_len(n_seqs, n_pairs)
    if work_len < 0:
        raise ValueError(f"pref_kernels: {n_seqs} sequences / {n_pairs} pairs overflow the workspace size")
    work = torch.empty(max(work_len, 1), dtype=torch.float32, device=dev)
    status = _status(logp)
    mask_u8 = _as_u8(mask)
    with host_memory([logp, mask_u8, weights, ref_logp, ref_seq, seq_weights, cu_seqlens, chosen, rejected, status],
                     [metrics, pair_out, grad, work]):
        call("prefk_preference_loss",
             device=device_code(logp), stream=stream_of(logp), logp=ptr(logp), mask=ptr(mask_u8),
             weights=ptr(weights), ref_logp=ptr(ref_logp), ref_seq=ptr(ref_seq), seq_weights=ptr(seq_weights),
             n_tokens=t, cu_seqlens=ptr(cu_seqlens), n_seqs=n_seqs, seq_len=seq_len, chosen=ptr(chosen),
             rejected=ptr(rejected), n_pairs=n_pairs, terms=terms, n_terms=len(kinds), divergence=divergence,
             alpha=alpha, aggregation=aggregation, grad_scale=1.0, pair_out=ptr(pair_out), metrics=ptr(metrics),
             grad_logp=ptr(grad), workspace=ptr(work), status=ptr(status))
    check_status(status, dev.type == "cpu")
    return metrics[0].clone(), metrics, pair_out, grad


@preference_loss.register_fake
def _(logp, mask, weights, ref_logp, ref_seq, cu_seqlens, n_seqs, seq_len, chosen, rejected, kinds, term_weights,
      betas, p0, p1, flags, divergence, alpha, aggregation, seq_weights=None):
    n_pairs = n_seqs // 2 if chosen is None else chosen.shape[0]
    return (logp.new_empty(()), logp.new_empty(METRICS_LEN), logp.new_empty((n_pairs, PAIR_COLUMNS)),
            torch.empty_like(logp))


def _preference_loss_setup(ctx, inputs, output):
    loss, metrics, pair_out, grad = output
    ctx.save_for_backward(grad)
    ctx.mark_non_differentiable(metrics, pair_out, grad)


def _preference_loss_grad(ctx, grad_loss, _m, _p, _g):
    (grad,) = ctx.saved_tensors
    g = grad * grad_loss if grad_loss is not None else torch.zeros_like(grad)
    return (g,) + (None,) * 19


torch.library.register_autograd("pref_kernels::preference_loss", _preference_loss_grad,
                                setup_context=_preference_loss_setup)


# ---- shared-prefix attention -------------------------------------------------------------------

def prefix_layout(groups, device):
    """The shared-prefix tile schedule for `groups` = [(prefix_len, [response lengths]), ...]
    packed [prefix | r_1 | ... | r_G] per group: (tiles int32, seg_lo2 int32, n_tokens, n_tiles)."""
    i64, i32 = ctypes.c_int64, ctypes.c_int32
    pl = (i64 * max(1, len(groups)))(*[g[0] for g in groups])
    rc = (i64 * max(1, len(groups)))(*[len(g[1]) for g in groups])
    flat = [r for g in groups for r in g[1]]
    rl = (i64 * max(1, len(flat)))(*flat)
    nt, ntiles = i64(), i64()
    call("prefk_prefix_layout",
         prefix_lens=pl, resp_counts=rc, resp_lens=rl, n_groups=len(groups), n_tokens=ctypes.byref(nt),
         n_tiles=ctypes.byref(ntiles), tiles=None, seg_lo2=None)
    tiles = (i32 * max(1, 8 * ntiles.value))()
    lo2 = (i32 * max(1, nt.value))()
    call("prefk_prefix_layout",
         prefix_lens=pl, resp_counts=rc, resp_lens=rl, n_groups=len(groups), n_tokens=ctypes.byref(nt),
         n_tiles=ctypes.byref(ntiles), tiles=tiles, seg_lo2=lo2)
    as_t = lambda a, n: torch.tensor(list(a)[:n], dtype=torch.int32, device=device)  # noqa: E731
    return as_t(tiles, 8 * ntiles.value), as_t(lo2, nt.value), nt.value, ntiles.value


def _check_attn(q, k, v, tiles, seg_lo2):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dim() != 3:
            raise ValueError(f"pref_kernels: {name} must be [T, heads, head_dim], got {list(x.shape)}")
        _dtype(name, x, (torch.float16, torch.bfloat16))
        _contiguous(name, x)
        _same_device(name, x, q)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError("pref_kernels: q, k and v must share one dtype")
    if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise ValueError(f"pref_kernels: k and v must be [T, Hkv, d] matching q [T, Hq, d]; got q {list(q.shape)}, "
                         f"k {list(k.shape)}, v {list(v.shape)}")
    for name, x in (("tiles", tiles), ("seg_lo2", seg_lo2)):
        _dtype(name, x, (torch.int32,))
        _contiguous(name, x)
        _same_device(name, x, q)


@custom_op("pref_kernels::shared_prefix_attention", mutates_args=())
def shared_prefix_attention(q: Tensor, k: Tensor, v: Tensor, tiles: Tensor, seg_lo2: Tensor, n_tiles: int,
                            scale: float) -> Tuple[Tensor, Tensor]:
    """Causal attention where G responses share one prefix (per group), packed [T, H, d]: returns
    O [T, Hq, d] and the log-sum-exp [Hq, T] (f32)."""
    _check_attn(q, k, v, tiles, seg_lo2)
    t, hq, d = q.shape
    o = _out(q.shape, q.dtype, q.device)
    lse = _out((hq, t), torch.float32, q.device)
    if t == 0:
        return o, lse
    with host_memory([q, k, v, tiles, seg_lo2], [o, lse]):
        call("prefk_shared_prefix_attention_forward",
             device=device_code(q), stream=stream_of(q), dtype_code=DTYPE_CODES[q.dtype], q=ptr(q), k=ptr(k),
             v=ptr(v), o=ptr(o), lse=ptr(lse), tiles=ptr(tiles), seg_lo2=ptr(seg_lo2), n_tiles=n_tiles, n_tokens=t,
             q_heads=hq, kv_heads=k.shape[1], head_dim=d, scale=scale)
    return o, lse


@shared_prefix_attention.register_fake
def _(q, k, v, tiles, seg_lo2, n_tiles, scale):
    return torch.empty_like(q), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


@custom_op("pref_kernels::shared_prefix_attention_backward", mutates_args=())
def shared_prefix_attention_backward(q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, do: Tensor,
                                     tiles: Tensor, seg_lo2: Tensor, n_tiles: int,
                                     scale: float) -> Tuple[Tensor, Tensor, Tensor]:
    """dQ, dK, dV of shared_prefix_attention."""
    _check_attn(q, k, v, tiles, seg_lo2)
    for name, x in (("o", o), ("do", do)):
        if x.shape != q.shape or x.dtype != q.dtype:
            raise ValueError(f"pref_kernels: {name} must match q ({list(q.shape)}, {q.dtype})")
        _contiguous(name, x)
    t, hq, d = q.shape
    dq, dk, dv = _out(q.shape, q.dtype, q.device), _out(k.shape, k.dtype, k.device), _out(v.shape, v.dtype, v.device)
    if t == 0:
        return dq, dk, dv
    delta = torch.empty((hq, t), dtype=torch.float32, device=q.device)
    with host_memory([q, k, v, o, lse, do, tiles, seg_lo2], [dq, dk, dv, delta]):
        call("prefk_shared_prefix_attention_backward",
             device=device_code(q), stream=stream_of(q), dtype_code=DTYPE_CODES[q.dtype], q=ptr(q), k=ptr(k),
             v=ptr(v), o=ptr(o), lse=ptr(lse), dout=ptr(do), dq=ptr(dq), dk=ptr(dk), dv=ptr(dv), delta=ptr(delta),
             tiles=ptr(tiles), seg_lo2=ptr(seg_lo2), n_tiles=n_tiles, n_tokens=t, q_heads=hq, kv_heads=k.shape[1],
             head_dim=d, scale=scale)
    return dq, dk, dv


@shared_prefix_attention_backward.register_fake
def _(q, k, v, o, lse, do, tiles, seg_lo2, n_tiles, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _attn_setup(ctx, inputs, output):
    q, k, v, tiles, seg_lo2, n_tiles, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, tiles, seg_lo2)
    ctx.args = (n_tiles, scale)
    ctx.mark_non_differentiable(lse)


def _attn_grad(ctx, do, _dlse):
    q, k, v, o, lse, tiles, seg_lo2 = ctx.saved_tensors
    n_tiles, scale = ctx.args
    dq, dk, dv = torch.ops.pref_kernels.shared_prefix_attention_backward(
        q, k, v, o, lse, do.contiguous(), tiles, seg_lo2, n_tiles, scale)
    return dq, dk, dv, None, None, None, None


torch.library.register_autograd("pref_kernels::shared_prefix_attention", _attn_grad, setup_context=_attn_setup)


# ---- fused LM head (hidden states + LM-head weight, no [N, V] logits) ---------------------------

DEFAULT_WORKSPACE_BYTES = 768 << 20


def _check_head(hidden, weight, bias, targets):
    for name, x in (("hidden", hidden), ("weight", weight)):
        if x.dim() != 2:
            raise ValueError(f"pref_kernels: {name} must be 2-D, got shape {list(x.shape)}")
        _dtype(name, x, DTYPE_CODES)
        _contiguous(name, x)
        _same_device(name, x, hidden)
    if weight.dtype != hidden.dtype:
        raise TypeError(f"pref_kernels: hidden ({hidden.dtype}) and weight ({weight.dtype}) must share one dtype")
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"pref_kernels: weight must be [V, H] with H = {hidden.shape[1]}, got {list(weight.shape)}")
    _input("bias", bias, _F32, weight.shape[0], hidden)
    _input("targets", targets, INDEX_CODES, hidden.shape[0], hidden)


def _head_workspace(hidden, weight, workspace_bytes):
    """The fused head's chunk workspace from PyTorch's caching allocator (the stream-ordered call:
    no allocation, host read or synchronization inside it): `workspace_bytes`, or what one chunk
    of every row needs when that is less."""
    n, h = hidden.shape
    need = lib().prefk_linear_ordered_workspace_bytes(DTYPE_CODES[hidden.dtype], h, weight.shape[0], n)
    if need < 0:
        raise ValueError(f"pref_kernels: the fused head's workspace for {n} rows of H = {h}, V = {weight.shape[0]} "
                         "overflows 64 bits")
    return torch.empty(min(need, max(int(workspace_bytes), 0)), dtype=torch.uint8, device=hidden.device)


@custom_op("pref_kernels::linear_token_logprobs", mutates_args=())
def linear_token_logprobs(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], targets: Tensor,
                          ignore_index: int, temperature: float, compute_entropy: bool,
                          workspace_bytes: int, log_sum_sq: bool = False, mean_logits: bool = False,
                          is_top1: bool = False, top_k: int = 0
                          ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per row of `hidden @ weight.T (+ bias)`, chunked within `workspace_bytes` (no [N, V] logits
    tensor): log p(target), lse and (when `compute_entropy`) the entropy, f32 [N]; then, each when
    asked (else empty), TRL's fused-head fields from the same pass: log sum p^2 (needs the entropy),
    the mean logit / T (f32 [N]) and whether the target is the first argmax (bool [N]); and the
    `top_k` largest log-probs and their ids ([N, k] f32 and int64, from the chunk's logits while
    they are in the workspace). Ignored rows: 0, False, top-k 0 and id -1."""
    _check_head(hidden, weight, bias, targets)
    n, h = hidden.shape
    dev = hidden.device
    f32 = torch.float32
    logp, lse = _out(n, f32, dev), _out(n, f32, dev)
    entropy = _out(n if compute_entropy else 0, f32, dev)
    lss = _out(n if log_sum_sq else 0, f32, dev)
    mean = _out(n if mean_logits else 0, f32, dev)
    top1 = _out(n if is_top1 else 0, torch.bool, dev)
    topk_logp = _out((n, top_k), f32, dev)
    topk_ids = _out((n, top_k), torch.int64, dev)
    outs = (logp, lse, entropy, lss, mean, top1, topk_logp, topk_ids)
    if n == 0:
        return outs
    work, status = _head_workspace(hidden, weight, workspace_bytes), _status(hidden)
    with host_memory([hidden, weight, bias, targets, status], list(outs) + [work]):
        call("prefk_linear_token_logprobs_forward",
             device=device_code(hidden), stream=stream_of(hidden), dtype_code=DTYPE_CODES[hidden.dtype],
             index_code=INDEX_CODES[targets.dtype], hidden=ptr(hidden), weight=ptr(weight), bias=ptr(bias),
             targets=ptr(targets), logp=ptr(logp), lse=ptr(lse), entropy=ptr(entropy), n_rows=n, hidden_dim=h,
             vocab=weight.shape[0], ignore_index=ignore_index, temperature=temperature,
             workspace_bytes=work.numel(), n_chunks=None, log_sum_sq=ptr(lss), mean_logits=ptr(mean),
             is_top1=ptr(top1), topk_logp=ptr(topk_logp), topk_ids=ptr(topk_ids), top_k=top_k,
             workspace=ptr(work), status=ptr(status))
    check_status(status, hidden.device.type == "cpu")
    return outs


@linear_token_logprobs.register_fake
def _(hidden, weight, bias, targets, ignore_index, temperature, compute_entropy, workspace_bytes, log_sum_sq=False,
      mean_logits=False, is_top1=False, top_k=0):
    n = hidden.shape[0]
    f = dict(dtype=torch.float32, device=hidden.device)
    return (hidden.new_empty(n, **f), hidden.new_empty(n, **f), hidden.new_empty(n if compute_entropy else 0, **f),
            hidden.new_empty(n if log_sum_sq else 0, **f), hidden.new_empty(n if mean_logits else 0, **f),
            hidden.new_empty(n if is_top1 else 0, dtype=torch.bool, device=hidden.device),
            hidden.new_empty((n, top_k), **f), hidden.new_empty((n, top_k), dtype=torch.int64, device=hidden.device))


@custom_op("pref_kernels::linear_token_logprobs_backward", mutates_args=())
def linear_token_logprobs_backward(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], targets: Tensor,
                                   grad_logp: Tensor, grad_entropy: Optional[Tensor], ignore_index: int,
                                   temperature: float, workspace_bytes: int) -> Tuple[Tensor, Tensor, Tensor]:
    """d_hidden (hidden's dtype), d_weight (f32) and d_bias (f32, empty without a bias) of
    sum(grad_logp * logp + grad_entropy * entropy), recomputing each chunk's logits."""
    _check_head(hidden, weight, bias, targets)
    n, h = hidden.shape
    v = weight.shape[0]
    for name, x in (("grad_logp", grad_logp), ("grad_entropy", grad_entropy)):
        _input(name, x, _F32, n, hidden)
    dev = hidden.device
    d_hidden = _out((n, h), hidden.dtype, dev)
    d_weight = _out((v, h), torch.float32, dev)
    d_bias = _out(v if bias is not None else 0, torch.float32, dev)
    if n == 0:
        d_weight.zero_()
        d_bias.zero_()
        return d_hidden, d_weight, d_bias
    work, status = _head_workspace(hidden, weight, workspace_bytes), _status(hidden)
    with host_memory([hidden, weight, bias, targets, grad_logp, grad_entropy, status],
                     [d_hidden, d_weight, d_bias, work]):
        call("prefk_linear_token_logprobs_backward",
             device=device_code(hidden), stream=stream_of(hidden), dtype_code=DTYPE_CODES[hidden.dtype],
             index_code=INDEX_CODES[targets.dtype], hidden=ptr(hidden), weight=ptr(weight), bias=ptr(bias),
             targets=ptr(targets), grad_logp=ptr(grad_logp), grad_entropy=ptr(grad_entropy), d_hidden=ptr(d_hidden),
             d_weight=ptr(d_weight), d_bias=ptr(d_bias), n_rows=n, hidden_dim=h, vocab=v, ignore_index=ignore_index,
             temperature=temperature, workspace_bytes=work.numel(), workspace=ptr(work), status=ptr(status))
    check_status(status, hidden.device.type == "cpu")
    return d_hidden, d_weight, d_bias


@linear_token_logprobs_backward.register_fake
def _(hidden, weight, bias, targets, grad_logp, grad_entropy, ignore_index, temperature, workspace_bytes):
    v = weight.shape[0]
    return (torch.empty_like(hidden), weight.new_empty(weight.shape, dtype=torch.float32),
            weight.new_empty(v if bias is not None else 0, dtype=torch.float32))


def _linear_setup(ctx, inputs, output):
    hidden, weight, bias, targets, ignore_index, temperature, compute_entropy, workspace_bytes = inputs[:8]
    ctx.save_for_backward(hidden, weight, bias, targets)
    ctx.args = (ignore_index, temperature, compute_entropy, workspace_bytes)
    ctx.mark_non_differentiable(*output[1:2], *output[3:])


def _linear_grad(ctx, grad_logp, _grad_lse, grad_entropy, *_extras):
    hidden, weight, bias, targets = ctx.saved_tensors
    ignore_index, temperature, compute_entropy, workspace_bytes = ctx.args
    if grad_logp is None:
        grad_logp = hidden.new_zeros(hidden.shape[0], dtype=torch.float32)
    ge = grad_entropy.float().contiguous() if compute_entropy and grad_entropy is not None else None
    d_hidden, d_weight, d_bias = torch.ops.pref_kernels.linear_token_logprobs_backward(
        hidden, weight, bias, targets, grad_logp.float().contiguous(), ge, ignore_index, temperature,
        workspace_bytes)
    return (d_hidden, d_weight.to(weight.dtype), (d_bias if bias is not None else None)) + (None,) * 9


torch.library.register_autograd("pref_kernels::linear_token_logprobs", _linear_grad, setup_context=_linear_setup)


def _host_i32(name, t):
    if t is None:
        return None
    _dtype(name, t, (torch.int32,))
    if t.dim() != 1:
        raise ValueError(f"pref_kernels: {name} must be a vector, got shape {list(t.shape)}")
    return t.detach().to("cpu").contiguous()


@custom_op("pref_kernels::linear_preference_step", mutates_args=())
def linear_preference_step(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], targets: Tensor,
                           weights: Optional[Tensor], ref_logp: Optional[Tensor], ref_seq: Optional[Tensor],
                           cu_seqlens: Optional[Tensor], n_seqs: int, seq_len: int, chosen: Optional[Tensor],
                           rejected: Optional[Tensor], kinds: List[int], term_weights: List[float],
                           betas: List[float], p0: List[float], p1: List[float], flags: List[int], divergence: int,
                           alpha: float, aggregation: int, ignore_index: int, temperature: float,
                           workspace_bytes: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The whole preference step from hidden states (3 GEMMs per used token, chunked by whole
    groups of pairs): (loss [], metrics [16], per-pair values [P, 6], logp [N], d_hidden,
    d_weight (f32), d_bias (f32, empty without a bias)). Token mask: targets != ignore_index."""
    _check_head(hidden, weight, bias, targets)
    n, h = hidden.shape
    v = weight.shape[0]
    cu, ch, rj = _host_i32("cu_seqlens", cu_seqlens), _host_i32("chosen", chosen), _host_i32("rejected", rejected)
    if cu is not None:
        n_seqs = cu.shape[0] - 1
    for name, x, want in (("weights", weights, n), ("ref_logp", ref_logp, n), ("ref_seq", ref_seq, n_seqs)):
        _input(name, x, _F32, want, hidden)
    n_pairs = _pair_count(ch, rj, n_seqs)
    terms = _loss_terms(kinds, term_weights, betas, p0, p1, flags)
    dev = hidden.device
    logp = _out(n, torch.float32, dev)
    d_hidden = _out((n, h), hidden.dtype, dev)
    d_weight = _out((v, h), torch.float32, dev)
    d_bias = _out(v if bias is not None else 0, torch.float32, dev)
    metrics = torch.empty(METRICS_LEN, dtype=torch.float32)
    pairs = torch.empty((n_pairs, PAIR_COLUMNS), dtype=torch.float32)
    host = lambda t: None if t is None else ctypes.cast(t.data_ptr(), ctypes.POINTER(ctypes.c_int32))  # noqa: E731
    with host_memory([hidden, weight, bias, targets, weights, ref_logp, ref_seq], [logp, d_hidden, d_weight, d_bias]):
        call("prefk_linear_preference_step",
             device=device_code(hidden), stream=stream_of(hidden), dtype_code=DTYPE_CODES[hidden.dtype],
             index_code=INDEX_CODES[targets.dtype], hidden=ptr(hidden), weight=ptr(weight), bias=ptr(bias),
             targets=ptr(targets), weights=ptr(weights), ref_logp=ptr(ref_logp), ref_seq=ptr(ref_seq),
             cu_seqlens=host(cu), n_seqs=n_seqs, seq_len=seq_len, chosen=host(ch), rejected=host(rj), n_pairs=n_pairs,
             terms=terms, n_terms=len(kinds), divergence=divergence, alpha=alpha, aggregation=aggregation,
             logp=ptr(logp), d_hidden=ptr(d_hidden), d_weight=ptr(d_weight), d_bias=ptr(d_bias),
             metrics=ctypes.cast(metrics.data_ptr(), ctypes.POINTER(ctypes.c_float)),
             pair_out=ctypes.cast(pairs.data_ptr(), ctypes.POINTER(ctypes.c_float)) if n_pairs else None, n_rows=n,
             hidden_dim=h, vocab=v, ignore_index=ignore_index, temperature=temperature,
             workspace_bytes=workspace_bytes)
    metrics = metrics.to(dev)
    return metrics[0].clone(), metrics, pairs.to(dev), logp, d_hidden, d_weight, d_bias


@linear_preference_step.register_fake
def _(hidden, weight, bias, targets, weights, ref_logp, ref_seq, cu_seqlens, n_seqs, seq_len, chosen, rejected,
      kinds, term_weights, betas, p0, p1, flags, divergence, alpha, aggregation, ignore_index, temperature,
      workspace_bytes):
    if cu_seqlens is not None:
        n_seqs = cu_seqlens.shape[0] - 1
    n_pairs = n_seqs // 2 if chosen is None else chosen.shape[0]
    n, v = hidden.shape[0], weight.shape[0]
    f = dict(dtype=torch.float32, device=hidden.device)
    return (hidden.new_empty((), **f), hidden.new_empty(METRICS_LEN, **f), hidden.new_empty((n_pairs, PAIR_COLUMNS), **f),
            hidden.new_empty(n, **f), torch.empty_like(hidden), weight.new_empty(weight.shape, **f),
            weight.new_empty(v if bias is not None else 0, **f))


def _head_step_setup(ctx, inputs, output):
    """Autograd of a whole step from hidden states (inputs hidden, weight, bias, ...; outputs the
    loss, what it logs, then d_hidden, d_weight, d_bias): the gradients were computed in the call."""
    weight, bias = inputs[1], inputs[2]
    ctx.save_for_backward(*output[-3:])
    ctx.weight_dtype, ctx.has_bias, ctx.n_inputs = weight.dtype, bias is not None, len(inputs)
    ctx.mark_non_differentiable(*output[1:])


def _head_step_grad(ctx, grad_loss, *_):
    d_hidden, d_weight, d_bias = ctx.saved_tensors
    gl = grad_loss if grad_loss is not None else torch.zeros((), device=d_hidden.device)
    gh = (d_hidden.float() * gl).to(d_hidden.dtype)
    gw = (d_weight * gl).to(ctx.weight_dtype)
    gb = d_bias * gl if ctx.has_bias else None
    return (gh, gw, gb) + (None,) * (ctx.n_inputs - 3)


torch.library.register_autograd("pref_kernels::linear_preference_step", _head_step_grad,
                                setup_context=_head_step_setup)


# ---- GRPO family ---------------------------------------------------------------------------------

GRPO_METRICS_LEN = 8


@custom_op("pref_kernels::grpo_loss", mutates_args=())
def grpo_loss(logp: Tensor, old_logp: Optional[Tensor], ref_logp: Optional[Tensor], mask: Optional[Tensor],
              is_weights: Optional[Tensor], entropy: Optional[Tensor], advantages: Tensor,
              cu_seqlens: Optional[Tensor], n_seqs: int, seq_len: int, loss_type: int, importance: int,
              epsilon_low: float, epsilon_high: float, delta: float, beta: float, bias_corrected_kl: bool,
              entropy_coef: float, top_entropy_quantile: float, agg_param: float, tau_pos: float,
              tau_neg: float, sampling_logp: Optional[Tensor], accumulation_steps: int,
              off_policy_mask_threshold: float, vespo_k_pos: float, vespo_lambda_pos: float, vespo_k_neg: float,
              vespo_lambda_neg: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The GRPO-family loss on per-token log-probs [T] (f32): (loss [], metrics [8] in
    GRPO_METRIC_NAMES order, dloss/dlogp [T], dloss/dentropy [T] or empty without `entropy`).
    `off_policy_mask_threshold` NaN = off."""
    t = _token_batch(logp, cu_seqlens, n_seqs,
                     (("old_logp", old_logp), ("ref_logp", ref_logp), ("is_weights", is_weights),
                      ("entropy", entropy), ("mask", mask), ("sampling_logp", sampling_logp)),
                     (("advantages", advantages),))
    cfg = _lib.PrefkGrpoConfig(loss_type, importance, epsilon_low, epsilon_high, delta, beta, int(bias_corrected_kl),
                               entropy_coef, top_entropy_quantile, 1.0, agg_param, tau_pos, tau_neg,
                               accumulation_steps, off_policy_mask_threshold, vespo_k_pos, vespo_lambda_pos,
                               vespo_k_neg, vespo_lambda_neg)
    dev = logp.device
    metrics = _out(GRPO_METRICS_LEN, torch.float32, dev)
    grad = _out(t, torch.float32, dev)
    grad_entropy = _out(t if entropy is not None else 0, torch.float32, dev)
    work_len = _lib.lib().prefk_grpo_workspace_len(n_seqs)
    if work_len < 0:
        raise ValueError(f"pref_kernels: {n_seqs} sequences overflow the workspace size")
    work = torch.empty(max(work_len, 1), dtype=torch.float32, device=dev)
    status = _status(logp)
    mask_u8 = _as_u8(mask)
    with host_memory([logp, old_logp, sampling_logp, ref_logp, mask_u8, is_weights, entropy, advantages, cu_seqlens,
                      status], [metrics, grad, grad_entropy, work]):
        call("prefk_grpo_loss",
             device=device_code(logp), stream=stream_of(logp), config=ctypes.byref(cfg), logp=ptr(logp),
             old_logp=ptr(old_logp), sampling_logp=ptr(sampling_logp), ref_logp=ptr(ref_logp), mask=ptr(mask_u8),
             is_weights=ptr(is_weights), entropy=ptr(entropy), advantages=ptr(advantages), n_tokens=t,
             cu_seqlens=ptr(cu_seqlens), n_seqs=n_seqs, seq_len=seq_len, metrics=ptr(metrics), grad_logp=ptr(grad),
             grad_entropy=ptr(grad_entropy), workspace=ptr(work), status=ptr(status))
    check_status(status, dev.type == "cpu")
    return metrics[0].clone(), metrics, grad, grad_entropy


@grpo_loss.register_fake
def _(logp, old_logp, ref_logp, mask, is_weights, entropy, advantages, cu_seqlens, n_seqs, seq_len, loss_type,
      importance, epsilon_low, epsilon_high, delta, beta, bias_corrected_kl, entropy_coef, top_entropy_quantile,
      agg_param, tau_pos, tau_neg, sampling_logp, accumulation_steps, off_policy_mask_threshold, vespo_k_pos,
      vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg):
    t = logp.shape[0]
    return (logp.new_empty(()), logp.new_empty(GRPO_METRICS_LEN), torch.empty_like(logp),
            logp.new_empty(t if entropy is not None else 0))


def _grpo_setup(ctx, inputs, output):
    loss, metrics, grad, grad_entropy = output
    ctx.save_for_backward(grad, grad_entropy)
    ctx.has_entropy = inputs[5] is not None
    ctx.mark_non_differentiable(metrics, grad, grad_entropy)


def _grpo_grad(ctx, grad_loss, *_):
    grad, grad_entropy = ctx.saved_tensors
    gl = grad_loss if grad_loss is not None else torch.zeros((), device=grad.device)
    return ((grad * gl, None, None, None, None, grad_entropy * gl if ctx.has_entropy else None) + (None,) * 23)


torch.library.register_autograd("pref_kernels::grpo_loss", _grpo_grad, setup_context=_grpo_setup)


@custom_op("pref_kernels::linear_grpo_step", mutates_args=())
def linear_grpo_step(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], targets: Tensor, mask: Optional[Tensor],
                     old_logp: Optional[Tensor], sampling_logp: Optional[Tensor], ref_logp: Optional[Tensor],
                     is_weights: Optional[Tensor], advantages: Tensor, cu_seqlens: Optional[Tensor], n_seqs: int,
                     seq_len: int, loss_type: int, importance: int, epsilon_low: float, epsilon_high: float,
                     delta: float, beta: float, bias_corrected_kl: bool, entropy_coef: float,
                     top_entropy_quantile: float, agg_param: float, tau_pos: float, tau_neg: float,
                     accumulation_steps: int, off_policy_mask_threshold: float, vespo_k_pos: float,
                     vespo_lambda_pos: float, vespo_k_neg: float, vespo_lambda_neg: float, compute_entropy: bool,
                     ignore_index: int, temperature: float,
                     workspace_bytes: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The whole GRPO-family step from hidden states (3 GEMMs per counted token, chunked by whole
    sequences): (loss [], metrics [8] in GRPO_METRIC_NAMES order, logp [N], entropy [N] (empty
    without `compute_entropy`), d_hidden, d_weight (f32), d_bias (f32, empty without a bias)). A row
    counts when its mask is set (every row without one) and its target is not `ignore_index`."""
    _check_head(hidden, weight, bias, targets)
    n, h = hidden.shape
    v = weight.shape[0]
    cu = _host_i32("cu_seqlens", cu_seqlens)
    if cu is not None:
        n_seqs = cu.shape[0] - 1
    for name, x in (("old_logp", old_logp), ("sampling_logp", sampling_logp), ("ref_logp", ref_logp),
                    ("is_weights", is_weights)):
        _input(name, x, _F32, n, hidden)
    _input("mask", mask, _MASK, n, hidden)
    _input("advantages", advantages, _F32, n_seqs, hidden)
    cfg = _lib.PrefkGrpoConfig(loss_type, importance, epsilon_low, epsilon_high, delta, beta, int(bias_corrected_kl),
                               entropy_coef, top_entropy_quantile, 1.0, agg_param, tau_pos, tau_neg,
                               accumulation_steps, off_policy_mask_threshold, vespo_k_pos, vespo_lambda_pos,
                               vespo_k_neg, vespo_lambda_neg)
    dev = hidden.device
    logp = _out(n, torch.float32, dev)
    entropy = _out(n if compute_entropy else 0, torch.float32, dev)
    d_hidden = _out((n, h), hidden.dtype, dev)
    d_weight = _out((v, h), torch.float32, dev)
    d_bias = _out(v if bias is not None else 0, torch.float32, dev)
    metrics = torch.empty(GRPO_METRICS_LEN, dtype=torch.float32)
    mask_u8 = _as_u8(mask)
    host = lambda t: None if t is None else ctypes.cast(t.data_ptr(), ctypes.POINTER(ctypes.c_int32))  # noqa: E731
    with host_memory([hidden, weight, bias, targets, mask_u8, old_logp, sampling_logp, ref_logp, is_weights,
                      advantages], [logp, entropy, d_hidden, d_weight, d_bias]):
        call("prefk_linear_grpo_step",
             device=device_code(hidden), stream=stream_of(hidden), config=ctypes.byref(cfg),
             dtype_code=DTYPE_CODES[hidden.dtype], index_code=INDEX_CODES[targets.dtype], hidden=ptr(hidden),
             weight=ptr(weight), bias=ptr(bias), targets=ptr(targets), mask=ptr(mask_u8), old_logp=ptr(old_logp),
             sampling_logp=ptr(sampling_logp), ref_logp=ptr(ref_logp), is_weights=ptr(is_weights),
             advantages=ptr(advantages), cu_seqlens=host(cu), n_seqs=n_seqs, seq_len=seq_len, logp=ptr(logp),
             entropy=ptr(entropy if compute_entropy else None), d_hidden=ptr(d_hidden), d_weight=ptr(d_weight),
             d_bias=ptr(d_bias), metrics=ctypes.cast(metrics.data_ptr(), ctypes.POINTER(ctypes.c_float)),
             n_rows=n, hidden_dim=h, vocab=v, ignore_index=ignore_index, workspace_bytes=workspace_bytes,
             compute_entropy=int(compute_entropy), temperature=temperature)
    metrics = metrics.to(dev)
    return metrics[0].clone(), metrics, logp, entropy, d_hidden, d_weight, d_bias


@linear_grpo_step.register_fake
def _(hidden, weight, bias, targets, mask, old_logp, sampling_logp, ref_logp, is_weights, advantages, cu_seqlens,
      n_seqs, seq_len, loss_type, importance, epsilon_low, epsilon_high, delta, beta, bias_corrected_kl, entropy_coef,
      top_entropy_quantile, agg_param, tau_pos, tau_neg, accumulation_steps, off_policy_mask_threshold, vespo_k_pos,
      vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg, compute_entropy, ignore_index, temperature, workspace_bytes):
    n, v = hidden.shape[0], weight.shape[0]
    f = dict(dtype=torch.float32, device=hidden.device)
    return (hidden.new_empty((), **f), hidden.new_empty(GRPO_METRICS_LEN, **f), hidden.new_empty(n, **f),
            hidden.new_empty(n if compute_entropy else 0, **f), torch.empty_like(hidden),
            weight.new_empty(weight.shape, **f), weight.new_empty(v if bias is not None else 0, **f))


torch.library.register_autograd("pref_kernels::linear_grpo_step", _head_step_grad, setup_context=_head_step_setup)


# ---- group / listwise losses (KTO, LiPO-lambda, PRO) ------------------------------------------

GROUP_METRICS_LEN = 12


@custom_op("pref_kernels::group_loss", mutates_args=())
def group_loss(logp: Tensor, mask: Optional[Tensor], ref_logp: Optional[Tensor], ref_seq: Optional[Tensor],
               labels: Tensor, cu_seqlens: Optional[Tensor], n_seqs: int, seq_len: int, kind: int, beta: float,
               p0: float, p1: float, kl_given: float, flags: int, list_size: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """A group / listwise loss on per-token log-probs [T] (f32), one f32 label per sequence (KTO
    roles, LiPO relevance, PRO rewards): (loss [], metrics [12], per-sequence values [S], dloss/dlogp [T])."""
    t = _token_batch(logp, cu_seqlens, n_seqs, (("mask", mask), ("ref_logp", ref_logp)),
                     (("labels", labels), ("ref_seq", ref_seq)))
    dev = logp.device
    if dev.type == "cpu" or os.environ.get("PREF_KERNELS_CHECK") == "1":
        # The labels are checked on the host (on CUDA that would synchronize: PREF_KERNELS_CHECK=1).
        host = labels.detach().to("cpu").contiguous()
        call("prefk_group_loss_check_labels",
             kind=kind, beta=beta, p0=p0, p1=p1, kl_given=kl_given, flags=flags, list_size=list_size,
             labels=ctypes.cast(host.data_ptr(), ctypes.POINTER(ctypes.c_float)), n_seqs=n_seqs)
    metrics = _out(GROUP_METRICS_LEN, torch.float32, dev)
    seq_out = _out(n_seqs, torch.float32, dev)
    grad = _out(t, torch.float32, dev)
    work_len = _lib.lib().prefk_group_loss_workspace_len(n_seqs)
    if work_len < 0:
        raise ValueError(f"pref_kernels: {n_seqs} sequences overflow the workspace size")
    work = torch.empty(max(work_len, 1), dtype=torch.float32, device=dev)
    status = _status(logp)
    mask_u8 = _as_u8(mask)
    with host_memory([logp, mask_u8, ref_logp, ref_seq, labels, cu_seqlens, status], [metrics, seq_out, grad, work]):
        call("prefk_group_loss",
             device=device_code(logp), stream=stream_of(logp), kind=kind, beta=beta, p0=p0, p1=p1, kl_given=kl_given,
             flags=flags, list_size=list_size, logp=ptr(logp), mask=ptr(mask_u8), ref_logp=ptr(ref_logp),
             ref_seq=ptr(ref_seq), labels=ptr(labels), n_tokens=t, cu_seqlens=ptr(cu_seqlens), n_seqs=n_seqs,
             seq_len=seq_len, grad_scale=1.0, seq_out=ptr(seq_out), metrics=ptr(metrics), grad_logp=ptr(grad),
             workspace=ptr(work), status=ptr(status))
    check_status(status, dev.type == "cpu")
    return metrics[0].clone(), metrics, seq_out, grad


@group_loss.register_fake
def _(logp, mask, ref_logp, ref_seq, labels, cu_seqlens, n_seqs, seq_len, kind, beta, p0, p1, kl_given, flags,
      list_size):
    return (logp.new_empty(()), logp.new_empty(GROUP_METRICS_LEN), logp.new_empty(n_seqs), torch.empty_like(logp))


def _group_setup(ctx, inputs, output):
    loss, metrics, seq_out, grad = output
    ctx.save_for_backward(grad)
    ctx.mark_non_differentiable(metrics, seq_out, grad)


def _group_grad(ctx, grad_loss, *_):
    (grad,) = ctx.saved_tensors
    gl = grad_loss if grad_loss is not None else torch.zeros((), device=grad.device)
    return (grad * gl,) + (None,) * 14


torch.library.register_autograd("pref_kernels::group_loss", _group_grad, setup_context=_group_setup)


# ---- per-sequence reductions ---------------------------------------------------------------------

SEQ_STATS_LEN = 10


def _check_reduce(logp, mask, weights, cu_seqlens, n_seqs):
    return _token_batch(logp, cu_seqlens, n_seqs, (("mask", mask), ("weights", weights))), _as_u8(mask)


@custom_op("pref_kernels::seq_reduce", mutates_args=())
def seq_reduce(logp: Tensor, mask: Optional[Tensor], weights: Optional[Tensor], cu_seqlens: Optional[Tensor],
               n_seqs: int, seq_len: int, mode: int) -> Tuple[Tensor, Tensor]:
    """Per-sequence scores [S] of masked per-token log-probs (mode 0 sum, 1 mean, 2 weighted sum,
    3 weighted mean) over a padded (n_seqs x seq_len) or packed (cu_seqlens) batch, and the
    statistics [S, 10] its backward reads."""
    t, mask_u8 = _check_reduce(logp, mask, weights, cu_seqlens, n_seqs)
    dev = logp.device
    scores = _out(n_seqs, torch.float32, dev)
    stats = _out((n_seqs, SEQ_STATS_LEN), torch.float32, dev)
    if n_seqs == 0:
        return scores, stats
    status = _status(logp)
    with host_memory([logp, mask_u8, weights, cu_seqlens, status], [scores, stats]):
        call("prefk_seq_reduce",
             device=device_code(logp), stream=stream_of(logp), logp=ptr(logp), mask=ptr(mask_u8),
             weights=ptr(weights), n_tokens=t, cu_seqlens=ptr(cu_seqlens), n_seqs=n_seqs, seq_len=seq_len, mode=mode,
             scores=ptr(scores), stats=ptr(stats), status=ptr(status))
    check_status(status, dev.type == "cpu")
    return scores, stats


@seq_reduce.register_fake
def _(logp, mask, weights, cu_seqlens, n_seqs, seq_len, mode):
    return logp.new_empty(n_seqs), logp.new_empty((n_seqs, SEQ_STATS_LEN))


@custom_op("pref_kernels::seq_reduce_backward", mutates_args=())
def seq_reduce_backward(logp: Tensor, mask: Optional[Tensor], weights: Optional[Tensor],
                        cu_seqlens: Optional[Tensor], n_seqs: int, seq_len: int, mode: int, dscores: Tensor,
                        stats: Tensor) -> Tensor:
    """d/dlogp [T] of sum(dscores * scores)."""
    t, mask_u8 = _check_reduce(logp, mask, weights, cu_seqlens, n_seqs)
    _dtype("dscores", dscores, (torch.float32,))
    _vector("dscores", dscores, n_seqs)
    _dtype("stats", stats, (torch.float32,))
    if tuple(stats.shape) != (n_seqs, SEQ_STATS_LEN):
        raise ValueError(f"pref_kernels: stats must have shape [{n_seqs}, {SEQ_STATS_LEN}] (from seq_reduce), "
                         f"got {list(stats.shape)}")
    for name, x in (("dscores", dscores), ("stats", stats)):
        _contiguous(name, x)
        _same_device(name, x, logp)
    grad = _out(t, torch.float32, logp.device)
    if t == 0:
        return grad
    with host_memory([logp, mask_u8, weights, cu_seqlens, dscores, stats], [grad]):
        call("prefk_seq_reduce_backward",
             device=device_code(logp), stream=stream_of(logp), logp=ptr(logp), mask=ptr(mask_u8),
             weights=ptr(weights), n_tokens=t, cu_seqlens=ptr(cu_seqlens), n_seqs=n_seqs, seq_len=seq_len, mode=mode,
             dscores=ptr(dscores), stats=ptr(stats), grad_logp=ptr(grad))
    return grad


@seq_reduce_backward.register_fake
def _(logp, mask, weights, cu_seqlens, n_seqs, seq_len, mode, dscores, stats):
    return torch.empty_like(logp)


def _reduce_setup(ctx, inputs, output):
    logp, mask, weights, cu_seqlens, n_seqs, seq_len, mode = inputs
    ctx.save_for_backward(logp, mask, weights, cu_seqlens, output[1])
    ctx.args = (n_seqs, seq_len, mode)
    ctx.mark_non_differentiable(output[1])


def _reduce_grad(ctx, dscores, _dstats):
    logp, mask, weights, cu_seqlens, stats = ctx.saved_tensors
    n_seqs, seq_len, mode = ctx.args
    grad = torch.ops.pref_kernels.seq_reduce_backward(logp, mask, weights, cu_seqlens, n_seqs, seq_len, mode,
                                                      dscores.float().contiguous(), stats)
    return grad, None, None, None, None, None, None


torch.library.register_autograd("pref_kernels::seq_reduce", _reduce_grad, setup_context=_reduce_setup)
