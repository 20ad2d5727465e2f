// Shared-prefix group attention, forward and backward, on tensor cores (mma.sync m16n8k16,
// bf16/f16 in, f32 accumulate). Version 1: correctness first.
//
// Layout: packed token-major Q [T, Hq, d], K/V [T, Hkv, d]; groups [prefix | r_1 | ... | r_G];
// host-built tiles of 64 tokens never cross a group boundary. Mask (two-interval form):
//   allowed(i, j) = lo1 <= j <= i and (j < hi1 or j >= lo2[i])   (lo1/hi1: the group's prefix)
// Forward (grid: tiles x Hq, 4 warps, 16 query rows per warp): one online softmax over two
// disjoint key ranges, the prefix [lo1, min(hi1, b)) and the tile's own responses
// [max(hi1, min lo2), b); O = acc / l, LSE = natural-log row logsumexp.
// Backward (deterministic, no atomics; FA2 recurrence with the final O and LSE):
//   preprocess: delta = rowsum(dO * O);
//   dK/dV (grid: tiles x Hkv): a CTA owns a key tile and loops over the GQA group's query heads
//     and every query chunk that can see the tile; a prefix key tile is seen by every later row of
//     the group, so the sum over all G responses happens in its registers;
//   dQ (grid: tiles x Hq): the forward's loop structure, recomputing P and dP.
#include "common.cuh"

namespace attn {

constexpr int WARPS = 4;
constexpr int THREADS = WARPS * 32;
constexpr int BR = 64;  // query rows per tile (16 per warp)
constexpr int BC = 64;  // keys per tile
constexpr int BQ = 32;  // query rows per chunk in the dK/dV kernel
constexpr float NEG_INF = -INFINITY;

// ---- fragment helpers for mma_m16n8k16 (kernels/portable.cuh) ------------------------------------
// A (16x16, row-major): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
// B (16x8, k-major):    b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
// C (16x8 f32):          c0, c1 = (g, 2t), (g, 2t+1); c2, c3 = (g+8, 2t), (g+8, 2t+1)
// with g = lane / 4, t = lane % 4.
__device__ __forceinline__ uint16_t bits16(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }
__device__ __forceinline__ uint16_t bits16(__half x) { return __half_as_ushort(x); }

// Two f32 -> one register of two 16-bit values (lo in the low half: the lower column/k index).
template <typename T> __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    return (uint32_t)bits16(from_f32<T>(lo)) | ((uint32_t)bits16(from_f32<T>(hi)) << 16);
}
template <typename T> __device__ __forceinline__ uint32_t pack_raw(T lo, T hi) {
    return (uint32_t)bits16(lo) | ((uint32_t)bits16(hi) << 16);
}
template <typename T> __device__ __forceinline__ uint32_t ld32(const T* p) {
    return *reinterpret_cast<const uint32_t*>(p);
}

// A fragment of rows [row0, row0 + 16) x cols [k0, k0 + 16) from a row-major smem tile.
template <typename T, int LD>
__device__ __forceinline__ void frag_a(uint32_t (&a)[4], const T* s, int row0, int k0, int g, int t) {
    a[0] = ld32(s + (row0 + g) * LD + k0 + 2 * t);
    a[1] = ld32(s + (row0 + g + 8) * LD + k0 + 2 * t);
    a[2] = ld32(s + (row0 + g) * LD + k0 + 8 + 2 * t);
    a[3] = ld32(s + (row0 + g + 8) * LD + k0 + 8 + 2 * t);
}
// B fragment with B[k][n] = S[n][k] (k contiguous in smem): n = n0 + g, k = k0 + 2t (+8).
template <typename T, int LD>
__device__ __forceinline__ void frag_b_rows(uint32_t (&b)[2], const T* s, int n0, int k0, int g, int t) {
    b[0] = ld32(s + (n0 + g) * LD + k0 + 2 * t);
    b[1] = ld32(s + (n0 + g) * LD + k0 + 8 + 2 * t);
}
// B fragment with B[k][n] = S[k][n] (n contiguous in smem): k = k0 + 2t, 2t+1 (+8), n = n0 + g.
template <typename T, int LD>
__device__ __forceinline__ void frag_b_cols(uint32_t (&b)[2], const T* s, int k0, int n0, int g, int t) {
    const T* p = s + (k0 + 2 * t) * LD + n0 + g;
    b[0] = pack_raw(p[0], p[LD]);
    b[1] = pack_raw(p[8 * LD], p[9 * LD]);
}
// A fragment of k-step kk from the C fragments of a 16 x (8 * NT) score tile.
template <typename T, int NT>
__device__ __forceinline__ void frag_a_from_c(uint32_t (&a)[4], const float (&c)[NT][4], int kk) {
    a[0] = pack<T>(c[2 * kk][0], c[2 * kk][1]);
    a[1] = pack<T>(c[2 * kk][2], c[2 * kk][3]);
    a[2] = pack<T>(c[2 * kk + 1][0], c[2 * kk + 1][1]);
    a[3] = pack<T>(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

// acc (16 x 8*NT, C fragments) += A[row0 .. row0+16, 0..D] * B[0 .. 8*NT, 0..D]^T, both row-major in smem.
template <typename T, int LD, int D, int NT>
__device__ __forceinline__ void mma_abt(float (&acc)[NT][4], const T* A, int row0, const T* B, int g, int t) {
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
        uint32_t a[4];
        frag_a<T, LD>(a, A, row0, ks * 16, g, t);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            uint32_t b[2];
            frag_b_rows<T, LD>(b, B, nt * 8, ks * 16, g, t);
            mma_m16n8k16(acc[nt], a, b, T());
        }
    }
}

// acc (16 x D) += C (16 x 8*NT, from registers, rounded to T) * B[0 .. 8*NT, 0..D] (row-major smem).
template <typename T, int LD, int D, int NT>
__device__ __forceinline__ void mma_cb(float (&acc)[D / 8][4], const float (&c)[NT][4], const T* B, int g, int t) {
#pragma unroll
    for (int kk = 0; kk < NT / 2; ++kk) {
        uint32_t a[4];
        frag_a_from_c<T, NT>(a, c, kk);
#pragma unroll
        for (int dn = 0; dn < D / 8; ++dn) {
            uint32_t b[2];
            frag_b_cols<T, LD>(b, B, kk * 16, dn * 8, g, t);
            mma_m16n8k16(acc[dn], a, b, T());
        }
    }
}

// Copies rows [row0, row0 + ROWS) of head `head` of a [T, H, D] tensor into smem [ROWS][D + 8],
// zero-filling rows outside [lo, hi). 16-byte loads (the host checks 16-byte alignment).
template <typename T, int D, int ROWS>
__device__ __forceinline__ void load_rows(T* s, uint64_t gptr, int64_t row0, int64_t lo, int64_t hi, int heads, int head) {
    constexpr int CH = D / 8, LD = D + 8;
    const T* g = reinterpret_cast<const T*>(gptr);
    for (int idx = threadIdx.x; idx < ROWS * CH; idx += THREADS) {
        const int r = idx / CH, c = idx % CH;
        const int64_t tok = row0 + r;
        uint4 val = make_uint4(0u, 0u, 0u, 0u);
        if (tok >= lo && tok < hi) val = *reinterpret_cast<const uint4*>(g + (tok * heads + head) * D + c * 8);
        *reinterpret_cast<uint4*>(s + r * LD + c * 8) = val;
    }
}

struct Tile {
    int a, b, lo1, hi1, gend, min_lo2, rows_end;
};
// Reads and sanity-checks a tile entry; a malformed one is skipped (never indexes out of bounds).
__device__ __forceinline__ bool load_tile(const SharedPrefixAttentionParams& p, int64_t idx, Tile& t) {
    const int* e = reinterpret_cast<const int*>(p.tiles) + idx * PREFK_ATTN_TILE_FIELDS;
    t = {e[0], e[1], e[2], e[3], e[4], e[5], e[6]};
    return 0 <= t.lo1 && t.lo1 <= t.a && t.a < t.b && t.b <= t.gend && t.lo1 <= t.hi1 && t.hi1 <= t.gend &&
           t.gend <= p.n_tokens && t.rows_end <= t.gend && t.b - t.a <= BR;
}

// Key range `r` (0: prefix, 1: the tile's own responses) of query tile t.
__device__ __forceinline__ void key_range(const Tile& t, int r, int& k0, int& k1) {
    if (r == 0) {
        k0 = t.lo1;
        k1 = min(t.hi1, t.b);
    } else {
        k0 = max(t.hi1, t.min_lo2);
        k1 = t.b;
    }
}

__device__ __forceinline__ bool allowed(int row, int key, int hi1, int row_lo2) {
    return key <= row && (key < hi1 || key >= row_lo2);
}

// Query-tile scores (rows = this thread's two query rows, cols = keys c + 8 nt + 2t (+1)):
// scale to base 2 where allowed and inside the key range [.., k1), -inf elsewhere.
template <int NT>
__device__ __forceinline__ void mask_scores(float (&s)[NT][4], int c, int k1, const int (&rows)[2], const int (&rlo2)[2],
                                            const Tile& tl, float scale2, int t) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int ri = e >> 1, key = c + nt * 8 + 2 * t + (e & 1);
            const bool ok = key < k1 && rows[ri] < tl.b && allowed(rows[ri], key, tl.hi1, rlo2[ri]);
            s[nt][e] = ok ? s[nt][e] * scale2 : NEG_INF;
        }
}

template <typename T, int D> constexpr int fwd_smem() { return 3 * BR * (D + 8) * (int)sizeof(T); }
template <typename T, int D> constexpr int dq_smem() { return 4 * BR * (D + 8) * (int)sizeof(T); }
template <typename T, int D> constexpr int dkdv_smem() { return (2 * BC + 2 * BQ) * (D + 8) * (int)sizeof(T) + 2 * BQ * 4; }

// ---- forward -----------------------------------------------------------------------------------------
template <typename T, int D>
__device__ void forward(const SharedPrefixAttentionParams& p) {
    constexpr int LD = D + 8, NT = BC / 8, DN = D / 8;
    PREFK_DYNAMIC_SHARED(unsigned char, smem);
    T* Qs = reinterpret_cast<T*>(smem);
    T* Ks = Qs + BR * LD;
    T* Vs = Ks + BC * LD;
    Tile tl;
    if (!load_tile(p, blockIdx.x, tl)) return;
    const int h = blockIdx.y, kvh = h / (p.q_heads / p.kv_heads);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    const int* lo2 = reinterpret_cast<const int*>(p.seg_lo2);
    const float scale2 = p.scale * PREFK_LOG2E;
    load_rows<T, D, BR>(Qs, p.q, tl.a, tl.a, tl.b, p.q_heads, h);
    const int rows[2] = {tl.a + warp * 16 + g, tl.a + warp * 16 + g + 8};
    const int rlo2[2] = {rows[0] < tl.b ? lo2[rows[0]] : 0, rows[1] < tl.b ? lo2[rows[1]] : 0};

    float o[DN][4] = {};
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
    for (int r = 0; r < 2; ++r) {
        int k0, k1;
        key_range(tl, r, k0, k1);
        for (int c = k0; c < k1; c += BC) {
            __syncthreads();  // Q is loaded; the previous K/V tile is no longer read
            load_rows<T, D, BC>(Ks, p.k, c, k0, k1, p.kv_heads, kvh);
            load_rows<T, D, BC>(Vs, p.v, c, k0, k1, p.kv_heads, kvh);
            __syncthreads();
            // S = Q K^T for this warp's 16 rows x 64 keys; mask; online softmax (row max over the
            // quad of 4 threads sharing a row).
            float s[NT][4] = {};
            mma_abt<T, LD, D, NT>(s, Qs, warp * 16, Ks, g, tq);
            mask_scores<NT>(s, c, k1, rows, rlo2, tl, scale2, tq);
            float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) mx[e >> 1] = fmaxf(mx[e >> 1], s[nt][e]);
            float mu[2];
#pragma unroll
            for (int ri = 0; ri < 2; ++ri) {
                mx[ri] = fmaxf(mx[ri], __shfl_xor_sync(0xffffffffu, mx[ri], 1));
                mx[ri] = fmaxf(mx[ri], __shfl_xor_sync(0xffffffffu, mx[ri], 2));
                const float m_new = fmaxf(m[ri], mx[ri]);
                mu[ri] = m_new == NEG_INF ? 0.f : m_new;  // rows masked so far stay at 0
                const float corr = exp2f(m[ri] - mu[ri]);
                l[ri] *= corr;
#pragma unroll
                for (int dn = 0; dn < DN; ++dn) {
                    o[dn][2 * ri] *= corr;
                    o[dn][2 * ri + 1] *= corr;
                }
                m[ri] = m_new;
            }
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    s[nt][e] = exp2f(s[nt][e] - mu[e >> 1]);
                    l[e >> 1] += s[nt][e];
                }
            // O += P V (P from registers, V with 16-bit loads along keys).
            mma_cb<T, LD, D, NT>(o, s, Vs, g, tq);
        }
    }
    // Normalize and write O and LSE.
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        l[ri] += __shfl_xor_sync(0xffffffffu, l[ri], 1);
        l[ri] += __shfl_xor_sync(0xffffffffu, l[ri], 2);
        if (rows[ri] >= tl.b) continue;
        const float inv = 1.f / l[ri];
        T* orow = reinterpret_cast<T*>(p.o) + ((int64_t)rows[ri] * p.q_heads + h) * D;
#pragma unroll
        for (int dn = 0; dn < DN; ++dn)
            *reinterpret_cast<uint32_t*>(orow + dn * 8 + 2 * tq) = pack<T>(o[dn][2 * ri] * inv, o[dn][2 * ri + 1] * inv);
        if (tq == 0)
            reinterpret_cast<float*>(p.lse)[(int64_t)h * p.n_tokens + rows[ri]] = (m[ri] + log2f(l[ri])) * PREFK_LN2;
    }
}

// ---- backward: delta = rowsum(dO * O) ----------------------------------------------------------------
template <typename T, int D>
__device__ void preprocess(const SharedPrefixAttentionParams& p) {
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
    const int lane = threadIdx.x % 32;
    for (int64_t w = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; w < p.n_tokens * p.q_heads; w += warps) {
        const int64_t tok = w / p.q_heads;
        const int h = (int)(w % p.q_heads);
        const T* o = reinterpret_cast<const T*>(p.o) + w * D;
        const T* d = reinterpret_cast<const T*>(p.dout) + w * D;
        float acc = 0.f;
#pragma unroll
        for (int c = lane; c < D; c += 32) acc = fmaf(to_f32(o[c]), to_f32(d[c]), acc);
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
        if (lane == 0) reinterpret_cast<float*>(p.delta)[(int64_t)h * p.n_tokens + tok] = acc;
    }
}

// ---- backward: dQ per query tile ---------------------------------------------------------------------
template <typename T, int D>
__device__ void backward_dq(const SharedPrefixAttentionParams& p) {
    constexpr int LD = D + 8, NT = BC / 8, DN = D / 8;
    PREFK_DYNAMIC_SHARED(unsigned char, smem);
    T* Qs = reinterpret_cast<T*>(smem);
    T* dOs = Qs + BR * LD;
    T* Ks = dOs + BR * LD;
    T* Vs = Ks + BC * LD;
    Tile tl;
    if (!load_tile(p, blockIdx.x, tl)) return;
    const int h = blockIdx.y, kvh = h / (p.q_heads / p.kv_heads);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    const int* lo2 = reinterpret_cast<const int*>(p.seg_lo2);
    const float scale2 = p.scale * PREFK_LOG2E;
    load_rows<T, D, BR>(Qs, p.q, tl.a, tl.a, tl.b, p.q_heads, h);
    load_rows<T, D, BR>(dOs, p.dout, tl.a, tl.a, tl.b, p.q_heads, h);
    const int rows[2] = {tl.a + warp * 16 + g, tl.a + warp * 16 + g + 8};
    int rlo2[2];
    float lse2[2], delta[2];
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        const bool v = rows[ri] < tl.b;
        rlo2[ri] = v ? lo2[rows[ri]] : 0;
        lse2[ri] = v ? reinterpret_cast<const float*>(p.lse)[(int64_t)h * p.n_tokens + rows[ri]] * PREFK_LOG2E : 0.f;
        delta[ri] = v ? reinterpret_cast<const float*>(p.delta)[(int64_t)h * p.n_tokens + rows[ri]] : 0.f;
    }
    float dq[DN][4] = {};
    for (int r = 0; r < 2; ++r) {
        int k0, k1;
        key_range(tl, r, k0, k1);
        for (int c = k0; c < k1; c += BC) {
            __syncthreads();
            load_rows<T, D, BC>(Ks, p.k, c, k0, k1, p.kv_heads, kvh);
            load_rows<T, D, BC>(Vs, p.v, c, k0, k1, p.kv_heads, kvh);
            __syncthreads();
            float s[NT][4] = {}, dp[NT][4] = {};
            mma_abt<T, LD, D, NT>(s, Qs, warp * 16, Ks, g, tq);
            mma_abt<T, LD, D, NT>(dp, dOs, warp * 16, Vs, g, tq);
            mask_scores<NT>(s, c, k1, rows, rlo2, tl, scale2, tq);
            // dS = P (dP - delta), P recomputed from the final LSE (exp2(-inf) = 0 where masked).
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[nt][e] = exp2f(s[nt][e] - lse2[e >> 1]) * (dp[nt][e] - delta[e >> 1]);
            // dQ += dS K.
            mma_cb<T, LD, D, NT>(dq, s, Ks, g, tq);
        }
    }
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        if (rows[ri] >= tl.b) continue;
        T* out = reinterpret_cast<T*>(p.dq) + ((int64_t)rows[ri] * p.q_heads + h) * D;
#pragma unroll
        for (int dn = 0; dn < DN; ++dn)
            *reinterpret_cast<uint32_t*>(out + dn * 8 + 2 * tq) =
                pack<T>(dq[dn][2 * ri] * p.scale, dq[dn][2 * ri + 1] * p.scale);
    }
}

// ---- backward: dK, dV per key tile (all query heads of the GQA group, all rows that see it) ----------
template <typename T, int D>
__device__ void backward_dkdv(const SharedPrefixAttentionParams& p) {
    constexpr int LD = D + 8, NT = BQ / 8, DN = D / 8;
    PREFK_DYNAMIC_SHARED(unsigned char, smem);
    T* Ks = reinterpret_cast<T*>(smem);
    T* Vs = Ks + BC * LD;
    T* Qs = Vs + BC * LD;
    T* dOs = Qs + BQ * LD;
    float* lse_s = reinterpret_cast<float*>(dOs + BQ * LD);
    float* delta_s = lse_s + BQ;
    Tile tl;
    if (!load_tile(p, blockIdx.x, tl)) return;
    const int kvh = blockIdx.y, rep = p.q_heads / p.kv_heads;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    const int* lo2 = reinterpret_cast<const int*>(p.seg_lo2);
    const float scale2 = p.scale * PREFK_LOG2E;
    const int c = tl.a;  // keys [a, b)
    load_rows<T, D, BC>(Ks, p.k, c, tl.a, tl.b, p.kv_heads, kvh);
    load_rows<T, D, BC>(Vs, p.v, c, tl.a, tl.b, p.kv_heads, kvh);
    const int keys[2] = {c + warp * 16 + g, c + warp * 16 + g + 8};

    float dk[DN][4] = {}, dv[DN][4] = {};
    for (int hh = 0; hh < rep; ++hh) {
        const int h = kvh * rep + hh;
        for (int r = c; r < tl.rows_end; r += BQ) {
            __syncthreads();  // K/V loaded; the previous chunk is no longer read
            load_rows<T, D, BQ>(Qs, p.q, r, r, tl.rows_end, p.q_heads, h);
            load_rows<T, D, BQ>(dOs, p.dout, r, r, tl.rows_end, p.q_heads, h);
            if (threadIdx.x < BQ) {
                const int row = r + threadIdx.x;
                const bool v = row < tl.rows_end;
                lse_s[threadIdx.x] = v ? reinterpret_cast<const float*>(p.lse)[(int64_t)h * p.n_tokens + row] * PREFK_LOG2E : 0.f;
                delta_s[threadIdx.x] = v ? reinterpret_cast<const float*>(p.delta)[(int64_t)h * p.n_tokens + row] : 0.f;
            }
            __syncthreads();
            // S^T = K Q^T and dP^T = V dO^T: this warp's 16 keys x 32 query rows.
            float st[NT][4] = {}, dpt[NT][4] = {};
            mma_abt<T, LD, D, NT>(st, Ks, warp * 16, Qs, g, tq);
            mma_abt<T, LD, D, NT>(dpt, Vs, warp * 16, dOs, g, tq);
            // P^T and dS^T = P^T (dP^T - delta).
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int key = keys[e >> 1], qi = nt * 8 + 2 * tq + (e & 1), row = r + qi;
                    const bool ok = row < tl.rows_end && key < tl.b && allowed(row, key, tl.hi1, lo2[row < tl.rows_end ? row : 0]);
                    const float pr = ok ? exp2f(st[nt][e] * scale2 - lse_s[qi]) : 0.f;
                    st[nt][e] = pr;
                    dpt[nt][e] = pr * (dpt[nt][e] - delta_s[qi]);
                }
            // dV += P^T dO, dK += dS^T Q.
            mma_cb<T, LD, D, NT>(dv, st, dOs, g, tq);
            mma_cb<T, LD, D, NT>(dk, dpt, Qs, g, tq);
        }
    }
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        if (keys[ri] >= tl.b) continue;
        T* dko = reinterpret_cast<T*>(p.dk) + ((int64_t)keys[ri] * p.kv_heads + kvh) * D;
        T* dvo = reinterpret_cast<T*>(p.dv) + ((int64_t)keys[ri] * p.kv_heads + kvh) * D;
#pragma unroll
        for (int dn = 0; dn < DN; ++dn) {
            *reinterpret_cast<uint32_t*>(dko + dn * 8 + 2 * tq) = pack<T>(dk[dn][2 * ri] * p.scale, dk[dn][2 * ri + 1] * p.scale);
            *reinterpret_cast<uint32_t*>(dvo + dn * 8 + 2 * tq) = pack<T>(dv[dn][2 * ri], dv[dn][2 * ri + 1]);
        }
    }
}

}  // namespace attn

// ---- entry points ------------------------------------------------------------------------------------
#define PREFK_ATTN(DT, T, D)                                                          \
    PREFK_KERNEL(shared_prefix_attention_fwd_##DT##_d##D, SharedPrefixAttentionParams, attn::THREADS) {      \
        attn::forward<T, D>(p);                                                       \
    }                                                                                 \
    PREFK_KERNEL(shared_prefix_attention_bwd_dq_##DT##_d##D, SharedPrefixAttentionParams, attn::THREADS) {   \
        attn::backward_dq<T, D>(p);                                                   \
    }                                                                                 \
    PREFK_KERNEL(shared_prefix_attention_bwd_dkdv_##DT##_d##D, SharedPrefixAttentionParams, attn::THREADS) { \
        attn::backward_dkdv<T, D>(p);                                                 \
    }                                                                                 \
    PREFK_KERNEL(shared_prefix_attention_bwd_pre_##DT##_d##D, SharedPrefixAttentionParams, 256) {            \
        attn::preprocess<T, D>(p);                                                    \
    }

PREFK_ATTN(bf16, __nv_bfloat16, 64)
PREFK_ATTN(bf16, __nv_bfloat16, 128)
PREFK_ATTN(f16, __half, 64)
PREFK_ATTN(f16, __half, 128)

// Dynamic shared memory of each kernel. The host launches with the same sizes
// (src/shared_prefix_attention/launch.rs `dynamic_smem`, whose unit test pins these numbers too).
static_assert(attn::fwd_smem<__half, 64>() == 27648 && attn::fwd_smem<__half, 128>() == 52224, "fwd smem");
static_assert(attn::dq_smem<__half, 64>() == 36864 && attn::dq_smem<__half, 128>() == 69632, "dq smem");
static_assert(attn::dkdv_smem<__half, 64>() == 27904 && attn::dkdv_smem<__half, 128>() == 52480, "dkdv smem");
