//! Shared machinery below the op rooms: the device handle ([`Gpu`]) with its two backends, the
//! kernel registry, the one launch path, streams and buffers, the status word and argument checks.
//!
//! Backends: a CUDA device (kernels from the embedded fatbins, launched with cudarc) or the CPU
//! emulator (the same kernel sources compiled for the host, run with sanitizer checks). Every op
//! launches through one function (`Gpu::launch`), which reads the block size and shared memory from
//! [`registry`] and dispatches on the backend; above it, the raw and safe APIs are the same code
//! on both.
use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{sys, CudaContext, CudaFunction, LaunchConfig, PushKernelArg};

use crate::error::{invalid, Error, Result};
use crate::kernels;

pub(crate) mod args;
pub mod emulator;
pub(crate) mod gemm;
pub mod libs;
pub mod mem;
pub(crate) mod pipeline;
pub mod registry;
pub(crate) mod status;

pub use emulator::EmulatorChecks;
pub use mem::{BackendKind, DeviceBuffer, DevicePtr, DevicePtrMut, Element, Guard, Stream, View, ViewMut};

/// Set once a CUDA device has been opened in this process: before that the driver may not even be
/// loaded, and nothing of ours can have changed a thread's current context.
static CUDA_OPENED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The calling thread's current CUDA context, restored when dropped (C ABI entry points hold one,
/// so an op never leaves the caller's thread on another device's context). Does nothing until a
/// CUDA device has been opened in the process.
pub(crate) struct CurrentContext(Option<sys::CUcontext>);

impl CurrentContext {
    pub(crate) fn save() -> Self {
        if !CUDA_OPENED.load(std::sync::atomic::Ordering::Acquire) {
            return CurrentContext(None);
        }
        let mut ctx = std::ptr::null_mut();
        // SAFETY: the driver is loaded and initialized (a device was opened); writes one handle.
        let ok = unsafe { sys::cuCtxGetCurrent(&mut ctx) } == sys::CUresult::CUDA_SUCCESS;
        CurrentContext(ok.then_some(ctx))
    }
}

impl Drop for CurrentContext {
    fn drop(&mut self) {
        if let Some(ctx) = self.0 {
            // SAFETY: `ctx` was current on this thread at save() (or null: no context); the primary
            // contexts this crate retains are never destroyed while the process runs.
            let _ = unsafe { sys::cuCtxSetCurrent(ctx) };
        }
    }
}

/// Minimum driver version (cuDriverGetVersion): the kernels' PTX is ISA 9.0 from nvcc 13.0.
pub const MIN_DRIVER_VERSION: i32 = 13000;

/// Streaming multiprocessors the emulator reports: an H100/H200's, so grids match a real launch.
pub const EMULATOR_SM_COUNT: u32 = 132;

/// Why no GPU can be used, or `Ok(())` when one can: libcuda present, driver new enough, at least
/// one device, kernels built. Never panics (checks for libcuda before touching the driver).
pub fn gpu_available() -> Result<()> {
    check_driver()?;
    if !kernels::built() {
        return Err(Error::KernelsNotBuilt(kernels::BUILD_NOTE));
    }
    let count = CudaContext::device_count()?;
    if count < 1 {
        return Err(Error::NoSuchDevice { ordinal: 0, count: 0 });
    }
    Ok(())
}

fn check_driver() -> Result<()> {
    // SAFETY: is_culib_present only attempts to dlopen libcuda; it does not call into it.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::DriverMissing);
    }
    let mut version = 0i32;
    // SAFETY: libcuda is present (checked above); cuDriverGetVersion writes one int and needs no cuInit.
    unsafe { sys::cuDriverGetVersion(&mut version) }.result()?;
    if version < MIN_DRIVER_VERSION {
        return Err(Error::DriverTooOld { found: version, need: MIN_DRIVER_VERSION });
    }
    Ok(())
}

/// Which backend to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A CUDA device.
    Cuda,
    /// The CPU emulator.
    Emulator,
    /// CUDA when a usable GPU is present, else the emulator.
    Auto,
}

impl Backend {
    /// `PREF_KERNELS_BACKEND` (`cuda`, `emulator` or `auto`), if set.
    pub fn from_env() -> Result<Option<Self>> {
        match std::env::var("PREF_KERNELS_BACKEND") {
            Err(_) => Ok(None),
            Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
                "cuda" => Ok(Some(Backend::Cuda)),
                "emulator" | "emu" | "cpu" => Ok(Some(Backend::Emulator)),
                "auto" | "" => Ok(Some(Backend::Auto)),
                other => Err(invalid(
                    "PREF_KERNELS_BACKEND",
                    format!("`{other}` is not one of cuda, emulator, auto"),
                )),
            },
        }
    }
}

/// Per-stream resources (cuBLAS handles, side lanes), each made on its stream's first use, and
/// one spare made ahead of need: a stream's first use may come while the stream is being captured
/// into a CUDA graph, when creating a handle is not allowed; it takes the spare, and the next use
/// outside a capture makes another.
struct PerStream<T> {
    by_stream: HashMap<u64, Arc<T>>,
    spare: Option<T>,
}

impl<T> Default for PerStream<T> {
    fn default() -> Self {
        PerStream { by_stream: HashMap::new(), spare: None }
    }
}

impl<T> PerStream<T> {
    /// The resource of the stream keyed `key` ([`stream_key`]): the spare, or `make()`, on the
    /// stream's first use; then refills the spare unless `capturing()` (asked only then: a
    /// stream's later uses query nothing). A failed refill is left for the next call.
    fn for_stream(
        &mut self,
        key: u64,
        make: impl Fn() -> Result<T>,
        capturing: impl Fn() -> bool,
    ) -> Result<Arc<T>> {
        let item = match self.by_stream.get(&key) {
            Some(h) => h.clone(),
            None => {
                let h = Arc::new(match self.spare.take() {
                    Some(h) => h,
                    None => make()?,
                });
                self.by_stream.insert(key, h.clone());
                h
            }
        };
        if self.spare.is_none() && !capturing() {
            self.spare = make().ok();
        }
        Ok(item)
    }
}

struct CudaDevice {
    ctx: Arc<CudaContext>,
    functions: HashMap<String, CudaFunction>,
    sm_count: u32,
    /// Compute capability (major, minor).
    capability: (i32, i32),
    /// One cuBLAS handle per stream, created on the stream's first GEMM (the ops without one
    /// never need libcublas). A handle's workspace is used by every GEMM enqueued through it: one
    /// handle re-pointed at several streams would let GEMMs on two streams share it at once (a
    /// race, and cuBLAS's reproducibility holds only for one stream per handle), as PyTorch
    /// avoids with its own per-stream workspaces.
    blas: std::sync::Mutex<PerStream<gemm::BlasHandle>>,
    /// One side lane per stream (a second stream and its events) for the chunk loops that overlap
    /// a row pass with the next chunk's GEMM (see [`pipeline`]).
    lanes: std::sync::Mutex<PerStream<std::sync::Mutex<pipeline::SideLane>>>,
    /// `PREF_KERNELS_SYNC_LAUNCHES=1`: synchronize after every launch, so a faulting kernel's
    /// sticky error is reported with its name (a debugging mode: it serializes host and device).
    sync_launches: bool,
}

impl Drop for CudaDevice {
    /// Destroys the side lanes and cuBLAS handles with their context current (the fields would
    /// otherwise drop after `ctx`, whose last reference may release the primary context first).
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        let lanes = self.lanes.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        *lanes = PerStream::default();
        let blas = self.blas.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        *blas = PerStream::default();
    }
}

enum Inner {
    /// Boxed: the device's tables dwarf the emulator's few flags.
    Cuda(Box<CudaDevice>),
    Emulator(EmulatorChecks),
}

/// A device with every pref-kernels kernel loaded: a CUDA GPU or the CPU emulator.
///
/// Create one per device and share it (`Gpu` is `Send + Sync`). On CUDA it retains the device's
/// primary context, the same one the CUDA runtime and PyTorch use, so raw pointers from those
/// work here. On the emulator, device pointers are host addresses of emulator allocations
/// ([`Stream::alloc_zeros`], [`Stream::clone_htod`]) and launches run synchronously.
pub struct Gpu {
    inner: Inner,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Cuda(c) => f
                .debug_struct("Gpu")
                .field("backend", &"cuda")
                .field("ordinal", &c.ctx.ordinal())
                .field("sm_count", &c.sm_count)
                .field("functions", &c.functions.len())
                .finish(),
            Inner::Emulator(checks) => {
                f.debug_struct("Gpu").field("backend", &"emulator").field("checks", checks).finish()
            }
        }
    }
}

/// Whether `stream` is being captured into a CUDA graph (an error from the query counts as yes:
/// the legacy stream answers with one while another stream captures in global mode).
///
/// # Safety
/// `stream` is 0 or a live CUstream of the context current on this thread.
unsafe fn stream_capturing(stream: u64) -> bool {
    use cudarc::driver::sys;
    let mut status = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
    // SAFETY: forwarded to the caller; `status` is a valid out-pointer.
    let r = unsafe { sys::cuStreamIsCapturing(stream as sys::CUstream, &mut status) };
    r != sys::CUresult::CUDA_SUCCESS || status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE
}

/// The key of `stream`'s per-stream resources: the driver's stream id, which tells apart the
/// per-thread default streams of two threads (one handle value, `CU_STREAM_PER_THREAD`), names
/// the legacy stream one way (0 or `CU_STREAM_LEGACY`), and is never reused by a stream created
/// after another was destroyed at the same address; the handle itself where the id is not known.
///
/// # Safety
/// `stream` is 0 or a live CUstream of the context current on this thread.
unsafe fn stream_key(stream: u64) -> u64 {
    use cudarc::driver::sys;
    let mut id: std::ffi::c_ulonglong = 0;
    // SAFETY: forwarded to the caller; `id` is a valid out-pointer.
    let r = unsafe { sys::cuStreamGetId(stream as sys::CUstream, &mut id) };
    if r == sys::CUresult::CUDA_SUCCESS {
        id
    } else {
        stream
    }
}

impl Gpu {
    /// Opens CUDA device `ordinal` and loads every module (never the emulator; see
    /// [`Gpu::open`] for a choice honouring `PREF_KERNELS_BACKEND`).
    ///
    /// Errors: [`Error::DriverMissing`] without libcuda, [`Error::DriverTooOld`] for drivers older
    /// than CUDA 13.0, [`Error::KernelsNotBuilt`] when built without nvcc, [`Error::NoSuchDevice`]
    /// for a bad ordinal, [`Error::Driver`] for anything the driver reports.
    pub fn new(ordinal: usize) -> Result<Self> {
        check_driver()?;
        if !kernels::built() {
            return Err(Error::KernelsNotBuilt(kernels::BUILD_NOTE));
        }
        let count = CudaContext::device_count()? as usize;
        if ordinal >= count {
            return Err(Error::NoSuchDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal)?;
        CUDA_OPENED.store(true, std::sync::atomic::Ordering::Release);
        // The kernels need sm_80 (bf16 mma.sync, cp.async); older parts would fail at module load
        // with a bare CUDA_ERROR_NO_BINARY_FOR_GPU.
        let major = ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        if major < 8 {
            return Err(Error::UnsupportedDevice { major, minor });
        }
        let sm_count =
            ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1) as u32;
        let mut functions = HashMap::new();
        for (module_name, fatbin) in kernels::MODULES {
            let fatbin = fatbin.ok_or(Error::KernelsNotBuilt(kernels::BUILD_NOTE))?;
            // from_binary copies into a Vec, so include_bytes!'s alignment does not matter.
            let module = ctx.load_module(cudarc::nvrtc::Ptx::from_binary(fatbin.to_vec()))?;
            for spec in registry::module_kernels(module_name) {
                let f = module.load_function(&spec.name)?;
                if spec.dynamic_smem > 48 * 1024 {
                    // Opt in to more than the default 48 KB of dynamic shared memory.
                    f.set_attribute(
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        spec.dynamic_smem as i32,
                    )?;
                }
                functions.insert(spec.name.clone(), f);
            }
        }
        let sync_launches = std::env::var("PREF_KERNELS_SYNC_LAUNCHES").is_ok_and(|v| v == "1");
        Ok(Gpu {
            inner: Inner::Cuda(Box::new(CudaDevice {
                ctx,
                functions,
                sm_count,
                capability: (major, minor),
                blas: Default::default(),
                lanes: Default::default(),
                sync_launches,
            })),
        })
    }

    /// The CPU emulator with the checks of [`EmulatorChecks::from_env`] (all by default).
    ///
    /// Errors: [`Error::EmulatorNotBuilt`] when this build has no emulator; an emulated kernel
    /// missing for a registry entry (a build defect) is reported as [`Error::Emulator`].
    pub fn emulator() -> Result<Self> {
        Self::emulator_with(EmulatorChecks::from_env()?)
    }

    /// The CPU emulator with the given checks.
    pub fn emulator_with(checks: EmulatorChecks) -> Result<Self> {
        if !emulator::built() {
            return Err(Error::EmulatorNotBuilt);
        }
        let emulated = emulator::kernel_names();
        if let Some(missing) = registry::kernels().iter().find(|k| !emulated.contains(&k.name)) {
            return Err(Error::Emulator(format!("kernel `{}` has no emulated twin", missing.name)));
        }
        Ok(Gpu { inner: Inner::Emulator(checks) })
    }

    /// Opens `backend` (CUDA device `ordinal`, the emulator, or the first that works for
    /// [`Backend::Auto`]); `PREF_KERNELS_BACKEND`, when set, overrides `backend`.
    pub fn open(backend: Backend, ordinal: usize) -> Result<Self> {
        match Backend::from_env()?.unwrap_or(backend) {
            Backend::Cuda => Self::new(ordinal),
            Backend::Emulator => Self::emulator(),
            Backend::Auto => Self::new(ordinal).or_else(|_| Self::emulator()),
        }
    }

    /// The backend of this handle.
    pub fn backend(&self) -> BackendKind {
        match self.inner {
            Inner::Cuda(_) => BackendKind::Cuda,
            Inner::Emulator(_) => BackendKind::Emulator,
        }
    }

    /// The CUDA context (primary context of the device); `None` on the emulator.
    pub fn cuda_context(&self) -> Option<&Arc<CudaContext>> {
        match &self.inner {
            Inner::Cuda(c) => Some(&c.ctx),
            Inner::Emulator(_) => None,
        }
    }

    /// The backend's default stream (CUDA: the context's default stream).
    pub fn default_stream(&self) -> Stream {
        match &self.inner {
            Inner::Cuda(c) => Stream::from_cuda(c.ctx.default_stream()),
            Inner::Emulator(_) => Stream::emulator(),
        }
    }

    /// A new stream (CUDA: a new non-blocking stream; the emulator has one).
    pub fn new_stream(&self) -> Result<Stream> {
        match &self.inner {
            Inner::Cuda(c) => Ok(Stream::from_cuda(c.ctx.new_stream()?)),
            Inner::Emulator(_) => Ok(Stream::emulator()),
        }
    }

    /// Number of streaming multiprocessors ([`EMULATOR_SM_COUNT`] on the emulator).
    pub fn sm_count(&self) -> u32 {
        match &self.inner {
            Inner::Cuda(c) => c.sm_count,
            Inner::Emulator(_) => EMULATOR_SM_COUNT,
        }
    }

    /// Whether the kernels built for sm_90a (wgmma) run here: a compute capability 9.0 device
    /// (H100, H200, GH200), whose SASS the fatbin holds as sm_90a, or the emulator, which models
    /// wgmma. Elsewhere those kernels are built empty and are never launched.
    pub fn has_wgmma(&self) -> bool {
        match &self.inner {
            Inner::Cuda(c) => c.capability == (9, 0) && kernels::ARCHS.split(';').any(|a| a.trim() == "90a"),
            Inner::Emulator(_) => true,
        }
    }

    /// Wraps a caller-owned stream (e.g. `torch.cuda.current_stream().cuda_stream`; 0 is the
    /// legacy default stream) so the safe API can run on it. On the emulator the value is ignored.
    ///
    /// # Safety
    /// On CUDA, `stream` must be 0 or a valid CUstream of this device's primary context, and must
    /// outlive the returned handle and all work submitted through it. Ordering against the owner's
    /// other work is the caller's responsibility (work runs in stream order).
    pub unsafe fn borrow_stream(&self, stream: u64) -> Stream {
        match &self.inner {
            // SAFETY: forwarded to the caller (see above).
            Inner::Cuda(c) => {
                Stream::from_cuda(unsafe { c.ctx.wrap_borrowed_stream(stream as sys::CUstream) })
            }
            Inner::Emulator(_) => Stream::emulator(),
        }
    }

    /// Grid for `n_items` independent work items (rows, ...) with `per_block` items per block; the
    /// kernels grid-stride, so capping the grid changes scheduling only, never results.
    pub(crate) fn grid_for(&self, n_items: u64, per_block: u64) -> (u32, u32) {
        let blocks = n_items.div_ceil(per_block).clamp(1, self.sm_count() as u64 * 256);
        (blocks as u32, 1)
    }

    /// Enqueues the row-major GEMM `g` on `stream`: cuBLAS on CUDA (the stream's handle, created
    /// on its first GEMM; [`Error::CublasMissing`] when libcublas cannot be loaded), the host GEMM on the
    /// emulator (synchronous).
    ///
    /// # Safety
    /// The pointers of `g` are memory of this backend valid for the spans its shape implies,
    /// alive until the work completes in stream order; `stream` is 0 or a live CUstream of this
    /// context.
    pub(crate) unsafe fn gemm(&self, stream: u64, g: &gemm::Gemm) -> Result<()> {
        gemm::validate(g)?;
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        match &self.inner {
            Inner::Cuda(c) => {
                c.ctx.bind_to_thread()?;
                // SAFETY: `stream` is 0 or a live CUstream of this context (the caller's contract).
                let key = unsafe { stream_key(stream) };
                let handle = c
                    .blas
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    // SAFETY: as above.
                    .for_stream(key, || gemm::BlasHandle::new(0), || unsafe { stream_capturing(stream) })?;
                // SAFETY: the context is bound above; the rest is forwarded to the caller.
                unsafe { handle.gemm(stream, g) }
            }
            Inner::Emulator(_) => gemm::host_gemm(g),
        }
    }

    /// The side lane of a chunk loop on `stream` ([`pipeline`]): `stream`'s own lane on CUDA when
    /// `wanted` (made on its first use, or the spare inside a capture), with this context bound;
    /// `None` on the emulator (one stream), when not wanted, or when no lane can be made (the
    /// loop then runs on `stream` alone: slower, never wrong). Lock it with
    /// [`pipeline::Pipeline::new`] for the loop's duration.
    ///
    /// # Safety
    /// `stream` is 0 or a live CUstream of this context.
    pub(crate) unsafe fn side_lane(
        &self,
        stream: u64,
        wanted: bool,
    ) -> Result<Option<Arc<std::sync::Mutex<pipeline::SideLane>>>> {
        match &self.inner {
            Inner::Cuda(c) if wanted => {
                c.ctx.bind_to_thread()?;
                let make = || pipeline::SideLane::new().map(std::sync::Mutex::new);
                let mut lanes = c.lanes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                // SAFETY: `stream` is 0 or a live CUstream of this context (the caller's contract).
                let key = unsafe { stream_key(stream) };
                // SAFETY: as above.
                Ok(lanes.for_stream(key, make, || unsafe { stream_capturing(stream) }).ok())
            }
            _ => Ok(None),
        }
    }

    /// Whether GEMMs can run here: always on the emulator; on CUDA when libcublas loads (from the
    /// library path, or from a Python environment's pip wheels: [`libs`]).
    pub fn gemm_available(&self) -> Result<()> {
        match &self.inner {
            Inner::Cuda(_) => {
                let _ = libs::preload_cublas();
                // SAFETY: only tries to dlopen libcublas.
                if unsafe { cudarc::cublas::sys::is_culib_present() } {
                    Ok(())
                } else {
                    Err(Error::CublasMissing)
                }
            }
            Inner::Emulator(_) => Ok(()),
        }
    }

    /// Launches kernel `name` (block size and dynamic shared memory from the [`registry`]) over
    /// `grid` on `stream`: asynchronously on CUDA, to completion on the emulator (which reports a
    /// failed check as [`Error::KernelCheck`]).
    ///
    /// # Safety
    /// `P` is the kernel's `#[repr(C)]` parameter struct; every pointer in it satisfies the
    /// documented contract of the public function launching it (valid memory of this backend,
    /// alive until the work completes); on CUDA `stream` is 0 or a live CUstream of this context.
    pub(crate) unsafe fn launch<P: cudarc::driver::DeviceRepr + Copy>(
        &self,
        stream: u64,
        name: &str,
        grid: (u32, u32),
        params: &P,
    ) -> Result<()> {
        let spec = registry::spec(name).ok_or_else(|| {
            Error::DeviceCheck(format!("kernel entry point `{name}` is not in the registry"))
        })?;
        match &self.inner {
            Inner::Cuda(c) => {
                let f = c.functions.get(name).ok_or_else(|| {
                    Error::DeviceCheck(format!("kernel entry point `{name}` missing from the loaded modules"))
                })?;
                let cfg = LaunchConfig {
                    grid_dim: (grid.0, grid.1, 1),
                    block_dim: (spec.block_threads, 1, 1),
                    shared_mem_bytes: spec.dynamic_smem,
                };
                // SAFETY: forwarded to the caller (stream).
                let s = unsafe { c.ctx.wrap_borrowed_stream(stream as sys::CUstream) };
                let named = |source| Error::Launch { kernel: name.to_string(), source };
                // SAFETY: params is the kernel's parameter struct by value (see # Safety).
                unsafe { s.launch_builder(f).arg(params).launch(cfg) }.map_err(named)?;
                if c.sync_launches {
                    s.synchronize().map_err(named)?;
                }
                Ok(())
            }
            Inner::Emulator(checks) => {
                let (grid, block) = ([grid.0, grid.1, 1], [spec.block_threads, 1, 1]);
                // SAFETY: forwarded to the caller (P is the kernel's parameter struct, its pointers
                // valid).
                unsafe { emulator::launch_kernel(name, grid, block, spec.dynamic_smem, params, *checks) }
            }
        }
    }
}
