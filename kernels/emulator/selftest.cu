// Tiny kernels for the emulator's own tests (tests/emulator.rs): each planted fault must be
// reported by its checker, and each collective (shuffles, votes, mma.sync) must match a plain
// computation. Compiled for the emulator only.
#include "../portable.cuh"

struct EmuTestParams {
    uint64_t in;   // input buffer
    uint64_t out;  // output buffer
    int64_t n;     // elements of `in`
    int64_t mode;  // kernel-specific
};

// Thread i copies in[i + mode] to out[i]: mode = 1 reads one element past the end for the last thread.
PREFK_KERNEL(emu_test_copy, EmuTestParams, 1024) {
    const float* in = reinterpret_cast<const float*>(p.in);
    float* out = reinterpret_cast<float*>(p.out);
    const int64_t i = threadIdx.x;
    if (i < p.n) out[i] = in[i + p.mode];
}

// Shared-memory faults. mode 0: correct (write, barrier, read the neighbour); 1: no barrier
// (read-after-write race); 2: read before any write (uninitialized); 3: write past the array.
PREFK_KERNEL(emu_test_shared, EmuTestParams, 256) {
    PREFK_SHARED_ARRAY(float, s, 64);
    float* out = reinterpret_cast<float*>(p.out);
    const int t = threadIdx.x;
    if (p.mode == 2) {
        out[t] = s[t];
        return;
    }
    s[p.mode == 3 ? t + 1 : t] = (float)t;
    if (p.mode != 1) __syncthreads();
    out[t] = s[(t + 1) % 64];
}

// mode 0: lanes 0..15 reach __syncthreads, the others exit; 1: lanes 16..31 exit before a full-mask
// shuffle; 2: lanes 0..15 shuffle, lanes 16..31 wait at __syncthreads (deadlock).
PREFK_KERNEL(emu_test_sync, EmuTestParams, 256) {
    float* out = reinterpret_cast<float*>(p.out);
    const int t = threadIdx.x;
    if (p.mode == 0) {
        if (t >= 16) return;
        __syncthreads();
        out[t] = 1.f;
    } else if (p.mode == 1) {
        if (t >= 16) return;
        out[t] = __shfl_xor_sync(0xffffffffu, (float)t, 1);
    } else {
        if (t < 16) out[t] = __shfl_xor_sync(0xffffffffu, (float)t, 1);
        else __syncthreads();
    }
}

// Global faults. mode 0: read a never-written element; 1: a 16-byte load 4 bytes off alignment;
// 2: spin on a flag no other thread will set (a hang on the GPU too).
PREFK_KERNEL(emu_test_global, EmuTestParams, 32) {
    float* out = reinterpret_cast<float*>(p.out);
    if (threadIdx.x != 0) return;
    if (p.mode == 0) {
        out[0] = reinterpret_cast<const float*>(p.in)[0];
    } else if (p.mode == 2) {
        unsigned* flag = reinterpret_cast<unsigned*>(p.out);
        while (atomicCAS(flag, 12345u, 0u) != 12345u) {
        }
    } else {
        const uint4 v = *reinterpret_cast<const uint4*>(reinterpret_cast<const float*>(p.in) + 1);
        out[0] = __uint_as_float(v.x ^ v.y ^ v.z ^ v.w);
    }
}

// Every lane of a 32-thread block: out[lane * 8 + k] for shfl idx/up/down/xor, ballot, any, all.
PREFK_KERNEL(emu_test_warp, EmuTestParams, 32) {
    const int* in = reinterpret_cast<const int*>(p.in);
    int* out = reinterpret_cast<int*>(p.out);
    const int lane = threadIdx.x, v = in[lane];
    out[lane * 8 + 0] = __shfl_sync(0xffffffffu, v, (lane * 7 + 3) % 32);
    out[lane * 8 + 1] = __shfl_up_sync(0xffffffffu, v, 3);
    out[lane * 8 + 2] = __shfl_down_sync(0xffffffffu, v, 5);
    out[lane * 8 + 3] = __shfl_xor_sync(0xffffffffu, v, 6);
    out[lane * 8 + 4] = __shfl_xor_sync(0xffffffffu, v, 1, 8);
    out[lane * 8 + 5] = (int)__ballot_sync(0xffffffffu, v & 1);
    out[lane * 8 + 6] = __any_sync(0xffffffffu, v > 1000);
    out[lane * 8 + 7] = __all_sync(0xffffffffu, v >= 0);
}

// One mma.sync m16n8k16 per warp: in = 32 lanes x {a0..a3, b0, b1} registers, then 32 x 4 f32 C;
// out = 32 lanes x 4 f32 D. mode 0: bf16, 1: f16.
PREFK_KERNEL(emu_test_mma, EmuTestParams, 32) {
    const uint32_t* in = reinterpret_cast<const uint32_t*>(p.in);
    float* out = reinterpret_cast<float*>(p.out);
    const int lane = threadIdx.x;
    const uint32_t a[4] = {in[lane * 6 + 0], in[lane * 6 + 1], in[lane * 6 + 2], in[lane * 6 + 3]};
    const uint32_t b[2] = {in[lane * 6 + 4], in[lane * 6 + 5]};
    const float* cin = reinterpret_cast<const float*>(in + 32 * 6);
    float c[4] = {cin[lane * 4 + 0], cin[lane * 4 + 1], cin[lane * 4 + 2], cin[lane * 4 + 3]};
    if (p.mode == 0) mma_m16n8k16(c, a, b, __nv_bfloat16());
    else mma_m16n8k16(c, a, b, __half());
    for (int e = 0; e < 4; ++e) out[lane * 4 + e] = c[e];
}

// Warp patterns the review found mishandled. mode 0: half-warps shuffle with their own masks,
// the low half twice, then a ballot by lane 31 alone (out[lane] = the low half's second xor, or
// the high half's xor; out[32] = the ballot). mode 1: xor with width 16 reading the earlier group,
// and shuffles with out-of-range deltas (low 5 bits count). mode 2: shared memory exchanged
// across a __syncwarp (no race). mode 3: a read 2 bytes before shared memory.
PREFK_KERNEL(emu_test_warp2, EmuTestParams, 32) {
    PREFK_SHARED_ARRAY(int, s, 32);
    int* out = reinterpret_cast<int*>(p.out);
    const int lane = threadIdx.x;
    if (p.mode == 0) {
        int v = lane;
        if (lane < 16) {
            v = __shfl_xor_sync(0x0000ffffu, v, 1);
            v = __shfl_xor_sync(0x0000ffffu, v, 2);
        } else {
            v = __shfl_xor_sync(0xffff0000u, v, 4);
        }
        out[lane] = v;
        if (lane == 31) out[32] = (int)__ballot_sync(0x80000000u, 1);
    } else if (p.mode == 1) {
        out[lane] = __shfl_xor_sync(0xffffffffu, lane, 16, 16);
        out[32 + lane] = __shfl_down_sync(0xffffffffu, lane, 0xffffffe1u);  // delta 1
    } else if (p.mode == 2) {
        s[lane] = lane * 3;
        __syncwarp();
        out[lane] = s[lane ^ 1];
    } else {
        int v;
        memcpy(&v, reinterpret_cast<const char*>(s) - 2, 4);
        out[lane] = v;
    }
}

// ldmatrix from a shared tile: in = 4 matrices x 8 rows x 8 u16 (matrix-major); row r of matrix j
// sits at shared row j * 8 + (3 r) % 8 of a 16-element (32-byte) stride, so the row addresses the
// lanes give are not in order. out[lane * 4 + reg]. mode 0: x4, 1: x4.trans, 2: x2, 3: x2.trans,
// 4: lane 5 gives an address 8 bytes off (memcheck), 5: row 2 of matrix 1 never written (initcheck).
PREFK_KERNEL(emu_test_ldmatrix, EmuTestParams, 32) {
    PREFK_SHARED_ARRAY(uint16_t, s, 32 * 16);
    const uint16_t* in = reinterpret_cast<const uint16_t*>(p.in);
    uint32_t* out = reinterpret_cast<uint32_t*>(p.out);
    const int lane = threadIdx.x, j = lane / 8, r = lane % 8;
    const int row = j * 8 + (3 * r) % 8;
    if (!(p.mode == 5 && j == 1 && r == 2))
        for (int c = 0; c < 16; ++c) s[row * 16 + c] = c < 8 ? in[(j * 8 + r) * 8 + c] : (uint16_t)0xdead;
    __syncthreads();
    const uint16_t* addr = s + row * 16 + (p.mode == 4 && lane == 5 ? 4 : 0);
    uint32_t v[4] = {0, 0, 0, 0};
    if (p.mode == 0 || p.mode >= 4) {
        ldmatrix_x4(v, addr);
    } else if (p.mode == 1) {
        ldmatrix_x4_trans(v, addr);
    } else {
        uint32_t h[2];
        if (p.mode == 2) ldmatrix_x2(h, addr);
        else ldmatrix_x2_trans(h, addr);
        v[0] = h[0];
        v[1] = h[1];
    }
    for (int k = 0; k < 4; ++k) out[lane * 4 + k] = v[k];
}

// cp.async: thread t copies in[t] (16 bytes) into buffer 0 (group 0) and in[32 + t] into buffer 1
// (group 1; thread 3 zero-fills instead), then out[t] = buffer 0's row t + 1 after wait_group 1 and
// a barrier, out[32 + t] = buffer 1's row t + 1 after wait_group 0 and a barrier. mode 1: reads
// buffer 1 after wait_group 1 (still in flight: initcheck); 2: reads buffer 0's neighbour row
// without the barrier (racecheck); 3: thread 0's source one row past the input (memcheck).
PREFK_KERNEL(emu_test_cp_async, EmuTestParams, 32) {
    PREFK_SHARED_ARRAY(uint4, buf, 64);
    const uint4* in = reinterpret_cast<const uint4*>(p.in);
    uint4* out = reinterpret_cast<uint4*>(p.out);
    const int t = threadIdx.x;
    cp_async_16(&buf[t], in + (p.mode == 3 && t == 0 ? 64 : t), true);
    cp_async_commit();
    cp_async_16(&buf[32 + t], in + 32 + t, t != 3);
    cp_async_commit();
    cp_async_wait<1>();
    if (p.mode == 1) {
        out[t] = buf[32 + t];
        return;
    }
    if (p.mode != 2) __syncthreads();
    out[t] = buf[(t + 1) % 32];
    cp_async_wait<0>();
    __syncthreads();
    out[32 + t] = buf[32 + (t + 1) % 32];
}

// One wgmma.mma_async m64nNk16 per warpgroup (128 threads): in = A (64 x 16 u16), B (16 x N u16,
// k-major rows of N), C (64 x N f32); out = D (64 x N f32), row-major. Each thread builds its A
// fragment and reads/writes D with the PTX ISA's layouts (warp w: rows 16 w + mma.m16n8k16's A
// and C fragments, d[4j + e] = C element e of 8-column block j), and stores B into shared memory
// in a no-swizzle core-matrix placement other than the attention kernel's:
//   K-major (bit 1 clear): core (n / 8, k / 8) at (k / 8) (N / 8) 128 + (n / 8) 128: LBO 16 N, SBO 128;
//   MN-major (bit 1 set):  core (k / 8, n / 8) at (n / 8) 256 + (k / 8) 128:           LBO 128, SBO 256.
// mode bit 0: f16 (else bf16); bit 2: N = 128 (else 64); bit 3: the SS form with N = 32, A in
// shared memory too (core (m / 8, k / 8) at (k / 8) 1024 + (m / 8) 128: LBO 1024, SBO 128); bits
// 8+: a planted fault: 1 no
// fence.proxy.async, 2 D read before wgmma.wait_group, 3 no wgmma.fence, 4 B overwritten before
// the wait, 5 warp 1 gives another descriptor, 6 scale-d = 0 (D = A B, C ignored), 7 warp 1 issues
// no wgmma, 8 an accumulator written before the wait.
template <int N, bool TRANS, typename T, bool SS = false> void emu_wgmma_case(const EmuTestParams& p) {
    PREFK_SHARED_ARRAY(uint16_t, bs, 16 * 128);
    PREFK_SHARED_ARRAY(uint16_t, as, 64 * 16);
    const uint16_t* A = reinterpret_cast<const uint16_t*>(p.in);
    const uint16_t* B = A + 64 * 16;
    const float* C = reinterpret_cast<const float*>(B + 16 * N);
    float* out = reinterpret_cast<float*>(p.out);
    const int fault = (int)(p.mode >> 8), t = threadIdx.x, w = t / 32, lane = t % 32, g = lane / 4, q = lane % 4;
    const uint32_t lbo = TRANS ? 128 : 16 * N, sbo = TRANS ? 256 : 128;
    for (int e = t; e < 16 * N; e += 128) {
        const int k = e / N, n = e % N;
        const int off = TRANS ? (n / 8) * 128 + (k / 8) * 64 + (k % 8) * 8 + n % 8   // in u16 elements
                              : (k / 8) * (N / 8) * 64 + (n / 8) * 64 + (n % 8) * 8 + k % 8;
        bs[off] = B[k * N + n];
    }
    if (SS)
        for (int e = t; e < 64 * 16; e += 128) {
            const int m = e / 16, k = e % 16;
            as[(k / 8) * 512 + (m / 8) * 64 + (m % 8) * 8 + k % 8] = A[e];
        }
    if (fault != 1) fence_proxy_async_shared();
    __syncthreads();
    uint32_t a[4];
    for (int r = 0; r < 4; ++r) {
        const int row = 16 * w + g + ((r & 1) ? 8 : 0), col = 2 * q + ((r & 2) ? 8 : 0);
        a[r] = (uint32_t)A[row * 16 + col] | ((uint32_t)A[row * 16 + col + 1] << 16);
    }
    float d[N / 2];
    for (int i = 0; i < N / 2; ++i) d[i] = C[(16 * w + g + ((i & 2) ? 8 : 0)) * N + 8 * (i / 4) + 2 * q + (i & 1)];
    const uint64_t desc = wgmma_desc(bs + (fault == 5 && w == 1 ? 8 : 0), lbo, sbo);
    if (fault != 3) wgmma_fence();
    if constexpr (SS) wgmma_m64k16_ss<N, TRANS, T>(d, wgmma_desc(as, 1024, 128), desc, fault != 6);
    else if (!(fault == 7 && w == 1)) wgmma_m64k16<N, TRANS, T>(d, a, desc, fault != 6);
    if (fault == 8) d[1] = 1.0f;
    wgmma_commit();
    if (fault == 4 && t == 0) bs[3] = 0;
    if (fault != 2) wgmma_wait<0>();
    wgmma_fence_operand(d);
    for (int i = 0; i < N / 2; ++i) out[(16 * w + g + ((i & 2) ? 8 : 0)) * N + 8 * (i / 4) + 2 * q + (i & 1)] = d[i];
    if (fault == 2) wgmma_wait<0>();
}
PREFK_KERNEL(emu_test_wgmma, EmuTestParams, 128) {
    const bool f16 = p.mode & 1, trans = p.mode & 2, wide = p.mode & 4;
    if (p.mode & 8) {
        if (trans) f16 ? emu_wgmma_case<32, true, __half, true>(p) : emu_wgmma_case<32, true, __nv_bfloat16, true>(p);
        else f16 ? emu_wgmma_case<32, false, __half, true>(p) : emu_wgmma_case<32, false, __nv_bfloat16, true>(p);
        return;
    }
    if (!wide && !trans) f16 ? emu_wgmma_case<64, false, __half>(p) : emu_wgmma_case<64, false, __nv_bfloat16>(p);
    if (!wide && trans) f16 ? emu_wgmma_case<64, true, __half>(p) : emu_wgmma_case<64, true, __nv_bfloat16>(p);
    if (wide && !trans) f16 ? emu_wgmma_case<128, false, __half>(p) : emu_wgmma_case<128, false, __nv_bfloat16>(p);
    if (wide && trans) f16 ? emu_wgmma_case<128, true, __half>(p) : emu_wgmma_case<128, true, __nv_bfloat16>(p);
}
