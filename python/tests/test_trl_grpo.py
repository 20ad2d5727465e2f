"""The GRPO drop-in end to end, on CPU tensors (so through the emulated kernels): TRL 1.16's own
`GRPOTrainer` with a Python reward function and transformers generation (no vLLM) trains tiny random
Llama and Qwen2 models a few steps with and without `use_pref_kernels`; the losses, TRL's logged
metrics and the trained weights agree. A TorchDispatchMode guard proves that the drop-in's training
and reference forwards never create a `[rows, V]` tensor (and that TRL's own path does, so the
guard can fail). Unserved configurations are refused with the reason.

Tolerances. With the same hidden states, weight and cotangent, pref-kernels' head and TRL's agree with
each other and with an f64 reference to ~1e-7 relative (log-probs and both gradients). Inside this
tiny random model the parameter gradients of the two heads differ by ~0.2% relative, and TRL's own
fused head differs from the plain unfused PyTorch path by ~0.3% (measured with a random cotangent on
the log-probs): the model amplifies last-bit differences of its head gradient, for TRL's kernels as
for ours. The weights are compared after SGD steps at that band (lr 0.1: ~4e-5 absolute)."""
import pytest
import torch

from conftest import import_or_skip  # noqa: E402

trl = import_or_skip("trl")
transformers = import_or_skip("transformers")
datasets = import_or_skip("datasets")
import_or_skip("tokenizers")

import pref_kernels.trl  # noqa: E402
from pref_kernels.trl import unsupported_reason, use_pref_kernels  # noqa: E402

from tiny_models import WORDS, LogitsGuard, causal_lm, tokenizer  # noqa: E402


def prompts(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (3,), generator=g)) for _ in range(n)]
    return datasets.Dataset.from_dict({"prompt": rows})


def reward(completions, **kwargs):
    """Rewards completions that mention animals and are short: enough spread for nonzero advantages."""
    return [float(sum(w in c.split() for w in ("cat", "dog", "bird"))) - 0.1 * len(c.split()) for c in completions]




def guarded(method, guard):
    def run(*args, **kwargs):
        with guard:
            return method(*args, **kwargs)
    return run


def train(tmp_path, drop_in, family="llama", guard=False, trainer_cls="GRPO", **config):
    tok = tokenizer()
    config = {"per_device_train_batch_size": 8, "num_generations": 4, "max_completion_length": 6, "max_steps": 2,
              **config}
    # Plain SGD: Adam's first step is sign(gradient) * lr, which turns a last-bit difference of a
    # near-zero gradient element into a full-lr weight difference.
    args = getattr(trl, f"{trainer_cls}Config")(output_dir=str(tmp_path), learning_rate=0.1, optim="sgd", logging_steps=1, report_to=[],
                          use_cpu=True, seed=0, save_strategy="no", dataloader_num_workers=0, **config)
    # Saved and passed by path: with beta > 0 TRL loads the reference model from the policy's path.
    path = tmp_path / "model"
    causal_lm(tok, family).save_pretrained(path)
    trainer = getattr(trl, f"{trainer_cls}Trainer")(model=str(path), reward_funcs=reward, args=args, train_dataset=prompts(),
                              processing_class=tok)
    if trainer.ref_model is not None:
        # A reference that differs from the policy, so the KL term and its gradient count from step 0.
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in trainer.ref_model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    if drop_in:
        use_pref_kernels(trainer)
    logits_guard = None
    if guard:
        logits_guard = LogitsGuard(len(tok))
        trainer._compute_loss = guarded(trainer._compute_loss, logits_guard)
        trainer._get_per_token_logps_and_entropies = guarded(trainer._get_per_token_logps_and_entropies,
                                                             logits_guard)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return logs, weights, logits_guard


CASES = [
    ("llama", dict(loss_type="dapo", beta=0.04)),
    ("qwen2", dict(loss_type="grpo", beta=0.04, temperature=0.7, gradient_accumulation_steps=2)),
    ("llama", dict(loss_type="dr_grpo", epsilon_high=0.28, num_iterations=2)),
    # One step: the entropy-quantile mask is a threshold, and a token's entropy crossing it after an
    # update changes the next step's loss discretely.
    ("qwen2", dict(loss_type="bnpo", top_entropy_quantile=0.5, entropy_coef=0.01, max_steps=1)),
    ("llama", dict(loss_type="sapo", beta=0.02, importance_sampling_level="sequence")),
    ("qwen2", dict(loss_type="cispo", epsilon_high=2.0)),
    ("llama", dict(loss_type="luspo", importance_sampling_level="sequence", off_policy_mask_threshold=0.01)),
    ("qwen2", dict(loss_type="vespo", beta=0.03)),
]


@pytest.mark.parametrize("family,config", CASES, ids=lambda x: x if isinstance(x, str) else x["loss_type"])
def test_grpo_trainer_with_and_without_the_drop_in(tmp_path, monkeypatch, family, config):
    calls = {"loss": 0, "step": 0, "head": 0}
    fused_loss, fused_step = pref_kernels.trl.grpo_loss, pref_kernels.trl.linear_grpo_loss
    fused_head = pref_kernels.trl.FusedHead.apply

    def count(key, f):
        return lambda *a, **k: calls.__setitem__(key, calls[key] + 1) or f(*a, **k)
    monkeypatch.setattr(pref_kernels.trl, "grpo_loss", count("loss", fused_loss))
    monkeypatch.setattr(pref_kernels.trl, "linear_grpo_loss", count("step", fused_step))
    monkeypatch.setattr(pref_kernels.trl.FusedHead, "apply", staticmethod(count("head", fused_head)))
    want_logs, want_w, _ = train(tmp_path / "trl", False, family, **config)
    assert calls == {"loss": 0, "step": 0, "head": 0}
    got_logs, got_w, _ = train(tmp_path / "pk", True, family, **config)
    steps = config.get("max_steps", 2) * config.get("gradient_accumulation_steps", 1)
    # The head and the loss in one call (three GEMMs) unless the top-entropy mask needs every
    # log-prob first (the head's forward and backward around the fused loss; so would VESPO with
    # vLLM weights, which these runs without vLLM do not have).
    one_call = config.get("top_entropy_quantile", 1.0) >= 1.0
    assert calls["step" if one_call else "loss"] == steps, "every micro-step's loss must come from the fused kernel"
    assert calls["loss" if one_call else "step"] == 0, calls
    assert calls["head"] >= steps, "every training forward must go through pref-kernels' fused head"
    assert len(got_logs) == len(want_logs) == config.get("max_steps", 2)
    for step, (g, w) in enumerate(zip(got_logs, want_logs)):
        keys = [k for k in w if k.startswith(("loss", "kl", "entropy", "clip_ratio", "cispo", "vespo", "reward",
                                              "policy_loss"))]
        assert "loss" in keys and "entropy" in keys, keys
        for k in keys:
            assert k in g, f"step {step}: {k} not logged by the drop-in"
            # Step 0: the same weights and samples; f32 on both sides, the fused head and loss sum in
            # other orders than TRL's torch ops (measured: 1e-7 relative). Later steps start from
            # weights that differ by the gradient difference times lr (see the module docstring), and
            # their losses are themselves first order in that update, so they get a looser band.
            rel, abs_ = (2e-4, 2e-5) if step == 0 else (2e-2, 1e-4)
            assert g[k] == pytest.approx(w[k], rel=rel, abs=abs_), f"step {step} {k}: {g[k]} vs {w[k]}"
    for k in want_w:
        torch.testing.assert_close(got_w[k], want_w[k], atol=5e-5, rtol=1e-4, msg=lambda m: f"{k}: {m}")


def test_rloo_trainer_log_probs_through_the_fused_head(tmp_path, monkeypatch):
    """RLOOTrainer shares GRPO's log-prob path: with the drop-in every one of its forwards (policy,
    old policy, reference) goes through pref-kernels' head, and losses, metrics and weights agree."""
    calls = []
    fused_head = pref_kernels.trl.FusedHead.apply
    monkeypatch.setattr(pref_kernels.trl.FusedHead, "apply",
                        staticmethod(lambda *a, **k: calls.append(1) or fused_head(*a, **k)))
    want_logs, want_w, _ = train(tmp_path / "trl", False, "qwen2", trainer_cls="RLOO", beta=0.05)
    assert not calls
    got_logs, got_w, _ = train(tmp_path / "pk", True, "qwen2", trainer_cls="RLOO", beta=0.05)
    assert len(calls) >= 4, "the policy and reference forwards of both steps"
    for step, (g, w) in enumerate(zip(got_logs, want_logs)):
        keys = [k for k in w if k.startswith(("loss", "kl", "entropy", "clip_ratio", "reward"))]
        assert {"loss", "kl", "entropy"} <= set(keys), keys
        for k in keys:
            rel, abs_ = (2e-4, 2e-5) if step == 0 else (2e-2, 1e-4)
            assert g[k] == pytest.approx(w[k], rel=rel, abs=abs_), f"step {step} {k}: {g[k]} vs {w[k]}"
    for k in want_w:
        torch.testing.assert_close(got_w[k], want_w[k], atol=5e-5, rtol=1e-4, msg=lambda m: f"{k}: {m}")


def test_the_drop_in_never_creates_logits(tmp_path):
    """No op on the drop-in's training and log-prob forwards produces a [rows, V] tensor; TRL's own
    fused head on CPU does (its projection tiles), which shows the guard sees them."""
    _, _, trl_guard = train(tmp_path / "trl", False, guard=True, max_steps=1, beta=0.04)
    assert trl_guard.seen, "the guard must catch TRL's own logits tiles"
    _, _, pk_guard = train(tmp_path / "pk", True, guard=True, max_steps=1, beta=0.04)
    assert not pk_guard.seen, f"[rows, V] tensors on the drop-in path: {pk_guard.seen[:5]}"


def test_unserved_grpo_configurations_are_refused(tmp_path):
    tok = tokenizer()
    args = trl.GRPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=1,
                          per_device_train_batch_size=4, num_generations=4)
    model = causal_lm(tok)
    model.config.final_logit_softcapping = 30.0
    trainer = trl.GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=prompts(4),
                              processing_class=tok)
    assert "soft-capping" in unsupported_reason(trainer)
    with pytest.raises(NotImplementedError, match="soft-capping"):
        use_pref_kernels(trainer)
    assert pref_kernels.trl.head_refusal(None, 0.0) is not None
    assert pref_kernels.trl.head_refusal(None, 1.0, pref_kernels.trl.HEAD_OUTPUTS) is None
    assert "hidden_states" in pref_kernels.trl.head_refusal(None, 1.0, ("log_probs", "hidden_states"))


def test_the_one_call_step_declines_without_gradients_and_in_fp16():
    """The GRPO step computes its gradients in the forward: without autograd (evaluation) and in
    fp16 (before a GradScaler's factor) the fused-head call runs the plain head instead, and the
    trainer computes the loss on its log-probs."""
    from pref_kernels.trl import FusedHead, _GrpoStep, _PENDING_GRPO_STEP

    g = torch.Generator().manual_seed(3)
    b, c, h, v = 2, 3, 8, 11
    mask = torch.ones(b, c, dtype=torch.long)
    adv = torch.randn(b, generator=g)
    per_token = {"old": None, "ref": None, "sampling": None, "is_weights": None}
    targets = torch.randint(0, v, (b * c,), generator=g)

    def call(dtype, grad):
        hidden = torch.randn(b * c, h, generator=g).to(dtype).requires_grad_(grad)
        weight = (torch.randn(v, h, generator=g) * 0.3).to(dtype).requires_grad_(grad)
        step = _GrpoStep(mask, adv, per_token, None, dict(loss_type="dapo"))
        _PENDING_GRPO_STEP.step = step
        try:
            out = FusedHead.apply(hidden, weight, None, targets, 1.0, 0, None, 1.0, ("log_probs", "entropy"))
        finally:
            _PENDING_GRPO_STEP.step = None
        assert out[0].shape == (b * c,) and out[1] is not None
        return step.loss

    assert call(torch.float32, True) is not None, "the step runs when gradients are wanted"
    with torch.no_grad():
        assert call(torch.float32, True) is None, "no step under no_grad"
    assert call(torch.float32, False) is None, "no step when nothing needs a gradient"
    assert call(torch.float16, True) is None, "no step in fp16"
