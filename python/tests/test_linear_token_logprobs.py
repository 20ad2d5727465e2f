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


def torch_logprobs_with_logits(hidden, weight, bias, targets, temperature):
    """torch_logprobs, also returning the f64 logits (their .grad is d/dlogits after backward)."""
    logits = hidden.double() @ weight.double().T
    if bias is not None:
        logits = logits + bias.double()
    logits.retain_grad()
    lsm = torch.log_softmax(logits / temperature, -1)
    keep = targets != -100
    logp = lsm.gather(1, targets.clamp(min=0)[:, None]).squeeze(1) * keep
    return logp, -(lsm.exp() * lsm).sum(-1) * keep, logits


@pytest.mark.parametrize("skip_ignored_rows", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_token_logprobs_and_gradients(device, gen, dtype, skip_ignored_rows):
    """Tolerances derived per row from the data (the reference is f64 on the same rounded hidden
    states and weight): the chunk logits z are the GEMM's f32 sums rounded once to the compute
    dtype, |dz_v| <= r |z_v| with r = 2^-8 for bf16 (its unit roundoff) (f32: the GEMM's own H u sum, ~1e-6 here), so
    |d logp| <= 2 r max|z| / T and |dH| <= 2 H r max|z| / T (dH/dz_v = -p_v (ln p_v + H) / T, and
    sum p |ln p + H| <= 2H), plus the softmax row's own f32 error (2e-5, see test_token_logprobs).
    Gradients: d/dlogits then carries r max|z| / T relative (p's error) plus its own rounding r', the
    GEMMs sum |g_v| |w_v| of those, and the output rounds once more: bounds formed from the
    reference's |G| @ |W| and |G|^T @ |X|."""
    hidden, weight, bias, targets = head(gen, 29, 24, 150, dtype, device)
    r = 2.0 ** -8 if dtype == torch.bfloat16 else 1e-6
    out_round = 2.0 ** -8 if dtype == torch.bfloat16 else 1e-6
    row_bytes = pk.linear_workspace_bytes(24, 150, dtype)
    for workspace in (row_bytes, 7 * row_bytes, pk.DEFAULT_WORKSPACE_BYTES):
        x, w, b = (t.detach().clone().requires_grad_() for t in (hidden, weight, bias))
        logp, ent = pk.linear_token_logprobs(x, w, targets, bias=b, temperature=0.8, return_entropy=True,
                                             workspace_bytes=workspace, skip_ignored_rows=skip_ignored_rows)
        g1 = torch.randn(29, generator=gen).to(device)
        g2 = torch.randn(29, generator=gen).to(device)
        ((logp * g1).sum() + (ent * g2).sum()).backward()
        xr, wr, br = (t.detach().cpu().double().requires_grad_() for t in (hidden, weight, bias))
        want_lp, want_ent, z = torch_logprobs_with_logits(xr.to(dtype).double(), wr, br, targets.cpu(), 0.8)
        ((want_lp * g1.cpu().double()).sum() + (want_ent * g2.cpu().double()).sum()).backward()
        zmax = z.detach().abs().amax(-1) / 0.8
        lp_tol = 2 * r * zmax + 2e-5
        ent_tol = 2 * r * zmax * want_ent.detach().abs() + 2e-5
        assert ((logp.cpu().double() - want_lp.detach()).abs() <= lp_tol).all()
        assert ((ent.cpu().double() - want_ent.detach()).abs() <= ent_tol).all()
        assert x.grad.dtype == dtype and w.grad.dtype == dtype and b.grad.dtype == torch.float32
        # Envelope of d/dlogits: (|g| (p_v + [v = t]) + |gH| p_v (|ln p_v| + H + 2)) / T bounds each
        # entry's sensitivity to the relative error of p (2 r max|z| / T) and to its own rounding.
        lsm = torch.log_softmax(z.detach() / 0.8, -1)
        pv = lsm.exp()
        onehot = torch.zeros_like(pv)
        keep = targets.cpu() != -100
        onehot[keep, targets.cpu()[keep]] = 1.0
        g1a, g2a = g1.cpu().double().abs()[:, None], g2.cpu().double().abs()[:, None]
        env = (g1a * (pv + onehot) + g2a * pv * (lsm.abs() + want_ent.detach()[:, None] + 2)) / 0.8 * keep[:, None]
        g_abs = env * (2 * r * zmax[:, None] + out_round + 1e-5)
        bounds = (g_abs @ wr.detach().abs(), g_abs.T @ xr.detach().abs(), g_abs.sum(0))
        for got, want, bound, final in ((x.grad, xr.grad, bounds[0], out_round), (w.grad, wr.grad, bounds[1], out_round),
                                        (b.grad, br.grad, bounds[2], 1e-6)):
            err = (got.cpu().double() - want).abs()
            assert (err <= bound + final * want.abs() + 1e-7).all(), (err - bound - final * want.abs()).max()


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


@pytest.mark.parametrize("loss_type,level", [("dapo", "token"), ("grpo", "sequence"), ("dr_grpo", "token")])
def test_linear_grpo_step_equals_the_four_gemm_chain(device, gen, loss_type, level):
    """The one-call GRPO step (3 GEMMs per counted token) against the fused head's forward, the
    GRPO loss and autograd's backward through the head (4 GEMMs): loss, every metric, log-probs,
    entropies and the gradients of hidden, weight and bias, in TRL's [B, T] layout with an integer
    completion mask, in several chunks and in one; bitwise run to run."""
    b, t, h, v = 4, 9, 16, 61
    hidden, weight, bias, targets = head(gen, b * t, h, v, torch.float32, device)
    hidden, targets = hidden.view(b, t, h), targets.view(b, t)
    mask = (torch.rand(b, t, generator=gen) > 0.2).long().to(device)
    mask[2] = 0  # a sequence with nothing to count
    old = (-torch.rand(b, t, generator=gen) * 4).to(device)
    ref = (-torch.rand(b, t, generator=gen) * 4).to(device)
    adv = torch.randn(b, generator=gen).to(device)
    kw = dict(loss_type=loss_type, importance_sampling_level=level, beta=0.04, entropy_coef=0.01,
              max_completion_length=t)
    row_bytes = (v + h) * 4 + 56
    results = []
    for workspace in (t * row_bytes, pk.DEFAULT_WORKSPACE_BYTES):
        x, w, bb = (z.detach().clone().requires_grad_() for z in (hidden, weight, bias))
        loss, metrics, logp, ent = pk.linear_grpo_loss(x, w, targets, adv, mask, old, ref, bias=bb,
                                                       compute_entropy=True, workspace_bytes=workspace, **kw)
        loss.backward()
        results.append((loss.detach(), metrics, x.grad, w.grad))
        xr, wr, br = (z.detach().clone().requires_grad_() for z in (hidden, weight, bias))
        lp, en = pk.linear_token_logprobs(xr, wr, targets, bias=br, return_entropy=True)
        counted = (mask != 0) & (targets != -100)
        want, want_metrics = pk.grpo_loss(lp, adv, counted, old, ref, entropy=en, **kw)
        want.backward()
        torch.testing.assert_close(loss.detach(), want.detach(), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(metrics, want_metrics, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(logp, lp.detach() * counted, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ent, en.detach() * counted, atol=1e-5, rtol=1e-5)
        for got, ref_grad in ((x.grad, xr.grad), (w.grad, wr.grad), (bb.grad, br.grad)):
            torch.testing.assert_close(got, ref_grad, atol=1e-5, rtol=1e-4)
    x, w, bb = (z.detach().clone().requires_grad_() for z in (hidden, weight, bias))
    loss, metrics, _, _ = pk.linear_grpo_loss(x, w, targets, adv, mask, old, ref, bias=bb, compute_entropy=True,
                                              **kw)
    loss.backward()
    assert torch.equal(loss.detach(), results[-1][0]) and torch.equal(w.grad, results[-1][3])


def test_linear_grpo_refusals(gen):
    hidden, weight, _, targets = head(gen, 8, 8, 20, torch.float32, "cpu", bias=False)
    adv = torch.randn(2, generator=gen)
    with pytest.raises(pk.PrefKernelsError, match="compute_entropy"):
        pk.linear_grpo_loss(hidden, weight, targets, adv, n_seqs=2, seq_len=4, entropy_coef=0.1)
    with pytest.raises(pk.PrefKernelsError, match="is_weights"):
        pk.linear_grpo_loss(hidden, weight, targets, adv, n_seqs=2, seq_len=4, loss_type="vespo",
                            vllm_is_weights=torch.ones(8))
    with pytest.raises(ValueError, match="n_seqs"):
        pk.linear_grpo_loss(hidden, weight, targets, adv)


def test_opcheck_linear_grpo(gen):
    hidden, weight, bias, targets = head(gen, 6, 8, 12, torch.float32, "cpu")
    x, w, b = (t.detach().clone().requires_grad_() for t in (hidden, weight, bias))
    adv = torch.randn(2, generator=gen)
    torch.library.opcheck(torch.ops.pref_kernels.linear_grpo_step.default,
                          (x, w, b, targets, None, None, None, None, None, adv, None, 2, 3, 3, 0, 0.2, 0.2, 0.0,
                           0.0, True, 0.0, 1.0, 0.0, 1.0, 1.05, 1, float("nan"), 2.0, 3.0, 3.0, 2.0, False, -100, 1.0,
                           pk.DEFAULT_WORKSPACE_BYTES))
