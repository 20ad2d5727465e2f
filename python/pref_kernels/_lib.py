"""The crate's C ABI (include/prefk.h) through ctypes: finding the shared library, the entry points'
signatures, errors, and the tensor plumbing every op shares (device code, stream, pointers, and the
emulator registration of CPU tensors)."""
import contextlib
import ctypes
import os
import re
import threading

import torch

_u64, _i64, _i32, _u32, _f32 = ctypes.c_uint64, ctypes.c_int64, ctypes.c_int32, ctypes.c_uint32, ctypes.c_float

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
INDEX_CODES = {torch.int32: 0, torch.int64: 1}
DEVICE_EMULATOR = -1


class PrefKernelsError(RuntimeError):
    """An error reported by the pref-kernels library (its own message: bad lengths, layouts,
    configurations, out-of-range device data, a missing driver, ...)."""


_C_TYPES = {"uint64_t": _u64, "int64_t": _i64, "uint32_t": _u32, "int32_t": _i32, "float": _f32}


def header_path():
    """include/prefk.h: shipped inside the package, or the repository's when run from a checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    for path in (os.path.join(here, "prefk.h"), os.path.join(here, "..", "..", "include", "prefk.h")):
        if os.path.exists(path):
            return os.path.normpath(path)
    raise PrefKernelsError("include/prefk.h is neither in the package nor in a repository checkout above it")


def parse_header(text):
    """The header's structs as ctypes classes ({name: Structure}) and its entry points that take an
    argument struct ({function: Structure}): the header is the one definition of the C ABI."""
    structs, order = {}, []
    body = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    for m in re.finditer(r"typedef struct (\w+) \{(.*?)\} \1;", body, re.S):
        name, fields = m.group(1), []
        for decl in m.group(2).split(";"):
            decl = " ".join(decl.split())
            if not decl:
                continue
            ty, field = decl.rsplit(" ", 1)
            ty = ty.replace("const ", "")
            if ty.endswith("*"):
                base = ty[:-1].strip()
                fields.append((field, ctypes.POINTER(structs[base] if base in structs else _C_TYPES[base])))
            else:
                fields.append((field, structs[ty] if ty in structs else _C_TYPES[ty]))
        structs[name] = type(name, (ctypes.Structure,), {"_fields_": fields})
        order.append(name)
    entry = {m.group(1): structs[m.group(2)]
             for m in re.finditer(r"int32_t (prefk_\w+)\(const (\w+)\* args\);", body)}
    return structs, entry


with open(header_path()) as _f:
    STRUCTS, _ARG_STRUCTS = parse_header(_f.read())
PrefkGrpoConfig = STRUCTS["PrefkGrpoConfig"]
PrefkLossTerm = STRUCTS["PrefkLossTerm"]

# The entry points that keep plain arguments (no device work: sizes, status words, registration).
_SIGNATURES = {
    "prefk_init": [_i32],
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
                for name in ("prefk_linear_workspace_bytes", "prefk_linear_ordered_workspace_bytes"):
                    getattr(handle, name).argtypes = [_u32, _i64, _i64, _i64]
                    getattr(handle, name).restype = _i64
                for name, args in _SIGNATURES.items():
                    fn = getattr(handle, name)
                    fn.argtypes = args
                    fn.restype = _i32
                for name, struct in _ARG_STRUCTS.items():
                    fn = getattr(handle, name)
                    fn.argtypes = [ctypes.POINTER(struct)]
                    fn.restype = _i32
                _lib = handle
    return _lib


def _field_value(ftype, value):
    """`value` as a field of type `ftype`: pointers from None, ctypes arrays, byref() or addresses."""
    if not (isinstance(ftype, type) and issubclass(ftype, ctypes._Pointer)):
        return value
    if value is None:
        return None
    if isinstance(value, type(ctypes.byref(ctypes.c_int()))):
        value = ctypes.pointer(value._obj)
    return ctypes.cast(value, ftype)


def args_struct(name, **fields):
    """Entry point `name`'s argument struct (from the header), `struct_size` set, then `fields`."""
    struct = _ARG_STRUCTS[name]
    a = struct()
    a.struct_size = ctypes.sizeof(struct)
    types = dict(struct._fields_)
    for k, v in fields.items():
        if k not in types or k == "struct_size":
            raise TypeError(f"pref_kernels: {struct.__name__} has no field {k!r}")
        setattr(a, k, _field_value(types[k], v))
    return a


def call(name, *args, **fields):
    """Calls entry point `name` with plain arguments, or, for an op entry point, with its argument
    struct's fields by name; a non-zero return raises PrefKernelsError with the crate's text."""
    if name in _ARG_STRUCTS:
        if args:
            raise TypeError(f"pref_kernels: {name} takes its argument struct's fields by name")
        rc = getattr(lib(), name)(ctypes.byref(args_struct(name, **fields)))
    else:
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
