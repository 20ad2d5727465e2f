//! Kernel parity of the GRPO family and its whole step against the f64 reference, and its C ABI.
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
use pref_kernels::grpo::reference::{grpo_loss as grpo_ref, GrpoTokens};
use pref_kernels::grpo::{DeviceGrpoInputs, GrpoConfig, GrpoLossType, ImportanceLevel};
use pref_kernels::seq_reduce::{DeviceSeqs, SeqLayout};
use pref_kernels::step::{GradLogits, GrpoStepBatch};
use pref_kernels::token_logprobs::reference as tl_ref;
use pref_kernels::{Error, Gpu, LogitsLayout, TokenLogprobsConfig};
use rand::rngs::StdRng;
use rand::Rng;

use crate::common::{assert_close, logits as random_logits, rng};
use crate::common::{check_grad, host, poisoned, Host};
use crate::Case;

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
        Case { name: "grpo_step_parity_bf16_entropy_bonus", run: Box::new(grpo_step_parity) },
        Case { name: "c_abi_grpo_matches_the_safe_api", run: Box::new(c_abi_grpo_matches_the_safe_api) },
    ]
}
