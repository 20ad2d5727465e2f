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
//   wgmma_m64k16<N, TRANS_B, T>(d, a, desc_b, accumulate)    wgmma.mma_async.sync.aligned.m64nNk16.f32.T.T, A in
//   wgmma_m64k16_ss<N, TRANS_B, T>(d, desc_a, desc_b, acc)   registers (or by descriptor: _ss), B by no-swizzle
//                                                            descriptor (sm_90a only:
//                                                            PREFK_HAS_WGMMA); wgmma_fence(), wgmma_commit(),
//                                                            wgmma_wait<N>(), wgmma_fence_operand(regs),
//                                                            fence_proxy_async_shared(), wgmma_desc(...)
// On the GPU they are plain CUDA (inline PTX for mma). For the emulator (PREFK_EMULATOR, see
// kernels/emulator/cuda_emu.h) they register the kernel, carve the block's checked shared arena,
// and run the warp-collective mma from the PTX ISA's fragment tables.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

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

#define PREFK_HAS_WGMMA 1
inline uint32_t prefk_smem_addr(const void* p) { return ::prefk_emu::shared_window_addr(p); }
template <int N, bool TRANS_B, typename T>
inline void wgmma_m64k16(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b, bool accumulate) {
    static_assert(N == 64 || N == 128, "wgmma shapes used here: m64n64k16, m64n128k16");
    ::prefk_emu::wgmma_rs(d, N, a, desc_b, accumulate, TRANS_B, std::is_same<T, __nv_bfloat16>::value);
}
template <int N, bool TRANS_B, typename T>
inline void wgmma_m64k16_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
    static_assert(N == 32, "wgmma SS shape used here: m64n32k16");
    ::prefk_emu::wgmma_ss(d, N, desc_a, desc_b, accumulate, TRANS_B, std::is_same<T, __nv_bfloat16>::value);
}
inline void wgmma_fence() { ::prefk_emu::wgmma_fence(); }
inline void wgmma_commit() { ::prefk_emu::wgmma_commit(); }
template <int N> inline void wgmma_wait() { ::prefk_emu::wgmma_wait(N); }
template <int K> inline void wgmma_fence_operand(float (&)[K]) {}
inline void fence_proxy_async_shared() { ::prefk_emu::fence_proxy_async(); }

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

// wgmma (sm_90a only: the arch-specific feature set; other targets do not define these, and their
// kernels that would use them are built empty, see PREFK_HAS_WGMMA). A in registers (per warp of
// the warpgroup, mma.m16n8k16's A fragment of rows 16 w ..), B from shared memory by descriptor,
// scale-d = accumulate, imm-scale-a = imm-scale-b = 1, imm-trans-b = TRANS_B (B stored MN-major).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define PREFK_HAS_WGMMA 1
// The instructions' text, one macro per shape, the element type (DT: "bf16" or "f16") spliced in.
// Operands: the N / 2 accumulators, then A's 4 registers (RS) or its descriptor (SS), scale-d,
// B's descriptor, imm-trans-b; imm-scale-a = imm-scale-b = 1 (and imm-trans-a = 0 in SS).
#define PREFK_WGMMA_RS64(DT) \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %36, 0;\n" \
    "wgmma.mma_async.sync.aligned.m64n64k16.f32." DT "." DT " " \
    "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"\
    "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, " \
    "{%32,%33,%34,%35}, %37, p, 1, 1, %38;\n}\n" \
    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
      "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
      "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]) \
    : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"((uint32_t)accumulate), "l"(desc_b), "n"((int)TRANS_B))
#define PREFK_WGMMA_RS128(DT) \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %68, 0;\n" \
    "wgmma.mma_async.sync.aligned.m64n128k16.f32." DT "." DT " " \
    "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"\
    "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"\
    "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"\
    "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, " \
    "{%64,%65,%66,%67}, %69, p, 1, 1, %70;\n}\n" \
    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
      "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
      "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
      "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
      "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
      "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
      "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]) \
    : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"((uint32_t)accumulate), "l"(desc_b), "n"((int)TRANS_B))
#define PREFK_WGMMA_SS32(DT) \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n" \
    "wgmma.mma_async.sync.aligned.m64n32k16.f32." DT "." DT " " \
    "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, " \
    "%16, %17, p, 1, 1, 0, %19;\n}\n" \
    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]) \
    : "l"(desc_a), "l"(desc_b), "r"((uint32_t)accumulate), "n"((int)TRANS_B))

template <int N, bool TRANS_B, typename T>
__device__ __forceinline__ void wgmma_m64k16(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b,
                                             bool accumulate) {
    static_assert(N == 64 || N == 128, "wgmma shapes used here: m64n64k16, m64n128k16");
    constexpr bool BF16 = std::is_same<T, __nv_bfloat16>::value;
    if constexpr (N == 64 && BF16) PREFK_WGMMA_RS64("bf16");
    else if constexpr (N == 64) PREFK_WGMMA_RS64("f16");
    else if constexpr (BF16) PREFK_WGMMA_RS128("bf16");
    else PREFK_WGMMA_RS128("f16");
}
// The SS form: A (64 x 16, K-major, imm-trans-a = 0) from shared memory by descriptor too.
template <int N, bool TRANS_B, typename T>
__device__ __forceinline__ void wgmma_m64k16_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
    static_assert(N == 32, "wgmma SS shape used here: m64n32k16");
    if constexpr (std::is_same<T, __nv_bfloat16>::value) PREFK_WGMMA_SS32("bf16");
    else PREFK_WGMMA_SS32("f16");
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Pins accumulator registers in place across the wgmma calls (CUTLASS's warpgroup_fence_operand):
// without it the compiler may move their uses across wgmma.wait_group.
template <int K> __device__ __forceinline__ void wgmma_fence_operand(float (&r)[K]) {
#pragma unroll
    for (int i = 0; i < K; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
__device__ __forceinline__ void fence_proxy_async_shared() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
#else
#define PREFK_HAS_WGMMA 0
#endif

#endif

// Shared-memory matrix descriptor of wgmma, no-swizzle layout: the 14-bit start address, leading
// and stride byte offsets in 16-byte units (bits 0-13, 16-29, 32-45); base offset 0, layout type 0.
__device__ __forceinline__ uint64_t wgmma_desc(const void* smem, uint32_t lbo_bytes, uint32_t sbo_bytes) {
    return (uint64_t)((prefk_smem_addr(smem) >> 4) & 0x3fffu) | ((uint64_t)((lbo_bytes >> 4) & 0x3fffu) << 16) |
           ((uint64_t)((sbo_bytes >> 4) & 0x3fffu) << 32);
}
