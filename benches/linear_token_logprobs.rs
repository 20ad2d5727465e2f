//! Criterion benches of the fused LM head (hidden states + LM-head weight, never `[N, V]` logits).
//!
//! - CPU: the f64 reference of the linear forms at a small shape (always runs; it is the oracle,
//!   not a competitor).
//! - GPU (skipped, with the reason printed, when no GPU is usable), bf16, H = 4096, (M used
//!   tokens, V) in {(8192, 131072), (4096, 128256), (16384, 151936)} (`PREF_KERNELS_BENCH_SHAPES`
//!   picks some):
//!   1. the floor: one cuBLAS bf16 GEMM `[M, H] x [H, V]` (f32 accumulate, bf16 out) through
//!      cudarc, the same GEMM the fused path runs per chunk. Throughput is counted in "elements"
//!      = FLOPs (2MHV), so criterion's elem/s is FLOP/s: the measured GEMM rate.
//!   2. `linear_token_logprobs_forward` (2MHV FLOPs: one GEMM per token),
//!      `linear_preference_step` (DPO) and `linear_grpo_step` (TRL's dapo; both 6MHV FLOPs:
//!      logits, d_hidden, d_weight GEMMs) with the default 768 MiB workspace; the fraction of the floor is (their FLOP/s) / (the GEMM's).
//!   3. the stream-ordered forward and forward + backward (what the PyTorch ops run: every row,
//!      the caller's workspace, no host synchronization, no gathers; 2MHV and 8MHV FLOPs: the
//!      backward recomputes the logits, as Liger's published 700 effective TFLOP/s counts), the
//!      latter with the row pass on a second stream (the default) and on the caller's stream
//!      alone (`PREF_KERNELS_HEAD_STREAMS=1`), so one run measures what the overlap buys.
//!
//! Each call includes what a trainer pays per step: the one read-back of the targets that plans
//! the chunks, zero-filling the f32 `d_weight` (V x H x 4 bytes) and the final status check.
//! Peak extra memory is the workspace (printed per shape) plus the plan's index arrays; the
//! outputs (`d_hidden`, f32 `d_weight`) are what any implementation returns. The weight (1 GB+)
//! far exceeds the 50 MB L2, so no input rotation is needed.
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use pref_kernels::grpo::GrpoConfig;
use pref_kernels::linear_token_logprobs::{
    ordered_workspace_bytes, reference, LinearConfig, LinearForwardViews, LinearGradViews, LinearHead,
    LinearShape, OrderedWorkspace, DEFAULT_WORKSPACE_BYTES,
};
use pref_kernels::preference_loss::{LossConfig, Pairs};
use pref_kernels::seq_reduce::SeqLayout;
use pref_kernels::step::{LinearGrpoBatch, LinearStepBatch};
use pref_kernels::{DType, DeviceBuffer, Gpu, Stream, TokenLogprobsConfig, View};

mod common;
use common::{event_time, gpu_or_skip, pseudo};

const HIDDEN: usize = 4096;
const SEQ_LEN: usize = 1024;

fn cpu_reference(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu_reference_linear");
    g.sample_size(10).measurement_time(Duration::from_secs(2));
    let shape = LinearShape { n_rows: 16, hidden: 64, vocab: 2048 };
    let hidden = pseudo(16 * 64, 1, -2.0, 2.0);
    let weight = pseudo(2048 * 64, 2, -0.25, 0.25);
    let targets: Vec<i64> = (0..16).map(|i| (i * 131) % 2048).collect();
    let cfg = TokenLogprobsConfig::default();
    g.throughput(Throughput::Elements((2 * 16 * 64 * 2048) as u64));
    g.bench_function("forward_16x64x2048", |b| {
        b.iter(|| reference::forward(&hidden, &weight, None, shape, &targets, &cfg).unwrap())
    });
    g.finish();
}

/// `n` pseudo-random bf16 values in `[lo, hi)`.
/// The stream-ordered forward into `logp` and `lse`, `work` its workspace (what the PyTorch ops run).
#[allow(clippy::too_many_arguments)]
fn ordered_forward(
    gpu: &Gpu,
    stream: &Stream,
    head: &LinearHead<'_, bf16>,
    targets: &View<'_, i64>,
    logp: &mut DeviceBuffer<f32>,
    lse: &mut DeviceBuffer<f32>,
    work: &mut DeviceBuffer<u8>,
    token: &TokenLogprobsConfig,
) {
    let out = LinearForwardViews::new(logp.as_view_mut(), lse.as_view_mut(), None);
    let ws = OrderedWorkspace { workspace: work.as_view_mut(), status: None };
    gpu.linear_token_logprobs_forward_ordered(stream, head, targets, out, ws, token).unwrap();
}

fn random_bf16(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<bf16> {
    pseudo(n, seed, lo, hi).into_iter().map(bf16::from_f32).collect()
}

fn gpu_benches(c: &mut Criterion) {
    let Some(gpu) = gpu_or_skip() else { return };
    if let Err(e) = gpu.gemm_available() {
        println!("SKIP linear GPU benches: {e}");
        return;
    }
    let stream = gpu.default_stream();
    let cuda = stream.cuda().expect("a CUDA stream").clone();
    let blas = cudarc::cublas::CudaBlas::new(cuda.clone()).unwrap();
    let mut g = c.benchmark_group("gpu_linear_bf16");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));

    // `PREF_KERNELS_BENCH_SHAPES`: comma-separated ids (`M8192_H4096_V131072`) to set up and run
    // (criterion's filter skips the timing, not the seconds of random data of each shape); unset:
    // all. M8192 V131072 is the shape of Liger's published CuTe fused-head figure.
    let selected = std::env::var("PREF_KERNELS_BENCH_SHAPES").ok();
    for (m, vocab) in [(8192usize, 131072usize), (4096, 128256), (16384, 151936)] {
        let id = format!("M{m}_H{HIDDEN}_V{vocab}");
        if selected.as_deref().is_some_and(|ids| !ids.split(',').any(|x| x.trim() == id)) {
            continue;
        }
        {
            let weight = cuda.clone_htod(&random_bf16(vocab * HIDDEN, vocab as u64, -0.03, 0.03)).unwrap();
            let hidden = cuda.clone_htod(&random_bf16(m * HIDDEN, m as u64 + 7, -2.0, 2.0)).unwrap();
            let flops = 2 * (m * HIDDEN * vocab) as u64;

            // 1. The floor: the logits GEMM alone (row-major [M, V] = hidden · weightᵀ).
            let mut logits = cuda.alloc_zeros::<bf16>(m * vocab).unwrap();
            let cfg = cudarc::cublas::GemmConfig {
                transa: cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T,
                transb: cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N,
                m: vocab as i32,
                n: m as i32,
                k: HIDDEN as i32,
                alpha: bf16::ONE,
                lda: HIDDEN as i32,
                ldb: HIDDEN as i32,
                beta: bf16::ZERO,
                ldc: vocab as i32,
            };
            g.throughput(Throughput::Elements(flops));
            g.bench_function(BenchmarkId::new("cublas_gemm_floor", &id), |b| {
                b.iter_custom(|it| {
                    event_time(&gpu, it, || {
                        use cudarc::cublas::Gemm;
                        // SAFETY: the three buffers are sized for the shapes in `cfg`.
                        unsafe { blas.gemm(cfg, &weight, &hidden, &mut logits) }.unwrap()
                    })
                })
            });
            drop(logits);

            // 2. The fused paths: no [M, V] tensor, chunks within the default 768 MiB workspace.
            let shape = LinearShape { n_rows: m, hidden: HIDDEN, vocab };
            let head = LinearHead {
                hidden: View::from_cuda(&hidden, &cuda),
                weight: View::from_cuda(&weight, &cuda),
                bias: None,
                shape,
            };
            let tv: Vec<i64> = (0..m as i64).map(|i| (i * 7919) % vocab as i64).collect();
            let targets = stream.clone_htod(&tv).unwrap();
            let ref_logp = stream.clone_htod(&pseudo(m, 3, -14.0, -9.0)).unwrap();
            let lin = LinearConfig {
                token: TokenLogprobsConfig { check_targets: false, ..Default::default() },
                ..Default::default()
            };
            let probe = gpu.linear_token_logprobs_forward(&stream, &head, &targets.as_view(), &lin).unwrap();
            println!(
                "{id}: workspace {:.3} GB in {} chunks (d_weight f32 output {:.2} GB)",
                probe.workspace_bytes as f64 / 1e9,
                probe.n_chunks,
                (vocab * HIDDEN * 4) as f64 / 1e9
            );
            drop(probe);
            g.throughput(Throughput::Elements(flops));
            g.bench_function(BenchmarkId::new("forward", &id), |b| {
                b.iter_custom(|it| {
                    event_time(&gpu, it, || {
                        gpu.linear_token_logprobs_forward(&stream, &head, &targets.as_view(), &lin).unwrap();
                    })
                })
            });
            // 3. The stream-ordered path the PyTorch ops take: every row, the caller's workspace
            //    (the default budget), no synchronization; forward and forward + backward.
            let ws_bytes =
                ordered_workspace_bytes(&shape, DType::BF16, m).unwrap().min(DEFAULT_WORKSPACE_BYTES);
            let mut work = stream.alloc_zeros::<u8>(ws_bytes).unwrap();
            let (mut logp, mut lse) =
                (stream.alloc_zeros::<f32>(m).unwrap(), stream.alloc_zeros::<f32>(m).unwrap());
            let gl = stream.clone_htod(&vec![0.5f32; m]).unwrap();
            let mut dh = stream.alloc_zeros::<bf16>(m * HIDDEN).unwrap();
            let mut dw = stream.alloc_zeros::<f32>(vocab * HIDDEN).unwrap();
            let token = TokenLogprobsConfig { check_targets: false, ..Default::default() };
            g.throughput(Throughput::Elements(flops));
            g.bench_function(BenchmarkId::new("forward_stream_ordered", &id), |b| {
                b.iter_custom(|it| {
                    event_time(&gpu, it, || {
                        ordered_forward(
                            &gpu,
                            &stream,
                            &head,
                            &targets.as_view(),
                            &mut logp,
                            &mut lse,
                            &mut work,
                            &token,
                        );
                    })
                })
            });
            // Four GEMMs: the forward's, then the backward's recompute, dW and dX (8MHV).
            g.throughput(Throughput::Elements(4 * flops));
            let mut fwd_bwd_ordered = |name: &str, streams: &str| {
                // Read at every call: the row pass on a second stream (2) or after each GEMM (1).
                std::env::set_var("PREF_KERNELS_HEAD_STREAMS", streams);
                g.bench_function(BenchmarkId::new(name, &id), |b| {
                    b.iter_custom(|it| {
                        event_time(&gpu, it, || {
                            ordered_forward(
                                &gpu,
                                &stream,
                                &head,
                                &targets.as_view(),
                                &mut logp,
                                &mut lse,
                                &mut work,
                                &token,
                            );
                            let grads = LinearGradViews {
                                d_hidden: dh.as_view_mut(),
                                d_weight: dw.as_view_mut(),
                                d_bias: None,
                            };
                            let ws = OrderedWorkspace { workspace: work.as_view_mut(), status: None };
                            gpu.linear_token_logprobs_backward_ordered(
                                &stream,
                                &head,
                                &targets.as_view(),
                                &gl.as_view(),
                                None,
                                grads,
                                ws,
                                &token,
                            )
                            .unwrap();
                        })
                    })
                });
                std::env::remove_var("PREF_KERNELS_HEAD_STREAMS");
            };
            fwd_bwd_ordered("forward_backward_stream_ordered", "2");
            fwd_bwd_ordered("forward_backward_stream_ordered_one_stream", "1");
            let batch = LinearStepBatch {
                targets: targets.as_view(),
                weights: None,
                ref_logp: Some(ref_logp.as_view()),
                ref_seq: None,
                seqs: SeqLayout::Padded { n_seqs: m / SEQ_LEN, seq_len: SEQ_LEN },
                pairs: Pairs::FirstHalfChosen,
            };
            let dpo = LossConfig::dpo(0.1);
            g.throughput(Throughput::Elements(3 * flops));
            g.bench_function(BenchmarkId::new("dpo_step", &id), |b| {
                b.iter_custom(|it| {
                    event_time(&gpu, it, || {
                        gpu.linear_preference_step(&stream, &head, &batch, &dpo, &lin).unwrap();
                    })
                })
            });
            // The GRPO step (TRL's default dapo, β 0.04, old and reference log-probs): the same
            // three GEMMs, chunked by whole sequences.
            let n_seqs = m / SEQ_LEN;
            let old_logp = stream.clone_htod(&pseudo(m, 5, -14.0, -9.0)).unwrap();
            let adv = stream.clone_htod(&pseudo(n_seqs, 6, -1.0, 1.0)).unwrap();
            let grpo_batch = LinearGrpoBatch {
                targets: targets.as_view(),
                mask: None,
                old_logp: Some(old_logp.as_view()),
                sampling_logp: None,
                ref_logp: Some(ref_logp.as_view()),
                is_weights: None,
                advantages: adv.as_view(),
                seqs: SeqLayout::Padded { n_seqs, seq_len: SEQ_LEN },
            };
            let grpo = GrpoConfig { beta: 0.04, ..GrpoConfig::trl() };
            g.bench_function(BenchmarkId::new("grpo_step", &id), |b| {
                b.iter_custom(|it| {
                    event_time(&gpu, it, || {
                        gpu.linear_grpo_step(&stream, &head, &grpo_batch, &grpo, &lin).unwrap();
                    })
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, cpu_reference, gpu_benches);
criterion_main!(benches);
