//! C ABI for callers outside Rust (PyTorch through ctypes, C++): plain integers and device
//! pointers, the caller's stream, 0 on success, -1 on error (message from [`prefk_last_error`]),
//! -2 when a Rust panic was caught (never unwinds across the boundary). Header: `include/prefk.h`.
//!
//! Each entry point takes the device: a CUDA ordinal (>= 0), or [`PREFK_DEVICE_EMULATOR`] (-1) for
//! the CPU emulator, whose pointers are host addresses of emulator allocations (or, with
//! `PREF_KERNELS_EMU_CHECKS=none`, any host memory). `PREF_KERNELS_BACKEND=emulator` makes every
//! ordinal the emulator. The first call on a device opens it ([`Gpu::open`](crate::Gpu::open): retains the primary
//! context PyTorch uses, loads every module) and later calls reuse it. Load eagerly (e.g. call
//! [`prefk_init`]) before capturing CUDA graphs.

mod group_loss;
mod grpo;
mod linear;
mod plumbing;
mod pref_loss;
mod prefix_attn;
mod runtime;
mod seq_reduce;
mod token_logprobs;
mod vocab_parallel;

// The shared helpers, in scope for the op files (`super::…`) and the tests.
use plumbing::*;
use pref_loss::loss_config;
#[cfg(test)]
use pref_loss::loss_of;

pub use group_loss::{prefk_group_loss, prefk_group_loss_check_labels, prefk_group_loss_workspace_len};
pub use grpo::{prefk_grpo_loss, prefk_grpo_workspace_len, PrefkGrpoConfig};
pub use linear::{
    prefk_linear_logprobs_backward, prefk_linear_logprobs_forward, prefk_linear_preference_step,
    prefk_linear_workspace_bytes,
};
pub use plumbing::PREFK_DEVICE_EMULATOR;
pub use pref_loss::{prefk_preference_loss, prefk_preference_loss_workspace_len, PrefkLossTerm};
pub use prefix_attn::{prefk_prefix_attn_backward, prefk_prefix_attn_forward, prefk_prefix_layout};
pub use runtime::{
    prefk_check_status, prefk_init, prefk_last_error, prefk_register_host_memory,
    prefk_unregister_host_memory,
};
pub use seq_reduce::{prefk_seq_reduce, prefk_seq_reduce_backward};
pub use token_logprobs::{
    prefk_token_logprobs_backward, prefk_token_logprobs_backward_entropy, prefk_token_logprobs_forward,
};
pub use vocab_parallel::{
    prefk_vocab_check_tiling, prefk_vocab_parallel_finalize, prefk_vocab_shard_backward,
    prefk_vocab_shard_partials,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pref_loss::LossConfig;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: prefk_last_error returns a valid NUL-terminated string owned by this thread.
        unsafe { CStr::from_ptr(prefk_last_error()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn errors_are_codes_and_messages_never_panics() {
        // SAFETY: every call is rejected before touching memory (bad codes, no device here or
        // null pointers).
        let rc =
            unsafe { prefk_token_logprobs_forward(0, 0, 9, 1, 0, 0, 0, 0, 0, 0, 0, 0, 4, 10, 10, -100, 1.0) };
        assert_eq!(rc, -1);
        let msg = last();
        assert!(msg.contains("dtype") || msg.contains("driver") || msg.contains("kernels"), "{msg}");
        assert_eq!(
            unsafe {
                prefk_token_logprobs_forward(-1, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 4, 10, 10, -100, 1.0)
            },
            -1
        );
        assert!(last().contains("device"));
        let term = PrefkLossTerm { kind: 99, ..Default::default() };
        let rc = unsafe {
            prefk_preference_loss(
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, &term, 1, 0, 0.0, 0, 1.0, 0, 0, 0, 0, 0,
            )
        };
        assert_eq!(rc, -1);
        assert!(last().contains("unknown loss kind"), "{}", last());
        assert_eq!(prefk_preference_loss_workspace_len(4, 2), 4 * 13 + 2 * (6 + 8));
    }

    #[test]
    fn layout_builder_matches_the_rust_layout() {
        let (pl, rc, rl) = ([3i64, 0], [2i64, 1], [2i64, 70, 5]);
        let (mut nt, mut ntiles) = (0i64, 0i64);
        // SAFETY: host arrays of the documented sizes.
        assert_eq!(
            unsafe {
                prefk_prefix_layout(
                    pl.as_ptr(),
                    rc.as_ptr(),
                    rl.as_ptr(),
                    2,
                    &mut nt,
                    &mut ntiles,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            },
            0
        );
        let (mut tiles, mut lo2) = (vec![0i32; ntiles as usize * 8], vec![0i32; nt as usize]);
        // SAFETY: as above, with buffers sized by the first call.
        assert_eq!(
            unsafe {
                prefk_prefix_layout(
                    pl.as_ptr(),
                    rc.as_ptr(),
                    rl.as_ptr(),
                    2,
                    &mut nt,
                    &mut ntiles,
                    tiles.as_mut_ptr(),
                    lo2.as_mut_ptr(),
                )
            },
            0
        );
        let l = crate::prefix_attn::SharedPrefixLayout::from_lengths(vec![
            crate::prefix_attn::PrefixGroup { prefix_len: 3, resp_lens: vec![2, 70] },
            crate::prefix_attn::PrefixGroup { prefix_len: 0, resp_lens: vec![5] },
        ])
        .unwrap();
        assert_eq!(nt as usize, l.total_tokens());
        assert_eq!(tiles, l.tiles().into_iter().flatten().collect::<Vec<_>>());
        assert_eq!(lo2, l.token_segments().iter().map(|s| s[2] as i32).collect::<Vec<_>>());
        let bad = [0i64];
        // SAFETY: host arrays of the documented sizes.
        assert_eq!(
            unsafe {
                prefk_prefix_layout(
                    bad.as_ptr(),
                    [1i64].as_ptr(),
                    bad.as_ptr(),
                    1,
                    &mut nt,
                    &mut ntiles,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            },
            -1
        );
        assert!(last().contains("empty"), "{}", last());
    }

    #[test]
    fn loss_codes_round_trip_through_the_kernel_codes() {
        for kind in 0..=19u32 {
            let t = PrefkLossTerm { kind, weight: 1.0, beta: 0.5, p0: 0.1, p1: 0.5, flags: 0 };
            let loss = loss_of(&t).unwrap();
            let cfg = LossConfig::single(loss);
            assert_eq!(crate::pref_loss::launch::kind_code(&loss, &cfg), kind);
        }
    }
}
