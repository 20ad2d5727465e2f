//! The preference step from hidden states and the LM head: no `[N, V]` logits tensor, three
//! GEMMs per used token, no recompute.
//!
//! The batch is planned on the host into chunks of whole groups of pairs (pairs sharing a
//! sequence stay together), so each chunk's sequence scores, pair losses and loss gradient are
//! known inside it. Per chunk: GEMM → log-probs → statistics → pair loss (its means over the
//! batch's pair count and chosen-token count, so gradients are the batch loss's) → token
//! gradient → d/dlogits in place → `d_weight += dLᵀ X` (f32, chunk order) and `d_hidden = dL · W`.
//! Metrics are the chunks' shares summed on the host in chunk order (exact over the batch).
use super::pair_plan::pair_chunks;
use crate::error::{ensure, Result};
use crate::linear_token_logprobs::{LinearConfig, LinearGradBuffers, LinearGradViews, LinearHead, LinearRun};
use crate::lm_head::chunk::{check_head, head_ptrs, zero_grads, ChunkPass, RowExtras};
use crate::lm_head::plan::rows_for_budget;
use crate::lm_head::plan_in_slots;
use crate::preference_loss::{
    preference_loss_workspace_len, LossConfig, Pairs, PreferenceLossOutputs, PreferenceLossPtrs, RawPairs,
    RefSource, SubBatch, METRICS_LEN, PAIR_COLUMNS,
};
use crate::runtime::mem::{optional_ptr, DeviceBuffer, DevicePtr, DevicePtrMut, Stream, View, ViewMut};
use crate::runtime::pipeline::Pipeline;
use crate::runtime::Gpu;
use crate::seq_reduce::{DeviceSeqLayout, SeqLayout, SeqReducePtrs};
use crate::{LogitElement, TargetIndex};

/// Everything but the hidden states and the head that a preference step from hidden states
/// reads. Tokens are the hidden states' rows; a token counts in its sequence's score exactly
/// when its target is not `ignore_index` (TRL's `loss_mask = labels != -100`): ignored rows
/// never reach a GEMM.
pub struct LinearStepBatch<'a, I> {
    /// `[N]` next-token targets.
    pub targets: View<'a, I>,
    /// `[N]` f32 token weights (TAB-PO / token-weighted DPO) or TGDPO token rewards.
    pub weights: Option<View<'a, f32>>,
    /// `[N]` f32 reference log-probs, or ...
    pub ref_logp: Option<View<'a, f32>>,
    /// ... `[S]` f32 per-sequence reference scores.
    pub ref_seq: Option<View<'a, f32>>,
    /// Sequences over the rows (host: the plan needs them).
    pub seqs: SeqLayout<'a>,
    /// Pairs of sequences (host).
    pub pairs: Pairs<'a>,
}

/// What the step returns.
pub struct LinearStepOutputs<T> {
    /// Loss, metrics (exact over the batch) and per-pair values, on the host.
    pub loss: PreferenceLossOutputs,
    /// `[N]` per-token policy log-probs (0 on ignored rows and rows in no pair).
    pub logp: DeviceBuffer<f32>,
    /// d_hidden, d_weight (f32) and d_bias.
    pub grads: LinearGradBuffers<T>,
    /// Chunks the loop ran.
    pub n_chunks: usize,
    /// Workspace bytes it used.
    pub workspace_bytes: usize,
}

/// Caller-owned outputs of [`Gpu::linear_preference_step_into`].
pub struct LinearStepViews<'a, T> {
    /// `[N]` per-token policy log-probs (every element written: 0 on ignored rows and rows in no pair).
    pub logp: ViewMut<'a, f32>,
    /// d_hidden, d_weight (f32), d_bias (overwritten).
    pub grads: LinearGradViews<'a, T>,
}

/// Sums the chunks' metric rows in chunk order; `barrier/active_pct` from the summed counts.
fn combine_metrics(rows: &[f32], n_chunks: usize) -> [f32; METRICS_LEN] {
    let mut acc = super::sum_chunk_rows::<METRICS_LEN>(rows, n_chunks);
    acc[10] = if acc[13] > 0.0 { acc[12] / acc[13] } else { 0.0 };
    acc.map(|x| x as f32)
}

impl Gpu {
    /// One preference step (every [`LossConfig`]: the DPO family, SimPO, CPO, ORPO, TGDPO, TAB-PO)
    /// from hidden states: loss, metrics, per-pair values, `d_hidden`, `d_weight`, `d_bias`.
    ///
    /// One synchronization to read the targets back for the plan, then the whole chunk loop on
    /// `stream`, then one at the end (metrics, status). Errors before any launch: shapes,
    /// lengths, targets out of range, bad layout or pairs, loss configuration, a workspace too
    /// small for the largest group of pairs (naming the minimum), no cuBLAS.
    pub fn linear_preference_step<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        head: &LinearHead<'_, T>,
        batch: &LinearStepBatch<'_, I>,
        loss_cfg: &LossConfig,
        cfg: &LinearConfig,
    ) -> Result<LinearStepOutputs<T>> {
        let mut logp = stream.alloc_zeros::<f32>(head.shape.n_rows)?;
        let mut grads = zero_grads(stream, head)?;
        let out = LinearStepViews { logp: logp.as_view_mut(), grads: grads.as_views() };
        let (loss, run) = self.linear_step_impl(stream, head, batch, loss_cfg, cfg, out, true)?;
        Ok(LinearStepOutputs {
            loss,
            logp,
            grads,
            n_chunks: run.n_chunks,
            workspace_bytes: run.workspace_bytes,
        })
    }

    /// [`Gpu::linear_preference_step`] into caller-owned outputs (a PyTorch caller's tensors);
    /// returns the loss, metrics and per-pair values (host) and what the loop ran.
    pub fn linear_preference_step_into<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        head: &LinearHead<'_, T>,
        batch: &LinearStepBatch<'_, I>,
        loss_cfg: &LossConfig,
        cfg: &LinearConfig,
        out: LinearStepViews<'_, T>,
    ) -> Result<(PreferenceLossOutputs, LinearRun)> {
        self.linear_step_impl(stream, head, batch, loss_cfg, cfg, out, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn linear_step_impl<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        head: &LinearHead<'_, T>,
        batch: &LinearStepBatch<'_, I>,
        loss_cfg: &LossConfig,
        cfg: &LinearConfig,
        mut out: LinearStepViews<'_, T>,
        zeroed: bool,
    ) -> Result<(PreferenceLossOutputs, LinearRun)> {
        ensure(!cfg.token.compute_entropy, "compute_entropy", || {
            "the preference step does not use the entropy; leave compute_entropy unset".into()
        })?;
        let host_targets = check_head(self, stream, head, &batch.targets, &cfg.token)?;
        let s = head.shape;
        let n_seqs = batch.seqs.n_seqs();
        for (name, len, want) in [
            ("weights", batch.weights.as_ref().map(View::len), s.n_rows),
            ("ref_logp", batch.ref_logp.as_ref().map(View::len), s.n_rows),
            ("ref_seq", batch.ref_seq.as_ref().map(View::len), n_seqs),
        ] {
            if let Some(len) = len {
                crate::error::ensure_len(name, len, want)?;
            }
        }
        let source = RefSource::from_given(batch.ref_logp.is_some(), batch.ref_seq.is_some())?;
        loss_cfg.validate(source)?;
        ensure(!loss_cfg.needs_weights() || batch.weights.is_some(), "weights", || {
            "these losses read token weights (TAB-PO / token-weighted DPO weights, TGDPO rewards); none given"
                .into()
        })?;

        let plan_within = |budget: usize| {
            let max_rows = rows_for_budget(&s, T::DTYPE, budget, 1, "one row")?;
            pair_chunks(
                &host_targets,
                s.vocab,
                cfg.token.ignore_index,
                &batch.seqs,
                &batch.pairs,
                max_rows,
                |rows| rows_for_budget(&s, T::DTYPE, budget, rows, "the largest group of pairs"),
            )
        };
        // Two slots of half the budget where it takes more than one chunk and half holds the
        // largest group of pairs: a second stream runs one chunk's row pass and loss while the
        // next chunk's GEMM fills the other slot.
        let (plan, slots) = plan_in_slots(cfg.workspace_bytes, plan_within, |p| p.rows.chunks.len())?;
        let n_chunks = plan.rows.chunks.len();
        let n_pairs = plan.n_pairs;
        let mut pass = ChunkPass::with_slots(stream, &s, T::DTYPE, &plan.rows, slots)?;
        let cu_dev = stream.clone_htod(&plan.local_cu)?;
        let seq_order_dev = stream.clone_htod(&plan.seq_order)?;
        let chosen_dev = stream.clone_htod(&plan.local_chosen)?;
        let rejected_dev = stream.clone_htod(&plan.local_rejected)?;
        let mut loss_work =
            stream.alloc_zeros::<f32>(preference_loss_workspace_len(plan.max_seqs, plan.max_pairs).max(1))?;
        let mut ref_local = stream.alloc_zeros::<f32>(plan.max_seqs.max(1))?;
        let mut metrics = stream.alloc_zeros::<f32>(n_chunks.max(1) * METRICS_LEN)?;
        let mut pair_out = stream.alloc_zeros::<f32>((n_pairs * PAIR_COLUMNS).max(1))?;
        crate::error::ensure_len("logp", out.logp.len(), s.n_rows)?;
        out.grads.prepare(stream, head, zeroed)?;
        if !zeroed {
            stream.memset_zeros(&mut out.logp)?;
        }
        let sub_batch = SubBatch { pairs: n_pairs, nll_count: plan.nll_count as f32 };
        {
            let mut guards = Vec::new();
            let head_p = head_ptrs(stream, head, &mut guards)?;
            let weights_p = optional_ptr(stream, batch.weights.as_ref(), &mut guards)?;
            let ref_logp_p = optional_ptr(stream, batch.ref_logp.as_ref(), &mut guards)?;
            let ref_seq_p = optional_ptr(stream, batch.ref_seq.as_ref(), &mut guards)?;
            let (cu_p, _g3) = cu_dev.device_ptr(stream)?;
            let (order_p, _g4) = seq_order_dev.device_ptr(stream)?;
            let (ch_p, _g5) = chosen_dev.device_ptr(stream)?;
            let (rj_p, _g6) = rejected_dev.device_ptr(stream)?;
            let (lw_p, _g7) = loss_work.device_ptr_mut(stream)?;
            let (rl_p, _g8) = ref_local.device_ptr_mut(stream)?;
            let (m_p, _g9) = metrics.device_ptr_mut(stream)?;
            let (po_p, _g10) = pair_out.device_ptr_mut(stream)?;
            let (logp_p, _g11) = out.logp.device_ptr_mut(stream)?;
            let mut grad_guards = Vec::new();
            let gp = out.grads.ptrs(stream, &mut grad_guards)?;
            let mut pass_guards = Vec::new();
            let (loops, status_p) = pass.bind_slots(stream, head_p, &mut pass_guards)?;
            let raw = stream.raw();
            // SAFETY: `raw` is the caller's live stream of this backend.
            let lane = unsafe { self.side_lane(raw, slots == 2)? };
            let pipe = Pipeline::new(raw, lane.as_deref());
            let fill = |c: usize, slot: usize| -> Result<()> {
                let (rows, lp) = (&plan.rows.chunks[c], &loops[slot]);
                // SAFETY: as in `drain`; the pipeline fills a slot on the caller's stream after its
                // previous chunk's weight GEMMs there.
                unsafe { lp.fill(self, pipe.main(), rows, status_p) }
            };
            let drain = |c: usize, slot: usize| -> Result<()> {
                let lp = &loops[slot];
                let rows = &plan.rows.chunks[c];
                let (r0, m) = (rows.start, rows.len());
                let seqs = &plan.chunk_seqs[c];
                let pairs = &plan.chunk_pairs[c];
                let idx = lp.index(r0);
                let tokens = SeqReducePtrs {
                    logp: lp.work.logp,
                    mask: 0,
                    weights: if weights_p != 0 { lp.work.weights } else { 0 },
                    ref_logp: if ref_logp_p != 0 { lp.work.ref_logp } else { 0 },
                };
                let layout = DeviceSeqLayout::Packed {
                    cu_seqlens: cu_p + ((seqs.start + c) * 4) as u64,
                    n_seqs: seqs.len(),
                };
                let raw_pairs = RawPairs::Explicit {
                    chosen: ch_p + (pairs.start * 4) as u64,
                    rejected: rj_p + (pairs.start * 4) as u64,
                    n_pairs: pairs.len(),
                };
                let ptrs = PreferenceLossPtrs {
                    ref_seq: if ref_seq_p != 0 { rl_p } else { 0 },
                    // WPO needs log sum p^2 per token, which the fused head does not produce yet.
                    seq_weights: 0,
                    pair_out: po_p + (pairs.start * PAIR_COLUMNS * 4) as u64,
                    metrics: m_p + (c * METRICS_LEN * 4) as u64,
                    grad_logp: lp.work.grad_logp,
                    workspace: lw_p,
                    status: status_p,
                };
                let side = pipe.side();
                // SAFETY: every pointer is a live buffer sized by the plan (chunk rows <= max_rows,
                // chunk sequences and pairs <= the maxima the loss workspace was sized for); the
                // slot is read on the side stream after its fill; the loss workspace and ref_local
                // are used on the side stream alone, chunk after chunk; the buffers outlive the
                // synchronization below.
                unsafe {
                    lp.logprobs_forward(
                        self,
                        side,
                        r0,
                        m,
                        &cfg.token,
                        false,
                        RowExtras::default(),
                        status_p,
                    )?;
                    if weights_p != 0 {
                        self.gather_f32(side, weights_p, lp.work.weights, idx, m, s.n_rows, status_p)?;
                    }
                    if ref_logp_p != 0 {
                        self.gather_f32(side, ref_logp_p, lp.work.ref_logp, idx, m, s.n_rows, status_p)?;
                    }
                    if ref_seq_p != 0 {
                        let order = order_p + (seqs.start * 8) as u64;
                        self.gather_f32(side, ref_seq_p, rl_p, order, seqs.len(), n_seqs, status_p)?;
                    }
                    self.preference_loss_raw_in_batch(
                        side, &tokens, m, layout, raw_pairs, loss_cfg, &ptrs, sub_batch,
                    )?;
                    self.scatter_f32(side, lp.work.logp, logp_p, idx, m, s.n_rows, status_p)?;
                    lp.logprobs_backward(self, side, r0, m, &cfg.token, false, status_p)
                }
            };
            // The chunk's weight GEMMs on the caller's stream, after its row pass and loss.
            let finish = |c: usize, slot: usize| -> Result<()> {
                let (rows, lp) = (&plan.rows.chunks[c], &loops[slot]);
                // SAFETY: as in `drain`; the pipeline waited for the slot's row pass.
                unsafe { lp.weight_grads(self, pipe.main(), rows, &gp, status_p) }
            };
            // SAFETY: the lane's context is current (side_lane bound it); the closures enqueue
            // on the stream they use into their chunk's slot.
            unsafe { pipe.run_chunks_then(n_chunks, slots, fill, drain, finish)? };
        }
        pass.finish(stream)?;
        let metric_rows = stream.clone_dtoh(&metrics)?;
        let pair_rows = stream.clone_dtoh(&pair_out)?;
        let combined = combine_metrics(&metric_rows, n_chunks);
        let mut pairs_out = vec![[0f32; PAIR_COLUMNS]; n_pairs];
        for (k, &i) in plan.pair_order.iter().enumerate() {
            pairs_out[i].copy_from_slice(&pair_rows[k * PAIR_COLUMNS..(k + 1) * PAIR_COLUMNS]);
        }
        let loss = PreferenceLossOutputs { loss: combined[0], metrics: combined, pairs: pairs_out };
        Ok((loss, LinearRun { n_chunks, workspace_bytes: pass.work_bytes() }))
    }
}
