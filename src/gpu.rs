//! The GPU handle: driver checks, one context per device, every module loaded once, launches on the
//! caller's stream.
use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{sys, CudaContext, CudaFunction, CudaStream, LaunchConfig};

use crate::error::{Error, Result};
use crate::kernels;

/// Minimum driver version (cuDriverGetVersion): the kernels' PTX is ISA 9.0 from nvcc 13.0.
pub const MIN_DRIVER_VERSION: i32 = 13000;

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

/// A CUDA device with every pref-kernels module loaded.
///
/// Create one per device and share it (`Gpu` is `Send + Sync`). It retains the device's primary
/// context, the same one the CUDA runtime and PyTorch use, so raw pointers from those work here.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    functions: HashMap<String, CudaFunction>,
    sm_count: u32,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("ordinal", &self.ctx.ordinal())
            .field("sm_count", &self.sm_count)
            .field("functions", &self.functions.len())
            .finish()
    }
}

impl Gpu {
    /// Opens device `ordinal` and loads every module.
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
        let sm_count =
            ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1) as u32;
        let mut functions = HashMap::new();
        for (module_name, fatbin) in kernels::MODULES {
            let fatbin = fatbin.ok_or(Error::KernelsNotBuilt(kernels::BUILD_NOTE))?;
            // from_binary copies into a Vec, so include_bytes!'s alignment does not matter.
            let module = ctx.load_module(cudarc::nvrtc::Ptx::from_binary(fatbin.to_vec()))?;
            for name in kernels::entry_points(module_name) {
                let f = module.load_function(&name)?;
                if let Some(bytes) = crate::prefix_attn::launch::dynamic_smem(&name) {
                    // Opt in to more than the default 48 KB of dynamic shared memory.
                    f.set_attribute(
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        bytes as i32,
                    )?;
                }
                functions.insert(name, f);
            }
        }
        Ok(Gpu { ctx, functions, sm_count })
    }

    /// The device's (primary) context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Number of streaming multiprocessors.
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }

    /// Wraps a caller-owned stream (e.g. `torch.cuda.current_stream().cuda_stream`; 0 is the
    /// legacy default stream) so the safe API can run on it.
    ///
    /// # Safety
    /// `stream` must be 0 or a valid CUstream of this device's primary context, and must outlive
    /// the returned handle and all work submitted through it. Ordering against the owner's other
    /// work is the caller's responsibility (work runs in stream order).
    pub unsafe fn borrow_stream(&self, stream: u64) -> Arc<CudaStream> {
        // SAFETY: forwarded to the caller (see above).
        unsafe { self.ctx.wrap_borrowed_stream(stream as sys::CUstream) }
    }

    pub(crate) fn function(&self, name: &str) -> Result<&CudaFunction> {
        self.functions.get(name).ok_or_else(|| {
            Error::DeviceCheck(format!("kernel entry point `{name}` missing from the loaded modules"))
        })
    }

    /// Grid for `n_items` independent work items (rows, ...) with `per_block` items per block; the
    /// kernels grid-stride, so capping the grid changes scheduling only, never results.
    pub(crate) fn grid_for(&self, n_items: u64, per_block: u64, block_threads: u32) -> LaunchConfig {
        let blocks = n_items.div_ceil(per_block).clamp(1, self.sm_count as u64 * 256);
        LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (block_threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}
