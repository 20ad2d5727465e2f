//! Property tests of the f64 reference of the vocabulary-parallel algorithm: per-shard partials,
//! their combination in shard order and the per-shard backward equal the unsharded reference for
//! any number of shards, shards of unequal size (down to one column), shards holding no target,
//! ignored rows and any temperature; and shards that do not tile the vocabulary are refused.
#![allow(clippy::needless_range_loop)]
use pref_kernels::token_logprobs::reference as tl_ref;
use pref_kernels::vocab_parallel::reference::{finalize, shard_backward, shard_partials};
use pref_kernels::vocab_parallel::VocabShard;
use pref_kernels::{LogitsLayout, TokenLogprobsConfig};
use proptest::prelude::*;

/// Logits `[n, v]`, targets (some ignored), and cut points splitting `[0, v)` into shards.
fn problem() -> impl Strategy<Value = (Vec<f32>, usize, usize, Vec<i64>, Vec<usize>, f32)> {
    (1usize..6, 1usize..48).prop_flat_map(|(n, v)| {
        (
            prop::collection::vec(-12.0f32..12.0, n * v),
            Just(n),
            Just(v),
            prop::collection::vec(prop_oneof![4 => 0..v as i64, 1 => Just(-100i64)], n),
            prop::collection::vec(1..v.max(2), 0..6),
            0.25f32..3.0,
        )
    })
}

fn shards_from(v: usize, mut cuts: Vec<usize>) -> Vec<VocabShard> {
    cuts.retain(|&c| c > 0 && c < v);
    cuts.sort_unstable();
    cuts.dedup();
    let mut b = vec![0];
    b.extend(cuts);
    b.push(v);
    b.windows(2).map(|w| VocabShard::new(w[0], w[1] - w[0], v).unwrap()).collect()
}

fn columns(x: &[f32], n: usize, v: usize, s: &VocabShard) -> Vec<f32> {
    (0..n).flat_map(|r| x[r * v + s.start..r * v + s.start + s.len].to_vec()).collect()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a.is_nan() && b.is_nan()) || (a - b).abs() <= tol * (1.0 + b.abs())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    #[test]
    fn sharded_forward_and_backward_equal_the_unsharded_reference((x, n, v, t, cuts, temp) in problem()) {
        let shards = shards_from(v, cuts);
        let cfg = TokenLogprobsConfig { temperature: temp, compute_entropy: true, ..Default::default() };
        let layout = LogitsLayout::contiguous(n, v);
        let want = tl_ref::forward(&x, layout, &t, &cfg).unwrap();
        let partials: Vec<_> = shards
            .iter()
            .map(|s| shard_partials(&columns(&x, n, v, s), LogitsLayout::contiguous(n, s.len), *s, &t, &cfg).unwrap())
            .collect();
        let got = finalize(&partials, &t, v, &cfg).unwrap();
        for r in 0..n {
            prop_assert!(close(got.logp[r], want.logp[r], 1e-12), "logp[{r}] {} vs {}", got.logp[r], want.logp[r]);
            prop_assert!(close(got.lse[r], want.lse[r], 1e-12), "lse[{r}]");
            prop_assert!(close(got.entropy[r], want.entropy[r], 1e-10), "entropy[{r}] {} vs {}", got.entropy[r], want.entropy[r]);
        }
        let gl: Vec<f32> = (0..n).map(|r| 0.3 - 0.17 * r as f32).collect();
        let ge: Vec<f32> = (0..n).map(|r| 0.05 * r as f32 - 0.1).collect();
        let want_g = tl_ref::backward_with_entropy(&x, layout, &t, &gl, &ge, &cfg).unwrap();
        for s in &shards {
            let cols = columns(&x, n, v, s);
            let g = shard_backward(&cols, LogitsLayout::contiguous(n, s.len), *s, &t, &got.lse, &gl, Some((&got.entropy, &ge)), &cfg).unwrap();
            for r in 0..n {
                for c in 0..s.len {
                    let (a, b) = (g[r * s.len + c], want_g[r * v + s.start + c]);
                    prop_assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "d[{r}, {}]: {a} vs {b}", s.start + c);
                }
            }
        }
    }

    #[test]
    fn the_result_does_not_depend_on_how_the_vocabulary_is_split((x, n, v, t, cuts, _temp) in problem()) {
        let cfg = TokenLogprobsConfig { compute_entropy: true, ..Default::default() };
        let run = |shards: Vec<VocabShard>| {
            let p: Vec<_> = shards
                .iter()
                .map(|s| shard_partials(&columns(&x, n, v, s), LogitsLayout::contiguous(n, s.len), *s, &t, &cfg).unwrap())
                .collect();
            finalize(&p, &t, v, &cfg).unwrap()
        };
        let (a, b) = (run(shards_from(v, vec![])), run(shards_from(v, cuts)));
        for r in 0..n {
            prop_assert!(close(a.logp[r], b.logp[r], 1e-12) && close(a.entropy[r], b.entropy[r], 1e-10));
        }
    }
}

#[test]
fn shards_that_do_not_tile_the_vocabulary_are_refused() {
    let (n, v) = (2usize, 10usize);
    let x: Vec<f32> = (0..n * v).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
    let t = [4i64, 8];
    let cfg = TokenLogprobsConfig::default();
    let part = |s: VocabShard| {
        shard_partials(&columns(&x, n, v, &s), LogitsLayout::contiguous(n, s.len), s, &t, &cfg).unwrap()
    };
    let sh = |a: usize, b: usize| VocabShard::new(a, b - a, v).unwrap();
    // Target 4 is held twice, then not at all.
    assert!(finalize(&[part(sh(0, 6)), part(sh(3, 10))], &t, v, &cfg).is_err());
    assert!(finalize(&[part(sh(0, 3)), part(sh(6, 10))], &t, v, &cfg).is_err());
    assert!(finalize(&[part(sh(0, 6)), part(sh(6, 10))], &t, v, &cfg).is_ok());
    // Out-of-range targets, empty or oversized shards, a mismatched layout.
    assert!(shard_partials(
        &columns(&x, n, v, &sh(0, 6)),
        LogitsLayout::contiguous(n, 6),
        sh(0, 6),
        &[4i64, 10],
        &cfg
    )
    .is_err());
    assert!(VocabShard::new(0, 0, v).is_err() && VocabShard::new(5, 6, v).is_err());
    assert!(shard_partials(&x, LogitsLayout::contiguous(n, v), sh(0, 6), &t, &cfg).is_err());
    assert!(finalize::<i64>(&[], &t, v, &cfg).is_err());
}

#[test]
fn even_shards_split_the_vocabulary_as_evenly_as_possible() {
    for (v, world) in [(10usize, 3usize), (128256, 8), (7, 7), (151936, 6)] {
        let shards: Vec<_> = (0..world).map(|r| VocabShard::even(v, world, r).unwrap()).collect();
        assert_eq!(shards[0].start, 0);
        for w in shards.windows(2) {
            assert_eq!(w[0].start + w[0].len, w[1].start);
            assert!(w[0].len >= w[1].len && w[0].len - w[1].len <= 1);
        }
        assert_eq!(shards.last().map(|s| s.start + s.len), Some(v));
    }
    assert!(VocabShard::even(3, 4, 0).is_err());
    assert!(VocabShard::even(10, 2, 2).is_err());
}

#[test]
fn extreme_rows_propagate_like_the_unsharded_reference() {
    let v = 6usize;
    let cfg = TokenLogprobsConfig { compute_entropy: true, ..Default::default() };
    let rows: [[f32; 6]; 4] = [
        [0.0, f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY, f32::NEG_INFINITY, f32::NEG_INFINITY], // one shard all -inf
        [0.0, 1.0, f32::NAN, 0.0, 1.0, 2.0],
        [0.0, 1.0, 2.0, f32::INFINITY, 0.0, 0.0],
        [80.0, -80.0, 0.0, 0.0, 79.0, 81.0],
    ];
    let x: Vec<f32> = rows.concat();
    let t = [0i64, 1, 2, 5];
    let n = rows.len();
    let want = tl_ref::forward(&x, LogitsLayout::contiguous(n, v), &t, &cfg).unwrap();
    let shards = [VocabShard::new(0, 3, v).unwrap(), VocabShard::new(3, 3, v).unwrap()];
    let p: Vec<_> = shards
        .iter()
        .map(|s| shard_partials(&columns(&x, n, v, s), LogitsLayout::contiguous(n, 3), *s, &t, &cfg).unwrap())
        .collect();
    let got = finalize(&p, &t, v, &cfg).unwrap();
    for r in 0..n {
        assert!(close(got.logp[r], want.logp[r], 1e-12), "row {r}: {} vs {}", got.logp[r], want.logp[r]);
        assert!(close(got.entropy[r], want.entropy[r], 1e-10), "row {r} entropy");
    }
}
