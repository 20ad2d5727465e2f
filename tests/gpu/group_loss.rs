//! Kernel parity of the group / listwise losses (KTO, LiPO-λ, PRO) and the KTO step against the
//! f64 references.
//!
//! Tolerances (f32 kernels vs the f64 reference on the same f32 inputs):
//! - loss and metrics: |err| <= 2e-4 (1 + |ref|) (f32 sums over the batch's tokens);
//! - dL/dlogp, dL/dH: |err| <= 1e-4 |ref| + 1e-6 max|ref| (ratios are f32 exponentials of f32
//!   log-ratio sums, a few ulps relative);
//! - d/dlogits: as the token log-probs backward, the reference fed the kernels' own per-token
//!   values (logp, entropy, dL/dlogp, dL/dH), so only the chain rule is judged.
//!
//! Every output buffer is poisoned (NaN) first: an element the kernels do not write fails.
use pref_kernels::group_loss::reference::group_loss as group_ref;
use pref_kernels::group_loss::{GroupLoss, KtoKl, KtoRole};
use pref_kernels::seq_reduce::{DeviceSeqs, DeviceTokens, SeqLayout, TokenInputs};
use pref_kernels::step::{GradLogits, GroupStepBatch};
use pref_kernels::token_logprobs::reference as tl_ref;
use pref_kernels::{Gpu, LogitsLayout, TokenLogprobsConfig};
use rand::Rng;

use crate::common::{assert_close, logits as random_logits, rng};
use crate::common::{check_grad, host, poisoned};
use crate::Case;

fn group_cases() -> Vec<(&'static str, GroupLoss, Vec<f32>)> {
    let roles: Vec<f32> = (0..24)
        .map(|s| match s % 5 {
            0 | 3 => KtoRole::Desirable,
            1 | 4 => KtoRole::Undesirable,
            _ => KtoRole::KlSample,
        } as u8 as f32)
        .collect();
    let psi: Vec<f32> = (0..24).map(|s| ((s * 7) % 5) as f32 * 0.5).collect();
    let mut rewards: Vec<f32> = (0..24).map(|s| ((s * 13) % 7) as f32 * 0.4 - 1.0).collect();
    for c in rewards.chunks_mut(4) {
        c.sort_by(|a, b| b.total_cmp(a));
    }
    let kto = |kl, apo| GroupLoss::Kto {
        beta: 0.1,
        desirable_weight: 1.3,
        undesirable_weight: 0.8,
        kl,
        apo_zero_unpaired: apo,
    };
    vec![
        ("kto", kto(KtoKl::FromSamples, false), roles.clone()),
        ("kto_given", kto(KtoKl::Given(0.7), false), roles.clone()),
        ("apo_zero_unpaired", kto(KtoKl::FromSamples, true), roles),
        ("lipo", GroupLoss::Lipo { beta: 0.3, list_size: 8, lambda_weights: true }, psi.clone()),
        ("lipo_unit", GroupLoss::Lipo { beta: 0.3, list_size: 4, lambda_weights: false }, psi),
        ("pro", GroupLoss::Pro { list_size: 4, sft_weight: 0.5 }, rewards),
    ]
}

fn group_loss_parity(gpu: &Gpu, seed: u64) {
    let s = gpu.default_stream();
    let h = host(&mut rng(seed, 903), 24, 60);
    let n = h.logp.len();
    let (logp, reference, mask, cu) = (
        s.clone_htod(&h.logp).unwrap(),
        s.clone_htod(&h.reference).unwrap(),
        s.clone_htod(&h.mask).unwrap(),
        s.clone_htod(&h.cu).unwrap(),
    );
    let layout = SeqLayout::Packed { cu_seqlens: &h.cu };
    let host_tokens =
        TokenInputs { logp: &h.logp, mask: Some(&h.mask), weights: None, ref_logp: Some(&h.reference) };
    for (name, loss, labels) in group_cases() {
        let want = group_ref(&host_tokens, &layout, None, &labels, &loss).unwrap();
        let tokens = DeviceTokens {
            logp: logp.as_view(),
            mask: Some(mask.as_view()),
            weights: None,
            ref_logp: Some(reference.as_view()),
        };
        let mut g = poisoned(gpu, n);
        let out = gpu
            .group_loss(
                &s,
                &tokens,
                &DeviceSeqs::Packed { cu_seqlens: cu.as_view() },
                None,
                &labels,
                &loss,
                1.0,
                &mut g.slice_mut(0..n),
            )
            .unwrap();
        for (k, (&a, &b)) in out.metrics.iter().zip(&want.metrics).enumerate() {
            assert_close(&format!("{name}: metric {k}"), a as f64, b, 2e-4, 2e-4);
        }
        for (k, (&a, &b)) in out.seq_values.iter().zip(&want.seq_values).enumerate() {
            assert_close(&format!("{name}: seq value {k}"), a as f64, b, 1e-4, 1e-5);
        }
        let got = s.clone_dtoh(&g).unwrap();
        check_grad(&format!("{name}: grad_logp"), &got[..n], &want.grad_logp);
        let mut g2 = poisoned(gpu, n);
        let out2 = gpu
            .group_loss(
                &s,
                &tokens,
                &DeviceSeqs::Packed { cu_seqlens: cu.as_view() },
                None,
                &labels,
                &loss,
                1.0,
                &mut g2.slice_mut(0..n),
            )
            .unwrap();
        assert_eq!(out.metrics.map(f32::to_bits), out2.metrics.map(f32::to_bits), "{name}: run to run");
        assert!(
            got.iter().zip(&s.clone_dtoh(&g2).unwrap()).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}"
        );
    }
    // Raw API with labels the safe API refuses: roles other than exactly 0, 1, 2 (0.5, NaN, 7)
    // are ignored, like role 3.
    {
        use pref_kernels::group_loss::{group_loss_workspace_len, GroupLossPtrs, GROUP_METRICS_LEN};
        use pref_kernels::runtime::{DevicePtr, DevicePtrMut};
        use pref_kernels::seq_reduce::{DeviceSeqLayout, SeqReducePtrs};
        let (_, loss, mut labels) = group_cases().remove(0);
        let odd = [0.5f32, f32::NAN, 7.0];
        let mut as_ignored = labels.clone();
        for (k, i) in [1usize, 6, 11].into_iter().enumerate() {
            labels[i] = odd[k];
            as_ignored[i] = 3.0;
        }
        let want = group_ref(&host_tokens, &layout, None, &as_ignored, &loss).unwrap();
        let dl = s.clone_htod(&labels).unwrap();
        let mut work = s.alloc_zeros::<f32>(group_loss_workspace_len(24)).unwrap();
        let mut metrics = poisoned(gpu, GROUP_METRICS_LEN);
        let mut g = poisoned(gpu, n);
        {
            let (lp, _a) = logp.device_ptr(&s).unwrap();
            let (mp, _b) = mask.device_ptr(&s).unwrap();
            let (rp, _c) = reference.device_ptr(&s).unwrap();
            let (cp, _d) = cu.device_ptr(&s).unwrap();
            let (labp, _e) = dl.device_ptr(&s).unwrap();
            let (wp, _f) = work.device_ptr_mut(&s).unwrap();
            let (metp, _g) = metrics.device_ptr_mut(&s).unwrap();
            let (gp, _h) = g.device_ptr_mut(&s).unwrap();
            let tokens = SeqReducePtrs { logp: lp, mask: mp, weights: 0, ref_logp: rp };
            let ptrs = GroupLossPtrs {
                ref_seq: 0,
                labels: labp,
                seq_out: 0,
                metrics: metp,
                grad_logp: gp,
                workspace: wp,
                status: 0,
            };
            let layout = DeviceSeqLayout::Packed { cu_seqlens: cp, n_seqs: 24 };
            // SAFETY: live buffers of the documented sizes on this stream.
            unsafe { gpu.group_loss_raw(s.raw(), &tokens, n, layout, &loss, 1.0, &ptrs) }.unwrap();
        }
        let m = s.clone_dtoh(&metrics).unwrap();
        assert_close("odd roles: loss", m[0] as f64, want.loss, 2e-4, 2e-4);
        check_grad("odd roles: grad_logp", &s.clone_dtoh(&g).unwrap()[..n], &want.grad_logp);
    }
    // Per-sequence reference sums give the same as per-token references (KTO).
    let ref_seq: Vec<f32> = (0..24)
        .map(|q| {
            (h.cu[q] as usize..h.cu[q + 1] as usize).filter(|&t| h.mask[t] != 0).map(|t| h.reference[t]).sum()
        })
        .collect();
    let (name, loss, labels) = group_cases().remove(0);
    let want =
        group_ref(&TokenInputs { ref_logp: None, ..host_tokens }, &layout, Some(&ref_seq), &labels, &loss)
            .unwrap();
    let rs = s.clone_htod(&ref_seq).unwrap();
    let tokens =
        DeviceTokens { logp: logp.as_view(), mask: Some(mask.as_view()), weights: None, ref_logp: None };
    let mut g = poisoned(gpu, n);
    let out = gpu
        .group_loss(
            &s,
            &tokens,
            &DeviceSeqs::Packed { cu_seqlens: cu.as_view() },
            Some(&rs.as_view()),
            &labels,
            &loss,
            1.0,
            &mut g.slice_mut(0..n),
        )
        .unwrap();
    assert_close(&format!("{name} ref_seq: loss"), out.loss as f64, want.loss, 2e-4, 2e-4);
}

/// The whole KTO step (f32 logits) vs the chained references.
fn group_step_parity(gpu: &Gpu, seed: u64) {
    let s = gpu.default_stream();
    let mut r = rng(seed, 906);
    let (vocab, n_seqs, seq_len) = (517, 8, 23);
    let n = n_seqs * seq_len;
    let layout = LogitsLayout::contiguous(n, vocab);
    let host: Vec<f32> = random_logits(&mut r, n * vocab);
    let targets: Vec<i32> =
        (0..n).map(|t| if t % seq_len < 5 { -100 } else { r.random_range(0..vocab as i32) }).collect();
    let mask: Vec<u8> = targets.iter().map(|&t| u8::from(t != -100)).collect();
    let token_cfg = TokenLogprobsConfig::default();
    let fwd = tl_ref::forward(&host, layout, &targets, &token_cfg).unwrap();
    let reference: Vec<f32> = fwd.logp.iter().map(|&l| l as f32 + r.random_range(-0.5f32..0.5)).collect();
    let labels = [1.0f32, 0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0];
    let loss = GroupLoss::kto();
    let mut logits = s.clone_htod(&host).unwrap();
    let (dt, dm, dref) =
        (s.clone_htod(&targets).unwrap(), s.clone_htod(&mask).unwrap(), s.clone_htod(&reference).unwrap());
    let batch = GroupStepBatch {
        layout,
        targets: dt.as_view(),
        mask: Some(dm.as_view()),
        ref_logp: Some(dref.as_view()),
        ref_seq: None,
        labels: &labels,
        seqs: DeviceSeqs::Padded { n_seqs, seq_len },
    };
    let out = gpu
        .group_loss_step(&s, &mut logits.as_view_mut(), &batch, &token_cfg, &loss, GradLogits::InPlace)
        .unwrap();
    let logp = s.clone_dtoh(&out.logp).unwrap();
    let toks = TokenInputs { logp: &logp[..n], mask: Some(&mask), weights: None, ref_logp: Some(&reference) };
    let want = group_ref(&toks, &SeqLayout::Padded { n_seqs, seq_len }, None, &labels, &loss).unwrap();
    assert_close("kto step loss", out.loss.loss as f64, want.loss, 2e-5, 2e-4);
    let gl: Vec<f32> = want.grad_logp.iter().map(|&g| g as f32).collect();
    let want_grad = tl_ref::backward(&host, layout, &targets, &gl, &token_cfg).unwrap();
    let got = s.clone_dtoh(&logits).unwrap();
    for t in 0..n {
        for v in 0..vocab {
            let w = want_grad[t * vocab + v];
            assert_close(
                &format!("dlogits[{t}, {v}]"),
                got[t * vocab + v] as f64,
                w,
                gl[t].abs() as f64 * 1e-5 + 1e-12,
                1e-3,
            );
        }
    }
}

pub fn cases() -> Vec<Case> {
    vec![
        Case { name: "group_loss_parity_kto_lipo_pro", run: Box::new(group_loss_parity) },
        Case { name: "group_loss_step_parity_kto", run: Box::new(group_step_parity) },
    ]
}
