//! GPU parity of the per-sequence reductions, the preference losses and the whole step against the
//! f64 references.
//!
//! Tolerances (f32 kernels vs f64 reference on identical f32 inputs):
//! - scores / statistics: |err| <= 1e-5 (1 + sum |terms|) (f32 sums over up to a few thousand tokens);
//! - loss, metrics, per-pair values: |err| <= 2e-4 (1 + |ref|);
//! - dL/dlogp: |err| <= 2e-4 |ref| + 5e-6 max|ref|. Sequence log-ratios are f32 sums of per-token
//!   differences (logp - ref; summing the two sides separately and subtracting cost ~1e-4 absolute
//!   over 500 tokens and up to 2% on discopop's steep gradients); their remaining ~1e-6 relative
//!   error moves a gradient by up to a few 1e-6 of the largest one where the loss is steep
//!   (5e-5 max|ref| for the forward-KL and alpha f-divergences, whose exponentials amplify it);
//! - step d/dlogits: as the token log-probs backward (tests/gpu/token_logprobs.rs) with the
//!   reference fed the GPU's own per-token log-probs.
use half::bf16;
use pref_kernels::preference_loss::reference::{forward_backward, forward_backward_weighted};
use pref_kernels::preference_loss::{DevicePairs, FDivergence, Loss, LossConfig, Pairs};
use pref_kernels::seq_reduce::reference::{reduce, reduce_backward};
use pref_kernels::seq_reduce::{DeviceSeqs, DeviceTokens, ReduceMode, SeqLayout, TokenInputs};
use pref_kernels::step::{GradLogits, StepBatch};
use pref_kernels::token_logprobs::reference as tl_ref;
use pref_kernels::DeviceBuffer;
use pref_kernels::{Error, Gpu, LogitsLayout, TokenLogprobsConfig};
use rand::rngs::StdRng;
use rand::Rng;

use crate::common::{assert_close, logits as random_logits, rng};
use crate::Case;

#[path = "../common/configs.rs"]
mod configs;

struct HostBatch {
    logp: Vec<f32>,
    mask: Vec<u8>,
    weights: Vec<f32>,
    ref_logp: Vec<f32>,
    cu: Vec<i32>,
}

/// `n_seqs` sequences with lengths in [0, max_len] (some empty, some length 1), 20% masked tokens.
fn host_batch(r: &mut StdRng, n_seqs: usize, max_len: usize) -> HostBatch {
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
    let logp: Vec<f32> = (0..t).map(|_| r.random_range(-6.0f32..-0.01)).collect();
    // The reference model near the policy, as in training: sequence log-ratios of a few nats to a
    // few tens. (Independent draws give |log-ratio| in the hundreds, where forward-KL f-DPO's
    // exp(-d) overflows f32, the kernels' and PyTorch's float32 alike.)
    let ref_logp = logp.iter().map(|&l| (l + r.random_range(-0.6f32..0.6)).min(-0.01)).collect();
    HostBatch {
        mask: (0..t).map(|_| u8::from(r.random_ratio(4, 5))).collect(),
        weights: (0..t).map(|_| r.random_range(0.5f32..1.5)).collect(),
        logp,
        ref_logp,
        cu,
    }
}

fn seq_reduce_parity(gpu: &Gpu, seed: u64) {
    let s = gpu.default_stream();
    let mut r = rng(seed, 301);
    let h = host_batch(&mut r, 61, 3000);
    let n_seqs = h.cu.len() - 1;
    let logp = s.clone_htod(&h.logp).unwrap();
    let mask = s.clone_htod(&h.mask).unwrap();
    let weights = s.clone_htod(&h.weights).unwrap();
    let cu = s.clone_htod(&h.cu).unwrap();
    let tokens = DeviceTokens {
        logp: logp.as_view(),
        mask: Some(mask.as_view()),
        weights: Some(weights.as_view()),
        ref_logp: None,
    };
    let seqs = DeviceSeqs::Packed { cu_seqlens: cu.as_view() };
    let host_tokens =
        TokenInputs { logp: &h.logp, mask: Some(&h.mask), weights: Some(&h.weights), ref_logp: None };
    let layout = SeqLayout::Packed { cu_seqlens: &h.cu };
    let dscores: Vec<f32> = (0..n_seqs).map(|_| r.random_range(-2.0f32..2.0)).collect();
    let d_dscores = s.clone_htod(&dscores).unwrap();
    for mode in [ReduceMode::Sum, ReduceMode::Mean, ReduceMode::WeightedSum, ReduceMode::WeightedMean] {
        let mut scores = s.clone_htod(&vec![-7777.0f32; n_seqs]).unwrap();
        gpu.seq_reduce(&s, &tokens, &seqs, mode, &mut scores.as_view_mut()).unwrap();
        let got = s.clone_dtoh(&scores).unwrap();
        let want = reduce(&host_tokens, &layout, mode).unwrap();
        for i in 0..n_seqs {
            let mass: f64 =
                h.logp[h.cu[i] as usize..h.cu[i + 1] as usize].iter().map(|v| v.abs() as f64 * 1.5).sum();
            assert_close(&format!("{mode:?} score[{i}]"), got[i] as f64, want[i], 1e-5 * (1.0 + mass), 0.0);
        }
        let mut grad = s.clone_htod(&vec![-7777.0f32; h.logp.len()]).unwrap();
        gpu.seq_reduce_backward(&s, &tokens, &seqs, mode, &d_dscores.as_view(), &mut grad.as_view_mut())
            .unwrap();
        let got = s.clone_dtoh(&grad).unwrap();
        let want = reduce_backward(&host_tokens, &layout, mode, &dscores).unwrap();
        for t in 0..got.len() {
            assert_close(&format!("{mode:?} grad[{t}]"), got[t] as f64, want[t], 1e-7, 1e-5);
        }
    }
    // Padded layout: the same numbers.
    let mut scores = s.alloc_zeros::<f32>(4).unwrap();
    let padded = DeviceSeqs::Padded { n_seqs: 4, seq_len: h.logp.len() / 4 };
    gpu.seq_reduce(&s, &tokens, &padded, ReduceMode::Mean, &mut scores.as_view_mut()).unwrap();
    let want =
        reduce(&host_tokens, &SeqLayout::Padded { n_seqs: 4, seq_len: h.logp.len() / 4 }, ReduceMode::Mean)
            .unwrap();
    let got = s.clone_dtoh(&scores).unwrap();
    for i in 0..4 {
        assert_close("padded mean", got[i] as f64, want[i], 1e-5, 1e-5);
    }
    // Bad offsets: reported, never read out of bounds.
    let bad = s.clone_htod(&[0i32, 5, 3, 1_000_000_000]).unwrap();
    let e = gpu.seq_reduce(
        &s,
        &tokens,
        &DeviceSeqs::Packed { cu_seqlens: bad.as_view() },
        ReduceMode::Sum,
        &mut scores.slice_mut(0..3),
    );
    assert!(matches!(e, Err(Error::DeviceCheck(_))), "{e:?}");
}

struct DeviceBatch {
    logp: DeviceBuffer<f32>,
    mask: DeviceBuffer<u8>,
    weights: DeviceBuffer<f32>,
    ref_logp: DeviceBuffer<f32>,
    cu: DeviceBuffer<i32>,
}

fn upload(gpu: &Gpu, h: &HostBatch) -> DeviceBatch {
    let s = gpu.default_stream();
    DeviceBatch {
        logp: s.clone_htod(&h.logp).unwrap(),
        mask: s.clone_htod(&h.mask).unwrap(),
        weights: s.clone_htod(&h.weights).unwrap(),
        ref_logp: s.clone_htod(&h.ref_logp).unwrap(),
        cu: s.clone_htod(&h.cu).unwrap(),
    }
}

fn check_loss(
    name: &str,
    gpu: &Gpu,
    h: &HostBatch,
    d: &DeviceBatch,
    pairs: (&[i32], &[i32]),
    cfg: &LossConfig,
    seq_w: Option<&[f32]>,
) -> Vec<u32> {
    let s = gpu.default_stream();
    let with_ref = cfg.needs_reference();
    let tokens = DeviceTokens {
        logp: d.logp.as_view(),
        mask: Some(d.mask.as_view()),
        weights: Some(d.weights.as_view()),
        ref_logp: with_ref.then(|| d.ref_logp.as_view()),
    };
    let seqs = DeviceSeqs::Packed { cu_seqlens: d.cu.as_view() };
    let (dc, dr) = (s.clone_htod(pairs.0).unwrap(), s.clone_htod(pairs.1).unwrap());
    let dpairs = DevicePairs::Explicit { chosen: dc.as_view(), rejected: dr.as_view() };
    let mut grad = s.clone_htod(&vec![-7777.0f32; h.logp.len()]).unwrap();
    let dw = seq_w.map(|w| s.clone_htod(w).unwrap());
    let out = gpu
        .preference_loss_weighted(
            &s,
            &tokens,
            &seqs,
            &dpairs,
            None,
            dw.as_ref().map(|w| w.as_view()).as_ref(),
            cfg,
            &mut grad.as_view_mut(),
        )
        .unwrap();
    let got = s.clone_dtoh(&grad).unwrap();
    let host = TokenInputs {
        logp: &h.logp,
        mask: Some(&h.mask),
        weights: Some(&h.weights),
        ref_logp: with_ref.then_some(&h.ref_logp[..]),
    };
    let want = forward_backward_weighted(
        &host,
        &SeqLayout::Packed { cu_seqlens: &h.cu },
        &Pairs::Explicit { chosen: pairs.0, rejected: pairs.1 },
        None,
        seq_w,
        cfg,
    )
    .unwrap();
    assert_close(&format!("{name}: loss"), out.loss as f64, want.loss, 2e-4, 2e-4);
    for (k, n) in pref_kernels::preference_loss::METRIC_NAMES.iter().enumerate() {
        assert_close(&format!("{name}: {n}"), out.metrics[k] as f64, want.metrics[k], 2e-4, 2e-4);
    }
    for (i, (g, w)) in out.pairs.iter().zip(&want.pairs).enumerate() {
        for c in 0..6 {
            assert_close(&format!("{name}: pair {i} column {c}"), g[c] as f64, w[c], 2e-4, 2e-4);
        }
    }
    let max = want.grad_logp.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    // exp(-d) (forward KL) and exp((alpha - 1) d) turn the log-ratio's f32 error into relative
    // error of the same size times |d| ~ 20.
    // AOT scatters each rank's sigmoid term back through the sort permutation, and with label
    // smoothing (1 - ls) sigma(-x) - ls sigma(x) cancels in f32: seed 1796528318609358778 gave
    // 2.3e-5 of the largest gradient on a small entry (aot_smoothed).
    let grad_atol = if name == "fdpo_forward_kl" || name == "fdpo_alpha" || name.starts_with("aot") {
        5e-5
    } else {
        5e-6
    };
    for t in 0..got.len() {
        assert_close(
            &format!("{name}: grad_logp[{t}]"),
            got[t] as f64,
            want.grad_logp[t],
            grad_atol * max,
            2e-4,
        );
    }
    got.iter().map(|v| v.to_bits()).collect()
}

fn loss_parity_every_config(gpu: &Gpu, seed: u64) {
    let mut r = rng(seed, 302);
    let h = host_batch(&mut r, 40, 600);
    let d = upload(gpu, &h);
    // 20 pairs, first half chosen, plus 4 pairs that reuse sequences.
    let mut chosen: Vec<i32> = (0..20).collect();
    let mut rejected: Vec<i32> = (20..40).collect();
    chosen.extend([0, 7, 7, 39]);
    rejected.extend([39, 20, 21, 5]);
    for (name, cfg) in configs::all_configs() {
        let a = check_loss(name, gpu, &h, &d, (&chosen, &rejected), &cfg, None);
        let b = check_loss(name, gpu, &h, &d, (&chosen, &rejected), &cfg, None);
        assert_eq!(a, b, "{name}: gradients differ run to run");
    }
    // WPO sequence weights (every pair's loss times w_c w_r, the NLL term times their mean).
    let seq_w: Vec<f32> = (0..40).map(|_| r.random_range(0.05f32..1.0)).collect();
    for (name, cfg) in configs::all_configs() {
        if ["sigmoid", "ipo", "tabpo", "mpo_mix", "sigmoid_norm", "orpo"].contains(&name) {
            check_loss(&format!("{name}+wpo"), gpu, &h, &d, (&chosen, &rejected), &cfg, Some(&seq_w));
        }
    }
}

/// The kernels at the edges the f64 reference is held to (tests/preference_loss_fidelity.rs): margins
/// |beta z| up to 80 (exact gradients, not 0), forward KL past the old clamp, ORPO near a mean
/// log-prob of 0, empty sequences, TAB-PO's metrics. One pair of one-token sequences (plus an
/// empty pair) per config; f32 against f64 on identical inputs.
fn loss_edges(gpu: &Gpu, _seed: u64) {
    let s = gpu.default_stream();
    let cases: Vec<(&str, LossConfig, f32, f32)> = vec![
        ("apo_zero u=80", LossConfig::single(Loss::ApoZero { beta: 0.1 }), 800.0, 0.0),
        ("apo_zero u=-40", LossConfig::single(Loss::ApoZero { beta: 0.1 }), -400.0, 0.0),
        ("apo_down u=60", LossConfig::single(Loss::ApoDown { beta: 0.1 }), 600.0, 50.0),
        ("exo_pair x=40", LossConfig::single(Loss::ExoPair { beta: 0.1, epsilon: 1e-3 }), 400.0, 0.0),
        ("exo_pair x=-80", LossConfig::single(Loss::ExoPair { beta: 0.1, epsilon: 1e-3 }), -800.0, 0.0),
        ("discopop x=30", LossConfig::single(Loss::DiscoPop { beta: 0.1, tau: 0.05 }), 300.0, 0.0),
        ("discopop x=-85", LossConfig::single(Loss::DiscoPop { beta: 0.1, tau: 0.05 }), -850.0, 0.0),
        // Past the old clamp at 80 and still inside f32's range (loss ~ 0.1 e^81 = 1.5e34).
        (
            "dpo forward kl d=-81",
            LossConfig { divergence: FDivergence::ForwardKl, ..LossConfig::dpo(0.1) },
            -81.0,
            0.0,
        ),
        ("orpo", LossConfig::single(Loss::Orpo { beta: 0.1 }), 0.0, 0.0),
    ];
    for (name, cfg, dc, dr) in cases {
        // Sequences: chosen, rejected (one token each), then an empty pair (two empty sequences).
        let logp = if name == "orpo" { vec![-2e-7f32, -0.5] } else { vec![-1.0f32, -1.0] };
        let ref_logp = vec![logp[0] - dc, logp[1] - dr];
        let cu = [0i32, 1, 1, 2, 2];
        let chosen = [0i32, 1];
        let rejected = [2i32, 3];
        let host = TokenInputs {
            logp: &logp,
            mask: None,
            weights: None,
            ref_logp: cfg.needs_reference().then_some(&ref_logp[..]),
        };
        let want = forward_backward(
            &host,
            &SeqLayout::Packed { cu_seqlens: &cu },
            &Pairs::Explicit { chosen: &chosen, rejected: &rejected },
            None,
            &cfg,
        )
        .unwrap();
        let (dl, drf, dcu) =
            (s.clone_htod(&logp).unwrap(), s.clone_htod(&ref_logp).unwrap(), s.clone_htod(&cu).unwrap());
        let tokens = DeviceTokens {
            logp: dl.as_view(),
            mask: None,
            weights: None,
            ref_logp: cfg.needs_reference().then(|| drf.as_view()),
        };
        let (c, r) = (s.clone_htod(&chosen).unwrap(), s.clone_htod(&rejected).unwrap());
        let mut grad = s.clone_htod(&[-7777.0f32; 2]).unwrap();
        let out = gpu
            .preference_loss(
                &s,
                &tokens,
                &DeviceSeqs::Packed { cu_seqlens: dcu.as_view() },
                &DevicePairs::Explicit { chosen: c.as_view(), rejected: r.as_view() },
                None,
                &cfg,
                &mut grad.as_view_mut(),
            )
            .unwrap();
        let got = s.clone_dtoh(&grad).unwrap();
        assert_close(&format!("{name}: loss"), out.loss as f64, want.loss, 1e-30, 1e-5);
        for t in 0..2 {
            let w = want.grad_logp[t];
            assert!(w != 0.0 || name.starts_with("orpo"), "{name}: the exact gradient must not underflow");
            assert_close(&format!("{name}: grad_logp[{t}]"), got[t] as f64, w, 1e-40, 1e-4);
        }
    }
    // TAB-PO's logged metrics follow the official code: loss = loss/pref + loss/barrier (= lambda mean B).
    let mut r = rng(_seed, 304);
    let h = host_batch(&mut r, 8, 40);
    let d = upload(gpu, &h);
    let chosen: Vec<i32> = (0..4).collect();
    let rejected: Vec<i32> = (4..8).collect();
    check_loss("tabpo metrics", gpu, &h, &d, (&chosen, &rejected), &LossConfig::tabpo(), None);
}

fn loss_bad_pairs_reported(gpu: &Gpu, seed: u64) {
    let s = gpu.default_stream();
    let h = host_batch(&mut rng(seed, 303), 6, 50);
    let d = upload(gpu, &h);
    let tokens = DeviceTokens {
        logp: d.logp.as_view(),
        mask: None,
        weights: None,
        ref_logp: Some(d.ref_logp.as_view()),
    };
    let (c, rj) = (s.clone_htod(&[0i32, 1]).unwrap(), s.clone_htod(&[3i32, 6]).unwrap());
    let mut grad = s.alloc_zeros::<f32>(h.logp.len().max(1)).unwrap();
    let e = gpu.preference_loss(
        &s,
        &tokens,
        &DeviceSeqs::Packed { cu_seqlens: d.cu.as_view() },
        &DevicePairs::Explicit { chosen: c.as_view(), rejected: rj.as_view() },
        None,
        &LossConfig::dpo(0.1),
        &mut grad.slice_mut(0..h.logp.len()),
    );
    assert!(matches!(e, Err(Error::DeviceCheck(_))), "{e:?}");
    // Host-side pairs are checked before any launch.
    let e = gpu.preference_loss(
        &s,
        &tokens,
        &DeviceSeqs::Packed { cu_seqlens: d.cu.as_view() },
        &DevicePairs::Host { chosen: &[0, 1], rejected: &[3, 6] },
        None,
        &LossConfig::dpo(0.1),
        &mut grad.slice_mut(0..h.logp.len()),
    );
    assert!(matches!(e, Err(Error::InvalidArgument { arg: "pairs", .. })), "{e:?}");
    // ... and valid host pairs give the same result as the same pairs on the device.
    let (c, rj) = (s.clone_htod(&[0i32, 1]).unwrap(), s.clone_htod(&[3i32, 5]).unwrap());
    let seqs = DeviceSeqs::Packed { cu_seqlens: d.cu.as_view() };
    let mut g2 = s.alloc_zeros::<f32>(h.logp.len().max(1)).unwrap();
    let a = gpu
        .preference_loss(
            &s,
            &tokens,
            &seqs,
            &DevicePairs::Host { chosen: &[0, 1], rejected: &[3, 5] },
            None,
            &LossConfig::dpo(0.1),
            &mut grad.slice_mut(0..h.logp.len()),
        )
        .unwrap();
    let b = gpu
        .preference_loss(
            &s,
            &tokens,
            &seqs,
            &DevicePairs::Explicit { chosen: c.as_view(), rejected: rj.as_view() },
            None,
            &LossConfig::dpo(0.1),
            &mut g2.slice_mut(0..h.logp.len()),
        )
        .unwrap();
    assert_eq!(a, b);
}

/// Raw API with offsets that run past the tokens: the status reports them, the sequence reads as
/// empty, and its tokens get zero gradient (the loss and the gradient agree).
fn bad_offsets_give_zero_gradients(gpu: &Gpu, seed: u64) {
    use pref_kernels::preference_loss::{
        preference_loss_workspace_len, PreferenceLossPtrs, RawPairs, METRICS_LEN,
    };
    use pref_kernels::runtime::{DevicePtr, DevicePtrMut};
    use pref_kernels::seq_reduce::{DeviceSeqLayout, SeqReducePtrs};
    let s = gpu.default_stream();
    let mut r = rng(seed, 305);
    let n = 10;
    let logp: Vec<f32> = (0..n).map(|_| r.random_range(-3.0f32..-0.1)).collect();
    let reference: Vec<f32> = logp.iter().map(|&l| l + r.random_range(-0.5f32..0.5)).collect();
    let (dl, dr, cu) = (
        s.clone_htod(&logp).unwrap(),
        s.clone_htod(&reference).unwrap(),
        s.clone_htod(&[0i32, 4, 12]).unwrap(),
    );
    let mut grad = s.clone_htod(&[f32::NAN; 10]).unwrap();
    let mut work = s.alloc_zeros::<f32>(preference_loss_workspace_len(2, 1)).unwrap();
    let mut metrics = s.alloc_zeros::<f32>(METRICS_LEN).unwrap();
    let mut status = s.alloc_zeros::<u32>(1).unwrap();
    {
        let (lp, _a) = dl.device_ptr(&s).unwrap();
        let (rp, _b) = dr.device_ptr(&s).unwrap();
        let (cp, _c) = cu.device_ptr(&s).unwrap();
        let (gp, _d) = grad.device_ptr_mut(&s).unwrap();
        let (wp, _e) = work.device_ptr_mut(&s).unwrap();
        let (mp, _f) = metrics.device_ptr_mut(&s).unwrap();
        let (sp, _g) = status.device_ptr_mut(&s).unwrap();
        let tokens = SeqReducePtrs { logp: lp, mask: 0, weights: 0, ref_logp: rp };
        let ptrs = PreferenceLossPtrs {
            ref_seq: 0,
            seq_weights: 0,
            pair_out: 0,
            metrics: mp,
            grad_logp: gp,
            workspace: wp,
            status: sp,
        };
        let layout = DeviceSeqLayout::Packed { cu_seqlens: cp, n_seqs: 2 };
        // SAFETY: live buffers of the documented sizes on this stream.
        unsafe {
            gpu.preference_loss_raw(
                s.raw(),
                &tokens,
                n,
                layout,
                RawPairs::FirstHalfChosen,
                &LossConfig::dpo(0.1),
                &ptrs,
            )
        }
        .unwrap();
    }
    assert_ne!(s.clone_dtoh(&status).unwrap()[0] & pref_kernels::params::STATUS_BAD_SEQLENS, 0);
    let g = s.clone_dtoh(&grad).unwrap();
    assert!(g[..4].iter().all(|v| v.is_finite() && *v != 0.0), "{g:?}");
    assert!(g[4..].iter().all(|&v| v == 0.0), "tokens of the bad sequence: {g:?}");
}

/// The whole step vs the chained references, bf16 logits, in place and into a separate buffer.
fn whole_step_parity(gpu: &Gpu, seed: u64) {
    let s = gpu.default_stream();
    let mut r = rng(seed, 304);
    let vocab = 5003;
    let n_seqs = 8;
    let seq_len = 97;
    let n = n_seqs * seq_len;
    let layout = LogitsLayout::contiguous(n, vocab);
    let host: Vec<bf16> = random_logits(&mut r, n * vocab).into_iter().map(bf16::from_f32).collect();
    // The first 30 tokens of every sequence are prompt: ignored targets, masked.
    let targets: Vec<i64> =
        (0..n).map(|t| if t % seq_len < 30 { -100 } else { r.random_range(0..vocab as i64) }).collect();
    let mask: Vec<u8> = targets.iter().map(|&t| u8::from(t != -100)).collect();
    let weights: Vec<f32> = (0..n).map(|_| r.random_range(0.5f32..1.5)).collect();
    let ref_logp: Vec<f32> = (0..n).map(|_| r.random_range(-12.0f32..-1.0)).collect();
    let token_cfg = TokenLogprobsConfig::default();
    for (name, cfg) in [("dpo", LossConfig::dpo(0.1)), ("tabpo", LossConfig::tabpo())] {
        for in_place in [true, false] {
            let mut logits = s.clone_htod(&host).unwrap();
            let (d_t, d_m, d_w, d_r) = (
                s.clone_htod(&targets).unwrap(),
                s.clone_htod(&mask).unwrap(),
                s.clone_htod(&weights).unwrap(),
                s.clone_htod(&ref_logp).unwrap(),
            );
            let batch = StepBatch {
                layout,
                targets: d_t.as_view(),
                mask: Some(d_m.as_view()),
                weights: Some(d_w.as_view()),
                ref_logp: Some(d_r.as_view()),
                ref_seq: None,
                seqs: DeviceSeqs::Padded { n_seqs, seq_len },
                pairs: DevicePairs::FirstHalfChosen,
            };
            let mut separate = s.clone_htod(&vec![bf16::from_f32(99.0); n * vocab]).unwrap();
            let grad = if in_place {
                GradLogits::InPlace
            } else {
                GradLogits::Separate { grad: separate.as_view_mut(), row_stride: vocab }
            };
            let out =
                gpu.preference_step(&s, &mut logits.as_view_mut(), &batch, &token_cfg, &cfg, grad).unwrap();
            let logp = s.clone_dtoh(&out.logp).unwrap();
            // Reference chain: token log-probs (checked against the f64 reference), the loss on
            // the GPU's logp, then the token backward with the reference dL/dlogp.
            let want_logp = tl_ref::forward(&host, layout, &targets, &token_cfg).unwrap();
            for t in 0..n {
                assert_close(&format!("{name}: logp[{t}]"), logp[t] as f64, want_logp.logp[t], 2e-4, 1e-5);
            }
            let tokens = TokenInputs {
                logp: &logp,
                mask: Some(&mask),
                weights: Some(&weights),
                ref_logp: Some(&ref_logp),
            };
            let want = forward_backward(
                &tokens,
                &SeqLayout::Padded { n_seqs, seq_len },
                &Pairs::FirstHalfChosen,
                None,
                &cfg,
            )
            .unwrap();
            assert_close(&format!("{name}: loss"), out.loss.loss as f64, want.loss, 2e-4, 2e-4);
            let g32: Vec<f32> = want.grad_logp.iter().map(|&v| v as f32).collect();
            let want_grad = tl_ref::backward(&host, layout, &targets, &g32, &token_cfg).unwrap();
            let got =
                if in_place { s.clone_dtoh(&logits).unwrap() } else { s.clone_dtoh(&separate).unwrap() };
            for t in 0..n {
                let coef = g32[t].abs() as f64;
                for v in 0..vocab {
                    let (gv, wv) = (got[t * vocab + v].to_f64(), want_grad[t * vocab + v]);
                    let atol = coef * if v as i64 == targets[t] { 5e-5 } else { 1e-7 } + 1e-12;
                    assert_close(
                        &format!("{name}: dlogits[{t}, {v}] (in place {in_place})"),
                        gv,
                        wv,
                        atol,
                        1e-2,
                    );
                }
            }
        }
    }
}

pub fn cases() -> Vec<Case> {
    vec![
        Case { name: "seq_reduce_parity_and_bad_offsets", run: Box::new(seq_reduce_parity) },
        Case { name: "loss_parity_every_config_and_determinism", run: Box::new(loss_parity_every_config) },
        Case { name: "loss_bad_pairs_reported", run: Box::new(loss_bad_pairs_reported) },
        Case { name: "bad_offsets_give_zero_gradients", run: Box::new(bad_offsets_give_zero_gradients) },
        Case { name: "loss_edges_extreme_margins_clamps_empty_sequences", run: Box::new(loss_edges) },
        Case { name: "whole_step_parity_bf16", run: Box::new(whole_step_parity) },
    ]
}
