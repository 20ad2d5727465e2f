//! The main job: runs every available op end to end on a synthetic batch, on the GPU when one is
//! usable and on the CPU reference otherwise, and prints results and timings.
//!
//! `cargo run --release --example end_to_end [-- --cpu] [-- --rows N --vocab V]`
use std::time::Instant;

use half::bf16;
use pref_kernels::token_logprobs::{reference, TokenLogprobsOutputs};
use pref_kernels::{Gpu, LogitsLayout, TokenLogprobsConfig};

struct Args {
    force_cpu: bool,
    rows: usize,
    vocab: usize,
}

fn parse_args() -> Args {
    let mut a = Args { force_cpu: false, rows: 0, vocab: 32000 };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        match argv[i].as_str() {
            "--cpu" => a.force_cpu = true,
            "--rows" => {
                i += 1;
                a.rows = argv[i].parse().expect("--rows N");
            }
            "--vocab" => {
                i += 1;
                a.vocab = argv[i].parse().expect("--vocab V");
            }
            other => panic!("unknown argument {other}"),
        }
        i += 1;
    }
    a
}

/// A synthetic batch: pseudo-random logits, targets with the first quarter ignored (prompt tokens).
fn synthetic(rows: usize, vocab: usize) -> (Vec<bf16>, Vec<i64>) {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let logits = (0..rows * vocab)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            bf16::from_f32(((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 10.0)
        })
        .collect();
    let targets = (0..rows as i64)
        .map(|i| if i < rows as i64 / 4 { -100 } else { (i * 7919) % vocab as i64 })
        .collect();
    (logits, targets)
}

fn main() -> pref_kernels::Result<()> {
    let args = parse_args();
    let gpu = if args.force_cpu {
        None
    } else {
        match Gpu::new(0) {
            Ok(g) => Some(g),
            Err(e) => {
                println!("no GPU ({e}); running the CPU reference path");
                None
            }
        }
    };
    let rows = if args.rows > 0 {
        args.rows
    } else if gpu.is_some() {
        16384
    } else {
        256
    };
    let vocab = args.vocab;
    let layout = LogitsLayout::contiguous(rows, vocab);
    let cfg = TokenLogprobsConfig { compute_entropy: true, ..Default::default() };
    let (logits, targets) = synthetic(rows, vocab);
    let grad_logp: Vec<f32> =
        (0..rows).map(|i| if targets[i] == -100 { 0.0 } else { -1.0 / rows as f32 }).collect();
    println!(
        "token log-probs: bf16 logits [{rows}, {vocab}], {} ignored rows, temperature {}",
        rows / 4,
        cfg.temperature
    );

    let (logp, entropy) = match &gpu {
        Some(gpu) => {
            println!("device: {gpu:?}");
            let s = gpu.context().default_stream();
            let d_logits = s.clone_htod(&logits)?;
            let d_targets = s.clone_htod(&targets)?;
            let mut d_logp = s.alloc_zeros::<f32>(rows)?;
            let mut d_lse = s.alloc_zeros::<f32>(rows)?;
            let mut d_entropy = s.alloc_zeros::<f32>(rows)?;
            let d_grad_logp = s.clone_htod(&grad_logp)?;
            let mut d_grad = s.alloc_zeros::<bf16>(rows * vocab)?;
            let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
            let mut timings = Vec::new();
            for _ in 0..5 {
                let e0 = s.record_event(flags)?;
                let out = TokenLogprobsOutputs {
                    logp: d_logp.as_view_mut(),
                    lse: d_lse.as_view_mut(),
                    entropy: Some(d_entropy.as_view_mut()),
                };
                gpu.token_logprobs_forward(&s, &d_logits, layout, &d_targets, out, &cfg)?;
                let e1 = s.record_event(flags)?;
                gpu.token_logprobs_backward(
                    &s,
                    &d_logits,
                    layout,
                    &d_targets,
                    &d_lse,
                    &d_grad_logp,
                    &mut d_grad,
                    vocab,
                    &cfg,
                )?;
                let e2 = s.record_event(flags)?;
                e2.synchronize()?;
                timings.push((e0.elapsed_ms(&e1)?, e1.elapsed_ms(&e2)?));
            }
            let (f, b) = timings[timings.len() / 2];
            let gb = (rows * vocab * 2) as f64 / 1e9;
            println!(
                "gpu forward  {f:.3} ms ({:.0} GB/s incl. the safe API's status read-back)",
                gb / (f as f64 / 1e3)
            );
            println!("gpu backward {b:.3} ms ({:.0} GB/s: 1 read + 1 write)", 2.0 * gb / (b as f64 / 1e3));
            (s.clone_dtoh(&d_logp)?, s.clone_dtoh(&d_entropy)?)
        }
        None => {
            let t0 = Instant::now();
            let r = reference::forward(&logits, layout, &targets, &cfg)?;
            let f = t0.elapsed();
            let t1 = Instant::now();
            let g = reference::backward(&logits, layout, &targets, &grad_logp, &cfg)?;
            let b = t1.elapsed();
            println!("cpu reference forward  {:.1} ms", f.as_secs_f64() * 1e3);
            println!(
                "cpu reference backward {:.1} ms (grad L1 norm {:.4})",
                b.as_secs_f64() * 1e3,
                g.iter().map(|v| v.abs()).sum::<f64>()
            );
            (r.logp.iter().map(|&v| v as f32).collect(), r.entropy.iter().map(|&v| v as f32).collect())
        }
    };
    let used: Vec<usize> = (0..rows).filter(|&i| targets[i] != -100).collect();
    let mean_logp = used.iter().map(|&i| logp[i] as f64).sum::<f64>() / used.len() as f64;
    let mean_entropy = used.iter().map(|&i| entropy[i] as f64).sum::<f64>() / used.len() as f64;
    println!(
        "mean token logp {mean_logp:.4}, mean entropy {mean_entropy:.4} (ln V = {:.4})",
        (vocab as f64).ln()
    );
    println!("first rows logp: {:?}", &logp[rows / 4..rows / 4 + 4]);
    Ok(())
}
