//! GPU launch of the token log-probs kernels (`kernels/token_logprobs.cu`): the unsafe raw-pointer
//! entry points and the safe wrappers over cudarc buffers.
use crate::runtime::mem::{optional_ptr_mut, DevicePtr, DevicePtrMut, Guard, Stream, View, ViewMut};
use crate::runtime::registry::{self, row_threads, FwdMode, TOKEN_LOGPROBS_THREADS};

use super::{validate, LogitsLayout, TokenLogprobsConfig};
use crate::dtype::{DType, IndexType, LogitElement, TargetIndex};
use crate::error::ensure_len;
use crate::error::{ensure, Result};
use crate::params::{TokenLogprobsBwdParams, TokenLogprobsFwdParams, TokenTopkParams, TOPK_MAX};
use crate::runtime::args::{check_ptr, ranges_overlap};
use crate::runtime::status::{check_status, StatusWord};
use crate::runtime::Gpu;

/// Length of a softmax-statistics buffer for `n_rows` rows (`n_rows * SOFTMAX_STATS`), checked.
pub fn stats_len(n_rows: usize) -> Result<usize> {
    n_rows.checked_mul(crate::params::SOFTMAX_STATS).ok_or_else(|| {
        crate::error::invalid("stats", format!("{n_rows} rows of softmax statistics overflow usize"))
    })
}

/// Device pointers of a forward call (raw API). Pointers are CUdeviceptr values (e.g. PyTorch's
/// `tensor.data_ptr()`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenLogprobsFwdPtrs {
    /// Logits `[n_rows, row_stride]` of the given dtype.
    pub logits: u64,
    /// Targets `[n_rows]` of the given index type.
    pub targets: u64,
    /// Output `[n_rows]` f32.
    pub logp: u64,
    /// Output `[n_rows]` f32 `logsumexp(logits / T)`.
    pub lse: u64,
    /// Output `[n_rows]` f32 entropy, or 0 when not wanted.
    pub entropy: u64,
    /// A u32 status word the kernel ORs bits into (not cleared by the kernel), or 0.
    pub status: u64,
    /// Output `[n_rows, SOFTMAX_STATS]` f32 softmax statistics (row max, log2 of the sum; see
    /// [`crate::params::SOFTMAX_STATS`]), what the backward reads; or 0 when no backward follows.
    pub stats: u64,
    /// Output `[n_rows]` f32 `log Σ_v p_v²` (WPO's per-token term, TRL's `log_sum_sq_probs`),
    /// or 0. Computed in the entropy's pass: needs `compute_entropy`.
    pub log_sum_sq: u64,
    /// Output `[n_rows]` f32 mean of `logits / T` over the vocabulary (TRL's `mean_logits`), or 0.
    pub mean_logits: u64,
    /// Output `[n_rows]` u8 (a `torch.bool` works): 1 where the target is the row's first argmax
    /// (TRL's `is_top1`: a tie with an earlier id does not count; 0 on ignored rows and rows with
    /// NaN/+inf), or 0.
    pub is_top1: u64,
}

impl TokenLogprobsFwdPtrs {
    /// The entry point these outputs need: mean logits or `is_top1` take the full pass (which
    /// computes the entropy whether or not it is written), the entropy the entropy pass.
    fn mode(&self, cfg: &TokenLogprobsConfig) -> FwdMode {
        if self.mean_logits != 0 || self.is_top1 != 0 {
            FwdMode::Full
        } else if cfg.compute_entropy {
            FwdMode::Entropy
        } else {
            FwdMode::Plain
        }
    }
}

/// Device pointers of a top-k call (raw API): the k largest log-probs of every row and their ids,
/// from the logits and the softmax statistics a forward wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenTopkPtrs {
    /// Logits `[n_rows, row_stride]` of the given dtype (the forward's).
    pub logits: u64,
    /// Targets `[n_rows]` (the forward's): ignored rows get log-prob 0 and id -1, bad ones NaN, -1.
    pub targets: u64,
    /// `[n_rows, SOFTMAX_STATS]` f32 softmax statistics from the forward.
    pub stats: u64,
    /// Output `[n_rows, k]` f32: the k largest `log p_v`, descending (equal values by ascending id).
    pub topk_logp: u64,
    /// Output `[n_rows, k]` i64: their ids.
    pub topk_ids: u64,
    /// A u32 status word, or 0.
    pub status: u64,
}

/// Device pointers of a backward call (raw API).
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenLogprobsBwdPtrs {
    /// Logits `[n_rows, row_stride]`.
    pub logits: u64,
    /// Targets `[n_rows]`.
    pub targets: u64,
    /// `[n_rows, SOFTMAX_STATS]` f32 softmax statistics from the forward.
    pub stats: u64,
    /// `[n_rows]` f32 upstream gradient.
    pub grad_logp: u64,
    /// Output `[n_rows, grad_stride]` in the logits dtype; equal to `logits` for in place.
    pub grad_logits: u64,
    /// A u32 status word, or 0.
    pub status: u64,
    /// `[n_rows]` f32 entropy from the forward, or 0. Given together with `grad_entropy`.
    pub entropy: u64,
    /// `[n_rows]` f32 upstream gradient of the entropy (e.g. an entropy bonus), or 0: then
    /// d/dlogits also holds `-grad_entropy · p_v (log p_v + H) / T`.
    pub grad_entropy: u64,
}

/// The entropy side of a backward: the forward's entropy and its upstream gradient, `[n_rows]` f32.
pub struct EntropyGrad<'e, 'g> {
    /// H per row, as the forward wrote it.
    pub entropy: &'e View<'e, f32>,
    /// dL/dH per row.
    pub grad_entropy: &'g View<'g, f32>,
}

/// Where d/dlogits goes.
pub enum GradLogits<'a, T> {
    /// Over the logits (they are consumed).
    InPlace,
    /// Into a separate buffer with its own row stride.
    Separate {
        /// Output buffer.
        grad: ViewMut<'a, T>,
        /// Row stride in elements (>= V).
        row_stride: usize,
    },
}

impl<T> GradLogits<'_, T> {
    /// The separate buffer's pointer (with its guard) and the gradient row stride; `None` and
    /// the logits' stride in place. Checks the separate buffer spans its layout.
    pub(crate) fn pointer(
        &mut self,
        stream: &Stream,
        layout: LogitsLayout,
    ) -> Result<(Option<(u64, Guard<'_>)>, usize)> {
        match self {
            GradLogits::InPlace => Ok((None, layout.row_stride)),
            GradLogits::Separate { grad, row_stride } => {
                let span = LogitsLayout { row_stride: *row_stride, ..layout }.span()?;
                ensure(grad.len() >= span, "grad", || {
                    format!("needs at least {span} elements, got {}", grad.len())
                })?;
                let stride = *row_stride;
                Ok((Some(grad.device_ptr_mut(stream)?), stride))
            }
        }
    }
}

/// Outputs of the safe forward.
pub struct TokenLogprobsOutputs<'a> {
    /// `[n_rows]` log p(target).
    pub logp: ViewMut<'a, f32>,
    /// `[n_rows]` logsumexp of `logits / T`.
    pub lse: ViewMut<'a, f32>,
    /// `[n_rows]` entropy; required iff `compute_entropy` is set.
    pub entropy: Option<ViewMut<'a, f32>>,
    /// `[n_rows * SOFTMAX_STATS]` softmax statistics for the backward, or `None` (forward only).
    pub stats: Option<ViewMut<'a, f32>>,
    /// `[n_rows]` `log Σ_v p_v²` (WPO), or `None`; needs `compute_entropy`.
    pub log_sum_sq: Option<ViewMut<'a, f32>>,
    /// `[n_rows]` mean of `logits / T` (TRL's `mean_logits`), or `None`.
    pub mean_logits: Option<ViewMut<'a, f32>>,
    /// `[n_rows]` 1 where the target is the first argmax (TRL's `is_top1`), else 0; or `None`.
    pub is_top1: Option<ViewMut<'a, u8>>,
}

/// Argument checks of the raw forward (everything but the pointers' validity, which the caller
/// guarantees).
fn validate_forward_ptrs(
    dtype: DType,
    index_type: IndexType,
    layout: LogitsLayout,
    ptrs: &TokenLogprobsFwdPtrs,
    cfg: &TokenLogprobsConfig,
) -> Result<()> {
    validate(&layout, cfg, layout.span()?, layout.n_rows)?;
    check_ptr("logits", ptrs.logits, dtype.size(), true)?;
    check_ptr("targets", ptrs.targets, index_type.size(), true)?;
    check_ptr("logp", ptrs.logp, 4, true)?;
    check_ptr("lse", ptrs.lse, 4, true)?;
    check_ptr("entropy", ptrs.entropy, 4, false)?;
    check_ptr("status", ptrs.status, 4, false)?;
    check_ptr("stats", ptrs.stats, 4, false)?;
    ensure((ptrs.entropy != 0) == cfg.compute_entropy, "entropy", || {
        format!("must be given iff compute_entropy is set (compute_entropy = {})", cfg.compute_entropy)
    })?;
    check_ptr("log_sum_sq", ptrs.log_sum_sq, 4, false)?;
    ensure(ptrs.log_sum_sq == 0 || cfg.compute_entropy, "log_sum_sq", || {
        "is computed in the entropy's pass: set compute_entropy (and give entropy) too".into()
    })?;
    check_ptr("mean_logits", ptrs.mean_logits, 4, false)?;
    check_ptr("is_top1", ptrs.is_top1, 1, false)?;
    Ok(())
}

/// Checks k of a top-k call: 1 ..= [`TOPK_MAX`] and at most the vocabulary.
pub fn validate_top_k(k: usize, vocab: usize) -> Result<()> {
    ensure((1..=TOPK_MAX).contains(&k), "k", || format!("must be in 1..={TOPK_MAX}, got {k}"))?;
    ensure(k <= vocab, "k", || format!("must be <= vocab ({vocab}), got {k}"))
}

/// `n_rows * k`, checked.
pub fn topk_len(n_rows: usize, k: usize) -> Result<usize> {
    n_rows
        .checked_mul(k)
        .filter(|&x| x <= i64::MAX as usize)
        .ok_or_else(|| crate::error::invalid("k", format!("{n_rows} rows of {k} entries overflow")))
}

impl TokenTopkPtrs {
    /// Argument checks of the raw top-k (everything but the pointers' validity).
    pub fn validate(
        &self,
        dtype: DType,
        index_type: IndexType,
        layout: LogitsLayout,
        k: usize,
        cfg: &TokenLogprobsConfig,
    ) -> Result<()> {
        validate(&layout, cfg, layout.span()?, layout.n_rows)?;
        validate_top_k(k, layout.vocab)?;
        topk_len(layout.n_rows, k)?;
        check_ptr("logits", self.logits, dtype.size(), true)?;
        check_ptr("targets", self.targets, index_type.size(), true)?;
        check_ptr("stats", self.stats, 4, true)?;
        check_ptr("topk_logp", self.topk_logp, 4, true)?;
        check_ptr("topk_ids", self.topk_ids, 8, true)?;
        check_ptr("status", self.status, 4, false)
    }
}

impl TokenLogprobsBwdPtrs {
    /// Argument checks of the raw backward (everything but the pointers' validity, which only the
    /// caller can vouch for): the layouts, the
    /// pointers' presence and alignment, the entropy pair, and gradient/logits ranges that overlap
    /// without being exactly in place.
    pub fn validate(
        &self,
        dtype: DType,
        index_type: IndexType,
        layout: LogitsLayout,
        grad_stride: usize,
        cfg: &TokenLogprobsConfig,
    ) -> Result<()> {
        let ptrs = self;
        validate(&layout, cfg, layout.span()?, layout.n_rows)?;
        let grad_layout = LogitsLayout { row_stride: grad_stride, ..layout };
        grad_layout.validate().map_err(|_| {
            crate::error::invalid(
                "grad_stride",
                format!("must be >= vocab ({}), got {grad_stride}", layout.vocab),
            )
        })?;
        check_ptr("logits", ptrs.logits, dtype.size(), true)?;
        check_ptr("targets", ptrs.targets, index_type.size(), true)?;
        check_ptr("stats", ptrs.stats, 4, true)?;
        check_ptr("grad_logp", ptrs.grad_logp, 4, true)?;
        check_ptr("grad_logits", ptrs.grad_logits, dtype.size(), true)?;
        check_ptr("status", ptrs.status, 4, false)?;
        check_ptr("entropy", ptrs.entropy, 4, false)?;
        check_ptr("grad_entropy", ptrs.grad_entropy, 4, false)?;
        ensure((ptrs.entropy == 0) == (ptrs.grad_entropy == 0), "grad_entropy", || {
            "the entropy gradient needs both the forward's entropy and grad_entropy (or neither)".into()
        })?;
        let es = dtype.size() as u64;
        let in_bytes = layout.span()? as u64 * es;
        let out_bytes = grad_layout.span()? as u64 * es;
        if ptrs.grad_logits == ptrs.logits {
            ensure(grad_stride == layout.row_stride, "grad_stride", || {
                format!(
                    "in-place backward needs grad_stride == row_stride ({}), got {grad_stride}",
                    layout.row_stride
                )
            })?;
        } else {
            ensure(
                !ranges_overlap(ptrs.logits, in_bytes, ptrs.grad_logits, out_bytes),
                "grad_logits",
                || "overlaps logits without being exactly in place".into(),
            )?;
        }
        Ok(())
    }

    /// The backward kernel's parameters for arguments [`Self::validate`] accepted.
    pub fn params(
        &self,
        layout: LogitsLayout,
        grad_stride: usize,
        cfg: &TokenLogprobsConfig,
    ) -> TokenLogprobsBwdParams {
        let ptrs = self;
        TokenLogprobsBwdParams {
            logits: ptrs.logits,
            targets: ptrs.targets,
            stats: ptrs.stats,
            grad_logp: ptrs.grad_logp,
            grad_logits: ptrs.grad_logits,
            status: ptrs.status,
            n_rows: layout.n_rows as i64,
            logits_stride: layout.row_stride as i64,
            grad_stride: grad_stride as i64,
            vocab: layout.vocab as i64,
            ignore_index: cfg.ignore_index,
            inv_temperature: 1.0 / cfg.temperature,
            reserved: 0,
            entropy: ptrs.entropy,
            grad_entropy: ptrs.grad_entropy,
        }
    }
}

impl Gpu {
    /// Forward on raw device pointers. Launches one kernel on `stream`; never synchronizes.
    ///
    /// Errors (before any launch): invalid layout or config, null or misaligned pointers (logits
    /// aligned to the dtype, targets to the index type, f32 buffers and the status word to 4
    /// bytes), `entropy` given without `compute_entropy` or the reverse. Bad targets are not an
    /// error here: their rows get NaN and `ptrs.status` (if non-zero) gets `STATUS_BAD_TARGET`.
    ///
    /// # Safety
    /// - Every non-zero pointer is a device allocation of this GPU's context, valid for the
    ///   elements the layout implies (`logits`: `layout.span()` elements of `dtype`; `targets`,
    ///   `logp`, `lse`, `entropy`: `n_rows` elements; `stats`: `n_rows * SOFTMAX_STATS`; `status`:
    ///   one u32).
    /// - `stream` is 0 (legacy default stream) or a live CUstream of this context.
    /// - The buffers stay alive, and no other work writes the inputs or touches the outputs, until
    ///   the launched work completes in stream order; the caller orders it against other streams.
    /// - The output buffers do not overlap each other or the inputs.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn token_logprobs_forward_raw(
        &self,
        stream: u64,
        dtype: DType,
        index_type: IndexType,
        layout: LogitsLayout,
        ptrs: &TokenLogprobsFwdPtrs,
        cfg: &TokenLogprobsConfig,
    ) -> Result<()> {
        validate_forward_ptrs(dtype, index_type, layout, ptrs, cfg)?;
        if layout.n_rows == 0 {
            return Ok(());
        }
        let params = TokenLogprobsFwdParams {
            logits: ptrs.logits,
            targets: ptrs.targets,
            logp: ptrs.logp,
            lse: ptrs.lse,
            entropy: ptrs.entropy,
            status: ptrs.status,
            n_rows: layout.n_rows as i64,
            row_stride: layout.row_stride as i64,
            vocab: layout.vocab as i64,
            ignore_index: cfg.ignore_index,
            inv_temperature: 1.0 / cfg.temperature,
            reserved: 0,
            stats: ptrs.stats,
            log_sum_sq: ptrs.log_sum_sq,
            mean_logits: ptrs.mean_logits,
            is_top1: ptrs.is_top1,
        };
        let rt = row_threads(layout.vocab);
        let name = registry::token_logprobs_fwd(dtype, index_type, ptrs.mode(cfg), rt);
        let grid = self.grid_for(layout.n_rows as u64, (TOKEN_LOGPROBS_THREADS / rt) as u64);
        // SAFETY: the caller guarantees the stream and pointers (see # Safety); params is the
        // kernel's by-value TokenLogprobsFwdParams (layout asserted).
        unsafe { self.launch(stream, &name, grid, &params) }
    }

    /// Backward on raw device pointers: writes `grad_logits` (in place when
    /// `ptrs.grad_logits == ptrs.logits`, which requires `grad_stride == layout.row_stride`).
    /// Launches one kernel on `stream`; never synchronizes.
    ///
    /// Errors (before any launch): as the forward, plus `grad_stride < vocab` and gradient/logits
    /// ranges that overlap without being exactly in place.
    ///
    /// # Safety
    /// As [`Gpu::token_logprobs_forward_raw`]; `stats` holds `n_rows * SOFTMAX_STATS` f32,
    /// `grad_logp` `n_rows` f32, and
    /// `grad_logits` spans `(n_rows - 1) * grad_stride + vocab` elements of `dtype`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn token_logprobs_backward_raw(
        &self,
        stream: u64,
        dtype: DType,
        index_type: IndexType,
        layout: LogitsLayout,
        grad_stride: usize,
        ptrs: &TokenLogprobsBwdPtrs,
        cfg: &TokenLogprobsConfig,
    ) -> Result<()> {
        ptrs.validate(dtype, index_type, layout, grad_stride, cfg)?;
        if layout.n_rows == 0 {
            return Ok(());
        }
        let params = ptrs.params(layout, grad_stride, cfg);
        let rt = row_threads(layout.vocab);
        let name = registry::token_logprobs_bwd(dtype, index_type, ptrs.grad_entropy != 0, rt);
        let grid = self.grid_for(layout.n_rows as u64, (TOKEN_LOGPROBS_THREADS / rt) as u64);
        // SAFETY: the caller guarantees the stream and pointers (see # Safety); params is the
        // kernel's by-value TokenLogprobsBwdParams (layout asserted).
        unsafe { self.launch(stream, &name, grid, &params) }
    }

    /// Top-k log-probs on raw device pointers: for every row the `k` largest `log p_v` of
    /// `softmax(logits / T)` (descending, equal values by ascending id) and their ids, from the
    /// logits and the softmax statistics of a forward on the same logits, targets and config (the
    /// entry at the target's id is bitwise that forward's logp). Launches one kernel (a block per
    /// row, a radix select: a few reads of the row) on `stream`; never synchronizes.
    ///
    /// Errors (before any launch): as the forward, and `k` outside `1..=TOPK_MAX` or above the
    /// vocabulary.
    ///
    /// # Safety
    /// As [`Gpu::token_logprobs_forward_raw`]; `stats` holds the `n_rows * SOFTMAX_STATS` f32 the
    /// forward wrote (ordered before this launch), `topk_logp` `n_rows * k` f32 and `topk_ids`
    /// `n_rows * k` i64.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn token_logprobs_topk_raw(
        &self,
        stream: u64,
        dtype: DType,
        index_type: IndexType,
        layout: LogitsLayout,
        k: usize,
        ptrs: &TokenTopkPtrs,
        cfg: &TokenLogprobsConfig,
    ) -> Result<()> {
        ptrs.validate(dtype, index_type, layout, k, cfg)?;
        if layout.n_rows == 0 {
            return Ok(());
        }
        let params = TokenTopkParams {
            logits: ptrs.logits,
            targets: ptrs.targets,
            stats: ptrs.stats,
            topk_logp: ptrs.topk_logp,
            topk_ids: ptrs.topk_ids,
            status: ptrs.status,
            n_rows: layout.n_rows as i64,
            row_stride: layout.row_stride as i64,
            vocab: layout.vocab as i64,
            ignore_index: cfg.ignore_index,
            k: k as i64,
            inv_temperature: 1.0 / cfg.temperature,
            reserved: 0,
        };
        let name = registry::token_logprobs_topk(dtype, index_type);
        let grid = self.grid_for(layout.n_rows as u64, 1);
        // SAFETY: the caller guarantees the stream and pointers (see # Safety); params is the
        // kernel's by-value TokenTopkParams (layout asserted).
        unsafe { self.launch(stream, &name, grid, &params) }
    }

    /// Top-k log-probs on cudarc buffers ([`Gpu::token_logprobs_topk_raw`]): `stats` from a
    /// forward on the same logits; writes `topk_logp` and `topk_ids` (`n_rows * k` each). Status
    /// handling as in the forward.
    #[allow(clippy::too_many_arguments)]
    pub fn token_logprobs_topk<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        logits: &impl DevicePtr<T>,
        layout: LogitsLayout,
        targets: &impl DevicePtr<I>,
        stats: &impl DevicePtr<f32>,
        k: usize,
        topk_logp: &mut impl DevicePtrMut<f32>,
        topk_ids: &mut impl DevicePtrMut<i64>,
        cfg: &TokenLogprobsConfig,
    ) -> Result<()> {
        validate(&layout, cfg, logits.len(), targets.len())?;
        validate_top_k(k, layout.vocab)?;
        ensure_len("stats", stats.len(), stats_len(layout.n_rows)?)?;
        ensure_len("topk_logp", topk_logp.len(), topk_len(layout.n_rows, k)?)?;
        ensure_len("topk_ids", topk_ids.len(), topk_len(layout.n_rows, k)?)?;
        let mut status = StatusWord::new(stream, cfg.check_targets)?;
        {
            let (logits_p, _g0) = logits.device_ptr(stream)?;
            let (targets_p, _g1) = targets.device_ptr(stream)?;
            let (stats_p, _g2) = stats.device_ptr(stream)?;
            let (logp_p, _g3) = topk_logp.device_ptr_mut(stream)?;
            let (ids_p, _g4) = topk_ids.device_ptr_mut(stream)?;
            let (status_p, _g5) = status.ptr(stream)?;
            let ptrs = TokenTopkPtrs {
                logits: logits_p,
                targets: targets_p,
                stats: stats_p,
                topk_logp: logp_p,
                topk_ids: ids_p,
                status: status_p,
            };
            // SAFETY: pointers from live cudarc buffers of checked lengths on this stream.
            unsafe {
                self.token_logprobs_topk_raw(stream.raw(), T::DTYPE, I::INDEX_TYPE, layout, k, &ptrs, cfg)
            }?;
        }
        check_status(status.read(stream)?)
    }

    /// Forward on cudarc buffers, on `stream`.
    ///
    /// Lengths are checked against `layout` (`logits` must hold `layout.span()` elements, the
    /// others `n_rows`). With `cfg.check_targets` (default) the call synchronizes `stream` once to
    /// read the device status word and returns [`crate::Error::DeviceCheck`] if any target was out of
    /// range (those rows hold NaN); without it, it never synchronizes.
    pub fn token_logprobs_forward<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        logits: &impl DevicePtr<T>,
        layout: LogitsLayout,
        targets: &impl DevicePtr<I>,
        mut out: TokenLogprobsOutputs<'_>,
        cfg: &TokenLogprobsConfig,
    ) -> Result<()> {
        validate(&layout, cfg, logits.len(), targets.len())?;
        ensure_len("logp", out.logp.len(), layout.n_rows)?;
        ensure_len("lse", out.lse.len(), layout.n_rows)?;
        if let Some(e) = &out.entropy {
            ensure_len("entropy", e.len(), layout.n_rows)?;
        }
        if let Some(st) = &out.stats {
            ensure_len("stats", st.len(), stats_len(layout.n_rows)?)?;
        }
        if let Some(q) = &out.log_sum_sq {
            ensure_len("log_sum_sq", q.len(), layout.n_rows)?;
        }
        if let Some(q) = &out.mean_logits {
            ensure_len("mean_logits", q.len(), layout.n_rows)?;
        }
        if let Some(q) = &out.is_top1 {
            ensure_len("is_top1", q.len(), layout.n_rows)?;
        }
        let mut status = StatusWord::new(stream, cfg.check_targets)?;
        {
            let (logits_p, _g0) = logits.device_ptr(stream)?;
            let (targets_p, _g1) = targets.device_ptr(stream)?;
            let (logp_p, _g2) = out.logp.device_ptr_mut(stream)?;
            let (lse_p, _g3) = out.lse.device_ptr_mut(stream)?;
            let entropy_out = optional_ptr_mut(stream, out.entropy.as_mut())?;
            let entropy_p = entropy_out.as_ref().map_or(0, |(p, _)| *p);
            let stats_out = optional_ptr_mut(stream, out.stats.as_mut())?;
            let stats_p = stats_out.as_ref().map_or(0, |(p, _)| *p);
            let lss_out = optional_ptr_mut(stream, out.log_sum_sq.as_mut())?;
            let lss_p = lss_out.as_ref().map_or(0, |(p, _)| *p);
            let mean_out = optional_ptr_mut(stream, out.mean_logits.as_mut())?;
            let mean_p = mean_out.as_ref().map_or(0, |(p, _)| *p);
            let top1_out = optional_ptr_mut(stream, out.is_top1.as_mut())?;
            let top1_p = top1_out.as_ref().map_or(0, |(p, _)| *p);
            let (status_p, _g5) = status.ptr(stream)?;
            let ptrs = TokenLogprobsFwdPtrs {
                logits: logits_p,
                targets: targets_p,
                logp: logp_p,
                lse: lse_p,
                entropy: entropy_p,
                status: status_p,
                stats: stats_p,
                log_sum_sq: lss_p,
                mean_logits: mean_p,
                is_top1: top1_p,
            };
            // SAFETY: every pointer comes from a live cudarc buffer of the checked length on this
            // stream's context; the guards keep cudarc's event tracking ordered around the launch.
            unsafe {
                self.token_logprobs_forward_raw(stream.raw(), T::DTYPE, I::INDEX_TYPE, layout, &ptrs, cfg)
            }?;
        }
        check_status(status.read(stream)?)
    }

    /// Backward on cudarc buffers into a separate `grad_logits` buffer with row stride
    /// `grad_stride` (usually `layout.vocab`). Status handling as in the forward.
    #[allow(clippy::too_many_arguments)]
    pub fn token_logprobs_backward<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        logits: &impl DevicePtr<T>,
        layout: LogitsLayout,
        targets: &impl DevicePtr<I>,
        stats: &impl DevicePtr<f32>,
        grad_logp: &impl DevicePtr<f32>,
        grad_logits: &mut impl DevicePtrMut<T>,
        grad_stride: usize,
        cfg: &TokenLogprobsConfig,
    ) -> Result<()> {
        validate(&layout, cfg, logits.len(), targets.len())?;
        let grad_span = LogitsLayout { row_stride: grad_stride, ..layout }.span()?;
        ensure(grad_logits.len() >= grad_span, "grad_logits", || {
            format!("needs at least {grad_span} elements, got {}", grad_logits.len())
        })?;
        let (logits_p, _g0) = logits.device_ptr(stream)?;
        let (grad_p, _g1) = grad_logits.device_ptr_mut(stream)?;
        self.backward_on::<T, I>(
            stream,
            logits_p,
            grad_p,
            grad_stride,
            layout,
            targets,
            stats,
            grad_logp,
            cfg,
            None,
        )
    }

    /// Backward written in place over the logits (which are consumed: they hold d/dlogits after).
    #[allow(clippy::too_many_arguments)]
    pub fn token_logprobs_backward_inplace<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        logits: &mut impl DevicePtrMut<T>,
        layout: LogitsLayout,
        targets: &impl DevicePtr<I>,
        stats: &impl DevicePtr<f32>,
        grad_logp: &impl DevicePtr<f32>,
        cfg: &TokenLogprobsConfig,
    ) -> Result<()> {
        validate(&layout, cfg, logits.len(), targets.len())?;
        let (logits_p, _g0) = logits.device_ptr_mut(stream)?;
        self.backward_on::<T, I>(
            stream,
            logits_p,
            logits_p,
            layout.row_stride,
            layout,
            targets,
            stats,
            grad_logp,
            cfg,
            None,
        )
    }

    /// Backward with an entropy gradient as well: d/dlogits of `Σ grad_logp·logp +
    /// Σ grad_entropy·H` in the same single pass, `entropy` being the forward's output (so the
    /// forward ran with `compute_entropy`). RL trainers need it for an entropy bonus:
    /// dH/dx_v = −p_v (log p_v + H) / T. `grad` says where d/dlogits goes (in place over the
    /// logits, or a separate buffer).
    #[allow(clippy::too_many_arguments)]
    pub fn token_logprobs_backward_with_entropy<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        logits: &mut ViewMut<'_, T>,
        layout: LogitsLayout,
        targets: &impl DevicePtr<I>,
        stats: &impl DevicePtr<f32>,
        grad_logp: &impl DevicePtr<f32>,
        entropy: EntropyGrad<'_, '_>,
        grad: GradLogits<'_, T>,
        cfg: &TokenLogprobsConfig,
    ) -> Result<()> {
        validate(&layout, cfg, logits.len(), targets.len())?;
        let mut grad = grad;
        let (grad_sep, grad_stride) = grad.pointer(stream, layout)?;
        let (logits_p, _g0) = logits.device_ptr_mut(stream)?;
        let grad_p = grad_sep.as_ref().map_or(logits_p, |(p, _)| *p);
        self.backward_on::<T, I>(
            stream,
            logits_p,
            grad_p,
            grad_stride,
            layout,
            targets,
            stats,
            grad_logp,
            cfg,
            Some(entropy),
        )
    }

    /// The safe backward once the logits and gradient pointers are held (their guards live in
    /// the caller): checks the per-row inputs, launches, reads the status.
    #[allow(clippy::too_many_arguments)]
    fn backward_on<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        logits_p: u64,
        grad_p: u64,
        grad_stride: usize,
        layout: LogitsLayout,
        targets: &impl DevicePtr<I>,
        stats: &impl DevicePtr<f32>,
        grad_logp: &impl DevicePtr<f32>,
        cfg: &TokenLogprobsConfig,
        entropy: Option<EntropyGrad<'_, '_>>,
    ) -> Result<()> {
        ensure_len("stats", stats.len(), stats_len(layout.n_rows)?)?;
        ensure_len("grad_logp", grad_logp.len(), layout.n_rows)?;
        if let Some(e) = &entropy {
            ensure_len("entropy", e.entropy.len(), layout.n_rows)?;
            ensure_len("grad_entropy", e.grad_entropy.len(), layout.n_rows)?;
        }
        let mut status = StatusWord::new(stream, cfg.check_targets)?;
        {
            let (targets_p, _g1) = targets.device_ptr(stream)?;
            let (stats_p, _g2) = stats.device_ptr(stream)?;
            let (grad_logp_p, _g3) = grad_logp.device_ptr(stream)?;
            let (status_p, _g5) = status.ptr(stream)?;
            let mut guards = Vec::new();
            let (mut entropy_p, mut grad_entropy_p) = (0, 0);
            if let Some(e) = &entropy {
                let (p, g) = e.entropy.device_ptr(stream)?;
                guards.push(g);
                let (q, h) = e.grad_entropy.device_ptr(stream)?;
                guards.push(h);
                (entropy_p, grad_entropy_p) = (p, q);
            }
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
            // SAFETY: pointers from live cudarc buffers of checked lengths (see the forward); the
            // logits and gradient guards are held by the caller across this call.
            unsafe {
                self.token_logprobs_backward_raw(
                    stream.raw(),
                    T::DTYPE,
                    I::INDEX_TYPE,
                    layout,
                    grad_stride,
                    &ptrs,
                    cfg,
                )
            }?;
        }
        check_status(status.read(stream)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_forward_arguments_are_checked_before_launch() {
        let cfg = TokenLogprobsConfig::default();
        let layout = LogitsLayout::contiguous(4, 10);
        let good = TokenLogprobsFwdPtrs {
            logits: 0x1000,
            targets: 0x2000,
            logp: 0x3000,
            lse: 0x4000,
            entropy: 0,
            status: 0,
            stats: 0x6000,
            log_sum_sq: 0,
            mean_logits: 0,
            is_top1: 0,
        };
        let check = |p: TokenLogprobsFwdPtrs, l: LogitsLayout, c: TokenLogprobsConfig| {
            validate_forward_ptrs(DType::BF16, IndexType::I64, l, &p, &c).map_err(|e| e.to_string())
        };
        assert!(check(good, layout, cfg).is_ok());
        assert!(check(TokenLogprobsFwdPtrs { logits: 0, ..good }, layout, cfg)
            .unwrap_err()
            .contains("`logits`: null"));
        assert!(check(TokenLogprobsFwdPtrs { logits: 0x1001, ..good }, layout, cfg)
            .unwrap_err()
            .contains("aligned to 2"));
        assert!(check(TokenLogprobsFwdPtrs { targets: 0x2004, ..good }, layout, cfg)
            .unwrap_err()
            .contains("aligned to 8"));
        assert!(check(TokenLogprobsFwdPtrs { lse: 0x4002, ..good }, layout, cfg)
            .unwrap_err()
            .contains("`lse`"));
        assert!(check(TokenLogprobsFwdPtrs { stats: 0x6002, ..good }, layout, cfg)
            .unwrap_err()
            .contains("`stats`"));
        assert!(check(TokenLogprobsFwdPtrs { stats: 0, ..good }, layout, cfg).is_ok());
        assert!(check(TokenLogprobsFwdPtrs { entropy: 0x5000, ..good }, layout, cfg)
            .unwrap_err()
            .contains("entropy"));
        let with_entropy = TokenLogprobsConfig { compute_entropy: true, ..cfg };
        assert!(check(good, layout, with_entropy).unwrap_err().contains("entropy"));
        assert!(check(good, LogitsLayout { row_stride: 9, ..layout }, cfg)
            .unwrap_err()
            .contains("row_stride"));
        assert!(check(good, layout, TokenLogprobsConfig { temperature: f32::NAN, ..cfg })
            .unwrap_err()
            .contains("temperature"));
    }

    #[test]
    fn row_group_size_depends_on_the_vocabulary_only() {
        assert!(registry::spec(&registry::token_logprobs_fwd(
            DType::BF16,
            IndexType::I64,
            FwdMode::Full,
            256
        ))
        .is_some());
        assert_eq!(registry::row_threads(1024), 32);
        assert_eq!(registry::row_threads(1025), 256);
    }
}
