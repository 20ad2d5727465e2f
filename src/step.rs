//! The whole preference step in one call: logits → token log-probs → per-sequence reductions →
//! loss → d/dlogits, with the minimum passes over the logits (one read in the forward, one read
//! and one write in the backward; the loss stages touch only per-token f32 data).
use crate::runtime::mem::{DeviceBuffer, DevicePtr, DevicePtrMut, Guard, Stream, View, ViewMut};

use crate::error::{ensure, Result};
use crate::pref_loss::launch::read_outputs;
use crate::pref_loss::{
    preference_loss_workspace_len, DevicePairs, LossConfig, PairLossPtrs, PreferenceLossOutputs, METRICS_LEN,
    PAIR_COLUMNS,
};
use crate::runtime::status::{check_status, StatusWord};
use crate::runtime::Gpu;
use crate::seq_reduce::launch::optional_token_ptrs;
use crate::seq_reduce::{DeviceSeqs, SeqReducePtrs};
pub use crate::token_logprobs::GradLogits;
use crate::token_logprobs::{TokenLogprobsBwdPtrs, TokenLogprobsConfig, TokenLogprobsFwdPtrs};
use crate::{LogitElement, LogitsLayout, TargetIndex};

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

/// What a step returns.
pub struct StepOutputs {
    /// Loss, metrics and per-pair values (read back to the host).
    pub loss: PreferenceLossOutputs,
    /// `[T]` per-token policy log-probs (f32, on the device; e.g. for GRPO-style logging).
    pub logp: DeviceBuffer<f32>,
    /// `[T]` dL/dlogp that was chained into the logits.
    pub grad_logp: DeviceBuffer<f32>,
}

impl Gpu {
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
        let layout = batch.layout;
        crate::token_logprobs::validate(&layout, token_cfg, logits.len(), batch.targets.len())?;
        let n = layout.n_rows;
        ensure(!token_cfg.compute_entropy, "compute_entropy", || {
            "the step does not return entropy; call token_logprobs_forward for it".into()
        })?;
        let n_seqs = batch.seqs.n_seqs();
        let n_pairs = batch.pairs.n_pairs(n_seqs)?;
        if let Some(r) = &batch.ref_seq {
            crate::token_logprobs::ensure_len("ref_seq", r.len(), n_seqs)?;
        }
        let mut logp = stream.alloc_zeros::<f32>(n.max(1))?;
        let mut lse = stream.alloc_zeros::<f32>(n.max(1))?;
        let mut grad_logp = stream.alloc_zeros::<f32>(n.max(1))?;
        let mut work = stream.alloc_zeros::<f32>(preference_loss_workspace_len(n_seqs, n_pairs).max(1))?;
        let mut metrics = stream.alloc_zeros::<f32>(METRICS_LEN)?;
        let mut pair_out = stream.alloc_zeros::<f32>((n_pairs * PAIR_COLUMNS).max(1))?;
        let mut status = StatusWord::new(stream, true)?;
        let raw_stream = stream.raw();
        let mut grad = grad;
        let mut upload = None;
        {
            let mut guards: Vec<Guard<'_>> = Vec::new();
            let (targets_p, _gt) = batch.targets.device_ptr(stream)?;
            let (logp_p, _g0) = logp.device_ptr_mut(stream)?;
            let (lse_p, _g1) = lse.device_ptr_mut(stream)?;
            let (grad_logp_p, _g2) = grad_logp.device_ptr_mut(stream)?;
            let (work_p, _g3) = work.device_ptr_mut(stream)?;
            let (metrics_p, _g4) = metrics.device_ptr_mut(stream)?;
            let (pair_p, _g5) = pair_out.device_ptr_mut(stream)?;
            let (status_p, _g6) = status.ptr(stream)?;
            let [mask_p, weights_p, ref_p] = optional_token_ptrs(
                stream,
                n,
                batch.mask.as_ref(),
                batch.weights.as_ref(),
                batch.ref_logp.as_ref(),
                &mut guards,
            )?;
            let mut ref_seq_p = 0;
            if let Some(v) = &batch.ref_seq {
                let (p, g) = v.device_ptr(stream)?;
                guards.push(g);
                ref_seq_p = p;
            }
            let seq_layout = batch.seqs.raw(stream, &mut guards)?;
            let on_device = batch.pairs.on_device(stream, &mut upload)?;
            let raw_pairs = on_device.raw;
            let (grad_sep, grad_stride) = grad.pointer(stream, layout)?;
            let (logits_p, _gl) = logits.device_ptr_mut(stream)?;
            let grad_p = grad_sep.as_ref().map_or(logits_p, |(p, _)| *p);
            let fwd = TokenLogprobsFwdPtrs {
                logits: logits_p,
                targets: targets_p,
                logp: logp_p,
                lse: lse_p,
                entropy: 0,
                status: status_p,
            };
            let tokens = SeqReducePtrs { logp: logp_p, mask: mask_p, weights: weights_p, ref_logp: ref_p };
            let loss_ptrs = PairLossPtrs {
                ref_seq: ref_seq_p,
                pair_out: pair_p,
                metrics: metrics_p,
                grad_logp: grad_logp_p,
                workspace: work_p,
                status: status_p,
            };
            let bwd = TokenLogprobsBwdPtrs {
                logits: logits_p,
                targets: targets_p,
                lse: lse_p,
                grad_logp: grad_logp_p,
                grad_logits: grad_p,
                status: status_p,
                ..Default::default()
            };
            // SAFETY: every pointer comes from a live cudarc buffer whose length was checked above;
            // all work is ordered on `stream`, and the buffers outlive the synchronization below.
            unsafe {
                self.token_logprobs_forward_raw(
                    raw_stream,
                    T::DTYPE,
                    I::INDEX_TYPE,
                    layout,
                    &fwd,
                    token_cfg,
                )?;
                self.preference_loss_raw(
                    raw_stream, &tokens, n, seq_layout, raw_pairs, loss_cfg, &loss_ptrs,
                )?;
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
        let loss = read_outputs(stream, &metrics, &pair_out, n_pairs)?;
        Ok(StepOutputs { loss, logp, grad_logp })
    }
}
