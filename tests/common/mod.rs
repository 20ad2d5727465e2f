//! Shared generators for the CPU reference tests: random packed preference batches.
#![allow(dead_code)]
use proptest::prelude::*;

/// A packed batch in host memory.
#[derive(Debug, Clone)]
pub struct Batch {
    pub logp: Vec<f32>,
    pub mask: Vec<u8>,
    pub weights: Vec<f32>,
    pub ref_logp: Vec<f32>,
    pub cu_seqlens: Vec<i32>,
}

impl Batch {
    pub fn n_seqs(&self) -> usize {
        self.cu_seqlens.len() - 1
    }

    /// The same batch in a padded [S, L] layout (L = longest sequence, pad tokens masked).
    pub fn padded(&self) -> (Batch, usize) {
        let s = self.n_seqs();
        let l =
            (0..s).map(|i| (self.cu_seqlens[i + 1] - self.cu_seqlens[i]) as usize).max().unwrap_or(0).max(1);
        let mut p = Batch {
            logp: vec![-0.5; s * l],
            mask: vec![0; s * l],
            weights: vec![7.0; s * l],
            ref_logp: vec![-0.25; s * l],
            cu_seqlens: (0..=s as i32).map(|i| i * l as i32).collect(),
        };
        for i in 0..s {
            let a = self.cu_seqlens[i] as usize;
            for (k, t) in (a..self.cu_seqlens[i + 1] as usize).enumerate() {
                let d = i * l + k;
                p.logp[d] = self.logp[t];
                p.mask[d] = self.mask[t];
                p.weights[d] = self.weights[t];
                p.ref_logp[d] = self.ref_logp[t];
            }
        }
        (p, l)
    }
}

/// Random packed batches of `n_seqs` sequences (lengths 0..=max_len, so empty and length-1
/// sequences occur), mask density ~75%, weights in [0.5, 1.5], log-probs in [-6, -0.02].
pub fn batch(n_seqs: impl Strategy<Value = usize>, max_len: usize) -> impl Strategy<Value = Batch> {
    n_seqs.prop_flat_map(move |s| prop::collection::vec(0..=max_len, s)).prop_flat_map(|lens| {
        let t: usize = lens.iter().sum();
        let mut cu = vec![0i32];
        for l in &lens {
            cu.push(cu.last().unwrap() + *l as i32);
        }
        (
            prop::collection::vec(-6.0f32..-0.02, t),
            prop::collection::vec(prop_oneof![3 => Just(1u8), 1 => Just(0u8)], t),
            prop::collection::vec(0.5f32..1.5, t),
            prop::collection::vec(-6.0f32..-0.02, t),
            Just(cu),
        )
            .prop_map(|(logp, mask, weights, ref_logp, cu_seqlens)| Batch {
                logp,
                mask,
                weights,
                ref_logp,
                cu_seqlens,
            })
    })
}
