"""The GRPO-family loss against TRL's GRPOTrainer formulas written in torch (f64): the clipped
surrogate with token importance ratios, the k3 KL to the reference, the four aggregations (grpo,
bnpo, dr_grpo, dapo), the gradient into the per-token log-probs through autograd, and the metrics."""
import pytest
import torch

import pref_kernels as pk
from conftest import import_or_skip


def trl_grpo(logp, old, ref, mask, adv, loss_type, beta, eps_lo, eps_hi, max_len=None):
    """As trl/trainer/grpo_trainer.py's _compute_loss for token-level importance sampling."""
    coef_1 = torch.exp(logp - old)
    coef_2 = torch.clamp(coef_1, 1 - eps_lo, 1 + eps_hi)
    a = adv[:, None]
    per_token = -torch.min(coef_1 * a, coef_2 * a)
    kl = torch.exp(ref - logp) - (ref - logp) - 1
    if beta != 0.0:
        per_token = per_token + beta * kl
    m = mask.double()
    if loss_type == "grpo":
        loss = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * m).sum() / m.sum().clamp(min=1)
    elif loss_type == "dr_grpo":
        loss = (per_token * m).sum() / (per_token.size(0) * max_len)
    else:  # dapo: the batch's completion-token count
        loss = (per_token * m).sum() / m.sum()
    low = ((coef_1 < 1 - eps_lo) & (a < 0)).double()
    high = ((coef_1 > 1 + eps_hi) & (a > 0)).double()
    mean = lambda x: (x * m).sum() / m.sum()  # noqa: E731
    return loss, {"kl": mean(kl).item(), "clip_ratio/low_mean": mean(low).item(),
                  "clip_ratio/high_mean": mean(high).item(), "clip_ratio/region_mean": mean(low + high).item()}


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_family_matches_trl(device, gen, loss_type, beta):
    s, length = 6, 10
    logp = -torch.rand(s, length, generator=gen) * 3
    old = logp + torch.randn(s, length, generator=gen) * 0.3  # some ratios outside the clip range
    ref = logp + torch.randn(s, length, generator=gen) * 0.2
    mask = torch.rand(s, length, generator=gen) > 0.2
    adv = torch.randn(s, generator=gen)
    x = logp.reshape(-1).clone().to(device).requires_grad_()
    kw = dict(max_completion_length=length) if loss_type == "dr_grpo" else {}
    loss, metrics = pk.grpo_loss(x, adv.to(device), mask.reshape(-1).to(device), old.reshape(-1).to(device),
                                 ref.reshape(-1).to(device), seq_len=length, loss_type=loss_type, beta=beta,
                                 epsilon=0.2, epsilon_high=0.28, use_bias_correction_kl=False, **kw)
    loss.backward()
    xr = logp.double().requires_grad_()
    want, want_m = trl_grpo(xr, old.double(), ref.double(), mask, adv.double(), loss_type, beta, 0.2, 0.28, length)
    want.backward()
    torch.testing.assert_close(loss.cpu().double(), want.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad.cpu().double().view(s, length), xr.grad, atol=1e-6, rtol=1e-4)
    got = dict(zip(pk.GRPO_METRIC_NAMES, metrics.tolist()))
    assert got["loss"] == pytest.approx(want.item(), abs=1e-5)
    for k, v in want_m.items():
        if k == "kl" and beta == 0.0:
            continue
        assert got[k] == pytest.approx(v, abs=1e-5), k


def test_grpo_entropy_bonus_is_differentiable(device, gen):
    s, length = 4, 8
    logp = (-torch.rand(s * length, generator=gen) * 2).to(device).requires_grad_()
    ent = (torch.rand(s * length, generator=gen) * 3).to(device).requires_grad_()
    adv = torch.randn(s, generator=gen).to(device)
    loss, _ = pk.grpo_loss(logp, adv, seq_len=length, loss_type="bnpo", entropy=ent, entropy_coef=0.01)
    loss.backward()
    assert ent.grad is not None and torch.isfinite(ent.grad).all() and ent.grad.abs().sum() > 0


def test_grpo_bad_input():
    with pytest.raises(ValueError, match="loss_type"):
        pk.grpo_loss(torch.zeros(4), torch.zeros(1), seq_len=4, loss_type="ppo")
    with pytest.raises(ValueError, match="num_items_in_batch"):
        pk.grpo_loss(-torch.rand(8), torch.zeros(2), seq_len=4, gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match=r"vllm_is_weights must have logp's shape \[2, 4\]"):
        pk.grpo_loss(-torch.rand(2, 4), torch.zeros(2), vllm_is_weights=torch.ones(8))
    with pytest.raises(ValueError, match=r"logp must be per-token log-probs of shape \[T\].*got shape \[2, 2, 2\]"):
        pk.grpo_loss(-torch.rand(2, 2, 2), torch.zeros(2), n_seqs=2, seq_len=4)
    with pytest.raises(ValueError, match=r"advantages must have shape \[2\]"):
        pk.grpo_loss(-torch.rand(8), torch.zeros(3), n_seqs=2, seq_len=4)
    with pytest.raises(pk.PrefKernelsError, match="epsilon"):
        pk.grpo_loss(-torch.rand(8), torch.zeros(2), seq_len=4, epsilon=float("nan"))


# ---- TRL 1.16's own GRPOTrainer._compute_loss, run on a stand-in trainer -----------------------------

class _OneProcess:
    """accelerate's Accelerator for one process, as _compute_loss uses it."""
    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x

    def pad_across_processes(self, x, dim=0, pad_index=0):
        return x


def _trl_compute_loss(logp, entropy, inputs, cfg):
    """Runs trl.GRPOTrainer._compute_loss itself (not a transcription) with the per-token log-probs
    and entropies handed in as the model's outputs. Returns (loss, TRL's logged metrics)."""
    import collections
    import types

    trl_grpo = import_or_skip("trl.trainer.grpo_trainer")
    cls = trl_grpo.GRPOTrainer
    args = types.SimpleNamespace(
        use_bias_correction_kl=cfg.get("use_bias_correction_kl", True), delta=cfg.get("delta"),
        sapo_temperature_pos=1.0, sapo_temperature_neg=1.05, vespo_k_pos=cfg.get("vespo_k_pos", 2.0),
        vespo_lambda_pos=cfg.get("vespo_lambda_pos", 3.0), vespo_k_neg=cfg.get("vespo_k_neg", 3.0),
        vespo_lambda_neg=cfg.get("vespo_lambda_neg", 2.0),
        steps_per_generation=cfg.get("steps_per_generation", cfg.get("gradient_accumulation_steps", 1)))
    entropy_coef = cfg.get("entropy_coef", 0.0)
    trainer = types.SimpleNamespace(
        args=args, loss_type=cfg["loss_type"], beta=cfg.get("beta", 0.0), epsilon_low=cfg.get("epsilon", 0.2),
        epsilon_high=cfg.get("epsilon_high", cfg.get("epsilon", 0.2)),
        importance_sampling_level=cfg.get("importance_sampling_level", "token"),
        top_entropy_quantile=cfg.get("top_entropy_quantile", 1.0),
        off_policy_mask_threshold=cfg.get("off_policy_mask_threshold"),
        use_vllm="importance_sampling_ratio" in inputs, vllm_importance_sampling_correction=True,
        model=types.SimpleNamespace(training=True),
        current_gradient_accumulation_steps=cfg.get("gradient_accumulation_steps", 1),
        max_completion_length=cfg.get("max_completion_length", 512), accelerator=_OneProcess(),
        _entropy_bonus_enabled=entropy_coef != 0.0, use_adaptive_entropy=False, entropy_coef=entropy_coef,
        aux_loss_enabled=False, _metrics=collections.defaultdict(lambda: collections.defaultdict(list)),
        get_off_policy_mask=cls.get_off_policy_mask, get_gamma_weights=cls.get_gamma_weights,
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, entropy, None))
    trainer.get_high_entropy_mask = types.MethodType(cls.get_high_entropy_mask, trainer)
    loss = cls._compute_loss(trainer, None, inputs)
    return loss, {k: v[0] for k, v in trainer._metrics["train"].items()}


_TRL_CASES = [
    dict(loss_type="grpo", gradient_accumulation_steps=3, entropy_coef=0.05),
    dict(loss_type="bnpo", beta=0.04, top_entropy_quantile=0.7, entropy_coef=0.02),
    dict(loss_type="dr_grpo", max_completion_length=16, gradient_accumulation_steps=2, entropy_coef=0.01),
    dict(loss_type="dapo", beta=0.04, epsilon_high=0.28, entropy_coef=0.02, gradient_accumulation_steps=2,
         num_items_in_batch=97),
    dict(loss_type="dapo", off_policy_mask_threshold=0.02, delta=1.6, importance_sampling_level="sequence"),
    dict(loss_type="cispo", epsilon_high=1.1, entropy_coef=0.03, off_policy_mask_threshold=0.0),
    dict(loss_type="sapo", beta=0.02, gradient_accumulation_steps=4, entropy_coef=0.01),
    dict(loss_type="luspo", importance_sampling_level="sequence", gradient_accumulation_steps=2, beta=0.03),
    dict(loss_type="luspo", entropy_coef=0.02, off_policy_mask_threshold=0.01),
    dict(loss_type="vespo", beta=0.03, entropy_coef=0.02),
    dict(loss_type="vespo", vllm=True, off_policy_mask_threshold=0.01, gradient_accumulation_steps=2,
         steps_per_generation=4, num_items_in_batch=150, vespo_k_pos=1.5, vespo_lambda_neg=1.0),
    dict(loss_type="grpo", vllm=True, beta=0.05, use_bias_correction_kl=False, off_policy_mask_threshold=0.02),
]


@pytest.mark.parametrize("case", _TRL_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_grpo_matches_trl_compute_loss(device, gen, case):
    """TRL 1.16's own `_compute_loss` on the same [B, T] tensors gives the same loss, the same
    gradients into the log-probs and the entropies, and the same logged metrics."""
    b, t = 6, 16
    logp = -torch.rand(b, t, generator=gen) * 3 - 0.05
    old = logp + torch.randn(b, t, generator=gen) * 0.15
    ref = logp + torch.randn(b, t, generator=gen) * 0.2
    sampling = old + torch.randn(b, t, generator=gen) * 0.05
    entropy = torch.rand(b, t, generator=gen) * 3
    lens = torch.tensor([16, 11, 3, 9, 14, 6])
    mask = (torch.arange(t)[None, :] < lens[:, None]).long()
    adv = torch.randn(b, generator=gen)
    isw = torch.exp((old - sampling) * mask).clamp(max=2.0) if case.get("vllm") else None
    g = case.get("gradient_accumulation_steps", 1)
    spg = case.get("steps_per_generation", g)
    n_items = case.get("num_items_in_batch", int(mask.sum()) * spg)
    inputs = dict(prompt_ids=torch.zeros(b, 1, dtype=torch.long), prompt_mask=torch.ones(b, 1, dtype=torch.long),
                  completion_ids=torch.zeros(b, t, dtype=torch.long), completion_mask=mask, advantages=adv,
                  old_per_token_logps=old, ref_per_token_logps=ref, sampling_per_token_logps=sampling,
                  num_items_in_batch=torch.tensor(float(n_items)))
    if isw is not None:
        inputs["importance_sampling_ratio"] = isw
    want_lp = logp.clone().requires_grad_()
    want_h = entropy.clone().requires_grad_()
    want, want_m = _trl_compute_loss(want_lp, want_h, inputs, case)
    want.backward()

    kw = {k: v for k, v in case.items() if k not in ("vllm", "num_items_in_batch")}
    lp = logp.clone().to(device).requires_grad_()
    h = entropy.clone().to(device).requires_grad_()
    d = lambda x: None if x is None else x.to(device)  # noqa: E731
    loss, metrics = pk.grpo_loss(lp, d(adv), d(mask), d(old), d(ref), entropy=h, vllm_is_weights=d(isw),
                                 sampling_logp=d(sampling), num_items_in_batch=n_items, **kw)
    loss.backward()
    # f32 on both sides from the same f32 inputs: the kernels' per-token terms are a few ulps off
    # torch's and their sums run in another order, so loss and gradients agree to ~1e-6 relative of
    # the largest term; 1e-5 leaves 10x for the longest sum (16 tokens) without hiding a wrong term.
    torch.testing.assert_close(loss.cpu(), want.detach(), rtol=1e-5, atol=1e-6)
    gscale = want_lp.grad.abs().max().item()
    torch.testing.assert_close(lp.grad.cpu(), want_lp.grad, rtol=1e-5, atol=1e-6 * gscale)
    hgrad = torch.zeros_like(entropy) if want_h.grad is None else want_h.grad
    torch.testing.assert_close(h.grad.cpu(), hgrad, rtol=1e-5, atol=1e-9)
    got = dict(zip(pk.GRPO_METRIC_NAMES, metrics.tolist()))
    names = {"cispo_clip_ratio": "clip_ratio/high_mean"}
    for k, v in want_m.items():
        if k in ("clip_ratio/low_min", "clip_ratio/high_max", "entropy_coef"):
            continue  # cross-process min/max (one process: not the means), trainer state
        assert got[names.get(k, k)] == pytest.approx(v, rel=1e-5, abs=1e-6), k
