//! Argument checks shared by the raw-pointer entry points.
use crate::error::{invalid, Result};

/// Rejects a null (when `required`) or misaligned device pointer, naming the argument.
pub(crate) fn check_ptr(arg: &'static str, ptr: u64, align: usize, required: bool) -> Result<()> {
    if ptr == 0 {
        return if required { Err(invalid(arg, "null device pointer")) } else { Ok(()) };
    }
    if ptr % align as u64 != 0 {
        return Err(invalid(arg, format!("device pointer {ptr:#x} is not aligned to {align} bytes")));
    }
    Ok(())
}

/// True when the byte ranges `[a, a + a_len)` and `[b, b + b_len)` intersect.
pub(crate) fn ranges_overlap(a: u64, a_len: u64, b: u64, b_len: u64) -> bool {
    a_len > 0 && b_len > 0 && a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
}

/// Checks that `elems` elements of `elem_bytes` starting at device address `ptr` have an
/// address range that fits 64 bits, so that offsets carved out of it cannot wrap. Returns the
/// span's length in bytes.
pub(crate) fn check_span(arg: &'static str, ptr: u64, elems: usize, elem_bytes: usize) -> Result<u64> {
    elems
        .checked_mul(elem_bytes)
        .and_then(|b| u64::try_from(b).ok())
        .filter(|&b| ptr.checked_add(b).is_some())
        .ok_or_else(|| {
            invalid(
                arg,
                format!("{elems} elements of {elem_bytes} bytes at {ptr:#x} overflow the address space"),
            )
        })
}
