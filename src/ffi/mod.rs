//! C ABI for callers outside Rust (PyTorch through ctypes, C++). Header: `include/prefk.h`, the
//! one definition. Every op entry point takes one argument struct ([`args`]: plain integers,
//! device pointers, the caller's stream), read by its `struct_size` (see `read_args` in
//! `plumbing.rs` for the versioning rule); it returns 0 on success, -1 on error (message from
//! [`prefk_last_error`]), -2 when a Rust panic was caught (never unwinds across the boundary).
//! Files: `plumbing.rs` (errors, panics, the device cache, code decoders, argument reading),
//! `runtime.rs` (library-level calls), and one file per op family.
//!
//! Each entry point takes the device: a CUDA ordinal (>= 0), or [`PREFK_DEVICE_EMULATOR`] (-1) for
//! the CPU emulator, whose pointers are host addresses of emulator allocations (or, with
//! `PREF_KERNELS_EMU_CHECKS=none`, any host memory). `PREF_KERNELS_BACKEND=emulator` makes every
//! ordinal the emulator. The first call on a device opens it ([`Gpu::open`](crate::Gpu::open): retains the primary
//! context PyTorch uses, loads every module) and later calls reuse it. Load eagerly (e.g. call
//! [`prefk_init`]) before capturing CUDA graphs.

pub mod args;
mod group_loss;
mod grpo;
mod linear;
mod plumbing;
mod preference_loss;
mod runtime;
mod seq_reduce;
mod shared_prefix_attention;
mod token_logprobs;
mod vocab_parallel;

// The shared helpers, in scope for the op files (`super::…`) and the tests.
use plumbing::*;
use preference_loss::loss_config;
#[cfg(test)]
use preference_loss::loss_of;

pub use args::*;
pub use group_loss::{prefk_group_loss, prefk_group_loss_check_labels, prefk_group_loss_workspace_len};
pub use grpo::{prefk_grpo_loss, prefk_grpo_workspace_len, PrefkGrpoConfig};
pub use linear::{
    prefk_linear_grpo_step, prefk_linear_preference_step, prefk_linear_shard_backward,
    prefk_linear_shard_partials, prefk_linear_token_logprobs_backward, prefk_linear_token_logprobs_forward,
    prefk_linear_workspace_bytes,
};
pub use plumbing::PREFK_DEVICE_EMULATOR;
pub use preference_loss::{prefk_preference_loss, prefk_preference_loss_workspace_len, PrefkLossTerm};
pub use runtime::{
    prefk_check_status, prefk_init, prefk_last_error, prefk_register_host_memory,
    prefk_unregister_host_memory,
};
pub use seq_reduce::{prefk_seq_reduce, prefk_seq_reduce_backward};
pub use shared_prefix_attention::{
    prefk_prefix_layout, prefk_shared_prefix_attention_backward, prefk_shared_prefix_attention_forward,
};
pub use token_logprobs::{
    prefk_token_logprobs_backward, prefk_token_logprobs_backward_entropy, prefk_token_logprobs_forward,
    prefk_token_logprobs_topk,
};
pub use vocab_parallel::{
    prefk_vocab_check_tiling, prefk_vocab_parallel_finalize, prefk_vocab_shard_backward,
    prefk_vocab_shard_partials,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preference_loss::LossConfig;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: prefk_last_error returns a valid NUL-terminated string owned by this thread.
        unsafe { CStr::from_ptr(prefk_last_error()) }.to_string_lossy().into_owned()
    }

    /// ABI versioning: a struct_size outside [first published size, this library's size] is
    /// refused before anything is read past it; a null or misaligned struct too.
    #[test]
    fn argument_structs_are_read_by_their_struct_size() {
        let size = std::mem::size_of::<PrefkSeqReduceArgs>() as u64;
        for bad in [0, 8, size - 8, size + 8] {
            let a = PrefkSeqReduceArgs {
                device: PREFK_DEVICE_EMULATOR,
                struct_size: bad,
                ..PrefkSeqReduceArgs::new()
            };
            // SAFETY: a live struct; refused on its size before any field is used.
            assert_eq!(unsafe { prefk_seq_reduce(&a) }, -1);
            assert!(last().contains("struct_size") && last().contains(&size.to_string()), "{}", last());
        }
        // SAFETY: null is refused.
        assert_eq!(unsafe { prefk_seq_reduce(std::ptr::null()) }, -1);
        assert!(last().contains("null PrefkSeqReduceArgs"), "{}", last());
        // Misaligned: refused with the alignment (the bytes are never read as the struct).
        let buf = [0u64; 16];
        let misaligned = (buf.as_ptr() as *const u8).wrapping_add(4) as *const PrefkSeqReduceArgs;
        // SAFETY: refused on its alignment before any read.
        assert_eq!(unsafe { prefk_seq_reduce(misaligned) }, -1);
        assert!(last().contains("aligned"), "{}", last());
    }

    /// The C ABI's ordered workspace size holds one chunk of `rows` rows: the least any call
    /// takes for `rows = 1`, growing with `rows`; a bad argument gives -1.
    #[test]
    fn ordered_workspace_bytes_hold_one_chunk_of_rows() {
        use crate::linear_token_logprobs::{ordered_workspace_bytes, LinearShape};
        for rows in [1usize, 6, 1000] {
            let shape = LinearShape { n_rows: rows, hidden: 16, vocab: 90 };
            let want = ordered_workspace_bytes(&shape, crate::DType::BF16, rows).unwrap();
            assert_eq!(linear::prefk_linear_ordered_workspace_bytes(2, 16, 90, rows as i64), want as i64);
            // Each row needs its logits at least.
            assert!(want >= rows * 90 * 2, "{rows} rows: {want} bytes");
        }
        assert_eq!(linear::prefk_linear_ordered_workspace_bytes(7, 16, 90, 1), -1);
        assert_eq!(linear::prefk_linear_ordered_workspace_bytes(2, 0, 90, 1), -1);
        assert_eq!(linear::prefk_linear_ordered_workspace_bytes(2, 16, 90, i64::MAX), -1);
        // Seven per-row regions of 16 bytes overflow only in the last product: -1, not a panic.
        assert_eq!(linear::prefk_linear_ordered_workspace_bytes(2, 1, 1, 658_812_288_346_769_701), -1);
    }

    #[test]
    fn errors_are_codes_and_messages_never_panics() {
        // SAFETY: every call is rejected before touching memory (bad codes, no device here or
        // null pointers).
        let rc = unsafe {
            prefk_token_logprobs_forward(&PrefkTokenLogprobsForwardArgs {
                device: 0,
                stream: 0,
                dtype_code: 9,
                index_code: 1,
                logits: 0,
                targets: 0,
                logp: 0,
                lse: 0,
                stats: 0,
                entropy: 0,
                log_sum_sq: 0,
                status: 0,
                n_rows: 4,
                vocab: 10,
                row_stride: 10,
                ignore_index: -100,
                temperature: 1.0,
                ..PrefkTokenLogprobsForwardArgs::new()
            })
        };
        assert_eq!(rc, -1);
        let msg = last();
        assert!(msg.contains("dtype") || msg.contains("driver") || msg.contains("kernels"), "{msg}");
        assert_eq!(
            unsafe {
                prefk_token_logprobs_forward(&PrefkTokenLogprobsForwardArgs {
                    device: -1,
                    stream: 0,
                    dtype_code: 2,
                    index_code: 1,
                    logits: 0,
                    targets: 0,
                    logp: 0,
                    lse: 0,
                    stats: 0,
                    entropy: 0,
                    log_sum_sq: 0,
                    status: 0,
                    n_rows: 4,
                    vocab: 10,
                    row_stride: 10,
                    ignore_index: -100,
                    temperature: 1.0,
                    ..PrefkTokenLogprobsForwardArgs::new()
                })
            },
            -1
        );
        assert!(last().contains("device"));
        let term = PrefkLossTerm { kind: 99, ..Default::default() };
        let rc = unsafe {
            prefk_preference_loss(&PrefkPreferenceLossArgs {
                device: 0,
                stream: 0,
                logp: 0,
                mask: 0,
                weights: 0,
                ref_logp: 0,
                ref_seq: 0,
                seq_weights: 0,
                n_tokens: 0,
                cu_seqlens: 0,
                n_seqs: 2,
                seq_len: 0,
                chosen: 0,
                rejected: 0,
                n_pairs: 0,
                terms: &term,
                n_terms: 1,
                divergence: 0,
                alpha: 0.0,
                aggregation: 0,
                grad_scale: 1.0,
                pair_out: 0,
                metrics: 0,
                grad_logp: 0,
                workspace: 0,
                status: 0,
                ..PrefkPreferenceLossArgs::new()
            })
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
                prefk_prefix_layout(&PrefkPrefixLayoutArgs {
                    prefix_lens: pl.as_ptr(),
                    resp_counts: rc.as_ptr(),
                    resp_lens: rl.as_ptr(),
                    n_groups: 2,
                    n_tokens: &mut nt,
                    n_tiles: &mut ntiles,
                    tiles: std::ptr::null_mut(),
                    seg_lo2: std::ptr::null_mut(),
                    ..PrefkPrefixLayoutArgs::new()
                })
            },
            0
        );
        let (mut tiles, mut lo2) = (vec![0i32; ntiles as usize * 8], vec![0i32; nt as usize]);
        // SAFETY: as above, with buffers sized by the first call.
        assert_eq!(
            unsafe {
                prefk_prefix_layout(&PrefkPrefixLayoutArgs {
                    prefix_lens: pl.as_ptr(),
                    resp_counts: rc.as_ptr(),
                    resp_lens: rl.as_ptr(),
                    n_groups: 2,
                    n_tokens: &mut nt,
                    n_tiles: &mut ntiles,
                    tiles: tiles.as_mut_ptr(),
                    seg_lo2: lo2.as_mut_ptr(),
                    ..PrefkPrefixLayoutArgs::new()
                })
            },
            0
        );
        let l = crate::shared_prefix_attention::SharedPrefixLayout::from_lengths(vec![
            crate::shared_prefix_attention::PrefixGroup { prefix_len: 3, resp_lens: vec![2, 70] },
            crate::shared_prefix_attention::PrefixGroup { prefix_len: 0, resp_lens: vec![5] },
        ])
        .unwrap();
        assert_eq!(nt as usize, l.total_tokens());
        assert_eq!(tiles, l.tiles().into_iter().flatten().collect::<Vec<_>>());
        assert_eq!(lo2, l.token_segments().iter().map(|s| s[2] as i32).collect::<Vec<_>>());
        let bad = [0i64];
        // SAFETY: host arrays of the documented sizes.
        assert_eq!(
            unsafe {
                prefk_prefix_layout(&PrefkPrefixLayoutArgs {
                    prefix_lens: bad.as_ptr(),
                    resp_counts: [1i64].as_ptr(),
                    resp_lens: bad.as_ptr(),
                    n_groups: 1,
                    n_tokens: &mut nt,
                    n_tiles: &mut ntiles,
                    tiles: std::ptr::null_mut(),
                    seg_lo2: std::ptr::null_mut(),
                    ..PrefkPrefixLayoutArgs::new()
                })
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
            assert_eq!(crate::preference_loss::launch::kind_code(&loss, &cfg), kind);
        }
    }
}
