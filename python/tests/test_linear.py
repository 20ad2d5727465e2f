"""The fused LM head from PyTorch: log-probs / entropy of hidden @ weight.T (+ bias) and their
gradients against torch (f64 logits, autograd), and the whole DPO step from hidden states against
the chain torch log_softmax -> TRL's DPO loss, for workspaces of one pair per chunk and the whole
batch; bitwise run to run; bad input refused."""
import pytest
import torch
import torch.nn.functional as F

import pref_kernels as pk


def head(gen, n, h, v, dtype, device, bias=True):
    hidden = (torch.randn(n, h, generator=gen) * 2).to(dtype).to(device)
    weight = (torch.randn(v, h, generator=gen) / h ** 0.5).to(dtype).to(device)
    b = (torch.randn(v, generator=gen) * 0.3).to(device) if bias else None
    targets = torch.randint(0, v, (n,), generator=gen)
    targets[torch.rand(n, generator=gen) < 0.25] = -100
    return hidden, weight, b, targets.to(device)


def torch_logprobs(hidden, weight, bias, targets, temperature=1.0):
    logits = hidden.double() @ weight.double().T
    if bias is not None:
        logits = logits + bias.double()
    lsm = torch.log_softmax(logits / temperature, -1)
    keep = targets != -100
    logp = lsm.gather(1, targets.clamp(min=0)[:, None]).squeeze(1) * keep
    return logp, -(lsm.exp() * lsm).sum(-1) * keep


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 3e-2)])
def test_linear_logprobs_and_gradients(device, gen, dtype, tol):
    hidden, weight, bias, targets = head(gen, 29, 24, 150, dtype, device)
    row_bytes = (150 + 24) * (4 if dtype == torch.float32 else 2) + 56
    for workspace in (row_bytes, 7 * row_bytes, pk.DEFAULT_WORKSPACE_BYTES):
        x, w, b = (t.detach().clone().requires_grad_() for t in (hidden, weight, bias))
        logp, ent = pk.linear_token_logprobs(x, w, targets, bias=b, temperature=0.8, return_entropy=True,
                                             workspace_bytes=workspace)
        g1 = torch.randn(29, generator=gen).to(device)
        g2 = torch.randn(29, generator=gen).to(device)
        ((logp * g1).sum() + (ent * g2).sum()).backward()
        xr, wr, br = (t.detach().cpu().double().requires_grad_() for t in (hidden, weight, bias))
        want_lp, want_ent = torch_logprobs(xr.to(dtype).double(), wr, br, targets.cpu(), 0.8)
        ((want_lp * g1.cpu().double()).sum() + (want_ent * g2.cpu().double()).sum()).backward()
        torch.testing.assert_close(logp.cpu().double(), want_lp.detach(), atol=tol, rtol=0)
        torch.testing.assert_close(ent.cpu().double(), want_ent.detach(), atol=tol, rtol=0)
        assert x.grad.dtype == dtype and w.grad.dtype == dtype and b.grad.dtype == torch.float32
        gtol = 1e-4 if dtype == torch.float32 else 5e-2
        for got, want in ((x.grad, xr.grad), (w.grad, wr.grad), (b.grad, br.grad)):
            torch.testing.assert_close(got.cpu().double(), want, atol=gtol, rtol=gtol)


def trl_dpo(logp, ref, mask, n_seqs, seq_len, beta):
    s = (logp * mask).view(n_seqs, seq_len).sum(-1)
    r = (ref.double() * mask).view(n_seqs, seq_len).sum(-1)
    p = n_seqs // 2
    return -F.logsigmoid(beta * ((s[:p] - r[:p]) - (s[p:] - r[p:]))).mean()


def test_linear_dpo_step_equals_the_torch_chain(device, gen):
    pairs, seq_len, h, v = 3, 8, 16, 97
    n_seqs, n = 2 * pairs, 2 * pairs * seq_len
    hidden, weight, _, targets = head(gen, n, h, v, torch.float32, device, bias=False)
    targets.view(n_seqs, seq_len)[:, :2] = -100
    ref = (-torch.rand(n, generator=gen) * 5).to(device)
    row_bytes = (v + h) * 4 + 56
    results = []
    for workspace in (2 * seq_len * row_bytes, 5 * seq_len * row_bytes, pk.DEFAULT_WORKSPACE_BYTES):
        x, w = (t.detach().clone().requires_grad_() for t in (hidden, weight))
        loss, metrics = pk.linear_dpo_loss(x, w, targets, ref, n_seqs=n_seqs, seq_len=seq_len, beta=0.1,
                                           workspace_bytes=workspace)
        loss.backward()
        results.append((loss.detach(), metrics, x.grad, w.grad))
        xr, wr = (t.detach().cpu().double().requires_grad_() for t in (hidden, weight))
        lp, _ = torch_logprobs(xr, wr, None, targets.cpu())
        want = trl_dpo(lp, ref.cpu(), (targets.cpu() != -100).double(), n_seqs, seq_len, 0.1)
        want.backward()
        torch.testing.assert_close(loss.cpu().double(), want.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x.grad.cpu().double(), xr.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(w.grad.cpu().double(), wr.grad, atol=1e-5, rtol=1e-4)
        md = pk.metrics_dict(metrics)
        assert md["loss"] == pytest.approx(want.item(), abs=1e-5)
    # Bitwise run to run at a fixed workspace.
    x, w = (t.detach().clone().requires_grad_() for t in (hidden, weight))
    loss, _ = pk.linear_dpo_loss(x, w, targets, ref, n_seqs=n_seqs, seq_len=seq_len, beta=0.1)
    loss.backward()
    assert torch.equal(loss.detach(), results[-1][0]) and torch.equal(w.grad, results[-1][3])


def test_linear_bad_input(gen):
    hidden, weight, _, targets = head(gen, 6, 8, 20, torch.float32, "cpu", bias=False)
    with pytest.raises(ValueError, match=r"weight must be \[V, H\] with H = 8"):
        pk.linear_token_logprobs(hidden, weight[:, :4].contiguous(), targets)
    with pytest.raises(TypeError, match="share one dtype"):
        pk.linear_token_logprobs(hidden, weight.bfloat16(), targets)
    with pytest.raises(ValueError, match="weight must be contiguous"):
        pk.linear_token_logprobs(hidden, weight.t().contiguous().t(), targets)
    with pytest.raises(pk.PrefKernelsError, match="the minimum is"):
        pk.linear_token_logprobs(hidden, weight, targets, workspace_bytes=100)
    bad = targets.clone()
    bad[0] = 20
    with pytest.raises(pk.PrefKernelsError, match="target"):
        pk.linear_token_logprobs(hidden, weight, bad)


def test_opcheck_linear(gen):
    hidden, weight, bias, targets = head(gen, 5, 8, 12, torch.float32, "cpu")
    x, w, b = (t.detach().clone().requires_grad_() for t in (hidden, weight, bias))
    torch.library.opcheck(torch.ops.pref_kernels.linear_token_logprobs.default,
                          (x, w, b, targets, -100, 1.0, True, pk.DEFAULT_WORKSPACE_BYTES))
