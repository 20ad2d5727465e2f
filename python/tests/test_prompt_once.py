"""Shared prompts in the model forward (`pref_kernels.prompt_once`), on CPU tensors through the emulated
kernels, with tiny random Llama and Qwen2 models (head dim 64, GQA): packed batches of several groups
(different prompt lengths, left-padded; different completion lengths, right-padded, one empty).

- The prompt-once log-probs equal an unpadded per-row forward of the model with its own (SDPA, f32)
  attention, within the kernel's bf16 attention error (q, k, v are rounded to bf16: measured
  ~1e-3 on these log-probs; the band is 5e-3).
- Prompt-once and the duplicated layout (every row its own group, the prompt's tokens repeated) give
  the same loss and parameter gradients: the same kernels on the same rows, except that a prompt
  token's K/V gradient is summed over the group in f32 before its one bf16 rounding instead of
  rounded per copy (band: 2e-2 relative to each gradient's scale, 1e-4 on the loss).
- A forward hook on every MLP proves each prompt token goes through it once per group.
- No `[rows, V]` tensor is created on the path (TorchDispatchMode guard).
- GRPOTrainer with `use_pref_kernels(trainer, shared_prompts=True)` trains like TRL's own trainer
  (prompts of equal length, so TRL's positions are the prompt-once ones).
"""
import pytest
import torch

from conftest import import_or_skip  # noqa: E402

transformers = import_or_skip("transformers")
import_or_skip("tokenizers")

from pref_kernels.prompt_once import ATTN_IMPLEMENTATION, enable_prompt_once, prompt_once_batch, \
    prompt_once_hidden, prompt_once_logprobs  # noqa: E402

from tiny_models import LogitsGuard, causal_lm, tokenizer  # noqa: E402

PROMPT_LENS = [5, 3, 4]
GROUPS = [3, 2, 1]
COMPLETION_LENS = [6, 2, 4, 5, 0, 3]


def grpo_rows(vocab, seed=0):
    """TRL-style rows: prompts left-padded to 5, completions right-padded to 6."""
    g = torch.Generator().manual_seed(seed)
    b, p, c = sum(GROUPS), max(PROMPT_LENS), max(COMPLETION_LENS)
    pid, pm = torch.zeros(b, p, dtype=torch.long), torch.zeros(b, p, dtype=torch.long)
    cid, cm = torch.zeros(b, c, dtype=torch.long), torch.zeros(b, c, dtype=torch.long)
    r = 0
    for plen, n in zip(PROMPT_LENS, GROUPS):
        prompt = torch.randint(4, vocab, (plen,), generator=g)
        for _ in range(n):
            pid[r, p - plen:], pm[r, p - plen:] = prompt, 1
            ln = COMPLETION_LENS[r]
            cid[r, :ln], cm[r, :ln] = torch.randint(4, vocab, (ln,), generator=g), 1
            r += 1
    return pid, pm, cid, cm


def per_row_reference(model, pid, pm, cid, cm):
    """Each row unpadded, positions from 0, the model's own attention and head in f64 log-softmax."""
    out = torch.zeros(cid.shape, dtype=torch.float64)
    for i in range(cid.shape[0]):
        prompt, ln = pid[i][pm[i].bool()], int(cm[i].sum())
        seq = torch.cat([prompt, cid[i][:ln]])[None]
        with torch.no_grad():
            lsm = torch.log_softmax(model(input_ids=seq).logits[0].double(), -1)
        for j in range(ln):
            out[i, j] = lsm[len(prompt) + j - 1, seq[0, len(prompt) + j]]
    return out


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_prompt_once_matches_the_models_own_forward(family):
    tok = tokenizer()
    model = causal_lm(tok, family, head_dim=64)
    rows = grpo_rows(len(tok))
    batch = prompt_once_batch(*rows)
    assert [g[0] for g in batch.groups] == PROMPT_LENS and batch.input_ids.shape[1] == sum(PROMPT_LENS) + sum(
        COMPLETION_LENS)
    logps, entropy = prompt_once_logprobs(model, batch)
    want = per_row_reference(model, *rows)
    torch.testing.assert_close(logps.detach().double(), want, atol=5e-3, rtol=0)
    assert torch.all(logps[rows[3] == 0] == 0) and torch.all(entropy[rows[3] == 0] == 0)


def loss_and_grads(model, batch, weights):
    model.zero_grad()
    logps, entropy = prompt_once_logprobs(model, batch, temperature=0.9)
    loss = (logps * weights).sum() + 0.1 * entropy.sum()
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_same_loss_and_gradients_as_the_duplicated_layout(family):
    tok = tokenizer()
    model = causal_lm(tok, family, head_dim=64)
    rows = grpo_rows(len(tok), seed=1)
    weights = torch.randn(rows[2].shape, generator=torch.Generator().manual_seed(2))
    shared = prompt_once_batch(*rows)
    duplicated = prompt_once_batch(*rows, group_rows=False)
    assert duplicated.input_ids.shape[1] > shared.input_ids.shape[1]
    loss_s, grads_s = loss_and_grads(model, shared, weights)
    loss_d, grads_d = loss_and_grads(model, duplicated, weights)
    torch.testing.assert_close(loss_s, loss_d, atol=1e-4, rtol=1e-5)
    for k in grads_d:
        scale = grads_d[k].abs().max().item()
        assert scale > 0, k
        torch.testing.assert_close(grads_s[k], grads_d[k], atol=2e-2 * scale, rtol=0, msg=lambda m: f"{k}: {m}")


def test_each_prompt_token_goes_through_the_mlp_once_per_group():
    tok = tokenizer()
    model = causal_lm(tok, "llama", head_dim=64)
    rows = grpo_rows(len(tok))
    seen = []
    hooks = [layer.mlp.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[:-1]))
             for layer in model.model.layers]
    batch = prompt_once_batch(*rows)
    prompt_once_hidden(model, batch)
    for h in hooks:
        h.remove()
    packed = sum(PROMPT_LENS) + sum(COMPLETION_LENS)
    duplicated = sum(p * n for p, n in zip(PROMPT_LENS, GROUPS)) + sum(COMPLETION_LENS)
    assert seen == [torch.Size([1, packed])] * len(model.model.layers), seen
    assert packed < duplicated
    # The prompt's rows are at the layout's prompt positions, once: position ids restart per group.
    starts = [0]
    for plen, n in zip(PROMPT_LENS, GROUPS):
        starts.append(starts[-1] + plen + sum(COMPLETION_LENS[sum(GROUPS[:len(starts) - 1]):][:n]))
    for start, plen in zip(starts, PROMPT_LENS):
        assert batch.position_ids[0, start:start + plen].tolist() == list(range(plen))


def test_prompt_once_never_creates_logits():
    tok = tokenizer()
    model = causal_lm(tok, "qwen2", head_dim=64)
    batch = prompt_once_batch(*grpo_rows(len(tok)))
    guard = LogitsGuard(len(tok))
    with guard:
        logps, entropy = prompt_once_logprobs(model, batch)
        (logps.sum() + entropy.sum()).backward()
    assert not guard.seen, guard.seen[:5]


def test_ordinary_forwards_keep_the_models_attention():
    """A model switched to the backend still runs padded forwards (generation, evaluation) with its
    previous implementation and mask; a model set to the backend by name alone refuses them."""
    tok = tokenizer()
    model = causal_lm(tok, "llama", head_dim=64)
    ids = torch.tensor([[0, 0, 5, 6, 7], [4, 5, 6, 7, 8]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        enable_prompt_once(model)
        assert model.config._attn_implementation == ATTN_IMPLEMENTATION
        after = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(before, after)
    other = causal_lm(tok, "llama", head_dim=64)
    other.config._attn_implementation = ATTN_IMPLEMENTATION
    with pytest.raises(RuntimeError, match="prompt-once layout"):
        other(input_ids=torch.tensor([[5, 6, 7]]))


def test_grpo_trainer_with_shared_prompts(tmp_path, monkeypatch):
    """TRL's GRPOTrainer trained with and without the shared-prompt drop-in: the same losses, metrics
    and weights within the bf16-attention band (the kernel rounds q, k, v to bf16; TRL's f32 SDPA
    does not)."""
    trl = import_or_skip("trl")
    import test_trl_grpo as base
    import pref_kernels.prompt_once as po

    calls = []
    forward = po.shared_prefix_attention_forward
    monkeypatch.setattr(po, "shared_prefix_attention_forward",
                        lambda *a, **k: calls.append(1) or forward(*a, **k))
    monkeypatch.setattr(base, "causal_lm", lambda tok, family="llama": causal_lm(tok, family, head_dim=64))
    config = dict(loss_type="dapo", beta=0.04, max_steps=2)
    want_logs, want_w, _ = base.train(tmp_path / "trl", False, "qwen2", **config)
    assert not calls
    monkeypatch.setattr(base, "use_pref_kernels",
                        lambda t: pytest.importorskip("pref_kernels.trl").use_pref_kernels(t, shared_prompts=True))
    got_logs, got_w, _ = base.train(tmp_path / "pk", True, "qwen2", **config)
    assert calls, "the shared-prefix attention backend must run"
    for step, (g, w) in enumerate(zip(got_logs, want_logs)):
        for k in ("loss", "kl", "entropy", "reward"):
            assert g[k] == pytest.approx(w[k], rel=2e-2, abs=2e-3), f"step {step} {k}: {g[k]} vs {w[k]}"
    for k in want_w:
        torch.testing.assert_close(got_w[k], want_w[k], atol=2e-3, rtol=2e-2, msg=lambda m: f"{k}: {m}")
    assert trl is not None
