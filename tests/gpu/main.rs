//! Kernel parity tests against the f64 CPU reference, on every backend this machine has: the CPU
//! emulator always (the kernels' own CUDA source with memcheck/racecheck/initcheck/synccheck on),
//! and a CUDA GPU when one is usable.
//!
//! A custom runner (harness = false): a backend that is missing reports its tests as SKIPPED with
//! the reason, never "ok"; `PREF_KERNELS_REQUIRE_GPU=1` makes a missing GPU a failure, and
//! `PREF_KERNELS_REQUIRE_NVCC=1` a missing emulator. `PREF_KERNELS_BACKEND=emulator|cuda` runs
//! one backend only. Tests that need real hardware (sizes beyond the emulator's reach, the
//! emulator-vs-GPU comparison) are SKIPPED on the emulator with the reason. Arguments: an optional
//! substring filter. Random inputs are fresh each run; the seed is printed and
//! `PREF_KERNELS_SEED` replays it.
#![allow(clippy::needless_range_loop)] // tests index several parallel arrays by position
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use pref_kernels::{Backend, BackendKind, Gpu};

mod backends;
mod common;
mod group_loss;
mod grpo;
mod linear;
mod preference_loss;
mod shared_prefix_attention;
mod token_logprobs;
mod token_stats;
mod vocab_parallel;

/// True on the stand-in driver (libcuda running the emulator: kernels/emulator/standin.cpp).
pub fn is_standin(gpu: &Gpu) -> bool {
    gpu.cuda_context().is_some_and(|c| c.name().is_ok_and(|n| n.contains("stand-in")))
}

/// A test body: gets the handle (CUDA or emulator) and the run's seed; panics on failure.
pub type TestFn = Box<dyn Fn(&Gpu, u64)>;

/// One kernel test.
pub struct Case {
    pub name: &'static str,
    pub run: TestFn,
}

/// Tests that need real hardware, with the reason; they are SKIPPED on the emulator.
const HARDWARE_ONLY: &[(&str, &str)] = &[
    ("beyond_2_pow_31_elements", "4.3 GB of logits (2^31+ elements): needs device memory and speed"),
    ("emulator_matches_the_gpu", "compares the two backends: needs the GPU"),
    ("vocab_parallel_nccl", "NCCL runs on CUDA devices only"),
];

fn env_is(var: &str, value: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == value)
}

fn main() {
    let require_gpu = env_is("PREF_KERNELS_REQUIRE_GPU", "1");
    let require_emulator = env_is("PREF_KERNELS_REQUIRE_NVCC", "1");
    let only = Backend::from_env().expect("PREF_KERNELS_BACKEND");
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let cases: Vec<Case> = token_logprobs::cases()
        .into_iter()
        .chain(token_stats::cases())
        .chain(preference_loss::cases())
        .chain(grpo::cases())
        .chain(group_loss::cases())
        .chain(linear::cases())
        .chain(shared_prefix_attention::cases())
        .chain(backends::cases())
        .chain(vocab_parallel::cases())
        .filter(|c| filter.as_deref().is_none_or(|f| c.name.contains(f)))
        .collect();
    let seed = std::env::var("PREF_KERNELS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("kernel tests: {} cases, seed {seed} (replay with PREF_KERNELS_SEED={seed})", cases.len());

    let mut devices: Vec<Gpu> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    let (mut passed, mut skipped) = (0usize, 0usize);
    for kind in [BackendKind::Emulator, BackendKind::Cuda] {
        let wanted = match only {
            Some(Backend::Cuda) => kind == BackendKind::Cuda,
            Some(Backend::Emulator) => kind == BackendKind::Emulator,
            _ => true,
        };
        let required = match kind {
            BackendKind::Cuda => require_gpu,
            BackendKind::Emulator => require_emulator && only != Some(Backend::Cuda),
        };
        let opened = if !wanted {
            Err("not selected by PREF_KERNELS_BACKEND".to_string())
        } else if kind == BackendKind::Cuda {
            Gpu::new(0).map_err(|e| format!("no usable GPU: {e}"))
        } else {
            Gpu::emulator().map_err(|e| format!("no emulator: {e}"))
        };
        match opened {
            Ok(g) => devices.push(g),
            Err(why) => {
                if required {
                    eprintln!("FAILED: the {} backend is required but unavailable: {why}", kind.name());
                    failed.push(format!("backend {}", kind.name()));
                    continue;
                }
                for c in &cases {
                    println!("test {} [{}] ... SKIPPED", c.name, kind.name());
                }
                println!("SKIPPED {} tests on the {} backend: {why}", cases.len(), kind.name());
                if kind == BackendKind::Cuda {
                    println!("(set PREF_KERNELS_REQUIRE_GPU=1 to make this a failure)");
                }
                skipped += cases.len();
            }
        }
    }
    for gpu in &devices {
        let b = gpu.backend().name();
        println!("\nrunning {} tests on the {b} backend: {gpu:?}", cases.len());
        // The stand-in driver (libcuda running the emulator, see kernels/emulator/standin.cpp)
        // exercises the CUDA host path; what needs real hardware's memory and speed skips there too.
        let standin = is_standin(gpu);
        for c in &cases {
            let emulated =
                gpu.backend() == BackendKind::Emulator || (standin && c.name != "emulator_matches_the_gpu");
            if emulated {
                if let Some((_, why)) = HARDWARE_ONLY.iter().find(|(n, _)| *n == c.name) {
                    println!("test {} [{b}] ... SKIPPED ({why})", c.name);
                    skipped += 1;
                    continue;
                }
            }
            let t0 = Instant::now();
            let r = catch_unwind(AssertUnwindSafe(|| (c.run)(gpu, seed)));
            let dt = t0.elapsed().as_secs_f64();
            match r {
                Ok(()) => {
                    println!("test {} [{b}] ... ok ({dt:.2}s)", c.name);
                    passed += 1;
                }
                Err(_) => {
                    println!("test {} [{b}] ... FAILED ({dt:.2}s)", c.name);
                    failed.push(format!("{} [{b}]", c.name));
                }
            }
        }
    }
    println!("\nkernel test result: {passed} passed; {} failed; {skipped} skipped", failed.len());
    if !failed.is_empty() {
        println!("failures: {failed:?} (seed {seed})");
        std::process::exit(1);
    }
}
