//! C ABI of the vocabulary-parallel ops on logits shards (raw pointers, the caller's stream, no
//! synchronization: bad device data sets bits in the optional status word, which
//! `prefk_check_status` turns into an error). The fused LM head's shard entry points live in
//! `linear.rs` beside the other linear ones.
use super::args::*;
use super::plumbing::read_args;
use super::{dtype, ffi, gpu, host_vec, index_type, size};
use crate::token_logprobs::{TokenLogprobsBwdPtrs, TokenLogprobsConfig};
use crate::vocab_parallel::{VocabFinalizePtrs, VocabShard, VocabShardPartialsPtrs};
use crate::LogitsLayout;

fn config(ignore_index: i64, temperature: f32, entropy: bool) -> TokenLogprobsConfig {
    TokenLogprobsConfig { ignore_index, temperature, compute_entropy: entropy, check_targets: false }
}

/// The shard `[vocab_start, vocab_start + shard_vocab)` of `vocab`, checked.
pub(super) fn shard(vocab_start: i64, shard_vocab: i64, vocab: i64) -> crate::Result<VocabShard> {
    VocabShard::new(
        size("vocab_start", vocab_start)?,
        size("shard_vocab", shard_vocab)?,
        size("vocab", vocab)?,
    )
}

/// A vocabulary shard's partial statistics: `logits` `[n_rows, row_stride]` (its `shard_vocab`
/// columns are vocabulary ids `[vocab_start, vocab_start + shard_vocab)` of `vocab`), `targets`
/// `[n_rows]` ids in the whole vocabulary, out `partials` `[n_rows, 5]` f32 (max, sum-exp,
/// entropy term, target logit, owner flag; see `kernels/params.h`). The entropy term when
/// `compute_entropy` is non-zero. One kernel on `stream` ([`crate::Gpu::vocab_shard_partials_raw`]).
///
/// # Safety
/// `args` points to a readable [`PrefkVocabShardPartialsArgs`] whose `struct_size` is set (`PrefkVocabShardPartialsArgs::new()`).
/// As [`crate::Gpu::vocab_shard_partials_raw`]; `device` names an open device (or -1, the emulator).
#[no_mangle]
pub unsafe extern "C" fn prefk_vocab_shard_partials(args: *const PrefkVocabShardPartialsArgs) -> i32 {
    ffi(|| {
        // SAFETY: the caller passes one argument struct (see # Safety).
        let PrefkVocabShardPartialsArgs {
            device,
            stream,
            dtype_code,
            index_code,
            logits,
            targets,
            partials,
            status,
            n_rows,
            shard_vocab,
            row_stride,
            vocab_start,
            vocab,
            ignore_index,
            temperature,
            compute_entropy,
            ..
        } = unsafe { read_args(args) }?;
        let sh = shard(vocab_start, shard_vocab, vocab)?;
        let layout = LogitsLayout {
            n_rows: size("n_rows", n_rows)?,
            vocab: sh.len,
            row_stride: size("row_stride", row_stride)?,
        };
        let ptrs = VocabShardPartialsPtrs { logits, targets, partials, status };
        let cfg = config(ignore_index, temperature, compute_entropy != 0);
        // SAFETY: forwarded to the caller.
        unsafe {
            gpu(device)?.vocab_shard_partials_raw(
                stream,
                dtype(dtype_code)?,
                index_type(index_code)?,
                layout,
                sh,
                &ptrs,
                &cfg,
            )
        }
    })
}

/// Checks that a tensor-parallel group's shards tile `[0, vocab)` (no gap, no overlap, any order):
/// `starts` and `sizes` are `n_shards` **host** i64 each, one per rank
/// ([`VocabShard::check_tiling`]). The finalize sees a bad tiling only at a target (a gap or an
/// overlap where no target falls would skew every row's lse silently), so run this once per group
/// on the gathered shard descriptors. No device work.
///
/// # Safety
/// `starts` and `sizes` are null (an error) or valid for `n_shards` reads.
#[no_mangle]
pub unsafe extern "C" fn prefk_vocab_check_tiling(
    starts: *const i64,
    sizes: *const i64,
    n_shards: i64,
    vocab: i64,
) -> i32 {
    ffi(|| {
        let n = size("n_shards", n_shards)?;
        // SAFETY: forwarded to the caller.
        let (st, sz) = unsafe { (host_vec("starts", starts, n)?, host_vec("sizes", sizes, n)?) };
        let shards =
            st.iter().zip(&sz).map(|(&a, &b)| shard(a, b, vocab)).collect::<crate::Result<Vec<_>>>()?;
        VocabShard::check_tiling(&shards)
    })
}

/// Combines the gathered partials `[n_shards, n_rows, 5]` f32 (shard-major, what an all-gather
/// returns) into `logp`, `lse` and, when `entropy` is non-zero, the entropy (`[n_rows]` f32 each),
/// and when `stats` is non-zero the whole rows' softmax statistics (`[n_rows, 2]` f32, what the
/// shard backward reads)
/// ([`crate::Gpu::vocab_parallel_finalize_raw`]). Shards that do not tile the vocabulary at a
/// target set `STATUS_BAD_SHARDS` (16) and give that row NaN.
///
/// # Safety
/// `args` points to a readable [`PrefkVocabParallelFinalizeArgs`] whose `struct_size` is set (`PrefkVocabParallelFinalizeArgs::new()`).
/// As [`crate::Gpu::vocab_parallel_finalize_raw`].
#[no_mangle]
pub unsafe extern "C" fn prefk_vocab_parallel_finalize(args: *const PrefkVocabParallelFinalizeArgs) -> i32 {
    ffi(|| {
        // SAFETY: the caller passes one argument struct (see # Safety).
        let PrefkVocabParallelFinalizeArgs {
            device,
            stream,
            index_code,
            partials,
            targets,
            logp,
            lse,
            stats,
            entropy,
            status,
            n_rows,
            n_shards,
            vocab,
            ignore_index,
            temperature,
            ..
        } = unsafe { read_args(args) }?;
        let ptrs = VocabFinalizePtrs { partials, targets, logp, lse, entropy, status, stats };
        let cfg = config(ignore_index, temperature, entropy != 0);
        // SAFETY: forwarded to the caller.
        unsafe {
            gpu(device)?.vocab_parallel_finalize_raw(
                stream,
                index_type(index_code)?,
                size("n_rows", n_rows)?,
                size("n_shards", n_shards)?,
                size("vocab", vocab)?,
                &ptrs,
                &cfg,
            )
        }
    })
}

/// A shard's backward: d/dlogits of its columns into `grad_logits` `[n_rows, grad_stride]`
/// (in place when equal to `logits`) from the finalize's global softmax `stats` (and, when `grad_entropy`
/// is non-zero, its `entropy` with dL/dH) ([`crate::Gpu::vocab_shard_backward_raw`]).
///
/// # Safety
/// `args` points to a readable [`PrefkVocabShardBackwardArgs`] whose `struct_size` is set (`PrefkVocabShardBackwardArgs::new()`).
/// As [`crate::Gpu::vocab_shard_backward_raw`].
#[no_mangle]
pub unsafe extern "C" fn prefk_vocab_shard_backward(args: *const PrefkVocabShardBackwardArgs) -> i32 {
    ffi(|| {
        // SAFETY: the caller passes one argument struct (see # Safety).
        let PrefkVocabShardBackwardArgs {
            device,
            stream,
            dtype_code,
            index_code,
            logits,
            targets,
            stats,
            entropy,
            grad_logp,
            grad_entropy,
            grad_logits,
            status,
            n_rows,
            shard_vocab,
            row_stride,
            grad_stride,
            vocab_start,
            vocab,
            ignore_index,
            temperature,
            ..
        } = unsafe { read_args(args) }?;
        let sh = shard(vocab_start, shard_vocab, vocab)?;
        let layout = LogitsLayout {
            n_rows: size("n_rows", n_rows)?,
            vocab: sh.len,
            row_stride: size("row_stride", row_stride)?,
        };
        let ptrs = TokenLogprobsBwdPtrs {
            logits,
            targets,
            stats,
            grad_logp,
            grad_logits,
            status,
            entropy: if grad_entropy != 0 { entropy } else { 0 },
            grad_entropy,
        };
        let cfg = config(ignore_index, temperature, false);
        // SAFETY: forwarded to the caller.
        unsafe {
            gpu(device)?.vocab_shard_backward_raw(
                stream,
                dtype(dtype_code)?,
                index_type(index_code)?,
                layout,
                size("grad_stride", grad_stride)?,
                sh,
                &ptrs,
                &cfg,
            )
        }
    })
}
