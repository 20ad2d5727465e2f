//! The device status word: kernels that validate device-side data (targets, cu_seqlens, pair
//! indices) OR bits into an optional u32; the safe API allocates it, reads it back once, and turns
//! the bits into errors here, for every op.
use super::mem::{DeviceBuffer, DevicePtrMut as _, Guard, Stream};
use crate::error::{Error, Result};
use crate::params::{
    STATUS_BAD_PAIR, STATUS_BAD_ROW_INDEX, STATUS_BAD_SEQLENS, STATUS_BAD_SHARDS, STATUS_BAD_TARGET,
};

/// An optional zeroed u32 on the device that kernels OR status bits into.
pub(crate) struct StatusWord(Option<DeviceBuffer<u32>>);

impl StatusWord {
    pub(crate) fn new(stream: &Stream, enabled: bool) -> Result<Self> {
        Ok(StatusWord(if enabled { Some(stream.alloc_zeros::<u32>(1)?) } else { None }))
    }

    /// The raw pointer (0 when disabled) and its guard.
    pub(crate) fn ptr<'a>(&'a mut self, stream: &Stream) -> Result<(u64, Option<Guard<'a>>)> {
        match &mut self.0 {
            Some(s) => {
                let (p, g) = s.device_ptr_mut(stream)?;
                Ok((p, Some(g)))
            }
            None => Ok((0, None)),
        }
    }

    /// Reads the word back (synchronizes `stream`); 0 when disabled.
    pub(crate) fn read(&self, stream: &Stream) -> Result<u32> {
        match &self.0 {
            Some(s) => Ok(stream.clone_dtoh(s)?[0]),
            None => Ok(0),
        }
    }
}

/// Turns status bits into the matching error (see `crate::params::STATUS_*`).
pub(crate) fn check_status(bits: u32) -> Result<()> {
    if bits & STATUS_BAD_TARGET != 0 {
        return Err(Error::DeviceCheck(
            "at least one target is outside [0, vocab) and not ignore_index; its rows were written as NaN"
                .into(),
        ));
    }
    if bits & STATUS_BAD_SEQLENS != 0 {
        return Err(Error::DeviceCheck(
            "cu_seqlens is not non-decreasing within [0, n_tokens]; the offending sequences were read as empty"
                .into(),
        ));
    }
    if bits & STATUS_BAD_PAIR != 0 {
        return Err(Error::DeviceCheck(
            "a pair index is outside [0, n_seqs); those pairs were skipped (zero loss and gradient)".into(),
        ));
    }
    if bits & STATUS_BAD_ROW_INDEX != 0 {
        return Err(Error::DeviceCheck(
            "a row index of the fused LM head's gather/scatter is outside its array; those rows were not moved"
                .into(),
        ));
    }
    if bits & STATUS_BAD_SHARDS != 0 {
        return Err(Error::DeviceCheck(
            "vocabulary shards do not tile the vocabulary: a target was held by no shard or by several \
             (check each rank's vocab_start and size, and the gather's rank order); those rows were written as NaN"
                .into(),
        ));
    }
    Ok(())
}
