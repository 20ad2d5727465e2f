"""Vocabulary-parallel (tensor-parallel LM head) log-probs as torch custom ops.

Each rank of a tensor-parallel group holds vocabulary ids [vocab_start, vocab_start + Vs) of a
vocabulary of `vocab` entries: a [N, Vs] slice of the logits, or the LM head's weight rows
[Vs, H]. Per call the shard's kernel writes [N, 5] f32 partial statistics per row (max, sum of
exponentials, entropy term, target logit, owner flag), one all-gather over the group (the
process group's own backend: NCCL, gloo) brings every rank's partials, and the finalize kernel
combines them in rank order into log-probs, lse and entropy, bitwise the same on every rank. The
backward needs no collective for the logits; for the fused LM head each rank's d_hidden is a
partial sum that is all-reduced over the group (or left to the trainer's own tensor-parallel
region, `reduce_grad_hidden=False`).

The kernel-level ops (`vocab_shard_partials`, `vocab_parallel_finalize`, `vocab_shard_backward`,
`linear_shard_partials`, `linear_shard_backward`) take no group; the `vocab_parallel_*` ops take
the process group by name (`group.group_name`) and run the collectives with it.
"""
from typing import Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from ._lib import DTYPE_CODES, INDEX_CODES, call, check_status, device_code, host_memory, ptr, stream_of
from .ops import _F32, _check_head, _check_logits, _input, _out, _stats_input, _status, custom_op

VP_STATS = 5
# The status bit of shards that do not tile the vocabulary (params.h: PREFK_STATUS_BAD_SHARDS).
_STATUS_BAD_SHARDS = 16


def _check_shard(vocab_start, shard_vocab, vocab):
    if not (0 <= vocab_start and shard_vocab >= 1 and vocab_start + shard_vocab <= vocab):
        raise ValueError(f"pref_kernels: the shard [{vocab_start}, {vocab_start + shard_vocab}) is not a non-empty "
                         f"range of the vocabulary [0, {vocab})")


def _group(group_name):
    from torch.distributed.distributed_c10d import _resolve_process_group
    return _resolve_process_group(group_name)


def _all_gather(partials, group_name, vocab_start, shard_vocab, vocab):
    """[world, N, 5]: every rank's partials, in rank order, and a device bool: whether the ranks'
    shards tile [0, vocab).

    The finalize's owner flags catch a bad tiling only at a target; a gap or an overlap that no
    target falls in would skew every row's lse silently. So each rank's shard descriptor (start,
    size, vocab as int32 bits in 4 extra floats) travels in the same all-gather as its partials,
    and the check runs on the device: no second collective, no synchronization, and every rank
    sees the same descriptors, so every rank reaches the same verdict."""
    pg = _group(group_name)
    world = dist.get_world_size(pg)
    n = partials.shape[0]
    desc = torch.tensor([vocab_start, shard_vocab, vocab, 0], dtype=torch.int32)
    send = torch.cat([partials.reshape(-1), desc.to(partials.device).view(torch.float32)])
    # Gathered along dim 0 (the layout every backend accepts), then seen as [world, N * 5 + 4].
    out = torch.empty(world * send.numel(), dtype=torch.float32, device=partials.device)
    dist.all_gather_into_tensor(out, send, group=pg)
    out = out.view(world, send.numel())
    shards = out[:, n * VP_STATS:].contiguous().view(torch.int32).long()
    order = shards[:, 0].argsort(stable=True)
    start, size = shards[order, 0], shards[order, 1]
    ends = start + size
    tiles = ((shards[:, 2] == vocab).all() & (start[0] == 0) & (ends[-1] == vocab)
             & (start[1:] == ends[:-1]).all() & (size >= 1).all())
    return out[:, :n * VP_STATS].reshape(world, n, VP_STATS), tiles


# ---- kernel-level ops (no collective) -----------------------------------------------------------

def _shard_partials(logits, targets, vocab_start, vocab, ignore_index, temperature, compute_entropy):
    _check_logits(logits, targets)
    n, vs = logits.shape
    _check_shard(vocab_start, vs, vocab)
    partials = _out((n, VP_STATS), torch.float32, logits.device)
    if n == 0:
        return partials
    status = _status(logits)
    with host_memory([logits, targets, status], [partials]):
        call("prefk_vocab_shard_partials",
             device=device_code(logits), stream=stream_of(logits), dtype_code=DTYPE_CODES[logits.dtype],
             index_code=INDEX_CODES[targets.dtype], logits=ptr(logits), targets=ptr(targets), partials=ptr(partials),
             status=ptr(status), n_rows=n, shard_vocab=vs, row_stride=logits.stride(0), vocab_start=vocab_start,
             vocab=vocab, ignore_index=ignore_index, temperature=temperature, compute_entropy=int(compute_entropy))
    check_status(status, logits.device.type == "cpu")
    return partials


@custom_op("pref_kernels::vocab_shard_partials", mutates_args=())
def vocab_shard_partials(logits: Tensor, targets: Tensor, vocab_start: int, vocab: int, ignore_index: int,
                         temperature: float, compute_entropy: bool) -> Tensor:
    """[N, 5] f32 partial statistics of a logits shard [N, Vs] (vocabulary ids [vocab_start,
    vocab_start + Vs) of `vocab`); targets are ids in the whole vocabulary."""
    return _shard_partials(logits, targets, vocab_start, vocab, ignore_index, temperature, compute_entropy)


@vocab_shard_partials.register_fake
def _(logits, targets, vocab_start, vocab, ignore_index, temperature, compute_entropy):
    return logits.new_empty((logits.shape[0], VP_STATS), dtype=torch.float32)


def _finalize(gathered, targets, vocab, ignore_index, temperature, compute_entropy, tiles=None):
    if gathered.dim() != 3 or gathered.shape[2] != VP_STATS or gathered.dtype != torch.float32:
        raise ValueError(f"pref_kernels: gathered partials must be f32 [world, N, {VP_STATS}], got "
                         f"{list(gathered.shape)} {gathered.dtype}")
    n_shards, n = gathered.shape[0], gathered.shape[1]
    _input("targets", targets, tuple(INDEX_CODES), n, gathered)
    gathered = gathered.contiguous()
    logp, lse = _out(n, torch.float32, gathered.device), _out(n, torch.float32, gathered.device)
    entropy = _out(n if compute_entropy else 0, torch.float32, gathered.device)
    stats = _out((n, 2), torch.float32, gathered.device)
    if n == 0:
        return logp, lse, entropy, stats
    status = _status(gathered)
    with host_memory([gathered, targets, status], [logp, lse, entropy, stats]):
        call("prefk_vocab_parallel_finalize",
             device=device_code(gathered), stream=stream_of(gathered), index_code=INDEX_CODES[targets.dtype],
             partials=ptr(gathered), targets=ptr(targets), logp=ptr(logp), lse=ptr(lse), stats=ptr(stats),
             entropy=ptr(entropy), status=ptr(status), n_rows=n, n_shards=n_shards, vocab=vocab,
             ignore_index=ignore_index, temperature=temperature)
    if tiles is not None:
        # A bad tiling fails like the kernel's own shard check: NaN rows and the status bit.
        status |= torch.where(tiles, 0, _STATUS_BAD_SHARDS).to(torch.int32)
        nan = torch.tensor(float("nan"), dtype=torch.float32, device=gathered.device)
        logp, lse, entropy = (torch.where(tiles, x, nan) for x in (logp, lse, entropy))
        stats = torch.where(tiles, stats, nan)  # tiles is one flag for the whole group
    check_status(status, gathered.device.type == "cpu")
    return logp, lse, entropy, stats


@custom_op("pref_kernels::vocab_parallel_finalize", mutates_args=())
def vocab_parallel_finalize(gathered: Tensor, targets: Tensor, vocab: int, ignore_index: int, temperature: float,
                            compute_entropy: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """logp, lse and (when `compute_entropy`) entropy, f32 [N] each, and the rows' softmax statistics
    [N, 2] (what the shard backward reads), from every rank's partials [world, N, 5] (an
    all-gather's output)."""
    return _finalize(gathered, targets, vocab, ignore_index, temperature, compute_entropy)


@vocab_parallel_finalize.register_fake
def _(gathered, targets, vocab, ignore_index, temperature, compute_entropy):
    n = gathered.shape[1]
    return (gathered.new_empty(n), gathered.new_empty(n), gathered.new_empty(n if compute_entropy else 0),
            gathered.new_empty((n, 2)))


def _shard_backward(logits, targets, stats, entropy, grad_logp, grad_entropy, vocab_start, vocab, ignore_index,
                    temperature):
    _check_logits(logits, targets)
    n, vs = logits.shape
    _check_shard(vocab_start, vs, vocab)
    _stats_input(stats, n, logits)
    for name, t in (("grad_logp", grad_logp), ("entropy", entropy), ("grad_entropy", grad_entropy)):
        _input(name, t, _F32, n, logits)
    if grad_entropy is not None and entropy is None:
        raise ValueError("pref_kernels: grad_entropy needs the forward's entropy")
    grad = _out((n, vs), logits.dtype, logits.device)
    if n == 0:
        return grad
    status = _status(logits)
    with host_memory([logits, targets, stats, entropy, grad_logp, grad_entropy, status], [grad]):
        call("prefk_vocab_shard_backward",
             device=device_code(logits), stream=stream_of(logits), dtype_code=DTYPE_CODES[logits.dtype],
             index_code=INDEX_CODES[targets.dtype], logits=ptr(logits), targets=ptr(targets), stats=ptr(stats),
             entropy=ptr(entropy), grad_logp=ptr(grad_logp), grad_entropy=ptr(grad_entropy), grad_logits=ptr(grad),
             status=ptr(status), n_rows=n, shard_vocab=vs, row_stride=logits.stride(0), grad_stride=vs,
             vocab_start=vocab_start, vocab=vocab, ignore_index=ignore_index, temperature=temperature)
    check_status(status, logits.device.type == "cpu")
    return grad


@custom_op("pref_kernels::vocab_shard_backward", mutates_args=())
def vocab_shard_backward(logits: Tensor, targets: Tensor, stats: Tensor, entropy: Optional[Tensor],
                         grad_logp: Tensor, grad_entropy: Optional[Tensor], vocab_start: int, vocab: int,
                         ignore_index: int, temperature: float) -> Tensor:
    """d/dlogits [N, Vs] of a shard from the finalize's global softmax statistics [N, 2] (and entropy
    with its gradient)."""
    return _shard_backward(logits, targets, stats, entropy, grad_logp, grad_entropy, vocab_start, vocab,
                           ignore_index, temperature)


@vocab_shard_backward.register_fake
def _(logits, targets, stats, entropy, grad_logp, grad_entropy, vocab_start, vocab, ignore_index, temperature):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _linear_shard_partials(hidden, weight, bias, targets, vocab_start, vocab, ignore_index, temperature,
                           compute_entropy, workspace_bytes):
    _check_head(hidden, weight, bias, targets)
    n, h = hidden.shape
    vs = weight.shape[0]
    _check_shard(vocab_start, vs, vocab)
    partials = _out((n, VP_STATS), torch.float32, hidden.device)
    if n == 0:
        return partials
    with host_memory([hidden, weight, bias, targets], [partials]):
        call("prefk_linear_shard_partials",
             device=device_code(hidden), stream=stream_of(hidden), dtype_code=DTYPE_CODES[hidden.dtype],
             index_code=INDEX_CODES[targets.dtype], hidden=ptr(hidden), weight=ptr(weight), bias=ptr(bias),
             targets=ptr(targets), partials=ptr(partials), n_rows=n, hidden_dim=h, shard_vocab=vs,
             vocab_start=vocab_start, vocab=vocab, ignore_index=ignore_index, temperature=temperature,
             compute_entropy=int(compute_entropy), workspace_bytes=workspace_bytes)
    return partials


@custom_op("pref_kernels::linear_shard_partials", mutates_args=())
def linear_shard_partials(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], targets: Tensor, vocab_start: int,
                          vocab: int, ignore_index: int, temperature: float, compute_entropy: bool,
                          workspace_bytes: int) -> Tensor:
    """[N, 5] f32 partials of `hidden @ weight.T (+ bias)` where weight [Vs, H] (bias [Vs]) are the
    LM head's rows [vocab_start, vocab_start + Vs), without the shard's logits tensor."""
    return _linear_shard_partials(hidden, weight, bias, targets, vocab_start, vocab, ignore_index, temperature,
                                  compute_entropy, workspace_bytes)


@linear_shard_partials.register_fake
def _(hidden, weight, bias, targets, vocab_start, vocab, ignore_index, temperature, compute_entropy, workspace_bytes):
    return hidden.new_empty((hidden.shape[0], VP_STATS), dtype=torch.float32)


def _linear_shard_backward(hidden, weight, bias, targets, stats, entropy, grad_logp, grad_entropy, vocab_start,
                           vocab, ignore_index, temperature, workspace_bytes):
    _check_head(hidden, weight, bias, targets)
    n, h = hidden.shape
    vs = weight.shape[0]
    _check_shard(vocab_start, vs, vocab)
    _stats_input(stats, n, hidden)
    for name, t in (("grad_logp", grad_logp), ("entropy", entropy), ("grad_entropy", grad_entropy)):
        _input(name, t, _F32, n, hidden)
    if grad_entropy is not None and entropy is None:
        raise ValueError("pref_kernels: grad_entropy needs the forward's entropy")
    dev = hidden.device
    d_hidden = _out((n, h), hidden.dtype, dev)
    d_weight = _out((vs, h), torch.float32, dev)
    d_bias = _out(vs if bias is not None else 0, torch.float32, dev)
    with host_memory([hidden, weight, bias, targets, stats, entropy, grad_logp, grad_entropy],
                     [d_hidden, d_weight, d_bias]):
        call("prefk_linear_shard_backward",
             device=device_code(hidden), stream=stream_of(hidden), dtype_code=DTYPE_CODES[hidden.dtype],
             index_code=INDEX_CODES[targets.dtype], hidden=ptr(hidden), weight=ptr(weight), bias=ptr(bias),
             targets=ptr(targets), stats=ptr(stats), entropy=ptr(entropy), grad_logp=ptr(grad_logp),
             grad_entropy=ptr(grad_entropy), d_hidden=ptr(d_hidden), d_weight=ptr(d_weight), d_bias=ptr(d_bias),
             n_rows=n, hidden_dim=h, shard_vocab=vs, vocab_start=vocab_start, vocab=vocab, ignore_index=ignore_index,
             temperature=temperature, workspace_bytes=workspace_bytes)
    return d_hidden, d_weight, d_bias


@custom_op("pref_kernels::linear_shard_backward", mutates_args=())
def linear_shard_backward(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], targets: Tensor, stats: Tensor,
                          entropy: Optional[Tensor], grad_logp: Tensor, grad_entropy: Optional[Tensor],
                          vocab_start: int, vocab: int, ignore_index: int, temperature: float,
                          workspace_bytes: int) -> Tuple[Tensor, Tensor, Tensor]:
    """This rank's partial d_hidden (hidden's dtype), its d_weight shard (f32) and d_bias shard (f32,
    empty without a bias), from the finalize's global softmax statistics [N, 2] (and entropy with its
    gradient)."""
    return _linear_shard_backward(hidden, weight, bias, targets, stats, entropy, grad_logp, grad_entropy, vocab_start,
                                  vocab, ignore_index, temperature, workspace_bytes)


@linear_shard_backward.register_fake
def _(hidden, weight, bias, targets, stats, entropy, grad_logp, grad_entropy, vocab_start, vocab, ignore_index,
      temperature, workspace_bytes):
    vs = weight.shape[0]
    return (torch.empty_like(hidden), weight.new_empty(weight.shape, dtype=torch.float32),
            weight.new_empty(vs if bias is not None else 0, dtype=torch.float32))


# ---- ops over a process group ---------------------------------------------------------------------

@custom_op("pref_kernels::vocab_parallel_token_logprobs", mutates_args=())
def vocab_parallel_token_logprobs(logits: Tensor, targets: Tensor, vocab_start: int, vocab: int, group_name: str,
                                  ignore_index: int, temperature: float,
                                  compute_entropy: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """logp, lse, entropy (f32 [N], identical on every rank) of the logits whose shard [N, Vs] this
    rank holds, and the softmax statistics [N, 2] the backward reads: partials, one all-gather over
    the group, finalize."""
    partials = _shard_partials(logits, targets, vocab_start, vocab, ignore_index, temperature, compute_entropy)
    gathered, tiles = _all_gather(partials, group_name, vocab_start, logits.shape[1], vocab)
    return _finalize(gathered, targets, vocab, ignore_index, temperature, compute_entropy, tiles)


@vocab_parallel_token_logprobs.register_fake
def _(logits, targets, vocab_start, vocab, group_name, ignore_index, temperature, compute_entropy):
    n = logits.shape[0]
    f = dict(dtype=torch.float32)
    return (logits.new_empty(n, **f), logits.new_empty(n, **f), logits.new_empty(n if compute_entropy else 0, **f),
            logits.new_empty((n, 2), **f))


def _vp_setup(ctx, inputs, output):
    logits, targets, vocab_start, vocab, _group_name, ignore_index, temperature, compute_entropy = inputs
    _logp, lse, entropy, stats = output
    ctx.save_for_backward(logits, targets, stats, entropy if compute_entropy else None)
    ctx.args = (vocab_start, vocab, ignore_index, temperature, compute_entropy)
    ctx.mark_non_differentiable(lse, stats)


def _vp_grad(ctx, grad_logp, _grad_lse, grad_entropy, _grad_stats):
    # The loss on the (identical) log-probs runs on every rank, so grad_logp is the same everywhere
    # and each rank's d/dlogits of its own columns needs no collective.
    logits, targets, stats, entropy = ctx.saved_tensors
    vocab_start, vocab, ignore_index, temperature, compute_entropy = ctx.args
    if grad_logp is None:
        grad_logp = stats.new_zeros(stats.shape[0])
    ge = grad_entropy.float().contiguous() if compute_entropy and grad_entropy is not None else None
    grad = torch.ops.pref_kernels.vocab_shard_backward(logits, targets, stats, entropy if ge is not None else None,
                                                       grad_logp.float().contiguous(), ge, vocab_start, vocab,
                                                       ignore_index, temperature)
    return grad, None, None, None, None, None, None, None


torch.library.register_autograd("pref_kernels::vocab_parallel_token_logprobs", _vp_grad, setup_context=_vp_setup)


@custom_op("pref_kernels::vocab_parallel_linear_token_logprobs", mutates_args=())
def vocab_parallel_linear_token_logprobs(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], targets: Tensor,
                                         vocab_start: int, vocab: int, group_name: str, ignore_index: int,
                                         temperature: float, compute_entropy: bool, workspace_bytes: int,
                                         reduce_grad_hidden: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """logp, lse, entropy (f32 [N], identical on every rank) of `hidden @ W.T (+ b)` where this rank
    holds W's rows [vocab_start, vocab_start + Vs) (and b's), and the softmax statistics [N, 2]: no
    logits tensor on any rank."""
    partials = _linear_shard_partials(hidden, weight, bias, targets, vocab_start, vocab, ignore_index, temperature,
                                      compute_entropy, workspace_bytes)
    gathered, tiles = _all_gather(partials, group_name, vocab_start, weight.shape[0], vocab)
    return _finalize(gathered, targets, vocab, ignore_index, temperature, compute_entropy, tiles)


@vocab_parallel_linear_token_logprobs.register_fake
def _(hidden, weight, bias, targets, vocab_start, vocab, group_name, ignore_index, temperature, compute_entropy,
      workspace_bytes, reduce_grad_hidden):
    n = hidden.shape[0]
    f = dict(dtype=torch.float32)
    return (hidden.new_empty(n, **f), hidden.new_empty(n, **f), hidden.new_empty(n if compute_entropy else 0, **f),
            hidden.new_empty((n, 2), **f))


@custom_op("pref_kernels::vocab_parallel_linear_backward", mutates_args=())
def vocab_parallel_linear_backward(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], targets: Tensor,
                                   stats: Tensor, entropy: Optional[Tensor], grad_logp: Tensor,
                                   grad_entropy: Optional[Tensor], vocab_start: int, vocab: int, group_name: str,
                                   ignore_index: int, temperature: float, workspace_bytes: int,
                                   reduce_grad_hidden: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """The shard's backward; with `reduce_grad_hidden` d_hidden is summed over the group (in f32)."""
    d_hidden, d_weight, d_bias = _linear_shard_backward(hidden, weight, bias, targets, stats, entropy, grad_logp,
                                                        grad_entropy, vocab_start, vocab, ignore_index, temperature,
                                                        workspace_bytes)
    if reduce_grad_hidden:
        total = d_hidden.float()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=_group(group_name))
        d_hidden = total.to(hidden.dtype)
    return d_hidden, d_weight, d_bias


@vocab_parallel_linear_backward.register_fake
def _(hidden, weight, bias, targets, stats, entropy, grad_logp, grad_entropy, vocab_start, vocab, group_name,
      ignore_index, temperature, workspace_bytes, reduce_grad_hidden):
    vs = weight.shape[0]
    return (torch.empty_like(hidden), weight.new_empty(weight.shape, dtype=torch.float32),
            weight.new_empty(vs if bias is not None else 0, dtype=torch.float32))


def _vpl_setup(ctx, inputs, output):
    (hidden, weight, bias, targets, vocab_start, vocab, group_name, ignore_index, temperature, compute_entropy,
     workspace_bytes, reduce_grad_hidden) = inputs
    _logp, lse, entropy, stats = output
    ctx.save_for_backward(hidden, weight, bias, targets, stats, entropy if compute_entropy else None)
    ctx.args = (vocab_start, vocab, group_name, ignore_index, temperature, compute_entropy, workspace_bytes,
                reduce_grad_hidden)
    ctx.mark_non_differentiable(lse, stats)


def _vpl_grad(ctx, grad_logp, _grad_lse, grad_entropy, _grad_stats):
    hidden, weight, bias, targets, stats, entropy = ctx.saved_tensors
    vocab_start, vocab, group_name, ignore_index, temperature, compute_entropy, workspace_bytes, reduce = ctx.args
    if grad_logp is None:
        grad_logp = stats.new_zeros(stats.shape[0])
    ge = grad_entropy.float().contiguous() if compute_entropy and grad_entropy is not None else None
    d_hidden, d_weight, d_bias = torch.ops.pref_kernels.vocab_parallel_linear_backward(
        hidden, weight, bias, targets, stats, entropy if ge is not None else None, grad_logp.float().contiguous(), ge,
        vocab_start, vocab, group_name, ignore_index, temperature, workspace_bytes, reduce)
    return (d_hidden, d_weight.to(weight.dtype), d_bias if bias is not None else None, None, None, None, None, None,
            None, None, None, None)


torch.library.register_autograd("pref_kernels::vocab_parallel_linear_token_logprobs", _vpl_grad,
                                setup_context=_vpl_setup)
