//! Fused token log-probs (log-softmax gather): per-row log p(target) from logits `[N, V]` without
//! materializing the log-softmax, and its backward into `d/dlogits` (optionally in place).
//!
//! Forward, for row r with target t (T = temperature):
//! `logp[r] = logits[r, t] / T - lse[r]`, `lse[r] = logsumexp(logits[r, :] / T)`, and optionally
//! `entropy[r] = -sum_v p_v ln p_v` of `p = softmax(logits[r, :] / T)`.
//! Backward: `grad_logits[r, v] = grad_logp[r] * (1[v = t] - p_v) / T`.
//!
//! Optional outputs of the same pass: `log Σ_v p_v²`, the mean of `logits / T` and whether the
//! target is the row's first argmax (TRL's fused-head fields, [`TokenLogprobsFwdPtrs`]). The top-k
//! log-probs (k ≤ [`crate::params::TOPK_MAX`], descending, equal logits by ascending id, with their
//! ids) come from one more kernel over the rows that reads the forward's softmax statistics
//! ([`crate::Gpu::token_logprobs_topk`]), so the target's entry is bitwise its `logp`.
//!
//! Rows whose target equals `ignore_index` get `logp = lse = entropy = 0` and zero gradient rows,
//! and are never read. NaN or +inf anywhere in a used row gives NaN outputs for that row.
//!
//! Three layers: [`reference`](mod@reference) (f64 CPU oracle), the safe GPU API on cudarc buffers
//! ([`crate::Gpu::token_logprobs_forward`], ...), and the unsafe raw-pointer API
//! ([`crate::Gpu::token_logprobs_forward_raw`], ...).
//!
//! Bad targets (outside `[0, V)` and not `ignore_index`): the CPU reference returns
//! [`Error::TargetOutOfRange`](crate::Error::TargetOutOfRange). On the GPU the kernels never read a
//! target-indexed element for such a row; they write NaN to its outputs (forward: logp, lse,
//! entropy; backward: the whole gradient row) and OR [`crate::params::STATUS_BAD_TARGET`] into an
//! optional device status word. The safe API allocates that word and, when
//! [`TokenLogprobsConfig::check_targets`] is set (the default), reads it back after the launch
//! (one stream synchronization) and returns [`Error::DeviceCheck`](crate::Error::DeviceCheck). The raw
//! API takes the status pointer from the caller (0 = none) and never synchronizes.
use crate::error::{ensure, Result};

pub(crate) mod launch;
pub mod reference;

pub use launch::{
    stats_len, topk_len, validate_top_k, EntropyGrad, GradLogits, TokenLogprobsBwdPtrs, TokenLogprobsFwdPtrs,
    TokenLogprobsOutputs, TokenTopkPtrs,
};

/// Hyperparameters of the token log-probs op.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenLogprobsConfig {
    /// Target value marking rows to skip (default -100, as PyTorch/TRL).
    pub ignore_index: i64,
    /// Softmax temperature: logits are divided by it (default 1.0; must be finite and > 0).
    pub temperature: f32,
    /// Also compute the per-row entropy of softmax(logits / T) (default false).
    pub compute_entropy: bool,
    /// Safe GPU API only: read back the device status word and report bad targets as an error
    /// (default true; costs one stream synchronization per call).
    pub check_targets: bool,
}

impl Default for TokenLogprobsConfig {
    fn default() -> Self {
        TokenLogprobsConfig {
            ignore_index: -100,
            temperature: 1.0,
            compute_entropy: false,
            check_targets: true,
        }
    }
}

/// Shape of a logits matrix: `n_rows` rows of `vocab` used columns, `row_stride` elements apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogitsLayout {
    /// Number of rows (tokens), N.
    pub n_rows: usize,
    /// Vocabulary size V (used columns per row), >= 1.
    pub vocab: usize,
    /// Distance between rows in elements, >= V (a view of a wider buffer works).
    pub row_stride: usize,
}

impl LogitsLayout {
    /// A contiguous `[n_rows, vocab]` matrix.
    pub fn contiguous(n_rows: usize, vocab: usize) -> Self {
        LogitsLayout { n_rows, vocab, row_stride: vocab }
    }

    /// Elements spanned by the matrix: `(n_rows - 1) * row_stride + vocab` (0 when empty).
    pub fn span(&self) -> Result<usize> {
        if self.n_rows == 0 {
            return Ok(0);
        }
        (self.n_rows - 1)
            .checked_mul(self.row_stride)
            .and_then(|x| x.checked_add(self.vocab))
            .filter(|&x| x <= i64::MAX as usize)
            .ok_or_else(|| {
                crate::error::invalid("layout", format!("{self:?} spans more than i64::MAX elements"))
            })
    }

    /// Checks the shape alone: V >= 1, stride >= V, N <= i32::MAX, span fits in i64.
    pub fn validate(&self) -> Result<()> {
        ensure(self.vocab >= 1, "vocab", || "must be >= 1, got 0".into())?;
        ensure(self.vocab <= i32::MAX as usize, "vocab", || {
            format!("must be <= {}, got {}", i32::MAX, self.vocab)
        })?;
        ensure(self.row_stride >= self.vocab, "row_stride", || {
            format!("must be >= vocab ({}), got {}", self.vocab, self.row_stride)
        })?;
        ensure(self.n_rows <= i32::MAX as usize, "n_rows", || {
            format!("must be <= {}, got {}", i32::MAX, self.n_rows)
        })?;
        self.span().map(|_| ())
    }
}

impl TokenLogprobsConfig {
    /// Checks the hyperparameters: temperature finite and > 0, and its reciprocal (what the
    /// kernels multiply by) finite in f32, i.e. T >= 2^-128 (about 2.9e-39).
    pub fn validate(&self) -> Result<()> {
        ensure(self.temperature.is_finite() && self.temperature > 0.0, "temperature", || {
            format!("must be finite and > 0, got {}", self.temperature)
        })?;
        ensure((1.0f32 / self.temperature).is_finite(), "temperature", || {
            format!("1 / T overflows f32 for T = {:e}; use T >= 2.9e-39", self.temperature)
        })
    }
}

/// Validation shared by every layer: shape, hyperparameters, and the lengths the caller supplied.
pub(crate) fn validate(
    layout: &LogitsLayout,
    cfg: &TokenLogprobsConfig,
    logits_len: usize,
    targets_len: usize,
) -> Result<()> {
    layout.validate()?;
    cfg.validate()?;
    let span = layout.span()?;
    ensure(logits_len >= span, "logits", || {
        format!("needs at least {span} elements for {layout:?}, got {logits_len}")
    })?;
    ensure(targets_len == layout.n_rows, "targets", || {
        format!("length must equal n_rows ({}), got {targets_len}", layout.n_rows)
    })
}
