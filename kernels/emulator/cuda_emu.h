// Host-side model of the CUDA execution model, force-included when a kernels/*.cu file is compiled
// by the system C++ compiler for the emulator backend (build.rs defines PREFK_EMULATOR).
//
// The kernel source is unchanged: CUDA keywords become plain C++, the built-in variables and the
// collective operations (barriers, warp shuffles and votes, mma.sync) call into the emulator runtime
// (runtime.cpp), which runs each CUDA thread as a fiber. Kernel translation units are compiled with
// -fsanitize=thread instrumentation but linked against runtime.cpp's own __tsan_* hooks (no TSan
// runtime): every load and store of kernel code reaches the emulator's memcheck / racecheck /
// initcheck with its address and size. Functions here that touch emulator state are out of line in
// runtime.cpp, so only the kernel's own memory accesses are checked.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

// Shared memory is declared through PREFK_SHARED_ARRAY / PREFK_DYNAMIC_SHARED (kernels/portable.cuh)
// so the emulator can give each block its own poisoned, checked arena. A raw __shared__ fails to
// compile here with a message naming the macros.
#undef __shared__
#define __shared__ PREFK_EMULATOR_use_PREFK_SHARED_ARRAY_or_PREFK_DYNAMIC_SHARED_instead_of___shared__
#define __launch_bounds__(...)
#define __restrict__ __restrict

namespace prefk_emu {

// ---- runtime entry points (runtime.cpp) ---------------------------------------------------------
uint3 thread_idx();
uint3 block_idx();
dim3 block_dim();
dim3 grid_dim();

void syncthreads();
void syncwarp(unsigned mask);
enum ShflMode : int { SHFL_IDX = 0, SHFL_UP = 1, SHFL_DOWN = 2, SHFL_XOR = 3 };
uint32_t shfl32(unsigned mask, uint32_t value, int arg, int width, int mode);
enum VoteMode : int { VOTE_BALLOT = 0, VOTE_ANY = 1, VOTE_ALL = 2 };
uint32_t vote(unsigned mask, int predicate, int mode);

void* static_shared(const void* site, size_t bytes, size_t align);
void* dynamic_shared();

unsigned atomic_or_u32(unsigned* p, unsigned v);
unsigned atomic_and_u32(unsigned* p, unsigned v);
unsigned atomic_add_u32(unsigned* p, unsigned v);
int atomic_add_i32(int* p, int v);
unsigned atomic_max_u32(unsigned* p, unsigned v);
unsigned atomic_cas_u32(unsigned* p, unsigned compare, unsigned v);

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32: warp-collective, fragments as in
// the PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point type").
void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]);
void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]);
// ldmatrix.sync.aligned.m8n8.x{num}[.trans].shared.b16: warp-collective, `row` is this lane's row
// address (lanes 8j..8j+7 give matrix j's rows); fills r[0 .. num).
void ldmatrix(uint32_t* r, int num, bool trans, const void* row);
// cp.async.cg.shared.global 16 bytes (zero-filled when !valid), commit_group, wait_group n.
void cp_async_16(void* dst, const void* src, bool valid);
void cp_async_commit();
void cp_async_wait(int pending);
// wgmma (sm_90a), modelled per warp of the warpgroup: wgmma.mma_async.sync.aligned.m64nNk16.f32 with
// A in registers (mma.m16n8k16's A fragment, rows 16 w.. of warp w) and B through a no-swizzle
// shared-memory descriptor; d holds N / 2 f32 accumulators (mma C fragments of the N / 8 column
// blocks), NaN until the wgmma.wait_group that covers it. fence.proxy.async.shared::cta is counted:
// a wgmma may read only shared bytes written before their writer's last such fence.
void wgmma_rs(float* d, int n, const uint32_t (&a)[4], uint64_t desc_b, bool accumulate, bool trans_b, bool bf16);
// The SS form: A (64 x 16, K-major) from shared memory by its own descriptor as well.
void wgmma_ss(float* d, int n, uint64_t desc_a, uint64_t desc_b, bool accumulate, bool trans_b, bool bf16);
void wgmma_fence();
void wgmma_commit();
void wgmma_wait(int pending);
void fence_proxy_async();
// The 32-bit shared window address of p (its offset in the block's shared arena).
uint32_t shared_window_addr(const void* p);

// Kernel registry: one entry per extern "C" kernel, added at static-initialization time by
// PREFK_KERNEL. `entry` receives a pointer to the launch's parameter bytes on the fiber's stack.
struct KernelReg {
    const char* name;
    void (*entry)(const void* params);
    size_t params_size;
    int max_threads;  // __launch_bounds__ maximum threads per block
    KernelReg* next;
};
bool register_kernel(KernelReg* reg);

template <typename... A> constexpr int first_arg(int a, A...) { return a; }

}  // namespace prefk_emu

// ---- built-in variables -------------------------------------------------------------------------
#define threadIdx (::prefk_emu::thread_idx())
#define blockIdx (::prefk_emu::block_idx())
#define blockDim (::prefk_emu::block_dim())
#define gridDim (::prefk_emu::grid_dim())
#define warpSize 32

// ---- synchronization and warp collectives -------------------------------------------------------
inline void __syncthreads() { ::prefk_emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::prefk_emu::syncwarp(mask); }

template <typename T> inline T prefk_emu_shfl(unsigned mask, T v, int arg, int width, int mode) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "shuffles move 32- or 64-bit values");
    if constexpr (sizeof(T) == 4) {
        uint32_t u;
        memcpy(&u, &v, 4);
        u = ::prefk_emu::shfl32(mask, u, arg, width, mode);
        memcpy(&v, &u, 4);
    } else {
        uint32_t u[2];
        memcpy(u, &v, 8);
        u[0] = ::prefk_emu::shfl32(mask, u[0], arg, width, mode);
        u[1] = ::prefk_emu::shfl32(mask, u[1], arg, width, mode);
        memcpy(&v, u, 8);
    }
    return v;
}
template <typename T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    return prefk_emu_shfl(mask, v, src, width, ::prefk_emu::SHFL_IDX);
}
template <typename T> inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return prefk_emu_shfl(mask, v, (int)delta, width, ::prefk_emu::SHFL_UP);
}
template <typename T> inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return prefk_emu_shfl(mask, v, (int)delta, width, ::prefk_emu::SHFL_DOWN);
}
template <typename T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return prefk_emu_shfl(mask, v, lane_mask, width, ::prefk_emu::SHFL_XOR);
}
inline unsigned __ballot_sync(unsigned mask, int p) { return ::prefk_emu::vote(mask, p, ::prefk_emu::VOTE_BALLOT); }
inline int __any_sync(unsigned mask, int p) { return (int)::prefk_emu::vote(mask, p, ::prefk_emu::VOTE_ANY); }
inline int __all_sync(unsigned mask, int p) { return (int)::prefk_emu::vote(mask, p, ::prefk_emu::VOTE_ALL); }

// ---- atomics (checked by the runtime like any global access) ------------------------------------
inline unsigned atomicOr(unsigned* p, unsigned v) { return ::prefk_emu::atomic_or_u32(p, v); }
inline unsigned atomicAnd(unsigned* p, unsigned v) { return ::prefk_emu::atomic_and_u32(p, v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return ::prefk_emu::atomic_add_u32(p, v); }
inline int atomicAdd(int* p, int v) { return ::prefk_emu::atomic_add_i32(p, v); }
inline unsigned atomicMax(unsigned* p, unsigned v) { return ::prefk_emu::atomic_max_u32(p, v); }
inline unsigned atomicCAS(unsigned* p, unsigned c, unsigned v) { return ::prefk_emu::atomic_cas_u32(p, c, v); }

// ---- cache-hinted loads and stores: plain accesses here (instrumented, so checked) ---------------
template <typename T> inline T __ldcs(const T* p) { return *p; }
template <typename T> inline T __ldg(const T* p) { return *p; }
template <typename T> inline void __stcs(T* p, T v) { *p = v; }

// ---- bit casts and integer helpers --------------------------------------------------------------
inline float __int_as_float(int x) { float f; memcpy(&f, &x, 4); return f; }
inline int __float_as_int(float f) { int x; memcpy(&x, &f, 4); return x; }
inline float __uint_as_float(unsigned x) { float f; memcpy(&f, &x, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned x; memcpy(&x, &f, 4); return x; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
