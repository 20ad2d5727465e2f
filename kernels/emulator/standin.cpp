// A stand-in for the CUDA driver (libcuda.so.1) and cuBLAS (libcublas.so.13) that runs the
// emulator: a test-only library, built by build.rs from the same kernel objects as the emulator
// backend and loaded by cudarc's dynamic loading in place of the real ones when LD_LIBRARY_PATH
// points to it (target/<profile>/pref-kernels-standin). It lets the crate's CUDA host path (cudarc
// contexts, module loading, cuLaunchKernel's parameter array, dynamic shared-memory attributes,
// streams, events, copies, the cuBLAS GEMMs) run in CI, which has no GPU, with the emulator's
// memory/race/init/sync checks on every launch.
//
// It follows the driver's documented semantics where the crate could get them wrong on first
// contact, and refuses what a GPU refuses: no call before cuInit; a context must be current on the
// calling thread for module, memory, stream, launch and cuBLAS-handle calls (each thread has its own
// current context, as with the real driver); dynamic shared memory above 48 KiB needs
// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES first; a block above the kernel's
// __launch_bounds__ is refused; an error found by a checker leaves the launch successful and the
// context sticky (CUDA_ERROR_ILLEGAL_ADDRESS from the next call on), the report printed to stderr
// with the kernel's name;
// cublasGemmEx is column-major with its operation flags, leading-dimension rules, and only the
// data/compute type combinations a GPU accepts. Not modeled: GPU timing (events time the emulator), real
// concurrency between streams (every operation runs when it is enqueued, in call order), more than
// one device, unified/managed memory, graphs; events measure the emulator's wall time.
#include <cuda.h>
#include <library_types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

extern "C" {
const char* prefk_emu_last_error();
void* prefk_emu_alloc(size_t bytes);
int prefk_emu_free(void* p);
int prefk_emu_copy(void* dst, const void* src, size_t n, int kind);
int prefk_emu_memset(void* dst, int byte, size_t n);
int prefk_emu_launch(const char* name, const uint32_t grid[3], const uint32_t block[3], size_t dynamic_smem,
                     const void* params, size_t params_size, uint32_t checks);
int prefk_emu_kernel_info(const char* name, size_t* params_size, int* max_threads);
}

#define EXPORT extern "C" __attribute__((visibility("default")))

namespace {

constexpr int SM_COUNT = 132;
constexpr int DEFAULT_DYNAMIC_SMEM = 48 * 1024;
constexpr int MAX_DYNAMIC_SMEM = 227 * 1024;
constexpr uint32_t ALL_CHECKS = 15;  // memcheck | racecheck | initcheck | synccheck

struct Context {
    int refcount = 0;
};
struct Module {};
struct Function {
    std::string name;
    size_t params_size = 0;
    int max_threads = 0;
    int max_dynamic_smem = DEFAULT_DYNAMIC_SMEM;
};
struct Stream {
    unsigned long long id;
};
struct Event {
    std::chrono::steady_clock::time_point recorded = std::chrono::steady_clock::now();
    // Recorded inside a capture: the capture's origin stream, the stream recorded on, and how
    // many operations that stream had enqueued then (what a wait on the event joins).
    const void* capture_origin = nullptr;
    bool was_recorded = false;
    const void* stream = nullptr;
    uint64_t ops = 0;
};

std::recursive_mutex g_lock;
bool g_initialized = false;
Context g_primary;
CUresult g_sticky = CUDA_SUCCESS;
// Test-only counters of what makes the host wait or allocates: [0] host waits (stream, context and
// event synchronizations, device-to-host copies), [1] host-to-device copies (a pageable upload
// waits too), [2] allocations (device and pinned host), [3] cuBLAS handles created, [4] waits of
// one stream on an event recorded on another (cross-stream hand-offs). A stream-ordered op must
// not move the first three.
std::atomic<uint64_t> g_counters[5];
void count(int which) { g_counters[which].fetch_add(1, std::memory_order_relaxed); }
std::set<const void*> g_modules, g_streams, g_events;
// Streams in capture (cuStreamBeginCapture): while any is, the calls a capture in the driver's
// global mode refuses (synchronous allocation, copies and synchronization; cuBLAS handle creation,
// stricter than the real library may be) fail and invalidate it. Launches still run at once.
std::set<const void*> g_capturing;
bool g_capture_invalidated = false;
// Capture across streams, as the driver does it: a stream that waits on an event recorded in a
// capture joins that capture (forked: stream -> its origin); before the origin's capture ends,
// each forked stream must be joined back (the origin, or a stream of the capture, waits on an
// event recorded on it after its last captured operation), else the capture is unjoined.
// Operations are counted per stream (launches, async copies and memsets, GEMMs, records).
std::map<const void*, uint64_t> g_stream_ops;
std::map<const void*, const void*> g_forked;
std::map<const void*, uint64_t> g_fork_base, g_joined_ops;
void stream_op(CUstream s) {
    std::lock_guard<std::recursive_mutex> l(g_lock);
    ++g_stream_ops[s];
}
// The capture `s` belongs to (its origin), or nullptr.
const void* capture_of(CUstream s) {
    if (g_capturing.count(s)) return s;
    auto f = g_forked.find(s);
    return f == g_forked.end() ? nullptr : f->second;
}
CUresult capture_unsafe() {
    if (g_capturing.empty()) return CUDA_SUCCESS;
    g_capture_invalidated = true;
    return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
}
std::map<std::string, std::unique_ptr<Function>> g_functions;
thread_local std::vector<CUcontext> t_stack;  // back() is the thread's current context

CUcontext primary() { return reinterpret_cast<CUcontext>(&g_primary); }
CUcontext current() { return t_stack.empty() ? nullptr : t_stack.back(); }

// The checks every call makes: the driver initialized and (when `ctx`) a context current here.
CUresult ready(bool ctx) {
    if (!g_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (ctx && current() == nullptr) return CUDA_ERROR_INVALID_CONTEXT;
    return CUDA_SUCCESS;
}

bool valid_stream(CUstream s) {
    // 0, CU_STREAM_LEGACY and CU_STREAM_PER_THREAD are the default streams.
    const uintptr_t v = reinterpret_cast<uintptr_t>(s);
    return v <= 2 || g_streams.count(s) != 0;
}

CUresult copy(void* dst, const void* src, size_t n, int kind) {
    if (CUresult r = ready(true)) return r;
    if (g_sticky) return g_sticky;
    if (prefk_emu_copy(dst, src, n, kind) != 0) {
        fprintf(stderr, "[pref-kernels stand-in driver] copy refused: %s\n", prefk_emu_last_error());
        return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

}  // namespace

// ---- initialization, devices, contexts ----------------------------------------------------------------
EXPORT CUresult cuInit(unsigned int flags) {
    std::lock_guard<std::recursive_mutex> l(g_lock);
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
    g_initialized = true;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDriverGetVersion(int* v) {
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    *v = 13000;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceGetCount(int* n) {
    if (CUresult r = ready(false)) return r;
    *n = 1;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (CUresult r = ready(false)) return r;
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *d = 0;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceGetName(char* name, int len, CUdevice d) {
    if (CUresult r = ready(false)) return r;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    snprintf(name, (size_t)len, "pref-kernels emulator (stand-in driver)");
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceTotalMem(size_t* bytes, CUdevice d) {
    if (CUresult r = ready(false)) return r;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    *bytes = (size_t)80 << 30;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceGetAttribute(int* v, CUdevice_attribute a, CUdevice d) {
    if (CUresult r = ready(false)) return r;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    switch (a) {  // an H100's
        case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *v = SM_COUNT; break;
        // PREFK_STANDIN_CC (e.g. 75) pretends to be another part, for the tests of old-GPU refusal.
        case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR:
            *v = getenv("PREFK_STANDIN_CC") ? atoi(getenv("PREFK_STANDIN_CC")) / 10 : 9;
            break;
        case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR:
            *v = getenv("PREFK_STANDIN_CC") ? atoi(getenv("PREFK_STANDIN_CC")) % 10 : 0;
            break;
        case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *v = 1024; break;
        case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *v = 32; break;
        case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: *v = DEFAULT_DYNAMIC_SMEM; break;
        case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: *v = MAX_DYNAMIC_SMEM; break;
        case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: *v = 1; break;
        default: *v = 0;  // memory pools, managed memory, ...: not modeled
    }
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice d) {
    std::lock_guard<std::recursive_mutex> l(g_lock);
    if (CUresult r = ready(false)) return r;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    ++g_primary.refcount;
    *c = primary();
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDevicePrimaryCtxRelease(CUdevice d) {
    std::lock_guard<std::recursive_mutex> l(g_lock);
    if (CUresult r = ready(false)) return r;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    if (g_primary.refcount > 0) --g_primary.refcount;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDevicePrimaryCtxGetState(CUdevice d, unsigned int* flags, int* active) {
    if (CUresult r = ready(false)) return r;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    *flags = 0;
    *active = g_primary.refcount > 0;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDevicePrimaryCtxSetFlags(CUdevice d, unsigned int) {
    if (CUresult r = ready(false)) return r;
    return d == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}
EXPORT CUresult cuCtxSetCurrent(CUcontext c) {
    if (CUresult r = ready(false)) return r;
    if (c != nullptr && c != primary()) return CUDA_ERROR_INVALID_CONTEXT;
    if (t_stack.empty()) t_stack.push_back(c);
    else t_stack.back() = c;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxGetCurrent(CUcontext* c) {
    if (CUresult r = ready(false)) return r;
    *c = current();
    return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxPushCurrent(CUcontext c) {
    if (CUresult r = ready(false)) return r;
    if (c != primary()) return CUDA_ERROR_INVALID_CONTEXT;
    t_stack.push_back(c);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxPopCurrent(CUcontext* c) {
    if (CUresult r = ready(true)) return r;
    if (c) *c = t_stack.back();
    t_stack.pop_back();
    return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxGetDevice(CUdevice* d) {
    if (CUresult r = ready(true)) return r;
    *d = 0;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxSynchronize() {
    count(0);
    if (CUresult r = capture_unsafe()) return r;
    if (CUresult r = ready(true)) return r;
    return g_sticky;
}

// ---- errors -----------------------------------------------------------------------------------------
EXPORT CUresult cuGetErrorName(CUresult e, const char** s) {
    switch (e) {
        case CUDA_SUCCESS: *s = "CUDA_SUCCESS"; break;
        case CUDA_ERROR_INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
        case CUDA_ERROR_OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case CUDA_ERROR_NOT_INITIALIZED: *s = "CUDA_ERROR_NOT_INITIALIZED"; break;
        case CUDA_ERROR_INVALID_DEVICE: *s = "CUDA_ERROR_INVALID_DEVICE"; break;
        case CUDA_ERROR_INVALID_IMAGE: *s = "CUDA_ERROR_INVALID_IMAGE"; break;
        case CUDA_ERROR_INVALID_CONTEXT: *s = "CUDA_ERROR_INVALID_CONTEXT"; break;
        case CUDA_ERROR_INVALID_HANDLE: *s = "CUDA_ERROR_INVALID_HANDLE"; break;
        case CUDA_ERROR_NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
        case CUDA_ERROR_ILLEGAL_ADDRESS: *s = "CUDA_ERROR_ILLEGAL_ADDRESS"; break;
        case CUDA_ERROR_NOT_SUPPORTED: *s = "CUDA_ERROR_NOT_SUPPORTED"; break;
        default: *s = "CUDA_ERROR_UNKNOWN"; return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}
EXPORT CUresult cuGetErrorString(CUresult e, const char** s) { return cuGetErrorName(e, s); }

// ---- modules and functions ----------------------------------------------------------------------------
EXPORT CUresult cuModuleLoadData(CUmodule* m, const void* image) {
    std::lock_guard<std::recursive_mutex> l(g_lock);
    if (CUresult r = ready(true)) return r;
    if (image == nullptr) return CUDA_ERROR_INVALID_VALUE;
    // A fatbin (nvcc -fatbin), a cubin (ELF) or PTX text: what cuModuleLoadData accepts.
    uint32_t magic;
    memcpy(&magic, image, 4);
    const char* c = static_cast<const char*>(image);
    const bool fatbin = magic == 0xBA55ED50u, elf = memcmp(c, "\x7f" "ELF", 4) == 0;
    const bool ptx = c[0] == '/' || c[0] == '.' || c[0] == '\n';
    if (!fatbin && !elf && !ptx) return CUDA_ERROR_INVALID_IMAGE;
    Module* mod = new Module;
    g_modules.insert(mod);
    *m = reinterpret_cast<CUmodule>(mod);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuModuleUnload(CUmodule m) {
    std::lock_guard<std::recursive_mutex> l(g_lock);
    if (CUresult r = ready(true)) return r;
    if (!g_modules.erase(m)) return CUDA_ERROR_INVALID_HANDLE;
    delete reinterpret_cast<Module*>(m);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuModuleGetFunction(CUfunction* f, CUmodule m, const char* name) {
    std::lock_guard<std::recursive_mutex> l(g_lock);
    if (CUresult r = ready(true)) return r;
    if (!g_modules.count(m)) return CUDA_ERROR_INVALID_HANDLE;
    auto& slot = g_functions[name];
    if (!slot) {
        auto fn = std::make_unique<Function>();
        fn->name = name;
        if (prefk_emu_kernel_info(name, &fn->params_size, &fn->max_threads) != 0) {
            g_functions.erase(name);
            return CUDA_ERROR_NOT_FOUND;
        }
        slot = std::move(fn);
    }
    *f = reinterpret_cast<CUfunction>(slot.get());
    return CUDA_SUCCESS;
}
EXPORT CUresult cuFuncSetAttribute(CUfunction f, CUfunction_attribute a, int v) {
    if (CUresult r = ready(true)) return r;
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    if (a == CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) {
        if (v < 0 || v > MAX_DYNAMIC_SMEM) return CUDA_ERROR_INVALID_VALUE;
        reinterpret_cast<Function*>(f)->max_dynamic_smem = v;
    }
    return CUDA_SUCCESS;
}
EXPORT CUresult cuFuncGetAttribute(int* v, CUfunction_attribute a, CUfunction f) {
    if (CUresult r = ready(true)) return r;
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    const Function* fn = reinterpret_cast<const Function*>(f);
    switch (a) {
        case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *v = fn->max_threads; break;
        case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: *v = fn->max_dynamic_smem; break;
        default: *v = 0;
    }
    return CUDA_SUCCESS;
}

// ---- launches ---------------------------------------------------------------------------------------
EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                               unsigned int by, unsigned int bz, unsigned int smem, CUstream s, void** params,
                               void** extra) {
    std::lock_guard<std::recursive_mutex> l(g_lock);
    if (CUresult r = ready(true)) return r;
    if (g_sticky) return g_sticky;
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    stream_op(s);
    const Function* fn = reinterpret_cast<const Function*>(f);
    if ((int)smem > fn->max_dynamic_smem) {
        fprintf(stderr, "[pref-kernels stand-in driver] `%s`: %u B of dynamic shared memory without "
                        "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES >= it (set: %d)\n",
                fn->name.c_str(), smem, fn->max_dynamic_smem);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if ((uint64_t)bx * by * bz > (uint64_t)fn->max_threads) {
        fprintf(stderr, "[pref-kernels stand-in driver] `%s`: block of %llu threads above its launch bounds %d\n",
                fn->name.c_str(), (unsigned long long)bx * by * bz, fn->max_threads);
        return CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;
    }
    // The kernels take one parameter, their params struct by value: the parameter array holds one
    // pointer to it (or the packed buffer comes in `extra`).
    const void* arg = nullptr;
    size_t arg_size = fn->params_size;
    if (params) {
        arg = params[0];
    } else if (extra) {
        for (void** e = extra; *e != CU_LAUNCH_PARAM_END; e += 2) {
            if (*e == CU_LAUNCH_PARAM_BUFFER_POINTER) arg = e[1];
            else if (*e == CU_LAUNCH_PARAM_BUFFER_SIZE) arg_size = *static_cast<size_t*>(e[1]);
        }
    }
    if (!arg || arg_size != fn->params_size) return CUDA_ERROR_INVALID_VALUE;
    const uint32_t grid[3] = {gx, gy, gz}, block[3] = {bx, by, bz};
    const int rc = prefk_emu_launch(fn->name.c_str(), grid, block, smem, arg, arg_size, ALL_CHECKS);
    if (rc == 2) {
        fprintf(stderr, "[pref-kernels stand-in driver] %s\n", prefk_emu_last_error());
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (rc != 0) {
        // As on a GPU: the launch itself succeeds (it is asynchronous there), the fault is sticky
        // and surfaces at the next call that waits on or uses the context.
        fprintf(stderr, "[pref-kernels stand-in driver] kernel `%s` failed the emulator's checks:\n%s\n",
                fn->name.c_str(), prefk_emu_last_error());
        g_sticky = CUDA_ERROR_ILLEGAL_ADDRESS;
    }
    return CUDA_SUCCESS;
}

// Test-only: the counters above (five u64), so a test can assert that an op neither waits nor
// allocates, and count cuBLAS handles.
EXPORT void prefk_standin_counters(uint64_t* out) {
    for (int i = 0; i < 5; ++i) out[i] = g_counters[i].load();
}

// Test-only: clears the sticky error (a real context would have to be destroyed), so one test of
// a faulting kernel does not end the run.
EXPORT void prefk_standin_clear_sticky_error() { g_sticky = CUDA_SUCCESS; }

// ---- memory -----------------------------------------------------------------------------------------
namespace {
CUresult alloc(CUdeviceptr* p, size_t n) {
    count(2);
    if (CUresult r = ready(true)) return r;
    if (n == 0) return CUDA_ERROR_INVALID_VALUE;
    void* m = prefk_emu_alloc(n);
    if (!m) return CUDA_ERROR_OUT_OF_MEMORY;
    *p = reinterpret_cast<CUdeviceptr>(m);
    return CUDA_SUCCESS;
}
}  // namespace
EXPORT CUresult cuMemAlloc(CUdeviceptr* p, size_t n) {
    if (CUresult r = capture_unsafe()) return r;
    return alloc(p, n);
}
// Stream-ordered: legal while capturing.
EXPORT CUresult cuMemAllocAsync(CUdeviceptr* p, size_t n, CUstream s) {
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    return alloc(p, n);
}
EXPORT CUresult cuMemFree(CUdeviceptr p) {
    if (CUresult r = ready(true)) return r;
    if (p == 0) return CUDA_SUCCESS;
    return prefk_emu_free(reinterpret_cast<void*>(p)) == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) {
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    return cuMemFree(p);
}
EXPORT CUresult cuMemGetInfo(size_t* free_bytes, size_t* total) {
    if (CUresult r = ready(true)) return r;
    *free_bytes = (size_t)64 << 30;
    *total = (size_t)80 << 30;
    return CUDA_SUCCESS;
}
namespace {
CUresult htod(CUdeviceptr d, const void* h, size_t n) {
    count(1);
    return copy(reinterpret_cast<void*>(d), h, n, 0);
}
CUresult dtoh(void* h, CUdeviceptr d, size_t n) {
    count(0);
    return copy(h, reinterpret_cast<const void*>(d), n, 1);
}
CUresult memset8(CUdeviceptr d, unsigned char v, size_t n) {
    if (CUresult r = ready(true)) return r;
    if (g_sticky) return g_sticky;
    if (n == 0) return CUDA_SUCCESS;
    return prefk_emu_memset(reinterpret_cast<void*>(d), v, n) == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
}  // namespace
// The synchronous forms wait for the device: refused while capturing. The async forms are graph
// nodes there (the stand-in runs them at once).
EXPORT CUresult cuMemcpyHtoD(CUdeviceptr d, const void* h, size_t n) {
    if (CUresult r = capture_unsafe()) return r;
    return htod(d, h, n);
}
EXPORT CUresult cuMemcpyDtoH(void* h, CUdeviceptr d, size_t n) {
    if (CUresult r = capture_unsafe()) return r;
    return dtoh(h, d, n);
}
EXPORT CUresult cuMemcpyDtoD(CUdeviceptr d, CUdeviceptr s, size_t n) {
    if (CUresult r = capture_unsafe()) return r;
    return copy(reinterpret_cast<void*>(d), reinterpret_cast<const void*>(s), n, 2);
}
EXPORT CUresult cuMemcpyHtoDAsync(CUdeviceptr d, const void* h, size_t n, CUstream s) {
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    stream_op(s);
    return htod(d, h, n);
}
EXPORT CUresult cuMemcpyDtoHAsync(void* h, CUdeviceptr d, size_t n, CUstream s) {
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    stream_op(s);
    return dtoh(h, d, n);
}
EXPORT CUresult cuMemcpyDtoDAsync(CUdeviceptr d, CUdeviceptr src, size_t n, CUstream s) {
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    stream_op(s);
    return copy(reinterpret_cast<void*>(d), reinterpret_cast<const void*>(src), n, 2);
}
EXPORT CUresult cuMemsetD8(CUdeviceptr d, unsigned char v, size_t n) {
    if (CUresult r = capture_unsafe()) return r;
    return memset8(d, v, n);
}
EXPORT CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, CUstream s) {
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    stream_op(s);
    return memset8(d, v, n);
}
EXPORT CUresult cuMemAllocHost(void** p, size_t n) {
    count(2);
    if (CUresult r = capture_unsafe()) return r;
    if (CUresult r = ready(true)) return r;
    *p = malloc(n ? n : 1);
    return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
EXPORT CUresult cuMemHostAlloc(void** p, size_t n, unsigned int) { return cuMemAllocHost(p, n); }
EXPORT CUresult cuMemFreeHost(void* p) {
    free(p);
    return CUDA_SUCCESS;
}

// ---- streams and events -----------------------------------------------------------------------------
EXPORT CUresult cuStreamCreate(CUstream* s, unsigned int) {
    std::lock_guard<std::recursive_mutex> l(g_lock);
    if (CUresult r = ready(true)) return r;
    static unsigned long long next_id = 16;  // ids below are the default streams
    Stream* st = new Stream{next_id++};
    g_streams.insert(st);
    *s = reinterpret_cast<CUstream>(st);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamCreateWithPriority(CUstream* s, unsigned int flags, int priority) {
    // Priorities as an H100 reports them: 0 (least) to -5 (greatest).
    if (priority > 0 || priority < -5) return CUDA_ERROR_INVALID_VALUE;
    return cuStreamCreate(s, flags);
}
EXPORT CUresult cuCtxGetStreamPriorityRange(int* least, int* greatest) {
    if (CUresult r = ready(true)) return r;
    if (least) *least = 0;
    if (greatest) *greatest = -5;
    return CUDA_SUCCESS;
}
// The driver's stream ids: the legacy stream one id under either handle (0, CU_STREAM_LEGACY), the
// per-thread default stream one id per thread under one handle, a created stream its own.
EXPORT CUresult cuStreamGetId(CUstream s, unsigned long long* id) {
    std::lock_guard<std::recursive_mutex> l(g_lock);
    if (CUresult r = ready(true)) return r;
    if (!valid_stream(s) || !id) return CUDA_ERROR_INVALID_HANDLE;
    static std::atomic<unsigned long long> next_thread_id{2};
    thread_local unsigned long long per_thread_id = 0;
    const uintptr_t v = reinterpret_cast<uintptr_t>(s);
    if (v <= 1) {
        *id = 1;
    } else if (v == 2) {
        if (!per_thread_id) per_thread_id = 1ull << 40 | next_thread_id++;
        *id = per_thread_id;
    } else {
        *id = reinterpret_cast<Stream*>(s)->id;
    }
    return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamDestroy(CUstream s) {
    std::lock_guard<std::recursive_mutex> l(g_lock);
    if (CUresult r = ready(true)) return r;
    if (!g_streams.erase(s)) return CUDA_ERROR_INVALID_HANDLE;
    delete reinterpret_cast<Stream*>(s);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamSynchronize(CUstream s) {
    count(0);
    if (CUresult r = capture_unsafe()) return r;
    if (CUresult r = ready(true)) return r;
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    return g_sticky;
}
EXPORT CUresult cuStreamQuery(CUstream s) { return cuStreamSynchronize(s); }
EXPORT CUresult cuStreamBeginCapture_v2(CUstream s, CUstreamCaptureMode) {
    if (CUresult r = ready(true)) return r;
    // The legacy stream cannot be captured; the per-thread default stream and created ones can.
    if (reinterpret_cast<uintptr_t>(s) <= 1) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    if (capture_of(s)) return CUDA_ERROR_ILLEGAL_STATE;  // already in a capture (its own or forked)
    g_capturing.insert(s);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamEndCapture(CUstream s, CUgraph* graph) {
    if (CUresult r = ready(true)) return r;
    if (!g_capturing.erase(s)) return CUDA_ERROR_ILLEGAL_STATE;
    static int g_graph;  // a stand-in graph handle: the work already ran
    // Events recorded in the capture were graph nodes: a later wait on them joins nothing.
    for (const void* e : g_events) {
        Event* ev = reinterpret_cast<Event*>(const_cast<void*>(e));
        if (ev->capture_origin == s) ev->capture_origin = nullptr, ev->was_recorded = false;
    }
    bool unjoined = false;
    for (auto f = g_forked.begin(); f != g_forked.end();) {
        if (f->second != s) { ++f; continue; }
        const uint64_t joined = std::max(g_fork_base[f->first], g_joined_ops[f->first]);
        if (g_stream_ops[f->first] > joined) {
            fprintf(stderr, "[pref-kernels stand-in driver] capture ended with a forked stream not joined back "
                            "(%llu of its operations after the last join)\n",
                    (unsigned long long)(g_stream_ops[f->first] - joined));
            unjoined = true;
        }
        g_fork_base.erase(f->first);
        g_joined_ops.erase(f->first);
        f = g_forked.erase(f);
    }
    if (unjoined) {
        g_capture_invalidated = false;
        *graph = nullptr;
        return CUDA_ERROR_STREAM_CAPTURE_UNJOINED;
    }
    const bool invalid = g_capture_invalidated;
    g_capture_invalidated = false;
    *graph = invalid ? nullptr : reinterpret_cast<CUgraph>(&g_graph);
    return invalid ? CUDA_ERROR_STREAM_CAPTURE_INVALIDATED : CUDA_SUCCESS;
}
EXPORT CUresult cuStreamIsCapturing(CUstream s, CUstreamCaptureStatus* status) {
    if (CUresult r = ready(true)) return r;
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    *status = capture_of(s) ? CU_STREAM_CAPTURE_STATUS_ACTIVE : CU_STREAM_CAPTURE_STATUS_NONE;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned int flags) {
    std::lock_guard<std::recursive_mutex> l(g_lock);
    if (CUresult r = ready(true)) return r;
    if (!valid_stream(s) || !g_events.count(e)) return CUDA_ERROR_INVALID_HANDLE;
    const Event* ev = reinterpret_cast<const Event*>(e);
    if (ev->was_recorded && ev->stream != s) count(4);
    if (!ev->capture_origin && capture_of(s) && ev->was_recorded && !(flags & CU_EVENT_WAIT_EXTERNAL)) {
        // The driver refuses this unless CU_EVENT_WAIT_EXTERNAL is set: the dependency would
        // not be in the graph.
        g_capture_invalidated = true;
        return CUDA_ERROR_STREAM_CAPTURE_ISOLATION;
    }
    if (ev->capture_origin) {
        const void* mine = capture_of(s);
        if (!mine) {
            // s joins the capture: its operations from here on are captured.
            if (reinterpret_cast<uintptr_t>(s) <= 2) return CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
            g_forked[s] = ev->capture_origin;
            g_fork_base[s] = g_stream_ops[s];
        } else if (mine != ev->capture_origin) {
            return CUDA_ERROR_STREAM_CAPTURE_ISOLATION;
        }
        if (g_forked.count(ev->stream)) {
            uint64_t& j = g_joined_ops[ev->stream];
            j = std::max(j, ev->ops);
        }
    }
    return CUDA_SUCCESS;
}
EXPORT CUresult cuEventCreate(CUevent* e, unsigned int) {
    std::lock_guard<std::recursive_mutex> l(g_lock);
    if (CUresult r = ready(true)) return r;
    Event* ev = new Event;
    g_events.insert(ev);
    *e = reinterpret_cast<CUevent>(ev);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuEventDestroy(CUevent e) {
    std::lock_guard<std::recursive_mutex> l(g_lock);
    if (CUresult r = ready(false)) return r;
    if (!g_events.erase(e)) return CUDA_ERROR_INVALID_HANDLE;
    delete reinterpret_cast<Event*>(e);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuEventRecord(CUevent e, CUstream s) {
    std::lock_guard<std::recursive_mutex> l(g_lock);
    if (CUresult r = ready(true)) return r;
    if (!valid_stream(s) || !g_events.count(e)) return CUDA_ERROR_INVALID_HANDLE;
    // Work runs when it is enqueued, so the host time at the record is when the stream got there.
    Event* ev = reinterpret_cast<Event*>(e);
    ev->recorded = std::chrono::steady_clock::now();
    ev->capture_origin = capture_of(s);
    ev->was_recorded = true;
    ev->stream = s;
    ev->ops = g_stream_ops[s];
    return CUDA_SUCCESS;
}
EXPORT CUresult cuEventSynchronize(CUevent e) {
    count(0);
    if (CUresult r = capture_unsafe()) return r;
    if (CUresult r = ready(false)) return r;
    return g_events.count(e) ? g_sticky : CUDA_ERROR_INVALID_HANDLE;
}
EXPORT CUresult cuEventQuery(CUevent e) { return cuEventSynchronize(e); }
EXPORT CUresult cuEventElapsedTime(float* ms, CUevent a, CUevent b) {
    if (CUresult r = ready(false)) return r;
    if (!g_events.count(a) || !g_events.count(b)) return CUDA_ERROR_INVALID_HANDLE;
    // The emulator's wall time between the two records: not a GPU's, but never zero for real work.
    const auto dt = reinterpret_cast<Event*>(b)->recorded - reinterpret_cast<Event*>(a)->recorded;
    *ms = std::chrono::duration<float, std::milli>(dt).count();
    return CUDA_SUCCESS;
}

// ---- cuBLAS -----------------------------------------------------------------------------------------
// The handful of entry points the crate uses, with cuBLAS's types (values from cublas_api.h).
typedef int cublasStatus_t;
enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
};
enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 };
enum {
    CUBLAS_COMPUTE_32F = 68,
    CUBLAS_COMPUTE_32F_PEDANTIC = 69,
    CUBLAS_COMPUTE_32F_FAST_16F = 74,
    CUBLAS_COMPUTE_32F_FAST_16BF = 75,
    CUBLAS_COMPUTE_32F_FAST_TF32 = 77,
};

namespace {
struct BlasHandle {
    CUstream stream = nullptr;
    int math_mode = 0;
};
std::set<const void*> g_handles;

size_t type_size(cudaDataType t) {
    switch (t) {
        case CUDA_R_32F: return 4;
        case CUDA_R_16F: return 2;
        case CUDA_R_16BF: return 2;
        default: return 0;
    }
}
float load(const std::vector<unsigned char>& b, size_t i, cudaDataType t) {
    if (t == CUDA_R_32F) {
        float x;
        memcpy(&x, b.data() + 4 * i, 4);
        return x;
    }
    uint16_t r;
    memcpy(&r, b.data() + 2 * i, 2);
    if (t == CUDA_R_16F) {
        __half_raw h;
        h.x = r;
        return __half2float(__half(h));
    }
    __nv_bfloat16_raw h;
    h.x = r;
    return __bfloat162float(__nv_bfloat16(h));
}
void store(std::vector<unsigned char>& b, size_t i, cudaDataType t, float x) {
    if (t == CUDA_R_32F) {
        memcpy(b.data() + 4 * i, &x, 4);
    } else if (t == CUDA_R_16F) {
        const __half_raw h = __float2half_rn(x);
        memcpy(b.data() + 2 * i, &h.x, 2);
    } else {
        const __nv_bfloat16_raw h = __float2bfloat16_rn(x);
        memcpy(b.data() + 2 * i, &h.x, 2);
    }
}
// Reads the column-major operand of `rows` x `cols` (leading dimension ld) from device memory.
bool read_operand(const void* p, int rows, int cols, int ld, cudaDataType t, std::vector<unsigned char>& out) {
    const size_t span = ((size_t)ld * (cols - 1) + rows) * type_size(t);
    out.resize(span);
    if (prefk_emu_copy(out.data(), p, span, 1) != 0) {
        fprintf(stderr, "[pref-kernels stand-in cuBLAS] operand outside its allocation: %s\n", prefk_emu_last_error());
        return false;
    }
    return true;
}
}  // namespace

EXPORT cublasStatus_t cublasCreate_v2(void** handle) {
    std::lock_guard<std::recursive_mutex> l(g_lock);
    if (ready(true) != CUDA_SUCCESS) return CUBLAS_STATUS_NOT_INITIALIZED;  // needs a current context
    if (capture_unsafe() != CUDA_SUCCESS) return CUBLAS_STATUS_NOT_SUPPORTED;
    BlasHandle* h = new BlasHandle;
    g_handles.insert(h);
    count(3);
    *handle = h;
    return CUBLAS_STATUS_SUCCESS;
}
EXPORT cublasStatus_t cublasDestroy_v2(void* handle) {
    std::lock_guard<std::recursive_mutex> l(g_lock);
    if (!g_handles.erase(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete static_cast<BlasHandle*>(handle);
    return CUBLAS_STATUS_SUCCESS;
}
EXPORT cublasStatus_t cublasSetStream_v2(void* handle, CUstream s) {
    if (!g_handles.count(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!valid_stream(s)) return CUBLAS_STATUS_INVALID_VALUE;
    static_cast<BlasHandle*>(handle)->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}
EXPORT cublasStatus_t cublasSetMathMode(void* handle, int mode) {
    if (!g_handles.count(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    static_cast<BlasHandle*>(handle)->math_mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

// C = alpha op(A) op(B) + beta C, column-major, f32 accumulation in k order; host pointer mode.
EXPORT cublasStatus_t cublasGemmEx(void* handle, int transa, int transb, int m, int n, int k, const void* alpha,
                                   const void* A, cudaDataType Atype, int lda, const void* B, cudaDataType Btype,
                                   int ldb, const void* beta, void* C, cudaDataType Ctype, int ldc, int compute,
                                   int algo) {
    std::lock_guard<std::recursive_mutex> l(g_lock);
    (void)algo;
    if (!g_handles.count(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (ready(true) != CUDA_SUCCESS) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (g_sticky) return CUBLAS_STATUS_EXECUTION_FAILED;
    stream_op(static_cast<BlasHandle*>(handle)->stream);
    const bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
    if (transa < 0 || transa > 2 || transb < 0 || transb > 2 || m < 0 || n < 0 || k < 0 || !alpha || !beta)
        return CUBLAS_STATUS_INVALID_VALUE;
    // Leading dimensions as cuBLAS checks them: the stored rows of each operand.
    if (lda < (ta ? (k > 1 ? k : 1) : (m > 1 ? m : 1)) || ldb < (tb ? (n > 1 ? n : 1) : (k > 1 ? k : 1)) ||
        ldc < (m > 1 ? m : 1)) {
        fprintf(stderr, "[pref-kernels stand-in cuBLAS] GemmEx: leading dimension too small (m %d n %d k %d, "
                        "lda %d ldb %d ldc %d, op %d %d)\n", m, n, k, lda, ldb, ldc, transa, transb);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    // The type combinations cublasGemmEx accepts with a 32F compute type.
    const bool f32_compute = compute == CUBLAS_COMPUTE_32F || compute == CUBLAS_COMPUTE_32F_PEDANTIC ||
                             compute == CUBLAS_COMPUTE_32F_FAST_16F || compute == CUBLAS_COMPUTE_32F_FAST_16BF ||
                             compute == CUBLAS_COMPUTE_32F_FAST_TF32;
    const bool half_in = Atype == Btype && (Atype == CUDA_R_16F || Atype == CUDA_R_16BF) &&
                         (Ctype == Atype || Ctype == CUDA_R_32F);
    const bool f32_in = Atype == CUDA_R_32F && Btype == CUDA_R_32F && Ctype == CUDA_R_32F;
    if (!f32_compute || !(half_in || f32_in)) {
        fprintf(stderr, "[pref-kernels stand-in cuBLAS] GemmEx: types A %d B %d C %d with compute %d are not "
                        "supported\n", (int)Atype, (int)Btype, (int)Ctype, compute);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    const float a_scale = *static_cast<const float*>(alpha), b_scale = *static_cast<const float*>(beta);
    std::vector<unsigned char> a, b, c;
    if (k > 0 && (!read_operand(A, ta ? k : m, ta ? m : k, lda, Atype, a) ||
                  !read_operand(B, tb ? n : k, tb ? k : n, ldb, Btype, b)))
        return CUBLAS_STATUS_EXECUTION_FAILED;
    if (!read_operand(C, m, n, ldc, Ctype, c)) return CUBLAS_STATUS_EXECUTION_FAILED;
    for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) {
            float acc = 0.f;
            for (int p = 0; p < k; ++p) {
                const float x = load(a, ta ? (size_t)i * lda + p : (size_t)p * lda + i, Atype);
                const float y = load(b, tb ? (size_t)p * ldb + j : (size_t)j * ldb + p, Btype);
                acc += x * y;
            }
            const size_t ci = (size_t)j * ldc + i;
            // beta = 0: C is not read (it may hold NaN), as cuBLAS documents.
            const float prev = b_scale == 0.f ? 0.f : load(c, ci, Ctype);
            store(c, ci, Ctype, a_scale * acc + b_scale * prev);
        }
    // Write back only the m x n block (columns of ldc hold other data between them).
    const size_t es = type_size(Ctype);
    for (int j = 0; j < n; ++j) {
        const size_t off = (size_t)j * ldc * es;
        if (prefk_emu_copy(static_cast<unsigned char*>(C) + off, c.data() + off, (size_t)m * es, 0) != 0)
            return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    return CUBLAS_STATUS_SUCCESS;
}
