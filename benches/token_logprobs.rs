//! Criterion benches of the token log-probs op.
//!
//! - CPU reference at small sizes (always runs).
//! - GPU (skipped, with the reason printed, when no GPU is usable): a device-to-device copy as the
//!   bandwidth ceiling, then bf16 forward and forward+backward at N in {4096, 16384} x V in
//!   {32000, 128256, 151936, 262144}. Timing uses CUDA events around the launches only
//!   (`iter_custom`), after warm-up; criterion reports the median and throughput in bytes/s,
//!   counted as the floor traffic: forward = 1 read of the logits, forward+backward = 2 reads +
//!   1 write. Every logits buffer is far larger than the 50 MB L2, so no input rotation is needed.
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use pref_kernels::token_logprobs::{reference, TokenLogprobsOutputs};
use pref_kernels::{LogitsLayout, TokenLogprobsConfig};

mod common;
use common::{event_time, gpu_or_skip, pseudo};

fn random_logits(n: usize, seed: u64) -> Vec<f32> {
    pseudo(n, seed, -6.0, 6.0)
}

fn cpu_reference(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu_reference");
    g.sample_size(10).measurement_time(Duration::from_secs(2));
    for (n, v) in [(16usize, 1024usize), (8, 32000)] {
        let x = random_logits(n * v, 7);
        let t: Vec<i64> = (0..n as i64).map(|i| (i * 31) % v as i64).collect();
        let gl = vec![1.0f32; n];
        let layout = LogitsLayout::contiguous(n, v);
        let cfg = TokenLogprobsConfig::default();
        g.throughput(Throughput::Elements((n * v) as u64));
        g.bench_function(BenchmarkId::new("forward", format!("{n}x{v}")), |b| {
            b.iter(|| reference::forward(&x, layout, &t, &cfg).unwrap())
        });
        g.bench_function(BenchmarkId::new("backward", format!("{n}x{v}")), |b| {
            b.iter(|| reference::backward(&x, layout, &t, &gl, &cfg).unwrap())
        });
    }
    g.finish();
}

fn gpu_benches(c: &mut Criterion) {
    let Some(gpu) = gpu_or_skip() else { return };
    let s = gpu.default_stream();
    let mut g = c.benchmark_group("gpu_token_logprobs_bf16");
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));

    // Bandwidth ceiling: a 4 GiB device-to-device copy (read + write).
    let copy_elems = 1usize << 31;
    let src = s.alloc_zeros::<bf16>(copy_elems).unwrap();
    let mut dst = s.alloc_zeros::<bf16>(copy_elems).unwrap();
    g.throughput(Throughput::Bytes(2 * 2 * copy_elems as u64));
    g.bench_function("d2d_copy_4GiB", |b| {
        b.iter_custom(|it| event_time(&gpu, it, || s.memcpy_dtod(&src, &mut dst).unwrap()))
    });
    drop((src, dst));

    let cfg = TokenLogprobsConfig { check_targets: false, ..Default::default() };
    for n in [4096usize, 16384] {
        for v in [32000usize, 128256, 151936, 262144] {
            let layout = LogitsLayout::contiguous(n, v);
            let host: Vec<bf16> =
                random_logits(n * v, (n * v) as u64).into_iter().map(bf16::from_f32).collect();
            let logits = s.clone_htod(&host).unwrap();
            drop(host);
            let targets =
                s.clone_htod(&(0..n as i64).map(|i| (i * 7919) % v as i64).collect::<Vec<_>>()).unwrap();
            let mut logp = s.alloc_zeros::<f32>(n).unwrap();
            let mut lse = s.alloc_zeros::<f32>(n).unwrap();
            let mut stats = s.alloc_zeros::<f32>(2 * n).unwrap();
            let grad_logp = s.clone_htod(&vec![0.5f32; n]).unwrap();
            let mut grad = s.alloc_zeros::<bf16>(n * v).unwrap();
            let bytes = (n * v * 2) as u64;
            let id = format!("{n}x{v}");

            g.throughput(Throughput::Bytes(bytes));
            g.bench_function(BenchmarkId::new("forward", &id), |b| {
                b.iter_custom(|it| {
                    event_time(&gpu, it, || {
                        let out = TokenLogprobsOutputs {
                            logp: logp.as_view_mut(),
                            lse: lse.as_view_mut(),
                            entropy: None,
                            stats: Some(stats.as_view_mut()),
                            log_sum_sq: None,
                            mean_logits: None,
                            is_top1: None,
                        };
                        gpu.token_logprobs_forward(&s, &logits, layout, &targets, out, &cfg).unwrap();
                    })
                })
            });
            g.throughput(Throughput::Bytes(3 * bytes));
            g.bench_function(BenchmarkId::new("forward_backward", &id), |b| {
                b.iter_custom(|it| {
                    event_time(&gpu, it, || {
                        let out = TokenLogprobsOutputs {
                            logp: logp.as_view_mut(),
                            lse: lse.as_view_mut(),
                            entropy: None,
                            stats: Some(stats.as_view_mut()),
                            log_sum_sq: None,
                            mean_logits: None,
                            is_top1: None,
                        };
                        gpu.token_logprobs_forward(&s, &logits, layout, &targets, out, &cfg).unwrap();
                        gpu.token_logprobs_backward(
                            &s, &logits, layout, &targets, &stats, &grad_logp, &mut grad, v, &cfg,
                        )
                        .unwrap();
                    })
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, cpu_reference, gpu_benches);
criterion_main!(benches);
