//! GPU launch of the group / listwise losses: statistics (`seq_stats`), the group kernel
//! (`kernels/group_loss.cu`, one block) and the per-token gradient (`token_grad`).
use super::{GroupLoss, KtoKl, GROUP_METRICS_LEN};
use crate::error::{ensure, Result};
use crate::params::GroupLossParams;
use crate::runtime::args::{check_ptr, check_span};
use crate::runtime::mem::{
    optional_ptr, read_metrics, DeviceBuffer, DevicePtr, DevicePtrMut, Guard, Stream, View, ViewMut,
};
use crate::runtime::status::{check_status, StatusWord};
use crate::runtime::Gpu;
use crate::seq_reduce::{
    DeviceSeqLayout, DeviceSeqs, DeviceTokens, ReduceMode, SeqReducePtrs, SEQ_STATS_LEN,
};

/// Output and workspace pointers of [`Gpu::group_loss_raw`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GroupLossPtrs {
    /// `[S]` f32 per-sequence reference sums, or 0 (then `tokens.ref_logp` for KTO / LiPO).
    pub ref_seq: u64,
    /// `[S]` f32 labels: KTO roles ([`super::KtoRole`] as f32), LiPO ψ, PRO rewards (required).
    pub labels: u64,
    /// Output `[S]` f32 per-sequence values, or 0.
    pub seq_out: u64,
    /// Output `[GROUP_METRICS_LEN]` f32 (required).
    pub metrics: u64,
    /// Output `[n_tokens]` f32 dL/dlogp (required when there are tokens).
    pub grad_logp: u64,
    /// Workspace of [`group_loss_workspace_len`] f32 (required).
    pub workspace: u64,
    /// u32 status word, or 0.
    pub status: u64,
}

/// f32 elements of workspace [`Gpu::group_loss_raw`] needs: statistics, token coefficients and
/// two scratch values per sequence.
pub fn group_loss_workspace_len(n_seqs: usize) -> usize {
    n_seqs.saturating_mul(SEQ_STATS_LEN + 5)
}

/// Results of the safe API (read back to the host).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupLossOutputs {
    /// Batch loss.
    pub loss: f32,
    /// Metrics, named by [`super::metric_names`].
    pub metrics: [f32; GROUP_METRICS_LEN],
    /// Per-sequence values (KTO / LiPO rewards, PRO scores).
    pub seq_values: Vec<f32>,
}

fn kernel_params(loss: &GroupLoss) -> (u32, u32, f32, f32, f32, f32) {
    match *loss {
        GroupLoss::Kto { beta, desirable_weight, undesirable_weight, kl, apo_zero_unpaired } => {
            let (given, z) = match kl {
                KtoKl::Given(z) => (1, z),
                KtoKl::FromSamples => (0, 0.0),
            };
            (0, given | (u32::from(apo_zero_unpaired) << 1), beta, desirable_weight, undesirable_weight, z)
        }
        GroupLoss::Lipo { beta, lambda_weights, .. } => {
            (1, u32::from(lambda_weights) << 2, beta, 0.0, 0.0, 0.0)
        }
        GroupLoss::Pro { sft_weight, .. } => (2, 0, 0.0, sft_weight, 0.0, 0.0),
    }
}

impl Gpu {
    /// A group / listwise loss on raw device pointers: three launches on `stream` (statistics,
    /// the group kernel, the token gradient), no synchronization. Writes `metrics`, `seq_out`
    /// (if non-zero) and `grad_logp` (0 on masked tokens, KTO KL samples and ignored sequences).
    ///
    /// Errors before launch: invalid hyperparameters, list sizes that do not divide S or exceed
    /// [`super::MAX_LIST`], a missing reference (KTO, LiPO), null or misaligned pointers. The
    /// labels are on the device and used as given (the safe API validates them): unknown KTO
    /// roles count as ignored, PRO rewards must be in ranking order.
    ///
    /// # Safety
    /// Non-zero pointers are device memory of this context: per-token arrays of `n_tokens`
    /// elements, `cu_seqlens` of `S + 1` i32, `labels`, `ref_seq`, `seq_out` of S f32, `metrics` of
    /// [`GROUP_METRICS_LEN`] f32, a workspace of [`group_loss_workspace_len`]`(S)` f32; all alive
    /// and not concurrently written until the work completes in stream order. `stream` is 0 or a
    /// live CUstream of this context.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn group_loss_raw(
        &self,
        stream: u64,
        tokens: &SeqReducePtrs,
        n_tokens: usize,
        layout: DeviceSeqLayout,
        loss: &GroupLoss,
        grad_scale: f32,
        ptrs: &GroupLossPtrs,
    ) -> Result<()> {
        tokens.validate(n_tokens)?;
        layout.validate(n_tokens)?;
        let n_seqs = layout.n_seqs();
        loss.validate_config(n_seqs)?;
        ensure(grad_scale.is_finite(), "grad_scale", || format!("must be finite, got {grad_scale}"))?;
        if loss.needs_reference() {
            ensure((tokens.ref_logp != 0) != (ptrs.ref_seq != 0), "ref_logp", || {
                "give reference log-probs per token or per sequence (exactly one)".into()
            })?;
        }
        for (name, p, required) in [
            ("ref_seq", ptrs.ref_seq, false),
            ("labels", ptrs.labels, true),
            ("seq_out", ptrs.seq_out, false),
            ("metrics", ptrs.metrics, true),
            ("grad_logp", ptrs.grad_logp, n_tokens > 0),
            ("workspace", ptrs.workspace, true),
            ("status", ptrs.status, false),
        ] {
            check_ptr(name, p, 4, required)?;
        }
        check_span("workspace", ptrs.workspace, group_loss_workspace_len(n_seqs), 4)?;
        let stats = ptrs.workspace;
        let seq_coef = stats + (n_seqs * SEQ_STATS_LEN * 4) as u64;
        let scratch = seq_coef + (n_seqs * 3 * 4) as u64;
        // SAFETY (all three launches): forwarded to the caller (see # Safety).
        unsafe {
            self.launch_seq_stats(
                stream,
                tokens,
                n_tokens,
                layout,
                ReduceMode::Sum,
                f32::NEG_INFINITY,
                stats,
                0,
                ptrs.status,
            )?
        };
        let (kind, flags, beta, p0, p1, kl_given) = kernel_params(loss);
        let params = GroupLossParams {
            stats,
            ref_seq: ptrs.ref_seq,
            labels: ptrs.labels,
            seq_coef,
            seq_out: ptrs.seq_out,
            scratch,
            metrics: ptrs.metrics,
            n_seqs: n_seqs as i64,
            group_size: loss.group_size() as i64,
            kind,
            flags,
            beta,
            p0,
            p1,
            kl_given,
            grad_scale,
            reserved: 0,
        };
        // One block for the batch: fixed-order metrics.
        // SAFETY: as above; params is the kernel's GroupLossParams (layout asserted in params.rs).
        unsafe { self.launch(stream, "group_loss", (1, 1), &params) }?;
        let tokens = SeqReducePtrs { weights: 0, ..*tokens };
        // SAFETY: as above.
        unsafe {
            self.launch_coef_grad(
                stream,
                &tokens,
                n_tokens,
                layout,
                seq_coef,
                stats,
                f32::NEG_INFINITY,
                ptrs.grad_logp,
            )
        }
    }

    /// A group / listwise loss on device buffers with host labels (validated, then uploaded):
    /// writes `grad_logp` (`[T]` f32) and returns the loss, metrics and per-sequence values (one
    /// synchronization of `stream`).
    #[allow(clippy::too_many_arguments)]
    pub fn group_loss(
        &self,
        stream: &Stream,
        tokens: &DeviceTokens<'_>,
        seqs: &DeviceSeqs<'_>,
        ref_seq: Option<&View<'_, f32>>,
        labels: &[f32],
        loss: &GroupLoss,
        grad_scale: f32,
        grad_logp: &mut ViewMut<'_, f32>,
    ) -> Result<GroupLossOutputs> {
        let n_seqs = seqs.n_seqs();
        loss.validate(n_seqs, labels)?;
        crate::error::ensure_len("grad_logp", grad_logp.len(), tokens.logp.len())?;
        if let Some(r) = ref_seq {
            crate::error::ensure_len("ref_seq", r.len(), n_seqs)?;
        }
        let labels_d = stream.clone_htod(labels)?;
        let mut work = stream.alloc_zeros::<f32>(group_loss_workspace_len(n_seqs).max(1))?;
        let mut metrics = stream.alloc_zeros::<f32>(GROUP_METRICS_LEN)?;
        let mut seq_out = stream.alloc_zeros::<f32>(n_seqs.max(1))?;
        let mut status = StatusWord::new(stream, true)?;
        {
            let mut guards: Vec<Guard<'_>> = Vec::new();
            let tp = tokens.ptrs(stream, &mut guards)?;
            let layout = seqs.raw(stream, &mut guards)?;
            let rs = optional_ptr(stream, ref_seq, &mut guards)?;
            let (lp, _g0) = labels_d.device_ptr(stream)?;
            let (wp, _g1) = work.device_ptr_mut(stream)?;
            let (mp, _g2) = metrics.device_ptr_mut(stream)?;
            let (op, _g3) = seq_out.device_ptr_mut(stream)?;
            let (gp, _g4) = grad_logp.device_ptr_mut(stream)?;
            let (sp, _g5) = status.ptr(stream)?;
            let ptrs = GroupLossPtrs {
                ref_seq: rs,
                labels: lp,
                seq_out: op,
                metrics: mp,
                grad_logp: gp,
                workspace: wp,
                status: sp,
            };
            // SAFETY: every pointer comes from a live buffer of checked length on this stream.
            unsafe {
                self.group_loss_raw(stream.raw(), &tp, tokens.logp.len(), layout, loss, grad_scale, &ptrs)
            }?;
        }
        check_status(status.read(stream)?)?;
        GroupLossOutputs::read(stream, &metrics, &seq_out, n_seqs)
    }
}

impl GroupLossOutputs {
    /// Reads the outputs of a raw launch ([`Gpu::group_loss_raw`]) back to the host: `metrics`
    /// ([`GROUP_METRICS_LEN`] f32) and the first `n_seqs` values of `seq_out`. Synchronizes
    /// `stream`.
    pub fn read(
        stream: &Stream,
        metrics: &DeviceBuffer<f32>,
        seq_out: &DeviceBuffer<f32>,
        n_seqs: usize,
    ) -> Result<Self> {
        ensure(seq_out.len() >= n_seqs, "seq_out", || format!("needs {n_seqs} f32, got {}", seq_out.len()))?;
        let metrics: [f32; GROUP_METRICS_LEN] = read_metrics(stream, "metrics", metrics)?;
        let mut seq_values = stream.clone_dtoh(seq_out)?;
        seq_values.truncate(n_seqs);
        Ok(Self { loss: metrics[0], metrics, seq_values })
    }
}
