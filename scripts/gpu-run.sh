#!/usr/bin/env bash
# Runs on the GPU machine over device-bin/ (from scripts/build-device-bundle.sh) and appends to a
# dated markdown report in ${OUT:-bench/results}/. Stages (each fits one 10-minute device call):
#   scripts/gpu-run.sh tests      GPU tests with PREF_KERNELS_REQUIRE_GPU=1
#   scripts/gpu-run.sh sanitize   compute-sanitizer memcheck + racecheck on small GPU test cases
#   scripts/gpu-run.sh bench      criterion GPU benches and the main job
#   scripts/gpu-run.sh peers      PyTorch eager / Liger / SDPA / FlexAttention, same process
#   scripts/gpu-run.sh all        everything (default; may exceed one device call)
set -uo pipefail
cd "$(dirname "$0")/.."
stage="${1:-all}"
out="${OUT:-bench/results}"
mkdir -p "$out"
report="$out/$(date -u +%Y-%m-%d)-$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1 | tr ' ' '_').md"
run() { echo; echo "\$ $*"; "$@" 2>&1; echo "(exit $?)"; }
want() { [ "$stage" = all ] || [ "$stage" = "$1" ]; }
{
  if [ ! -s "$report" ]; then
    echo "# GPU results $(date -u +%Y-%m-%d), commit $(cat device-bin/COMMIT)"
    echo; echo '```'; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv; echo '```'
  fi
  if want tests; then
    echo; echo "## GPU tests ($(date -u +%H:%MZ))"; echo '```'
    PREF_KERNELS_REQUIRE_GPU=1 run device-bin/gpu-tests
    echo '```'
  fi
  if want sanitize; then
    echo; echo "## compute-sanitizer, small cases ($(date -u +%H:%MZ))"; echo '```'
    for tool in memcheck racecheck; do
      for filter in _v7 strided loss_bad seq_reduce attn_f16_d64 attn_isolation; do
        PREF_KERNELS_REQUIRE_GPU=1 run compute-sanitizer --tool "$tool" --error-exitcode 9 device-bin/gpu-tests "$filter"
      done
    done
    echo '```'
  fi
  if want bench; then
    echo; echo "## criterion benches ($(date -u +%H:%MZ))"; echo '```'
    for b in token_logprobs pref_step prefix_attn; do run "device-bin/bench-$b" --bench gpu; done
    echo '```'; echo; echo '## main job'; echo '```'
    run device-bin/end_to_end
    echo '```'
  fi
  if want peers; then
    echo; echo "## peers, same process and GPU ($(date -u +%H:%MZ))"
    PREF_KERNELS_LIB=device-bin/libpref_kernels.so python3 bench/torch_peers.py 2>&1
  fi
} | tee -a "$report"
echo "report: $report"
