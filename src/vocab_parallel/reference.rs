//! The sharded algorithm in f64, the oracle of the vocabulary-parallel kernels: per-shard partial
//! statistics, their combination in shard order, and the per-shard backward. Tested equal to the
//! unsharded reference ([`crate::token_logprobs::reference`]) for any number of shards, shards
//! of unequal size, shards holding no target and ignored rows.
use super::{VocabShard, VP_ENTROPY, VP_MAX, VP_OWNER, VP_STATS, VP_SUMEXP, VP_TARGET};
use crate::dtype::{LogitElement, TargetIndex};
use crate::error::ensure_len;
use crate::error::{invalid, Result};
use crate::numeric::pairwise_sum_iter;
use crate::token_logprobs::reference::{checked_target, TokenLogprobsRef};
use crate::token_logprobs::{validate, LogitsLayout, TokenLogprobsConfig};

/// One row's partial statistics over one shard (the layout of the kernels' `[N, VP_STATS]`).
pub type Partial = [f64; VP_STATS];

fn check_layout(layout: &LogitsLayout, shard: &VocabShard) -> Result<()> {
    shard.validate()?;
    if layout.vocab != shard.len {
        return Err(invalid(
            "layout",
            format!("the shard's logits have {} columns, the shard {}", layout.vocab, shard.len),
        ));
    }
    Ok(())
}

/// Per row, the shard's partials as the kernels lay them out: `m = max x` (the raw logits),
/// `s = Σ exp((x − m)/T)`, `e = Σ exp((x − m)/T)·(x − m)/T·log2(e)` (base 2), the raw `x_t` and the
/// owner flag (over the shard's columns; `e` is NaN without `compute_entropy`). Ignored rows give zeros; a
/// NaN or +inf logit gives NaN statistics; a shard of -inf logits gives `m = -inf`, `s = e = 0`.
/// A target outside `[0, vocab)` is [`crate::Error::TargetOutOfRange`].
pub fn shard_partials<T: LogitElement, I: TargetIndex>(
    logits: &[T],
    layout: LogitsLayout,
    shard: VocabShard,
    targets: &[I],
    cfg: &TokenLogprobsConfig,
) -> Result<Vec<Partial>> {
    validate(&layout, cfg, logits.len(), targets.len())?;
    check_layout(&layout, &shard)?;
    let inv_t = 1.0 / cfg.temperature as f64;
    let mut out = vec![[0.0; VP_STATS]; layout.n_rows];
    for (r, target) in targets.iter().enumerate() {
        let Some(t) = checked_target(r, target.to_i64(), shard.vocab, cfg.ignore_index)? else {
            continue;
        };
        let start = r * layout.row_stride;
        let x: Vec<f64> = logits[start..start + shard.len].iter().map(|x| x.to_f64()).collect();
        let q = &mut out[r];
        if x.iter().any(|v| v.is_nan() || *v == f64::INFINITY) {
            q[VP_MAX] = f64::NAN;
            q[VP_SUMEXP] = f64::NAN;
            q[VP_ENTROPY] = f64::NAN;
        } else {
            let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            q[VP_MAX] = m;
            if m > f64::NEG_INFINITY {
                q[VP_SUMEXP] = pairwise_sum_iter(x.iter().map(|&v| ((v - m) * inv_t).exp()));
                q[VP_ENTROPY] = pairwise_sum_iter(x.iter().map(|&v| {
                    if v == f64::NEG_INFINITY {
                        0.0
                    } else {
                        let d = (v - m) * inv_t;
                        d.exp() * d * std::f64::consts::LOG2_E
                    }
                }));
            }
        }
        if !cfg.compute_entropy {
            q[VP_ENTROPY] = f64::NAN; // as the kernel: a finalize asking for entropy gets NaN
        }
        if shard.holds(t as i64) {
            q[VP_TARGET] = x[t - shard.start];
            q[VP_OWNER] = 1.0;
        }
    }
    Ok(out)
}

/// Combines each row's partials over the shards, in shard order (`partials[k]` is shard k's
/// `[N]` rows): logp, lse and entropy as the unsharded op gives them. Errors: bad targets
/// ([`crate::Error::TargetOutOfRange`]), and a used row whose target no shard, or more than one,
/// holds (the shards do not tile the vocabulary).
pub fn finalize<I: TargetIndex>(
    partials: &[Vec<Partial>],
    targets: &[I],
    vocab: usize,
    cfg: &TokenLogprobsConfig,
) -> Result<TokenLogprobsRef> {
    cfg.validate()?;
    if partials.is_empty() {
        return Err(invalid("partials", "needs at least one shard"));
    }
    let n = targets.len();
    for p in partials {
        ensure_len("partials", p.len(), n)?;
    }
    // The shards' partials carry no sum of p² (log_sum_sq stays 0: not served vocabulary-parallel).
    let mut out = TokenLogprobsRef::zeros(n);
    for (r, target) in targets.iter().enumerate() {
        if checked_target(r, target.to_i64(), vocab, cfg.ignore_index)?.is_none() {
            continue;
        }
        let owners: f64 = partials.iter().map(|p| p[r][VP_OWNER]).sum();
        if owners != 1.0 {
            return Err(invalid(
                "shards",
                format!("row {r}: target {} is held by {owners} shards, not exactly one", target.to_i64()),
            ));
        }
        let inv_t = 1.0 / cfg.temperature as f64;
        let m = partials.iter().map(|p| p[r][VP_MAX]).fold(f64::NEG_INFINITY, f64::max);
        let nan = partials.iter().any(|p| p[r][VP_MAX].is_nan());
        // Each shard's s and e (natural units here) rescaled to the common max; a shard with
        // s = 0 (all -inf) adds 0.
        let scaled = |k: &Vec<Partial>| {
            let q = k[r];
            let dm = (q[VP_MAX] - m) * inv_t;
            let w = dm.exp();
            if q[VP_SUMEXP] > 0.0 {
                (q[VP_SUMEXP] * w, w * (q[VP_ENTROPY] * std::f64::consts::LN_2 + q[VP_SUMEXP] * dm))
            } else {
                (0.0, 0.0)
            }
        };
        let s = pairwise_sum_iter(partials.iter().map(|k| scaled(k).0));
        let e = pairwise_sum_iter(partials.iter().map(|k| scaled(k).1));
        let target: f64 = partials.iter().map(|p| p[r][VP_TARGET]).sum();
        if nan || m == f64::NEG_INFINITY {
            out.logp[r] = f64::NAN;
            out.lse[r] = if nan { f64::NAN } else { f64::NEG_INFINITY };
            out.entropy[r] = f64::NAN;
            continue;
        }
        out.lse[r] = m * inv_t + s.ln();
        out.logp[r] = (target - m) * inv_t - s.ln();
        out.entropy[r] = s.ln() - e / s;
    }
    Ok(out)
}

/// d/dlogits of the shard's columns, dense `[N, shard.len]`, of `Σ_r grad_logp[r] logp[r]`
/// (+ `grad_entropy[r] H[r]` when `entropy` is given: the forward's `H` and `dL/dH`), from the
/// global `lse` the finalize gave: `g/T (1[v = t] − p_v) − gH/T p_v (ln p_v + H)`,
/// `ln p_v = y_v − lse`.
#[allow(clippy::too_many_arguments)]
pub fn shard_backward<T: LogitElement, I: TargetIndex>(
    logits: &[T],
    layout: LogitsLayout,
    shard: VocabShard,
    targets: &[I],
    lse: &[f64],
    grad_logp: &[f32],
    entropy: Option<(&[f64], &[f32])>,
    cfg: &TokenLogprobsConfig,
) -> Result<Vec<f64>> {
    validate(&layout, cfg, logits.len(), targets.len())?;
    check_layout(&layout, &shard)?;
    ensure_len("lse", lse.len(), layout.n_rows)?;
    ensure_len("grad_logp", grad_logp.len(), layout.n_rows)?;
    if let Some((h, gh)) = entropy {
        ensure_len("entropy", h.len(), layout.n_rows)?;
        ensure_len("grad_entropy", gh.len(), layout.n_rows)?;
    }
    let inv_t = 1.0 / cfg.temperature as f64;
    let mut grad = vec![0.0; layout.n_rows * shard.len];
    for (r, target) in targets.iter().enumerate() {
        let Some(t) = checked_target(r, target.to_i64(), shard.vocab, cfg.ignore_index)? else {
            continue;
        };
        let start = r * layout.row_stride;
        let coef = grad_logp[r] as f64 * inv_t;
        for (v, g) in grad[r * shard.len..(r + 1) * shard.len].iter_mut().enumerate() {
            let lp = logits[start + v].to_f64() * inv_t - lse[r];
            // 1 - p at the target as -expm1(log p): no cancellation when p -> 1.
            *g = if shard.start + v == t { -coef * lp.exp_m1() } else { -coef * lp.exp() };
            if let Some((h, gh)) = entropy {
                let p = lp.exp();
                if p > 0.0 {
                    *g -= gh[r] as f64 * inv_t * p * (lp + h[r]);
                }
            }
        }
    }
    Ok(grad)
}
