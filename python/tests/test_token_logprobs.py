"""Token log-probs and entropy against torch's own log_softmax + gather (and its autograd), per
dtype, with temperature, ignore_index, a row stride and int32 targets; opcheck of the custom ops;
a finite-difference gradcheck in f32 (the kernels take f32/f16/bf16, not f64)."""
import pytest
import torch

import pref_kernels as pk

# Tolerances, derived (the reference is f64 torch on the very same rounded logits, so input
# rounding cancels and only the kernels' f32 arithmetic remains):
# - logp / entropy, every dtype, absolute: logp = (x_t - m)/T - ln2 log2(s). s sums V terms 2^d,
#   d = (x - m) log2(e)/T carrying |d| 2^-23 absolute error (|d| <= ~45 at logits ~N(0, 16), T 0.7),
#   each exp2f within 2 ulp and log2f within 1 ulp on a GPU (CUDA programming guide, single-precision
#   function table; the emulator's libm is closer), and the f32 sum adds <= (V/256 + 8) ulp: ln s is
#   within ~3e-6 and (x_t - m)/T within 45 * 2^-24; entropy's t/s term is of the same size.
#   Bound ~5e-6; observed 1.3e-6 (f32, f16, bf16 alike). 2e-5 = 4x the bound.
# - d/dlogits, relative per entry: the output dtype's rounding, half an ulp = 2^-8 (bf16), 2^-11
#   (f16); f32: p_v = 2^(d - log2 s) to ln2 (|d| + |log2 s|) 2^-23 + 2 ulp ~ 3e-6 (observed 5.7e-6
#   with the entropy term's p (ln p + H)), 1e-5; the f16/bf16 bounds add that 1e-5 too (the f32
#   value rounded is itself that close). Plus 1e-6 absolute for entries where the entropy term
#   cancels (ln p ~ -H), where only the ~3e-6 absolute error of ln p + H times p remains.
FWD_TOL = 2e-5
GRAD_RTOL = {torch.float32: 1e-5, torch.float16: 2.0 ** -11 + 1e-5, torch.bfloat16: 2.0 ** -8 + 1e-5}
GRAD_ATOL = 1e-6


def torch_reference(logits, targets, ignore_index, temperature):
    """f64 log p(target) and entropy as TRL computes them (selective_log_softmax,
    entropy_from_logits), with ignored rows zeroed as the kernels give them."""
    lsm = torch.log_softmax(logits.double() / temperature, -1)
    keep = targets != ignore_index
    logp = lsm.gather(1, targets.clamp(min=0).long()[:, None]).squeeze(1) * keep
    entropy = -(lsm.exp() * lsm).sum(-1) * keep
    return logp, entropy


def problem(gen, n, v, dtype, device, index_dtype=torch.int64, stride_pad=0):
    wide = torch.randn(n, v + stride_pad, generator=gen) * 4
    logits = wide.to(dtype).to(device)[:, :v]  # a row stride when stride_pad > 0
    targets = torch.randint(0, v, (n,), generator=gen)
    targets[torch.rand(n, generator=gen) < 0.25] = -100
    return logits, targets.to(index_dtype).to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_forward_matches_log_softmax_gather(device, gen, dtype, temperature):
    logits, targets = problem(gen, 37, 301, dtype, device, stride_pad=5)
    assert logits.stride(0) == 306
    logp, entropy = pk.token_logprobs(logits, targets, temperature=temperature, return_entropy=True)
    want_logp, want_ent = torch_reference(logits.cpu(), targets.cpu(), -100, temperature)
    tol = FWD_TOL
    assert logp.dtype == torch.float32 and logp.shape == (37,) and not torch.isnan(logp).any()
    torch.testing.assert_close(logp.cpu().double(), want_logp, atol=tol, rtol=0)
    torch.testing.assert_close(entropy.cpu().double(), want_ent, atol=tol, rtol=0)
    assert (logp.cpu()[targets.cpu() == -100] == 0).all()


def test_int32_targets_and_custom_ignore_index(device, gen, monkeypatch):
    monkeypatch.setenv("PREF_KERNELS_CHECK", "1")  # read the status word on CUDA too
    logits, targets = problem(gen, 20, 64, torch.float32, device, index_dtype=torch.int32)
    targets[3] = 7  # ignore_index 7 below
    # -100 is an ordinary (out-of-range) target when ignore_index is 7: refused with the crate's message.
    with pytest.raises(pk.PrefKernelsError, match="outside \\[0, vocab\\)"):
        pk.token_logprobs(logits, targets, ignore_index=7)
    targets[targets == -100] = 7
    logp = pk.token_logprobs(logits, targets, ignore_index=7)
    want, _ = torch_reference(logits.cpu(), targets.cpu().long(), 7, 1.0)
    torch.testing.assert_close(logp.cpu().double(), want, atol=2e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_matches_autograd_with_entropy(device, gen, dtype):
    logits, targets = problem(gen, 29, 203, dtype, device)
    g_logp = torch.randn(29, generator=gen).to(device)
    g_ent = torch.randn(29, generator=gen).to(device)
    x = logits.detach().clone().requires_grad_()
    logp, ent = pk.token_logprobs(x, targets, temperature=0.8, return_entropy=True)
    ((logp * g_logp).sum() + (ent * g_ent).sum()).backward()
    xr = logits.detach().cpu().double().requires_grad_()
    wl, we = torch_reference(xr, targets.cpu(), -100, 0.8)
    ((wl * g_logp.cpu().double()).sum() + (we * g_ent.cpu().double()).sum()).backward()
    assert x.grad.dtype == dtype and x.grad.shape == logits.shape
    torch.testing.assert_close(x.grad.cpu().double(), xr.grad, atol=GRAD_ATOL, rtol=GRAD_RTOL[dtype])


def test_gradcheck_f32(gen):
    logits, targets = problem(gen, 4, 9, torch.float32, "cpu")
    x = logits.detach().clone().requires_grad_()

    def f(z):
        logp, ent = pk.token_logprobs(z, targets, temperature=0.9, return_entropy=True)
        return logp * 1.5 + ent * 0.5
    assert torch.autograd.gradcheck(f, (x,), eps=1e-2, atol=2e-3, rtol=2e-2)


def test_opcheck(gen):
    logits, targets = problem(gen, 6, 17, torch.float32, "cpu")
    x = logits.detach().clone().requires_grad_()
    torch.library.opcheck(torch.ops.pref_kernels.token_logprobs.default, (x, targets, -100, 1.0, True))
    torch.library.opcheck(torch.ops.pref_kernels.token_logprobs.default, (x, targets, -100, 0.5, False))


def test_bitwise_deterministic_and_row_independent(device, gen):
    logits, targets = problem(gen, 16, 500, torch.bfloat16, device)
    a = pk.token_logprobs(logits, targets)
    b = pk.token_logprobs(logits, targets)
    assert torch.equal(a, b)
    # Row 5 alone gives the same bits as inside the batch.
    c = pk.token_logprobs(logits[5:6].contiguous(), targets[5:6].contiguous())
    assert torch.equal(a[5:6], c)


def test_empty_batch(device):
    logp = pk.token_logprobs(torch.empty(0, 10, device=device), torch.empty(0, dtype=torch.long, device=device))
    assert logp.shape == (0,)


def test_lse_and_log_sum_sq_outputs(device, gen):
    """The extra outputs a user reaches without torch.ops: logsumexp(logits / T) and log sum p^2
    (WPO), against f64 torch on the same rounded inputs (same derivation as FWD_TOL)."""
    logits, targets = problem(gen, 23, 157, torch.bfloat16, device)
    logp, ent, lse, lss = pk.token_logprobs(logits, targets, temperature=0.7, return_entropy=True, return_lse=True,
                                            return_log_sum_sq=True)
    lsm = torch.log_softmax(logits.cpu().double() / 0.7, -1)
    keep = targets.cpu() != -100
    torch.testing.assert_close(lse.cpu().double(), torch.logsumexp(logits.cpu().double() / 0.7, -1) * keep,
                               atol=FWD_TOL, rtol=0)
    torch.testing.assert_close(lss.cpu().double(), torch.logsumexp(2 * lsm, -1) * keep, atol=2 * FWD_TOL, rtol=0)
    only = pk.token_logprobs(logits, targets, temperature=0.7, return_log_sum_sq=True)
    assert len(only) == 2 and torch.equal(only[1], lss) and torch.equal(only[0], logp)
