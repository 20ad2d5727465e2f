"""Devices the tests run on: the CPU (the emulator: the CUDA kernels executed on the CPU with
memory/race/init/sync checks) always, CUDA when a GPU is usable. Without one the CUDA cases skip
with the reason, and fail instead when PREF_KERNELS_REQUIRE_GPU=1."""
import os

# Outputs NaN-filled before every kernel call, so an element a kernel does not write fails a test.
os.environ.setdefault("PREF_KERNELS_POISON", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

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
