#!/usr/bin/env bash
# The main job: the end-to-end example on a synthetic batch (GPU when usable, else the kernels on the emulator).
# Fetches nvcc if needed so the kernels are embedded for a GPU run. Extra arguments go to the example.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${NVCC:-}" ]; then
  eval "$(scripts/fetch-nvcc.sh --env)"
fi
export NVCC PREF_KERNELS_REQUIRE_NVCC=1
cargo run --release --example end_to_end -- "$@"
