//! CPU reference of the preference losses, in f64: per-sequence sums straight from the tokens, then
//! each term's closed-form value and gradient (see the module docs and `shared/spec/losses.md`).
use super::{FDivergence, Loss, LossConfig, Pairs, RefSource, METRIC_NAMES, PAIR_COLUMNS};
use crate::error::{ensure, Result};
use crate::seq_reduce::reference::{seq_stats, SeqStats};
use crate::seq_reduce::{SeqLayout, TokenInputs, WEIGHT_MASS_EPS};

/// Results of the reference.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferenceLossRef {
    /// Batch loss `L`.
    pub loss: f64,
    /// Per pair: see [`super::PAIR_COLUMN_NAMES`].
    pub pairs: Vec<[f64; PAIR_COLUMNS]>,
    /// Batch metrics in the order of [`METRIC_NAMES`].
    pub metrics: [f64; METRIC_NAMES.len()],
    /// dL / dlogp for every token (0 on masked tokens and tokens in no pair).
    pub grad_logp: Vec<f64>,
}

pub(crate) fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// softplus(x) = log(1 + e^x), stable.
/// σ'(x) = σ(x) σ(−x), from exp(−|x|) only: no cancellation in 1 − σ(x) at large |x|.
pub(crate) fn sigmoid_prime(x: f64) -> f64 {
    let e = (-x.abs()).exp();
    e / ((1.0 + e) * (1.0 + e))
}

pub(crate) fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// log(1 − e^x) for x < 0.
fn log1mexp(x: f64) -> f64 {
    if x < -std::f64::consts::LN_2 {
        (-x.exp()).ln_1p()
    } else {
        (-x.exp_m1()).ln()
    }
}

/// ORPO's mean log-probs are clamped at −FLT_MIN (−1.18e-38), the same in f64 and in the f32
/// kernels, so log(1 − e^S) = log(−expm1(S)) stays finite; it changes results only for S in
/// (−1.18e-38, 0], i.e. a sequence whose every token has probability 1 to f32 precision.
/// (TRL clamps nothing: S = 0 gives −inf there.) Pairs with an empty side contribute 0.
pub const ORPO_MAX_SCORE: f64 = -1.1754943508222875e-38;

/// Clamp of the alpha divergence's exponent (α − 1)Δ, as TRL's `alpha_divergence` (float32).
pub const ALPHA_EXPONENT_MAX: f64 = 80.0;

/// ψ(Δ) and ψ'(Δ): the full f-divergence transforms f'(e^Δ) of TRL, constants included (they
/// cancel in chosen-minus-rejected losses but not in IPO's per-side length normalization):
/// reverse KL Δ; forward KL 1 − e^{−Δ}; JS log 2 + log σ(Δ); α (e^{(α−1)Δ} − 1)/(α − 1), its
/// exponent clamped at 80 as TRL does. Forward KL is not clamped (inf beyond f64's range).
pub(crate) fn psi(div: FDivergence, d: f64) -> (f64, f64) {
    match div {
        FDivergence::ReverseKl => (d, 1.0),
        FDivergence::ForwardKl => {
            let e = (-d).exp();
            (-(-d).exp_m1(), e)
        }
        FDivergence::JensenShannon => (std::f64::consts::LN_2 - softplus(-d), sigmoid(-d)),
        FDivergence::Alpha { alpha } => {
            let a = alpha as f64 - 1.0;
            if a.abs() < 1e-6 {
                return (d, 1.0);
            }
            let t = (a * d).min(ALPHA_EXPONENT_MAX);
            (t.exp_m1() / a, if a * d < ALPHA_EXPONENT_MAX { t.exp() } else { 0.0 })
        }
    }
}

/// One term's contribution for one pair: φ, the token coefficients (c0, c1, c2) with
/// dφ/dlogp_t = m_t (c0 + c1 w_t + c2 gate_t w_t) for the chosen and rejected sequence, the
/// rewards and scores of the metrics, and TAB-PO's barrier value.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct TermOut {
    pub phi: f64,
    pub coef_c: [f64; 3],
    pub coef_r: [f64; 3],
    pub reward_c: f64,
    pub reward_r: f64,
    pub score_c: f64,
    pub score_r: f64,
    pub barrier: f64,
    /// λ·B: the part of `phi` that TAB-PO's official code logs as `loss/barrier`.
    pub barrier_loss: f64,
}

/// Evaluates one term for a pair. `ref_c`/`ref_r` are the per-sequence reference scores when the
/// caller gave them (they replace the per-token reference sums).
pub(crate) fn pair_term(
    loss: &Loss,
    cfg: &LossConfig,
    c: &SeqStats,
    r: &SeqStats,
    ref_seq: Option<(f64, f64)>,
) -> TermOut {
    let agg = loss.aggregation(cfg.aggregation);
    let (sc, sr) = (c.score(agg), r.score(agg));
    let (rc, rr) = ref_seq.unwrap_or_else(|| (c.ref_score(agg), r.ref_score(agg)));
    let (k_c, k_r) = (c.token_coef(agg), r.token_coef(agg));
    let beta = loss.beta() as f64;
    let mut out = TermOut { score_c: sc, score_r: sr, ..Default::default() };
    // dφ/dS_c and dφ/dS_r of the aggregated scores, mapped to token coefficients at the end.
    let (mut g_c, mut g_r) = (0.0, 0.0);
    let (dc, dr) = (sc - rc, sr - rr);
    out.reward_c = beta * dc;
    out.reward_r = beta * dr;
    if loss.is_dpo_family() {
        let ((pc, qc), (pr, qr)) = (psi(cfg.divergence, dc), psi(cfg.divergence, dr));
        let x = beta * (pc - pr);
        // dφ/dx (for terms of x) or dφ/dψc, dφ/dψr directly.
        let (phi, d_psi_c, d_psi_r) = match *loss {
            Loss::Sigmoid { label_smoothing: e, .. } => {
                let e = e as f64;
                let phi = (1.0 - e) * softplus(-x) + e * softplus(x);
                let dx = e - sigmoid(-x);
                (phi, beta * dx, -beta * dx)
            }
            Loss::Robust { label_smoothing: e, .. } => {
                let e = e as f64;
                let phi = ((1.0 - e) * softplus(-x) - e * softplus(x)) / (1.0 - 2.0 * e);
                let dx = (-(1.0 - e) * sigmoid(-x) - e * sigmoid(x)) / (1.0 - 2.0 * e);
                (phi, beta * dx, -beta * dx)
            }
            Loss::Hinge { .. } => {
                let dx = if x < 1.0 { -1.0 } else { 0.0 };
                ((1.0 - x).max(0.0), beta * dx, -beta * dx)
            }
            Loss::SigmoidNorm { .. } => {
                let (nc, nr) = (c.count.max(1.0), r.count.max(1.0));
                let y = beta * (pc / nc - pr / nr);
                let dy = -sigmoid(-y);
                (softplus(-y), beta * dy / nc, -beta * dy / nr)
            }
            Loss::Ipo { .. } => {
                let (nc, nr) = (c.count.max(1.0), r.count.max(1.0));
                let h = pc / nc - pr / nr - 1.0 / (2.0 * beta);
                (h * h, 2.0 * h / nc, -2.0 * h / nr)
            }
            Loss::ExoPair { epsilon: e, .. } => {
                let e = e as f64;
                let phi = sigmoid(x) * (-softplus(-x) - (-e).ln_1p()) + sigmoid(-x) * (-softplus(x) - e.ln());
                let dx = sigmoid_prime(x) * (x - ((1.0 - e) / e).ln());
                (phi, beta * dx, -beta * dx)
            }
            Loss::NcaPair { .. } => {
                let (rhc, rhr) = (beta * pc, beta * pr);
                let phi = softplus(-rhc) + 0.5 * softplus(rhc) + 0.5 * softplus(rhr);
                (phi, beta * (0.5 * sigmoid(rhc) - sigmoid(-rhc)), beta * 0.5 * sigmoid(rhr))
            }
            Loss::BcoPair { .. } => {
                let (rhc, rhr) = (beta * pc, beta * pr);
                (softplus(-rhc) + softplus(rhr), -beta * sigmoid(-rhc), beta * sigmoid(rhr))
            }
            Loss::SppoHard { .. } => {
                let (a, b) = (pc - 0.5 / beta, pr + 0.5 / beta);
                (a * a + b * b, 2.0 * a, 2.0 * b)
            }
            Loss::ApoZero { .. } => {
                // Raw Δ, not ψ(Δ): the ψ-chain factors qc, qr are undone below.
                let phi = sigmoid(-beta * dc) + sigmoid(beta * dr);
                g_c = -beta * sigmoid_prime(beta * dc);
                g_r = beta * sigmoid_prime(beta * dr);
                (phi, 0.0, 0.0)
            }
            Loss::ApoDown { .. } => {
                g_c = beta * sigmoid_prime(beta * dc);
                let dsx = beta * sigmoid_prime(x);
                (sigmoid(beta * dc) + sigmoid(-x), -dsx, dsx)
            }
            Loss::DiscoPop { tau, .. } => {
                let tau = tau as f64;
                // TRL: -logsigmoid(x) (1 - mu) + exp(-x) mu, mu = sigmoid(x / tau); no clamp. For
                // x < 0 the products mu e^-x and sigma'(x/tau) e^-x are formed as one exponential
                // e^(x/tau - x) (finite where the product is, where e^-x alone would overflow).
                let a = x / tau;
                let (mu_e, sp_e) = if x < 0.0 {
                    let (ea, eax) = (a.exp(), (a - x).exp());
                    (eax / (1.0 + ea), eax / ((1.0 + ea) * (1.0 + ea)))
                } else {
                    let e = (-x).exp();
                    (sigmoid(a) * e, sigmoid_prime(a) * e)
                };
                let one_minus_mu = sigmoid(-a);
                let phi = one_minus_mu * softplus(-x) + mu_e;
                let dx = (sp_e - sigmoid_prime(a) * softplus(-x)) / tau - one_minus_mu * sigmoid(-x) - mu_e;
                (phi, beta * dx, -beta * dx)
            }
            _ => unreachable!(),
        };
        out.phi = phi;
        g_c += d_psi_c * qc;
        g_r += d_psi_r * qr;
    } else {
        // Sigmoid (cDPO-smoothed) or hinge on y, returning (φ, dφ/dy).
        let pref = |y: f64, e: f32, hinge: bool| {
            if hinge {
                ((1.0 - y).max(0.0), if y < 1.0 { -1.0 } else { 0.0 })
            } else {
                let e = e as f64;
                ((1.0 - e) * softplus(-y) + e * softplus(y), e - sigmoid(-y))
            }
        };
        match *loss {
            Loss::SimPo { gamma, label_smoothing, hinge, .. } => {
                let (phi, dy) = pref(beta * (sc - sr) - gamma as f64, label_smoothing, hinge);
                out.phi = phi;
                (g_c, g_r) = (beta * dy, -beta * dy);
                (out.reward_c, out.reward_r) = (beta * sc, beta * sr);
            }
            Loss::Cpo { label_smoothing, hinge, .. } => {
                let (phi, dy) = pref(beta * (sc - sr), label_smoothing, hinge);
                out.phi = phi;
                (g_c, g_r) = (beta * dy, -beta * dy);
                (out.reward_c, out.reward_r) = (beta * sc, beta * sr);
            }
            Loss::Orpo { .. } => {
                (out.reward_c, out.reward_r) = (beta * sc, beta * sr);
                if c.count == 0.0 || r.count == 0.0 {
                    return out; // an empty side: no odds to compare (the originals give NaN)
                }
                let (xc, xr) = (sc.min(ORPO_MAX_SCORE), sr.min(ORPO_MAX_SCORE));
                let lo = (xc - xr) - (log1mexp(xc) - log1mexp(xr));
                out.phi = beta * softplus(-lo);
                let dlo = -beta * sigmoid(-lo);
                g_c = if sc < ORPO_MAX_SCORE { dlo / -xc.exp_m1() } else { 0.0 };
                g_r = if sr < ORPO_MAX_SCORE { -dlo / -xr.exp_m1() } else { 0.0 };
            }
            Loss::Tgdpo { alpha, .. } => {
                // Token weights carry the rewards r̂_t; z = Pc − Pr (sum aggregation, β inside).
                let ab2 = alpha as f64 * beta * beta;
                let pc = beta * (c.sum - c.ref_sum) + ab2 * (c.weighted_sum - c.ref_weighted_sum);
                let pr = beta * (r.sum - r.ref_sum) - ab2 * (r.weighted_sum - r.ref_weighted_sum);
                let z = pc - pr;
                out.phi = softplus(-z);
                let s = sigmoid(-z);
                out.coef_c = [-s * beta, -s * ab2, 0.0];
                out.coef_r = [s * beta, -s * ab2, 0.0];
                return out;
            }
            Loss::TabPo { lambda, barrier, .. } => {
                let z = dc - dr;
                out.phi = softplus(-beta * z);
                g_c = -beta * sigmoid(-beta * z);
                g_r = -g_c;
                // Barrier on chosen tokens: w̃ = w N / max(W, 1e-6), N = max(count, 1).
                let scale = c.count.max(1.0) / c.weight_mass.max(WEIGHT_MASS_EPS);
                let d = match barrier {
                    super::BarrierDenominator::GatedWeightMassClamp1 => {
                        (c.gated_weight_mass * scale).max(1.0)
                    }
                    super::BarrierDenominator::GatedCountClamp1 => c.gated_count.max(1.0),
                    super::BarrierDenominator::GatedWeightMassEps => {
                        (c.gated_weight_mass * scale).max(WEIGHT_MASS_EPS)
                    }
                };
                out.barrier = -c.gated_weighted_sum * scale / d;
                out.barrier_loss = lambda as f64 * out.barrier;
                out.phi += out.barrier_loss;
                out.coef_c[2] = -(lambda as f64) * scale / d;
            }
            Loss::Nll => {
                // Batch-level: handled by the caller (token mean over all chosen tokens).
                (out.reward_c, out.reward_r) = (0.0, 0.0);
            }
            _ => unreachable!(),
        }
    }
    out.coef_c[0] += g_c * k_c.0;
    out.coef_c[1] += g_c * k_c.1;
    out.coef_r[0] += g_r * k_r.0;
    out.coef_r[1] += g_r * k_r.1;
    out
}

/// The stable ranks of `v` (ties by index), as `torch.sort` orders distinct values.
fn stable_ranks(v: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]).then(a.cmp(&b)));
    let mut rank = vec![0; v.len()];
    for (k, &i) in order.iter().enumerate() {
        rank[i] = k;
    }
    rank
}

/// An AOT term for every pair: TRL sorts the batch's margins (`aot`) or log-ratios
/// (`aot_unpaired`) and matches them by rank; pair i gets the loss at its own rank and the
/// gradient that `torch.sort`'s backward routes to it.
fn aot_terms(
    loss: &Loss,
    cfg: &LossConfig,
    stats: &[SeqStats],
    pairs: &[(usize, usize)],
    ref_seq: Option<&[f32]>,
) -> Vec<TermOut> {
    let agg = loss.aggregation(cfg.aggregation);
    let beta = loss.beta() as f64;
    let (Loss::Aot { label_smoothing, .. } | Loss::AotUnpaired { label_smoothing, .. }) = *loss else {
        unreachable!()
    };
    let e = label_smoothing as f64;
    let logistic = |x: f64| ((1.0 - e) * softplus(-x) + e * softplus(x), e - sigmoid(-x));
    let score = |s: usize| stats[s].score(agg);
    let reference = |s: usize| ref_seq.map_or_else(|| stats[s].ref_score(agg), |r| r[s] as f64);
    let margin: Vec<f64> = pairs.iter().map(|&(c, r)| score(c) - score(r)).collect();
    let ref_margin: Vec<f64> = pairs.iter().map(|&(c, r)| reference(c) - reference(r)).collect();
    let dc: Vec<f64> = pairs.iter().map(|&(c, _)| score(c) - reference(c)).collect();
    let dr: Vec<f64> = pairs.iter().map(|&(_, r)| score(r) - reference(r)).collect();
    let sorted_at = |v: &[f64]| {
        let rank = stable_ranks(v);
        let mut sorted = vec![0.0; v.len()];
        for (i, &k) in rank.iter().enumerate() {
            sorted[k] = v[i];
        }
        (rank, sorted)
    };
    let (rank_m, _) = sorted_at(&margin);
    let (_, ref_sorted) = sorted_at(&ref_margin);
    let (rank_c, dc_sorted) = sorted_at(&dc);
    let (rank_r, dr_sorted) = sorted_at(&dr);
    pairs
        .iter()
        .enumerate()
        .map(|(i, &(c, r))| {
            let (phi, g_c, g_r) = if matches!(loss, Loss::Aot { .. }) {
                let (phi, dx) = logistic(beta * (margin[i] - ref_sorted[rank_m[i]]));
                (phi, beta * dx, -beta * dx)
            } else {
                let (phi, dx_c) = logistic(beta * (dc[i] - dr_sorted[rank_c[i]]));
                let (_, dx_r) = logistic(beta * (dc_sorted[rank_r[i]] - dr[i]));
                (phi, beta * dx_c, -beta * dx_r)
            };
            let (k_c, k_r) = (stats[c].token_coef(agg), stats[r].token_coef(agg));
            TermOut {
                phi,
                coef_c: [g_c * k_c.0, g_c * k_c.1, 0.0],
                coef_r: [g_r * k_r.0, g_r * k_r.1, 0.0],
                reward_c: beta * dc[i],
                reward_r: beta * dr[i],
                score_c: score(c),
                score_r: score(r),
                ..Default::default()
            }
        })
        .collect()
}

/// WPO's sequence weights (TRL `use_weighting`, Eq. 2 of the paper): `w_s = exp(Σ_t m_t (ℓ_t −
/// log Σ_v p_v²) / max(N_s, 1))` from the per-token log-probs and `log_sum_sq` = log Σ_v p_v² of
/// each token's distribution (the logits pass's optional output). Detached: no gradient flows
/// through them.
pub fn wpo_weights(tokens: &TokenInputs, log_sum_sq: &[f32], layout: &SeqLayout) -> Result<Vec<f64>> {
    tokens.validate(layout)?;
    crate::error::ensure_len("log_sum_sq", log_sum_sq.len(), tokens.n_tokens())?;
    Ok((0..layout.n_seqs())
        .map(|s| {
            let ts: Vec<usize> = layout.range(s).filter(|&t| tokens.mask.is_none_or(|m| m[t] != 0)).collect();
            let sum: Vec<f64> = ts.iter().map(|&t| tokens.logp[t] as f64 - log_sum_sq[t] as f64).collect();
            (crate::numeric::pairwise_sum(&sum) / (ts.len() as f64).max(1.0)).exp()
        })
        .collect())
}

/// Loss, metrics and per-token gradient of a preference batch (f64 reference).
///
/// `tokens.ref_logp` (per token) or `ref_seq` (per sequence, aggregated as the terms aggregate
/// the policy) supplies the reference; giving both is an error.
pub fn forward_backward(
    tokens: &TokenInputs,
    layout: &SeqLayout,
    pairs: &Pairs,
    ref_seq: Option<&[f32]>,
    cfg: &LossConfig,
) -> Result<PreferenceLossRef> {
    forward_backward_weighted(tokens, layout, pairs, ref_seq, None, cfg)
}

/// [`forward_backward`] with WPO's detached sequence weights (`[S]`, [`wpo_weights`]): every
/// pair's loss times `w_c · w_r`, the NLL term times their batch mean (TRL multiplies its expanded
/// `sft` loss too). Refused with the AOT terms, as TRL.
pub fn forward_backward_weighted(
    tokens: &TokenInputs,
    layout: &SeqLayout,
    pairs: &Pairs,
    ref_seq: Option<&[f32]>,
    seq_weights: Option<&[f32]>,
    cfg: &LossConfig,
) -> Result<PreferenceLossRef> {
    let source = RefSource::from_given(tokens.ref_logp.is_some(), ref_seq.is_some())?;
    cfg.validate(source)?;
    let stats = seq_stats(tokens, layout, cfg.log_tau())?;
    let n_seqs = stats.len();
    pairs.validate(n_seqs)?;
    if let Some(rs) = ref_seq {
        ensure(rs.len() == n_seqs, "ref_seq", || {
            format!("length must be the number of sequences ({n_seqs}), got {}", rs.len())
        })?;
    }
    if cfg.needs_weights() {
        ensure(tokens.weights.is_some(), "weights", || "these losses read token weights; none given".into())?;
    }
    if let Some(w) = seq_weights {
        crate::error::ensure_len("seq_weights", w.len(), n_seqs)?;
        ensure(!cfg.terms.iter().any(|(l, _)| l.sorts_batch()), "seq_weights", || {
            "WPO weighting is refused for aot / aot_unpaired, as TRL".into()
        })?;
    }
    let n_pairs = pairs.n_pairs(n_seqs);
    let pair_list: Vec<(usize, usize)> = (0..n_pairs).map(|i| pairs.pair(i, n_seqs)).collect();
    let pair_weight = |i: usize| {
        let (c, r) = pair_list[i];
        seq_weights.map_or(1.0, |w| w[c] as f64 * w[r] as f64)
    };
    let nll_weight_mean = (0..n_pairs).map(pair_weight).sum::<f64>() / n_pairs as f64;
    let aot: Vec<Option<Vec<TermOut>>> = cfg
        .terms
        .iter()
        .map(|(l, _)| l.sorts_batch().then(|| aot_terms(l, cfg, &stats, &pair_list, ref_seq)))
        .collect();
    let inv_p = 1.0 / n_pairs as f64;
    let scale = cfg.grad_scale as f64;
    let mut seq_coef = vec![[0.0f64; 3]; n_seqs];
    let mut out = PreferenceLossRef {
        loss: 0.0,
        pairs: vec![[0.0; PAIR_COLUMNS]; n_pairs],
        metrics: [0.0; 12],
        grad_logp: Vec::new(),
    };

    // Batch NLL over all chosen tokens (counted once per pair the sequence is chosen in).
    let (mut nll_num, mut nll_den) = (0.0, 0.0);
    for i in 0..n_pairs {
        let (c, _) = pairs.pair(i, n_seqs);
        nll_num -= stats[c].sum;
        nll_den += stats[c].count;
    }
    let nll = if nll_den > 0.0 { nll_num / nll_den } else { 0.0 };
    let first_pairwise = cfg.terms.iter().position(|(l, _)| !matches!(l, Loss::Nll));
    let (mut gated, mut chosen_tokens) = (0.0, 0.0);
    let m = &mut out.metrics;
    for i in 0..n_pairs {
        let (ci, ri) = pairs.pair(i, n_seqs);
        let refs = ref_seq.map(|rs| (rs[ci] as f64, rs[ri] as f64));
        let mut preference_loss = 0.0;
        let mut barrier = 0.0;
        let mut barrier_loss = 0.0;
        for (k, (loss, weight)) in cfg.terms.iter().enumerate() {
            let w = *weight as f64;
            if matches!(loss, Loss::Nll) {
                if nll_den > 0.0 {
                    seq_coef[ci][0] -= scale * w * nll_weight_mean / nll_den;
                }
                continue;
            }
            let mut t = match &aot[k] {
                Some(terms) => terms[i],
                None => pair_term(loss, cfg, &stats[ci], &stats[ri], refs),
            };
            let pw = pair_weight(i);
            t.phi *= pw;
            t.barrier_loss *= pw;
            t.coef_c.iter_mut().chain(t.coef_r.iter_mut()).for_each(|g| *g *= pw);
            preference_loss += w * t.phi;
            let g = scale * w * inv_p;
            for (dst, src) in seq_coef[ci].iter_mut().zip(t.coef_c) {
                *dst += g * src;
            }
            for (dst, src) in seq_coef[ri].iter_mut().zip(t.coef_r) {
                *dst += g * src;
            }
            if matches!(loss, Loss::TabPo { .. }) {
                barrier = t.barrier;
                barrier_loss = w * t.barrier_loss;
                gated += stats[ci].gated_count;
                chosen_tokens += stats[ci].count;
            }
            if Some(k) == first_pairwise {
                out.pairs[i][1..5].copy_from_slice(&[t.reward_c, t.reward_r, t.score_c, t.score_r]);
            }
        }
        out.pairs[i][0] = preference_loss;
        out.pairs[i][5] = barrier;
        let p = &out.pairs[i];
        // TAB-PO's official metrics: the preference part without the barrier, and λ·mean(B).
        m[1] += (preference_loss - barrier_loss) * inv_p;
        m[3] += p[1] * inv_p;
        m[4] += p[2] * inv_p;
        m[5] += (p[1] - p[2]) * inv_p;
        m[6] += if p[1] > p[2] { inv_p } else { 0.0 };
        m[7] += p[3] * inv_p;
        m[8] += p[4] * inv_p;
        m[9] += barrier_loss * inv_p;
        m[11] += sigmoid(p[1] - p[2]) * inv_p;
    }
    m[2] = nll;
    m[10] = if chosen_tokens > 0.0 { gated / chosen_tokens } else { 0.0 };
    m[0] = m[1]
        + m[9]
        + cfg
            .terms
            .iter()
            .filter(|(l, _)| matches!(l, Loss::Nll))
            .map(|(_, w)| *w as f64 * nll_weight_mean * nll)
            .sum::<f64>();
    out.loss = m[0];

    let log_tau = cfg.log_tau();
    let mut grad = vec![0.0; tokens.n_tokens()];
    for (s, c) in seq_coef.iter().enumerate() {
        for t in layout.range(s) {
            if tokens.mask.is_some_and(|mk| mk[t] == 0) {
                continue;
            }
            let w = tokens.weights.map_or(1.0, |w| w[t] as f64);
            let gate = if (tokens.logp[t] as f64) < log_tau { 1.0 } else { 0.0 };
            grad[t] = c[0] + c[1] * w + c[2] * gate * w;
        }
    }
    out.grad_logp = grad;
    Ok(out)
}
