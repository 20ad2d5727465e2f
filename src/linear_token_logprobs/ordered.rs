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
use crate::lm_head::{LinearForwardViews, LinearGradViews, LinearHead, LinearRun, LinearShape};
use crate::runtime::mem::{optional_ptr, optional_ptr_mut, DevicePtrMut, Guard, Stream, View, ViewMut};
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

/// Bytes of an [`OrderedWorkspace`] for chunks of `rows` rows: the chunk's logits `[rows, V]`
/// in `dtype` and its per-row scratch (no gathered hidden rows). `None` on overflow.
pub fn ordered_workspace_bytes(shape: &LinearShape, dtype: DType, rows: usize) -> Option<usize> {
    ChunkWork::bytes(shape, dtype, rows, false)
}

/// The most rows per chunk (at most N, at least 1) `bytes` of workspace hold.
fn ordered_rows(shape: &LinearShape, dtype: DType, bytes: usize) -> Result<usize> {
    let fits = |m: usize| ordered_workspace_bytes(shape, dtype, m).is_some_and(|b| b <= bytes);
    if !fits(1) {
        return Err(invalid(
            "workspace",
            format!(
                "{bytes} bytes cannot hold one row of V = {} in {}: the minimum is {} bytes",
                shape.vocab,
                dtype.name(),
                ordered_workspace_bytes(shape, dtype, 1).unwrap_or(usize::MAX)
            ),
        ));
    }
    // The largest m in [1, N] that fits (bytes grow with m).
    let (mut lo, mut hi) = (1usize, shape.n_rows.max(1));
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(lo)
}

/// The workspace and status pointers (guards kept in `guards`) and the chunk rows.
fn bind_workspace<'s>(
    stream: &'s Stream,
    ws: &'s mut OrderedWorkspace<'_>,
    shape: &LinearShape,
    dtype: DType,
    guards: &mut Vec<Guard<'s>>,
) -> Result<(ChunkWork, usize, u64)> {
    let rows = ordered_rows(shape, dtype, ws.workspace.len())?;
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
    Ok((ChunkWork::carve(wp, shape, dtype, rows, false), rows, status))
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
        let (work, max_rows, status) = bind_workspace(stream, &mut ws, &s, T::DTYPE, &mut guards)?;
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
        let lp = Loop { head: head_p, rows: 0, targets: targets_p, index_type: I::INDEX_TYPE, work };
        let x_row = (s.hidden * T::DTYPE.size()) as u64;
        let raw = stream.raw();
        let mut n_chunks = 0;
        for r0 in (0..s.n_rows).step_by(max_rows) {
            let m = max_rows.min(s.n_rows - r0);
            // SAFETY: the head, targets and outputs were checked against the shape; the workspace
            // holds chunks of max_rows rows; everything is ordered on `stream`.
            unsafe {
                self.chunk_logits_of(raw, &head_p, head_p.hidden + r0 as u64 * x_row, m, &lp.work)?;
                lp.logprobs_forward_to(self, raw, r0, m, cfg, &outs.at_row(r0), status)?;
                if let Some(((tl, _), (ti, _))) = &topk {
                    let at = (r0 * k) as u64;
                    lp.logprobs_topk(self, raw, r0, m, k, tl + at * 4, ti + at * 8, cfg, status)?;
                }
            }
            n_chunks += 1;
        }
        Ok(LinearRun {
            n_chunks,
            workspace_bytes: ordered_workspace_bytes(&s, T::DTYPE, max_rows).unwrap_or(0),
        })
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
        let (work, max_rows, status) = bind_workspace(stream, &mut ws, &s, T::DTYPE, &mut guards)?;
        let mut grad_guards = Vec::new();
        let gp: GradPtrs = grads.ptrs(stream, &mut grad_guards)?;
        let lp = Loop { head: head_p, rows: 0, targets: targets_p, index_type: I::INDEX_TYPE, work };
        let scratch = RowOuts {
            logp: work.logp,
            lse: work.lse,
            entropy: if ge != 0 { work.entropy } else { 0 },
            ..RowOuts::default()
        };
        let x_row = (s.hidden * T::DTYPE.size()) as u64;
        let raw = stream.raw();
        let mut n_chunks = 0;
        for r0 in (0..s.n_rows).step_by(max_rows) {
            let m = max_rows.min(s.n_rows - r0);
            let x = head_p.hidden + r0 as u64 * x_row;
            let ge_r0 = if ge != 0 { ge + (r0 * 4) as u64 } else { 0 };
            // SAFETY: as in the forward; the gradients were checked against the shape.
            unsafe {
                self.chunk_logits_of(raw, &head_p, x, m, &lp.work)?;
                lp.logprobs_forward_to(self, raw, r0, m, cfg, &scratch, status)?;
                lp.logprobs_backward_from(self, raw, r0, m, cfg, gl + (r0 * 4) as u64, ge_r0, status)?;
                let beta = if r0 == 0 { 0.0 } else { 1.0 };
                self.chunk_backward_of(
                    raw,
                    &head_p,
                    x,
                    gp.d_hidden + r0 as u64 * x_row,
                    m,
                    &lp.work,
                    &gp,
                    beta,
                )?;
            }
            n_chunks += 1;
        }
        Ok(LinearRun {
            n_chunks,
            workspace_bytes: ordered_workspace_bytes(&s, T::DTYPE, max_rows).unwrap_or(0),
        })
    }
}
