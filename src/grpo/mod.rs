//! The GRPO family of per-token policy-gradient losses (TRL `GRPOTrainer` `loss_type` names) and
//! the group advantages they use.
//!
//! Inputs per token t of sequence (completion) s: the policy log-prob ℓ_t (differentiable), and
//! optionally the rollout policy's ℓ^old_t (absent: on-policy, ratio 1 with its gradient kept, as
//! TRL's `old_per_token_logps = per_token_logps.detach()`), the reference ℓ^ref_t (for the k3 KL
//! term, β > 0), a completion mask m_t, the vLLM truncated importance-sampling weight v_t, the
//! entropy H_t of the policy's next-token distribution; per sequence the advantage A_s.
//!
//! ```text
//! ρ      = exp(ℓ_t − ℓ^old_t)                                  (ImportanceLevel::Token)
//!        = exp(Σ_t m (ℓ − ℓ^old) / max(Σ_t m, 1)), per sequence (ImportanceLevel::Sequence, GSPO)
//! c1     = min(ρ, δ) if a delta cap is set, else ρ;  c2 = clamp(ρ, 1 − ε_lo, 1 + ε_hi)
//! pg_t   = −min(c1 A, c2 A)                                    (grpo, bnpo, dr_grpo, dapo)
//!        = −sg(min(ρ, ε_hi)) A ℓ_t                             (cispo)
//!        = −σ(τ (ρ − 1)) · 4/τ · A,  τ = τ_pos if A > 0 else τ_neg   (sapo)
//! k3_t   = e^{ℓ^ref − ℓ} − (ℓ^ref − ℓ) − 1   (× ρ, uncapped, with `bias_corrected_kl`)
//! loss_t = pg_t · e_t · v_t + β k3_t             (TRL's order: the KL is neither masked nor weighted)
//! L      = Σ_s a_s Σ_t m_t loss_t  −  c_H · b · Σ_t m_t e_t H_t
//! ```
//! with e_t the top-entropy mask (1 when disabled), a_s the aggregation weight of the
//! [`GrpoLossType`], and b the entropy bonus's weight as TRL aggregates it: the dapo/cispo
//! normalizer, or else `1 / max(Σ m e, 1)`. Gradients: dL/dℓ_t (including, at the sequence
//! level, every token's share of dρ_s/dℓ_t = ρ_s m_t / N_s) and dL/dH_t = −c_H b m_t e_t.
//!
//! Metrics (TRL v1.9 / HEAD, one process): `kl` and `entropy` are token means over the
//! completion mask; `clip_ratio/*` token means of the clip indicators on the (δ-capped) ratio
//! (low: ρ < 1 − ε_lo with A < 0; high: ρ > 1 + ε_hi with A > 0), at the sequence level one
//! indicator per sequence averaged over the S sequences (TRL's (B, 1) ratios); for `cispo` the `high` slot
//! holds TRL's `cispo_clip_ratio` (ρ > ε_hi with A > 0), `sapo` logs none (zeros).
//! TRL's gradient-accumulation division of grpo/bnpo/dr_grpo is the caller's `grad_scale`.
//! The ratio's `min` splits the gradient in half at exact ties and the clamps pass it on their
//! closed bounds, as torch's `minimum` / `clamp` backward do.
use crate::error::{ensure, invalid, Result};

pub mod advantages;
pub(crate) mod launch;
pub mod reference;

pub use advantages::{group_advantages, Groups, ScaleRewards};
pub use launch::{grpo_workspace_len, DeviceGrpoInputs, GrpoOutputs, GrpoPtrs};

/// How the per-token losses are aggregated into the batch loss (and which surrogate they use).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GrpoLossType {
    /// `mean_s(Σ_t m loss / max(N_s, 1))`: per-sequence means, then the mean over sequences.
    Grpo,
    /// `Σ m loss / max(Σ m, 1)` over the local batch.
    Bnpo,
    /// `Σ m loss / (S · max_completion_length)` (Dr. GRPO).
    DrGrpo {
        /// The generation length budget (TRL `max_completion_length`).
        max_completion_length: usize,
    },
    /// `Σ m loss / normalizer` with the global active-token count per process (TRL's default).
    Dapo {
        /// `num_items_in_batch / num_processes`; `None` = the local count `Σ m` (one process, no
        /// gradient accumulation).
        normalizer: Option<f32>,
    },
    /// CISPO: `−sg(min(ρ, ε_hi)) A ℓ_t`, aggregated as `Dapo`.
    Cispo {
        /// As [`GrpoLossType::Dapo`].
        normalizer: Option<f32>,
    },
    /// SAPO: the soft gate `σ(τ (ρ − 1)) · 4/τ`, aggregated as `Grpo`.
    Sapo {
        /// τ for positive advantages (TRL default 1.0).
        tau_pos: f32,
        /// τ for non-positive advantages (TRL default 1.05).
        tau_neg: f32,
    },
}

/// Where the importance ratio is taken (TRL `importance_sampling_level`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportanceLevel {
    /// Per token (GRPO).
    Token = 0,
    /// One ratio per sequence from the mean log-ratio (GSPO).
    Sequence = 1,
}

/// A GRPO-family loss configuration. [`GrpoConfig::trl`] gives TRL's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GrpoConfig {
    /// Surrogate and aggregation.
    pub loss_type: GrpoLossType,
    /// Token or sequence (GSPO) importance ratio.
    pub importance: ImportanceLevel,
    /// ε_lo: the ratio's lower clip is 1 − ε_lo (TRL `epsilon`, default 0.2).
    pub epsilon_low: f32,
    /// ε_hi: the upper clip 1 + ε_hi (TRL `epsilon_high`, default = ε_lo; DAPO uses 0.28; for
    /// CISPO it is the ratio cap itself, e.g. 5.0).
    pub epsilon_high: f32,
    /// Optional cap δ on the unclipped ratio (TRL `delta`, two-sided clipping); `None` = off.
    pub delta: Option<f32>,
    /// β of the k3 KL term (TRL default 0.0: no reference model needed).
    pub beta: f32,
    /// Multiply k3 by the (capped) ratio (TRL `use_bias_correction_kl`).
    pub bias_corrected_kl: bool,
    /// Entropy bonus coefficient c_H: the loss gets `− c_H · agg(H)` (0 = off).
    pub entropy_coef: f32,
    /// Keep the policy-gradient term only on tokens whose entropy is at or above this quantile
    /// of the batch's completion-token entropies (TRL `top_entropy_quantile`; 1.0 = every token).
    /// f64 like TRL's Python float, so `1 − q` rounds to the same f32 torch.quantile receives.
    pub top_entropy_quantile: f64,
    /// Multiplies every gradient (upstream dL); default 1.
    pub grad_scale: f32,
}

impl GrpoConfig {
    /// TRL `GRPOConfig` defaults: `dapo`, token-level ratio, ε = 0.2 both sides, no δ, β = 0,
    /// no entropy bonus, no entropy mask.
    pub fn trl() -> Self {
        GrpoConfig {
            loss_type: GrpoLossType::Dapo { normalizer: None },
            importance: ImportanceLevel::Token,
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            delta: None,
            beta: 0.0,
            bias_corrected_kl: false,
            entropy_coef: 0.0,
            top_entropy_quantile: 1.0,
            grad_scale: 1.0,
        }
    }

    /// TRL's defaults with another `loss_type`. (For `cispo` TRL keeps ε_hi = ε = 0.2 unless
    /// set; its documentation recommends 5.0.)
    pub fn with_loss_type(loss_type: GrpoLossType) -> Self {
        Self { loss_type, ..Self::trl() }
    }

    /// True when the config reads per-token reference log-probs.
    pub fn needs_reference(&self) -> bool {
        self.beta != 0.0
    }

    /// True when the config reads per-token entropies (bonus or mask).
    pub fn needs_entropy(&self) -> bool {
        self.entropy_coef != 0.0 || self.top_entropy_quantile < 1.0
    }

    /// Checks every hyperparameter (finite, in range) before any launch.
    pub fn validate(&self) -> Result<()> {
        let finite =
            |name: &'static str, v: f32| ensure(v.is_finite(), name, || format!("must be finite, got {v}"));
        finite("epsilon_low", self.epsilon_low)?;
        finite("epsilon_high", self.epsilon_high)?;
        finite("beta", self.beta)?;
        finite("entropy_coef", self.entropy_coef)?;
        finite("grad_scale", self.grad_scale)?;
        ensure(self.beta >= 0.0, "beta", || format!("must be >= 0, got {}", self.beta))?;
        if matches!(self.loss_type, GrpoLossType::Cispo { .. }) {
            ensure(self.epsilon_high > 0.0, "epsilon_high", || {
                format!("cispo caps the ratio at epsilon_high, which must be > 0, got {}", self.epsilon_high)
            })?;
        } else {
            ensure((0.0..1.0).contains(&self.epsilon_low), "epsilon_low", || {
                format!(
                    "the lower clip 1 - epsilon_low needs epsilon_low in [0, 1), got {}",
                    self.epsilon_low
                )
            })?;
            ensure(self.epsilon_high >= 0.0, "epsilon_high", || {
                format!("must be >= 0, got {}", self.epsilon_high)
            })?;
        }
        if let Some(d) = self.delta {
            ensure(d.is_finite() && d > 1.0 + self.epsilon_high, "delta", || {
                format!("the ratio cap delta must be finite and > 1 + epsilon_high, got {d}")
            })?;
        }
        ensure(
            self.top_entropy_quantile > 0.0
                && self.top_entropy_quantile <= 1.0
                && !self.top_entropy_quantile.is_nan(),
            "top_entropy_quantile",
            || format!("must be in (0, 1], got {}", self.top_entropy_quantile),
        )?;
        match self.loss_type {
            GrpoLossType::DrGrpo { max_completion_length } => {
                ensure(max_completion_length >= 1, "max_completion_length", || {
                    "dr_grpo divides by max_completion_length, which must be >= 1".into()
                })?
            }
            GrpoLossType::Dapo { normalizer: Some(n) } | GrpoLossType::Cispo { normalizer: Some(n) } => {
                ensure(n.is_finite() && n > 0.0, "normalizer", || {
                    format!("num_items_in_batch / num_processes must be finite and > 0, got {n}")
                })?
            }
            GrpoLossType::Sapo { tau_pos, tau_neg } => {
                for t in [tau_pos, tau_neg] {
                    ensure(t.is_finite() && t > 0.0, "sapo_temperature", || {
                        format!("SAPO temperatures must be finite and > 0, got {t}")
                    })?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The kernel's aggregation code, surrogate code and aggregation parameter
    /// (`PREFK_GRPO_AGG_*`, `PREFK_GRPO_SURR_*`, `agg_param`).
    pub(crate) fn kernel_codes(&self) -> (u32, u32, f32) {
        match self.loss_type {
            GrpoLossType::Grpo => (AGG_SEQ_MEAN, SURR_CLIP, 0.0),
            GrpoLossType::Bnpo => (AGG_TOKEN_MEAN, SURR_CLIP, 0.0),
            GrpoLossType::DrGrpo { max_completion_length } => {
                (AGG_CONSTANT, SURR_CLIP, max_completion_length as f32)
            }
            GrpoLossType::Dapo { normalizer } => {
                (AGG_CONSTANT_OR_TOKENS, SURR_CLIP, normalizer.unwrap_or(0.0))
            }
            GrpoLossType::Cispo { normalizer } => {
                (AGG_CONSTANT_OR_TOKENS, SURR_CISPO, normalizer.unwrap_or(0.0))
            }
            GrpoLossType::Sapo { .. } => (AGG_SEQ_MEAN, SURR_SAPO, 0.0),
        }
    }
}

// Kernel codes (kernels/params.h `PREFK_GRPO_*`).
pub(crate) const AGG_SEQ_MEAN: u32 = 0;
pub(crate) const AGG_TOKEN_MEAN: u32 = 1;
pub(crate) const AGG_CONSTANT: u32 = 2;
pub(crate) const AGG_CONSTANT_OR_TOKENS: u32 = 3;
pub(crate) const SURR_CLIP: u32 = 0;
pub(crate) const SURR_CISPO: u32 = 1;
pub(crate) const SURR_SAPO: u32 = 2;

/// Metrics, in the order of the metrics array, named as TRL logs them (one process: TRL's
/// `low_min` / `high_max` across processes equal the means here).
pub const GRPO_METRIC_NAMES: [&str; 7] = [
    "loss",
    "kl",
    "entropy",
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "clip_ratio/region_mean",
    "policy_loss",
];
/// Length of the metrics array.
pub const GRPO_METRICS_LEN: usize = 8;

/// Checks the per-token and per-sequence input lengths shared by the reference and the kernels.
pub(crate) fn check_lengths(
    n_tokens: usize,
    n_seqs: usize,
    advantages: usize,
    optional: &[(&'static str, Option<usize>)],
) -> Result<()> {
    ensure(n_seqs >= 1, "seqs", || "need at least one sequence".into())?;
    ensure(advantages == n_seqs, "advantages", || {
        format!("need one advantage per sequence ({n_seqs}), got {advantages}")
    })?;
    for (name, len) in optional {
        if let Some(l) = len {
            if *l != n_tokens {
                return Err(invalid(name, format!("length must equal logp's ({n_tokens}), got {l}")));
            }
        }
    }
    Ok(())
}
