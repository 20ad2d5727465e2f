//! The fused LM head over one vocabulary shard (a tensor-parallel rank's `weight[v0 .. v0 + Vs]`):
//! the fused head's chunk loop (`crate::lm_head::chunk`) with the vocabulary-parallel kernels in place of the token
//! log-probs ones. The forward writes the shard's partial statistics (all-gathered by the caller,
//! then [`Gpu::vocab_parallel_finalize`]); the backward, from the global lse, writes the shard's
//! `d_weight` (and `d_bias`) and its partial `d_hidden`, which the caller all-reduces (sum) over
//! the group.
use super::{VocabShard, VocabShardPartialsPtrs};
use crate::dtype::{IndexType, LogitElement, TargetIndex};
use crate::error::ensure_len;
use crate::error::{ensure, Result};
use crate::lm_head::chunk::{check_head, head_ptrs, ChunkPass, Loop};
use crate::lm_head::plan::plan_token_rows;
use crate::lm_head::{LinearConfig, LinearGradViews, LinearHead, LinearRun};
use crate::params::{SOFTMAX_STATS, VP_STATS};
use crate::runtime::mem::{optional_ptr, DevicePtrMut, Stream, View, ViewMut};
use crate::runtime::pipeline::Pipeline;
use crate::runtime::Gpu;
use crate::token_logprobs::{stats_len, EntropyGrad, TokenLogprobsBwdPtrs, TokenLogprobsConfig};
use crate::LogitsLayout;

/// The head's shape against the shard: its weight holds the shard's rows.
fn check_shard<T>(head: &LinearHead<'_, T>, shard: &VocabShard) -> Result<()> {
    shard.validate()?;
    ensure(head.shape.vocab == shard.len, "weight", || {
        format!(
            "holds {} vocabulary rows, the shard {} (pass the shard's rows of the LM head)",
            head.shape.vocab, shard.len
        )
    })
}

impl Loop {
    /// The shard's partials of chunk rows `r0 .. r0 + m` (logits in the workspace) into
    /// `work.partials`.
    ///
    /// # Safety
    /// The loop's pointers are live; `r0 + m` within the plan.
    #[allow(clippy::too_many_arguments)]
    unsafe fn shard_partials(
        &self,
        gpu: &Gpu,
        stream: u64,
        r0: usize,
        m: usize,
        shard: VocabShard,
        token: &TokenLogprobsConfig,
        status: u64,
    ) -> Result<()> {
        let ptrs = VocabShardPartialsPtrs {
            logits: self.work.logits,
            targets: self.targets + (r0 * 8) as u64,
            partials: self.work.partials,
            status,
        };
        let layout = LogitsLayout::contiguous(m, shard.len);
        // SAFETY: forwarded to the caller.
        unsafe {
            gpu.vocab_shard_partials_raw(stream, self.head.dtype, IndexType::I64, layout, shard, &ptrs, token)
        }
    }

    /// d/dlogits of the shard's columns in place in the workspace, from the gathered global
    /// softmax statistics `work.stats`, `work.grad_logp` (and `work.entropy`, `work.grad_entropy`).
    ///
    /// # Safety
    /// As [`Loop::shard_partials`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn shard_backward(
        &self,
        gpu: &Gpu,
        stream: u64,
        r0: usize,
        m: usize,
        shard: VocabShard,
        token: &TokenLogprobsConfig,
        entropy_grad: bool,
        status: u64,
    ) -> Result<()> {
        let layout = LogitsLayout::contiguous(m, shard.len);
        let ptrs = TokenLogprobsBwdPtrs {
            logits: self.work.logits,
            targets: self.targets + (r0 * 8) as u64,
            stats: self.work.stats,
            grad_logp: self.work.grad_logp,
            grad_logits: self.work.logits,
            status,
            entropy: if entropy_grad { self.work.entropy } else { 0 },
            grad_entropy: if entropy_grad { self.work.grad_entropy } else { 0 },
        };
        // SAFETY: forwarded to the caller.
        unsafe {
            gpu.vocab_shard_backward_raw(
                stream,
                self.head.dtype,
                IndexType::I64,
                layout,
                shard.len,
                shard,
                &ptrs,
                token,
            )
        }
    }
}

impl Gpu {
    /// A vocabulary shard's partial statistics (`[N, VP_STATS]` f32 into `partials`) of
    /// `hidden · weight_shardᵀ (+ bias_shard)`, without the shard's `[N, Vs]` logits: the chunk loop
    /// of [`Gpu::linear_token_logprobs_forward`] (one GEMM per chunk), with the partials kernel on each
    /// chunk's logits. `head.weight` is the shard's `[shard.len, H]` rows, `head.bias` its slice.
    /// Ignored rows get zeros. Reads the targets back once to plan (checking them against
    /// `[0, shard.vocab)`) and synchronizes once at the end.
    pub fn linear_shard_partials_into<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        head: &LinearHead<'_, T>,
        shard: VocabShard,
        targets: &View<'_, I>,
        mut partials: ViewMut<'_, f32>,
        cfg: &LinearConfig,
    ) -> Result<LinearRun> {
        check_shard(head, &shard)?;
        let host_targets = check_head(self, stream, head, targets, &cfg.token)?;
        let s = head.shape;
        ensure_len("partials", partials.len(), s.n_rows * VP_STATS)?;
        let (plan, slots) = plan_token_rows(&s, T::DTYPE, &host_targets, shard.vocab, cfg)?;
        let mut pass = ChunkPass::with_slots(stream, &s, T::DTYPE, &plan, slots)?;
        // Ignored rows are never scattered to: they read 0, as the kernel writes them.
        stream.memset_zeros(&mut partials)?;
        {
            let mut guards = Vec::new();
            let head_p = head_ptrs(stream, head, &mut guards)?;
            let (partials_p, _g3) = partials.device_ptr_mut(stream)?;
            let mut pass_guards = Vec::new();
            let (loops, status_p) = pass.bind_slots(stream, head_p, &mut pass_guards)?;
            let raw = stream.raw();
            // SAFETY: `raw` is the caller's live stream of this backend.
            let lane = unsafe { self.side_lane(raw, slots == 2)? };
            let pipe = Pipeline::new(raw, lane.as_deref());
            let fill = |c: usize, slot: usize| -> Result<()> {
                let (chunk, lp) = (&plan.chunks[c], &loops[slot]);
                // SAFETY: every pointer is a live buffer sized by the plan; the pipeline fills a
                // slot on the caller's stream only after its previous drain.
                unsafe { lp.fill(self, pipe.main(), chunk, status_p) }
            };
            let drain = |c: usize, slot: usize| -> Result<()> {
                let (chunk, lp) = (&plan.chunks[c], &loops[slot]);
                let (r0, m) = (chunk.start, chunk.len());
                let side = pipe.side();
                // SAFETY: as above; the side stream reads the slot after its fill.
                unsafe {
                    lp.shard_partials(self, side, r0, m, shard, &cfg.token, status_p)?;
                    self.scatter_rows_f32(
                        side,
                        lp.work.partials,
                        partials_p,
                        lp.index(r0),
                        m,
                        VP_STATS,
                        s.n_rows,
                        status_p,
                    )
                }
            };
            // SAFETY: the lane's context is current (side_lane bound it); the closures enqueue
            // on the stream they use into their chunk's slot.
            unsafe { pipe.run_chunks(plan.chunks.len(), slots, fill, drain)? };
        }
        pass.finish(stream)?;
        Ok(LinearRun { n_chunks: plan.chunks.len(), workspace_bytes: pass.work_bytes() })
    }

    /// The backward of a vocabulary shard of the fused LM head, from the global softmax
    /// statistics `stats` (`[n_rows, SOFTMAX_STATS]`, and the forward's `entropy` with its
    /// gradient) the finalize gave: chunks recompute the shard's
    /// logits (one GEMM), write d/dlogits in place, then `d_weight_shard += dLᵀ X` (f32, chunk
    /// order) and `d_hidden = dL · W_shard`, this rank's **partial** `d_hidden`: the caller sums it
    /// over the tensor-parallel group (an all-reduce, as Megatron does for a column-parallel
    /// layer's input). `grads` are overwritten. Synchronizes once to plan and once at the end.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_shard_backward_into<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        head: &LinearHead<'_, T>,
        shard: VocabShard,
        targets: &View<'_, I>,
        stats: &View<'_, f32>,
        grad_logp: &View<'_, f32>,
        entropy: Option<EntropyGrad<'_, '_>>,
        mut grads: LinearGradViews<'_, T>,
        cfg: &LinearConfig,
    ) -> Result<LinearRun> {
        check_shard(head, &shard)?;
        let host_targets = check_head(self, stream, head, targets, &cfg.token)?;
        let s = head.shape;
        ensure_len("stats", stats.len(), stats_len(s.n_rows)?)?;
        ensure_len("grad_logp", grad_logp.len(), s.n_rows)?;
        if let Some(e) = &entropy {
            ensure_len("entropy", e.entropy.len(), s.n_rows)?;
            ensure_len("grad_entropy", e.grad_entropy.len(), s.n_rows)?;
        }
        let (plan, slots) = plan_token_rows(&s, T::DTYPE, &host_targets, shard.vocab, cfg)?;
        // Checked and planned: only now touch the caller's outputs.
        grads.prepare(stream, head, false)?;
        let mut pass = ChunkPass::with_slots(stream, &s, T::DTYPE, &plan, slots)?;
        {
            let mut guards = Vec::new();
            let head_p = head_ptrs(stream, head, &mut guards)?;
            let stats_p = optional_ptr(stream, Some(stats), &mut guards)?;
            let gl = optional_ptr(stream, Some(grad_logp), &mut guards)?;
            let ent = optional_ptr(stream, entropy.as_ref().map(|e| e.entropy), &mut guards)?;
            let ge = optional_ptr(stream, entropy.as_ref().map(|e| e.grad_entropy), &mut guards)?;
            let mut grad_guards = Vec::new();
            let gp = grads.ptrs(stream, &mut grad_guards)?;
            let mut pass_guards = Vec::new();
            let (loops, status_p) = pass.bind_slots(stream, head_p, &mut pass_guards)?;
            let raw = stream.raw();
            // SAFETY: `raw` is the caller's live stream of this backend.
            let lane = unsafe { self.side_lane(raw, slots == 2)? };
            let pipe = Pipeline::new(raw, lane.as_deref());
            let fill = |c: usize, slot: usize| -> Result<()> {
                let (chunk, lp) = (&plan.chunks[c], &loops[slot]);
                // SAFETY: every pointer is a live buffer sized by the plan; the pipeline fills a
                // slot on the caller's stream after its previous chunk's weight GEMMs there.
                unsafe { lp.fill(self, pipe.main(), chunk, status_p) }
            };
            let drain = |c: usize, slot: usize| -> Result<()> {
                let (chunk, lp) = (&plan.chunks[c], &loops[slot]);
                let (r0, m) = (chunk.start, chunk.len());
                let (idx, side) = (lp.index(r0), pipe.side());
                // SAFETY: as above; the side stream reads the slot after its fill.
                unsafe {
                    self.gather_rows_f32(
                        side,
                        stats_p,
                        lp.work.stats,
                        idx,
                        m,
                        SOFTMAX_STATS,
                        s.n_rows,
                        status_p,
                    )?;
                    self.gather_f32(side, gl, lp.work.grad_logp, idx, m, s.n_rows, status_p)?;
                    if ge != 0 {
                        self.gather_f32(side, ent, lp.work.entropy, idx, m, s.n_rows, status_p)?;
                        self.gather_f32(side, ge, lp.work.grad_entropy, idx, m, s.n_rows, status_p)?;
                    }
                    lp.shard_backward(self, side, r0, m, shard, &cfg.token, ge != 0, status_p)
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
