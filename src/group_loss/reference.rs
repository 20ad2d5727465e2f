//! f64 CPU reference of the group and listwise losses.
use super::{GroupLoss, KtoKl, GROUP_METRICS_LEN};
use crate::error::{ensure, Result};
use crate::numeric::pairwise_sum;
use crate::seq_reduce::reference::seq_stats;
use crate::seq_reduce::{SeqLayout, TokenInputs};

/// What the reference computes.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupLossReference {
    /// Batch loss.
    pub loss: f64,
    /// Metrics, named by [`super::metric_names`].
    pub metrics: [f64; GROUP_METRICS_LEN],
    /// Per sequence: KTO / LiPO reward β(S − S^ref), PRO score S/N.
    pub seq_values: Vec<f64>,
    /// dL/dlogp per token.
    pub grad_logp: Vec<f64>,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// The loss, metrics, per-sequence values and per-token gradient. `ref_seq` gives per-sequence
/// reference sums instead of `tokens.ref_logp`.
pub fn group_loss(
    tokens: &TokenInputs,
    layout: &SeqLayout,
    ref_seq: Option<&[f32]>,
    labels: &[f32],
    loss: &GroupLoss,
) -> Result<GroupLossReference> {
    let n_seqs = layout.n_seqs();
    loss.validate(n_seqs, labels)?;
    if loss.needs_reference() {
        ensure(tokens.ref_logp.is_some() != ref_seq.is_some(), "ref_logp", || {
            "give reference log-probs per token or per sequence (exactly one)".into()
        })?;
    }
    if let Some(r) = ref_seq {
        ensure(r.len() == n_seqs, "ref_seq", || format!("need {n_seqs} values, got {}", r.len()))?;
    }
    let stats = seq_stats(tokens, layout, f64::NEG_INFINITY)?;
    let log_ratio = |s: usize| match ref_seq {
        Some(r) => stats[s].sum - r[s] as f64,
        None => stats[s].sum - stats[s].ref_sum,
    };
    let mut coef = vec![0.0; n_seqs]; // token coefficient: dL/dlogp_t = coef_s m_t
    let mut metrics = [0.0; GROUP_METRICS_LEN];
    let mut values = vec![0.0; n_seqs];
    match *loss {
        GroupLoss::Kto { beta, desirable_weight, undesirable_weight, kl, apo_zero_unpaired } => {
            let beta = beta as f64;
            let kl_samples: Vec<f64> = (0..n_seqs).filter(|&s| labels[s] == 2.0).map(log_ratio).collect();
            let z0 = match kl {
                _ if apo_zero_unpaired => 0.0,
                KtoKl::Given(z) => (z as f64).max(0.0),
                KtoKl::FromSamples if kl_samples.is_empty() => 0.0,
                KtoKl::FromSamples => (pairwise_sum(&kl_samples) / kl_samples.len() as f64).max(0.0),
            };
            let examples: Vec<usize> = (0..n_seqs).filter(|&s| labels[s] <= 1.0).collect();
            let n_ex = (examples.len() as f64).max(1.0);
            let (mut losses, mut rc, mut rr, mut lc, mut lr) = (vec![], vec![], vec![], vec![], vec![]);
            for (s, v) in values.iter_mut().enumerate() {
                *v = beta * log_ratio(s);
            }
            for &s in &examples {
                let good = labels[s] == 1.0;
                let d = log_ratio(s);
                let w = if good { desirable_weight } else { undesirable_weight } as f64;
                let (l, dd) = if apo_zero_unpaired {
                    let x = beta * d;
                    let sp = sigmoid(x) * sigmoid(-x);
                    if good {
                        (1.0 - sigmoid(x), -beta * sp)
                    } else {
                        (sigmoid(x), beta * sp)
                    }
                } else {
                    let x = if good { beta * (d - z0) } else { beta * (z0 - d) };
                    let sp = sigmoid(x) * sigmoid(-x);
                    (1.0 - sigmoid(x), if good { -beta * sp } else { beta * sp })
                };
                losses.push(w * l);
                coef[s] = w * dd / n_ex;
                if good {
                    rc.push(values[s]);
                    lc.push(stats[s].sum);
                } else {
                    rr.push(values[s]);
                    lr.push(stats[s].sum);
                }
            }
            let mean = |x: &[f64]| pairwise_sum(x) / (x.len() as f64).max(1.0);
            metrics[0] = pairwise_sum(&losses) / n_ex;
            metrics[1] = z0;
            metrics[2] = mean(&rc);
            metrics[3] = mean(&rr);
            metrics[4] = if rc.is_empty() || rr.is_empty() { 0.0 } else { mean(&rc) - mean(&rr) };
            metrics[5] = mean(&lc);
            metrics[6] = mean(&lr);
            metrics[7] = rc.len() as f64;
            metrics[8] = rr.len() as f64;
        }
        GroupLoss::Lipo { beta, list_size: k, lambda_weights } => {
            let beta = beta as f64;
            let scores: Vec<f64> = (0..n_seqs).map(|s| beta * log_ratio(s)).collect();
            values.clone_from(&scores);
            let (mut terms, mut correct) = (vec![], 0usize);
            let mut ds = vec![0.0; n_seqs];
            for g in 0..n_seqs / k {
                let b = g * k;
                let s = &scores[b..b + k];
                let psi = &labels[b..b + k];
                let rank = |i: usize| 1 + (0..k).filter(|&j| s[j] > s[i] || (s[j] == s[i] && j < i)).count();
                let inv_disc = |i: usize| 1.0 / ((1 + rank(i)) as f64).log2();
                for i in 0..k {
                    for j in 0..k {
                        if psi[i] <= psi[j] {
                            continue;
                        }
                        let lw = if lambda_weights {
                            k as f64
                                * ((psi[i] as f64).exp2() - (psi[j] as f64).exp2()).abs()
                                * (inv_disc(i) - inv_disc(j)).abs()
                        } else {
                            1.0
                        };
                        let z = s[i] - s[j];
                        terms.push(lw * softplus(-z));
                        correct += usize::from(z > 0.0);
                        let d = -lw * sigmoid(-z);
                        ds[b + i] += d;
                        ds[b + j] -= d;
                    }
                }
            }
            let n_pairs = terms.len() as f64;
            if n_pairs > 0.0 {
                for s in 0..n_seqs {
                    coef[s] = ds[s] / n_pairs * beta;
                }
                metrics[0] = pairwise_sum(&terms) / n_pairs;
                metrics[2] = correct as f64 / n_pairs;
            }
            metrics[1] = n_pairs;
        }
        GroupLoss::Pro { list_size: n, sft_weight } => {
            let n_groups = (n_seqs / n) as f64;
            let mean_score = |s: usize| stats[s].sum / stats[s].count.max(1.0);
            let sft_coef = sft_weight as f64 * ((n - 1) * (n - 1)) as f64;
            let (mut ranking, mut sft, mut ordered) = (vec![], vec![], 0usize);
            for g in 0..n_seqs / n {
                let b = g * n;
                let s: Vec<f64> = (b..b + n).map(mean_score).collect();
                let r: Vec<f64> = labels[b..b + n].iter().map(|&x| x as f64).collect();
                let mut ds = vec![0.0; n];
                for kk in 0..n - 1 {
                    let tkk = (kk + 1..n).map(|i| r[kk] - r[i]).fold(f64::NEG_INFINITY, f64::max);
                    let mut z = vec![s[kk] * tkk];
                    z.extend((kk + 1..n).map(|i| s[i] * (r[kk] - r[i])));
                    // log(1e-10 + Σ e^z), shifted by the largest exponent.
                    let log_eps = 1e-10f64.ln();
                    let m = z.iter().copied().fold(log_eps, f64::max);
                    let lse = m + ((log_eps - m).exp() + z.iter().map(|x| (x - m).exp()).sum::<f64>()).ln();
                    ranking.push(lse - z[0]);
                    ds[kk] += ((z[0] - lse).exp() - 1.0) * tkk;
                    for (j, i) in (kk + 1..n).enumerate() {
                        ds[i] += (z[j + 1] - lse).exp() * (r[kk] - r[i]);
                    }
                }
                ordered += (0..n - 1).filter(|&kk| s[kk] > s[kk + 1]).count();
                sft.push(-stats[b].sum);
                // d L / d logp_t = m_t (dL/ds_i / N_i), plus the SFT term's -w (n-1)^2 / B on the top
                // response's (summed) tokens.
                for i in 0..n {
                    values[b + i] = s[i];
                    coef[b + i] = ds[i] / n_groups / stats[b + i].count.max(1.0);
                }
                coef[b] -= sft_coef / n_groups;
            }
            metrics[1] = pairwise_sum(&ranking) / n_groups;
            metrics[2] = sft_coef * pairwise_sum(&sft) / n_groups;
            metrics[0] = metrics[1] + metrics[2];
            metrics[3] = ordered as f64 / (n_groups * (n - 1) as f64);
        }
    }
    let mut grad = vec![0.0; tokens.n_tokens()];
    for (s, c) in coef.iter().enumerate() {
        for t in layout.range(s) {
            if tokens.mask.is_none_or(|m| m[t] != 0) {
                grad[t] = *c;
            }
        }
    }
    Ok(GroupLossReference { loss: metrics[0], metrics, seq_values: values, grad_logp: grad })
}
