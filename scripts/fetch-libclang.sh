#!/usr/bin/env bash
# Fetch libclang (PyPI wheel `libclang`) into a cache outside the repository, for the optional
# `regen-bindings` feature (bindgen). Idempotent. Prints the LIBCLANG_PATH to use.
set -euo pipefail
cache="${PREF_KERNELS_LIBCLANG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pref-kernels/libclang-18}"
python="${PYTHON:-python3}"
find_lib() { ls -d "$cache"/venv/lib/python3*/site-packages/clang/native 2>/dev/null | head -n 1; }
if [ ! -f "$cache/.complete" ] || [ -z "$(find_lib)" ]; then
  echo "pref-kernels: fetching libclang 18.1.1 from PyPI into $cache" >&2
  mkdir -p "$cache"
  "$python" -m venv "$cache/venv" >&2
  "$cache/venv/bin/pip" install --quiet --disable-pip-version-check "libclang==18.1.1" >&2
  touch "$cache/.complete"
fi
find_lib
