#!/usr/bin/env bash
# The PyTorch package's tests: installs torch, TRL, transformers, numpy, pytest, matplotlib into a
# virtual environment in a cache outside the repository (first run about 2 minutes and 5.5 GB: the
# PyPI torch wheel brings its CUDA libraries), installs ./python into it (which builds the crate's
# release library), then runs pytest on CPU tensors through the emulator, and on CUDA tensors too
# when torch sees a GPU. Pytest's exit code 5 (no tests collected) is a failure, as is any skip of
# the TRL tests (PREF_KERNELS_REQUIRE_TRL=1).
set -euo pipefail
cd "$(dirname "$0")/.."
# The pinned test environment; its cache folder is named by a hash of this line.
requirements=(torch==2.15.0 trl==1.16.0 transformers==5.24.0 numpy pytest matplotlib)
cache="${PREF_KERNELS_PY_CACHE:-$HOME/.cache/pref-kernels}"
venv="$cache/py-$(echo "${requirements[*]}" | sha256sum | cut -c1-12)"
# --print-python: the environment's interpreter, when it exists (for scripts/gpu-run-dry.sh).
if [ "${1:-}" = --print-python ]; then
  [ -f "$venv/.complete" ] && echo "$venv/bin/python" && exit 0
  exit 1
fi
if [ ! -f "$venv/.complete" ]; then
  echo "== python: creating $venv"
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${requirements[@]}"
  touch "$venv/.complete"
fi
if [ -z "${NVCC:-}" ]; then eval "$(scripts/fetch-nvcc.sh --env)"; fi
export NVCC
echo "== python: pip install ./python (builds the crate's release library)"
"$venv/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps ./python
echo "== python: pytest (CPU tensors through the emulator; CUDA tensors when torch sees a GPU)"
set +e
# From the repository root, so `import pref_kernels` is the installed package with its own library.
# Nothing is downloaded: the TRL test builds its model and tokenizer from a config.
env -u PREF_KERNELS_LIB PREF_KERNELS_REQUIRE_TRL=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false "$venv/bin/python" -m pytest python/tests -q -rs -p no:cacheprovider
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$rc"
