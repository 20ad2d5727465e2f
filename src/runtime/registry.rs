//! The kernel registry: every entry point of every module with the launch constants both backends
//! need (threads per block, dynamic shared memory). The CUDA backend loads exactly these functions
//! (and opts in to their shared memory); the emulator backend checks that each has an emulated
//! twin. Op rooms name their kernels through the functions here and launch through
//! [`crate::Gpu`]'s one launch path.
use std::sync::OnceLock;

use crate::dtype::{DType, IndexType};

/// One kernel entry point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSpec {
    /// `extern "C"` name, identical on both backends.
    pub name: String,
    /// Module (the `kernels/<module>.cu` file) that defines it.
    pub module: &'static str,
    /// Threads per block it is launched with.
    pub block_threads: u32,
    /// Dynamic shared memory per block, bytes.
    pub dynamic_smem: u32,
}

/// Threads per block of the token log-probs kernels.
pub(crate) const TOKEN_LOGPROBS_THREADS: u32 = 256;
/// Threads that share one row: a warp for small vocabularies, the whole block for large ones.
/// Depends on V only, so a row's result never depends on N.
pub(crate) fn row_threads(vocab: usize) -> u32 {
    if vocab <= 1024 {
        32
    } else {
        TOKEN_LOGPROBS_THREADS
    }
}

/// Threads per block of the per-sequence statistics and token-gradient kernels.
pub(crate) const SEQ_THREADS: u32 = 256;
/// Threads per block of the pair-loss kernel.
pub(crate) const PAIR_THREADS: u32 = 256;
/// Threads per block of the attention tile kernels (4 warps) and of their preprocess kernel.
pub(crate) const ATTN_THREADS: u32 = 128;
/// Block size of the GRPO kernels (`GRPO_THREADS` in `kernels/grpo.cu`).
pub(crate) const GRPO_THREADS: u32 = 256;
/// Block size of the group/listwise loss kernel (`GROUP_THREADS` in `kernels/group_loss.cu`).
pub(crate) const GROUP_THREADS: u32 = 256;
pub(crate) const ATTN_PRE_THREADS: u32 = 256;
/// Block size of the vocabulary-parallel finalize (`FINALIZE_THREADS` in `kernels/vocab_parallel.cu`).
pub(crate) const VOCAB_FINALIZE_THREADS: u32 = 256;
/// Block size of the fused LM head's row-movement and bias kernels (`ROWS_THREADS`).
pub(crate) const LINEAR_ROWS_THREADS: u32 = 256;
const ATTN_BR: u32 = 64;
const ATTN_BQ: u32 = 32;

/// What a token log-probs forward entry point computes besides log p(target) and lse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FwdMode {
    /// Nothing more.
    Plain,
    /// The entropy (and `log Σ p²`).
    Entropy,
    /// The entropy, `log Σ p²`, the mean logit and `is_top1` (TRL's fused-head outputs).
    Full,
}

/// Name of a token log-probs forward entry point.
pub(crate) fn token_logprobs_fwd(dtype: DType, it: IndexType, mode: FwdMode, row_threads: u32) -> String {
    let e = match mode {
        FwdMode::Plain => "",
        FwdMode::Entropy => "_entropy",
        FwdMode::Full => "_full",
    };
    format!("token_logprobs_fwd{e}_{}_{}_w{row_threads}", dtype.name(), it.name())
}

/// Threads per block of the top-k kernel (`TOPK_THREADS`): a block per row.
pub(crate) const TOPK_THREADS: u32 = 256;

/// Name of the top-k log-probs entry point.
pub(crate) fn token_logprobs_topk(dtype: DType, it: IndexType) -> String {
    format!("token_logprobs_topk_{}_{}", dtype.name(), it.name())
}

/// Name of a token log-probs backward entry point.
pub(crate) fn token_logprobs_bwd(dtype: DType, it: IndexType, entropy: bool, row_threads: u32) -> String {
    let e = if entropy { "_entropy" } else { "" };
    format!("token_logprobs_bwd{e}_{}_{}_w{row_threads}", dtype.name(), it.name())
}

/// Name of a vocabulary-shard entry point: the partial statistics (`backward` false) or the
/// shard's backward.
pub(crate) fn vocab_shard(
    backward: bool,
    dtype: DType,
    it: IndexType,
    entropy: bool,
    row_threads: u32,
) -> String {
    let (k, e) = (if backward { "bwd" } else { "partials" }, if entropy { "_entropy" } else { "" });
    format!("vocab_shard_{k}{e}_{}_{}_w{row_threads}", dtype.name(), it.name())
}

/// Name of the vocabulary-parallel finalize kernel.
pub(crate) fn vocab_finalize(it: IndexType) -> String {
    format!("vocab_parallel_finalize_{}", it.name())
}

/// Name of the LM-head bias kernel: the broadcast into logits rows, or (`grad`) the column sum.
pub(crate) fn linear_bias(grad: bool, dtype: DType) -> String {
    format!("linear_bias_{}_{}", if grad { "grad" } else { "rows" }, dtype.name())
}

/// The attention kernels of one (dtype, head dim).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttnKernel {
    Forward,
    /// The forward v2: cp.async double-buffered K/V, ldmatrix operands, unmasked-tile fast path.
    ForwardV2,
    BackwardPre,
    BackwardDkDv,
    BackwardDq,
    /// dK/dV v2: cp.async double-buffered Q/dO chunks, ldmatrix operands.
    BackwardDkDvV2,
    /// dQ v2: cp.async double-buffered K/V tiles, ldmatrix operands, unmasked-tile fast path.
    BackwardDqV2,
    /// The forward v3 (sm_90a): v2's loop with both GEMMs on wgmma, one warpgroup per 64-row
    /// tile (built empty for the other architectures; the host launches it on sm_90 only).
    ForwardV3,
    /// dQ v3 (sm_90a): dQ v2's loop with its three GEMMs on wgmma (built empty elsewhere).
    BackwardDqV3,
    /// dK/dV v3 (sm_90a): dK/dV v2's loop with its four GEMMs on wgmma (built empty elsewhere).
    BackwardDkDvV3,
}

/// Name of an attention entry point.
pub(crate) fn shared_prefix_attention(kind: AttnKernel, dtype: DType, head_dim: usize) -> String {
    let k = match kind {
        AttnKernel::Forward => "fwd",
        AttnKernel::ForwardV2 => "fwd_v2",
        AttnKernel::BackwardPre => "bwd_pre",
        AttnKernel::BackwardDkDv => "bwd_dkdv",
        AttnKernel::BackwardDq => "bwd_dq",
        AttnKernel::BackwardDkDvV2 => "bwd_dkdv_v2",
        AttnKernel::BackwardDqV2 => "bwd_dq_v2",
        AttnKernel::ForwardV3 => "fwd_v3",
        AttnKernel::BackwardDqV3 => "bwd_dq_v3",
        AttnKernel::BackwardDkDvV3 => "bwd_dkdv_v3",
    };
    format!("shared_prefix_attention_{k}_{}_d{head_dim}", dtype.name())
}

/// Query rows per CTA of the forward v2: 128-row query tiles (two 64-row tiles of the plan
/// joined, two 16-row slabs per warp) at d = 64, 64 at d = 128, where a second slab would not fit
/// the registers of two CTAs per SM. `FWD_V2_SLABS` in the kernel source says the same.
pub(crate) fn attn_fwd_v2_rows(head_dim: usize) -> u32 {
    if head_dim <= 64 {
        2 * ATTN_BR
    } else {
        ATTN_BR
    }
}

/// Dynamic shared memory of an attention kernel: 16-bit tiles of `d + 8` columns (the padding
/// avoids bank conflicts), unpadded for v3 (wgmma's core-matrix layout has none).
/// `kernels/shared_prefix_attention.cu` static-asserts the same numbers.
pub(crate) fn attn_smem(kind: AttnKernel, head_dim: usize) -> u32 {
    let ld = (head_dim as u32 + 8) * 2;
    match kind {
        AttnKernel::Forward => 3 * ATTN_BR * ld,
        // Q (128 rows at d = 64, where two slabs per warp fit the registers; else 64), then K and
        // V twice (double-buffered).
        AttnKernel::ForwardV2 => (attn_fwd_v2_rows(head_dim) + 4 * ATTN_BR) * ld,
        AttnKernel::BackwardDq => 4 * ATTN_BR * ld,
        AttnKernel::BackwardDkDv => (2 * ATTN_BR + 2 * ATTN_BQ) * ld + 2 * ATTN_BQ * 4,
        AttnKernel::BackwardPre => 0,
        // Q and dO, then K twice and V once (99 KiB is the most sm_86/89/120 allow a block).
        AttnKernel::BackwardDqV2 => (2 * ATTN_BR + 3 * ATTN_BR) * ld,
        // K and V, then Q and dO chunks twice, and the chunk's lse / delta.
        AttnKernel::BackwardDkDvV2 => (2 * ATTN_BR + 4 * ATTN_BQ) * ld + 2 * ATTN_BQ * 4,
        // Q, then K and V twice, unpadded: wgmma's core-matrix layout has no bank conflicts.
        AttnKernel::ForwardV3 => (ATTN_BR + 4 * ATTN_BR) * head_dim as u32 * 2,
        // Q and dO, then K twice and V once, unpadded.
        AttnKernel::BackwardDqV3 => (2 * ATTN_BR + 3 * ATTN_BR) * head_dim as u32 * 2,
        // K and V, then Q and dO chunks twice, unpadded, and the chunk's lse / delta.
        AttnKernel::BackwardDkDvV3 => (2 * ATTN_BR + 4 * ATTN_BQ) * head_dim as u32 * 2 + 2 * ATTN_BQ * 4,
    }
}

fn build() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    let mut add = |name: String, module: &'static str, block_threads: u32, dynamic_smem: u32| {
        v.push(KernelSpec { name, module, block_threads, dynamic_smem })
    };
    for d in [DType::F32, DType::F16, DType::BF16] {
        for i in [IndexType::I32, IndexType::I64] {
            for rt in [32, TOKEN_LOGPROBS_THREADS] {
                for mode in [FwdMode::Plain, FwdMode::Entropy, FwdMode::Full] {
                    add(token_logprobs_fwd(d, i, mode, rt), "token_logprobs", TOKEN_LOGPROBS_THREADS, 0);
                }
                add(token_logprobs_bwd(d, i, false, rt), "token_logprobs", TOKEN_LOGPROBS_THREADS, 0);
                add(token_logprobs_bwd(d, i, true, rt), "token_logprobs", TOKEN_LOGPROBS_THREADS, 0);
                for (bwd, ent) in [(false, false), (false, true), (true, false), (true, true)] {
                    add(vocab_shard(bwd, d, i, ent, rt), "vocab_parallel", TOKEN_LOGPROBS_THREADS, 0);
                }
            }
        }
    }
    for d in [DType::F32, DType::F16, DType::BF16] {
        for i in [IndexType::I32, IndexType::I64] {
            add(token_logprobs_topk(d, i), "token_logprobs", TOPK_THREADS, 0);
        }
    }
    for i in [IndexType::I32, IndexType::I64] {
        add(vocab_finalize(i), "vocab_parallel", VOCAB_FINALIZE_THREADS, 0);
    }
    add("seq_stats".into(), "seq_reduce", SEQ_THREADS, 0);
    add("token_grad".into(), "seq_reduce", SEQ_THREADS, 0);
    add("preference_loss".into(), "preference_loss", PAIR_THREADS, 0);
    for k in ["grpo_entropy_threshold", "grpo_seq", "grpo_batch", "grpo_token_grad"] {
        add(k.into(), "grpo", GRPO_THREADS, 0);
    }
    add("group_loss".into(), "group_loss", GROUP_THREADS, 0);
    for k in [
        "gather_rows_b2",
        "gather_rows_b4",
        "gather_rows_b8",
        "scatter_rows_b1",
        "scatter_rows_b2",
        "scatter_rows_b4",
        "scatter_rows_b8",
    ] {
        add(format!("linear_{k}"), "linear_token_logprobs", LINEAR_ROWS_THREADS, 0);
    }
    for d in [DType::F32, DType::F16, DType::BF16] {
        add(linear_bias(false, d), "linear_token_logprobs", LINEAR_ROWS_THREADS, 0);
        add(linear_bias(true, d), "linear_token_logprobs", LINEAR_ROWS_THREADS, 0);
    }
    for dt in [DType::BF16, DType::F16] {
        for hd in [64, 128] {
            for kind in [
                AttnKernel::Forward,
                AttnKernel::ForwardV2,
                AttnKernel::BackwardPre,
                AttnKernel::BackwardDkDv,
                AttnKernel::BackwardDq,
                AttnKernel::BackwardDkDvV2,
                AttnKernel::BackwardDqV2,
                AttnKernel::ForwardV3,
                AttnKernel::BackwardDqV3,
                AttnKernel::BackwardDkDvV3,
            ] {
                let threads = if kind == AttnKernel::BackwardPre { ATTN_PRE_THREADS } else { ATTN_THREADS };
                add(
                    shared_prefix_attention(kind, dt, hd),
                    "shared_prefix_attention",
                    threads,
                    attn_smem(kind, hd),
                );
            }
        }
    }
    v
}

/// Every kernel of the crate.
pub fn kernels() -> &'static [KernelSpec] {
    static ALL: OnceLock<Vec<KernelSpec>> = OnceLock::new();
    ALL.get_or_init(build)
}

/// The kernel called `name`, if it exists.
pub fn spec(name: &str) -> Option<&'static KernelSpec> {
    kernels().iter().find(|k| k.name == name)
}

/// Entry points of one module.
pub fn module_kernels(module: &str) -> impl Iterator<Item = &'static KernelSpec> + '_ {
    kernels().iter().filter(move |k| k.module == module)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_module_has_kernels() {
        let all = kernels();
        let mut names: Vec<&str> = all.iter().map(|k| k.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        // token_logprobs: 5 forward/backward kinds x 2 row groups x 6 (dtype, index), 6 top-k.
        assert_eq!(all.len(), 66 + 48 + 2 + 2 + 1 + 40 + 4 + 1 + 7 + 6);
        for (m, _) in crate::kernels::MODULES {
            assert!(module_kernels(m).count() > 0, "{m}");
        }
        assert!(all.iter().all(|k| crate::kernels::MODULES.iter().any(|(m, _)| *m == k.module)));
    }

    /// The device opens by opting every kernel in to its dynamic shared memory, which fails above
    /// the part's per-block maximum: 99 KiB (101376 bytes) on sm_86, sm_89 and sm_120, the
    /// smallest of the GPUs the embedded code serves (sm_80: 163 KiB, sm_90/sm_100: 227 KiB). One
    /// kernel over it would make every kernel unusable there.
    #[test]
    fn every_kernel_fits_the_smallest_shared_memory_opt_in() {
        for k in kernels() {
            assert!(
                k.dynamic_smem <= 101_376,
                "{} asks for {} bytes of dynamic shared memory",
                k.name,
                k.dynamic_smem
            );
        }
    }

    #[test]
    fn attention_shared_memory_matches_the_kernels_static_asserts() {
        // kernels/shared_prefix_attention.cu: fwd 27648 / 52224, dq 36864 / 69632, dkdv 27904 / 52480.
        assert_eq!(attn_smem(AttnKernel::Forward, 64), 27648);
        assert_eq!(attn_smem(AttnKernel::Forward, 128), 52224);
        assert_eq!(attn_smem(AttnKernel::ForwardV2, 64), 55296);
        assert_eq!(attn_smem(AttnKernel::ForwardV2, 128), 87040);
        assert_eq!(attn_smem(AttnKernel::ForwardV3, 64), 40960);
        assert_eq!(attn_smem(AttnKernel::ForwardV3, 128), 81920);
        assert_eq!(attn_smem(AttnKernel::BackwardDqV3, 64), 40960);
        assert_eq!(attn_smem(AttnKernel::BackwardDqV3, 128), 81920);
        assert_eq!(attn_smem(AttnKernel::BackwardDkDvV3, 64), 33024);
        assert_eq!(attn_smem(AttnKernel::BackwardDkDvV3, 128), 65792);
        assert_eq!(attn_smem(AttnKernel::BackwardDqV2, 64), 46080);
        assert_eq!(attn_smem(AttnKernel::BackwardDqV2, 128), 87040);
        assert_eq!(attn_smem(AttnKernel::BackwardDkDvV2, 64), 37120);
        assert_eq!(attn_smem(AttnKernel::BackwardDkDvV2, 128), 69888);
        assert_eq!(attn_smem(AttnKernel::BackwardDq, 64), 36864);
        assert_eq!(attn_smem(AttnKernel::BackwardDq, 128), 69632);
        assert_eq!(attn_smem(AttnKernel::BackwardDkDv, 64), 27904);
        assert_eq!(attn_smem(AttnKernel::BackwardDkDv, 128), 52480);
        assert_eq!(spec("shared_prefix_attention_bwd_dq_f16_d128").unwrap().dynamic_smem, 69632);
    }
}
