//! Property tests of the per-sequence reduction reference.
#![allow(clippy::needless_range_loop)] // tests index several parallel arrays by position
mod common;

use common::{batch, Batch};
use pref_kernels::seq_reduce::reference::{reduce, reduce_backward};
use pref_kernels::seq_reduce::{ReduceMode, SeqLayout, TokenInputs};
use proptest::prelude::*;

const MODES: [ReduceMode; 4] =
    [ReduceMode::Sum, ReduceMode::Mean, ReduceMode::WeightedSum, ReduceMode::WeightedMean];

fn tokens(b: &Batch) -> TokenInputs<'_> {
    TokenInputs { logp: &b.logp, mask: Some(&b.mask), weights: Some(&b.weights), ref_logp: None }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn backward_is_the_exact_derivative(b in batch(1usize..6, 9), d in prop::collection::vec(-2.0f32..2.0, 6)) {
        let layout = SeqLayout::Packed { cu_seqlens: &b.cu_seqlens };
        let d = &d[..b.n_seqs()];
        for mode in MODES {
            let g = reduce_backward(&tokens(&b), &layout, mode, d).unwrap();
            // The scores are linear in logp: a finite difference of f = sum_s d_s score_s is exact
            // up to rounding.
            for t in 0..b.logp.len() {
                let (mut p, mut m) = (b.clone(), b.clone());
                p.logp[t] += 0.125;
                m.logp[t] -= 0.125;
                let f = |x: &Batch| -> f64 {
                    reduce(&tokens(x), &SeqLayout::Packed { cu_seqlens: &x.cu_seqlens }, mode).unwrap()
                        .iter().zip(d).map(|(s, &ds)| s * ds as f64).sum()
                };
                let fd = (f(&p) - f(&m)) / (p.logp[t] as f64 - m.logp[t] as f64);
                prop_assert!((fd - g[t]).abs() < 1e-9 * (1.0 + g[t].abs()), "{mode:?} token {t}: {fd} vs {}", g[t]);
            }
        }
    }

    #[test]
    fn packed_and_padded_layouts_agree(b in batch(1usize..6, 9)) {
        let (p, l) = b.padded();
        for mode in MODES {
            let a = reduce(&tokens(&b), &SeqLayout::Packed { cu_seqlens: &b.cu_seqlens }, mode).unwrap();
            let c = reduce(&tokens(&p), &SeqLayout::Padded { n_seqs: b.n_seqs(), seq_len: l }, mode).unwrap();
            prop_assert_eq!(a, c);
        }
    }

    #[test]
    fn empty_sequences_score_zero_and_get_no_gradient(b in batch(1usize..6, 4)) {
        let mut b = b;
        // Mask out sequence 0 entirely.
        for t in b.cu_seqlens[0] as usize..b.cu_seqlens[1] as usize { b.mask[t] = 0; }
        let layout = SeqLayout::Packed { cu_seqlens: &b.cu_seqlens };
        for mode in MODES {
            let s = reduce(&tokens(&b), &layout, mode).unwrap();
            prop_assert_eq!(s[0], 0.0);
            prop_assert!(s.iter().all(|v| v.is_finite()));
            let g = reduce_backward(&tokens(&b), &layout, mode, &vec![1.0; b.n_seqs()]).unwrap();
            for t in 0..b.logp.len() {
                if b.mask[t] == 0 { prop_assert_eq!(g[t], 0.0); }
            }
        }
    }
}

#[test]
fn hand_checked_scores() {
    let logp = [-1.0f32, -2.0, -4.0, -8.0];
    let mask = [1u8, 1, 0, 1];
    let weights = [1.0f32, 3.0, 5.0, 2.0];
    let cu = [0i32, 3, 3, 4];
    let tok = TokenInputs { logp: &logp, mask: Some(&mask), weights: Some(&weights), ref_logp: None };
    let l = SeqLayout::Packed { cu_seqlens: &cu };
    assert_eq!(reduce(&tok, &l, ReduceMode::Sum).unwrap(), [-3.0, 0.0, -8.0]);
    assert_eq!(reduce(&tok, &l, ReduceMode::Mean).unwrap(), [-1.5, 0.0, -8.0]);
    assert_eq!(reduce(&tok, &l, ReduceMode::WeightedSum).unwrap(), [-7.0, 0.0, -16.0]);
    assert_eq!(reduce(&tok, &l, ReduceMode::WeightedMean).unwrap(), [-1.75, 0.0, -8.0]);
    // Tokens outside every sequence get zero gradient.
    let g =
        reduce_backward(&tok, &SeqLayout::Packed { cu_seqlens: &[0, 2] }, ReduceMode::Sum, &[3.0]).unwrap();
    assert_eq!(g, [3.0, 3.0, 0.0, 0.0]);
}

#[test]
fn bad_layouts_are_errors() {
    let logp = [-1.0f32; 4];
    let tok = TokenInputs { logp: &logp, mask: None, weights: None, ref_logp: None };
    let e = |cu: &[i32]| {
        reduce(&tok, &SeqLayout::Packed { cu_seqlens: cu }, ReduceMode::Sum).unwrap_err().to_string()
    };
    assert!(e(&[0, 3, 2]).contains("non-decreasing"));
    assert!(e(&[0, 5]).contains("exceeds n_tokens"));
    assert!(e(&[-1, 2]).contains("cu_seqlens"));
    let e =
        reduce(&tok, &SeqLayout::Padded { n_seqs: 3, seq_len: 2 }, ReduceMode::Sum).unwrap_err().to_string();
    assert!(e.contains("seq_len"));
    let short = [1u8; 3];
    let tok = TokenInputs { mask: Some(&short), ..tok };
    assert!(reduce(&tok, &SeqLayout::Padded { n_seqs: 1, seq_len: 2 }, ReduceMode::Sum)
        .unwrap_err()
        .to_string()
        .contains("mask"));
}
