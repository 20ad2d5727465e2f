//! Criterion benches of the GRPO loss stage, from per-token log-probs.
//!
//! - CPU reference: GRPO (`dapo`, token and sequence level, with KL and entropy bonus) over
//!   16 / 128 completions of 512 tokens (the GPU also 1024).
//! - GPU (skipped, with the reason printed, without a GPU): the same loss on the raw API (three
//!   or four small launches, no synchronization in the timed loop), throughput counted as the
//!   per-token bytes read and written (logp, old, ref, entropy, mask in; dL/dlogp, dL/dH out).
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pref_kernels::grpo::reference::{grpo_loss, GrpoTokens};
use pref_kernels::grpo::{grpo_workspace_len, GrpoConfig, GrpoPtrs, ImportanceLevel, GRPO_METRICS_LEN};
use pref_kernels::seq_reduce::{DeviceSeqLayout, SeqLayout};

mod common;
use common::{event_time, gpu_or_skip, pseudo};

const SEQ_LEN: usize = 512;

fn configs() -> [(&'static str, GrpoConfig); 3] {
    let base = GrpoConfig { beta: 0.04, entropy_coef: 0.01, ..GrpoConfig::trl() };
    [
        ("dapo_token", base),
        ("gspo_sequence", GrpoConfig { importance: ImportanceLevel::Sequence, ..base }),
        ("dapo_top_entropy_0.2", GrpoConfig { top_entropy_quantile: 0.2, ..base }),
    ]
}

fn cpu_grpo(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu_reference_grpo");
    g.sample_size(10).measurement_time(Duration::from_secs(2));
    for seqs in [16usize, 128] {
        let n = seqs * SEQ_LEN;
        let (logp, old, reference, entropy) = (
            pseudo(n, 1, -6.0, -0.01),
            pseudo(n, 2, -6.0, -0.01),
            pseudo(n, 3, -6.0, -0.01),
            pseudo(n, 4, 0.0, 5.0),
        );
        let adv = pseudo(seqs, 5, -1.0, 1.0);
        let tokens = GrpoTokens {
            logp: &logp,
            old_logp: Some(&old),
            sampling_logp: None,
            ref_logp: Some(&reference),
            mask: None,
            is_weights: None,
            entropy: Some(&entropy),
        };
        let layout = SeqLayout::Padded { n_seqs: seqs, seq_len: SEQ_LEN };
        g.throughput(Throughput::Elements(n as u64));
        for (name, cfg) in configs() {
            g.bench_function(BenchmarkId::new(name, seqs), |b| {
                b.iter(|| grpo_loss(&tokens, &layout, &adv, &cfg).unwrap())
            });
        }
    }
    g.finish();
}

fn gpu_grpo(c: &mut Criterion) {
    let Some(gpu) = gpu_or_skip() else { return };
    let s = gpu.default_stream();
    let mut g = c.benchmark_group("gpu_grpo_loss");
    g.sample_size(30).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    for seqs in [16usize, 128, 1024] {
        let n = seqs * SEQ_LEN;
        let up = |v: Vec<f32>| s.clone_htod(&v).unwrap();
        let (logp, old, reference, entropy) = (
            up(pseudo(n, 1, -6.0, -0.01)),
            up(pseudo(n, 2, -6.0, -0.01)),
            up(pseudo(n, 3, -6.0, -0.01)),
            up(pseudo(n, 4, 0.0, 5.0)),
        );
        let adv = up(pseudo(seqs, 5, -1.0, 1.0));
        let mut grad = s.alloc_zeros::<f32>(n).unwrap();
        let mut grad_h = s.alloc_zeros::<f32>(n).unwrap();
        let mut metrics = s.alloc_zeros::<f32>(GRPO_METRICS_LEN).unwrap();
        let mut work = s.alloc_zeros::<f32>(grpo_workspace_len(seqs)).unwrap();
        use pref_kernels::runtime::{DevicePtr, DevicePtrMut};
        let (lp, _a) = logp.device_ptr(&s).unwrap();
        let (op, _b) = old.device_ptr(&s).unwrap();
        let (rp, _c) = reference.device_ptr(&s).unwrap();
        let (ep, _d) = entropy.device_ptr(&s).unwrap();
        let (ap, _e) = adv.device_ptr(&s).unwrap();
        let (gp, _f) = grad.device_ptr_mut(&s).unwrap();
        let (hp, _g) = grad_h.device_ptr_mut(&s).unwrap();
        let (mp, _h) = metrics.device_ptr_mut(&s).unwrap();
        let (wp, _i) = work.device_ptr_mut(&s).unwrap();
        let ptrs = GrpoPtrs {
            logp: lp,
            old_logp: op,
            sampling_logp: 0,
            ref_logp: rp,
            mask: 0,
            is_weights: 0,
            entropy: ep,
            advantages: ap,
            metrics: mp,
            grad_logp: gp,
            grad_entropy: hp,
            workspace: wp,
            status: 0,
        };
        let layout = DeviceSeqLayout::Padded { n_seqs: seqs, seq_len: SEQ_LEN };
        g.throughput(Throughput::Bytes((n * 4 * 6) as u64));
        for (name, cfg) in configs() {
            g.bench_function(BenchmarkId::new(name, seqs), |b| {
                b.iter_custom(|it| {
                    // SAFETY: the buffers above are live and sized for n tokens / seqs sequences.
                    event_time(&gpu, it, || unsafe { gpu.grpo_loss_raw(0, &ptrs, n, layout, &cfg).unwrap() })
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, cpu_grpo, gpu_grpo);
criterion_main!(benches);
