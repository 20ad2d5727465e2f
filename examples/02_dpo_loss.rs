//! A DPO loss (TRL's `sigmoid`, β 0.1) on per-token log-probs: loss, TRL's metrics and every
//! token's gradient in one call, checked against the f64 reference. `cargo run --example 02_dpo_loss`
use pref_kernels::preference_loss::reference::forward_backward;
use pref_kernels::preference_loss::{DevicePairs, LossConfig, Pairs, METRIC_NAMES};
use pref_kernels::seq_reduce::{DeviceSeqs, DeviceTokens, SeqLayout, TokenInputs};
use pref_kernels::{Backend, Gpu};

fn main() -> pref_kernels::Result<()> {
    let gpu = Gpu::open(Backend::Auto, 0)?;
    // 2 pairs, padded rows of 5 tokens: sequences 0, 1 chosen, 2, 3 rejected (TRL's batch order).
    let (n_seqs, seq_len) = (4, 5);
    let n = n_seqs * seq_len;
    let logp: Vec<f32> = (0..n).map(|i| -0.2 - 0.13 * ((i * 7) % 11) as f32).collect();
    let ref_logp: Vec<f32> = (0..n).map(|i| -0.25 - 0.12 * ((i * 5) % 11) as f32).collect();
    let mask: Vec<u8> = (0..n).map(|i| u8::from(i % seq_len >= 2)).collect(); // prompt: 2 tokens
    let cfg = LossConfig::dpo(0.1);

    let s = gpu.default_stream();
    let (d_logp, d_ref, d_mask) = (s.clone_htod(&logp)?, s.clone_htod(&ref_logp)?, s.clone_htod(&mask)?);
    let tokens = DeviceTokens {
        logp: d_logp.as_view(),
        mask: Some(d_mask.as_view()),
        weights: None,
        ref_logp: Some(d_ref.as_view()),
    };
    let seqs = DeviceSeqs::Padded { n_seqs, seq_len };
    let mut grad = s.alloc_zeros::<f32>(n)?;
    let out = gpu.preference_loss(
        &s,
        &tokens,
        &seqs,
        &DevicePairs::FirstHalfChosen,
        None,
        &cfg,
        &mut grad.as_view_mut(),
    )?;

    let host = TokenInputs { logp: &logp, mask: Some(&mask), weights: None, ref_logp: Some(&ref_logp) };
    let want =
        forward_backward(&host, &SeqLayout::Padded { n_seqs, seq_len }, &Pairs::FirstHalfChosen, None, &cfg)?;
    println!("backend: {}", gpu.backend().name());
    for (k, name) in METRIC_NAMES.iter().enumerate().take(8) {
        println!("{name:<20} {:>12.6}  (f64 {:>12.6})", out.metrics[k], want.metrics[k]);
    }
    let g = s.clone_dtoh(&grad)?;
    println!("dL/dlogp, first chosen sequence: {:?}", &g[..seq_len]);
    Ok(())
}
