//! C ABI of the GRPO-family losses (`PrefkGrpoConfig`).

use super::args::*;
use super::plumbing::*;
use crate::error::{ensure, invalid, Result};
use crate::grpo::{GrpoConfig, GrpoLossType, GrpoPtrs, ImportanceLevel};

/// The GRPO-family configuration of the C ABI (see [`GrpoConfig`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PrefkGrpoConfig {
    /// 0 grpo, 1 bnpo, 2 dr_grpo, 3 dapo, 4 cispo, 5 sapo, 6 luspo, 7 vespo.
    pub loss_type: u32,
    /// 0 token, 1 sequence (GSPO).
    pub importance: u32,
    /// ε_lo.
    pub epsilon_low: f32,
    /// ε_hi.
    pub epsilon_high: f32,
    /// δ; 0 = no cap.
    pub delta: f32,
    /// β of the k3 KL term.
    pub beta: f32,
    /// Non-zero: k3 times the ratio.
    pub bias_corrected_kl: u32,
    /// Entropy bonus coefficient.
    pub entropy_coef: f32,
    /// TRL `top_entropy_quantile` (1 = off).
    pub top_entropy_quantile: f32,
    /// Gradient scale.
    pub grad_scale: f32,
    /// dr_grpo's max_completion_length; dapo / cispo / vespo normalizer (0 = the local token
    /// count).
    pub agg_param: f32,
    /// SAPO τ for positive advantages.
    pub tau_pos: f32,
    /// SAPO τ otherwise.
    pub tau_neg: f32,
    /// G, the gradient-accumulation steps (TRL `current_gradient_accumulation_steps`); 0 counts
    /// as 1.
    pub accumulation_steps: u32,
    /// TRL `off_policy_mask_threshold`; NaN = off.
    pub off_policy_mask_threshold: f32,
    /// VESPO gamma parameters k, λ for A ≥ 0 and for A < 0 (TRL defaults 2, 3, 3, 2).
    pub vespo_k_pos: f32,
    /// See `vespo_k_pos`.
    pub vespo_lambda_pos: f32,
    /// See `vespo_k_pos`.
    pub vespo_k_neg: f32,
    /// See `vespo_k_pos`.
    pub vespo_lambda_neg: f32,
}

pub(super) fn grpo_config_of(c: &PrefkGrpoConfig) -> Result<GrpoConfig> {
    let normalizer = (c.agg_param != 0.0).then_some(c.agg_param);
    let loss_type = match c.loss_type {
        0 => GrpoLossType::Grpo,
        1 => GrpoLossType::Bnpo,
        2 => {
            ensure(
                c.agg_param.is_finite() && c.agg_param >= 1.0 && c.agg_param.fract() == 0.0,
                "agg_param",
                || {
                    format!(
                        "dr_grpo's max_completion_length must be a whole number >= 1, got {}",
                        c.agg_param
                    )
                },
            )?;
            GrpoLossType::DrGrpo { max_completion_length: c.agg_param as usize }
        }
        3 => GrpoLossType::Dapo { normalizer },
        4 => GrpoLossType::Cispo { normalizer },
        5 => GrpoLossType::Sapo { tau_pos: c.tau_pos, tau_neg: c.tau_neg },
        6 => GrpoLossType::Luspo,
        7 => GrpoLossType::Vespo {
            normalizer,
            k_pos: c.vespo_k_pos,
            lambda_pos: c.vespo_lambda_pos,
            k_neg: c.vespo_k_neg,
            lambda_neg: c.vespo_lambda_neg,
        },
        k => {
            return Err(invalid(
                "loss_type",
                format!("0..=7 (grpo, bnpo, dr_grpo, dapo, cispo, sapo, luspo, vespo), got {k}"),
            ))
        }
    };
    Ok(GrpoConfig {
        loss_type,
        importance: match c.importance {
            0 => ImportanceLevel::Token,
            1 => ImportanceLevel::Sequence,
            k => return Err(invalid("importance", format!("0 (token) or 1 (sequence), got {k}"))),
        },
        epsilon_low: c.epsilon_low,
        epsilon_high: c.epsilon_high,
        delta: (c.delta != 0.0).then_some(c.delta),
        beta: c.beta,
        bias_corrected_kl: c.bias_corrected_kl != 0,
        entropy_coef: c.entropy_coef,
        top_entropy_quantile: c.top_entropy_quantile as f64,
        off_policy_mask_threshold: (!c.off_policy_mask_threshold.is_nan())
            .then_some(c.off_policy_mask_threshold),
        accumulation_steps: c.accumulation_steps.max(1),
        grad_scale: c.grad_scale,
    })
}

/// The GRPO-family loss on per-token log-probs ([`Gpu::grpo_loss_raw`](crate::Gpu::grpo_loss_raw)); per-token pointers may be
/// 0 where optional (old_logp: on-policy; sampling_logp: old_logp; ref_logp: β = 0; mask;
/// is_weights; entropy; grad_entropy). `cu_seqlens` 0 selects the padded layout.
///
/// # Safety
/// `args` points to a readable [`PrefkGrpoLossArgs`] whose `struct_size` is set (`PrefkGrpoLossArgs::new()`).
/// As [`Gpu::grpo_loss_raw`](crate::Gpu::grpo_loss_raw); `config` points to one host struct.
#[no_mangle]
pub unsafe extern "C" fn prefk_grpo_loss(args: *const PrefkGrpoLossArgs) -> i32 {
    ffi(|| {
        // SAFETY: the caller passes one argument struct (see # Safety).
        let PrefkGrpoLossArgs {
            device,
            stream,
            config,
            logp,
            old_logp,
            sampling_logp,
            ref_logp,
            mask,
            is_weights,
            entropy,
            advantages,
            n_tokens,
            cu_seqlens,
            n_seqs,
            seq_len,
            metrics,
            grad_logp,
            grad_entropy,
            workspace,
            status,
            ..
        } = unsafe { read_args(args) }?;
        ensure(!config.is_null(), "config", || "is null".into())?;
        // SAFETY: the caller passes one host struct at `config`.
        let cfg = grpo_config_of(unsafe { &*config })?;
        let layout = seq_layout(cu_seqlens, n_seqs, seq_len)?;
        let ptrs = GrpoPtrs {
            logp,
            old_logp,
            sampling_logp,
            ref_logp,
            mask,
            is_weights,
            entropy,
            advantages,
            metrics,
            grad_logp,
            grad_entropy,
            workspace,
            status,
        };
        // SAFETY: forwarded to the caller.
        unsafe { gpu(device)?.grpo_loss_raw(stream, &ptrs, size("n_tokens", n_tokens)?, layout, &cfg) }
    })
}

/// f32 elements of workspace [`prefk_grpo_loss`] needs (negative counts as 0; -1 if too large).
#[no_mangle]
pub extern "C" fn prefk_grpo_workspace_len(n_seqs: i64) -> i64 {
    i64::try_from(crate::grpo::grpo_workspace_len(n_seqs.max(0) as usize)).unwrap_or(-1)
}
