//! CPU reference of the token log-probs op, accumulating in f64: the oracle for the GPU tests.
use super::{validate, LogitsLayout, TokenLogprobsConfig};
use crate::dtype::{LogitElement, TargetIndex};
use crate::error::ensure_len;
use crate::error::{Error, Result};
use crate::numeric::pairwise_sum_iter;

/// Forward results of the reference (f64).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobsRef {
    /// Per-row log p(target); 0 on ignored rows.
    pub logp: Vec<f64>,
    /// Per-row logsumexp(logits / T); 0 on ignored rows.
    pub lse: Vec<f64>,
    /// Per-row entropy of softmax(logits / T); 0 on ignored rows (always computed here).
    pub entropy: Vec<f64>,
    /// Per-row `log Σ_v p_v²` (WPO's term); 0 on ignored rows (always computed here).
    pub log_sum_sq: Vec<f64>,
    /// Per-row mean of `logits / T`; 0 on ignored rows.
    pub mean_logits: Vec<f64>,
    /// Per-row: the target is the first argmax of the row (false on ignored rows and rows with
    /// NaN/+inf).
    pub is_top1: Vec<bool>,
}

/// Top-k reference: row-major `[n_rows, k]` log-probs and ids.
#[derive(Debug, Clone, PartialEq)]
pub struct TopkRef {
    /// The k largest `log p_v` per row, descending (equal logits by ascending id); 0 on ignored rows.
    pub logp: Vec<f64>,
    /// Their ids; -1 on ignored rows.
    pub ids: Vec<i64>,
}

impl TokenLogprobsRef {
    /// Every output 0 for `n` rows (what ignored rows keep).
    pub(crate) fn zeros(n: usize) -> Self {
        Self {
            logp: vec![0.0; n],
            lse: vec![0.0; n],
            entropy: vec![0.0; n],
            log_sum_sq: vec![0.0; n],
            mean_logits: vec![0.0; n],
            is_top1: vec![false; n],
        }
    }

    /// Fills row `r` from its f64 log-softmax `logp`, logsumexp `lse` and target `t`.
    pub(crate) fn set_row(&mut self, r: usize, t: usize, logp: &[f64], lse: f64) {
        self.lse[r] = lse;
        self.logp[r] = logp[t];
        self.log_sum_sq[r] = log_sum_sq(logp);
        // mean_v y_v = lse + mean_v log p_v (y = logits / T).
        self.mean_logits[r] = lse + pairwise_sum_iter(logp.iter().cloned()) / logp.len() as f64;
        self.is_top1[r] = first_argmax(logp) == Some(t);
        // H = -sum p ln p; p = 0 terms contribute 0 (they are -inf logits).
        self.entropy[r] = -pairwise_sum_iter(logp.iter().map(|&lp| {
            let p = lp.exp();
            if p == 0.0 && !lp.is_nan() {
                0.0
            } else {
                p * lp
            }
        }));
    }
}

/// Checks one target: `Ok(None)` for an ignored row, `Ok(Some(t))` for a usable one.
pub(crate) fn checked_target(row: usize, t: i64, vocab: usize, ignore_index: i64) -> Result<Option<usize>> {
    if t == ignore_index {
        Ok(None)
    } else if t < 0 || t as u64 >= vocab as u64 {
        Err(Error::TargetOutOfRange { row: row as u64, target: t, vocab: vocab as u64 })
    } else {
        Ok(Some(t as usize))
    }
}

/// Row statistics in f64: `(log p_v for every v, lse)` of `softmax(row / T)`. NaN or +inf
/// anywhere gives NaN; an all -inf row gives lse = -inf and NaN log-probs.
fn row_log_softmax<T: LogitElement>(row: &[T], inv_t: f64) -> (Vec<f64>, f64) {
    row_log_softmax_f64(row.iter().map(|&x| x.to_f64() * inv_t).collect())
}

/// [`row_log_softmax`] of a row already divided by the temperature (the linear forms' f64
/// logits).
pub(crate) fn row_log_softmax_f64(y: Vec<f64>) -> (Vec<f64>, f64) {
    if y.iter().any(|v| v.is_nan() || *v == f64::INFINITY) {
        return (vec![f64::NAN; y.len()], f64::NAN);
    }
    let (arg, m) =
        y.iter()
            .cloned()
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |a, (i, v)| if v > a.1 { (i, v) } else { a });
    if m == f64::NEG_INFINITY {
        return (vec![f64::NAN; y.len()], f64::NEG_INFINITY);
    }
    // lse = m + ln(1 + sum over v != argmax of e^(y_v - m)), and log p_v = (y_v - m) - ln1p(..):
    // never forming m + tiny keeps full relative precision of 1 - p when one token dominates, so
    // the oracle can judge the kernels' expm1 target gradient.
    let rest =
        pairwise_sum_iter(y.iter().enumerate().filter(|&(i, _)| i != arg).map(|(_, &v)| (v - m).exp()));
    let l = rest.ln_1p();
    (y.iter().map(|&v| (v - m) - l).collect(), m + l)
}

/// The first index of the largest value; `None` when a value is NaN.
pub(crate) fn first_argmax(values: &[f64]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, &v) in values.iter().enumerate() {
        if v.is_nan() {
            return None;
        }
        if best.is_none_or(|b| v > values[b]) {
            best = Some(i);
        }
    }
    best
}

/// `log Σ_v p_v²` of a row's log-probs: logsumexp(2 log p), shifted by the largest log p.
pub(crate) fn log_sum_sq(logp: &[f64]) -> f64 {
    let top = logp.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    2.0 * top + pairwise_sum_iter(logp.iter().map(|&lp| (2.0 * (lp - top)).exp())).ln()
}

/// Forward reference: logp, lse and entropy for every row (see the module docs for the formulas).
pub fn forward<T: LogitElement, I: TargetIndex>(
    logits: &[T],
    layout: LogitsLayout,
    targets: &[I],
    cfg: &TokenLogprobsConfig,
) -> Result<TokenLogprobsRef> {
    validate(&layout, cfg, logits.len(), targets.len())?;
    let inv_t = 1.0 / cfg.temperature as f64;
    let n = layout.n_rows;
    let mut out = TokenLogprobsRef::zeros(n);
    for (r, target) in targets.iter().enumerate() {
        let Some(t) = checked_target(r, target.to_i64(), layout.vocab, cfg.ignore_index)? else {
            continue;
        };
        let start = r * layout.row_stride;
        let (logp, lse) = row_log_softmax(&logits[start..start + layout.vocab], inv_t);
        out.set_row(r, t, &logp, lse);
    }
    Ok(out)
}

/// Top-k reference: per row the `k` largest `log p_v` of `softmax(logits / T)` and their ids,
/// ordered by the logit (descending), equal logits by ascending id; ignored rows get 0 and -1.
pub fn topk<T: LogitElement, I: TargetIndex>(
    logits: &[T],
    layout: LogitsLayout,
    targets: &[I],
    k: usize,
    cfg: &TokenLogprobsConfig,
) -> Result<TopkRef> {
    validate(&layout, cfg, logits.len(), targets.len())?;
    super::launch::validate_top_k(k, layout.vocab)?;
    let total = super::launch::topk_len(layout.n_rows, k)?;
    let inv_t = 1.0 / cfg.temperature as f64;
    let mut out = TopkRef { logp: vec![0.0; total], ids: vec![-1; total] };
    for (r, target) in targets.iter().enumerate() {
        if checked_target(r, target.to_i64(), layout.vocab, cfg.ignore_index)?.is_none() {
            continue;
        }
        let row = &logits[r * layout.row_stride..r * layout.row_stride + layout.vocab];
        let (logp, _) = row_log_softmax(row, inv_t);
        let mut order: Vec<usize> = (0..layout.vocab).collect();
        // NaN logits sort by their bits' order as the kernel's keys do; their log-probs are NaN anyway.
        let key = |v: usize| order_value(row[v].to_f64());
        order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
        for (j, &v) in order.iter().take(k).enumerate() {
            out.logp[r * k + j] = logp[v];
            out.ids[r * k + j] = v as i64;
        }
    }
    Ok(out)
}

/// The value a top-k orders by: -0 is +0 (equal logits tie, broken by id); NaNs by their bits.
pub(crate) fn order_value(x: f64) -> f64 {
    if x == 0.0 {
        0.0
    } else {
        x
    }
}

/// Backward reference: dense `[n_rows, vocab]` gradient (row stride = vocab) of
/// `sum_r grad_logp[r] * logp[r]` with respect to the logits.
pub fn backward<T: LogitElement, I: TargetIndex>(
    logits: &[T],
    layout: LogitsLayout,
    targets: &[I],
    grad_logp: &[f32],
    cfg: &TokenLogprobsConfig,
) -> Result<Vec<f64>> {
    validate(&layout, cfg, logits.len(), targets.len())?;
    ensure_len("grad_logp", grad_logp.len(), layout.n_rows)?;
    let inv_t = 1.0 / cfg.temperature as f64;
    let v_len = layout.vocab;
    let mut grad = vec![0.0; layout.n_rows * v_len];
    for (r, target) in targets.iter().enumerate() {
        let Some(t) = checked_target(r, target.to_i64(), v_len, cfg.ignore_index)? else {
            continue;
        };
        let start = r * layout.row_stride;
        let (logp, _) = row_log_softmax(&logits[start..start + v_len], inv_t);
        let coef = grad_logp[r] as f64 * inv_t;
        for (v, g) in grad[r * v_len..(r + 1) * v_len].iter_mut().enumerate() {
            let lp = logp[v];
            // 1 - p at the target as -expm1(log p): no cancellation when p -> 1.
            *g = if v == t { -coef * lp.exp_m1() } else { -coef * lp.exp() };
        }
    }
    Ok(grad)
}

/// Backward reference with an entropy gradient: d/dlogits of
/// `Σ_r grad_logp[r] logp[r] + grad_entropy[r] H[r]`, dense `[n_rows, vocab]`. The entropy part is
/// `−grad_entropy · p_v (log p_v + H) / T` (p_v = 0 contributes 0).
pub fn backward_with_entropy<T: LogitElement, I: TargetIndex>(
    logits: &[T],
    layout: LogitsLayout,
    targets: &[I],
    grad_logp: &[f32],
    grad_entropy: &[f32],
    cfg: &TokenLogprobsConfig,
) -> Result<Vec<f64>> {
    let mut grad = backward(logits, layout, targets, grad_logp, cfg)?;
    ensure_len("grad_entropy", grad_entropy.len(), layout.n_rows)?;
    let fwd = forward(logits, layout, targets, cfg)?;
    let inv_t = 1.0 / cfg.temperature as f64;
    let v_len = layout.vocab;
    for (r, target) in targets.iter().enumerate() {
        if checked_target(r, target.to_i64(), v_len, cfg.ignore_index)?.is_none() {
            continue;
        }
        let start = r * layout.row_stride;
        let (logp, _) = row_log_softmax(&logits[start..start + v_len], inv_t);
        let coef = grad_entropy[r] as f64 * inv_t;
        let h = fwd.entropy[r];
        for (v, g) in grad[r * v_len..(r + 1) * v_len].iter_mut().enumerate() {
            let p = logp[v].exp();
            if p > 0.0 {
                *g -= coef * p * (logp[v] + h);
            }
        }
    }
    Ok(grad)
}
