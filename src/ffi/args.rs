//! The argument structs of the C ABI's op entry points, mirrors of `include/prefk.h` (the
//! source of truth; `tests/c_abi_header.rs` compares them field by field). Every struct starts
//! with `struct_size`, set by `new()`. Versioning: a struct only grows at its end; the library
//! reads `struct_size` bytes of it (from the size it was first published with up to its own),
//! the fields past that as 0, and refuses any other size.
use super::{PrefkGrpoConfig, PrefkLossTerm};
use std::mem::{offset_of, size_of};

/// The arguments of [`prefk_group_loss_check_labels`](super::prefk_group_loss_check_labels), as `include/prefk.h` declares them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PrefkGroupLossCheckLabelsArgs {
    /// `size_of` this struct as the caller compiled it (set by `new()`).
    pub struct_size: u64,
    /// Sequences per list (LiPO, PRO).
    pub list_size: i64,
    /// Per-sequence labels (KTO roles, LiPO relevance, PRO rewards).
    pub labels: *const f32,
    /// Number of sequences.
    pub n_seqs: i64,
    /// Loss kind code (see the entry point).
    pub kind: u32,
    /// β of the loss.
    pub beta: f32,
    /// The loss kind's first parameter (see the entry point).
    pub p0: f32,
    /// The loss kind's second parameter (see the entry point).
    pub p1: f32,
    /// KTO: the detached KL baseline z0, or NaN to compute it from the KL samples.
    pub kl_given: f32,
    /// Bit flags of the loss kind (see the entry point).
    pub flags: u32,
}

impl PrefkGroupLossCheckLabelsArgs {
    /// Every field 0 (null pointers), `struct_size` set: fill in the fields, keep the size.
    pub fn new() -> Self {
        // SAFETY: integers, floats and raw pointers, for which all-zero bytes are valid.
        let mut a: Self = unsafe { std::mem::zeroed() };
        a.struct_size = size_of::<Self>() as u64;
        a
    }
}

impl Default for PrefkGroupLossCheckLabelsArgs {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: plain-old-data, every field valid as zero bytes; layout pinned below.
unsafe impl super::plumbing::AbiArgs for PrefkGroupLossCheckLabelsArgs {}

const _: () = {
    assert!(size_of::<PrefkGroupLossCheckLabelsArgs>() == 56);
    assert!(offset_of!(PrefkGroupLossCheckLabelsArgs, struct_size) == 0);
    assert!(offset_of!(PrefkGroupLossCheckLabelsArgs, list_size) == 8);
    assert!(offset_of!(PrefkGroupLossCheckLabelsArgs, labels) == 16);
    assert!(offset_of!(PrefkGroupLossCheckLabelsArgs, n_seqs) == 24);
    assert!(offset_of!(PrefkGroupLossCheckLabelsArgs, kind) == 32);
    assert!(offset_of!(PrefkGroupLossCheckLabelsArgs, beta) == 36);
    assert!(offset_of!(PrefkGroupLossCheckLabelsArgs, p0) == 40);
    assert!(offset_of!(PrefkGroupLossCheckLabelsArgs, p1) == 44);
    assert!(offset_of!(PrefkGroupLossCheckLabelsArgs, kl_given) == 48);
    assert!(offset_of!(PrefkGroupLossCheckLabelsArgs, flags) == 52);
};

/// The arguments of [`prefk_group_loss`](super::prefk_group_loss), as `include/prefk.h` declares them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PrefkGroupLossArgs {
    /// `size_of` this struct as the caller compiled it (set by `new()`).
    pub struct_size: u64,
    /// The caller's CUstream as an integer (0: the legacy default stream).
    pub stream: u64,
    /// Sequences per list (LiPO, PRO).
    pub list_size: i64,
    /// Device `[n_tokens]` f32 per-token log-probs (input of the losses; output of the log-prob forwards).
    pub logp: u64,
    /// Device `[n_tokens]` u8 loss mask (0 = ignored), or 0 for every token.
    pub mask: u64,
    /// Device `[n_tokens]` f32 reference log-probs, or 0.
    pub ref_logp: u64,
    /// Device `[n_seqs]` f32 per-sequence reference scores, or 0.
    pub ref_seq: u64,
    /// Per-sequence labels (KTO roles, LiPO relevance, PRO rewards).
    pub labels: u64,
    /// Number of tokens.
    pub n_tokens: i64,
    /// `[n_seqs + 1]` i32 sequence offsets, or 0 for the padded layout.
    pub cu_seqlens: u64,
    /// Number of sequences.
    pub n_seqs: i64,
    /// Tokens per sequence in the padded layout.
    pub seq_len: i64,
    /// Device `[n_seqs]` f32 per-sequence output, or 0.
    pub seq_out: u64,
    /// Output metrics (f32; the op's metric array, see its `*_METRIC_NAMES`).
    pub metrics: u64,
    /// Device `[n_tokens]` f32 dL/dlogp (input of the backwards; output of the losses).
    pub grad_logp: u64,
    /// Device workspace of the size the op's `*_workspace_len` gives.
    pub workspace: u64,
    /// A u32 status word the kernels OR bits into, or 0.
    pub status: u64,
    /// The device: a CUDA ordinal, or `PREFK_DEVICE_EMULATOR` (-1).
    pub device: i32,
    /// Loss kind code (see the entry point).
    pub kind: u32,
    /// β of the loss.
    pub beta: f32,
    /// The loss kind's first parameter (see the entry point).
    pub p0: f32,
    /// The loss kind's second parameter (see the entry point).
    pub p1: f32,
    /// KTO: the detached KL baseline z0, or NaN to compute it from the KL samples.
    pub kl_given: f32,
    /// Bit flags of the loss kind (see the entry point).
    pub flags: u32,
    /// Multiplies every gradient (an upstream dL).
    pub grad_scale: f32,
}

impl PrefkGroupLossArgs {
    /// Every field 0 (null pointers), `struct_size` set: fill in the fields, keep the size.
    pub fn new() -> Self {
        // SAFETY: integers, floats and raw pointers, for which all-zero bytes are valid.
        let mut a: Self = unsafe { std::mem::zeroed() };
        a.struct_size = size_of::<Self>() as u64;
        a
    }
}

impl Default for PrefkGroupLossArgs {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: plain-old-data, every field valid as zero bytes; layout pinned below.
unsafe impl super::plumbing::AbiArgs for PrefkGroupLossArgs {}

const _: () = {
    assert!(size_of::<PrefkGroupLossArgs>() == 168);
    assert!(offset_of!(PrefkGroupLossArgs, struct_size) == 0);
    assert!(offset_of!(PrefkGroupLossArgs, stream) == 8);
    assert!(offset_of!(PrefkGroupLossArgs, list_size) == 16);
    assert!(offset_of!(PrefkGroupLossArgs, logp) == 24);
    assert!(offset_of!(PrefkGroupLossArgs, mask) == 32);
    assert!(offset_of!(PrefkGroupLossArgs, ref_logp) == 40);
    assert!(offset_of!(PrefkGroupLossArgs, ref_seq) == 48);
    assert!(offset_of!(PrefkGroupLossArgs, labels) == 56);
    assert!(offset_of!(PrefkGroupLossArgs, n_tokens) == 64);
    assert!(offset_of!(PrefkGroupLossArgs, cu_seqlens) == 72);
    assert!(offset_of!(PrefkGroupLossArgs, n_seqs) == 80);
    assert!(offset_of!(PrefkGroupLossArgs, seq_len) == 88);
    assert!(offset_of!(PrefkGroupLossArgs, seq_out) == 96);
    assert!(offset_of!(PrefkGroupLossArgs, metrics) == 104);
    assert!(offset_of!(PrefkGroupLossArgs, grad_logp) == 112);
    assert!(offset_of!(PrefkGroupLossArgs, workspace) == 120);
    assert!(offset_of!(PrefkGroupLossArgs, status) == 128);
    assert!(offset_of!(PrefkGroupLossArgs, device) == 136);
    assert!(offset_of!(PrefkGroupLossArgs, kind) == 140);
    assert!(offset_of!(PrefkGroupLossArgs, beta) == 144);
    assert!(offset_of!(PrefkGroupLossArgs, p0) == 148);
    assert!(offset_of!(PrefkGroupLossArgs, p1) == 152);
    assert!(offset_of!(PrefkGroupLossArgs, kl_given) == 156);
    assert!(offset_of!(PrefkGroupLossArgs, flags) == 160);
    assert!(offset_of!(PrefkGroupLossArgs, grad_scale) == 164);
};

/// The arguments of [`prefk_grpo_loss`](super::prefk_grpo_loss), as `include/prefk.h` declares them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PrefkGrpoLossArgs {
    /// `size_of` this struct as the caller compiled it (set by `new()`).
    pub struct_size: u64,
    /// The caller's CUstream as an integer (0: the legacy default stream).
    pub stream: u64,
    /// Host GRPO configuration.
    pub config: *const PrefkGrpoConfig,
    /// Device `[n_tokens]` f32 per-token log-probs (input of the losses; output of the log-prob forwards).
    pub logp: u64,
    /// Device `[n_tokens]` f32 rollout log-probs, or 0 (on-policy).
    pub old_logp: u64,
    /// Device `[n_tokens]` f32 inference-engine log-probs for the off-policy mask, or 0.
    pub sampling_logp: u64,
    /// Device `[n_tokens]` f32 reference log-probs, or 0.
    pub ref_logp: u64,
    /// Device `[n_tokens]` u8 loss mask (0 = ignored), or 0 for every token.
    pub mask: u64,
    /// Device `[n_tokens]` f32 vLLM importance-sampling weights, or 0.
    pub is_weights: u64,
    /// Device `[n_rows]` f32 entropies, or 0.
    pub entropy: u64,
    /// Device `[n_seqs]` f32 advantages.
    pub advantages: u64,
    /// Number of tokens.
    pub n_tokens: i64,
    /// `[n_seqs + 1]` i32 sequence offsets, or 0 for the padded layout.
    pub cu_seqlens: u64,
    /// Number of sequences.
    pub n_seqs: i64,
    /// Tokens per sequence in the padded layout.
    pub seq_len: i64,
    /// Output metrics (f32; the op's metric array, see its `*_METRIC_NAMES`).
    pub metrics: u64,
    /// Device `[n_tokens]` f32 dL/dlogp (input of the backwards; output of the losses).
    pub grad_logp: u64,
    /// Device `[n_rows]` f32 dL/dH, or 0 (no entropy gradient).
    pub grad_entropy: u64,
    /// Device workspace of the size the op's `*_workspace_len` gives.
    pub workspace: u64,
    /// A u32 status word the kernels OR bits into, or 0.
    pub status: u64,
    /// The device: a CUDA ordinal, or `PREFK_DEVICE_EMULATOR` (-1).
    pub device: i32,
    /// Padding to a multiple of 8 bytes; 0.
    pub reserved: u32,
}

impl PrefkGrpoLossArgs {
    /// Every field 0 (null pointers), `struct_size` set: fill in the fields, keep the size.
    pub fn new() -> Self {
        // SAFETY: integers, floats and raw pointers, for which all-zero bytes are valid.
        let mut a: Self = unsafe { std::mem::zeroed() };
        a.struct_size = size_of::<Self>() as u64;
        a
    }
}

impl Default for PrefkGrpoLossArgs {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: plain-old-data, every field valid as zero bytes; layout pinned below.
unsafe impl super::plumbing::AbiArgs for PrefkGrpoLossArgs {}

const _: () = {
    assert!(size_of::<PrefkGrpoLossArgs>() == 168);
    assert!(offset_of!(PrefkGrpoLossArgs, struct_size) == 0);
    assert!(offset_of!(PrefkGrpoLossArgs, stream) == 8);
    assert!(offset_of!(PrefkGrpoLossArgs, config) == 16);
    assert!(offset_of!(PrefkGrpoLossArgs, logp) == 24);
    assert!(offset_of!(PrefkGrpoLossArgs, old_logp) == 32);
    assert!(offset_of!(PrefkGrpoLossArgs, sampling_logp) == 40);
    assert!(offset_of!(PrefkGrpoLossArgs, ref_logp) == 48);
    assert!(offset_of!(PrefkGrpoLossArgs, mask) == 56);
    assert!(offset_of!(PrefkGrpoLossArgs, is_weights) == 64);
    assert!(offset_of!(PrefkGrpoLossArgs, entropy) == 72);
    assert!(offset_of!(PrefkGrpoLossArgs, advantages) == 80);
    assert!(offset_of!(PrefkGrpoLossArgs, n_tokens) == 88);
    assert!(offset_of!(PrefkGrpoLossArgs, cu_seqlens) == 96);
    assert!(offset_of!(PrefkGrpoLossArgs, n_seqs) == 104);
    assert!(offset_of!(PrefkGrpoLossArgs, seq_len) == 112);
    assert!(offset_of!(PrefkGrpoLossArgs, metrics) == 120);
    assert!(offset_of!(PrefkGrpoLossArgs, grad_logp) == 128);
    assert!(offset_of!(PrefkGrpoLossArgs, grad_entropy) == 136);
    assert!(offset_of!(PrefkGrpoLossArgs, workspace) == 144);
    assert!(offset_of!(PrefkGrpoLossArgs, status) == 152);
    assert!(offset_of!(PrefkGrpoLossArgs, device) == 160);
    assert!(offset_of!(PrefkGrpoLossArgs, reserved) == 164);
};

/// The arguments of [`prefk_linear_token_logprobs_forward`](super::prefk_linear_token_logprobs_forward), as `include/prefk.h` declares them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PrefkLinearTokenLogprobsForwardArgs {
    /// `size_of` this struct as the caller compiled it (set by `new()`).
    pub struct_size: u64,
    /// The caller's CUstream as an integer (0: the legacy default stream).
    pub stream: u64,
    /// Device `[N, H]` hidden states.
    pub hidden: u64,
    /// Device `[V, H]` LM-head weight (row-major, as `nn.Linear` stores it).
    pub weight: u64,
    /// Device `[V]` f32 LM-head bias, or 0.
    pub bias: u64,
    /// Device `[n_rows]` target ids (i32 or i64 by `index_code`).
    pub targets: u64,
    /// Device `[n_tokens]` f32 per-token log-probs (input of the losses; output of the log-prob forwards).
    pub logp: u64,
    /// Device `[n_rows]` f32 output: logsumexp(logits / T).
    pub lse: u64,
    /// Device `[n_rows]` f32 entropies, or 0.
    pub entropy: u64,
    /// Number of rows (tokens).
    pub n_rows: i64,
    /// H, the hidden size.
    pub hidden_dim: i64,
    /// Vocabulary size V.
    pub vocab: i64,
    /// Target value of rows that are ignored.
    pub ignore_index: i64,
    /// Most bytes of device workspace the chunk loop may use.
    pub workspace_bytes: i64,
    /// Host output: the number of chunks the loop ran.
    pub n_chunks: *mut i64,
    /// The device: a CUDA ordinal, or `PREFK_DEVICE_EMULATOR` (-1).
    pub device: i32,
    /// Element type code: 0 f32, 1 f16, 2 bf16.
    pub dtype_code: u32,
    /// Target index type code: 0 i32, 1 i64.
    pub index_code: u32,
    /// Softmax temperature T (> 0).
    pub temperature: f32,
    /// Device `[n_rows]` f32 output log Σ p² (WPO), or 0; needs `entropy`. Added in 0.2.
    pub log_sum_sq: u64,
    /// Device `[n_rows]` f32 output: mean of logits / T (TRL's `mean_logits`), or 0. Added in 0.2.
    pub mean_logits: u64,
    /// Device `[n_rows]` u8 output: the target is the row's first argmax (TRL's `is_top1`), or 0. Added in 0.2.
    pub is_top1: u64,
    /// Device `[n_rows, top_k]` f32 output: the top_k largest log-probs per row, descending; 0 when top_k is 0. Added in 0.2.
    pub topk_logp: u64,
    /// Device `[n_rows, top_k]` i64 output: their token ids (-1 on ignored rows). Added in 0.2.
    pub topk_ids: u64,
    /// k of the top-k outputs, 0 ..= 64 (0: none). Added in 0.2.
    pub top_k: i64,
    /// Device workspace of `workspace_bytes` bytes, 16-byte aligned, or 0. Given: the call is
    /// stream-ordered (every row projected in order, no host read of the targets, no allocation,
    /// no synchronization; bad targets only through `status`). 0: the host-planned loop. Added in 0.3.
    pub workspace: u64,
    /// Device u32 status word the kernels OR their bits into (stream-ordered calls), or 0. Added in 0.3.
    pub status: u64,
}

impl PrefkLinearTokenLogprobsForwardArgs {
    /// Every field 0 (null pointers), `struct_size` set: fill in the fields, keep the size.
    pub fn new() -> Self {
        // SAFETY: integers, floats and raw pointers, for which all-zero bytes are valid.
        let mut a: Self = unsafe { std::mem::zeroed() };
        a.struct_size = size_of::<Self>() as u64;
        a
    }
}

impl Default for PrefkLinearTokenLogprobsForwardArgs {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: plain-old-data, every field valid as zero bytes; layout pinned below.
unsafe impl super::plumbing::AbiArgs for PrefkLinearTokenLogprobsForwardArgs {
    // As first published: through `temperature` (the TRL outputs and top-k came later).
    const MIN_SIZE: usize = 136;
}

const _: () = {
    assert!(size_of::<PrefkLinearTokenLogprobsForwardArgs>() == 200);
    assert!(offset_of!(PrefkLinearTokenLogprobsForwardArgs, log_sum_sq) == 136);
    assert!(offset_of!(PrefkLinearTokenLogprobsForwardArgs, top_k) == 176);
    assert!(offset_of!(PrefkLinearTokenLogprobsForwardArgs, workspace) == 184);
    assert!(offset_of!(PrefkLinearTokenLogprobsForwardArgs, status) == 192);
    assert!(offset_of!(PrefkLinearTokenLogprobsForwardArgs, struct_size) == 0);
    assert!(offset_of!(PrefkLinearTokenLogprobsForwardArgs, stream) == 8);
    assert!(offset_of!(PrefkLinearTokenLogprobsForwardArgs, hidden) == 16);
    assert!(offset_of!(PrefkLinearTokenLogprobsForwardArgs, weight) == 24);
    assert!(offset_of!(PrefkLinearTokenLogprobsForwardArgs, bias) == 32);
    assert!(offset_of!(PrefkLinearTokenLogprobsForwardArgs, targets) == 40);
    assert!(offset_of!(PrefkLinearTokenLogprobsForwardArgs, logp) == 48);
    assert!(offset_of!(PrefkLinearTokenLogprobsForwardArgs, lse) == 56);
    assert!(offset_of!(PrefkLinearTokenLogprobsForwardArgs, entropy) == 64);
    assert!(offset_of!(PrefkLinearTokenLogprobsForwardArgs, n_rows) == 72);
    assert!(offset_of!(PrefkLinearTokenLogprobsForwardArgs, hidden_dim) == 80);
    assert!(offset_of!(PrefkLinearTokenLogprobsForwardArgs, vocab) == 88);
    assert!(offset_of!(PrefkLinearTokenLogprobsForwardArgs, ignore_index) == 96);
    assert!(offset_of!(PrefkLinearTokenLogprobsForwardArgs, workspace_bytes) == 104);
    assert!(offset_of!(PrefkLinearTokenLogprobsForwardArgs, n_chunks) == 112);
    assert!(offset_of!(PrefkLinearTokenLogprobsForwardArgs, device) == 120);
    assert!(offset_of!(PrefkLinearTokenLogprobsForwardArgs, dtype_code) == 124);
    assert!(offset_of!(PrefkLinearTokenLogprobsForwardArgs, index_code) == 128);
    assert!(offset_of!(PrefkLinearTokenLogprobsForwardArgs, temperature) == 132);
};

/// The arguments of [`prefk_linear_token_logprobs_backward`](super::prefk_linear_token_logprobs_backward), as `include/prefk.h` declares them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PrefkLinearTokenLogprobsBackwardArgs {
    /// `size_of` this struct as the caller compiled it (set by `new()`).
    pub struct_size: u64,
    /// The caller's CUstream as an integer (0: the legacy default stream).
    pub stream: u64,
    /// Device `[N, H]` hidden states.
    pub hidden: u64,
    /// Device `[V, H]` LM-head weight (row-major, as `nn.Linear` stores it).
    pub weight: u64,
    /// Device `[V]` f32 LM-head bias, or 0.
    pub bias: u64,
    /// Device `[n_rows]` target ids (i32 or i64 by `index_code`).
    pub targets: u64,
    /// Device `[n_tokens]` f32 dL/dlogp (input of the backwards; output of the losses).
    pub grad_logp: u64,
    /// Device `[n_rows]` f32 dL/dH, or 0 (no entropy gradient).
    pub grad_entropy: u64,
    /// Device `[N, H]` output dL/dhidden.
    pub d_hidden: u64,
    /// Device `[V, H]` f32 output dL/dweight.
    pub d_weight: u64,
    /// Device `[V]` f32 output dL/dbias, or 0.
    pub d_bias: u64,
    /// Number of rows (tokens).
    pub n_rows: i64,
    /// H, the hidden size.
    pub hidden_dim: i64,
    /// Vocabulary size V.
    pub vocab: i64,
    /// Target value of rows that are ignored.
    pub ignore_index: i64,
    /// Most bytes of device workspace the chunk loop may use.
    pub workspace_bytes: i64,
    /// The device: a CUDA ordinal, or `PREFK_DEVICE_EMULATOR` (-1).
    pub device: i32,
    /// Element type code: 0 f32, 1 f16, 2 bf16.
    pub dtype_code: u32,
    /// Target index type code: 0 i32, 1 i64.
    pub index_code: u32,
    /// Softmax temperature T (> 0).
    pub temperature: f32,
    /// Device workspace, as in [`PrefkLinearTokenLogprobsForwardArgs::workspace`]. Added in 0.3.
    pub workspace: u64,
    /// Device u32 status word, as in [`PrefkLinearTokenLogprobsForwardArgs::status`]. Added in 0.3.
    pub status: u64,
}

impl PrefkLinearTokenLogprobsBackwardArgs {
    /// Every field 0 (null pointers), `struct_size` set: fill in the fields, keep the size.
    pub fn new() -> Self {
        // SAFETY: integers, floats and raw pointers, for which all-zero bytes are valid.
        let mut a: Self = unsafe { std::mem::zeroed() };
        a.struct_size = size_of::<Self>() as u64;
        a
    }
}

impl Default for PrefkLinearTokenLogprobsBackwardArgs {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: plain-old-data, every field valid as zero bytes; layout pinned below.
unsafe impl super::plumbing::AbiArgs for PrefkLinearTokenLogprobsBackwardArgs {
    // As first published: through `temperature` (the stream-ordered workspace came later).
    const MIN_SIZE: usize = 144;
}

const _: () = {
    assert!(size_of::<PrefkLinearTokenLogprobsBackwardArgs>() == 160);
    assert!(offset_of!(PrefkLinearTokenLogprobsBackwardArgs, workspace) == 144);
    assert!(offset_of!(PrefkLinearTokenLogprobsBackwardArgs, status) == 152);
    assert!(offset_of!(PrefkLinearTokenLogprobsBackwardArgs, struct_size) == 0);
    assert!(offset_of!(PrefkLinearTokenLogprobsBackwardArgs, stream) == 8);
    assert!(offset_of!(PrefkLinearTokenLogprobsBackwardArgs, hidden) == 16);
    assert!(offset_of!(PrefkLinearTokenLogprobsBackwardArgs, weight) == 24);
    assert!(offset_of!(PrefkLinearTokenLogprobsBackwardArgs, bias) == 32);
    assert!(offset_of!(PrefkLinearTokenLogprobsBackwardArgs, targets) == 40);
    assert!(offset_of!(PrefkLinearTokenLogprobsBackwardArgs, grad_logp) == 48);
    assert!(offset_of!(PrefkLinearTokenLogprobsBackwardArgs, grad_entropy) == 56);
    assert!(offset_of!(PrefkLinearTokenLogprobsBackwardArgs, d_hidden) == 64);
    assert!(offset_of!(PrefkLinearTokenLogprobsBackwardArgs, d_weight) == 72);
    assert!(offset_of!(PrefkLinearTokenLogprobsBackwardArgs, d_bias) == 80);
    assert!(offset_of!(PrefkLinearTokenLogprobsBackwardArgs, n_rows) == 88);
    assert!(offset_of!(PrefkLinearTokenLogprobsBackwardArgs, hidden_dim) == 96);
    assert!(offset_of!(PrefkLinearTokenLogprobsBackwardArgs, vocab) == 104);
    assert!(offset_of!(PrefkLinearTokenLogprobsBackwardArgs, ignore_index) == 112);
    assert!(offset_of!(PrefkLinearTokenLogprobsBackwardArgs, workspace_bytes) == 120);
    assert!(offset_of!(PrefkLinearTokenLogprobsBackwardArgs, device) == 128);
    assert!(offset_of!(PrefkLinearTokenLogprobsBackwardArgs, dtype_code) == 132);
    assert!(offset_of!(PrefkLinearTokenLogprobsBackwardArgs, index_code) == 136);
    assert!(offset_of!(PrefkLinearTokenLogprobsBackwardArgs, temperature) == 140);
};

/// The arguments of [`prefk_linear_shard_partials`](super::prefk_linear_shard_partials), as `include/prefk.h` declares them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PrefkLinearShardPartialsArgs {
    /// `size_of` this struct as the caller compiled it (set by `new()`).
    pub struct_size: u64,
    /// The caller's CUstream as an integer (0: the legacy default stream).
    pub stream: u64,
    /// Device `[N, H]` hidden states.
    pub hidden: u64,
    /// Device `[V, H]` LM-head weight (row-major, as `nn.Linear` stores it).
    pub weight: u64,
    /// Device `[V]` f32 LM-head bias, or 0.
    pub bias: u64,
    /// Device `[n_rows]` target ids (i32 or i64 by `index_code`).
    pub targets: u64,
    /// Device `[n_rows, VP_STATS]` f32 per-shard partial statistics.
    pub partials: u64,
    /// Number of rows (tokens).
    pub n_rows: i64,
    /// H, the hidden size.
    pub hidden_dim: i64,
    /// Vocabulary ids in this rank's shard.
    pub shard_vocab: i64,
    /// First vocabulary id of this rank's shard.
    pub vocab_start: i64,
    /// Vocabulary size V.
    pub vocab: i64,
    /// Target value of rows that are ignored.
    pub ignore_index: i64,
    /// Most bytes of device workspace the chunk loop may use.
    pub workspace_bytes: i64,
    /// The device: a CUDA ordinal, or `PREFK_DEVICE_EMULATOR` (-1).
    pub device: i32,
    /// Element type code: 0 f32, 1 f16, 2 bf16.
    pub dtype_code: u32,
    /// Target index type code: 0 i32, 1 i64.
    pub index_code: u32,
    /// Softmax temperature T (> 0).
    pub temperature: f32,
    /// Non-zero: also compute the entropy.
    pub compute_entropy: u32,
    /// Padding to a multiple of 8 bytes; 0.
    pub reserved: u32,
}

impl PrefkLinearShardPartialsArgs {
    /// Every field 0 (null pointers), `struct_size` set: fill in the fields, keep the size.
    pub fn new() -> Self {
        // SAFETY: integers, floats and raw pointers, for which all-zero bytes are valid.
        let mut a: Self = unsafe { std::mem::zeroed() };
        a.struct_size = size_of::<Self>() as u64;
        a
    }
}

impl Default for PrefkLinearShardPartialsArgs {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: plain-old-data, every field valid as zero bytes; layout pinned below.
unsafe impl super::plumbing::AbiArgs for PrefkLinearShardPartialsArgs {}

const _: () = {
    assert!(size_of::<PrefkLinearShardPartialsArgs>() == 136);
    assert!(offset_of!(PrefkLinearShardPartialsArgs, struct_size) == 0);
    assert!(offset_of!(PrefkLinearShardPartialsArgs, stream) == 8);
    assert!(offset_of!(PrefkLinearShardPartialsArgs, hidden) == 16);
    assert!(offset_of!(PrefkLinearShardPartialsArgs, weight) == 24);
    assert!(offset_of!(PrefkLinearShardPartialsArgs, bias) == 32);
    assert!(offset_of!(PrefkLinearShardPartialsArgs, targets) == 40);
    assert!(offset_of!(PrefkLinearShardPartialsArgs, partials) == 48);
    assert!(offset_of!(PrefkLinearShardPartialsArgs, n_rows) == 56);
    assert!(offset_of!(PrefkLinearShardPartialsArgs, hidden_dim) == 64);
    assert!(offset_of!(PrefkLinearShardPartialsArgs, shard_vocab) == 72);
    assert!(offset_of!(PrefkLinearShardPartialsArgs, vocab_start) == 80);
    assert!(offset_of!(PrefkLinearShardPartialsArgs, vocab) == 88);
    assert!(offset_of!(PrefkLinearShardPartialsArgs, ignore_index) == 96);
    assert!(offset_of!(PrefkLinearShardPartialsArgs, workspace_bytes) == 104);
    assert!(offset_of!(PrefkLinearShardPartialsArgs, device) == 112);
    assert!(offset_of!(PrefkLinearShardPartialsArgs, dtype_code) == 116);
    assert!(offset_of!(PrefkLinearShardPartialsArgs, index_code) == 120);
    assert!(offset_of!(PrefkLinearShardPartialsArgs, temperature) == 124);
    assert!(offset_of!(PrefkLinearShardPartialsArgs, compute_entropy) == 128);
    assert!(offset_of!(PrefkLinearShardPartialsArgs, reserved) == 132);
};

/// The arguments of [`prefk_linear_shard_backward`](super::prefk_linear_shard_backward), as `include/prefk.h` declares them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PrefkLinearShardBackwardArgs {
    /// `size_of` this struct as the caller compiled it (set by `new()`).
    pub struct_size: u64,
    /// The caller's CUstream as an integer (0: the legacy default stream).
    pub stream: u64,
    /// Device `[N, H]` hidden states.
    pub hidden: u64,
    /// Device `[V, H]` LM-head weight (row-major, as `nn.Linear` stores it).
    pub weight: u64,
    /// Device `[V]` f32 LM-head bias, or 0.
    pub bias: u64,
    /// Device `[n_rows]` target ids (i32 or i64 by `index_code`).
    pub targets: u64,
    /// Device `[n_rows, 2]` f32 softmax statistics (row max, log2 of the sum): written by the forward, read by the backward.
    pub stats: u64,
    /// Device `[n_rows]` f32 entropies, or 0.
    pub entropy: u64,
    /// Device `[n_tokens]` f32 dL/dlogp (input of the backwards; output of the losses).
    pub grad_logp: u64,
    /// Device `[n_rows]` f32 dL/dH, or 0 (no entropy gradient).
    pub grad_entropy: u64,
    /// Device `[N, H]` output dL/dhidden.
    pub d_hidden: u64,
    /// Device `[V, H]` f32 output dL/dweight.
    pub d_weight: u64,
    /// Device `[V]` f32 output dL/dbias, or 0.
    pub d_bias: u64,
    /// Number of rows (tokens).
    pub n_rows: i64,
    /// H, the hidden size.
    pub hidden_dim: i64,
    /// Vocabulary ids in this rank's shard.
    pub shard_vocab: i64,
    /// First vocabulary id of this rank's shard.
    pub vocab_start: i64,
    /// Vocabulary size V.
    pub vocab: i64,
    /// Target value of rows that are ignored.
    pub ignore_index: i64,
    /// Most bytes of device workspace the chunk loop may use.
    pub workspace_bytes: i64,
    /// The device: a CUDA ordinal, or `PREFK_DEVICE_EMULATOR` (-1).
    pub device: i32,
    /// Element type code: 0 f32, 1 f16, 2 bf16.
    pub dtype_code: u32,
    /// Target index type code: 0 i32, 1 i64.
    pub index_code: u32,
    /// Softmax temperature T (> 0).
    pub temperature: f32,
}

impl PrefkLinearShardBackwardArgs {
    /// Every field 0 (null pointers), `struct_size` set: fill in the fields, keep the size.
    pub fn new() -> Self {
        // SAFETY: integers, floats and raw pointers, for which all-zero bytes are valid.
        let mut a: Self = unsafe { std::mem::zeroed() };
        a.struct_size = size_of::<Self>() as u64;
        a
    }
}

impl Default for PrefkLinearShardBackwardArgs {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: plain-old-data, every field valid as zero bytes; layout pinned below.
unsafe impl super::plumbing::AbiArgs for PrefkLinearShardBackwardArgs {}

const _: () = {
    assert!(size_of::<PrefkLinearShardBackwardArgs>() == 176);
    assert!(offset_of!(PrefkLinearShardBackwardArgs, struct_size) == 0);
    assert!(offset_of!(PrefkLinearShardBackwardArgs, stream) == 8);
    assert!(offset_of!(PrefkLinearShardBackwardArgs, hidden) == 16);
    assert!(offset_of!(PrefkLinearShardBackwardArgs, weight) == 24);
    assert!(offset_of!(PrefkLinearShardBackwardArgs, bias) == 32);
    assert!(offset_of!(PrefkLinearShardBackwardArgs, targets) == 40);
    assert!(offset_of!(PrefkLinearShardBackwardArgs, stats) == 48);
    assert!(offset_of!(PrefkLinearShardBackwardArgs, entropy) == 56);
    assert!(offset_of!(PrefkLinearShardBackwardArgs, grad_logp) == 64);
    assert!(offset_of!(PrefkLinearShardBackwardArgs, grad_entropy) == 72);
    assert!(offset_of!(PrefkLinearShardBackwardArgs, d_hidden) == 80);
    assert!(offset_of!(PrefkLinearShardBackwardArgs, d_weight) == 88);
    assert!(offset_of!(PrefkLinearShardBackwardArgs, d_bias) == 96);
    assert!(offset_of!(PrefkLinearShardBackwardArgs, n_rows) == 104);
    assert!(offset_of!(PrefkLinearShardBackwardArgs, hidden_dim) == 112);
    assert!(offset_of!(PrefkLinearShardBackwardArgs, shard_vocab) == 120);
    assert!(offset_of!(PrefkLinearShardBackwardArgs, vocab_start) == 128);
    assert!(offset_of!(PrefkLinearShardBackwardArgs, vocab) == 136);
    assert!(offset_of!(PrefkLinearShardBackwardArgs, ignore_index) == 144);
    assert!(offset_of!(PrefkLinearShardBackwardArgs, workspace_bytes) == 152);
    assert!(offset_of!(PrefkLinearShardBackwardArgs, device) == 160);
    assert!(offset_of!(PrefkLinearShardBackwardArgs, dtype_code) == 164);
    assert!(offset_of!(PrefkLinearShardBackwardArgs, index_code) == 168);
    assert!(offset_of!(PrefkLinearShardBackwardArgs, temperature) == 172);
};

/// The arguments of [`prefk_linear_preference_step`](super::prefk_linear_preference_step), as `include/prefk.h` declares them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PrefkLinearPreferenceStepArgs {
    /// `size_of` this struct as the caller compiled it (set by `new()`).
    pub struct_size: u64,
    /// The caller's CUstream as an integer (0: the legacy default stream).
    pub stream: u64,
    /// Device `[N, H]` hidden states.
    pub hidden: u64,
    /// Device `[V, H]` LM-head weight (row-major, as `nn.Linear` stores it).
    pub weight: u64,
    /// Device `[V]` f32 LM-head bias, or 0.
    pub bias: u64,
    /// Device `[n_rows]` target ids (i32 or i64 by `index_code`).
    pub targets: u64,
    /// Device `[n_tokens]` f32 token weights, or 0 (weight 1).
    pub weights: u64,
    /// Device `[n_tokens]` f32 reference log-probs, or 0.
    pub ref_logp: u64,
    /// Device `[n_seqs]` f32 per-sequence reference scores, or 0.
    pub ref_seq: u64,
    /// `[n_seqs + 1]` i32 sequence offsets, or 0 for the padded layout.
    pub cu_seqlens: *const i32,
    /// Number of sequences.
    pub n_seqs: i64,
    /// Tokens per sequence in the padded layout.
    pub seq_len: i64,
    /// Device `[n_pairs]` i32 chosen sequence of each pair, or 0 (first half chosen).
    pub chosen: *const i32,
    /// Device `[n_pairs]` i32 rejected sequence of each pair, or 0.
    pub rejected: *const i32,
    /// Number of pairs (with explicit `chosen` / `rejected`).
    pub n_pairs: i64,
    /// Host array of `n_terms` loss terms.
    pub terms: *const PrefkLossTerm,
    /// Device `[n_tokens]` f32 per-token log-probs (input of the losses; output of the log-prob forwards).
    pub logp: u64,
    /// Device `[N, H]` output dL/dhidden.
    pub d_hidden: u64,
    /// Device `[V, H]` f32 output dL/dweight.
    pub d_weight: u64,
    /// Device `[V]` f32 output dL/dbias, or 0.
    pub d_bias: u64,
    /// Output metrics (f32; the op's metric array, see its `*_METRIC_NAMES`).
    pub metrics: *mut f32,
    /// Device `[n_pairs, PAIR_COLUMNS]` f32 per-pair output, or 0.
    pub pair_out: *mut f32,
    /// Number of rows (tokens).
    pub n_rows: i64,
    /// H, the hidden size.
    pub hidden_dim: i64,
    /// Vocabulary size V.
    pub vocab: i64,
    /// Target value of rows that are ignored.
    pub ignore_index: i64,
    /// Most bytes of device workspace the chunk loop may use.
    pub workspace_bytes: i64,
    /// The device: a CUDA ordinal, or `PREFK_DEVICE_EMULATOR` (-1).
    pub device: i32,
    /// Element type code: 0 f32, 1 f16, 2 bf16.
    pub dtype_code: u32,
    /// Target index type code: 0 i32, 1 i64.
    pub index_code: u32,
    /// Number of loss terms (1 to 4).
    pub n_terms: u32,
    /// f-divergence code (`PREFK_DIV_*`).
    pub divergence: u32,
    /// α of the α-divergence.
    pub alpha: f32,
    /// DPO-family sequence aggregation code (`PREFK_AGG_*`).
    pub aggregation: u32,
    /// Softmax temperature T (> 0).
    pub temperature: f32,
}

impl PrefkLinearPreferenceStepArgs {
    /// Every field 0 (null pointers), `struct_size` set: fill in the fields, keep the size.
    pub fn new() -> Self {
        // SAFETY: integers, floats and raw pointers, for which all-zero bytes are valid.
        let mut a: Self = unsafe { std::mem::zeroed() };
        a.struct_size = size_of::<Self>() as u64;
        a
    }
}

impl Default for PrefkLinearPreferenceStepArgs {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: plain-old-data, every field valid as zero bytes; layout pinned below.
unsafe impl super::plumbing::AbiArgs for PrefkLinearPreferenceStepArgs {}

const _: () = {
    assert!(size_of::<PrefkLinearPreferenceStepArgs>() == 248);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, struct_size) == 0);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, stream) == 8);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, hidden) == 16);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, weight) == 24);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, bias) == 32);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, targets) == 40);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, weights) == 48);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, ref_logp) == 56);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, ref_seq) == 64);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, cu_seqlens) == 72);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, n_seqs) == 80);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, seq_len) == 88);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, chosen) == 96);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, rejected) == 104);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, n_pairs) == 112);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, terms) == 120);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, logp) == 128);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, d_hidden) == 136);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, d_weight) == 144);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, d_bias) == 152);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, metrics) == 160);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, pair_out) == 168);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, n_rows) == 176);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, hidden_dim) == 184);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, vocab) == 192);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, ignore_index) == 200);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, workspace_bytes) == 208);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, device) == 216);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, dtype_code) == 220);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, index_code) == 224);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, n_terms) == 228);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, divergence) == 232);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, alpha) == 236);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, aggregation) == 240);
    assert!(offset_of!(PrefkLinearPreferenceStepArgs, temperature) == 244);
};

/// The arguments of [`prefk_preference_loss`](super::prefk_preference_loss), as `include/prefk.h` declares them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PrefkPreferenceLossArgs {
    /// `size_of` this struct as the caller compiled it (set by `new()`).
    pub struct_size: u64,
    /// The caller's CUstream as an integer (0: the legacy default stream).
    pub stream: u64,
    /// Device `[n_tokens]` f32 per-token log-probs (input of the losses; output of the log-prob forwards).
    pub logp: u64,
    /// Device `[n_tokens]` u8 loss mask (0 = ignored), or 0 for every token.
    pub mask: u64,
    /// Device `[n_tokens]` f32 token weights, or 0 (weight 1).
    pub weights: u64,
    /// Device `[n_tokens]` f32 reference log-probs, or 0.
    pub ref_logp: u64,
    /// Device `[n_seqs]` f32 per-sequence reference scores, or 0.
    pub ref_seq: u64,
    /// Device `[n_seqs]` f32 WPO sequence weights, or 0.
    pub seq_weights: u64,
    /// Number of tokens.
    pub n_tokens: i64,
    /// `[n_seqs + 1]` i32 sequence offsets, or 0 for the padded layout.
    pub cu_seqlens: u64,
    /// Number of sequences.
    pub n_seqs: i64,
    /// Tokens per sequence in the padded layout.
    pub seq_len: i64,
    /// Device `[n_pairs]` i32 chosen sequence of each pair, or 0 (first half chosen).
    pub chosen: u64,
    /// Device `[n_pairs]` i32 rejected sequence of each pair, or 0.
    pub rejected: u64,
    /// Number of pairs (with explicit `chosen` / `rejected`).
    pub n_pairs: i64,
    /// Host array of `n_terms` loss terms.
    pub terms: *const PrefkLossTerm,
    /// Device `[n_pairs, PAIR_COLUMNS]` f32 per-pair output, or 0.
    pub pair_out: u64,
    /// Output metrics (f32; the op's metric array, see its `*_METRIC_NAMES`).
    pub metrics: u64,
    /// Device `[n_tokens]` f32 dL/dlogp (input of the backwards; output of the losses).
    pub grad_logp: u64,
    /// Device workspace of the size the op's `*_workspace_len` gives.
    pub workspace: u64,
    /// A u32 status word the kernels OR bits into, or 0.
    pub status: u64,
    /// The device: a CUDA ordinal, or `PREFK_DEVICE_EMULATOR` (-1).
    pub device: i32,
    /// Number of loss terms (1 to 4).
    pub n_terms: u32,
    /// f-divergence code (`PREFK_DIV_*`).
    pub divergence: u32,
    /// α of the α-divergence.
    pub alpha: f32,
    /// DPO-family sequence aggregation code (`PREFK_AGG_*`).
    pub aggregation: u32,
    /// Multiplies every gradient (an upstream dL).
    pub grad_scale: f32,
}

impl PrefkPreferenceLossArgs {
    /// Every field 0 (null pointers), `struct_size` set: fill in the fields, keep the size.
    pub fn new() -> Self {
        // SAFETY: integers, floats and raw pointers, for which all-zero bytes are valid.
        let mut a: Self = unsafe { std::mem::zeroed() };
        a.struct_size = size_of::<Self>() as u64;
        a
    }
}

impl Default for PrefkPreferenceLossArgs {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: plain-old-data, every field valid as zero bytes; layout pinned below.
unsafe impl super::plumbing::AbiArgs for PrefkPreferenceLossArgs {}

const _: () = {
    assert!(size_of::<PrefkPreferenceLossArgs>() == 192);
    assert!(offset_of!(PrefkPreferenceLossArgs, struct_size) == 0);
    assert!(offset_of!(PrefkPreferenceLossArgs, stream) == 8);
    assert!(offset_of!(PrefkPreferenceLossArgs, logp) == 16);
    assert!(offset_of!(PrefkPreferenceLossArgs, mask) == 24);
    assert!(offset_of!(PrefkPreferenceLossArgs, weights) == 32);
    assert!(offset_of!(PrefkPreferenceLossArgs, ref_logp) == 40);
    assert!(offset_of!(PrefkPreferenceLossArgs, ref_seq) == 48);
    assert!(offset_of!(PrefkPreferenceLossArgs, seq_weights) == 56);
    assert!(offset_of!(PrefkPreferenceLossArgs, n_tokens) == 64);
    assert!(offset_of!(PrefkPreferenceLossArgs, cu_seqlens) == 72);
    assert!(offset_of!(PrefkPreferenceLossArgs, n_seqs) == 80);
    assert!(offset_of!(PrefkPreferenceLossArgs, seq_len) == 88);
    assert!(offset_of!(PrefkPreferenceLossArgs, chosen) == 96);
    assert!(offset_of!(PrefkPreferenceLossArgs, rejected) == 104);
    assert!(offset_of!(PrefkPreferenceLossArgs, n_pairs) == 112);
    assert!(offset_of!(PrefkPreferenceLossArgs, terms) == 120);
    assert!(offset_of!(PrefkPreferenceLossArgs, pair_out) == 128);
    assert!(offset_of!(PrefkPreferenceLossArgs, metrics) == 136);
    assert!(offset_of!(PrefkPreferenceLossArgs, grad_logp) == 144);
    assert!(offset_of!(PrefkPreferenceLossArgs, workspace) == 152);
    assert!(offset_of!(PrefkPreferenceLossArgs, status) == 160);
    assert!(offset_of!(PrefkPreferenceLossArgs, device) == 168);
    assert!(offset_of!(PrefkPreferenceLossArgs, n_terms) == 172);
    assert!(offset_of!(PrefkPreferenceLossArgs, divergence) == 176);
    assert!(offset_of!(PrefkPreferenceLossArgs, alpha) == 180);
    assert!(offset_of!(PrefkPreferenceLossArgs, aggregation) == 184);
    assert!(offset_of!(PrefkPreferenceLossArgs, grad_scale) == 188);
};

/// The arguments of [`prefk_shared_prefix_attention_forward`](super::prefk_shared_prefix_attention_forward), as `include/prefk.h` declares them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PrefkSharedPrefixAttentionForwardArgs {
    /// `size_of` this struct as the caller compiled it (set by `new()`).
    pub struct_size: u64,
    /// The caller's CUstream as an integer (0: the legacy default stream).
    pub stream: u64,
    /// Device `[T, Hq, d]` queries.
    pub q: u64,
    /// Device `[T, Hkv, d]` keys.
    pub k: u64,
    /// Device `[T, Hkv, d]` values.
    pub v: u64,
    /// Device `[T, Hq, d]` attention output.
    pub o: u64,
    /// Device `[n_rows]` f32 output: logsumexp(logits / T).
    pub lse: u64,
    /// Device attention tile table from `prefk_prefix_layout`.
    pub tiles: u64,
    /// Device `[n_tokens]` i32 segment starts from `prefk_prefix_layout`.
    pub seg_lo2: u64,
    /// Number of attention tiles in `tiles`.
    pub n_tiles: i64,
    /// Number of tokens.
    pub n_tokens: i64,
    /// The device: a CUDA ordinal, or `PREFK_DEVICE_EMULATOR` (-1).
    pub device: i32,
    /// Element type code: 0 f32, 1 f16, 2 bf16.
    pub dtype_code: u32,
    /// Query heads Hq.
    pub q_heads: i32,
    /// Key/value heads Hkv (divides Hq).
    pub kv_heads: i32,
    /// Head dimension d (64 or 128).
    pub head_dim: i32,
    /// Attention softmax scale (usually head_dim^-1/2).
    pub scale: f32,
}

impl PrefkSharedPrefixAttentionForwardArgs {
    /// Every field 0 (null pointers), `struct_size` set: fill in the fields, keep the size.
    pub fn new() -> Self {
        // SAFETY: integers, floats and raw pointers, for which all-zero bytes are valid.
        let mut a: Self = unsafe { std::mem::zeroed() };
        a.struct_size = size_of::<Self>() as u64;
        a
    }
}

impl Default for PrefkSharedPrefixAttentionForwardArgs {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: plain-old-data, every field valid as zero bytes; layout pinned below.
unsafe impl super::plumbing::AbiArgs for PrefkSharedPrefixAttentionForwardArgs {}

const _: () = {
    assert!(size_of::<PrefkSharedPrefixAttentionForwardArgs>() == 112);
    assert!(offset_of!(PrefkSharedPrefixAttentionForwardArgs, struct_size) == 0);
    assert!(offset_of!(PrefkSharedPrefixAttentionForwardArgs, stream) == 8);
    assert!(offset_of!(PrefkSharedPrefixAttentionForwardArgs, q) == 16);
    assert!(offset_of!(PrefkSharedPrefixAttentionForwardArgs, k) == 24);
    assert!(offset_of!(PrefkSharedPrefixAttentionForwardArgs, v) == 32);
    assert!(offset_of!(PrefkSharedPrefixAttentionForwardArgs, o) == 40);
    assert!(offset_of!(PrefkSharedPrefixAttentionForwardArgs, lse) == 48);
    assert!(offset_of!(PrefkSharedPrefixAttentionForwardArgs, tiles) == 56);
    assert!(offset_of!(PrefkSharedPrefixAttentionForwardArgs, seg_lo2) == 64);
    assert!(offset_of!(PrefkSharedPrefixAttentionForwardArgs, n_tiles) == 72);
    assert!(offset_of!(PrefkSharedPrefixAttentionForwardArgs, n_tokens) == 80);
    assert!(offset_of!(PrefkSharedPrefixAttentionForwardArgs, device) == 88);
    assert!(offset_of!(PrefkSharedPrefixAttentionForwardArgs, dtype_code) == 92);
    assert!(offset_of!(PrefkSharedPrefixAttentionForwardArgs, q_heads) == 96);
    assert!(offset_of!(PrefkSharedPrefixAttentionForwardArgs, kv_heads) == 100);
    assert!(offset_of!(PrefkSharedPrefixAttentionForwardArgs, head_dim) == 104);
    assert!(offset_of!(PrefkSharedPrefixAttentionForwardArgs, scale) == 108);
};

/// The arguments of [`prefk_shared_prefix_attention_backward`](super::prefk_shared_prefix_attention_backward), as `include/prefk.h` declares them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PrefkSharedPrefixAttentionBackwardArgs {
    /// `size_of` this struct as the caller compiled it (set by `new()`).
    pub struct_size: u64,
    /// The caller's CUstream as an integer (0: the legacy default stream).
    pub stream: u64,
    /// Device `[T, Hq, d]` queries.
    pub q: u64,
    /// Device `[T, Hkv, d]` keys.
    pub k: u64,
    /// Device `[T, Hkv, d]` values.
    pub v: u64,
    /// Device `[T, Hq, d]` attention output.
    pub o: u64,
    /// Device `[n_rows]` f32 output: logsumexp(logits / T).
    pub lse: u64,
    /// Device `[T, Hq, d]` upstream dL/dO.
    pub dout: u64,
    /// Device `[T, Hq, d]` output dL/dq.
    pub dq: u64,
    /// Device `[T, Hkv, d]` output dL/dk.
    pub dk: u64,
    /// Device `[T, Hkv, d]` output dL/dv.
    pub dv: u64,
    /// Device `[Hq, T]` f32 workspace: rowsum(dO ∘ O).
    pub delta: u64,
    /// Device attention tile table from `prefk_prefix_layout`.
    pub tiles: u64,
    /// Device `[n_tokens]` i32 segment starts from `prefk_prefix_layout`.
    pub seg_lo2: u64,
    /// Number of attention tiles in `tiles`.
    pub n_tiles: i64,
    /// Number of tokens.
    pub n_tokens: i64,
    /// The device: a CUDA ordinal, or `PREFK_DEVICE_EMULATOR` (-1).
    pub device: i32,
    /// Element type code: 0 f32, 1 f16, 2 bf16.
    pub dtype_code: u32,
    /// Query heads Hq.
    pub q_heads: i32,
    /// Key/value heads Hkv (divides Hq).
    pub kv_heads: i32,
    /// Head dimension d (64 or 128).
    pub head_dim: i32,
    /// Attention softmax scale (usually head_dim^-1/2).
    pub scale: f32,
}

impl PrefkSharedPrefixAttentionBackwardArgs {
    /// Every field 0 (null pointers), `struct_size` set: fill in the fields, keep the size.
    pub fn new() -> Self {
        // SAFETY: integers, floats and raw pointers, for which all-zero bytes are valid.
        let mut a: Self = unsafe { std::mem::zeroed() };
        a.struct_size = size_of::<Self>() as u64;
        a
    }
}

impl Default for PrefkSharedPrefixAttentionBackwardArgs {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: plain-old-data, every field valid as zero bytes; layout pinned below.
unsafe impl super::plumbing::AbiArgs for PrefkSharedPrefixAttentionBackwardArgs {}

const _: () = {
    assert!(size_of::<PrefkSharedPrefixAttentionBackwardArgs>() == 152);
    assert!(offset_of!(PrefkSharedPrefixAttentionBackwardArgs, struct_size) == 0);
    assert!(offset_of!(PrefkSharedPrefixAttentionBackwardArgs, stream) == 8);
    assert!(offset_of!(PrefkSharedPrefixAttentionBackwardArgs, q) == 16);
    assert!(offset_of!(PrefkSharedPrefixAttentionBackwardArgs, k) == 24);
    assert!(offset_of!(PrefkSharedPrefixAttentionBackwardArgs, v) == 32);
    assert!(offset_of!(PrefkSharedPrefixAttentionBackwardArgs, o) == 40);
    assert!(offset_of!(PrefkSharedPrefixAttentionBackwardArgs, lse) == 48);
    assert!(offset_of!(PrefkSharedPrefixAttentionBackwardArgs, dout) == 56);
    assert!(offset_of!(PrefkSharedPrefixAttentionBackwardArgs, dq) == 64);
    assert!(offset_of!(PrefkSharedPrefixAttentionBackwardArgs, dk) == 72);
    assert!(offset_of!(PrefkSharedPrefixAttentionBackwardArgs, dv) == 80);
    assert!(offset_of!(PrefkSharedPrefixAttentionBackwardArgs, delta) == 88);
    assert!(offset_of!(PrefkSharedPrefixAttentionBackwardArgs, tiles) == 96);
    assert!(offset_of!(PrefkSharedPrefixAttentionBackwardArgs, seg_lo2) == 104);
    assert!(offset_of!(PrefkSharedPrefixAttentionBackwardArgs, n_tiles) == 112);
    assert!(offset_of!(PrefkSharedPrefixAttentionBackwardArgs, n_tokens) == 120);
    assert!(offset_of!(PrefkSharedPrefixAttentionBackwardArgs, device) == 128);
    assert!(offset_of!(PrefkSharedPrefixAttentionBackwardArgs, dtype_code) == 132);
    assert!(offset_of!(PrefkSharedPrefixAttentionBackwardArgs, q_heads) == 136);
    assert!(offset_of!(PrefkSharedPrefixAttentionBackwardArgs, kv_heads) == 140);
    assert!(offset_of!(PrefkSharedPrefixAttentionBackwardArgs, head_dim) == 144);
    assert!(offset_of!(PrefkSharedPrefixAttentionBackwardArgs, scale) == 148);
};

/// The arguments of [`prefk_prefix_layout`](super::prefk_prefix_layout), as `include/prefk.h` declares them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PrefkPrefixLayoutArgs {
    /// `size_of` this struct as the caller compiled it (set by `new()`).
    pub struct_size: u64,
    /// Host prefix (prompt) length per group.
    pub prefix_lens: *const i64,
    /// Host responses per group.
    pub resp_counts: *const i64,
    /// Host response lengths, group by group.
    pub resp_lens: *const i64,
    /// Number of groups.
    pub n_groups: i64,
    /// Number of tokens.
    pub n_tokens: *mut i64,
    /// Number of attention tiles in `tiles`.
    pub n_tiles: *mut i64,
    /// Device attention tile table from `prefk_prefix_layout`.
    pub tiles: *mut i32,
    /// Device `[n_tokens]` i32 segment starts from `prefk_prefix_layout`.
    pub seg_lo2: *mut i32,
}

impl PrefkPrefixLayoutArgs {
    /// Every field 0 (null pointers), `struct_size` set: fill in the fields, keep the size.
    pub fn new() -> Self {
        // SAFETY: integers, floats and raw pointers, for which all-zero bytes are valid.
        let mut a: Self = unsafe { std::mem::zeroed() };
        a.struct_size = size_of::<Self>() as u64;
        a
    }
}

impl Default for PrefkPrefixLayoutArgs {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: plain-old-data, every field valid as zero bytes; layout pinned below.
unsafe impl super::plumbing::AbiArgs for PrefkPrefixLayoutArgs {}

const _: () = {
    assert!(size_of::<PrefkPrefixLayoutArgs>() == 72);
    assert!(offset_of!(PrefkPrefixLayoutArgs, struct_size) == 0);
    assert!(offset_of!(PrefkPrefixLayoutArgs, prefix_lens) == 8);
    assert!(offset_of!(PrefkPrefixLayoutArgs, resp_counts) == 16);
    assert!(offset_of!(PrefkPrefixLayoutArgs, resp_lens) == 24);
    assert!(offset_of!(PrefkPrefixLayoutArgs, n_groups) == 32);
    assert!(offset_of!(PrefkPrefixLayoutArgs, n_tokens) == 40);
    assert!(offset_of!(PrefkPrefixLayoutArgs, n_tiles) == 48);
    assert!(offset_of!(PrefkPrefixLayoutArgs, tiles) == 56);
    assert!(offset_of!(PrefkPrefixLayoutArgs, seg_lo2) == 64);
};

/// The arguments of [`prefk_seq_reduce`](super::prefk_seq_reduce), as `include/prefk.h` declares them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PrefkSeqReduceArgs {
    /// `size_of` this struct as the caller compiled it (set by `new()`).
    pub struct_size: u64,
    /// The caller's CUstream as an integer (0: the legacy default stream).
    pub stream: u64,
    /// Device `[n_tokens]` f32 per-token log-probs (input of the losses; output of the log-prob forwards).
    pub logp: u64,
    /// Device `[n_tokens]` u8 loss mask (0 = ignored), or 0 for every token.
    pub mask: u64,
    /// Device `[n_tokens]` f32 token weights, or 0 (weight 1).
    pub weights: u64,
    /// Number of tokens.
    pub n_tokens: i64,
    /// `[n_seqs + 1]` i32 sequence offsets, or 0 for the padded layout.
    pub cu_seqlens: u64,
    /// Number of sequences.
    pub n_seqs: i64,
    /// Tokens per sequence in the padded layout.
    pub seq_len: i64,
    /// Device `[n_seqs]` f32 sequence scores (output of the reduction).
    pub scores: u64,
    /// Device `[n_rows, 2]` f32 softmax statistics (row max, log2 of the sum): written by the forward, read by the backward.
    pub stats: u64,
    /// A u32 status word the kernels OR bits into, or 0.
    pub status: u64,
    /// The device: a CUDA ordinal, or `PREFK_DEVICE_EMULATOR` (-1).
    pub device: i32,
    /// Reduction mode code (0 sum, 1 mean, 2 weighted sum, 3 weighted mean).
    pub mode: u32,
}

impl PrefkSeqReduceArgs {
    /// Every field 0 (null pointers), `struct_size` set: fill in the fields, keep the size.
    pub fn new() -> Self {
        // SAFETY: integers, floats and raw pointers, for which all-zero bytes are valid.
        let mut a: Self = unsafe { std::mem::zeroed() };
        a.struct_size = size_of::<Self>() as u64;
        a
    }
}

impl Default for PrefkSeqReduceArgs {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: plain-old-data, every field valid as zero bytes; layout pinned below.
unsafe impl super::plumbing::AbiArgs for PrefkSeqReduceArgs {}

const _: () = {
    assert!(size_of::<PrefkSeqReduceArgs>() == 104);
    assert!(offset_of!(PrefkSeqReduceArgs, struct_size) == 0);
    assert!(offset_of!(PrefkSeqReduceArgs, stream) == 8);
    assert!(offset_of!(PrefkSeqReduceArgs, logp) == 16);
    assert!(offset_of!(PrefkSeqReduceArgs, mask) == 24);
    assert!(offset_of!(PrefkSeqReduceArgs, weights) == 32);
    assert!(offset_of!(PrefkSeqReduceArgs, n_tokens) == 40);
    assert!(offset_of!(PrefkSeqReduceArgs, cu_seqlens) == 48);
    assert!(offset_of!(PrefkSeqReduceArgs, n_seqs) == 56);
    assert!(offset_of!(PrefkSeqReduceArgs, seq_len) == 64);
    assert!(offset_of!(PrefkSeqReduceArgs, scores) == 72);
    assert!(offset_of!(PrefkSeqReduceArgs, stats) == 80);
    assert!(offset_of!(PrefkSeqReduceArgs, status) == 88);
    assert!(offset_of!(PrefkSeqReduceArgs, device) == 96);
    assert!(offset_of!(PrefkSeqReduceArgs, mode) == 100);
};

/// The arguments of [`prefk_seq_reduce_backward`](super::prefk_seq_reduce_backward), as `include/prefk.h` declares them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PrefkSeqReduceBackwardArgs {
    /// `size_of` this struct as the caller compiled it (set by `new()`).
    pub struct_size: u64,
    /// The caller's CUstream as an integer (0: the legacy default stream).
    pub stream: u64,
    /// Device `[n_tokens]` f32 per-token log-probs (input of the losses; output of the log-prob forwards).
    pub logp: u64,
    /// Device `[n_tokens]` u8 loss mask (0 = ignored), or 0 for every token.
    pub mask: u64,
    /// Device `[n_tokens]` f32 token weights, or 0 (weight 1).
    pub weights: u64,
    /// Number of tokens.
    pub n_tokens: i64,
    /// `[n_seqs + 1]` i32 sequence offsets, or 0 for the padded layout.
    pub cu_seqlens: u64,
    /// Number of sequences.
    pub n_seqs: i64,
    /// Tokens per sequence in the padded layout.
    pub seq_len: i64,
    /// Device `[n_seqs]` f32 upstream dL/dscores.
    pub dscores: u64,
    /// Device `[n_rows, 2]` f32 softmax statistics (row max, log2 of the sum): written by the forward, read by the backward.
    pub stats: u64,
    /// Device `[n_tokens]` f32 dL/dlogp (input of the backwards; output of the losses).
    pub grad_logp: u64,
    /// The device: a CUDA ordinal, or `PREFK_DEVICE_EMULATOR` (-1).
    pub device: i32,
    /// Reduction mode code (0 sum, 1 mean, 2 weighted sum, 3 weighted mean).
    pub mode: u32,
}

impl PrefkSeqReduceBackwardArgs {
    /// Every field 0 (null pointers), `struct_size` set: fill in the fields, keep the size.
    pub fn new() -> Self {
        // SAFETY: integers, floats and raw pointers, for which all-zero bytes are valid.
        let mut a: Self = unsafe { std::mem::zeroed() };
        a.struct_size = size_of::<Self>() as u64;
        a
    }
}

impl Default for PrefkSeqReduceBackwardArgs {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: plain-old-data, every field valid as zero bytes; layout pinned below.
unsafe impl super::plumbing::AbiArgs for PrefkSeqReduceBackwardArgs {}

const _: () = {
    assert!(size_of::<PrefkSeqReduceBackwardArgs>() == 104);
    assert!(offset_of!(PrefkSeqReduceBackwardArgs, struct_size) == 0);
    assert!(offset_of!(PrefkSeqReduceBackwardArgs, stream) == 8);
    assert!(offset_of!(PrefkSeqReduceBackwardArgs, logp) == 16);
    assert!(offset_of!(PrefkSeqReduceBackwardArgs, mask) == 24);
    assert!(offset_of!(PrefkSeqReduceBackwardArgs, weights) == 32);
    assert!(offset_of!(PrefkSeqReduceBackwardArgs, n_tokens) == 40);
    assert!(offset_of!(PrefkSeqReduceBackwardArgs, cu_seqlens) == 48);
    assert!(offset_of!(PrefkSeqReduceBackwardArgs, n_seqs) == 56);
    assert!(offset_of!(PrefkSeqReduceBackwardArgs, seq_len) == 64);
    assert!(offset_of!(PrefkSeqReduceBackwardArgs, dscores) == 72);
    assert!(offset_of!(PrefkSeqReduceBackwardArgs, stats) == 80);
    assert!(offset_of!(PrefkSeqReduceBackwardArgs, grad_logp) == 88);
    assert!(offset_of!(PrefkSeqReduceBackwardArgs, device) == 96);
    assert!(offset_of!(PrefkSeqReduceBackwardArgs, mode) == 100);
};

/// The arguments of [`prefk_token_logprobs_forward`](super::prefk_token_logprobs_forward), as `include/prefk.h` declares them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PrefkTokenLogprobsForwardArgs {
    /// `size_of` this struct as the caller compiled it (set by `new()`).
    pub struct_size: u64,
    /// The caller's CUstream as an integer (0: the legacy default stream).
    pub stream: u64,
    /// Device `[n_rows, row_stride]` logits of `dtype_code`.
    pub logits: u64,
    /// Device `[n_rows]` target ids (i32 or i64 by `index_code`).
    pub targets: u64,
    /// Device `[n_tokens]` f32 per-token log-probs (input of the losses; output of the log-prob forwards).
    pub logp: u64,
    /// Device `[n_rows]` f32 output: logsumexp(logits / T).
    pub lse: u64,
    /// Device `[n_rows, 2]` f32 softmax statistics (row max, log2 of the sum): written by the forward, read by the backward.
    pub stats: u64,
    /// Device `[n_rows]` f32 entropies, or 0.
    pub entropy: u64,
    /// Device `[n_rows]` f32 output log Σ p² (WPO), or 0; needs `entropy`.
    pub log_sum_sq: u64,
    /// A u32 status word the kernels OR bits into, or 0.
    pub status: u64,
    /// Number of rows (tokens).
    pub n_rows: i64,
    /// Vocabulary size V.
    pub vocab: i64,
    /// Elements between consecutive rows of the logits (>= the vocabulary).
    pub row_stride: i64,
    /// Target value of rows that are ignored.
    pub ignore_index: i64,
    /// The device: a CUDA ordinal, or `PREFK_DEVICE_EMULATOR` (-1).
    pub device: i32,
    /// Element type code: 0 f32, 1 f16, 2 bf16.
    pub dtype_code: u32,
    /// Target index type code: 0 i32, 1 i64.
    pub index_code: u32,
    /// Softmax temperature T (> 0).
    pub temperature: f32,
    /// Device `[n_rows]` f32 output: mean of logits / T (TRL's `mean_logits`), or 0. Added in 0.2.
    pub mean_logits: u64,
    /// Device `[n_rows]` u8 output: the target is the row's first argmax (TRL's `is_top1`), or 0. Added in 0.2.
    pub is_top1: u64,
}

impl PrefkTokenLogprobsForwardArgs {
    /// Every field 0 (null pointers), `struct_size` set: fill in the fields, keep the size.
    pub fn new() -> Self {
        // SAFETY: integers, floats and raw pointers, for which all-zero bytes are valid.
        let mut a: Self = unsafe { std::mem::zeroed() };
        a.struct_size = size_of::<Self>() as u64;
        a
    }
}

impl Default for PrefkTokenLogprobsForwardArgs {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: plain-old-data, every field valid as zero bytes; layout pinned below.
unsafe impl super::plumbing::AbiArgs for PrefkTokenLogprobsForwardArgs {
    // As first published: through `temperature` (mean_logits and is_top1 came later).
    const MIN_SIZE: usize = 128;
}

const _: () = {
    assert!(size_of::<PrefkTokenLogprobsForwardArgs>() == 144);
    assert!(offset_of!(PrefkTokenLogprobsForwardArgs, mean_logits) == 128);
    assert!(offset_of!(PrefkTokenLogprobsForwardArgs, is_top1) == 136);
    assert!(offset_of!(PrefkTokenLogprobsForwardArgs, struct_size) == 0);
    assert!(offset_of!(PrefkTokenLogprobsForwardArgs, stream) == 8);
    assert!(offset_of!(PrefkTokenLogprobsForwardArgs, logits) == 16);
    assert!(offset_of!(PrefkTokenLogprobsForwardArgs, targets) == 24);
    assert!(offset_of!(PrefkTokenLogprobsForwardArgs, logp) == 32);
    assert!(offset_of!(PrefkTokenLogprobsForwardArgs, lse) == 40);
    assert!(offset_of!(PrefkTokenLogprobsForwardArgs, stats) == 48);
    assert!(offset_of!(PrefkTokenLogprobsForwardArgs, entropy) == 56);
    assert!(offset_of!(PrefkTokenLogprobsForwardArgs, log_sum_sq) == 64);
    assert!(offset_of!(PrefkTokenLogprobsForwardArgs, status) == 72);
    assert!(offset_of!(PrefkTokenLogprobsForwardArgs, n_rows) == 80);
    assert!(offset_of!(PrefkTokenLogprobsForwardArgs, vocab) == 88);
    assert!(offset_of!(PrefkTokenLogprobsForwardArgs, row_stride) == 96);
    assert!(offset_of!(PrefkTokenLogprobsForwardArgs, ignore_index) == 104);
    assert!(offset_of!(PrefkTokenLogprobsForwardArgs, device) == 112);
    assert!(offset_of!(PrefkTokenLogprobsForwardArgs, dtype_code) == 116);
    assert!(offset_of!(PrefkTokenLogprobsForwardArgs, index_code) == 120);
    assert!(offset_of!(PrefkTokenLogprobsForwardArgs, temperature) == 124);
};

/// The arguments of [`prefk_token_logprobs_backward`](super::prefk_token_logprobs_backward), as `include/prefk.h` declares them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PrefkTokenLogprobsBackwardArgs {
    /// `size_of` this struct as the caller compiled it (set by `new()`).
    pub struct_size: u64,
    /// The caller's CUstream as an integer (0: the legacy default stream).
    pub stream: u64,
    /// Device `[n_rows, row_stride]` logits of `dtype_code`.
    pub logits: u64,
    /// Device `[n_rows]` target ids (i32 or i64 by `index_code`).
    pub targets: u64,
    /// Device `[n_rows, 2]` f32 softmax statistics (row max, log2 of the sum): written by the forward, read by the backward.
    pub stats: u64,
    /// Device `[n_tokens]` f32 dL/dlogp (input of the backwards; output of the losses).
    pub grad_logp: u64,
    /// Device output d/dlogits (may equal `logits`: in place).
    pub grad_logits: u64,
    /// A u32 status word the kernels OR bits into, or 0.
    pub status: u64,
    /// Number of rows (tokens).
    pub n_rows: i64,
    /// Vocabulary size V.
    pub vocab: i64,
    /// Elements between consecutive rows of the logits (>= the vocabulary).
    pub row_stride: i64,
    /// Elements between consecutive rows of `grad_logits`.
    pub grad_stride: i64,
    /// Target value of rows that are ignored.
    pub ignore_index: i64,
    /// The device: a CUDA ordinal, or `PREFK_DEVICE_EMULATOR` (-1).
    pub device: i32,
    /// Element type code: 0 f32, 1 f16, 2 bf16.
    pub dtype_code: u32,
    /// Target index type code: 0 i32, 1 i64.
    pub index_code: u32,
    /// Softmax temperature T (> 0).
    pub temperature: f32,
}

impl PrefkTokenLogprobsBackwardArgs {
    /// Every field 0 (null pointers), `struct_size` set: fill in the fields, keep the size.
    pub fn new() -> Self {
        // SAFETY: integers, floats and raw pointers, for which all-zero bytes are valid.
        let mut a: Self = unsafe { std::mem::zeroed() };
        a.struct_size = size_of::<Self>() as u64;
        a
    }
}

impl Default for PrefkTokenLogprobsBackwardArgs {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: plain-old-data, every field valid as zero bytes; layout pinned below.
unsafe impl super::plumbing::AbiArgs for PrefkTokenLogprobsBackwardArgs {}

const _: () = {
    assert!(size_of::<PrefkTokenLogprobsBackwardArgs>() == 120);
    assert!(offset_of!(PrefkTokenLogprobsBackwardArgs, struct_size) == 0);
    assert!(offset_of!(PrefkTokenLogprobsBackwardArgs, stream) == 8);
    assert!(offset_of!(PrefkTokenLogprobsBackwardArgs, logits) == 16);
    assert!(offset_of!(PrefkTokenLogprobsBackwardArgs, targets) == 24);
    assert!(offset_of!(PrefkTokenLogprobsBackwardArgs, stats) == 32);
    assert!(offset_of!(PrefkTokenLogprobsBackwardArgs, grad_logp) == 40);
    assert!(offset_of!(PrefkTokenLogprobsBackwardArgs, grad_logits) == 48);
    assert!(offset_of!(PrefkTokenLogprobsBackwardArgs, status) == 56);
    assert!(offset_of!(PrefkTokenLogprobsBackwardArgs, n_rows) == 64);
    assert!(offset_of!(PrefkTokenLogprobsBackwardArgs, vocab) == 72);
    assert!(offset_of!(PrefkTokenLogprobsBackwardArgs, row_stride) == 80);
    assert!(offset_of!(PrefkTokenLogprobsBackwardArgs, grad_stride) == 88);
    assert!(offset_of!(PrefkTokenLogprobsBackwardArgs, ignore_index) == 96);
    assert!(offset_of!(PrefkTokenLogprobsBackwardArgs, device) == 104);
    assert!(offset_of!(PrefkTokenLogprobsBackwardArgs, dtype_code) == 108);
    assert!(offset_of!(PrefkTokenLogprobsBackwardArgs, index_code) == 112);
    assert!(offset_of!(PrefkTokenLogprobsBackwardArgs, temperature) == 116);
};

/// The arguments of [`prefk_token_logprobs_backward_entropy`](super::prefk_token_logprobs_backward_entropy), as `include/prefk.h` declares them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PrefkTokenLogprobsBackwardEntropyArgs {
    /// `size_of` this struct as the caller compiled it (set by `new()`).
    pub struct_size: u64,
    /// The caller's CUstream as an integer (0: the legacy default stream).
    pub stream: u64,
    /// Device `[n_rows, row_stride]` logits of `dtype_code`.
    pub logits: u64,
    /// Device `[n_rows]` target ids (i32 or i64 by `index_code`).
    pub targets: u64,
    /// Device `[n_rows, 2]` f32 softmax statistics (row max, log2 of the sum): written by the forward, read by the backward.
    pub stats: u64,
    /// Device `[n_rows]` f32 entropies, or 0.
    pub entropy: u64,
    /// Device `[n_tokens]` f32 dL/dlogp (input of the backwards; output of the losses).
    pub grad_logp: u64,
    /// Device `[n_rows]` f32 dL/dH, or 0 (no entropy gradient).
    pub grad_entropy: u64,
    /// Device output d/dlogits (may equal `logits`: in place).
    pub grad_logits: u64,
    /// A u32 status word the kernels OR bits into, or 0.
    pub status: u64,
    /// Number of rows (tokens).
    pub n_rows: i64,
    /// Vocabulary size V.
    pub vocab: i64,
    /// Elements between consecutive rows of the logits (>= the vocabulary).
    pub row_stride: i64,
    /// Elements between consecutive rows of `grad_logits`.
    pub grad_stride: i64,
    /// Target value of rows that are ignored.
    pub ignore_index: i64,
    /// The device: a CUDA ordinal, or `PREFK_DEVICE_EMULATOR` (-1).
    pub device: i32,
    /// Element type code: 0 f32, 1 f16, 2 bf16.
    pub dtype_code: u32,
    /// Target index type code: 0 i32, 1 i64.
    pub index_code: u32,
    /// Softmax temperature T (> 0).
    pub temperature: f32,
}

impl PrefkTokenLogprobsBackwardEntropyArgs {
    /// Every field 0 (null pointers), `struct_size` set: fill in the fields, keep the size.
    pub fn new() -> Self {
        // SAFETY: integers, floats and raw pointers, for which all-zero bytes are valid.
        let mut a: Self = unsafe { std::mem::zeroed() };
        a.struct_size = size_of::<Self>() as u64;
        a
    }
}

impl Default for PrefkTokenLogprobsBackwardEntropyArgs {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: plain-old-data, every field valid as zero bytes; layout pinned below.
unsafe impl super::plumbing::AbiArgs for PrefkTokenLogprobsBackwardEntropyArgs {}

const _: () = {
    assert!(size_of::<PrefkTokenLogprobsBackwardEntropyArgs>() == 136);
    assert!(offset_of!(PrefkTokenLogprobsBackwardEntropyArgs, struct_size) == 0);
    assert!(offset_of!(PrefkTokenLogprobsBackwardEntropyArgs, stream) == 8);
    assert!(offset_of!(PrefkTokenLogprobsBackwardEntropyArgs, logits) == 16);
    assert!(offset_of!(PrefkTokenLogprobsBackwardEntropyArgs, targets) == 24);
    assert!(offset_of!(PrefkTokenLogprobsBackwardEntropyArgs, stats) == 32);
    assert!(offset_of!(PrefkTokenLogprobsBackwardEntropyArgs, entropy) == 40);
    assert!(offset_of!(PrefkTokenLogprobsBackwardEntropyArgs, grad_logp) == 48);
    assert!(offset_of!(PrefkTokenLogprobsBackwardEntropyArgs, grad_entropy) == 56);
    assert!(offset_of!(PrefkTokenLogprobsBackwardEntropyArgs, grad_logits) == 64);
    assert!(offset_of!(PrefkTokenLogprobsBackwardEntropyArgs, status) == 72);
    assert!(offset_of!(PrefkTokenLogprobsBackwardEntropyArgs, n_rows) == 80);
    assert!(offset_of!(PrefkTokenLogprobsBackwardEntropyArgs, vocab) == 88);
    assert!(offset_of!(PrefkTokenLogprobsBackwardEntropyArgs, row_stride) == 96);
    assert!(offset_of!(PrefkTokenLogprobsBackwardEntropyArgs, grad_stride) == 104);
    assert!(offset_of!(PrefkTokenLogprobsBackwardEntropyArgs, ignore_index) == 112);
    assert!(offset_of!(PrefkTokenLogprobsBackwardEntropyArgs, device) == 120);
    assert!(offset_of!(PrefkTokenLogprobsBackwardEntropyArgs, dtype_code) == 124);
    assert!(offset_of!(PrefkTokenLogprobsBackwardEntropyArgs, index_code) == 128);
    assert!(offset_of!(PrefkTokenLogprobsBackwardEntropyArgs, temperature) == 132);
};

/// The arguments of [`prefk_vocab_shard_partials`](super::prefk_vocab_shard_partials), as `include/prefk.h` declares them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PrefkVocabShardPartialsArgs {
    /// `size_of` this struct as the caller compiled it (set by `new()`).
    pub struct_size: u64,
    /// The caller's CUstream as an integer (0: the legacy default stream).
    pub stream: u64,
    /// Device `[n_rows, row_stride]` logits of `dtype_code`.
    pub logits: u64,
    /// Device `[n_rows]` target ids (i32 or i64 by `index_code`).
    pub targets: u64,
    /// Device `[n_rows, VP_STATS]` f32 per-shard partial statistics.
    pub partials: u64,
    /// A u32 status word the kernels OR bits into, or 0.
    pub status: u64,
    /// Number of rows (tokens).
    pub n_rows: i64,
    /// Vocabulary ids in this rank's shard.
    pub shard_vocab: i64,
    /// Elements between consecutive rows of the logits (>= the vocabulary).
    pub row_stride: i64,
    /// First vocabulary id of this rank's shard.
    pub vocab_start: i64,
    /// Vocabulary size V.
    pub vocab: i64,
    /// Target value of rows that are ignored.
    pub ignore_index: i64,
    /// The device: a CUDA ordinal, or `PREFK_DEVICE_EMULATOR` (-1).
    pub device: i32,
    /// Element type code: 0 f32, 1 f16, 2 bf16.
    pub dtype_code: u32,
    /// Target index type code: 0 i32, 1 i64.
    pub index_code: u32,
    /// Softmax temperature T (> 0).
    pub temperature: f32,
    /// Non-zero: also compute the entropy.
    pub compute_entropy: u32,
    /// Padding to a multiple of 8 bytes; 0.
    pub reserved: u32,
}

impl PrefkVocabShardPartialsArgs {
    /// Every field 0 (null pointers), `struct_size` set: fill in the fields, keep the size.
    pub fn new() -> Self {
        // SAFETY: integers, floats and raw pointers, for which all-zero bytes are valid.
        let mut a: Self = unsafe { std::mem::zeroed() };
        a.struct_size = size_of::<Self>() as u64;
        a
    }
}

impl Default for PrefkVocabShardPartialsArgs {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: plain-old-data, every field valid as zero bytes; layout pinned below.
unsafe impl super::plumbing::AbiArgs for PrefkVocabShardPartialsArgs {}

const _: () = {
    assert!(size_of::<PrefkVocabShardPartialsArgs>() == 120);
    assert!(offset_of!(PrefkVocabShardPartialsArgs, struct_size) == 0);
    assert!(offset_of!(PrefkVocabShardPartialsArgs, stream) == 8);
    assert!(offset_of!(PrefkVocabShardPartialsArgs, logits) == 16);
    assert!(offset_of!(PrefkVocabShardPartialsArgs, targets) == 24);
    assert!(offset_of!(PrefkVocabShardPartialsArgs, partials) == 32);
    assert!(offset_of!(PrefkVocabShardPartialsArgs, status) == 40);
    assert!(offset_of!(PrefkVocabShardPartialsArgs, n_rows) == 48);
    assert!(offset_of!(PrefkVocabShardPartialsArgs, shard_vocab) == 56);
    assert!(offset_of!(PrefkVocabShardPartialsArgs, row_stride) == 64);
    assert!(offset_of!(PrefkVocabShardPartialsArgs, vocab_start) == 72);
    assert!(offset_of!(PrefkVocabShardPartialsArgs, vocab) == 80);
    assert!(offset_of!(PrefkVocabShardPartialsArgs, ignore_index) == 88);
    assert!(offset_of!(PrefkVocabShardPartialsArgs, device) == 96);
    assert!(offset_of!(PrefkVocabShardPartialsArgs, dtype_code) == 100);
    assert!(offset_of!(PrefkVocabShardPartialsArgs, index_code) == 104);
    assert!(offset_of!(PrefkVocabShardPartialsArgs, temperature) == 108);
    assert!(offset_of!(PrefkVocabShardPartialsArgs, compute_entropy) == 112);
    assert!(offset_of!(PrefkVocabShardPartialsArgs, reserved) == 116);
};

/// The arguments of [`prefk_vocab_parallel_finalize`](super::prefk_vocab_parallel_finalize), as `include/prefk.h` declares them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PrefkVocabParallelFinalizeArgs {
    /// `size_of` this struct as the caller compiled it (set by `new()`).
    pub struct_size: u64,
    /// The caller's CUstream as an integer (0: the legacy default stream).
    pub stream: u64,
    /// Device `[n_rows, VP_STATS]` f32 per-shard partial statistics.
    pub partials: u64,
    /// Device `[n_rows]` target ids (i32 or i64 by `index_code`).
    pub targets: u64,
    /// Device `[n_tokens]` f32 per-token log-probs (input of the losses; output of the log-prob forwards).
    pub logp: u64,
    /// Device `[n_rows]` f32 output: logsumexp(logits / T).
    pub lse: u64,
    /// Device `[n_rows, 2]` f32 softmax statistics (row max, log2 of the sum): written by the forward, read by the backward.
    pub stats: u64,
    /// Device `[n_rows]` f32 entropies, or 0.
    pub entropy: u64,
    /// A u32 status word the kernels OR bits into, or 0.
    pub status: u64,
    /// Number of rows (tokens).
    pub n_rows: i64,
    /// Number of vocabulary shards (ranks).
    pub n_shards: i64,
    /// Vocabulary size V.
    pub vocab: i64,
    /// Target value of rows that are ignored.
    pub ignore_index: i64,
    /// The device: a CUDA ordinal, or `PREFK_DEVICE_EMULATOR` (-1).
    pub device: i32,
    /// Target index type code: 0 i32, 1 i64.
    pub index_code: u32,
    /// Softmax temperature T (> 0).
    pub temperature: f32,
    /// Padding to a multiple of 8 bytes; 0.
    pub reserved: u32,
}

impl PrefkVocabParallelFinalizeArgs {
    /// Every field 0 (null pointers), `struct_size` set: fill in the fields, keep the size.
    pub fn new() -> Self {
        // SAFETY: integers, floats and raw pointers, for which all-zero bytes are valid.
        let mut a: Self = unsafe { std::mem::zeroed() };
        a.struct_size = size_of::<Self>() as u64;
        a
    }
}

impl Default for PrefkVocabParallelFinalizeArgs {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: plain-old-data, every field valid as zero bytes; layout pinned below.
unsafe impl super::plumbing::AbiArgs for PrefkVocabParallelFinalizeArgs {}

const _: () = {
    assert!(size_of::<PrefkVocabParallelFinalizeArgs>() == 120);
    assert!(offset_of!(PrefkVocabParallelFinalizeArgs, struct_size) == 0);
    assert!(offset_of!(PrefkVocabParallelFinalizeArgs, stream) == 8);
    assert!(offset_of!(PrefkVocabParallelFinalizeArgs, partials) == 16);
    assert!(offset_of!(PrefkVocabParallelFinalizeArgs, targets) == 24);
    assert!(offset_of!(PrefkVocabParallelFinalizeArgs, logp) == 32);
    assert!(offset_of!(PrefkVocabParallelFinalizeArgs, lse) == 40);
    assert!(offset_of!(PrefkVocabParallelFinalizeArgs, stats) == 48);
    assert!(offset_of!(PrefkVocabParallelFinalizeArgs, entropy) == 56);
    assert!(offset_of!(PrefkVocabParallelFinalizeArgs, status) == 64);
    assert!(offset_of!(PrefkVocabParallelFinalizeArgs, n_rows) == 72);
    assert!(offset_of!(PrefkVocabParallelFinalizeArgs, n_shards) == 80);
    assert!(offset_of!(PrefkVocabParallelFinalizeArgs, vocab) == 88);
    assert!(offset_of!(PrefkVocabParallelFinalizeArgs, ignore_index) == 96);
    assert!(offset_of!(PrefkVocabParallelFinalizeArgs, device) == 104);
    assert!(offset_of!(PrefkVocabParallelFinalizeArgs, index_code) == 108);
    assert!(offset_of!(PrefkVocabParallelFinalizeArgs, temperature) == 112);
    assert!(offset_of!(PrefkVocabParallelFinalizeArgs, reserved) == 116);
};

/// The arguments of [`prefk_vocab_shard_backward`](super::prefk_vocab_shard_backward), as `include/prefk.h` declares them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PrefkVocabShardBackwardArgs {
    /// `size_of` this struct as the caller compiled it (set by `new()`).
    pub struct_size: u64,
    /// The caller's CUstream as an integer (0: the legacy default stream).
    pub stream: u64,
    /// Device `[n_rows, row_stride]` logits of `dtype_code`.
    pub logits: u64,
    /// Device `[n_rows]` target ids (i32 or i64 by `index_code`).
    pub targets: u64,
    /// Device `[n_rows, 2]` f32 softmax statistics (row max, log2 of the sum): written by the forward, read by the backward.
    pub stats: u64,
    /// Device `[n_rows]` f32 entropies, or 0.
    pub entropy: u64,
    /// Device `[n_tokens]` f32 dL/dlogp (input of the backwards; output of the losses).
    pub grad_logp: u64,
    /// Device `[n_rows]` f32 dL/dH, or 0 (no entropy gradient).
    pub grad_entropy: u64,
    /// Device output d/dlogits (may equal `logits`: in place).
    pub grad_logits: u64,
    /// A u32 status word the kernels OR bits into, or 0.
    pub status: u64,
    /// Number of rows (tokens).
    pub n_rows: i64,
    /// Vocabulary ids in this rank's shard.
    pub shard_vocab: i64,
    /// Elements between consecutive rows of the logits (>= the vocabulary).
    pub row_stride: i64,
    /// Elements between consecutive rows of `grad_logits`.
    pub grad_stride: i64,
    /// First vocabulary id of this rank's shard.
    pub vocab_start: i64,
    /// Vocabulary size V.
    pub vocab: i64,
    /// Target value of rows that are ignored.
    pub ignore_index: i64,
    /// The device: a CUDA ordinal, or `PREFK_DEVICE_EMULATOR` (-1).
    pub device: i32,
    /// Element type code: 0 f32, 1 f16, 2 bf16.
    pub dtype_code: u32,
    /// Target index type code: 0 i32, 1 i64.
    pub index_code: u32,
    /// Softmax temperature T (> 0).
    pub temperature: f32,
}

impl PrefkVocabShardBackwardArgs {
    /// Every field 0 (null pointers), `struct_size` set: fill in the fields, keep the size.
    pub fn new() -> Self {
        // SAFETY: integers, floats and raw pointers, for which all-zero bytes are valid.
        let mut a: Self = unsafe { std::mem::zeroed() };
        a.struct_size = size_of::<Self>() as u64;
        a
    }
}

impl Default for PrefkVocabShardBackwardArgs {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: plain-old-data, every field valid as zero bytes; layout pinned below.
unsafe impl super::plumbing::AbiArgs for PrefkVocabShardBackwardArgs {}

const _: () = {
    assert!(size_of::<PrefkVocabShardBackwardArgs>() == 152);
    assert!(offset_of!(PrefkVocabShardBackwardArgs, struct_size) == 0);
    assert!(offset_of!(PrefkVocabShardBackwardArgs, stream) == 8);
    assert!(offset_of!(PrefkVocabShardBackwardArgs, logits) == 16);
    assert!(offset_of!(PrefkVocabShardBackwardArgs, targets) == 24);
    assert!(offset_of!(PrefkVocabShardBackwardArgs, stats) == 32);
    assert!(offset_of!(PrefkVocabShardBackwardArgs, entropy) == 40);
    assert!(offset_of!(PrefkVocabShardBackwardArgs, grad_logp) == 48);
    assert!(offset_of!(PrefkVocabShardBackwardArgs, grad_entropy) == 56);
    assert!(offset_of!(PrefkVocabShardBackwardArgs, grad_logits) == 64);
    assert!(offset_of!(PrefkVocabShardBackwardArgs, status) == 72);
    assert!(offset_of!(PrefkVocabShardBackwardArgs, n_rows) == 80);
    assert!(offset_of!(PrefkVocabShardBackwardArgs, shard_vocab) == 88);
    assert!(offset_of!(PrefkVocabShardBackwardArgs, row_stride) == 96);
    assert!(offset_of!(PrefkVocabShardBackwardArgs, grad_stride) == 104);
    assert!(offset_of!(PrefkVocabShardBackwardArgs, vocab_start) == 112);
    assert!(offset_of!(PrefkVocabShardBackwardArgs, vocab) == 120);
    assert!(offset_of!(PrefkVocabShardBackwardArgs, ignore_index) == 128);
    assert!(offset_of!(PrefkVocabShardBackwardArgs, device) == 136);
    assert!(offset_of!(PrefkVocabShardBackwardArgs, dtype_code) == 140);
    assert!(offset_of!(PrefkVocabShardBackwardArgs, index_code) == 144);
    assert!(offset_of!(PrefkVocabShardBackwardArgs, temperature) == 148);
};

/// The arguments of [`prefk_token_logprobs_topk`](super::prefk_token_logprobs_topk), as `include/prefk.h` declares them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PrefkTokenLogprobsTopkArgs {
    /// `size_of` this struct as the caller compiled it (set by `new()`).
    pub struct_size: u64,
    /// The caller's CUstream as an integer (0: the legacy default stream).
    pub stream: u64,
    /// Device `[n_rows, row_stride]` logits of `dtype_code`.
    pub logits: u64,
    /// Device `[n_rows]` target ids (i32 or i64 by `index_code`).
    pub targets: u64,
    /// Device `[n_rows, 2]` f32 softmax statistics a forward on the same logits wrote.
    pub stats: u64,
    /// Device `[n_rows, k]` f32 output: the k largest log-probs per row, descending.
    pub topk_logp: u64,
    /// Device `[n_rows, k]` i64 output: their token ids (-1 on ignored rows).
    pub topk_ids: u64,
    /// A u32 status word the kernels OR bits into, or 0.
    pub status: u64,
    /// Number of rows (tokens).
    pub n_rows: i64,
    /// Vocabulary size V.
    pub vocab: i64,
    /// Elements between consecutive rows of the logits (>= the vocabulary).
    pub row_stride: i64,
    /// Target value of rows that are ignored.
    pub ignore_index: i64,
    /// k, 1 ..= 64 and <= V.
    pub k: i64,
    /// The device: a CUDA ordinal, or `PREFK_DEVICE_EMULATOR` (-1).
    pub device: i32,
    /// Element type code: 0 f32, 1 f16, 2 bf16.
    pub dtype_code: u32,
    /// Target index type code: 0 i32, 1 i64.
    pub index_code: u32,
    /// Softmax temperature T (> 0).
    pub temperature: f32,
}

impl PrefkTokenLogprobsTopkArgs {
    /// Every field 0 (null pointers), `struct_size` set: fill in the fields, keep the size.
    pub fn new() -> Self {
        // SAFETY: integers, floats and raw pointers, for which all-zero bytes are valid.
        let mut a: Self = unsafe { std::mem::zeroed() };
        a.struct_size = size_of::<Self>() as u64;
        a
    }
}

impl Default for PrefkTokenLogprobsTopkArgs {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: plain-old-data, every field valid as zero bytes; layout pinned below.
unsafe impl super::plumbing::AbiArgs for PrefkTokenLogprobsTopkArgs {}

const _: () = {
    assert!(size_of::<PrefkTokenLogprobsTopkArgs>() == 120);
    assert!(offset_of!(PrefkTokenLogprobsTopkArgs, k) == 96);
    assert!(offset_of!(PrefkTokenLogprobsTopkArgs, device) == 104);
    assert!(offset_of!(PrefkTokenLogprobsTopkArgs, temperature) == 116);
};

/// The arguments of [`prefk_linear_grpo_step`](super::prefk_linear_grpo_step), as `include/prefk.h` declares them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PrefkLinearGrpoStepArgs {
    /// `size_of` this struct as the caller compiled it (set by `new()`).
    pub struct_size: u64,
    /// The caller's CUstream as an integer (0: the legacy default stream).
    pub stream: u64,
    /// Host GRPO configuration.
    pub config: *const PrefkGrpoConfig,
    /// Device `[N, H]` hidden states.
    pub hidden: u64,
    /// Device `[V, H]` LM-head weight (row-major, as `nn.Linear` stores it).
    pub weight: u64,
    /// Device `[V]` f32 LM-head bias, or 0.
    pub bias: u64,
    /// Device `[n_rows]` target ids (i32 or i64 by `index_code`).
    pub targets: u64,
    /// Device `[n_rows]` u8 completion mask, or 0 (every row whose target is not ignored counts).
    pub mask: u64,
    /// Device `[n_rows]` f32 rollout log-probs, or 0 (on-policy).
    pub old_logp: u64,
    /// Device `[n_rows]` f32 inference-engine log-probs for the off-policy mask, or 0.
    pub sampling_logp: u64,
    /// Device `[n_rows]` f32 reference log-probs, or 0.
    pub ref_logp: u64,
    /// Device `[n_rows]` f32 vLLM importance-sampling weights, or 0.
    pub is_weights: u64,
    /// Device `[n_seqs]` f32 advantages.
    pub advantages: u64,
    /// `[n_seqs + 1]` host i32 sequence offsets, or null for the padded layout.
    pub cu_seqlens: *const i32,
    /// Number of sequences.
    pub n_seqs: i64,
    /// Tokens per sequence in the padded layout.
    pub seq_len: i64,
    /// Device `[n_rows]` f32 output log-probs (0 on rows that do not count).
    pub logp: u64,
    /// Device `[n_rows]` f32 output entropies, given exactly when `compute_entropy` is set.
    pub entropy: u64,
    /// Device `[N, H]` output dL/dhidden.
    pub d_hidden: u64,
    /// Device `[V, H]` f32 output dL/dweight.
    pub d_weight: u64,
    /// Device `[V]` f32 output dL/dbias, or 0.
    pub d_bias: u64,
    /// Host output: the 8 GRPO metrics (f32, in `GRPO_METRIC_NAMES` order).
    pub metrics: *mut f32,
    /// Number of rows (tokens).
    pub n_rows: i64,
    /// H, the hidden size.
    pub hidden_dim: i64,
    /// Vocabulary size V.
    pub vocab: i64,
    /// Target value of rows that are ignored.
    pub ignore_index: i64,
    /// Most bytes of device workspace the chunk loop may use.
    pub workspace_bytes: i64,
    /// The device: a CUDA ordinal, or `PREFK_DEVICE_EMULATOR` (-1).
    pub device: i32,
    /// Element type code: 0 f32, 1 f16, 2 bf16.
    pub dtype_code: u32,
    /// Target index type code: 0 i32, 1 i64.
    pub index_code: u32,
    /// Non-zero: compute (and write) the entropies; required by an entropy bonus.
    pub compute_entropy: u32,
    /// Softmax temperature T (> 0).
    pub temperature: f32,
    /// Padding to a multiple of 8 bytes; 0.
    pub reserved: u32,
}

impl PrefkLinearGrpoStepArgs {
    /// Every field 0 (null pointers), `struct_size` set: fill in the fields, keep the size.
    pub fn new() -> Self {
        // SAFETY: integers, floats and raw pointers, for which all-zero bytes are valid.
        let mut a: Self = unsafe { std::mem::zeroed() };
        a.struct_size = size_of::<Self>() as u64;
        a
    }
}

impl Default for PrefkLinearGrpoStepArgs {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: plain-old-data, every field valid as zero bytes; layout pinned below.
unsafe impl super::plumbing::AbiArgs for PrefkLinearGrpoStepArgs {}

const _: () = {
    assert!(size_of::<PrefkLinearGrpoStepArgs>() == 240);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, struct_size) == 0);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, stream) == 8);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, config) == 16);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, hidden) == 24);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, weight) == 32);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, bias) == 40);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, targets) == 48);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, mask) == 56);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, old_logp) == 64);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, sampling_logp) == 72);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, ref_logp) == 80);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, is_weights) == 88);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, advantages) == 96);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, cu_seqlens) == 104);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, n_seqs) == 112);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, seq_len) == 120);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, logp) == 128);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, entropy) == 136);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, d_hidden) == 144);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, d_weight) == 152);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, d_bias) == 160);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, metrics) == 168);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, n_rows) == 176);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, hidden_dim) == 184);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, vocab) == 192);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, ignore_index) == 200);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, workspace_bytes) == 208);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, device) == 216);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, dtype_code) == 220);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, index_code) == 224);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, compute_entropy) == 228);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, temperature) == 232);
    assert!(offset_of!(PrefkLinearGrpoStepArgs, reserved) == 236);
};
