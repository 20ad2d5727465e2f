#!/usr/bin/env bash
# The GPU run: ONE device call of at most ~9.5 minutes (run stages separately when less device time
# is left) over device-bin/ (from scripts/build-device-bundle.sh, built on a machine with Rust). Stages in priority order, each
# time-capped, the report appended to $OUT as it goes (a timeout still returns what ran):
#   1. kernel tests on both backends (emulator and GPU) with PREF_KERNELS_REQUIRE_GPU=1, including
#      the emulator-vs-GPU comparison                                          (cap 170 s)
#   2. compute-sanitizer memcheck and racecheck on a few small GPU cases      (cap 100 s)
#   3. short benches: d2d copy bandwidth, token log-probs GB/s and fraction of the copy bandwidth,
#      the step, attention, fused-LM-head and vocabulary-parallel (tp as shards on one device)
#      benches, the main job                                                   (cap 220 s)
#   4. the same-run peers (PyTorch eager, Liger, CCE, SDPA, FlexAttention)    (cap 110 s)
# Usage on the device: `scripts/gpu-run.sh` (everything) or `scripts/gpu-run.sh <stage>` with
# stage tests | sanitize | bench | peers.
set -uo pipefail
cd "$(dirname "$0")/.."
stage="${1:-all}"
out="${OUT:-bench/results}"
mkdir -p "$out"
gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 | tr ' ' '_')"
report="$out/$(date -u +%Y-%m-%d)-${gpu_name:-no-gpu}.md"
want() { [ "$stage" = all ] || [ "$stage" = "$1" ]; }
# run CAP CMD...: runs CMD with a time cap, echoing the command line and its exit status.
run() {
  local cap="$1"; shift
  echo; echo "\$ $*"
  timeout --signal=INT --kill-after=10 "$cap" "$@" 2>&1
  local rc=$?
  [ "$rc" = 124 ] && echo "(stopped at the ${cap}s cap)"
  echo "(exit $rc)"
}
log() { tee -a "$report"; }

if [ ! -s "$report" ]; then
  {
    echo "# GPU results $(date -u +%Y-%m-%d), commit $(cat device-bin/COMMIT 2>/dev/null || git rev-parse HEAD)"
    echo; echo '```'
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv
    echo '```'
    echo; echo "Commands: \`scripts/gpu-run.sh ${stage}\` over \`device-bin/\` (stages and caps in the script)."
  } | log
fi

if want tests; then
  { echo; echo "## 1. Kernel tests, emulator and GPU ($(date -u +%H:%MZ))"; echo '```'
    PREF_KERNELS_REQUIRE_GPU=1 run 170 device-bin/gpu-tests
    echo '```'; } | log
fi
if want sanitize; then
  { echo; echo "## 2. compute-sanitizer on small GPU cases ($(date -u +%H:%MZ))"; echo '```'
    for tool in memcheck racecheck; do
      for filter in _v7 strided_misaligned_views_bf16 loss_bad attn_f16_d64 grpo_bad group_loss_parity linear_token_logprobs_forward vocab_parallel_logits; do
        PREF_KERNELS_BACKEND=cuda PREF_KERNELS_REQUIRE_GPU=1 \
          run 25 compute-sanitizer --tool "$tool" --error-exitcode 9 device-bin/gpu-tests "$filter"
      done
    done
    echo '```'; } | log
fi
if want bench; then
  { echo; echo "## 3. Benches: copy bandwidth first, then the kernels ($(date -u +%H:%MZ))"; echo '```'
    short=(--warm-up-time 0.5 --measurement-time 2 --sample-size 10)
    run 55 device-bin/bench-token_logprobs --bench gpu "${short[@]}"
    run 25 device-bin/bench-pref_step --bench gpu "${short[@]}"
    run 25 device-bin/bench-shared_prefix_attention --bench gpu "${short[@]}"
    run 15 device-bin/bench-group_loss --bench gpu "${short[@]}"
    run 55 device-bin/bench-linear_token_logprobs --bench gpu "${short[@]}"
    run 25 device-bin/bench-vocab_parallel --bench gpu "${short[@]}"
    echo '```'; echo; echo '### Main job'; echo '```'
    PREF_KERNELS_BACKEND=cuda run 20 device-bin/end_to_end
    echo '```'; } | log
fi
if want peers; then
  if ls .whl/*.whl >/dev/null 2>&1; then  # peers carried as wheels (scripts/fetch-peer-wheels.sh)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  { echo; echo "## 4. Peers, same process and GPU ($(date -u +%H:%MZ))"
    PREF_KERNELS_LIB=device-bin/libpref_kernels.so run 110 python3 bench/harness.py --out "$out"; } | log
fi
echo "report: $report"
