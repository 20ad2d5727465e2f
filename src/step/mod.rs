//! Whole training steps in one call: logits → token log-probs (and entropy) → loss → d/dlogits,
//! with the minimum passes over the logits (one read in the forward, one read and one write in
//! the backward; the loss stages touch only per-token f32 data). Three losses share one driver:
//! the pairwise preference losses ([`Gpu::preference_step`]), the GRPO family
//! ([`Gpu::grpo_step`]) and the group / listwise losses ([`Gpu::group_loss_step`]).
//!
//! From hidden states and the LM head instead of logits: [`Gpu::linear_preference_step`]
//! ([`linear`]) and [`Gpu::linear_grpo_step`] ([`linear_grpo`]).
pub mod linear;
pub mod linear_grpo;
mod pair_plan;
pub use linear::{LinearStepBatch, LinearStepOutputs, LinearStepViews};
pub use linear_grpo::{LinearGrpoBatch, LinearGrpoOutputs, LinearGrpoViews};

use crate::runtime::mem::{
    optional_ptr, optional_ptr_of_len, DeviceBuffer, DevicePtr, DevicePtrMut, Guard, Stream, View, ViewMut,
};

use crate::error::{ensure, Result};
use crate::group_loss::{
    group_loss_workspace_len, GroupLoss, GroupLossOutputs, GroupLossPtrs, GROUP_METRICS_LEN,
};
use crate::grpo::{grpo_workspace_len, GrpoConfig, GrpoOutputs, GrpoPtrs, GRPO_METRICS_LEN};
use crate::preference_loss::{
    preference_loss_workspace_len, DevicePairs, LossConfig, PreferenceLossOutputs, PreferenceLossPtrs,
    METRICS_LEN, PAIR_COLUMNS,
};
use crate::runtime::status::{check_status, StatusWord};
use crate::runtime::Gpu;
use crate::seq_reduce::{DeviceSeqs, SeqReducePtrs};
pub use crate::token_logprobs::GradLogits;
use crate::token_logprobs::{TokenLogprobsBwdPtrs, TokenLogprobsConfig, TokenLogprobsFwdPtrs};
use crate::{LogitElement, LogitsLayout, TargetIndex};

/// The sum, in f64 and chunk order (deterministic), of the first `n_chunks` rows of `W` metrics a
/// chunked step wrote, one row per chunk.
fn sum_chunk_rows<const W: usize>(rows: &[f32], n_chunks: usize) -> [f64; W] {
    let mut acc = [0f64; W];
    for row in rows.chunks_exact(W).take(n_chunks) {
        for (a, &x) in acc.iter_mut().zip(row) {
            *a += x as f64;
        }
    }
    acc
}

/// Everything but the logits that a preference step reads. Tokens are the logits' rows.
pub struct StepBatch<'a, I> {
    /// Logits shape: `n_rows` = number of tokens T.
    pub layout: LogitsLayout,
    /// `[T]` next-token targets (ignored rows give logp 0 and zero gradient rows).
    pub targets: View<'a, I>,
    /// `[T]` u8 loss mask (response tokens); `None` = every token in a sequence counts. Mask the
    /// `ignore_index` rows here too: they hold logp 0 and would otherwise count in lengths.
    pub mask: Option<View<'a, u8>>,
    /// `[T]` f32 token weights (TAB-PO / token-weighted DPO) or TGDPO token rewards.
    pub weights: Option<View<'a, f32>>,
    /// `[T]` f32 reference log-probs, or ...
    pub ref_logp: Option<View<'a, f32>>,
    /// ... `[S]` f32 per-sequence reference scores.
    pub ref_seq: Option<View<'a, f32>>,
    /// Sequence layout over the tokens.
    pub seqs: DeviceSeqs<'a>,
    /// Pairs of sequences.
    pub pairs: DevicePairs<'a>,
}

/// What a preference step returns.
pub struct StepOutputs {
    /// Loss, metrics and per-pair values (read back to the host).
    pub loss: PreferenceLossOutputs,
    /// `[T]` per-token policy log-probs (f32, on the device; e.g. for GRPO-style logging).
    pub logp: DeviceBuffer<f32>,
    /// `[T]` dL/dlogp that was chained into the logits.
    pub grad_logp: DeviceBuffer<f32>,
}

/// Everything but the logits that a GRPO step reads (tokens are the logits' rows).
pub struct GrpoStepBatch<'a, I> {
    /// Logits shape.
    pub layout: LogitsLayout,
    /// `[T]` next-token targets.
    pub targets: View<'a, I>,
    /// `[T]` u8 completion mask; mask `ignore_index` rows here too.
    pub mask: Option<View<'a, u8>>,
    /// `[T]` rollout log-probs; `None` = on-policy.
    pub old_logp: Option<View<'a, f32>>,
    /// `[T]` inference-engine log-probs for the off-policy mask; `None` = `old_logp`.
    pub sampling_logp: Option<View<'a, f32>>,
    /// `[T]` reference log-probs (β > 0).
    pub ref_logp: Option<View<'a, f32>>,
    /// `[T]` vLLM importance-sampling weights.
    pub is_weights: Option<View<'a, f32>>,
    /// `[S]` advantages.
    pub advantages: View<'a, f32>,
    /// Completions over the tokens.
    pub seqs: DeviceSeqs<'a>,
}

/// Everything but the logits that a group-loss step reads.
pub struct GroupStepBatch<'a, I> {
    /// Logits shape.
    pub layout: LogitsLayout,
    /// `[T]` next-token targets.
    pub targets: View<'a, I>,
    /// `[T]` u8 loss mask.
    pub mask: Option<View<'a, u8>>,
    /// `[T]` reference log-probs, or ...
    pub ref_logp: Option<View<'a, f32>>,
    /// ... `[S]` per-sequence reference sums.
    pub ref_seq: Option<View<'a, f32>>,
    /// `[S]` labels on the host (KTO roles, LiPO ψ, PRO rewards): validated, then uploaded.
    pub labels: &'a [f32],
    /// Sequences over the tokens.
    pub seqs: DeviceSeqs<'a>,
}

/// What a GRPO or group-loss step returns.
pub struct LossStepOutputs<O> {
    /// Loss and metrics (read back).
    pub loss: O,
    /// `[T]` per-token policy log-probs.
    pub logp: DeviceBuffer<f32>,
    /// `[T]` entropies (GRPO step; `None` for the group losses).
    pub entropy: Option<DeviceBuffer<f32>>,
    /// `[T]` dL/dlogp chained into the logits.
    pub grad_logp: DeviceBuffer<f32>,
}

/// The per-token buffers the loss stage of a step reads and writes, as raw pointers on the
/// step's stream.
pub(crate) struct StepTokens {
    pub(crate) logp: u64,
    pub(crate) entropy: u64,
    pub(crate) grad_logp: u64,
    pub(crate) grad_entropy: u64,
    pub(crate) status: u64,
}

/// Whether a step computes the entropy, and whether its gradient flows into the logits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum EntropyUse {
    None,
    Forward,
    ForwardAndGrad,
}

/// The step's own device buffers.
struct StepBuffers {
    logp: DeviceBuffer<f32>,
    entropy: Option<DeviceBuffer<f32>>,
    grad_logp: DeviceBuffer<f32>,
}

impl Gpu {
    /// The shared driver: the token log-probs forward, the loss stage `loss` (raw launches on
    /// `stream`, given the per-token pointers; its buffers are the caller's and outlive this
    /// call), the backward into `grad`, then one synchronization for the status word.
    #[allow(clippy::too_many_arguments)]
    fn logits_step<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        logits: &mut ViewMut<'_, T>,
        layout: LogitsLayout,
        targets: &View<'_, I>,
        token_cfg: &TokenLogprobsConfig,
        grad: GradLogits<'_, T>,
        entropy: EntropyUse,
        loss: impl FnOnce(&StepTokens) -> Result<()>,
    ) -> Result<StepBuffers> {
        crate::token_logprobs::validate(&layout, token_cfg, logits.len(), targets.len())?;
        ensure(!token_cfg.compute_entropy, "compute_entropy", || {
            "the step decides itself whether it needs entropy; leave compute_entropy unset".into()
        })?;
        let n = layout.n_rows;
        let mut logp = stream.alloc_zeros::<f32>(n.max(1))?;
        let mut lse = stream.alloc_zeros::<f32>(n.max(1))?;
        let mut stats = stream.alloc_zeros::<f32>(n.max(1) * crate::params::SOFTMAX_STATS)?;
        let mut grad_logp = stream.alloc_zeros::<f32>(n.max(1))?;
        let mut ent = match entropy {
            EntropyUse::None => None,
            _ => Some(stream.alloc_zeros::<f32>(n.max(1))?),
        };
        let mut grad_ent = match entropy {
            EntropyUse::ForwardAndGrad => Some(stream.alloc_zeros::<f32>(n.max(1))?),
            _ => None,
        };
        let mut status = StatusWord::new(stream, true)?;
        let raw_stream = stream.raw();
        let mut grad = grad;
        {
            let (targets_p, _gt) = targets.device_ptr(stream)?;
            let (logp_p, _g0) = logp.device_ptr_mut(stream)?;
            let (lse_p, _g1) = lse.device_ptr_mut(stream)?;
            let (stats_p, _gs) = stats.device_ptr_mut(stream)?;
            let (grad_logp_p, _g2) = grad_logp.device_ptr_mut(stream)?;
            let (status_p, _g3) = status.ptr(stream)?;
            let ent_p = match ent.as_mut() {
                Some(e) => Some(e.device_ptr_mut(stream)?),
                None => None,
            };
            let grad_ent_p = match grad_ent.as_mut() {
                Some(e) => Some(e.device_ptr_mut(stream)?),
                None => None,
            };
            let entropy_p = ent_p.as_ref().map_or(0, |(p, _)| *p);
            let grad_entropy_p = grad_ent_p.as_ref().map_or(0, |(p, _)| *p);
            let (grad_sep, grad_stride) = grad.pointer(stream, layout)?;
            let (logits_p, _gl) = logits.device_ptr_mut(stream)?;
            let grad_p = grad_sep.as_ref().map_or(logits_p, |(p, _)| *p);
            let fwd_cfg = TokenLogprobsConfig { compute_entropy: entropy != EntropyUse::None, ..*token_cfg };
            let fwd = TokenLogprobsFwdPtrs {
                logits: logits_p,
                targets: targets_p,
                logp: logp_p,
                lse: lse_p,
                entropy: entropy_p,
                status: status_p,
                stats: stats_p,
                log_sum_sq: 0,
                mean_logits: 0,
                is_top1: 0,
            };
            let bwd = TokenLogprobsBwdPtrs {
                logits: logits_p,
                targets: targets_p,
                stats: stats_p,
                grad_logp: grad_logp_p,
                grad_logits: grad_p,
                status: status_p,
                entropy: if grad_entropy_p != 0 { entropy_p } else { 0 },
                grad_entropy: grad_entropy_p,
            };
            // SAFETY: every pointer comes from a live buffer whose length was checked; all work is
            // ordered on `stream`, and the buffers (the loss stage's too) outlive the
            // synchronization below.
            unsafe {
                self.token_logprobs_forward_raw(raw_stream, T::DTYPE, I::INDEX_TYPE, layout, &fwd, &fwd_cfg)?;
                loss(&StepTokens {
                    logp: logp_p,
                    entropy: entropy_p,
                    grad_logp: grad_logp_p,
                    grad_entropy: grad_entropy_p,
                    status: status_p,
                })?;
                self.token_logprobs_backward_raw(
                    raw_stream,
                    T::DTYPE,
                    I::INDEX_TYPE,
                    layout,
                    grad_stride,
                    &bwd,
                    token_cfg,
                )?;
            }
        }
        check_status(status.read(stream)?)?;
        Ok(StepBuffers { logp, entropy: ent, grad_logp })
    }

    /// One preference step on `stream`: five launches (token log-probs forward, statistics,
    /// pair loss, token gradient, token log-probs backward) and one synchronization at the end
    /// to read the loss, metrics and the device status (bad targets, `cu_seqlens` or pairs →
    /// [`crate::Error::DeviceCheck`]). Host-side validation happens before any launch.
    pub fn preference_step<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        logits: &mut ViewMut<'_, T>,
        batch: &StepBatch<'_, I>,
        token_cfg: &TokenLogprobsConfig,
        loss_cfg: &LossConfig,
        grad: GradLogits<'_, T>,
    ) -> Result<StepOutputs> {
        let n = batch.layout.n_rows;
        let n_seqs = batch.seqs.n_seqs();
        let n_pairs = batch.pairs.n_pairs(n_seqs)?;
        if let Some(r) = &batch.ref_seq {
            crate::error::ensure_len("ref_seq", r.len(), n_seqs)?;
        }
        let mut work = stream.alloc_zeros::<f32>(preference_loss_workspace_len(n_seqs, n_pairs).max(1))?;
        let mut metrics = stream.alloc_zeros::<f32>(METRICS_LEN)?;
        let mut pair_out = stream.alloc_zeros::<f32>((n_pairs * PAIR_COLUMNS).max(1))?;
        let mut upload = None;
        let bufs = self.logits_step(
            stream,
            logits,
            batch.layout,
            &batch.targets,
            token_cfg,
            grad,
            EntropyUse::None,
            |tok| {
                let mut guards: Vec<Guard<'_>> = Vec::new();
                let mask_p = optional_ptr_of_len(stream, "mask", batch.mask.as_ref(), n, &mut guards)?;
                let weights_p =
                    optional_ptr_of_len(stream, "weights", batch.weights.as_ref(), n, &mut guards)?;
                let ref_p = optional_ptr_of_len(stream, "ref_logp", batch.ref_logp.as_ref(), n, &mut guards)?;
                let ref_seq_p = optional_ptr(stream, batch.ref_seq.as_ref(), &mut guards)?;
                let seq_layout = batch.seqs.raw(stream, &mut guards)?;
                let on_device = batch.pairs.on_device(stream, &mut upload)?;
                let (work_p, _g0) = work.device_ptr_mut(stream)?;
                let (metrics_p, _g1) = metrics.device_ptr_mut(stream)?;
                let (pair_p, _g2) = pair_out.device_ptr_mut(stream)?;
                let tokens =
                    SeqReducePtrs { logp: tok.logp, mask: mask_p, weights: weights_p, ref_logp: ref_p };
                let ptrs = PreferenceLossPtrs {
                    ref_seq: ref_seq_p,
                    seq_weights: 0,
                    pair_out: pair_p,
                    metrics: metrics_p,
                    grad_logp: tok.grad_logp,
                    workspace: work_p,
                    status: tok.status,
                };
                // SAFETY: pointers from live buffers of checked lengths, ordered on `stream`.
                unsafe {
                    self.preference_loss_raw(
                        stream.raw(),
                        &tokens,
                        n,
                        seq_layout,
                        on_device.raw,
                        loss_cfg,
                        &ptrs,
                    )
                }
            },
        )?;
        let loss = PreferenceLossOutputs::read(stream, &metrics, &pair_out, n_pairs)?;
        Ok(StepOutputs { loss, logp: bufs.logp, grad_logp: bufs.grad_logp })
    }

    /// One GRPO-family step on `stream`: token log-probs and entropy forward (one read of the
    /// logits), the GRPO kernels, the backward with dL/dlogp and, with an entropy bonus, dL/dH
    /// in the same single pass (one read, one write); one synchronization at the end.
    pub fn grpo_step<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        logits: &mut ViewMut<'_, T>,
        batch: &GrpoStepBatch<'_, I>,
        token_cfg: &TokenLogprobsConfig,
        cfg: &GrpoConfig,
        grad: GradLogits<'_, T>,
    ) -> Result<LossStepOutputs<GrpoOutputs>> {
        cfg.validate()?;
        let n = batch.layout.n_rows;
        let n_seqs = batch.seqs.n_seqs();
        crate::grpo::check_lengths(
            n,
            n_seqs,
            batch.advantages.len(),
            &[
                ("old_logp", batch.old_logp.as_ref().map(View::len)),
                ("sampling_logp", batch.sampling_logp.as_ref().map(View::len)),
                ("ref_logp", batch.ref_logp.as_ref().map(View::len)),
                ("mask", batch.mask.as_ref().map(View::len)),
                ("is_weights", batch.is_weights.as_ref().map(View::len)),
            ],
        )?;
        let mut work = stream.alloc_zeros::<f32>(grpo_workspace_len(n_seqs))?;
        let mut metrics = stream.alloc_zeros::<f32>(GRPO_METRICS_LEN)?;
        let entropy = if cfg.entropy_coef != 0.0 { EntropyUse::ForwardAndGrad } else { EntropyUse::Forward };
        let bufs = self.logits_step(
            stream,
            logits,
            batch.layout,
            &batch.targets,
            token_cfg,
            grad,
            entropy,
            |tok| {
                let mut guards: Vec<Guard<'_>> = Vec::new();
                // Lengths were checked above (check_lengths).
                let mask = optional_ptr(stream, batch.mask.as_ref(), &mut guards)?;
                let old_logp = optional_ptr(stream, batch.old_logp.as_ref(), &mut guards)?;
                let sampling_logp = optional_ptr(stream, batch.sampling_logp.as_ref(), &mut guards)?;
                let ref_logp = optional_ptr(stream, batch.ref_logp.as_ref(), &mut guards)?;
                let is_weights = optional_ptr(stream, batch.is_weights.as_ref(), &mut guards)?;
                let adv_p = optional_ptr(stream, Some(&batch.advantages), &mut guards)?;
                let layout = batch.seqs.raw(stream, &mut guards)?;
                let (wp, _g0) = work.device_ptr_mut(stream)?;
                let (mp, _g1) = metrics.device_ptr_mut(stream)?;
                let ptrs = GrpoPtrs {
                    logp: tok.logp,
                    old_logp,
                    sampling_logp,
                    ref_logp,
                    mask,
                    is_weights,
                    entropy: tok.entropy,
                    advantages: adv_p,
                    metrics: mp,
                    grad_logp: tok.grad_logp,
                    grad_entropy: tok.grad_entropy,
                    workspace: wp,
                    status: tok.status,
                };
                // SAFETY: pointers from live buffers of checked lengths, ordered on `stream`.
                unsafe { self.grpo_loss_raw(stream.raw(), &ptrs, n, layout, cfg) }
            },
        )?;
        let loss = GrpoOutputs::read(stream, &metrics)?;
        Ok(LossStepOutputs { loss, logp: bufs.logp, entropy: bufs.entropy, grad_logp: bufs.grad_logp })
    }

    /// One group / listwise loss step (KTO, LiPO-λ, PRO) on `stream`: token log-probs forward,
    /// statistics, the group kernel, token gradient, backward; one synchronization at the end.
    pub fn group_loss_step<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        logits: &mut ViewMut<'_, T>,
        batch: &GroupStepBatch<'_, I>,
        token_cfg: &TokenLogprobsConfig,
        loss: &GroupLoss,
        grad: GradLogits<'_, T>,
    ) -> Result<LossStepOutputs<GroupLossOutputs>> {
        let n = batch.layout.n_rows;
        let n_seqs = batch.seqs.n_seqs();
        loss.validate(n_seqs, batch.labels)?;
        if let Some(r) = &batch.ref_seq {
            crate::error::ensure_len("ref_seq", r.len(), n_seqs)?;
        }
        let labels = stream.clone_htod(batch.labels)?;
        let mut work = stream.alloc_zeros::<f32>(group_loss_workspace_len(n_seqs).max(1))?;
        let mut metrics = stream.alloc_zeros::<f32>(GROUP_METRICS_LEN)?;
        let mut seq_out = stream.alloc_zeros::<f32>(n_seqs.max(1))?;
        let bufs = self.logits_step(
            stream,
            logits,
            batch.layout,
            &batch.targets,
            token_cfg,
            grad,
            EntropyUse::None,
            |tok| {
                let mut guards: Vec<Guard<'_>> = Vec::new();
                let mask_p = optional_ptr_of_len(stream, "mask", batch.mask.as_ref(), n, &mut guards)?;
                let ref_p = optional_ptr_of_len(stream, "ref_logp", batch.ref_logp.as_ref(), n, &mut guards)?;
                let ref_seq_p = optional_ptr(stream, batch.ref_seq.as_ref(), &mut guards)?;
                let layout = batch.seqs.raw(stream, &mut guards)?;
                let (lp, _g0) = labels.device_ptr(stream)?;
                let (wp, _g1) = work.device_ptr_mut(stream)?;
                let (mp, _g2) = metrics.device_ptr_mut(stream)?;
                let (op, _g3) = seq_out.device_ptr_mut(stream)?;
                let tokens = SeqReducePtrs { logp: tok.logp, mask: mask_p, weights: 0, ref_logp: ref_p };
                let ptrs = GroupLossPtrs {
                    ref_seq: ref_seq_p,
                    labels: lp,
                    seq_out: op,
                    metrics: mp,
                    grad_logp: tok.grad_logp,
                    workspace: wp,
                    status: tok.status,
                };
                // SAFETY: pointers from live buffers of checked lengths, ordered on `stream`.
                unsafe { self.group_loss_raw(stream.raw(), &tokens, n, layout, loss, 1.0, &ptrs) }
            },
        )?;
        let out = GroupLossOutputs::read(stream, &metrics, &seq_out, n_seqs)?;
        Ok(LossStepOutputs { loss: out, logp: bufs.logp, entropy: None, grad_logp: bufs.grad_logp })
    }
}
