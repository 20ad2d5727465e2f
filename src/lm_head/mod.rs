//! The fused LM head's shared machinery, below the op rooms that use it (`linear_token_logprobs`, the
//! vocabulary-parallel shard loop in `vocab_parallel`, the preference step in `step::linear`):
//! the head's shapes and views, the host chunk plan (`plan`), and the chunk loop on the device
//! (`chunk`: row gathers and scatters, the chunk workspace, GEMM → log-probs kernels per chunk).
//! The public types are re-exported by `linear_token_logprobs`.
use crate::dtype::LogitElement;
use crate::error::ensure_len;
use crate::error::{ensure, Result};
use crate::runtime::mem::{DeviceBuffer, DevicePtrMut, Guard, Stream, View, ViewMut};
use crate::TokenLogprobsConfig;
use chunk::GradPtrs;

pub(crate) mod chunk;
pub(crate) mod plan;

/// Plans a host-planned chunk loop within `budget` bytes of workspace: one slot of the whole
/// budget; when that takes more than one chunk and a second stream is allowed ([`head_streams`]),
/// two slots of half of it each (one drained by the side stream while the next chunk fills the
/// other), unless half cannot hold the loop's least chunk (one row, or the largest group of
/// pairs). Returns the plan and its number of slots.
pub(crate) fn plan_in_slots<P>(
    budget: usize,
    plan: impl Fn(usize) -> Result<P>,
    chunks: impl Fn(&P) -> usize,
) -> Result<(P, usize)> {
    plan_in_slots_for(budget, head_streams()?, plan, chunks)
}

/// [`plan_in_slots`] with the number of streams given (1: one slot of the whole budget).
pub(crate) fn plan_in_slots_for<P>(
    budget: usize,
    streams: usize,
    plan: impl Fn(usize) -> Result<P>,
    chunks: impl Fn(&P) -> usize,
) -> Result<(P, usize)> {
    let whole = plan(budget)?;
    if chunks(&whole) > 1 && streams == 2 {
        if let Ok(halves) = plan(budget / 2) {
            return Ok((halves, 2));
        }
    }
    Ok((whole, 1))
}

/// How many streams a chunk loop of more than one chunk runs on: `PREF_KERNELS_HEAD_STREAMS` `1`
/// (each chunk's row pass after its GEMM on the caller's stream, chunks twice as large) or `2`
/// (unset: the row pass on a second stream, overlapping the next chunk's GEMM,
/// [`crate::runtime::pipeline`]). Read at every call, so one process can time both.
pub(crate) fn head_streams() -> Result<usize> {
    match std::env::var("PREF_KERNELS_HEAD_STREAMS").as_deref() {
        Err(_) | Ok("") | Ok("2") => Ok(2),
        Ok("1") => Ok(1),
        Ok(other) => {
            Err(crate::error::invalid("PREF_KERNELS_HEAD_STREAMS", format!("must be 1 or 2, got {other:?}")))
        }
    }
}

pub use plan::{min_workspace_bytes, workspace_bytes_per_row};

/// Shape of a linear log-probs problem: `n_rows` hidden states of width `hidden`, a vocabulary of
/// `vocab` rows in the weight (row-major `[vocab, hidden]`, contiguous).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearShape {
    /// N tokens.
    pub n_rows: usize,
    /// H, the model width (>= 1).
    pub hidden: usize,
    /// V (>= 1).
    pub vocab: usize,
}

impl LinearShape {
    /// Checks the sizes (H, V >= 1; N·H, V·H and N·V fit in i64) and the lengths of the inputs.
    pub fn validate(
        &self,
        hidden_len: usize,
        weight_len: usize,
        bias_len: Option<usize>,
        targets_len: usize,
    ) -> Result<()> {
        ensure(self.hidden >= 1 && self.vocab >= 1, "shape", || {
            format!("H and V must be >= 1, got {self:?}")
        })?;
        let fits = |a: usize, b: usize| a.checked_mul(b).filter(|&x| x <= i64::MAX as usize);
        let (nh, vh) = (fits(self.n_rows, self.hidden), fits(self.vocab, self.hidden));
        ensure(nh.is_some() && vh.is_some() && fits(self.n_rows, self.vocab).is_some(), "shape", || {
            format!("{self:?}: N·H, V·H or N·V exceeds i64::MAX")
        })?;
        ensure(nh == Some(hidden_len), "hidden", || {
            format!("needs N·H = {} elements ({self:?}), got {hidden_len}", nh.unwrap_or(0))
        })?;
        ensure(vh == Some(weight_len), "weight", || {
            format!(
                "needs V·H = {} elements ({self:?}: a contiguous [V, H] weight), got {weight_len}",
                vh.unwrap_or(0)
            )
        })?;
        if let Some(b) = bias_len {
            ensure(b == self.vocab, "bias", || format!("needs V = {} elements, got {b}", self.vocab))?;
        }
        ensure(targets_len == self.n_rows, "targets", || {
            format!("needs N = {} targets, got {targets_len}", self.n_rows)
        })
    }
}

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
    /// per-row scratch); the chunk size follows from it (halved, in two slots, when the rows take
    /// more than one chunk: a second stream runs one chunk's row pass while the next chunk's GEMM
    /// fills the other slot). Default [`DEFAULT_WORKSPACE_BYTES`].
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
    /// `log Σ_v p_v²` (WPO, TRL's `log_sum_sq_probs`), or `None`; needs `compute_entropy`.
    pub log_sum_sq: Option<ViewMut<'a, f32>>,
    /// Mean of the row's logits / T (TRL's `mean_logits`), or `None`.
    pub mean_logits: Option<ViewMut<'a, f32>>,
    /// 1 where the target is the row's first argmax (TRL's `is_top1`), else 0; or `None`.
    pub is_top1: Option<ViewMut<'a, u8>>,
    /// The k largest log-probs per row and their ids, or `None`.
    pub topk: Option<TopkViews<'a>>,
}

impl<'a> LinearForwardViews<'a> {
    /// The three base outputs, none of the optional fields.
    pub fn new(logp: ViewMut<'a, f32>, lse: ViewMut<'a, f32>, entropy: Option<ViewMut<'a, f32>>) -> Self {
        LinearForwardViews {
            logp,
            lse,
            entropy,
            log_sum_sq: None,
            mean_logits: None,
            is_top1: None,
            topk: None,
        }
    }
}

/// Caller-owned top-k outputs, row-major `[N, k]`: log-probs descending (equal logits by
/// ascending id) and their ids; ignored rows hold 0 and -1.
pub struct TopkViews<'a> {
    /// k, `1..=TOPK_MAX` and at most the vocabulary.
    pub k: usize,
    /// `[N, k]` f32 log-probs.
    pub logp: ViewMut<'a, f32>,
    /// `[N, k]` i64 ids.
    pub ids: ViewMut<'a, i64>,
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
        self.check(head)?;
        if !zeroed {
            stream.memset_zeros(&mut self.d_hidden)?;
            stream.memset_zeros(&mut self.d_weight)?;
            if let Some(b) = self.d_bias.as_mut() {
                stream.memset_zeros(b)?;
            }
        }
        Ok(())
    }

    /// Checks the lengths against `head` (and that `d_bias` is given exactly with a bias).
    pub(crate) fn check(&self, head: &LinearHead<'_, T>) -> Result<()> {
        let s = head.shape;
        ensure_len("d_hidden", self.d_hidden.len(), s.n_rows * s.hidden)?;
        ensure_len("d_weight", self.d_weight.len(), s.vocab * s.hidden)?;
        match (&self.d_bias, &head.bias) {
            (Some(b), Some(_)) => ensure_len("d_bias", b.len(), s.vocab)?,
            (None, None) => {}
            _ => return Err(crate::error::invalid("d_bias", "give d_bias exactly when the head has a bias")),
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
