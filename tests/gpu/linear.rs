//! The fused LM head (hidden states + weight → log-probs, the per-token backward, the preference
//! step by pairs) against the f64 reference of the linear forms, for several workspace budgets
//! (one row / one pair per chunk, odd sizes, the whole batch), bitwise across runs.
use half::bf16;
use rand::Rng;

use crate::common::{assert_close, rng};
use crate::Case;
use pref_kernels::linear_token_logprobs::reference as lin_ref;
use pref_kernels::linear_token_logprobs::{
    ordered_workspace_bytes, workspace_bytes_per_row, LinearConfig, LinearForwardViews, LinearGradViews,
    LinearHead, LinearShape, OrderedWorkspace, TopkViews,
};
use pref_kernels::params::STATUS_BAD_TARGET;
use pref_kernels::preference_loss::reference::forward_backward;
use pref_kernels::preference_loss::{LossConfig, Pairs};
use pref_kernels::seq_reduce::{SeqLayout, TokenInputs};
use pref_kernels::step::LinearStepBatch;
use pref_kernels::{DType, Error, Gpu, LogitElement, TargetIndex, TokenLogprobsConfig};

struct Problem {
    shape: LinearShape,
    hidden: Vec<f32>,
    weight: Vec<f32>,
    bias: Vec<f32>,
    targets: Vec<i64>,
}

/// N rows (about a quarter ignored), small H and V; hidden and weight scaled so logits are O(3).
fn problem(seed: u64, tag: u64, n: usize, h: usize, v: usize) -> Problem {
    let mut r = rng(seed, tag);
    let s = 1.0 / (h as f32).sqrt();
    let hidden = (0..n * h).map(|_| r.random_range(-2.0f32..2.0)).collect();
    let weight = (0..v * h).map(|_| r.random_range(-2.0f32..2.0) * s).collect();
    let bias = (0..v).map(|_| r.random_range(-0.5f32..0.5)).collect();
    let targets =
        (0..n).map(|_| if r.random_ratio(1, 4) { -100 } else { r.random_range(0..v as i64) }).collect();
    Problem { shape: LinearShape { n_rows: n, hidden: h, vocab: v }, hidden, weight, bias, targets }
}

fn cast<T: LogitElement>(x: &[f32]) -> Vec<T> {
    x.iter().map(|&v| T::from_f32(v)).collect()
}

fn budget<T: LogitElement>(s: &LinearShape, rows: usize) -> usize {
    workspace_bytes_per_row(s, T::DTYPE) * rows
}

fn forward_backward_parity_for<T: LogitElement>(gpu: &Gpu, seed: u64, tol: f64) {
    let p = problem(seed, 71 + T::DTYPE as u64, 37, 24, 150);
    let stream = gpu.default_stream();
    let (hid, w): (Vec<T>, Vec<T>) = (cast(&p.hidden), cast(&p.weight));
    let hidden = stream.clone_htod(&hid).unwrap();
    let weight = stream.clone_htod(&w).unwrap();
    let bias = stream.clone_htod(&p.bias).unwrap();
    let targets = stream.clone_htod(&p.targets).unwrap();
    let mut r = rng(seed, 5);
    let grad_logp: Vec<f32> = (0..p.shape.n_rows).map(|_| r.random_range(-1.0f32..1.0)).collect();
    let grad_ent: Vec<f32> = (0..p.shape.n_rows).map(|_| r.random_range(-0.5f32..0.5)).collect();
    let gl = stream.clone_htod(&grad_logp).unwrap();
    let ge = stream.clone_htod(&grad_ent).unwrap();
    let token = TokenLogprobsConfig { temperature: 0.8, compute_entropy: true, ..Default::default() };
    let want = lin_ref::forward(&hid, &w, Some(&p.bias), p.shape, &p.targets, &token).unwrap();
    let want_g =
        lin_ref::backward(&hid, &w, Some(&p.bias), p.shape, &p.targets, &grad_logp, Some(&grad_ent), &token)
            .unwrap();
    let head = LinearHead {
        hidden: hidden.as_view(),
        weight: weight.as_view(),
        bias: Some(bias.as_view()),
        shape: p.shape,
    };
    let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
    for rows in [1usize, 7, 1000] {
        let cfg = LinearConfig { token, workspace_bytes: budget::<T>(&p.shape, rows) };
        let out = gpu.linear_token_logprobs_forward(&stream, &head, &targets.as_view(), &cfg).unwrap();
        let used = p.targets.iter().filter(|&&t| t != -100).count();
        // A budget of more than one chunk is halved into two slots (a second stream drains one
        // while the next chunk's GEMM fills the other) where half still holds a row.
        let two_streams = std::env::var("PREF_KERNELS_HEAD_STREAMS").as_deref() != Ok("1");
        let chunk_rows = if rows >= used {
            used
        } else if rows >= 2 && two_streams {
            rows / 2
        } else {
            rows
        };
        assert_eq!(out.n_chunks, used.div_ceil(chunk_rows), "chunks for {rows} rows");
        let logp = stream.clone_dtoh(&out.logp).unwrap();
        let lse = stream.clone_dtoh(&out.lse).unwrap();
        let ent = stream.clone_dtoh(out.entropy.as_ref().unwrap()).unwrap();
        for i in 0..p.shape.n_rows {
            assert_close(&format!("logp[{i}] rows {rows}"), logp[i] as f64, want.logp[i], tol, tol);
            assert_close(&format!("lse[{i}]"), lse[i] as f64, want.lse[i], tol, tol);
            assert_close(&format!("entropy[{i}]"), ent[i] as f64, want.entropy[i], tol, tol);
        }
        let cfg_b = LinearConfig { token: TokenLogprobsConfig { compute_entropy: false, ..token }, ..cfg };
        let g = gpu
            .linear_token_logprobs_backward(
                &stream,
                &head,
                &targets.as_view(),
                &gl.as_view(),
                Some(&ge.as_view()),
                &cfg_b,
            )
            .unwrap();
        let dh: Vec<f64> = stream.clone_dtoh(&g.d_hidden).unwrap().iter().map(|x| x.to_f64()).collect();
        let dw = stream.clone_dtoh(&g.d_weight).unwrap();
        let db = stream.clone_dtoh(g.d_bias.as_ref().unwrap()).unwrap();
        let scale = want_g.d_weight.iter().fold(0f64, |a, x| a.max(x.abs())).max(1e-3);
        for (i, (&a, &b)) in dh.iter().zip(&want_g.d_hidden).enumerate() {
            assert_close(&format!("d_hidden[{i}] rows {rows}"), a, b, tol * scale, tol);
        }
        for (i, (&a, &b)) in dw.iter().zip(&want_g.d_weight).enumerate() {
            assert_close(&format!("d_weight[{i}] rows {rows}"), a as f64, b, tol * scale, tol);
        }
        for (i, (&a, &b)) in db.iter().zip(&want_g.d_bias).enumerate() {
            assert_close(&format!("d_bias[{i}]"), a as f64, b, tol * scale, tol);
        }
        // Bitwise across runs (same budget).
        let again = gpu.linear_token_logprobs_forward(&stream, &head, &targets.as_view(), &cfg).unwrap();
        assert_eq!(logp, stream.clone_dtoh(&again.logp).unwrap(), "forward run to run");
        let g2 = gpu
            .linear_token_logprobs_backward(
                &stream,
                &head,
                &targets.as_view(),
                &gl.as_view(),
                Some(&ge.as_view()),
                &cfg_b,
            )
            .unwrap();
        assert_eq!(dw, stream.clone_dtoh(&g2.d_weight).unwrap(), "d_weight run to run");
        if let Some((l0, _)) = &first {
            assert_eq!(l0, &logp, "a row's log-prob does not depend on the chunk it sits in");
        } else {
            first = Some((logp, dw));
        }
    }
}

/// The optional outputs of the fused head (log Σp², mean logit, is_top1, top-k) for several
/// budgets, on poisoned outputs, against the f64 reference. The head's logits are the GEMM's,
/// rounded to T, so near-ties may order differently from the f64 logits: top-k values are
/// compared by rank and each id's value with its f64 log-prob; `is_top1` where the top two f64
/// logits are more than the tolerance apart.
fn extras_and_topk_for<T: LogitElement>(gpu: &Gpu, seed: u64, tol: f64) {
    let p = problem(seed, 131 + T::DTYPE as u64, 29, 24, 60);
    let stream = gpu.default_stream();
    let (hid, w): (Vec<T>, Vec<T>) = (cast(&p.hidden), cast(&p.weight));
    let hidden = stream.clone_htod(&hid).unwrap();
    let weight = stream.clone_htod(&w).unwrap();
    let bias = stream.clone_htod(&p.bias).unwrap();
    let targets = stream.clone_htod(&p.targets).unwrap();
    let token = TokenLogprobsConfig { temperature: 0.8, compute_entropy: true, ..Default::default() };
    let (n, v) = (p.shape.n_rows, p.shape.vocab);
    let want = lin_ref::forward(&hid, &w, Some(&p.bias), p.shape, &p.targets, &token).unwrap();
    // Every id's f64 log-prob, in the reference's order.
    let all = lin_ref::topk(&hid, &w, Some(&p.bias), p.shape, &p.targets, v, &token).unwrap();
    let head = LinearHead {
        hidden: hidden.as_view(),
        weight: weight.as_view(),
        bias: Some(bias.as_view()),
        shape: p.shape,
    };
    let k = rng(seed, 9).random_range(1..=v);
    let mut first: Option<Vec<i64>> = None;
    for rows in [1usize, 5, 1000] {
        let poison = |len: usize| stream.clone_htod(&vec![-7777f32; len]).unwrap();
        let (mut logp, mut lse, mut ent, mut lss, mut mean, mut tk) =
            (poison(n), poison(n), poison(n), poison(n), poison(n), poison(n * k));
        let mut top1 = stream.clone_htod(&vec![0xAAu8; n]).unwrap();
        let mut ids = stream.clone_htod(&vec![-7777i64; n * k]).unwrap();
        let views = LinearForwardViews {
            log_sum_sq: Some(lss.as_view_mut()),
            mean_logits: Some(mean.as_view_mut()),
            is_top1: Some(top1.as_view_mut()),
            topk: Some(TopkViews { k, logp: tk.as_view_mut(), ids: ids.as_view_mut() }),
            ..LinearForwardViews::new(logp.as_view_mut(), lse.as_view_mut(), Some(ent.as_view_mut()))
        };
        let cfg = LinearConfig { token, workspace_bytes: budget::<T>(&p.shape, rows) };
        gpu.linear_token_logprobs_forward_into(&stream, &head, &targets.as_view(), views, &cfg).unwrap();
        let (lp, lss, mean) = (
            stream.clone_dtoh(&logp).unwrap(),
            stream.clone_dtoh(&lss).unwrap(),
            stream.clone_dtoh(&mean).unwrap(),
        );
        let (top1, tk, ids) = (
            stream.clone_dtoh(&top1).unwrap(),
            stream.clone_dtoh(&tk).unwrap(),
            stream.clone_dtoh(&ids).unwrap(),
        );
        for i in 0..n {
            assert_close(&format!("logp[{i}]"), lp[i] as f64, want.logp[i], tol, tol);
            assert_close(&format!("log_sum_sq[{i}]"), lss[i] as f64, want.log_sum_sq[i], 2.0 * tol, tol);
            assert_close(&format!("mean_logits[{i}]"), mean[i] as f64, want.mean_logits[i], tol, tol);
            if p.targets[i] == -100 {
                assert_eq!(top1[i], 0, "is_top1 of ignored row {i}");
                assert!(
                    tk[i * k..][..k].iter().all(|&x| x == 0.0) && ids[i * k..][..k].iter().all(|&x| x == -1)
                );
                continue;
            }
            let (ref_ids, ref_lp) = (&all.ids[i * v..][..v], &all.logp[i * v..][..v]);
            if ref_lp[0] - ref_lp[1] > 2.0 * tol {
                assert_eq!(top1[i], (ref_ids[0] == p.targets[i]) as u8, "is_top1[{i}]");
            } else {
                assert!(top1[i] <= 1, "is_top1[{i}] = {}", top1[i]);
            }
            for j in 0..k {
                let (g, id) = (tk[i * k + j] as f64, ids[i * k + j]);
                assert_close(&format!("topk_logp[{i}, {j}] by rank"), g, ref_lp[j], tol, tol);
                let at =
                    ref_ids.iter().position(|&x| x == id).unwrap_or_else(|| panic!("id {id} of row {i}"));
                assert_close(&format!("topk_logp[{i}, {j}] of id {id}"), g, ref_lp[at], tol, tol);
                if id == p.targets[i] {
                    assert_eq!(tk[i * k + j].to_bits(), lp[i].to_bits(), "target's top-k entry, row {i}");
                }
            }
            let mut seen = ids[i * k..][..k].to_vec();
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), k, "top-k ids of row {i} are distinct");
        }
        // A row's top-k does not depend on the chunk it sits in.
        match &first {
            Some(f) => assert_eq!(f, &ids, "top-k ids for budget {rows}"),
            None => first = Some(ids),
        }
    }
}

fn linear_extras_and_topk(gpu: &Gpu, seed: u64) {
    extras_and_topk_for::<f32>(gpu, seed, 2e-5);
    extras_and_topk_for::<bf16>(gpu, seed, 3e-2);
}

fn linear_forward_backward_parity(gpu: &Gpu, seed: u64) {
    forward_backward_parity_for::<f32>(gpu, seed, 2e-5);
    forward_backward_parity_for::<bf16>(gpu, seed, 3e-2);
}

/// The step from hidden states equals the composition of the references: linear forward →
/// preference loss (mask = targets not ignored) → linear backward with its dL/dlogp.
fn step_parity_for(gpu: &Gpu, seed: u64, loss: &LossConfig, with_weights: bool) {
    let (b, l) = (6usize, 7usize); // 3 pairs (first half chosen) of 7-token sequences, padded
    let p = problem(seed, 91, b * l, 16, 90);
    let stream = gpu.default_stream();
    let mut r = rng(seed, 17);
    let n = p.shape.n_rows;
    let ref_logp: Vec<f32> = (0..n).map(|_| -r.random_range(0.5f32..4.0)).collect();
    let weights: Vec<f32> = (0..n).map(|_| r.random_range(0.5f32..1.5)).collect();
    let token = TokenLogprobsConfig::default();
    let fwd = lin_ref::forward(&p.hidden, &p.weight, None, p.shape, &p.targets, &token).unwrap();
    let logp32: Vec<f32> = fwd.logp.iter().map(|&x| x as f32).collect();
    let mask: Vec<u8> = p.targets.iter().map(|&t| (t != -100) as u8).collect();
    let seqs = SeqLayout::Padded { n_seqs: b, seq_len: l };
    let tokens = TokenInputs {
        logp: &logp32,
        mask: Some(&mask),
        weights: with_weights.then_some(&weights[..]),
        ref_logp: Some(&ref_logp),
    };
    let want = forward_backward(&tokens, &seqs, &Pairs::FirstHalfChosen, None, loss).unwrap();
    let gl: Vec<f32> = want.grad_logp.iter().map(|&x| x as f32).collect();
    let want_g =
        lin_ref::backward(&p.hidden, &p.weight, None, p.shape, &p.targets, &gl, None, &token).unwrap();

    let hidden = stream.clone_htod(&p.hidden).unwrap();
    let weight = stream.clone_htod(&p.weight).unwrap();
    let targets = stream.clone_htod(&p.targets).unwrap();
    let rl = stream.clone_htod(&ref_logp).unwrap();
    let wt = stream.clone_htod(&weights).unwrap();
    let head = LinearHead { hidden: hidden.as_view(), weight: weight.as_view(), bias: None, shape: p.shape };
    let batch = LinearStepBatch {
        targets: targets.as_view(),
        weights: with_weights.then(|| wt.as_view()),
        ref_logp: Some(rl.as_view()),
        ref_seq: None,
        seqs,
        pairs: Pairs::FirstHalfChosen,
    };
    let scale = want_g.d_weight.iter().fold(0f64, |a, x| a.max(x.abs())).max(1e-4);
    let mut first_dw: Option<Vec<f32>> = None;
    let mut one_pair_chunks = 0;
    // One pair per chunk, two, the whole batch.
    for rows in [2 * l, 4 * l, n] {
        let cfg = LinearConfig { token, workspace_bytes: budget::<f32>(&p.shape, rows) };
        let out = gpu.linear_preference_step(&stream, &head, &batch, loss, &cfg).unwrap();
        // A budget for one pair cannot be halved: one slot of one pair. A budget for two pairs that
        // takes more than one chunk on one stream is halved into two slots of one pair each (a
        // second stream drains one while the next chunk fills the other): as many chunks as with
        // one pair's budget. (Whether it takes more than one depends on the seed's ignored rows.)
        if rows == 2 * l {
            one_pair_chunks = out.n_chunks;
        } else if rows == 4 * l && std::env::var("PREF_KERNELS_HEAD_STREAMS").as_deref() != Ok("1") {
            let before = std::env::var("PREF_KERNELS_HEAD_STREAMS").ok();
            std::env::set_var("PREF_KERNELS_HEAD_STREAMS", "1");
            let one_stream =
                gpu.linear_preference_step(&stream, &head, &batch, loss, &cfg).map(|o| o.n_chunks);
            match before {
                Some(v) => std::env::set_var("PREF_KERNELS_HEAD_STREAMS", v),
                None => std::env::remove_var("PREF_KERNELS_HEAD_STREAMS"),
            }
            let want_chunks = if one_stream.unwrap() > 1 { one_pair_chunks } else { 1 };
            assert_eq!(out.n_chunks, want_chunks, "two slots of one pair each where it takes two chunks");
        }
        assert_close(&format!("loss rows {rows}"), out.loss.loss as f64, want.loss, 1e-5, 1e-4);
        for (k, name) in pref_kernels::preference_loss::METRIC_NAMES.iter().enumerate() {
            assert_close(
                &format!("{name} rows {rows}"),
                out.loss.metrics[k] as f64,
                want.metrics[k],
                1e-5,
                1e-4,
            );
        }
        for (i, row) in out.loss.pairs.iter().enumerate() {
            for c in 0..row.len() {
                assert_close(&format!("pair {i} col {c}"), row[c] as f64, want.pairs[i][c], 1e-5, 1e-4);
            }
        }
        let dh = stream.clone_dtoh(&out.grads.d_hidden).unwrap();
        let dw = stream.clone_dtoh(&out.grads.d_weight).unwrap();
        for (i, (&a, &b)) in dh.iter().zip(&want_g.d_hidden).enumerate() {
            assert_close(&format!("d_hidden[{i}] rows {rows}"), a as f64, b, 1e-4 * scale, 1e-3);
        }
        for (i, (&a, &b)) in dw.iter().zip(&want_g.d_weight).enumerate() {
            assert_close(&format!("d_weight[{i}] rows {rows}"), a as f64, b, 1e-4 * scale, 1e-3);
        }
        let again = gpu.linear_preference_step(&stream, &head, &batch, loss, &cfg).unwrap();
        assert_eq!(dw, stream.clone_dtoh(&again.grads.d_weight).unwrap(), "d_weight run to run");
        assert_eq!(out.loss.metrics, again.loss.metrics, "metrics run to run");
        if first_dw.is_none() {
            first_dw = Some(dw);
        }
    }
}

fn linear_step_parity(gpu: &Gpu, seed: u64) {
    let mut dpo_nll = LossConfig::dpo(0.1);
    dpo_nll.terms.push((pref_kernels::preference_loss::Loss::Nll, 0.5));
    step_parity_for(gpu, seed, &dpo_nll, false);
    step_parity_for(gpu, seed, &LossConfig::tabpo(), true);
    step_parity_for(gpu, seed, &LossConfig::single(pref_kernels::preference_loss::Loss::simpo()), false);
}

/// No rows at all: the forward, the backward and the step return empty outputs (d_weight zero).
fn linear_empty_batch(gpu: &Gpu, seed: u64) {
    let p = problem(seed, 91, 0, 8, 20);
    let stream = gpu.default_stream();
    let hidden = stream.alloc_zeros::<f32>(0).unwrap();
    let weight = stream.clone_htod(&p.weight).unwrap();
    let targets = stream.alloc_zeros::<i64>(0).unwrap();
    let gl = stream.alloc_zeros::<f32>(0).unwrap();
    let head = LinearHead { hidden: hidden.as_view(), weight: weight.as_view(), bias: None, shape: p.shape };
    let cfg = LinearConfig::default();
    let out = gpu.linear_token_logprobs_forward(&stream, &head, &targets.as_view(), &cfg).unwrap();
    assert_eq!((out.logp.len(), out.n_chunks), (0, 0));
    let g = gpu
        .linear_token_logprobs_backward(&stream, &head, &targets.as_view(), &gl.as_view(), None, &cfg)
        .unwrap();
    assert_eq!(g.d_hidden.len(), 0);
    assert!(stream.clone_dtoh(&g.d_weight).unwrap().iter().all(|&x| x == 0.0));
}

fn linear_bad_input(gpu: &Gpu, seed: u64) {
    let p = problem(seed, 3, 8, 8, 20);
    let stream = gpu.default_stream();
    let hidden = stream.clone_htod(&p.hidden).unwrap();
    let weight = stream.clone_htod(&p.weight).unwrap();
    let targets = stream.clone_htod(&p.targets).unwrap();
    let head = LinearHead { hidden: hidden.as_view(), weight: weight.as_view(), bias: None, shape: p.shape };
    // Workspace below one row: the error names the minimum.
    let small = LinearConfig { workspace_bytes: 100, ..Default::default() };
    let e = gpu
        .linear_token_logprobs_forward(&stream, &head, &targets.as_view(), &small)
        .err()
        .unwrap()
        .to_string();
    let min = workspace_bytes_per_row(&p.shape, DType::F32);
    assert!(e.contains(&format!("minimum is {min} bytes")), "{e}");
    // Mismatched H.
    let bad = LinearHead { shape: LinearShape { hidden: 7, ..p.shape }, ..head };
    let e = gpu
        .linear_token_logprobs_forward(&stream, &bad, &targets.as_view(), &LinearConfig::default())
        .err()
        .unwrap();
    assert!(matches!(e, Error::InvalidArgument { arg: "hidden", .. }), "{e}");
    // A target out of range is refused on the host, before any launch.
    let mut t = p.targets.clone();
    t[3] = 20;
    let bad_t = stream.clone_htod(&t).unwrap();
    let e = gpu
        .linear_token_logprobs_forward(&stream, &head, &bad_t.as_view(), &LinearConfig::default())
        .err()
        .unwrap();
    assert!(matches!(e, Error::TargetOutOfRange { row: 3, .. }), "{e}");
    // A step whose largest pair does not fit: names the minimum for that pair.
    let all = vec![1i64; 8];
    let all_t = stream.clone_htod(&all).unwrap();
    let batch = LinearStepBatch {
        targets: all_t.as_view(),
        weights: None,
        ref_logp: None,
        ref_seq: None,
        seqs: SeqLayout::Padded { n_seqs: 2, seq_len: 4 },
        pairs: Pairs::FirstHalfChosen,
    };
    let cfg = LinearConfig { workspace_bytes: 5 * min, ..Default::default() };
    let loss = LossConfig::single(pref_kernels::preference_loss::Loss::simpo());
    let e = gpu.linear_preference_step(&stream, &head, &batch, &loss, &cfg).err().unwrap().to_string();
    assert!(
        e.contains("largest group of pairs") && e.contains(&format!("minimum is {} bytes", 8 * min)),
        "{e}"
    );
}

/// The stream-ordered head (every row projected, the caller's workspace and status word, nothing
/// read back) on poisoned outputs, i32 and i64 targets, for chunks of 1, 7 and all rows: the same
/// per-row values as the host-planned loop (bitwise: a row's logits are the same dot products),
/// gradients against the f64 reference, every output element written (`d_weight` poisoned with
/// NaN: the first chunk's GEMM must overwrite it, not scale it).
fn stream_ordered_parity_for<T: LogitElement, I: TargetIndex>(
    gpu: &Gpu,
    seed: u64,
    tol: f64,
    conv: fn(i64) -> I,
) {
    let p = problem(seed, 171 + T::DTYPE as u64, 37, 24, 150);
    let stream = gpu.default_stream();
    let (n, h, v) = (p.shape.n_rows, p.shape.hidden, p.shape.vocab);
    let (hid, w): (Vec<T>, Vec<T>) = (cast(&p.hidden), cast(&p.weight));
    let hidden = stream.clone_htod(&hid).unwrap();
    let weight = stream.clone_htod(&w).unwrap();
    let bias = stream.clone_htod(&p.bias).unwrap();
    let targets = stream.clone_htod(&p.targets.iter().map(|&t| conv(t)).collect::<Vec<I>>()).unwrap();
    let planned_targets = stream.clone_htod(&p.targets).unwrap();
    let mut r = rng(seed, 6);
    let grad_logp: Vec<f32> = (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect();
    let grad_ent: Vec<f32> = (0..n).map(|_| r.random_range(-0.5f32..0.5)).collect();
    let gl = stream.clone_htod(&grad_logp).unwrap();
    let ge = stream.clone_htod(&grad_ent).unwrap();
    let token = TokenLogprobsConfig { temperature: 0.8, compute_entropy: true, ..Default::default() };
    let want_g =
        lin_ref::backward(&hid, &w, Some(&p.bias), p.shape, &p.targets, &grad_logp, Some(&grad_ent), &token)
            .unwrap();
    let head = LinearHead {
        hidden: hidden.as_view(),
        weight: weight.as_view(),
        bias: Some(bias.as_view()),
        shape: p.shape,
    };
    let k = 5;
    // The host-planned loop's outputs, one chunk.
    let poison = |len: usize| stream.clone_htod(&vec![-7777f32; len]).unwrap();
    let forward = |ordered: Option<usize>| {
        let (mut logp, mut lse, mut ent, mut lss, mut mean, mut tk) =
            (poison(n), poison(n), poison(n), poison(n), poison(n), poison(n * k));
        let mut top1 = stream.clone_htod(&vec![0xAAu8; n]).unwrap();
        let mut ids = stream.clone_htod(&vec![-7777i64; n * k]).unwrap();
        let mut status = stream.alloc_zeros::<u32>(1).unwrap();
        let views = LinearForwardViews {
            log_sum_sq: Some(lss.as_view_mut()),
            mean_logits: Some(mean.as_view_mut()),
            is_top1: Some(top1.as_view_mut()),
            topk: Some(TopkViews { k, logp: tk.as_view_mut(), ids: ids.as_view_mut() }),
            ..LinearForwardViews::new(logp.as_view_mut(), lse.as_view_mut(), Some(ent.as_view_mut()))
        };
        match ordered {
            Some(rows) => {
                let bytes = ordered_workspace_bytes(&p.shape, T::DTYPE, rows).unwrap();
                let mut work = stream.clone_htod(&vec![0xFFu8; bytes]).unwrap();
                let ws =
                    OrderedWorkspace { workspace: work.as_view_mut(), status: Some(status.as_view_mut()) };
                let run = gpu
                    .linear_token_logprobs_forward_ordered(
                        &stream,
                        &head,
                        &targets.as_view(),
                        views,
                        ws,
                        &token,
                    )
                    .unwrap();
                if std::env::var("PREF_KERNELS_HEAD_STREAMS").as_deref() == Ok("1") {
                    // One stream: the two slots' bytes hold one larger chunk.
                    assert!(run.n_chunks <= n.div_ceil(rows.min(n)), "chunks of {rows} rows");
                } else {
                    assert_eq!(run.n_chunks, n.div_ceil(rows.min(n)), "chunks of {rows} rows");
                }
                assert_eq!(stream.clone_dtoh(&status).unwrap(), [0]);
            }
            None => {
                let cfg = LinearConfig { token, workspace_bytes: budget::<T>(&p.shape, n) };
                gpu.linear_token_logprobs_forward_into(
                    &stream,
                    &head,
                    &planned_targets.as_view(),
                    views,
                    &cfg,
                )
                .unwrap();
            }
        }
        let f: Vec<Vec<f32>> =
            [&logp, &lse, &ent, &lss, &mean, &tk].iter().map(|b| stream.clone_dtoh(*b).unwrap()).collect();
        (f, stream.clone_dtoh(&top1).unwrap(), stream.clone_dtoh(&ids).unwrap())
    };
    let planned = forward(None);
    for rows in [1usize, 7, n] {
        let got = forward(Some(rows));
        for (name, (a, b)) in ["logp", "lse", "entropy", "log_sum_sq", "mean_logits", "topk_logp"]
            .iter()
            .zip(got.0.iter().zip(&planned.0))
        {
            let (a, b): (Vec<u32>, Vec<u32>) =
                (a.iter().map(|x| x.to_bits()).collect(), b.iter().map(|x| x.to_bits()).collect());
            assert_eq!(a, b, "{name}: stream-ordered (chunks of {rows}) vs host-planned");
        }
        assert_eq!(got.1, planned.1, "is_top1, chunks of {rows}");
        assert_eq!(got.2, planned.2, "top-k ids, chunks of {rows}");

        let (mut dh, mut dw) =
            (stream.clone_htod(&vec![T::from_f32(-7777.0); n * h]).unwrap(), poison(v * h));
        let mut db = poison(v);
        stream.memset_bytes(&mut dw.as_view_mut(), 0xFF).unwrap(); // NaN
        let bytes = ordered_workspace_bytes(&p.shape, T::DTYPE, rows).unwrap();
        let mut work = stream.clone_htod(&vec![0xFFu8; bytes]).unwrap();
        let mut status = stream.alloc_zeros::<u32>(1).unwrap();
        let grads = LinearGradViews {
            d_hidden: dh.as_view_mut(),
            d_weight: dw.as_view_mut(),
            d_bias: Some(db.as_view_mut()),
        };
        let ws = OrderedWorkspace { workspace: work.as_view_mut(), status: Some(status.as_view_mut()) };
        let cfg = TokenLogprobsConfig { compute_entropy: false, ..token };
        gpu.linear_token_logprobs_backward_ordered(
            &stream,
            &head,
            &targets.as_view(),
            &gl.as_view(),
            Some(&ge.as_view()),
            grads,
            ws,
            &cfg,
        )
        .unwrap();
        assert_eq!(stream.clone_dtoh(&status).unwrap(), [0]);
        let dh: Vec<f64> = stream.clone_dtoh(&dh).unwrap().iter().map(|x| x.to_f64()).collect();
        let (dw, db) = (stream.clone_dtoh(&dw).unwrap(), stream.clone_dtoh(&db).unwrap());
        let scale = want_g.d_weight.iter().fold(0f64, |a, x| a.max(x.abs())).max(1e-3);
        for (i, (&a, &b)) in dh.iter().zip(&want_g.d_hidden).enumerate() {
            assert_close(&format!("d_hidden[{i}] chunks of {rows}"), a, b, tol * scale, tol);
            if p.targets[i / h] == -100 {
                assert_eq!(a, 0.0, "d_hidden of ignored row {}", i / h);
            }
        }
        for (i, (&a, &b)) in dw.iter().zip(&want_g.d_weight).enumerate() {
            assert_close(&format!("d_weight[{i}] chunks of {rows}"), a as f64, b, tol * scale, tol);
        }
        for (i, (&a, &b)) in db.iter().zip(&want_g.d_bias).enumerate() {
            assert_close(&format!("d_bias[{i}] chunks of {rows}"), a as f64, b, tol * scale, tol);
        }
    }
}

fn linear_stream_ordered_parity(gpu: &Gpu, seed: u64) {
    stream_ordered_parity_for::<f32, i64>(gpu, seed, 2e-5, |t| t);
    stream_ordered_parity_for::<bf16, i32>(gpu, seed, 3e-2, |t| t as i32);
}

/// Stream-ordered calls refuse a workspace below one row (naming the minimum) or misaligned, and
/// report a bad target through the caller's status word (its row NaN, the others as usual)
/// instead of reading the targets on the host.
fn linear_stream_ordered_bad_input(gpu: &Gpu, seed: u64) {
    let p = problem(seed, 4, 8, 8, 20);
    let stream = gpu.default_stream();
    let hidden = stream.clone_htod(&p.hidden).unwrap();
    let weight = stream.clone_htod(&p.weight).unwrap();
    let mut t = p.targets.clone();
    t[3] = 20;
    let targets = stream.clone_htod(&t).unwrap();
    let head = LinearHead { hidden: hidden.as_view(), weight: weight.as_view(), bias: None, shape: p.shape };
    let token = TokenLogprobsConfig::default();
    // The minimum: one slot of one row (what the one-row shape needs); a workspace for chunks of
    // one row (two slots) is above it.
    let one = ordered_workspace_bytes(&LinearShape { n_rows: 1, ..p.shape }, DType::F32, 1).unwrap();
    assert_eq!(ordered_workspace_bytes(&p.shape, DType::F32, 1), Some(2 * one));
    let mut work = stream.alloc_zeros::<u8>(one + 16).unwrap();
    let (mut logp, mut lse) = (stream.alloc_zeros::<f32>(8).unwrap(), stream.alloc_zeros::<f32>(8).unwrap());
    let mut status = stream.alloc_zeros::<u32>(1).unwrap();
    let run = |work: pref_kernels::ViewMut<'_, u8>,
               status: Option<pref_kernels::ViewMut<'_, u32>>,
               logp: pref_kernels::ViewMut<'_, f32>,
               lse: pref_kernels::ViewMut<'_, f32>| {
        let out = LinearForwardViews::new(logp, lse, None);
        gpu.linear_token_logprobs_forward_ordered(
            &stream,
            &head,
            &targets.as_view(),
            out,
            OrderedWorkspace { workspace: work, status },
            &token,
        )
    };
    let e = run(work.slice_mut(..one - 1), None, logp.as_view_mut(), lse.as_view_mut())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains(&format!("the minimum is {one} bytes")), "{e}");
    let e = run(work.slice_mut(4..), None, logp.as_view_mut(), lse.as_view_mut()).err().unwrap().to_string();
    assert!(e.contains("16-byte aligned"), "{e}");
    run(work.as_view_mut(), Some(status.as_view_mut()), logp.as_view_mut(), lse.as_view_mut()).unwrap();
    assert_eq!(stream.clone_dtoh(&status).unwrap()[0] & STATUS_BAD_TARGET, STATUS_BAD_TARGET);
    let lp = stream.clone_dtoh(&logp).unwrap();
    for (i, &x) in lp.iter().enumerate() {
        assert_eq!(x.is_nan(), i == 3, "logp[{i}] = {x}");
    }
}

/// The GRPO step from hidden states equals the composition of the references: linear forward →
/// GRPO loss (mask = completion mask and targets not ignored) → linear backward with its dL/dlogp
/// and dL/dH, for token- and sequence-level losses, in one chunk and in chunks of whole
/// sequences (an empty and a fully masked sequence among them; two slots on a second stream
/// where the budget allows); outputs poisoned first; bitwise run to run.
fn linear_grpo_step_parity(gpu: &Gpu, seed: u64) {
    use pref_kernels::grpo::reference::{grpo_loss, GrpoTokens};
    use pref_kernels::grpo::{GrpoConfig, GrpoLossType, ImportanceLevel, GRPO_METRIC_NAMES};
    use pref_kernels::linear_token_logprobs::LinearGradViews;
    use pref_kernels::step::{LinearGrpoBatch, LinearGrpoViews};
    let cu: Vec<i32> = vec![0, 7, 7, 19, 25, 40];
    let p = problem(seed, 93, 40, 16, 90);
    let n = p.shape.n_rows;
    let stream = gpu.default_stream();
    let mut r = rng(seed, 19);
    let mut mask: Vec<u8> = (0..n).map(|_| u8::from(!r.random_ratio(1, 5))).collect();
    mask[19..25].iter_mut().for_each(|m| *m = 0);
    let token = TokenLogprobsConfig { compute_entropy: true, ..Default::default() };
    let fwd = lin_ref::forward(&p.hidden, &p.weight, Some(&p.bias), p.shape, &p.targets, &token).unwrap();
    let logp: Vec<f32> = fwd.logp.iter().map(|&x| x as f32).collect();
    let entropy: Vec<f32> = fwd.entropy.iter().map(|&x| x as f32).collect();
    let mut near = |w: f32| -> Vec<f32> { logp.iter().map(|&l| l + r.random_range(-w..w)).collect() };
    let (old, sampling, refl) = (near(0.3), near(0.6), near(0.5));
    let mut r = rng(seed, 23);
    let is_w: Vec<f32> = (0..n).map(|_| r.random_range(0.5f32..1.5)).collect();
    let adv: Vec<f32> = (0..cu.len() - 1).map(|_| r.random_range(-1.5f32..1.5)).collect();
    let counted: Vec<u8> = (0..n).map(|t| u8::from(mask[t] != 0 && p.targets[t] != -100)).collect();
    let seqs = SeqLayout::Packed { cu_seqlens: &cu };
    let longest = cu
        .windows(2)
        .map(|w| counted[w[0] as usize..w[1] as usize].iter().filter(|&&c| c != 0).count())
        .max()
        .unwrap();

    let hidden = stream.clone_htod(&p.hidden).unwrap();
    let weight = stream.clone_htod(&p.weight).unwrap();
    let bias = stream.clone_htod(&p.bias).unwrap();
    let targets = stream.clone_htod(&p.targets).unwrap();
    let d_mask = stream.clone_htod(&mask).unwrap();
    let (d_old, d_samp) = (stream.clone_htod(&old).unwrap(), stream.clone_htod(&sampling).unwrap());
    let (d_ref, d_isw) = (stream.clone_htod(&refl).unwrap(), stream.clone_htod(&is_w).unwrap());
    let d_adv = stream.clone_htod(&adv).unwrap();
    let head = LinearHead {
        hidden: hidden.as_view(),
        weight: weight.as_view(),
        bias: Some(bias.as_view()),
        shape: p.shape,
    };
    let batch = LinearGrpoBatch {
        targets: targets.as_view(),
        mask: Some(d_mask.as_view()),
        old_logp: Some(d_old.as_view()),
        sampling_logp: Some(d_samp.as_view()),
        ref_logp: Some(d_ref.as_view()),
        is_weights: Some(d_isw.as_view()),
        advantages: d_adv.as_view(),
        seqs,
    };
    let trl = GrpoConfig { beta: 0.04, entropy_coef: 0.01, ..GrpoConfig::trl() };
    let configs = [
        ("dapo beta entropy", trl),
        (
            "gspo off-policy mask",
            GrpoConfig {
                loss_type: GrpoLossType::Grpo,
                importance: ImportanceLevel::Sequence,
                off_policy_mask_threshold: Some(0.05),
                ..trl
            },
        ),
        (
            "dr_grpo delta accumulation",
            GrpoConfig {
                loss_type: GrpoLossType::DrGrpo { max_completion_length: 16 },
                delta: Some(1.5),
                accumulation_steps: 2,
                ..trl
            },
        ),
        ("sapo", GrpoConfig { loss_type: GrpoLossType::Sapo { tau_pos: 1.0, tau_neg: 1.05 }, ..trl }),
        ("cispo", GrpoConfig { loss_type: GrpoLossType::Cispo { normalizer: None }, ..trl }),
    ];
    for (name, cfg) in configs {
        let tokens = GrpoTokens {
            logp: &logp,
            old_logp: Some(&old),
            sampling_logp: Some(&sampling),
            ref_logp: Some(&refl),
            mask: Some(&counted),
            is_weights: Some(&is_w),
            entropy: Some(&entropy),
        };
        let want = grpo_loss(&tokens, &seqs, &adv, &cfg).unwrap();
        let gl: Vec<f32> = want.grad_logp.iter().map(|&x| x as f32).collect();
        let ge: Vec<f32> = want.grad_entropy.iter().map(|&x| x as f32).collect();
        let want_g = lin_ref::backward(
            &p.hidden,
            &p.weight,
            Some(&p.bias),
            p.shape,
            &p.targets,
            &gl,
            Some(&ge),
            &token,
        )
        .unwrap();
        let scale = want_g.d_weight.iter().fold(0f64, |a, x| a.max(x.abs())).max(1e-4);
        // One slot of the longest sequence (several chunks), two slots of it where twice the
        // budget takes more than one chunk (a second stream), everything in one chunk.
        for rows in [longest, 2 * longest, 2 * n] {
            let lin = LinearConfig { token, workspace_bytes: budget::<f32>(&p.shape, rows) };
            let run = || {
                let mut lp = stream.clone_htod(&vec![f32::NAN; n]).unwrap();
                let mut ent = stream.clone_htod(&vec![f32::NAN; n]).unwrap();
                let mut dh = stream.clone_htod(&vec![f32::NAN; n * p.shape.hidden]).unwrap();
                let mut dw = stream.clone_htod(&vec![f32::NAN; p.weight.len()]).unwrap();
                let mut db = stream.clone_htod(&vec![f32::NAN; p.bias.len()]).unwrap();
                let out = LinearGrpoViews {
                    logp: lp.as_view_mut(),
                    entropy: Some(ent.as_view_mut()),
                    grads: LinearGradViews {
                        d_hidden: dh.as_view_mut(),
                        d_weight: dw.as_view_mut(),
                        d_bias: Some(db.as_view_mut()),
                    },
                };
                let (loss, run) = gpu.linear_grpo_step_into(&stream, &head, &batch, &cfg, &lin, out).unwrap();
                let host = |b: &pref_kernels::DeviceBuffer<f32>| stream.clone_dtoh(b).unwrap();
                (loss, run, [host(&lp), host(&ent), host(&dh), host(&dw), host(&db)])
            };
            let (loss, run_info, [lp, ent, dh, dw, db]) = run();
            let tag = format!("{name}, {} chunks", run_info.n_chunks);
            let total = counted.iter().filter(|&&c| c != 0).count();
            if rows == longest && total > longest {
                assert!(run_info.n_chunks >= 2, "{tag}: the small budget takes several chunks");
            }
            assert_close(&format!("loss {tag}"), loss.loss as f64, want.loss, 1e-5, 1e-4);
            for (k, m) in GRPO_METRIC_NAMES.iter().enumerate() {
                assert_close(&format!("{m} {tag}"), loss.metrics[k] as f64, want.metrics[k], 1e-5, 1e-4);
            }
            for t in 0..n {
                let (wl, we) = if counted[t] != 0 { (fwd.logp[t], fwd.entropy[t]) } else { (0.0, 0.0) };
                assert_close(&format!("logp[{t}] {tag}"), lp[t] as f64, wl, 1e-5, 1e-5);
                assert_close(&format!("entropy[{t}] {tag}"), ent[t] as f64, we, 1e-5, 1e-5);
            }
            for (i, (&a, &b)) in dh.iter().zip(&want_g.d_hidden).enumerate() {
                assert_close(&format!("d_hidden[{i}] {tag}"), a as f64, b, 1e-4 * scale, 1e-3);
            }
            for (i, (&a, &b)) in dw.iter().zip(&want_g.d_weight).enumerate() {
                assert_close(&format!("d_weight[{i}] {tag}"), a as f64, b, 1e-4 * scale, 1e-3);
            }
            for (i, (&a, &b)) in db.iter().zip(&want_g.d_bias).enumerate() {
                assert_close(&format!("d_bias[{i}] {tag}"), a as f64, b, 1e-4 * scale, 1e-3);
            }
            let (again, _, [_, _, dh2, dw2, _]) = run();
            assert!(again.metrics == loss.metrics && dh2 == dh && dw2 == dw, "{tag}: bitwise run to run");
        }
    }

    // Nothing counted: the loss and metrics still run (zeros, as the reference), no GEMM,
    // every gradient zero.
    let none = stream.clone_htod(&vec![0u8; n]).unwrap();
    let lin = LinearConfig { token, workspace_bytes: budget::<f32>(&p.shape, n) };
    let empty = LinearGrpoBatch { mask: Some(none.as_view()), ..batch };
    let out = gpu.linear_grpo_step(&stream, &head, &empty, &trl, &lin).unwrap();
    let zeros = vec![0u8; n];
    let tokens = GrpoTokens {
        logp: &logp,
        old_logp: Some(&old),
        sampling_logp: Some(&sampling),
        ref_logp: Some(&refl),
        mask: Some(&zeros),
        is_weights: Some(&is_w),
        entropy: Some(&entropy),
    };
    let want = grpo_loss(&tokens, &seqs, &adv, &trl).unwrap();
    for (k, m) in GRPO_METRIC_NAMES.iter().enumerate() {
        assert_close(
            &format!("{m}, nothing counted"),
            out.loss.metrics[k] as f64,
            want.metrics[k],
            1e-6,
            0.0,
        );
    }
    assert_eq!(out.run.n_chunks, 1);
    let dw = stream.clone_dtoh(&out.grads.d_weight).unwrap();
    let dh = stream.clone_dtoh(&out.grads.d_hidden).unwrap();
    assert!(dw.iter().chain(&dh).all(|&x| x == 0.0), "nothing counted: zero gradients");
    let batch = LinearGrpoBatch { mask: Some(d_mask.as_view()), ..empty };

    // Refused up front, naming why: the top-entropy mask, a bonus without entropies, VESPO with
    // vLLM weights, a budget below the longest sequence.
    let lin = LinearConfig { token, workspace_bytes: budget::<f32>(&p.shape, n) };
    let err = |cfg: &GrpoConfig, lin: &LinearConfig| {
        gpu.linear_grpo_step(&stream, &head, &batch, cfg, lin)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(err(&GrpoConfig { top_entropy_quantile: 0.8, ..trl }, &lin).contains("top_entropy_quantile"));
    let no_entropy = LinearConfig { token: TokenLogprobsConfig::default(), ..lin };
    assert!(err(&trl, &no_entropy).contains("compute_entropy"));
    let vespo = GrpoConfig { loss_type: GrpoLossType::vespo(None), ..trl };
    assert!(err(&vespo, &lin).contains("is_weights"));
    let small = LinearConfig { token, workspace_bytes: budget::<f32>(&p.shape, longest - 1) };
    assert!(err(&trl, &small).contains("longest sequence"), "{}", err(&trl, &small));
}

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "linear_token_logprobs_forward_backward_parity_every_chunk_size",
            run: Box::new(linear_forward_backward_parity),
        },
        Case { name: "linear_extras_and_topk_every_chunk_size", run: Box::new(linear_extras_and_topk) },
        Case { name: "linear_preference_step_parity_by_pairs", run: Box::new(linear_step_parity) },
        Case { name: "linear_grpo_step_parity_by_sequences", run: Box::new(linear_grpo_step_parity) },
        Case { name: "linear_bad_input_refused", run: Box::new(linear_bad_input) },
        Case { name: "linear_empty_batch", run: Box::new(linear_empty_batch) },
        Case {
            name: "linear_stream_ordered_parity_every_chunk_size",
            run: Box::new(linear_stream_ordered_parity),
        },
        Case { name: "linear_stream_ordered_bad_input", run: Box::new(linear_stream_ordered_bad_input) },
    ]
}
