"""PyTorch bindings of pref-kernels through its C ABI (include/prefk.h), with ctypes.

Build the shared library with `cargo build --release` (target/release/libpref_kernels.so) or set
PREF_KERNELS_LIB. Tensors stay where they are: the kernels get `data_ptr()` values and run on
`torch.cuda.current_stream()`, so no copies and no extra synchronization.

    from pref_kernels_torch import token_logprobs, preference_loss, shared_prefix_attention
"""
import ctypes
import os

import torch

_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_INDEX = {torch.int32: 0, torch.int64: 1}
_u64, _i64, _i32, _u32, _f32 = ctypes.c_uint64, ctypes.c_int64, ctypes.c_int32, ctypes.c_uint32, ctypes.c_float


class PrefkLossTerm(ctypes.Structure):
    _fields_ = [("kind", _u32), ("weight", _f32), ("beta", _f32), ("p0", _f32), ("p1", _f32), ("flags", _u32)]


# PREFK_LOSS_* codes of kernels/params.h
LOSS_KINDS = {
    "sigmoid": 0, "robust": 1, "hinge": 2, "ipo": 3, "exo_pair": 4, "nca_pair": 5, "bco_pair": 6,
    "sppo_hard": 7, "apo_zero": 8, "apo_down": 9, "discopop": 10, "simpo": 11, "cpo": 12, "orpo": 13,
    "tgdpo": 14, "tabpo": 15, "nll": 16,
}
METRIC_NAMES = [
    "loss", "loss/pref", "nll_loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
    "rewards/accuracies", "logps/chosen", "logps/rejected", "loss/barrier", "barrier/active_pct", "pref/p_pref",
]

_SIGNATURES = {
    "prefk_init": [_i32],
    "prefk_token_logprobs_forward": [_i32, _u64, _u32, _u32] + [_u64] * 6 + [_i64] * 4 + [_f32],
    "prefk_token_logprobs_backward": [_i32, _u64, _u32, _u32] + [_u64] * 6 + [_i64] * 5 + [_f32],
    "prefk_preference_loss": [_i32, _u64] + [_u64] * 5 + [_i64, _u64, _i64, _i64, _u64, _u64, _i64,
                                                         ctypes.POINTER(PrefkLossTerm), _u32, _u32, _f32, _u32, _f32]
    + [_u64] * 5,
    "prefk_prefix_layout": [ctypes.POINTER(_i64)] * 3 + [_i64, ctypes.POINTER(_i64), ctypes.POINTER(_i64),
                                                          ctypes.POINTER(_i32), ctypes.POINTER(_i32)],
    "prefk_prefix_attn_forward": [_i32, _u64, _u32] + [_u64] * 7 + [_i64, _i64, _i32, _i32, _i32, _f32],
    "prefk_prefix_attn_backward": [_i32, _u64, _u32] + [_u64] * 12 + [_i64, _i64, _i32, _i32, _i32, _f32],
}


def _load():
    path = os.environ.get("PREF_KERNELS_LIB")
    if not path:
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, "..", "target", "release", "libpref_kernels.so")
    lib = ctypes.CDLL(path)
    lib.prefk_last_error.restype = ctypes.c_char_p
    lib.prefk_preference_loss_workspace_len.argtypes = [_i64, _i64]
    lib.prefk_preference_loss_workspace_len.restype = _i64
    for name, args in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = _i32
    return lib


_lib = None


def lib():
    global _lib
    if _lib is None:
        _lib = _load()
    return _lib


def _call(name, *args):
    rc = getattr(lib(), name)(*args)
    if rc != 0:
        raise RuntimeError(f"{name}: {lib().prefk_last_error().decode()}")


def _stream(t):
    return torch.cuda.current_stream(t.device).cuda_stream


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index, temperature, inplace_backward):
        assert logits.dim() == 2 and logits.stride(1) == 1, "logits must be [N, V] with contiguous rows"
        n, v = logits.shape
        logp = torch.empty(n, device=logits.device, dtype=torch.float32)
        lse = torch.empty_like(logp)
        targets = targets.contiguous()
        _call("prefk_token_logprobs_forward", logits.device.index, _stream(logits), _DTYPES[logits.dtype],
              _INDEX[targets.dtype], logits.data_ptr(), targets.data_ptr(), logp.data_ptr(), lse.data_ptr(), 0, 0,
              n, v, logits.stride(0), ignore_index, temperature)
        ctx.save_for_backward(logits, targets, lse)
        ctx.args = (ignore_index, temperature, inplace_backward)
        return logp

    @staticmethod
    def backward(ctx, grad_logp):
        logits, targets, lse = ctx.saved_tensors
        ignore_index, temperature, inplace = ctx.args
        grad = logits if inplace else torch.empty_like(logits)
        grad_logp = grad_logp.float().contiguous()
        n, v = logits.shape
        _call("prefk_token_logprobs_backward", logits.device.index, _stream(logits), _DTYPES[logits.dtype],
              _INDEX[targets.dtype], logits.data_ptr(), targets.data_ptr(), lse.data_ptr(), grad_logp.data_ptr(),
              grad.data_ptr(), 0, n, v, logits.stride(0), grad.stride(0), ignore_index, temperature)
        return grad, None, None, None, None


def token_logprobs(logits, targets, ignore_index=-100, temperature=1.0, inplace_backward=False):
    """Per-row log p(target) (f32) of logits [N, V]; differentiable. `inplace_backward` writes
    d/dlogits over the logits (only when nothing else needs them)."""
    return _TokenLogprobs.apply(logits, targets, ignore_index, temperature, inplace_backward)


def preference_loss(logp, mask, ref_logp, n_seqs, seq_len, terms, weights=None, aggregation=0, grad_scale=1.0):
    """The fused loss on per-token log-probs of a padded [n_seqs, seq_len] batch (first half
    chosen). `terms`: list of (kind name, weight, beta, p0, p1, flags). Returns (metrics dict,
    grad_logp)."""
    arr = (PrefkLossTerm * len(terms))(*[PrefkLossTerm(LOSS_KINDS[k], w, b, p0, p1, f) for k, w, b, p0, p1, f in terms])
    n_pairs = n_seqs // 2
    metrics = torch.empty(16, device=logp.device, dtype=torch.float32)
    grad = torch.empty_like(logp)
    work = torch.empty(lib().prefk_preference_loss_workspace_len(n_seqs, n_pairs), device=logp.device, dtype=torch.float32)
    ptr = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
    _call("prefk_preference_loss", logp.device.index, _stream(logp), logp.data_ptr(), ptr(mask), ptr(weights),
          ptr(ref_logp), 0, logp.numel(), 0, n_seqs, seq_len, 0, 0, n_pairs, arr, len(terms), 0, 0.0, aggregation,
          grad_scale, 0, metrics.data_ptr(), grad.data_ptr(), work.data_ptr(), 0)
    return metrics, grad


def prefix_layout(groups, device):
    """groups: list of (prefix_len, [response lengths]). Returns (tiles, seg_lo2, n_tokens, n_tiles)."""
    pl = (_i64 * len(groups))(*[g[0] for g in groups])
    rc = (_i64 * len(groups))(*[len(g[1]) for g in groups])
    flat = [r for g in groups for r in g[1]]
    rl = (_i64 * max(1, len(flat)))(*flat)
    nt, ntiles = _i64(), _i64()
    _call("prefk_prefix_layout", pl, rc, rl, len(groups), ctypes.byref(nt), ctypes.byref(ntiles), None, None)
    tiles = (_i32 * (8 * ntiles.value))()
    lo2 = (_i32 * nt.value)()
    _call("prefk_prefix_layout", pl, rc, rl, len(groups), ctypes.byref(nt), ctypes.byref(ntiles), tiles, lo2)
    as_t = lambda a: torch.tensor(list(a), dtype=torch.int32, device=device)  # noqa: E731
    return as_t(tiles), as_t(lo2), nt.value, ntiles.value


class _SharedPrefixAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, tiles, seg_lo2, n_tiles, scale):
        t, hq, d = q.shape
        hkv = k.shape[1]
        o = torch.empty_like(q)
        lse = torch.empty(hq, t, device=q.device, dtype=torch.float32)
        _call("prefk_prefix_attn_forward", q.device.index, _stream(q), _DTYPES[q.dtype], q.data_ptr(), k.data_ptr(),
              v.data_ptr(), o.data_ptr(), lse.data_ptr(), tiles.data_ptr(), seg_lo2.data_ptr(), n_tiles, t, hq, hkv,
              d, scale)
        ctx.save_for_backward(q, k, v, o, lse, tiles, seg_lo2)
        ctx.args = (n_tiles, scale)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, tiles, seg_lo2 = ctx.saved_tensors
        n_tiles, scale = ctx.args
        t, hq, d = q.shape
        do = do.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        delta = torch.empty(hq, t, device=q.device, dtype=torch.float32)
        _call("prefk_prefix_attn_backward", q.device.index, _stream(q), _DTYPES[q.dtype], q.data_ptr(), k.data_ptr(),
              v.data_ptr(), o.data_ptr(), lse.data_ptr(), do.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
              delta.data_ptr(), tiles.data_ptr(), seg_lo2.data_ptr(), n_tiles, t, hq, k.shape[1], d, scale)
        return dq, dk, dv, None, None, None, None


def shared_prefix_attention(q, k, v, layout, scale=None):
    """q [T, Hq, d], k/v [T, Hkv, d] (contiguous, bf16/f16) packed [prefix | r_1 | ... | r_G] per
    group; `layout` from prefix_layout(). Returns O [T, Hq, d]; differentiable."""
    tiles, seg_lo2, n_tokens, n_tiles = layout
    assert q.shape[0] == n_tokens
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    return _SharedPrefixAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), tiles, seg_lo2, n_tiles, scale)
