"""The TRL drop-in end to end: a tiny randomly initialised Llama (built from a config, nothing
downloaded) with a word-level tokenizer built in the test, on a small synthetic preference dataset.
A few DPOTrainer steps with and without `use_pref_kernels` give the same losses, metrics and
trained weights (so the same gradients), for single and combined loss types, with every forward
(policy and reference) through pref-kernels' fused head and no [rows, V] tensor on that path;
unserved configurations are refused with the reason."""
import pytest
import torch

from conftest import import_or_skip  # noqa: E402

trl = import_or_skip("trl")
transformers = import_or_skip("transformers")
datasets = import_or_skip("datasets")
tokenizers = import_or_skip("tokenizers")

import pref_kernels.trl  # noqa: E402
from pref_kernels.trl import unsupported_reason, use_pref_kernels  # noqa: E402

from tiny_models import WORDS, LogitsGuard, causal_lm, tokenizer  # noqa: E402


def dataset(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)

    def sentence(lo, hi):
        k = int(torch.randint(lo, hi, (1,), generator=g))
        return " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=g))
    # Completions start with a space so that the prompt's tokens are a prefix of prompt + completion.
    rows = {"prompt": [sentence(2, 5) for _ in range(n)], "chosen": [" " + sentence(1, 6) for _ in range(n)],
            "rejected": [" " + sentence(1, 6) for _ in range(n)]}
    return datasets.Dataset.from_dict(rows)


def model(tok):
    return causal_lm(tok, "llama")


def reference_model(tok):
    """The policy's initial weights, perturbed: at step 0 an exact copy ties every reward at 0, and
    `rewards/accuracies` (a strict >) then depends on summation order, not on the loss."""
    ref = model(tok)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return ref


def guarded(method, guard):
    def run(*args, **kwargs):
        with guard:
            return method(*args, **kwargs)
    return run


def train(tmp_path, drop_in, guard=False, **config):
    tok = tokenizer()
    config = {"max_steps": 3, **config}
    # Plain SGD: Adam's first step is sign(gradient) * lr, which turns a last-bit difference of a
    # near-zero gradient element (two fused heads summing in different orders) into a full-lr
    # weight difference.
    args = trl.DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=0.05,
                         optim="sgd", logging_steps=1, report_to=[], use_cpu=True, seed=0, save_strategy="no",
                         dataloader_num_workers=0, **config)
    trainer = trl.DPOTrainer(model=model(tok), ref_model=reference_model(tok), args=args, train_dataset=dataset(),
                             processing_class=tok)
    if drop_in:
        use_pref_kernels(trainer)
    logits_guard = LogitsGuard(len(tok)) if guard else None
    if guard:
        trainer._compute_loss = guarded(trainer._compute_loss, logits_guard)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return (logs, weights, logits_guard) if guard else (logs, weights)


@pytest.mark.parametrize("config", [
    dict(loss_type=["sigmoid"], beta=0.1),
    dict(loss_type=["ipo"], beta=0.5),
    dict(loss_type=["robust"], beta=0.1, label_smoothing=0.1),
    dict(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0], beta=0.1),
    dict(loss_type=["sigmoid"], beta=0.2, f_divergence_type="js_divergence"),
    dict(loss_type=["sigmoid_norm"], beta=0.5, f_divergence_type="alpha_divergence"),
    dict(loss_type=["aot"], beta=0.3, label_smoothing=0.1),
    dict(loss_type=["aot_unpaired", "sft"], beta=0.3),
    dict(loss_type=["sigmoid", "bco_pair"], loss_weights=[0.7, 0.3], beta=0.2, use_weighting=True),
    dict(loss_type=["ipo"], beta=0.5, ld_alpha=0.4),
], ids=["sigmoid", "ipo", "robust", "mpo", "js", "sigmoid_norm_alpha", "aot", "aot_unpaired_sft", "wpo", "ld_ipo"])
def test_dpo_trainer_with_and_without_the_drop_in(tmp_path, monkeypatch, config):
    calls, heads = [], []
    fused, fused_head = pref_kernels.trl.dpo_loss, pref_kernels.trl.FusedHead.apply
    monkeypatch.setattr(pref_kernels.trl, "dpo_loss", lambda *a, **k: calls.append(1) or fused(*a, **k))
    monkeypatch.setattr(pref_kernels.trl.FusedHead, "apply",
                        staticmethod(lambda *a, **k: heads.append(k.get("outputs", a[-1])) or fused_head(*a, **k)))
    want_logs, want_w = train(tmp_path / "trl", False, **config)
    assert not calls and not heads
    got_logs, got_w = train(tmp_path / "pk", True, **config)
    assert len(calls) == 3, "the drop-in must compute every step's loss with the fused kernel"
    assert len(heads) == 6, "the policy and reference forwards of every step go through the fused head"
    assert any("is_top1" in o and "mean_logits" in o for o in heads), heads
    assert len(got_logs) == len(want_logs) == 3
    keys = ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
            "logps/rejected", "entropy", "logits/chosen", "mean_token_accuracy"]
    for step, (g, w) in enumerate(zip(got_logs, want_logs)):
        for k in keys:
            assert k in g and k in w, f"step {step}: {k} missing"
            # Step 0: the same weights; the two fused heads and losses sum in different orders (f32).
            # Later steps start from weights that differ by lr times the gradient difference (a few
            # 1e-7 relative per element, amplified by the model's depth: see test_trl_grpo), so
            # sequence log-probs (sums of ~10 tokens) move by ~1e-3 and rewards, margins by beta
            # times that; the accuracies are counts that a near-tie may flip by one item.
            if step == 0:
                rel, abs_ = 1e-4, 1e-5
            elif k in ("rewards/accuracies", "mean_token_accuracy"):
                rel, abs_ = 0.0, 0.26
            else:
                rel, abs_ = 2e-2, 1e-3
            assert g[k] == pytest.approx(w[k], rel=rel, abs=abs_), f"step {step} {k}: {g[k]} vs {w[k]}"
    # Three steps later the weights still agree: the gradients were the same each step.
    for k in want_w:
        torch.testing.assert_close(got_w[k], want_w[k], atol=5e-5, rtol=1e-4, msg=lambda m: f"{k}: {m}")


def test_the_dpo_drop_in_never_creates_logits(tmp_path):
    """No op of the drop-in's DPO step (policy and reference forwards, loss) produces a [rows, V]
    tensor; TRL's own fused head on CPU does (its projection tiles), which shows the guard sees them."""
    _, _, trl_guard = train(tmp_path / "trl", False, guard=True, max_steps=1, loss_type=["sigmoid"])
    assert trl_guard.seen, "the guard must catch TRL's own logits tiles"
    _, _, pk_guard = train(tmp_path / "pk", True, guard=True, max_steps=1, loss_type=["sigmoid"])
    assert not pk_guard.seen, f"[rows, V] tensors on the drop-in path: {pk_guard.seen[:5]}"


def test_unserved_configurations_are_refused(tmp_path):
    tok = tokenizer()
    for config, needle in ((dict(loss_type=["ipo"], f_divergence_type="forward_kl"), "ipo"),):
        args = trl.DPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=1, **config)
        trainer = trl.DPOTrainer(model=model(tok), ref_model=model(tok), args=args, train_dataset=dataset(4),
                                 processing_class=tok)
        assert needle in unsupported_reason(trainer)
        with pytest.raises(NotImplementedError, match=needle):
            use_pref_kernels(trainer)
