//! The chunk loop of the fused LM head on the device: for each chunk of used rows, gather its
//! hidden states, one GEMM into the chunk's logits (`[m, V]` in the workspace, never `[N, V]`),
//! the token log-probs kernels on it, and for the backward d/dlogits in place followed by two
//! GEMMs (`d_weight += dLᵀ X` in f32, in chunk order; `d_X = dL · W`, scattered to `d_hidden`).
use super::plan::{rows_for_budget, token_chunks, RowPlan};
use super::LinearShape;
use crate::dtype::{DType, IndexType, LogitElement, TargetIndex};
use crate::error::ensure_len;
use crate::error::{ensure, Result};
use crate::params::{LinearBiasParams, LinearRowsParams, SOFTMAX_STATS, VP_STATS};
use crate::runtime::gemm::Gemm;
use crate::runtime::mem::{
    optional_ptr, DeviceBuffer, DevicePtr, DevicePtrMut, Guard, Stream, View, ViewMut,
};
use crate::runtime::registry::{self, LINEAR_ROWS_THREADS};
use crate::runtime::status::{check_status, StatusWord};
use crate::runtime::Gpu;
use crate::token_logprobs::{TokenLogprobsBwdPtrs, TokenLogprobsConfig, TokenLogprobsFwdPtrs};
use crate::LogitsLayout;

/// Default workspace budget of the chunk loop: 768 MiB (0.81 GB), so that the peak extra memory
/// (workspace plus O(N) index and per-row arrays) stays under 1 GB; at H = 4096, V = 128256 in
/// bf16 it holds about 3000 rows per chunk, enough for the GEMMs to run at full rate.
pub const DEFAULT_WORKSPACE_BYTES: usize = 768 << 20;

/// Hidden states and the LM head on the device.
pub struct LinearHead<'a, T> {
    /// `[N, H]` hidden states (contiguous rows).
    pub hidden: View<'a, T>,
    /// `[V, H]` LM-head weight (contiguous, row-major as `nn.Linear` stores it).
    pub weight: View<'a, T>,
    /// `[V]` f32 bias, or `None`.
    pub bias: Option<View<'a, f32>>,
    /// N, H, V.
    pub shape: LinearShape,
}

/// Settings of the fused LM head's chunk loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearConfig {
    /// Temperature, ignore_index, entropy (`compute_entropy`), status check.
    pub token: TokenLogprobsConfig,
    /// Most bytes of device workspace the loop may use (chunk logits, gathered hidden states,
    /// per-row scratch); the chunk size follows from it. Default [`DEFAULT_WORKSPACE_BYTES`].
    pub workspace_bytes: usize,
}

impl Default for LinearConfig {
    fn default() -> Self {
        LinearConfig { token: TokenLogprobsConfig::default(), workspace_bytes: DEFAULT_WORKSPACE_BYTES }
    }
}

/// What the forward returns (`[N]` f32 each, ignored rows 0).
pub struct LinearForwardOutputs {
    /// log p(target).
    pub logp: DeviceBuffer<f32>,
    /// logsumexp of the row's logits / T.
    pub lse: DeviceBuffer<f32>,
    /// Entropy, when `compute_entropy`.
    pub entropy: Option<DeviceBuffer<f32>>,
    /// Chunks the loop ran.
    pub n_chunks: usize,
    /// Workspace bytes it used.
    pub workspace_bytes: usize,
}

/// Gradients with respect to the LM head's inputs.
pub struct LinearGradBuffers<T> {
    /// `[N, H]` in the hidden states' dtype; ignored rows 0.
    pub d_hidden: DeviceBuffer<T>,
    /// `[V, H]` f32, accumulated over the chunks in a fixed order.
    pub d_weight: DeviceBuffer<f32>,
    /// `[V]` f32 when the head has a bias.
    pub d_bias: Option<DeviceBuffer<f32>>,
}

/// Caller-owned outputs of the forward, `[N]` f32 each (every element is written: ignored rows 0).
pub struct LinearForwardViews<'a> {
    /// log p(target).
    pub logp: ViewMut<'a, f32>,
    /// logsumexp of the row's logits / T.
    pub lse: ViewMut<'a, f32>,
    /// Entropy: given exactly when `compute_entropy`.
    pub entropy: Option<ViewMut<'a, f32>>,
}

/// Caller-owned gradient outputs (overwritten): `d_hidden` `[N, H]` in the hidden states' dtype,
/// `d_weight` `[V, H]` f32, `d_bias` `[V]` f32 exactly when the head has a bias.
pub struct LinearGradViews<'a, T> {
    /// dL/dhidden (ignored rows 0).
    pub d_hidden: ViewMut<'a, T>,
    /// dL/dweight, accumulated in f32 in a fixed chunk order.
    pub d_weight: ViewMut<'a, f32>,
    /// dL/dbias.
    pub d_bias: Option<ViewMut<'a, f32>>,
}

/// What a chunk loop ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearRun {
    /// Chunks.
    pub n_chunks: usize,
    /// Workspace bytes it allocated.
    pub workspace_bytes: usize,
}

impl<T: LogitElement> LinearGradViews<'_, T> {
    /// Checks the lengths against `head` and zeroes the outputs unless `zeroed` (the loop
    /// accumulates `d_weight` and scatters only the used rows of `d_hidden`).
    pub(crate) fn prepare(&mut self, stream: &Stream, head: &LinearHead<'_, T>, zeroed: bool) -> Result<()> {
        let s = head.shape;
        ensure_len("d_hidden", self.d_hidden.len(), s.n_rows * s.hidden)?;
        ensure_len("d_weight", self.d_weight.len(), s.vocab * s.hidden)?;
        match (&self.d_bias, &head.bias) {
            (Some(b), Some(_)) => ensure_len("d_bias", b.len(), s.vocab)?,
            (None, None) => {}
            _ => return Err(crate::error::invalid("d_bias", "give d_bias exactly when the head has a bias")),
        }
        if !zeroed {
            stream.memset_zeros(&mut self.d_hidden)?;
            stream.memset_zeros(&mut self.d_weight)?;
            if let Some(b) = self.d_bias.as_mut() {
                stream.memset_zeros(b)?;
            }
        }
        Ok(())
    }

    /// The raw pointers (with their guards in `guards`).
    pub(crate) fn ptrs<'s>(&'s mut self, stream: &Stream, guards: &mut Vec<Guard<'s>>) -> Result<GradPtrs> {
        let (d_hidden, g0) = self.d_hidden.device_ptr_mut(stream)?;
        guards.push(g0);
        let (d_weight, g1) = self.d_weight.device_ptr_mut(stream)?;
        guards.push(g1);
        let d_bias = match self.d_bias.as_mut() {
            Some(b) => {
                let (p, g) = b.device_ptr_mut(stream)?;
                guards.push(g);
                p
            }
            None => 0,
        };
        Ok(GradPtrs { d_hidden, d_weight, d_bias })
    }
}

impl<T> LinearGradBuffers<T> {
    /// Writable views of the buffers.
    pub fn as_views(&mut self) -> LinearGradViews<'_, T> {
        LinearGradViews {
            d_hidden: self.d_hidden.as_view_mut(),
            d_weight: self.d_weight.as_view_mut(),
            d_bias: self.d_bias.as_mut().map(DeviceBuffer::as_view_mut),
        }
    }
}

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

const ALIGN: usize = 256;

fn align(x: usize) -> usize {
    x.div_ceil(ALIGN) * ALIGN
}

impl ChunkWork {
    /// Bytes of the workspace for chunks of `max_rows` rows.
    pub(crate) fn bytes(shape: &LinearShape, dtype: DType, max_rows: usize) -> usize {
        let m = max_rows.max(1);
        align(m * shape.vocab * dtype.size())
            + align(m * shape.hidden * dtype.size())
            + 7 * align(m * 4)
            + align(m * SOFTMAX_STATS * 4)
    }

    pub(crate) fn carve(base: u64, shape: &LinearShape, dtype: DType, max_rows: usize) -> Self {
        let m = max_rows.max(1);
        let mut at = base;
        let mut take = |bytes: usize| {
            let p = at;
            at += align(bytes) as u64;
            p
        };
        let (logits, x) = (take(m * shape.vocab * dtype.size()), take(m * shape.hidden * dtype.size()));
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
            (true, 2) => "linear_scatter_rows_b2",
            (true, 4) => "linear_scatter_rows_b4",
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

    /// A chunk's logits: gather its `m` hidden rows (`index`: i64 row ids), broadcast the bias,
    /// `logits = X · Wᵀ (+ bias)` into `work.logits`.
    ///
    /// # Safety
    /// `head`, `index` (m i64) and `work` (for at least m rows) are live memory of this backend.
    pub(crate) unsafe fn chunk_logits(
        &self,
        stream: u64,
        head: &HeadPtrs,
        index: u64,
        m: usize,
        work: &ChunkWork,
        status: u64,
    ) -> Result<()> {
        let (h, v) = (head.shape.hidden, head.shape.vocab);
        let es = head.dtype.size();
        // SAFETY: forwarded to the caller.
        unsafe {
            self.move_rows(
                stream,
                &RowMove {
                    scatter: false,
                    elem_bytes: es,
                    src: head.hidden,
                    dst: work.x,
                    index,
                    n_rows: m,
                    width: h,
                    bound: head.shape.n_rows,
                },
                status,
            )?;
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
                    a: work.x,
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

    /// A chunk's backward after d/dlogits is in `work.logits`: `d_weight += dLᵀ X` (f32),
    /// `d_bias += Σ_rows dL`, then `dX = dL · W` into `work.x` (X is consumed) scattered to the
    /// chunk's rows of `d_hidden`.
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
                    b: work.x,
                    ldb: h,
                    b_trans: false,
                    c: grads.d_weight,
                    ldc: h,
                    ab: head.dtype,
                    c_f32: true,
                    beta: 1.0,
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
                    c: work.x,
                    ldc: h,
                    ab: head.dtype,
                    c_f32: false,
                    beta: 0.0,
                },
            )?;
            self.move_rows(
                stream,
                &RowMove {
                    scatter: true,
                    elem_bytes: head.dtype.size(),
                    src: work.x,
                    dst: grads.d_hidden,
                    index,
                    n_rows: m,
                    width: h,
                    bound: head.shape.n_rows,
                },
                status,
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
    gpu.gemm_available()?;
    Ok(stream.clone_dtoh(targets)?.into_iter().map(TargetIndex::to_i64).collect())
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
/// workspace sized for its largest chunk, and the status word the kernels report into.
pub(crate) struct ChunkPass {
    plan: PlanOnDevice,
    work: DeviceBuffer<u8>,
    status: StatusWord,
    shape: LinearShape,
    dtype: DType,
    max_rows: usize,
}

impl ChunkPass {
    /// Uploads `plan` and allocates the workspace for `shape` in `dtype`.
    pub(crate) fn new(stream: &Stream, shape: &LinearShape, dtype: DType, plan: &RowPlan) -> Result<Self> {
        Ok(ChunkPass {
            plan: PlanOnDevice::upload(stream, plan)?,
            work: stream.alloc_zeros::<u8>(ChunkWork::bytes(shape, dtype, plan.max_rows))?,
            status: StatusWord::new(stream, true)?,
            shape: *shape,
            dtype,
            max_rows: plan.max_rows,
        })
    }

    /// Bytes of the workspace.
    pub(crate) fn work_bytes(&self) -> usize {
        ChunkWork::bytes(&self.shape, self.dtype, self.max_rows)
    }

    /// The loop's raw pointers over `head` and the status word's, the borrows kept in `guards`.
    pub(crate) fn bind<'s>(
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
        let work = ChunkWork::carve(wp, &self.shape, self.dtype, self.max_rows);
        Ok((Loop { head, rows, targets, work }, status))
    }

    /// Waits for the loop and turns the kernels' status bits into an error.
    pub(crate) fn finish(&self, stream: &Stream) -> Result<()> {
        check_status(self.status.read(stream)?)
    }
}

/// Everything a chunk loop enqueues with: the head, the plan's device arrays, the workspace.
pub(crate) struct Loop {
    pub(crate) head: HeadPtrs,
    pub(crate) rows: u64,
    pub(crate) targets: u64,
    pub(crate) work: ChunkWork,
}

impl Loop {
    /// Token log-probs forward over chunk rows `r0 .. r0 + m` (logits already in the workspace).
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
        status: u64,
    ) -> Result<()> {
        let layout = LogitsLayout::contiguous(m, self.head.shape.vocab);
        let fwd = TokenLogprobsFwdPtrs {
            logits: self.work.logits,
            targets: self.targets + (r0 * 8) as u64,
            logp: self.work.logp,
            lse: self.work.lse,
            entropy: if entropy { self.work.entropy } else { 0 },
            status,
            stats: self.work.stats,
            log_sum_sq: 0,
        };
        let cfg = TokenLogprobsConfig { compute_entropy: entropy, ..*token };
        // SAFETY: forwarded to the caller.
        unsafe { gpu.token_logprobs_forward_raw(stream, self.head.dtype, IndexType::I64, layout, &fwd, &cfg) }
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
        let layout = LogitsLayout::contiguous(m, self.head.shape.vocab);
        let bwd = TokenLogprobsBwdPtrs {
            logits: self.work.logits,
            targets: self.targets + (r0 * 8) as u64,
            stats: self.work.stats,
            grad_logp: self.work.grad_logp,
            grad_logits: self.work.logits,
            status,
            entropy: if entropy_grad { self.work.entropy } else { 0 },
            grad_entropy: if entropy_grad { self.work.grad_entropy } else { 0 },
        };
        let cfg = TokenLogprobsConfig { compute_entropy: false, ..*token };
        // SAFETY: forwarded to the caller.
        unsafe {
            gpu.token_logprobs_backward_raw(
                stream,
                self.head.dtype,
                IndexType::I64,
                layout,
                layout.vocab,
                &bwd,
                &cfg,
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
    pub fn linear_logprobs_forward<T: LogitElement, I: TargetIndex>(
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
        let out = LinearForwardViews {
            logp: logp.as_view_mut(),
            lse: lse.as_view_mut(),
            entropy: entropy.as_mut().map(DeviceBuffer::as_view_mut),
        };
        let run = self.linear_logprobs_forward_into(stream, head, targets, out, cfg)?;
        Ok(LinearForwardOutputs {
            logp,
            lse,
            entropy,
            n_chunks: run.n_chunks,
            workspace_bytes: run.workspace_bytes,
        })
    }

    /// [`Gpu::linear_logprobs_forward`] into caller-owned outputs (a PyTorch caller's tensors):
    /// the same loop, writing every element of `out`.
    pub fn linear_logprobs_forward_into<T: LogitElement, I: TargetIndex>(
        &self,
        stream: &Stream,
        head: &LinearHead<'_, T>,
        targets: &View<'_, I>,
        mut out: LinearForwardViews<'_>,
        cfg: &LinearConfig,
    ) -> Result<LinearRun> {
        let host_targets = check_head(self, stream, head, targets, &cfg.token)?;
        let s = head.shape;
        ensure_len("logp", out.logp.len(), s.n_rows)?;
        ensure_len("lse", out.lse.len(), s.n_rows)?;
        ensure(out.entropy.is_some() == cfg.token.compute_entropy, "entropy", || {
            "give an entropy output exactly when compute_entropy is set".into()
        })?;
        if let Some(e) = &out.entropy {
            ensure_len("entropy", e.len(), s.n_rows)?;
        }
        let max_rows = rows_for_budget(&s, T::DTYPE, cfg.workspace_bytes, 1, "one row")?;
        let plan = token_chunks(&host_targets, s.vocab, cfg.token.ignore_index, max_rows)?;
        let mut pass = ChunkPass::new(stream, &s, T::DTYPE, &plan)?;
        // Ignored rows are never scattered to: they read 0.
        stream.memset_zeros(&mut out.logp)?;
        stream.memset_zeros(&mut out.lse)?;
        if let Some(e) = out.entropy.as_mut() {
            stream.memset_zeros(e)?;
        }
        {
            let mut guards = Vec::new();
            let head_p = head_ptrs(stream, head, &mut guards)?;
            let (logp_p, _g3) = out.logp.device_ptr_mut(stream)?;
            let (lse_p, _g4) = out.lse.device_ptr_mut(stream)?;
            let ent = match out.entropy.as_mut() {
                Some(e) => Some(e.device_ptr_mut(stream)?),
                None => None,
            };
            let mut pass_guards = Vec::new();
            let (lp, status_p) = pass.bind(stream, head_p, &mut pass_guards)?;
            let raw = stream.raw();
            for chunk in &plan.chunks {
                let (r0, m) = (chunk.start, chunk.len());
                let idx = lp.index(r0);
                // SAFETY: every pointer is a live buffer sized by the plan; work is ordered on `stream`.
                unsafe {
                    self.chunk_logits(raw, &lp.head, idx, m, &lp.work, status_p)?;
                    lp.logprobs_forward(self, raw, r0, m, &cfg.token, ent.is_some(), status_p)?;
                    self.scatter_f32(raw, lp.work.logp, logp_p, idx, m, s.n_rows, status_p)?;
                    self.scatter_f32(raw, lp.work.lse, lse_p, idx, m, s.n_rows, status_p)?;
                    if let Some((ep, _)) = &ent {
                        self.scatter_f32(raw, lp.work.entropy, *ep, idx, m, s.n_rows, status_p)?;
                    }
                }
            }
        }
        pass.finish(stream)?;
        Ok(LinearRun { n_chunks: plan.chunks.len(), workspace_bytes: pass.work_bytes() })
    }

    /// The backward of [`Gpu::linear_logprobs_forward`] for any per-token loss (the caller gives
    /// dL/dlogp and optionally dL/dH, `[N]` f32): chunks of used rows recompute their logits
    /// (GEMM), run the log-probs backward in place, then `d_weight += dLᵀ X` (f32, chunk order:
    /// deterministic) and `d_hidden = dL · W`, i.e. three GEMMs per token. Synchronizes once to
    /// plan and once at the end.
    pub fn linear_logprobs_backward<T: LogitElement, I: TargetIndex>(
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

    /// [`Gpu::linear_logprobs_backward`] into caller-owned gradients (overwritten).
    #[allow(clippy::too_many_arguments)]
    pub fn linear_logprobs_backward_into<T: LogitElement, I: TargetIndex>(
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
        let max_rows = rows_for_budget(&s, T::DTYPE, cfg.workspace_bytes, 1, "one row")?;
        let plan = token_chunks(&host_targets, s.vocab, cfg.token.ignore_index, max_rows)?;
        // Checked and planned: only now touch the caller's outputs.
        grads.prepare(stream, head, zeroed)?;
        let mut pass = ChunkPass::new(stream, &s, T::DTYPE, &plan)?;
        {
            let mut guards = Vec::new();
            let head_p = head_ptrs(stream, head, &mut guards)?;
            let gl = optional_ptr(stream, Some(grad_logp), &mut guards)?;
            let ge = optional_ptr(stream, grad_entropy, &mut guards)?;
            let mut grad_guards = Vec::new();
            let gp = grads.ptrs(stream, &mut grad_guards)?;
            let mut pass_guards = Vec::new();
            let (lp, status_p) = pass.bind(stream, head_p, &mut pass_guards)?;
            let raw = stream.raw();
            for chunk in &plan.chunks {
                let (r0, m) = (chunk.start, chunk.len());
                let idx = lp.index(r0);
                // SAFETY: every pointer is a live buffer sized by the plan; work is ordered on `stream`.
                unsafe {
                    self.chunk_logits(raw, &lp.head, idx, m, &lp.work, status_p)?;
                    lp.logprobs_forward(self, raw, r0, m, &cfg.token, ge != 0, status_p)?;
                    self.gather_f32(raw, gl, lp.work.grad_logp, idx, m, s.n_rows, status_p)?;
                    if ge != 0 {
                        self.gather_f32(raw, ge, lp.work.grad_entropy, idx, m, s.n_rows, status_p)?;
                    }
                    lp.logprobs_backward(self, raw, r0, m, &cfg.token, ge != 0, status_p)?;
                    self.chunk_backward(raw, &lp.head, idx, m, &lp.work, &gp, status_p)?;
                }
            }
        }
        pass.finish(stream)?;
        Ok(LinearRun { n_chunks: plan.chunks.len(), workspace_bytes: pass.work_bytes() })
    }
}
