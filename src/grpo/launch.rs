//! GPU launch of the GRPO family (`kernels/grpo.cu`): up to four small launches that read only
//! per-token f32 data.
use super::reference::need_inputs;
use super::{GrpoConfig, ImportanceLevel, GRPO_METRICS_LEN};
use crate::error::{ensure, Result};
use crate::params::{GrpoParams, GRPO_SEQ_FIELDS};
use crate::runtime::args::{check_ptr, check_span};
use crate::runtime::mem::{
    optional_ptr, read_metrics, DeviceBuffer, DevicePtrMut, Guard, Stream, View, ViewMut,
};
use crate::runtime::registry::GRPO_THREADS;
use crate::runtime::status::{check_status, StatusWord};
use crate::runtime::Gpu;
use crate::seq_reduce::{DeviceSeqLayout, DeviceSeqs};

/// Device pointers of [`Gpu::grpo_loss_raw`]: per-token arrays of `n_tokens` f32 (mask: u8),
/// 0 where not given.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpoPtrs {
    /// Policy log-probs (required).
    pub logp: u64,
    /// Rollout log-probs, or 0 (on-policy).
    pub old_logp: u64,
    /// Inference-engine log-probs for the off-policy mask, or 0 (`old_logp`).
    pub sampling_logp: u64,
    /// Reference log-probs, or 0 (β = 0).
    pub ref_logp: u64,
    /// Completion mask (u8), or 0.
    pub mask: u64,
    /// vLLM importance-sampling weights, or 0.
    pub is_weights: u64,
    /// Entropies, or 0 (required by the entropy bonus and mask).
    pub entropy: u64,
    /// `[S]` f32 advantages (required).
    pub advantages: u64,
    /// Output `[GRPO_METRICS_LEN]` f32 (required).
    pub metrics: u64,
    /// Output dL/dlogp (required when there are tokens).
    pub grad_logp: u64,
    /// Output dL/dH, or 0.
    pub grad_entropy: u64,
    /// Workspace of [`grpo_workspace_len`] f32 (required).
    pub workspace: u64,
    /// u32 status word, or 0.
    pub status: u64,
}

/// f32 elements of workspace [`Gpu::grpo_loss_raw`] needs: one row per sequence and the
/// entropy threshold.
pub fn grpo_workspace_len(n_seqs: usize) -> usize {
    n_seqs.saturating_mul(GRPO_SEQ_FIELDS).saturating_add(4)
}

/// The whole batch's counts, for a GRPO loss computed chunk by chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GrpoBatchCounts {
    /// Sequences in the batch.
    pub(crate) seqs: usize,
    /// Counted tokens in the batch (at least 1: an empty batch divides by 1, as the kernel does).
    pub(crate) tokens: usize,
}

/// Per-token and per-sequence inputs of the safe API.
pub struct DeviceGrpoInputs<'a> {
    /// Policy log-probs.
    pub logp: View<'a, f32>,
    /// Rollout log-probs; `None` = on-policy.
    pub old_logp: Option<View<'a, f32>>,
    /// Inference-engine log-probs for the off-policy mask (`None` = `old_logp`).
    pub sampling_logp: Option<View<'a, f32>>,
    /// Reference log-probs (β > 0).
    pub ref_logp: Option<View<'a, f32>>,
    /// Completion mask.
    pub mask: Option<View<'a, u8>>,
    /// vLLM importance-sampling weights.
    pub is_weights: Option<View<'a, f32>>,
    /// Entropies.
    pub entropy: Option<View<'a, f32>>,
    /// `[S]` advantages (e.g. from [`super::group_advantages`]).
    pub advantages: View<'a, f32>,
}

/// Results of the safe API.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpoOutputs {
    /// Batch loss.
    pub loss: f32,
    /// Metrics, indexed as [`super::GRPO_METRIC_NAMES`].
    pub metrics: [f32; GRPO_METRICS_LEN],
}

impl GrpoOutputs {
    /// A metric by its TRL name.
    pub fn metric(&self, name: &str) -> Option<f32> {
        super::GRPO_METRIC_NAMES.iter().position(|n| *n == name).map(|i| self.metrics[i])
    }
}

impl Gpu {
    /// The GRPO-family loss on raw device pointers: up to four launches on `stream` (entropy
    /// threshold when the top-entropy mask is on, per-sequence sums, batch, token gradient), no
    /// synchronization. Writes `metrics`, `grad_logp` and `grad_entropy` (if non-zero).
    ///
    /// Errors before launch: invalid configuration, a missing reference (β > 0) or entropy
    /// (bonus or mask), null or misaligned pointers, no sequences. Advantages are used as given.
    ///
    /// # Safety
    /// Non-zero pointers are device memory of this context: per-token arrays of `n_tokens`
    /// elements, `cu_seqlens` of `S + 1` i32, advantages of S f32, metrics of
    /// [`GRPO_METRICS_LEN`] f32, a workspace of [`grpo_workspace_len`]`(S)` f32; all alive and not
    /// concurrently written until the work completes in stream order. `stream` is 0 or a live
    /// CUstream of this context.
    pub unsafe fn grpo_loss_raw(
        &self,
        stream: u64,
        ptrs: &GrpoPtrs,
        n_tokens: usize,
        layout: DeviceSeqLayout,
        cfg: &GrpoConfig,
    ) -> Result<()> {
        // SAFETY: forwarded to the caller.
        unsafe { self.grpo_loss_raw_in_batch(stream, ptrs, n_tokens, layout, cfg, None) }
    }

    /// [`Gpu::grpo_loss_raw`] over one chunk of a batch whose counts are `batch`: the chunk's
    /// loss and metrics are its shares of the batch's (they add up over the chunks) and its
    /// gradients the batch loss's. Refuses the top-entropy mask (its threshold is over the whole
    /// batch's entropies).
    ///
    /// # Safety
    /// As for [`Gpu::grpo_loss_raw`].
    pub(crate) unsafe fn grpo_loss_raw_in_batch(
        &self,
        stream: u64,
        ptrs: &GrpoPtrs,
        n_tokens: usize,
        layout: DeviceSeqLayout,
        cfg: &GrpoConfig,
        batch: Option<GrpoBatchCounts>,
    ) -> Result<()> {
        cfg.validate()?;
        ensure(batch.is_none() || cfg.top_entropy_quantile >= 1.0, "top_entropy_quantile", || {
            "the top-entropy mask's threshold needs the whole batch's entropies before any loss: \
             not available chunk by chunk"
                .into()
        })?;
        layout.validate(n_tokens)?;
        let n_seqs = layout.n_seqs();
        ensure(n_seqs >= 1, "seqs", || "need at least one sequence".into())?;
        ensure(n_tokens <= i64::MAX as usize / 8, "n_tokens", || format!("too large: {n_tokens}"))?;
        need_inputs(cfg, ptrs.ref_logp != 0, ptrs.entropy != 0)?;
        for (name, p, align, required) in [
            ("logp", ptrs.logp, 4, n_tokens > 0),
            ("old_logp", ptrs.old_logp, 4, false),
            ("sampling_logp", ptrs.sampling_logp, 4, false),
            ("ref_logp", ptrs.ref_logp, 4, false),
            ("mask", ptrs.mask, 1, false),
            ("is_weights", ptrs.is_weights, 4, false),
            ("entropy", ptrs.entropy, 4, false),
            ("advantages", ptrs.advantages, 4, true),
            ("metrics", ptrs.metrics, 4, true),
            ("grad_logp", ptrs.grad_logp, 4, n_tokens > 0),
            ("grad_entropy", ptrs.grad_entropy, 4, false),
            ("workspace", ptrs.workspace, 4, true),
            ("status", ptrs.status, 4, false),
        ] {
            check_ptr(name, p, align, required)?;
        }
        let (agg, surrogate, agg_param) = cfg.kernel_codes();
        let (cu_seqlens, seq_len) = match layout {
            DeviceSeqLayout::Packed { cu_seqlens, .. } => (cu_seqlens, 0),
            DeviceSeqLayout::Padded { seq_len, .. } => (0, seq_len as i64),
        };
        let entropy_mask = cfg.top_entropy_quantile < 1.0;
        let flags = u32::from(cfg.importance == ImportanceLevel::Sequence)
            | (u32::from(cfg.bias_corrected_kl) << 1)
            | (u32::from(cfg.delta.is_some()) << 2)
            | (u32::from(entropy_mask) << 3)
            | (u32::from(cfg.off_policy_mask_threshold.is_some()) << 4);
        let (tau_pos, tau_neg) = match cfg.loss_type {
            super::GrpoLossType::Sapo { tau_pos, tau_neg } => (tau_pos, tau_neg),
            _ => (0.0, 0.0),
        };
        let vespo = match cfg.loss_type {
            super::GrpoLossType::Vespo { k_pos, lambda_pos, k_neg, lambda_neg, .. } => {
                [k_pos, lambda_pos, k_neg, lambda_neg]
            }
            _ => [0.0; 4],
        };
        check_span("workspace", ptrs.workspace, grpo_workspace_len(n_seqs), 4)?;
        let work = ptrs.workspace;
        let params = GrpoParams {
            logp: ptrs.logp,
            old_logp: ptrs.old_logp,
            sampling_logp: ptrs.sampling_logp,
            ref_logp: ptrs.ref_logp,
            mask: ptrs.mask,
            is_weights: ptrs.is_weights,
            entropy: ptrs.entropy,
            advantages: ptrs.advantages,
            cu_seqlens,
            seq_work: work,
            threshold: work + (n_seqs * GRPO_SEQ_FIELDS * 4) as u64,
            metrics: ptrs.metrics,
            grad_logp: ptrs.grad_logp,
            grad_entropy: ptrs.grad_entropy,
            status: ptrs.status,
            n_tokens: n_tokens as i64,
            n_seqs: n_seqs as i64,
            seq_len,
            agg,
            surrogate,
            flags,
            eps_low: cfg.epsilon_low,
            eps_high: cfg.epsilon_high,
            delta: cfg.delta.unwrap_or(0.0),
            beta: cfg.beta,
            entropy_coef: cfg.entropy_coef,
            quantile: (1.0 - cfg.top_entropy_quantile) as f32,
            agg_param,
            tau_pos,
            tau_neg,
            grad_scale: cfg.grad_scale,
            accum_steps: cfg.accumulation_steps as f32,
            off_policy_threshold: cfg.off_policy_mask_threshold.unwrap_or(0.0),
            vespo_k_pos: vespo[0],
            vespo_lambda_pos: vespo[1],
            vespo_k_neg: vespo[2],
            vespo_lambda_neg: vespo[3],
            batch_seqs: batch.map_or(0.0, |b| b.seqs as f32),
            batch_tokens: batch.map_or(0.0, |b| b.tokens as f32),
            reserved: 0,
        };
        // SAFETY (every launch): forwarded to the caller; params is the kernels' GrpoParams (layout
        // asserted in params.rs).
        unsafe {
            if entropy_mask {
                self.launch(stream, "grpo_entropy_threshold", (1, 1), &params)?;
            }
            let seq_blocks = n_seqs.min(self.sm_count() as usize * 8).max(1) as u32;
            self.launch(stream, "grpo_seq", (seq_blocks, 1), &params)?;
            self.launch(stream, "grpo_batch", (1, 1), &params)?;
            if n_tokens > 0 {
                let grid = self.grid_for(n_tokens as u64, GRPO_THREADS as u64);
                self.launch(stream, "grpo_token_grad", grid, &params)?;
            }
        }
        Ok(())
    }

    /// The GRPO-family loss on device buffers: writes `grad_logp` (and `grad_entropy` when
    /// given) and returns the loss and metrics (one synchronization of `stream`).
    pub fn grpo_loss(
        &self,
        stream: &Stream,
        inputs: &DeviceGrpoInputs<'_>,
        seqs: &DeviceSeqs<'_>,
        cfg: &GrpoConfig,
        grad_logp: &mut ViewMut<'_, f32>,
        grad_entropy: Option<&mut ViewMut<'_, f32>>,
    ) -> Result<GrpoOutputs> {
        let n = inputs.logp.len();
        let n_seqs = seqs.n_seqs();
        super::check_lengths(
            n,
            n_seqs,
            inputs.advantages.len(),
            &[
                ("old_logp", inputs.old_logp.as_ref().map(View::len)),
                ("sampling_logp", inputs.sampling_logp.as_ref().map(View::len)),
                ("ref_logp", inputs.ref_logp.as_ref().map(View::len)),
                ("mask", inputs.mask.as_ref().map(View::len)),
                ("is_weights", inputs.is_weights.as_ref().map(View::len)),
                ("entropy", inputs.entropy.as_ref().map(View::len)),
                ("grad_logp", Some(grad_logp.len())),
                ("grad_entropy", grad_entropy.as_ref().map(|g| g.len())),
            ],
        )?;
        let mut work = stream.alloc_zeros::<f32>(grpo_workspace_len(n_seqs))?;
        let mut metrics = stream.alloc_zeros::<f32>(GRPO_METRICS_LEN)?;
        let mut status = StatusWord::new(stream, true)?;
        {
            let mut guards: Vec<Guard<'_>> = Vec::new();
            let logp = optional_ptr(stream, Some(&inputs.logp), &mut guards)?;
            let old_logp = optional_ptr(stream, inputs.old_logp.as_ref(), &mut guards)?;
            let sampling_logp = optional_ptr(stream, inputs.sampling_logp.as_ref(), &mut guards)?;
            let ref_logp = optional_ptr(stream, inputs.ref_logp.as_ref(), &mut guards)?;
            let is_weights = optional_ptr(stream, inputs.is_weights.as_ref(), &mut guards)?;
            let entropy = optional_ptr(stream, inputs.entropy.as_ref(), &mut guards)?;
            let advantages = optional_ptr(stream, Some(&inputs.advantages), &mut guards)?;
            let mask = optional_ptr(stream, inputs.mask.as_ref(), &mut guards)?;
            let layout = seqs.raw(stream, &mut guards)?;
            let (wp, _g0) = work.device_ptr_mut(stream)?;
            let (mp, _g1) = metrics.device_ptr_mut(stream)?;
            let (gp, _g2) = grad_logp.device_ptr_mut(stream)?;
            let (sp, _g3) = status.ptr(stream)?;
            let mut grad_entropy = grad_entropy;
            let ge = match grad_entropy.as_mut() {
                Some(g) => Some(g.device_ptr_mut(stream)?),
                None => None,
            };
            let ptrs = GrpoPtrs {
                logp,
                old_logp,
                sampling_logp,
                ref_logp,
                mask,
                is_weights,
                entropy,
                advantages,
                metrics: mp,
                grad_logp: gp,
                grad_entropy: ge.as_ref().map_or(0, |(p, _)| *p),
                workspace: wp,
                status: sp,
            };
            // SAFETY: every pointer comes from a live buffer of checked length on this stream.
            unsafe { self.grpo_loss_raw(stream.raw(), &ptrs, n, layout, cfg) }?;
        }
        check_status(status.read(stream)?)?;
        GrpoOutputs::read(stream, &metrics)
    }
}

impl GrpoOutputs {
    /// Reads the outputs of a raw launch ([`Gpu::grpo_loss_raw`]) back to the host from its
    /// `metrics` buffer ([`GRPO_METRICS_LEN`] f32). Synchronizes `stream`.
    pub fn read(stream: &Stream, metrics: &DeviceBuffer<f32>) -> Result<Self> {
        let metrics: [f32; GRPO_METRICS_LEN] = read_metrics(stream, "metrics", metrics)?;
        Ok(Self { loss: metrics[0], metrics })
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    /// The codes sent to the kernel equal the header's `PREFK_GRPO_*` defines.
    #[test]
    fn grpo_codes_match_the_header() {
        let header = include_str!("../../kernels/params.h");
        let define = |name: &str| -> u32 {
            let line = header.lines().find(|l| l.split_whitespace().nth(1) == Some(name)).unwrap();
            line.split_whitespace().nth(2).unwrap().trim_end_matches('u').parse().unwrap()
        };
        assert_eq!(AGG_SEQ_MEAN, define("PREFK_GRPO_AGG_SEQ_MEAN"));
        assert_eq!(AGG_TOKEN_MEAN, define("PREFK_GRPO_AGG_TOKEN_MEAN"));
        assert_eq!(AGG_CONSTANT, define("PREFK_GRPO_AGG_CONSTANT"));
        assert_eq!(AGG_CONSTANT_OR_TOKENS, define("PREFK_GRPO_AGG_CONSTANT_OR_TOKENS"));
        assert_eq!(SURR_CLIP, define("PREFK_GRPO_SURR_CLIP"));
        assert_eq!(SURR_CISPO, define("PREFK_GRPO_SURR_CISPO"));
        assert_eq!(SURR_SAPO, define("PREFK_GRPO_SURR_SAPO"));
        assert_eq!(SURR_VESPO, define("PREFK_GRPO_SURR_VESPO"));
        assert_eq!(AGG_SEQ_SUM, define("PREFK_GRPO_AGG_SEQ_SUM"));
        assert_eq!(define("PREFK_GRPO_FLAG_OFF_POLICY_MASK"), 16);
        assert_eq!(ImportanceLevel::Sequence as u32, define("PREFK_GRPO_FLAG_SEQUENCE_IS"));
        assert_eq!(define("PREFK_GRPO_FLAG_BIAS_KL"), 2);
        assert_eq!(define("PREFK_GRPO_FLAG_DELTA"), 4);
        assert_eq!(define("PREFK_GRPO_FLAG_ENTROPY_MASK"), 8);
        let group = |name| define(name);
        assert_eq!(group("PREFK_GROUP_FLAG_KL_GIVEN"), 1);
        assert_eq!(group("PREFK_GROUP_FLAG_APO"), 2);
        assert_eq!(group("PREFK_GROUP_FLAG_LAMBDA"), 4);
        assert_eq!(group("PREFK_GROUP_METRICS") as usize, crate::group_loss::GROUP_METRICS_LEN);
        assert_eq!(group("PREFK_GROUP_PRO"), 2);
        assert_eq!(group("PREFK_KTO_KL_SAMPLE"), crate::group_loss::KtoRole::KlSample as u32);
    }
}
