//! The crate's error type. Every public function returns [`Result`].

/// Errors returned by pref-kernels. Messages name the offending argument and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CUDA driver library (libcuda.so) could not be loaded.
    #[error("CUDA driver library (libcuda.so.1) not found: no NVIDIA driver is installed or visible")]
    DriverMissing,
    /// The installed driver is older than the kernels need.
    #[error("CUDA driver too old: found version {found}, pref-kernels needs >= {need} (driver r580+ for CUDA 13.0)")]
    DriverTooOld {
        /// Version reported by cuDriverGetVersion (e.g. 12040).
        found: i32,
        /// Minimum version needed.
        need: i32,
    },
    /// The crate was built without nvcc, so no kernels are embedded.
    #[error("CUDA kernels were not built into this copy of pref-kernels: {0}")]
    KernelsNotBuilt(&'static str),
    /// The requested device ordinal does not exist.
    #[error("no CUDA device with ordinal {ordinal}: {count} device(s) visible")]
    NoSuchDevice {
        /// Requested ordinal.
        ordinal: usize,
        /// Number of visible devices.
        count: usize,
    },
    /// A shape, length, pointer or hyperparameter is invalid.
    #[error("invalid argument `{arg}`: {msg}")]
    InvalidArgument {
        /// Name of the argument.
        arg: &'static str,
        /// What was wrong and what was expected.
        msg: String,
    },
    /// A target id is outside `[0, vocab)` and is not `ignore_index`.
    #[error(
        "target out of range at row {row}: got {target}, expected 0 <= target < {vocab} or ignore_index"
    )]
    TargetOutOfRange {
        /// First offending row.
        row: u64,
        /// Offending target.
        target: i64,
        /// Vocabulary size.
        vocab: u64,
    },
    /// A device-side check reported bad data (see the message); the GPU only knows that some row
    /// failed, and marks the failing rows' outputs with NaN.
    #[error("device-side check failed: {0}")]
    DeviceCheck(String),
    /// Any CUDA driver error.
    #[error(transparent)]
    Driver(#[from] cudarc::driver::DriverError),
}

/// `Result` with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for an [`Error::InvalidArgument`].
pub(crate) fn invalid(arg: &'static str, msg: impl Into<String>) -> Error {
    Error::InvalidArgument { arg, msg: msg.into() }
}

/// Returns an [`Error::InvalidArgument`] unless `cond` holds.
pub(crate) fn ensure(cond: bool, arg: &'static str, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(invalid(arg, msg()))
    }
}
