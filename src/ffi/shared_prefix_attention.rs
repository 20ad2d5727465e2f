//! C ABI of shared-prefix group attention (layout builder, forward, backward).

use super::args::*;
use super::plumbing::*;
use crate::error::{invalid, Result};
use crate::shared_prefix_attention::{
    AttnShape, RawPrefixLayout, SharedPrefixAttentionBwdPtrs, SharedPrefixAttentionFwdPtrs,
};

/// Shape and layout arguments of the attention entry points.
pub(super) fn attn_args(
    heads_dim: [i32; 3],
    scale: f32,
    tiles: u64,
    seg_lo2: u64,
    n_tiles: i64,
    n_tokens: i64,
) -> Result<(AttnShape, RawPrefixLayout)> {
    let [q_heads, kv_heads, head_dim] = heads_dim;
    let shape = AttnShape {
        q_heads: size("q_heads", q_heads as i64)?,
        kv_heads: size("kv_heads", kv_heads as i64)?,
        head_dim: size("head_dim", head_dim as i64)?,
        scale,
    };
    let layout = RawPrefixLayout {
        tiles,
        seg_lo2,
        n_tiles: size("n_tiles", n_tiles)?,
        n_tokens: size("n_tokens", n_tokens)?,
    };
    Ok((shape, layout))
}

/// Shared-prefix attention forward ([`Gpu::shared_prefix_attention_forward_raw`](crate::Gpu::shared_prefix_attention_forward_raw)); `tiles`/`seg_lo2` hold the
/// device copy of the layout (`SharedPrefixLayout::tiles` flattened, segment starts).
///
/// # Safety
/// `args` points to a readable [`PrefkSharedPrefixAttentionForwardArgs`] whose `struct_size` is set (`PrefkSharedPrefixAttentionForwardArgs::new()`).
/// As [`Gpu::shared_prefix_attention_forward_raw`](crate::Gpu::shared_prefix_attention_forward_raw).
#[no_mangle]
pub unsafe extern "C" fn prefk_shared_prefix_attention_forward(
    args: *const PrefkSharedPrefixAttentionForwardArgs,
) -> i32 {
    ffi(|| {
        // SAFETY: the caller passes one argument struct (see # Safety).
        let PrefkSharedPrefixAttentionForwardArgs {
            device,
            stream,
            dtype_code,
            q,
            k,
            v,
            o,
            lse,
            tiles,
            seg_lo2,
            n_tiles,
            n_tokens,
            q_heads,
            kv_heads,
            head_dim,
            scale,
            ..
        } = unsafe { read_args(args) }?;
        let (shape, layout) =
            attn_args([q_heads, kv_heads, head_dim], scale, tiles, seg_lo2, n_tiles, n_tokens)?;
        // SAFETY: forwarded to the caller.
        unsafe {
            gpu(device)?.shared_prefix_attention_forward_raw(
                stream,
                dtype(dtype_code)?,
                shape,
                &layout,
                &SharedPrefixAttentionFwdPtrs { q, k, v, o, lse },
            )
        }
    })
}

/// Shared-prefix attention backward ([`Gpu::shared_prefix_attention_backward_raw`](crate::Gpu::shared_prefix_attention_backward_raw)); `delta` is a `Hq * T`
/// f32 workspace.
///
/// # Safety
/// `args` points to a readable [`PrefkSharedPrefixAttentionBackwardArgs`] whose `struct_size` is set (`PrefkSharedPrefixAttentionBackwardArgs::new()`).
/// As [`Gpu::shared_prefix_attention_backward_raw`](crate::Gpu::shared_prefix_attention_backward_raw).
#[no_mangle]
pub unsafe extern "C" fn prefk_shared_prefix_attention_backward(
    args: *const PrefkSharedPrefixAttentionBackwardArgs,
) -> i32 {
    ffi(|| {
        // SAFETY: the caller passes one argument struct (see # Safety).
        let PrefkSharedPrefixAttentionBackwardArgs {
            device,
            stream,
            dtype_code,
            q,
            k,
            v,
            o,
            lse,
            dout,
            dq,
            dk,
            dv,
            delta,
            tiles,
            seg_lo2,
            n_tiles,
            n_tokens,
            q_heads,
            kv_heads,
            head_dim,
            scale,
            ..
        } = unsafe { read_args(args) }?;
        let (shape, layout) =
            attn_args([q_heads, kv_heads, head_dim], scale, tiles, seg_lo2, n_tiles, n_tokens)?;
        let ptrs = SharedPrefixAttentionBwdPtrs {
            fwd: SharedPrefixAttentionFwdPtrs { q, k, v, o, lse },
            dout,
            dq,
            dk,
            dv,
            delta,
        };
        // SAFETY: forwarded to the caller.
        unsafe {
            gpu(device)?.shared_prefix_attention_backward_raw(
                stream,
                dtype(dtype_code)?,
                shape,
                &layout,
                &ptrs,
            )
        }
    })
}

/// Builds a shared-prefix layout from lengths on the host: group b has prefix `prefix_lens[b]` and
/// `resp_counts[b]` responses whose lengths follow in `resp_lens` (all groups' concatenated).
/// Writes `n_tokens` and `n_tiles`; when `tiles` / `seg_lo2` are non-null (host buffers of
/// `8 * n_tiles` and `n_tokens` i32) fills them for upload to the device.
///
/// # Safety
/// `args` points to a readable [`PrefkPrefixLayoutArgs`] whose `struct_size` is set (`PrefkPrefixLayoutArgs::new()`).
/// The length arrays hold `n_groups` (and `sum(resp_counts)`) host elements; output pointers are
/// null or host buffers of the sizes above (call once with nulls to size them).
#[no_mangle]
pub unsafe extern "C" fn prefk_prefix_layout(args: *const PrefkPrefixLayoutArgs) -> i32 {
    ffi(|| {
        // SAFETY: the caller passes one argument struct (see # Safety).
        let PrefkPrefixLayoutArgs {
            prefix_lens,
            resp_counts,
            resp_lens,
            n_groups,
            n_tokens,
            n_tiles,
            tiles,
            seg_lo2,
            ..
        } = unsafe { read_args(args) }?;
        let n = size("n_groups", n_groups)?;
        if prefix_lens.is_null()
            || resp_counts.is_null()
            || resp_lens.is_null()
            || n_tokens.is_null()
            || n_tiles.is_null()
        {
            return Err(invalid("prefix_lens", "null host pointer"));
        }
        // SAFETY: the caller passes n_groups elements.
        let (pl, rc) = unsafe {
            (std::slice::from_raw_parts(prefix_lens, n), std::slice::from_raw_parts(resp_counts, n))
        };
        let total_resp = rc.iter().try_fold(0usize, |acc, &c| {
            acc.checked_add(size("resp_counts", c)?).ok_or_else(|| invalid("resp_counts", "sum overflows"))
        })?;
        // SAFETY: the caller passes sum(resp_counts) elements.
        let rl = unsafe { std::slice::from_raw_parts(resp_lens, total_resp) };
        let mut groups = Vec::with_capacity(n);
        let mut off = 0;
        for b in 0..n {
            let c = rc[b] as usize;
            let resp = rl[off..off + c].iter().map(|&r| size("resp_lens", r)).collect::<Result<Vec<_>>>()?;
            groups.push(crate::shared_prefix_attention::PrefixGroup {
                prefix_len: size("prefix_lens", pl[b])?,
                resp_lens: resp,
            });
            off += c;
        }
        let layout = crate::shared_prefix_attention::SharedPrefixLayout::from_lengths(groups)?;
        let t = layout.tiles();
        let starts = if seg_lo2.is_null() { None } else { Some(layout.own_segment_starts()?) };
        // SAFETY: non-null output pointers are valid host memory (see # Safety).
        unsafe {
            *n_tokens = layout.total_tokens() as i64;
            *n_tiles = t.len() as i64;
            if !tiles.is_null() {
                std::ptr::copy_nonoverlapping(t.as_flattened().as_ptr(), tiles, t.len() * 8);
            }
            if let Some(starts) = starts {
                std::ptr::copy_nonoverlapping(starts.as_ptr(), seg_lo2, starts.len());
            }
        }
        Ok(())
    })
}
