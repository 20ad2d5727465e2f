//! Kernel parity of the GRPO family, the group / listwise losses, the entropy gradient and their
//! whole steps against the f64 references.
//!
//! Tolerances (f32 kernels vs the f64 reference on the same f32 inputs):
//! - loss and metrics: |err| <= 2e-4 (1 + |ref|) (f32 sums over the batch's tokens);
//! - dL/dlogp, dL/dH: |err| <= 1e-4 |ref| + 1e-6 max|ref| (ratios are f32 exponentials of f32
//!   log-ratio sums, a few ulps relative);
//! - d/dlogits: as the token log-probs backward, the reference fed the kernels' own per-token
//!   values (logp, entropy, dL/dlogp, dL/dH), so only the chain rule is judged.
//!
//! Every output buffer is poisoned (NaN) first: an element the kernels do not write fails.
use half::bf16;
use pref_kernels::group_loss::reference::group_loss as group_ref;
use pref_kernels::group_loss::{GroupLoss, KtoKl, KtoRole};
use pref_kernels::grpo::reference::{grpo_loss as grpo_ref, GrpoTokens};
use pref_kernels::grpo::{DeviceGrpoInputs, GrpoConfig, GrpoLossType, ImportanceLevel};
use pref_kernels::seq_reduce::{DeviceSeqs, DeviceTokens, SeqLayout, TokenInputs};
use pref_kernels::step::{GradLogits, GroupStepBatch, GrpoStepBatch};
use pref_kernels::token_logprobs::reference as tl_ref;
use pref_kernels::token_logprobs::EntropyGrad;
use pref_kernels::{Error, Gpu, LogitElement, LogitsLayout, TokenLogprobsConfig};
use rand::rngs::StdRng;
use rand::Rng;

use crate::common::{assert_close, logits as random_logits, rng};
use crate::Case;

struct Host {
    logp: Vec<f32>,
    old: Vec<f32>,
    sampling: Vec<f32>,
    reference: Vec<f32>,
    mask: Vec<u8>,
    isw: Vec<f32>,
    entropy: Vec<f32>,
    adv: Vec<f32>,
    cu: Vec<i32>,
}

/// `n_seqs` completions of 0 ..= max_len tokens (some empty, some of one token), 20% masked.
fn host(r: &mut StdRng, n_seqs: usize, max_len: usize) -> Host {
    let mut cu = vec![0i32];
    for s in 0..n_seqs {
        let len = match s % 7 {
            3 => 0,
            5 => 1,
            _ => r.random_range(0..=max_len),
        };
        cu.push(cu.last().unwrap() + len as i32);
    }
    let t = *cu.last().unwrap() as usize;
    let logp: Vec<f32> = (0..t).map(|_| r.random_range(-5.0f32..-0.02)).collect();
    Host {
        old: logp.iter().map(|&l| l + r.random_range(-0.4f32..0.4)).collect(),
        sampling: logp.iter().map(|&l| l + r.random_range(-0.4f32..0.45)).collect(),
        reference: logp.iter().map(|&l| l + r.random_range(-0.5f32..0.5)).collect(),
        mask: (0..t).map(|_| u8::from(r.random_ratio(4, 5))).collect(),
        isw: (0..t).map(|_| r.random_range(0.3f32..2.0)).collect(),
        entropy: (0..t).map(|_| r.random_range(0.05f32..5.0)).collect(),
        adv: (0..n_seqs).map(|_| r.random_range(-2.0f32..2.0)).collect(),
        logp,
        cu,
    }
}

fn grpo_configs() -> Vec<(String, GrpoConfig, bool, bool)> {
    let types = [
        GrpoLossType::Grpo,
        GrpoLossType::Bnpo,
        GrpoLossType::DrGrpo { max_completion_length: 64 },
        GrpoLossType::Dapo { normalizer: None },
        GrpoLossType::Dapo { normalizer: Some(123.0) },
        GrpoLossType::Cispo { normalizer: None },
        GrpoLossType::Sapo { tau_pos: 1.0, tau_neg: 1.05 },
        GrpoLossType::Luspo,
        GrpoLossType::vespo(None),
        GrpoLossType::Vespo {
            normalizer: Some(99.0),
            k_pos: 1.5,
            lambda_pos: 2.5,
            k_neg: 2.5,
            lambda_neg: 1.5,
        },
    ];
    let mut out = vec![];
    for lt in types {
        for level in [ImportanceLevel::Token, ImportanceLevel::Sequence] {
            let base = GrpoConfig { importance: level, ..GrpoConfig::with_loss_type(lt) };
            let tag = format!("{lt:?}/{level:?}");
            out.push((format!("{tag}/plain"), base, true, false));
            out.push((format!("{tag}/on_policy"), base, false, false));
            out.push((
                format!("{tag}/delta"),
                GrpoConfig { delta: Some(1.5), epsilon_high: 0.28, ..base },
                true,
                true,
            ));
            out.push((
                format!("{tag}/kl_bias"),
                GrpoConfig { beta: 0.05, bias_corrected_kl: true, ..base },
                true,
                true,
            ));
            out.push((
                format!("{tag}/entropy"),
                GrpoConfig {
                    entropy_coef: 0.02,
                    top_entropy_quantile: 0.7,
                    beta: 0.04,
                    grad_scale: 0.25,
                    ..base
                },
                true,
                false,
            ));
            // With vLLM weights the off-policy mask reads the sampling log-probs (run_grpo).
            let off_policy =
                GrpoConfig { off_policy_mask_threshold: Some(0.01), accumulation_steps: 4, ..base };
            out.push((format!("{tag}/off_policy_mask"), off_policy, true, false));
            out.push((
                format!("{tag}/off_policy_mask_sampling_entropy"),
                GrpoConfig { entropy_coef: 0.03, ..off_policy },
                true,
                true,
            ));
        }
    }
    out
}

fn poisoned(gpu: &Gpu, n: usize) -> pref_kernels::DeviceBuffer<f32> {
    gpu.default_stream().clone_htod(&vec![f32::NAN; n.max(1)]).unwrap()
}

#[track_caller]
fn check_grad(what: &str, got: &[f32], want: &[f64]) {
    let max = want.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert_close(&format!("{what}[{i}]"), g as f64, w, 1e-6 * max + 1e-30, 1e-4);
    }
}

fn run_grpo(
    gpu: &Gpu,
    h: &Host,
    cfg: &GrpoConfig,
    off: bool,
    isw: bool,
) -> (pref_kernels::grpo::GrpoOutputs, Vec<f32>, Vec<f32>) {
    let s = gpu.default_stream();
    let n = h.logp.len();
    let up = |v: &[f32]| s.clone_htod(v).unwrap();
    let (logp, old, reference, weights, entropy, adv) =
        (up(&h.logp), up(&h.old), up(&h.reference), up(&h.isw), up(&h.entropy), up(&h.adv));
    let sampling = up(&h.sampling);
    let mask = s.clone_htod(&h.mask).unwrap();
    let cu = s.clone_htod(&h.cu).unwrap();
    let inputs = DeviceGrpoInputs {
        logp: logp.slice(0..n),
        old_logp: off.then(|| old.slice(0..n)),
        sampling_logp: isw.then(|| sampling.slice(0..n)),
        ref_logp: Some(reference.slice(0..n)),
        mask: Some(mask.slice(0..n)),
        is_weights: isw.then(|| weights.slice(0..n)),
        entropy: Some(entropy.slice(0..n)),
        advantages: adv.as_view(),
    };
    let mut g = poisoned(gpu, n);
    let mut ge = poisoned(gpu, n);
    let out = gpu
        .grpo_loss(
            &s,
            &inputs,
            &DeviceSeqs::Packed { cu_seqlens: cu.as_view() },
            cfg,
            &mut g.slice_mut(0..n),
            Some(&mut ge.slice_mut(0..n)),
        )
        .unwrap();
    let mut gl = s.clone_dtoh(&g).unwrap();
    let mut gh = s.clone_dtoh(&ge).unwrap();
    gl.truncate(n);
    gh.truncate(n);
    (out, gl, gh)
}

/// The same batch with tokens outside every sequence (3 before, 5 after): they must get zeros.
fn with_stray_tokens(r: &mut StdRng, mut h: Host) -> Host {
    let pad = |v: &mut Vec<f32>, r: &mut StdRng| {
        let head: Vec<f32> = (0..3).map(|_| r.random_range(-3.0f32..-0.1)).collect();
        v.splice(0..0, head);
        v.extend((0..5).map(|_| r.random_range(-3.0f32..-0.1)));
    };
    for v in [&mut h.logp, &mut h.old, &mut h.sampling, &mut h.reference, &mut h.isw, &mut h.entropy] {
        pad(v, r);
    }
    h.mask.splice(0..0, [1u8; 3]);
    h.mask.extend([1u8; 5]);
    h.cu.iter_mut().for_each(|c| *c += 3);
    h
}

fn grpo_parity_every_config(gpu: &Gpu, seed: u64) {
    let mut r = rng(seed, 901);
    let small = host(&mut r, 13, 40);
    let small = with_stray_tokens(&mut r, small);
    let large = host(&mut r, 61, 700);
    for (i, (name, cfg, off, isw)) in grpo_configs().into_iter().enumerate() {
        // Every config on a small batch; every fifth also on a large one (long sequences: the
        // block-stride loops and several blocks per launch).
        for h in [&small, &large].into_iter().take(if i % 5 == 0 { 2 } else { 1 }) {
            let toks = GrpoTokens {
                logp: &h.logp,
                old_logp: off.then_some(&h.old[..]),
                sampling_logp: isw.then_some(&h.sampling[..]),
                ref_logp: Some(&h.reference),
                mask: Some(&h.mask),
                is_weights: isw.then_some(&h.isw[..]),
                entropy: Some(&h.entropy),
            };
            let want = grpo_ref(&toks, &SeqLayout::Packed { cu_seqlens: &h.cu }, &h.adv, &cfg).unwrap();
            let (out, gl, gh) = run_grpo(gpu, h, &cfg, off, isw);
            for (k, (&g, &w)) in out.metrics.iter().zip(&want.metrics).enumerate() {
                assert_close(&format!("{name}: metric {k}"), g as f64, w, 2e-4, 2e-4);
            }
            check_grad(&format!("{name}: grad_logp"), &gl, &want.grad_logp);
            check_grad(&format!("{name}: grad_entropy"), &gh, &want.grad_entropy);
            // Bitwise run to run.
            let (out2, gl2, gh2) = run_grpo(gpu, h, &cfg, off, isw);
            assert_eq!(
                out.metrics.map(f32::to_bits),
                out2.metrics.map(f32::to_bits),
                "{name}: metrics differ run to run"
            );
            assert!(
                gl.iter().zip(&gl2).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}: grad differs run to run"
            );
            assert!(gh.iter().zip(&gh2).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}");
        }
    }
}

fn grpo_bad_input(gpu: &Gpu, seed: u64) {
    let s = gpu.default_stream();
    let h = host(&mut rng(seed, 902), 6, 30);
    let n = h.logp.len();
    let logp = s.clone_htod(&h.logp).unwrap();
    let adv = s.clone_htod(&h.adv).unwrap();
    let bad_cu: Vec<i32> = vec![0, 5, 3, 9, 9, 9, n as i32 + 4];
    let cu = s.clone_htod(&bad_cu).unwrap();
    let good_cu = s.clone_htod(&h.cu).unwrap();
    let inputs = DeviceGrpoInputs {
        logp: logp.as_view(),
        old_logp: None,
        sampling_logp: None,
        ref_logp: None,
        mask: None,
        is_weights: None,
        entropy: None,
        advantages: adv.as_view(),
    };
    let mut g = s.alloc_zeros::<f32>(n).unwrap();
    // Refused before launch: beta > 0 without a reference, entropy bonus without entropies.
    for (cfg, arg) in [
        (GrpoConfig { beta: 0.1, ..GrpoConfig::trl() }, "ref_logp"),
        (GrpoConfig { entropy_coef: 0.1, ..GrpoConfig::trl() }, "entropy"),
        (GrpoConfig { epsilon_low: -0.1, ..GrpoConfig::trl() }, "epsilon_low"),
    ] {
        let e = gpu.grpo_loss(
            &s,
            &inputs,
            &DeviceSeqs::Packed { cu_seqlens: good_cu.as_view() },
            &cfg,
            &mut g.as_view_mut(),
            None,
        );
        assert!(matches!(e, Err(Error::InvalidArgument { arg: a, .. }) if a == arg), "{arg}: {e:?}");
    }
    // Bad offsets are found on the device and reported, not read out of bounds.
    let e = gpu.grpo_loss(
        &s,
        &inputs,
        &DeviceSeqs::Packed { cu_seqlens: cu.as_view() },
        &GrpoConfig::trl(),
        &mut g.as_view_mut(),
        None,
    );
    assert!(matches!(e, Err(Error::DeviceCheck(_))), "{e:?}");
}

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

fn entropy_backward_case<T: LogitElement + pref_kernels::runtime::mem::Element>(
    gpu: &Gpu,
    r: &mut StdRng,
    vocab: usize,
    atol_rel: f64,
) {
    let s = gpu.default_stream();
    let n = 37;
    let layout = LogitsLayout::contiguous(n, vocab);
    let host: Vec<T> = random_logits(r, n * vocab).into_iter().map(T::from_f32).collect();
    let targets: Vec<i32> =
        (0..n).map(|i| if i % 9 == 4 { -100 } else { r.random_range(0..vocab as i32) }).collect();
    let cfg = TokenLogprobsConfig { temperature: 0.7, ..Default::default() };
    let fwd = tl_ref::forward(&host, layout, &targets, &cfg).unwrap();
    let entropy: Vec<f32> = fwd.entropy.iter().map(|&e| e as f32).collect();
    let gl: Vec<f32> = (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect();
    let ge: Vec<f32> = (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect();
    let lse = crate::common::softmax_stats(&host, layout, &targets, &cfg);
    let want = tl_ref::backward_with_entropy(&host, layout, &targets, &gl, &ge, &cfg).unwrap();
    for in_place in [true, false] {
        let mut logits = s.clone_htod(&host).unwrap();
        let (dt, dl, dg, de, dge) = (
            s.clone_htod(&targets).unwrap(),
            s.clone_htod(&lse).unwrap(),
            s.clone_htod(&gl).unwrap(),
            s.clone_htod(&entropy).unwrap(),
            s.clone_htod(&ge).unwrap(),
        );
        let mut sep = s.clone_htod(&vec![T::from_f32(f32::NAN); n * vocab]).unwrap();
        let grad = if in_place {
            GradLogits::InPlace
        } else {
            GradLogits::Separate { grad: sep.as_view_mut(), row_stride: vocab }
        };
        let (ev, gev) = (de.as_view(), dge.as_view());
        gpu.token_logprobs_backward_with_entropy(
            &s,
            &mut logits.as_view_mut(),
            layout,
            &dt,
            &dl,
            &dg,
            EntropyGrad { entropy: &ev, grad_entropy: &gev },
            grad,
            &cfg,
        )
        .unwrap();
        let got = if in_place { s.clone_dtoh(&logits).unwrap() } else { s.clone_dtoh(&sep).unwrap() };
        for row in 0..n {
            // An entry is (g (1[v = t] − p) − gH p (ln p + H)) / T: its f32 error is relative
            // (common::tol) except where ln p + H cancels, where p times the ~3e-6 absolute error
            // of ln p + H remains: `atol_rel` times the row's gradient scale. Then one rounding.
            let scale = (gl[row].abs() + ge[row].abs() * (1.0 + entropy[row].abs())) as f64 / 0.7;
            for v in 0..vocab {
                let (g, w) = (got[row * vocab + v].to_f64(), want[row * vocab + v]);
                assert_close(
                    &format!("V {vocab} {}: dlogits[{row}, {v}]", T::DTYPE.name()),
                    g,
                    w,
                    scale * atol_rel + 1e-12,
                    crate::common::tol::grad_rtol::<T>(),
                );
            }
        }
    }
}

fn entropy_backward_parity(gpu: &Gpu, seed: u64) {
    let mut r = rng(seed, 904);
    for vocab in [37, 5003] {
        entropy_backward_case::<f32>(gpu, &mut r, vocab, 1e-5);
        entropy_backward_case::<bf16>(gpu, &mut r, vocab, 1e-5);
    }
}

/// The whole GRPO step (bf16 logits, entropy bonus + top-entropy mask + KL) vs the chained references.
fn grpo_step_parity(gpu: &Gpu, seed: u64) {
    let s = gpu.default_stream();
    let mut r = rng(seed, 905);
    let (vocab, n_seqs, seq_len) = (3001, 6, 41);
    let n = n_seqs * seq_len;
    let layout = LogitsLayout::contiguous(n, vocab);
    let host: Vec<bf16> = random_logits(&mut r, n * vocab).into_iter().map(bf16::from_f32).collect();
    let targets: Vec<i64> =
        (0..n).map(|t| if t % seq_len < 9 { -100 } else { r.random_range(0..vocab as i64) }).collect();
    let mask: Vec<u8> = targets.iter().map(|&t| u8::from(t != -100)).collect();
    let token_cfg = TokenLogprobsConfig::default();
    let fwd = tl_ref::forward(&host, layout, &targets, &token_cfg).unwrap();
    let old: Vec<f32> = fwd.logp.iter().map(|&l| l as f32 + r.random_range(-0.3f32..0.3)).collect();
    let reference: Vec<f32> = fwd.logp.iter().map(|&l| l as f32 + r.random_range(-0.3f32..0.3)).collect();
    let adv: Vec<f32> = (0..n_seqs).map(|_| r.random_range(-1.5f32..1.5)).collect();
    let cfg = GrpoConfig { beta: 0.04, entropy_coef: 0.01, top_entropy_quantile: 0.8, ..GrpoConfig::trl() };
    let mut logits = s.clone_htod(&host).unwrap();
    let (dt, dm, dold, dref, dadv) = (
        s.clone_htod(&targets).unwrap(),
        s.clone_htod(&mask).unwrap(),
        s.clone_htod(&old).unwrap(),
        s.clone_htod(&reference).unwrap(),
        s.clone_htod(&adv).unwrap(),
    );
    let batch = GrpoStepBatch {
        layout,
        targets: dt.as_view(),
        mask: Some(dm.as_view()),
        old_logp: Some(dold.as_view()),
        sampling_logp: None,
        ref_logp: Some(dref.as_view()),
        is_weights: None,
        advantages: dadv.as_view(),
        seqs: DeviceSeqs::Padded { n_seqs, seq_len },
    };
    let out =
        gpu.grpo_step(&s, &mut logits.as_view_mut(), &batch, &token_cfg, &cfg, GradLogits::InPlace).unwrap();
    let logp = s.clone_dtoh(&out.logp).unwrap();
    let entropy = s.clone_dtoh(out.entropy.as_ref().unwrap()).unwrap();
    for t in 0..n {
        assert_close(&format!("logp[{t}]"), logp[t] as f64, fwd.logp[t], 2e-4, 1e-5);
        assert_close(&format!("entropy[{t}]"), entropy[t] as f64, fwd.entropy[t], 2e-4, 1e-4);
    }
    let toks = GrpoTokens {
        logp: &logp[..n],
        old_logp: Some(&old),
        sampling_logp: None,
        ref_logp: Some(&reference),
        mask: Some(&mask),
        is_weights: None,
        entropy: Some(&entropy[..n]),
    };
    let want = grpo_ref(&toks, &SeqLayout::Padded { n_seqs, seq_len }, &adv, &cfg).unwrap();
    assert_close("loss", out.loss.loss as f64, want.loss, 2e-4, 2e-4);
    let gl: Vec<f32> = want.grad_logp.iter().map(|&g| g as f32).collect();
    let ge: Vec<f32> = want.grad_entropy.iter().map(|&g| g as f32).collect();
    let want_grad = tl_ref::backward_with_entropy(&host, layout, &targets, &gl, &ge, &token_cfg).unwrap();
    let got = s.clone_dtoh(&logits).unwrap();
    for t in 0..n {
        // As entropy_backward_case: relative f32 error and one bf16 rounding, plus the absolute
        // error where ln p + H cancels. The reference's gradient inputs are f32 roundings of the
        // f64 loss gradients the kernel computed in f32 (2e-4 relative above): that error scales
        // every entry of a row alike.
        let scale = (gl[t].abs() + ge[t].abs() * (1.0 + entropy[t].abs())) as f64;
        for v in 0..vocab {
            let (g, w) = (got[t * vocab + v].to_f64(), want_grad[t * vocab + v]);
            assert_close(
                &format!("dlogits[{t}, {v}]"),
                g,
                w,
                scale * 1e-5 + 1e-12,
                2e-4 + crate::common::tol::grad_rtol::<bf16>(),
            );
        }
    }
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

/// The C ABI entry point gives bitwise what the safe API gives (same kernels, same inputs).
fn c_abi_grpo_matches_the_safe_api(gpu: &Gpu, seed: u64) {
    use pref_kernels::ffi::{
        prefk_grpo_loss, prefk_grpo_workspace_len, PrefkGrpoConfig, PREFK_DEVICE_EMULATOR,
    };
    use pref_kernels::runtime::{DevicePtr, DevicePtrMut};
    let s = gpu.default_stream();
    let h = host(&mut rng(seed, 907), 9, 50);
    let n = h.logp.len();
    let cfg = GrpoConfig {
        beta: 0.04,
        entropy_coef: 0.01,
        importance: ImportanceLevel::Sequence,
        off_policy_mask_threshold: Some(0.01),
        accumulation_steps: 2,
        ..GrpoConfig::trl()
    };
    let (out, gl, gh) = run_grpo(gpu, &h, &cfg, true, false);
    let up = |v: &[f32]| s.clone_htod(v).unwrap();
    let (logp, old, reference, entropy, adv) =
        (up(&h.logp), up(&h.old), up(&h.reference), up(&h.entropy), up(&h.adv));
    let (mask, cu) = (s.clone_htod(&h.mask).unwrap(), s.clone_htod(&h.cu).unwrap());
    let (mut metrics, mut g, mut ge) = (poisoned(gpu, 8), poisoned(gpu, n), poisoned(gpu, n));
    let mut work = s.alloc_zeros::<f32>(prefk_grpo_workspace_len(9) as usize).unwrap();
    let c = PrefkGrpoConfig {
        loss_type: 3,
        importance: 1,
        epsilon_low: 0.2,
        epsilon_high: 0.2,
        delta: 0.0,
        beta: 0.04,
        bias_corrected_kl: 1,
        entropy_coef: 0.01,
        top_entropy_quantile: 1.0,
        grad_scale: 1.0,
        agg_param: 0.0,
        tau_pos: 1.0,
        tau_neg: 1.05,
        accumulation_steps: 2,
        off_policy_mask_threshold: 0.01,
        vespo_k_pos: 0.0,
        vespo_lambda_pos: 0.0,
        vespo_k_neg: 0.0,
        vespo_lambda_neg: 0.0,
    };
    let device = if gpu.backend() == pref_kernels::BackendKind::Emulator { PREFK_DEVICE_EMULATOR } else { 0 };
    {
        let (lp, _a) = logp.device_ptr(&s).unwrap();
        let (op, _b) = old.device_ptr(&s).unwrap();
        let (rp, _c) = reference.device_ptr(&s).unwrap();
        let (ep, _d) = entropy.device_ptr(&s).unwrap();
        let (ap, _e) = adv.device_ptr(&s).unwrap();
        let (mp, _f) = mask.device_ptr(&s).unwrap();
        let (cp, _g) = cu.device_ptr(&s).unwrap();
        let (metp, _h) = metrics.device_ptr_mut(&s).unwrap();
        let (gp, _i) = g.device_ptr_mut(&s).unwrap();
        let (gep, _j) = ge.device_ptr_mut(&s).unwrap();
        let (wp, _k) = work.device_ptr_mut(&s).unwrap();
        // SAFETY: live buffers of the documented sizes; the default stream of this context.
        let rc = unsafe {
            prefk_grpo_loss(&pref_kernels::ffi::PrefkGrpoLossArgs {
                device,
                stream: 0,
                config: &c,
                logp: lp,
                old_logp: op,
                sampling_logp: 0,
                ref_logp: rp,
                mask: mp,
                is_weights: 0,
                entropy: ep,
                advantages: ap,
                n_tokens: n as i64,
                cu_seqlens: cp,
                n_seqs: 9,
                seq_len: 0,
                metrics: metp,
                grad_logp: gp,
                grad_entropy: gep,
                workspace: wp,
                status: 0,
                ..pref_kernels::ffi::PrefkGrpoLossArgs::new()
            })
        };
        assert_eq!(rc, 0, "{:?}", unsafe { std::ffi::CStr::from_ptr(pref_kernels::ffi::prefk_last_error()) });
    }
    s.synchronize().unwrap();
    let m = s.clone_dtoh(&metrics).unwrap();
    assert_eq!(m.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), out.metrics.map(f32::to_bits).to_vec());
    let (g2, ge2) = (s.clone_dtoh(&g).unwrap(), s.clone_dtoh(&ge).unwrap());
    assert!(gl.iter().zip(&g2).all(|(a, b)| a.to_bits() == b.to_bits()));
    assert!(gh.iter().zip(&ge2).all(|(a, b)| a.to_bits() == b.to_bits()));
}

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "grpo_parity_every_loss_type_option_and_determinism",
            run: Box::new(grpo_parity_every_config),
        },
        Case { name: "grpo_bad_input_refused_or_reported", run: Box::new(grpo_bad_input) },
        Case { name: "group_loss_parity_kto_lipo_pro", run: Box::new(group_loss_parity) },
        Case { name: "entropy_backward_parity_f32_bf16", run: Box::new(entropy_backward_parity) },
        Case { name: "grpo_step_parity_bf16_entropy_bonus", run: Box::new(grpo_step_parity) },
        Case { name: "group_loss_step_parity_kto", run: Box::new(group_step_parity) },
        Case { name: "c_abi_grpo_matches_the_safe_api", run: Box::new(c_abi_grpo_matches_the_safe_api) },
    ]
}
