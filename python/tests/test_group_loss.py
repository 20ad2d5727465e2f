"""KTO against TRL's KTOTrainer formulas in torch (detached KL baseline from the mismatched
samples, desirable / undesirable weights, mean over examples), LiPO with K = 2 and λ off equal to
DPO through the other op, PRO finite and differentiable; bad labels refused."""
import pytest
import torch

import pref_kernels as pk


def seqs(gen, s, length, device):
    logp = -torch.rand(s * length, generator=gen) * 3
    ref = logp + torch.randn(s * length, generator=gen) * 0.3
    mask = torch.rand(s * length, generator=gen) > 0.2
    return logp.to(device), ref.to(device), mask.to(device)


def test_kto_matches_trl(device, gen):
    s, length, beta = 6, 7, 0.1
    logp, ref, mask = seqs(gen, s, length, device)
    roles = torch.tensor([pk.KTO_DESIRABLE, pk.KTO_DESIRABLE, pk.KTO_UNDESIRABLE, pk.KTO_UNDESIRABLE,
                          pk.KTO_KL_SAMPLE, pk.KTO_KL_SAMPLE], dtype=torch.float32, device=device)
    x = logp.detach().clone().requires_grad_()
    loss, metrics, rewards = pk.kto_loss(x, roles, mask, ref, seq_len=length, beta=beta, desirable_weight=1.3,
                                         undesirable_weight=0.7)
    loss.backward()
    xr = logp.detach().cpu().double().requires_grad_()
    m = mask.cpu().double()
    d = ((xr - ref.cpu().double()) * m).view(s, length).sum(-1)
    z0 = d[4:].mean().clamp(min=0).detach()
    chosen = 1 - torch.sigmoid(beta * (d[:2] - z0))
    rejected = 1 - torch.sigmoid(beta * (z0 - d[2:4]))
    want = torch.cat([1.3 * chosen, 0.7 * rejected]).mean()
    want.backward()
    torch.testing.assert_close(loss.cpu().double(), want.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(x.grad.cpu().double(), xr.grad, atol=1e-7, rtol=1e-4)
    named = dict(zip(pk.group_metric_names("kto"), metrics.tolist()))
    assert named["kl"] == pytest.approx(z0.item(), abs=1e-5)
    assert named["count/chosen"] == 2 and named["count/rejected"] == 2
    torch.testing.assert_close(rewards.cpu().double()[:4], (beta * d[:4]).detach(), atol=1e-5, rtol=1e-5)
    assert (x.grad.view(s, length)[4:] == 0).all(), "the KL samples get no gradient"


def test_lipo_with_two_items_and_no_lambda_is_dpo(device, gen):
    s, length, beta = 4, 6, 0.2
    logp, ref, mask = seqs(gen, s, length, device)
    relevance = torch.tensor([1.0, 0.0, 1.0, 0.0], device=device)  # lists [c0, r0], [c1, r1]
    x = logp.detach().clone().requires_grad_()
    loss, _, _ = pk.lipo_loss(x, relevance, 2, mask, ref, seq_len=length, beta=beta, lambda_weights=False)
    loss.backward()
    y = logp.detach().clone().requires_grad_()
    chosen = torch.tensor([0, 2], dtype=torch.int32, device=device)
    want, _ = pk.preference_loss(y, pk.loss_terms("sigmoid", beta=beta), mask=mask, ref_logp=ref, n_seqs=s,
                                 seq_len=length, chosen=chosen, rejected=chosen + 1)
    want.backward()
    torch.testing.assert_close(loss, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(x.grad, y.grad, atol=1e-7, rtol=1e-5)


def test_pro_is_differentiable(device, gen):
    s, length = 6, 5
    logp, _, mask = seqs(gen, s, length, device)
    rewards = torch.tensor([3.0, 2.0, 1.0, 2.5, 0.5, -1.0], device=device)
    x = logp.detach().clone().requires_grad_()
    loss, metrics, _ = pk.pro_loss(x, rewards, 3, mask, seq_len=length)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert set(pk.group_metric_names("pro")) >= {"loss", "loss/sft"}


def test_group_losses_refuse_bad_labels():
    logp, ref, mask = -torch.rand(12), -torch.rand(12), torch.ones(12, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"labels must have shape \[2\]"):
        pk.kto_loss(logp, torch.ones(3), mask, ref, n_seqs=2, seq_len=6)
    with pytest.raises(pk.PrefKernelsError):
        pk.kto_loss(logp, torch.tensor([1.0, 7.0]), mask, ref, seq_len=6)  # 7 is no KTO role
    with pytest.raises(pk.PrefKernelsError):
        pk.pro_loss(logp, torch.tensor([1.0, 2.0]), 2, mask, seq_len=6)  # rewards must not increase
