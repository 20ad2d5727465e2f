"""Devices the tests run on: the CPU (the emulator: the CUDA kernels executed on the CPU with
memory/race/init/sync checks) always, CUDA when a GPU is usable. Without one the CUDA cases skip
with the reason, and fail instead when PREF_KERNELS_REQUIRE_GPU=1."""
import os

import pytest  # noqa: E402
import torch  # noqa: E402

import pref_kernels.ops  # noqa: E402
import pref_kernels.vocab_parallel  # noqa: E402


def _poisoned_out(shape, dtype, device):
    """Every op output poisoned (floats NaN, bools True, integers -7777) before the kernel runs, so an element a kernel
    does not write fails a test. Installed at import, so spawned test workers get it too."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    if dtype == torch.bool:
        return torch.ones(shape, dtype=dtype, device=device)
    return torch.full(shape, -7777, dtype=dtype, device=device)


pref_kernels.ops._out = _poisoned_out
pref_kernels.vocab_parallel._out = _poisoned_out

DEVICES = ["cpu", "cuda"]


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        if os.environ.get("PREF_KERNELS_REQUIRE_GPU") == "1":
            pytest.fail("PREF_KERNELS_REQUIRE_GPU=1 but torch sees no CUDA device")
        pytest.skip("no CUDA device visible to torch (the same test ran on the CPU emulator)")
    return torch.device(request.param)


@pytest.fixture
def gen():
    """A fresh seeded generator per test (inputs are random, never constant)."""
    seed = int(os.environ.get("PREF_KERNELS_SEED", "1234"))
    return torch.Generator().manual_seed(seed)


def import_or_skip(name):
    """Imports an optional test dependency (TRL, transformers, ...): skips without it, but fails when
    PREF_KERNELS_REQUIRE_TRL=1 (scripts/test.sh installs them, so CI never skips silently)."""
    if os.environ.get("PREF_KERNELS_REQUIRE_TRL") == "1":
        import importlib
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=f"{name} is not installed (scripts/test.sh installs it)")
