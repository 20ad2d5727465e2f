#!/usr/bin/env bash
# Runs on the GPU machine over device-bin/ (from scripts/build-device-bundle.sh): GPU tests with
# PREF_KERNELS_REQUIRE_GPU=1, compute-sanitizer memcheck and racecheck on the GPU test binary,
# the criterion benches, the main job and the PyTorch/Liger/FlexAttention peers; writes a dated
# markdown report to ${OUT:-bench/results}/.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results}"
mkdir -p "$out"
report="$out/$(date -u +%Y-%m-%d)-$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1 | tr ' ' '_').md"
run() { echo; echo "\$ $*"; "$@" 2>&1; echo "(exit $?)"; }
{
  echo "# GPU results $(date -u +%Y-%m-%dT%H:%MZ), commit $(cat device-bin/COMMIT)"
  echo; echo '```'; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv; echo '```'
  echo; echo '## GPU tests'; echo '```'
  PREF_KERNELS_REQUIRE_GPU=1 run device-bin/gpu-tests
  echo '```'; echo; echo '## compute-sanitizer (small cases)'; echo '```'
  for tool in memcheck racecheck; do
    PREF_KERNELS_REQUIRE_GPU=1 run compute-sanitizer --tool "$tool" --error-exitcode 9 device-bin/gpu-tests _v7
    PREF_KERNELS_REQUIRE_GPU=1 run compute-sanitizer --tool "$tool" --error-exitcode 9 device-bin/gpu-tests strided
    PREF_KERNELS_REQUIRE_GPU=1 run compute-sanitizer --tool "$tool" --error-exitcode 9 device-bin/gpu-tests loss_
    PREF_KERNELS_REQUIRE_GPU=1 run compute-sanitizer --tool "$tool" --error-exitcode 9 device-bin/gpu-tests attn_f16_d64
  done
  echo '```'; echo; echo '## criterion benches'; echo '```'
  for b in token_logprobs pref_step prefix_attn; do run "device-bin/bench-$b" --bench gpu; done
  echo '```'; echo; echo '## main job'; echo '```'
  run device-bin/end_to_end
  echo '```'; echo; echo '## peers (same process, same GPU)'
  PREF_KERNELS_LIB=device-bin/libpref_kernels.so python3 bench/torch_peers.py 2>&1
} | tee "$report"
echo "report: $report"
