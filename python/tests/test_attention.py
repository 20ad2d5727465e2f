"""Shared-prefix group attention against torch's scaled_dot_product_attention with the explicit
shared-prefix mask (f32 math on the same bf16/f16 inputs), forward and backward, GQA."""
import pytest
import torch
import torch.nn.functional as F

import pref_kernels as pk


def mask_of(groups):
    """allowed[i, j]: same group, j <= i, and j in the prefix or in i's own response."""
    seg, grp = [], []
    for g, (p, rs) in enumerate(groups):
        seg += [0] * p
        grp += [g] * p
        for k, r in enumerate(rs):
            seg += [k + 1] * r
            grp += [g] * r
    seg, grp = torch.tensor(seg), torch.tensor(grp)
    t = len(seg)
    i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
    return (grp[:, None] == grp[None, :]) & (j <= i) & ((seg[None, :] == 0) | (seg[None, :] == seg[:, None]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matches_sdpa_with_explicit_mask(device, gen, dtype):
    groups = [(13, [7, 0, 9]), (4, [16])]
    hq, hkv, d = 4, 2, 64
    layout = pk.prefix_layout(groups, device)
    t = layout[2]
    q, k, v, do = (torch.randn(t, h, d, generator=gen).to(dtype).to(device) for h in (hq, hkv, hkv, hq))
    qx, kx, vx = (x.detach().clone().requires_grad_() for x in (q, k, v))
    o = pk.shared_prefix_attention(qx, kx, vx, layout)
    o.backward(do)
    qr, kr, vr = (x.detach().cpu().float().requires_grad_() for x in (q, k, v))
    rep = hq // hkv
    mask = mask_of(groups)
    ref = F.scaled_dot_product_attention(qr.transpose(0, 1), kr.repeat_interleave(rep, 1).transpose(0, 1),
                                         vr.repeat_interleave(rep, 1).transpose(0, 1), attn_mask=mask).transpose(0, 1)
    ref.backward(do.cpu().float())
    tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
    assert o.dtype == dtype and o.shape == q.shape
    torch.testing.assert_close(o.cpu().float(), ref, atol=tol, rtol=0)
    for got, want in ((qx.grad, qr.grad), (kx.grad, kr.grad), (vx.grad, vr.grad)):
        torch.testing.assert_close(got.cpu().float(), want, atol=2 * tol, rtol=0)


def test_opcheck_attention(gen):
    layout = pk.prefix_layout([(5, [3, 4])], "cpu")
    t = layout[2]
    q = torch.randn(t, 2, 64, generator=gen).bfloat16().requires_grad_()
    k = torch.randn(t, 1, 64, generator=gen).bfloat16().requires_grad_()
    v = torch.randn(t, 1, 64, generator=gen).bfloat16().requires_grad_()
    # Autograd through a bf16 op is checked against itself (no numerical gradcheck in bf16).
    torch.library.opcheck(torch.ops.pref_kernels.shared_prefix_attention.default,
                          (q, k, v, layout[0], layout[1], layout[3], 0.125),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))
