//! Library-level entry points: the last error, device initialization, status words, and the
//! emulator's host-memory registration.

use std::ffi::c_char;

use super::plumbing::*;
use crate::error::ensure;

/// The message of the last error on this thread (empty if none). Valid until the next call on
/// this thread.
#[no_mangle]
pub extern "C" fn prefk_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Opens `device` (driver checks, module loading) ahead of the first op.
#[no_mangle]
pub extern "C" fn prefk_init(device: i32) -> i32 {
    ffi(|| gpu(device).map(|_| ()))
}

/// Turns a status word the kernels wrote (the `status` argument of the entry points, read back
/// by the caller) into the crate's error: 0 when no bit is set, else -1 with the message in
/// [`prefk_last_error`].
#[no_mangle]
pub extern "C" fn prefk_check_status(status: u32) -> i32 {
    ffi(|| crate::runtime::status::check_status(status))
}

/// Registers caller-owned host memory (a CPU tensor's storage) with the emulator, so that the
/// entry points above accept it as device memory of [`PREFK_DEVICE_EMULATOR`] with every check on:
/// accesses outside the range are reported and, when `initialized` is 0, so are reads before a
/// write. Register each storage once (overlapping a live registration is an error) and call
/// [`prefk_unregister_host_memory`] before the memory is freed.
///
/// # Safety
/// `[ptr, ptr + bytes)` is valid, writable host memory that outlives the registration.
#[no_mangle]
pub unsafe extern "C" fn prefk_register_host_memory(ptr: u64, bytes: i64, initialized: i32) -> i32 {
    ffi(|| {
        let bytes = size("bytes", bytes)?;
        ensure(ptr != 0 && bytes > 0, "ptr", || "a non-null pointer and a non-empty range".into())?;
        // SAFETY: forwarded to the caller.
        unsafe { crate::runtime::emulator::register_host(ptr, bytes, initialized != 0) }
    })
}

/// Ends a [`prefk_register_host_memory`] registration; the memory stays the caller's.
#[no_mangle]
pub extern "C" fn prefk_unregister_host_memory(ptr: u64) -> i32 {
    ffi(|| crate::runtime::emulator::unregister_host(ptr))
}
