//! Fused preference losses: the DPO family (TRL `loss_type` names), f-divergence DPO, reference-free
//! SimPO / CPO / ORPO, an NLL (SFT / RPO) term, token-weighted DPO (TIS-DPO), TGDPO and TAB-PO.
//!
//! Given per-token policy log-probs (plus mask, optional token weights, reference log-probs per
//! token or per sequence) over a packed or padded batch, and pairs (chosen sequence, rejected
//! sequence), one call computes the mean loss, per-pair losses, the metrics trainers log, and the
//! gradient of the loss with respect to every token's log-prob (f32, zero on masked tokens).
//!
//! Formulas follow TRL 1.16.0's `DPOTrainer._compute_loss` and `shared/spec/losses.md` (the TAB-PO
//! reference implementation):
//! with per-sequence scores S (aggregation per term), Δ = S − S^ref, ψ the f-divergence transform,
//! δ = ψ(Δc) − ψ(Δr), x = βδ, ρ = βΔ:
//!
//! | [`Loss`] | per-pair φ |
//! |---|---|
//! | `Sigmoid` | (1−ε) softplus(−x) + ε softplus(x) (ε = label smoothing; cDPO) |
//! | `Robust` | [(1−ε) softplus(−x) − ε softplus(x)] / (1−2ε) |
//! | `Hinge` | relu(1 − x) |
//! | `Ipo` | (ψ(Δc)/Nc − ψ(Δr)/Nr − 1/(2β))², N = max(count, 1) |
//! | `ExoPair` | q(log q − log(1−ε)) + (1−q)(log(1−q) − log ε), q = σ(x) |
//! | `NcaPair` | −log σ(ρc) − ½ log σ(−ρc) − ½ log σ(−ρr) (ρ from ψ(Δ)) |
//! | `BcoPair` | −log σ(ρc) − log σ(−ρr) (ρ from ψ(Δ); no running mean) |
//! | `SppoHard` | (ψ(Δc) − 1/(2β))² + (ψ(Δr) + 1/(2β))² |
//! | `ApoZero` | 1 − σ(βΔc) + σ(βΔr) (raw Δ) |
//! | `ApoDown` | σ(βΔc) + 1 − σ(x) |
//! | `DiscoPop` | (1−μ) softplus(−x) + μ e^{−max(x, −80)}, μ = σ(x/τ) |
//! | `SigmoidNorm` | softplus(−β(ψ(Δc)/Nc − ψ(Δr)/Nr)), N = max(count, 1) |
//! | `Aot` | ℓ_ε(β(m_(k) − m^ref_(k))) at the pair's rank k of its margin m = Sc − Sr among the batch's |
//! | `AotUnpaired` | ℓ_ε(β(Δc_(k) − Δr_(k))): chosen and rejected log-ratios sorted apart, matched by rank |
//! | `SimPo` | sigmoid/hinge on β(S̄c − S̄r) − γ with mean scores, no reference |
//! | `Cpo` | sigmoid/hinge on β(Sc − Sr) with sum scores, no reference |
//! | `Orpo` | −β log σ(lo), lo = (S̄c − S̄r) − (log(1−e^{S̄c}) − log(1−e^{S̄r})) |
//! | `Tgdpo` | softplus(−z), z = Σ β(1+αβ r̂c) uc − Σ β(1−αβ r̂r) ur, u = logp − ref, r̂ = token rewards |
//! | `TabPo` | softplus(−β z) with weighted-mean scores, + λ · barrier on under-confident chosen tokens |
//! | `Nll` | −Σ_chosen m logp / Σ_chosen m (token mean over the batch; not divided by pairs) |
//!
//! with ℓ_ε(x) = (1−ε) softplus(−x) + ε softplus(x) and m^ref_(k) the k-th smallest reference
//! margin (TRL's `torch.sort` over the batch; ties by pair index). AOT couples the pairs of a batch,
//! so the per-pair loss column holds the value at the pair's rank (the mean is TRL's).
//!
//! The batch loss is `L = Σ_k weight_k · mean_pairs φ_k` (NLL: its batch value), as TRL combines
//! `loss_type` lists with `loss_weights`. With WPO sequence weights ω (TRL `use_weighting`), every
//! pair's φ_k is multiplied by the detached ω_c ω_r (the NLL term by their batch mean, as TRL's
//! expanded `sft` loss), see [`wpo_weights`](reference::wpo_weights).
use crate::error::{ensure, Result};
use crate::seq_reduce::ReduceMode;

pub(crate) mod launch;
pub mod ld_weights;
pub mod reference;
pub mod tabpo_weights;

pub use launch::{
    preference_loss_workspace_len, DevicePairs, PreferenceLossOutputs, PreferenceLossPtrs, RawPairs, SubBatch,
};
pub use ld_weights::ld_weights;

/// The f-divergence transform ψ applied to log-ratios Δ by the DPO-family terms (TRL
/// `f_divergence_type`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FDivergence {
    /// ψ(Δ) = Δ (standard DPO).
    ReverseKl,
    /// ψ(Δ) = −e^{−Δ} (exponent clamped at 80).
    ForwardKl,
    /// ψ(Δ) = log σ(Δ).
    JensenShannon,
    /// ψ(Δ) = e^{(α−1)Δ}/(α−1), exponent clamped at 80; |α − 1| < 1e-6 falls back to reverse KL.
    Alpha {
        /// α (TRL `f_alpha_divergence_coef`, default 0.5).
        alpha: f32,
    },
}

/// TAB-PO barrier denominator variants.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarrierDenominator {
    /// max(Σ gate w̃, 1): the official implementation (default).
    GatedWeightMassClamp1 = 0,
    /// max(Σ gate, 1): the "toggleable" variant's default.
    GatedCountClamp1 = 1,
    /// max(Σ gate w̃, 1e-6): the variant's `length_norm_by="weight_mass"`.
    GatedWeightMassEps = 2,
}

/// One loss term with its hyperparameters. Constructors give TRL's / the papers' defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    /// DPO (`sigmoid`); `label_smoothing` > 0 gives cDPO.
    Sigmoid {
        /// β (default 0.1).
        beta: f32,
        /// ε in [0, 0.5) (default 0).
        label_smoothing: f32,
    },
    /// rDPO (`robust`).
    Robust {
        /// β.
        beta: f32,
        /// ε in [0, 0.5).
        label_smoothing: f32,
    },
    /// SLiC / RSO (`hinge`).
    Hinge {
        /// β.
        beta: f32,
    },
    /// IPO (`ipo`), length-averaged log-ratios; β is the paper's τ.
    Ipo {
        /// β.
        beta: f32,
    },
    /// EXO (`exo_pair`).
    ExoPair {
        /// β.
        beta: f32,
        /// ε in (0, 0.5) (TRL substitutes 1e-3 for 0).
        epsilon: f32,
    },
    /// NCA (`nca_pair`).
    NcaPair {
        /// β.
        beta: f32,
    },
    /// BCO pair (`bco_pair`), without the running mean.
    BcoPair {
        /// β.
        beta: f32,
    },
    /// SPPO hard (`sppo_hard`).
    SppoHard {
        /// β.
        beta: f32,
    },
    /// APO-zero (`apo_zero`).
    ApoZero {
        /// β.
        beta: f32,
    },
    /// APO-down (`apo_down`).
    ApoDown {
        /// β.
        beta: f32,
    },
    /// DiscoPOP (`discopop`).
    DiscoPop {
        /// β.
        beta: f32,
        /// τ (default 0.05).
        tau: f32,
    },
    /// TRL `sigmoid_norm`: DPO on per-side length-normalized (transformed) log-ratios.
    SigmoidNorm {
        /// β.
        beta: f32,
    },
    /// AOT (`aot`): the sorted policy margins against the sorted reference margins of the batch.
    Aot {
        /// β.
        beta: f32,
        /// ε in [0, 0.5) (TRL `label_smoothing`).
        label_smoothing: f32,
    },
    /// AOT unpaired (`aot_unpaired`): sorted chosen against sorted rejected log-ratios.
    AotUnpaired {
        /// β.
        beta: f32,
        /// ε in [0, 0.5).
        label_smoothing: f32,
    },
    /// SimPO: reference-free, mean scores, margin γ.
    SimPo {
        /// β (default 2.0).
        beta: f32,
        /// γ (default 0.5; the paper's gamma_beta_ratio 0.25 × β 2.0).
        gamma: f32,
        /// ε in [0, 0.5).
        label_smoothing: f32,
        /// Hinge instead of sigmoid.
        hinge: bool,
    },
    /// CPO: reference-free, sum scores (add an `Nll` term with weight `cpo_alpha`, default 1).
    Cpo {
        /// β (default 0.1).
        beta: f32,
        /// ε in [0, 0.5).
        label_smoothing: f32,
        /// Hinge instead of sigmoid.
        hinge: bool,
    },
    /// ORPO odds-ratio term (add an `Nll` term with weight 1, as TRL).
    Orpo {
        /// β, the paper's λ (default 0.1).
        beta: f32,
    },
    /// TGDPO: per-token reward guidance; the token-weight input carries the rewards r̂_t.
    Tgdpo {
        /// β (default 0.1).
        beta: f32,
        /// α (default 0.5).
        alpha: f32,
    },
    /// TAB-PO: token-weighted reference-adjusted advantage + confidence-gated barrier on chosen
    /// tokens (gate: logp < ln τ).
    TabPo {
        /// β (default 0.5).
        beta: f32,
        /// τ in (0, 1) (default 0.66).
        tau: f32,
        /// λ (default 0.5).
        lambda: f32,
        /// Barrier denominator (default: the official clamp-at-1 gated weight mass).
        barrier: BarrierDenominator,
        /// Sequence scores: `WeightedMean` (default, official) or `WeightedSum`.
        seq_norm: ReduceMode,
    },
    /// NLL (SFT / RPO) on chosen tokens: token mean over all chosen tokens of the batch.
    Nll,
}

impl Loss {
    /// DPO with TRL's defaults (β 0.1).
    pub fn dpo() -> Self {
        Loss::Sigmoid { beta: 0.1, label_smoothing: 0.0 }
    }
    /// SimPO with the paper's defaults (β 2.0, γ 0.5).
    pub fn simpo() -> Self {
        Loss::SimPo { beta: 2.0, gamma: 0.5, label_smoothing: 0.0, hinge: false }
    }
    /// TAB-PO with the official defaults (β 0.5, τ 0.66, λ 0.5).
    pub fn tabpo() -> Self {
        Loss::TabPo {
            beta: 0.5,
            tau: 0.66,
            lambda: 0.5,
            barrier: BarrierDenominator::GatedWeightMassClamp1,
            seq_norm: ReduceMode::WeightedMean,
        }
    }
    /// TGDPO with the reference defaults (β 0.1, α 0.5).
    pub fn tgdpo() -> Self {
        Loss::Tgdpo { beta: 0.1, alpha: 0.5 }
    }

    /// β of the term (0 for `Nll`).
    pub fn beta(&self) -> f32 {
        match *self {
            Loss::Sigmoid { beta, .. }
            | Loss::Robust { beta, .. }
            | Loss::Hinge { beta }
            | Loss::Ipo { beta }
            | Loss::ExoPair { beta, .. }
            | Loss::NcaPair { beta }
            | Loss::BcoPair { beta }
            | Loss::SppoHard { beta }
            | Loss::ApoZero { beta }
            | Loss::ApoDown { beta }
            | Loss::DiscoPop { beta, .. }
            | Loss::SigmoidNorm { beta }
            | Loss::Aot { beta, .. }
            | Loss::AotUnpaired { beta, .. }
            | Loss::SimPo { beta, .. }
            | Loss::Cpo { beta, .. }
            | Loss::Orpo { beta }
            | Loss::Tgdpo { beta, .. }
            | Loss::TabPo { beta, .. } => beta,
            Loss::Nll => 0.0,
        }
    }

    /// True for terms that need reference log-probs.
    pub fn needs_reference(&self) -> bool {
        !matches!(self, Loss::SimPo { .. } | Loss::Cpo { .. } | Loss::Orpo { .. } | Loss::Nll)
    }

    /// True for the terms that sort the batch (aot, aot_unpaired): one pair's loss depends on
    /// every other pair's.
    pub fn sorts_batch(&self) -> bool {
        matches!(self, Loss::Aot { .. } | Loss::AotUnpaired { .. })
    }

    /// True for the DPO-family terms that use the configurable aggregation and ψ.
    pub fn is_dpo_family(&self) -> bool {
        matches!(
            self,
            Loss::Sigmoid { .. }
                | Loss::Robust { .. }
                | Loss::Hinge { .. }
                | Loss::Ipo { .. }
                | Loss::ExoPair { .. }
                | Loss::NcaPair { .. }
                | Loss::BcoPair { .. }
                | Loss::SppoHard { .. }
                | Loss::ApoZero { .. }
                | Loss::ApoDown { .. }
                | Loss::DiscoPop { .. }
                | Loss::SigmoidNorm { .. }
        )
    }

    /// Sequence aggregation the term scores with, given the config's DPO-family aggregation.
    pub fn aggregation(&self, dpo_aggregation: ReduceMode) -> ReduceMode {
        match *self {
            Loss::SimPo { .. } | Loss::Orpo { .. } => ReduceMode::Mean,
            Loss::Cpo { .. } | Loss::Nll | Loss::Tgdpo { .. } => ReduceMode::Sum,
            Loss::TabPo { seq_norm, .. } => seq_norm,
            _ => dpo_aggregation,
        }
    }

    fn validate(&self) -> Result<()> {
        let beta = self.beta();
        if !matches!(self, Loss::Nll) {
            ensure(beta.is_finite() && beta > 0.0, "beta", || {
                format!("must be finite and > 0, got {beta} in {self:?}")
            })?;
            // IPO and SPPO divide by beta in f32 (1 / (2 beta)).
            ensure((0.5f32 / beta).is_finite(), "beta", || {
                format!("1 / (2 beta) overflows f32 for beta = {beta:e} in {self:?}; use beta >= 1.5e-39")
            })?;
        }
        let smoothing = |ls: f32| {
            ensure((0.0..0.5).contains(&ls), "label_smoothing", || {
                format!("must be in [0, 0.5), got {ls} in {self:?}")
            })
        };
        match *self {
            Loss::Sigmoid { label_smoothing, .. }
            | Loss::Robust { label_smoothing, .. }
            | Loss::SimPo { label_smoothing, .. }
            | Loss::Cpo { label_smoothing, .. }
            | Loss::Aot { label_smoothing, .. }
            | Loss::AotUnpaired { label_smoothing, .. } => smoothing(label_smoothing)?,
            Loss::ExoPair { epsilon, .. } => ensure(epsilon > 0.0 && epsilon < 0.5, "epsilon", || {
                format!("exo_pair needs 0 < epsilon < 0.5, got {epsilon}")
            })?,
            Loss::DiscoPop { tau, .. } => ensure(tau.is_finite() && tau > 0.0, "tau", || {
                format!("discopop tau must be > 0, got {tau}")
            })?,
            Loss::Tgdpo { alpha, .. } => {
                ensure(alpha.is_finite(), "alpha", || format!("tgdpo alpha must be finite, got {alpha}"))?
            }
            Loss::TabPo { tau, lambda, seq_norm, .. } => {
                ensure(tau > 0.0 && tau < 1.0, "tau", || format!("TAB-PO tau must be in (0, 1), got {tau}"))?;
                ensure(lambda.is_finite() && lambda >= 0.0, "lambda", || {
                    format!("TAB-PO lambda must be finite and >= 0, got {lambda}")
                })?;
                ensure(seq_norm.uses_weights(), "seq_norm", || {
                    format!("TAB-PO scores are WeightedMean or WeightedSum, got {seq_norm:?}")
                })?;
            }
            _ => {}
        }
        if let Loss::SimPo { gamma, .. } = *self {
            ensure(gamma.is_finite(), "gamma", || format!("must be finite, got {gamma}"))?;
        }
        Ok(())
    }
}

/// Where the reference log-probs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefSource {
    /// No reference (reference-free losses only).
    None,
    /// Per-token reference log-probs (aggregated like the policy by each term).
    PerToken,
    /// Per-sequence reference scores, already aggregated by the caller the way the terms
    /// aggregate the policy (sums for DPO, weighted means for TAB-PO, ...). Not valid for TGDPO.
    PerSequence,
}

impl RefSource {
    /// The source given per-token and/or per-sequence references; both at once is an error.
    pub fn from_given(per_token: bool, per_sequence: bool) -> Result<Self> {
        match (per_token, per_sequence) {
            (true, true) => Err(crate::error::invalid(
                "ref_seq",
                "give per-token ref_logp or per-sequence ref_seq, not both",
            )),
            (true, false) => Ok(RefSource::PerToken),
            (false, true) => Ok(RefSource::PerSequence),
            (false, false) => Ok(RefSource::None),
        }
    }
}

/// A full loss configuration: weighted terms plus the settings they share. Validated before launch.
#[derive(Debug, Clone, PartialEq)]
pub struct LossConfig {
    /// `(term, weight)`; `L = Σ weight · term`. 1 to [`MAX_LOSS_TERMS`] terms; at most one TAB-PO.
    pub terms: Vec<(Loss, f32)>,
    /// ψ for the DPO-family terms (default reverse KL), TRL's full transforms; refused (as TRL)
    /// for `nca_pair`, `bco_pair`, `sppo_hard`, `apo_zero`, `apo_down`, `aot` and
    /// `aot_unpaired` unless reverse KL.
    pub divergence: FDivergence,
    /// Sequence aggregation of the DPO-family terms: `Sum` (default, DPO), `WeightedSum`
    /// (TIS-DPO-style token-weighted DPO), `WeightedMean`, or `Mean`.
    pub aggregation: ReduceMode,
    /// Multiplies every gradient (upstream dL, e.g. a gradient-accumulation scale); default 1.
    pub grad_scale: f32,
}

/// Most loss terms in one configuration.
pub const MAX_LOSS_TERMS: usize = 4;

impl LossConfig {
    /// A single term with weight 1 and the other settings at their defaults.
    pub fn single(loss: Loss) -> Self {
        LossConfig {
            terms: vec![(loss, 1.0)],
            divergence: FDivergence::ReverseKl,
            aggregation: ReduceMode::Sum,
            grad_scale: 1.0,
        }
    }
    /// DPO (sigmoid, β) as TRL's default.
    pub fn dpo(beta: f32) -> Self {
        Self::single(Loss::Sigmoid { beta, label_smoothing: 0.0 })
    }
    /// TAB-PO with the official defaults.
    pub fn tabpo() -> Self {
        Self::single(Loss::tabpo())
    }
    /// CPO with its NLL term (`cpo_alpha`, default 1.0).
    pub fn cpo(beta: f32, cpo_alpha: f32) -> Self {
        let mut c = Self::single(Loss::Cpo { beta, label_smoothing: 0.0, hinge: false });
        c.terms.push((Loss::Nll, cpo_alpha));
        c
    }
    /// ORPO: NLL + odds-ratio term, as TRL.
    pub fn orpo(beta: f32) -> Self {
        let mut c = Self::single(Loss::Orpo { beta });
        c.terms.push((Loss::Nll, 1.0));
        c
    }
    /// Token-weighted DPO (TIS-DPO): DPO on weighted-sum scores.
    pub fn token_weighted_dpo(beta: f32) -> Self {
        LossConfig { aggregation: ReduceMode::WeightedSum, ..Self::dpo(beta) }
    }

    /// True when some term needs reference log-probs.
    pub fn needs_reference(&self) -> bool {
        self.terms.iter().any(|(l, _)| l.needs_reference())
    }

    /// True when some term reads token weights.
    pub fn needs_weights(&self) -> bool {
        self.terms
            .iter()
            .any(|(l, _)| l.aggregation(self.aggregation).uses_weights() || matches!(l, Loss::Tgdpo { .. }))
    }

    /// `ln τ` of the TAB-PO term (the confidence gate), or `-inf` when there is none. Rounded to
    /// f32, the precision the kernels compare in, so the reference gates exactly the same tokens.
    pub fn log_tau(&self) -> f64 {
        self.terms
            .iter()
            .find_map(|(l, _)| match l {
                Loss::TabPo { tau, .. } => Some((*tau as f64).ln() as f32 as f64),
                _ => None,
            })
            .unwrap_or(f64::NEG_INFINITY)
    }

    /// Checks every hyperparameter and the combination with the reference source.
    pub fn validate(&self, reference: RefSource) -> Result<()> {
        ensure(!self.terms.is_empty() && self.terms.len() <= MAX_LOSS_TERMS, "terms", || {
            format!("need 1 to {MAX_LOSS_TERMS} loss terms, got {}", self.terms.len())
        })?;
        ensure(
            self.terms.iter().filter(|(l, _)| matches!(l, Loss::TabPo { .. })).count() <= 1,
            "terms",
            || "at most one TAB-PO term (it defines the confidence gate)".into(),
        )?;
        for (loss, weight) in &self.terms {
            loss.validate()?;
            ensure(weight.is_finite(), "terms", || {
                format!("weight of {loss:?} must be finite, got {weight}")
            })?;
        }
        ensure(self.grad_scale.is_finite(), "grad_scale", || {
            format!("must be finite, got {}", self.grad_scale)
        })?;
        if let FDivergence::Alpha { alpha } = self.divergence {
            ensure(alpha.is_finite(), "divergence", || format!("alpha must be finite, got {alpha}"))?;
        }
        if self.divergence != FDivergence::ReverseKl {
            // These use each side's transformed log-ratio on its own (or, apo_zero / apo_down, the
            // raw one): TRL 1.16 refuses an f-divergence other than reverse KL for them.
            for (loss, _) in &self.terms {
                let name = match loss {
                    Loss::NcaPair { .. } => "nca_pair",
                    Loss::BcoPair { .. } => "bco_pair",
                    Loss::SppoHard { .. } => "sppo_hard",
                    Loss::ApoDown { .. } => "apo_down",
                    Loss::ApoZero { .. } => "apo_zero",
                    Loss::Aot { .. } => "aot",
                    Loss::AotUnpaired { .. } => "aot_unpaired",
                    _ => continue,
                };
                return Err(crate::error::invalid(
                    "divergence",
                    format!(
                        "loss_type `{name}` supports only the reverse-KL f-divergence (as TRL), got {:?}",
                        self.divergence
                    ),
                ));
            }
        }
        if self.needs_reference() {
            ensure(reference != RefSource::None, "ref_logp", || {
                "these losses need reference log-probs (per token or per sequence)".into()
            })?;
        }
        if self.terms.iter().any(|(l, _)| matches!(l, Loss::Tgdpo { .. })) {
            ensure(reference == RefSource::PerToken, "ref_logp", || {
                "TGDPO needs per-token reference log-probs (its token weights depend on them)".into()
            })?;
        }
        Ok(())
    }
}

/// How pairs are formed from the sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pairs<'a> {
    /// Sequences `0 .. S/2` are chosen, `S/2 .. S` rejected; pair i = (i, i + S/2). S must be even.
    FirstHalfChosen,
    /// Explicit pairs: `chosen[i]`, `rejected[i]` are sequence indices. A sequence may appear in
    /// several pairs; its tokens then receive the sum of the pairs' gradients.
    Explicit {
        /// Chosen sequence of each pair.
        chosen: &'a [i32],
        /// Rejected sequence of each pair.
        rejected: &'a [i32],
    },
}

impl Pairs<'_> {
    /// Number of pairs for `n_seqs` sequences.
    pub fn n_pairs(&self, n_seqs: usize) -> usize {
        match self {
            Pairs::FirstHalfChosen => n_seqs / 2,
            Pairs::Explicit { chosen, .. } => chosen.len(),
        }
    }

    /// `(chosen, rejected)` of pair `i`.
    pub fn pair(&self, i: usize, n_seqs: usize) -> (usize, usize) {
        match self {
            Pairs::FirstHalfChosen => (i, i + n_seqs / 2),
            Pairs::Explicit { chosen, rejected } => (chosen[i] as usize, rejected[i] as usize),
        }
    }

    /// At least one pair; indices in range; `FirstHalfChosen` needs an even S.
    pub fn validate(&self, n_seqs: usize) -> Result<()> {
        match self {
            Pairs::FirstHalfChosen => ensure(n_seqs >= 2 && n_seqs % 2 == 0, "pairs", || {
                format!("first-half-chosen needs an even number (>= 2) of sequences, got {n_seqs}")
            }),
            Pairs::Explicit { chosen, rejected } => {
                ensure(!chosen.is_empty(), "pairs", || "need at least one pair".into())?;
                ensure(chosen.len() == rejected.len(), "pairs", || {
                    format!("chosen ({}) and rejected ({}) lengths differ", chosen.len(), rejected.len())
                })?;
                for (i, (&c, &r)) in chosen.iter().zip(rejected.iter()).enumerate() {
                    ensure(
                        c >= 0 && (c as usize) < n_seqs && r >= 0 && (r as usize) < n_seqs,
                        "pairs",
                        || format!("pair {i} = ({c}, {r}) is out of range for {n_seqs} sequences"),
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// Batch metrics, in the order of the GPU's metrics array (`metrics[k]`), named as trainers log them.
pub const METRIC_NAMES: [&str; 12] = [
    "loss",
    "loss/pref",
    "nll_loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "loss/barrier",
    "barrier/active_pct",
    "pref/p_pref",
];

/// Columns of the per-pair output `[n_pairs, PAIR_COLUMNS]`.
pub const PAIR_COLUMN_NAMES: [&str; 6] =
    ["loss", "chosen_reward", "rejected_reward", "chosen_logps", "rejected_logps", "barrier"];
/// Number of per-pair output columns.
pub const PAIR_COLUMNS: usize = 6;
/// Length of the metrics array (the named metrics plus reserved slots).
pub const METRICS_LEN: usize = 16;
