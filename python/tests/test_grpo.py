"""The GRPO-family loss against TRL's GRPOTrainer formulas written in torch (f64): the clipped
surrogate with token importance ratios, the k3 KL to the reference, the four aggregations (grpo,
bnpo, dr_grpo, dapo), the gradient into the per-token log-probs through autograd, and the metrics."""
import pytest
import torch

import pref_kernels as pk


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
                                 epsilon=0.2, epsilon_high=0.28, **kw)
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
    with pytest.raises(ValueError, match="max_completion_length"):
        pk.grpo_loss(torch.zeros(4), torch.zeros(1), seq_len=4, loss_type="dr_grpo")
    with pytest.raises(ValueError, match=r"advantages must have shape \[2\]"):
        pk.grpo_loss(-torch.rand(8), torch.zeros(3), n_seqs=2, seq_len=4)
    with pytest.raises(pk.PrefKernelsError, match="epsilon"):
        pk.grpo_loss(-torch.rand(8), torch.zeros(2), seq_len=4, epsilon=float("nan"))
