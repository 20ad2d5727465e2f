//! GPU parity tests against the f64 CPU reference.
//!
//! A custom runner (harness = false) so a machine without a usable GPU reports every test as
//! SKIPPED with the reason, instead of a misleading "ok"; with `PREF_KERNELS_REQUIRE_GPU=1` a
//! missing GPU fails the run. Arguments: an optional substring filter. Random inputs are fresh
//! each run; the seed is printed and `PREF_KERNELS_SEED` replays it.
#![allow(clippy::needless_range_loop)] // tests index several parallel arrays by position
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use pref_kernels::Gpu;

mod common;
mod pref_loss;
mod prefix_attn;
mod token_logprobs;

/// A GPU test body: gets the shared handle and the run's seed; panics on failure.
pub type TestFn = Box<dyn Fn(&Gpu, u64)>;

/// One GPU test.
pub struct Case {
    pub name: &'static str,
    pub run: TestFn,
}

fn main() {
    let require = std::env::var("PREF_KERNELS_REQUIRE_GPU").is_ok_and(|v| v == "1");
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let cases: Vec<Case> = token_logprobs::cases()
        .into_iter()
        .chain(pref_loss::cases())
        .chain(prefix_attn::cases())
        .filter(|c| filter.as_deref().is_none_or(|f| c.name.contains(f)))
        .collect();
    let gpu = match Gpu::new(0) {
        Ok(g) => g,
        Err(e) => {
            if require {
                eprintln!("FAILED: PREF_KERNELS_REQUIRE_GPU=1 but no usable GPU: {e}");
                std::process::exit(1);
            }
            for c in &cases {
                println!("test {} ... SKIPPED", c.name);
            }
            println!("\nSKIPPED {} GPU tests: no usable GPU: {e}", cases.len());
            println!("(set PREF_KERNELS_REQUIRE_GPU=1 to make this a failure)");
            return;
        }
    };
    let seed = std::env::var("PREF_KERNELS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!(
        "running {} GPU tests on {:?} (seed {seed}; replay with PREF_KERNELS_SEED={seed})",
        cases.len(),
        gpu
    );
    let mut failed = Vec::new();
    for c in &cases {
        let t0 = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| (c.run)(&gpu, seed)));
        let dt = t0.elapsed().as_secs_f64();
        match r {
            Ok(()) => println!("test {} ... ok ({dt:.2}s)", c.name),
            Err(_) => {
                println!("test {} ... FAILED ({dt:.2}s)", c.name);
                failed.push(c.name);
            }
        }
    }
    println!("\nGPU test result: {} passed; {} failed", cases.len() - failed.len(), failed.len());
    if !failed.is_empty() {
        println!("failures: {failed:?} (seed {seed})");
        std::process::exit(1);
    }
}
