//! The main job: runs every op end to end on a synthetic preference batch, on the GPU when one is
//! usable and otherwise on the emulator (the same CUDA kernels executed on the CPU with
//! memcheck/racecheck/initcheck/synccheck), prints which backend ran and the largest difference of
//! every output against the f64 reference, then (on a GPU) timings:
//! token log-probs (forward, backward, entropy), per-sequence reductions, and the whole DPO and
//! TAB-PO steps (logits → logp → sequence scores → loss → d/dlogits) with per-stage timings, and
//! shared-prefix group attention (one prompt shared by G responses) forward and backward, and a
//! GRPO group: one prompt shared by G sampled responses through the shared-prefix attention
//! (forward and backward) and the GRPO loss step from logits, with group advantages, and the DPO
//! step from hidden states + LM-head weight (the fused LM head: no `[N, V]` logits tensor), on a
//! GPU also at M = 4096, H = 4096, V = 128256 with its TFLOP/s and workspace, and the same step
//! with the LM head split over 4 vocabulary shards (a tensor-parallel head, the ranks simulated
//! on one device, the all-gather by the host) against the unsharded step.
//!
//! `cargo run --release --example end_to_end [-- --cpu] [--pairs P --seq-len L --vocab V]`
//! (`--cpu`: the f64 reference alone; `PREF_KERNELS_BACKEND=cuda|emulator` forces a backend).
use std::time::Instant;

use half::bf16;
use pref_kernels::grpo::reference::{grpo_loss as grpo_ref, GrpoTokens};
use pref_kernels::grpo::{group_advantages, Groups, GrpoConfig, ScaleRewards, GRPO_METRIC_NAMES};
use pref_kernels::linear_token_logprobs::{
    reference as lin_ref, workspace_bytes_per_row, LinearConfig, LinearHead, LinearShape,
};
use pref_kernels::preference_loss::{reference as loss_ref, DevicePairs, LossConfig, Pairs, METRIC_NAMES};
use pref_kernels::seq_reduce::{
    reference as reduce_ref, DeviceSeqs, DeviceTokens, ReduceMode, SeqLayout, TokenInputs,
};
use pref_kernels::shared_prefix_attention::{
    reference as attn_ref, AttnSaved, AttnShape, PrefixGroup, SharedPrefixLayout,
};
use pref_kernels::step::{GradLogits, GrpoStepBatch, LinearStepBatch, StepBatch};
use pref_kernels::token_logprobs::{reference as tl_ref, TokenLogprobsOutputs};
use pref_kernels::vocab_parallel::{VocabShard, VP_STATS};
use pref_kernels::{Backend, BackendKind, Gpu, LogitsLayout, TokenLogprobsConfig};

struct Args {
    force_cpu: bool,
    pairs: usize,
    seq_len: usize,
    vocab: usize,
}

fn parse_args() -> Args {
    let mut a = Args { force_cpu: false, pairs: 0, seq_len: 0, vocab: 0 };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> usize {
        argv.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{} needs a number", argv[i]))
    };
    let mut i = 0;
    while i < argv.len() {
        match argv[i].as_str() {
            "--cpu" => a.force_cpu = true,
            "--pairs" => a.pairs = num(i),
            "--seq-len" => a.seq_len = num(i),
            "--vocab" => a.vocab = num(i),
            other => panic!("unknown argument {other} (use --cpu, --pairs, --seq-len, --vocab)"),
        }
        i += if argv[i] == "--cpu" { 1 } else { 2 };
    }
    a
}

/// A synthetic DPO batch: 2P sequences (first half chosen) of L tokens each; the first quarter of
/// each sequence is prompt (ignored target, masked). Reference log-probs are the policy's logits
/// perturbed, TAB-PO weights are 1 with some tokens up-weighted.
struct Synthetic {
    logits: Vec<bf16>,
    targets: Vec<i64>,
    mask: Vec<u8>,
    weights: Vec<f32>,
    ref_logp: Vec<f32>,
}

fn synthetic(n_seqs: usize, seq_len: usize, vocab: usize) -> Synthetic {
    let n = n_seqs * seq_len;
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    let logits = (0..n * vocab).map(|_| bf16::from_f32((next() - 0.5) * 10.0)).collect();
    let targets: Vec<i64> = (0..n)
        .map(|t| if t % seq_len < seq_len / 4 { -100 } else { (next() * vocab as f32) as i64 % vocab as i64 })
        .collect();
    let mask = targets.iter().map(|&t| u8::from(t != -100)).collect();
    let weights = (0..n).map(|_| if next() < 0.2 { 1.2 } else { 1.0 }).collect();
    let ref_logp = (0..n).map(|_| -(vocab as f32).ln() - 1.5 + next()).collect();
    Synthetic { logits, targets, mask, weights, ref_logp }
}

fn print_metrics(name: &str, metrics: &[f64]) {
    println!("  {name}:");
    for (k, n) in METRIC_NAMES.iter().enumerate() {
        println!("    {n:<20} {:>12.6}", metrics[k]);
    }
}

fn main() -> pref_kernels::Result<()> {
    let args = parse_args();
    let device = if args.force_cpu {
        None
    } else {
        match Gpu::open(Backend::Auto, 0) {
            Ok(g) => Some(g),
            Err(e) => {
                println!("no backend available ({e}); running the CPU reference path");
                None
            }
        }
    };
    if let Some(d) = &device {
        println!("backend: {} ({d:?})", d.backend().name());
        verify_against_reference(d)?;
        grpo_group(d)?;
        linear_head(d)?;
        vocab_parallel_head(d)?;
    }
    let gpu = device.filter(|d| d.backend() == BackendKind::Cuda);
    // GPU default: the DPO batch (8 pairs x 1024 tokens, V = 128256); CPU: a small one.
    let on_gpu = gpu.is_some();
    let pairs = if args.pairs > 0 {
        args.pairs
    } else if on_gpu {
        8
    } else {
        4
    };
    let seq_len = if args.seq_len > 0 {
        args.seq_len
    } else if on_gpu {
        1024
    } else {
        64
    };
    let vocab = if args.vocab > 0 {
        args.vocab
    } else if on_gpu {
        128256
    } else {
        32000
    };
    let n_seqs = 2 * pairs;
    let n = n_seqs * seq_len;
    let layout = LogitsLayout::contiguous(n, vocab);
    let token_cfg = TokenLogprobsConfig::default();
    let data = synthetic(n_seqs, seq_len, vocab);
    let configs = [
        ("DPO (sigmoid, beta 0.1)", LossConfig::dpo(0.1)),
        ("TAB-PO (official defaults)", LossConfig::tabpo()),
    ];
    println!(
        "synthetic batch: {pairs} pairs x {seq_len} tokens ({n} tokens, {} prompt tokens masked), bf16 logits V = {vocab} ({:.2} GB)",
        n / 4,
        (n * vocab * 2) as f64 / 1e9
    );

    match &gpu {
        Some(gpu) => {
            println!("device: {gpu:?}");
            let s = gpu.default_stream();
            let logits0 = s.clone_htod(&data.logits)?;
            let targets = s.clone_htod(&data.targets)?;
            let mask = s.clone_htod(&data.mask)?;
            let weights = s.clone_htod(&data.weights)?;
            let ref_logp = s.clone_htod(&data.ref_logp)?;
            let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
            let cs = s.cuda().expect("CUDA backend");
            let gb = (n * vocab * 2) as f64 / 1e9;

            // The bandwidth floor of this run: a 2 GiB device-to-device copy (read + write), median of 5.
            let copy_bw = {
                let elems = 1usize << 30;
                let src = s.alloc_zeros::<bf16>(elems)?;
                let mut dst = s.alloc_zeros::<bf16>(elems)?;
                let mut ms = Vec::new();
                for _ in 0..6 {
                    let e0 = cs.record_event(flags)?;
                    s.memcpy_dtod(&src, &mut dst)?;
                    let e1 = cs.record_event(flags)?;
                    e1.synchronize()?;
                    ms.push(e0.elapsed_ms(&e1)?);
                }
                ms.remove(0); // warm-up
                ms.sort_by(|a, b| a.total_cmp(b));
                let bw = 2.0 * 2.0 * elems as f64 / 1e9 / (ms[ms.len() / 2] as f64 / 1e3);
                println!("device-to-device copy (2 GiB, read + write): {bw:.0} GB/s (the floor below)");
                bw
            };
            // Token log-probs alone (forward with entropy, backward out of place): the floor the
            // whole step is compared with.
            let mut logp = s.alloc_zeros::<f32>(n)?;
            let mut lse = s.alloc_zeros::<f32>(n)?;
            let mut stats = s.alloc_zeros::<f32>(2 * n)?;
            let mut entropy = s.alloc_zeros::<f32>(n)?;
            let mut grad = s.alloc_zeros::<bf16>(n * vocab)?;
            let ones = s.clone_htod(&vec![1.0f32; n])?;
            let quiet = TokenLogprobsConfig { check_targets: false, ..token_cfg };
            let mut fb = Vec::new();
            for _ in 0..7 {
                let e0 = cs.record_event(flags)?;
                let out = TokenLogprobsOutputs {
                    logp: logp.as_view_mut(),
                    lse: lse.as_view_mut(),
                    entropy: None,
                    stats: Some(stats.as_view_mut()),
                    log_sum_sq: None,
                    mean_logits: None,
                    is_top1: None,
                };
                gpu.token_logprobs_forward(&s, &logits0, layout, &targets, out, &quiet)?;
                let e1 = cs.record_event(flags)?;
                gpu.token_logprobs_backward(
                    &s, &logits0, layout, &targets, &stats, &ones, &mut grad, vocab, &quiet,
                )?;
                let e2 = cs.record_event(flags)?;
                e2.synchronize()?;
                fb.push((e0.elapsed_ms(&e1)?, e1.elapsed_ms(&e2)?));
            }
            fb.sort_by(|a, b| (a.0 + a.1).total_cmp(&(b.0 + b.1)));
            let (f, b) = fb[fb.len() / 2];
            let (fw_bw, bw_bw) = (gb / (f as f64 / 1e3), 2.0 * gb / (b as f64 / 1e3));
            println!(
                "token log-probs: forward {f:.3} ms ({fw_bw:.0} GB/s, {:.0}% of copy), backward {b:.3} ms ({bw_bw:.0} GB/s, {:.0}% of copy), fwd+bwd {:.3} ms",
                100.0 * fw_bw / copy_bw,
                100.0 * bw_bw / copy_bw,
                f + b
            );
            let with_entropy = TokenLogprobsConfig { compute_entropy: true, ..quiet };
            let out = TokenLogprobsOutputs {
                logp: logp.as_view_mut(),
                lse: lse.as_view_mut(),
                entropy: Some(entropy.as_view_mut()),
                stats: None,
                log_sum_sq: None,
                mean_logits: None,
                is_top1: None,
            };
            gpu.token_logprobs_forward(&s, &logits0, layout, &targets, out, &with_entropy)?;
            let (lp, ent) = (s.clone_dtoh(&logp)?, s.clone_dtoh(&entropy)?);
            let used: Vec<usize> = (0..n).filter(|&t| data.mask[t] == 1).collect();
            println!(
                "  mean token logp {:.4}, mean entropy {:.4} (ln V = {:.4})",
                used.iter().map(|&t| lp[t] as f64).sum::<f64>() / used.len() as f64,
                used.iter().map(|&t| ent[t] as f64).sum::<f64>() / used.len() as f64,
                (vocab as f64).ln()
            );

            for (name, cfg) in &configs {
                let mut times = Vec::new();
                let mut last = None;
                for _ in 0..5 {
                    let mut logits = s.clone_dtod(&logits0)?;
                    let batch = StepBatch {
                        layout,
                        targets: targets.as_view(),
                        mask: Some(mask.as_view()),
                        weights: Some(weights.as_view()),
                        ref_logp: Some(ref_logp.as_view()),
                        ref_seq: None,
                        seqs: DeviceSeqs::Padded { n_seqs, seq_len },
                        pairs: DevicePairs::FirstHalfChosen,
                    };
                    s.synchronize()?;
                    let t0 = Instant::now();
                    let e0 = cs.record_event(flags)?;
                    let out = gpu.preference_step(
                        &s,
                        &mut logits.as_view_mut(),
                        &batch,
                        &token_cfg,
                        cfg,
                        GradLogits::InPlace,
                    )?;
                    let e1 = cs.record_event(flags)?;
                    e1.synchronize()?;
                    times.push((e0.elapsed_ms(&e1)?, t0.elapsed().as_secs_f64() * 1e3));
                    last = Some(out);
                }
                times.sort_by(|a, b| a.0.total_cmp(&b.0));
                let (dev, wall) = times[times.len() / 2];
                let out = last.unwrap();
                // The loss stage alone, on the step's per-token log-probs.
                let tokens = DeviceTokens {
                    logp: out.logp.slice(0..n),
                    mask: Some(mask.as_view()),
                    weights: Some(weights.as_view()),
                    ref_logp: Some(ref_logp.as_view()),
                };
                let mut g = s.alloc_zeros::<f32>(n)?;
                let seqs = DeviceSeqs::Padded { n_seqs, seq_len };
                let mut loss_ms = Vec::new();
                for _ in 0..5 {
                    let e0 = cs.record_event(flags)?;
                    gpu.preference_loss(
                        &s,
                        &tokens,
                        &seqs,
                        &DevicePairs::FirstHalfChosen,
                        None,
                        cfg,
                        &mut g.as_view_mut(),
                    )?;
                    let e1 = cs.record_event(flags)?;
                    e1.synchronize()?;
                    loss_ms.push(e0.elapsed_ms(&e1)?);
                }
                loss_ms.sort_by(|a, b| a.total_cmp(b));
                println!(
                    "  loss stage alone (3 launches + metrics read-back): {:.3} ms",
                    loss_ms[loss_ms.len() / 2]
                );
                println!("{name}: whole step (in place) {dev:.3} ms device, {wall:.3} ms wall incl. result read-back; {:.2}x token log-probs fwd+bwd", dev / (f + b));
                let m: Vec<f64> = out.loss.metrics.iter().map(|&v| v as f64).collect();
                print_metrics(name, &m);
            }
        }
        None => {
            let t0 = Instant::now();
            let fwd = tl_ref::forward(
                &data.logits,
                layout,
                &data.targets,
                &TokenLogprobsConfig { compute_entropy: true, ..token_cfg },
            )?;
            let t_fwd = t0.elapsed();
            let logp: Vec<f32> = fwd.logp.iter().map(|&v| v as f32).collect();
            let used: Vec<usize> = (0..n).filter(|&t| data.mask[t] == 1).collect();
            println!(
                "token log-probs (cpu reference): forward {:.1} ms; mean logp {:.4}, mean entropy {:.4}",
                t_fwd.as_secs_f64() * 1e3,
                used.iter().map(|&t| fwd.logp[t]).sum::<f64>() / used.len() as f64,
                used.iter().map(|&t| fwd.entropy[t]).sum::<f64>() / used.len() as f64
            );
            let seqs = SeqLayout::Padded { n_seqs, seq_len };
            let tokens = TokenInputs {
                logp: &logp,
                mask: Some(&data.mask),
                weights: Some(&data.weights),
                ref_logp: Some(&data.ref_logp),
            };
            let t1 = Instant::now();
            let sums = reduce_ref::reduce(&tokens, &seqs, ReduceMode::Sum)?;
            println!(
                "per-sequence sums (cpu reference, {:.3} ms): {:?}",
                t1.elapsed().as_secs_f64() * 1e3,
                &sums[..4.min(sums.len())]
            );
            for (name, cfg) in &configs {
                let t2 = Instant::now();
                let r = loss_ref::forward_backward(&tokens, &seqs, &Pairs::FirstHalfChosen, None, cfg)?;
                let t_loss = t2.elapsed();
                let g32: Vec<f32> = r.grad_logp.iter().map(|&v| v as f32).collect();
                let t3 = Instant::now();
                let dlogits = tl_ref::backward(&data.logits, layout, &data.targets, &g32, &token_cfg)?;
                let t_bwd = t3.elapsed();
                println!(
                    "{name}: loss {:.6}; stages (cpu reference): logp forward {:.1} ms, loss {:.3} ms, d/dlogits {:.1} ms (|d/dlogits|_1 = {:.4e})",
                    r.loss,
                    t_fwd.as_secs_f64() * 1e3,
                    t_loss.as_secs_f64() * 1e3,
                    t_bwd.as_secs_f64() * 1e3,
                    dlogits.iter().map(|v| v.abs()).sum::<f64>()
                );
                print_metrics(name, &r.metrics);
            }
        }
    }
    attention(gpu.as_ref())?;
    Ok(())
}

/// `n` bf16 values uniform in [-1.5, 1.5) from a xorshift state.
fn random_bf16(n: usize, st: &mut u64) -> Vec<bf16> {
    (0..n)
        .map(|_| {
            *st ^= *st << 13;
            *st ^= *st >> 7;
            *st ^= *st << 17;
            bf16::from_f32(((*st >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0)
        })
        .collect()
}

fn max_diff(got: impl IntoIterator<Item = f64>, want: impl IntoIterator<Item = f64>) -> f64 {
    got.into_iter().zip(want).fold(0.0, |m, (g, w)| {
        if g.is_nan() || w.is_nan() {
            f64::NAN
        } else {
            m.max((g - w).abs())
        }
    })
}

/// Every op on `gpu` (either backend) on a small batch, compared with the f64 reference: prints
/// the largest absolute difference of each output.
fn verify_against_reference(gpu: &Gpu) -> pref_kernels::Result<()> {
    let (pairs, seq_len, vocab) = (2, 48, 32003);
    let n_seqs = 2 * pairs;
    let n = n_seqs * seq_len;
    let layout = LogitsLayout::contiguous(n, vocab);
    let data = synthetic(n_seqs, seq_len, vocab);
    let s = gpu.default_stream();
    let t0 = Instant::now();
    println!(
        "verifying the kernels on the {} backend against the f64 reference: {pairs} pairs x {seq_len} tokens, V = {vocab} (bf16)",
        gpu.backend().name()
    );
    // Token log-probs with entropy, and the backward out of place.
    let cfg = TokenLogprobsConfig { compute_entropy: true, ..Default::default() };
    let logits = s.clone_htod(&data.logits)?;
    let targets = s.clone_htod(&data.targets)?;
    let (mut logp, mut lse, mut ent) =
        (s.alloc_zeros::<f32>(n)?, s.alloc_zeros::<f32>(n)?, s.alloc_zeros::<f32>(n)?);
    let mut stats = s.alloc_zeros::<f32>(2 * n)?;
    let out = TokenLogprobsOutputs {
        logp: logp.as_view_mut(),
        lse: lse.as_view_mut(),
        entropy: Some(ent.as_view_mut()),
        stats: Some(stats.as_view_mut()),
        log_sum_sq: None,
        mean_logits: None,
        is_top1: None,
    };
    gpu.token_logprobs_forward(&s, &logits, layout, &targets, out, &cfg)?;
    let want = tl_ref::forward(&data.logits, layout, &data.targets, &cfg)?;
    let f = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
    let (lp, ls, en) = (f(s.clone_dtoh(&logp)?), f(s.clone_dtoh(&lse)?), f(s.clone_dtoh(&ent)?));
    println!(
        "  token log-probs: max |diff| logp {:.2e}, lse {:.2e}, entropy {:.2e}",
        max_diff(lp.iter().copied(), want.logp.iter().copied()),
        max_diff(ls.iter().copied(), want.lse.iter().copied()),
        max_diff(en.iter().copied(), want.entropy.iter().copied())
    );
    let grad_logp: Vec<f32> = (0..n).map(|i| ((i % 7) as f32 - 3.0) * 0.25).collect();
    let g_dev = s.clone_htod(&grad_logp)?;
    let mut grad = s.alloc_zeros::<bf16>(n * vocab)?;
    gpu.token_logprobs_backward(&s, &logits, layout, &targets, &stats, &g_dev, &mut grad, vocab, &cfg)?;
    let want_g = tl_ref::backward(&data.logits, layout, &data.targets, &grad_logp, &cfg)?;
    let got_g = s.clone_dtoh(&grad)?;
    println!(
        "  token log-probs backward: max |diff| d/dlogits {:.2e} (bf16 output)",
        max_diff(got_g.iter().map(|v| v.to_f64()), want_g.iter().copied())
    );
    // The whole step (DPO and TAB-PO), in place, against the reference chain on the same inputs.
    let (mask, weights, ref_logp) =
        (s.clone_htod(&data.mask)?, s.clone_htod(&data.weights)?, s.clone_htod(&data.ref_logp)?);
    for (name, loss_cfg) in [("DPO", LossConfig::dpo(0.1)), ("TAB-PO", LossConfig::tabpo())] {
        let mut work = s.clone_htod(&data.logits)?;
        let batch = StepBatch {
            layout,
            targets: targets.as_view(),
            mask: Some(mask.as_view()),
            weights: Some(weights.as_view()),
            ref_logp: Some(ref_logp.as_view()),
            ref_seq: None,
            seqs: DeviceSeqs::Padded { n_seqs, seq_len },
            pairs: DevicePairs::FirstHalfChosen,
        };
        let token_cfg = TokenLogprobsConfig::default();
        let out = gpu.preference_step(
            &s,
            &mut work.as_view_mut(),
            &batch,
            &token_cfg,
            &loss_cfg,
            GradLogits::InPlace,
        )?;
        let want_fwd = tl_ref::forward(&data.logits, layout, &data.targets, &token_cfg)?;
        let logp32: Vec<f32> = want_fwd.logp.iter().map(|&v| v as f32).collect();
        let tokens = TokenInputs {
            logp: &logp32,
            mask: Some(&data.mask),
            weights: Some(&data.weights),
            ref_logp: Some(&data.ref_logp),
        };
        let r = loss_ref::forward_backward(
            &tokens,
            &SeqLayout::Padded { n_seqs, seq_len },
            &Pairs::FirstHalfChosen,
            None,
            &loss_cfg,
        )?;
        let g32: Vec<f32> = r.grad_logp.iter().map(|&v| v as f32).collect();
        let want_dl = tl_ref::backward(&data.logits, layout, &data.targets, &g32, &token_cfg)?;
        let got_dl = s.clone_dtoh(&work)?;
        println!(
            "  {name} step: loss {:.6} (reference {:.6}), max |diff| metrics {:.2e}, d/dlogits {:.2e}",
            out.loss.loss,
            r.loss,
            max_diff(out.loss.metrics.iter().map(|&v| v as f64), r.metrics.iter().copied()),
            max_diff(got_dl.iter().map(|v| v.to_f64()), want_dl.iter().copied())
        );
    }
    // Shared-prefix attention, two groups (one with an empty response), GQA 2:1, d = 64.
    let shape = AttnShape::new(4, 2, 64);
    let alayout = SharedPrefixLayout::from_lengths(vec![
        PrefixGroup { prefix_len: 70, resp_lens: vec![20, 0, 33] },
        PrefixGroup { prefix_len: 5, resp_lens: vec![64, 9] },
    ])?;
    let t = alayout.total_tokens();
    let d = attention_diffs(gpu, &alayout, shape, 0x2545_F491_4F6C_DD1D)?;
    println!(
        "  shared-prefix attention ({t} tokens, 2 groups): max |diff| O {:.2e}, LSE {:.2e}, dQ {:.2e}, dK {:.2e}, dV {:.2e}",
        d[0], d[1], d[2], d[3], d[4]
    );
    println!("  verified in {:.1} s on the {} backend", t0.elapsed().as_secs_f64(), gpu.backend().name());
    Ok(())
}

/// Shared-prefix attention on a GRPO-like group: GPU at the benchmark shape (G = 8,
/// P = 4096, R = 512, 32 query / 8 KV heads, d = 128), CPU reference on a small one.
fn attention(gpu: Option<&Gpu>) -> pref_kernels::Result<()> {
    let (p, r, g, shape) = if gpu.is_some() {
        (4096, 512, 8, AttnShape::new(32, 8, 128))
    } else {
        (96, 24, 4, AttnShape::new(4, 2, 64))
    };
    let layout =
        SharedPrefixLayout::from_lengths(vec![PrefixGroup { prefix_len: p, resp_lens: vec![r; g] }])?;
    let t = layout.total_tokens();
    let dup: usize = layout.duplicated_lengths().iter().map(|&n| n * (n + 1) / 2).sum();
    println!(
        "shared-prefix attention: P = {p}, G = {g} x R = {r} ({t} packed tokens vs {} duplicated), Hq {} / Hkv {}, d {}; attended pairs {} vs {dup} duplicated ({:.2}x)",
        g * (p + r),
        shape.q_heads,
        shape.kv_heads,
        shape.head_dim,
        layout.attended_pairs(),
        dup as f64 / layout.attended_pairs() as f64
    );
    let mut st = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = |n: usize| random_bf16(n, &mut st);
    let (wq, wk) = (shape.q_heads * shape.head_dim, shape.kv_heads * shape.head_dim);
    let (q, k, v, dout) = (rnd(t * wq), rnd(t * wk), rnd(t * wk), rnd(t * wq));
    let flops = 4.0 * shape.head_dim as f64 * layout.attended_pairs() as f64 * shape.q_heads as f64;
    match gpu {
        Some(gpu) => {
            let s = gpu.default_stream();
            let dl = gpu.upload_prefix_layout(&s, &layout)?;
            let (dq_, dk_, dv_, ddo) =
                (s.clone_htod(&q)?, s.clone_htod(&k)?, s.clone_htod(&v)?, s.clone_htod(&dout)?);
            let mut o = s.alloc_zeros::<bf16>(t * wq)?;
            let mut lse = s.alloc_zeros::<f32>(shape.q_heads * t)?;
            let (mut gq, mut gk, mut gv) = (
                s.alloc_zeros::<bf16>(t * wq)?,
                s.alloc_zeros::<bf16>(t * wk)?,
                s.alloc_zeros::<bf16>(t * wk)?,
            );
            let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
            let cs = s.cuda().expect("CUDA backend");
            let mut times = Vec::new();
            for _ in 0..5 {
                let e0 = cs.record_event(flags)?;
                gpu.shared_prefix_attention_forward(
                    &s,
                    &dq_.as_view(),
                    &dk_.as_view(),
                    &dv_.as_view(),
                    &dl,
                    shape,
                    &mut o.as_view_mut(),
                    &mut lse.as_view_mut(),
                )?;
                let e1 = cs.record_event(flags)?;
                let saved = AttnSaved {
                    q: dq_.as_view(),
                    k: dk_.as_view(),
                    v: dv_.as_view(),
                    o: o.as_view(),
                    lse: lse.as_view(),
                };
                gpu.shared_prefix_attention_backward(
                    &s,
                    &saved,
                    &ddo.as_view(),
                    &dl,
                    shape,
                    &mut gq.as_view_mut(),
                    &mut gk.as_view_mut(),
                    &mut gv.as_view_mut(),
                )?;
                let e2 = cs.record_event(flags)?;
                e2.synchronize()?;
                times.push((e0.elapsed_ms(&e1)?, e1.elapsed_ms(&e2)?));
            }
            times.sort_by(|a, b| (a.0 + a.1).total_cmp(&(b.0 + b.1)));
            let (f, b) = times[times.len() / 2];
            println!(
                "  gpu forward {f:.3} ms ({:.0} TFLOP/s dedup), backward {b:.3} ms ({:.0} TFLOP/s dedup)",
                flops / (f as f64 * 1e9),
                2.5 * flops / (b as f64 * 1e9)
            );
        }
        None => {
            let t0 = Instant::now();
            let fwd = attn_ref::forward(&q, &k, &v, &layout, &shape)?;
            let tf = t0.elapsed();
            let t1 = Instant::now();
            let grads = attn_ref::backward(&q, &k, &v, &dout, &layout, &shape)?;
            let tb = t1.elapsed();
            println!(
                "  cpu reference forward {:.1} ms, backward {:.1} ms; mean LSE {:.4}, |dK|_1 of the prefix {:.4}",
                tf.as_secs_f64() * 1e3,
                tb.as_secs_f64() * 1e3,
                fwd.lse.iter().sum::<f64>() / fwd.lse.len() as f64,
                grads.dk[..p * wk].iter().map(|x| x.abs()).sum::<f64>()
            );
        }
    }
    Ok(())
}

/// A GRPO group: one prompt of P tokens shared by G sampled responses of R tokens. The attention
/// runs on the shared-prefix layout (prompt once, each response attending to it and to itself),
/// forward and backward; the loss is TRL's default GRPO (`dapo`, eps 0.2) with a KL term and an
/// entropy bonus, from the responses' logits in one step; advantages from rewards per response
/// (group-scaled, as TRL). Every result is checked against the f64 reference.
fn grpo_group(gpu: &Gpu) -> pref_kernels::Result<()> {
    let on_gpu = gpu.backend() == BackendKind::Cuda;
    let (p, g, r, vocab) = if on_gpu { (1024, 8, 256, 32000) } else { (96, 4, 24, 4099) };
    let s = gpu.default_stream();
    let t0 = Instant::now();
    // Attention over the shared-prefix layout.
    let shape = AttnShape::new(4, 2, 64);
    let layout =
        SharedPrefixLayout::from_lengths(vec![PrefixGroup { prefix_len: p, resp_lens: vec![r; g] }])?;
    let t = layout.total_tokens();
    let dup: usize = layout.duplicated_lengths().iter().map(|&n| n * (n + 1) / 2).sum();
    let d = attention_diffs(gpu, &layout, shape, 0x9E37_79B9_7F4A_7C15)?;
    let b16 = |v: Vec<bf16>| v.into_iter().map(|x| x.to_f64()).collect::<Vec<_>>();
    println!(
        "GRPO group: prompt P = {p} shared by G = {g} responses of R = {r} tokens on the {} backend",
        gpu.backend().name()
    );
    println!(
        "  shared-prefix attention: {t} packed tokens vs {} duplicated; attended pairs {} vs {dup} duplicated ({:.2}x fewer); max |diff| O {:.2e}, dQ {:.2e}, dK {:.2e}, dV {:.2e}",
        g * (p + r),
        layout.attended_pairs(),
        dup as f64 / layout.attended_pairs() as f64,
        d[0], d[2], d[3], d[4]
    );
    // The responses' logits (synthetic: the LM head is the trainer's), the rollout's log-probs,
    // rewards -> group advantages, then the GRPO step.
    let n = g * r;
    let llayout = LogitsLayout::contiguous(n, vocab);
    let data = synthetic(g, r, vocab);
    let rewards: Vec<f32> = (0..g).map(|i| ((i * 37) % 11) as f32 / 10.0).collect();
    let adv = group_advantages(&rewards, &[1.0], Groups::Uniform(g), ScaleRewards::Group)?;
    let token_cfg = TokenLogprobsConfig::default();
    let want_fwd = tl_ref::forward(&data.logits, llayout, &data.targets, &token_cfg)?;
    // The rollout and the reference near the policy, as in training (a few clipped ratios).
    let near = |step: f32, m: usize| -> Vec<f32> {
        want_fwd
            .logp
            .iter()
            .enumerate()
            .map(|(i, &l)| l as f32 + ((i % m) as f32 - (m / 2) as f32) * step)
            .collect()
    };
    let (old, reference) = (near(0.05, 13), near(0.04, 7));
    let cfg = GrpoConfig { beta: 0.04, entropy_coef: 0.01, ..GrpoConfig::trl() };
    let (targets, mask, dold, dref, dadv) = (
        s.clone_htod(&data.targets)?,
        s.clone_htod(&data.mask)?,
        s.clone_htod(&old)?,
        s.clone_htod(&reference)?,
        s.clone_htod(&adv)?,
    );
    let mut logits = s.clone_htod(&data.logits)?;
    let batch = GrpoStepBatch {
        layout: llayout,
        targets: targets.as_view(),
        mask: Some(mask.as_view()),
        old_logp: Some(dold.as_view()),
        sampling_logp: None,
        ref_logp: Some(dref.as_view()),
        is_weights: None,
        advantages: dadv.as_view(),
        seqs: DeviceSeqs::Padded { n_seqs: g, seq_len: r },
    };
    let out = gpu.grpo_step(&s, &mut logits.as_view_mut(), &batch, &token_cfg, &cfg, GradLogits::InPlace)?;
    let logp = s.clone_dtoh(&out.logp)?;
    let entropy = s.clone_dtoh(out.entropy.as_ref().expect("the GRPO step returns entropy"))?;
    let toks = GrpoTokens {
        logp: &logp[..n],
        old_logp: Some(&old),
        sampling_logp: None,
        ref_logp: Some(&reference),
        mask: Some(&data.mask),
        is_weights: None,
        entropy: Some(&entropy[..n]),
    };
    let want = grpo_ref(&toks, &SeqLayout::Padded { n_seqs: g, seq_len: r }, &adv, &cfg)?;
    let gl: Vec<f32> = want.grad_logp.iter().map(|&x| x as f32).collect();
    let ge: Vec<f32> = want.grad_entropy.iter().map(|&x| x as f32).collect();
    let want_dl = tl_ref::backward_with_entropy(&data.logits, llayout, &data.targets, &gl, &ge, &token_cfg)?;
    println!("  advantages {adv:?}");
    let d_logp = max_diff(logp[..n].iter().map(|&x| x as f64), want_fwd.logp.iter().copied());
    let d_ent = max_diff(entropy[..n].iter().map(|&x| x as f64), want_fwd.entropy.iter().copied());
    let d_logits = max_diff(b16(s.clone_dtoh(&logits)?), want_dl.iter().copied());
    println!(
        "  GRPO step (dapo, beta 0.04, entropy bonus 0.01): loss {:.6} (reference {:.6}); max |diff| logp {d_logp:.2e}, entropy {d_ent:.2e}, d/dlogits {d_logits:.2e}",
        out.loss.loss, want.loss,
    );
    for (k, name) in GRPO_METRIC_NAMES.iter().enumerate() {
        println!("    {name:<24} {:>12.6}   (reference {:.6})", out.loss.metrics[k], want.metrics[k]);
    }
    // The main job fails, not just prints, when the kernels leave the tolerances of the tests.
    let metrics_diff =
        max_diff(out.loss.metrics.iter().take(7).map(|&x| x as f64), want.metrics.iter().take(7).copied());
    for (what, diff, tol) in [
        ("logp", d_logp, 1e-3),
        ("entropy", d_ent, 1e-3),
        ("d/dlogits", d_logits, 1e-2),
        ("metrics", metrics_diff, 1e-3),
        ("attention (bf16)", d.iter().copied().fold(0.0, f64::max), 5e-2),
    ] {
        if diff.is_nan() || diff > tol {
            return Err(pref_kernels::Error::KernelCheck(format!(
                "GRPO group: {what} differs from the reference by {diff:e} (> {tol:e})"
            )));
        }
    }
    println!("  GRPO group verified in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// Shared-prefix attention forward and backward on random bf16 inputs over `layout`, against the
/// f64 reference: max |diff| of O, LSE, dQ, dK, dV.
fn attention_diffs(
    gpu: &Gpu,
    layout: &SharedPrefixLayout,
    shape: AttnShape,
    seed: u64,
) -> pref_kernels::Result<[f64; 5]> {
    let s = gpu.default_stream();
    let t = layout.total_tokens();
    let (wq, wk) = (shape.q_heads * shape.head_dim, shape.kv_heads * shape.head_dim);
    let mut st = seed;
    let mut rnd = |n: usize| random_bf16(n, &mut st);
    let (q, k, v, dout) = (rnd(t * wq), rnd(t * wk), rnd(t * wk), rnd(t * wq));
    let dl = gpu.upload_prefix_layout(&s, layout)?;
    let (dq_, dk_, dv_, ddo) =
        (s.clone_htod(&q)?, s.clone_htod(&k)?, s.clone_htod(&v)?, s.clone_htod(&dout)?);
    let mut o = s.alloc_zeros::<bf16>(t * wq)?;
    let mut alse = s.alloc_zeros::<f32>(shape.q_heads * t)?;
    gpu.shared_prefix_attention_forward(
        &s,
        &dq_.as_view(),
        &dk_.as_view(),
        &dv_.as_view(),
        &dl,
        shape,
        &mut o.as_view_mut(),
        &mut alse.as_view_mut(),
    )?;
    let (mut gq, mut gk, mut gv) =
        (s.alloc_zeros::<bf16>(t * wq)?, s.alloc_zeros::<bf16>(t * wk)?, s.alloc_zeros::<bf16>(t * wk)?);
    let saved = AttnSaved {
        q: dq_.as_view(),
        k: dk_.as_view(),
        v: dv_.as_view(),
        o: o.as_view(),
        lse: alse.as_view(),
    };
    gpu.shared_prefix_attention_backward(
        &s,
        &saved,
        &ddo.as_view(),
        &dl,
        shape,
        &mut gq.as_view_mut(),
        &mut gk.as_view_mut(),
        &mut gv.as_view_mut(),
    )?;
    let fwd = attn_ref::forward(&q, &k, &v, layout, &shape)?;
    let grads = attn_ref::backward(&q, &k, &v, &dout, layout, &shape)?;
    let b16 = |v: Vec<bf16>| v.into_iter().map(|x| x.to_f64()).collect::<Vec<_>>();
    Ok([
        max_diff(b16(s.clone_dtoh(&o)?), fwd.o.iter().copied()),
        max_diff(s.clone_dtoh(&alse)?.into_iter().map(f64::from), fwd.lse.iter().copied()),
        max_diff(b16(s.clone_dtoh(&gq)?), grads.dq.iter().copied()),
        max_diff(b16(s.clone_dtoh(&gk)?), grads.dk.iter().copied()),
        max_diff(b16(s.clone_dtoh(&gv)?), grads.dv.iter().copied()),
    ])
}

/// The DPO step from hidden states + LM-head weight (bf16): on any backend a small batch chunked
/// one pair at a time, checked against the f64 reference chain (linear forward → DPO loss → linear
/// backward); on a GPU then the shape (M = 4096 tokens, H = 4096, V = 128256), timed.
fn linear_head(gpu: &Gpu) -> pref_kernels::Result<()> {
    let t0 = Instant::now();
    let (pairs, seq_len, h, vocab) = (3, 24, 64, 1531);
    let (n_seqs, n) = (2 * pairs, 2 * pairs * seq_len);
    let shape = LinearShape { n_rows: n, hidden: h, vocab };
    let mut st = 0x5DEE_CE66_D1CE_4E5Bu64;
    let hidden = random_bf16(n * h, &mut st);
    // Weight scaled by 1/sqrt(H) so the logits are O(1), as in a trained LM head.
    let weight: Vec<bf16> =
        random_bf16(vocab * h, &mut st).into_iter().map(|x| bf16::from_f32(x.to_f32() * 0.125)).collect();
    let targets: Vec<i64> = (0..n)
        .map(|t| if t % seq_len < seq_len / 4 { -100 } else { ((t * 7919 + 13) % vocab) as i64 })
        .collect();
    let ref_logp: Vec<f32> = (0..n).map(|i| -7.5 + (i % 11) as f32 * 0.1).collect();
    let token = TokenLogprobsConfig::default();
    let loss = LossConfig::dpo(0.1);
    let one_pair = workspace_bytes_per_row(&shape, pref_kernels::DType::BF16) * 2 * seq_len;
    println!(
        "DPO step from hidden states ({pairs} pairs x {seq_len} tokens, H = {h}, V = {vocab}, bf16) on the {} backend, one pair per chunk:",
        gpu.backend().name()
    );
    let s = gpu.default_stream();
    let (hid_d, w_d, t_d, r_d) =
        (s.clone_htod(&hidden)?, s.clone_htod(&weight)?, s.clone_htod(&targets)?, s.clone_htod(&ref_logp)?);
    let head = LinearHead { hidden: hid_d.as_view(), weight: w_d.as_view(), bias: None, shape };
    let seqs = SeqLayout::Padded { n_seqs, seq_len };
    let batch = LinearStepBatch {
        targets: t_d.as_view(),
        weights: None,
        ref_logp: Some(r_d.as_view()),
        ref_seq: None,
        seqs,
        pairs: Pairs::FirstHalfChosen,
    };
    let cfg = LinearConfig { token, workspace_bytes: one_pair };
    let out = gpu.linear_preference_step(&s, &head, &batch, &loss, &cfg)?;

    let fwd = lin_ref::forward(&hidden, &weight, None, shape, &targets, &token)?;
    let logp32: Vec<f32> = fwd.logp.iter().map(|&x| x as f32).collect();
    let mask: Vec<u8> = targets.iter().map(|&t| u8::from(t != -100)).collect();
    let tokens = TokenInputs { logp: &logp32, mask: Some(&mask), weights: None, ref_logp: Some(&ref_logp) };
    let want = loss_ref::forward_backward(&tokens, &seqs, &Pairs::FirstHalfChosen, None, &loss)?;
    let gl: Vec<f32> = want.grad_logp.iter().map(|&x| x as f32).collect();
    let want_g = lin_ref::backward(&hidden, &weight, None, shape, &targets, &gl, None, &token)?;
    let d_hidden = max_diff(
        s.clone_dtoh(&out.grads.d_hidden)?.into_iter().map(|x| x.to_f64()),
        want_g.d_hidden.iter().copied(),
    );
    let d_weight = max_diff(
        s.clone_dtoh(&out.grads.d_weight)?.into_iter().map(f64::from),
        want_g.d_weight.iter().copied(),
    );
    let d_logp = max_diff(s.clone_dtoh(&out.logp)?.into_iter().map(f64::from), fwd.logp.iter().copied());
    let d_metrics =
        max_diff(out.loss.metrics.iter().take(10).map(|&x| x as f64), want.metrics.iter().copied());
    println!(
        "  loss {:.6} (reference {:.6}); max |diff| logp {d_logp:.2e}, metrics {d_metrics:.2e}, d_hidden {d_hidden:.2e} (bf16), d_weight {d_weight:.2e}",
        out.loss.loss, want.loss
    );
    println!(
        "  {} chunks in a {:.1} KB workspace; the [N, V] logits it never made: {:.1} KB (bf16)",
        out.n_chunks,
        out.workspace_bytes as f64 / 1e3,
        (n * vocab * 2) as f64 / 1e3
    );
    // The logits are rounded to bf16 as PyTorch's bf16 `hidden @ W.T` is (the f64 reference does
    // not round), so logp is within bf16's resolution of O(1) logits (tests/gpu/linear.rs: 3e-2),
    // sums of logp (metrics) accordingly, and the gradients, which see the rounding only through
    // p, within about a thousandth of their scale.
    for (what, diff, tol) in [
        ("loss", (out.loss.loss as f64 - want.loss).abs(), 1e-3),
        ("logp", d_logp, 3e-2),
        ("metrics", d_metrics, 5e-2),
        ("d_hidden (bf16)", d_hidden, 2e-3),
        ("d_weight", d_weight, 1e-3),
    ] {
        if diff.is_nan() || diff > tol {
            return Err(pref_kernels::Error::KernelCheck(format!(
                "step from hidden states: {what} differs from the reference by {diff:e} (> {tol:e})"
            )));
        }
    }
    println!("  verified in {:.1} s", t0.elapsed().as_secs_f64());
    if gpu.backend() == BackendKind::Cuda {
        linear_head_timed(gpu)?;
    }
    Ok(())
}

/// The DPO step from hidden states with the LM head's vocabulary split over 4 shards of unequal
/// size (a tensor-parallel head, each "rank" on this one device): every shard's partials (5 f32
/// per token), their all-gather (here a host concatenation), the finalize, the preference loss on
/// the log-probs (identical for every rank), each shard's backward into its d_weight rows and its
/// partial d_hidden, the d_hidden all-reduce (host sum). Checked against the unsharded one-call
/// step on the same inputs; fails on a mismatch.
fn vocab_parallel_head(gpu: &Gpu) -> pref_kernels::Result<()> {
    use pref_kernels::linear_token_logprobs::LinearGradViews;
    let t0 = Instant::now();
    let (pairs, seq_len, h, vocab, tp) = (2usize, 20usize, 48usize, 1229usize, 4usize);
    let (n_seqs, n) = (2 * pairs, 2 * pairs * seq_len);
    let mut st = 0x0DDB_1A5E_5BAD_5EEDu64;
    let hidden: Vec<f32> = random_bf16(n * h, &mut st).into_iter().map(|x| x.to_f32()).collect();
    let weight: Vec<f32> = random_bf16(vocab * h, &mut st).into_iter().map(|x| x.to_f32() * 0.15).collect();
    let targets: Vec<i64> =
        (0..n).map(|t| if t % seq_len < 5 { -100 } else { ((t * 104729 + 7) % vocab) as i64 }).collect();
    let ref_logp: Vec<f32> = (0..n).map(|i| -7.0 + (i % 13) as f32 * 0.1).collect();
    let mask: Vec<u8> = targets.iter().map(|&t| u8::from(t != -100)).collect();
    let token = TokenLogprobsConfig::default();
    let loss = LossConfig::dpo(0.1);
    let cfg = LinearConfig { token, ..Default::default() };
    println!(
        "DPO step from hidden states with a vocabulary-parallel LM head (tp = {tp} shards on one device, {pairs} pairs x {seq_len} tokens, H = {h}, V = {vocab}, f32) on the {} backend:",
        gpu.backend().name()
    );
    let s = gpu.default_stream();
    let (hid_d, t_d, r_d, m_d) =
        (s.clone_htod(&hidden)?, s.clone_htod(&targets)?, s.clone_htod(&ref_logp)?, s.clone_htod(&mask)?);
    // Unsharded: the one-call step.
    let w_full = s.clone_htod(&weight)?;
    let head = LinearHead {
        hidden: hid_d.as_view(),
        weight: w_full.as_view(),
        bias: None,
        shape: LinearShape { n_rows: n, hidden: h, vocab },
    };
    let seqs = SeqLayout::Padded { n_seqs, seq_len };
    let batch = LinearStepBatch {
        targets: t_d.as_view(),
        weights: None,
        ref_logp: Some(r_d.as_view()),
        ref_seq: None,
        seqs,
        pairs: Pairs::FirstHalfChosen,
    };
    let want = gpu.linear_preference_step(&s, &head, &batch, &loss, &cfg)?;
    let want_dh = s.clone_dtoh(&want.grads.d_hidden)?;
    let want_dw = s.clone_dtoh(&want.grads.d_weight)?;
    // Sharded: the protocol, rank by rank.
    let shards: Vec<VocabShard> =
        (0..tp).map(|r| VocabShard::even(vocab, tp, r)).collect::<Result<_, _>>()?;
    let w_shards = shards
        .iter()
        .map(|sh| s.clone_htod(&weight[sh.start * h..(sh.start + sh.len) * h]))
        .collect::<Result<Vec<_>, _>>()?;
    let heads: Vec<LinearHead<'_, f32>> = shards
        .iter()
        .zip(&w_shards)
        .map(|(sh, w)| LinearHead {
            hidden: hid_d.as_view(),
            weight: w.as_view(),
            bias: None,
            shape: LinearShape { n_rows: n, hidden: h, vocab: sh.len },
        })
        .collect();
    let mut gathered = Vec::with_capacity(tp * n * VP_STATS);
    for (sh, hd) in shards.iter().zip(&heads) {
        let mut part = s.alloc_zeros::<f32>(n * VP_STATS)?;
        gpu.linear_shard_partials_into(&s, hd, *sh, &t_d.as_view(), part.as_view_mut(), &cfg)?;
        gathered.extend(s.clone_dtoh(&part)?);
    }
    let g_d = s.clone_htod(&gathered)?;
    let (mut logp, mut lse) = (s.alloc_zeros::<f32>(n)?, s.alloc_zeros::<f32>(n)?);
    let mut stats = s.alloc_zeros::<f32>(2 * n)?;
    let out = TokenLogprobsOutputs {
        logp: logp.as_view_mut(),
        lse: lse.as_view_mut(),
        entropy: None,
        stats: Some(stats.as_view_mut()),
        log_sum_sq: None,
        mean_logits: None,
        is_top1: None,
    };
    gpu.vocab_parallel_finalize(&s, &g_d.as_view(), tp, vocab, &t_d, out, &token)?;
    let tokens = DeviceTokens {
        logp: logp.as_view(),
        mask: Some(m_d.as_view()),
        weights: None,
        ref_logp: Some(r_d.as_view()),
    };
    let mut grad_logp = s.alloc_zeros::<f32>(n)?;
    let got = gpu.preference_loss(
        &s,
        &tokens,
        &DeviceSeqs::Padded { n_seqs, seq_len },
        &DevicePairs::FirstHalfChosen,
        None,
        &loss,
        &mut grad_logp.as_view_mut(),
    )?;
    let mut d_hidden = vec![0f64; n * h];
    let mut d_weight = Vec::with_capacity(vocab * h);
    for (sh, hd) in shards.iter().zip(&heads) {
        let (mut dh, mut dw) = (s.alloc_zeros::<f32>(n * h)?, s.alloc_zeros::<f32>(sh.len * h)?);
        let grads = LinearGradViews { d_hidden: dh.as_view_mut(), d_weight: dw.as_view_mut(), d_bias: None };
        gpu.linear_shard_backward_into(
            &s,
            hd,
            *sh,
            &t_d.as_view(),
            &stats.as_view(),
            &grad_logp.as_view(),
            None,
            grads,
            &cfg,
        )?;
        for (acc, x) in d_hidden.iter_mut().zip(s.clone_dtoh(&dh)?) {
            *acc += x as f64;
        }
        d_weight.extend(s.clone_dtoh(&dw)?);
    }
    let d_logp = max_diff(
        s.clone_dtoh(&logp)?.into_iter().map(f64::from),
        s.clone_dtoh(&want.logp)?.into_iter().map(f64::from),
    );
    let d_dh = max_diff(d_hidden.iter().copied(), want_dh.iter().map(|&x| x as f64));
    let d_dw = max_diff(d_weight.iter().map(|&x| x as f64), want_dw.iter().map(|&x| x as f64));
    println!(
        "  loss {:.6} (unsharded {:.6}); max |diff| logp {d_logp:.2e}, d_hidden (summed over shards) {d_dh:.2e}, d_weight {d_dw:.2e}; all-gathered {} B per token",
        got.loss, want.loss.loss, tp * VP_STATS * 4
    );
    for (what, diff, tol) in [
        ("loss", (got.loss - want.loss.loss).abs() as f64, 1e-5),
        ("logp", d_logp, 1e-4),
        ("d_hidden", d_dh, 1e-5),
        ("d_weight", d_dw, 1e-5),
    ] {
        if diff.is_nan() || diff > tol {
            return Err(pref_kernels::Error::KernelCheck(format!(
                "vocabulary-parallel step: {what} differs from the unsharded step by {diff:e} (> {tol:e})"
            )));
        }
    }
    println!("  verified in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// The shape on a GPU: 4 pairs x 512 tokens (M = 4096), H = 4096, V = 128256, bf16, the
/// default 768 MiB workspace; median of 5 timed steps after one warm-up, TFLOP/s under 6MHV.
fn linear_head_timed(gpu: &Gpu) -> pref_kernels::Result<()> {
    let (pairs, seq_len, h, vocab) = (4usize, 512usize, 4096usize, 128256usize);
    let m = 2 * pairs * seq_len;
    let shape = LinearShape { n_rows: m, hidden: h, vocab };
    let mut st = 0x0123_4567_89AB_CDEFu64;
    let hidden = random_bf16(m * h, &mut st);
    let weight: Vec<bf16> =
        random_bf16(vocab * h, &mut st).into_iter().map(|x| bf16::from_f32(x.to_f32() / 64.0)).collect();
    let targets: Vec<i64> = (0..m).map(|t| ((t * 7919 + 13) % vocab) as i64).collect();
    let ref_logp: Vec<f32> = (0..m).map(|i| -11.0 + (i % 13) as f32 * 0.1).collect();
    let s = gpu.default_stream();
    let (hid_d, w_d, t_d, r_d) =
        (s.clone_htod(&hidden)?, s.clone_htod(&weight)?, s.clone_htod(&targets)?, s.clone_htod(&ref_logp)?);
    drop((hidden, weight));
    let head = LinearHead { hidden: hid_d.as_view(), weight: w_d.as_view(), bias: None, shape };
    let batch = LinearStepBatch {
        targets: t_d.as_view(),
        weights: None,
        ref_logp: Some(r_d.as_view()),
        ref_seq: None,
        seqs: SeqLayout::Padded { n_seqs: 2 * pairs, seq_len },
        pairs: Pairs::FirstHalfChosen,
    };
    let cfg = LinearConfig {
        token: TokenLogprobsConfig { check_targets: false, ..Default::default() },
        ..Default::default()
    };
    let loss = LossConfig::dpo(0.1);
    let cs = s.cuda().expect("CUDA backend");
    let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let mut ms = Vec::new();
    let mut last = None;
    for _ in 0..6 {
        let e0 = cs.record_event(flags)?;
        let out = gpu.linear_preference_step(&s, &head, &batch, &loss, &cfg)?;
        let e1 = cs.record_event(flags)?;
        e1.synchronize()?;
        ms.push(e0.elapsed_ms(&e1)? as f64);
        last = Some((out.n_chunks, out.workspace_bytes, out.loss.loss));
    }
    ms.remove(0); // warm-up
    ms.sort_by(|a, b| a.total_cmp(b));
    let med = ms[ms.len() / 2];
    let (chunks, work, loss_v) = last.expect("six steps ran");
    let flops = 6.0 * (m * h * vocab) as f64;
    println!(
        "DPO step from hidden states, M = {m}, H = {h}, V = {vocab}, bf16: {med:.2} ms median of 5 ({:.0} TFLOP/s at 6MHV; target 20 ms), {chunks} chunks, workspace {:.3} GB (the [M, V] bf16 logits would be {:.2} GB), loss {loss_v:.5}",
        flops / (med / 1e3) / 1e12,
        work as f64 / 1e9,
        (m * vocab * 2) as f64 / 1e9
    );
    Ok(())
}
