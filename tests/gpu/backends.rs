//! Cross-backend test: on a machine with a GPU, the emulator and the GPU run the same kernels on
//! the same inputs and agree within the f32 tolerances of the parity tests (bitwise equality is
//! not expected: the GPU's exp2/log2/rcp are hardware approximations and mma sums in its own
//! order).
use half::bf16;
use pref_kernels::token_logprobs::TokenLogprobsOutputs;
use pref_kernels::{BackendKind, Gpu, LogitsLayout, TokenLogprobsConfig};
use rand::Rng;

use crate::common::{assert_close, logits as random_logits, rng};
use crate::Case;

fn token_logprobs_on(
    gpu: &Gpu,
    host: &[bf16],
    targets: &[i64],
    layout: LogitsLayout,
) -> (Vec<f32>, Vec<f32>) {
    let s = gpu.default_stream();
    let cfg = TokenLogprobsConfig { compute_entropy: true, ..Default::default() };
    let logits = s.clone_htod(host).unwrap();
    let t = s.clone_htod(targets).unwrap();
    let n = layout.n_rows;
    let (mut logp, mut lse, mut ent) = (
        s.alloc_zeros::<f32>(n).unwrap(),
        s.alloc_zeros::<f32>(n).unwrap(),
        s.alloc_zeros::<f32>(n).unwrap(),
    );
    let out = TokenLogprobsOutputs {
        logp: logp.as_view_mut(),
        lse: lse.as_view_mut(),
        entropy: Some(ent.as_view_mut()),
        stats: None,
        log_sum_sq: None,
        mean_logits: None,
        is_top1: None,
    };
    gpu.token_logprobs_forward(&s, &logits, layout, &t, out, &cfg).unwrap();
    (s.clone_dtoh(&logp).unwrap(), s.clone_dtoh(&ent).unwrap())
}

fn emulator_matches_the_gpu(gpu: &Gpu, seed: u64) {
    assert!(gpu.backend() == BackendKind::Cuda, "runs on the CUDA pass only");
    // Opened here even when this run's backends exclude it (PREF_KERNELS_BACKEND=cuda).
    let emu = Gpu::emulator().expect("the emulator is needed for the cross-backend comparison");
    let mut r = rng(seed, 0xC0FFEE);
    for vocab in [7usize, 1000, 32001, 151936] {
        let n = 8;
        let layout = LogitsLayout::contiguous(n, vocab);
        let host: Vec<bf16> = random_logits(&mut r, n * vocab).into_iter().map(bf16::from_f32).collect();
        let targets: Vec<i64> = (0..n).map(|_| r.random_range(0..vocab as i64)).collect();
        let (a, ea) = token_logprobs_on(gpu, &host, &targets, layout);
        let (b, eb) = token_logprobs_on(&emu, &host, &targets, layout);
        for i in 0..n {
            assert_close(
                &format!("V={vocab} logp[{i}] gpu vs emulator"),
                a[i] as f64,
                b[i] as f64,
                2e-4,
                1e-5,
            );
            assert_close(
                &format!("V={vocab} entropy[{i}] gpu vs emulator"),
                ea[i] as f64,
                eb[i] as f64,
                5e-4,
                1e-4,
            );
        }
    }
}

pub fn cases() -> Vec<Case> {
    vec![Case { name: "emulator_matches_the_gpu", run: Box::new(emulator_matches_the_gpu) }]
}
