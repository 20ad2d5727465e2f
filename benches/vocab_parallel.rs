//! Criterion benches of the vocabulary-parallel log-probs with tp simulated by shards on one
//! device (a multi-GPU machine has not been lent; the collective's cost is planned in the README).
//!
//! - CPU: the f64 sharded reference (partials + finalize) at a small size (always runs).
//! - GPU (skipped with the reason without one): bf16 logits [16384, 128256] as tp shards of
//!   [N, V/tp], each shard's partials written straight into its block of a [tp, N, 5] buffer (what
//!   the all-gather delivers), then the finalize; then the same plus every shard's backward. The
//!   floors are the unsharded op's: forward = one read of the N·V logits, forward+backward = two
//!   reads and one write, over the copy bandwidth (the token_logprobs bench measures both in the
//!   same run), reported as bytes/s. tp = 1 is the sharded path's overhead against the plain op
//!   (benched alongside as `unsharded`).
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use pref_kernels::token_logprobs::{TokenLogprobsBwdPtrs, TokenLogprobsOutputs};
use pref_kernels::vocab_parallel::{
    reference, VocabFinalizePtrs, VocabShard, VocabShardPartialsPtrs, VP_STATS,
};
use pref_kernels::{DType, IndexType, LogitsLayout, TokenLogprobsConfig};

mod common;
use common::{event_time, gpu_or_skip, pseudo};

fn cpu_reference(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu_reference");
    g.sample_size(10).measurement_time(Duration::from_secs(2));
    let (n, v, tp) = (8usize, 32000usize, 4usize);
    let x = pseudo(n * v, 11, -6.0, 6.0);
    let t: Vec<i64> = (0..n as i64).map(|i| (i * 7919) % v as i64).collect();
    let cfg = TokenLogprobsConfig { compute_entropy: true, ..Default::default() };
    let shards: Vec<VocabShard> = (0..tp).map(|r| VocabShard::even(v, tp, r).unwrap()).collect();
    let cols: Vec<Vec<f32>> = shards
        .iter()
        .map(|s| (0..n).flat_map(|r| x[r * v + s.start..r * v + s.start + s.len].to_vec()).collect())
        .collect();
    g.throughput(Throughput::Elements((n * v) as u64));
    g.bench_function(BenchmarkId::new("sharded_forward", format!("{n}x{v}_tp{tp}")), |b| {
        b.iter(|| {
            let p: Vec<_> = shards
                .iter()
                .zip(&cols)
                .map(|(s, c)| {
                    reference::shard_partials(c, LogitsLayout::contiguous(n, s.len), *s, &t, &cfg).unwrap()
                })
                .collect();
            reference::finalize(&p, &t, v, &cfg).unwrap()
        })
    });
    g.finish();
}

fn gpu_benches(c: &mut Criterion) {
    let Some(gpu) = gpu_or_skip() else { return };
    let s = gpu.default_stream();
    let mut g = c.benchmark_group("gpu_vocab_parallel_bf16");
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    let (n, v) = (16384usize, 128256usize);
    let host: Vec<bf16> = pseudo(n * v, 5, -6.0, 6.0).into_iter().map(bf16::from_f32).collect();
    let targets = s.clone_htod(&(0..n as i64).map(|i| (i * 7919) % v as i64).collect::<Vec<_>>()).unwrap();
    let cfg = TokenLogprobsConfig { check_targets: false, ..Default::default() };
    let bytes = (n * v * 2) as u64;
    let (mut logp, mut lse) = (s.alloc_zeros::<f32>(n).unwrap(), s.alloc_zeros::<f32>(n).unwrap());
    let grad_logp = s.clone_htod(&vec![0.5f32; n]).unwrap();
    let stats = s.alloc_zeros::<f32>(2 * n).unwrap();
    {
        let logits = s.clone_htod(&host).unwrap();
        let layout = LogitsLayout::contiguous(n, v);
        g.throughput(Throughput::Bytes(bytes));
        g.bench_function(BenchmarkId::new("unsharded_forward", format!("{n}x{v}")), |b| {
            b.iter_custom(|it| {
                event_time(&gpu, it, || {
                    let out = TokenLogprobsOutputs {
                        logp: logp.as_view_mut(),
                        lse: lse.as_view_mut(),
                        entropy: None,
                        stats: None,
                        log_sum_sq: None,
                        mean_logits: None,
                        is_top1: None,
                    };
                    gpu.token_logprobs_forward(&s, &logits, layout, &targets, out, &cfg).unwrap();
                })
            })
        });
    }
    for tp in [1usize, 2, 8] {
        let shards: Vec<VocabShard> = (0..tp).map(|r| VocabShard::even(v, tp, r).unwrap()).collect();
        // Shard k's [N, len_k] block, one after the other in one buffer.
        let mut sharded: Vec<bf16> = Vec::with_capacity(n * v);
        for sh in &shards {
            for r in 0..n {
                sharded.extend_from_slice(&host[r * v + sh.start..r * v + sh.start + sh.len]);
            }
        }
        let mut logits = s.clone_htod(&sharded).unwrap();
        drop(sharded);
        let mut gathered = s.alloc_zeros::<f32>(tp * n * VP_STATS).unwrap();
        let raw = s.raw();
        let base = logits.raw_ptr();
        let (gp, tg, lp, ls, gl, st) = (
            gathered.raw_ptr(),
            targets.raw_ptr(),
            logp.raw_ptr(),
            lse.raw_ptr(),
            grad_logp.raw_ptr(),
            stats.raw_ptr(),
        );
        let forward = |gpu: &pref_kernels::Gpu| {
            let mut off = 0u64;
            for (k, sh) in shards.iter().enumerate() {
                let ptrs = VocabShardPartialsPtrs {
                    logits: base + off,
                    targets: tg,
                    partials: gp + (k * n * VP_STATS * 4) as u64,
                    status: 0,
                };
                // SAFETY: live buffers of the sizes the layouts give, on this stream.
                unsafe {
                    gpu.vocab_shard_partials_raw(
                        raw,
                        DType::BF16,
                        IndexType::I64,
                        LogitsLayout::contiguous(n, sh.len),
                        *sh,
                        &ptrs,
                        &cfg,
                    )
                }
                .unwrap();
                off += (n * sh.len * 2) as u64;
            }
            let fin = VocabFinalizePtrs {
                partials: gp,
                targets: tg,
                logp: lp,
                lse: ls,
                entropy: 0,
                status: 0,
                stats: st,
            };
            // SAFETY: as above.
            unsafe { gpu.vocab_parallel_finalize_raw(raw, IndexType::I64, n, tp, v, &fin, &cfg) }.unwrap();
        };
        let id = format!("{n}x{v}_tp{tp}");
        g.throughput(Throughput::Bytes(bytes));
        g.bench_function(BenchmarkId::new("forward", &id), |b| {
            b.iter_custom(|it| event_time(&gpu, it, || forward(&gpu)))
        });
        g.throughput(Throughput::Bytes(3 * bytes));
        g.bench_function(BenchmarkId::new("forward_backward_in_place", &id), |b| {
            b.iter_custom(|it| {
                event_time(&gpu, it, || {
                    forward(&gpu);
                    let mut off = 0u64;
                    for sh in &shards {
                        let ptrs = TokenLogprobsBwdPtrs {
                            logits: base + off,
                            targets: tg,
                            stats: st,
                            grad_logp: gl,
                            grad_logits: base + off,
                            ..Default::default()
                        };
                        // SAFETY: as above (the backward overwrites the shard: it holds gradients
                        // after the first iteration, which changes values, not the traffic).
                        unsafe {
                            gpu.vocab_shard_backward_raw(
                                raw,
                                DType::BF16,
                                IndexType::I64,
                                LogitsLayout::contiguous(n, sh.len),
                                sh.len,
                                *sh,
                                &ptrs,
                                &cfg,
                            )
                        }
                        .unwrap();
                        off += (n * sh.len * 2) as u64;
                    }
                })
            })
        });
        let _ = (&mut logits, &mut gathered);
    }
    g.finish();
}

criterion_group!(benches, cpu_reference, gpu_benches);
criterion_main!(benches);
