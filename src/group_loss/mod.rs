//! Group and listwise losses on sequence scores: KTO (TRL `KTOTrainer`), LiPO-λ (listwise, λ
//! weights from the current ranking) and PRO (ranking stages with reward temperatures).
//!
//! Inputs: per-token policy log-probs (with mask; and the reference per token or per sequence for
//! KTO and LiPO), a sequence layout, and one label per sequence (KTO roles, LiPO relevance labels
//! ψ, PRO rewards). One call gives the loss, the metrics, a per-sequence value (KTO / LiPO reward
//! β(S − S^ref), PRO score) and dL/dlogp for every token.
//!
//! | [`GroupLoss`] | per-sequence score | loss |
//! |---|---|---|
//! | `Kto` | Δ = S − S^ref (sums) | mean over examples of λ_D (1 − σ(β(Δ − z0))) or λ_U (1 − σ(β(z0 − Δ))); `apo_zero_unpaired`: 1 − σ(βΔ) / σ(βΔ) |
//! | `Lipo` | s = β(S − S^ref) (sums) | Σ_{ψi>ψj} λ_ij softplus(−(s_i − s_j)) / #pairs, pooled over the batch |
//! | `Pro` | s = S / N (means) | Σ_k mean_b[log(1e-10 + e^{s_k T_kk} + Σ_{i>k} e^{s_i T_ki}) − s_k T_kk] + w_sft (n−1)² mean_b(−S_0) |
//!
//! **KTO** (TRL 1.16.0): z0 = max(mean over the KL samples of S − S^ref, 0), detached; the KL
//! samples are the mismatched (prompt, completion) sequences TRL builds by shifting completions
//! by one inside the batch — give them in the token batch with role [`KtoRole::KlSample`]
//! (they get no gradient), or pass the gathered value ([`KtoKl::Given`]).
//!
//! **LiPO-λ** follows the authors' own call (paper appendix B:
//! `rax.pairwise_logistic_loss(scores, labels, lambdaweight_fn=rax.dcg_lambdaweight)`), read in
//! RAX's source: gain 2^ψ − 1, discount 1/log2(1 + τ) with τ the 1-based rank under the current
//! scores (descending, ties in list order), λ_ij = K |G_i − G_j| |1/D(τ_i) − 1/D(τ_j)| (RAX scales by
//! the list size K), the mean over every valid pair of the batch. The paper writes D with a natural
//! log and no K: a constant factor. With `lambda_weights: false`, λ = 1: for K = 2 this is DPO.
//!
//! **PRO** (AlibabaResearch/DAMO-ConvAI `PRO/train/utils/process_manager.py`): each group's
//! sequences in ranking order (best first, non-increasing rewards), T_ki = r_k − r_i,
//! T_kk = max_{i>k} T_ki; the SFT term on the top response's summed log-prob (the official
//! preprocessing always sets `sft_index = 0`). The official mask counts one extra position per
//! padded row (see docs/grpo.md); here the mask is the caller's.
use crate::error::{ensure, Result};

pub(crate) mod launch;
pub mod reference;

pub use launch::{group_loss_workspace_len, GroupLossOutputs, GroupLossPtrs};

/// Where KTO's KL baseline z0 comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KtoKl {
    /// From the sequences labelled [`KtoRole::KlSample`] (mean log-ratio, clamped at 0).
    FromSamples,
    /// Given (e.g. already gathered across processes); clamped at 0.
    Given(f32),
}

/// What a sequence is to KTO.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KtoRole {
    /// An undesirable completion.
    Undesirable = 0,
    /// A desirable completion.
    Desirable = 1,
    /// A mismatched completion for the KL baseline (no gradient).
    KlSample = 2,
    /// Not part of the loss.
    Ignored = 3,
}

/// A group / listwise loss and its hyperparameters. Constructors give the references' defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GroupLoss {
    /// KTO (`loss_type="kto"`) or, with `apo_zero_unpaired`, APO-zero unpaired.
    Kto {
        /// β (TRL default 0.1).
        beta: f32,
        /// λ_D (default 1.0).
        desirable_weight: f32,
        /// λ_U (default 1.0).
        undesirable_weight: f32,
        /// The KL baseline (unused by APO).
        kl: KtoKl,
        /// `loss_type="apo_zero_unpaired"`.
        apo_zero_unpaired: bool,
    },
    /// LiPO-λ over lists of `list_size` consecutive sequences.
    Lipo {
        /// β (paper: 0.05).
        beta: f32,
        /// K responses per prompt (2 ..= [`MAX_LIST`]).
        list_size: usize,
        /// λ weights (LiPO-λ); `false` = plain pairwise logistic over the list.
        lambda_weights: bool,
    },
    /// PRO over groups of `list_size` consecutive sequences in ranking order.
    Pro {
        /// n responses per prompt (2 ..= [`MAX_LIST`]).
        list_size: usize,
        /// SFT weight (official `config.py` default 2; its scripts pass 0.05).
        sft_weight: f32,
    },
}

/// Longest list LiPO and PRO accept (one GPU thread evaluates a list: O(K²) pairs).
pub const MAX_LIST: usize = 64;

impl GroupLoss {
    /// KTO with TRL's defaults (β 0.1, weights 1, KL from the samples).
    pub fn kto() -> Self {
        GroupLoss::Kto {
            beta: 0.1,
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
            kl: KtoKl::FromSamples,
            apo_zero_unpaired: false,
        }
    }
    /// LiPO-λ with the paper's β = 0.05.
    pub fn lipo(list_size: usize) -> Self {
        GroupLoss::Lipo { beta: 0.05, list_size, lambda_weights: true }
    }
    /// PRO with the official training scripts' SFT weight 0.05.
    pub fn pro(list_size: usize) -> Self {
        GroupLoss::Pro { list_size, sft_weight: 0.05 }
    }

    /// True when the loss reads reference log-probs.
    pub fn needs_reference(&self) -> bool {
        !matches!(self, GroupLoss::Pro { .. })
    }

    /// Consecutive sequences per group (1 for KTO).
    pub fn group_size(&self) -> usize {
        match *self {
            GroupLoss::Kto { .. } => 1,
            GroupLoss::Lipo { list_size, .. } | GroupLoss::Pro { list_size, .. } => list_size,
        }
    }

    /// Checks hyperparameters, the layout's sequence count and the labels.
    pub fn validate(&self, n_seqs: usize, labels: &[f32]) -> Result<()> {
        ensure(labels.len() == n_seqs, "labels", || {
            format!("need one label per sequence ({n_seqs}), got {}", labels.len())
        })?;
        self.check(n_seqs, labels)
    }

    /// Checks hyperparameters and the sequence count (labels on the device are the caller's).
    pub fn validate_config(&self, n_seqs: usize) -> Result<()> {
        self.check(n_seqs, &[])
    }

    fn check(&self, n_seqs: usize, labels: &[f32]) -> Result<()> {
        ensure(n_seqs >= 1, "seqs", || "need at least one sequence".into())?;
        let positive = |name: &'static str, v: f32| {
            ensure(v.is_finite() && v > 0.0, name, || format!("must be finite and > 0, got {v}"))
        };
        match *self {
            GroupLoss::Kto { beta, desirable_weight, undesirable_weight, kl, .. } => {
                positive("beta", beta)?;
                for (name, w) in
                    [("desirable_weight", desirable_weight), ("undesirable_weight", undesirable_weight)]
                {
                    ensure(w.is_finite() && w >= 0.0, name, || format!("must be finite and >= 0, got {w}"))?;
                }
                if let KtoKl::Given(z) = kl {
                    ensure(z.is_finite(), "kl", || format!("the given KL baseline must be finite, got {z}"))?;
                }
                for (i, &r) in labels.iter().enumerate() {
                    ensure(r == 0.0 || r == 1.0 || r == 2.0 || r == 3.0, "labels", || {
                        format!("KTO label {i} = {r} is not a KtoRole (0..=3)")
                    })?;
                }
            }
            GroupLoss::Lipo { beta, list_size, .. } => {
                positive("beta", beta)?;
                check_lists(n_seqs, list_size, labels)?;
                for (i, &r) in labels.iter().enumerate() {
                    ensure(r.abs() <= 64.0, "labels", || {
                        format!("LiPO label {i} = {r}: the gain 2^psi overflows beyond |psi| <= 64")
                    })?;
                }
            }
            GroupLoss::Pro { list_size, sft_weight } => {
                ensure(sft_weight.is_finite() && sft_weight >= 0.0, "sft_weight", || {
                    format!("must be finite and >= 0, got {sft_weight}")
                })?;
                check_lists(n_seqs, list_size, labels)?;
                for (g, list) in labels.chunks(list_size).enumerate() {
                    ensure(list.windows(2).all(|w| w[0] >= w[1]), "labels", || {
                        format!("PRO group {g}: rewards must be non-increasing (ranking order, best first), got {list:?}")
                    })?;
                }
            }
        }
        Ok(())
    }
}

/// Lists of 2 ..= [`MAX_LIST`] consecutive sequences that tile the batch, with finite labels.
fn check_lists(n_seqs: usize, list_size: usize, labels: &[f32]) -> Result<()> {
    ensure((2..=MAX_LIST).contains(&list_size), "list_size", || {
        format!("lists of 2 ..= {MAX_LIST} responses, got {list_size}")
    })?;
    ensure(n_seqs % list_size == 0, "list_size", || {
        format!("list size {list_size} does not divide the {n_seqs} sequences")
    })?;
    for (i, &r) in labels.iter().enumerate() {
        ensure(r.is_finite(), "labels", || format!("label {i} is {r}; labels must be finite"))?;
    }
    Ok(())
}

/// Metric names per loss, in the metrics array's order.
pub fn metric_names(loss: &GroupLoss) -> &'static [&'static str] {
    match loss {
        GroupLoss::Kto { .. } => &[
            "loss",
            "kl",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "logps/chosen",
            "logps/rejected",
            "count/chosen",
            "count/rejected",
        ],
        GroupLoss::Lipo { .. } => &["loss", "num_pairs", "rewards/accuracies"],
        GroupLoss::Pro { .. } => &["loss", "loss/ranking", "loss/sft", "ranking/accuracy"],
    }
}

/// Length of the metrics array.
pub const GROUP_METRICS_LEN: usize = 12;
