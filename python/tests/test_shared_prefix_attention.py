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


def envelopes(q, k, v, do, mask, scale, rounding):
    """The f64 attention forward and backward with the mask, and derived per-element error bounds
    of the kernel's outputs. The kernel's products are exact (bf16/f16 into f32 mma) and its
    exponentials and sums f32 (~1e-6 relative); what rounds are P (to the input dtype before the
    P V and P^T dO mmas), dS (before dS K and dS^T Q), O (its output, which the backward's
    D = rowsum(dO o O) reads) and the outputs themselves, each by at most the unit roundoff r
    (half an ulp: 2^-8 bf16, 2^-11 f16) relative. Hence
      |dO_i|    <= r (P |V|)_i + r |O_i|              (weights rounded; l from f32 weights)
      |d dS_ij| <= r |dS_ij| + P_ij r (|dO_i| . |O_i|)  (own rounding; D from the rounded O)
      |d dV|    <= r (|P|^T |dO|) + r |dV|,  |d dK| <= scale (|d dS|^T |Q|) + r |dK|,
      |d dQ|    <= scale (|d dS| |K|) + r |dQ|,  summed over the query heads a K/V head serves.
    Returns (O, dQ, dK, dV) and their bounds, all [T, H, d] f64."""
    hq, hkv = q.shape[1], k.shape[1]
    rep = hq // hkv
    qd, kd, vd, dod = (x.double().transpose(0, 1) for x in (q, k, v, do))  # [H, T, d]
    kd, vd = kd.repeat_interleave(rep, 0), vd.repeat_interleave(rep, 0)
    s = (qd @ kd.transpose(1, 2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, -1)
    o = p @ vd
    dp = dod @ vd.transpose(1, 2)
    dd = (dod * o).sum(-1, keepdim=True)
    ds = p * (dp - dd)
    dq = (ds @ kd) * scale
    dk = (ds.transpose(1, 2) @ qd) * scale
    dv = p.transpose(1, 2) @ dod
    r = rounding
    o_err = r * (p @ vd.abs()) + r * o.abs() + 1e-6 * (p @ vd.abs())
    dd_err = r * (dod.abs() * o.abs()).sum(-1, keepdim=True)
    ds_err = r * ds.abs() + p * dd_err + 1e-6 * p * (dp.abs() + dd.abs())
    dq_err = (ds_err @ kd.abs()) * scale + r * dq.abs()
    dk_err = (ds_err.transpose(1, 2) @ qd.abs()) * scale
    dv_err = (r + 1e-6) * (p.transpose(1, 2) @ dod.abs())

    def per_kv(x):  # sum the query heads of each K/V head
        return x.reshape(hkv, rep, *x.shape[1:]).sum(1)
    dk, dv, dk_err, dv_err = per_kv(dk), per_kv(dv), per_kv(dk_err), per_kv(dv_err)
    dk_err, dv_err = dk_err + r * dk.abs(), dv_err + r * dv.abs()
    back = lambda x: x.transpose(0, 1)  # noqa: E731
    return [back(x) for x in (o, dq, dk, dv)], [back(x) for x in (o_err, dq_err, dk_err, dv_err)]


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
    assert o.dtype == dtype and o.shape == q.shape
    # SDPA (f32) agrees with the f64 reference the bounds come from.
    want, bound = envelopes(q.cpu(), k.cpu(), v.cpu(), do.cpu(), mask, d ** -0.5,
                            2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11)
    torch.testing.assert_close(ref.double(), want[0], atol=1e-5, rtol=1e-5)
    for name, got, w, b in zip(("O", "dQ", "dK", "dV"), (o, qx.grad, kx.grad, vx.grad), want, bound):
        err = (got.detach().cpu().double() - w).abs()
        assert (err <= b + 1e-6).all(), f"{name}: worst excess {(err - b).max().item():.3g} over the derived bound"


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
