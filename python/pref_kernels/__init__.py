"""pref-kernels for PyTorch: fused token log-probs (with entropy), the DPO-family / SimPO / CPO /
ORPO / TGDPO / TAB-PO preference losses, and shared-prefix group attention, as torch custom ops.

CUDA tensors run the CUDA kernels on the current stream (data pointers, no copies). CPU tensors run
the very same kernels through the crate's CPU emulator, with memory, race, initialization and
synchronization checks on every access: slow, but exact, and how the ops are tested without a GPU.

    import pref_kernels as pk
    logp = pk.token_logprobs(logits, labels)                       # [N] f32, differentiable
    loss, metrics = pk.dpo_loss(logp, mask, ref_logp, n_seqs=2 * B, seq_len=L, beta=0.1)
    pk.metrics_dict(metrics)["rewards/accuracies"]
    loss.backward()                                                # d/dlogits through both ops
"""
import math
from typing import Dict, NamedTuple, Optional, Sequence, Union

import torch

from . import ops  # noqa: F401  (registers torch.ops.pref_kernels.*)
from . import vocab_parallel as _vocab_parallel  # noqa: F401  (registers the vocabulary-parallel ops)
from ._lib import PrefKernelsError, backend, library_path
from .ops import DEFAULT_WORKSPACE_BYTES, METRICS_LEN, PAIR_COLUMNS, prefix_layout

__all__ = [
    "PrefKernelsError", "backend", "library_path", "token_logprobs", "LossTerm", "loss_terms",
    "preference_loss", "dpo_loss", "metrics_dict", "shared_prefix_attention", "prefix_layout", "METRIC_NAMES",
    "PAIR_COLUMN_NAMES", "TRL_LOSS_TYPES", "ld_weights", "wpo_weights", "linear_token_logprobs",
    "linear_preference_loss", "linear_dpo_loss", "linear_workspace_bytes",
    "DEFAULT_WORKSPACE_BYTES", "grpo_loss", "linear_grpo_loss", "GRPO_METRIC_NAMES", "GRPO_LOSS_TYPES", "kto_loss", "lipo_loss",
    "pro_loss", "KTO_UNDESIRABLE", "KTO_DESIRABLE", "KTO_KL_SAMPLE", "KTO_IGNORED", "seq_reduce",
    "group_metric_names", "vocab_shard_range", "vocab_parallel_token_logprobs",
    "vocab_parallel_linear_token_logprobs", "TokenStats", "token_stats", "linear_token_stats",
]
__version__ = "0.1.0"

# The crate's metric order (preference_loss::METRIC_NAMES) and per-pair columns (PAIR_COLUMN_NAMES).
METRIC_NAMES = [
    "loss", "loss/pref", "nll_loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
    "rewards/accuracies", "logps/chosen", "logps/rejected", "loss/barrier", "barrier/active_pct", "pref/p_pref",
]
PAIR_COLUMN_NAMES = ["loss", "chosen_reward", "rejected_reward", "chosen_logps", "rejected_logps", "barrier"]

# PREFK_LOSS_* codes of kernels/params.h.
_KIND = {
    "sigmoid": 0, "robust": 1, "hinge": 2, "ipo": 3, "exo_pair": 4, "nca_pair": 5, "bco_pair": 6,
    "sppo_hard": 7, "apo_zero": 8, "apo_down": 9, "discopop": 10, "simpo": 11, "cpo": 12, "orpo": 13,
    "tgdpo": 14, "tabpo": 15, "nll": 16, "sigmoid_norm": 17, "aot": 18, "aot_unpaired": 19,
}
#: TRL `DPOConfig.loss_type` names served (TRL's current semantics: sequence log-probs are sums,
#: `label_smoothing` is read by robust and exo_pair only, `sft` is the token-mean NLL of chosen).
TRL_LOSS_TYPES = ("sigmoid", "robust", "hinge", "ipo", "exo_pair", "nca_pair", "bco_pair", "sppo_hard",
                  "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm", "aot", "aot_unpaired")
_DIVERGENCE = {"reverse_kl": 0, "forward_kl": 1, "js_divergence": 2, "alpha_divergence": 3}
_AGGREGATION = {"sum": 0, "mean": 1, "weighted_sum": 2, "weighted_mean": 3}


class LossTerm:
    """One weighted loss term: `kind` is a crate loss name (the TRL names plus simpo, cpo, orpo,
    tgdpo, tabpo, nll); p0 / p1 / flags as in include/prefk.h (label smoothing / epsilon / tau /
    alpha; gamma / lambda; hinge bit, TAB-PO barrier denominator)."""

    def __init__(self, kind: str, weight: float = 1.0, beta: float = 0.1, p0: float = 0.0, p1: float = 0.0,
                 flags: int = 0):
        if kind not in _KIND:
            raise ValueError(f"pref_kernels: unknown loss kind {kind!r}; known: {', '.join(_KIND)}")
        self.kind, self.weight, self.beta, self.p0, self.p1, self.flags = kind, weight, beta, p0, p1, flags

    def __repr__(self):
        return (f"LossTerm({self.kind!r}, weight={self.weight}, beta={self.beta}, p0={self.p0}, p1={self.p1}, "
                f"flags={self.flags})")


def loss_terms(loss_type: Union[str, Sequence[str]] = "sigmoid", beta: float = 0.1, label_smoothing: float = 0.0,
               loss_weights: Optional[Sequence[float]] = None, discopop_tau: float = 0.05):
    """The terms of a TRL `DPOConfig` (`loss_type` a name or a list, with `loss_weights`), refusing
    clearly what pref-kernels does not serve."""
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    weights = [1.0] * len(types) if loss_weights is None else list(loss_weights)
    if len(weights) != len(types):
        raise ValueError(f"pref_kernels: {len(types)} loss types but {len(weights)} loss_weights")
    out = []
    for t, w in zip(types, weights):
        if t not in TRL_LOSS_TYPES:
            raise ValueError(f"pref_kernels: unknown TRL loss_type {t!r}; supported: {', '.join(TRL_LOSS_TYPES)}")
        if t == "sft":
            out.append(LossTerm("nll", w))
        elif t in ("robust", "exo_pair", "aot", "aot_unpaired"):
            out.append(LossTerm(t, w, beta, p0=label_smoothing))
        elif t == "discopop":
            out.append(LossTerm(t, w, beta, p0=discopop_tau))
        else:
            out.append(LossTerm(t, w, beta))
    return out


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100, temperature: float = 1.0,
                   return_entropy: bool = False, return_lse: bool = False, return_log_sum_sq: bool = False):
    """log p(target) per row of `logits` [N, V] (f32/f16/bf16, rows contiguous; a row stride is
    fine) at `temperature`, as f32 [N]; 0 where the target is `ignore_index`.

    Extra f32 [N] outputs, returned after logp in this order when asked for: `return_entropy`,
    the entropy of each row's distribution (differentiable, in the same fused backward pass as
    logp; log-softmax is never materialized); `return_lse`, logsumexp(logits / T) (not
    differentiable; +-inf where the true value lies beyond f32); `return_log_sum_sq`, log sum_v
    p_v^2 (WPO's term, TRL's `log_sum_sq_probs`; computed in the entropy's pass, not
    differentiable). With none of them, logp alone."""
    compute_entropy = bool(return_entropy or return_log_sum_sq)
    logp, lse, entropy, _stats, log_sum_sq = torch.ops.pref_kernels.token_logprobs(
        logits, targets, ignore_index, float(temperature), compute_entropy)
    extra = [x for x, want in ((entropy, return_entropy), (lse, return_lse), (log_sum_sq, return_log_sum_sq)) if want]
    return (logp, *extra) if extra else logp


class TokenStats(NamedTuple):
    """Per-token outputs of `token_stats` / `linear_token_stats` (fields not asked for are None)."""
    logp: torch.Tensor
    entropy: Optional[torch.Tensor]
    log_sum_sq: Optional[torch.Tensor]
    mean_logits: Optional[torch.Tensor]
    is_top1: Optional[torch.Tensor]
    topk_logp: Optional[torch.Tensor]
    topk_ids: Optional[torch.Tensor]


def token_stats(logits: torch.Tensor, targets: Optional[torch.Tensor] = None, top_k: int = 0,
                ignore_index: int = -100, temperature: float = 1.0) -> TokenStats:
    """What distillation, train-inference mismatch checks and TRL's metrics read from a row of
    logits [N, V], without log-softmax: log p(target), the mean logit / T, whether the target is
    the row's first argmax (TRL's `is_top1`), and with `top_k` (1..64) the k largest log-probs
    [N, k] (descending; equal logits by ascending id) and their ids (int64). Not differentiable.
    `targets` None scores every row (log p of id 0). Ignored rows: 0, False, top-k 0 and id -1."""
    if targets is None:
        targets = torch.zeros(logits.shape[0], dtype=torch.int64, device=logits.device)
    logp, mean, top1, topk_logp, topk_ids = torch.ops.pref_kernels.token_stats(
        logits, targets, int(ignore_index), float(temperature), int(top_k))
    return TokenStats(logp, None, None, mean, top1, topk_logp if top_k else None, topk_ids if top_k else None)


def preference_loss(logp: torch.Tensor, terms, *, mask=None, weights=None, ref_logp=None, ref_seq=None,
                    n_seqs: Optional[int] = None, seq_len: int = 0, cu_seqlens=None, chosen=None, rejected=None,
                    f_divergence_type: str = "reverse_kl", f_alpha_divergence_coef: float = 0.5,
                    aggregation: str = "sum", return_pairs: bool = False, seq_weights=None):
    """The fused preference loss on per-token log-probs `logp` [T] (f32): returns `(loss, metrics)`
    with `metrics` the f32 [16] tensor in METRIC_NAMES order (on the op's device, so nothing
    synchronizes; `metrics_dict` names them), and with `return_pairs` also the per-pair values
    [P, 6] (PAIR_COLUMN_NAMES). The loss is differentiable with respect to `logp`.

    Layout: padded (`n_seqs` sequences of `seq_len` tokens) or packed (`cu_seqlens` [n_seqs + 1]
    int32). Pairs: the first half of the sequences are chosen, the second half rejected, unless
    `chosen` / `rejected` (int32 sequence indices) are given. `mask` [T] (bool/uint8) marks the
    completion tokens; `ref_logp` [T] or `ref_seq` [n_seqs] the reference model; `seq_weights`
    [n_seqs] WPO's detached sequence weights (`wpo_weights`)."""
    if cu_seqlens is not None:
        n_seqs = cu_seqlens.shape[0] - 1
    if n_seqs is None:
        raise ValueError("pref_kernels: give n_seqs (and seq_len) for a padded batch, or cu_seqlens")
    loss, metrics, pairs, _grad = torch.ops.pref_kernels.preference_loss(
        logp, mask, weights, ref_logp, ref_seq, cu_seqlens, int(n_seqs), int(seq_len), chosen, rejected,
        *_loss_args(terms, f_divergence_type, f_alpha_divergence_coef, aggregation), seq_weights)
    return (loss, metrics, pairs) if return_pairs else (loss, metrics)


def _loss_args(terms, f_divergence_type, f_alpha_divergence_coef, aggregation):
    """The loss configuration as the ops take it: the terms' six code lists, then the divergence
    code, alpha (TRL's `f_alpha_divergence_coef`, TRL 1.16 convention) and the aggregation code."""
    if f_divergence_type not in _DIVERGENCE:
        raise ValueError(f"pref_kernels: f_divergence_type must be one of {', '.join(_DIVERGENCE)}")
    if aggregation not in _AGGREGATION:
        raise ValueError(f"pref_kernels: aggregation must be one of {', '.join(_AGGREGATION)}")
    terms = [terms] if isinstance(terms, LossTerm) else list(terms)
    return ([_KIND[t.kind] for t in terms], [float(t.weight) for t in terms], [float(t.beta) for t in terms],
            [float(t.p0) for t in terms], [float(t.p1) for t in terms], [int(t.flags) for t in terms],
            _DIVERGENCE[f_divergence_type], float(f_alpha_divergence_coef), _AGGREGATION[aggregation])


def metrics_dict(metrics: torch.Tensor) -> Dict[str, float]:
    """The metrics tensor of `preference_loss` as {TRL name: float} (one device-to-host copy)."""
    vals = metrics.detach().tolist()
    return {n: vals[i] for i, n in enumerate(METRIC_NAMES)}


def _segments(n_tokens, n_seqs, seq_len, cu_seqlens, device):
    """Each token's sequence index and the [S + 1] offsets (padded or packed layout)."""
    if cu_seqlens is None:
        cu = torch.arange(n_seqs + 1, device=device, dtype=torch.int64) * seq_len
    else:
        cu = cu_seqlens.to(torch.int64)
    seg = torch.repeat_interleave(torch.arange(n_seqs, device=device), cu[1:] - cu[:-1])
    if seg.shape[0] != n_tokens:
        raise ValueError(f"pref_kernels: the layout covers {seg.shape[0]} tokens, logp has {n_tokens}")
    return seg, cu


def ld_weights(mask, ld_alpha: float, *, n_seqs: Optional[int] = None, seq_len: int = 0, cu_seqlens=None):
    """LD-DPO's per-token weights (TRL `ld_alpha`) for a first-half-chosen batch: the first
    min(N_chosen, N_rejected) completion tokens of both sides weigh 1, the longer side's rest
    `ld_alpha`, masked tokens 0 (the crate's `preference_loss::ld_weights`). Use them with
    aggregation "weighted_sum"; `dpo_loss(ld_alpha=...)` does."""
    if not math.isfinite(ld_alpha):
        raise ValueError(f"pref_kernels: ld_alpha must be finite, got {ld_alpha}")
    if cu_seqlens is not None:
        n_seqs = cu_seqlens.shape[0] - 1
    if n_seqs is None or n_seqs % 2 != 0:
        raise ValueError("pref_kernels: ld_weights needs an even number of sequences, first half chosen")
    m = mask.reshape(-1).to(torch.float32)
    seg, cu = _segments(m.shape[0], n_seqs, seq_len, cu_seqlens, m.device)
    cum = m.cumsum(0)
    before = torch.cat([cum.new_zeros(1), cum])[cu[:-1]]  # mask sum before each sequence
    pos = cum - before[seg]  # 1-based completion position where m = 1
    lens = torch.zeros(n_seqs, device=m.device).index_add_(0, seg, m)
    half = n_seqs // 2
    shared = torch.minimum(lens[:half], lens[half:]).repeat(2)
    w = torch.where(pos <= shared[seg], torch.ones_like(m), torch.full_like(m, float(ld_alpha)))
    return (w * m).reshape(mask.shape)


def wpo_weights(logp, log_sum_sq, mask, *, n_seqs: Optional[int] = None, seq_len: int = 0, cu_seqlens=None):
    """WPO's detached sequence weights (TRL `use_weighting`): exp of each sequence's mean over the
    mask of logp - log sum_v p_v^2, from `log_sum_sq` [T] (`token_logprobs(...,
    return_log_sum_sq=True)`)."""
    scores = seq_reduce((logp.detach() - log_sum_sq.detach()).float().contiguous(), mask, n_seqs=n_seqs,
                             seq_len=seq_len, cu_seqlens=cu_seqlens, mode="mean")
    return torch.exp(scores)


def dpo_loss(logp: torch.Tensor, mask, ref_logp=None, *, n_seqs: Optional[int] = None, seq_len: int = 0,
             cu_seqlens=None, ref_seq=None, loss_type: Union[str, Sequence[str]] = "sigmoid", beta: float = 0.1,
             label_smoothing: float = 0.0, loss_weights=None, discopop_tau: float = 0.05,
             f_divergence_type: str = "reverse_kl", f_alpha_divergence_coef: float = 0.5,
             ld_alpha: Optional[float] = None, use_weighting: bool = False, log_sum_sq=None,
             return_pairs: bool = False):
    """TRL 1.16's DPO loss (`DPOConfig` names and defaults) on per-token log-probs: sequence
    scores are masked sums, pairs first-half chosen. `ld_alpha` (LD-DPO) weighs each pair's tokens
    past the shorter side's length by it (the policy's and a per-token `ref_logp`'s; a `ref_seq`
    must hold reference sums weighted the same way, as TRL's `compute_ref_log_probs` returns them
    with `ld_alpha` set); `use_weighting` (WPO) needs
    `log_sum_sq` [T], the per-token log sum_v p_v^2 of the policy (`token_logprobs(...,
    return_log_sum_sq=True)`). See `preference_loss` for the layouts and outputs."""
    terms = loss_terms(loss_type, beta, label_smoothing, loss_weights, discopop_tau)
    weights, aggregation = None, "sum"
    if ld_alpha is not None:
        weights = ld_weights(mask, float(ld_alpha), n_seqs=n_seqs, seq_len=seq_len, cu_seqlens=cu_seqlens)
        weights = weights.reshape(-1).contiguous()
        aggregation = "weighted_sum"
    seq_weights = None
    if use_weighting:
        if log_sum_sq is None:
            raise ValueError("pref_kernels: use_weighting (WPO) needs log_sum_sq, the per-token log sum p^2")
        seq_weights = wpo_weights(logp, log_sum_sq, mask, n_seqs=n_seqs, seq_len=seq_len, cu_seqlens=cu_seqlens)
    return preference_loss(logp, terms, mask=mask, weights=weights, ref_logp=ref_logp, ref_seq=ref_seq, n_seqs=n_seqs,
                           seq_len=seq_len, cu_seqlens=cu_seqlens, f_divergence_type=f_divergence_type,
                           f_alpha_divergence_coef=f_alpha_divergence_coef, aggregation=aggregation,
                           return_pairs=return_pairs, seq_weights=seq_weights)


def shared_prefix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout, scale: Optional[float] = None,
                            return_lse: bool = False):
    """Causal attention where the G responses of each group share one prompt, packed token-major:
    q [T, Hq, d], k / v [T, Hkv, d] (bf16/f16, contiguous, GQA when Hkv < Hq) laid out
    [prefix | r_1 | ... | r_G] per group; `layout` from `prefix_layout(groups, device)`. Returns
    O [T, Hq, d], differentiable in q, k, v; with `return_lse` also the softmax log-sum-exp of
    every query row, f32 [Hq, T] (as FlashAttention returns it; not differentiable)."""
    tiles, seg_lo2, n_tokens, n_tiles = layout
    if q.shape[0] != n_tokens:
        raise ValueError(f"pref_kernels: the layout has {n_tokens} tokens but q has {q.shape[0]}")
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    o, lse = torch.ops.pref_kernels.shared_prefix_attention(q, k, v, tiles, seg_lo2, n_tiles, float(scale))
    return (o, lse) if return_lse else o


def linear_workspace_bytes(hidden_size: int, vocab_size: int, dtype: torch.dtype = torch.bfloat16,
                           rows: int = 1) -> int:
    """The smallest `workspace_bytes` the fused LM head ops accept for chunks of `rows` rows at
    this hidden size, vocabulary and compute dtype: `rows=1` for `linear_token_logprobs`; for
    `linear_preference_loss` / `linear_dpo_loss`, whose chunks hold whole pairs, the largest
    chosen + rejected token count of a pair. More workspace means fewer, larger chunks (each a GEMM);
    the default `DEFAULT_WORKSPACE_BYTES` holds tens of thousands of rows at common sizes."""
    from ._lib import DTYPE_CODES, lib
    if dtype not in DTYPE_CODES:
        raise ValueError(f"pref_kernels: dtype must be one of {list(DTYPE_CODES)}, got {dtype}")
    args = (DTYPE_CODES[dtype], int(hidden_size), int(vocab_size), int(rows))
    # The host-planned loop (preference step, shards) and the stream-ordered one (token log-probs)
    # lay their chunks out differently: the larger of the two minimums serves both.
    planned, ordered = lib().prefk_linear_workspace_bytes(*args), lib().prefk_linear_ordered_workspace_bytes(*args)
    n = -1 if min(planned, ordered) < 0 else max(planned, ordered)
    if n < 0:
        raise ValueError(f"pref_kernels: no workspace size for hidden_size={hidden_size}, vocab_size={vocab_size}, "
                         f"rows={rows} (sizes must be >= 1 and the product must fit in 64 bits)")
    return n


def _flat_head(hidden, weight, targets, bias):
    return hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1), (None if bias is None else bias.float())


# What an ignored row holds in each output of pref_kernels::linear_token_logprobs.
_HEAD_FILLS = (0.0, 0.0, 0.0, 0.0, 0.0, False, 0.0, -1)


def _head(x, weight, b, t, ignore_index, temperature, workspace_bytes, skip_ignored_rows, entropy=False,
          log_sum_sq=False, mean_logits=False, is_top1=False, top_k=0):
    """pref_kernels::linear_token_logprobs over every row (stream-ordered: no host synchronization,
    capturable in a CUDA graph), or with `skip_ignored_rows` over the labelled rows only, selected
    here (one host synchronization to count them) and put back in place, differentiably."""
    args = (ignore_index, float(temperature), bool(entropy), int(workspace_bytes), bool(log_sum_sq),
            bool(mean_logits), bool(is_top1), int(top_k))
    if not skip_ignored_rows:
        return torch.ops.pref_kernels.linear_token_logprobs(x, weight, b, t, *args)
    keep = (t != ignore_index).nonzero().squeeze(1)
    outs = torch.ops.pref_kernels.linear_token_logprobs(x.index_select(0, keep), weight, b, t.index_select(0, keep),
                                                        *args)
    wanted = (True, True, entropy, log_sum_sq, mean_logits, is_top1, True, True)
    n = t.shape[0]
    return tuple(o.new_full((n, *o.shape[1:]), fill).index_copy(0, keep, o) if want else o
                 for o, fill, want in zip(outs, _HEAD_FILLS, wanted))


def linear_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias=None,
                          ignore_index: int = -100, temperature: float = 1.0, return_entropy: bool = False,
                          workspace_bytes: int = DEFAULT_WORKSPACE_BYTES, skip_ignored_rows: bool = False):
    """log p(target) of `hidden @ weight.T (+ bias)` (the LM head as `nn.Linear` stores it:
    weight [V, H]) per token, f32, without an [N, V] logits tensor: chunks of rows within
    `workspace_bytes` (rows whose target is `ignore_index` give 0). `hidden` is [..., H] (flattened
    to [N, H]), `targets` the matching [...]. With `return_entropy`, also the entropy.
    Differentiable in hidden, weight and bias: the backward recomputes each chunk's logits (GEMM)
    and returns d_hidden, d_weight (accumulated in f32) and d_bias. For a preference loss use
    `linear_dpo_loss` / `linear_preference_loss` instead: they need no recompute.

    Every row goes through the GEMMs and nothing synchronizes with the host (the workspace comes
    from PyTorch's allocator), so the call can be captured in a CUDA graph. With many ignored rows
    (prompt tokens, padding) `skip_ignored_rows=True` projects only the labelled ones, at the cost
    of one synchronization to count them."""
    x, t, b = _flat_head(hidden, weight, targets, bias)
    logp, _lse, entropy, *_ = _head(x, weight, b, t, ignore_index, temperature, workspace_bytes, skip_ignored_rows,
                                    entropy=return_entropy)
    shape = targets.shape
    return (logp.view(shape), entropy.view(shape)) if return_entropy else logp.view(shape)


def linear_token_stats(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias=None, *,
                       entropy: bool = False, log_sum_sq: bool = False, mean_logits: bool = False,
                       is_top1: bool = False, top_k: int = 0, ignore_index: int = -100, temperature: float = 1.0,
                       workspace_bytes: int = DEFAULT_WORKSPACE_BYTES, skip_ignored_rows: bool = False) -> TokenStats:
    """`linear_token_logprobs` with every per-token field TRL's fused head can ask for, from the
    same chunked pass (no [N, V] logits): log p (differentiable), the entropy (differentiable),
    log sum p^2, the mean logit / T, `is_top1` (bool) and the `top_k` (1..64) largest log-probs
    [..., k] with their ids (computed from each chunk's logits while they are in the workspace).
    Fields not asked for are None. `skip_ignored_rows` as in `linear_token_logprobs`."""
    x, t, b = _flat_head(hidden, weight, targets, bias)
    logp, _lse, ent, lss, mean, top1, tk_logp, tk_ids = _head(
        x, weight, b, t, ignore_index, temperature, workspace_bytes, skip_ignored_rows,
        entropy=bool(entropy or log_sum_sq), log_sum_sq=log_sum_sq, mean_logits=mean_logits, is_top1=is_top1,
        top_k=top_k)
    shape = targets.shape
    kshape = (*shape, int(top_k))
    return TokenStats(logp.view(shape), ent.view(shape) if entropy else None,
                      lss.view(shape) if log_sum_sq else None, mean.view(shape) if mean_logits else None,
                      top1.view(shape) if is_top1 else None, tk_logp.view(kshape) if top_k else None,
                      tk_ids.view(kshape) if top_k else None)


def linear_preference_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, terms, *, bias=None,
                           weights=None, ref_logp=None, ref_seq=None, n_seqs: Optional[int] = None, seq_len: int = 0,
                           cu_seqlens=None, chosen=None, rejected=None, f_divergence_type: str = "reverse_kl",
                           f_alpha_divergence_coef: float = 0.5, aggregation: str = "sum", ignore_index: int = -100,
                           temperature: float = 1.0, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
                           return_logp: bool = False):
    """The whole preference step from hidden states: the loss (differentiable in hidden, weight and
    bias; its gradients are computed in this call, three GEMMs per used token, chunked by whole
    groups of pairs within `workspace_bytes`) and the metrics tensor [16]; with `return_logp` also
    the per-token log-probs [N]. The token mask is `targets != ignore_index`; layouts and pairs as
    `preference_loss` (`cu_seqlens`, `chosen`, `rejected` are read on the host)."""
    x, t, b = _flat_head(hidden, weight, targets, bias)
    if cu_seqlens is None and n_seqs is None:
        raise ValueError("pref_kernels: give n_seqs (and seq_len) for a padded batch, or cu_seqlens")
    loss, metrics, _pairs, logp, *_grads = torch.ops.pref_kernels.linear_preference_step(
        x, weight, b, t, weights, ref_logp, ref_seq, cu_seqlens, int(n_seqs or 0), int(seq_len), chosen, rejected,
        *_loss_args(terms, f_divergence_type, f_alpha_divergence_coef, aggregation), ignore_index,
        float(temperature), int(workspace_bytes))
    return (loss, metrics, logp) if return_logp else (loss, metrics)


def linear_dpo_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ref_logp=None, *, bias=None,
                    ref_seq=None, n_seqs: Optional[int] = None, seq_len: int = 0, cu_seqlens=None,
                    loss_type: Union[str, Sequence[str]] = "sigmoid", beta: float = 0.1, label_smoothing: float = 0.0,
                    loss_weights=None, discopop_tau: float = 0.05, f_divergence_type: str = "reverse_kl",
                    f_alpha_divergence_coef: float = 0.5, ignore_index: int = -100,
                    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES, return_logp: bool = False):
    """TRL's DPO loss (names and defaults as `dpo_loss`) straight from the last hidden states and
    the LM-head weight: no [N, V] logits tensor, gradients in the same call."""
    terms = loss_terms(loss_type, beta, label_smoothing, loss_weights, discopop_tau)
    return linear_preference_loss(hidden, weight, targets, terms, bias=bias, ref_logp=ref_logp, ref_seq=ref_seq,
                                  n_seqs=n_seqs, seq_len=seq_len, cu_seqlens=cu_seqlens,
                                  f_divergence_type=f_divergence_type, f_alpha_divergence_coef=f_alpha_divergence_coef,
                                  ignore_index=ignore_index, workspace_bytes=workspace_bytes, return_logp=return_logp)


#: The crate's GRPO metric order (grpo::GRPO_METRIC_NAMES), as TRL logs them.
GRPO_METRIC_NAMES = ["loss", "kl", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean",
                     "policy_loss", "vespo/phi_seq_mean"]
#: TRL `GRPOConfig.loss_type` names served.
GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
_GRPO_NORMALIZED = ("dapo", "cispo", "vespo")


def _per_token(x, name, shape):
    """A [B, T] per-token tensor of TRL's layout, flattened to the kernels' [B * T]."""
    if x is None:
        return None
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"pref_kernels: {name} must have logp's shape {list(shape)}, got {list(x.shape)}")
    return x.reshape(-1)


def grpo_loss(logp: torch.Tensor, advantages: torch.Tensor, mask=None, old_logp=None, ref_logp=None, *,
              n_seqs: Optional[int] = None, seq_len: int = 0, cu_seqlens=None, loss_type: str = "dapo",
              beta: float = 0.0, epsilon: float = 0.2, epsilon_high: Optional[float] = None,
              delta: Optional[float] = None, importance_sampling_level: str = "token",
              max_completion_length: int = 512, num_items_in_batch: Optional[float] = None,
              num_processes: int = 1, gradient_accumulation_steps: int = 1,
              steps_per_generation: Optional[int] = None, entropy=None, entropy_coef: float = 0.0,
              top_entropy_quantile: float = 1.0, vllm_is_weights=None, sampling_logp=None,
              off_policy_mask_threshold: Optional[float] = None, use_bias_correction_kl: bool = True,
              sapo_temperature_pos: float = 1.0, sapo_temperature_neg: float = 1.05, vespo_k_pos: float = 2.0,
              vespo_lambda_pos: float = 3.0, vespo_k_neg: float = 3.0, vespo_lambda_neg: float = 2.0):
    """TRL 1.16's GRPO-family loss (`GRPOConfig` names and defaults, `GRPOTrainer._compute_loss`)
    on per-token log-probs: returns `(loss, metrics)`, metrics [8] in GRPO_METRIC_NAMES order.

    Layouts: TRL's padded `[B, T]` tensors (logp, mask, old_logp, ref_logp, entropy,
    vllm_is_weights, sampling_logp all `[B, T]`, advantages `[B]` or `[B, 1]`), or flat `[T]`
    per-token tensors with `n_seqs` x `seq_len` (padded) or `cu_seqlens` (packed).

    `advantages` per sequence (group-normalized by the caller, as TRL does); `old_logp` None means
    on-policy, `ref_logp` is needed when beta > 0; `entropy` (with `entropy_coef`, or for
    `top_entropy_quantile` < 1) makes the loss differentiable in it too. `sampling_logp` is TRL's
    `sampling_per_token_logps` for the off-policy mask (default `old_logp`).

    Normalization as TRL's in training: `gradient_accumulation_steps` is TRL's
    `current_gradient_accumulation_steps` G (pass 1 in evaluation); grpo/bnpo/dr_grpo/sapo/luspo
    and the entropy bonus are divided by it. dapo/cispo/vespo divide by TRL's normalizer
    `max(num_items_in_batch, 1) / num_processes * G / steps_per_generation`, with
    `num_items_in_batch` the global completion-token count of the generation batch as TRL's
    trainer passes it and `steps_per_generation` defaulting to G as in `GRPOConfig`. Without
    `num_items_in_batch` they divide by the local count, which is TRL's normalizer only for one
    process without accumulation; anything else without it is refused rather than guessed."""
    if logp.dim() == 2:
        if cu_seqlens is not None:
            raise ValueError("pref_kernels: a [B, T] logp is a padded batch; cu_seqlens is for flat [T] inputs")
        shape = tuple(logp.shape)
        n_seqs, seq_len = shape
        logp = logp.reshape(-1)
        mask, old_logp, ref_logp, entropy, vllm_is_weights, sampling_logp = (
            _per_token(x, name, shape) for x, name in (
                (_bool_mask(mask), "mask"), (old_logp, "old_logp"), (ref_logp, "ref_logp"), (entropy, "entropy"),
                (vllm_is_weights, "vllm_is_weights"), (sampling_logp, "sampling_logp")))
        advantages = _seq_vector(advantages)
    if cu_seqlens is not None:
        n_seqs = cu_seqlens.shape[0] - 1
    if n_seqs is None:
        n_seqs = advantages.shape[0]
    c = _grpo_config(loss_type, beta, epsilon, epsilon_high, delta, importance_sampling_level, max_completion_length,
                     num_items_in_batch, num_processes, gradient_accumulation_steps, steps_per_generation,
                     entropy_coef, top_entropy_quantile, off_policy_mask_threshold, use_bias_correction_kl,
                     sapo_temperature_pos, sapo_temperature_neg, vespo_k_pos, vespo_lambda_pos, vespo_k_neg,
                     vespo_lambda_neg)
    loss, metrics, _g, _ge = torch.ops.pref_kernels.grpo_loss(
        logp, old_logp, ref_logp, mask, vllm_is_weights, entropy, advantages, cu_seqlens, int(n_seqs), int(seq_len),
        *c[:12], sampling_logp, *c[12:])
    return loss, metrics


def _bool_mask(mask):
    """TRL's completion_mask is an integer tensor; the kernels read bool / uint8."""
    return mask if mask is None or mask.dtype in (torch.bool, torch.uint8) else mask != 0


def _seq_vector(advantages):
    return advantages.reshape(-1) if advantages.dim() == 2 and advantages.shape[1] == 1 else advantages


def _grpo_config(loss_type, beta, epsilon, epsilon_high, delta, importance_sampling_level, max_completion_length,
                 num_items_in_batch, num_processes, gradient_accumulation_steps, steps_per_generation, entropy_coef,
                 top_entropy_quantile, off_policy_mask_threshold, use_bias_correction_kl, sapo_temperature_pos,
                 sapo_temperature_neg, vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg):
    """The GRPO ops' configuration arguments, from TRL's names (see `grpo_loss`): loss type ..
    tau_neg (12 values), then accumulation steps .. vespo_lambda_neg (6 values)."""
    if loss_type not in GRPO_LOSS_TYPES:
        raise ValueError(f"pref_kernels: GRPO loss_type must be one of {', '.join(GRPO_LOSS_TYPES)}, got {loss_type!r}")
    if importance_sampling_level not in ("token", "sequence"):
        raise ValueError("pref_kernels: importance_sampling_level must be 'token' or 'sequence'")
    if int(gradient_accumulation_steps) < 1 or int(num_processes) < 1:
        raise ValueError("pref_kernels: gradient_accumulation_steps and num_processes must be >= 1")
    g = int(gradient_accumulation_steps)
    if loss_type == "dr_grpo":
        agg = float(max_completion_length)
    elif loss_type in _GRPO_NORMALIZED and num_items_in_batch is not None:
        spg = g if steps_per_generation is None else int(steps_per_generation)
        agg = max(float(num_items_in_batch), 1.0) / int(num_processes) * g / spg
    elif loss_type in _GRPO_NORMALIZED and (g > 1 or int(num_processes) > 1):
        raise ValueError(f"pref_kernels: {loss_type} with {num_processes} processes and {g} accumulation steps "
                         "divides by TRL's num_items_in_batch (the global completion-token count); pass it")
    else:
        agg = 0.0  # the local completion-token count
    return (GRPO_LOSS_TYPES.index(loss_type), 0 if importance_sampling_level == "token" else 1, float(epsilon),
            float(epsilon if epsilon_high is None else epsilon_high), float(delta or 0.0), float(beta),
            bool(use_bias_correction_kl), float(entropy_coef), float(top_entropy_quantile), agg,
            float(sapo_temperature_pos), float(sapo_temperature_neg), g,
            float("nan") if off_policy_mask_threshold is None else float(off_policy_mask_threshold),
            float(vespo_k_pos), float(vespo_lambda_pos), float(vespo_k_neg), float(vespo_lambda_neg))


def linear_grpo_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, advantages: torch.Tensor,
                     mask=None, old_logp=None, ref_logp=None, *, bias=None, n_seqs: Optional[int] = None,
                     seq_len: int = 0, cu_seqlens=None, loss_type: str = "dapo", beta: float = 0.0,
                     epsilon: float = 0.2, epsilon_high: Optional[float] = None, delta: Optional[float] = None,
                     importance_sampling_level: str = "token", max_completion_length: int = 512,
                     num_items_in_batch: Optional[float] = None, num_processes: int = 1,
                     gradient_accumulation_steps: int = 1, steps_per_generation: Optional[int] = None,
                     entropy_coef: float = 0.0, compute_entropy: bool = False, vllm_is_weights=None,
                     sampling_logp=None, off_policy_mask_threshold: Optional[float] = None,
                     use_bias_correction_kl: bool = True, sapo_temperature_pos: float = 1.0,
                     sapo_temperature_neg: float = 1.05, vespo_k_pos: float = 2.0, vespo_lambda_pos: float = 3.0,
                     vespo_k_neg: float = 3.0, vespo_lambda_neg: float = 2.0, ignore_index: int = -100,
                     temperature: float = 1.0, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES):
    """TRL 1.16's GRPO-family loss (names, defaults and normalization as `grpo_loss`) straight from
    the completion positions' hidden states `[..., H]` and the LM-head weight `[V, H]`: no [N, V]
    logits tensor, and the gradients (of hidden, weight, bias) computed in this call, three GEMMs
    per counted token where the fused head's forward and backward around `grpo_loss` take four.
    A token counts when its `mask` is set (every token without one) and its target is not
    `ignore_index`. Layouts: `hidden` [B, T, H] with targets / mask / per-token inputs [B, T]
    (padded), or [N, H] with [N] inputs and `n_seqs` x `seq_len` or `cu_seqlens` (read on the host).
    Returns `(loss, metrics, logp, entropy)`: metrics [8] in GRPO_METRIC_NAMES order, log-probs and
    (with `compute_entropy`, needed by `entropy_coef`) entropies shaped as `targets`, detached.
    Not served here (refused, use `grpo_loss` on the fused head's log-probs): the top-entropy mask,
    VESPO with `vllm_is_weights`. The gradients are computed in this call, before any upstream
    factor: `d_hidden` is rounded to `hidden`'s dtype unscaled, so with fp16 and a loss scaler
    (whose factor arrives in backward) prefer bf16 / f32 or the four-GEMM path (the TRL drop-in
    does), and under `no_grad` the gradient GEMMs are wasted work."""
    if targets.dim() == 2:
        if cu_seqlens is not None:
            raise ValueError("pref_kernels: [B, T] targets are a padded batch; cu_seqlens is for flat [N] inputs")
        shape = tuple(targets.shape)
        n_seqs, seq_len = shape
        mask, old_logp, ref_logp, vllm_is_weights, sampling_logp = (
            _per_token(x, name, shape) for x, name in (
                (_bool_mask(mask), "mask"), (old_logp, "old_logp"), (ref_logp, "ref_logp"),
                (vllm_is_weights, "vllm_is_weights"), (sampling_logp, "sampling_logp")))
        advantages = _seq_vector(advantages)
    else:
        shape = tuple(targets.shape)
        mask = _bool_mask(mask)
    x, t, b = _flat_head(hidden, weight, targets, bias)
    if cu_seqlens is not None:
        n_seqs = cu_seqlens.shape[0] - 1
    if n_seqs is None:
        raise ValueError("pref_kernels: give n_seqs (and seq_len) for a padded batch, or cu_seqlens")
    c = _grpo_config(loss_type, beta, epsilon, epsilon_high, delta, importance_sampling_level, max_completion_length,
                     num_items_in_batch, num_processes, gradient_accumulation_steps, steps_per_generation,
                     entropy_coef, 1.0, off_policy_mask_threshold, use_bias_correction_kl, sapo_temperature_pos,
                     sapo_temperature_neg, vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg)
    loss, metrics, logp, entropy, *_grads = torch.ops.pref_kernels.linear_grpo_step(
        x, weight, b, t, mask, old_logp, sampling_logp, ref_logp, vllm_is_weights, advantages, cu_seqlens,
        int(n_seqs), int(seq_len), *c, bool(compute_entropy), int(ignore_index), float(temperature),
        int(workspace_bytes))
    return loss, metrics, logp.view(shape), entropy.view(shape) if compute_entropy else None


#: KTO roles of `kto_loss`'s labels (the crate's KtoRole).
KTO_UNDESIRABLE, KTO_DESIRABLE, KTO_KL_SAMPLE, KTO_IGNORED = 0, 1, 2, 3
_GROUP_METRICS = {
    0: ["loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
        "count/chosen", "count/rejected"],
    1: ["loss", "num_pairs", "rewards/accuracies"],
    2: ["loss", "loss/ranking", "loss/sft", "ranking/accuracy"],
}


def _group(logp, labels, kind, mask, ref_logp, ref_seq, n_seqs, seq_len, cu_seqlens, beta=0.0, p0=0.0, p1=0.0,
           kl_given=float("nan"), flags=0, list_size=0):
    if cu_seqlens is not None:
        n_seqs = cu_seqlens.shape[0] - 1
    if n_seqs is None:
        n_seqs = labels.shape[0]
    loss, metrics, seq_out, _g = torch.ops.pref_kernels.group_loss(
        logp, mask, ref_logp, ref_seq, labels.float(), cu_seqlens, int(n_seqs), int(seq_len), kind, float(beta),
        float(p0), float(p1), float(kl_given), int(flags), int(list_size))
    return loss, metrics, seq_out


def kto_loss(logp, roles, mask=None, ref_logp=None, *, ref_seq=None, n_seqs=None, seq_len=0, cu_seqlens=None,
             beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0, kl=None,
             loss_type: str = "kto"):
    """TRL's KTO loss (`KTOConfig` names and defaults): `roles` [S] per sequence, one of
    KTO_DESIRABLE / KTO_UNDESIRABLE / KTO_KL_SAMPLE (TRL's mismatched completions, for the detached
    KL baseline) / KTO_IGNORED; or give the baseline as `kl` (e.g. gathered across processes).
    `loss_type="apo_zero_unpaired"` for APO-zero unpaired. Returns (loss, metrics [12], per-sequence
    rewards [S]); metric names in `group_metric_names("kto")`."""
    if loss_type not in ("kto", "apo_zero_unpaired"):
        raise ValueError("pref_kernels: KTO loss_type must be 'kto' or 'apo_zero_unpaired'")
    return _group(logp, roles, 0, mask, ref_logp, ref_seq, n_seqs, seq_len, cu_seqlens, beta, desirable_weight,
                  undesirable_weight, float("nan") if kl is None else float(kl),
                  2 if loss_type == "apo_zero_unpaired" else 0)


def lipo_loss(logp, relevance, list_size: int, mask=None, ref_logp=None, *, ref_seq=None, n_seqs=None, seq_len=0,
              cu_seqlens=None, beta: float = 0.05, lambda_weights: bool = True):
    """LiPO-λ over lists of `list_size` consecutive sequences with relevance labels [S]."""
    return _group(logp, relevance, 1, mask, ref_logp, ref_seq, n_seqs, seq_len, cu_seqlens, beta,
                  flags=4 if lambda_weights else 0, list_size=list_size)


def pro_loss(logp, rewards, list_size: int, mask=None, *, n_seqs=None, seq_len=0, cu_seqlens=None,
             sft_weight: float = 0.05):
    """PRO over groups of `list_size` sequences in ranking order (best first), rewards [S]."""
    return _group(logp, rewards, 2, mask, None, None, n_seqs, seq_len, cu_seqlens, p0=sft_weight,
                  list_size=list_size)


def group_metric_names(loss: str):
    """Metric names of kto_loss / lipo_loss / pro_loss, in their metrics tensor's order."""
    return _GROUP_METRICS[{"kto": 0, "lipo": 1, "pro": 2}[loss]]


def seq_reduce(logp: torch.Tensor, mask=None, weights=None, *, n_seqs: Optional[int] = None, seq_len: int = 0,
                    cu_seqlens=None, mode: str = "sum"):
    """Per-sequence scores [S] of per-token log-probs `logp` [T] (f32): `mode` "sum", "mean"
    (over the mask), "weighted_sum" or "weighted_mean" (token `weights`), over a padded batch
    (`n_seqs` x `seq_len`) or a packed one (`cu_seqlens` [S + 1] int32, the padding-free layout).
    Differentiable in `logp` (the weights are constants, as TAB-PO and TIS-DPO use them)."""
    if mode not in _AGGREGATION:
        raise ValueError(f"pref_kernels: mode must be one of {', '.join(_AGGREGATION)}")
    if cu_seqlens is not None:
        n_seqs = cu_seqlens.shape[0] - 1
    if n_seqs is None:
        raise ValueError("pref_kernels: give n_seqs (and seq_len) for a padded batch, or cu_seqlens")
    scores, _stats = torch.ops.pref_kernels.seq_reduce(logp, mask, weights, cu_seqlens, int(n_seqs), int(seq_len),
                                                       _AGGREGATION[mode])
    return scores


# ---- vocabulary parallel (tensor-parallel LM head) ------------------------------------------------

def _group_name(group):
    import torch.distributed as dist
    if not dist.is_initialized():
        raise RuntimeError("pref_kernels: the vocabulary-parallel ops need torch.distributed initialized "
                           "(init_process_group) and the tensor-parallel group")
    return (group if group is not None else dist.group.WORLD).group_name


def vocab_shard_range(vocab_size: int, group=None):
    """(vocab_start, shard_size) of this rank when `vocab_size` ids are split over the group's ranks
    as evenly as possible, in rank order (the first V % world ranks get one id more; Megatron pads V
    to a multiple of the world size, and then every shard has V / world ids, as here)."""
    import torch.distributed as dist
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if vocab_size < world:
        raise ValueError(f"pref_kernels: {vocab_size} vocabulary ids cannot give {world} non-empty shards")
    base, extra = divmod(vocab_size, world)
    return rank * base + min(rank, extra), base + (1 if rank < extra else 0)


def vocab_parallel_token_logprobs(logits_shard: torch.Tensor, targets: torch.Tensor, vocab_start: int,
                                  vocab_size: int, group=None, ignore_index: int = -100, temperature: float = 1.0,
                                  return_entropy: bool = False):
    """`token_logprobs` when this rank holds only the vocabulary shard [N, Vs] of the logits (ids
    [vocab_start, vocab_start + Vs) of `vocab_size`; `targets` are ids in the whole vocabulary), as a
    tensor-parallel LM head gives them. One all-gather over `group` (default: the world) of 5 floats
    per token and rank; the result is bitwise the same on every rank, so the loss on it runs on every
    rank; the backward writes this rank's columns only, with no collective. The ranks' shards must
    tile the vocabulary (checked at every target)."""
    logp, _lse, entropy, _stats = torch.ops.pref_kernels.vocab_parallel_token_logprobs(
        logits_shard, targets, int(vocab_start), int(vocab_size), _group_name(group), ignore_index,
        float(temperature), return_entropy)
    return (logp, entropy) if return_entropy else logp


def vocab_parallel_linear_token_logprobs(hidden: torch.Tensor, weight_shard: torch.Tensor, targets: torch.Tensor,
                                         vocab_start: int, vocab_size: int, group=None, bias_shard=None,
                                         ignore_index: int = -100, temperature: float = 1.0,
                                         return_entropy: bool = False,
                                         workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
                                         reduce_grad_hidden: bool = True):
    """`linear_token_logprobs` with a vocabulary-parallel LM head: this rank holds the weight rows
    [vocab_start, vocab_start + Vs) (`weight_shard` [Vs, H], `bias_shard` [Vs]) and the (replicated)
    hidden states; no rank ever holds logits. One all-gather of 5 floats per token and rank in the
    forward. The backward gives this rank's weight (and bias) shard gradient and, with
    `reduce_grad_hidden` (default), d_hidden summed over the group (one all-reduce of [N, H], in
    f32); pass False when the trainer's own tensor-parallel region (Megatron's
    `copy_to_tensor_model_parallel_region`) already all-reduces it."""
    x, t, b = _flat_head(hidden, weight_shard, targets, bias_shard)
    logp, _lse, entropy, _stats = torch.ops.pref_kernels.vocab_parallel_linear_token_logprobs(
        x, weight_shard, b, t, int(vocab_start), int(vocab_size), _group_name(group), ignore_index,
        float(temperature), return_entropy, int(workspace_bytes), bool(reduce_grad_hidden))
    shape = targets.shape
    return (logp.view(shape), entropy.view(shape)) if return_entropy else logp.view(shape)
