"""The fused preference losses against TRL's formulas written in torch (f64, TRL's current
semantics: masked-sum sequence log-probs, first half chosen), loss, metrics and the gradient into
the per-token log-probs (through autograd); packed layouts and explicit pairs; the chain
logits -> token log-probs -> loss -> d/dlogits against torch end to end."""
import math

import pytest
import torch
import torch.nn.functional as F

import pref_kernels as pk


def trl_loss(logp, ref, mask, n_seqs, seq_len, loss_type, beta, label_smoothing=0.0, tau=0.05):
    """TRL DPOTrainer's per-pair losses (as in TRL 1.16.0's trl/trainer/dpo_trainer.py), mean over pairs."""
    m = mask.double()
    s = (logp * m).view(n_seqs, seq_len).sum(-1)
    r = (ref.double() * m).view(n_seqs, seq_len).sum(-1)
    p = n_seqs // 2
    dc, dr = s[:p] - r[:p], s[p:] - r[p:]
    x = beta * (dc - dr)
    ls = label_smoothing
    if loss_type == "sigmoid":
        phi = -F.logsigmoid(x)
    elif loss_type == "hinge":
        phi = torch.relu(1 - x)
    elif loss_type == "ipo":
        n = m.view(n_seqs, seq_len).sum(-1).clamp(min=1)
        phi = (dc / n[:p] - dr / n[p:] - 1 / (2 * beta)) ** 2
    elif loss_type == "robust":
        phi = (-F.logsigmoid(x) * (1 - ls) + F.logsigmoid(-x) * ls) / (1 - 2 * ls)
    elif loss_type == "exo_pair":
        q = torch.sigmoid(x)
        phi = q * (F.logsigmoid(x) - math.log1p(-ls)) + (1 - q) * (F.logsigmoid(-x) - math.log(ls))
    elif loss_type == "nca_pair":
        phi = -F.logsigmoid(beta * dc) - 0.5 * F.logsigmoid(-beta * dc) - 0.5 * F.logsigmoid(-beta * dr)
    elif loss_type == "bco_pair":
        phi = -F.logsigmoid(beta * dc) - F.logsigmoid(-beta * dr)
    elif loss_type == "sppo_hard":
        phi = (dc - 1 / (2 * beta)) ** 2 + (dr + 1 / (2 * beta)) ** 2
    elif loss_type == "apo_zero":
        phi = (1 - torch.sigmoid(beta * dc)) + torch.sigmoid(beta * dr)
    elif loss_type == "apo_down":
        phi = torch.sigmoid(beta * dc) + (1 - torch.sigmoid(x))
    elif loss_type == "discopop":
        mu = torch.sigmoid(x / tau)
        phi = (1 - mu) * F.softplus(-x) + mu * torch.exp(-x)
    elif loss_type == "sft":
        cm = m.view(n_seqs, seq_len)[:p]
        return -(logp.view(n_seqs, seq_len)[:p] * cm).sum() / cm.sum(), s, dc, dr
    else:
        raise AssertionError(loss_type)
    return phi.mean(), s, dc, dr


def batch(gen, pairs, seq_len, device):
    n_seqs = 2 * pairs
    n = n_seqs * seq_len
    logp = -torch.rand(n, generator=gen) * 3 - 0.05
    ref = logp + torch.randn(n, generator=gen) * 0.3
    mask = torch.rand(n, generator=gen) > 0.3
    mask.view(n_seqs, seq_len)[:, :2] = False  # a prompt
    return logp.to(device), ref.to(device), mask.to(device), n_seqs


CASES = [("sigmoid", 0.1, 0.0), ("hinge", 0.1, 0.0), ("ipo", 0.5, 0.0), ("robust", 0.1, 0.2),
         ("exo_pair", 0.1, 1e-3), ("nca_pair", 0.2, 0.0), ("bco_pair", 0.1, 0.0), ("sppo_hard", 0.5, 0.0),
         ("apo_zero", 0.1, 0.0), ("apo_down", 0.1, 0.0), ("discopop", 0.05, 0.0), ("sft", 0.1, 0.0)]


@pytest.mark.parametrize("loss_type,beta,ls", CASES)
def test_trl_loss_types_and_gradients(device, gen, loss_type, beta, ls):
    logp, ref, mask, n_seqs = batch(gen, 3, 11, device)
    x = logp.detach().clone().requires_grad_()
    loss, metrics = pk.dpo_loss(x, mask, ref, n_seqs=n_seqs, seq_len=11, loss_type=loss_type, beta=beta,
                                label_smoothing=ls)
    loss.backward()
    xr = logp.detach().cpu().double().requires_grad_()
    want, s, dc, dr = trl_loss(xr, ref.cpu(), mask.cpu(), n_seqs, 11, loss_type, beta, ls)
    want.backward()
    torch.testing.assert_close(loss.cpu().double(), want.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad.cpu().double(), xr.grad, atol=1e-5, rtol=1e-4)
    md = pk.metrics_dict(metrics)
    assert md["loss"] == pytest.approx(want.item(), abs=1e-5, rel=1e-5)
    if loss_type != "sft":
        p = n_seqs // 2
        assert md["rewards/chosen"] == pytest.approx((beta * dc).mean().item(), abs=1e-4, rel=1e-4)
        assert md["rewards/rejected"] == pytest.approx((beta * dr).mean().item(), abs=1e-4, rel=1e-4)
        assert md["rewards/accuracies"] == pytest.approx((dc > dr).double().mean().item())
        assert md["logps/chosen"] == pytest.approx(s[:p].mean().item(), abs=1e-4, rel=1e-5)
        assert md["logps/rejected"] == pytest.approx(s[p:].mean().item(), abs=1e-4, rel=1e-5)


def test_weighted_combination_mpo(device, gen):
    """TRL's MPO example: loss_type ["sigmoid", "bco_pair", "sft"], loss_weights [0.8, 0.2, 1.0]."""
    logp, ref, mask, n_seqs = batch(gen, 4, 9, device)
    x = logp.detach().clone().requires_grad_()
    loss, _ = pk.dpo_loss(x, mask, ref, n_seqs=n_seqs, seq_len=9, loss_type=["sigmoid", "bco_pair", "sft"],
                          loss_weights=[0.8, 0.2, 1.0], beta=0.1)
    loss.backward()
    xr = logp.detach().cpu().double().requires_grad_()
    parts = [trl_loss(xr, ref.cpu(), mask.cpu(), n_seqs, 9, t, 0.1)[0] for t in ("sigmoid", "bco_pair", "sft")]
    want = 0.8 * parts[0] + 0.2 * parts[1] + 1.0 * parts[2]
    want.backward()
    torch.testing.assert_close(loss.cpu().double(), want.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad.cpu().double(), xr.grad, atol=1e-5, rtol=1e-4)


def test_packed_layout_and_explicit_pairs_equal_padded(device, gen):
    logp, ref, mask, n_seqs = batch(gen, 3, 8, device)
    padded, _ = pk.dpo_loss(logp, mask, ref, n_seqs=n_seqs, seq_len=8)
    cu = torch.arange(0, n_seqs * 8 + 1, 8, dtype=torch.int32, device=device)
    packed, _ = pk.dpo_loss(logp, mask, ref, cu_seqlens=cu)
    torch.testing.assert_close(packed, padded, atol=1e-6, rtol=1e-6)
    # The same pairs named explicitly, in another order: the mean over pairs is the same.
    chosen = torch.tensor([2, 0, 1], dtype=torch.int32, device=device)
    rejected = chosen + 3
    terms = pk.loss_terms("sigmoid", beta=0.1)
    explicit, _, pairs = pk.preference_loss(logp, terms, mask=mask, ref_logp=ref, n_seqs=n_seqs, seq_len=8,
                                            chosen=chosen, rejected=rejected, return_pairs=True)
    torch.testing.assert_close(explicit, padded, atol=1e-6, rtol=1e-6)
    assert pairs.shape == (3, len(pk.PAIR_COLUMN_NAMES)) and not torch.isnan(pairs).any()


def test_simpo_cpo_orpo_are_reference_free(device, gen):
    logp, _ref, mask, n_seqs = batch(gen, 2, 10, device)
    for kind, beta, p1 in (("simpo", 2.0, 0.5), ("cpo", 0.1, 0.0), ("orpo", 0.1, 0.0)):
        x = logp.detach().clone().requires_grad_()
        loss, _ = pk.preference_loss(x, [pk.LossTerm(kind, beta=beta, p1=p1)], mask=mask, n_seqs=n_seqs, seq_len=10)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # SimPO: -logsigmoid(beta (mean_c - mean_r) - gamma) with length-normalized scores.
    x = logp.detach().clone().requires_grad_()
    loss, _ = pk.preference_loss(x, [pk.LossTerm("simpo", beta=2.0, p1=0.5)], mask=mask, n_seqs=n_seqs, seq_len=10)
    m = mask.cpu().double().view(n_seqs, 10)
    s = (logp.cpu().double().view(n_seqs, 10) * m).sum(-1) / m.sum(-1)
    want = -F.logsigmoid(2.0 * (s[:2] - s[2:]) - 0.5).mean()
    torch.testing.assert_close(loss.cpu().double(), want, atol=1e-5, rtol=1e-5)


def test_logits_to_loss_chain_matches_torch(device, gen):
    """token log-probs -> DPO loss -> backward into the logits, against the same chain in torch."""
    pairs, seq_len, v = 2, 6, 97
    n_seqs, n = 2 * pairs, 2 * pairs * seq_len
    logits = (torch.randn(n, v, generator=gen) * 3).to(device)
    targets = torch.randint(0, v, (n,), generator=gen)
    targets.view(n_seqs, seq_len)[:, :2] = -100
    targets = targets.to(device)
    ref = (-torch.rand(n, generator=gen) * 5).to(device)
    mask = targets != -100
    x = logits.detach().clone().requires_grad_()
    logp = pk.token_logprobs(x, targets)
    loss, _ = pk.dpo_loss(logp, mask, ref, n_seqs=n_seqs, seq_len=seq_len, beta=0.1)
    loss.backward()
    xr = logits.detach().cpu().double().requires_grad_()
    lsm = torch.log_softmax(xr, -1)
    lr = lsm.gather(1, targets.cpu().clamp(min=0)[:, None]).squeeze(1) * mask.cpu()
    want, *_ = trl_loss(lr, ref.cpu(), mask.cpu(), n_seqs, seq_len, "sigmoid", 0.1)
    want.backward()
    torch.testing.assert_close(loss.cpu().double(), want.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad.cpu().double(), xr.grad, atol=1e-6, rtol=1e-4)


def test_opcheck_preference_loss(gen):
    logp, ref, mask, n_seqs = batch(gen, 2, 5, "cpu")
    x = logp.detach().clone().requires_grad_()
    args = (x, mask, None, ref, None, None, n_seqs, 5, None, None, [0], [1.0], [0.1], [0.0], [0.0], [0], 0, 0.5, 0)
    torch.library.opcheck(torch.ops.pref_kernels.preference_loss.default, args)
