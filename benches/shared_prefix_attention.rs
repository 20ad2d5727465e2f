//! Criterion benches of shared-prefix group attention.
//!
//! - CPU reference on a tiny layout (always runs).
//! - GPU (skipped, with the reason printed, without a GPU): G in {2, 8, 16}, P in {1024, 4096},
//!   R in {256, 512}, 32 query heads, 8 KV heads, d = 128, bf16; forward and forward+backward.
//!   Throughput is reported in FLOP/s counting the shared (deduplicated) work: forward
//!   4 * d * pairs * Hq, forward+backward 3.5x that (prefix_attention.md section 2).
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use pref_kernels::shared_prefix_attention::{
    reference, AttnSaved, AttnShape, AttnVersion, PrefixGroup, SharedPrefixLayout,
};

mod common;
use common::{event_time, gpu_or_skip};

fn pseudo(n: usize, seed: u64) -> Vec<bf16> {
    common::pseudo(n, seed, -1.5, 1.5).into_iter().map(bf16::from_f32).collect()
}

fn cpu_reference(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu_reference_shared_prefix_attention");
    g.sample_size(10).measurement_time(Duration::from_secs(2));
    let l = SharedPrefixLayout::from_lengths(vec![PrefixGroup { prefix_len: 64, resp_lens: vec![16, 16] }])
        .unwrap();
    let shape = AttnShape::new(2, 1, 64);
    let t = l.total_tokens();
    let (q, k) = (pseudo(t * 128, 1), pseudo(t * 64, 2));
    g.bench_function("forward_96tok", |b| b.iter(|| reference::forward(&q, &k, &k, &l, &shape).unwrap()));
    g.finish();
}

fn gpu_benches(c: &mut Criterion) {
    let Some(gpu) = gpu_or_skip() else { return };
    let s = gpu.default_stream();
    let shape = AttnShape::new(32, 8, 128);
    let mut grp = c.benchmark_group("gpu_shared_prefix_attention_bf16_h32_kv8_d128");
    grp.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    for groups in [2usize, 8, 16] {
        for p in [1024usize, 4096] {
            for r in [256usize, 512] {
                let l = SharedPrefixLayout::from_lengths(vec![PrefixGroup {
                    prefix_len: p,
                    resp_lens: vec![r; groups],
                }])
                .unwrap();
                let t = l.total_tokens();
                let dl = gpu.upload_prefix_layout(&s, &l).unwrap();
                let q = s.clone_htod(&pseudo(t * 32 * 128, 3)).unwrap();
                let k = s.clone_htod(&pseudo(t * 8 * 128, 4)).unwrap();
                let v = s.clone_htod(&pseudo(t * 8 * 128, 5)).unwrap();
                let dout = s.clone_htod(&pseudo(t * 32 * 128, 6)).unwrap();
                let mut o = s.alloc_zeros::<bf16>(t * 32 * 128).unwrap();
                let mut lse = s.alloc_zeros::<f32>(32 * t).unwrap();
                let mut dq = s.alloc_zeros::<bf16>(t * 32 * 128).unwrap();
                let mut dk = s.alloc_zeros::<bf16>(t * 8 * 128).unwrap();
                let mut dv = s.alloc_zeros::<bf16>(t * 8 * 128).unwrap();
                let fwd_flops = 4.0 * 128.0 * l.attended_pairs() as f64 * 32.0;
                let id = format!("G{groups}_P{p}_R{r}");
                grp.throughput(Throughput::Elements(fwd_flops as u64));
                // Every forward version in this process (the issue-25 comparison); v3 (wgmma)
                // where the device runs it (sm_90).
                let mut forwards = vec![(AttnVersion::V1, "forward_v1"), (AttnVersion::V2, "forward_v2")];
                if gpu.has_wgmma() {
                    forwards.push((AttnVersion::V3, "forward_v3"));
                }
                for (version, name) in forwards {
                    grp.bench_function(BenchmarkId::new(name, &id), |b| {
                        b.iter_custom(|it| {
                            event_time(&gpu, it, || {
                                gpu.shared_prefix_attention_forward_version(
                                    &s,
                                    version,
                                    &q.as_view(),
                                    &k.as_view(),
                                    &v.as_view(),
                                    &dl,
                                    shape,
                                    &mut o.as_view_mut(),
                                    &mut lse.as_view_mut(),
                                )
                                .unwrap()
                            })
                        })
                    });
                }
                grp.throughput(Throughput::Elements((3.5 * fwd_flops) as u64));
                let mut steps =
                    vec![(AttnVersion::V1, "forward_backward_v1"), (AttnVersion::V2, "forward_backward_v2")];
                if gpu.has_wgmma() {
                    steps.push((AttnVersion::V3, "forward_backward_v3"));
                }
                for (version, name) in steps {
                    grp.bench_function(BenchmarkId::new(name, &id), |b| {
                        b.iter_custom(|it| {
                            event_time(&gpu, it, || {
                                gpu.shared_prefix_attention_forward_version(
                                    &s,
                                    version,
                                    &q.as_view(),
                                    &k.as_view(),
                                    &v.as_view(),
                                    &dl,
                                    shape,
                                    &mut o.as_view_mut(),
                                    &mut lse.as_view_mut(),
                                )
                                .unwrap();
                                gpu.shared_prefix_attention_backward_version(
                                    &s,
                                    version,
                                    &AttnSaved {
                                        q: q.as_view(),
                                        k: k.as_view(),
                                        v: v.as_view(),
                                        o: o.as_view(),
                                        lse: lse.as_view(),
                                    },
                                    &dout.as_view(),
                                    &dl,
                                    shape,
                                    &mut dq.as_view_mut(),
                                    &mut dk.as_view_mut(),
                                    &mut dv.as_view_mut(),
                                )
                                .unwrap();
                            })
                        })
                    });
                }
            }
        }
    }
    grp.finish();
}

criterion_group!(benches, cpu_reference, gpu_benches);
criterion_main!(benches);
