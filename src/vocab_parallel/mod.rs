//! Vocabulary-parallel token log-probs: the tensor-parallel LM head of Megatron, NeMo-RL or verl,
//! where each of `tp` ranks holds a shard of the vocabulary (`weight[v0 .. v0 + Vs, :]`, so
//! logits only for columns `[v0, v0 + Vs)`) and no rank ever holds a whole row of logits.
//!
//! The protocol, per call (every rank runs the same steps on its own shard):
//! 1. **Partials** ([`crate::Gpu::vocab_shard_partials`], or from hidden states
//!    [`crate::Gpu::linear_shard_partials_into`]): per row, [`VP_STATS`] f32 over the shard's
//!    columns, in natural units `y = x / T`: `m = max y`, `s = Σ exp(y − m)`,
//!    `e = Σ exp(y − m)(y − m)` (NaN without entropy), the target's `y_t` when the shard holds the
//!    target (else 0) and an owner flag (1 or 0).
//! 2. **All-gather** of the `[N, VP_STATS]` partials over the tensor-parallel group
//!    (`torch.distributed.all_gather_into_tensor`, NCCL `ncclAllGather`, the
//!    `nccl` feature's `vocab_parallel::nccl::VocabParallelComm`): `VP_STATS · 4 = 20` bytes per
//!    token per rank, against `2·V/tp` bytes per token for gathering bf16 logits.
//! 3. **Finalize** ([`crate::Gpu::vocab_parallel_finalize`]): each row's shards combined in the
//!    gathered order (rank order; which rank holds which columns does not matter, as long as the
//!    shards tile the vocabulary): `M = max m_k`, `S = Σ s_k e^(m_k − M)`, `lse = M + ln S`, `logp = Σ y_t,k − lse`,
//!    `H = ln S − Σ e^(m_k − M)(e_k + s_k (m_k − M)) / S`. Every rank computes bitwise the same
//!    values (same inputs, same order), so the loss and its per-token gradient can run
//!    redundantly on every rank. A used row whose owner flags do not sum to 1 (shards that do not
//!    tile the vocabulary) gets NaN and [`crate::params::STATUS_BAD_SHARDS`].
//! 4. **Backward per shard** ([`crate::Gpu::vocab_shard_backward`],
//!    [`crate::Gpu::linear_shard_backward_into`]): from the global `lse` (and `H`), each rank
//!    writes d/dlogits of its own columns only, or its `d_weight` shard and its partial
//!    `d_hidden`, which the trainer all-reduces (sum) over the group as Megatron does for the
//!    input of a column-parallel layer. No collective is needed for the logits gradient.
//!
//! Why an all-gather of partial states and not Megatron's all-reduce (max) + all-reduce (sum):
//! one collective instead of two, the same bytes for tp ≤ 2 and `20·tp` against 16 bytes per
//! token beyond (a few hundred bytes at most, against hundreds of kilobytes of logits), and the
//! combination happens in a fixed order on every rank, so the results are deterministic and
//! identical across ranks whatever reduction algorithm the collective library picks.
//!
//! Layers: [`reference`](mod@reference) (f64: the sharded algorithm, tested equal to the unsharded
//! references), the safe API on the crate's buffers, the raw API (`*_raw`), the C ABI
//! (`prefk_vocab_*`), the PyTorch ops taking a process group (`pref_kernels.vocab_parallel_*`).
use crate::error::{ensure, invalid, Result};
pub use crate::params::{VP_ENTROPY, VP_MAX, VP_OWNER, VP_STATS, VP_SUMEXP, VP_TARGET};

pub(crate) mod launch;
mod linear_shard;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod reference;

pub use launch::{VocabFinalizePtrs, VocabShardPartialsPtrs};

/// One rank's slice of the vocabulary: columns `[start, start + len)` of `vocab`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VocabShard {
    /// First column (vocabulary id) of the shard.
    pub start: usize,
    /// Columns in the shard (>= 1).
    pub len: usize,
    /// The whole vocabulary V (targets are ids in `[0, V)`).
    pub vocab: usize,
}

impl VocabShard {
    /// A checked shard: `len >= 1`, `start + len <= vocab`, `vocab <= i32::MAX`.
    pub fn new(start: usize, len: usize, vocab: usize) -> Result<Self> {
        let s = VocabShard { start, len, vocab };
        s.validate()?;
        Ok(s)
    }

    /// Rank `rank`'s shard when `vocab` is split over `world` ranks as evenly as possible: the
    /// first `vocab % world` shards get one column more (Megatron pads V to a multiple of `world`;
    /// then every shard has `V / world` columns, as here).
    pub fn even(vocab: usize, world: usize, rank: usize) -> Result<Self> {
        ensure(world >= 1 && rank < world, "rank", || {
            format!("needs 0 <= rank < world, got {rank} of {world}")
        })?;
        ensure(vocab >= world, "vocab", || format!("{vocab} columns cannot give {world} non-empty shards"))?;
        let (base, extra) = (vocab / world, vocab % world);
        let start = rank * base + rank.min(extra);
        Self::new(start, base + usize::from(rank < extra), vocab)
    }

    /// Checks the shard against its vocabulary.
    pub fn validate(&self) -> Result<()> {
        ensure(self.len >= 1, "shard", || format!("{self:?}: a shard needs at least one column"))?;
        ensure(self.vocab <= i32::MAX as usize, "vocab", || {
            format!("must be <= {}, got {}", i32::MAX, self.vocab)
        })?;
        match self.start.checked_add(self.len) {
            Some(end) if end <= self.vocab => Ok(()),
            _ => Err(invalid("shard", format!("{self:?}: start + len exceeds the vocabulary"))),
        }
    }

    /// Whether vocabulary id `t` lies in the shard.
    pub fn holds(&self, t: i64) -> bool {
        t >= self.start as i64 && t < (self.start + self.len) as i64
    }

    /// Checks that the group's shards (one per rank, any order) tile the vocabulary: each one
    /// valid, all of the same `vocab`, no gap and no overlap. The finalize's owner flags catch a
    /// bad tiling only at a target (a gap or an overlap that no target falls in would silently
    /// skew every row's lse), so `VocabParallelComm::new` runs this once on the gathered shard
    /// descriptors (the Python ops run the same check on the device, every call, on the
    /// descriptors that travel with the partials).
    pub fn check_tiling(shards: &[VocabShard]) -> Result<()> {
        ensure(!shards.is_empty(), "shards", || "needs at least one shard".into())?;
        let vocab = shards[0].vocab;
        for s in shards {
            s.validate()?;
            ensure(s.vocab == vocab, "shards", || {
                format!("{s:?}: every shard must split the same vocabulary ({vocab})")
            })?;
        }
        let mut sorted = shards.to_vec();
        sorted.sort_by_key(|s| s.start);
        let mut next = 0usize;
        for s in &sorted {
            ensure(s.start == next, "shards", || {
                if s.start < next {
                    format!("{s:?} overlaps the shard before it (which ends at {next}): the shards must tile [0, {vocab})")
                } else {
                    format!(
                        "columns [{next}, {}) belong to no shard: the shards must tile [0, {vocab})",
                        s.start
                    )
                }
            })?;
            next = s.start + s.len;
        }
        ensure(next == vocab, "shards", || {
            format!("columns [{next}, {vocab}) belong to no shard: the shards must tile [0, {vocab})")
        })
    }
}

/// Length checks of the gathered partials: `[n_shards, n_rows, VP_STATS]`.
pub(crate) fn check_gathered(len: usize, n_shards: usize, n_rows: usize) -> Result<()> {
    ensure(n_shards >= 1, "n_shards", || "needs at least one shard".into())?;
    let want = n_shards
        .checked_mul(n_rows)
        .and_then(|x| x.checked_mul(VP_STATS))
        .filter(|&x| x <= i64::MAX as usize);
    ensure(want == Some(len), "partials", || {
        format!("needs n_shards · n_rows · {VP_STATS} = {n_shards} · {n_rows} · {VP_STATS} f32, got {len}")
    })
}
