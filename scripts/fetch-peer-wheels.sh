#!/usr/bin/env bash
# Downloads the same-run peers that the GPU machine lacks (it has PyTorch and Triton but no
# network) as wheels into .whl/ (git-ignored), for Python 3.12 there: Liger-Kernel and Apple's
# cut-cross-entropy (pure-Python wheels, under 1 MB together), and TRL 1.16 alone (its fused head is
# a peer; with transformers it would not fit the 64 MiB a call may carry). Name `.whl` in the device
# call's `carry`; scripts/gpu-run.sh installs them into /tmp/site when present.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 -d .whl liger-kernel==0.8.5 cut-cross-entropy==25.1.1
# TRL without its dependencies (0.6 MB): the harness loads its fused head (trl/kernels/chunked_logprob.py)
# by file, with stand-ins for its two imports from transformers and the rest of TRL.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 -d .whl trl==1.16.0
ls -la .whl
