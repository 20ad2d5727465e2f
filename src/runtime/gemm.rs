//! Matrix products for the fused LM head: cuBLAS (`cublasGemmEx`, loaded dynamically through
//! cudarc) on CUDA, a host GEMM on the emulator standing in for it.
//!
//! Both backends compute the same row-major product `C[m, n] = op(A)[m, k] · op(B)[k, n] + β C`
//! with f32 accumulation, A and B in the op's dtype, C in that dtype or f32. cuBLAS runs with
//! `CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION` (no reduced-precision split-K sums) and
//! `CUBLAS_COMPUTE_32F` (f32 inputs stay f32: no TF32), so a fixed problem gives bitwise the same
//! result run to run on one GPU. The host GEMM sums k in order, so it is bitwise deterministic
//! too; it reads and writes emulator memory through the emulator's bounds-checked copies.
use std::sync::Mutex;

use cudarc::cublas::sys as blas;

use super::emulator::{self, CopyKind};
use crate::dtype::DType;
use crate::error::{ensure, Error, Result};

/// One row-major GEMM on device pointers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gemm {
    /// Rows of C (and of op(A)).
    pub(crate) m: usize,
    /// Columns of C (and of op(B)).
    pub(crate) n: usize,
    /// Inner dimension.
    pub(crate) k: usize,
    /// A: `[m, k]` row-major with row stride `lda`, or `[k, m]` when `a_trans`.
    pub(crate) a: u64,
    pub(crate) lda: usize,
    pub(crate) a_trans: bool,
    /// B: `[k, n]` row-major with row stride `ldb`, or `[n, k]` when `b_trans`.
    pub(crate) b: u64,
    pub(crate) ldb: usize,
    pub(crate) b_trans: bool,
    /// C: `[m, n]`, row stride `ldc`.
    pub(crate) c: u64,
    pub(crate) ldc: usize,
    /// dtype of A and B.
    pub(crate) ab: DType,
    /// C in f32 (else in `ab`).
    pub(crate) c_f32: bool,
    /// 0 (overwrite C) or 1 (accumulate into C).
    pub(crate) beta: f32,
}

/// A cuBLAS handle of one context and one stream (its workspace is that stream's alone); calls
/// are serialized.
pub(crate) struct BlasHandle(Mutex<blas::cublasHandle_t>);

// SAFETY: the handle is only used under its mutex, with the owning context bound to the thread.
unsafe impl Send for BlasHandle {}
// SAFETY: as above.
unsafe impl Sync for BlasHandle {}

impl Drop for BlasHandle {
    fn drop(&mut self) {
        if let Ok(h) = self.0.get_mut() {
            if !h.is_null() {
                // SAFETY: created by cublasCreate_v2 and destroyed once, here.
                let _ = unsafe { blas::cublasDestroy_v2(*h) };
            }
        }
    }
}

fn blas_check(what: &str, status: blas::cublasStatus_t) -> Result<()> {
    if status == blas::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(Error::Cublas(format!("{what}: {status:?}")))
    }
}

impl BlasHandle {
    /// A new handle for the context current on this thread, bound to `stream`. Errors (never
    /// panics) when libcublas cannot be loaded.
    pub(crate) fn new(stream: u64) -> Result<Self> {
        // SAFETY: only tries to dlopen libcublas.
        // A pip-installed cuBLAS (site-packages/nvidia/...) the loader cannot find by name is
        // loaded by path first (see runtime::libs).
        let _ = super::libs::preload_cublas();
        if !unsafe { blas::is_culib_present() } {
            return Err(Error::CublasMissing);
        }
        let mut h: blas::cublasHandle_t = std::ptr::null_mut();
        // SAFETY: libcublas is loadable (checked above); h receives the handle.
        blas_check("cublasCreate", unsafe { blas::cublasCreate_v2(&mut h) })?;
        let handle = BlasHandle(Mutex::new(h));
        let mode = blas::cublasMath_t::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION as u32;
        // SAFETY: a live handle; the value is a valid cublasMath_t bit set (DEFAULT | DISALLOW_...).
        blas_check("cublasSetMathMode", unsafe {
            blas::cublasSetMathMode(h, std::mem::transmute::<u32, blas::cublasMath_t>(mode))
        })?;
        // SAFETY: a live handle; `stream` is 0 or a live CUstream of the current context.
        blas_check("cublasSetStream", unsafe { blas::cublasSetStream_v2(h, stream as blas::cudaStream_t) })?;
        Ok(handle)
    }

    /// Enqueues `g` on `stream`.
    ///
    /// # Safety
    /// The handle's context is current on this thread; pointers are device memory of it valid
    /// for the spans `g` implies, alive until the work completes; `stream` is 0 or a live CUstream.
    pub(crate) unsafe fn gemm(&self, stream: u64, g: &Gemm) -> Result<()> {
        let h = self.0.lock().map_err(|_| Error::Cublas("handle mutex poisoned".into()))?;
        let dt = |d: DType| match d {
            DType::F32 => blas::cudaDataType::CUDA_R_32F,
            DType::F16 => blas::cudaDataType::CUDA_R_16F,
            DType::BF16 => blas::cudaDataType::CUDA_R_16BF,
        };
        let op = |t: bool| {
            if t {
                blas::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let int = |x: usize, what: &'static str| {
            i32::try_from(x)
                .map_err(|_| crate::error::invalid(what, format!("{x} exceeds cuBLAS's i32 range")))
        };
        let (m, n, k) = (int(g.m, "gemm m")?, int(g.n, "gemm n")?, int(g.k, "gemm k")?);
        let (lda, ldb, ldc) = (int(g.lda, "gemm lda")?, int(g.ldb, "gemm ldb")?, int(g.ldc, "gemm ldc")?);
        let (alpha, beta) = (1.0f32, g.beta);
        let c_type = if g.c_f32 { blas::cudaDataType::CUDA_R_32F } else { dt(g.ab) };
        // The handle was made for this stream; a stream destroyed and another created at the same
        // address is the same CUstream value, so re-pointing is harmless and keeps them honest.
        // SAFETY: forwarded to the caller (stream, pointers).
        unsafe {
            blas_check("cublasSetStream", blas::cublasSetStream_v2(*h, stream as blas::cudaStream_t))?;
            // Row-major C = op(A) op(B) is column-major Cᵀ = op(B)ᵀ op(A)ᵀ: swap the operands.
            blas_check(
                "cublasGemmEx",
                blas::cublasGemmEx(
                    *h,
                    op(g.b_trans),
                    op(g.a_trans),
                    n,
                    m,
                    k,
                    &alpha as *const f32 as *const _,
                    g.b as *const _,
                    dt(g.ab),
                    ldb,
                    g.a as *const _,
                    dt(g.ab),
                    lda,
                    &beta as *const f32 as *const _,
                    g.c as *mut _,
                    c_type,
                    ldc,
                    blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                ),
            )
        }
    }
}

/// Checks the shape fields of `g` (strides cover the rows; spans fit).
pub(crate) fn validate(g: &Gemm) -> Result<()> {
    let (ar, ac) = if g.a_trans { (g.k, g.m) } else { (g.m, g.k) };
    let (br, bc) = if g.b_trans { (g.n, g.k) } else { (g.k, g.n) };
    ensure(g.lda >= ac.max(1) && g.ldb >= bc.max(1) && g.ldc >= g.n.max(1), "gemm", || {
        format!("row strides too small for {g:?}")
    })?;
    for (rows, ld) in [(ar, g.lda), (br, g.ldb), (g.m, g.ldc)] {
        ensure(rows.checked_mul(ld).is_some_and(|x| x <= i64::MAX as usize), "gemm", || {
            format!("operand span overflows for {g:?}")
        })?;
    }
    Ok(())
}

fn read_f32(ptr: u64, dtype: DType, n: usize) -> Result<Vec<f32>> {
    let bytes = n * dtype.size();
    let mut raw = vec![0u8; bytes];
    // SAFETY: `raw` is valid for `bytes`; the emulator checks the device range.
    unsafe { emulator::copy(raw.as_mut_ptr() as u64, ptr, bytes, CopyKind::DeviceToHost) }?;
    Ok(match dtype {
        DType::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        DType::F16 => raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        DType::BF16 => {
            raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
        }
    })
}

fn write_f32(ptr: u64, dtype: DType, x: &[f32]) -> Result<()> {
    let raw: Vec<u8> = match dtype {
        DType::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => x.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        DType::BF16 => x.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
    };
    // SAFETY: `raw` is valid for its length; the emulator checks the device range.
    unsafe { emulator::copy(ptr, raw.as_ptr() as u64, raw.len(), CopyKind::HostToDevice) }
}

/// The emulator's GEMM: f32 products summed over k in order, rounded once to C's dtype.
pub(crate) fn host_gemm(g: &Gemm) -> Result<()> {
    validate(g)?;
    if g.m == 0 || g.n == 0 {
        return Ok(());
    }
    let span = |rows: usize, cols: usize, ld: usize| if rows == 0 { 0 } else { (rows - 1) * ld + cols };
    let (ar, ac) = if g.a_trans { (g.k, g.m) } else { (g.m, g.k) };
    let (br, bc) = if g.b_trans { (g.n, g.k) } else { (g.k, g.n) };
    let a = read_f32(g.a, g.ab, span(ar, ac, g.lda))?;
    let b = read_f32(g.b, g.ab, span(br, bc, g.ldb))?;
    let at = |i: usize, p: usize| if g.a_trans { a[p * g.lda + i] } else { a[i * g.lda + p] };
    let bt = |p: usize, j: usize| if g.b_trans { b[j * g.ldb + p] } else { b[p * g.ldb + j] };
    let c_dtype = if g.c_f32 { DType::F32 } else { g.ab };
    let es = c_dtype.size() as u64;
    for i in 0..g.m {
        let row_ptr = g.c + (i * g.ldc) as u64 * es;
        let old = if g.beta != 0.0 { read_f32(row_ptr, c_dtype, g.n)? } else { vec![0.0; g.n] };
        let row: Vec<f32> = (0..g.n)
            .map(|j| {
                let mut acc = 0.0f32;
                for p in 0..g.k {
                    acc = at(i, p).mul_add(bt(p, j), acc);
                }
                if g.beta != 0.0 {
                    acc + g.beta * old[j]
                } else {
                    acc
                }
            })
            .collect();
        write_f32(row_ptr, c_dtype, &row)?;
    }
    Ok(())
}
