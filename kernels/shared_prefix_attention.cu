// Shared-prefix group attention, forward and backward, on tensor cores (mma.sync m16n8k16,
// bf16/f16 in, f32 accumulate). Version 1: correctness first.
//
// Layout: packed token-major Q [T, Hq, d], K/V [T, Hkv, d]; groups [prefix | r_1 | ... | r_G];
// host-built tiles of 64 tokens never cross a group boundary. Mask (two-interval form):
//   allowed(i, j) = lo1 <= j <= i and (j < hi1 or j >= lo2[i])   (lo1/hi1: the group's prefix)
// Forward (grid: tiles x Hq, 4 warps, 16 query rows per warp; v2 at d = 64: 32, two plan tiles
// joined): one online softmax over two disjoint key ranges, the prefix [lo1, min(hi1, b)) and the
// tile's own responses [max(hi1, min lo2), b) (its BC-key tiles on a grid from hi1);
// O = acc / l, LSE = natural-log row logsumexp.
// Backward (deterministic, no atomics; FA2 recurrence with the final O and LSE):
//   preprocess: delta = rowsum(dO * O);
//   dK/dV (grid: tiles x Hkv): a CTA owns a key tile and loops over the GQA group's query heads
//     and every query chunk that can see the tile; a prefix key tile is seen by every later row of
//     the group, so the sum over all G responses happens in its registers;
//   dQ (grid: tiles x Hq): the forward's loop structure, recomputing P and dP.
// Forward v3 (sm_90a only): v2's loop for one warpgroup with both GEMMs on wgmma (see its section).
#include "common.cuh"

// Launch bounds of the dQ kernel. ptxas's own register cap (for three blocks per SM at d128: 168)
// fits on sm_80 and sm_90; on sm_100 the d128 kernel spilled under it, so there it is built for two
// blocks per SM (up to 255 registers; its 68 KiB of shared memory allows two anyway).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 1000
#define PREFK_ATTN_DQ_BOUNDS attn::THREADS, 2
#else
#define PREFK_ATTN_DQ_BOUNDS attn::THREADS
#endif

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

// Key range `r` (0: prefix, 1: the tile's own responses) of query tile t. Both are cut into
// BC-key tiles on grids anchored at the group start and at the prefix end, so the key tiles a row
// visits differ between query tilings only by tiles wholly masked for it (exact no-ops in the
// online softmax): a row's bits do not depend on which query tile holds it, and the forward on
// 128-row tiles gives v1's. The response range starts at the grid line at or below the tile's
// least own-segment start; the keys before that start are masked for every row of the tile.
__device__ __forceinline__ void key_range(const Tile& t, int r, int& k0, int& k1) {
    if (r == 0) {
        k0 = t.lo1;
        k1 = min(t.hi1, t.b);
    } else {
        k0 = t.hi1 + ((max(t.hi1, t.min_lo2) - t.hi1) & ~(BC - 1));  // BC is a power of 2
        k1 = t.b;
    }
}

// The key tiles a query tile visits, in order: its prefix range, then its responses' range, BC keys
// each (scalars, not arrays indexed by the range: those would live in local memory).
struct KeyTiles {
    int a0, a1, b0, b1, n0, total;
    // Tile i: its first key c, its range's start lo and end k1.
    __device__ __forceinline__ void at(int i, int& c, int& lo, int& k1) const {
        const bool first = i < n0;
        lo = first ? a0 : b0;
        k1 = first ? a1 : b1;
        c = lo + (first ? i : i - n0) * BC;
    }
    __device__ __forceinline__ bool prefix(int i) const { return i < n0; }
};
__device__ __forceinline__ KeyTiles key_tiles(const Tile& tl) {
    KeyTiles k;
    key_range(tl, 0, k.a0, k.a1);
    key_range(tl, 1, k.b0, k.b1);
    k.n0 = k.a1 > k.a0 ? (k.a1 - k.a0 + BC - 1) / BC : 0;
    k.total = k.n0 + (k.b1 > k.b0 ? (k.b1 - k.b0 + BC - 1) / BC : 0);
    return k;
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

// One tile's online-softmax step for a warp's two rows per thread: the row max over the quad of 4
// threads sharing a row, the running max m (rows masked so far stay at 0), the rescale of l and
// O, and P = exp2(S - m) in place of S with its row sum added to l.
template <int NT, int DN>
__device__ __forceinline__ void online_softmax(float (&s)[NT][4], float (&m)[2], float (&l)[2], float (&o)[DN][4]) {
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
        mu[ri] = m_new == NEG_INF ? 0.f : m_new;
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
}

// O = acc / l and LSE (natural log) of this thread's two rows below `end`.
template <typename T, int D>
__device__ __forceinline__ void write_o_lse(const SharedPrefixAttentionParams& p, const float (&o)[D / 8][4],
                                            const float (&m)[2], float (&l)[2], const int (&rows)[2], int end, int h,
                                            int tq) {
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        l[ri] += __shfl_xor_sync(0xffffffffu, l[ri], 1);
        l[ri] += __shfl_xor_sync(0xffffffffu, l[ri], 2);
        if (rows[ri] >= end) continue;
        const float inv = 1.f / l[ri];
        T* orow = reinterpret_cast<T*>(p.o) + ((int64_t)rows[ri] * p.q_heads + h) * D;
#pragma unroll
        for (int dn = 0; dn < D / 8; ++dn)
            *reinterpret_cast<uint32_t*>(orow + dn * 8 + 2 * tq) = pack<T>(o[dn][2 * ri] * inv, o[dn][2 * ri + 1] * inv);
        if (tq == 0)
            reinterpret_cast<float*>(p.lse)[(int64_t)h * p.n_tokens + rows[ri]] = (m[ri] + log2f(l[ri])) * PREFK_LN2;
    }
}

// dQ (times the softmax scale) of this thread's two rows below `end`.
template <typename T, int D>
__device__ __forceinline__ void write_dq(const SharedPrefixAttentionParams& p, const float (&dq)[D / 8][4],
                                         const int (&rows)[2], int end, int h, int tq) {
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        if (rows[ri] >= end) continue;
        T* out = reinterpret_cast<T*>(p.dq) + ((int64_t)rows[ri] * p.q_heads + h) * D;
#pragma unroll
        for (int dn = 0; dn < D / 8; ++dn)
            *reinterpret_cast<uint32_t*>(out + dn * 8 + 2 * tq) =
                pack<T>(dq[dn][2 * ri] * p.scale, dq[dn][2 * ri + 1] * p.scale);
    }
}

// dK (times the scale) and dV of this thread's two keys below `end`.
template <typename T, int D>
__device__ __forceinline__ void write_dk_dv(const SharedPrefixAttentionParams& p, const float (&dk)[D / 8][4],
                                            const float (&dv)[D / 8][4], const int (&keys)[2], int end, int kvh,
                                            int tq) {
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        if (keys[ri] >= end) continue;
        T* dko = reinterpret_cast<T*>(p.dk) + ((int64_t)keys[ri] * p.kv_heads + kvh) * D;
        T* dvo = reinterpret_cast<T*>(p.dv) + ((int64_t)keys[ri] * p.kv_heads + kvh) * D;
#pragma unroll
        for (int dn = 0; dn < D / 8; ++dn) {
            *reinterpret_cast<uint32_t*>(dko + dn * 8 + 2 * tq) = pack<T>(dk[dn][2 * ri] * p.scale, dk[dn][2 * ri + 1] * p.scale);
            *reinterpret_cast<uint32_t*>(dvo + dn * 8 + 2 * tq) = pack<T>(dv[dn][2 * ri], dv[dn][2 * ri + 1]);
        }
    }
}

// A dQ kernel's per-row inputs for this thread's two rows (0 past the tile): lo2, the LSE in
// base 2 and delta = rowsum(dO * O).
__device__ __forceinline__ void dq_row_stats(const SharedPrefixAttentionParams& p, const int (&rows)[2], int end, int h,
                                             const int* lo2, int (&rlo2)[2], float (&lse2)[2], float (&delta)[2]) {
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        const bool v = rows[ri] < end;
        rlo2[ri] = v ? lo2[rows[ri]] : 0;
        lse2[ri] = v ? reinterpret_cast<const float*>(p.lse)[(int64_t)h * p.n_tokens + rows[ri]] * PREFK_LOG2E : 0.f;
        delta[ri] = v ? reinterpret_cast<const float*>(p.delta)[(int64_t)h * p.n_tokens + rows[ri]] : 0.f;
    }
}

// dS = P (dP - delta) in place of the (scaled, masked) scores, P recomputed from the final LSE
// (exp2(-inf) = 0 where masked).
template <int NT>
__device__ __forceinline__ void grad_scores(float (&s)[NT][4], const float (&dp)[NT][4], const float (&lse2)[2],
                                            const float (&delta)[2]) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] = exp2f(s[nt][e] - lse2[e >> 1]) * (dp[nt][e] - delta[e >> 1]);
}

// The dK/dV kernel's transposed tile (this warp's keys x BQ query rows from r): P^T in place of
// S^T and dS^T = P^T (dP^T - delta) in place of dP^T, masked per element.
template <int NT>
__device__ __forceinline__ void transposed_grad_scores(float (&st)[NT][4], float (&dpt)[NT][4], const int (&keys)[2],
                                                       int r, const Tile& tl, const int* lo2, const float* lse_s,
                                                       const float* delta_s, float scale2, int tq) {
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
}

// The dK/dV kernels' query chunks of a key tile starting at key c, in v1's order: chunk j is query
// head kvh * rep + j / per_head of the GQA group, rows r .. r + BQ from c.
struct DkDvChunks {
    int c, kvh, rep, per_head, total;
    __device__ __forceinline__ void at(int j, int& h, int& r) const {
        h = kvh * rep + j / per_head;
        r = c + (j % per_head) * BQ;
    }
};
__device__ __forceinline__ DkDvChunks dkdv_chunks(const Tile& tl, int kvh, int rep) {
    const int per_head = tl.rows_end > tl.a ? (tl.rows_end - tl.a + BQ - 1) / BQ : 0;
    return DkDvChunks{tl.a, kvh, rep, per_head, rep * per_head};
}
// Stages a chunk's per-row LSE (base 2) and delta in shared memory (0 past rows_end), by the
// block's first BQ threads.
__device__ __forceinline__ void stage_chunk_stats(const SharedPrefixAttentionParams& p, int h, int r, int rows_end,
                                                  float* lse_s, float* delta_s) {
    if (threadIdx.x < BQ) {
        const int row = r + threadIdx.x;
        const bool v = row < rows_end;
        lse_s[threadIdx.x] = v ? reinterpret_cast<const float*>(p.lse)[(int64_t)h * p.n_tokens + row] * PREFK_LOG2E : 0.f;
        delta_s[threadIdx.x] = v ? reinterpret_cast<const float*>(p.delta)[(int64_t)h * p.n_tokens + row] : 0.f;
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
    const KeyTiles kt = key_tiles(tl);
    for (int i = 0; i < kt.total; ++i) {
        int c, k0, k1;
        kt.at(i, c, k0, k1);
        __syncthreads();  // Q is loaded; the previous K/V tile is no longer read
        load_rows<T, D, BC>(Ks, p.k, c, k0, k1, p.kv_heads, kvh);
        load_rows<T, D, BC>(Vs, p.v, c, k0, k1, p.kv_heads, kvh);
        __syncthreads();
        // S = Q K^T for this warp's 16 rows x 64 keys; mask; online softmax (row max over the
        // quad of 4 threads sharing a row).
        float s[NT][4] = {};
        mma_abt<T, LD, D, NT>(s, Qs, warp * 16, Ks, g, tq);
        mask_scores<NT>(s, c, k1, rows, rlo2, tl, scale2, tq);
        online_softmax<NT, DN>(s, m, l, o);
        // O += P V (P from registers, V with 16-bit loads along keys).
        mma_cb<T, LD, D, NT>(o, s, Vs, g, tq);
    }
    write_o_lse<T, D>(p, o, m, l, rows, tl.b, h, tq);
}

// ---- forward v2 ---------------------------------------------------------------------------------------
// The same mask and arithmetic as v1, in the same order per row (so the same bits), fed faster:
// K/V tiles double-buffered with cp.async (the next tile's copies in flight while this one is
// used), every mma operand loaded with ldmatrix (Q and K as stored, V transposed), a key tile
// that no row of a warp masks skips the mask arithmetic (decided per warp, so never divergent),
// and at d = 64 128-row query tiles: two 16-row slabs per warp share each K/V fragment.

// Issues the cp.async copies of rows [row0, row0 + ROWS) of head `head` into smem [ROWS][D + 8];
// rows outside [lo, hi) are zero-filled (their source address stays the tensor's first row).
template <typename T, int D, int ROWS>
__device__ __forceinline__ void load_rows_async(T* s, uint64_t gptr, int64_t row0, int64_t lo, int64_t hi, int heads,
                                                int head) {
    constexpr int CH = D / 8, LD = D + 8;
    const T* g = reinterpret_cast<const T*>(gptr);
    for (int idx = threadIdx.x; idx < ROWS * CH; idx += THREADS) {
        const int r = idx / CH, c = idx % CH;
        const int64_t tok = row0 + r;
        const bool ok = tok >= lo && tok < hi;
        cp_async_16(s + r * LD + c * 8, ok ? g + (tok * heads + head) * D + c * 8 : g, ok);
    }
}

// A fragment (16 x 16 at row0, k0) of a row-major smem tile: one ldmatrix.x4 (matrices: rows
// 0-7 / 8-15 at cols k0, then the same at k0 + 8; the mma A register order).
template <typename T, int LD>
__device__ __forceinline__ void ldsm_a(uint32_t (&a)[4], const T* s, int row0, int k0, int lane) {
    const int r = row0 + (lane & 7) + ((lane >> 3) & 1) * 8, c = k0 + (lane >> 4) * 8;
    ldmatrix_x4(a, s + r * LD + c);
}
// B fragments of two 8-key n-tiles (keys n0 .. n0 + 16) at k0 from K rows (k contiguous): one
// ldmatrix.x4 (matrices: keys n0 + 0-7 at k0, k0 + 8; keys n0 + 8-15 at k0, k0 + 8).
template <typename T, int LD>
__device__ __forceinline__ void ldsm_b_rows(uint32_t (&b0)[2], uint32_t (&b1)[2], const T* s, int n0, int k0, int lane) {
    const int r = n0 + (lane & 7) + (lane >> 4) * 8, c = k0 + ((lane >> 3) & 1) * 8;
    uint32_t x[4];
    ldmatrix_x4(x, s + r * LD + c);
    b0[0] = x[0];
    b0[1] = x[1];
    b1[0] = x[2];
    b1[1] = x[3];
}
// B fragments of two 8-column n-tiles (cols n0 .. n0 + 16) at keys k0 .. k0 + 16 from V rows (n
// contiguous): one ldmatrix.x4.trans (matrices: keys k0 + 0-7, k0 + 8-15 at n0; the same at n0 + 8).
template <typename T, int LD>
__device__ __forceinline__ void ldsm_b_cols(uint32_t (&b0)[2], uint32_t (&b1)[2], const T* s, int k0, int n0, int lane) {
    const int r = k0 + (lane & 7) + ((lane >> 3) & 1) * 8, c = n0 + (lane >> 4) * 8;
    uint32_t x[4];
    ldmatrix_x4_trans(x, s + r * LD + c);
    b0[0] = x[0];
    b0[1] = x[1];
    b1[0] = x[2];
    b1[1] = x[3];
}

// mma_abt with ldmatrix operands for MS 16-row slabs of A at row0, row0 + 16, ..: acc[j] (16 x
// 8*NT) += A[row0 + 16 j .., 0..D] B[0 .. 8*NT, 0..D]^T. Each B fragment is loaded once for all
// slabs; every acc element gets the same mma sequence as with one slab (the same bits).
template <typename T, int LD, int D, int NT, int MS>
__device__ __forceinline__ void mma_abt_ldsm_slabs(float (&acc)[MS][NT][4], const T* A, int row0, const T* B, int lane) {
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
        uint32_t a[MS][4];
#pragma unroll
        for (int j = 0; j < MS; ++j) ldsm_a<T, LD>(a[j], A, row0 + 16 * j, ks * 16, lane);
#pragma unroll
        for (int nt = 0; nt < NT; nt += 2) {
            uint32_t b0[2], b1[2];
            ldsm_b_rows<T, LD>(b0, b1, B, nt * 8, ks * 16, lane);
#pragma unroll
            for (int j = 0; j < MS; ++j) {
                mma_m16n8k16(acc[j][nt], a[j], b0, T());
                mma_m16n8k16(acc[j][nt + 1], a[j], b1, T());
            }
        }
    }
}
// mma_cb with ldmatrix.trans operands for MS slabs: acc[j] (16 x D) += C[j] (16 x 8*NT) B[0 .. 8*NT,
// 0..D], each B fragment loaded once for all slabs.
template <typename T, int LD, int D, int NT, int MS>
__device__ __forceinline__ void mma_cb_ldsm_slabs(float (&acc)[MS][D / 8][4], const float (&c)[MS][NT][4], const T* B,
                                                  int lane) {
#pragma unroll
    for (int kk = 0; kk < NT / 2; ++kk) {
        uint32_t a[MS][4];
#pragma unroll
        for (int j = 0; j < MS; ++j) frag_a_from_c<T, NT>(a[j], c[j], kk);
#pragma unroll
        for (int dn = 0; dn < D / 8; dn += 2) {
            uint32_t b0[2], b1[2];
            ldsm_b_cols<T, LD>(b0, b1, B, kk * 16, dn * 8, lane);
#pragma unroll
            for (int j = 0; j < MS; ++j) {
                mma_m16n8k16(acc[j][dn], a[j], b0, T());
                mma_m16n8k16(acc[j][dn + 1], a[j], b1, T());
            }
        }
    }
}
// One-slab forms (the backward kernels).
template <typename T, int LD, int D, int NT>
__device__ __forceinline__ void mma_abt_ldsm(float (&acc)[NT][4], const T* A, int row0, const T* B, int lane) {
    mma_abt_ldsm_slabs<T, LD, D, NT, 1>(reinterpret_cast<float (&)[1][NT][4]>(acc), A, row0, B, lane);
}
template <typename T, int LD, int D, int NT>
__device__ __forceinline__ void mma_cb_ldsm(float (&acc)[D / 8][4], const float (&c)[NT][4], const T* B, int lane) {
    mma_cb_ldsm_slabs<T, LD, D, NT, 1>(reinterpret_cast<float (&)[1][D / 8][4]>(acc),
                                       reinterpret_cast<const float (&)[1][NT][4]>(c), B, lane);
}

// A warp's 16 query rows: its first row and the largest lo2 among them. A key tile [c, c + BC)
// inside its range [.., k1) is unmasked for every row of the warp when the warp's rows are all in
// the tile, c + BC - 1 <= the first row (causal), and, in the responses' range, c >= that lo2
// (past the other responses). A warp-uniform decision.
struct WarpRows {
    int first, lo2_max;
    bool full;
    __device__ __forceinline__ bool unmasked(int c, int k1, bool prefix_range) const {
        return full && c + BC <= k1 && c + BC - 1 <= first && (prefix_range || c >= lo2_max);
    }
};
__device__ __forceinline__ WarpRows warp_rows(const Tile& tl, int first, const int (&rlo2)[2]) {
    int m = max(rlo2[0], rlo2[1]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, off));
    return WarpRows{first, m, first + 16 <= tl.b};
}

// Scores to base 2: scaled everywhere when the tile is unmasked for the warp, else masked as v1.
template <int NT>
__device__ __forceinline__ void scale_or_mask(float (&s)[NT][4], bool unmasked, int c, int k1, const int (&rows)[2],
                                              const int (&rlo2)[2], const Tile& tl, float scale2, int t) {
    if (unmasked) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[nt][e] *= scale2;
    } else {
        mask_scores<NT>(s, c, k1, rows, rlo2, tl, scale2, t);
    }
}

// Query slabs per warp of the forward v2: 2 (128-row query tiles, FA2's shape) where the
// registers allow two CTAs per SM: d = 64 (235 registers on sm_90); at d = 128 two slabs take all
// 255 and still spill (58 local-memory instructions on sm_90), so 1 (64-row tiles, 181).
template <int D> constexpr int FWD_V2_SLABS = D <= 64 ? 2 : 1;
template <typename T, int D> constexpr int fwd_v2_smem() {
    return (BR * FWD_V2_SLABS<D> + 4 * BC) * (D + 8) * (int)sizeof(T);
}

// 128-row query tiles from the host's 64-row plan: the tiles at even and odd 64-row offsets of a
// group, adjacent in the list, form one. The CTA of the second exits; every tile is computed by
// exactly one CTA whatever the list holds (a tile at an even offset is never the second of a pair,
// so a pair's first is never taken by its own predecessor).
__device__ __forceinline__ bool pairs_with(const Tile& x, const Tile& y) {
    return x.b == y.a && x.b - x.a == BR && (x.a - x.lo1) % (2 * BR) == 0 && x.lo1 == y.lo1 && x.hi1 == y.hi1 &&
           x.gend == y.gend;
}
// The query tile CTA `idx` computes: tile idx, joined with tile idx + 1 when they pair (false: none).
template <int MS>
__device__ __forceinline__ bool query_tile(const SharedPrefixAttentionParams& p, int64_t idx, Tile& t) {
    if (!load_tile(p, idx, t)) return false;
    if (MS == 1) return true;
    Tile o;
    if (idx > 0 && load_tile(p, idx - 1, o) && pairs_with(o, t)) return false;  // the previous CTA's
    if (idx + 1 < p.n_tiles && load_tile(p, idx + 1, o) && pairs_with(t, o)) {
        // The least own-segment start of the pair's response rows: the first tile's if it has any.
        if (t.b <= t.hi1) t.min_lo2 = o.min_lo2;
        t.b = o.b;
        t.rows_end = max(t.rows_end, o.rows_end);
    }
    return true;
}

template <typename T, int D>
__device__ void forward_v2(const SharedPrefixAttentionParams& p) {
    constexpr int LD = D + 8, NT = BC / 8, DN = D / 8, MS = FWD_V2_SLABS<D>, ROWS = BR * MS;
    PREFK_DYNAMIC_SHARED(unsigned char, smem);
    T* Qs = reinterpret_cast<T*>(smem);
    T* Ks = Qs + ROWS * LD;    // [2][BC][LD]
    T* Vs = Ks + 2 * BC * LD;  // [2][BC][LD]
    Tile tl;
    if (!query_tile<MS>(p, blockIdx.x, tl)) return;
    const int h = blockIdx.y, kvh = h / (p.q_heads / p.kv_heads);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    const int* lo2 = reinterpret_cast<const int*>(p.seg_lo2);
    const float scale2 = p.scale * PREFK_LOG2E;
    // Slab j of this warp: query rows first + 16 j + [0, 16) of the tile.
    const int first = tl.a + warp * 16 * MS;
    int rows[MS][2], rlo2[MS][2];
    WarpRows wr[MS];
#pragma unroll
    for (int j = 0; j < MS; ++j) {
#pragma unroll
        for (int ri = 0; ri < 2; ++ri) {
            rows[j][ri] = first + 16 * j + g + 8 * ri;
            rlo2[j][ri] = rows[j][ri] < tl.b ? lo2[rows[j][ri]] : 0;
        }
        wr[j] = warp_rows(tl, first + 16 * j, rlo2[j]);
    }
    const KeyTiles kt = key_tiles(tl);
    auto issue = [&](int i) {
        int c, lo, k1;
        kt.at(i, c, lo, k1);
        load_rows_async<T, D, BC>(Ks + (i & 1) * BC * LD, p.k, c, lo, k1, p.kv_heads, kvh);
        load_rows_async<T, D, BC>(Vs + (i & 1) * BC * LD, p.v, c, lo, k1, p.kv_heads, kvh);
    };
    const int total = kt.total;
    load_rows_async<T, D, ROWS>(Qs, p.q, tl.a, tl.a, tl.b, p.q_heads, h);
    if (total > 0) issue(0);
    cp_async_commit();

    float o[MS][DN][4] = {};
    float m[MS][2], l[MS][2];
#pragma unroll
    for (int j = 0; j < MS; ++j) m[j][0] = m[j][1] = NEG_INF, l[j][0] = l[j][1] = 0.f;
    for (int i = 0; i < total; ++i) {
        // Tile i + 1's copies go out before tile i is used; its buffer was last read in iteration
        // i - 1, which every thread has left (the barrier at the end of the loop body).
        if (i + 1 < total) issue(i + 1);
        cp_async_commit();
        cp_async_wait<1>();  // Q and tile i have landed (this thread's copies)
        __syncthreads();     // ... and every other thread's
        int c, lo, k1;
        kt.at(i, c, lo, k1);
        const T* kb = Ks + (i & 1) * BC * LD;
        const T* vb = Vs + (i & 1) * BC * LD;
        float s[MS][NT][4] = {};
        mma_abt_ldsm_slabs<T, LD, D, NT, MS>(s, Qs, warp * 16 * MS, kb, lane);
#pragma unroll
        for (int j = 0; j < MS; ++j) {
            scale_or_mask<NT>(s[j], wr[j].unmasked(c, k1, kt.prefix(i)), c, k1, rows[j], rlo2[j], tl, scale2, tq);
            online_softmax<NT, DN>(s[j], m[j], l[j], o[j]);
        }
        mma_cb_ldsm_slabs<T, LD, D, NT, MS>(o, s, vb, lane);
        __syncthreads();  // every warp is done with this buffer before tile i + 2 overwrites it
    }
    cp_async_wait<0>();  // nothing may be left in flight into shared memory at exit
#pragma unroll
    for (int j = 0; j < MS; ++j) write_o_lse<T, D>(p, o[j], m[j], l[j], rows[j], tl.b, h, tq);
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
    dq_row_stats(p, rows, tl.b, h, lo2, rlo2, lse2, delta);
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
            grad_scores<NT>(s, dp, lse2, delta);
            // dQ += dS K.
            mma_cb<T, LD, D, NT>(dq, s, Ks, g, tq);
        }
    }
    write_dq<T, D>(p, dq, rows, tl.b, h, tq);
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
            stage_chunk_stats(p, h, r, tl.rows_end, lse_s, delta_s);
            __syncthreads();
            // S^T = K Q^T and dP^T = V dO^T: this warp's 16 keys x 32 query rows.
            float st[NT][4] = {}, dpt[NT][4] = {};
            mma_abt<T, LD, D, NT>(st, Ks, warp * 16, Qs, g, tq);
            mma_abt<T, LD, D, NT>(dpt, Vs, warp * 16, dOs, g, tq);
            transposed_grad_scores<NT>(st, dpt, keys, r, tl, lo2, lse_s, delta_s, scale2, tq);
            // dV += P^T dO, dK += dS^T Q.
            mma_cb<T, LD, D, NT>(dv, st, dOs, g, tq);
            mma_cb<T, LD, D, NT>(dk, dpt, Qs, g, tq);
        }
    }
    write_dk_dv<T, D>(p, dk, dv, keys, tl.b, kvh, tq);
}

// ---- backward v2: dQ and dK/dV with v1's arithmetic in v1's order (the same bits), fed as the
// forward v2 is: cp.async double buffers of the streamed operand, ldmatrix fragments. --------------
template <typename T, int D> constexpr int dq_v2_smem() { return (2 * BR + 3 * BC) * (D + 8) * (int)sizeof(T); }
template <typename T, int D> constexpr int dkdv_v2_smem() {
    return (2 * BC + 4 * BQ) * (D + 8) * (int)sizeof(T) + 2 * BQ * 4;
}

template <typename T, int D>
__device__ void backward_dq_v2(const SharedPrefixAttentionParams& p) {
    constexpr int LD = D + 8, NT = BC / 8, DN = D / 8;
    PREFK_DYNAMIC_SHARED(unsigned char, smem);
    T* Qs = reinterpret_cast<T*>(smem);
    T* dOs = Qs + BR * LD;
    T* Ks = dOs + BR * LD;     // [2][BC][LD]
    T* Vs = Ks + 2 * BC * LD;  // [BC][LD]: one buffer, so d = 128 fits the 99 KiB of sm_86/89/120
    Tile tl;
    if (!load_tile(p, blockIdx.x, tl)) return;
    const int h = blockIdx.y, kvh = h / (p.q_heads / p.kv_heads);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    const int* lo2 = reinterpret_cast<const int*>(p.seg_lo2);
    const float scale2 = p.scale * PREFK_LOG2E;
    const int rows[2] = {tl.a + warp * 16 + g, tl.a + warp * 16 + g + 8};
    int rlo2[2];
    float lse2[2], delta[2];
    dq_row_stats(p, rows, tl.b, h, lo2, rlo2, lse2, delta);
    const WarpRows wr = warp_rows(tl, tl.a + warp * 16, rlo2);
    const KeyTiles kt = key_tiles(tl);
    // K tiles are double-buffered (tile i + 1's copies in flight during tile i); V, read only by
    // dP = dO V^T at the start of a tile, has one buffer: tile i + 1's V copies go out once every
    // warp has read tile i's (the barrier after dP), overlapping dS and dQ += dS K.
    auto issue = [&](int i, bool k_tile) {
        int c, lo, k1;
        kt.at(i, c, lo, k1);
        if (k_tile) load_rows_async<T, D, BC>(Ks + (i & 1) * BC * LD, p.k, c, lo, k1, p.kv_heads, kvh);
        else load_rows_async<T, D, BC>(Vs, p.v, c, lo, k1, p.kv_heads, kvh);
    };
    load_rows_async<T, D, BR>(Qs, p.q, tl.a, tl.a, tl.b, p.q_heads, h);
    load_rows_async<T, D, BR>(dOs, p.dout, tl.a, tl.a, tl.b, p.q_heads, h);
    if (kt.total > 0) {
        issue(0, true);
        issue(0, false);
    }
    cp_async_commit();
    float dq[DN][4] = {};
    for (int i = 0; i < kt.total; ++i) {
        // Groups per iteration: [K(i + 1)] here, [V(i + 1)] after dP. Waiting for all but the
        // newest completes K(i) and V(i).
        if (i + 1 < kt.total) issue(i + 1, true);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        int c, lo, k1;
        kt.at(i, c, lo, k1);
        const T* kb = Ks + (i & 1) * BC * LD;
        float s[NT][4] = {}, dp[NT][4] = {};
        mma_abt_ldsm<T, LD, D, NT>(s, Qs, warp * 16, kb, lane);
        mma_abt_ldsm<T, LD, D, NT>(dp, dOs, warp * 16, Vs, lane);
        __syncthreads();  // every warp has read V(i)
        if (i + 1 < kt.total) issue(i + 1, false);
        cp_async_commit();
        scale_or_mask<NT>(s, wr.unmasked(c, k1, kt.prefix(i)), c, k1, rows, rlo2, tl, scale2, tq);
        grad_scores<NT>(s, dp, lse2, delta);
        mma_cb_ldsm<T, LD, D, NT>(dq, s, kb, lane);
        __syncthreads();
    }
    cp_async_wait<0>();
    write_dq<T, D>(p, dq, rows, tl.b, h, tq);
}

template <typename T, int D>
__device__ void backward_dkdv_v2(const SharedPrefixAttentionParams& p) {
    constexpr int LD = D + 8, NT = BQ / 8, DN = D / 8;
    PREFK_DYNAMIC_SHARED(unsigned char, smem);
    T* Ks = reinterpret_cast<T*>(smem);
    T* Vs = Ks + BC * LD;
    T* Qs = Vs + BC * LD;       // [2][BQ][LD]
    T* dOs = Qs + 2 * BQ * LD;  // [2][BQ][LD]
    float* lse_s = reinterpret_cast<float*>(dOs + 2 * BQ * LD);
    float* delta_s = lse_s + BQ;
    Tile tl;
    if (!load_tile(p, blockIdx.x, tl)) return;
    const int kvh = blockIdx.y, rep = p.q_heads / p.kv_heads;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    const int* lo2 = reinterpret_cast<const int*>(p.seg_lo2);
    const float scale2 = p.scale * PREFK_LOG2E;
    const int c = tl.a;  // keys [a, b)
    const int keys[2] = {c + warp * 16 + g, c + warp * 16 + g + 8};
    const DkDvChunks ch = dkdv_chunks(tl, kvh, rep);
    const int total = ch.total;
    auto issue = [&](int j) {
        int h, r;
        ch.at(j, h, r);
        load_rows_async<T, D, BQ>(Qs + (j & 1) * BQ * LD, p.q, r, r, tl.rows_end, p.q_heads, h);
        load_rows_async<T, D, BQ>(dOs + (j & 1) * BQ * LD, p.dout, r, r, tl.rows_end, p.q_heads, h);
    };
    load_rows_async<T, D, BC>(Ks, p.k, c, tl.a, tl.b, p.kv_heads, kvh);
    load_rows_async<T, D, BC>(Vs, p.v, c, tl.a, tl.b, p.kv_heads, kvh);
    if (total > 0) issue(0);
    cp_async_commit();
    float dk[DN][4] = {}, dv[DN][4] = {};
    for (int j = 0; j < total; ++j) {
        if (j + 1 < total) issue(j + 1);
        cp_async_commit();
        int h, r;
        ch.at(j, h, r);
        stage_chunk_stats(p, h, r, tl.rows_end, lse_s, delta_s);  // last read in chunk j - 1, behind its barrier
        cp_async_wait<1>();
        __syncthreads();
        const T* qb = Qs + (j & 1) * BQ * LD;
        const T* dob = dOs + (j & 1) * BQ * LD;
        float st[NT][4] = {}, dpt[NT][4] = {};
        mma_abt_ldsm<T, LD, D, NT>(st, Ks, warp * 16, qb, lane);
        mma_abt_ldsm<T, LD, D, NT>(dpt, Vs, warp * 16, dob, lane);
        transposed_grad_scores<NT>(st, dpt, keys, r, tl, lo2, lse_s, delta_s, scale2, tq);
        mma_cb_ldsm<T, LD, D, NT>(dv, st, dob, lane);
        mma_cb_ldsm<T, LD, D, NT>(dk, dpt, qb, lane);
        __syncthreads();
    }
    cp_async_wait<0>();
    write_dk_dv<T, D>(p, dk, dv, keys, tl.b, kvh, tq);
}


// ---- v3 (sm_90a): every GEMM on wgmma -------------------------------------------------------------------
// v2's loop for one warpgroup (the CTA's 4 warps, 64 query rows of a plan tile): S = Q K^T is
// wgmma.m64n64k16 with Q's fragments in registers (ldmatrix per tile) and K by descriptor; O += P V is
// wgmma.m64nDk16 with P in registers (the S accumulators rounded to T: wgmma's D layout is mma's C
// per 8-column block, so v2's mask and online softmax run on it unchanged) and V by descriptor,
// transposed; tile i + 1's S runs while tile i's softmax does (FA3's intra-warpgroup overlap).
// K/V tiles are double-buffered with cp.async, K one tile ahead of V, into the no-swizzle
// core-matrix layout wgmma reads: 16-byte chunk c of row r at ((r / 8) (D / 8) + c) 128 + (r % 8) 16
// bytes, so each 8 x 8 core matrix is 128 contiguous bytes (one layout serves K as a K-major B and
// V as an MN-major B; only the descriptor's byte offsets differ). cp.async writes go through the
// generic proxy, so each thread fences them to the async proxy before the barrier wgmma waits on.
// Per row, the same arithmetic as v2 in the same order; the hardware's internal wgmma summation
// order is not specified, so bits may differ from v2 on a GPU (the emulator gives v2's).

// Issues the cp.async copies of rows [row0, row0 + ROWS) of head `head` into the core-matrix
// layout (consecutive threads fill one core matrix's 8 rows: 128 contiguous bytes).
template <typename T, int D, int ROWS>
__device__ __forceinline__ void load_rows_core_async(T* s, uint64_t gptr, int64_t row0, int64_t lo, int64_t hi,
                                                     int heads, int head) {
    constexpr int CH = D / 8;
    const T* g = reinterpret_cast<const T*>(gptr);
    for (int idx = threadIdx.x; idx < ROWS * CH; idx += THREADS) {
        const int r = (idx / (8 * CH)) * 8 + idx % 8, c = (idx / 8) % CH;
        const int64_t tok = row0 + r;
        const bool ok = tok >= lo && tok < hi;
        cp_async_16(s + idx * 8, ok ? g + (tok * heads + head) * D + c * 8 : g, ok);
    }
}
template <int D> __device__ __forceinline__ int core_offset(int r, int c) { return ((r >> 3) * (D / 8) + c) * 64 + (r & 7) * 8; }
// A fragments of rows [row0, row0 + 16) of a core-layout [.. x D] tile, every 16-column k-step:
// ldmatrix.x4 (each 8-lane group reads one 128-byte core matrix: no bank conflicts).
template <typename T, int D>
__device__ __forceinline__ void ldsm_a_core(uint32_t (&a)[D / 16][4], const T* s, int row0, int lane) {
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
        const int r = row0 + (lane & 7) + ((lane >> 3) & 1) * 8, c = 2 * ks + (lane >> 4);
        ldmatrix_x4(a[ks], s + core_offset<D>(r, c));
    }
}
// acc (64 x N, this warp's 16 rows) (+)= A (registers, D / 16 k-steps) * B^T, B an N x D
// core-layout tile (K-major: each row's D elements contiguous), one wgmma per k-step, the first
// overwriting (scale-d = 0). Issued only: the caller fences (after writing `a`), commits and
// waits.
template <typename T, int D, int N>
__device__ __forceinline__ void wgmma_abt(float (&acc)[N / 2], const uint32_t (&a)[D / 16][4], const T* b) {
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks)
        wgmma_m64k16<N, false, T>(acc, a[ks], wgmma_desc(b + ks * 2 * 64, 128, 16 * D), ks > 0);
}
// The SS form of wgmma_abt: A is a 64 x D core-layout tile in shared memory too (K-major).
template <typename T, int D, int N>
__device__ __forceinline__ void wgmma_abt_ss(float (&acc)[N / 2], const T* a, const T* b) {
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks)
        wgmma_m64k16_ss<N, false, T>(acc, wgmma_desc(a + ks * 2 * 64, 128, 16 * D),
                                     wgmma_desc(b + ks * 2 * 64, 128, 16 * D), ks > 0);
}
// acc (64 x D) += C (this warp's 16 x K scores, rounded to T) * B, B a K x D core-layout tile
// (MN-major: D contiguous), one wgmma per 16 rows of B. Issued only, after its own wgmma.fence:
// the A fragments it packs are register writes that the fence must follow.
template <typename T, int D, int K = BC>
__device__ __forceinline__ void wgmma_cb(float (&acc)[D / 2], const float (&c)[K / 8][4], const T* b) {
    uint32_t pa[K / 16][4];
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk) frag_a_from_c<T, K / 8>(pa[kk], c, kk);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk) wgmma_m64k16<D, true, T>(acc, pa[kk], wgmma_desc(b + kk * 16 * D, 16 * D, 128), true);
}

template <typename T, int D> constexpr int fwd_v3_smem() { return (BR + 4 * BC) * D * (int)sizeof(T); }

template <typename T, int D>
__device__ void forward_v3(const SharedPrefixAttentionParams& p) {
#if PREFK_HAS_WGMMA
    constexpr int NT = BC / 8, DN = D / 8;
    PREFK_DYNAMIC_SHARED(unsigned char, smem);
    T* Qs = reinterpret_cast<T*>(smem);
    T* Ks = Qs + BR * D;      // [2][BC x D]
    T* Vs = Ks + 2 * BC * D;  // [2][BC x D]
    Tile tl;
    if (!query_tile<1>(p, blockIdx.x, tl)) return;
    const int h = blockIdx.y, kvh = h / (p.q_heads / p.kv_heads);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    const int* lo2 = reinterpret_cast<const int*>(p.seg_lo2);
    const float scale2 = p.scale * PREFK_LOG2E;
    const int first = tl.a + warp * 16;
    int rows[2], rlo2[2];
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        rows[ri] = first + g + 8 * ri;
        rlo2[ri] = rows[ri] < tl.b ? lo2[rows[ri]] : 0;
    }
    const WarpRows wr = warp_rows(tl, first, rlo2);
    const KeyTiles kt = key_tiles(tl);
    // K and V of key tile i go to buffer i & 1 on their own schedules: K one tile ahead of V, since
    // S = Q K^T of tile i + 1 is issued before tile i's softmax (below).
    auto issue = [&](int i, bool k_tile) {
        int c, lo, k1;
        kt.at(i, c, lo, k1);
        if (k_tile) load_rows_core_async<T, D, BC>(Ks + (i & 1) * BC * D, p.k, c, lo, k1, p.kv_heads, kvh);
        else load_rows_core_async<T, D, BC>(Vs + (i & 1) * BC * D, p.v, c, lo, k1, p.kv_heads, kvh);
    };
    // S = Q K^T of tile i into s, issued (the caller commits and waits). Q's fragments are reloaded
    // per tile: held across the loop, ptxas 13.0 gave their registers to P (RS wgmma A operands
    // carried around a loop were clobbered at d = 64, found in the SASS by review; the SASS test
    // now checks it), and the reload costs D / 16 ldmatrix per warp per tile.
    auto issue_scores = [&](int i, float (&sf)[NT * 4]) {
        uint32_t qa[D / 16][4];
        ldsm_a_core<T, D>(qa, Qs, warp * 16, lane);
        wgmma_fence();
        wgmma_abt<T, D, BC>(sf, qa, Ks + (i & 1) * BC * D);
    };
    const int total = kt.total;
    load_rows_core_async<T, D, BR>(Qs, p.q, tl.a, tl.a, tl.b, p.q_heads, h);
    if (total > 0) issue(0, true);
    cp_async_commit();
    if (total > 1) issue(1, true);
    if (total > 0) issue(0, false);
    cp_async_commit();

    // FA3's intra-warpgroup overlap: tile i + 1's S = Q K^T runs on the tensor cores while this
    // warpgroup does tile i's mask and online softmax, then O += P V of tile i. Per iteration i
    // (K(i + 1) and V(i) were issued one iteration earlier, in the group waited for here):
    //   copies of K(i + 2) and V(i + 1) | wait K(i + 1), V(i) | issue S(i + 1) | softmax(i) |
    //   issue O += P(i) V(i) | wait both | barrier.
    float o[DN][4] = {};
    float(&of)[DN * 4] = reinterpret_cast<float(&)[DN * 4]>(o);
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
    float s[NT][4], s_next[NT][4];
    float(&sf)[NT * 4] = reinterpret_cast<float(&)[NT * 4]>(s);
    float(&snf)[NT * 4] = reinterpret_cast<float(&)[NT * 4]>(s_next);
    if (total > 0) {
        cp_async_wait<1>();          // Q and K(0) have landed (this thread's copies) ...
        fence_proxy_async_shared();  // ... are visible to wgmma (the async proxy) ...
        __syncthreads();             // ... and so is every other thread's
        issue_scores(0, sf);
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_fence_operand(sf);
        __syncthreads();  // every warp's S(0) is done with K(0) before K(2) overwrites it
    }
    for (int i = 0; i < total; ++i) {
        // K(i + 2) overwrites K(i), whose S every warp waited for before the last barrier; V(i + 1)
        // overwrites V(i - 1), whose P V likewise.
        if (i + 2 < total) issue(i + 2, true);
        if (i + 1 < total) issue(i + 1, false);
        cp_async_commit();
        cp_async_wait<1>();  // K(i + 1) and V(i), this thread's copies ...
        fence_proxy_async_shared();
        __syncthreads();     // ... and every other thread's
        if (i + 1 < total) {
            issue_scores(i + 1, snf);
            wgmma_commit();
            wgmma_fence_operand(snf);  // pinned in flight (CUTLASS fences the operand after the issue too)
        }
        int c, lo, k1;
        kt.at(i, c, lo, k1);
        scale_or_mask<NT>(s, wr.unmasked(c, k1, kt.prefix(i)), c, k1, rows, rlo2, tl, scale2, tq);
        online_softmax<NT, DN>(s, m, l, o);
        wgmma_fence_operand(of);
        wgmma_cb<T, D>(of, s, Vs + (i & 1) * BC * D);  // O += P V
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_fence_operand(of);
        wgmma_fence_operand(snf);
        if (i + 1 < total)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[nt][e] = s_next[nt][e];
        __syncthreads();  // every warp's wgmmas are done with K(i + 1) and V(i)
    }
    cp_async_wait<0>();
    write_o_lse<T, D>(p, o, m, l, rows, tl.b, h, tq);
#else
    __trap();  // never launched: the host runs v3 only where Gpu::has_wgmma
#endif
}

// dQ v3 (sm_90a): dQ v2's loop for one warpgroup on wgmma: S = Q K^T and dP = dO V^T with Q's and
// dO's fragments in registers (ldmatrix per tile) and K, V by descriptor (K-major), then dQ += dS K with
// dS in registers and K by descriptor (MN-major). K double-buffered, V single as in v2 (tile i + 1's
// V copies go out once every warp's dP has read tile i's).
template <typename T, int D> constexpr int dq_v3_smem() { return (2 * BR + 3 * BC) * D * (int)sizeof(T); }

template <typename T, int D>
__device__ void backward_dq_v3(const SharedPrefixAttentionParams& p) {
#if PREFK_HAS_WGMMA
    constexpr int NT = BC / 8, DN = D / 8;
    PREFK_DYNAMIC_SHARED(unsigned char, smem);
    T* Qs = reinterpret_cast<T*>(smem);
    T* dOs = Qs + BR * D;
    T* Ks = dOs + BR * D;     // [2][BC x D]
    T* Vs = Ks + 2 * BC * D;  // [BC x D]
    Tile tl;
    if (!load_tile(p, blockIdx.x, tl)) return;
    const int h = blockIdx.y, kvh = h / (p.q_heads / p.kv_heads);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    const int* lo2 = reinterpret_cast<const int*>(p.seg_lo2);
    const float scale2 = p.scale * PREFK_LOG2E;
    const int rows[2] = {tl.a + warp * 16 + g, tl.a + warp * 16 + g + 8};
    int rlo2[2];
    float lse2[2], delta[2];
    dq_row_stats(p, rows, tl.b, h, lo2, rlo2, lse2, delta);
    const WarpRows wr = warp_rows(tl, tl.a + warp * 16, rlo2);
    const KeyTiles kt = key_tiles(tl);
    auto issue = [&](int i, bool k_tile) {
        int c, lo, k1;
        kt.at(i, c, lo, k1);
        if (k_tile) load_rows_core_async<T, D, BC>(Ks + (i & 1) * BC * D, p.k, c, lo, k1, p.kv_heads, kvh);
        else load_rows_core_async<T, D, BC>(Vs, p.v, c, lo, k1, p.kv_heads, kvh);
    };
    load_rows_core_async<T, D, BR>(Qs, p.q, tl.a, tl.a, tl.b, p.q_heads, h);
    load_rows_core_async<T, D, BR>(dOs, p.dout, tl.a, tl.a, tl.b, p.q_heads, h);
    cp_async_commit();
    if (kt.total > 0) {
        issue(0, true);
        issue(0, false);
    }
    cp_async_commit();
    cp_async_wait<1>();  // Q and dO (read by ldmatrix: no proxy fence)
    __syncthreads();
    float dq[DN][4] = {};
    float(&dqf)[DN * 4] = reinterpret_cast<float(&)[DN * 4]>(dq);
    for (int i = 0; i < kt.total; ++i) {
        // Groups per iteration: [K(i + 1)] here, [V(i + 1)] after dP. Waiting for all but the
        // newest completes K(i) and V(i).
        if (i + 1 < kt.total) issue(i + 1, true);
        cp_async_commit();
        cp_async_wait<1>();
        fence_proxy_async_shared();
        __syncthreads();
        int c, lo, k1;
        kt.at(i, c, lo, k1);
        const T* kb = Ks + (i & 1) * BC * D;
        float s[NT][4], dp[NT][4];
        float(&sf)[NT * 4] = reinterpret_cast<float(&)[NT * 4]>(s);
        float(&dpf)[NT * 4] = reinterpret_cast<float(&)[NT * 4]>(dp);
        uint32_t qa[D / 16][4], da[D / 16][4];  // reloaded per tile, as in the forward (v3)
        ldsm_a_core<T, D>(qa, Qs, warp * 16, lane);
        ldsm_a_core<T, D>(da, dOs, warp * 16, lane);
        wgmma_fence();
        wgmma_abt<T, D, BC>(sf, qa, kb);   // S = Q K^T
        wgmma_abt<T, D, BC>(dpf, da, Vs);  // dP = dO V^T
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_fence_operand(sf);
        wgmma_fence_operand(dpf);
        __syncthreads();  // every warp's dP has read V(i)
        if (i + 1 < kt.total) issue(i + 1, false);
        cp_async_commit();
        scale_or_mask<NT>(s, wr.unmasked(c, k1, kt.prefix(i)), c, k1, rows, rlo2, tl, scale2, tq);
        grad_scores<NT>(s, dp, lse2, delta);
        wgmma_fence_operand(dqf);
        wgmma_cb<T, D>(dqf, s, kb);  // dQ += dS K
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_fence_operand(dqf);
        __syncthreads();
    }
    cp_async_wait<0>();
    write_dq<T, D>(p, dq, rows, tl.b, h, tq);
#else
    __trap();  // never launched: the host runs v3 only where Gpu::has_wgmma
#endif
}

// dK/dV v3 (sm_90a): dK/dV v2's loop for one warpgroup on wgmma. S^T = K Q^T and dP^T = V dO^T
// are m64n32k16 in the SS form (the key tile and the query chunk both by descriptor: K's and V's
// fragments held in registers would not fit beside the dK and dV accumulators at d = 128), then
// dV += P^T dO and dK += dS^T Q with P^T, dS^T in registers and dO, Q by descriptor (MN-major).
template <typename T, int D> constexpr int dkdv_v3_smem() {
    return (2 * BC + 4 * BQ) * D * (int)sizeof(T) + 2 * BQ * 4;
}

template <typename T, int D>
__device__ void backward_dkdv_v3(const SharedPrefixAttentionParams& p) {
#if PREFK_HAS_WGMMA
    constexpr int NT = BQ / 8, DN = D / 8;
    PREFK_DYNAMIC_SHARED(unsigned char, smem);
    T* Ks = reinterpret_cast<T*>(smem);
    T* Vs = Ks + BC * D;
    T* Qs = Vs + BC * D;       // [2][BQ x D]
    T* dOs = Qs + 2 * BQ * D;  // [2][BQ x D]
    float* lse_s = reinterpret_cast<float*>(dOs + 2 * BQ * D);
    float* delta_s = lse_s + BQ;
    Tile tl;
    if (!load_tile(p, blockIdx.x, tl)) return;
    const int kvh = blockIdx.y, rep = p.q_heads / p.kv_heads;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    const int* lo2 = reinterpret_cast<const int*>(p.seg_lo2);
    const float scale2 = p.scale * PREFK_LOG2E;
    const int c = tl.a;  // keys [a, b)
    const int keys[2] = {c + warp * 16 + g, c + warp * 16 + g + 8};
    const DkDvChunks ch = dkdv_chunks(tl, kvh, rep);
    const int total = ch.total;
    auto issue = [&](int j) {
        int h, r;
        ch.at(j, h, r);
        load_rows_core_async<T, D, BQ>(Qs + (j & 1) * BQ * D, p.q, r, r, tl.rows_end, p.q_heads, h);
        load_rows_core_async<T, D, BQ>(dOs + (j & 1) * BQ * D, p.dout, r, r, tl.rows_end, p.q_heads, h);
    };
    load_rows_core_async<T, D, BC>(Ks, p.k, c, tl.a, tl.b, p.kv_heads, kvh);
    load_rows_core_async<T, D, BC>(Vs, p.v, c, tl.a, tl.b, p.kv_heads, kvh);
    if (total > 0) issue(0);
    cp_async_commit();
    float dk[DN][4] = {}, dv[DN][4] = {};
    float(&dkf)[DN * 4] = reinterpret_cast<float(&)[DN * 4]>(dk);
    float(&dvf)[DN * 4] = reinterpret_cast<float(&)[DN * 4]>(dv);
    for (int j = 0; j < total; ++j) {
        if (j + 1 < total) issue(j + 1);
        cp_async_commit();
        int h, r;
        ch.at(j, h, r);
        stage_chunk_stats(p, h, r, tl.rows_end, lse_s, delta_s);  // last read in chunk j - 1, behind its barrier
        cp_async_wait<1>();          // K, V (first chunk) and chunk j have landed (this thread's) ...
        fence_proxy_async_shared();  // ... are visible to wgmma ...
        __syncthreads();             // ... and so is every other thread's
        const T* qb = Qs + (j & 1) * BQ * D;
        const T* dob = dOs + (j & 1) * BQ * D;
        float st[NT][4], dpt[NT][4];
        float(&stf)[NT * 4] = reinterpret_cast<float(&)[NT * 4]>(st);
        float(&dptf)[NT * 4] = reinterpret_cast<float(&)[NT * 4]>(dpt);
        wgmma_fence();
        wgmma_abt_ss<T, D, BQ>(stf, Ks, qb);    // S^T = K Q^T
        wgmma_abt_ss<T, D, BQ>(dptf, Vs, dob);  // dP^T = V dO^T
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_fence_operand(stf);
        wgmma_fence_operand(dptf);
        transposed_grad_scores<NT>(st, dpt, keys, r, tl, lo2, lse_s, delta_s, scale2, tq);
        wgmma_fence_operand(dvf);
        wgmma_fence_operand(dkf);
        wgmma_cb<T, D, BQ>(dvf, st, dob);  // dV += P^T dO
        wgmma_cb<T, D, BQ>(dkf, dpt, qb);  // dK += dS^T Q
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_fence_operand(dvf);
        wgmma_fence_operand(dkf);
        __syncthreads();  // chunk j's buffers and lse_s / delta_s are free for chunk j + 2 / j + 1
    }
    cp_async_wait<0>();
    write_dk_dv<T, D>(p, dk, dv, keys, tl.b, kvh, tq);
#else
    __trap();  // never launched: the host runs v3 only where Gpu::has_wgmma
#endif
}

}  // namespace attn

// ---- entry points ------------------------------------------------------------------------------------
#define PREFK_ATTN(DT, T, D)                                                          \
    PREFK_KERNEL(shared_prefix_attention_fwd_##DT##_d##D, SharedPrefixAttentionParams, attn::THREADS) {      \
        attn::forward<T, D>(p);                                                       \
    }                                                                                 \
    PREFK_KERNEL(shared_prefix_attention_bwd_dq_##DT##_d##D, SharedPrefixAttentionParams, PREFK_ATTN_DQ_BOUNDS) {   \
        attn::backward_dq<T, D>(p);                                                   \
    }                                                                                 \
    PREFK_KERNEL(shared_prefix_attention_bwd_dkdv_##DT##_d##D, SharedPrefixAttentionParams, attn::THREADS) { \
        attn::backward_dkdv<T, D>(p);                                                 \
    }                                                                                 \
    PREFK_KERNEL(shared_prefix_attention_bwd_pre_##DT##_d##D, SharedPrefixAttentionParams, 256) {            \
        attn::preprocess<T, D>(p);                                                    \
    }                                                                                 \
    PREFK_KERNEL(shared_prefix_attention_fwd_v2_##DT##_d##D, SharedPrefixAttentionParams, attn::THREADS, 2) { \
        attn::forward_v2<T, D>(p);                                                    \
    }                                                                                 \
    PREFK_KERNEL(shared_prefix_attention_bwd_dq_v2_##DT##_d##D, SharedPrefixAttentionParams, attn::THREADS, 2) { \
        attn::backward_dq_v2<T, D>(p);                                                \
    }                                                                                 \
    PREFK_KERNEL(shared_prefix_attention_bwd_dkdv_v2_##DT##_d##D, SharedPrefixAttentionParams, attn::THREADS) { \
        attn::backward_dkdv_v2<T, D>(p);                                              \
    }                                                                                 \
    PREFK_KERNEL(shared_prefix_attention_fwd_v3_##DT##_d##D, SharedPrefixAttentionParams, attn::THREADS, 2) { \
        attn::forward_v3<T, D>(p);                                                    \
    }                                                                                 \
    PREFK_KERNEL(shared_prefix_attention_bwd_dq_v3_##DT##_d##D, SharedPrefixAttentionParams, attn::THREADS, 2) { \
        attn::backward_dq_v3<T, D>(p);                                                \
    }                                                                                 \
    PREFK_KERNEL(shared_prefix_attention_bwd_dkdv_v3_##DT##_d##D, SharedPrefixAttentionParams, attn::THREADS, 2) { \
        attn::backward_dkdv_v3<T, D>(p);                                              \
    }

PREFK_ATTN(bf16, __nv_bfloat16, 64)
PREFK_ATTN(bf16, __nv_bfloat16, 128)
PREFK_ATTN(f16, __half, 64)
PREFK_ATTN(f16, __half, 128)

// Dynamic shared memory of each kernel. The host launches with the same sizes
// (src/shared_prefix_attention/launch.rs `dynamic_smem`, whose unit test pins these numbers too).
static_assert(attn::fwd_smem<__half, 64>() == 27648 && attn::fwd_smem<__half, 128>() == 52224, "fwd smem");
static_assert(attn::fwd_v2_smem<__half, 64>() == 55296 && attn::fwd_v2_smem<__half, 128>() == 87040, "fwd v2 smem");
static_assert(attn::fwd_v3_smem<__half, 64>() == 40960 && attn::fwd_v3_smem<__half, 128>() == 81920, "fwd v3 smem");
static_assert(attn::dq_v3_smem<__half, 64>() == 40960 && attn::dq_v3_smem<__half, 128>() == 81920, "dq v3 smem");
static_assert(attn::dkdv_v3_smem<__half, 64>() == 33024 && attn::dkdv_v3_smem<__half, 128>() == 65792, "dkdv v3 smem");
static_assert(attn::dq_v2_smem<__half, 64>() == 46080 && attn::dq_v2_smem<__half, 128>() == 87040, "dq v2 smem");
static_assert(attn::dkdv_v2_smem<__half, 64>() == 37120 && attn::dkdv_v2_smem<__half, 128>() == 69888, "dkdv v2 smem");
static_assert(attn::dq_smem<__half, 64>() == 36864 && attn::dq_smem<__half, 128>() == 69632, "dq smem");
static_assert(attn::dkdv_smem<__half, 64>() == 27904 && attn::dkdv_smem<__half, 128>() == 52480, "dkdv smem");
