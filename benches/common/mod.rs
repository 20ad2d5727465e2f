//! Helpers shared by the criterion benches: deterministic pseudo-random inputs (never constants)
//! and CUDA-event timing of device work.
#![allow(dead_code)]
use std::time::Duration;

use pref_kernels::Gpu;

/// `n` values uniform in `[lo, hi)` from a xorshift generator seeded with `seed`.
pub fn pseudo(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// GPU time of `iters` runs of `f` on the default stream, measured with CUDA events after one
/// warm-up run (for criterion's `iter_custom`).
pub fn event_time(gpu: &Gpu, iters: u64, mut f: impl FnMut()) -> Duration {
    let stream = gpu.default_stream();
    let s = stream.cuda().expect("the GPU benches run on a CUDA device");
    f();
    s.synchronize().unwrap();
    let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let start = s.record_event(flags).unwrap();
    for _ in 0..iters {
        f();
    }
    let end = s.record_event(flags).unwrap();
    end.synchronize().unwrap();
    Duration::from_secs_f64(start.elapsed_ms(&end).unwrap() as f64 / 1e3)
}

/// A GPU for the benches, or `None` after printing why they are skipped.
pub fn gpu_or_skip() -> Option<Gpu> {
    match Gpu::new(0) {
        Ok(g) => Some(g),
        Err(e) => {
            println!("SKIP GPU benches: {e}");
            None
        }
    }
}
