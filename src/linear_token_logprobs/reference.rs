//! f64 reference of the linear forms: naive GEMMs in f64, the log-softmax of
//! `crate::token_logprobs::reference` per row.
use super::LinearShape;
use crate::dtype::{LogitElement, TargetIndex};
use crate::error::Result;
use crate::numeric::pairwise_sum_iter;
use crate::token_logprobs::reference::{
    checked_target, order_value, row_log_softmax_f64, TokenLogprobsRef, TopkRef,
};
use crate::token_logprobs::TokenLogprobsConfig;

/// Gradients of `Σ_r grad_logp[r] logp[r] + grad_entropy[r] H[r]` (f64).
#[derive(Debug, Clone, PartialEq)]
pub struct LinearGrads {
    /// `[N, H]`.
    pub d_hidden: Vec<f64>,
    /// `[V, H]`.
    pub d_weight: Vec<f64>,
    /// `[V]`.
    pub d_bias: Vec<f64>,
}

/// Row r's logits divided by the temperature, in f64.
fn row_logits<T: LogitElement>(
    hidden: &[T],
    weight: &[T],
    bias: Option<&[f32]>,
    s: &LinearShape,
    r: usize,
    inv_t: f64,
) -> Vec<f64> {
    let x = &hidden[r * s.hidden..(r + 1) * s.hidden];
    (0..s.vocab)
        .map(|v| {
            let w = &weight[v * s.hidden..(v + 1) * s.hidden];
            let dot = pairwise_sum_iter(x.iter().zip(w).map(|(a, b)| a.to_f64() * b.to_f64()));
            (dot + bias.map_or(0.0, |b| b[v] as f64)) * inv_t
        })
        .collect()
}

fn check<T, I>(
    hidden: &[T],
    weight: &[T],
    bias: Option<&[f32]>,
    s: &LinearShape,
    targets: &[I],
    cfg: &TokenLogprobsConfig,
) -> Result<()> {
    cfg.validate()?;
    s.validate(hidden.len(), weight.len(), bias.map(<[f32]>::len), targets.len())
}

/// Forward: logp, lse and entropy per row of `hidden · weightᵀ (+ bias)`; ignored rows 0.
pub fn forward<T: LogitElement, I: TargetIndex>(
    hidden: &[T],
    weight: &[T],
    bias: Option<&[f32]>,
    shape: LinearShape,
    targets: &[I],
    cfg: &TokenLogprobsConfig,
) -> Result<TokenLogprobsRef> {
    check(hidden, weight, bias, &shape, targets, cfg)?;
    let inv_t = 1.0 / cfg.temperature as f64;
    let n = shape.n_rows;
    let mut out = TokenLogprobsRef::zeros(n);
    for (r, target) in targets.iter().enumerate() {
        let Some(t) = checked_target(r, target.to_i64(), shape.vocab, cfg.ignore_index)? else { continue };
        let (logp, lse) = row_log_softmax_f64(row_logits(hidden, weight, bias, &shape, r, inv_t));
        out.set_row(r, t, &logp, lse);
    }
    Ok(out)
}

/// Top-k: per row the `k` largest log-probs of `hidden · weightᵀ (+ bias)` and their ids, ordered
/// by the f64 logit (descending), equal logits by ascending id; ignored rows 0 and -1.
pub fn topk<T: LogitElement, I: TargetIndex>(
    hidden: &[T],
    weight: &[T],
    bias: Option<&[f32]>,
    shape: LinearShape,
    targets: &[I],
    k: usize,
    cfg: &TokenLogprobsConfig,
) -> Result<TopkRef> {
    check(hidden, weight, bias, &shape, targets, cfg)?;
    crate::token_logprobs::validate_top_k(k, shape.vocab)?;
    let total = crate::token_logprobs::topk_len(shape.n_rows, k)?;
    let inv_t = 1.0 / cfg.temperature as f64;
    let mut out = TopkRef { logp: vec![0.0; total], ids: vec![-1; total] };
    for (r, target) in targets.iter().enumerate() {
        if checked_target(r, target.to_i64(), shape.vocab, cfg.ignore_index)?.is_none() {
            continue;
        }
        let y = row_logits(hidden, weight, bias, &shape, r, inv_t);
        let mut order: Vec<usize> = (0..shape.vocab).collect();
        order.sort_by(|&a, &b| order_value(y[b]).total_cmp(&order_value(y[a])).then(a.cmp(&b)));
        let (logp, _) = row_log_softmax_f64(y);
        for (j, &v) in order.iter().take(k).enumerate() {
            out.logp[r * k + j] = logp[v];
            out.ids[r * k + j] = v as i64;
        }
    }
    Ok(out)
}

/// Backward: d_hidden, d_weight, d_bias of `Σ grad_logp·logp (+ Σ grad_entropy·H)`.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: LogitElement, I: TargetIndex>(
    hidden: &[T],
    weight: &[T],
    bias: Option<&[f32]>,
    shape: LinearShape,
    targets: &[I],
    grad_logp: &[f32],
    grad_entropy: Option<&[f32]>,
    cfg: &TokenLogprobsConfig,
) -> Result<LinearGrads> {
    check(hidden, weight, bias, &shape, targets, cfg)?;
    crate::error::ensure_len("grad_logp", grad_logp.len(), shape.n_rows)?;
    if let Some(g) = grad_entropy {
        crate::error::ensure_len("grad_entropy", g.len(), shape.n_rows)?;
    }
    let inv_t = 1.0 / cfg.temperature as f64;
    let (h, v_len) = (shape.hidden, shape.vocab);
    let mut out = LinearGrads {
        d_hidden: vec![0.0; shape.n_rows * h],
        d_weight: vec![0.0; v_len * h],
        d_bias: vec![0.0; v_len],
    };
    for (r, target) in targets.iter().enumerate() {
        let Some(t) = checked_target(r, target.to_i64(), v_len, cfg.ignore_index)? else { continue };
        let (logp, _) = row_log_softmax_f64(row_logits(hidden, weight, bias, &shape, r, inv_t));
        let ent =
            -pairwise_sum_iter(
                logp.iter().map(|&lp| if lp == f64::NEG_INFINITY { 0.0 } else { lp.exp() * lp }),
            );
        let (g, ge) = (grad_logp[r] as f64, grad_entropy.map_or(0.0, |e| e[r] as f64));
        // d/dlogits of the row, then the two GEMM-shaped products.
        let dz: Vec<f64> = (0..v_len)
            .map(|v| {
                let p = logp[v].exp();
                let d_logp = if v == t { -logp[v].exp_m1() } else { -p };
                let d_ent = if p > 0.0 { -p * (logp[v] + ent) } else { 0.0 };
                (g * d_logp + ge * d_ent) * inv_t
            })
            .collect();
        let x = &hidden[r * h..(r + 1) * h];
        for (v, &d) in dz.iter().enumerate() {
            if d == 0.0 {
                continue;
            }
            out.d_bias[v] += d;
            let w = &weight[v * h..(v + 1) * h];
            for k in 0..h {
                out.d_hidden[r * h + k] += d * w[k].to_f64();
                out.d_weight[v * h + k] += d * x[k].to_f64();
            }
        }
    }
    Ok(out)
}
