// The few constructs whose device and emulator forms differ, each behind one wrapper, so kernel
// code never needs an #ifdef:
//   PREFK_KERNEL(name, Params, max_threads[, min_blocks])   an extern "C" entry point taking Params by value
//   PREFK_SHARED_ARRAY(T, name, count)                       a statically sized __shared__ array
//   PREFK_DYNAMIC_SHARED(T, name)                            the launch's dynamic shared memory as T*
//   mma_m16n8k16(c, a, b, T())                               mma.sync m16n8k16 f32 += {bf16,f16} x {bf16,f16}
//   ldmatrix_x4(r, row) / ldmatrix_x4_trans / ldmatrix_x2 / ldmatrix_x2_trans
//                                                            ldmatrix.sync.aligned.m8n8.x{4,2}[.trans].shared.b16
//   cp_async_16(dst, src, valid), cp_async_commit(), cp_async_wait<N>()
//                                                            cp.async.cg 16 bytes global -> shared (zeros when
//                                                            !valid), commit_group, wait_group N
// On the GPU they are plain CUDA (inline PTX for mma). For the emulator (PREFK_EMULATOR, see
// kernels/emulator/cuda_emu.h) they register the kernel, carve the block's checked shared arena,
// and run the warp-collective mma from the PTX ISA's fragment tables.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include <string.h>

#ifdef PREFK_EMULATOR
#include "emulator/cuda_emu.h"

#ifdef PREFK_EMU_ANCHOR  // referenced by build.rs's module table, so the linker keeps this module
extern "C" const char PREFK_EMU_ANCHOR;
extern "C" const char PREFK_EMU_ANCHOR = 0;
#endif

#define PREFK_KERNEL(NAME, PARAMS, ...)                                                                   \
    extern "C" void NAME(PARAMS p);                                                                       \
    static void prefk_emu_entry_##NAME(const void* raw) { NAME(*static_cast<const PARAMS*>(raw)); }      \
    static ::prefk_emu::KernelReg prefk_emu_reg_##NAME = {#NAME, &prefk_emu_entry_##NAME, sizeof(PARAMS), \
                                                          ::prefk_emu::first_arg(__VA_ARGS__), nullptr};  \
    static const bool prefk_emu_registered_##NAME = ::prefk_emu::register_kernel(&prefk_emu_reg_##NAME);  \
    extern "C" void NAME(PARAMS p)

#define PREFK_SHARED_ARRAY(T, NAME, COUNT)                                                      \
    static char prefk_emu_site_##NAME;                                                          \
    T* const NAME = static_cast<T*>(::prefk_emu::static_shared(&prefk_emu_site_##NAME,          \
                                                               sizeof(T) * (COUNT), alignof(T)))

#define PREFK_DYNAMIC_SHARED(T, NAME) T* const NAME = static_cast<T*>(::prefk_emu::dynamic_shared())
#define PREFK_NOINLINE __attribute__((noinline))

inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) { ::prefk_emu::ldmatrix(r, 4, false, row); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) { ::prefk_emu::ldmatrix(r, 4, true, row); }
inline void ldmatrix_x2(uint32_t (&r)[2], const void* row) { ::prefk_emu::ldmatrix(r, 2, false, row); }
inline void ldmatrix_x2_trans(uint32_t (&r)[2], const void* row) { ::prefk_emu::ldmatrix(r, 2, true, row); }
inline void cp_async_16(void* dst, const void* src, bool valid) { ::prefk_emu::cp_async_16(dst, src, valid); }
inline void cp_async_commit() { ::prefk_emu::cp_async_commit(); }
template <int N> inline void cp_async_wait() { ::prefk_emu::cp_async_wait(N); }

__device__ __forceinline__ void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                             __nv_bfloat16) {
    const float acc[4] = {c[0], c[1], c[2], c[3]};
    ::prefk_emu::mma_m16n8k16_bf16(c, a, b, acc);
}
__device__ __forceinline__ void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], __half) {
    const float acc[4] = {c[0], c[1], c[2], c[3]};
    ::prefk_emu::mma_m16n8k16_f16(c, a, b, acc);
}

#else  // CUDA device code

#define PREFK_KERNEL(NAME, PARAMS, ...) extern "C" __global__ void __launch_bounds__(__VA_ARGS__) NAME(PARAMS p)
#define PREFK_NOINLINE __noinline__
#define PREFK_SHARED_ARRAY(T, NAME, COUNT) __shared__ T NAME[COUNT]
#define PREFK_DYNAMIC_SHARED(T, NAME)                   \
    extern __shared__ __align__(16) unsigned char NAME##_bytes[]; \
    T* const NAME = reinterpret_cast<T*>(NAME##_bytes)

__device__ __forceinline__ void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                             __nv_bfloat16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], __half) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ uint32_t prefk_smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(prefk_smem_addr(row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(prefk_smem_addr(row)));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(prefk_smem_addr(row)));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(prefk_smem_addr(row)));
}
// src_size 0 reads nothing and writes 16 zero bytes (src must still be a valid address).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(prefk_smem_addr(dst)), "l"(src),
                 "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

#endif
