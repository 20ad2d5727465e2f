"""CUDA-graph capture of the ops that claim to be capturable (docs/pytorch.md): the fused LM head
forward + backward, and token log-probs -> DPO loss -> backward, captured with torch.cuda.graph and
replayed on new inputs, equal to eager runs; the fused head under
torch.compile(mode="reduce-overhead"). GPU-only: skips without CUDA (the stand-in driver's capture
model covers the host path in CI: tests/gpu/backends.rs), fails instead under
PREF_KERNELS_REQUIRE_GPU=1."""
import os

import pytest
import torch

import pref_kernels as pk


def _cuda():
    if not torch.cuda.is_available():
        if os.environ.get("PREF_KERNELS_REQUIRE_GPU") == "1":
            pytest.fail("PREF_KERNELS_REQUIRE_GPU=1 but torch sees no CUDA device")
        pytest.skip("CUDA-graph capture needs a GPU (CI checks the host path with the stand-in driver)")
    return torch.device("cuda")


def _capture(step, warmups=2):
    """PyTorch's recipe: warm up on a side stream (a stream's first GEMM makes its cuBLAS handle),
    then capture one call of `step`; returns the graph and the captured outputs."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmups):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    return graph, out


def _head_inputs(gen, n, h, v, dev):
    hidden = (torch.randn(n, h, generator=gen) * 2).to(dev, torch.bfloat16)
    targets = torch.randint(0, v, (n,), generator=gen)
    targets[torch.rand(n, generator=gen) < 0.25] = -100
    return hidden, targets.to(dev)


def test_fused_head_forward_backward_captures_and_replays():
    dev = _cuda()
    gen = torch.Generator().manual_seed(0)
    n, h, v = 384, 256, 5000
    weight = (torch.randn(v, h, generator=gen) / h ** 0.5).to(dev, torch.bfloat16).requires_grad_()
    c1, c2 = torch.randn(n, generator=gen).to(dev), torch.randn(n, generator=gen).to(dev)
    hidden0, targets0 = _head_inputs(gen, n, h, v, dev)
    x = hidden0.clone().requires_grad_()
    t = targets0.clone()

    def step():
        x.grad = weight.grad = None
        logp, ent = pk.linear_token_logprobs(x, weight, t, return_entropy=True, workspace_bytes=1 << 20)
        loss = (logp * c1).sum() + (ent * c2).sum()
        loss.backward()
        return loss.detach(), x.grad, weight.grad

    graph, (loss_g, dx_g, dw_g) = _capture(step)
    previous = None
    for _ in range(2):
        hidden, targets = _head_inputs(gen, n, h, v, dev)
        with torch.no_grad():
            x.copy_(hidden)
            t.copy_(targets)
        graph.replay()
        xe, we = hidden.clone().requires_grad_(), weight.detach().clone().requires_grad_()
        logp, ent = pk.linear_token_logprobs(xe, we, targets, return_entropy=True, workspace_bytes=1 << 20)
        loss = (logp * c1).sum() + (ent * c2).sum()
        loss.backward()
        torch.cuda.synchronize()
        torch.testing.assert_close(loss_g, loss.detach(), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(dx_g, xe.grad)
        torch.testing.assert_close(dw_g, we.grad)
        if previous is not None:
            assert not torch.equal(previous, loss_g), "the replay recomputed from the new inputs"
        previous = loss_g.clone()


def test_token_logprobs_dpo_step_captures_and_replays():
    dev = _cuda()
    gen = torch.Generator().manual_seed(1)
    b, l, v = 4, 64, 3000
    logits = torch.randn(2 * b * l, v, generator=gen).to(dev, torch.bfloat16).requires_grad_()
    labels = torch.randint(0, v, (2 * b * l,), generator=gen).to(dev)
    labels.view(2 * b, l)[:, :8] = -100
    ref = (-torch.rand(2 * b * l, generator=gen) * 8).to(dev)

    def loss_of(z, y):
        logp = pk.token_logprobs(z, y)
        loss, _metrics = pk.dpo_loss(logp, y != -100, ref, n_seqs=2 * b, seq_len=l, beta=0.1)
        return loss

    def step():
        logits.grad = None
        loss = loss_of(logits, labels)
        loss.backward()
        return loss.detach(), logits.grad

    graph, (loss_g, grad_g) = _capture(step)
    for _ in range(2):
        z = torch.randn(2 * b * l, v, generator=gen).to(dev, torch.bfloat16)
        with torch.no_grad():
            logits.copy_(z)
        graph.replay()
        ze = z.clone().requires_grad_()
        loss = loss_of(ze, labels)
        loss.backward()
        torch.cuda.synchronize()
        torch.testing.assert_close(loss_g, loss.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad_g, ze.grad)


def test_fused_head_under_reduce_overhead_compile():
    dev = _cuda()
    gen = torch.Generator().manual_seed(2)
    n, h, v = 256, 128, 4000
    weight = (torch.randn(v, h, generator=gen) / h ** 0.5).to(dev, torch.bfloat16)

    def f(hidden, targets):
        return pk.linear_token_logprobs(hidden, weight, targets).sum()

    torch._dynamo.reset()
    compiled = torch.compile(f, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):
        hidden, targets = _head_inputs(gen, n, h, v, dev)
        got = compiled(hidden, targets).clone()
        torch.testing.assert_close(got, f(hidden, targets), rtol=1e-5, atol=1e-4)
