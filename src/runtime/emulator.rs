//! The emulator backend: the crate's own `kernels/*.cu`, compiled for the host by build.rs, run on
//! the CPU by `kernels/emulator/runtime.cpp` (every CUDA thread a fiber, blocks in order, so runs
//! are bitwise reproducible) with compute-sanitizer-style checks on every memory access and
//! collective. Device memory is host memory the emulator allocates and tracks (pointers are host
//! addresses); launches run synchronously on the calling thread.
// Built without CUDA headers (no emulator), the stubs below leave the FFI imports and the checks'
// bit encoding unused: that build must still pass clippy with -D warnings.
#![cfg_attr(not(prefk_emulator), allow(unused_imports, dead_code))]
use std::ffi::{c_char, c_void, CStr, CString};

use crate::error::{Error, Result};

/// Which checks the emulator runs during a launch (all on by default).
///
/// `PREF_KERNELS_EMU_CHECKS` overrides the default: `all`, `none`, or a comma-separated list of
/// `memcheck`, `racecheck`, `initcheck`, `synccheck`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmulatorChecks {
    /// Global accesses outside a live emulator allocation, misaligned accesses, shared accesses
    /// outside the block's shared memory. Off, kernels may also touch host memory the emulator did
    /// not allocate (unchecked).
    pub memcheck: bool,
    /// Two threads touching the same shared-memory byte between two barriers, one writing.
    pub racecheck: bool,
    /// Reads of shared memory not written since the block started, and of global memory never
    /// written since allocation.
    pub initcheck: bool,
    /// `__syncthreads` not reached by every thread, warp collectives with missing or mismatched
    /// lanes. Deadlocks are always errors.
    pub synccheck: bool,
}

impl EmulatorChecks {
    /// Every check.
    pub const ALL: Self =
        EmulatorChecks { memcheck: true, racecheck: true, initcheck: true, synccheck: true };
    /// No check (deadlocks are still reported).
    pub const NONE: Self =
        EmulatorChecks { memcheck: false, racecheck: false, initcheck: false, synccheck: false };

    /// The checks named by `PREF_KERNELS_EMU_CHECKS`, or [`EmulatorChecks::ALL`] when unset.
    pub fn from_env() -> Result<Self> {
        match std::env::var("PREF_KERNELS_EMU_CHECKS") {
            Err(_) => Ok(Self::ALL),
            Ok(v) => Self::parse(&v),
        }
    }

    /// Parses `all`, `none` or a comma-separated list of checker names.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") || s.is_empty() {
            return Ok(Self::ALL);
        }
        let mut c = Self::NONE;
        if s.eq_ignore_ascii_case("none") {
            return Ok(c);
        }
        for part in s.split(',').map(str::trim) {
            match part {
                "memcheck" => c.memcheck = true,
                "racecheck" => c.racecheck = true,
                "initcheck" => c.initcheck = true,
                "synccheck" => c.synccheck = true,
                other => {
                    return Err(crate::error::invalid(
                        "PREF_KERNELS_EMU_CHECKS",
                        format!("unknown checker `{other}` (expected all, none, memcheck, racecheck, initcheck, synccheck)"),
                    ))
                }
            }
        }
        Ok(c)
    }

    pub(crate) fn bits(self) -> u32 {
        self.memcheck as u32
            | (self.racecheck as u32) << 1
            | (self.initcheck as u32) << 2
            | (self.synccheck as u32) << 3
    }
}

#[cfg(prefk_emulator)]
mod sys {
    use std::ffi::{c_char, c_int, c_void};
    extern "C" {
        pub fn prefk_emu_last_error() -> *const c_char;
        pub fn prefk_emu_kernel_count() -> usize;
        pub fn prefk_emu_kernel_name(i: usize) -> *const c_char;
        pub fn prefk_emu_alloc(bytes: usize) -> *mut c_void;
        pub fn prefk_emu_free(p: *mut c_void) -> c_int;
        pub fn prefk_emu_register_host(p: *mut c_void, bytes: usize, initialized: c_int) -> c_int;
        pub fn prefk_emu_unregister_host(p: *mut c_void) -> c_int;
        pub fn prefk_emu_copy(dst: *mut c_void, src: *const c_void, n: usize, kind: c_int) -> c_int;
        pub fn prefk_emu_memset(dst: *mut c_void, byte: c_int, n: usize) -> c_int;
        pub fn prefk_emu_launch(
            name: *const c_char,
            grid: *const u32,
            block: *const u32,
            dynamic_smem: usize,
            params: *const c_void,
            params_size: usize,
            checks: u32,
        ) -> c_int;
    }
}

/// True when this build contains the emulator (build.rs found CUDA's half/bf16 headers).
pub const fn built() -> bool {
    crate::kernels::EMULATOR_BUILT
}

#[cfg(not(prefk_emulator))]
fn not_built() -> Error {
    Error::EmulatorNotBuilt
}

#[cfg(prefk_emulator)]
fn last_error() -> String {
    // SAFETY: the runtime returns a pointer to its thread-local, NUL-terminated message.
    unsafe { CStr::from_ptr(sys::prefk_emu_last_error()) }.to_string_lossy().into_owned()
}

/// Names of every emulated kernel (the runtime's registry, filled at static initialization).
pub fn kernel_names() -> Vec<String> {
    #[cfg(prefk_emulator)]
    {
        // SAFETY: plain queries of the runtime's immutable kernel list.
        let n = unsafe { sys::prefk_emu_kernel_count() };
        (0..n)
            .filter_map(|i| {
                // SAFETY: i < count; the names are static strings.
                let p = unsafe { sys::prefk_emu_kernel_name(i) };
                // SAFETY: non-null names are NUL-terminated string literals.
                (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
            })
            .collect()
    }
    #[cfg(not(prefk_emulator))]
    Vec::new()
}

/// Allocates `bytes` of emulated device memory (256-byte aligned, contents undefined and tracked
/// as uninitialized).
pub(crate) fn alloc(bytes: usize) -> Result<u64> {
    #[cfg(prefk_emulator)]
    {
        // SAFETY: the runtime allocates and registers the block; null means failure.
        let p = unsafe { sys::prefk_emu_alloc(bytes) };
        if p.is_null() {
            return Err(Error::Emulator(last_error()));
        }
        Ok(p as u64)
    }
    #[cfg(not(prefk_emulator))]
    {
        let _ = bytes;
        Err(not_built())
    }
}

/// Frees an allocation made by [`alloc`].
pub(crate) fn free(ptr: u64) {
    #[cfg(prefk_emulator)]
    // SAFETY: `ptr` came from `alloc` and is freed once (DeviceBuffer's drop); the runtime
    // rejects anything else without touching it.
    unsafe {
        sys::prefk_emu_free(ptr as *mut c_void);
    }
    #[cfg(not(prefk_emulator))]
    let _ = ptr;
}

/// Registers caller-owned host memory `[ptr, ptr + bytes)` as an emulator allocation, so the
/// kernels may read and write it with every check on (bounds against this range, and with
/// `initialized == false` reads before writes). Undo with [`unregister_host`] before the memory is
/// freed or reused.
///
/// # Safety
/// `[ptr, ptr + bytes)` is valid, writable host memory that outlives the registration, and no
/// other code touches it while an emulated kernel runs on it.
pub unsafe fn register_host(ptr: u64, bytes: usize, initialized: bool) -> Result<()> {
    #[cfg(prefk_emulator)]
    {
        // SAFETY: the runtime only records the range; validity is the caller's promise.
        let rc = unsafe {
            sys::prefk_emu_register_host(ptr as *mut c_void, bytes, std::ffi::c_int::from(initialized))
        };
        if rc != 0 {
            return Err(Error::Emulator(last_error()));
        }
        Ok(())
    }
    #[cfg(not(prefk_emulator))]
    {
        let _ = (ptr, bytes, initialized);
        Err(not_built())
    }
}

/// Ends a [`register_host`] registration (the memory stays the caller's).
pub fn unregister_host(ptr: u64) -> Result<()> {
    #[cfg(prefk_emulator)]
    {
        // SAFETY: the runtime looks `ptr` up and refuses anything it did not register.
        let rc = unsafe { sys::prefk_emu_unregister_host(ptr as *mut c_void) };
        if rc != 0 {
            return Err(Error::Emulator(last_error()));
        }
        Ok(())
    }
    #[cfg(not(prefk_emulator))]
    {
        let _ = ptr;
        Err(not_built())
    }
}

/// Direction of a copy.
#[derive(Clone, Copy)]
pub(crate) enum CopyKind {
    HostToDevice = 0,
    DeviceToHost = 1,
    DeviceToDevice = 2,
}

/// Copies `n` bytes; the runtime checks every emulated range lies inside one allocation.
///
/// # Safety
/// Host-side ranges (`src` for host-to-device, `dst` for device-to-host) are valid for `n` bytes.
pub(crate) unsafe fn copy(dst: u64, src: u64, n: usize, kind: CopyKind) -> Result<()> {
    #[cfg(prefk_emulator)]
    {
        // SAFETY: forwarded to the caller for host ranges; emulated ranges are checked.
        let rc = unsafe { sys::prefk_emu_copy(dst as *mut c_void, src as *const c_void, n, kind as i32) };
        if rc != 0 {
            return Err(Error::Emulator(last_error()));
        }
        Ok(())
    }
    #[cfg(not(prefk_emulator))]
    {
        let _ = (dst, src, n, kind);
        Err(not_built())
    }
}

/// Sets `n` bytes of an emulated allocation to `byte`.
pub(crate) fn memset(dst: u64, byte: u8, n: usize) -> Result<()> {
    #[cfg(prefk_emulator)]
    {
        // SAFETY: the runtime checks the range lies inside one allocation before writing.
        let rc = unsafe { sys::prefk_emu_memset(dst as *mut c_void, byte as i32, n) };
        if rc != 0 {
            return Err(Error::Emulator(last_error()));
        }
        Ok(())
    }
    #[cfg(not(prefk_emulator))]
    {
        let _ = (dst, byte, n);
        Err(not_built())
    }
}

/// Runs kernel `name` to completion on the CPU.
///
/// Errors: [`Error::KernelCheck`] with the checkers' reports (kernel, block, thread, address) when
/// a check fails; [`Error::Emulator`] for an unknown kernel or invalid configuration.
///
/// # Safety
/// `params` are the bytes of the kernel's parameter struct. With memcheck off, every pointer in
/// them must be valid for what the kernel accesses (with memcheck on, the emulator stops the
/// launch before any access outside its allocations).
pub(crate) unsafe fn launch(
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    dynamic_smem: u32,
    params: &[u8],
    checks: EmulatorChecks,
) -> Result<()> {
    #[cfg(prefk_emulator)]
    {
        let cname = CString::new(name).map_err(|_| crate::error::invalid("kernel", "name contains NUL"))?;
        // SAFETY: all pointers are valid for the call; the runtime copies `params`.
        let rc = unsafe {
            sys::prefk_emu_launch(
                cname.as_ptr() as *const c_char,
                grid.as_ptr(),
                block.as_ptr(),
                dynamic_smem as usize,
                params.as_ptr() as *const c_void,
                params.len(),
                checks.bits(),
            )
        };
        match rc {
            0 => Ok(()),
            1 => Err(Error::KernelCheck(last_error())),
            _ => Err(Error::Emulator(last_error())),
        }
    }
    #[cfg(not(prefk_emulator))]
    {
        let _ = (name, grid, block, dynamic_smem, params, checks);
        Err(not_built())
    }
}

/// Runs any emulated kernel by name with an explicit configuration, e.g. the emulator's own
/// self-test kernels (`kernels/emulator/selftest.cu`). Crate ops launch through
/// [`crate::Gpu`] instead, which takes the configuration from the registry.
///
/// # Safety
/// `P` is the kernel's `#[repr(C)]` parameter struct (the emulator checks its size); with
/// memcheck off, every pointer in it must be valid for what the kernel accesses.
pub unsafe fn launch_kernel<P: Copy>(
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    dynamic_smem: u32,
    params: &P,
    checks: EmulatorChecks,
) -> Result<()> {
    // SAFETY: P is plain data (Copy, repr(C) by contract); its bytes are the kernel's parameters.
    let bytes =
        unsafe { std::slice::from_raw_parts(params as *const P as *const u8, std::mem::size_of::<P>()) };
    // SAFETY: forwarded to the caller.
    unsafe { launch(name, grid, block, dynamic_smem, bytes, checks) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_parse() {
        assert_eq!(EmulatorChecks::parse("all").unwrap(), EmulatorChecks::ALL);
        assert_eq!(EmulatorChecks::parse("none").unwrap(), EmulatorChecks::NONE);
        let c = EmulatorChecks::parse("memcheck, racecheck").unwrap();
        assert!(c.memcheck && c.racecheck && !c.initcheck && !c.synccheck);
        assert!(EmulatorChecks::parse("memchek").unwrap_err().to_string().contains("memchek"));
        assert_eq!(EmulatorChecks::ALL.bits(), 15);
    }
}
