"""The crate's C ABI (include/prefk.h) through ctypes: finding the shared library, the entry points'
signatures, errors, and the tensor plumbing every op shares (device code, stream, pointers, and the
emulator registration of CPU tensors)."""
import contextlib
import ctypes
import os
import threading

import torch

_u64, _i64, _i32, _u32, _f32 = ctypes.c_uint64, ctypes.c_int64, ctypes.c_int32, ctypes.c_uint32, ctypes.c_float

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
INDEX_CODES = {torch.int32: 0, torch.int64: 1}
DEVICE_EMULATOR = -1


class PrefKernelsError(RuntimeError):
    """An error reported by the pref-kernels library (its own message: bad lengths, layouts,
    configurations, out-of-range device data, a missing driver, ...)."""


class PrefkGrpoConfig(ctypes.Structure):
    _fields_ = [("loss_type", _u32), ("importance", _u32), ("epsilon_low", _f32), ("epsilon_high", _f32),
                ("delta", _f32), ("beta", _f32), ("bias_corrected_kl", _u32), ("entropy_coef", _f32),
                ("top_entropy_quantile", _f32), ("grad_scale", _f32), ("agg_param", _f32), ("tau_pos", _f32),
                ("tau_neg", _f32), ("accumulation_steps", _u32), ("off_policy_mask_threshold", _f32),
                ("vespo_k_pos", _f32), ("vespo_lambda_pos", _f32), ("vespo_k_neg", _f32), ("vespo_lambda_neg", _f32)]


class PrefkLossTerm(ctypes.Structure):
    _fields_ = [("kind", _u32), ("weight", _f32), ("beta", _f32), ("p0", _f32), ("p1", _f32), ("flags", _u32)]


_SIGNATURES = {
    "prefk_init": [_i32],
    "prefk_token_logprobs_forward": [_i32, _u64, _u32, _u32] + [_u64] * 8 + [_i64] * 4 + [_f32],
    "prefk_token_logprobs_backward_entropy": [_i32, _u64, _u32, _u32] + [_u64] * 8 + [_i64] * 5 + [_f32],
    "prefk_preference_loss": [_i32, _u64] + [_u64] * 6 + [_i64, _u64, _i64, _i64, _u64, _u64, _i64]
    + [ctypes.POINTER(PrefkLossTerm), _u32, _u32, _f32, _u32, _f32] + [_u64] * 5,
    "prefk_prefix_layout": [ctypes.POINTER(_i64)] * 3 + [_i64, ctypes.POINTER(_i64), ctypes.POINTER(_i64),
                                                          ctypes.POINTER(_i32), ctypes.POINTER(_i32)],
    "prefk_prefix_attn_forward": [_i32, _u64, _u32] + [_u64] * 7 + [_i64, _i64, _i32, _i32, _i32, _f32],
    "prefk_prefix_attn_backward": [_i32, _u64, _u32] + [_u64] * 12 + [_i64, _i64, _i32, _i32, _i32, _f32],
    "prefk_linear_logprobs_forward": [_i32, _u64, _u32, _u32] + [_u64] * 7 + [_i64] * 4 + [_f32, _i64,
                                                                                         ctypes.POINTER(_i64)],
    "prefk_linear_logprobs_backward": [_i32, _u64, _u32, _u32] + [_u64] * 9 + [_i64] * 4 + [_f32, _i64],
    "prefk_linear_preference_step": [_i32, _u64, _u32, _u32] + [_u64] * 7
    + [ctypes.POINTER(_i32), _i64, _i64, ctypes.POINTER(_i32), ctypes.POINTER(_i32), _i64]
    + [ctypes.POINTER(PrefkLossTerm), _u32, _u32, _f32, _u32] + [_u64] * 4
    + [ctypes.POINTER(_f32), ctypes.POINTER(_f32)] + [_i64] * 4 + [_f32, _i64],
    "prefk_grpo_loss": [_i32, _u64, ctypes.POINTER(PrefkGrpoConfig)] + [_u64] * 8 + [_i64, _u64, _i64, _i64]
    + [_u64] * 5,
    "prefk_group_loss": [_i32, _u64, _u32, _f32, _f32, _f32, _f32, _u32, _i64] + [_u64] * 5
    + [_i64, _u64, _i64, _i64, _f32] + [_u64] * 5,
    "prefk_group_loss_check_labels": [_u32, _f32, _f32, _f32, _f32, _u32, _i64, ctypes.POINTER(_f32), _i64],
    "prefk_seq_reduce": [_i32, _u64] + [_u64] * 3 + [_i64, _u64, _i64, _i64, _u32] + [_u64] * 3,
    "prefk_seq_reduce_backward": [_i32, _u64] + [_u64] * 3 + [_i64, _u64, _i64, _i64, _u32] + [_u64] * 3,
    "prefk_vocab_shard_partials": [_i32, _u64, _u32, _u32] + [_u64] * 4 + [_i64] * 6 + [_f32, _u32],
    "prefk_vocab_parallel_finalize": [_i32, _u64, _u32] + [_u64] * 7 + [_i64] * 4 + [_f32],
    "prefk_vocab_shard_backward": [_i32, _u64, _u32, _u32] + [_u64] * 8 + [_i64] * 7 + [_f32],
    "prefk_linear_shard_partials": [_i32, _u64, _u32, _u32] + [_u64] * 5 + [_i64] * 6 + [_f32, _u32, _i64],
    "prefk_linear_shard_backward": [_i32, _u64, _u32, _u32] + [_u64] * 11 + [_i64] * 6 + [_f32, _i64],
    "prefk_check_status": [_u32],
    "prefk_register_host_memory": [_u64, _i64, _i32],
    "prefk_unregister_host_memory": [_u64],
}


def library_path():
    """The shared library this package loads: $PREF_KERNELS_LIB when set (a development build),
    else the one installed inside the package."""
    env = os.environ.get("PREF_KERNELS_LIB")
    if env:
        return env
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "libpref_kernels.so")


_lib = None
_lib_lock = threading.Lock()


def lib():
    """The loaded library (loaded once)."""
    global _lib
    if _lib is None:
        with _lib_lock:
            if _lib is None:
                path = library_path()
                if not os.path.exists(path):
                    raise PrefKernelsError(
                        f"the pref-kernels shared library is not at {path}: install the package with "
                        "`pip install ./python` from the repository (it builds the crate), or set "
                        "PREF_KERNELS_LIB to a libpref_kernels.so")
                handle = ctypes.CDLL(path)
                handle.prefk_last_error.restype = ctypes.c_char_p
                for name in ("prefk_preference_loss_workspace_len",):
                    getattr(handle, name).argtypes = [_i64, _i64]
                    getattr(handle, name).restype = _i64
                for name in ("prefk_grpo_workspace_len", "prefk_group_loss_workspace_len"):
                    getattr(handle, name).argtypes = [_i64]
                    getattr(handle, name).restype = _i64
                handle.prefk_linear_workspace_bytes.argtypes = [_u32, _i64, _i64, _i64]
                handle.prefk_linear_workspace_bytes.restype = _i64
                for name, args in _SIGNATURES.items():
                    fn = getattr(handle, name)
                    fn.argtypes = args
                    fn.restype = _i32
                _lib = handle
    return _lib


def call(name, *args):
    """Calls entry point `name`; a non-zero return raises PrefKernelsError with the crate's text."""
    rc = getattr(lib(), name)(*args)
    if rc != 0:
        msg = lib().prefk_last_error().decode(errors="replace")
        kind = "internal error (a caught panic)" if rc == -2 else "error"
        raise PrefKernelsError(f"pref_kernels {name.removeprefix('prefk_')}: {kind}: {msg}")


def device_code(t):
    """The C ABI device of tensor `t`: its CUDA ordinal, or DEVICE_EMULATOR for CPU tensors."""
    if t.device.type == "cuda":
        return t.device.index if t.device.index is not None else torch.cuda.current_device()
    if t.device.type == "cpu":
        return DEVICE_EMULATOR
    raise ValueError(f"pref_kernels: tensors must be on a CUDA device or the CPU, got {t.device}")


def stream_of(t):
    """The raw stream the kernels run on: the current CUDA stream of t's device (0 on the CPU)."""
    if t.device.type == "cuda":
        return torch.cuda.current_stream(t.device).cuda_stream
    return 0


def backend(device=None):
    """Which backend an op on `device` uses: 'cuda:<i>' (the CUDA kernels on that GPU) or
    'emulator' (CPU tensors: the same CUDA kernels run on the CPU with memory/race/sync checks)."""
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    if device.type == "cpu":
        return "emulator"
    raise ValueError(f"pref_kernels supports CUDA and CPU tensors, not {device}")


def ptr(t):
    """data_ptr of an optional tensor (0 for None or an empty tensor)."""
    return 0 if t is None or t.numel() == 0 else t.data_ptr()


# Emulator registrations of CPU storages, counted so that nested or concurrent calls sharing a
# storage register it once.
_registered = {}
_registered_lock = threading.Lock()


@contextlib.contextmanager
def host_memory(inputs, outputs):
    """For CPU tensors, registers each distinct storage with the emulator for the duration of a
    call: `inputs` as initialized, `outputs` (freshly allocated) as not yet written, so that the
    emulator's initcheck catches a kernel reading an output it did not write. No-op on CUDA."""
    tensors = [(t, True) for t in inputs if t is not None] + [(t, False) for t in outputs if t is not None]
    cpu = [(t, init) for t, init in tensors if t.device.type == "cpu" and t.numel() > 0]
    if not cpu:
        yield
        return
    storages = {}
    for t, init in cpu:
        s = t.untyped_storage()
        key = s.data_ptr()
        prev = storages.get(key)
        storages[key] = (s.nbytes(), init or (prev is not None and prev[1]))
    done = []
    try:
        with _registered_lock:
            for key, (nbytes, init) in storages.items():
                if key in _registered:
                    _registered[key] += 1
                else:
                    call("prefk_register_host_memory", key, nbytes, int(init))
                    _registered[key] = 1
                done.append(key)
        yield
    finally:
        with _registered_lock:
            for key in done:
                _registered[key] -= 1
                if _registered[key] == 0:
                    del _registered[key]
                    call("prefk_unregister_host_memory", key)


def check_status(status, device_is_cpu):
    """Raises the crate's error for a status word the kernels set. On the CPU the call has already
    finished; on CUDA reading it would synchronize, so it is read only when PREF_KERNELS_CHECK=1."""
    if device_is_cpu or os.environ.get("PREF_KERNELS_CHECK") == "1":
        call("prefk_check_status", int(status.item()))
