//! The GRPO family with TRL 1.16's defaults (`dapo`, ε 0.2, β 0: no KL term): one
//! group of 3 completions of one prompt, off-policy ratios, an entropy bonus; loss, TRL's metrics
//! and dL/dlogp, dL/dH against the f64 reference. `cargo run --example 03_grpo_loss`
use pref_kernels::grpo::reference::{grpo_loss, GrpoTokens};
use pref_kernels::grpo::{DeviceGrpoInputs, GrpoConfig, GRPO_METRIC_NAMES};
use pref_kernels::seq_reduce::{DeviceSeqs, SeqLayout};
use pref_kernels::{Backend, Gpu};

fn main() -> pref_kernels::Result<()> {
    let gpu = Gpu::open(Backend::Auto, 0)?;
    let cu: Vec<i32> = vec![0, 4, 9, 11]; // three completions, packed: 4, 5 and 2 tokens
    let n = 11;
    let logp: Vec<f32> = (0..n).map(|i| -0.1 - 0.3 * ((i * 3) % 7) as f32).collect();
    let old: Vec<f32> = logp.iter().enumerate().map(|(i, l)| l + 0.05 * (i as f32 - 5.0)).collect();
    let entropy: Vec<f32> = (0..n).map(|i| 0.5 + 0.2 * (i % 5) as f32).collect();
    let advantages = vec![1.2f32, -0.3, -0.9]; // group-normalized rewards, one per completion
    let cfg = GrpoConfig { entropy_coef: 0.01, ..GrpoConfig::trl() };

    let s = gpu.default_stream();
    let up = |v: &[f32]| s.clone_htod(v);
    let (d_logp, d_old, d_h, d_adv) = (up(&logp)?, up(&old)?, up(&entropy)?, up(&advantages)?);
    let d_cu = s.clone_htod(&cu)?;
    let inputs = DeviceGrpoInputs {
        logp: d_logp.as_view(),
        old_logp: Some(d_old.as_view()),
        sampling_logp: None,
        ref_logp: None,
        mask: None,
        is_weights: None,
        entropy: Some(d_h.as_view()),
        advantages: d_adv.as_view(),
    };
    let (mut g, mut gh) = (s.alloc_zeros::<f32>(n)?, s.alloc_zeros::<f32>(n)?);
    let seqs = DeviceSeqs::Packed { cu_seqlens: d_cu.as_view() };
    let out = gpu.grpo_loss(&s, &inputs, &seqs, &cfg, &mut g.as_view_mut(), Some(&mut gh.as_view_mut()))?;

    let host = GrpoTokens {
        logp: &logp,
        old_logp: Some(&old),
        sampling_logp: None,
        ref_logp: None,
        mask: None,
        is_weights: None,
        entropy: Some(&entropy),
    };
    let want = grpo_loss(&host, &SeqLayout::Packed { cu_seqlens: &cu }, &advantages, &cfg)?;
    println!("backend: {}", gpu.backend().name());
    for (k, name) in GRPO_METRIC_NAMES.iter().enumerate() {
        println!("{name:<22} {:>12.6}  (f64 {:>12.6})", out.metrics[k], want.metrics[k]);
    }
    println!("dL/dlogp {:?}", s.clone_dtoh(&g)?);
    Ok(())
}
