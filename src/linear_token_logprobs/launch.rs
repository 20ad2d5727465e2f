//! The chunk loop of the fused LM head on the device: for each chunk of used rows, gather its
//! hidden states, one GEMM into the chunk's logits (`[m, V]` in the workspace, never `[N, V]`),
//! the token log-probs kernels on it, and for the backward d/dlogits in place followed by two
//! GEMMs (`d_weight += dLᵀ X` in f32, in chunk order; `d_X = dL · W`, scattered to `d_hidden`).
use crate::dtype::{LogitElement, TargetIndex};
use crate::error::ensure_len;
use crate::error::{ensure, Result};
use crate::lm_head::chunk::{check_head, head_ptrs, zero_grads, ChunkPass, RowExtras, RowMove};
use crate::lm_head::plan::plan_token_rows;
use crate::lm_head::{
    LinearConfig, LinearForwardOutputs, LinearForwardViews, LinearGradBuffers, LinearGradViews, LinearHead,
    LinearRun,
};
use crate::runtime::mem::{optional_ptr, optional_ptr_mut, DeviceBuffer, DevicePtrMut, Stream, View};
use crate::runtime::pipeline::Pipeline;
use crate::runtime::Gpu;
use crate::token_logprobs::{topk_len, validate_top_k};

impl Gpu {
    /// Token log-probs (and entropy) of `hidden · weightᵀ (+ bias)` without an `[N, V]` logits
    /// tensor: chunks of the used rows (targets other than `ignore_index`; the others are never
    /// read and give 0) run GEMM → log-probs kernel in a workspace of at most
    /// `cfg.workspace_bytes`. Reads the targets back once to plan (checking them on the host:
    /// [`crate::Error::TargetOutOfRange`]), then enqueues the loop with no synchronization inside
    /// it, and synchronizes once at the end for the status word.
    ///
    /// Logits are the GEMM's output rounded to `T` (f32 accumulation), as `hidden @ W.T` gives in
    /// PyTorch; pass f32 hidden states and weight for an f32 LM head.
    pub fn linear_token_logprobs_forward<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        head: &LinearHead<'_, T>,
        targets: &View<'_, I>,
        cfg: &LinearConfig,
    ) -> Result<LinearForwardOutputs> {
        let n = head.shape.n_rows;
        let mut logp = stream.alloc_zeros::<f32>(n)?;
        let mut lse = stream.alloc_zeros::<f32>(n)?;
        let mut entropy = if cfg.token.compute_entropy { Some(stream.alloc_zeros::<f32>(n)?) } else { None };
        let out = LinearForwardViews::new(
            logp.as_view_mut(),
            lse.as_view_mut(),
            entropy.as_mut().map(DeviceBuffer::as_view_mut),
        );
        let run = self.linear_token_logprobs_forward_into(stream, head, targets, out, cfg)?;
        Ok(LinearForwardOutputs {
            logp,
            lse,
            entropy,
            n_chunks: run.n_chunks,
            workspace_bytes: run.workspace_bytes,
        })
    }

    /// [`Gpu::linear_token_logprobs_forward`] into caller-owned outputs (a PyTorch caller's tensors):
    /// the same loop, writing every element of `out`. The optional outputs (`log Σ p²`, mean
    /// logits, `is_top1`: TRL's fused-head fields) come from the same pass over each chunk's
    /// logits; the top-k from one more kernel over the chunk's logits while they are in the
    /// workspace (no extra GEMM).
    pub fn linear_token_logprobs_forward_into<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        head: &LinearHead<'_, T>,
        targets: &View<'_, I>,
        mut out: LinearForwardViews<'_>,
        cfg: &LinearConfig,
    ) -> Result<LinearRun> {
        let host_targets = check_head(self, stream, head, targets, &cfg.token)?;
        let s = head.shape;
        let extras = check_forward_outputs(&out, &s, &cfg.token)?;
        let (plan, slots) = plan_token_rows(&s, T::DTYPE, &host_targets, s.vocab, cfg)?;
        let mut pass = ChunkPass::with_slots(stream, &s, T::DTYPE, &plan, slots)?;
        // The top-k of a chunk's rows, before they are scattered (outside the workspace budget:
        // k * 12 bytes per row).
        let k = out.topk.as_ref().map_or(0, |t| t.k);
        let mut topk_work = if k > 0 {
            let n = topk_len(plan.max_rows.max(1), k)?;
            Some((stream.alloc_zeros::<f32>(n)?, stream.alloc_zeros::<i64>(n)?))
        } else {
            None
        };
        // Ignored rows are never scattered to: they read 0 (top-k ids -1).
        stream.memset_zeros(&mut out.logp)?;
        stream.memset_zeros(&mut out.lse)?;
        for v in
            [out.entropy.as_mut(), out.log_sum_sq.as_mut(), out.mean_logits.as_mut()].into_iter().flatten()
        {
            stream.memset_zeros(v)?;
        }
        if let Some(v) = out.is_top1.as_mut() {
            stream.memset_zeros(v)?;
        }
        if let Some(t) = out.topk.as_mut() {
            stream.memset_zeros(&mut t.logp)?;
            stream.memset_bytes(&mut t.ids, 0xff)?;
        }
        {
            let mut guards = Vec::new();
            let head_p = head_ptrs(stream, head, &mut guards)?;
            let (logp_p, _g3) = out.logp.device_ptr_mut(stream)?;
            let (lse_p, _g4) = out.lse.device_ptr_mut(stream)?;
            let ent = optional_ptr_mut(stream, out.entropy.as_mut())?;
            let lss = optional_ptr_mut(stream, out.log_sum_sq.as_mut())?;
            let mean = optional_ptr_mut(stream, out.mean_logits.as_mut())?;
            let top1 = optional_ptr_mut(stream, out.is_top1.as_mut())?;
            let topk_out = match out.topk.as_mut() {
                Some(t) => Some((t.logp.device_ptr_mut(stream)?, t.ids.device_ptr_mut(stream)?)),
                None => None,
            };
            let topk_tmp = match topk_work.as_mut() {
                Some((l, i)) => Some((l.device_ptr_mut(stream)?, i.device_ptr_mut(stream)?)),
                None => None,
            };
            let mut pass_guards = Vec::new();
            let (loops, status_p) = pass.bind_slots(stream, head_p, &mut pass_guards)?;
            let raw = stream.raw();
            // SAFETY: `raw` is the caller's live stream of this backend.
            let lane = unsafe { self.side_lane(raw, slots == 2)? };
            let pipe = Pipeline::new(raw, lane.as_deref());
            let side = pipe.side();
            let scatter = |elem_bytes: usize, src: u64, dst: u64, idx: u64, m: usize, width: usize| {
                let mv = RowMove {
                    scatter: true,
                    elem_bytes,
                    src,
                    dst,
                    index: idx,
                    n_rows: m,
                    width,
                    bound: s.n_rows,
                };
                // SAFETY: src holds m rows of `width` elements in the workspace, dst N rows of
                // them (checked above); ordered on the side stream after the chunk's fill.
                unsafe { self.move_rows(side, &mv, status_p) }
            };
            let fill = |c: usize, slot: usize| -> Result<()> {
                let (chunk, lp) = (&plan.chunks[c], &loops[slot]);
                // SAFETY: every pointer is a live buffer sized by the plan; the pipeline fills a
                // slot on the caller's stream only after its previous drain.
                unsafe { lp.fill(self, pipe.main(), chunk, status_p) }
            };
            let drain = |c: usize, slot: usize| -> Result<()> {
                let (chunk, lp) = (&plan.chunks[c], &loops[slot]);
                let (r0, m) = (chunk.start, chunk.len());
                let idx = lp.index(r0);
                // SAFETY: as above; the slot (and the top-k scratch, chunk after chunk) is read
                // on the side stream after its fill.
                unsafe {
                    lp.logprobs_forward(self, side, r0, m, &cfg.token, ent.is_some(), extras, status_p)?;
                    if let (Some(((tl, _), (ti, _))), Some(((ol, _), (oi, _)))) = (&topk_tmp, &topk_out) {
                        lp.logprobs_topk(self, side, r0, m, k, *tl, *ti, &cfg.token, status_p)?;
                        scatter(4, *tl, *ol, idx, m, k)?;
                        scatter(8, *ti, *oi, idx, m, k)?;
                    }
                }
                scatter(4, lp.work.logp, logp_p, idx, m, 1)?;
                scatter(4, lp.work.lse, lse_p, idx, m, 1)?;
                if let Some((p, _)) = &ent {
                    scatter(4, lp.work.entropy, *p, idx, m, 1)?;
                }
                if let Some((p, _)) = &lss {
                    scatter(4, lp.work.extra_log_sum_sq(), *p, idx, m, 1)?;
                }
                if let Some((p, _)) = &mean {
                    scatter(4, lp.work.extra_mean_logits(), *p, idx, m, 1)?;
                }
                if let Some((p, _)) = &top1 {
                    scatter(1, lp.work.extra_is_top1(), *p, idx, m, 1)?;
                }
                Ok(())
            };
            // SAFETY: the lane's context is current (side_lane bound it); the closures enqueue
            // on the stream they use into their chunk's slot.
            unsafe { pipe.run_chunks(plan.chunks.len(), slots, fill, drain)? };
        }
        pass.finish(stream)?;
        Ok(LinearRun { n_chunks: plan.chunks.len(), workspace_bytes: pass.work_bytes() })
    }

    /// The backward of [`Gpu::linear_token_logprobs_forward`] for any per-token loss (the caller gives
    /// dL/dlogp and optionally dL/dH, `[N]` f32): chunks of used rows recompute their logits
    /// (GEMM), run the log-probs backward in place, then `d_weight += dLᵀ X` (f32, chunk order:
    /// deterministic) and `d_hidden = dL · W`, i.e. three GEMMs per token. Synchronizes once to
    /// plan and once at the end.
    pub fn linear_token_logprobs_backward<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        head: &LinearHead<'_, T>,
        targets: &View<'_, I>,
        grad_logp: &View<'_, f32>,
        grad_entropy: Option<&View<'_, f32>>,
        cfg: &LinearConfig,
    ) -> Result<LinearGradBuffers<T>> {
        let mut grads = zero_grads(stream, head)?;
        self.linear_backward_impl(
            stream,
            head,
            targets,
            grad_logp,
            grad_entropy,
            grads.as_views(),
            true,
            cfg,
        )?;
        Ok(grads)
    }

    /// [`Gpu::linear_token_logprobs_backward`] into caller-owned gradients (overwritten).
    #[allow(clippy::too_many_arguments)]
    pub fn linear_token_logprobs_backward_into<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        head: &LinearHead<'_, T>,
        targets: &View<'_, I>,
        grad_logp: &View<'_, f32>,
        grad_entropy: Option<&View<'_, f32>>,
        grads: LinearGradViews<'_, T>,
        cfg: &LinearConfig,
    ) -> Result<LinearRun> {
        self.linear_backward_impl(stream, head, targets, grad_logp, grad_entropy, grads, false, cfg)
    }

    #[allow(clippy::too_many_arguments)]
    fn linear_backward_impl<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        head: &LinearHead<'_, T>,
        targets: &View<'_, I>,
        grad_logp: &View<'_, f32>,
        grad_entropy: Option<&View<'_, f32>>,
        mut grads: LinearGradViews<'_, T>,
        zeroed: bool,
        cfg: &LinearConfig,
    ) -> Result<LinearRun> {
        let host_targets = check_head(self, stream, head, targets, &cfg.token)?;
        let s = head.shape;
        ensure_len("grad_logp", grad_logp.len(), s.n_rows)?;
        if let Some(g) = grad_entropy {
            ensure_len("grad_entropy", g.len(), s.n_rows)?;
        }
        let (plan, slots) = plan_token_rows(&s, T::DTYPE, &host_targets, s.vocab, cfg)?;
        // Checked and planned: only now touch the caller's outputs.
        grads.prepare(stream, head, zeroed)?;
        let mut pass = ChunkPass::with_slots(stream, &s, T::DTYPE, &plan, slots)?;
        {
            let mut guards = Vec::new();
            let head_p = head_ptrs(stream, head, &mut guards)?;
            let gl = optional_ptr(stream, Some(grad_logp), &mut guards)?;
            let ge = optional_ptr(stream, grad_entropy, &mut guards)?;
            let mut grad_guards = Vec::new();
            let gp = grads.ptrs(stream, &mut grad_guards)?;
            let mut pass_guards = Vec::new();
            let (loops, status_p) = pass.bind_slots(stream, head_p, &mut pass_guards)?;
            let raw = stream.raw();
            // SAFETY: `raw` is the caller's live stream of this backend.
            let lane = unsafe { self.side_lane(raw, slots == 2)? };
            let pipe = Pipeline::new(raw, lane.as_deref());
            let side = pipe.side();
            let fill = |c: usize, slot: usize| -> Result<()> {
                let (chunk, lp) = (&plan.chunks[c], &loops[slot]);
                // SAFETY: every pointer is a live buffer sized by the plan; the pipeline fills a
                // slot on the caller's stream after its previous chunk's weight GEMMs there.
                unsafe { lp.fill(self, pipe.main(), chunk, status_p) }
            };
            let drain = |c: usize, slot: usize| -> Result<()> {
                let (chunk, lp) = (&plan.chunks[c], &loops[slot]);
                let (r0, m) = (chunk.start, chunk.len());
                let idx = lp.index(r0);
                // SAFETY: as above; the slot is read on the side stream after its fill.
                unsafe {
                    lp.logprobs_forward(
                        self,
                        side,
                        r0,
                        m,
                        &cfg.token,
                        ge != 0,
                        RowExtras::default(),
                        status_p,
                    )?;
                    self.gather_f32(side, gl, lp.work.grad_logp, idx, m, s.n_rows, status_p)?;
                    if ge != 0 {
                        self.gather_f32(side, ge, lp.work.grad_entropy, idx, m, s.n_rows, status_p)?;
                    }
                    lp.logprobs_backward(self, side, r0, m, &cfg.token, ge != 0, status_p)
                }
            };
            // The chunk's weight GEMMs on the caller's stream, after its row pass.
            let finish = |c: usize, slot: usize| -> Result<()> {
                let (chunk, lp) = (&plan.chunks[c], &loops[slot]);
                // SAFETY: as above; the pipeline waited for the slot's row pass.
                unsafe { lp.weight_grads(self, pipe.main(), chunk, &gp, status_p) }
            };
            // SAFETY: as in the forward.
            unsafe { pipe.run_chunks_then(plan.chunks.len(), slots, fill, drain, finish)? };
        }
        pass.finish(stream)?;
        Ok(LinearRun { n_chunks: plan.chunks.len(), workspace_bytes: pass.work_bytes() })
    }
}

/// Checks the forward's outputs against the shape and `token` (the entropy exactly with
/// `compute_entropy`, `log Σ p²` only with it, lengths, k); returns the extras asked for.
pub(crate) fn check_forward_outputs(
    out: &LinearForwardViews<'_>,
    s: &crate::lm_head::LinearShape,
    token: &crate::TokenLogprobsConfig,
) -> Result<RowExtras> {
    ensure_len("logp", out.logp.len(), s.n_rows)?;
    ensure_len("lse", out.lse.len(), s.n_rows)?;
    ensure(out.entropy.is_some() == token.compute_entropy, "entropy", || {
        "give an entropy output exactly when compute_entropy is set".into()
    })?;
    ensure(out.log_sum_sq.is_none() || token.compute_entropy, "log_sum_sq", || {
        "is computed in the entropy's pass: set compute_entropy too".into()
    })?;
    for (name, len) in [
        ("entropy", out.entropy.as_ref().map(|e| e.len())),
        ("log_sum_sq", out.log_sum_sq.as_ref().map(|e| e.len())),
        ("mean_logits", out.mean_logits.as_ref().map(|e| e.len())),
        ("is_top1", out.is_top1.as_ref().map(|e| e.len())),
    ] {
        if let Some(len) = len {
            ensure_len(name, len, s.n_rows)?;
        }
    }
    if let Some(t) = &out.topk {
        validate_top_k(t.k, s.vocab)?;
        ensure_len("topk_logp", t.logp.len(), topk_len(s.n_rows, t.k)?)?;
        ensure_len("topk_ids", t.ids.len(), topk_len(s.n_rows, t.k)?)?;
    }
    Ok(RowExtras {
        log_sum_sq: out.log_sum_sq.is_some(),
        mean_logits: out.mean_logits.is_some(),
        is_top1: out.is_top1.is_some(),
    })
}
