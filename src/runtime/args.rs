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
