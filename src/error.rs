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
    /// A GPU older than the kernels support.
    #[error("CUDA device of compute capability {major}.{minor}: pref-kernels needs 8.0 or newer (A100, H100, ...)")]
    UnsupportedDevice {
        /// Compute capability major version.
        major: i32,
        /// Compute capability minor version.
        minor: i32,
    },
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
    /// The emulator backend was requested but this build has none (CUDA's half/bf16 headers were
    /// not found at build time).
    #[error("the emulator backend was not built into this copy of pref-kernels (build.rs found no cuda_fp16.h; run scripts/fetch-nvcc.sh, set NVCC, rebuild)")]
    EmulatorNotBuilt,
    /// The emulator refused a launch, allocation or copy (see the message).
    #[error("emulator: {0}")]
    Emulator(String),
    /// An emulated kernel failed a check (memcheck, racecheck, initcheck, synccheck); the message
    /// holds each report with kernel, block, thread and address.
    #[error("kernel check failed on the emulator:\n{0}")]
    KernelCheck(String),
    /// A buffer of one backend was passed with a stream of the other.
    #[error("argument `{arg}` lives on the {buffer} backend but the stream is on the {stream} backend")]
    BackendMismatch {
        /// Name of the argument.
        arg: &'static str,
        /// The buffer's backend.
        buffer: &'static str,
        /// The stream's backend.
        stream: &'static str,
    },
    /// libcublas could not be loaded (the fused LM head's GEMMs need it on CUDA).
    #[error("cuBLAS (libcublas.so.13) not found: the fused LM head needs it on CUDA; install the CUDA 13 cuBLAS runtime (e.g. `pip install nvidia-cublas`) and put it on the library path")]
    CublasMissing,
    /// A cuBLAS call failed.
    #[error("cuBLAS: {0}")]
    Cublas(String),
    /// A collective (NCCL, feature `nccl`) failed or could not be loaded.
    #[error("collective: {0}")]
    Collective(String),
    /// Any CUDA driver error.
    #[error(transparent)]
    Driver(#[from] cudarc::driver::DriverError),

    /// A CUDA error from a kernel's launch, or (with `PREF_KERNELS_SYNC_LAUNCHES=1`) from the
    /// stream synchronization right after it: the sticky error a faulting kernel leaves, named.
    #[error("kernel `{kernel}`: {source}")]
    Launch {
        /// The kernel's entry point.
        kernel: String,
        /// The driver's error.
        #[source]
        source: cudarc::driver::DriverError,
    },
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

/// `Ok` when a buffer or slice argument has the length the op needs, else an `InvalidArgument`
/// naming both (shared by every op's length checks).
pub(crate) fn ensure_len(arg: &'static str, len: usize, want: usize) -> Result<()> {
    ensure(len == want, arg, || format!("length must be {want}, got {len}"))
}
