// Shared device helpers: dtype conversion, 16-byte vector loads/stores, row splitting for
// vectorized access, and the online-softmax state with its deterministic warp/block reductions.
#pragma once

#include "portable.cuh"

#include <float.h>
#include <stdint.h>

#include "params.h"

#define PREFK_LOG2E 1.4426950408889634f
#define PREFK_LN2 0.6931471805599453f

// ---- dtype conversion ----------------------------------------------------------------------------
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

// ---- 16-byte vectors -----------------------------------------------------------------------------
template <typename T> struct alignas(16) Vec16 {
    static constexpr int N = 16 / sizeof(T);
    T v[N];
};

// Streaming read-only load (logits are read once per kernel; keep them out of L1).
// Register bit casts go through memcpy (free on the device, and defined behaviour on the host).
template <typename T> __device__ __forceinline__ Vec16<T> load_vec_stream(const T* p) {
    const uint4 raw = __ldcs(reinterpret_cast<const uint4*>(p));
    Vec16<T> v;
    memcpy(&v, &raw, 16);
    return v;
}
// The same 16 bytes element by element, for a chunk that is not 16-byte aligned.
template <typename T> __device__ __forceinline__ Vec16<T> load_vec_unaligned(const T* p) {
    Vec16<T> v;
#pragma unroll
    for (int k = 0; k < Vec16<T>::N; ++k) v.v[k] = p[k];
    return v;
}
// Plain load: required where the same memory is later overwritten by this kernel (in-place backward).
template <typename T> __device__ __forceinline__ Vec16<T> load_vec(const T* p) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    Vec16<T> v;
    memcpy(&v, &raw, 16);
    return v;
}
template <typename T> __device__ __forceinline__ void store_vec_stream(T* p, const Vec16<T>& x) {
    uint4 raw;
    memcpy(&raw, &x, 16);
    __stcs(reinterpret_cast<uint4*>(p), raw);
}

// Elementwise passes (the backward) process a row of `len` elements starting at `addr` as: `head`
// (< 16 / sizeof(T), so fewer than one warp) scalars until the first 16-byte boundary, `nvec`
// aligned 16-byte vectors, then strided scalars from `tail_start` up to `len`. Any stride/offset
// works; rows whose (input, output) misalignments differ are all tail (strided scalars). Results
// are elementwise, so the split never changes them. (Reductions fold in column order instead: see
// token_logprobs_fwd.)
struct RowSplit {
    int64_t head;
    int64_t nvec;
    int64_t tail_start;
};
template <typename T>
__device__ __forceinline__ RowSplit split_row(uint64_t addr, uint64_t other_addr, int64_t len) {
    constexpr int64_t VEC = Vec16<T>::N;
    RowSplit s;
    if (((addr ^ other_addr) & 15u) != 0) {
        s.head = 0;
        s.nvec = 0;
        s.tail_start = 0;
        return s;
    }
    int64_t head = (int64_t)(((16u - (addr & 15u)) & 15u) / sizeof(T));
    s.head = head < len ? head : len;
    s.nvec = (len - s.head) / VEC;
    s.tail_start = s.head + s.nvec * VEC;
    return s;
}

// ---- online softmax ------------------------------------------------------------------------------
// State over the raw values x of a row (logits, not yet divided by T), with scale2 = log2(e) / T:
//   m = max x (starts at -FLT_MAX, not -inf, so -inf logits contribute exactly 0 without NaN),
//   s = sum 2^((x - m) scale2),  t = sum 2^(d) d with d = (x - m) scale2,  q = sum 2^(2d)
//   (t and q only with entropy; q gives log sum p^2 = ln q - 2 ln s, WPO's weight, at one FMA an
//   element: 2^(2d) is the square of the 2^d already formed; q >= 1 once the max is in, no underflow).
// The max is kept in the logits' own units and every exponent is formed as (x - m) * scale2, never
// x * scale2 - m * scale2: x - m is exact in f32 near the max (Sterbenz), so the elements that carry
// the probability mass keep full precision at any magnitude, and x * scale2 (which overflows f32 for
// |x| >= FLT_MAX / log2(e) * T) is never formed; x - m <= 0 can only overflow to -inf (p = 0).
// Keeping t relative to m makes entropy = ln2 * (log2 s - t / s) shift-invariant and cancellation-free.
// NaN inputs poison s (exp2(NaN) = NaN); +inf inputs are turned into NaN at finalization.
struct SoftmaxState {
    float m, s, t, q;
};
__device__ __forceinline__ SoftmaxState softmax_identity() { return {-FLT_MAX, 0.f, 0.f, 0.f}; }

// log2 of the weight of a state of max `from` rescaled to max `to` (>= from): (from - to) * scale2,
// with -inf when the difference overflows (the rescaled state then weighs exactly 0).
__device__ __forceinline__ float softmax_shift(float from, float to, float scale2) { return (from - to) * scale2; }

// Fold K raw values at once: one rescale per chunk, one exp2 per value.
template <int K, bool ENTROPY>
__device__ __forceinline__ void softmax_update(SoftmaxState& st, const float (&x)[K], float scale2) {
    float cm = st.m;
#pragma unroll
    for (int k = 0; k < K; ++k) cm = fmaxf(cm, x[k]);
    const float dm = softmax_shift(st.m, cm, scale2);
    const float r = exp2f(dm);
    // r = 0: the old state is negligible (dm may even be -inf; 0 * -inf is NaN).
    if (ENTROPY) {
        st.t = r > 0.f ? r * (st.t + st.s * dm) : 0.f;
        st.q *= r * r;
    }
    st.s *= r;
#pragma unroll
    for (int k = 0; k < K; ++k) {
        const float d = softmax_shift(x[k], cm, scale2);
        const float e = exp2f(d);
        st.s += e;
        // A -inf logit has e = 0 and d = -inf: its term p ln p is 0 (clamping d keeps 0 * d = 0;
        // fmaxf passes NaN's d through as -FLT_MAX, but then e is NaN and poisons s and t).
        if (ENTROPY) {
            st.t = fmaf(e, fmaxf(d, -FLT_MAX), st.t);
            st.q = fmaf(e, e, st.q);
        }
    }
    st.m = cm;
}

template <bool ENTROPY>
__device__ __forceinline__ SoftmaxState softmax_combine(const SoftmaxState& a, const SoftmaxState& b, float scale2) {
    SoftmaxState c;
    c.m = fmaxf(a.m, b.m);
    const float da = softmax_shift(a.m, c.m, scale2), db = softmax_shift(b.m, c.m, scale2);
    const float ra = exp2f(da), rb = exp2f(db);
    c.s = a.s * ra + b.s * rb;
    // A side whose weight underflowed to 0 adds nothing, even when its shift overflowed to -inf.
    c.t = ENTROPY ? (ra > 0.f ? ra * (a.t + a.s * da) : 0.f) + (rb > 0.f ? rb * (b.t + b.s * db) : 0.f) : 0.f;
    c.q = ENTROPY ? a.q * (ra * ra) + b.q * (rb * rb) : 0.f;
    return c;
}

// Butterfly over the lanes of a warp: a fixed combination order, so results are bitwise reproducible.
template <bool ENTROPY>
__device__ __forceinline__ SoftmaxState warp_reduce_softmax(SoftmaxState st, float scale2) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        SoftmaxState o;
        o.m = __shfl_xor_sync(0xffffffffu, st.m, off);
        o.s = __shfl_xor_sync(0xffffffffu, st.s, off);
        o.t = ENTROPY ? __shfl_xor_sync(0xffffffffu, st.t, off) : 0.f;
        o.q = ENTROPY ? __shfl_xor_sync(0xffffffffu, st.q, off) : 0.f;
        st = softmax_combine<ENTROPY>(st, o, scale2);
    }
    return st;
}

// Reduce over the THREADS threads of a block (THREADS a multiple of 32, <= 1024); every thread
// receives the result. `scratch` must hold THREADS / 32 states. Fixed order: deterministic.
template <int THREADS, bool ENTROPY>
__device__ __forceinline__ SoftmaxState block_reduce_softmax(SoftmaxState st, SoftmaxState* scratch, float scale2) {
    st = warp_reduce_softmax<ENTROPY>(st, scale2);
    if (THREADS == 32) return st;
    constexpr int WARPS = THREADS / 32;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // scratch may still be read by the previous call
    if (lane == 0) scratch[warp] = st;
    __syncthreads();
    st = lane < WARPS ? scratch[lane] : softmax_identity();
    return warp_reduce_softmax<ENTROPY>(st, scale2);
}

// log2 s of a finished state, NaN when +inf was in the row (m = +inf: no distribution is defined).
__device__ __forceinline__ float softmax_log2_sum(const SoftmaxState& st) {
    return st.m == INFINITY ? __int_as_float(0x7fc00000) : log2f(st.s);
}

// ---- targets -------------------------------------------------------------------------------------
template <typename I> __device__ __forceinline__ int64_t load_target(uint64_t targets, int64_t row) {
    return (int64_t) reinterpret_cast<const I*>(targets)[row];
}

__device__ __forceinline__ void report_status(uint64_t status, uint32_t bits) {
    if (status != 0) atomicOr(reinterpret_cast<unsigned int*>(status), bits);
}

// ---- stable scalar functions shared by the loss kernels -----------------------------------------
__device__ __forceinline__ float sigmoid_(float x) {
    if (x >= 0.f) return 1.f / (1.f + expf(-x));
    const float e = expf(x);
    return e / (1.f + e);
}
// sigma'(x) = sigma(x) sigma(-x) from exp(-|x|) only (1 - sigma(x) cancels at large |x|).
__device__ __forceinline__ float sigmoid_prime_(float x) {
    const float e = expf(-fabsf(x));
    return e / ((1.f + e) * (1.f + e));
}
__device__ __forceinline__ float softplus_(float x) { return fmaxf(x, 0.f) + log1pf(expf(-fabsf(x))); }

// Order-preserving u32 key of a float (negative values flipped, positive ones offset): a total
// order (NaNs included, by their bits) that integer comparisons and radix selects can use.
__device__ __forceinline__ uint32_t order_key(float x) {
    const uint32_t b = __float_as_uint(x);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float key_value(uint32_t k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// ---- sums of several values over a block, fixed order ---------------------------------------------
// Every thread passes K partial sums; every thread receives the block totals. `scratch` holds
// (THREADS / 32) * K floats. Butterfly inside warps, then warp 0's lanes combine the warps in order.
// Any summable T: floats for the losses, unsigned long long for exact counts.
template <int THREADS, int K, typename T = float>
__device__ __forceinline__ void block_sum(T (&v)[K], T* scratch) {
#pragma unroll
    for (int k = 0; k < K; ++k)
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) v[k] += __shfl_xor_sync(0xffffffffu, v[k], off);
    constexpr int WARPS = THREADS / 32;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0)
#pragma unroll
        for (int k = 0; k < K; ++k) scratch[warp * K + k] = v[k];
    __syncthreads();
#pragma unroll
    for (int k = 0; k < K; ++k) {
        T acc = T(0);
        for (int w = 0; w < WARPS; ++w) acc += scratch[w * K + k];  // same order in every thread
        v[k] = acc;
    }
}

// ---- sequences -------------------------------------------------------------------------------------
// Token range [begin, end) of sequence s: from cu_seqlens (validated: 0 <= begin <= end <= n_tokens,
// otherwise reported and treated as empty) or padded rows of seq_len tokens.
__device__ __forceinline__ void seq_range(uint64_t cu_seqlens, int64_t seq_len, int64_t n_tokens, int64_t s,
                                          uint64_t status, int64_t& begin, int64_t& end) {
    if (cu_seqlens == 0) {
        begin = s * seq_len;
        end = begin + seq_len;
        return;
    }
    const int32_t* cu = reinterpret_cast<const int32_t*>(cu_seqlens);
    begin = cu[s];
    end = cu[s + 1];
    if (!(0 <= begin && begin <= end && end <= n_tokens)) {
        if (threadIdx.x == 0) report_status(status, PREFK_STATUS_BAD_SEQLENS);
        begin = end = 0;
    }
}

// Sequence holding token t, or -1. Binary search over cu_seqlens (any contents: always in bounds).
__device__ __forceinline__ int64_t seq_of_token(uint64_t cu_seqlens, int64_t seq_len, int64_t n_seqs, int64_t t) {
    if (cu_seqlens == 0) {
        const int64_t s = seq_len > 0 ? t / seq_len : n_seqs;
        return s < n_seqs ? s : -1;
    }
    const int32_t* cu = reinterpret_cast<const int32_t*>(cu_seqlens);
    int64_t lo = 0, hi = n_seqs;  // largest s in [0, n_seqs] with cu[s] <= t
    if (t < (int64_t)cu[0]) return -1;
    while (lo < hi) {
        const int64_t mid = (lo + hi + 1) / 2;
        if ((int64_t)cu[mid] <= t) lo = mid; else hi = mid - 1;
    }
    return (lo < n_seqs && t < (int64_t)cu[lo + 1]) ? lo : -1;
}

// Score of a sequence under an aggregation mode, and its token coefficients (c0, c1):
// d score / d logp_t = m_t (c0 + c1 w_t). Clamps: count >= 1, weight mass >= 1e-6.
#define PREFK_WMASS_EPS 1e-6f
__device__ __forceinline__ float aggregate(uint32_t mode, float sum, float wsum, float count, float wmass) {
    switch (mode) {
        case PREFK_AGG_MEAN: return sum / fmaxf(count, 1.f);
        case PREFK_AGG_WSUM: return wsum;
        case PREFK_AGG_WMEAN: return wsum / fmaxf(wmass, PREFK_WMASS_EPS);
        default: return sum;
    }
}
__device__ __forceinline__ void token_coef(uint32_t mode, float count, float wmass, float& c0, float& c1) {
    c0 = 0.f;
    c1 = 0.f;
    switch (mode) {
        case PREFK_AGG_MEAN: c0 = 1.f / fmaxf(count, 1.f); break;
        case PREFK_AGG_WSUM: c1 = 1.f; break;
        case PREFK_AGG_WMEAN: c1 = 1.f / fmaxf(wmass, PREFK_WMASS_EPS); break;
        default: c0 = 1.f;
    }
}
