#!/usr/bin/env bash
# Builds everything a GPU machine without a Rust toolchain needs into device-bin/ (git-ignored,
# carried to the device): the GPU test binary, the criterion bench binaries, the example and the
# cdylib for the Python peers. Run scripts/gpu-run.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${NVCC:-}" ]; then eval "$(scripts/fetch-nvcc.sh --env)"; fi
export NVCC PREF_KERNELS_REQUIRE_NVCC=1
# BUNDLE_PROFILE=debug (the CI dry run) reuses the debug build `cargo test --all-targets` made: same
# binaries, no second compile; the default is release, for the GPU.
profile="${BUNDLE_PROFILE:-release}"
if [ "$profile" = release ]; then
  # The lent GPUs are H100/H200 (sm_90): SASS for sm_90a only (the arch-specific set, which the
  # attention v3's wgmma needs) keeps the nine binaries well within the 64 MiB a device call may
  # carry (the default build also embeds sm_80 and sm_100).
  export PREF_KERNELS_CUDA_ARCHS="${PREF_KERNELS_CUDA_ARCHS:-90a}"
  flag=--release
else
  flag=
fi
rm -rf device-bin && mkdir -p device-bin
cargo build $flag --lib --examples
cargo test $flag --no-run --test gpu 2>&1 | tee /dev/stderr | grep -o "target/$profile/deps/gpu-[0-9a-f]*" | head -n1 | xargs -I{} cp {} device-bin/gpu-tests
for b in token_logprobs pref_step shared_prefix_attention group_loss linear_token_logprobs vocab_parallel; do
  if [ "$profile" = release ]; then
    cargo bench --no-run --bench "$b" 2>&1 | tee /dev/stderr | grep -o "target/release/deps/$b-[0-9a-f]*" | head -n1 | xargs -I{} cp {} "device-bin/bench-$b"
  else
    cargo test --no-run --bench "$b" 2>&1 | tee /dev/stderr | grep -o "target/debug/deps/$b-[0-9a-f]*" | head -n1 | xargs -I{} cp {} "device-bin/bench-$b"
  fi
done
cp "target/$profile/examples/end_to_end" "target/$profile/libpref_kernels.so" device-bin/
[ "$profile" = release ] && { strip device-bin/* 2>/dev/null || true; }
git rev-parse HEAD > device-bin/COMMIT
ls -la device-bin
