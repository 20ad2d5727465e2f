"""Per-sequence reductions against torch (index_add over packed segments, masked sums over a padded
batch), every mode, with the gradient through autograd; bad offsets refused."""
import pytest
import torch

import pref_kernels as pk


def torch_scores(logp, mask, weights, cu, mode):
    out = []
    for s in range(len(cu) - 1):
        a, b = cu[s], cu[s + 1]
        lp, m = logp[a:b], mask[a:b].double()
        w = weights[a:b].double() if weights is not None else None
        if mode == "sum":
            out.append((lp * m).sum())
        elif mode == "mean":
            out.append((lp * m).sum() / m.sum().clamp(min=1))
        elif mode == "weighted_sum":
            out.append((lp * m * w).sum())
        else:
            out.append((lp * m * w).sum() / (m * w).sum().clamp(min=1e-6))
    return torch.stack(out)


@pytest.mark.parametrize("mode", ["sum", "mean", "weighted_sum", "weighted_mean"])
def test_packed_scores_and_gradient(device, gen, mode):
    lengths = [5, 0, 17, 3, 9]
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    t = cu[-1]
    logp = -torch.rand(t, generator=gen) * 4
    mask = torch.rand(t, generator=gen) > 0.3
    weights = torch.rand(t, generator=gen) + 0.5
    x = logp.clone().to(device).requires_grad_()
    cu_t = torch.tensor(cu, dtype=torch.int32, device=device)
    scores = pk.seq_reduce(x, mask.to(device), weights.to(device), cu_seqlens=cu_t, mode=mode)
    g = torch.randn(len(lengths), generator=gen)
    (scores * g.to(device)).sum().backward()
    xr = logp.double().requires_grad_()
    want = torch_scores(xr, mask, weights, cu, mode)
    (want * g.double()).sum().backward()
    torch.testing.assert_close(scores.cpu().double(), want.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad.cpu().double(), xr.grad, atol=1e-6, rtol=1e-5)


def test_padded_equals_packed(device, gen):
    logp = (-torch.rand(24, generator=gen)).to(device)
    mask = (torch.rand(24, generator=gen) > 0.2).to(device)
    padded = pk.seq_reduce(logp, mask, n_seqs=4, seq_len=6)
    packed = pk.seq_reduce(logp, mask, cu_seqlens=torch.arange(0, 25, 6, dtype=torch.int32, device=device))
    torch.testing.assert_close(padded, packed, atol=0, rtol=0)


def test_bad_offsets_refused():
    with pytest.raises(pk.PrefKernelsError, match="cu_seqlens"):
        pk.seq_reduce(-torch.rand(10), cu_seqlens=torch.tensor([0, 6, 4, 10], dtype=torch.int32))
    with pytest.raises(ValueError, match="mode"):
        pk.seq_reduce(-torch.rand(10), n_seqs=2, seq_len=5, mode="max")
    with pytest.raises(pk.PrefKernelsError, match="weights"):
        pk.seq_reduce(-torch.rand(10), n_seqs=2, seq_len=5, mode="weighted_sum")
