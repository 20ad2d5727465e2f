"""Top-k log-probs, the mean logit and `is_top1` (TRL's fused-head fields), from logits and from the
fused LM head, against torch: a stable descending sort (equal logits by ascending id, as the kernels
order them), `torch.argmax` (the first maximum), the f64 mean. Ties are planted where they decide
the answer; outputs are poisoned first (conftest), so an unwritten element fails."""
import pytest
import torch

import pref_kernels as pk


def tied_logits(gen, n, v, dtype, device):
    """Random logits rounded to 1/4 (many exact ties in bf16 and f32 alike), targets with ignored
    rows, and per row the target made a strict max, a max tied with an earlier id, or left."""
    x = (torch.randn(n, v, generator=gen) * 3).mul(4).round().div(4)
    t = torch.randint(0, v, (n,), generator=gen)
    for r in range(n):
        top = x[r].max() + 1
        if r % 3 == 0:
            x[r, t[r]] = top
        elif r % 3 == 1 and t[r] > 0:
            x[r, t[r]] = top
            x[r, torch.randint(0, int(t[r]), (1,), generator=gen)] = top
    t[torch.rand(n, generator=gen) < 0.2] = -100
    return x.to(dtype).to(device), t.to(device)


def torch_stats(x, t, k, temperature):
    y = x.double() / temperature
    lsm = torch.log_softmax(y, -1)
    keep = t != -100
    logp = lsm.gather(1, t.clamp(min=0)[:, None]).squeeze(1) * keep
    order = torch.sort(x.double(), dim=-1, descending=True, stable=True).indices
    ids = order[:, :k]
    vals = lsm.gather(1, ids)
    ids = torch.where(keep[:, None], ids, torch.full_like(ids, -1))
    vals = vals * keep[:, None]
    mean = y.mean(-1) * keep
    top1 = (x.double().argmax(-1) == t) & keep
    return logp, mean, top1, vals, ids


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("v,k", [(50, 1), (50, 50), (3000, 64), (700, 17)])
def test_token_stats_match_torch(device, dtype, v, k):
    gen = torch.Generator().manual_seed(v * 7 + k)
    x, t = tied_logits(gen, 13, v, dtype, device)
    got = pk.token_stats(x, t, top_k=k, temperature=0.7)
    logp, mean, top1, vals, ids = torch_stats(x.cpu(), t.cpu(), k, 0.7)
    assert got.is_top1.dtype == torch.bool and got.topk_ids.dtype == torch.int64
    torch.testing.assert_close(got.logp.cpu().double(), logp, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(got.mean_logits.cpu().double(), mean, atol=1e-5, rtol=1e-5)
    assert torch.equal(got.is_top1.cpu(), top1)
    assert 0 < int(top1.sum()) < 13
    assert torch.equal(got.topk_ids.cpu(), ids)
    torch.testing.assert_close(got.topk_logp.cpu().double(), vals, atol=2e-5, rtol=1e-5)
    # The target's entry is the forward's log-prob, bitwise.
    hit = (got.topk_ids == t[:, None]) & (t[:, None] != -100)
    assert torch.equal(got.topk_logp[hit], got.logp[:, None].expand_as(hit)[hit])


def test_token_stats_refuse_bad_k(device):
    x = torch.randn(3, 10, device=device)
    t = torch.tensor([1, 2, 3], device=device)
    for k in (11, 65):
        with pytest.raises(pk.PrefKernelsError, match="`k`"):
            pk.token_stats(x, t, top_k=k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_token_stats_match_the_logits_path(device, dtype):
    """Every field from the fused head equals the logits path on the same (materialized) logits;
    ids are compared where the sorted logits are more than the GEMM's rounding apart."""
    gen = torch.Generator().manual_seed(3)
    n, h, v, k = 21, 16, 90, 9
    hidden = torch.randn(n, h, generator=gen).to(dtype).to(device)
    weight = (torch.randn(v, h, generator=gen) / h ** 0.5).to(dtype).to(device)
    t = torch.randint(0, v, (n,), generator=gen)
    t[::5] = -100
    t = t.to(device)
    got = pk.linear_token_stats(hidden, weight, t, entropy=True, log_sum_sq=True, mean_logits=True, is_top1=True,
                                top_k=k, temperature=0.9, workspace_bytes=pk.linear_workspace_bytes(h, v, dtype, 4))
    logits = (hidden.double() @ weight.double().T).float()
    logp, mean, top1, vals, ids = torch_stats(logits.cpu(), t.cpu(), k, 0.9)
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.logp.cpu().double(), logp, atol=tol, rtol=tol)
    torch.testing.assert_close(got.mean_logits.cpu().double(), mean, atol=tol, rtol=tol)
    torch.testing.assert_close(got.topk_logp.cpu().double(), vals, atol=tol, rtol=tol)
    ref_lp = torch.log_softmax(logits.double().cpu() / 0.9, -1)
    ent = -(ref_lp.exp() * ref_lp).sum(-1) * (t.cpu() != -100)
    lss = torch.logsumexp(2 * ref_lp, -1) * (t.cpu() != -100)
    torch.testing.assert_close(got.entropy.cpu().double(), ent, atol=tol, rtol=tol)
    torch.testing.assert_close(got.log_sum_sq.cpu().double(), lss, atol=2 * tol, rtol=tol)
    srt = torch.sort(logits.double().cpu(), -1, descending=True).values
    gap = (srt[:, :k + 1] - srt[:, 1:k + 2]).min(-1).values > 2 * tol
    assert torch.equal(got.topk_ids.cpu()[gap], ids[gap])
    clear = (srt[:, 0] - srt[:, 1]) > 2 * tol
    assert torch.equal(got.is_top1.cpu()[clear], top1[clear])
    # log p and the entropy stay differentiable and equal linear_token_logprobs'.
    hidden.requires_grad_(True)
    s = pk.linear_token_stats(hidden, weight, t, entropy=True, is_top1=True, top_k=3)
    (s.logp.sum() + 0.1 * s.entropy.sum()).backward()
    g1 = hidden.grad.clone()
    hidden.grad = None
    lp, e = pk.linear_token_logprobs(hidden, weight, t, return_entropy=True)
    (lp.sum() + 0.1 * e.sum()).backward()
    assert torch.equal(g1, hidden.grad)
