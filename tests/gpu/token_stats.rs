//! The full token log-probs forward (TRL's fused-head fields: mean logit, `is_top1`) and the top-k
//! log-probs against `token_logprobs::reference`, on poisoned outputs, with ties planted where
//! they decide the answer (the target tied with an earlier or a later column, values repeated
//! around the k-th largest) and a row holding NaN.
//!
//! Tolerances: logp, lse, entropy, log Σp² as `token_logprobs` (same checker); top-k log-probs as
//! logp (the same formula), ids and `is_top1` exactly (the kernels compare the logits themselves,
//! the reference their f64 values: the same order); the mean logit within the f32 summation bound
//! `(V / 32 + 64) · 2^-24 · mean|x / T|` (a thread sums at most V / 32 values in order, then a
//! tree of depth <= 13), plus 1e-6.
use half::{bf16, f16};
use pref_kernels::token_logprobs::{reference, TokenLogprobsOutputs};
use pref_kernels::{Gpu, LogitElement, LogitsLayout, TokenLogprobsConfig};
use rand::Rng;

use super::token_logprobs::{check_forward, problem, Forward, Problem, Target};
use crate::common::{assert_close, rng};
use crate::Case;

const POISON: f32 = -7777.0;

/// A random problem with planted ties: by row, the target is a strict maximum, ties the maximum
/// with an earlier column, ties it with a later one, or is left as drawn; every third row repeats
/// one value across several columns (ties inside the top k); the last row holds a NaN.
fn tie_problem<T: LogitElement, I: Target>(seed: u64, tag: u64, n: usize, vocab: usize) -> Problem<T, I> {
    let mut p = problem::<T, I>(seed, tag, n, vocab, 3, 1);
    let mut r = rng(seed, tag ^ 0x51);
    let stride = p.layout.row_stride;
    for row in 0..n {
        let t = p.targets[row].to_i64();
        let x = &mut p.host[p.offset + row * stride..][..vocab];
        if t < 0 {
            continue;
        }
        let t = t as usize;
        let max = x.iter().map(|v| v.to_f64()).fold(f64::NEG_INFINITY, f64::max);
        let top = T::from_f32((max + 1.0) as f32);
        match row % 4 {
            0 => x[t] = top,
            1 if t > 0 => {
                x[t] = top;
                x[r.random_range(0..t)] = top;
            }
            2 if t + 1 < vocab => {
                x[t] = top;
                x[r.random_range(t + 1..vocab)] = top;
            }
            _ => {}
        }
        if row % 3 == 0 && vocab > 8 {
            let v = x[r.random_range(0..vocab)];
            for _ in 0..r.random_range(2..8) {
                x[r.random_range(0..vocab)] = v;
            }
        }
    }
    if n > 2 && p.targets[n - 1].to_i64() >= 0 {
        let c = r.random_range(0..vocab);
        p.host[p.offset + (n - 1) * stride + c] = T::from_f32(f32::NAN);
    }
    p
}

struct Full {
    fwd: Forward,
    mean_logits: Vec<f32>,
    is_top1: Vec<u8>,
    topk_logp: Vec<f32>,
    topk_ids: Vec<i64>,
}

fn run_full<T: LogitElement, I: Target>(
    gpu: &Gpu,
    p: &Problem<T, I>,
    cfg: &TokenLogprobsConfig,
    k: usize,
) -> Full {
    let s = gpu.default_stream();
    let n = p.layout.n_rows;
    let logits = s.clone_htod(&p.host).unwrap();
    let view = logits.slice(p.offset..);
    let targets = s.clone_htod(&p.targets).unwrap();
    let poison = |len: usize| s.clone_htod(&vec![POISON; len]).unwrap();
    let (mut logp, mut lse, mut entropy, mut stats, mut lss, mut mean) =
        (poison(n), poison(n), poison(n), poison(2 * n), poison(n), poison(n));
    let mut top1 = s.clone_htod(&vec![0xAAu8; n]).unwrap();
    gpu.token_logprobs_forward(
        &s,
        &view,
        p.layout,
        &targets,
        TokenLogprobsOutputs {
            logp: logp.as_view_mut(),
            lse: lse.as_view_mut(),
            entropy: Some(entropy.as_view_mut()),
            stats: Some(stats.as_view_mut()),
            log_sum_sq: Some(lss.as_view_mut()),
            mean_logits: Some(mean.as_view_mut()),
            is_top1: Some(top1.as_view_mut()),
        },
        cfg,
    )
    .expect("full forward");
    let mut topk_logp = poison(n * k);
    let mut topk_ids = s.clone_htod(&vec![-7777i64; n * k]).unwrap();
    gpu.token_logprobs_topk(&s, &view, p.layout, &targets, &stats, k, &mut topk_logp, &mut topk_ids, cfg)
        .expect("top-k");
    Full {
        fwd: Forward {
            logp: s.clone_dtoh(&logp).unwrap(),
            lse: s.clone_dtoh(&lse).unwrap(),
            entropy: Some(s.clone_dtoh(&entropy).unwrap()),
            stats: s.clone_dtoh(&stats).unwrap(),
            log_sum_sq: Some(s.clone_dtoh(&lss).unwrap()),
        },
        mean_logits: s.clone_dtoh(&mean).unwrap(),
        is_top1: s.clone_dtoh(&top1).unwrap(),
        topk_logp: s.clone_dtoh(&topk_logp).unwrap(),
        topk_ids: s.clone_dtoh(&topk_ids).unwrap(),
    }
}

fn check_full<T: LogitElement, I: Target>(
    p: &Problem<T, I>,
    got: &Full,
    cfg: &TokenLogprobsConfig,
    k: usize,
) {
    let want = check_forward(p, &got.fwd, cfg);
    let host = &p.host[p.offset..];
    let want_k = reference::topk(host, p.layout, &p.targets, k, cfg).unwrap();
    let (v, inv_t) = (p.layout.vocab, 1.0 / cfg.temperature as f64);
    let atol = crate::common::tol::row_atol(v);
    let mut top1_rows = 0;
    for r in 0..p.layout.n_rows {
        let row = &host[r * p.layout.row_stride..][..v];
        let mean_abs = row.iter().map(|x| x.to_f64().abs() * inv_t).sum::<f64>() / v as f64;
        let mean_tol = 1e-6 + (v as f64 / 32.0 + 64.0) * 2f64.powi(-24) * mean_abs;
        assert_close(
            &format!("mean_logits[{r}]"),
            got.mean_logits[r] as f64,
            want.mean_logits[r],
            mean_tol,
            0.0,
        );
        assert_eq!(got.is_top1[r], want.is_top1[r] as u8, "is_top1[{r}] (target {})", p.targets[r].to_i64());
        top1_rows += want.is_top1[r] as usize;
        let (gids, wids) = (&got.topk_ids[r * k..][..k], &want_k.ids[r * k..][..k]);
        assert_eq!(gids, wids, "top-k ids of row {r}");
        for j in 0..k {
            let g = got.topk_logp[r * k + j];
            assert_close(&format!("topk_logp[{r}, {j}]"), g as f64, want_k.logp[r * k + j], atol, 2e-7);
            if gids[j] == p.targets[r].to_i64() {
                assert_eq!(g.to_bits(), got.fwd.logp[r].to_bits(), "top-k entry of the target, row {r}");
            }
        }
    }
    // The planted ties make both answers occur (rows 0, 4, ... have a strict-max target).
    if p.layout.n_rows >= 8 {
        assert!(
            top1_rows > 0 && top1_rows < p.layout.n_rows,
            "is_top1 is {top1_rows} of {} rows",
            p.layout.n_rows
        );
    }
}

fn full_case<T: LogitElement, I: Target>(vocab: usize) -> Case {
    let name = format!("full_forward_and_topk_{}_{}_v{vocab}", T::DTYPE.name(), I::INDEX_TYPE.name());
    Case {
        name: Box::leak(name.into_boxed_str()),
        run: Box::new(move |gpu, seed| {
            let mut r = rng(seed, 0x70_0000 + vocab as u64);
            let n = r.random_range(9..=if vocab >= 32000 { 12 } else { 40 });
            let k = r.random_range(1..=vocab.min(64));
            let cfg = TokenLogprobsConfig { temperature: 0.8, compute_entropy: true, ..Default::default() };
            let p = tie_problem::<T, I>(seed, vocab as u64, n, vocab);
            let got = run_full(gpu, &p, &cfg, k);
            check_full(&p, &got, &cfg, k);
            // k = 64 (the largest) as well, where the vocabulary allows.
            if vocab >= 64 && k != 64 {
                check_full(&p, &run_full(gpu, &p, &cfg, 64), &cfg, 64);
            }
        }),
    }
}

/// k outside 1..=64 or above the vocabulary is refused before any launch.
fn topk_arguments(gpu: &Gpu, _seed: u64) {
    let s = gpu.default_stream();
    let layout = LogitsLayout::contiguous(2, 10);
    let logits = s.clone_htod(&[0.5f32; 20]).unwrap();
    let targets = s.clone_htod(&[1i64, 2]).unwrap();
    let stats = s.clone_htod(&[0f32; 4]).unwrap();
    let cfg = TokenLogprobsConfig::default();
    for k in [0usize, 11, 65] {
        let mut l = s.clone_htod(&vec![0f32; 2 * k.max(1)]).unwrap();
        let mut i = s.clone_htod(&vec![0i64; 2 * k.max(1)]).unwrap();
        let e = gpu
            .token_logprobs_topk(&s, &logits, layout, &targets, &stats, k, &mut l, &mut i, &cfg)
            .unwrap_err();
        assert!(e.to_string().contains("`k`"), "k = {k}: {e}");
    }
}

pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for vocab in [7, 100, 1024, 3000] {
        v.push(full_case::<f32, i64>(vocab));
        v.push(full_case::<bf16, i32>(vocab));
        v.push(full_case::<f16, i64>(vocab));
    }
    v.push(full_case::<bf16, i64>(32000));
    v.push(Case { name: "topk_arguments", run: Box::new(topk_arguments) });
    v
}
