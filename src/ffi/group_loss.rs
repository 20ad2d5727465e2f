//! C ABI of the group / listwise losses (KTO, LiPO-λ, PRO).

use super::args::*;
use super::plumbing::*;
use crate::error::{ensure, invalid, Result};
use crate::group_loss::{GroupLoss, GroupLossPtrs, KtoKl};
use crate::seq_reduce::SeqReducePtrs;

/// The group loss of the C ABI's codes (see [`prefk_group_loss`]).
pub(super) fn group_loss_of(
    kind: u32,
    beta: f32,
    p0: f32,
    p1: f32,
    kl_given: f32,
    flags: u32,
    list_size: i64,
) -> Result<GroupLoss> {
    let list_size = size("list_size", list_size)?;
    Ok(match kind {
        0 => GroupLoss::Kto {
            beta,
            desirable_weight: p0,
            undesirable_weight: p1,
            kl: if kl_given.is_nan() { KtoKl::FromSamples } else { KtoKl::Given(kl_given) },
            apo_zero_unpaired: flags & 2 != 0,
        },
        1 => GroupLoss::Lipo { beta, list_size, lambda_weights: flags & 4 != 0 },
        2 => GroupLoss::Pro { list_size, sft_weight: p0 },
        k => return Err(invalid("kind", format!("0 (KTO), 1 (LiPO), 2 (PRO), got {k}"))),
    })
}

/// Validates `n_seqs` **host** labels for the group loss given by the codes of
/// [`prefk_group_loss`] (known KTO roles, finite LiPO labels, PRO rewards in ranking order), as the
/// safe API does; the raw entry point uses device labels as given.
///
/// # Safety
/// `args` points to a readable [`PrefkGroupLossCheckLabelsArgs`] whose `struct_size` is set (`PrefkGroupLossCheckLabelsArgs::new()`).
/// `labels` is null or valid for `n_seqs` reads.
#[no_mangle]
pub unsafe extern "C" fn prefk_group_loss_check_labels(args: *const PrefkGroupLossCheckLabelsArgs) -> i32 {
    ffi(|| {
        // SAFETY: the caller passes one argument struct (see # Safety).
        let PrefkGroupLossCheckLabelsArgs {
            kind,
            beta,
            p0,
            p1,
            kl_given,
            flags,
            list_size,
            labels,
            n_seqs,
            ..
        } = unsafe { read_args(args) }?;
        let loss = group_loss_of(kind, beta, p0, p1, kl_given, flags, list_size)?;
        let n = size("n_seqs", n_seqs)?;
        ensure(!labels.is_null() || n == 0, "labels", || "null pointer".into())?;
        // SAFETY: the caller passes n_seqs host floats.
        let host = if n == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(labels, n) } };
        loss.validate(n, host)
    })
}

/// A group / listwise loss ([`Gpu::group_loss_raw`](crate::Gpu::group_loss_raw)). `kind` 0 KTO (`p0`/`p1` the desirable /
/// undesirable weights, `kl_given` NaN = from the KL samples, `flags` bit 1 = apo_zero_unpaired),
/// 1 LiPO-λ (`flags` bit 2 = λ weights), 2 PRO (`p0` = sft weight); `list_size` for LiPO / PRO.
///
/// # Safety
/// `args` points to a readable [`PrefkGroupLossArgs`] whose `struct_size` is set (`PrefkGroupLossArgs::new()`).
/// As [`Gpu::group_loss_raw`](crate::Gpu::group_loss_raw).
#[no_mangle]
pub unsafe extern "C" fn prefk_group_loss(args: *const PrefkGroupLossArgs) -> i32 {
    ffi(|| {
        // SAFETY: the caller passes one argument struct (see # Safety).
        let PrefkGroupLossArgs {
            device,
            stream,
            kind,
            beta,
            p0,
            p1,
            kl_given,
            flags,
            list_size,
            logp,
            mask,
            ref_logp,
            ref_seq,
            labels,
            n_tokens,
            cu_seqlens,
            n_seqs,
            seq_len,
            grad_scale,
            seq_out,
            metrics,
            grad_logp,
            workspace,
            status,
            ..
        } = unsafe { read_args(args) }?;
        let loss = group_loss_of(kind, beta, p0, p1, kl_given, flags, list_size)?;
        let layout = seq_layout(cu_seqlens, n_seqs, seq_len)?;
        let tokens = SeqReducePtrs { logp, mask, weights: 0, ref_logp };
        let ptrs = GroupLossPtrs { ref_seq, labels, seq_out, metrics, grad_logp, workspace, status };
        // SAFETY: forwarded to the caller.
        unsafe {
            gpu(device)?.group_loss_raw(
                stream,
                &tokens,
                size("n_tokens", n_tokens)?,
                layout,
                &loss,
                grad_scale,
                &ptrs,
            )
        }
    })
}

/// f32 elements of workspace [`prefk_group_loss`] needs (negative counts as 0; -1 if too large).
#[no_mangle]
pub extern "C" fn prefk_group_loss_workspace_len(n_seqs: i64) -> i64 {
    i64::try_from(crate::group_loss::group_loss_workspace_len(n_seqs.max(0) as usize)).unwrap_or(-1)
}
