//! Shared plumbing of the C ABI: the thread's last error, panics caught at the boundary, the
//! per-device `Gpu` cache, and the decoders of the integer codes and sizes every entry point takes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

use crate::dtype::{DType, IndexType};
use crate::error::{ensure, invalid, Result};
use crate::seq_reduce::{DeviceSeqLayout, ReduceMode};
use crate::{Backend, Gpu};

thread_local! {
    pub(super) static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

pub(super) fn set_error(msg: String) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

pub(super) fn ffi(f: impl FnOnce() -> Result<()>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            set_error(e.to_string());
            -1
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned());
            set_error(format!("internal panic: {}", msg.unwrap_or_else(|| "unknown".into())));
            -2
        }
    }
}

/// The `device` value that selects the CPU emulator.
pub const PREFK_DEVICE_EMULATOR: i32 = -1;

pub(super) fn gpu(device: i32) -> Result<Arc<Gpu>> {
    static GPUS: OnceLock<Mutex<HashMap<i32, Arc<Gpu>>>> = OnceLock::new();
    let backend = if device == PREFK_DEVICE_EMULATOR { Backend::Emulator } else { Backend::Cuda };
    let ordinal = if device == PREFK_DEVICE_EMULATOR {
        0
    } else {
        usize::try_from(device)
            .map_err(|_| invalid("device", format!("must be >= 0 or -1 (emulator), got {device}")))?
    };
    let mut map = GPUS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(g) = map.get(&device) {
        return Ok(g.clone());
    }
    let g = Arc::new(Gpu::open(backend, ordinal)?);
    map.insert(device, g.clone());
    Ok(g)
}

pub(super) fn dtype(code: u32) -> Result<DType> {
    match code {
        0 => Ok(DType::F32),
        1 => Ok(DType::F16),
        2 => Ok(DType::BF16),
        _ => Err(invalid("dtype", format!("0 (f32), 1 (f16) or 2 (bf16), got {code}"))),
    }
}

pub(super) fn index_type(code: u32) -> Result<IndexType> {
    match code {
        0 => Ok(IndexType::I32),
        1 => Ok(IndexType::I64),
        _ => Err(invalid("index_type", format!("0 (i32) or 1 (i64), got {code}"))),
    }
}

/// Copies `n` host values at `p` (null or `n == 0` gives an empty vector; a misaligned `p` is an
/// error, not undefined behaviour).
///
/// # Safety
/// `p` is null or valid for `n` reads.
pub(super) unsafe fn host_vec<T: Copy>(arg: &'static str, p: *const T, n: usize) -> Result<Vec<T>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    ensure(!p.is_null(), arg, || format!("null pointer for {n} host values"))?;
    ensure((p as usize) % std::mem::align_of::<T>() == 0, arg, || {
        format!("host pointer {p:?} is not aligned to {} bytes", std::mem::align_of::<T>())
    })?;
    // SAFETY: forwarded to the caller; non-null and aligned checked above.
    Ok(unsafe { std::slice::from_raw_parts(p, n) }.to_vec())
}

pub(super) fn size(arg: &'static str, v: i64) -> Result<usize> {
    usize::try_from(v).map_err(|_| invalid(arg, format!("must be >= 0, got {v}")))
}

pub(super) fn reduce_mode(code: u32) -> Result<ReduceMode> {
    Ok(match code {
        0 => ReduceMode::Sum,
        1 => ReduceMode::Mean,
        2 => ReduceMode::WeightedSum,
        3 => ReduceMode::WeightedMean,
        m => {
            return Err(invalid(
                "mode",
                format!("0 (sum), 1 (mean), 2 (weighted sum), 3 (weighted mean), got {m}"),
            ))
        }
    })
}

pub(super) fn seq_layout(cu_seqlens: u64, n_seqs: i64, seq_len: i64) -> Result<DeviceSeqLayout> {
    let n_seqs = size("n_seqs", n_seqs)?;
    Ok(if cu_seqlens != 0 {
        DeviceSeqLayout::Packed { cu_seqlens, n_seqs }
    } else {
        DeviceSeqLayout::Padded { n_seqs, seq_len: size("seq_len", seq_len)? }
    })
}
