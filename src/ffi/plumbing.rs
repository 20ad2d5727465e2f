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
    // The caller's current CUDA context (PyTorch's current device) is put back on return: a call
    // on device k from a thread working on device j must not move the thread to k.
    let _context = crate::runtime::CurrentContext::save();
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

/// The logits layout of a C caller's `n_rows`, `vocab`, `row_stride` (each checked non-negative).
pub(super) fn logits_layout(n_rows: i64, vocab: i64, row_stride: i64) -> Result<crate::LogitsLayout> {
    Ok(crate::LogitsLayout {
        n_rows: size("n_rows", n_rows)?,
        vocab: size("vocab", vocab)?,
        row_stride: size("row_stride", row_stride)?,
    })
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

/// An entry point's argument struct: `#[repr(C)]`, `struct_size: u64` first, every field valid as
/// zero bytes (integers, floats, raw pointers).
///
/// # Safety
/// Implement only for such structs (`src/ffi/args.rs` does, with its layout asserted).
pub unsafe trait AbiArgs: Copy {
    /// The smallest `struct_size` accepted: the struct's size when it was first published. Fields
    /// added since read as 0 from an older caller.
    const MIN_SIZE: usize = std::mem::size_of::<Self>();
}

/// Reads an argument struct. ABI versioning: the caller's `struct_size` says which version of
/// the struct it was compiled against. A size between [`AbiArgs::MIN_SIZE`] and this library's
/// size is read as far as it goes, the fields after it as 0 (each field's 0 is its default); a
/// smaller size, or a larger one (a header newer than the library, whose extra fields would be
/// silently ignored), is refused with a message naming both sizes.
///
/// # Safety
/// `p` is null or points to at least `struct_size` readable bytes (and at least 8).
pub(super) unsafe fn read_args<T: AbiArgs>(p: *const T) -> Result<T> {
    let name = std::any::type_name::<T>().rsplit("::").next().unwrap_or("args");
    ensure(!p.is_null(), "args", || format!("null {name} pointer"))?;
    ensure((p as usize) % std::mem::align_of::<T>() == 0, "args", || {
        format!("{name} at {p:?} is not aligned to {} bytes", std::mem::align_of::<T>())
    })?;
    // SAFETY: non-null and aligned (checked); the caller guarantees the first 8 bytes are readable.
    let size = unsafe { std::ptr::read(p as *const u64) };
    let ours = std::mem::size_of::<T>();
    ensure(size >= T::MIN_SIZE as u64 && size <= ours as u64, "struct_size", || {
        format!(
            "{name}.struct_size is {size}: this library reads {} to {ours} bytes (set it with {name}::new(), \
             or build against this library's include/prefk.h)",
            T::MIN_SIZE
        )
    })?;
    // SAFETY: T's fields are valid as zero bytes (AbiArgs); `size <= size_of::<T>()` bytes are
    // readable at `p` (the caller's guarantee) and copied over the zeroed value.
    unsafe {
        let mut out: T = std::mem::zeroed();
        std::ptr::copy_nonoverlapping(p as *const u8, &mut out as *mut T as *mut u8, size as usize);
        Ok(out)
    }
}

/// [`read_args`] at the boundary: the struct, or the error code (message set) to return.
///
/// # Safety
/// As [`read_args`].
pub(super) unsafe fn ffi_args<T: AbiArgs>(p: *const T) -> std::result::Result<T, i32> {
    let mut out = None;
    // SAFETY: forwarded to the caller.
    let rc = ffi(|| {
        out = Some(unsafe { read_args(p) }?);
        Ok(())
    });
    out.ok_or(rc)
}
