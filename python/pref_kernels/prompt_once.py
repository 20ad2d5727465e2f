"""Shared prompts in the model forward: a GRPO group (one prompt, G completions) laid out prompt-once.

The packed row holds, per group, the prompt's tokens once and then each completion:
`[prompt | c_1 | ... | c_G]`, several groups one after the other (packing: any prompt and completion
lengths, no padding). The prompt's tokens go through every layer (attention, MLP, norms) once per
group; completions attend to their prompt and to themselves through pref-kernels' shared-prefix
attention kernel, registered as a transformers attention backend (`ATTN_IMPLEMENTATION`, with a mask
function that builds no mask: the kernel's mask is the layout). Position ids continue from the
prompt: prompt token k is at k, completion token k at P + k — the positions generation used
(TRL's training forward, which left-pads prompts without position ids, shifts them by the padding).

Per-token log-probs then come from pref-kernels' fused LM head at the completion positions only: the
hidden state of a group's last prompt token predicts every completion's first token, and no
`[N, V]` logits tensor exists.

    batch = prompt_once_batch(prompt_ids, prompt_mask, completion_ids, completion_mask)
    logps, entropy = prompt_once_logprobs(model, batch, temperature=1.0)   # [B, C] each
"""
import contextlib
import sys
import threading
from typing import List, NamedTuple, Optional

import torch

from . import linear_token_stats, shared_prefix_attention
from .ops import prefix_layout

#: The `attn_implementation` name this module registers with transformers.
ATTN_IMPLEMENTATION = "pref_kernels_shared_prefix"
_LAYOUT_KWARG = "pref_kernels_layout"


class PromptOnceBatch(NamedTuple):
    """A batch of [prompt | completion] rows laid out prompt-once (see the module docstring)."""
    input_ids: torch.Tensor      # [1, T] the packed tokens
    position_ids: torch.Tensor   # [1, T]
    layout: tuple                # the kernel's tile schedule (`prefix_layout`)
    groups: List[tuple]          # [(prompt_len, [completion lengths])] per group
    head_rows: torch.Tensor      # [N] int64: packed positions whose hidden state is scored, unique
    first_rows: torch.Tensor     # [n_groups] int64: each group's last prompt position
    first_counts: List[int]      # completions per group with at least one token (first-token rows)
    targets: torch.Tensor        # [n_first + N] int64: the scored tokens, first tokens first
    out_index: torch.Tensor      # [n_first + N] int64: where each lands in the flat [B * C] output
    shape: tuple                 # (B, C)


def _prompt_tokens(ids, mask):
    return ids[mask.bool()].tolist()


def prompt_once_batch(prompt_ids, prompt_mask, completion_ids, completion_mask, group_rows: bool = True):
    """Packs TRL-style rows (left-padded prompts `prompt_ids`/`prompt_mask` [B, P], right-padded
    completions `completion_ids`/`completion_mask` [B, C]) prompt-once: consecutive rows with the same
    prompt form a group (TRL repeats each prompt `num_generations` times in a row); `group_rows=False`
    makes every row its own group (the duplicated layout, for comparisons). A completion's tokens are
    those its mask marks, which must be a prefix of the row."""
    b, c = completion_ids.shape
    dev = completion_ids.device
    cmask = completion_mask.bool()
    lengths = cmask.sum(-1)
    if not torch.equal(cmask, torch.arange(c, device=dev)[None, :] < lengths[:, None]):
        raise ValueError("pref_kernels: a completion mask must mark a prefix of its row (right padding)")
    prompts = [_prompt_tokens(prompt_ids[i], prompt_mask[i]) for i in range(b)]
    lengths = lengths.tolist()
    comp_rows = completion_ids.tolist()
    rows_of_group: List[List[int]] = []
    for i in range(b):
        if group_rows and rows_of_group and prompts[rows_of_group[-1][0]] == prompts[i]:
            rows_of_group[-1].append(i)
        else:
            rows_of_group.append([i])
    tokens, positions, groups = [], [], []
    head_rows, head_targets, head_out = [], [], []
    first_rows, first_counts, first_targets, first_out = [], [], [], []
    for rows in rows_of_group:
        p = prompts[rows[0]]
        start = len(tokens)
        tokens += p
        positions += range(len(p))
        groups.append((len(p), [lengths[i] for i in rows]))
        n_first = 0
        for i in rows:
            at = len(tokens)
            ln = lengths[i]
            toks = comp_rows[i][:ln]
            tokens += toks
            positions += range(len(p), len(p) + ln)
            if ln == 0:
                continue
            if p:
                # The last prompt token predicts the completion's first token.
                first_targets.append(toks[0])
                first_out.append(i * c)
                n_first += 1
            # Completion token j (j >= 1) is predicted at packed position at + j - 1.
            head_rows += range(at, at + ln - 1)
            head_targets += toks[1:]
            head_out += [i * c + j for j in range(1, ln)]
        if n_first:
            first_rows.append(start + len(p) - 1)
            first_counts.append(n_first)
    as_long = lambda x: torch.tensor(x, dtype=torch.int64, device=dev)  # noqa: E731
    return PromptOnceBatch(
        input_ids=as_long(tokens)[None], position_ids=as_long(positions)[None], layout=prefix_layout(groups, dev),
        groups=groups, head_rows=as_long(head_rows), first_rows=as_long(first_rows), first_counts=first_counts,
        targets=as_long(first_targets + head_targets), out_index=as_long(first_out + head_out), shape=(b, c))


# ---- the transformers attention backend --------------------------------------------------------------
# A model switched to the backend keeps working for every other forward (generation, evaluation): the
# attention function runs the kernel only when the prompt-once layout comes in its keywords, and
# otherwise the implementation the model had (kept as `config._pref_kernels_fallback`); the mask
# function builds no mask inside a prompt-once forward and the fallback's mask outside one. The
# switch is permanent rather than scoped to the call, because gradient checkpointing re-runs the
# layers during the backward, after any scope has closed (with the same keywords, so the layout).

_active = threading.local()


def _fallback_attention(module, name):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    if name in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[name]
    # "eager": the modeling module's own function.
    return sys.modules[type(module).__module__].eager_attention_forward


def shared_prefix_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """A transformers attention function (`AttentionInterface`). With the prompt-once layout in the
    `pref_kernels_layout` keyword (query [1, Hq, T, d], key / value [1, Hkv, T, d] of the packed
    row): the shared-prefix kernel, q, k, v in bf16 unless they are f16 (the kernel's dtypes), the
    output cast back; returns ([1, T, Hq, d], None). Without it: the model's previous implementation."""
    layout = kwargs.pop(_LAYOUT_KWARG, None)
    if layout is None:
        fallback = getattr(module.config, "_pref_kernels_fallback", None)
        if fallback is None:
            raise RuntimeError(f"pref_kernels: attn_implementation={ATTN_IMPLEMENTATION!r} needs the prompt-once "
                               f"layout: call the model through prompt_once_hidden / prompt_once_logprobs")
        return _fallback_attention(module, fallback)(module, query, key, value, attention_mask, scaling=scaling,
                                                     dropout=dropout, **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"pref_kernels: a prompt-once batch is one packed row, got batch {query.shape[0]}")
    if dropout:
        raise NotImplementedError("pref_kernels: attention dropout is not served by the shared-prefix kernel")
    dtype = query.dtype if query.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16

    def tokens_major(x):
        return x[0].transpose(0, 1).to(dtype).contiguous()
    o = shared_prefix_attention(tokens_major(query), tokens_major(key), tokens_major(value), layout,
                                scale=scaling)
    return o.to(query.dtype)[None], None


def _mask(*args, **kwargs):
    """The backend's mask function: none inside a prompt-once forward (the kernel's mask is the
    layout), the fallback implementation's mask otherwise."""
    if getattr(_active, "depth", 0):
        return None
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    fallback = getattr(_active, "fallback", None) or "sdpa"
    return ALL_MASK_ATTENTION_FUNCTIONS[fallback](*args, **kwargs)


def register_attention():
    """Registers the backend with transformers (idempotent): `AttentionInterface` and
    `AttentionMaskInterface` under `ATTN_IMPLEMENTATION`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
    AttentionInterface.register(ATTN_IMPLEMENTATION, shared_prefix_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _mask)


def enable_prompt_once(model):
    """Switches `model` (and its sub-configs) to the backend, keeping its implementation as the
    fallback for ordinary forwards; idempotent. Returns the model."""
    register_attention()
    for m in model.modules():
        c = getattr(m, "config", None)
        if c is not None and c._attn_implementation != ATTN_IMPLEMENTATION:
            c._pref_kernels_fallback = c._attn_implementation or "sdpa"
            c._attn_implementation = ATTN_IMPLEMENTATION
    _active.fallback = getattr(model.config, "_pref_kernels_fallback", None)
    return model


@contextlib.contextmanager
def _prompt_once_scope():
    _active.depth = getattr(_active, "depth", 0) + 1
    try:
        yield
    finally:
        _active.depth -= 1


def prompt_once_hidden(model, batch: PromptOnceBatch, **model_kwargs):
    """The decoder's last hidden states [T, H] of a prompt-once batch (the model's transformer body,
    its LM head not applied), through the shared-prefix attention backend (`enable_prompt_once`)."""
    enable_prompt_once(model)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    with _prompt_once_scope():
        out = decoder(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
                      **{_LAYOUT_KWARG: batch.layout}, **model_kwargs)
    return out.last_hidden_state[0]


def prompt_once_logprobs(model, batch: PromptOnceBatch, temperature: float = 1.0, compute_entropy: bool = True,
                         workspace_bytes: Optional[int] = None):
    """Per-token log-probs (and entropies) [B, C] f32 of every completion token of `batch` (0 at
    padding), from the prompt-once forward and pref-kernels' fused LM head: differentiable in the
    model's parameters. The gather of the scored hidden rows uses unique indices and broadcasts the
    shared last-prompt row (its gradient is a sum over the group's completions), so the backward is
    deterministic."""
    hidden = prompt_once_hidden(model, batch)
    head = model.get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    pieces = [hidden[r].expand(n, -1) for r, n in zip(batch.first_rows.tolist(), batch.first_counts)]
    pieces.append(hidden.index_select(0, batch.head_rows))
    rows = torch.cat(pieces).to(weight.dtype)
    kwargs = {} if workspace_bytes is None else {"workspace_bytes": workspace_bytes}
    s = linear_token_stats(rows.contiguous(), weight, batch.targets, bias=bias, entropy=compute_entropy,
                           temperature=float(temperature), **kwargs)
    b, c = batch.shape

    def place(x):
        flat = torch.zeros(b * c, dtype=x.dtype, device=x.device)
        return flat.index_put((batch.out_index,), x).view(b, c)
    return place(s.logp), (place(s.entropy) if compute_entropy else None)
