//! C ABI of the fused preference losses (loss terms, f-divergence, aggregation codes).

use super::args::*;
use super::plumbing::*;
use crate::error::{invalid, Result};
use crate::preference_loss::{
    BarrierDenominator, FDivergence, Loss, LossConfig, PreferenceLossPtrs, RawPairs,
};
use crate::seq_reduce::{ReduceMode, SeqReducePtrs};

/// One loss term of the C ABI: `kind` uses the `PREFK_LOSS_*` codes of `kernels/params.h`;
/// `p0`/`p1`/`flags` as there (label smoothing / epsilon / tau / alpha, gamma / lambda, hinge /
/// barrier denominator; TAB-PO's `flags` bit 8 selects weighted-sum scores).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PrefkLossTerm {
    /// `PREFK_LOSS_*`.
    pub kind: u32,
    /// Weight of the term.
    pub weight: f32,
    /// β.
    pub beta: f32,
    /// First extra hyperparameter.
    pub p0: f32,
    /// Second extra hyperparameter.
    pub p1: f32,
    /// Switches.
    pub flags: u32,
}

pub(super) fn loss_of(t: &PrefkLossTerm) -> Result<Loss> {
    let beta = t.beta;
    Ok(match t.kind {
        0 => Loss::Sigmoid { beta, label_smoothing: t.p0 },
        1 => Loss::Robust { beta, label_smoothing: t.p0 },
        2 => Loss::Hinge { beta },
        3 => Loss::Ipo { beta },
        4 => Loss::ExoPair { beta, epsilon: t.p0 },
        5 => Loss::NcaPair { beta },
        6 => Loss::BcoPair { beta },
        7 => Loss::SppoHard { beta },
        8 => Loss::ApoZero { beta },
        9 => Loss::ApoDown { beta },
        10 => Loss::DiscoPop { beta, tau: t.p0 },
        11 => Loss::SimPo { beta, gamma: t.p1, label_smoothing: t.p0, hinge: t.flags & 1 != 0 },
        12 => Loss::Cpo { beta, label_smoothing: t.p0, hinge: t.flags & 1 != 0 },
        13 => Loss::Orpo { beta },
        14 => Loss::Tgdpo { beta, alpha: t.p0 },
        15 => Loss::TabPo {
            beta,
            tau: t.p0,
            lambda: t.p1,
            barrier: match t.flags & 0xff {
                0 => BarrierDenominator::GatedWeightMassClamp1,
                1 => BarrierDenominator::GatedCountClamp1,
                2 => BarrierDenominator::GatedWeightMassEps,
                f => return Err(invalid("flags", format!("TAB-PO barrier denominator 0, 1 or 2, got {f}"))),
            },
            seq_norm: if t.flags & 0x100 != 0 { ReduceMode::WeightedSum } else { ReduceMode::WeightedMean },
        },
        16 => Loss::Nll,
        17 => Loss::SigmoidNorm { beta },
        18 => Loss::Aot { beta, label_smoothing: t.p0 },
        19 => Loss::AotUnpaired { beta, label_smoothing: t.p0 },
        k => {
            return Err(invalid(
                "kind",
                format!("unknown loss kind {k} (see PREFK_LOSS_* in kernels/params.h)"),
            ))
        }
    })
}

/// The loss configuration of the C ABI's loss terms, f-divergence and aggregation codes.
///
/// # Safety
/// `terms` is null or points to `n_terms` host structs.
pub(super) unsafe fn loss_config(
    terms: *const PrefkLossTerm,
    n_terms: u32,
    divergence: u32,
    alpha: f32,
    aggregation: u32,
    grad_scale: f32,
) -> Result<LossConfig> {
    if terms.is_null() || n_terms == 0 || n_terms as usize > crate::preference_loss::MAX_LOSS_TERMS {
        return Err(invalid("terms", format!("need 1 to {} terms", crate::preference_loss::MAX_LOSS_TERMS)));
    }
    // SAFETY: the caller passes n_terms host structs at `terms`.
    let raw_terms = unsafe { std::slice::from_raw_parts(terms, n_terms as usize) };
    Ok(LossConfig {
        terms: raw_terms.iter().map(|t| Ok((loss_of(t)?, t.weight))).collect::<Result<_>>()?,
        divergence: match divergence {
            0 => FDivergence::ReverseKl,
            1 => FDivergence::ForwardKl,
            2 => FDivergence::JensenShannon,
            3 => FDivergence::Alpha { alpha },
            d => return Err(invalid("divergence", format!("0..=3, got {d}"))),
        },
        aggregation: reduce_mode(aggregation)?,
        grad_scale,
    })
}

/// The preference loss on per-token log-probs ([`Gpu::preference_loss_raw`](crate::Gpu::preference_loss_raw)). `cu_seqlens` 0
/// selects the padded layout (`seq_len` tokens per sequence); `chosen` 0 selects first-half-chosen
/// pairs. `aggregation` is the DPO-family `ReduceMode` code, `divergence` the `PREFK_DIV_*` code.
/// `seq_weights` (`[S]` f32, or 0) are WPO's detached sequence weights.
///
/// # Safety
/// `args` points to a readable [`PrefkPreferenceLossArgs`] whose `struct_size` is set (`PrefkPreferenceLossArgs::new()`).
/// As [`Gpu::preference_loss_raw`](crate::Gpu::preference_loss_raw); `terms` points to `n_terms` host structs.
#[no_mangle]
pub unsafe extern "C" fn prefk_preference_loss(args: *const PrefkPreferenceLossArgs) -> i32 {
    ffi(|| {
        // SAFETY: the caller passes one argument struct (see # Safety).
        let PrefkPreferenceLossArgs {
            device,
            stream,
            logp,
            mask,
            weights,
            ref_logp,
            ref_seq,
            seq_weights,
            n_tokens,
            cu_seqlens,
            n_seqs,
            seq_len,
            chosen,
            rejected,
            n_pairs,
            terms,
            n_terms,
            divergence,
            alpha,
            aggregation,
            grad_scale,
            pair_out,
            metrics,
            grad_logp,
            workspace,
            status,
            ..
        } = unsafe { read_args(args) }?;
        // SAFETY: the caller passes n_terms host structs at `terms`.
        let cfg = unsafe { loss_config(terms, n_terms, divergence, alpha, aggregation, grad_scale) }?;
        let layout = seq_layout(cu_seqlens, n_seqs, seq_len)?;
        let pairs = if chosen == 0 {
            RawPairs::FirstHalfChosen
        } else {
            RawPairs::Explicit { chosen, rejected, n_pairs: size("n_pairs", n_pairs)? }
        };
        let tokens = SeqReducePtrs { logp, mask, weights, ref_logp };
        let ptrs =
            PreferenceLossPtrs { ref_seq, seq_weights, pair_out, metrics, grad_logp, workspace, status };
        // SAFETY: forwarded to the caller.
        unsafe {
            gpu(device)?.preference_loss_raw(
                stream,
                &tokens,
                size("n_tokens", n_tokens)?,
                layout,
                pairs,
                &cfg,
                &ptrs,
            )
        }
    })
}

/// f32 elements of workspace [`prefk_preference_loss`] needs.
#[no_mangle]
/// Negative inputs count as 0; a size beyond `i64::MAX` returns -1.
pub extern "C" fn prefk_preference_loss_workspace_len(n_seqs: i64, n_pairs: i64) -> i64 {
    let n = crate::preference_loss::preference_loss_workspace_len(
        n_seqs.max(0) as usize,
        n_pairs.max(0) as usize,
    );
    i64::try_from(n).unwrap_or(-1)
}
