//! Vocabulary-parallel log-probs (a tensor-parallel LM head) on one device: every shard's kernels
//! run separately, a host all-gather (concatenation in shard order) stands in for the collective,
//! and the results must equal the unsharded references and kernels: log-probs, lse, entropy,
//! d/dlogits per shard, and for the fused LM head d_weight / d_bias per shard and the sum of the
//! shards' partial d_hidden.
//!
//! Tolerances: as the token log-probs tests (logp, lse 2e-4 + 1e-5 |ref|; entropy 5e-4 + 1e-4
//! |ref|; d/dlogits rtol 2e-4 / 2e-3 / 1e-2 for f32 / f16 / bf16 with atol |g/T|·1e-6); the fused
//! head as its own tests (2e-5 f32, 3e-2 bf16, relative to the largest d_weight).
use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::Rng;

use crate::common::{assert_close, logits as random_logits, rng};
use crate::Case;
use pref_kernels::linear_token_logprobs::reference as lin_ref;
use pref_kernels::linear_token_logprobs::{LinearConfig, LinearGradViews, LinearHead, LinearShape};
use pref_kernels::token_logprobs::reference as tl_ref;
use pref_kernels::token_logprobs::{EntropyGrad, GradLogits, TokenLogprobsOutputs};
use pref_kernels::vocab_parallel::{reference as vp_ref, VocabShard, VP_STATS};
use pref_kernels::{DeviceBuffer, Error, Gpu, LogitElement, LogitsLayout, Stream, TokenLogprobsConfig};

/// `tp` shards of random, unequal sizes tiling `[0, vocab)`.
fn random_shards(r: &mut StdRng, vocab: usize, tp: usize) -> Vec<VocabShard> {
    let mut cuts: Vec<usize> = (0..tp - 1).map(|_| r.random_range(1..vocab)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut bounds = vec![0];
    bounds.extend(cuts);
    bounds.push(vocab);
    bounds.windows(2).map(|w| VocabShard::new(w[0], w[1] - w[0], vocab).unwrap()).collect()
}

/// Columns `[s.start, s.start + s.len)` of a row-major `[n, vocab]` matrix.
fn columns<T: Copy>(x: &[T], n: usize, vocab: usize, s: &VocabShard) -> Vec<T> {
    (0..n).flat_map(|r| x[r * vocab + s.start..r * vocab + s.start + s.len].iter().copied()).collect()
}

fn poisoned(s: &Stream, n: usize) -> DeviceBuffer<f32> {
    s.clone_htod(&vec![f32::NAN; n]).unwrap()
}

fn rtol_of<T: LogitElement>() -> f64 {
    match T::DTYPE {
        pref_kernels::DType::F32 => 2e-4,
        pref_kernels::DType::F16 => 2e-3,
        pref_kernels::DType::BF16 => 1e-2,
    }
}

/// The gathered `[n_shards, n, VP_STATS]` partials of per-shard `[n, VP_STATS]` blocks.
fn gather(blocks: &[Vec<f32>]) -> Vec<f32> {
    blocks.concat()
}

/// Finalize on the device, outputs poisoned first.
fn finalize(
    gpu: &Gpu,
    s: &Stream,
    gathered: &[f32],
    n_shards: usize,
    vocab: usize,
    targets: &DeviceBuffer<i64>,
    cfg: &TokenLogprobsConfig,
) -> pref_kernels::Result<Finalized> {
    let n = targets.len();
    let g = s.clone_htod(gathered).unwrap();
    let (mut logp, mut lse, mut ent) = (poisoned(s, n), poisoned(s, n), poisoned(s, n));
    let mut stats = poisoned(s, 2 * n);
    let out = TokenLogprobsOutputs {
        logp: logp.as_view_mut(),
        lse: lse.as_view_mut(),
        entropy: Some(ent.as_view_mut()),
        stats: Some(stats.as_view_mut()),
        log_sum_sq: None,
        mean_logits: None,
        is_top1: None,
    };
    gpu.vocab_parallel_finalize(s, &g.as_view(), n_shards, vocab, targets, out, cfg)?;
    Ok((
        s.clone_dtoh(&logp).unwrap(),
        s.clone_dtoh(&lse).unwrap(),
        s.clone_dtoh(&ent).unwrap(),
        s.clone_dtoh(&stats).unwrap(),
    ))
}

/// logp, lse, entropy and the softmax statistics of a finalize.
type Finalized = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

fn logits_parity_for<T: LogitElement>(gpu: &Gpu, seed: u64, vocab: usize, tp: usize) {
    let mut r = rng(seed, 1300 + vocab as u64 * 7 + tp as u64 + T::DTYPE as u64 * 1_000_003);
    let s = gpu.default_stream();
    let n = r.random_range(1..=if vocab > 4096 { 24 } else { 200 });
    let shards = random_shards(&mut r, vocab, tp);
    let host: Vec<T> = random_logits(&mut r, n * vocab).into_iter().map(T::from_f32).collect();
    // Targets only below the last shard's start half of the time, so that shard holds none.
    let hi = if r.random_bool(0.5) { shards.last().unwrap().start.max(1) } else { vocab };
    let targets: Vec<i64> =
        (0..n).map(|_| if r.random_ratio(1, 5) { -100 } else { r.random_range(0..hi as i64) }).collect();
    let cfg = TokenLogprobsConfig { temperature: 0.9, compute_entropy: true, ..Default::default() };
    let dt = s.clone_htod(&targets).unwrap();
    let what = format!("{} V {vocab} tp {}", T::DTYPE.name(), shards.len());

    // 1. Partials per shard (each against the f64 sharded reference).
    let mut blocks = Vec::new();
    for sh in &shards {
        let cols = columns(&host, n, vocab, sh);
        let layout = LogitsLayout::contiguous(n, sh.len);
        let d = s.clone_htod(&cols).unwrap();
        let mut part = poisoned(&s, n * VP_STATS);
        gpu.vocab_shard_partials(&s, &d, layout, *sh, &dt, &mut part.as_view_mut(), &cfg).unwrap();
        let got = s.clone_dtoh(&part).unwrap();
        let want = vp_ref::shard_partials(&cols, layout, *sh, &targets, &cfg).unwrap();
        for i in 0..n {
            for k in 0..VP_STATS {
                let w = want[i][k];
                assert_close(
                    &format!("{what} shard {sh:?} partial[{i}][{k}]"),
                    got[i * VP_STATS + k] as f64,
                    w,
                    2e-4 * sh.len as f64 / 1000.0 + 1e-5,
                    2e-5,
                );
            }
        }
        blocks.push(got);
    }
    // 2. Host all-gather, finalize, against the unsharded reference and kernel.
    let (logp, lse, ent, stats) =
        finalize(gpu, &s, &gather(&blocks), shards.len(), vocab, &dt, &cfg).unwrap();
    let layout = LogitsLayout::contiguous(n, vocab);
    let want = tl_ref::forward(&host, layout, &targets, &cfg).unwrap();
    for i in 0..n {
        assert_close(&format!("{what} logp[{i}]"), logp[i] as f64, want.logp[i], 2e-4, 1e-5);
        assert_close(&format!("{what} lse[{i}]"), lse[i] as f64, want.lse[i], 2e-4, 1e-5);
        assert_close(&format!("{what} entropy[{i}]"), ent[i] as f64, want.entropy[i], 5e-4, 1e-4);
    }
    let again = finalize(gpu, &s, &gather(&blocks), shards.len(), vocab, &dt, &cfg).unwrap();
    assert_eq!(bits(&again.0), bits(&logp), "{what}: finalize run to run");

    // 3. Backward per shard from the global softmax statistics / entropy, in place and separate.
    let gl: Vec<f32> = (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect();
    let ge: Vec<f32> = (0..n).map(|_| r.random_range(-0.5f32..0.5)).collect();
    let want_g = tl_ref::backward_with_entropy(&host, layout, &targets, &gl, &ge, &cfg).unwrap();
    let (dl, dgl, de, dge) = (
        s.clone_htod(&stats).unwrap(),
        s.clone_htod(&gl).unwrap(),
        s.clone_htod(&ent).unwrap(),
        s.clone_htod(&ge).unwrap(),
    );
    for (k, sh) in shards.iter().enumerate() {
        let cols = columns(&host, n, vocab, sh);
        let layout = LogitsLayout::contiguous(n, sh.len);
        let mut d = s.clone_htod(&cols).unwrap();
        let mut sep = s.clone_htod(&vec![T::from_f32(f32::NAN); n * sh.len]).unwrap();
        let in_place = k % 2 == 0;
        let grad = if in_place {
            GradLogits::InPlace
        } else {
            GradLogits::Separate { grad: sep.as_view_mut(), row_stride: sh.len }
        };
        let (ev, gev) = (de.as_view(), dge.as_view());
        let eg = EntropyGrad { entropy: &ev, grad_entropy: &gev };
        gpu.vocab_shard_backward(&s, &mut d.as_view_mut(), layout, *sh, &dt, &dl, &dgl, Some(eg), grad, &cfg)
            .unwrap();
        let got = if in_place { s.clone_dtoh(&d).unwrap() } else { s.clone_dtoh(&sep).unwrap() };
        for i in 0..n {
            let scale = (gl[i].abs() + ge[i].abs() * (1.0 + ent[i].abs())) as f64 / 0.9;
            for v in 0..sh.len {
                let (g, w) = (got[i * sh.len + v].to_f64(), want_g[i * vocab + sh.start + v]);
                assert_close(
                    &format!("{what} shard {k} dlogits[{i}, {}]", sh.start + v),
                    g,
                    w,
                    scale * 1e-5 + 1e-12,
                    rtol_of::<T>(),
                );
            }
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn vocab_parallel_logits_parity(gpu: &Gpu, seed: u64) {
    for (vocab, tp) in [(7usize, 3usize), (300, 1), (300, 2), (1000, 4), (5000, 3)] {
        logits_parity_for::<f32>(gpu, seed, vocab, tp);
    }
    logits_parity_for::<f16>(gpu, seed, 3000, 2);
    logits_parity_for::<bf16>(gpu, seed, 2500, 4);
}

/// Shards that overlap at a target, or leave it uncovered, are reported and give NaN rows;
/// targets outside the vocabulary likewise; every other row is still right.
fn vocab_parallel_bad_shards(gpu: &Gpu, seed: u64) {
    let mut r = rng(seed, 1390);
    let s = gpu.default_stream();
    let (n, vocab) = (6usize, 40usize);
    let host: Vec<f32> = random_logits(&mut r, n * vocab);
    let targets: Vec<i64> = vec![3, 25, -100, 39, 20, 0];
    let dt = s.clone_htod(&targets).unwrap();
    let cfg = TokenLogprobsConfig { compute_entropy: true, ..Default::default() };
    let blocks_of = |shards: &[VocabShard], cfg: &TokenLogprobsConfig| -> Vec<Vec<f32>> {
        shards
            .iter()
            .map(|sh| {
                let d = s.clone_htod(&columns(&host, n, vocab, sh)).unwrap();
                let mut part = poisoned(&s, n * VP_STATS);
                let layout = LogitsLayout::contiguous(n, sh.len);
                gpu.vocab_shard_partials(&s, &d, layout, *sh, &dt, &mut part.as_view_mut(), cfg).unwrap();
                s.clone_dtoh(&part).unwrap()
            })
            .collect()
    };
    let run = |shards: &[VocabShard]| {
        finalize(gpu, &s, &gather(&blocks_of(shards, &cfg)), shards.len(), vocab, &dt, &cfg)
    };
    let sh = |a, b| VocabShard::new(a, b - a, vocab).unwrap();
    // Overlap [18, 22) holds target 20 twice; a gap [24, 30) misses target 25.
    for (bad, bad_rows) in [(vec![sh(0, 22), sh(18, 40)], vec![4]), (vec![sh(0, 24), sh(30, 40)], vec![1])] {
        let err = run(&bad).unwrap_err();
        assert!(matches!(&err, Error::DeviceCheck(m) if m.contains("tile the vocabulary")), "{err}");
        let unchecked = TokenLogprobsConfig { check_targets: false, ..cfg };
        let blocks: Vec<Vec<f32>> = bad
            .iter()
            .map(|x| {
                let d = s.clone_htod(&columns(&host, n, vocab, x)).unwrap();
                let mut part = poisoned(&s, n * VP_STATS);
                let layout = LogitsLayout::contiguous(n, x.len);
                gpu.vocab_shard_partials(&s, &d, layout, *x, &dt, &mut part.as_view_mut(), &unchecked)
                    .unwrap();
                s.clone_dtoh(&part).unwrap()
            })
            .collect();
        let (logp, _, _, _) = finalize(gpu, &s, &gather(&blocks), bad.len(), vocab, &dt, &unchecked).unwrap();
        for (i, lp) in logp.iter().enumerate() {
            assert_eq!(lp.is_nan(), bad_rows.contains(&i), "row {i} of {bad:?}: {lp}");
        }
    }
    let good = [sh(0, 13), sh(13, 40)];
    assert!(run(&good).is_ok());
    // Tilings checked from the descriptors (what the collective paths do once per group): the
    // gap and the overlap above, and ones that no target would reveal.
    assert!(VocabShard::check_tiling(&[sh(13, 40), sh(0, 13)]).is_ok());
    for bad in [vec![sh(0, 22), sh(18, 40)], vec![sh(0, 24), sh(30, 40)], vec![sh(0, 13)], vec![sh(1, 40)]] {
        assert!(VocabShard::check_tiling(&bad).is_err(), "{bad:?}");
    }
    // Partials made without entropy, a finalize that asks for it: NaN entropy (the partials'
    // entropy slot is NaN), not a plausible ln S; logp and lse are unaffected.
    let no_entropy = TokenLogprobsConfig { compute_entropy: false, ..cfg };
    let (logp, _, ent, _) =
        finalize(gpu, &s, &gather(&blocks_of(&good, &no_entropy)), 2, vocab, &dt, &cfg).unwrap();
    let (want_logp, _, _, _) = run(&good).unwrap();
    for i in 0..n {
        if targets[i] != -100 {
            assert!(ent[i].is_nan(), "row {i}: entropy {} from partials without entropy", ent[i]);
            assert_eq!(logp[i].to_bits(), want_logp[i].to_bits(), "row {i}: logp");
        }
    }
    // A target outside [0, V) is bad on every shard.
    let dt_bad = s.clone_htod(&[3i64, 40, -100, 1, 2, 3]).unwrap();
    let d = s.clone_htod(&columns(&host, n, vocab, &good[0])).unwrap();
    let mut part = poisoned(&s, n * VP_STATS);
    let err = gpu
        .vocab_shard_partials(
            &s,
            &d,
            LogitsLayout::contiguous(n, 13),
            good[0],
            &dt_bad,
            &mut part.as_view_mut(),
            &cfg,
        )
        .unwrap_err();
    assert!(matches!(err, Error::DeviceCheck(_)), "{err}");
    // Host-side checks: a shard outside its vocabulary, a layout of the wrong width, partials of
    // the wrong length, a gathered block count that does not match.
    assert!(VocabShard::new(30, 11, 40).is_err());
    assert!(VocabShard::new(0, 0, 40).is_err());
    let mut part_short = poisoned(&s, n * VP_STATS - 1);
    assert!(gpu
        .vocab_shard_partials(
            &s,
            &d,
            LogitsLayout::contiguous(n, 12),
            good[0],
            &dt,
            &mut part.as_view_mut(),
            &cfg
        )
        .is_err());
    assert!(gpu
        .vocab_shard_partials(
            &s,
            &d,
            LogitsLayout::contiguous(n, 13),
            good[0],
            &dt,
            &mut part_short.as_view_mut(),
            &cfg
        )
        .is_err());
    assert!(finalize(gpu, &s, &vec![0.0; n * VP_STATS * 2], 3, vocab, &dt, &cfg).is_err());
}

/// The fused LM head by shards: per shard `weight[v0 .. v0 + Vs]` and its bias slice; partials →
/// host all-gather → finalize equals the unsharded linear reference; the shards' d_weight and
/// d_bias concatenated, and their partial d_hidden summed (the trainer's all-reduce), equal the
/// unsharded gradients.
fn linear_parity_for<T: LogitElement>(gpu: &Gpu, seed: u64, tp: usize, tol: f64) {
    let mut r = rng(seed, 1400 + tp as u64 + T::DTYPE as u64 * 31);
    let s = gpu.default_stream();
    let (n, h, vocab) = (29usize, 20usize, 130usize);
    let sc = 1.0 / (h as f32).sqrt();
    let hidden: Vec<T> = (0..n * h).map(|_| T::from_f32(r.random_range(-2.0f32..2.0))).collect();
    let weight: Vec<T> = (0..vocab * h).map(|_| T::from_f32(r.random_range(-2.0f32..2.0) * sc)).collect();
    let bias: Vec<f32> = (0..vocab).map(|_| r.random_range(-0.5f32..0.5)).collect();
    let targets: Vec<i64> =
        (0..n).map(|_| if r.random_ratio(1, 4) { -100 } else { r.random_range(0..vocab as i64) }).collect();
    let gl: Vec<f32> = (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect();
    let ge: Vec<f32> = (0..n).map(|_| r.random_range(-0.5f32..0.5)).collect();
    let token = TokenLogprobsConfig { temperature: 0.8, compute_entropy: true, ..Default::default() };
    let shape = LinearShape { n_rows: n, hidden: h, vocab };
    let want = lin_ref::forward(&hidden, &weight, Some(&bias), shape, &targets, &token).unwrap();
    let want_g =
        lin_ref::backward(&hidden, &weight, Some(&bias), shape, &targets, &gl, Some(&ge), &token).unwrap();
    let shards = random_shards(&mut r, vocab, tp);
    let (dh, dt) = (s.clone_htod(&hidden).unwrap(), s.clone_htod(&targets).unwrap());
    // Two chunks' worth of rows per budget, so the loop runs more than once.
    let cfg_for = |len: usize| LinearConfig {
        token,
        workspace_bytes: pref_kernels::linear_token_logprobs::workspace_bytes_per_row(
            &LinearShape { n_rows: n, hidden: h, vocab: len },
            T::DTYPE,
        ) * 11,
    };
    let mut blocks = Vec::new();
    let mut bufs = Vec::new();
    for sh in &shards {
        let w = s.clone_htod(&weight[sh.start * h..(sh.start + sh.len) * h]).unwrap();
        let b = s.clone_htod(&bias[sh.start..sh.start + sh.len]).unwrap();
        let head = LinearHead {
            hidden: dh.as_view(),
            weight: w.as_view(),
            bias: Some(b.as_view()),
            shape: LinearShape { n_rows: n, hidden: h, vocab: sh.len },
        };
        let mut part = poisoned(&s, n * VP_STATS);
        let run = gpu
            .linear_shard_partials_into(&s, &head, *sh, &dt.as_view(), part.as_view_mut(), &cfg_for(sh.len))
            .unwrap();
        assert!(run.n_chunks >= 2, "{run:?}");
        blocks.push(s.clone_dtoh(&part).unwrap());
        bufs.push((w, b));
    }
    let (logp, lse, ent, stats) =
        finalize(gpu, &s, &gather(&blocks), shards.len(), vocab, &dt, &token).unwrap();
    for i in 0..n {
        assert_close(&format!("linear tp {tp} logp[{i}]"), logp[i] as f64, want.logp[i], tol, tol);
        assert_close(&format!("linear tp {tp} lse[{i}]"), lse[i] as f64, want.lse[i], tol, tol);
        assert_close(&format!("linear tp {tp} entropy[{i}]"), ent[i] as f64, want.entropy[i], tol, tol);
    }
    let (dl, dgl, de, dge) = (
        s.clone_htod(&stats).unwrap(),
        s.clone_htod(&gl).unwrap(),
        s.clone_htod(&ent).unwrap(),
        s.clone_htod(&ge).unwrap(),
    );
    let mut d_hidden_sum = vec![0f64; n * h];
    let scale = want_g.d_weight.iter().fold(0f64, |a, x| a.max(x.abs())).max(1e-3);
    for (sh, (w, b)) in shards.iter().zip(&bufs) {
        let head = LinearHead {
            hidden: dh.as_view(),
            weight: w.as_view(),
            bias: Some(b.as_view()),
            shape: LinearShape { n_rows: n, hidden: h, vocab: sh.len },
        };
        let mut g_h = s.clone_htod(&vec![T::from_f32(f32::NAN); n * h]).unwrap();
        let mut g_w = poisoned(&s, sh.len * h);
        let mut g_b = poisoned(&s, sh.len);
        let grads = LinearGradViews {
            d_hidden: g_h.as_view_mut(),
            d_weight: g_w.as_view_mut(),
            d_bias: Some(g_b.as_view_mut()),
        };
        let (ev, gev) = (de.as_view(), dge.as_view());
        let cfg = cfg_for(sh.len);
        let cfg = LinearConfig { token: TokenLogprobsConfig { compute_entropy: false, ..cfg.token }, ..cfg };
        gpu.linear_shard_backward_into(
            &s,
            &head,
            *sh,
            &dt.as_view(),
            &dl.as_view(),
            &dgl.as_view(),
            Some(EntropyGrad { entropy: &ev, grad_entropy: &gev }),
            grads,
            &cfg,
        )
        .unwrap();
        let (gw, gb) = (s.clone_dtoh(&g_w).unwrap(), s.clone_dtoh(&g_b).unwrap());
        for (i, &g) in gw.iter().enumerate() {
            assert_close(
                &format!("linear tp {tp} d_weight[{}]", sh.start * h + i),
                g as f64,
                want_g.d_weight[sh.start * h + i],
                tol * scale,
                tol,
            );
        }
        for (i, &g) in gb.iter().enumerate() {
            assert_close(
                &format!("linear tp {tp} d_bias[{}]", sh.start + i),
                g as f64,
                want_g.d_bias[sh.start + i],
                tol * scale,
                tol,
            );
        }
        for (acc, x) in d_hidden_sum.iter_mut().zip(s.clone_dtoh(&g_h).unwrap()) {
            *acc += x.to_f64();
        }
    }
    for (i, (&a, &b)) in d_hidden_sum.iter().zip(&want_g.d_hidden).enumerate() {
        assert_close(&format!("linear tp {tp} Σ d_hidden[{i}]"), a, b, tol * scale * tp as f64, tol);
    }
}

fn vocab_parallel_linear_parity(gpu: &Gpu, seed: u64) {
    for tp in [1, 2, 4] {
        linear_parity_for::<f32>(gpu, seed, tp, 2e-5);
    }
    linear_parity_for::<bf16>(gpu, seed, 3, 3e-2);
}

/// -inf shards, NaN and +inf logits and large magnitudes: the sharded path gives what the
/// unsharded kernel gives (NaN exactly where it gives NaN, values within tolerance elsewhere).
fn vocab_parallel_extreme_rows(gpu: &Gpu, _seed: u64) {
    let s = gpu.default_stream();
    let (ni, pi) = (f32::NEG_INFINITY, f32::INFINITY);
    let rows: [[f32; 6]; 6] = [
        [0.0, ni, 1.0, ni, ni, ni],
        [0.0, 1.0, f32::NAN, 0.0, 1.0, 2.0],
        [0.0, 1.0, 2.0, pi, 0.0, 0.0],
        [80.0, -80.0, 0.0, 0.0, 79.0, 81.0],
        [ni, ni, ni, ni, ni, ni],
        // Shard maxima 2.4e38 apart: s · (m - c) overflows to -inf where the weight is 0.
        [-1.2e38, -1.2e38, -1.2e38, 1.2e38, 0.0, -1.2e38],
    ];
    let (n, vocab) = (rows.len(), 6usize);
    let host: Vec<f32> = rows.concat();
    let targets: Vec<i64> = vec![0, 1, 2, 5, 3, 0];
    let dt = s.clone_htod(&targets).unwrap();
    let cfg = TokenLogprobsConfig { compute_entropy: true, ..Default::default() };
    let want = tl_ref::forward(&host, LogitsLayout::contiguous(n, vocab), &targets, &cfg).unwrap();
    let shards = [VocabShard::new(0, 3, vocab).unwrap(), VocabShard::new(3, 3, vocab).unwrap()];
    let blocks: Vec<Vec<f32>> = shards
        .iter()
        .map(|sh| {
            let d = s.clone_htod(&columns(&host, n, vocab, sh)).unwrap();
            let mut part = poisoned(&s, n * VP_STATS);
            gpu.vocab_shard_partials(
                &s,
                &d,
                LogitsLayout::contiguous(n, 3),
                *sh,
                &dt,
                &mut part.as_view_mut(),
                &cfg,
            )
            .unwrap();
            s.clone_dtoh(&part).unwrap()
        })
        .collect();
    let (logp, lse, ent, _) = finalize(gpu, &s, &gather(&blocks), 2, vocab, &dt, &cfg).unwrap();
    for i in 0..n {
        assert_close(&format!("extreme row {i} logp"), logp[i] as f64, want.logp[i], 2e-4, 1e-5);
        if !want.lse[i].is_infinite() {
            assert_close(&format!("extreme row {i} lse"), lse[i] as f64, want.lse[i], 2e-4, 1e-5);
        } else {
            assert_eq!(lse[i] as f64, want.lse[i], "extreme row {i} lse");
        }
        assert_close(&format!("extreme row {i} entropy"), ent[i] as f64, want.entropy[i], 5e-4, 1e-4);
    }
}

/// The NCCL path (feature `nccl`): one rank per visible GPU, each in its own thread with its own
/// communicator; the forward from logits and from hidden states, and the fused head's backward
/// with d_hidden all-reduced, against the unsharded references. One GPU gives tp = 1.
#[cfg(feature = "nccl")]
fn vocab_parallel_nccl(gpu: &Gpu, seed: u64) {
    use pref_kernels::cudarc::nccl::safe::{Comm, Id};
    use pref_kernels::vocab_parallel::nccl::VocabParallelComm;
    let world = pref_kernels::cudarc::driver::CudaContext::device_count().unwrap() as usize;
    let _ = gpu;
    let id = Id::new().unwrap();
    let (n, h, vocab) = (33usize, 16usize, 257usize);
    let mut r = rng(seed, 1500);
    let logits: Vec<f32> = random_logits(&mut r, n * vocab);
    let hidden: Vec<f32> = (0..n * h).map(|_| r.random_range(-1.0f32..1.0)).collect();
    let weight: Vec<f32> = (0..vocab * h).map(|_| r.random_range(-1.0f32..1.0)).collect();
    let targets: Vec<i64> =
        (0..n).map(|_| if r.random_ratio(1, 4) { -100 } else { r.random_range(0..vocab as i64) }).collect();
    let gl: Vec<f32> = (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect();
    let cfg = TokenLogprobsConfig { compute_entropy: true, ..Default::default() };
    let want = tl_ref::forward(&logits, LogitsLayout::contiguous(n, vocab), &targets, &cfg).unwrap();
    let shape = LinearShape { n_rows: n, hidden: h, vocab };
    let want_lin = lin_ref::forward(&hidden, &weight, None, shape, &targets, &cfg).unwrap();
    let want_g = lin_ref::backward(&hidden, &weight, None, shape, &targets, &gl, None, &cfg).unwrap();
    std::thread::scope(|sc| {
        for rank in 0..world {
            let (logits, hidden, weight, targets, gl, want, want_lin, want_g) =
                (&logits, &hidden, &weight, &targets, &gl, &want, &want_lin, &want_g);
            sc.spawn(move || {
                let g = Gpu::new(rank).unwrap();
                let stream = g.cuda_context().unwrap().new_stream().unwrap();
                let comm = VocabParallelComm::even(Comm::from_rank(stream, rank, world, id).unwrap(), vocab)
                    .unwrap();
                let (sh, s) = (comm.shard(), comm.stream());
                let dt = s.clone_htod(targets).unwrap();
                let d = s.clone_htod(&columns(logits, n, vocab, &sh)).unwrap();
                let (mut lp, mut ls, mut en) = (poisoned(s, n), poisoned(s, n), poisoned(s, n));
                let out = TokenLogprobsOutputs {
                    logp: lp.as_view_mut(),
                    lse: ls.as_view_mut(),
                    entropy: Some(en.as_view_mut()),
                    stats: None,
                    log_sum_sq: None,
                    mean_logits: None,
                    is_top1: None,
                };
                comm.token_logprobs(&g, &d, LogitsLayout::contiguous(n, sh.len), &dt, out, &cfg).unwrap();
                let got = s.clone_dtoh(&lp).unwrap();
                for i in 0..n {
                    assert_close(
                        &format!("nccl rank {rank} logp[{i}]"),
                        got[i] as f64,
                        want.logp[i],
                        2e-4,
                        1e-5,
                    );
                }
                let dh = s.clone_htod(hidden).unwrap();
                let w = s.clone_htod(&weight[sh.start * h..(sh.start + sh.len) * h]).unwrap();
                let head = LinearHead {
                    hidden: dh.as_view(),
                    weight: w.as_view(),
                    bias: None,
                    shape: LinearShape { n_rows: n, hidden: h, vocab: sh.len },
                };
                let lcfg = LinearConfig { token: cfg, ..Default::default() };
                let mut st = poisoned(s, 2 * n);
                let out = TokenLogprobsOutputs {
                    logp: lp.as_view_mut(),
                    lse: ls.as_view_mut(),
                    entropy: Some(en.as_view_mut()),
                    stats: Some(st.as_view_mut()),
                    log_sum_sq: None,
                    mean_logits: None,
                    is_top1: None,
                };
                comm.linear_token_logprobs(&g, &head, &dt.as_view(), out, &lcfg).unwrap();
                let got = s.clone_dtoh(&lp).unwrap();
                for i in 0..n {
                    assert_close(
                        &format!("nccl rank {rank} linear logp[{i}]"),
                        got[i] as f64,
                        want_lin.logp[i],
                        2e-5,
                        2e-5,
                    );
                }
                let dgl = s.clone_htod(gl).unwrap();
                let mut g_h = poisoned(s, n * h);
                let mut g_w = poisoned(s, sh.len * h);
                let grads = LinearGradViews {
                    d_hidden: g_h.as_view_mut(),
                    d_weight: g_w.as_view_mut(),
                    d_bias: None,
                };
                let bcfg =
                    LinearConfig { token: TokenLogprobsConfig { compute_entropy: false, ..cfg }, ..lcfg };
                comm.linear_backward(
                    &g,
                    &head,
                    &dt.as_view(),
                    &st.as_view(),
                    &dgl.as_view(),
                    None,
                    grads,
                    &bcfg,
                )
                .unwrap();
                for (i, x) in s.clone_dtoh(&g_h).unwrap().iter().enumerate() {
                    assert_close(
                        &format!("nccl rank {rank} d_hidden[{i}]"),
                        *x as f64,
                        want_g.d_hidden[i],
                        1e-4,
                        1e-4,
                    );
                }
            });
        }
    });
}

/// The DPO step on top of the sharded log-probs: partials per shard, host all-gather, finalize,
/// the preference loss on the (identical) log-probs, then each shard's backward with the loss's
/// dL/dlogp; loss, metrics and the shards' d/dlogits equal the unsharded one-call step's.
fn vocab_parallel_dpo_step(gpu: &Gpu, seed: u64) {
    use pref_kernels::preference_loss::{DevicePairs, LossConfig};
    use pref_kernels::seq_reduce::{DeviceSeqs, DeviceTokens};
    use pref_kernels::step::StepBatch;
    let s = gpu.default_stream();
    let mut r = rng(seed, 1600);
    let (n_seqs, seq_len, vocab) = (4usize, 9usize, 600usize);
    let n = n_seqs * seq_len;
    let layout = LogitsLayout::contiguous(n, vocab);
    let host: Vec<f32> = random_logits(&mut r, n * vocab);
    let targets: Vec<i64> =
        (0..n).map(|t| if t % seq_len < 3 { -100 } else { r.random_range(0..vocab as i64) }).collect();
    let mask: Vec<u8> = targets.iter().map(|&t| u8::from(t != -100)).collect();
    let ref_logp: Vec<f32> = (0..n).map(|_| r.random_range(-9.0f32..-1.0)).collect();
    let (dt, dm, dr) =
        (s.clone_htod(&targets).unwrap(), s.clone_htod(&mask).unwrap(), s.clone_htod(&ref_logp).unwrap());
    let token = TokenLogprobsConfig::default();
    let loss_cfg = LossConfig::dpo(0.1);
    // One process, the whole vocabulary, one call.
    let mut logits = s.clone_htod(&host).unwrap();
    let mut full_grad = poisoned(&s, n * vocab);
    let batch = StepBatch {
        layout,
        targets: dt.as_view(),
        mask: Some(dm.as_view()),
        weights: None,
        ref_logp: Some(dr.as_view()),
        ref_seq: None,
        seqs: DeviceSeqs::Padded { n_seqs, seq_len },
        pairs: DevicePairs::FirstHalfChosen,
    };
    let grad = GradLogits::Separate { grad: full_grad.as_view_mut(), row_stride: vocab };
    let want = gpu.preference_step(&s, &mut logits.as_view_mut(), &batch, &token, &loss_cfg, grad).unwrap();
    let want_grad = s.clone_dtoh(&full_grad).unwrap();
    // Three unequal shards.
    let shards = [
        VocabShard::new(0, 250, vocab).unwrap(),
        VocabShard::new(250, 101, vocab).unwrap(),
        VocabShard::new(351, 249, vocab).unwrap(),
    ];
    let cfg = TokenLogprobsConfig { compute_entropy: true, ..token };
    let blocks: Vec<Vec<f32>> = shards
        .iter()
        .map(|sh| {
            let d = s.clone_htod(&columns(&host, n, vocab, sh)).unwrap();
            let mut part = poisoned(&s, n * VP_STATS);
            gpu.vocab_shard_partials(
                &s,
                &d,
                LogitsLayout::contiguous(n, sh.len),
                *sh,
                &dt,
                &mut part.as_view_mut(),
                &cfg,
            )
            .unwrap();
            s.clone_dtoh(&part).unwrap()
        })
        .collect();
    let (logp, _, _, stats) = finalize(gpu, &s, &gather(&blocks), shards.len(), vocab, &dt, &cfg).unwrap();
    let (dlogp, dlse) = (s.clone_htod(&logp).unwrap(), s.clone_htod(&stats).unwrap());
    let tokens = DeviceTokens {
        logp: dlogp.as_view(),
        mask: Some(dm.as_view()),
        weights: None,
        ref_logp: Some(dr.as_view()),
    };
    let mut grad_logp = poisoned(&s, n);
    let got = gpu
        .preference_loss(
            &s,
            &tokens,
            &DeviceSeqs::Padded { n_seqs, seq_len },
            &DevicePairs::FirstHalfChosen,
            None,
            &loss_cfg,
            &mut grad_logp.as_view_mut(),
        )
        .unwrap();
    assert_close("sharded DPO loss", got.loss as f64, want.loss.loss as f64, 1e-5, 1e-5);
    for (i, (a, b)) in got.metrics.iter().zip(&want.loss.metrics).enumerate() {
        assert_close(&format!("sharded DPO metric {i}"), *a as f64, *b as f64, 1e-4, 1e-4);
    }
    for sh in &shards {
        let mut d = s.clone_htod(&columns(&host, n, vocab, sh)).unwrap();
        let cfg_b = TokenLogprobsConfig { compute_entropy: false, ..token };
        gpu.vocab_shard_backward(
            &s,
            &mut d.as_view_mut(),
            LogitsLayout::contiguous(n, sh.len),
            *sh,
            &dt,
            &dlse,
            &grad_logp,
            None,
            GradLogits::InPlace,
            &cfg_b,
        )
        .unwrap();
        let got = s.clone_dtoh(&d).unwrap();
        for i in 0..n {
            for v in 0..sh.len {
                let w = want_grad[i * vocab + sh.start + v] as f64;
                assert_close(
                    &format!("sharded DPO d/dlogits[{i}, {}]", sh.start + v),
                    got[i * sh.len + v] as f64,
                    w,
                    1e-7,
                    1e-4,
                );
            }
        }
    }
}

pub fn cases() -> Vec<Case> {
    vec![
        Case { name: "vocab_parallel_logits_parity", run: Box::new(vocab_parallel_logits_parity) },
        Case { name: "vocab_parallel_bad_shards", run: Box::new(vocab_parallel_bad_shards) },
        Case { name: "vocab_parallel_extreme_rows", run: Box::new(vocab_parallel_extreme_rows) },
        Case { name: "vocab_parallel_linear_parity", run: Box::new(vocab_parallel_linear_parity) },
        Case { name: "vocab_parallel_dpo_step", run: Box::new(vocab_parallel_dpo_step) },
        #[cfg(feature = "nccl")]
        Case { name: "vocab_parallel_nccl", run: Box::new(vocab_parallel_nccl) },
    ]
}
