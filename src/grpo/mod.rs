//! The GRPO family of per-token policy-gradient losses (TRL `GRPOTrainer` `loss_type` names) and
//! the group advantages they use.
//!
//! Inputs per token t of sequence (completion) s: the policy log-prob ℓ_t (differentiable), and
//! optionally the rollout policy's ℓ^old_t (absent: on-policy, ratio 1 with its gradient kept, as
//! TRL's `old_per_token_logps = per_token_logps.detach()`), the inference engine's ℓ^samp_t (for
//! the off-policy mask; absent: ℓ^old), the reference ℓ^ref_t (for the k3 KL term, β > 0), a
//! completion mask m_t, the vLLM truncated importance-sampling weight v_t, the entropy H_t of the
//! policy's next-token distribution; per sequence the advantage A_s.
//!
//! ```text
//! ρ      = exp(ℓ_t − ℓ^old_t)                                  (ImportanceLevel::Token)
//!        = exp(Σ_t m (ℓ − ℓ^old) / max(Σ_t m, 1)), per sequence (ImportanceLevel::Sequence, GSPO)
//! c1     = min(ρ, δ) if a delta cap is set, else ρ;  c2 = clamp(ρ, 1 − ε_lo, 1 + ε_hi)
//! pg_t   = −min(c1 A, c2 A)                                    (grpo, bnpo, dr_grpo, dapo)
//!        = −sg(min(ρ, ε_hi)) A ℓ_t                             (cispo)
//!        = −σ(τ (ρ − 1)) · 4/τ · A,  τ = τ_pos if A > 0 else τ_neg   (sapo)
//!        = −sg(φ_s) A ℓ_t                                      (vespo)
//! φ_s    = exp(λ + k lw − λ e^{lw}),  lw = clamp(Σ_t m clamp(ℓ − ℓ^old, ±20) + Σ_t clamp(ln v_t, ln 1e-8, 20),
//!          ln 1e-8, 20),  (k, λ) = (k_pos, λ_pos) if A ≥ 0 else (k_neg, λ_neg); non-finite φ → 0
//! o_s    = [A_s ≥ 0  or  Σ_t m nan→0(ℓ^samp − ℓ) / max(N_s, 1) ≤ threshold]   (off-policy mask, else 1)
//! k3_t   = e^{ℓ^ref − ℓ} − (ℓ^ref − ℓ) − 1   (× ρ, uncapped, with `bias_corrected_kl`)
//! loss_t = pg_t · o_s · e_t · v_t + β k3_t      (TRL's order: the KL is neither masked nor weighted;
//!                                              vespo puts v into φ instead)
//! L      = Σ_s a_s Σ_t m_t loss_t / G'  −  c_H / G · Σ_t m_t e_t H_t / max(Σ_t m_t e_t, 1)
//! ```
//! with e_t the top-entropy mask (1 when disabled), a_s the aggregation weight of the
//! [`GrpoLossType`], G the gradient-accumulation steps (TRL `current_gradient_accumulation_steps`,
//! [`GrpoConfig::accumulation_steps`]) and G' = G except for dapo, cispo and vespo, whose
//! normalizer already holds it (G' = 1), exactly as TRL 1.16's `_compute_loss`. Gradients:
//! dL/dℓ_t (including, at the sequence level, every token's share of dρ_s/dℓ_t = ρ_s m_t / N_s)
//! and dL/dH_t = −c_H m_t e_t / (G max(Σ m e, 1)), both times `grad_scale`.
//!
//! Metrics (TRL 1.16.0, one process): `kl` and `entropy` are token means over the
//! completion mask; `clip_ratio/*` token means of the clip indicators on the (δ-capped) ratio
//! (low: ρ < 1 − ε_lo with A < 0; high: ρ > 1 + ε_hi with A > 0), at the sequence level one
//! indicator per sequence averaged over the S sequences (TRL's (B, 1) ratios); for `cispo` the `high` slot
//! holds TRL's `cispo_clip_ratio` (ρ > ε_hi with A > 0), `sapo` and `vespo` log none (zeros);
//! `policy_loss` is the policy term before the division by G'; the last slot is
//! `vespo/phi_seq_mean` (0 for other loss types).
//! The ratio's `min` splits the gradient in half at exact ties and the clamps pass it on their
//! closed bounds, as torch's `minimum` / `clamp` backward do.
use crate::error::{ensure, invalid, Result};

pub mod advantages;
pub(crate) mod launch;
pub mod reference;

pub use advantages::{group_advantages, Groups, ScaleRewards};
pub(crate) use launch::GrpoBatchCounts;
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
        /// TRL 1.16's normalizer in training: `max(num_items_in_batch, 1) / num_processes ·
        /// G / steps_per_generation` (in evaluation `max(num_items_in_batch, 1) /
        /// num_processes`); `None` = the local count `max(Σ m, 1)` (one process, one micro-batch
        /// per generation).
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
    /// LUSPO: the clipped surrogate, `mean_s(Σ_t m loss)`: per-sequence sums (length-unbiased),
    /// then the mean over sequences.
    Luspo,
    /// VESPO: `−sg(φ_s) A ℓ_t` with the gamma weight φ of the sequence's importance ratio,
    /// aggregated as `Dapo`.
    Vespo {
        /// As [`GrpoLossType::Dapo`].
        normalizer: Option<f32>,
        /// Shape k for A ≥ 0 (TRL `vespo_k_pos`, default 2.0).
        k_pos: f32,
        /// Rate λ for A ≥ 0 (TRL `vespo_lambda_pos`, default 3.0; clamped to ≥ 1e-4 as TRL).
        lambda_pos: f32,
        /// Shape k for A < 0 (TRL `vespo_k_neg`, default 3.0).
        k_neg: f32,
        /// Rate λ for A < 0 (TRL `vespo_lambda_neg`, default 2.0).
        lambda_neg: f32,
    },
}

impl GrpoLossType {
    /// VESPO with TRL 1.16's default gamma parameters.
    pub fn vespo(normalizer: Option<f32>) -> Self {
        GrpoLossType::Vespo { normalizer, k_pos: 2.0, lambda_pos: 3.0, k_neg: 3.0, lambda_neg: 2.0 }
    }

    /// True for the types whose normalizer (TRL `num_items_in_batch`) already holds the
    /// accumulation steps: dapo, cispo, vespo.
    pub fn has_normalizer(&self) -> bool {
        matches!(self, GrpoLossType::Dapo { .. } | GrpoLossType::Cispo { .. } | GrpoLossType::Vespo { .. })
    }
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
    /// TRL `off_policy_mask_threshold`: drop the policy term of sequences with A < 0 whose mean
    /// `ℓ^samp − ℓ` over completion tokens exceeds it; `None` = off (TRL's default).
    pub off_policy_mask_threshold: Option<f32>,
    /// G, TRL's `current_gradient_accumulation_steps` (1 in evaluation): the policy term of
    /// grpo/bnpo/dr_grpo/sapo/luspo and the entropy bonus are divided by it, as TRL does.
    pub accumulation_steps: u32,
    /// Multiplies every gradient (upstream dL); default 1.
    pub grad_scale: f32,
}

impl GrpoConfig {
    /// TRL 1.16 `GRPOConfig` defaults: `dapo`, token-level ratio, ε = 0.2 both sides, no δ,
    /// β = 0, `use_bias_correction_kl = True`, no entropy bonus, no entropy mask, no off-policy
    /// mask, no gradient accumulation.
    pub fn trl() -> Self {
        GrpoConfig {
            loss_type: GrpoLossType::Dapo { normalizer: None },
            importance: ImportanceLevel::Token,
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            delta: None,
            beta: 0.0,
            bias_corrected_kl: true,
            entropy_coef: 0.0,
            top_entropy_quantile: 1.0,
            off_policy_mask_threshold: None,
            accumulation_steps: 1,
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
        ensure(self.accumulation_steps >= 1, "accumulation_steps", || "must be >= 1".into())?;
        if let Some(t) = self.off_policy_mask_threshold {
            ensure(!t.is_nan(), "off_policy_mask_threshold", || "must not be NaN".into())?;
        }
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
            GrpoLossType::Dapo { normalizer: Some(n) }
            | GrpoLossType::Cispo { normalizer: Some(n) }
            | GrpoLossType::Vespo { normalizer: Some(n), .. } => {
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
        if let GrpoLossType::Vespo { k_pos, lambda_pos, k_neg, lambda_neg, .. } = self.loss_type {
            for v in [k_pos, lambda_pos, k_neg, lambda_neg] {
                ensure(v.is_finite(), "vespo", || format!("the gamma parameters must be finite, got {v}"))?;
            }
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
            GrpoLossType::Luspo => (AGG_SEQ_SUM, SURR_CLIP, 0.0),
            GrpoLossType::Vespo { normalizer, .. } => {
                (AGG_CONSTANT_OR_TOKENS, SURR_VESPO, normalizer.unwrap_or(0.0))
            }
        }
    }
}

// Kernel codes (kernels/params.h `PREFK_GRPO_*`).
pub(crate) const AGG_SEQ_MEAN: u32 = 0;
pub(crate) const AGG_TOKEN_MEAN: u32 = 1;
pub(crate) const AGG_CONSTANT: u32 = 2;
pub(crate) const AGG_CONSTANT_OR_TOKENS: u32 = 3;
pub(crate) const AGG_SEQ_SUM: u32 = 4;
pub(crate) const SURR_CLIP: u32 = 0;
pub(crate) const SURR_CISPO: u32 = 1;
pub(crate) const SURR_SAPO: u32 = 2;
pub(crate) const SURR_VESPO: u32 = 3;

/// Metrics, in the order of the metrics array, named as TRL logs them (one process: TRL's
/// `low_min` / `high_max` across processes equal the means here).
pub const GRPO_METRIC_NAMES: [&str; 8] = [
    "loss",
    "kl",
    "entropy",
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "clip_ratio/region_mean",
    "policy_loss",
    "vespo/phi_seq_mean",
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
