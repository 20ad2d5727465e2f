//! GPU launch of the per-sequence reductions (`kernels/seq_reduce.cu`): raw-pointer entry points and
//! safe wrappers. The statistics and token-gradient kernels are shared with the preference losses.
use crate::runtime::mem::{optional_ptr_of_len, DevicePtr, DevicePtrMut, Guard, Stream, View, ViewMut};

use super::{ReduceMode, SEQ_STATS_LEN};
use crate::error::{ensure, Result};
use crate::params::{SeqStatsParams, TokenGradParams};
use crate::runtime::args::check_ptr;
use crate::runtime::status::{check_status, StatusWord};
use crate::runtime::Gpu;

use crate::runtime::registry::SEQ_THREADS;

/// Device pointers of the per-token inputs (0 = absent, except `logp`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SeqReducePtrs {
    /// `[n_tokens]` f32 policy log-probs.
    pub logp: u64,
    /// `[n_tokens]` u8 loss mask, or 0 (every token counts).
    pub mask: u64,
    /// `[n_tokens]` f32 token weights, or 0 (1).
    pub weights: u64,
    /// `[n_tokens]` f32 reference log-probs, or 0.
    pub ref_logp: u64,
}

/// Sequences on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSeqLayout {
    /// `cu_seqlens`: device pointer to `n_seqs + 1` i32 offsets (checked on the device).
    Packed {
        /// Device pointer.
        cu_seqlens: u64,
        /// Number of sequences S.
        n_seqs: usize,
    },
    /// Padded `[n_seqs, seq_len]`.
    Padded {
        /// B.
        n_seqs: usize,
        /// L.
        seq_len: usize,
    },
}

impl DeviceSeqLayout {
    /// Number of sequences.
    pub fn n_seqs(&self) -> usize {
        match *self {
            DeviceSeqLayout::Packed { n_seqs, .. } | DeviceSeqLayout::Padded { n_seqs, .. } => n_seqs,
        }
    }
    fn parts(&self) -> (u64, i64) {
        match *self {
            DeviceSeqLayout::Packed { cu_seqlens, .. } => (cu_seqlens, 0),
            DeviceSeqLayout::Padded { seq_len, .. } => (0, seq_len as i64),
        }
    }
    pub(crate) fn validate(&self, n_tokens: usize) -> Result<()> {
        match *self {
            DeviceSeqLayout::Packed { cu_seqlens, n_seqs } => {
                check_ptr("cu_seqlens", cu_seqlens, 4, true)?;
                ensure(n_seqs <= i32::MAX as usize, "n_seqs", || {
                    format!("must be <= {}, got {n_seqs}", i32::MAX)
                })
            }
            DeviceSeqLayout::Padded { n_seqs, seq_len } => {
                let total = n_seqs.checked_mul(seq_len);
                ensure(total.is_some_and(|t| t <= n_tokens), "seq_len", || {
                    format!("n_seqs * seq_len ({n_seqs} * {seq_len}) exceeds n_tokens ({n_tokens})")
                })
            }
        }
    }
}

/// Device pointers of a per-token gradient broadcast (raw API).
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenGradPtrs {
    /// `[n_seqs]` f32 upstream gradient of the scores.
    pub dscores: u64,
    /// `[n_seqs, SEQ_STATS_LEN]` f32 statistics from [`Gpu::seq_reduce_raw`].
    pub stats: u64,
    /// Output `[n_tokens]` f32.
    pub grad_logp: u64,
}

impl SeqReducePtrs {
    /// Checks the pointers' presence and alignment for `n_tokens` tokens (their validity only the
    /// caller can vouch for) and that the count fits the kernels' 64-bit indexing.
    pub fn validate(&self, n_tokens: usize) -> Result<()> {
        check_ptr("logp", self.logp, 4, n_tokens > 0)?;
        check_ptr("mask", self.mask, 1, false)?;
        check_ptr("weights", self.weights, 4, false)?;
        check_ptr("ref_logp", self.ref_logp, 4, false)?;
        ensure(n_tokens <= i64::MAX as usize / 8, "n_tokens", || format!("too large: {n_tokens}"))
    }
}

impl Gpu {
    /// Launches the statistics kernel: `stats` (`[S, SEQ_STATS_LEN]` f32, or 0) and/or `scores`
    /// (`[S]` f32 under `mode`, or 0). `log_tau` is TAB-PO's gate (`-inf` for none).
    ///
    /// # Safety
    /// All non-zero pointers are device memory of this context sized as documented (`n_tokens`
    /// per-token elements, `S + 1` offsets), alive until the work completes in stream order;
    /// `stream` is 0 or a live CUstream of this context.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn launch_seq_stats(
        &self,
        stream: u64,
        tokens: &SeqReducePtrs,
        n_tokens: usize,
        layout: DeviceSeqLayout,
        mode: ReduceMode,
        log_tau: f32,
        stats: u64,
        scores: u64,
        status: u64,
    ) -> Result<()> {
        let n_seqs = layout.n_seqs();
        if n_seqs == 0 {
            return Ok(());
        }
        let (cu, seq_len) = layout.parts();
        let params = SeqStatsParams {
            logp: tokens.logp,
            mask: tokens.mask,
            weights: tokens.weights,
            ref_logp: tokens.ref_logp,
            cu_seqlens: cu,
            stats,
            scores,
            status,
            n_tokens: n_tokens as i64,
            n_seqs: n_seqs as i64,
            seq_len,
            log_tau,
            mode: mode as u32,
        };
        let grid = self.grid_for(n_seqs as u64, 1);
        // SAFETY: forwarded to the caller; params is the kernel's SeqStatsParams (layout asserted
        // in params.rs).
        unsafe { self.launch(stream, "seq_stats", grid, &params) }
    }

    /// Launches the token-gradient kernel with `params` (grid over tokens).
    ///
    /// # Safety
    /// As [`Gpu::launch_seq_stats`] for every pointer in `params`.
    /// Launches the token gradient that broadcasts per-sequence coefficients `seq_coef`
    /// (`[S, 3]` f32: dL/dlogp_t = m_t (c0 + c1 w_t + c2 gate_t w_t)) to the tokens, the loss
    /// kernels' last stage.
    ///
    /// # Safety
    /// As [`Gpu::launch_token_grad`]: `tokens` and `layout` as validated by the caller, `seq_coef`
    /// and `stats` (`[S, SEQ_STATS_LEN]`) written earlier on `stream`, `grad_logp` of `n_tokens` f32.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn launch_coef_grad(
        &self,
        stream: u64,
        tokens: &SeqReducePtrs,
        n_tokens: usize,
        layout: DeviceSeqLayout,
        seq_coef: u64,
        stats: u64,
        log_tau: f32,
        grad_logp: u64,
    ) -> Result<()> {
        let (cu_seqlens, seq_len) = layout.parts();
        let params = TokenGradParams {
            logp: tokens.logp,
            mask: tokens.mask,
            weights: tokens.weights,
            cu_seqlens,
            seq_coef,
            dscores: 0,
            stats,
            grad_logp,
            n_tokens: n_tokens as i64,
            n_seqs: layout.n_seqs() as i64,
            seq_len,
            log_tau,
            mode: 0,
            scale: 1.0,
            reserved: 0,
        };
        // SAFETY: forwarded to the caller.
        unsafe { self.launch_token_grad(stream, &params) }
    }

    pub(crate) unsafe fn launch_token_grad(&self, stream: u64, params: &TokenGradParams) -> Result<()> {
        if params.n_tokens == 0 {
            return Ok(());
        }
        let grid = self.grid_for(params.n_tokens as u64, SEQ_THREADS as u64);
        // SAFETY: forwarded to the caller; params is the kernel's TokenGradParams (layout asserted
        // in params.rs).
        unsafe { self.launch(stream, "token_grad", grid, params) }
    }

    /// Per-sequence reduction on raw device pointers: writes `scores` (`[S]` f32 under `mode`,
    /// or 0) and `stats` (`[S, SEQ_STATS_LEN]` f32, or 0; needed by the raw backward for `Mean`
    /// and `WeightedMean`). Bad `cu_seqlens` (decreasing, negative, beyond `n_tokens`) are
    /// reported with `STATUS_BAD_SEQLENS` in `status` (if non-zero) and those sequences read as
    /// empty. Never synchronizes.
    ///
    /// # Safety
    /// Non-zero pointers are device memory of this context: per-token arrays of `n_tokens`
    /// elements (f32, mask u8), `cu_seqlens` of `S + 1` i32, outputs as above, a u32 `status`;
    /// alive and not concurrently written until the work completes in stream order; `stream` is 0
    /// or a live CUstream of this context.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn seq_reduce_raw(
        &self,
        stream: u64,
        tokens: &SeqReducePtrs,
        n_tokens: usize,
        layout: DeviceSeqLayout,
        mode: ReduceMode,
        scores: u64,
        stats: u64,
        status: u64,
    ) -> Result<()> {
        tokens.validate(n_tokens)?;
        layout.validate(n_tokens)?;
        check_ptr("scores", scores, 4, false)?;
        check_ptr("stats", stats, 4, false)?;
        check_ptr("status", status, 4, false)?;
        ensure(scores != 0 || stats != 0, "scores", || "give scores, stats or both".into())?;
        ensure(!mode.uses_weights() || tokens.weights != 0, "weights", || {
            format!("{mode:?} needs token weights")
        })?;
        // SAFETY: forwarded to the caller.
        unsafe {
            self.launch_seq_stats(
                stream,
                tokens,
                n_tokens,
                layout,
                mode,
                f32::NEG_INFINITY,
                stats,
                scores,
                status,
            )
        }
    }

    /// Backward of the reduction on raw pointers: `grad_logp[t] = dscores[s] * d score_s / d logp_t`
    /// (0 on masked tokens and tokens in no sequence). `ptrs.stats` must come from
    /// [`Gpu::seq_reduce_raw`] on the same inputs. Never synchronizes.
    ///
    /// # Safety
    /// As [`Gpu::seq_reduce_raw`]; `dscores` holds S f32, `grad_logp` `n_tokens` f32.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn seq_reduce_backward_raw(
        &self,
        stream: u64,
        tokens: &SeqReducePtrs,
        n_tokens: usize,
        layout: DeviceSeqLayout,
        mode: ReduceMode,
        ptrs: &TokenGradPtrs,
    ) -> Result<()> {
        tokens.validate(n_tokens)?;
        layout.validate(n_tokens)?;
        check_ptr("dscores", ptrs.dscores, 4, layout.n_seqs() > 0)?;
        check_ptr("stats", ptrs.stats, 4, layout.n_seqs() > 0)?;
        check_ptr("grad_logp", ptrs.grad_logp, 4, n_tokens > 0)?;
        ensure(!mode.uses_weights() || tokens.weights != 0, "weights", || {
            format!("{mode:?} needs token weights")
        })?;
        let (cu, seq_len) = layout.parts();
        let params = TokenGradParams {
            logp: tokens.logp,
            mask: tokens.mask,
            weights: tokens.weights,
            cu_seqlens: cu,
            seq_coef: 0,
            dscores: ptrs.dscores,
            stats: ptrs.stats,
            grad_logp: ptrs.grad_logp,
            n_tokens: n_tokens as i64,
            n_seqs: layout.n_seqs() as i64,
            seq_len,
            log_tau: f32::NEG_INFINITY,
            mode: mode as u32,
            scale: 1.0,
            reserved: 0,
        };
        // SAFETY: forwarded to the caller.
        unsafe { self.launch_token_grad(stream, &params) }
    }

    /// Per-sequence scores (`[S]` f32 under `mode`) on cudarc buffers. Synchronizes `stream` once
    /// to check the device status (bad `cu_seqlens` → [`crate::Error::DeviceCheck`]).
    pub fn seq_reduce(
        &self,
        stream: &Stream,
        tokens: &DeviceTokens<'_>,
        seqs: &DeviceSeqs<'_>,
        mode: ReduceMode,
        scores: &mut ViewMut<'_, f32>,
    ) -> Result<()> {
        let n_seqs = seqs.n_seqs();
        crate::error::ensure_len("scores", scores.len(), n_seqs)?;
        let mut status = StatusWord::new(stream, true)?;
        {
            let mut guards = Vec::new();
            let ptrs = tokens.ptrs(stream, &mut guards)?;
            let layout = seqs.raw(stream, &mut guards)?;
            let (sp, _g) = scores.device_ptr_mut(stream)?;
            let (st, _gs) = status.ptr(stream)?;
            // SAFETY: pointers from live cudarc buffers whose lengths were checked.
            unsafe { self.seq_reduce_raw(stream.raw(), &ptrs, tokens.logp.len(), layout, mode, sp, 0, st) }?;
        }
        check_status(status.read(stream)?)
    }

    /// Backward of [`Gpu::seq_reduce`]: `grad_logp` (`[T]` f32) from `dscores` (`[S]` f32).
    /// Recomputes the statistics it needs (one small kernel); synchronizes once for the status.
    pub fn seq_reduce_backward(
        &self,
        stream: &Stream,
        tokens: &DeviceTokens<'_>,
        seqs: &DeviceSeqs<'_>,
        mode: ReduceMode,
        dscores: &View<'_, f32>,
        grad_logp: &mut ViewMut<'_, f32>,
    ) -> Result<()> {
        let n_seqs = seqs.n_seqs();
        crate::error::ensure_len("dscores", dscores.len(), n_seqs)?;
        crate::error::ensure_len("grad_logp", grad_logp.len(), tokens.logp.len())?;
        let mut stats = stream.alloc_zeros::<f32>(n_seqs.max(1) * SEQ_STATS_LEN)?;
        let mut status = StatusWord::new(stream, true)?;
        {
            let mut guards = Vec::new();
            let ptrs = tokens.ptrs(stream, &mut guards)?;
            let layout = seqs.raw(stream, &mut guards)?;
            let (stp, _g0) = stats.device_ptr_mut(stream)?;
            let (dp, _g1) = dscores.device_ptr(stream)?;
            let (gp, _g2) = grad_logp.device_ptr_mut(stream)?;
            let (st, _g3) = status.ptr(stream)?;
            let n = tokens.logp.len();
            // SAFETY: pointers from live cudarc buffers whose lengths were checked.
            unsafe {
                self.seq_reduce_raw(stream.raw(), &ptrs, n, layout, mode, 0, stp, st)?;
                self.seq_reduce_backward_raw(
                    stream.raw(),
                    &ptrs,
                    n,
                    layout,
                    mode,
                    &TokenGradPtrs { dscores: dp, stats: stp, grad_logp: gp },
                )?;
            }
        }
        check_status(status.read(stream)?)
    }
}

/// Per-token inputs on the device (safe API). Every given array has `logp.len()` elements.
pub struct DeviceTokens<'a> {
    /// Policy log-probs.
    pub logp: View<'a, f32>,
    /// Loss mask (u8, 0 = ignored); `None` = every token counts.
    pub mask: Option<View<'a, u8>>,
    /// Token weights; `None` = 1.
    pub weights: Option<View<'a, f32>>,
    /// Per-token reference log-probs; `None` = not given.
    pub ref_logp: Option<View<'a, f32>>,
}

impl DeviceTokens<'_> {
    pub(crate) fn ptrs<'s>(
        &'s self,
        stream: &'s Stream,
        guards: &mut Vec<Guard<'s>>,
    ) -> Result<SeqReducePtrs> {
        let (logp, g) = self.logp.device_ptr(stream)?;
        guards.push(g);
        let n = self.logp.len();
        let mask = optional_ptr_of_len(stream, "mask", self.mask.as_ref(), n, guards)?;
        let weights = optional_ptr_of_len(stream, "weights", self.weights.as_ref(), n, guards)?;
        let ref_logp = optional_ptr_of_len(stream, "ref_logp", self.ref_logp.as_ref(), n, guards)?;
        Ok(SeqReducePtrs { logp, mask, weights, ref_logp })
    }
}

/// Sequences on the device (safe API).
pub enum DeviceSeqs<'a> {
    /// Packed: `S + 1` offsets.
    Packed {
        /// The offsets.
        cu_seqlens: View<'a, i32>,
    },
    /// Padded `[n_seqs, seq_len]`.
    Padded {
        /// B.
        n_seqs: usize,
        /// L.
        seq_len: usize,
    },
}

impl DeviceSeqs<'_> {
    /// Number of sequences.
    pub fn n_seqs(&self) -> usize {
        match self {
            DeviceSeqs::Packed { cu_seqlens } => cu_seqlens.len().saturating_sub(1),
            DeviceSeqs::Padded { n_seqs, .. } => *n_seqs,
        }
    }
    pub(crate) fn raw<'s>(
        &'s self,
        stream: &'s Stream,
        guards: &mut Vec<Guard<'s>>,
    ) -> Result<DeviceSeqLayout> {
        match self {
            DeviceSeqs::Packed { cu_seqlens } => {
                let (p, g) = cu_seqlens.device_ptr(stream)?;
                guards.push(g);
                Ok(DeviceSeqLayout::Packed { cu_seqlens: p, n_seqs: self.n_seqs() })
            }
            DeviceSeqs::Padded { n_seqs, seq_len } => {
                Ok(DeviceSeqLayout::Padded { n_seqs: *n_seqs, seq_len: *seq_len })
            }
        }
    }
}
