//! GPU launch of shared-prefix group attention (`kernels/shared_prefix_attention.cu`): raw-pointer entry points
//! and safe wrappers.
use crate::runtime::mem::{DeviceBuffer, DevicePtr, DevicePtrMut, Guard, Stream, View, ViewMut};
use half::{bf16, f16};

use super::{AttnShape, SharedPrefixLayout};
use crate::dtype::{DType, LogitElement};
use crate::error::{ensure, invalid, Result};
use crate::params::SharedPrefixAttentionParams;
use crate::runtime::args::check_ptr;
use crate::runtime::registry::{self, AttnKernel};
use crate::runtime::Gpu;

/// Which attention kernels run. v1: the first, correctness-first kernels. v2 (the default):
/// cp.async double-buffered streamed operands (K/V tiles in the forward and dQ, Q/dO chunks in
/// dK/dV), ldmatrix fragments, and an unmasked-tile fast path in the forward and dQ. Both give
/// the same bits. v3 (sm_90 only, opt-in until a GPU run measures it against v2): v2's loops with
/// every GEMM on wgmma (Hopper's warpgroup MMA); its values match v2's within the kernels'
/// tolerance, its bits may differ on a GPU (wgmma's summation order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnVersion {
    /// Version 1.
    V1,
    /// Version 2.
    V2,
    /// Version 3 (sm_90: H100, H200): wgmma.
    V3,
}

impl AttnVersion {
    /// `PREF_KERNELS_ATTN`: `v1`, `v2` or `v3`; unset or empty: v2. Read at every launch, so
    /// one process can time them all.
    pub fn from_env() -> Result<Self> {
        match std::env::var("PREF_KERNELS_ATTN").as_deref() {
            Err(_) | Ok("") | Ok("v2") => Ok(AttnVersion::V2),
            Ok("v1") => Ok(AttnVersion::V1),
            Ok("v3") => Ok(AttnVersion::V3),
            Ok(other) => Err(crate::error::invalid(
                "PREF_KERNELS_ATTN",
                format!("must be v1, v2 or v3, got {other:?}"),
            )),
        }
    }
}

/// Element types of the attention kernels (bf16, f16; f32 accumulation inside).
pub trait AttnElement: LogitElement {}
impl AttnElement for bf16 {}
impl AttnElement for f16 {}

/// What the backward reads from the forward: its inputs and outputs.
pub struct AttnSaved<'a, T> {
    /// `[T, Hq, d]`.
    pub q: View<'a, T>,
    /// `[T, Hkv, d]`.
    pub k: View<'a, T>,
    /// `[T, Hkv, d]`.
    pub v: View<'a, T>,
    /// The forward's output `[T, Hq, d]`.
    pub o: View<'a, T>,
    /// The forward's LSE `[Hq, T]`.
    pub lse: View<'a, f32>,
}

/// A layout uploaded to the device: per-tile descriptors and per-token segment starts.
pub struct DevicePrefixLayout {
    /// `[n_tiles, 8]` i32 tile descriptors ([`SharedPrefixLayout::tiles`]).
    pub tiles: DeviceBuffer<i32>,
    /// `[T]` i32 start of each token's own segment.
    pub seg_lo2: DeviceBuffer<i32>,
    /// Number of tiles.
    pub n_tiles: usize,
    /// Total tokens T.
    pub n_tokens: usize,
}

impl DevicePrefixLayout {
    /// The raw pointers, with the guards that keep cudarc's event tracking ordered.
    pub(crate) fn raw<'s>(&'s self, stream: &'s Stream) -> Result<(RawPrefixLayout, [Guard<'s>; 2])> {
        let (tiles, g0) = self.tiles.device_ptr(stream)?;
        let (seg_lo2, g1) = self.seg_lo2.device_ptr(stream)?;
        Ok((RawPrefixLayout { tiles, seg_lo2, n_tiles: self.n_tiles, n_tokens: self.n_tokens }, [g0, g1]))
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
pub struct SharedPrefixAttentionFwdPtrs {
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
pub struct SharedPrefixAttentionBwdPtrs {
    /// Forward inputs and outputs.
    pub fwd: SharedPrefixAttentionFwdPtrs,
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

fn check_fwd(ptrs: &SharedPrefixAttentionFwdPtrs, shape: &AttnShape, layout: &RawPrefixLayout) -> Result<()> {
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
        stream: &Stream,
        layout: &SharedPrefixLayout,
    ) -> Result<DevicePrefixLayout> {
        let tiles: Vec<i32> = layout.tiles().into_iter().flatten().collect();
        let lo2 = layout.own_segment_starts()?;
        Ok(DevicePrefixLayout {
            n_tiles: tiles.len() / 8,
            n_tokens: layout.total_tokens(),
            tiles: stream.clone_htod(&tiles)?,
            seg_lo2: stream.clone_htod(&lo2)?,
        })
    }

    /// Launches one attention kernel (block size and shared memory from the registry).
    ///
    /// # Safety
    /// As the public raw entry points that call it.
    unsafe fn attn_launch(
        &self,
        stream: u64,
        kind: AttnKernel,
        dtype: DType,
        head_dim: usize,
        grid: (u32, u32),
        params: &SharedPrefixAttentionParams,
    ) -> Result<()> {
        let name = registry::shared_prefix_attention(kind, dtype, head_dim);
        // SAFETY: forwarded to the caller; params is the kernels' SharedPrefixAttentionParams (layout asserted
        // in params.rs).
        unsafe { self.launch(stream, &name, grid, params) }
    }

    /// Forward on raw device pointers: writes O and LSE. One launch on `stream`; never synchronizes.
    /// Runs the kernel version [`AttnVersion::from_env`] names (v2 unless `PREF_KERNELS_ATTN=v1`).
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
    pub unsafe fn shared_prefix_attention_forward_raw(
        &self,
        stream: u64,
        dtype: DType,
        shape: AttnShape,
        layout: &RawPrefixLayout,
        ptrs: &SharedPrefixAttentionFwdPtrs,
    ) -> Result<()> {
        let version = AttnVersion::from_env()?;
        // SAFETY: forwarded to the caller.
        unsafe {
            self.shared_prefix_attention_forward_raw_version(stream, version, dtype, shape, layout, ptrs)
        }
    }

    /// [`Gpu::shared_prefix_attention_forward_raw`] with the kernel version named (v1 and v2 give
    /// the same bits: v2 does v1's arithmetic in v1's order; v3 the same values within tolerance;
    /// benches and tests run them in one process). v3 errors unless [`Gpu::has_wgmma`].
    ///
    /// # Safety
    /// As [`Gpu::shared_prefix_attention_forward_raw`].
    pub unsafe fn shared_prefix_attention_forward_raw_version(
        &self,
        stream: u64,
        version: AttnVersion,
        dtype: DType,
        shape: AttnShape,
        layout: &RawPrefixLayout,
        ptrs: &SharedPrefixAttentionFwdPtrs,
    ) -> Result<()> {
        check_fwd(ptrs, &shape, layout)?;
        ensure(dtype != DType::F32, "dtype", || "attention kernels take bf16 or f16".into())?;
        let params = SharedPrefixAttentionParams {
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
        let grid = (layout.n_tiles as u32, shape.q_heads as u32);
        let kind = match version {
            AttnVersion::V1 => AttnKernel::Forward,
            AttnVersion::V2 => AttnKernel::ForwardV2,
            AttnVersion::V3 => {
                ensure(self.has_wgmma(), "PREF_KERNELS_ATTN", || {
                    "v3 runs on sm_90 (H100/H200) with kernels built for sm_90a; use v2 here".into()
                })?;
                AttnKernel::ForwardV3
            }
        };
        // SAFETY: forwarded to the caller.
        unsafe { self.attn_launch(stream, kind, dtype, shape.head_dim, grid, &params) }
    }

    /// Backward on raw device pointers: writes dQ, dK, dV (each written exactly once, no
    /// accumulation into the outputs). Three launches (preprocess, dK/dV, dQ); never synchronizes.
    ///
    /// # Safety
    /// As [`Gpu::shared_prefix_attention_forward_raw`], plus: `o` and `lse` are this forward's outputs; dout
    /// and dq hold `T * Hq * d`, dk and dv `T * Hkv * d` elements; `delta` is a `Hq * T` f32
    /// workspace; the outputs do not overlap the inputs or each other.
    pub unsafe fn shared_prefix_attention_backward_raw(
        &self,
        stream: u64,
        dtype: DType,
        shape: AttnShape,
        layout: &RawPrefixLayout,
        ptrs: &SharedPrefixAttentionBwdPtrs,
    ) -> Result<()> {
        let version = AttnVersion::from_env()?;
        // SAFETY: forwarded to the caller.
        unsafe {
            self.shared_prefix_attention_backward_raw_version(stream, version, dtype, shape, layout, ptrs)
        }
    }

    /// [`Gpu::shared_prefix_attention_backward_raw`] with the kernel version named (v1 and v2 the
    /// same bits; v3 errors unless [`Gpu::has_wgmma`]).
    ///
    /// # Safety
    /// As [`Gpu::shared_prefix_attention_backward_raw`].
    pub unsafe fn shared_prefix_attention_backward_raw_version(
        &self,
        stream: u64,
        version: AttnVersion,
        dtype: DType,
        shape: AttnShape,
        layout: &RawPrefixLayout,
        ptrs: &SharedPrefixAttentionBwdPtrs,
    ) -> Result<()> {
        check_fwd(&ptrs.fwd, &shape, layout)?;
        ensure(dtype != DType::F32, "dtype", || "attention kernels take bf16 or f16".into())?;
        for (name, p) in [("dout", ptrs.dout), ("dq", ptrs.dq), ("dk", ptrs.dk), ("dv", ptrs.dv)] {
            check_ptr(name, p, 16, true)?;
        }
        check_ptr("delta", ptrs.delta, 4, true)?;
        let f = &ptrs.fwd;
        let params = SharedPrefixAttentionParams {
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
        let d = shape.head_dim;
        let rows = (layout.n_tokens * shape.q_heads) as u64;
        let pre_blocks = rows.div_ceil(8).clamp(1, self.sm_count() as u64 * 64) as u32;
        let tiles = layout.n_tiles as u32;
        let (dkdv, dq) = match version {
            AttnVersion::V1 => (AttnKernel::BackwardDkDv, AttnKernel::BackwardDq),
            AttnVersion::V2 => (AttnKernel::BackwardDkDvV2, AttnKernel::BackwardDqV2),
            AttnVersion::V3 => {
                ensure(self.has_wgmma(), "PREF_KERNELS_ATTN", || {
                    "v3 runs on sm_90 (H100/H200) with kernels built for sm_90a; use v2 here".into()
                })?;
                (AttnKernel::BackwardDkDvV3, AttnKernel::BackwardDqV3)
            }
        };
        // SAFETY: forwarded to the caller.
        unsafe {
            self.attn_launch(stream, AttnKernel::BackwardPre, dtype, d, (pre_blocks, 1), &params)?;
            self.attn_launch(stream, dkdv, dtype, d, (tiles, shape.kv_heads as u32), &params)?;
            self.attn_launch(stream, dq, dtype, d, (tiles, shape.q_heads as u32), &params)
        }
    }

    /// Forward on device buffers (lengths checked against `layout` and `shape`), on `stream`.
    #[allow(clippy::too_many_arguments)]
    pub fn shared_prefix_attention_forward<T: AttnElement>(
        &self,
        stream: &Stream,
        q: &View<'_, T>,
        k: &View<'_, T>,
        v: &View<'_, T>,
        layout: &DevicePrefixLayout,
        shape: AttnShape,
        o: &mut ViewMut<'_, T>,
        lse: &mut ViewMut<'_, f32>,
    ) -> Result<()> {
        let version = AttnVersion::from_env()?;
        self.shared_prefix_attention_forward_version(stream, version, q, k, v, layout, shape, o, lse)
    }

    /// [`Gpu::shared_prefix_attention_forward`] with the kernel version named.
    #[allow(clippy::too_many_arguments)]
    pub fn shared_prefix_attention_forward_version<T: AttnElement>(
        &self,
        stream: &Stream,
        version: AttnVersion,
        q: &View<'_, T>,
        k: &View<'_, T>,
        v: &View<'_, T>,
        layout: &DevicePrefixLayout,
        shape: AttnShape,
        o: &mut ViewMut<'_, T>,
        lse: &mut ViewMut<'_, f32>,
    ) -> Result<()> {
        check_lengths(
            layout,
            &shape,
            &[("q", q.len(), true), ("k", k.len(), false), ("v", v.len(), false), ("o", o.len(), true)],
        )?;
        crate::error::ensure_len("lse", lse.len(), shape.q_heads * layout.n_tokens)?;
        let (qp, _g0) = q.device_ptr(stream)?;
        let (kp, _g1) = k.device_ptr(stream)?;
        let (vp, _g2) = v.device_ptr(stream)?;
        let (op, _g3) = o.device_ptr_mut(stream)?;
        let (lp, _g4) = lse.device_ptr_mut(stream)?;
        let (raw, _layout_guards) = layout.raw(stream)?;
        let ptrs = SharedPrefixAttentionFwdPtrs { q: qp, k: kp, v: vp, o: op, lse: lp };
        // SAFETY: pointers from live cudarc buffers whose lengths were checked above.
        unsafe {
            self.shared_prefix_attention_forward_raw_version(
                stream.raw(),
                version,
                T::DTYPE,
                shape,
                &raw,
                &ptrs,
            )
        }
    }

    /// Backward on cudarc buffers: dQ, dK, dV from dO and the forward's O and LSE.
    #[allow(clippy::too_many_arguments)]
    pub fn shared_prefix_attention_backward<T: AttnElement>(
        &self,
        stream: &Stream,
        saved: &AttnSaved<'_, T>,
        dout: &View<'_, T>,
        layout: &DevicePrefixLayout,
        shape: AttnShape,
        dq: &mut ViewMut<'_, T>,
        dk: &mut ViewMut<'_, T>,
        dv: &mut ViewMut<'_, T>,
    ) -> Result<()> {
        let version = AttnVersion::from_env()?;
        self.shared_prefix_attention_backward_version(stream, version, saved, dout, layout, shape, dq, dk, dv)
    }

    /// [`Gpu::shared_prefix_attention_backward`] with the kernel version named.
    #[allow(clippy::too_many_arguments)]
    pub fn shared_prefix_attention_backward_version<T: AttnElement>(
        &self,
        stream: &Stream,
        version: AttnVersion,
        saved: &AttnSaved<'_, T>,
        dout: &View<'_, T>,
        layout: &DevicePrefixLayout,
        shape: AttnShape,
        dq: &mut ViewMut<'_, T>,
        dk: &mut ViewMut<'_, T>,
        dv: &mut ViewMut<'_, T>,
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
        crate::error::ensure_len("lse", lse.len(), shape.q_heads * layout.n_tokens)?;
        let mut delta = stream.alloc_zeros::<f32>(shape.q_heads * layout.n_tokens)?;
        let (qp, _g0) = q.device_ptr(stream)?;
        let (kp, _g1) = k.device_ptr(stream)?;
        let (vp, _g2) = v.device_ptr(stream)?;
        let (op, _g3) = o.device_ptr(stream)?;
        let (lp, _g4) = lse.device_ptr(stream)?;
        let (dop, _g5) = dout.device_ptr(stream)?;
        let (dqp, _g6) = dq.device_ptr_mut(stream)?;
        let (dkp, _g7) = dk.device_ptr_mut(stream)?;
        let (dvp, _g8) = dv.device_ptr_mut(stream)?;
        let (dlp, _g9) = delta.device_ptr_mut(stream)?;
        let (raw, _layout_guards) = layout.raw(stream)?;
        let ptrs = SharedPrefixAttentionBwdPtrs {
            fwd: SharedPrefixAttentionFwdPtrs { q: qp, k: kp, v: vp, o: op, lse: lp },
            dout: dop,
            dq: dqp,
            dk: dkp,
            dv: dvp,
            delta: dlp,
        };
        // SAFETY: pointers from live cudarc buffers whose lengths were checked above.
        unsafe {
            self.shared_prefix_attention_backward_raw_version(
                stream.raw(),
                version,
                T::DTYPE,
                shape,
                &raw,
                &ptrs,
            )
        }
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
