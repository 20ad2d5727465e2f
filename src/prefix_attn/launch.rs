//! GPU launch of shared-prefix group attention (`kernels/prefix_attn.cu`): raw-pointer entry points
//! and safe wrappers.
use std::sync::Arc;

use cudarc::driver::{
    CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
    SyncOnDrop,
};
use half::{bf16, f16};

use super::{AttnShape, SharedPrefixLayout};
use crate::dtype::{DType, LogitElement};
use crate::error::{ensure, invalid, Result};
use crate::gpu::Gpu;
use crate::params::PrefixAttnParams;
use crate::raw::check_ptr;

const THREADS: u32 = 128;
const BR: usize = 64;
const BQ: usize = 32;

/// Element types of the attention kernels (bf16, f16; f32 accumulation inside).
pub trait AttnElement: LogitElement {}
impl AttnElement for bf16 {}
impl AttnElement for f16 {}

pub(crate) fn entry_points() -> Vec<String> {
    let mut v = Vec::new();
    for dt in ["bf16", "f16"] {
        for d in [64, 128] {
            for k in ["fwd", "bwd_dq", "bwd_dkdv", "bwd_pre"] {
                v.push(format!("prefix_attn_{k}_{dt}_d{d}"));
            }
        }
    }
    v
}

/// Dynamic shared memory of an attention entry point (bytes), as the kernels compute it.
pub(crate) fn dynamic_smem(name: &str) -> Option<u32> {
    let d: usize = if name.ends_with("_d64") {
        64
    } else if name.ends_with("_d128") {
        128
    } else {
        return None;
    };
    let ld = (d + 8) * 2;
    if name.starts_with("prefix_attn_fwd_") {
        Some((3 * BR * ld) as u32)
    } else if name.starts_with("prefix_attn_bwd_dq_") {
        Some((4 * BR * ld) as u32)
    } else if name.starts_with("prefix_attn_bwd_dkdv_") {
        Some(((2 * BR + 2 * BQ) * ld + 2 * BQ * 4) as u32)
    } else {
        None
    }
}

/// What the backward reads from the forward: its inputs and outputs.
pub struct AttnSaved<'a, T> {
    /// `[T, Hq, d]`.
    pub q: CudaView<'a, T>,
    /// `[T, Hkv, d]`.
    pub k: CudaView<'a, T>,
    /// `[T, Hkv, d]`.
    pub v: CudaView<'a, T>,
    /// The forward's output `[T, Hq, d]`.
    pub o: CudaView<'a, T>,
    /// The forward's LSE `[Hq, T]`.
    pub lse: CudaView<'a, f32>,
}

/// A layout uploaded to the device: per-tile descriptors and per-token segment starts.
pub struct DevicePrefixLayout {
    /// `[n_tiles, 8]` i32 tile descriptors ([`SharedPrefixLayout::tiles`]).
    pub tiles: CudaSlice<i32>,
    /// `[T]` i32 start of each token's own segment.
    pub seg_lo2: CudaSlice<i32>,
    /// Number of tiles.
    pub n_tiles: usize,
    /// Total tokens T.
    pub n_tokens: usize,
}

impl DevicePrefixLayout {
    /// The raw pointers, with the guards that keep cudarc's event tracking ordered.
    pub(crate) fn raw<'s>(&'s self, stream: &'s CudaStream) -> (RawPrefixLayout, [SyncOnDrop<'s>; 2]) {
        let (tiles, g0) = self.tiles.device_ptr(stream);
        let (seg_lo2, g1) = self.seg_lo2.device_ptr(stream);
        (RawPrefixLayout { tiles, seg_lo2, n_tiles: self.n_tiles, n_tokens: self.n_tokens }, [g0, g1])
    }
}

/// The raw form of a device layout.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawPrefixLayout {
    /// Device pointer to `[n_tiles, 8]` i32 tile descriptors.
    pub tiles: u64,
    /// Device pointer to `[T]` i32 segment starts.
    pub seg_lo2: u64,
    /// Number of tiles.
    pub n_tiles: usize,
    /// Total tokens T.
    pub n_tokens: usize,
}

/// Device pointers of the forward (raw API).
#[derive(Debug, Clone, Copy, Default)]
pub struct PrefixAttnFwdPtrs {
    /// `[T, Hq, d]`.
    pub q: u64,
    /// `[T, Hkv, d]`.
    pub k: u64,
    /// `[T, Hkv, d]`.
    pub v: u64,
    /// Output `[T, Hq, d]`.
    pub o: u64,
    /// Output `[Hq, T]` f32 (natural log).
    pub lse: u64,
}

/// Device pointers of the backward (raw API).
#[derive(Debug, Clone, Copy, Default)]
pub struct PrefixAttnBwdPtrs {
    /// Forward inputs and outputs.
    pub fwd: PrefixAttnFwdPtrs,
    /// `[T, Hq, d]` upstream gradient of O.
    pub dout: u64,
    /// Output `[T, Hq, d]`.
    pub dq: u64,
    /// Output `[T, Hkv, d]`.
    pub dk: u64,
    /// Output `[T, Hkv, d]`.
    pub dv: u64,
    /// Workspace `[Hq, T]` f32.
    pub delta: u64,
}

fn check_fwd(ptrs: &PrefixAttnFwdPtrs, shape: &AttnShape, layout: &RawPrefixLayout) -> Result<()> {
    shape.validate()?;
    ensure(layout.n_tokens >= 1 && layout.n_tokens <= i32::MAX as usize, "layout", || {
        format!("needs 1 to {} tokens, got {}", i32::MAX, layout.n_tokens)
    })?;
    ensure(layout.n_tiles >= 1, "layout", || "no tiles".into())?;
    check_ptr("tiles", layout.tiles, 4, true)?;
    check_ptr("seg_lo2", layout.seg_lo2, 4, true)?;
    for (name, p) in [("q", ptrs.q), ("k", ptrs.k), ("v", ptrs.v), ("o", ptrs.o)] {
        check_ptr(name, p, 16, true)?;
    }
    check_ptr("lse", ptrs.lse, 4, true)
}

impl Gpu {
    /// Uploads a layout's tile descriptors and segment starts (small: 32 B per 64 tokens + 4 B per token).
    pub fn upload_prefix_layout(
        &self,
        stream: &Arc<CudaStream>,
        layout: &SharedPrefixLayout,
    ) -> Result<DevicePrefixLayout> {
        let tiles: Vec<i32> = layout.tiles().into_iter().flatten().collect();
        let lo2: Vec<i32> = layout.token_segments().iter().map(|s| s[2] as i32).collect();
        Ok(DevicePrefixLayout {
            n_tiles: tiles.len() / 8,
            n_tokens: layout.total_tokens(),
            tiles: stream.clone_htod(&tiles)?,
            seg_lo2: stream.clone_htod(&lo2)?,
        })
    }

    fn attn_launch(
        &self,
        stream: u64,
        name: &str,
        grid: (u32, u32),
        params: &PrefixAttnParams,
    ) -> Result<()> {
        let f = self.function(name)?;
        let smem = dynamic_smem(name).unwrap_or(0);
        let threads = if name.contains("_bwd_pre_") { 256 } else { THREADS };
        let cfg = LaunchConfig {
            grid_dim: (grid.0, grid.1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: smem,
        };
        // SAFETY: the callers guarantee the stream (see their # Safety).
        let s = unsafe { self.borrow_stream(stream) };
        // SAFETY: params matches the kernels' PrefixAttnParams (layout asserted in params.rs).
        unsafe { s.launch_builder(f).arg(params).launch(cfg) }?;
        Ok(())
    }

    /// Forward on raw device pointers: writes O and LSE. One launch on `stream`; never synchronizes.
    ///
    /// Errors before launch: unsupported head dim, Hq not a multiple of Hkv, bad scale, null or
    /// misaligned pointers (tensors 16-byte aligned), empty layout, dtype f32.
    ///
    /// # Safety
    /// Pointers are device memory of this context: q and o hold `T * Hq * d`, k and v
    /// `T * Hkv * d` elements of `dtype` (contiguous token-major), lse `Hq * T` f32; `layout` comes
    /// from [`Gpu::upload_prefix_layout`] (or holds the same values) for these T tokens; everything
    /// stays alive and unmodified by other work until the launch completes in stream order;
    /// `stream` is 0 or a live CUstream of this context.
    pub unsafe fn prefix_attn_forward_raw(
        &self,
        stream: u64,
        dtype: DType,
        shape: AttnShape,
        layout: &RawPrefixLayout,
        ptrs: &PrefixAttnFwdPtrs,
    ) -> Result<()> {
        check_fwd(ptrs, &shape, layout)?;
        ensure(dtype != DType::F32, "dtype", || "attention kernels take bf16 or f16".into())?;
        let params = PrefixAttnParams {
            q: ptrs.q,
            k: ptrs.k,
            v: ptrs.v,
            o: ptrs.o,
            lse: ptrs.lse,
            tiles: layout.tiles,
            seg_lo2: layout.seg_lo2,
            n_tokens: layout.n_tokens as i64,
            n_tiles: layout.n_tiles as i64,
            q_heads: shape.q_heads as i32,
            kv_heads: shape.kv_heads as i32,
            scale: shape.scale,
            ..Default::default()
        };
        let name = format!("prefix_attn_fwd_{}_d{}", dtype.name(), shape.head_dim);
        self.attn_launch(stream, &name, (layout.n_tiles as u32, shape.q_heads as u32), &params)
    }

    /// Backward on raw device pointers: writes dQ, dK, dV (each written exactly once, no
    /// accumulation into the outputs). Three launches (preprocess, dK/dV, dQ); never synchronizes.
    ///
    /// # Safety
    /// As [`Gpu::prefix_attn_forward_raw`], plus: `o` and `lse` are this forward's outputs; dout
    /// and dq hold `T * Hq * d`, dk and dv `T * Hkv * d` elements; `delta` is a `Hq * T` f32
    /// workspace; the outputs do not overlap the inputs or each other.
    pub unsafe fn prefix_attn_backward_raw(
        &self,
        stream: u64,
        dtype: DType,
        shape: AttnShape,
        layout: &RawPrefixLayout,
        ptrs: &PrefixAttnBwdPtrs,
    ) -> Result<()> {
        check_fwd(&ptrs.fwd, &shape, layout)?;
        ensure(dtype != DType::F32, "dtype", || "attention kernels take bf16 or f16".into())?;
        for (name, p) in [("dout", ptrs.dout), ("dq", ptrs.dq), ("dk", ptrs.dk), ("dv", ptrs.dv)] {
            check_ptr(name, p, 16, true)?;
        }
        check_ptr("delta", ptrs.delta, 4, true)?;
        let f = &ptrs.fwd;
        let params = PrefixAttnParams {
            q: f.q,
            k: f.k,
            v: f.v,
            o: f.o,
            lse: f.lse,
            dout: ptrs.dout,
            dq: ptrs.dq,
            dk: ptrs.dk,
            dv: ptrs.dv,
            delta: ptrs.delta,
            tiles: layout.tiles,
            seg_lo2: layout.seg_lo2,
            n_tokens: layout.n_tokens as i64,
            n_tiles: layout.n_tiles as i64,
            q_heads: shape.q_heads as i32,
            kv_heads: shape.kv_heads as i32,
            scale: shape.scale,
            reserved: 0,
        };
        let (dt, d) = (dtype.name(), shape.head_dim);
        let rows = (layout.n_tokens * shape.q_heads) as u64;
        let pre_blocks = rows.div_ceil(8).clamp(1, self.sm_count() as u64 * 64) as u32;
        self.attn_launch(stream, &format!("prefix_attn_bwd_pre_{dt}_d{d}"), (pre_blocks, 1), &params)?;
        self.attn_launch(
            stream,
            &format!("prefix_attn_bwd_dkdv_{dt}_d{d}"),
            (layout.n_tiles as u32, shape.kv_heads as u32),
            &params,
        )?;
        self.attn_launch(
            stream,
            &format!("prefix_attn_bwd_dq_{dt}_d{d}"),
            (layout.n_tiles as u32, shape.q_heads as u32),
            &params,
        )
    }

    /// Forward on cudarc buffers (lengths checked against `layout` and `shape`), on `stream`.
    #[allow(clippy::too_many_arguments)]
    pub fn prefix_attn_forward<T: AttnElement>(
        &self,
        stream: &Arc<CudaStream>,
        q: &CudaView<'_, T>,
        k: &CudaView<'_, T>,
        v: &CudaView<'_, T>,
        layout: &DevicePrefixLayout,
        shape: AttnShape,
        o: &mut CudaViewMut<'_, T>,
        lse: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        check_lengths(
            layout,
            &shape,
            &[("q", q.len(), true), ("k", k.len(), false), ("v", v.len(), false), ("o", o.len(), true)],
        )?;
        crate::token_logprobs::ensure_len("lse", lse.len(), shape.q_heads * layout.n_tokens)?;
        let (qp, _g0) = q.device_ptr(stream);
        let (kp, _g1) = k.device_ptr(stream);
        let (vp, _g2) = v.device_ptr(stream);
        let (op, _g3) = o.device_ptr_mut(stream);
        let (lp, _g4) = lse.device_ptr_mut(stream);
        let (raw, _layout_guards) = layout.raw(stream);
        let ptrs = PrefixAttnFwdPtrs { q: qp, k: kp, v: vp, o: op, lse: lp };
        // SAFETY: pointers from live cudarc buffers whose lengths were checked above.
        unsafe { self.prefix_attn_forward_raw(stream.cu_stream() as u64, T::DTYPE, shape, &raw, &ptrs) }
    }

    /// Backward on cudarc buffers: dQ, dK, dV from dO and the forward's O and LSE.
    #[allow(clippy::too_many_arguments)]
    pub fn prefix_attn_backward<T: AttnElement>(
        &self,
        stream: &Arc<CudaStream>,
        saved: &AttnSaved<'_, T>,
        dout: &CudaView<'_, T>,
        layout: &DevicePrefixLayout,
        shape: AttnShape,
        dq: &mut CudaViewMut<'_, T>,
        dk: &mut CudaViewMut<'_, T>,
        dv: &mut CudaViewMut<'_, T>,
    ) -> Result<()> {
        let AttnSaved { q, k, v, o, lse } = saved;
        check_lengths(
            layout,
            &shape,
            &[
                ("q", q.len(), true),
                ("k", k.len(), false),
                ("v", v.len(), false),
                ("o", o.len(), true),
                ("dout", dout.len(), true),
                ("dq", dq.len(), true),
                ("dk", dk.len(), false),
                ("dv", dv.len(), false),
            ],
        )?;
        crate::token_logprobs::ensure_len("lse", lse.len(), shape.q_heads * layout.n_tokens)?;
        let mut delta = stream.alloc_zeros::<f32>(shape.q_heads * layout.n_tokens)?;
        let (qp, _g0) = q.device_ptr(stream);
        let (kp, _g1) = k.device_ptr(stream);
        let (vp, _g2) = v.device_ptr(stream);
        let (op, _g3) = o.device_ptr(stream);
        let (lp, _g4) = lse.device_ptr(stream);
        let (dop, _g5) = dout.device_ptr(stream);
        let (dqp, _g6) = dq.device_ptr_mut(stream);
        let (dkp, _g7) = dk.device_ptr_mut(stream);
        let (dvp, _g8) = dv.device_ptr_mut(stream);
        let (dlp, _g9) = delta.device_ptr_mut(stream);
        let (raw, _layout_guards) = layout.raw(stream);
        let ptrs = PrefixAttnBwdPtrs {
            fwd: PrefixAttnFwdPtrs { q: qp, k: kp, v: vp, o: op, lse: lp },
            dout: dop,
            dq: dqp,
            dk: dkp,
            dv: dvp,
            delta: dlp,
        };
        // SAFETY: pointers from live cudarc buffers whose lengths were checked above.
        unsafe { self.prefix_attn_backward_raw(stream.cu_stream() as u64, T::DTYPE, shape, &raw, &ptrs) }
    }
}

/// Every tensor must hold exactly `T * heads * d` elements (`q_side`: Hq heads, else Hkv).
fn check_lengths(
    layout: &DevicePrefixLayout,
    shape: &AttnShape,
    tensors: &[(&'static str, usize, bool)],
) -> Result<()> {
    shape.validate()?;
    for &(name, len, q_side) in tensors {
        let heads = if q_side { shape.q_heads } else { shape.kv_heads };
        let want = layout.n_tokens * heads * shape.head_dim;
        if len != want {
            return Err(invalid(
                name,
                format!(
                    "needs T x heads x d = {} x {heads} x {} = {want} elements, got {len}",
                    layout.n_tokens, shape.head_dim
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sizes the kernels `static_assert` (kernels/prefix_attn.cu): launching with less dynamic
    /// shared memory than a kernel uses would be out of bounds.
    #[test]
    fn dynamic_smem_matches_the_kernels() {
        for (name, bytes) in [
            ("prefix_attn_fwd_bf16_d64", 27648),
            ("prefix_attn_fwd_f16_d128", 52224),
            ("prefix_attn_bwd_dq_bf16_d64", 36864),
            ("prefix_attn_bwd_dq_f16_d128", 69632),
            ("prefix_attn_bwd_dkdv_bf16_d64", 27904),
            ("prefix_attn_bwd_dkdv_f16_d128", 52480),
        ] {
            assert_eq!(dynamic_smem(name), Some(bytes), "{name}");
        }
        assert_eq!(dynamic_smem("prefix_attn_bwd_pre_bf16_d64"), None);
        assert!(entry_points().iter().all(|n| n.contains("_bwd_pre_") || dynamic_smem(n).is_some()));
    }
}
