//! The f64 reference of the linear forms (hidden states · LM-head weight): equal to the token
//! log-probs reference on the same logits, gradients against finite differences, bad input.
use pref_kernels::linear_token_logprobs::reference::{backward, forward};
use pref_kernels::linear_token_logprobs::LinearShape;
use pref_kernels::token_logprobs::reference as tl_ref;
use pref_kernels::{LogitsLayout, TokenLogprobsConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[test]
fn forward_equals_token_logprobs_on_the_materialized_logits() {
    // Quarter-integer inputs: every logit is exact in f32, so both references see the same row.
    let mut r = StdRng::seed_from_u64(1);
    let s = LinearShape { n_rows: 6, hidden: 8, vocab: 29 };
    let q = |r: &mut StdRng| r.random_range(-8i32..=8) as f32 / 4.0;
    let hidden: Vec<f32> = (0..s.n_rows * s.hidden).map(|_| q(&mut r)).collect();
    let weight: Vec<f32> = (0..s.vocab * s.hidden).map(|_| q(&mut r)).collect();
    let bias: Vec<f32> = (0..s.vocab).map(|_| q(&mut r)).collect();
    let targets = [3i64, -100, 28, 0, 7, 11];
    let logits: Vec<f32> = (0..s.n_rows)
        .flat_map(|n| {
            let (hidden, weight, bias) = (&hidden, &weight, &bias);
            (0..s.vocab).map(move |v| {
                (0..s.hidden).map(|k| hidden[n * s.hidden + k] * weight[v * s.hidden + k]).sum::<f32>()
                    + bias[v]
            })
        })
        .collect();
    for temperature in [1.0f32, 0.6] {
        let cfg = TokenLogprobsConfig { temperature, ..Default::default() };
        let got = forward(&hidden, &weight, Some(&bias), s, &targets, &cfg).unwrap();
        let want =
            tl_ref::forward(&logits, LogitsLayout::contiguous(s.n_rows, s.vocab), &targets, &cfg).unwrap();
        for i in 0..s.n_rows {
            for (a, b) in
                [(got.logp[i], want.logp[i]), (got.lse[i], want.lse[i]), (got.entropy[i], want.entropy[i])]
            {
                assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "row {i}: {a} vs {b}");
            }
        }
        assert_eq!((got.logp[1], got.lse[1], got.entropy[1]), (0.0, 0.0, 0.0));
    }
}

fn fd(x: f32, h: f32, f: impl Fn(f32) -> f64) -> f64 {
    let (xp, xm) = (x + h, x - h);
    (f(xp) - f(xm)) / (xp as f64 - xm as f64)
}

#[test]
fn gradients_match_finite_differences() {
    let mut r = StdRng::seed_from_u64(2);
    let s = LinearShape { n_rows: 4, hidden: 5, vocab: 13 };
    let hidden: Vec<f32> = (0..s.n_rows * s.hidden).map(|_| r.random_range(-1.0f32..1.0)).collect();
    let weight: Vec<f32> = (0..s.vocab * s.hidden).map(|_| r.random_range(-1.0f32..1.0)).collect();
    let bias: Vec<f32> = (0..s.vocab).map(|_| r.random_range(-1.0f32..1.0)).collect();
    let targets = [2i32, 12, -100, 5];
    let (gl, ge) = ([0.7f32, -1.3, 0.4, 0.9], [0.25f32, -0.5, 2.0, 0.1]);
    let cfg = TokenLogprobsConfig { temperature: 0.7, ..Default::default() };
    let objective = |h: &[f32], w: &[f32], b: &[f32]| -> f64 {
        let f = forward(h, w, Some(b), s, &targets, &cfg).unwrap();
        (0..s.n_rows).map(|i| gl[i] as f64 * f.logp[i] + ge[i] as f64 * f.entropy[i]).sum()
    };
    let g = backward(&hidden, &weight, Some(&bias), s, &targets, &gl, Some(&ge), &cfg).unwrap();
    let close =
        |what: &str, a: f64, b: f64| assert!((a - b).abs() <= 1e-6 + 1e-4 * b.abs(), "{what}: {a} vs fd {b}");
    for i in 0..hidden.len() {
        let want = fd(hidden[i], 1e-3, |x| {
            let mut h = hidden.clone();
            h[i] = x;
            objective(&h, &weight, &bias)
        });
        close(&format!("d_hidden[{i}]"), g.d_hidden[i], want);
    }
    for i in 0..weight.len() {
        let want = fd(weight[i], 1e-3, |x| {
            let mut w = weight.clone();
            w[i] = x;
            objective(&hidden, &w, &bias)
        });
        close(&format!("d_weight[{i}]"), g.d_weight[i], want);
    }
    for i in 0..bias.len() {
        let want = fd(bias[i], 1e-3, |x| {
            let mut b = bias.clone();
            b[i] = x;
            objective(&hidden, &weight, &b)
        });
        close(&format!("d_bias[{i}]"), g.d_bias[i], want);
    }
    // The ignored row has no gradient.
    assert!(g.d_hidden[2 * s.hidden..3 * s.hidden].iter().all(|&x| x == 0.0));
}

#[test]
fn bad_input_is_refused() {
    let s = LinearShape { n_rows: 2, hidden: 3, vocab: 4 };
    let (h, w, b) = (vec![0.5f32; 6], vec![0.5f32; 12], vec![0.0f32; 4]);
    let cfg = TokenLogprobsConfig::default();
    let e = |h: &[f32], w: &[f32], b: Option<&[f32]>, s: LinearShape, t: &[i64]| {
        forward(h, w, b, s, t, &cfg).unwrap_err().to_string()
    };
    assert!(e(&h[1..], &w, None, s, &[0, 1]).contains("hidden"));
    assert!(e(&h, &w[1..], None, s, &[0, 1]).contains("weight"));
    assert!(e(&h, &w, Some(&b[1..]), s, &[0, 1]).contains("bias"));
    assert!(e(&h, &w, None, s, &[0]).contains("targets"));
    assert!(
        e(&h, &w, None, s, &[0, 4]).contains("out of range")
            || e(&h, &w, None, s, &[0, 4]).contains("target")
    );
    assert!(e(&h, &w, None, LinearShape { hidden: 0, ..s }, &[0, 1]).contains("shape"));
    assert!(e(&h, &w, None, LinearShape { n_rows: usize::MAX, ..s }, &[0, 1]).contains("i64::MAX"));
    let bad_t = TokenLogprobsConfig { temperature: 0.0, ..cfg };
    assert!(forward(&h, &w, None, s, &[0i64, 1], &bad_t).is_err());
    assert!(backward(&h, &w, None, s, &[0i64, 1], &[1.0], None, &cfg)
        .unwrap_err()
        .to_string()
        .contains("grad_logp"));
}
