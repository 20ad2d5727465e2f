//! The chunk loop of the fused LM head on the device: for each chunk of used rows, gather its
//! hidden states, one GEMM into the chunk's logits (`[m, V]` in the workspace, never `[N, V]`),
//! the token log-probs kernels on it, and for the backward d/dlogits in place followed by two
//! GEMMs (`d_weight += dLᵀ X` in f32, in chunk order; `d_X = dL · W`, scattered to `d_hidden`).
use super::plan::RowPlan;
use super::{LinearGradBuffers, LinearHead, LinearShape};
use crate::dtype::{DType, IndexType, LogitElement, TargetIndex};
use crate::error::{ensure, Result};
use crate::params::{LinearBiasParams, LinearRowsParams, SOFTMAX_STATS, VP_STATS};
use crate::runtime::gemm::Gemm;
use crate::runtime::mem::{optional_ptr, DeviceBuffer, DevicePtr, DevicePtrMut, Guard, Stream, View};
use crate::runtime::registry::{self, LINEAR_ROWS_THREADS};
use crate::runtime::status::{check_status, StatusWord};
use crate::runtime::Gpu;
use crate::token_logprobs::{TokenLogprobsBwdPtrs, TokenLogprobsConfig, TokenLogprobsFwdPtrs, TokenTopkPtrs};
use crate::LogitsLayout;
use std::ops::Range;

/// The head as raw pointers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadPtrs {
    pub(crate) hidden: u64,
    pub(crate) weight: u64,
    pub(crate) bias: u64,
    pub(crate) shape: LinearShape,
    pub(crate) dtype: DType,
}

/// Gradient outputs as raw pointers (pre-zeroed: the loop accumulates and scatters into them).
#[derive(Debug, Clone, Copy)]
pub(crate) struct GradPtrs {
    pub(crate) d_hidden: u64,
    pub(crate) d_weight: u64,
    pub(crate) d_bias: u64,
}

/// The chunk workspace, carved out of one allocation: logits `[max_rows, V]` and hidden rows
/// `[max_rows, H]` in the compute dtype, then `[max_rows]` f32 per-row scratch (a vocabulary
/// shard's `[max_rows, VP_STATS]` partials over the first five regions).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChunkWork {
    pub(crate) logits: u64,
    pub(crate) x: u64,
    pub(crate) logp: u64,
    pub(crate) lse: u64,
    pub(crate) entropy: u64,
    pub(crate) grad_logp: u64,
    pub(crate) grad_entropy: u64,
    pub(crate) weights: u64,
    pub(crate) ref_logp: u64,
    /// `[max_rows, SOFTMAX_STATS]` f32: the chunk rows' softmax statistics (forward to backward).
    pub(crate) stats: u64,
    /// `[max_rows, VP_STATS]` f32: a vocabulary shard's partial statistics. They share the bytes
    /// of logp .. grad_entropy (five consecutive regions of at least 4 bytes per row), which the
    /// shard's forward, the one user of the partials, never touches.
    pub(crate) partials: u64,
}

/// Per-row outputs of the forward beyond log p, lse and entropy (TRL's fused-head fields). A
/// forward-only pass keeps them in workspace regions only the backward uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RowExtras {
    pub(crate) log_sum_sq: bool,
    pub(crate) mean_logits: bool,
    pub(crate) is_top1: bool,
}

impl ChunkWork {
    /// `[max_rows]` f32 `log Σ p²` of a forward-only pass (the backward's grad_logp region).
    pub(crate) fn extra_log_sum_sq(&self) -> u64 {
        self.grad_logp
    }
    /// `[max_rows]` f32 mean logits of a forward-only pass (the grad_entropy region).
    pub(crate) fn extra_mean_logits(&self) -> u64 {
        self.grad_entropy
    }
    /// `[max_rows]` u8 `is_top1` of a forward-only pass (the weights region).
    pub(crate) fn extra_is_top1(&self) -> u64 {
        self.weights
    }
}

/// Alignment of each workspace region: 16 bytes, what 128-bit accesses and cuBLAS's tensor-core
/// kernels need (more would only cost tiny chunks their budget).
const ALIGN: usize = 16;

fn align(x: usize) -> usize {
    x.div_ceil(ALIGN) * ALIGN
}

impl ChunkWork {
    /// Bytes of the workspace for chunks of `max_rows` rows; `gathers`: with the `[max_rows, H]`
    /// region for gathered hidden rows (a host-planned loop), else without it (a stream-ordered
    /// loop reads and writes the caller's rows in place). `None` on overflow.
    pub(crate) fn bytes(shape: &LinearShape, dtype: DType, max_rows: usize, gathers: bool) -> Option<usize> {
        let m = max_rows.max(1);
        let es = dtype.size();
        let region = |cols: usize| m.checked_mul(cols)?.checked_add(ALIGN - 1).map(|b| b / ALIGN * ALIGN);
        let x = if gathers { region(shape.hidden.checked_mul(es)?)? } else { 0 };
        region(shape.vocab.checked_mul(es)?)?
            .checked_add(x)?
            .checked_add(region(4)?.checked_mul(7)?)?
            .checked_add(region(SOFTMAX_STATS * 4)?)
    }

    /// `slots` workspaces of `max_rows` rows back to back from `base`, each carved as
    /// [`ChunkWork::carve`] does (a slot's size is a multiple of the regions' 16-byte alignment,
    /// so every slot is aligned as the first).
    pub(crate) fn carve_slots(
        base: u64,
        shape: &LinearShape,
        dtype: DType,
        max_rows: usize,
        gathers: bool,
        slots: usize,
    ) -> Vec<ChunkWork> {
        let slot_bytes = ChunkWork::bytes(shape, dtype, max_rows, gathers).unwrap_or(0) as u64;
        (0..slots as u64)
            .map(|i| ChunkWork::carve(base + i * slot_bytes, shape, dtype, max_rows, gathers))
            .collect()
    }

    /// The regions of a workspace at `base` laid out as [`ChunkWork::bytes`] counts them (`x` is
    /// 0 without `gathers`).
    pub(crate) fn carve(
        base: u64,
        shape: &LinearShape,
        dtype: DType,
        max_rows: usize,
        gathers: bool,
    ) -> Self {
        let m = max_rows.max(1);
        let mut at = base;
        let mut take = |bytes: usize| {
            let p = at;
            at += align(bytes) as u64;
            p
        };
        let logits = take(m * shape.vocab * dtype.size());
        let x = if gathers { take(m * shape.hidden * dtype.size()) } else { 0 };
        let (logp, lse, entropy, grad_logp, grad_entropy) =
            (take(m * 4), take(m * 4), take(m * 4), take(m * 4), take(m * 4));
        debug_assert!(grad_entropy + align(m * 4) as u64 - logp >= (m * VP_STATS * 4) as u64);
        ChunkWork {
            logits,
            x,
            logp,
            lse,
            entropy,
            grad_logp,
            grad_entropy,
            weights: take(m * 4),
            ref_logp: take(m * 4),
            stats: take(m * SOFTMAX_STATS * 4),
            partials: logp,
        }
    }
}

/// One row movement: gather (`dst[r] = src[index[r]]`) or scatter (`dst[index[r]] = src[r]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowMove {
    pub(crate) scatter: bool,
    pub(crate) elem_bytes: usize,
    pub(crate) src: u64,
    pub(crate) dst: u64,
    pub(crate) index: u64,
    pub(crate) n_rows: usize,
    pub(crate) width: usize,
    /// Rows of the full side.
    pub(crate) bound: usize,
}

impl Gpu {
    /// Enqueues one row movement (contiguous rows of `width` on both sides).
    ///
    /// # Safety
    /// The pointers are memory of this backend valid for the rows moved (`index` for `n_rows`
    /// i64); `stream` as for every launch.
    pub(crate) unsafe fn move_rows(&self, stream: u64, mv: &RowMove, status: u64) -> Result<()> {
        if mv.n_rows == 0 || mv.width == 0 {
            return Ok(());
        }
        let name = match (mv.scatter, mv.elem_bytes) {
            (false, 2) => "linear_gather_rows_b2",
            (false, 4) => "linear_gather_rows_b4",
            (false, 8) => "linear_gather_rows_b8",
            (true, 1) => "linear_scatter_rows_b1",
            (true, 2) => "linear_scatter_rows_b2",
            (true, 4) => "linear_scatter_rows_b4",
            (true, 8) => "linear_scatter_rows_b8",
            _ => return Err(crate::error::invalid("elem_bytes", format!("no row kernel for {mv:?}"))),
        };
        let params = LinearRowsParams {
            src: mv.src,
            dst: mv.dst,
            index: mv.index,
            status,
            n_rows: mv.n_rows as i64,
            width: mv.width as i64,
            src_stride: mv.width as i64,
            dst_stride: mv.width as i64,
            bound: mv.bound as i64,
        };
        let grid = self.grid_for((mv.n_rows * mv.width) as u64, LINEAR_ROWS_THREADS as u64);
        // SAFETY: forwarded to the caller; params is the kernel's LinearRowsParams.
        unsafe { self.launch(stream, name, grid, &params) }
    }

    /// A chunk's logits: gather its `m` hidden rows (`index`: i64 row ids) into `work.x`, then
    /// [`Gpu::chunk_logits_of`] them.
    ///
    /// # Safety
    /// `head`, `index` (m i64) and `work` (for at least m rows, with its `x` region) are live
    /// memory of this backend.
    pub(crate) unsafe fn chunk_logits(
        &self,
        stream: u64,
        head: &HeadPtrs,
        index: u64,
        m: usize,
        work: &ChunkWork,
        status: u64,
    ) -> Result<()> {
        let mv = RowMove {
            scatter: false,
            elem_bytes: head.dtype.size(),
            src: head.hidden,
            dst: work.x,
            index,
            n_rows: m,
            width: head.shape.hidden,
            bound: head.shape.n_rows,
        };
        // SAFETY: forwarded to the caller.
        unsafe {
            self.move_rows(stream, &mv, status)?;
            self.chunk_logits_of(stream, head, work.x, m, work)
        }
    }

    /// `work.logits = X · Wᵀ (+ bias)` for the `m` contiguous hidden rows at `x` (gathered into
    /// the workspace, or the caller's own rows in a stream-ordered loop).
    ///
    /// # Safety
    /// `head`, `x` (m rows of H) and `work` (for at least m rows) are live memory of this backend.
    pub(crate) unsafe fn chunk_logits_of(
        &self,
        stream: u64,
        head: &HeadPtrs,
        x: u64,
        m: usize,
        work: &ChunkWork,
    ) -> Result<()> {
        let (h, v) = (head.shape.hidden, head.shape.vocab);
        // SAFETY: forwarded to the caller.
        unsafe {
            if head.bias != 0 {
                let p = LinearBiasParams {
                    bias: head.bias,
                    logits: work.logits,
                    n_rows: m as i64,
                    vocab: v as i64,
                };
                let grid = self.grid_for((m * v) as u64, LINEAR_ROWS_THREADS as u64);
                self.launch(stream, &registry::linear_bias(false, head.dtype), grid, &p)?;
            }
            self.gemm(
                stream,
                &Gemm {
                    m,
                    n: v,
                    k: h,
                    a: x,
                    lda: h,
                    a_trans: false,
                    b: head.weight,
                    ldb: h,
                    b_trans: true,
                    c: work.logits,
                    ldc: v,
                    ab: head.dtype,
                    c_f32: false,
                    beta: if head.bias != 0 { 1.0 } else { 0.0 },
                },
            )
        }
    }

    /// A chunk's backward after d/dlogits is in `work.logits`: [`Gpu::chunk_backward_of`] the
    /// gathered rows in `work.x` (consumed: dX overwrites it), then dX scattered to the chunk's
    /// rows of `d_hidden`.
    ///
    /// # Safety
    /// As [`Gpu::chunk_logits`], with `work.x` still holding the chunk's gathered rows and the
    /// gradient pointers live outputs of the head's shape.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn chunk_backward(
        &self,
        stream: u64,
        head: &HeadPtrs,
        index: u64,
        m: usize,
        work: &ChunkWork,
        grads: &GradPtrs,
        status: u64,
    ) -> Result<()> {
        let mv = RowMove {
            scatter: true,
            elem_bytes: head.dtype.size(),
            src: work.x,
            dst: grads.d_hidden,
            index,
            n_rows: m,
            width: head.shape.hidden,
            bound: head.shape.n_rows,
        };
        // SAFETY: forwarded to the caller.
        unsafe {
            self.chunk_backward_of(stream, head, work.x, work.x, m, work, grads, 1.0)?;
            self.move_rows(stream, &mv, status)
        }
    }

    /// The GEMMs of a chunk's backward after d/dlogits is in `work.logits`:
    /// `d_weight = β·d_weight + dLᵀ X` (f32; β 0 only for the first chunk of a loop that writes
    /// every row), `d_bias += Σ_rows dL`, then `dX = dL · W` into `dx` (`m` rows of H; may be `x`
    /// itself, which the first GEMM has consumed by then).
    ///
    /// # Safety
    /// As [`Gpu::chunk_logits_of`]; `dx` is live for m rows of H; the gradient pointers are live
    /// outputs of the head's shape.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn chunk_backward_of(
        &self,
        stream: u64,
        head: &HeadPtrs,
        x: u64,
        dx: u64,
        m: usize,
        work: &ChunkWork,
        grads: &GradPtrs,
        weight_beta: f32,
    ) -> Result<()> {
        let (h, v) = (head.shape.hidden, head.shape.vocab);
        // SAFETY: forwarded to the caller.
        unsafe {
            self.gemm(
                stream,
                &Gemm {
                    m: v,
                    n: h,
                    k: m,
                    a: work.logits,
                    lda: v,
                    a_trans: true,
                    b: x,
                    ldb: h,
                    b_trans: false,
                    c: grads.d_weight,
                    ldc: h,
                    ab: head.dtype,
                    c_f32: true,
                    beta: weight_beta,
                },
            )?;
            if grads.d_bias != 0 {
                let p = LinearBiasParams {
                    bias: grads.d_bias,
                    logits: work.logits,
                    n_rows: m as i64,
                    vocab: v as i64,
                };
                let grid = self.grid_for(v as u64, LINEAR_ROWS_THREADS as u64);
                self.launch(stream, &registry::linear_bias(true, head.dtype), grid, &p)?;
            }
            self.gemm(
                stream,
                &Gemm {
                    m,
                    n: h,
                    k: v,
                    a: work.logits,
                    lda: v,
                    a_trans: false,
                    b: head.weight,
                    ldb: h,
                    b_trans: false,
                    c: dx,
                    ldc: h,
                    ab: head.dtype,
                    c_f32: false,
                    beta: 0.0,
                },
            )
        }
    }

    /// Gathers `m` rows of `width` f32 (`dst[r] = src[index[r]]`, `src` of `bound` rows).
    ///
    /// # Safety
    /// Live memory of this backend of the sizes named.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn gather_rows_f32(
        &self,
        stream: u64,
        src: u64,
        dst: u64,
        index: u64,
        m: usize,
        width: usize,
        bound: usize,
        status: u64,
    ) -> Result<()> {
        let mv = RowMove { scatter: false, elem_bytes: 4, src, dst, index, n_rows: m, width, bound };
        // SAFETY: forwarded to the caller.
        unsafe { self.move_rows(stream, &mv, status) }
    }

    /// Gathers `m` f32 values per row (`src[index[r]]`, `src` of `bound` values) into `dst`.
    ///
    /// # Safety
    /// Live memory of this backend of the sizes named.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn gather_f32(
        &self,
        stream: u64,
        src: u64,
        dst: u64,
        index: u64,
        m: usize,
        bound: usize,
        status: u64,
    ) -> Result<()> {
        // SAFETY: forwarded to the caller.
        unsafe { self.gather_rows_f32(stream, src, dst, index, m, 1, bound, status) }
    }

    /// Scatters `m` rows of `width` f32 (`dst[index[r]] = src[r]`, `dst` of `bound` rows).
    ///
    /// # Safety
    /// Live memory of this backend of the sizes named.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn scatter_rows_f32(
        &self,
        stream: u64,
        src: u64,
        dst: u64,
        index: u64,
        m: usize,
        width: usize,
        bound: usize,
        status: u64,
    ) -> Result<()> {
        let mv = RowMove { scatter: true, elem_bytes: 4, src, dst, index, n_rows: m, width, bound };
        // SAFETY: forwarded to the caller.
        unsafe { self.move_rows(stream, &mv, status) }
    }

    /// Scatters `m` f32 values (`dst[index[r]] = src[r]`, `dst` of `bound` values).
    ///
    /// # Safety
    /// Live memory of this backend of the sizes named.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn scatter_f32(
        &self,
        stream: u64,
        src: u64,
        dst: u64,
        index: u64,
        m: usize,
        bound: usize,
        status: u64,
    ) -> Result<()> {
        // SAFETY: forwarded to the caller.
        unsafe { self.scatter_rows_f32(stream, src, dst, index, m, 1, bound, status) }
    }
}

/// Validation shared by the safe entry points; returns the head's targets (read back to the host
/// for planning: the one synchronization before the loop) as i64.
pub(crate) fn check_head<T: LogitElement, I: TargetIndex>(
    gpu: &Gpu,
    stream: &Stream,
    head: &LinearHead<'_, T>,
    targets: &View<'_, I>,
    token: &TokenLogprobsConfig,
) -> Result<Vec<i64>> {
    check_head_shape(gpu, head, targets, token)?;
    Ok(stream.clone_dtoh(targets)?.into_iter().map(TargetIndex::to_i64).collect())
}

/// The checks of [`check_head`] that need nothing from the device (a stream-ordered loop never
/// reads the targets on the host: the kernels report bad ones through the status word).
pub(crate) fn check_head_shape<T: LogitElement, I: TargetIndex>(
    gpu: &Gpu,
    head: &LinearHead<'_, T>,
    targets: &View<'_, I>,
    token: &TokenLogprobsConfig,
) -> Result<()> {
    token.validate()?;
    head.shape.validate(
        head.hidden.len(),
        head.weight.len(),
        head.bias.as_ref().map(View::len),
        targets.len(),
    )?;
    ensure(head.shape.vocab <= i32::MAX as usize, "vocab", || {
        format!("must be <= {} for the log-probs kernels, got {}", i32::MAX, head.shape.vocab)
    })?;
    gpu.gemm_available()
}

/// Device copies of a row plan's rows and targets.
pub(crate) struct PlanOnDevice {
    pub(crate) rows: DeviceBuffer<i64>,
    pub(crate) targets: DeviceBuffer<i64>,
}

impl PlanOnDevice {
    pub(crate) fn upload(stream: &Stream, plan: &RowPlan) -> Result<Self> {
        let pad = |v: &[i64]| if v.is_empty() { vec![0] } else { v.to_vec() };
        Ok(PlanOnDevice {
            rows: stream.clone_htod(&pad(&plan.rows))?,
            targets: stream.clone_htod(&pad(&plan.targets))?,
        })
    }
}

/// The device state of one chunk loop over a row plan: the plan's rows and targets, the
/// workspace sized for its largest chunk (once per slot: two when a second stream drains one slot
/// while the next chunk fills the other), and the status word the kernels report into.
pub(crate) struct ChunkPass {
    plan: PlanOnDevice,
    work: DeviceBuffer<u8>,
    status: StatusWord,
    shape: LinearShape,
    dtype: DType,
    max_rows: usize,
    slots: usize,
}

impl ChunkPass {
    /// Uploads `plan` and allocates `slots` workspace slots of its largest chunk for `shape` in
    /// `dtype`.
    pub(crate) fn with_slots(
        stream: &Stream,
        shape: &LinearShape,
        dtype: DType,
        plan: &RowPlan,
        slots: usize,
    ) -> Result<Self> {
        let bytes = ChunkWork::bytes(shape, dtype, plan.max_rows, true)
            .and_then(|b| b.checked_mul(slots))
            .ok_or_else(|| crate::error::invalid("workspace_bytes", "the chunk workspace overflows usize"))?;
        Ok(ChunkPass {
            plan: PlanOnDevice::upload(stream, plan)?,
            work: stream.alloc_zeros::<u8>(bytes)?,
            status: StatusWord::new(stream, true)?,
            shape: *shape,
            dtype,
            max_rows: plan.max_rows,
            slots,
        })
    }

    /// Bytes of the workspace (every slot).
    pub(crate) fn work_bytes(&self) -> usize {
        ChunkWork::bytes(&self.shape, self.dtype, self.max_rows, true)
            .and_then(|b| b.checked_mul(self.slots))
            .unwrap_or(usize::MAX)
    }

    /// The loop's raw pointers of each slot over `head` and the status word's, the borrows kept
    /// in `guards`.
    pub(crate) fn bind_slots<'s>(
        &'s mut self,
        stream: &Stream,
        head: HeadPtrs,
        guards: &mut Vec<Guard<'s>>,
    ) -> Result<(Vec<Loop>, u64)> {
        let (shape, dtype, max_rows, slots) = (self.shape, self.dtype, self.max_rows, self.slots);
        let (first, status) = self.bind(stream, head, guards)?;
        let loops = ChunkWork::carve_slots(first.work.logits, &shape, dtype, max_rows, true, slots)
            .into_iter()
            .map(|work| Loop { work, ..first })
            .collect();
        Ok((loops, status))
    }

    /// The loop's raw pointers over `head` and the status word's, the borrows kept in `guards`.
    fn bind<'s>(
        &'s mut self,
        stream: &Stream,
        head: HeadPtrs,
        guards: &mut Vec<Guard<'s>>,
    ) -> Result<(Loop, u64)> {
        let (wp, g0) = self.work.device_ptr_mut(stream)?;
        let (rows, g1) = self.plan.rows.device_ptr(stream)?;
        let (targets, g2) = self.plan.targets.device_ptr(stream)?;
        let (status, g3) = self.status.ptr(stream)?;
        guards.extend([g0, g1, g2]);
        guards.extend(g3);
        let work = ChunkWork::carve(wp, &self.shape, self.dtype, self.max_rows, true);
        Ok((Loop { head, rows, targets, index_type: IndexType::I64, work }, status))
    }

    /// Waits for the loop and turns the kernels' status bits into an error.
    pub(crate) fn finish(&self, stream: &Stream) -> Result<()> {
        check_status(self.status.read(stream)?)
    }
}

/// Per-row outputs of a chunk's log-probs forward, each `[m]` f32 (`is_top1` u8) or 0 when not
/// wanted: workspace rows in a host-planned loop (scattered afterwards), the caller's own rows in
/// a stream-ordered one.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RowOuts {
    pub(crate) logp: u64,
    pub(crate) lse: u64,
    pub(crate) entropy: u64,
    pub(crate) log_sum_sq: u64,
    pub(crate) mean_logits: u64,
    pub(crate) is_top1: u64,
}

impl RowOuts {
    /// The same outputs from row `r0` on (`[N]` arrays of the caller).
    pub(crate) fn at_row(&self, r0: usize) -> RowOuts {
        let at = |p: u64, elem: usize| if p == 0 { 0 } else { p + (r0 * elem) as u64 };
        RowOuts {
            logp: at(self.logp, 4),
            lse: at(self.lse, 4),
            entropy: at(self.entropy, 4),
            log_sum_sq: at(self.log_sum_sq, 4),
            mean_logits: at(self.mean_logits, 4),
            is_top1: at(self.is_top1, 1),
        }
    }
}

impl ChunkWork {
    /// The workspace rows a host-planned forward writes: log p, lse, the entropy when `entropy`,
    /// and the `extras` asked for (`ChunkWork::extra_*`).
    pub(crate) fn row_outs(&self, entropy: bool, extras: RowExtras) -> RowOuts {
        let on = |want: bool, at: u64| if want { at } else { 0 };
        RowOuts {
            logp: self.logp,
            lse: self.lse,
            entropy: on(entropy, self.entropy),
            log_sum_sq: on(extras.log_sum_sq, self.extra_log_sum_sq()),
            mean_logits: on(extras.mean_logits, self.extra_mean_logits()),
            is_top1: on(extras.is_top1, self.extra_is_top1()),
        }
    }
}

/// Everything a chunk loop enqueues with: the head, the rows' device arrays, the workspace.
#[derive(Clone, Copy)]
pub(crate) struct Loop {
    pub(crate) head: HeadPtrs,
    /// i64 row ids of a host plan (0 in a stream-ordered loop: chunk rows are the head's rows).
    pub(crate) rows: u64,
    /// The chunk rows' targets, of `index_type`: the plan's i64 copies, or the caller's own.
    pub(crate) targets: u64,
    pub(crate) index_type: IndexType,
    pub(crate) work: ChunkWork,
}

impl Loop {
    /// The targets of chunk rows from `r0`.
    fn targets_from(&self, r0: usize) -> u64 {
        self.targets + (r0 * self.index_type.size()) as u64
    }

    /// Token log-probs forward over chunk rows `r0 .. r0 + m` (logits already in the workspace)
    /// into the workspace rows [`ChunkWork::row_outs`] names.
    ///
    /// # Safety
    /// The loop's pointers are live; `r0 + m` within the plan.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn logprobs_forward(
        &self,
        gpu: &Gpu,
        stream: u64,
        r0: usize,
        m: usize,
        token: &TokenLogprobsConfig,
        entropy: bool,
        extras: RowExtras,
        status: u64,
    ) -> Result<()> {
        let outs = self.work.row_outs(entropy, extras);
        // SAFETY: forwarded to the caller.
        unsafe { self.logprobs_forward_to(gpu, stream, r0, m, token, &outs, status) }
    }

    /// Token log-probs forward over chunk rows `r0 .. r0 + m` into `outs` (`m` rows each), the
    /// softmax statistics into the workspace (for the top-k and the backward).
    ///
    /// # Safety
    /// The loop's pointers and `outs` are live; `r0 + m` within the loop's rows.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn logprobs_forward_to(
        &self,
        gpu: &Gpu,
        stream: u64,
        r0: usize,
        m: usize,
        token: &TokenLogprobsConfig,
        outs: &RowOuts,
        status: u64,
    ) -> Result<()> {
        let layout = LogitsLayout::contiguous(m, self.head.shape.vocab);
        let fwd = TokenLogprobsFwdPtrs {
            logits: self.work.logits,
            targets: self.targets_from(r0),
            logp: outs.logp,
            lse: outs.lse,
            entropy: outs.entropy,
            status,
            stats: self.work.stats,
            log_sum_sq: outs.log_sum_sq,
            mean_logits: outs.mean_logits,
            is_top1: outs.is_top1,
        };
        let cfg = TokenLogprobsConfig { compute_entropy: outs.entropy != 0, ..*token };
        // SAFETY: forwarded to the caller.
        unsafe {
            gpu.token_logprobs_forward_raw(stream, self.head.dtype, self.index_type, layout, &fwd, &cfg)
        }
    }

    /// Top-k log-probs of chunk rows `r0 .. r0 + m` into `topk_logp` / `topk_ids` (`[m, k]`),
    /// after [`Loop::logprobs_forward`] (its softmax statistics).
    ///
    /// # Safety
    /// As [`Loop::logprobs_forward`]; the two outputs hold `m * k` elements.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn logprobs_topk(
        &self,
        gpu: &Gpu,
        stream: u64,
        r0: usize,
        m: usize,
        k: usize,
        topk_logp: u64,
        topk_ids: u64,
        token: &TokenLogprobsConfig,
        status: u64,
    ) -> Result<()> {
        let layout = LogitsLayout::contiguous(m, self.head.shape.vocab);
        let ptrs = TokenTopkPtrs {
            logits: self.work.logits,
            targets: self.targets_from(r0),
            stats: self.work.stats,
            topk_logp,
            topk_ids,
            status,
        };
        // SAFETY: forwarded to the caller.
        unsafe {
            gpu.token_logprobs_topk_raw(stream, self.head.dtype, self.index_type, layout, k, &ptrs, token)
        }
    }

    /// d/dlogits in place in the workspace from `work.grad_logp` (and `work.grad_entropy`).
    ///
    /// # Safety
    /// As [`Loop::logprobs_forward`], after it (softmax statistics, entropy in the workspace).
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn logprobs_backward(
        &self,
        gpu: &Gpu,
        stream: u64,
        r0: usize,
        m: usize,
        token: &TokenLogprobsConfig,
        entropy_grad: bool,
        status: u64,
    ) -> Result<()> {
        let grad_entropy = if entropy_grad { self.work.grad_entropy } else { 0 };
        // SAFETY: forwarded to the caller.
        unsafe {
            self.logprobs_backward_from(gpu, stream, r0, m, token, self.work.grad_logp, grad_entropy, status)
        }
    }

    /// d/dlogits in place in the workspace from `m` rows of dL/dlogp at `grad_logp` (and dL/dH at
    /// `grad_entropy` unless 0, with the forward's entropy in `work.entropy`).
    ///
    /// # Safety
    /// As [`Loop::logprobs_forward`], after it; `grad_logp` (and `grad_entropy`) hold m f32.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn logprobs_backward_from(
        &self,
        gpu: &Gpu,
        stream: u64,
        r0: usize,
        m: usize,
        token: &TokenLogprobsConfig,
        grad_logp: u64,
        grad_entropy: u64,
        status: u64,
    ) -> Result<()> {
        let layout = LogitsLayout::contiguous(m, self.head.shape.vocab);
        let bwd = TokenLogprobsBwdPtrs {
            logits: self.work.logits,
            targets: self.targets_from(r0),
            stats: self.work.stats,
            grad_logp,
            grad_logits: self.work.logits,
            status,
            entropy: if grad_entropy != 0 { self.work.entropy } else { 0 },
            grad_entropy,
        };
        let cfg = TokenLogprobsConfig { compute_entropy: false, ..*token };
        // SAFETY: forwarded to the caller.
        unsafe {
            gpu.token_logprobs_backward_raw(
                stream,
                self.head.dtype,
                self.index_type,
                layout,
                layout.vocab,
                &bwd,
                &cfg,
            )
        }
    }

    /// A host-planned loop's fill: the logits of plan rows `rows` into this slot (nothing for
    /// an empty chunk).
    ///
    /// # Safety
    /// As [`Gpu::chunk_logits`]; `rows` within the plan, the slot sized for them.
    pub(crate) unsafe fn fill(&self, gpu: &Gpu, stream: u64, rows: &Range<usize>, status: u64) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        // SAFETY: forwarded to the caller.
        unsafe {
            gpu.chunk_logits(stream, &self.head, self.index(rows.start), rows.len(), &self.work, status)
        }
    }

    /// A host-planned loop's weight GEMMs for plan rows `rows`, from this slot's d/dlogits
    /// (nothing for an empty chunk).
    ///
    /// # Safety
    /// As [`Gpu::chunk_backward`]; `rows` within the plan.
    pub(crate) unsafe fn weight_grads(
        &self,
        gpu: &Gpu,
        stream: u64,
        rows: &Range<usize>,
        grads: &GradPtrs,
        status: u64,
    ) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        // SAFETY: forwarded to the caller.
        unsafe {
            gpu.chunk_backward(
                stream,
                &self.head,
                self.index(rows.start),
                rows.len(),
                &self.work,
                grads,
                status,
            )
        }
    }

    /// The row ids of chunk rows from `r0`.
    pub(crate) fn index(&self, r0: usize) -> u64 {
        self.rows + (r0 * 8) as u64
    }
}

/// Zeroed gradient buffers for `head`.
pub(crate) fn zero_grads<T: LogitElement>(
    stream: &Stream,
    head: &LinearHead<'_, T>,
) -> Result<LinearGradBuffers<T>> {
    let s = head.shape;
    Ok(LinearGradBuffers {
        d_hidden: stream.alloc_zeros::<T>(s.n_rows * s.hidden)?,
        d_weight: stream.alloc_zeros::<f32>(s.vocab * s.hidden)?,
        d_bias: match head.bias {
            Some(_) => Some(stream.alloc_zeros::<f32>(s.vocab)?),
            None => None,
        },
    })
}

/// The head's pointers (with their guards in `guards`).
pub(crate) fn head_ptrs<'s, T: LogitElement>(
    stream: &'s Stream,
    head: &'s LinearHead<'_, T>,
    guards: &mut Vec<Guard<'s>>,
) -> Result<HeadPtrs> {
    Ok(HeadPtrs {
        hidden: optional_ptr(stream, Some(&head.hidden), guards)?,
        weight: optional_ptr(stream, Some(&head.weight), guards)?,
        bias: optional_ptr(stream, head.bias.as_ref(), guards)?,
        shape: head.shape,
        dtype: T::DTYPE,
    })
}
