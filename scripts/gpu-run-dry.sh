#!/usr/bin/env bash
# The dry run of the one-call GPU run, on a machine without a GPU (CI): builds the device bundle from
# the debug build that `cargo test --all-targets` already made, runs scripts/gpu-run.sh over it with
# the stand-in CUDA driver (target/debug/pref-kernels-standin) and PREF_KERNELS_DRY_RUN=1, and fails
# when the script itself would have failed on the GPU: a stage missing from the report, a command
# not found or not executable, a binary that refuses its arguments, the harness writing no table.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${NVCC:-}" ]; then eval "$(scripts/fetch-nvcc.sh --env)"; fi
export NVCC
BUNDLE_PROFILE=debug scripts/build-device-bundle.sh > /dev/null
py="${PYTHON:-$(scripts/python-tests.sh --print-python 2>/dev/null || command -v python3)}"
out="$(mktemp -d)"
LD_LIBRARY_PATH="$PWD/target/debug/pref-kernels-standin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  PREF_KERNELS_DRY_RUN=1 PYTHON="$py" OUT="$out" scripts/gpu-run.sh > "$out/console.txt" 2>&1 || true
report="$(ls "$out"/*.md | grep -v torch | head -n1)"
echo "dry-run report: $report"
fail=0
for stage in "## 1. Kernel tests" "## 2. compute-sanitizer" "## 3. Benches" "## 4. Peers" "## 5. GRPO"; do
  grep -q "$stage" "$report" || { echo "missing stage: $stage"; fail=1; }
done
# 0: ran, 124: stopped at its (dry-run) cap; anything else is the script's fault, not the GPU's.
if grep -E '^\(exit [0-9]+\)' "$report" | grep -vE '^\(exit (0|124)\)$'; then
  echo "a command exited with an unexpected status (above)"; fail=1
fi
grep -q "kernel test result: .* 0 failed" "$report" || { echo "the kernel tests did not report a clean result"; fail=1; }
ls "$out"/*torch*.md > /dev/null 2>&1 || { echo "the harness wrote no table"; fail=1; }
if [ "$fail" != 0 ]; then
  cat "$report"; tail -n 40 "$out/console.txt"; exit 1
fi
echo "gpu-run.sh dry run: every stage ran and reported"
