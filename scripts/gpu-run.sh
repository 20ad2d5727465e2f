#!/usr/bin/env bash
# The GPU run: ONE device call of at most ~8 minutes (run stages separately when less device time
# is left) over device-bin/ (from scripts/build-device-bundle.sh, built on a machine with Rust).
# Stages in priority order (the most information per device minute first), each time-capped, the
# report appended to $OUT as it goes (a timeout still returns what ran); caps sum to 480 s:
#   1. tests:    kernel tests on both backends (emulator and GPU) with PREF_KERNELS_REQUIRE_GPU=1,
#                including the emulator-vs-GPU comparison (cap 95 s); then the PyTorch ops' CUDA
#                cases and CUDA-graph capture (python/tests/test_cuda_graphs.py)       (cap 25 s)
#   2. sanitize: compute-sanitizer memcheck and racecheck on two small GPU cases, after a probe
#                (the gVisor H200s refuse it: the stage is then skipped with the reason) (cap 50 s)
#   3. bench:    d2d copy bandwidth first, token log-probs GB/s and fraction of it, the step,
#                attention, fused-LM-head (and GRPO step) and vocab-parallel benches, main job (cap 160 s)
#   4. peers:    same-process peers: PyTorch eager, torch.compile, TRL 1.16's own fused head, Liger,
#                CCE, SDPA / FlexAttention (bench/harness.py, rows written as measured) (cap 90 s)
#   5. grpo:     the GRPO loss from hidden states (ours, TRL's head, Liger's GRPO loss) and a GRPO
#                step through a Qwen2-1.5B-shaped decoder, G = 8, prompt 512, completions 1024,
#                duplicated layout vs prompt-once: time and peak memory               (cap 60 s)
# Usage on the device: `scripts/gpu-run.sh` (everything) or `scripts/gpu-run.sh <stage>`.
# PREF_KERNELS_DRY_RUN=1 (CI, scripts/gpu-run-dry.sh: no GPU, the stand-in driver): every cap at most
# 12 s, a short test filter, the harness in --smoke mode; it checks the script, not the numbers.
set -uo pipefail
cd "$(dirname "$0")/.."
stage="${1:-all}"
out="${OUT:-bench/results}"
mkdir -p "$out"
gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 | tr ' ' '_')"
report="$out/$(date -u +%Y-%m-%d)-${gpu_name:-no-gpu}.md"
want() { [ "$stage" = all ] || [ "$stage" = "$1" ]; }
dry="${PREF_KERNELS_DRY_RUN:-0}"
py="${PYTHON:-python3}"
# run CAP CMD...: runs CMD with a time cap, echoing the command line and its exit status.
run() {
  local cap="$1"; shift
  [ "$dry" = 1 ] && [ "$cap" -gt 12 ] && cap=12
  echo; echo "\$ $*"
  timeout --signal=INT --kill-after=10 "$cap" "$@" 2>&1
  local rc=$?
  [ "$rc" = 124 ] && echo "(stopped at the ${cap}s cap)"
  echo "(exit $rc)"
}
log() { tee -a "$report"; }
# The Rust binaries dlopen libcublas.so.13: on the device image it comes from PyPI's nvidia-cublas.
cublas_lib="$("$py" -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))' 2>/dev/null)"
[ -n "$cublas_lib" ] && export LD_LIBRARY_PATH="$cublas_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ls .whl/*.whl >/dev/null 2>&1; then  # peers carried as wheels (scripts/fetch-peer-wheels.sh)
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

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
    filter=(); [ "$dry" = 1 ] && filter=(_v7)
    PREF_KERNELS_REQUIRE_GPU=1 run 95 device-bin/gpu-tests "${filter[@]}"
    echo '```'; echo; echo "### PyTorch package on CUDA: the ops' CUDA cases, CUDA-graph capture"; echo '```'
    require=(); [ "$dry" = 1 ] || require=(env PREF_KERNELS_REQUIRE_GPU=1)
    PYTHONPATH=python PREF_KERNELS_LIB=device-bin/libpref_kernels.so run 25 "${require[@]}" "$py" -m pytest -q -x \
      -p no:cacheprovider -W ignore python/tests/test_cuda_graphs.py python/tests/test_token_logprobs.py \
      python/tests/test_linear_token_logprobs.py python/tests/test_preference_loss.py \
      python/tests/test_shared_prefix_attention.py -k "cuda or graph or capture"
    echo '```'; } | log
fi
if want sanitize; then
  { echo; echo "## 2. compute-sanitizer on small GPU cases ($(date -u +%H:%MZ))"; echo '```'
    if timeout 20 compute-sanitizer --tool memcheck device-bin/gpu-tests _v7 >/dev/null 2>&1; then
      for tool in memcheck racecheck; do
        for filter in attn_f16_d64 linear_token_logprobs_forward; do
          PREF_KERNELS_BACKEND=cuda PREF_KERNELS_REQUIRE_GPU=1 \
            run 12 compute-sanitizer --tool "$tool" --error-exitcode 9 device-bin/gpu-tests "$filter"
        done
      done
    else
      echo "skipped: compute-sanitizer refused this device (or is missing) in a 20 s probe"
    fi
    echo '```'; } | log
fi
if want bench; then
  { echo; echo "## 3. Benches: copy bandwidth first, then the kernels ($(date -u +%H:%MZ))"; echo '```'
    short=(--warm-up-time 0.3 --measurement-time 1.5 --sample-size 10)
    run 35 device-bin/bench-token_logprobs --bench gpu "${short[@]}"
    run 20 device-bin/bench-pref_step --bench gpu "${short[@]}"
    # v1, v2 and v3 (sm_90: wgmma), forward and forward + backward, side by side
    # at two cells (all cells would not fit the cap).
    run 30 device-bin/bench-shared_prefix_attention --bench --warm-up-time 0.3 --measurement-time 1.0 \
      --sample-size 10 'gpu.*(G8_P4096_R512|G2_P1024_R256)'
    run 10 device-bin/bench-group_loss --bench gpu "${short[@]}"
    # One shape (Liger's published M8192 H4096 V131072): the overlap on and off, the DPO and GRPO steps.
    PREF_KERNELS_BENCH_SHAPES=M8192_H4096_V131072 run 40 device-bin/bench-linear_token_logprobs --bench gpu "${short[@]}"
    run 15 device-bin/bench-vocab_parallel --bench gpu "${short[@]}"
    echo '```'; echo; echo '### Main job'; echo '```'
    PREF_KERNELS_BACKEND=cuda run 10 device-bin/end_to_end
    echo '```'; } | log
fi
if want peers; then
  { echo; echo "## 4. Peers, same process and GPU ($(date -u +%H:%MZ))"
    sections=token_logprobs,linear_head,attention,dpo_step; smoke=()
    [ "$dry" = 1 ] && { sections=linear_head; smoke=(--smoke --reps 2); }
    PREF_KERNELS_LIB=device-bin/libpref_kernels.so run 90 "$py" bench/harness.py --out "$out" \
      --only "$sections" "${smoke[@]}"; } | log
fi
if want grpo; then
  { echo; echo "## 5. GRPO: loss from hidden states, and a Qwen2-1.5B-shaped step ($(date -u +%H:%MZ))"
    smoke=(); [ "$dry" = 1 ] && smoke=(--smoke)
    PREF_KERNELS_LIB=device-bin/libpref_kernels.so run 60 "$py" bench/harness.py --out "$out" \
      --only grpo_head,grpo_model_step --reps 5 "${smoke[@]}"; } | log
fi
echo "report: $report"
