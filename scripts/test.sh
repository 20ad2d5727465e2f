#!/usr/bin/env bash
# Runs every check and test of pref-kernels. On a fresh machine it first fetches nvcc 13.0 from PyPI
# into a cache outside the repository, then compiles every kernel (a kernel that does not compile
# fails this script), runs fmt/clippy, the CPU reference and property tests, and the GPU parity
# tests (which report SKIPPED without a GPU; export PREF_KERNELS_REQUIRE_GPU=1 to require one) and,
# without a GPU, the same tests on the CUDA backend through the stand-in driver, the PyTorch
# package's tests (scripts/python-tests.sh: torch, TRL into a cache outside the repo), and a dry run
# of the one-call GPU run (scripts/gpu-run-dry.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${NVCC:-}" ]; then
  eval "$(scripts/fetch-nvcc.sh --env)"
fi
export NVCC
export PREF_KERNELS_REQUIRE_NVCC=1
# The SASS budget test (cuobjdump beside nvcc) must run, not skip.
export PREF_KERNELS_REQUIRE_SASS=1

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "== cargo clippy --all-targets --features nccl (the NCCL path compiles without NCCL: loaded at run time)"
cargo clippy --all-targets --features nccl -- -D warnings
echo "== cargo doc (warnings are errors: broken links, missing docs)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet --features nccl
echo "== cargo test (kernels compiled with $NVCC)"
cargo test --all-targets
cargo test --doc
echo "== the CUDA host path through the stand-in driver (libcuda + libcublas running the emulator)"
if nvidia-smi -L > /dev/null 2>&1; then
  echo "skipped: this machine has a GPU and its driver (the GPU tests above ran on it)"
else
  LD_LIBRARY_PATH="$PWD/target/debug/pref-kernels-standin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    PREF_KERNELS_BACKEND=cuda PREF_KERNELS_REQUIRE_GPU=1 cargo test --test gpu
fi
echo "== the example ladder runs (the kernels on the GPU if usable, else the emulator)"
for ex in examples/0*.rs; do
  cargo run --quiet --example "$(basename "$ex" .rs)" > /dev/null
done
echo "== the PyTorch package (python/): torch custom ops, the TRL drop-in, on the emulator"
scripts/python-tests.sh
echo "== the one-call GPU run, dry (scripts/gpu-run.sh over the debug bundle and the stand-in driver)"
if nvidia-smi -L > /dev/null 2>&1; then
  echo "skipped: this machine has a GPU: run scripts/gpu-run.sh itself"
else
  scripts/gpu-run-dry.sh
fi
echo "== bindgen: regenerate the params.h mirror and compare it with src/params.rs"
LIBCLANG_PATH="$(scripts/fetch-libclang.sh)" cargo test --features regen-bindings --test params_header
echo "== ptxas resource report: target/debug/pref-kernels-ptxas.txt"
