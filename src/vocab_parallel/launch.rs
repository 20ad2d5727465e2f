//! GPU launch of the vocabulary-parallel kernels (`kernels/vocab_parallel.cu`): the unsafe raw
//! entry points and the safe wrappers.
use super::{check_gathered, VocabShard, VP_STATS};
use crate::dtype::{DType, IndexType, LogitElement, TargetIndex};
use crate::error::ensure_len;
use crate::error::{ensure, Result};
use crate::params::{VocabFinalizeParams, VocabShardBwdParams, VocabShardFwdParams};
use crate::runtime::args::check_ptr;
use crate::runtime::mem::{optional_ptr, DevicePtr, DevicePtrMut, Stream, View, ViewMut};
use crate::runtime::registry::{self, row_threads, TOKEN_LOGPROBS_THREADS, VOCAB_FINALIZE_THREADS};
use crate::runtime::status::{check_status, StatusWord};
use crate::runtime::Gpu;
use crate::token_logprobs::stats_len;
use crate::token_logprobs::{
    validate, EntropyGrad, GradLogits, TokenLogprobsBwdPtrs, TokenLogprobsConfig, TokenLogprobsOutputs,
};
use crate::LogitsLayout;

/// Device pointers of a shard's partials (raw API).
#[derive(Debug, Clone, Copy, Default)]
pub struct VocabShardPartialsPtrs {
    /// The shard's logits `[n_rows, row_stride]` (its `len` columns used).
    pub logits: u64,
    /// Targets `[n_rows]`, ids in the whole vocabulary.
    pub targets: u64,
    /// Output `[n_rows, VP_STATS]` f32.
    pub partials: u64,
    /// A u32 status word, or 0.
    pub status: u64,
}

/// Device pointers of the finalize (raw API).
#[derive(Debug, Clone, Copy, Default)]
pub struct VocabFinalizePtrs {
    /// The gathered partials `[n_shards, n_rows, VP_STATS]` f32, shard-major.
    pub partials: u64,
    /// Targets `[n_rows]`.
    pub targets: u64,
    /// Outputs `[n_rows]` f32.
    pub logp: u64,
    /// Outputs `[n_rows]` f32.
    pub lse: u64,
    /// Output `[n_rows]` f32 entropy, or 0 (given exactly when `compute_entropy`).
    pub entropy: u64,
    /// A u32 status word, or 0.
    pub status: u64,
    /// Output `[n_rows, SOFTMAX_STATS]` f32 softmax statistics of the whole row (what the shard
    /// backward reads), or 0 when no backward follows.
    pub stats: u64,
}

fn shard_layout(layout: &LogitsLayout, shard: &VocabShard) -> Result<()> {
    shard.validate()?;
    ensure(layout.vocab == shard.len, "layout", || {
        format!("the shard's logits have {} columns, the shard {}", layout.vocab, shard.len)
    })
}

impl Gpu {
    /// A shard's partial statistics on raw pointers (one kernel on `stream`, no synchronization).
    /// `layout` describes the shard's logits (`layout.vocab == shard.len`).
    ///
    /// Errors (before any launch): invalid layout, shard or config; null or misaligned pointers.
    /// Targets outside `[0, shard.vocab)` give NaN partials and `STATUS_BAD_TARGET`.
    ///
    /// # Safety
    /// Non-zero pointers are memory of this backend valid for the layout (`logits`:
    /// `layout.span()` elements of `dtype`; `targets`: `n_rows`; `partials`: `n_rows · VP_STATS`
    /// f32; `status`: one u32); `stream` is 0 or a live stream of this context; the buffers stay
    /// alive and untouched by other work until the launch completes; `partials` overlaps nothing.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn vocab_shard_partials_raw(
        &self,
        stream: u64,
        dtype: DType,
        index_type: IndexType,
        layout: LogitsLayout,
        shard: VocabShard,
        ptrs: &VocabShardPartialsPtrs,
        cfg: &TokenLogprobsConfig,
    ) -> Result<()> {
        validate(&layout, cfg, layout.span()?, layout.n_rows)?;
        shard_layout(&layout, &shard)?;
        check_ptr("logits", ptrs.logits, dtype.size(), true)?;
        check_ptr("targets", ptrs.targets, index_type.size(), true)?;
        check_ptr("partials", ptrs.partials, 4, true)?;
        check_ptr("status", ptrs.status, 4, false)?;
        if layout.n_rows == 0 {
            return Ok(());
        }
        let params = VocabShardFwdParams {
            logits: ptrs.logits,
            targets: ptrs.targets,
            partials: ptrs.partials,
            status: ptrs.status,
            n_rows: layout.n_rows as i64,
            row_stride: layout.row_stride as i64,
            shard_vocab: shard.len as i64,
            vocab_start: shard.start as i64,
            vocab: shard.vocab as i64,
            ignore_index: cfg.ignore_index,
            inv_temperature: 1.0 / cfg.temperature,
            reserved: 0,
        };
        let rt = row_threads(shard.len);
        let name = registry::vocab_shard(false, dtype, index_type, cfg.compute_entropy, rt);
        let grid = self.grid_for(layout.n_rows as u64, (TOKEN_LOGPROBS_THREADS / rt) as u64);
        // SAFETY: the caller guarantees the stream and pointers; params is the kernel's struct.
        unsafe { self.launch(stream, &name, grid, &params) }
    }

    /// The finalize on raw pointers: `n_shards` gathered partial blocks of `n_rows` rows to logp,
    /// lse (and entropy when `cfg.compute_entropy`, the softmax statistics when `ptrs.stats` is
    /// given). One kernel, no synchronization.
    ///
    /// # Safety
    /// As [`Gpu::vocab_shard_partials_raw`]: `partials` holds `n_shards · n_rows · VP_STATS` f32,
    /// `targets` `n_rows` indices, the outputs `n_rows` f32 each (`stats` `n_rows · SOFTMAX_STATS`),
    /// none overlapping.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn vocab_parallel_finalize_raw(
        &self,
        stream: u64,
        index_type: IndexType,
        n_rows: usize,
        n_shards: usize,
        vocab: usize,
        ptrs: &VocabFinalizePtrs,
        cfg: &TokenLogprobsConfig,
    ) -> Result<()> {
        cfg.validate()?;
        ensure(n_rows <= i32::MAX as usize, "n_rows", || format!("must be <= {}, got {n_rows}", i32::MAX))?;
        ensure((1..=i32::MAX as usize).contains(&vocab), "vocab", || {
            format!("must be in [1, {}], got {vocab}", i32::MAX)
        })?;
        ensure((1..=65536).contains(&n_shards), "n_shards", || {
            format!("must be in [1, 65536], got {n_shards}")
        })?;
        check_gathered(n_shards * n_rows * VP_STATS, n_shards, n_rows)?;
        check_ptr("partials", ptrs.partials, 4, true)?;
        check_ptr("targets", ptrs.targets, index_type.size(), true)?;
        check_ptr("logp", ptrs.logp, 4, true)?;
        check_ptr("lse", ptrs.lse, 4, true)?;
        check_ptr("entropy", ptrs.entropy, 4, false)?;
        check_ptr("status", ptrs.status, 4, false)?;
        check_ptr("stats", ptrs.stats, 4, false)?;
        ensure((ptrs.entropy != 0) == cfg.compute_entropy, "entropy", || {
            format!("must be given iff compute_entropy is set (compute_entropy = {})", cfg.compute_entropy)
        })?;
        if n_rows == 0 {
            return Ok(());
        }
        let params = VocabFinalizeParams {
            partials: ptrs.partials,
            targets: ptrs.targets,
            logp: ptrs.logp,
            lse: ptrs.lse,
            entropy: ptrs.entropy,
            status: ptrs.status,
            n_rows: n_rows as i64,
            n_shards: n_shards as i64,
            vocab: vocab as i64,
            ignore_index: cfg.ignore_index,
            stats: ptrs.stats,
            inv_temperature: 1.0 / cfg.temperature,
            reserved: 0,
        };
        let grid = self.grid_for(n_rows as u64, VOCAB_FINALIZE_THREADS as u64);
        // SAFETY: forwarded to the caller; params is the kernel's struct.
        unsafe { self.launch(stream, &registry::vocab_finalize(index_type), grid, &params) }
    }

    /// A shard's backward on raw pointers: d/dlogits of its columns from the global softmax
    /// statistics (`ptrs.stats`, the finalize's) and
    /// entropy), as [`Gpu::token_logprobs_backward_raw`] with targets that are ids in the whole
    /// vocabulary. One kernel, no synchronization.
    ///
    /// # Safety
    /// As [`Gpu::token_logprobs_backward_raw`], for the shard's layout.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn vocab_shard_backward_raw(
        &self,
        stream: u64,
        dtype: DType,
        index_type: IndexType,
        layout: LogitsLayout,
        grad_stride: usize,
        shard: VocabShard,
        ptrs: &TokenLogprobsBwdPtrs,
        cfg: &TokenLogprobsConfig,
    ) -> Result<()> {
        ptrs.validate(dtype, index_type, layout, grad_stride, cfg)?;
        shard_layout(&layout, &shard)?;
        if layout.n_rows == 0 {
            return Ok(());
        }
        let params = VocabShardBwdParams {
            rows: ptrs.params(layout, grad_stride, cfg),
            vocab_start: shard.start as i64,
            vocab: shard.vocab as i64,
        };
        let rt = row_threads(shard.len);
        let name = registry::vocab_shard(true, dtype, index_type, ptrs.grad_entropy != 0, rt);
        let grid = self.grid_for(layout.n_rows as u64, (TOKEN_LOGPROBS_THREADS / rt) as u64);
        // SAFETY: forwarded to the caller; params is the kernel's struct.
        unsafe { self.launch(stream, &name, grid, &params) }
    }

    /// A shard's partial statistics into `partials` (`[n_rows, VP_STATS]` f32), on `stream`. With
    /// `cfg.check_targets` it synchronizes once for the status word; the entropy term is
    /// computed when `cfg.compute_entropy`.
    #[allow(clippy::too_many_arguments)]
    pub fn vocab_shard_partials<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        logits: &impl DevicePtr<T>,
        layout: LogitsLayout,
        shard: VocabShard,
        targets: &impl DevicePtr<I>,
        partials: &mut ViewMut<'_, f32>,
        cfg: &TokenLogprobsConfig,
    ) -> Result<()> {
        validate(&layout, cfg, logits.len(), targets.len())?;
        shard_layout(&layout, &shard)?;
        ensure_len("partials", partials.len(), layout.n_rows * VP_STATS)?;
        let mut status = StatusWord::new(stream, cfg.check_targets)?;
        {
            let (logits_p, _g0) = logits.device_ptr(stream)?;
            let (targets_p, _g1) = targets.device_ptr(stream)?;
            let (partials_p, _g2) = partials.device_ptr_mut(stream)?;
            let (status_p, _g3) = status.ptr(stream)?;
            let ptrs = VocabShardPartialsPtrs {
                logits: logits_p,
                targets: targets_p,
                partials: partials_p,
                status: status_p,
            };
            // SAFETY: live buffers of checked lengths on this stream's context, guards held.
            unsafe {
                self.vocab_shard_partials_raw(
                    stream.raw(),
                    T::DTYPE,
                    I::INDEX_TYPE,
                    layout,
                    shard,
                    &ptrs,
                    cfg,
                )
            }?;
        }
        check_status(status.read(stream)?)
    }

    /// The finalize: `partials` holds every shard's `[n_rows, VP_STATS]` block, gathered in the same order on every rank
    /// (what an all-gather over the tensor-parallel group returns); writes logp, lse (and entropy,
    /// and the softmax statistics the shard backward reads) into `out`, identical on every rank. With `cfg.check_targets` it synchronizes once and
    /// reports bad targets and shards that do not tile the vocabulary at a used target as errors
    /// (a gap or an overlap that no target falls in is invisible here: check the group's shards
    /// once with [`VocabShard::check_tiling`]).
    #[allow(clippy::too_many_arguments)]
    pub fn vocab_parallel_finalize<I: TargetIndex>(
        &self,
        stream: &Stream,
        partials: &View<'_, f32>,
        n_shards: usize,
        vocab: usize,
        targets: &impl DevicePtr<I>,
        mut out: TokenLogprobsOutputs<'_>,
        cfg: &TokenLogprobsConfig,
    ) -> Result<()> {
        let n = targets.len();
        check_gathered(partials.len(), n_shards, n)?;
        ensure_len("logp", out.logp.len(), n)?;
        ensure_len("lse", out.lse.len(), n)?;
        ensure(out.entropy.is_some() == cfg.compute_entropy, "entropy", || {
            "give an entropy output exactly when compute_entropy is set".into()
        })?;
        if let Some(e) = &out.entropy {
            ensure_len("entropy", e.len(), n)?;
        }
        if let Some(st) = &out.stats {
            ensure_len("stats", st.len(), stats_len(n)?)?;
        }
        let mut status = StatusWord::new(stream, cfg.check_targets)?;
        {
            let mut guards = Vec::new();
            let partials_p = optional_ptr(stream, Some(partials), &mut guards)?;
            let (targets_p, _g1) = targets.device_ptr(stream)?;
            let (logp_p, _g2) = out.logp.device_ptr_mut(stream)?;
            let (lse_p, _g3) = out.lse.device_ptr_mut(stream)?;
            let ent = match out.entropy.as_mut() {
                Some(e) => Some(e.device_ptr_mut(stream)?),
                None => None,
            };
            let stats = match out.stats.as_mut() {
                Some(st) => Some(st.device_ptr_mut(stream)?),
                None => None,
            };
            let (status_p, _g4) = status.ptr(stream)?;
            let ptrs = VocabFinalizePtrs {
                partials: partials_p,
                targets: targets_p,
                logp: logp_p,
                lse: lse_p,
                entropy: ent.as_ref().map_or(0, |(p, _)| *p),
                status: status_p,
                stats: stats.as_ref().map_or(0, |(p, _)| *p),
            };
            // SAFETY: live buffers of checked lengths on this stream's context, guards held.
            unsafe {
                self.vocab_parallel_finalize_raw(stream.raw(), I::INDEX_TYPE, n, n_shards, vocab, &ptrs, cfg)
            }?;
        }
        check_status(status.read(stream)?)
    }

    /// A shard's backward: d/dlogits of its columns of `Σ grad_logp·logp (+ Σ grad_entropy·H)`
    /// from the global softmax statistics `stats` (and `entropy`) of the finalize, into `grad` (a separate buffer, or
    /// in place over the shard's logits). No collective is needed: each rank writes its own
    /// columns.
    #[allow(clippy::too_many_arguments)]
    pub fn vocab_shard_backward<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        logits: &mut ViewMut<'_, T>,
        layout: LogitsLayout,
        shard: VocabShard,
        targets: &impl DevicePtr<I>,
        stats: &impl DevicePtr<f32>,
        grad_logp: &impl DevicePtr<f32>,
        entropy: Option<EntropyGrad<'_, '_>>,
        grad: GradLogits<'_, T>,
        cfg: &TokenLogprobsConfig,
    ) -> Result<()> {
        validate(&layout, cfg, logits.len(), targets.len())?;
        shard_layout(&layout, &shard)?;
        ensure_len("stats", stats.len(), stats_len(layout.n_rows)?)?;
        ensure_len("grad_logp", grad_logp.len(), layout.n_rows)?;
        if let Some(e) = &entropy {
            ensure_len("entropy", e.entropy.len(), layout.n_rows)?;
            ensure_len("grad_entropy", e.grad_entropy.len(), layout.n_rows)?;
        }
        let mut grad = grad;
        let (grad_sep, grad_stride) = grad.pointer(stream, layout)?;
        let mut status = StatusWord::new(stream, cfg.check_targets)?;
        {
            let (logits_p, _g0) = logits.device_ptr_mut(stream)?;
            let grad_p = grad_sep.as_ref().map_or(logits_p, |(p, _)| *p);
            let mut guards = Vec::new();
            let (targets_p, _g1) = targets.device_ptr(stream)?;
            let (stats_p, _g2) = stats.device_ptr(stream)?;
            let (grad_logp_p, _g3) = grad_logp.device_ptr(stream)?;
            let entropy_p = optional_ptr(stream, entropy.as_ref().map(|e| e.entropy), &mut guards)?;
            let grad_entropy_p = optional_ptr(stream, entropy.as_ref().map(|e| e.grad_entropy), &mut guards)?;
            let (status_p, _g4) = status.ptr(stream)?;
            let ptrs = TokenLogprobsBwdPtrs {
                logits: logits_p,
                targets: targets_p,
                stats: stats_p,
                grad_logp: grad_logp_p,
                grad_logits: grad_p,
                status: status_p,
                entropy: entropy_p,
                grad_entropy: grad_entropy_p,
            };
            // SAFETY: live buffers of checked lengths on this stream's context, guards held.
            unsafe {
                self.vocab_shard_backward_raw(
                    stream.raw(),
                    T::DTYPE,
                    I::INDEX_TYPE,
                    layout,
                    grad_stride,
                    shard,
                    &ptrs,
                    cfg,
                )
            }?;
        }
        check_status(status.read(stream)?)
    }
}
