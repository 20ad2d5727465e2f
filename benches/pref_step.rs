//! Criterion benches of the per-sequence reductions, the preference losses and the whole step.
//!
//! - CPU reference: DPO and TAB-PO losses over 8 / 64 / 512 pairs of 1024-token sequences.
//! - GPU (skipped, with the reason printed, without a GPU): the loss alone (three small launches,
//!   raw API, no synchronization inside the timed loop) at the same sizes, and the whole DPO step
//!   on the batch (8 pairs x 1024 tokens, V = 128256, bf16; `preference_step`, which
//!   synchronizes once to read the metrics) next to token log-probs forward + backward alone.
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use pref_kernels::preference_loss::{
    preference_loss_workspace_len, reference, DevicePairs, LossConfig, Pairs, PreferenceLossPtrs, RawPairs,
    METRICS_LEN,
};
use pref_kernels::seq_reduce::{DeviceSeqLayout, DeviceSeqs, SeqLayout, SeqReducePtrs, TokenInputs};
use pref_kernels::step::{GradLogits, StepBatch};
use pref_kernels::token_logprobs::TokenLogprobsOutputs;
use pref_kernels::{LogitsLayout, TokenLogprobsConfig};

mod common;
use common::{event_time, gpu_or_skip, pseudo};

const SEQ_LEN: usize = 1024;

fn cpu_losses(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu_reference_loss");
    g.sample_size(10).measurement_time(Duration::from_secs(2));
    for pairs in [8usize, 64, 512] {
        let n = 2 * pairs * SEQ_LEN;
        let (logp, ref_logp, weights) =
            (pseudo(n, 1, -8.0, -0.01), pseudo(n, 2, -8.0, -0.01), pseudo(n, 3, 0.5, 1.5));
        let tokens =
            TokenInputs { logp: &logp, mask: None, weights: Some(&weights), ref_logp: Some(&ref_logp) };
        let layout = SeqLayout::Padded { n_seqs: 2 * pairs, seq_len: SEQ_LEN };
        g.throughput(Throughput::Elements(n as u64));
        for (name, cfg) in [("dpo", LossConfig::dpo(0.1)), ("tabpo", LossConfig::tabpo())] {
            g.bench_function(BenchmarkId::new(name, pairs), |b| {
                b.iter(|| {
                    reference::forward_backward(&tokens, &layout, &Pairs::FirstHalfChosen, None, &cfg)
                        .unwrap()
                })
            });
        }
    }
    g.finish();
}

fn gpu_benches(c: &mut Criterion) {
    let Some(gpu) = gpu_or_skip() else { return };
    let s = gpu.default_stream();
    let mut g = c.benchmark_group("gpu_preference_loss");
    g.sample_size(30).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    for pairs in [8usize, 64, 512] {
        let n = 2 * pairs * SEQ_LEN;
        let logp = s.clone_htod(&pseudo(n, 1, -8.0, -0.01)).unwrap();
        let ref_logp = s.clone_htod(&pseudo(n, 2, -8.0, -0.01)).unwrap();
        let weights = s.clone_htod(&pseudo(n, 3, 0.5, 1.5)).unwrap();
        let mut grad = s.alloc_zeros::<f32>(n).unwrap();
        let mut metrics = s.alloc_zeros::<f32>(METRICS_LEN).unwrap();
        let mut work = s.alloc_zeros::<f32>(preference_loss_workspace_len(2 * pairs, pairs)).unwrap();
        use pref_kernels::runtime::{DevicePtr, DevicePtrMut};
        let (lp, _a) = logp.device_ptr(&s).unwrap();
        let (rp, _b) = ref_logp.device_ptr(&s).unwrap();
        let (wp, _c) = weights.device_ptr(&s).unwrap();
        let (gp, _d) = grad.device_ptr_mut(&s).unwrap();
        let (mp, _e) = metrics.device_ptr_mut(&s).unwrap();
        let (kp, _f) = work.device_ptr_mut(&s).unwrap();
        let tokens = SeqReducePtrs { logp: lp, mask: 0, weights: wp, ref_logp: rp };
        let ptrs = PreferenceLossPtrs {
            ref_seq: 0,
            seq_weights: 0,
            pair_out: 0,
            metrics: mp,
            grad_logp: gp,
            workspace: kp,
            status: 0,
        };
        let layout = DeviceSeqLayout::Padded { n_seqs: 2 * pairs, seq_len: SEQ_LEN };
        g.throughput(Throughput::Bytes((n * 4 * 4) as u64)); // logp, ref, weights read + grad written
        for (name, cfg) in [("dpo", LossConfig::dpo(0.1)), ("tabpo", LossConfig::tabpo())] {
            g.bench_function(BenchmarkId::new(name, pairs), |b| {
                b.iter_custom(|it| {
                    event_time(&gpu, it, || unsafe {
                        gpu.preference_loss_raw(0, &tokens, n, layout, RawPairs::FirstHalfChosen, &cfg, &ptrs)
                            .unwrap()
                    })
                })
            });
        }
    }
    g.finish();

    // The whole DPO step on the batch vs token log-probs forward + backward alone.
    let mut g = c.benchmark_group("gpu_dpo_step_bf16");
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    let (pairs, vocab) = (8usize, 128256usize);
    let n = 2 * pairs * SEQ_LEN;
    let layout = LogitsLayout::contiguous(n, vocab);
    let host: Vec<bf16> = pseudo(n * vocab, 9, -5.0, 5.0).into_iter().map(bf16::from_f32).collect();
    let mut logits = s.clone_htod(&host).unwrap();
    drop(host);
    let tv: Vec<i64> = (0..n as i64).map(|i| (i * 7919) % vocab as i64).collect();
    let targets = s.clone_htod(&tv).unwrap();
    let ref_logp = s.clone_htod(&pseudo(n, 2, -14.0, -9.0)).unwrap();
    let mut grad = s.alloc_zeros::<bf16>(n * vocab).unwrap();
    let mut logp = s.alloc_zeros::<f32>(n).unwrap();
    let mut lse = s.alloc_zeros::<f32>(n).unwrap();
    let mut stats = s.alloc_zeros::<f32>(2 * n).unwrap();
    let ones = s.clone_htod(&vec![1.0f32; n]).unwrap();
    let token_cfg = TokenLogprobsConfig { check_targets: false, ..Default::default() };
    g.throughput(Throughput::Bytes(3 * (n * vocab * 2) as u64));
    g.bench_function("token_logprobs_fwd_bwd", |b| {
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
                gpu.token_logprobs_forward(&s, &logits, layout, &targets, out, &token_cfg).unwrap();
                gpu.token_logprobs_backward(
                    &s, &logits, layout, &targets, &stats, &ones, &mut grad, vocab, &token_cfg,
                )
                .unwrap();
            })
        })
    });
    g.bench_function("dpo_step_separate_grad", |b| {
        b.iter_custom(|it| {
            event_time(&gpu, it, || {
                let batch = StepBatch {
                    layout,
                    targets: targets.as_view(),
                    mask: None,
                    weights: None,
                    ref_logp: Some(ref_logp.as_view()),
                    ref_seq: None,
                    seqs: DeviceSeqs::Padded { n_seqs: 2 * pairs, seq_len: SEQ_LEN },
                    pairs: DevicePairs::FirstHalfChosen,
                };
                let grad = GradLogits::Separate { grad: grad.as_view_mut(), row_stride: vocab };
                gpu.preference_step(
                    &s,
                    &mut logits.as_view_mut(),
                    &batch,
                    &token_cfg,
                    &LossConfig::dpo(0.1),
                    grad,
                )
                .unwrap();
            })
        })
    });
    g.finish();
}

criterion_group!(benches, cpu_losses, gpu_benches);
criterion_main!(benches);
