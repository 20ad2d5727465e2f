//! CPU reference of shared-prefix group attention in f64 with the explicit mask
//! `allowed(i, j) = same group, j <= i, (j in the prefix or j in i's own segment)`.
use super::{AttnShape, SharedPrefixLayout};
use crate::dtype::LogitElement;
use crate::error::{ensure, Result};

/// Forward results: `o` `[T, Hq, d]`, `lse` `[Hq, T]` (natural log).
#[derive(Debug, Clone, PartialEq)]
pub struct AttnRef {
    /// Output.
    pub o: Vec<f64>,
    /// Row log-sum-exp of the scaled scores.
    pub lse: Vec<f64>,
}

/// Backward results: gradients of `sum(dout * o)` with respect to q, k, v (shapes as the inputs).
#[derive(Debug, Clone, PartialEq)]
pub struct AttnGrads {
    /// dL/dq `[T, Hq, d]`.
    pub dq: Vec<f64>,
    /// dL/dk `[T, Hkv, d]`.
    pub dk: Vec<f64>,
    /// dL/dv `[T, Hkv, d]`.
    pub dv: Vec<f64>,
}

fn check<T>(q: &[T], k: &[T], v: &[T], layout: &SharedPrefixLayout, shape: &AttnShape) -> Result<()> {
    shape.validate()?;
    let t = layout.total_tokens();
    let (nq, nk) = (t * shape.q_heads * shape.head_dim, t * shape.kv_heads * shape.head_dim);
    ensure(q.len() == nq, "q", || format!("needs T x Hq x d = {nq} elements, got {}", q.len()))?;
    ensure(k.len() == nk, "k", || format!("needs T x Hkv x d = {nk} elements, got {}", k.len()))?;
    ensure(v.len() == nk, "v", || format!("needs T x Hkv x d = {nk} elements, got {}", v.len()))
}

/// Probabilities of row i for head h: `(allowed keys, P_ij)`, plus the row's LSE.
fn row_probs(
    q: &[f64],
    k: &[f64],
    seg: &[[usize; 4]],
    shape: &AttnShape,
    h: usize,
    i: usize,
) -> (Vec<(usize, f64)>, f64) {
    let (d, hq, hkv) = (shape.head_dim, shape.q_heads, shape.kv_heads);
    let kvh = h / (hq / hkv);
    let qi = &q[(i * hq + h) * d..(i * hq + h + 1) * d];
    let scores: Vec<(usize, f64)> = (0..=i)
        .filter(|&j| SharedPrefixLayout::allowed(seg, i, j))
        .map(|j| {
            let kj = &k[(j * hkv + kvh) * d..(j * hkv + kvh + 1) * d];
            (j, shape.scale as f64 * qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>())
        })
        .collect();
    let m = scores.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
    let lse = m + scores.iter().map(|s| (s.1 - m).exp()).sum::<f64>().ln();
    (scores.into_iter().map(|(j, s)| (j, (s - lse).exp())).collect(), lse)
}

fn widen<T: LogitElement>(x: &[T]) -> Vec<f64> {
    x.iter().map(|v| v.to_f64()).collect()
}

/// Forward: O and LSE of every row and query head.
pub fn forward<T: LogitElement>(
    q: &[T],
    k: &[T],
    v: &[T],
    layout: &SharedPrefixLayout,
    shape: &AttnShape,
) -> Result<AttnRef> {
    check(q, k, v, layout, shape)?;
    let (t, d, hq, hkv) = (layout.total_tokens(), shape.head_dim, shape.q_heads, shape.kv_heads);
    let (q, k, v) = (widen(q), widen(k), widen(v));
    let seg = layout.token_segments();
    let mut out = AttnRef { o: vec![0.0; t * hq * d], lse: vec![0.0; hq * t] };
    for h in 0..hq {
        let kvh = h / (hq / hkv);
        for i in 0..t {
            let (probs, lse) = row_probs(&q, &k, &seg, shape, h, i);
            out.lse[h * t + i] = lse;
            let o = &mut out.o[(i * hq + h) * d..(i * hq + h + 1) * d];
            for (j, p) in probs {
                for (oc, vc) in o.iter_mut().zip(&v[(j * hkv + kvh) * d..(j * hkv + kvh + 1) * d]) {
                    *oc += p * vc;
                }
            }
        }
    }
    Ok(out)
}

/// Backward of `sum(dout * o)`: dS = P (dP - D), D_i = dout_i · o_i, dQ = scale dS K,
/// dK = scale dSᵀ Q, dV = Pᵀ dout.
pub fn backward<T: LogitElement>(
    q: &[T],
    k: &[T],
    v: &[T],
    dout: &[T],
    layout: &SharedPrefixLayout,
    shape: &AttnShape,
) -> Result<AttnGrads> {
    check(q, k, v, layout, shape)?;
    ensure(dout.len() == q.len(), "dout", || {
        format!("needs {} elements like q, got {}", q.len(), dout.len())
    })?;
    let (t, d, hq, hkv) = (layout.total_tokens(), shape.head_dim, shape.q_heads, shape.kv_heads);
    let fwd = forward(q, k, v, layout, shape)?;
    let (q, k, v, dout) = (widen(q), widen(k), widen(v), widen(dout));
    let seg = layout.token_segments();
    let scale = shape.scale as f64;
    let mut g = AttnGrads { dq: vec![0.0; q.len()], dk: vec![0.0; k.len()], dv: vec![0.0; v.len()] };
    for h in 0..hq {
        let kvh = h / (hq / hkv);
        for i in 0..t {
            let qo = (i * hq + h) * d;
            let (probs, _) = row_probs(&q, &k, &seg, shape, h, i);
            let do_i = &dout[qo..qo + d];
            let dd: f64 = do_i.iter().zip(&fwd.o[qo..qo + d]).map(|(a, b)| a * b).sum();
            for (j, p) in probs {
                let ko = (j * hkv + kvh) * d;
                let dp: f64 = do_i.iter().zip(&v[ko..ko + d]).map(|(a, b)| a * b).sum();
                let ds = p * (dp - dd);
                for c in 0..d {
                    g.dq[qo + c] += scale * ds * k[ko + c];
                    g.dk[ko + c] += scale * ds * q[qo + c];
                    g.dv[ko + c] += p * do_i[c];
                }
            }
        }
    }
    Ok(g)
}

/// Per-element error bounds of a kernel that computes in f32 but rounds `P` (before `P V` and
/// `Pᵀ dO`), `dS` (before `dS K` and `dSᵀ Q`), `O` (its output, which `D = rowsum(dO ∘ O)` reads)
/// and every output once to a 16-bit type of unit roundoff `r` (2⁻⁸ bf16, 2⁻¹¹ f16), with the
/// products exact and the f32 arithmetic `f32_rel` relative:
///
/// ```text
/// |δO_i|    ≤ (r + f32_rel) (P |V|)_i + r |O_i|
/// |δdS_ij|  ≤ r |dS_ij| + P_ij r (|dO_i| · |O_i|) + f32_rel P_ij (|dP_ij| + |D_i|)
/// |δdQ|     ≤ scale (|δdS| |K|) + r |dQ|,   |δdK| ≤ scale (|δdS|ᵀ |Q|) + r |dK|,
/// |δdV|     ≤ (r + f32_rel) (Pᵀ |dO|) + r |dV|   (K/V terms summed over the heads they serve)
/// ```
///
/// Returned as `(O bound, gradient bounds)` in the layouts of [`forward`] and [`backward`]: what the
/// GPU parity tests hold the kernels to, derived rather than tuned.
#[allow(clippy::too_many_arguments)]
pub fn rounding_bounds<T: LogitElement>(
    q: &[T],
    k: &[T],
    v: &[T],
    dout: &[T],
    layout: &SharedPrefixLayout,
    shape: &AttnShape,
    r: f64,
    f32_rel: f64,
) -> Result<(Vec<f64>, AttnGrads)> {
    let fwd = forward(q, k, v, layout, shape)?;
    let grads = backward(q, k, v, dout, layout, shape)?;
    let (t, d, hq, hkv) = (layout.total_tokens(), shape.head_dim, shape.q_heads, shape.kv_heads);
    let (q, k, v, dout) = (widen(q), widen(k), widen(v), widen(dout));
    let seg = layout.token_segments();
    let scale = shape.scale as f64;
    let mut ob: Vec<f64> = fwd.o.iter().map(|o| r * o.abs()).collect();
    let mut g = AttnGrads {
        dq: grads.dq.iter().map(|x| r * x.abs()).collect(),
        dk: grads.dk.iter().map(|x| r * x.abs()).collect(),
        dv: grads.dv.iter().map(|x| r * x.abs()).collect(),
    };
    for h in 0..hq {
        let kvh = h / (hq / hkv);
        for i in 0..t {
            let qo = (i * hq + h) * d;
            let (probs, _) = row_probs(&q, &k, &seg, shape, h, i);
            let do_i = &dout[qo..qo + d];
            let o_i = &fwd.o[qo..qo + d];
            let dd: f64 = do_i.iter().zip(o_i).map(|(a, b)| a * b).sum();
            let dd_err: f64 = r * do_i.iter().zip(o_i).map(|(a, b)| (a * b).abs()).sum::<f64>();
            for (j, p) in probs {
                let ko = (j * hkv + kvh) * d;
                let dp: f64 = do_i.iter().zip(&v[ko..ko + d]).map(|(a, b)| a * b).sum();
                let ds = p * (dp - dd);
                let ds_err = r * ds.abs() + p * dd_err + f32_rel * p * (dp.abs() + dd.abs());
                for c in 0..d {
                    ob[qo + c] += (r + f32_rel) * p * v[ko + c].abs();
                    g.dq[qo + c] += scale * ds_err * k[ko + c].abs();
                    g.dk[ko + c] += scale * ds_err * q[qo + c].abs();
                    g.dv[ko + c] += (r + f32_rel) * p * do_i[c].abs();
                }
            }
        }
    }
    Ok((ob, g))
}
