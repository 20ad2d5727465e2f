//! Token log-probs and their gradient on the GPU (or, without one, the kernels on the emulator),
//! checked against the f64 reference. `cargo run --example 01_token_logprobs`
use pref_kernels::token_logprobs::{reference, TokenLogprobsOutputs};
use pref_kernels::{Backend, Gpu, LogitsLayout, TokenLogprobsConfig};

fn main() -> pref_kernels::Result<()> {
    let gpu = Gpu::open(Backend::Auto, 0)?;
    let (n, v) = (6, 1000);
    let logits: Vec<half::bf16> =
        (0..n * v).map(|i| half::bf16::from_f32(((i * 37) % 101) as f32 / 9.0)).collect();
    let targets: Vec<i64> = vec![3, 17, -100, 999, 0, 512]; // -100: an ignored row (log-prob 0)
    let layout = LogitsLayout::contiguous(n, v);
    let cfg = TokenLogprobsConfig { temperature: 0.7, compute_entropy: true, ..Default::default() };

    let s = gpu.default_stream();
    let (d_logits, d_targets) = (s.clone_htod(&logits)?, s.clone_htod(&targets)?);
    let (mut logp, mut lse, mut entropy) = (s.alloc_zeros(n)?, s.alloc_zeros(n)?, s.alloc_zeros(n)?);
    let mut stats = s.alloc_zeros::<f32>(2 * n)?; // softmax statistics: what the backward reads
    let out = TokenLogprobsOutputs {
        logp: logp.as_view_mut(),
        lse: lse.as_view_mut(),
        entropy: Some(entropy.as_view_mut()),
        stats: Some(stats.as_view_mut()),
        log_sum_sq: None,
        mean_logits: None,
        is_top1: None,
    };
    gpu.token_logprobs_forward(&s, &d_logits, layout, &d_targets, out, &cfg)?;

    // d/dlogits of sum(logp): one read and one write of the logits, in place here.
    let grad_logp = s.clone_htod(&vec![1.0f32; n])?;
    let mut grad = d_logits;
    gpu.token_logprobs_backward_inplace(&s, &mut grad, layout, &d_targets, &stats, &grad_logp, &cfg)?;

    let want = reference::forward(&logits, layout, &targets, &cfg)?;
    let (got, got_h) = (s.clone_dtoh(&logp)?, s.clone_dtoh(&entropy)?);
    println!("backend: {}", gpu.backend().name());
    for r in 0..n {
        println!(
            "row {r}: logp {:>10.6} (f64 {:>10.6})  entropy {:>8.5} (f64 {:>8.5})",
            got[r], want.logp[r], got_h[r], want.entropy[r]
        );
    }
    let g = s.clone_dtoh(&grad)?;
    println!("d logp_0 / d logit_0[3] = {} (1 - p at the target)", g[3]);
    Ok(())
}
