#!/usr/bin/env bash
# Fetch nvcc 13.0 (and the headers it needs, and cuobjdump) from PyPI wheels into a cache OUTSIDE the
# repository.
# Idempotent: a second run with a complete cache returns at once.
#
# Usage:  scripts/fetch-nvcc.sh            # prints the nvcc path on the last line of stdout
#         eval "$(scripts/fetch-nvcc.sh --env)"   # exports NVCC for the current shell
#
# Cache location: $PREF_KERNELS_NVCC_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/pref-kernels/nvcc-13.0
set -euo pipefail

cache="${PREF_KERNELS_NVCC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pref-kernels/nvcc-13.0}"
venv="$cache/venv"
stamp="$cache/.complete"
python="${PYTHON:-python3}"

find_nvcc() { ls "$venv"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n 1; }

if [ ! -f "$stamp" ] || [ -z "$(find_nvcc)" ]; then
  echo "pref-kernels: fetching nvcc 13.0 from PyPI into $cache (about 270 MB, once)" >&2
  mkdir -p "$cache"
  "$python" -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*" \
    "nvidia-nvvm==13.0.*" "nvidia-cuda-cccl==13.0.*" >&2
  nvcc_path="$(find_nvcc)"
  [ -n "$nvcc_path" ] || { echo "pref-kernels: nvcc not found after install" >&2; exit 1; }
  "$nvcc_path" --version >&2
  touch "$stamp"
fi
# cuobjdump and the nvdisasm it runs to print SASS (the SASS budget test, tests/sass_budget.rs):
# their 13.0 wheels were never published, and 13.2 reads 13.0's fatbins. Added after the first
# caches were made, so checked on their own.
if ! ls "$venv"/lib/python3*/site-packages/nvidia/cu13/bin/cuobjdump >/dev/null 2>&1 ||
   ! ls "$venv"/lib/python3*/site-packages/nvidia/cu13/bin/nvdisasm >/dev/null 2>&1; then
  echo "pref-kernels: fetching cuobjdump and nvdisasm from PyPI into $cache" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "nvidia-cuda-cuobjdump==13.2.*" "nvidia-cuda-nvdisasm==13.2.*" >&2
fi

nvcc_path="$(find_nvcc)"
if [ "${1:-}" = "--env" ]; then
  echo "export NVCC='$nvcc_path'"
else
  echo "pref-kernels: nvcc is ready. Point the build at it with:" >&2
  echo "  export NVCC='$nvcc_path'" >&2
  echo "$nvcc_path"
fi
