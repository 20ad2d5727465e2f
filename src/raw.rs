//! Helpers shared by the raw-pointer entry points: pointer checks and the device status word.
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtrMut, SyncOnDrop};

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

/// An optional zeroed u32 on the device that kernels OR status bits into.
pub(crate) struct StatusWord(Option<CudaSlice<u32>>);

impl StatusWord {
    pub(crate) fn new(stream: &Arc<CudaStream>, enabled: bool) -> Result<Self> {
        Ok(StatusWord(if enabled { Some(stream.alloc_zeros::<u32>(1)?) } else { None }))
    }

    /// The raw pointer (0 when disabled) and the guard that orders cudarc's events around its use.
    pub(crate) fn ptr<'a>(&'a mut self, stream: &'a CudaStream) -> (u64, Option<SyncOnDrop<'a>>) {
        match &mut self.0 {
            Some(s) => {
                let (p, g) = s.device_ptr_mut(stream);
                (p, Some(g))
            }
            None => (0, None),
        }
    }

    /// Reads the word back (synchronizes `stream`); 0 when disabled.
    pub(crate) fn read(&self, stream: &Arc<CudaStream>) -> Result<u32> {
        match &self.0 {
            Some(s) => Ok(stream.clone_dtoh(s)?[0]),
            None => Ok(0),
        }
    }
}

/// Turns status bits into the matching error (see `crate::params::STATUS_*`).
pub(crate) fn check_status(bits: u32) -> Result<()> {
    use crate::params::{STATUS_BAD_PAIR, STATUS_BAD_SEQLENS};
    if let Some(e) = crate::token_logprobs::launch::status_error(bits) {
        return Err(e);
    }
    if bits & STATUS_BAD_SEQLENS != 0 {
        return Err(crate::Error::DeviceCheck(
            "cu_seqlens is not non-decreasing within [0, n_tokens]; the offending sequences were read as empty"
                .into(),
        ));
    }
    if bits & STATUS_BAD_PAIR != 0 {
        return Err(crate::Error::DeviceCheck(
            "a pair index is outside [0, n_seqs); those pairs were skipped (zero loss and gradient)".into(),
        ));
    }
    Ok(())
}
