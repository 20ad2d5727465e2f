//! The GRPO-family step from hidden states and the LM head: no `[N, V]` logits tensor and three
//! GEMMs per counted token (logits, `d_hidden`, `d_weight`), where the fused head's forward and
//! backward around a separate loss take four (the backward recomputes the logits).
//!
//! The batch is planned on the host into chunks of whole sequences, so everything a GRPO token
//! needs from its sequence (its length, the sequence ratio of GSPO, the off-policy mask, VESPO's
//! weight) is known inside its chunk; the batch-wide counts (sequences, counted tokens) are known
//! before any GEMM, so each chunk's loss, metrics and gradients are its exact shares of the
//! batch's. Per chunk: GEMM → log-probs (and entropy) → the GRPO kernels on the chunk's
//! sequences → d/dlogits in place → `d_weight += dLᵀ X` (f32, chunk order) and `d_hidden = dL · W`.
//! The row pass and loss of one chunk run on a second stream while the next chunk's GEMM runs.
use std::ops::Range;

use super::sum_chunk_rows;
use crate::error::{ensure, ensure_len, invalid, Result};
use crate::grpo::reference::need_inputs;
use crate::grpo::{
    check_lengths, grpo_workspace_len, GrpoBatchCounts, GrpoConfig, GrpoOutputs, GrpoPtrs, GRPO_METRICS_LEN,
};
use crate::linear_token_logprobs::{LinearConfig, LinearGradBuffers, LinearGradViews, LinearHead, LinearRun};
use crate::lm_head::chunk::{check_head, head_ptrs, zero_grads, ChunkPass, RowExtras};
use crate::lm_head::plan::{rows_for_budget, used_rows, RowPlan};
use crate::lm_head::plan_in_slots;
use crate::runtime::mem::{optional_ptr, DeviceBuffer, DevicePtr, DevicePtrMut, Stream, View, ViewMut};
use crate::runtime::pipeline::Pipeline;
use crate::runtime::Gpu;
use crate::seq_reduce::{DeviceSeqLayout, SeqLayout};
use crate::{LogitElement, TargetIndex};

/// Everything but the hidden states and the head that a GRPO step from hidden states reads.
/// Tokens are the hidden states' rows. A token counts when its mask is set (every token when
/// there is none) and its target is not `ignore_index`; only counted rows reach a GEMM.
pub struct LinearGrpoBatch<'a, I> {
    /// `[N]` next-token targets.
    pub targets: View<'a, I>,
    /// `[N]` u8 completion mask (TRL's `completion_mask`), or `None`.
    pub mask: Option<View<'a, u8>>,
    /// `[N]` rollout log-probs (`None`: on-policy, ratio 1).
    pub old_logp: Option<View<'a, f32>>,
    /// `[N]` inference-engine log-probs for the off-policy mask (`None`: `old_logp`).
    pub sampling_logp: Option<View<'a, f32>>,
    /// `[N]` reference log-probs (β > 0).
    pub ref_logp: Option<View<'a, f32>>,
    /// `[N]` vLLM importance-sampling weights.
    pub is_weights: Option<View<'a, f32>>,
    /// `[S]` advantages.
    pub advantages: View<'a, f32>,
    /// Sequences over the rows (host: the plan needs them).
    pub seqs: SeqLayout<'a>,
}

/// Caller-owned outputs of [`Gpu::linear_grpo_step_into`].
pub struct LinearGrpoViews<'a, T> {
    /// `[N]` policy log-probs (every element written: 0 on rows that do not count).
    pub logp: ViewMut<'a, f32>,
    /// `[N]` entropies, exactly when `compute_entropy` is set (0 on rows that do not count).
    pub entropy: Option<ViewMut<'a, f32>>,
    /// d_hidden, d_weight (f32), d_bias (overwritten).
    pub grads: LinearGradViews<'a, T>,
}

/// What [`Gpu::linear_grpo_step`] returns.
pub struct LinearGrpoOutputs<T> {
    /// Loss and metrics (exact over the batch), on the host.
    pub loss: GrpoOutputs,
    /// `[N]` policy log-probs (0 on rows that do not count).
    pub logp: DeviceBuffer<f32>,
    /// `[N]` entropies when `compute_entropy` is set.
    pub entropy: Option<DeviceBuffer<f32>>,
    /// d_hidden, d_weight (f32) and d_bias.
    pub grads: LinearGradBuffers<T>,
    /// What the chunk loop ran.
    pub run: LinearRun,
}

/// The chunks of a GRPO step: whole sequences, in order, of counted rows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SeqPlan {
    pub(crate) rows: RowPlan,
    /// Per chunk, the sequences it holds.
    pub(crate) chunk_seqs: Vec<Range<usize>>,
    /// Per chunk, its sequences' offsets (local S + 1) into the chunk's rows, concatenated; chunk
    /// c's start at `chunk_seqs[c].start + c`.
    pub(crate) local_cu: Vec<i32>,
    /// Counted rows in the batch.
    pub(crate) counted: usize,
    /// Largest per-chunk sequence count.
    pub(crate) max_seqs: usize,
}

/// Plans chunks of whole sequences of at most `max_rows` counted rows (`counts(r)`: row r counts);
/// `rows_for(rows)` turns a sequence too long for the budget into its error.
pub(crate) fn seq_chunks(
    targets: &[i64],
    counts: impl Fn(usize) -> bool,
    seqs: &SeqLayout,
    max_rows: usize,
    rows_for: impl Fn(usize) -> Result<usize>,
) -> Result<SeqPlan> {
    let mut plan = SeqPlan {
        rows: RowPlan { rows: Vec::new(), targets: Vec::new(), chunks: Vec::new(), max_rows: 0 },
        chunk_seqs: Vec::new(),
        local_cu: vec![0],
        counted: 0,
        max_seqs: 0,
    };
    let (mut row0, mut seq0) = (0usize, 0usize);
    for s in 0..seqs.n_seqs() {
        let rows: Vec<usize> = seqs.range(s).filter(|&r| counts(r)).collect();
        if rows.len() > max_rows {
            rows_for(rows.len())?;
            return Err(invalid(
                "workspace_bytes",
                format!("sequence {s} has {} counted rows, more than {max_rows}", rows.len()),
            ));
        }
        if plan.rows.rows.len() - row0 + rows.len() > max_rows {
            plan.rows.chunks.push(row0..plan.rows.rows.len());
            plan.chunk_seqs.push(seq0..s);
            (row0, seq0) = (plan.rows.rows.len(), s);
            plan.local_cu.push(0);
        }
        for r in rows {
            plan.rows.rows.push(r as i64);
            plan.rows.targets.push(targets[r]);
        }
        plan.local_cu.push((plan.rows.rows.len() - row0) as i32);
    }
    plan.rows.chunks.push(row0..plan.rows.rows.len());
    plan.chunk_seqs.push(seq0..seqs.n_seqs());
    plan.counted = plan.rows.rows.len();
    plan.rows.max_rows = plan.rows.chunks.iter().map(|c| c.len()).max().unwrap_or(0);
    plan.max_seqs = plan.chunk_seqs.iter().map(|c| c.len()).max().unwrap_or(0);
    Ok(plan)
}

impl Gpu {
    /// One GRPO-family step (every [`GrpoConfig`] but the top-entropy mask) from hidden states:
    /// loss and TRL's metrics, per-token log-probs (and entropies), `d_hidden`, `d_weight`,
    /// `d_bias`, in three GEMMs per counted token.
    ///
    /// One synchronization to read the targets and mask back for the plan, then the whole chunk
    /// loop on `stream`, then one at the end (metrics, status). Errors before any launch: shapes,
    /// lengths, targets out of range, a bad layout, the configuration (the top-entropy mask needs
    /// every entropy before any loss; VESPO with vLLM weights sums them over masked tokens too,
    /// which a plan of counted rows does not hold), a missing reference (β > 0) or entropy (a
    /// bonus needs `compute_entropy`), a workspace too small for the longest sequence (naming
    /// the minimum), no cuBLAS.
    pub fn linear_grpo_step<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        head: &LinearHead<'_, T>,
        batch: &LinearGrpoBatch<'_, I>,
        grpo: &GrpoConfig,
        cfg: &LinearConfig,
    ) -> Result<LinearGrpoOutputs<T>> {
        let n = head.shape.n_rows;
        let mut logp = stream.alloc_zeros::<f32>(n)?;
        let mut entropy = if cfg.token.compute_entropy { Some(stream.alloc_zeros::<f32>(n)?) } else { None };
        let mut grads = zero_grads(stream, head)?;
        let out = LinearGrpoViews {
            logp: logp.as_view_mut(),
            entropy: entropy.as_mut().map(|e| e.as_view_mut()),
            grads: grads.as_views(),
        };
        let (loss, run) = self.linear_grpo_impl(stream, head, batch, grpo, cfg, out, true)?;
        Ok(LinearGrpoOutputs { loss, logp, entropy, grads, run })
    }

    /// [`Gpu::linear_grpo_step`] into caller-owned outputs (a PyTorch caller's tensors); returns
    /// the loss and metrics (host) and what the loop ran.
    pub fn linear_grpo_step_into<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        head: &LinearHead<'_, T>,
        batch: &LinearGrpoBatch<'_, I>,
        grpo: &GrpoConfig,
        cfg: &LinearConfig,
        out: LinearGrpoViews<'_, T>,
    ) -> Result<(GrpoOutputs, LinearRun)> {
        self.linear_grpo_impl(stream, head, batch, grpo, cfg, out, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn linear_grpo_impl<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        head: &LinearHead<'_, T>,
        batch: &LinearGrpoBatch<'_, I>,
        grpo: &GrpoConfig,
        cfg: &LinearConfig,
        mut out: LinearGrpoViews<'_, T>,
        zeroed: bool,
    ) -> Result<(GrpoOutputs, LinearRun)> {
        grpo.validate()?;
        ensure(grpo.top_entropy_quantile >= 1.0, "top_entropy_quantile", || {
            "the top-entropy mask's threshold needs every token's entropy before any loss: use the \
             fused head's forward, grpo_loss and its backward"
                .into()
        })?;
        let vespo = matches!(grpo.loss_type, crate::grpo::GrpoLossType::Vespo { .. });
        ensure(!(vespo && batch.is_weights.is_some()), "is_weights", || {
            "VESPO sums the vLLM weights over masked tokens too, which the step's plan of counted \
             rows does not hold: use the fused head's forward, grpo_loss and its backward"
                .into()
        })?;
        let entropy_grad = grpo.entropy_coef != 0.0;
        ensure(!entropy_grad || cfg.token.compute_entropy, "compute_entropy", || {
            "the entropy bonus (entropy_coef != 0) needs compute_entropy".into()
        })?;
        need_inputs(grpo, batch.ref_logp.is_some(), cfg.token.compute_entropy)?;
        let host_targets = check_head(self, stream, head, &batch.targets, &cfg.token)?;
        let s = head.shape;
        let n_seqs = batch.seqs.n_seqs();
        batch.seqs.validate(s.n_rows)?;
        check_lengths(
            s.n_rows,
            n_seqs,
            batch.advantages.len(),
            &[
                ("mask", batch.mask.as_ref().map(View::len)),
                ("old_logp", batch.old_logp.as_ref().map(View::len)),
                ("sampling_logp", batch.sampling_logp.as_ref().map(View::len)),
                ("ref_logp", batch.ref_logp.as_ref().map(View::len)),
                ("is_weights", batch.is_weights.as_ref().map(View::len)),
            ],
        )?;
        ensure_len("logp", out.logp.len(), s.n_rows)?;
        ensure(out.entropy.is_some() == cfg.token.compute_entropy, "entropy", || {
            "give an entropy output exactly when compute_entropy is set".into()
        })?;
        if let Some(e) = &out.entropy {
            ensure_len("entropy", e.len(), s.n_rows)?;
        }
        used_rows(&host_targets, s.vocab, cfg.token.ignore_index)?;
        let host_mask = match &batch.mask {
            Some(m) => Some(stream.clone_dtoh(m)?),
            None => None,
        };
        let counts = |r: usize| {
            host_targets[r] != cfg.token.ignore_index && host_mask.as_ref().is_none_or(|m| m[r] != 0)
        };
        let plan_within = |budget: usize| {
            let max_rows = rows_for_budget(&s, T::DTYPE, budget, 1, "one row")?;
            seq_chunks(&host_targets, counts, &batch.seqs, max_rows, |rows| {
                rows_for_budget(&s, T::DTYPE, budget, rows, "the longest sequence")
            })
        };
        let (plan, slots) = plan_in_slots(cfg.workspace_bytes, plan_within, |p| p.rows.chunks.len())?;
        let n_chunks = plan.rows.chunks.len();
        let totals = GrpoBatchCounts { seqs: n_seqs, tokens: plan.counted };

        let mut pass = ChunkPass::with_slots(stream, &s, T::DTYPE, &plan.rows, slots)?;
        let cu_dev = stream.clone_htod(&plan.local_cu)?;
        // Per-token inputs of the chunk on the side stream, chunk after chunk (one set).
        let scratch_len = plan.rows.max_rows.max(1);
        let mut scratch = [
            stream.alloc_zeros::<f32>(scratch_len)?,
            stream.alloc_zeros::<f32>(scratch_len)?,
            stream.alloc_zeros::<f32>(scratch_len)?,
            stream.alloc_zeros::<f32>(scratch_len)?,
        ];
        let mut grpo_work = stream.alloc_zeros::<f32>(grpo_workspace_len(plan.max_seqs.max(1)))?;
        let mut metrics = stream.alloc_zeros::<f32>(n_chunks * GRPO_METRICS_LEN)?;
        out.grads.prepare(stream, head, zeroed)?;
        if !zeroed {
            stream.memset_zeros(&mut out.logp)?;
            if let Some(e) = out.entropy.as_mut() {
                stream.memset_zeros(e)?;
            }
        }
        {
            let mut guards = Vec::new();
            let head_p = head_ptrs(stream, head, &mut guards)?;
            // Each given per-token input with the scratch it is gathered into.
            let inputs = [&batch.old_logp, &batch.sampling_logp, &batch.ref_logp, &batch.is_weights];
            let mut gathered = [(0u64, 0u64); 4];
            for ((g, input), buf) in gathered.iter_mut().zip(inputs).zip(scratch.iter_mut()) {
                let src = optional_ptr(stream, input.as_ref(), &mut guards)?;
                if src != 0 {
                    let (dst, gd) = buf.device_ptr_mut(stream)?;
                    guards.push(gd);
                    *g = (src, dst);
                }
            }
            let adv_p = optional_ptr(stream, Some(&batch.advantages), &mut guards)?;
            let (cu_p, _g0) = cu_dev.device_ptr(stream)?;
            let (gw_p, _g1) = grpo_work.device_ptr_mut(stream)?;
            let (m_p, _g2) = metrics.device_ptr_mut(stream)?;
            let (logp_p, _g3) = out.logp.device_ptr_mut(stream)?;
            let ent_p = match out.entropy.as_mut() {
                Some(e) => Some(e.device_ptr_mut(stream)?),
                None => None,
            };
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
                let (rows, seqs, lp) = (&plan.rows.chunks[c], &plan.chunk_seqs[c], &loops[slot]);
                let (r0, m) = (rows.start, rows.len());
                let (idx, side) = (lp.index(r0), pipe.side());
                let want_entropy = ent_p.is_some();
                let ptrs = GrpoPtrs {
                    logp: lp.work.logp,
                    old_logp: gathered[0].1,
                    sampling_logp: gathered[1].1,
                    ref_logp: gathered[2].1,
                    mask: 0,
                    is_weights: gathered[3].1,
                    entropy: if want_entropy { lp.work.entropy } else { 0 },
                    advantages: adv_p + (seqs.start * 4) as u64,
                    metrics: m_p + (c * GRPO_METRICS_LEN * 4) as u64,
                    grad_logp: lp.work.grad_logp,
                    grad_entropy: if entropy_grad { lp.work.grad_entropy } else { 0 },
                    workspace: gw_p,
                    status: status_p,
                };
                let layout = DeviceSeqLayout::Packed {
                    cu_seqlens: cu_p + ((seqs.start + c) * 4) as u64,
                    n_seqs: seqs.len(),
                };
                // SAFETY: every pointer is a live buffer sized by the plan (chunk rows <= max_rows,
                // chunk sequences <= max_seqs); the slot is read on the side stream after its
                // fill; the scratch and the GRPO workspace are used on the side stream alone,
                // chunk after chunk; the buffers outlive the synchronization below.
                unsafe {
                    if m > 0 {
                        lp.logprobs_forward(
                            self,
                            side,
                            r0,
                            m,
                            &cfg.token,
                            want_entropy,
                            RowExtras::default(),
                            status_p,
                        )?;
                        for &(src, dst) in gathered.iter().filter(|g| g.0 != 0) {
                            self.gather_f32(side, src, dst, idx, m, s.n_rows, status_p)?;
                        }
                    }
                    self.grpo_loss_raw_in_batch(side, &ptrs, m, layout, grpo, Some(totals))?;
                    if m > 0 {
                        self.scatter_f32(side, lp.work.logp, logp_p, idx, m, s.n_rows, status_p)?;
                        if let Some((e, _)) = &ent_p {
                            self.scatter_f32(side, lp.work.entropy, *e, idx, m, s.n_rows, status_p)?;
                        }
                        lp.logprobs_backward(self, side, r0, m, &cfg.token, entropy_grad, status_p)?;
                    }
                }
                Ok(())
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
        // Every GRPO metric is a sum of per-chunk shares when the chunks divide by the batch's counts.
        let combined =
            sum_chunk_rows::<GRPO_METRICS_LEN>(&stream.clone_dtoh(&metrics)?, n_chunks).map(|x| x as f32);
        let loss = GrpoOutputs { loss: combined[0], metrics: combined };
        Ok((loss, LinearRun { n_chunks, workspace_bytes: pass.work_bytes() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whole sequences per chunk, empty ones kept in place, uncounted rows left out; a sequence
    /// longer than the budget is an error.
    #[test]
    fn seq_chunks_keep_sequences_whole() {
        // 4 sequences of 3 rows; row 0 of each ignored, sequence 2 masked out entirely.
        let t = [-100, 1, 1, -100, 2, 2, -100, 3, 3, -100, 0, 0];
        let mask = [1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1];
        let seqs = SeqLayout::Padded { n_seqs: 4, seq_len: 3 };
        let counts = |r: usize| t[r] != -100 && mask[r] != 0;
        let fail = |r: usize| Err(invalid("workspace_bytes", format!("{r}")));
        let p = seq_chunks(&t, counts, &seqs, 4, fail).unwrap();
        assert_eq!(p.rows.chunks, vec![0..4, 4..6]);
        assert_eq!(p.chunk_seqs, vec![0..3, 3..4]);
        assert_eq!(p.rows.rows, vec![1, 2, 4, 5, 10, 11]);
        assert_eq!(p.local_cu, vec![0, 2, 4, 4, 0, 2]);
        assert_eq!((p.counted, p.max_seqs, p.rows.max_rows), (6, 3, 4));
        assert!(seq_chunks(&t, counts, &seqs, 1, fail).is_err());
        // Nothing counted: one empty chunk holding every sequence (the loss still runs).
        let p = seq_chunks(&t, |_| false, &seqs, 4, fail).unwrap();
        assert_eq!((p.rows.chunks.len(), p.chunk_seqs.len()), (1, 1));
        assert_eq!((p.rows.chunks[0].clone(), p.chunk_seqs[0].clone()), (0..0, 0..4));
        assert_eq!(p.local_cu, vec![0, 0, 0, 0, 0]);
    }
}
