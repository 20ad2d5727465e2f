//! The stream-ordered fused LM head: the same chunk loop with nothing on the host but the
//! enqueueing. Every row is projected in order (ignored rows too: their row kernels write zeros
//! without reading the logits), so the targets are never read back to plan; the workspace and the
//! status word are the caller's (a PyTorch caller's from its caching allocator); nothing
//! synchronizes, so the call can be captured in a CUDA graph. Chunks read the caller's hidden rows
//! and write its outputs in place (no gathers or scatters), and the backward's `d_hidden` rows
//! come straight out of the last GEMM.
//!
//! The host-planned loop ([`crate::Gpu::linear_token_logprobs_forward_into`]) skips ignored rows'
//! GEMMs instead, at the price of one synchronization: better when many rows are ignored and the
//! caller cannot drop them itself.
use crate::dtype::{DType, LogitElement, TargetIndex};
use crate::error::{ensure, ensure_len, invalid, Result};
use crate::lm_head::chunk::{check_head_shape, head_ptrs, ChunkWork, GradPtrs, Loop, RowOuts};
use crate::lm_head::head_streams;
use crate::lm_head::{LinearForwardViews, LinearGradViews, LinearHead, LinearRun, LinearShape};
use crate::runtime::mem::{optional_ptr, optional_ptr_mut, DevicePtrMut, Guard, Stream, View, ViewMut};
use crate::runtime::pipeline::Pipeline;
use crate::runtime::Gpu;
use crate::TokenLogprobsConfig;

use super::launch::check_forward_outputs;

/// Alignment the workspace of a stream-ordered call must have (PyTorch's allocations have it).
pub const ORDERED_WORKSPACE_ALIGN: usize = 16;

/// Caller-owned device memory of a stream-ordered fused-head call.
pub struct OrderedWorkspace<'a> {
    /// The chunk workspace, [`ORDERED_WORKSPACE_ALIGN`]-byte aligned; its whole length is the
    /// budget the chunk size follows from ([`ordered_workspace_bytes`] gives what a chunk of a
    /// given number of rows needs).
    pub workspace: ViewMut<'a, u8>,
    /// A u32 status word (zero it first) the kernels OR their bits into (a target outside
    /// `[0, V)` and not `ignore_index`: that row's outputs are NaN); the caller reads it when it
    /// chooses (`crate::Error` bits as `prefk_check_status` decodes them). `None`: not reported.
    pub status: Option<ViewMut<'a, u32>>,
}

/// Bytes of an [`OrderedWorkspace`] for chunks of `rows` rows (`None` on overflow). A chunk
/// needs its logits `[rows, V]` in `dtype` and its per-row scratch (no gathered hidden rows).
/// When `rows` covers `shape.n_rows` that is one chunk's worth; otherwise two (the loop fills one
/// chunk's logits with a GEMM while a second stream runs the row pass over the other's, on CUDA):
/// a workspace of this size gives chunks of at least `rows` rows (more where the regions'
/// 16-byte alignment leaves room, and one chunk of every row when two slots' bytes hold them all).
/// The least any call accepts is one chunk of one row (the size for a one-row shape); below two
/// of them, chunks of one row run on the caller's stream alone.
pub fn ordered_workspace_bytes(shape: &LinearShape, dtype: DType, rows: usize) -> Option<usize> {
    let one = ChunkWork::bytes(shape, dtype, rows.min(shape.n_rows), false)?;
    if rows >= shape.n_rows {
        Some(one)
    } else {
        one.checked_mul(2)
    }
}

/// How a stream-ordered loop uses `bytes` of workspace: every row in one chunk if it fits; else
/// two slots (pipelined, unless `streams` is 1) of the most rows each that fit; else, below two
/// slots of one row, one slot of the most rows that fit. Returns (rows per chunk, slots).
fn ordered_plan(shape: &LinearShape, dtype: DType, bytes: usize, streams: usize) -> Result<(usize, usize)> {
    let slot = |m: usize| ChunkWork::bytes(shape, dtype, m, false);
    let n = shape.n_rows.max(1);
    // The most rows (up to N) whose slot fits `budget` (bytes grow with m).
    let rows_within = |budget: usize| -> Result<usize> {
        let fits = |m: usize| slot(m).is_some_and(|b| b <= budget);
        if !fits(1) {
            return Err(invalid(
                "workspace",
                format!(
                    "{bytes} bytes cannot hold one row of V = {} in {}: the minimum is {} bytes",
                    shape.vocab,
                    dtype.name(),
                    slot(1).unwrap_or(usize::MAX)
                ),
            ));
        }
        let (mut lo, mut hi) = (1usize, n);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Ok(lo)
    };
    crate::lm_head::plan_in_slots_for(bytes, streams, rows_within, |&m| n.div_ceil(m))
}

/// A stream-ordered loop's bound workspace: the slots' regions, rows per chunk, the status word.
struct BoundWorkspace {
    slots: Vec<ChunkWork>,
    rows: usize,
    status: u64,
    bytes: usize,
}

/// The workspace and status pointers (guards kept in `guards`), carved into the loop's slots.
fn bind_workspace<'s>(
    stream: &'s Stream,
    ws: &'s mut OrderedWorkspace<'_>,
    shape: &LinearShape,
    dtype: DType,
    guards: &mut Vec<Guard<'s>>,
) -> Result<BoundWorkspace> {
    let (rows, n_slots) = ordered_plan(shape, dtype, ws.workspace.len(), head_streams()?)?;
    if let Some(st) = &ws.status {
        ensure_len("status", st.len(), 1)?;
    }
    let (wp, g) = ws.workspace.device_ptr_mut(stream)?;
    guards.push(g);
    ensure(wp % ORDERED_WORKSPACE_ALIGN as u64 == 0, "workspace", || {
        format!("must be {ORDERED_WORKSPACE_ALIGN}-byte aligned, got address {wp:#x}")
    })?;
    let status = match ws.status.as_mut() {
        Some(st) => {
            let (p, g) = st.device_ptr_mut(stream)?;
            guards.push(g);
            p
        }
        None => 0,
    };
    let slot_bytes = ChunkWork::bytes(shape, dtype, rows, false).unwrap_or(0);
    let slots = ChunkWork::carve_slots(wp, shape, dtype, rows, false, n_slots);
    Ok(BoundWorkspace { slots, rows, status, bytes: slot_bytes * n_slots })
}

impl Gpu {
    /// [`Gpu::linear_token_logprobs_forward_into`], stream-ordered: every row projected in chunks
    /// that fit `ws.workspace`, the outputs written in place, no host read of the targets, no
    /// allocation and no synchronization (bad targets reach only `ws.status`;
    /// `cfg.check_targets` is not consulted). Row for row the same values as the host-planned
    /// loop; ignored rows give 0 (top-k ids -1) as there.
    pub fn linear_token_logprobs_forward_ordered<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        head: &LinearHead<'_, T>,
        targets: &View<'_, I>,
        mut out: LinearForwardViews<'_>,
        mut ws: OrderedWorkspace<'_>,
        cfg: &TokenLogprobsConfig,
    ) -> Result<LinearRun> {
        check_head_shape(self, head, targets, cfg)?;
        let s = head.shape;
        check_forward_outputs(&out, &s, cfg)?;
        if s.n_rows == 0 {
            return Ok(LinearRun { n_chunks: 0, workspace_bytes: 0 });
        }
        let mut guards = Vec::new();
        let head_p = head_ptrs(stream, head, &mut guards)?;
        let targets_p = optional_ptr(stream, Some(targets), &mut guards)?;
        let bw = bind_workspace(stream, &mut ws, &s, T::DTYPE, &mut guards)?;
        let (logp, _g0) = out.logp.device_ptr_mut(stream)?;
        let (lse, _g1) = out.lse.device_ptr_mut(stream)?;
        let opt = |p: &Option<(u64, Guard<'_>)>| p.as_ref().map_or(0, |(p, _)| *p);
        let entropy = optional_ptr_mut(stream, out.entropy.as_mut())?;
        let log_sum_sq = optional_ptr_mut(stream, out.log_sum_sq.as_mut())?;
        let mean_logits = optional_ptr_mut(stream, out.mean_logits.as_mut())?;
        let is_top1 = optional_ptr_mut(stream, out.is_top1.as_mut())?;
        let outs = RowOuts {
            logp,
            lse,
            entropy: opt(&entropy),
            log_sum_sq: opt(&log_sum_sq),
            mean_logits: opt(&mean_logits),
            is_top1: opt(&is_top1),
        };
        let k = out.topk.as_ref().map_or(0, |t| t.k);
        let topk = match out.topk.as_mut() {
            Some(t) => Some((t.logp.device_ptr_mut(stream)?, t.ids.device_ptr_mut(stream)?)),
            None => None,
        };
        let status = bw.status;
        let slot_loop = |slot: usize| Loop {
            head: head_p,
            rows: 0,
            targets: targets_p,
            index_type: I::INDEX_TYPE,
            work: bw.slots[slot],
        };
        let x_row = (s.hidden * T::DTYPE.size()) as u64;
        let raw = stream.raw();
        let n_chunks = s.n_rows.div_ceil(bw.rows);
        // SAFETY: `raw` is the caller's live stream of this backend.
        let lane = unsafe { self.side_lane(raw, bw.slots.len() == 2 && n_chunks > 1)? };
        let pipe = Pipeline::new(raw, lane.as_deref());
        let x_at = |r0: usize| head_p.hidden + r0 as u64 * x_row;
        let fill = |c: usize, slot: usize| -> Result<()> {
            let (r0, lp) = (c * bw.rows, slot_loop(slot));
            // SAFETY: the head, targets and outputs were checked against the shape; each slot
            // holds a chunk of bw.rows rows; the pipeline fills a slot only after its drain.
            unsafe {
                self.chunk_logits_of(pipe.main(), &head_p, x_at(r0), bw.rows.min(s.n_rows - r0), &lp.work)
            }
        };
        let drain = |c: usize, slot: usize| -> Result<()> {
            let (r0, lp) = (c * bw.rows, slot_loop(slot));
            let m = bw.rows.min(s.n_rows - r0);
            // SAFETY: as above; the side stream reads the slot after its fill.
            unsafe {
                lp.logprobs_forward_to(self, pipe.side(), r0, m, cfg, &outs.at_row(r0), status)?;
                if let Some(((tl, _), (ti, _))) = &topk {
                    let at = (r0 * k) as u64;
                    lp.logprobs_topk(self, pipe.side(), r0, m, k, tl + at * 4, ti + at * 8, cfg, status)?;
                }
            }
            Ok(())
        };
        // SAFETY: the lane's context is current (side_lane bound it); the closures enqueue on
        // the stream they use into their chunk's slot.
        unsafe { pipe.run_chunks(n_chunks, bw.slots.len(), fill, drain)? };
        Ok(LinearRun { n_chunks, workspace_bytes: bw.bytes })
    }

    /// [`Gpu::linear_token_logprobs_backward_into`], stream-ordered (see
    /// [`Gpu::linear_token_logprobs_forward_ordered`]): every row's logits recomputed in chunks
    /// that fit `ws.workspace`, d/dlogits in place, `d_weight` written by the first chunk's GEMM
    /// and accumulated by the rest in row order (f32, deterministic), `d_hidden` rows written
    /// straight by the last GEMM (ignored rows: exact zeros). Nothing read back, allocated or
    /// synchronized.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_token_logprobs_backward_ordered<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        head: &LinearHead<'_, T>,
        targets: &View<'_, I>,
        grad_logp: &View<'_, f32>,
        grad_entropy: Option<&View<'_, f32>>,
        mut grads: LinearGradViews<'_, T>,
        mut ws: OrderedWorkspace<'_>,
        cfg: &TokenLogprobsConfig,
    ) -> Result<LinearRun> {
        check_head_shape(self, head, targets, cfg)?;
        let s = head.shape;
        ensure_len("grad_logp", grad_logp.len(), s.n_rows)?;
        if let Some(g) = grad_entropy {
            ensure_len("grad_entropy", g.len(), s.n_rows)?;
        }
        grads.check(head)?;
        if let Some(b) = grads.d_bias.as_mut() {
            stream.memset_zeros(b)?;
        }
        if s.n_rows == 0 {
            // No chunk writes d_weight: it is the gradient of nothing.
            stream.memset_zeros(&mut grads.d_weight)?;
            return Ok(LinearRun { n_chunks: 0, workspace_bytes: 0 });
        }
        let mut guards = Vec::new();
        let head_p = head_ptrs(stream, head, &mut guards)?;
        let targets_p = optional_ptr(stream, Some(targets), &mut guards)?;
        let gl = optional_ptr(stream, Some(grad_logp), &mut guards)?;
        let ge = optional_ptr(stream, grad_entropy, &mut guards)?;
        let bw = bind_workspace(stream, &mut ws, &s, T::DTYPE, &mut guards)?;
        let mut grad_guards = Vec::new();
        let gp: GradPtrs = grads.ptrs(stream, &mut grad_guards)?;
        let status = bw.status;
        let slot_loop = |slot: usize| Loop {
            head: head_p,
            rows: 0,
            targets: targets_p,
            index_type: I::INDEX_TYPE,
            work: bw.slots[slot],
        };
        let x_row = (s.hidden * T::DTYPE.size()) as u64;
        let raw = stream.raw();
        let n_chunks = s.n_rows.div_ceil(bw.rows);
        let two_slots = bw.slots.len() == 2;
        // SAFETY: `raw` is the caller's live stream of this backend.
        let lane = unsafe { self.side_lane(raw, two_slots && n_chunks > 1)? };
        let pipe = Pipeline::new(raw, lane.as_deref());
        let x_at = |r0: usize| head_p.hidden + r0 as u64 * x_row;
        let fill = |c: usize, slot: usize| -> Result<()> {
            let (r0, lp) = (c * bw.rows, slot_loop(slot));
            // SAFETY: as in the forward; the pipeline fills a slot after its previous chunk's
            // weight GEMMs on the caller's stream.
            unsafe {
                self.chunk_logits_of(pipe.main(), &head_p, x_at(r0), bw.rows.min(s.n_rows - r0), &lp.work)
            }
        };
        let drain = |c: usize, slot: usize| -> Result<()> {
            let (r0, lp) = (c * bw.rows, slot_loop(slot));
            let m = bw.rows.min(s.n_rows - r0);
            let scratch = RowOuts {
                logp: lp.work.logp,
                lse: lp.work.lse,
                entropy: if ge != 0 { lp.work.entropy } else { 0 },
                ..RowOuts::default()
            };
            let ge_r0 = if ge != 0 { ge + (r0 * 4) as u64 } else { 0 };
            // SAFETY: as in the forward.
            unsafe {
                lp.logprobs_forward_to(self, pipe.side(), r0, m, cfg, &scratch, status)?;
                lp.logprobs_backward_from(self, pipe.side(), r0, m, cfg, gl + (r0 * 4) as u64, ge_r0, status)
            }
        };
        // The chunk's two weight GEMMs on the caller's stream, after its row pass: d_weight
        // written by the first chunk (beta 0) and accumulated by the rest in row order.
        let finish = |c: usize, slot: usize| -> Result<()> {
            let (r0, lp) = (c * bw.rows, slot_loop(slot));
            let m = bw.rows.min(s.n_rows - r0);
            let beta = if r0 == 0 { 0.0 } else { 1.0 };
            // SAFETY: as in the forward; the gradients were checked against the shape; the
            // pipeline waited for the slot's row pass.
            unsafe {
                self.chunk_backward_of(
                    pipe.main(),
                    &head_p,
                    x_at(r0),
                    gp.d_hidden + r0 as u64 * x_row,
                    m,
                    &lp.work,
                    &gp,
                    beta,
                )
            }
        };
        // SAFETY: as in the forward.
        unsafe { pipe.run_chunks_then(n_chunks, bw.slots.len(), fill, drain, finish)? };
        Ok(LinearRun { n_chunks, workspace_bytes: bw.bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workspace plans: one chunk when every row fits; two slots of exactly `rows` rows from
    /// `ordered_workspace_bytes(rows)`; one slot of about twice the rows on one stream; one slot
    /// of one row at the minimum; an error, naming the minimum, below it.
    #[test]
    fn ordered_plans_follow_the_workspace() {
        let shape = LinearShape { n_rows: 23, hidden: 16, vocab: 90 };
        let dt = DType::BF16;
        let all = ordered_workspace_bytes(&shape, dt, 23).unwrap();
        assert_eq!(ordered_plan(&shape, dt, all, 2).unwrap(), (23, 1));
        let six = ordered_workspace_bytes(&shape, dt, 6).unwrap();
        assert_eq!(six, 2 * ChunkWork::bytes(&shape, dt, 6, false).unwrap());
        assert_eq!(ordered_plan(&shape, dt, six, 2).unwrap(), (6, 2));
        let (rows, slots) = ordered_plan(&shape, dt, six, 1).unwrap();
        assert!(slots == 1 && (12..=13).contains(&rows), "one stream: {rows} rows in {slots} slots");
        let min = ChunkWork::bytes(&shape, dt, 1, false).unwrap();
        assert_eq!(ordered_plan(&shape, dt, min, 2).unwrap(), (1, 1));
        assert_eq!(ordered_plan(&shape, dt, 2 * min, 2).unwrap(), (1, 2));
        let e = ordered_plan(&shape, dt, min - 1, 2).unwrap_err().to_string();
        assert!(e.contains(&format!("the minimum is {min} bytes")), "{e}");
    }
}
