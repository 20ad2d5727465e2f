//! f64 CPU reference of the GRPO family (the oracle of the kernels and of the gradient tests).
use super::{check_lengths, GrpoConfig, GrpoLossType, ImportanceLevel, GRPO_METRICS_LEN};
use crate::error::Result;
use crate::numeric::pairwise_sum;
use crate::seq_reduce::SeqLayout;

/// Per-token inputs (host slices of T elements; `None` where not used).
#[derive(Debug, Clone, Copy)]
pub struct GrpoTokens<'a> {
    /// Policy log-probs ℓ.
    pub logp: &'a [f32],
    /// Rollout (old) log-probs; `None` = on-policy (ratio 1, gradient kept).
    pub old_logp: Option<&'a [f32]>,
    /// Inference-engine log-probs for the off-policy mask (TRL `sampling_per_token_logps`);
    /// `None` = `old_logp`.
    pub sampling_logp: Option<&'a [f32]>,
    /// Reference log-probs (needed when β > 0).
    pub ref_logp: Option<&'a [f32]>,
    /// Completion mask (u8, 0 = not a completion token); `None` = every token of a sequence.
    pub mask: Option<&'a [u8]>,
    /// vLLM truncated importance-sampling weights (TRL `importance_sampling_ratio`); `None` = 1.
    pub is_weights: Option<&'a [f32]>,
    /// Per-token entropies (needed by the entropy bonus and mask; logged when given).
    pub entropy: Option<&'a [f32]>,
}

/// What the reference computes.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpoReference {
    /// Batch loss.
    pub loss: f64,
    /// Metrics, indexed as [`super::GRPO_METRIC_NAMES`].
    pub metrics: [f64; GRPO_METRICS_LEN],
    /// dL/dℓ per token.
    pub grad_logp: Vec<f64>,
    /// dL/dH per token (zeros without an entropy bonus).
    pub grad_entropy: Vec<f64>,
    /// The top-entropy threshold (−inf when the mask is off).
    pub entropy_threshold: f64,
}

/// Validates inputs and configuration (shared with the kernels' host checks).
pub(crate) fn validate(
    tokens: &GrpoTokens,
    layout: &SeqLayout,
    advantages: &[f32],
    cfg: &GrpoConfig,
) -> Result<()> {
    cfg.validate()?;
    let t = tokens.logp.len();
    layout.validate(t)?;
    check_lengths(
        t,
        layout.n_seqs(),
        advantages.len(),
        &[
            ("old_logp", tokens.old_logp.map(<[f32]>::len)),
            ("sampling_logp", tokens.sampling_logp.map(<[f32]>::len)),
            ("ref_logp", tokens.ref_logp.map(<[f32]>::len)),
            ("mask", tokens.mask.map(<[u8]>::len)),
            ("is_weights", tokens.is_weights.map(<[f32]>::len)),
            ("entropy", tokens.entropy.map(<[f32]>::len)),
        ],
    )?;
    need_inputs(cfg, tokens.ref_logp.is_some(), tokens.entropy.is_some())?;
    for (i, a) in advantages.iter().enumerate() {
        crate::error::ensure(a.is_finite(), "advantages", || {
            format!("advantage {i} is {a}; must be finite")
        })?;
    }
    Ok(())
}

/// The configuration's required inputs are present.
pub(crate) fn need_inputs(cfg: &GrpoConfig, has_ref: bool, has_entropy: bool) -> Result<()> {
    crate::error::ensure(!cfg.needs_reference() || has_ref, "ref_logp", || {
        format!("beta = {} > 0 needs per-token reference log-probs", cfg.beta)
    })?;
    crate::error::ensure(!cfg.needs_entropy() || has_entropy, "entropy", || {
        "the entropy bonus and the top-entropy mask need per-token entropies".into()
    })
}

/// `torch.quantile(x, q)` on a float32 tensor, as torch computes it: the rank `q (n − 1)` and
/// the linear interpolation (`torch.lerp`) in f32; `x` non-empty. (The kernel's radix select
/// returns the same order statistics, so both gate the same tokens.)
pub fn quantile_f32(mut x: Vec<f32>, q: f32) -> f32 {
    x.sort_by(|a, b| a.total_cmp(b));
    let rank = q * (x.len() - 1) as f32;
    let lo_rank = rank.floor();
    let lo = (lo_rank as usize).min(x.len() - 1);
    let hi = if lo + 1 < x.len() && rank > lo_rank { lo + 1 } else { lo };
    let (a, b, w) = (x[lo], x[hi], rank - lo_rank);
    if w < 0.5 {
        a + w * (b - a)
    } else {
        b - (b - a) * (1.0 - w)
    }
}

/// Aggregation weight a_s of every sequence (before TRL's division by the accumulation steps).
fn aggregation_weights(cfg: &GrpoConfig, counts: &[f64]) -> Vec<f64> {
    let s = counts.len() as f64;
    let total = pairwise_sum(counts);
    counts
        .iter()
        .map(|&n| match cfg.loss_type {
            GrpoLossType::Grpo | GrpoLossType::Sapo { .. } => 1.0 / (s * n.max(1.0)),
            GrpoLossType::Bnpo => 1.0 / total.max(1.0),
            GrpoLossType::DrGrpo { max_completion_length } => 1.0 / (s * max_completion_length as f64),
            GrpoLossType::Luspo => 1.0 / s,
            GrpoLossType::Dapo { normalizer }
            | GrpoLossType::Cispo { normalizer }
            | GrpoLossType::Vespo { normalizer, .. } => 1.0 / normalizer.map_or(total.max(1.0), |v| v as f64),
        })
        .collect()
}

/// One token's surrogate at ratio ρ: (pg, d pg / d ρ, d pg / d ℓ directly) and the clip flags.
struct Surrogate {
    pg: f64,
    dpg_drho: f64,
    dpg_dl: f64,
    c1: f64,
}

fn surrogate(cfg: &GrpoConfig, rho: f64, a: f64, l: f64, phi: f64) -> Surrogate {
    let (c1, dc1) = match cfg.delta {
        Some(d) if rho > d as f64 => (d as f64, 0.0),
        _ => (rho, 1.0),
    };
    match cfg.loss_type {
        GrpoLossType::Cispo { .. } => {
            let c = rho.min(cfg.epsilon_high as f64);
            Surrogate { pg: -c * a * l, dpg_drho: 0.0, dpg_dl: -c * a, c1 }
        }
        GrpoLossType::Sapo { tau_pos, tau_neg } => {
            let tau = if a > 0.0 { tau_pos } else { tau_neg } as f64;
            let x = tau * (rho - 1.0);
            let sig = 1.0 / (1.0 + (-x).exp());
            Surrogate { pg: -sig * 4.0 / tau * a, dpg_drho: -4.0 * sig * (1.0 - sig) * a, dpg_dl: 0.0, c1 }
        }
        GrpoLossType::Vespo { .. } => Surrogate { pg: -phi * a * l, dpg_drho: 0.0, dpg_dl: -phi * a, c1 },
        _ => {
            let (lo, hi) = (1.0 - cfg.epsilon_low as f64, 1.0 + cfg.epsilon_high as f64);
            let c2 = rho.clamp(lo, hi);
            let dc2 = if (lo..=hi).contains(&rho) { 1.0 } else { 0.0 };
            let (l1, l2) = (c1 * a, c2 * a);
            let d = if l1 < l2 {
                dc1 * a
            } else if l2 < l1 {
                dc2 * a
            } else {
                0.5 * (dc1 + dc2) * a
            };
            Surrogate { pg: -l1.min(l2), dpg_drho: -d, dpg_dl: 0.0, c1 }
        }
    }
}

/// The clip indicators (low, high) of TRL's metrics at ratio ρ with capped ratio c1.
fn clip_flags(cfg: &GrpoConfig, rho: f64, c1: f64, a: f64) -> (bool, bool) {
    let (lo, hi) = (1.0 - cfg.epsilon_low as f64, 1.0 + cfg.epsilon_high as f64);
    match cfg.loss_type {
        GrpoLossType::Sapo { .. } | GrpoLossType::Vespo { .. } => (false, false),
        GrpoLossType::Cispo { .. } => (false, rho > cfg.epsilon_high as f64 && a > 0.0),
        _ => (c1 < lo && a < 0.0, c1 > hi && a > 0.0),
    }
}

/// VESPO's gamma weight φ_s from the sequence's log-ratio sum (TRL `get_gamma_weights`).
fn vespo_phi(cfg: &GrpoConfig, a: f64, log_ratio_sum: f64) -> f64 {
    let GrpoLossType::Vespo { k_pos, lambda_pos, k_neg, lambda_neg, .. } = cfg.loss_type else {
        return 0.0;
    };
    let lw = log_ratio_sum.clamp(1e-8f64.ln(), 20.0);
    let (k, lambda) = if a >= 0.0 { (k_pos, lambda_pos) } else { (k_neg, lambda_neg) };
    let lambda = (lambda as f64).max(1e-4);
    let phi = (lambda + k as f64 * lw - lambda * lw.exp()).exp();
    if phi.is_finite() {
        phi
    } else {
        0.0
    }
}

/// The GRPO-family loss, its metrics and its gradients, in f64.
pub fn grpo_loss(
    tokens: &GrpoTokens,
    layout: &SeqLayout,
    advantages: &[f32],
    cfg: &GrpoConfig,
) -> Result<GrpoReference> {
    validate(tokens, layout, advantages, cfg)?;
    let n_tok = tokens.logp.len();
    let n_seqs = layout.n_seqs();
    let m = |t: usize| tokens.mask.is_none_or(|k| k[t] != 0);
    let l = |t: usize| tokens.logp[t] as f64;
    let old = |t: usize| tokens.old_logp.map_or(l(t), |o| o[t] as f64);
    let samp = |t: usize| tokens.sampling_logp.map_or(old(t), |o| o[t] as f64);
    let h = |t: usize| tokens.entropy.map_or(0.0, |e| e[t] as f64);
    let vespo = matches!(cfg.loss_type, GrpoLossType::Vespo { .. });
    // VESPO folds the vLLM weights into φ instead of weighting the loss (TRL).
    let v = |t: usize| if vespo { 1.0 } else { tokens.is_weights.map_or(1.0, |w| w[t] as f64) };
    let seq_tokens: Vec<Vec<usize>> =
        (0..n_seqs).map(|s| layout.range(s).filter(|&t| m(t)).collect()).collect();
    let counts: Vec<f64> = seq_tokens.iter().map(|ts| ts.len() as f64).collect();
    let total = pairwise_sum(&counts);
    let all: Vec<usize> = seq_tokens.iter().flatten().copied().collect();
    let threshold = if cfg.top_entropy_quantile < 1.0 && !all.is_empty() {
        let hs = all.iter().map(|&t| tokens.entropy.expect("validated")[t]).collect();
        quantile_f32(hs, (1.0 - cfg.top_entropy_quantile) as f32) as f64
    } else {
        f64::NEG_INFINITY
    };
    let weights = aggregation_weights(cfg, &counts);
    let beta = cfg.beta as f64;
    let keep = |t: usize| if h(t) >= threshold { 1.0 } else { 0.0 };
    // TRL 1.16: the policy term is divided by G except where the normalizer holds it; the entropy
    // bonus is the mean over the effective mask, divided by G, for every loss type.
    let g = cfg.accumulation_steps as f64;
    let policy_scale = if cfg.loss_type.has_normalizer() { 1.0 } else { 1.0 / g };
    let entropy_weight = 1.0 / (pairwise_sum(&all.iter().map(|&t| keep(t)).collect::<Vec<_>>()).max(1.0) * g);
    let mut grad = vec![0.0; n_tok];
    let mut grad_h = vec![0.0; n_tok];
    let (mut loss_terms, mut kl, mut ent, mut low, mut high) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut bonus, mut phis) = (vec![], vec![]);
    for (s, ts) in seq_tokens.iter().enumerate() {
        let a = advantages[s] as f64;
        let w = weights[s] * policy_scale;
        let n = counts[s].max(1.0);
        let sum = |f: &dyn Fn(usize) -> f64| pairwise_sum(&ts.iter().map(|&t| f(t)).collect::<Vec<_>>());
        let rho_seq = (sum(&|t| l(t) - old(t)) / n).exp();
        // The off-policy mask: torch.nan_to_num on ℓ^samp − ℓ, the mean over completion tokens.
        let gate = match cfg.off_policy_mask_threshold {
            Some(thr) if a < 0.0 => {
                let mean_kl = sum(&|t| {
                    let d = samp(t) - l(t);
                    if d.is_nan() {
                        0.0
                    } else {
                        d
                    }
                }) / n;
                if mean_kl <= thr as f64 {
                    1.0
                } else {
                    0.0
                }
            }
            _ => 1.0,
        };
        let phi = if vespo {
            let mut lw = sum(&|t| (l(t) - old(t)).clamp(-20.0, 20.0));
            if let Some(iw) = tokens.is_weights {
                // Over the whole row, masked positions included (TRL sums over dim -1).
                lw += pairwise_sum(
                    &layout
                        .range(s)
                        .map(|t| (iw[t] as f64).ln().clamp(1e-8f64.ln(), 20.0))
                        .collect::<Vec<_>>(),
                );
            }
            vespo_phi(cfg, a, lw)
        } else {
            0.0
        };
        phis.push(phi);
        let mut cross = 0.0; // Σ_t a_s (e v dpg/dρ + β k3 [bias-corrected]): the sequence ratio's share
        for &t in ts {
            let rho = match cfg.importance {
                ImportanceLevel::Token => (l(t) - old(t)).exp(),
                ImportanceLevel::Sequence => rho_seq,
            };
            let sur = surrogate(cfg, rho, a, l(t), phi);
            let e = keep(t);
            let (mut k3, mut dk3) = (0.0, 0.0);
            if beta != 0.0 {
                let r = tokens.ref_logp.expect("validated")[t] as f64 - l(t);
                k3 = r.exp() - r - 1.0;
                dk3 = 1.0 - r.exp();
            }
            // TRL multiplies by the raw ratio (before the delta cap, not detached).
            let (kl_t, dkl_dl, dkl_drho) =
                if cfg.bias_corrected_kl { (k3 * rho, dk3 * rho, k3) } else { (k3, dk3, 0.0) };
            // TRL's order: off-policy mask, entropy mask and vLLM weight on the policy term, the
            // KL added after.
            let gated = gate * e * v(t);
            loss_terms.push(weights[s] * (sur.pg * gated + beta * kl_t));
            bonus.push(entropy_weight * e * h(t));
            let drho = sur.dpg_drho * gated + beta * dkl_drho;
            grad[t] = w * (sur.dpg_dl * gated + beta * dkl_dl);
            match cfg.importance {
                ImportanceLevel::Token => grad[t] += w * drho * rho,
                ImportanceLevel::Sequence => cross += w * drho,
            }
            grad_h[t] = -(cfg.entropy_coef as f64) * entropy_weight * e;
            kl.push(kl_t);
            ent.push(h(t));
            if cfg.importance == ImportanceLevel::Token {
                let (is_low, is_high) = clip_flags(cfg, rho, sur.c1, a);
                low.push(f64::from(u8::from(is_low)));
                high.push(f64::from(u8::from(is_high)));
            }
        }
        if cfg.importance == ImportanceLevel::Sequence {
            // One indicator per sequence (TRL's (B, 1) ratios), empty sequences included.
            let c1 = cfg.delta.map_or(rho_seq, |d| rho_seq.min(d as f64));
            let (is_low, is_high) = clip_flags(cfg, rho_seq, c1, a);
            low.push(f64::from(u8::from(is_low)));
            high.push(f64::from(u8::from(is_high)));
        }
        if cfg.importance == ImportanceLevel::Sequence {
            for &t in ts {
                grad[t] += cross * rho_seq / n;
            }
        }
    }
    let scale = cfg.grad_scale as f64;
    grad.iter_mut().chain(grad_h.iter_mut()).for_each(|g| *g *= scale);
    let mean = |x: &[f64]| pairwise_sum(x) / total.max(1.0);
    let clip_mean = |x: &[f64]| match cfg.importance {
        ImportanceLevel::Token => mean(x),
        ImportanceLevel::Sequence => pairwise_sum(x) / n_seqs as f64,
    };
    let region: Vec<f64> = low.iter().zip(&high).map(|(a, b)| a + b).collect();
    let policy_loss = pairwise_sum(&loss_terms);
    let loss = policy_loss * policy_scale - cfg.entropy_coef as f64 * pairwise_sum(&bonus);
    let mut metrics = [0.0; GRPO_METRICS_LEN];
    metrics[0] = loss;
    metrics[6] = policy_loss;
    metrics[1] = mean(&kl);
    metrics[2] = mean(&ent);
    metrics[3] = clip_mean(&low);
    metrics[4] = clip_mean(&high);
    metrics[5] = clip_mean(&region);
    metrics[7] = pairwise_sum(&phis) / n_seqs as f64;
    Ok(GrpoReference { loss, metrics, grad_logp: grad, grad_entropy: grad_h, entropy_threshold: threshold })
}
