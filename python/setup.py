"""Builds the crate (`cargo build --release --lib` at the repository root, with nvcc from
scripts/fetch-nvcc.sh when NVCC is unset, so the CUDA kernels and the CPU emulator are both in
the library) and ships target/release/libpref_kernels.so inside the package. Set
PREF_KERNELS_PREBUILT_LIB to package an existing library instead (a machine without Rust)."""
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _nvcc_env():
    env = dict(os.environ)
    if not env.get("NVCC"):
        out = subprocess.run(["bash", str(REPO / "scripts" / "fetch-nvcc.sh"), "--env"], check=True,
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("export NVCC="):
                env["NVCC"] = shlex.split(line[len("export NVCC="):])[0]
    env["PREF_KERNELS_REQUIRE_NVCC"] = "1"
    return env


def _library():
    prebuilt = os.environ.get("PREF_KERNELS_PREBUILT_LIB")
    if prebuilt:
        return Path(prebuilt)
    if not (REPO / "Cargo.toml").exists():
        raise RuntimeError("pref-kernels builds from its repository: run `pip install ./python` at the repository "
                           "root, or set PREF_KERNELS_PREBUILT_LIB to a built libpref_kernels.so")
    subprocess.run(["cargo", "build", "--release", "--lib"], cwd=REPO, env=_nvcc_env(), check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "release" / "libpref_kernels.so"


class BuildWithCrate(build_py):
    def run(self):
        super().run()
        dest = Path(self.build_lib) / "pref_kernels"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(_library(), dest / "libpref_kernels.so")
        # The C ABI's one definition: _lib.py builds its ctypes structs from it.
        shutil.copy2(REPO / "include" / "prefk.h", dest / "prefk.h")


class BinaryDistribution(Distribution):
    """A platform wheel: the package holds a native library."""

    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": BuildWithCrate}, distclass=BinaryDistribution)
