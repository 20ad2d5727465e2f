"""torch.compile of a small DPO training step that uses the ops (LM head -> token log-probs ->
DPO loss, and shared-prefix attention): fullgraph=True, so a graph break is an error; the compiled
step's loss, metrics and gradients equal eager mode's."""
import pytest
import torch

import pref_kernels as pk


def make(gen, device):
    pairs, seq_len, h, v = 2, 8, 16, 53
    n_seqs, n = 2 * pairs, 2 * pairs * seq_len
    head = torch.nn.Linear(h, v, bias=False).to(device)
    with torch.no_grad():
        head.weight.copy_(torch.randn(v, h, generator=gen) * 0.3)
    hidden = torch.randn(n, h, generator=gen).to(device)
    targets = torch.randint(0, v, (n,), generator=gen)
    targets.view(n_seqs, seq_len)[:, :3] = -100
    targets = targets.to(device)
    ref = (-torch.rand(n, generator=gen) * 4).to(device)
    return head, hidden, targets, ref, n_seqs, seq_len


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_dpo_step_equals_eager(device, gen, backend):
    head, hidden, targets, ref, n_seqs, seq_len = make(gen, device)

    def step(hidden, targets, ref):
        logp, entropy = pk.token_logprobs(head(hidden), targets, return_entropy=True)
        loss, metrics = pk.dpo_loss(logp, targets != -100, ref, n_seqs=n_seqs, seq_len=seq_len, beta=0.1)
        return loss - 0.01 * entropy.mean(), metrics

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    loss_c, metrics_c = compiled(hidden, targets, ref)
    loss_c.backward()
    grad_c = head.weight.grad.clone()
    head.weight.grad = None
    loss_e, metrics_e = step(hidden, targets, ref)
    loss_e.backward()
    torch.testing.assert_close(loss_c, loss_e, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(metrics_c, metrics_e, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad_c, head.weight.grad, atol=1e-6, rtol=1e-5)


def test_compiled_attention_has_no_graph_break(device, gen):
    layout = pk.prefix_layout([(6, [5, 3])], device)
    t = layout[2]
    q = torch.randn(t, 2, 64, generator=gen).bfloat16().to(device).requires_grad_()
    k = torch.randn(t, 1, 64, generator=gen).bfloat16().to(device).requires_grad_()
    v = torch.randn(t, 1, 64, generator=gen).bfloat16().to(device).requires_grad_()

    def f(q, k, v):
        return pk.shared_prefix_attention(q, k, v, layout).float().square().sum()

    torch._dynamo.reset()
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v)
    out.backward()
    want = f(q.detach(), k.detach(), v.detach())
    torch.testing.assert_close(out.detach(), want, atol=0, rtol=0)
    assert q.grad is not None and torch.isfinite(q.grad.float()).all()


def test_graph_unsafe_ops_are_tagged_and_the_others_are_not():
    """CUDA graphs (torch.compile mode="reduce-overhead") must leave out the ops that read back to the
    host or allocate outside torch's allocator, and may capture the rest: the tag says which."""
    import pref_kernels.ops as ops
    tag = getattr(torch.Tag, "cudagraph_unsafe", None)
    if tag is None:
        pytest.skip("this torch has no cudagraph_unsafe tag")
    for name in ops.GRAPH_UNSAFE_OPS:
        assert tag in getattr(torch.ops.pref_kernels, name).default.tags, name
    for name in ("token_logprobs", "token_logprobs_backward", "preference_loss", "grpo_loss",
                 "shared_prefix_attention", "shared_prefix_attention_backward", "seq_reduce", "token_stats",
                 "linear_token_logprobs", "linear_token_logprobs_backward"):
        assert tag not in getattr(torch.ops.pref_kernels, name).default.tags, name
