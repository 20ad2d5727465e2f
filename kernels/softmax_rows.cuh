// The two row passes of the log-softmax kernels, shared by the token log-probs kernels (a row is the
// whole vocabulary) and the vocabulary-parallel ones (a row is one rank's shard of it): the streaming
// softmax state of a row, and the gradient written over a row. A group of ROW_THREADS threads owns
// the row; `tid` is the thread's index in the group.
#pragma once
#include "common.cuh"

constexpr int SOFTMAX_ROWS_UNROLL = 4;  // 16-byte loads in flight per thread
constexpr int SOFTMAX_ROWS_BLOCK = 256;  // threads per block of every row kernel

// The softmax state (m, s, t: see SoftmaxState) of `cols` values x[0 .. cols) under `scale2`
// (log2(e) / T), reduced over the row group: every thread of the group gets it. The fold order
// depends on the column index only (chunk j of VEC columns on thread j % ROW_THREADS in increasing
// j, then the < VEC tail columns), never on the row's address, so a row's result is bitwise the
// same wherever it sits in memory. A 16-byte aligned row loads each chunk with one 16-byte load.
// `scratch` holds ROW_THREADS / 32 states (block-wide groups only).
// With EXTRAS it also folds what TRL's fused head reports besides the softmax (RowExtras): the sum
// of the row's values and the largest value left of column `before` (the target's), each thread
// over its own columns, then reduced over the group in a fixed order (`extras_scratch`:
// ROW_THREADS / 32 entries).
struct RowExtras {
    float sum;         // sum_v x_v
    float before_max;  // max_{v < before} x_v (-inf when before <= 0)
};

template <int ROW_THREADS>
__device__ __forceinline__ RowExtras reduce_row_extras(RowExtras e, RowExtras* scratch) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        e.sum += __shfl_xor_sync(0xffffffffu, e.sum, off);
        e.before_max = fmaxf(e.before_max, __shfl_xor_sync(0xffffffffu, e.before_max, off));
    }
    if (ROW_THREADS == 32) return e;
    constexpr int WARPS = ROW_THREADS / 32;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = e;
    __syncthreads();
    RowExtras acc = {0.f, -INFINITY};
    for (int w = 0; w < WARPS; ++w) {  // same order in every thread
        acc.sum += scratch[w].sum;
        acc.before_max = fmaxf(acc.before_max, scratch[w].before_max);
    }
    return acc;
}

template <typename T, int ROW_THREADS, bool ENTROPY, bool EXTRAS = false>
__device__ __forceinline__ SoftmaxState row_softmax_state(const T* x, int64_t cols, float scale2, int64_t tid,
                                                          SoftmaxState* scratch, RowExtras* extras = nullptr,
                                                          int64_t before = 0, RowExtras* extras_scratch = nullptr) {
    RowExtras ex = {0.f, -INFINITY};
    auto fold_extras = [&](float z, int64_t col) {
        if (EXTRAS) {
            ex.sum += z;
            if (col < before) ex.before_max = fmaxf(ex.before_max, z);
        }
    };
    constexpr int VEC = Vec16<T>::N;
    constexpr int UNROLL = SOFTMAX_ROWS_UNROLL;
    const bool aligned = ((uint64_t)x & 15u) == 0;
    const int64_t nvec = cols / VEC, tail_start = nvec * VEC;
    SoftmaxState st = softmax_identity();
    for (int64_t base = tid; base < nvec; base += (int64_t)ROW_THREADS * UNROLL) {
        Vec16<T> v[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int64_t i = base + (int64_t)u * ROW_THREADS;
            if (i < nvec) v[u] = aligned ? load_vec_stream(x + i * VEC) : load_vec_unaligned(x + i * VEC);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            if (base + (int64_t)u * ROW_THREADS < nvec) {
                float z[VEC];
#pragma unroll
                for (int k = 0; k < VEC; ++k) {
                    z[k] = to_f32(v[u].v[k]);
                    fold_extras(z[k], (base + (int64_t)u * ROW_THREADS) * VEC + k);
                }
                softmax_update<VEC, ENTROPY>(st, z, scale2);
            }
        }
    }
    for (int64_t i = tail_start + tid; i < cols; i += ROW_THREADS) {
        const float z[1] = {to_f32(x[i])};
        fold_extras(z[0], i);
        softmax_update<1, ENTROPY>(st, z, scale2);
    }
    if (EXTRAS) *extras = reduce_row_extras<ROW_THREADS>(ex, extras_scratch);
    return block_reduce_softmax<ROW_THREADS, ENTROPY>(st, scratch, scale2);
}

// The rows a forward visits: `cols` columns from `logits` (rows `row_stride` apart) that are
// columns [col_start, col_start + cols) of a vocabulary of `full_vocab` entries (the whole row for
// the token log-probs, one rank's shard for the vocabulary-parallel kernels).
struct SoftmaxRows {
    uint64_t logits, targets, status;
    int64_t n_rows, row_stride, cols, col_start, full_vocab, ignore_index;
    float inv_temperature;
};

// Forward row loop: a row group per row (64-bit grid-stride). On thread 0 of the group it calls
// out(row, nullptr, v, {}) for a row it does not read (v = 0 when ignored; NaN, with
// PREFK_STATUS_BAD_TARGET reported, when the target is outside [0, full_vocab)), and
// out(row, &state, xt, extras) for a used row: its reduced state, xt, the target's logit (unscaled)
// when the target lies in these columns, else 0, and (EXTRAS) the row's RowExtras.
template <typename T, typename I, int ROW_THREADS, bool ENTROPY, bool EXTRAS = false, typename Out>
__device__ __forceinline__ void softmax_rows_fwd(const SoftmaxRows& p, Out out) {
    constexpr int ROWS_PER_BLOCK = SOFTMAX_ROWS_BLOCK / ROW_THREADS;
    PREFK_SHARED_ARRAY(SoftmaxState, scratch, ROW_THREADS / 32);
    PREFK_SHARED_ARRAY(RowExtras, extras_scratch, EXTRAS ? ROW_THREADS / 32 : 1);
    const int64_t tid = threadIdx.x % ROW_THREADS;
    const int64_t group = threadIdx.x / ROW_THREADS;
    const float scale2 = p.inv_temperature * PREFK_LOG2E;
    // The loop bound is uniform per block for ROW_THREADS == SOFTMAX_ROWS_BLOCK, so the block-wide
    // reduction inside is reached by every thread.
    for (int64_t row = (int64_t)blockIdx.x * ROWS_PER_BLOCK + group; row < p.n_rows;
         row += (int64_t)gridDim.x * ROWS_PER_BLOCK) {
        const int64_t t = load_target<I>(p.targets, row);
        if (t == p.ignore_index || t < 0 || t >= p.full_vocab) {
            if (tid == 0) {
                const bool ignored = t == p.ignore_index;
                if (!ignored) report_status(p.status, PREFK_STATUS_BAD_TARGET);
                out(row, static_cast<const SoftmaxState*>(nullptr), ignored ? 0.f : __int_as_float(0x7fc00000),
                    RowExtras{0.f, -INFINITY});
            }
            continue;
        }
        const T* x = reinterpret_cast<const T*>(p.logits) + row * p.row_stride;
        const int64_t local = t - p.col_start;
        RowExtras ex = {0.f, -INFINITY};
        const SoftmaxState st = row_softmax_state<T, ROW_THREADS, ENTROPY, EXTRAS>(x, p.cols, scale2, tid, scratch, &ex,
                                                                                   local, extras_scratch);
        if (tid == 0) {
            out(row, &st, (local >= 0 && local < p.cols) ? to_f32(x[local]) : 0.f, ex);
        }
    }
}

// What the gradient of one row needs besides its values: d/dx_v of g * logp + gH * H over the
// row's columns, with log2 p_v = (x_v - m) * scale2 - log2 s (the forward's softmax statistics).
// p_v is formed from x_v - m, exact in f32 near the max, never from x_v * scale2 - lse2: a rounded
// lse2 carries an absolute error of half its ulp (4 at logits of 1e8), which the exponent turns into
// a relative error of p (the target's 1 - p went to 0.72 instead of 0 there).
struct RowGrad {
    int64_t target;  // the target's column in this row, or any value outside [0, cols) (none here)
    float g;         // dL/dlogp: 0 for an ignored row, NaN for a bad one (with skip_read)
    float m;         // the row's maximum logit (over the whole vocabulary), in the logits' units
    float log2s;     // log2 sum_v 2^((x_v - m) * scale2) (over the whole vocabulary)
    float coef;      // g / T
    float ecoef;     // dL/dH / T (entropy gradient only)
    float h;         // H (entropy gradient only)
    bool skip_read;  // ignored or bad row: write g everywhere, never read the row
};

// Writes the row's gradient: -coef * p_v off target, coef * (1 - p_t) at the target (computed as
// -expm1 so 1 - p does not cancel when p -> 1), plus -p_v (log p_v + H) * ecoef with ENTROPY.
// One read and one write per element; in place when gx == x.
template <typename T, int ROW_THREADS, bool ENTROPY>
__device__ __forceinline__ void row_softmax_grad(const T* x, T* gx, int64_t cols, float scale2, const RowGrad& r,
                                                 int64_t tid) {
    constexpr int VEC = Vec16<T>::N;
    // 16 elements per thread per step: enough bytes in flight, and no register spills under the
    // 64-register cap of 4 resident blocks per SM.
    constexpr int BWD_UNROLL = 16 / VEC;
    const int64_t t = r.target;
    // p_v = 0 (a -inf logit) contributes 0, not 0 * -inf.
    auto entropy_term = [&](float d, float pv) -> float {
        if (!ENTROPY) return 0.f;
        return pv > 0.f ? -pv * fmaf(d, PREFK_LN2, r.h) * r.ecoef : 0.f;
    };
    auto grad_of = [&](float xv, int64_t v) -> float {
        if (r.skip_read) return r.g;  // 0 or NaN
        const float d = fmaf(xv - r.m, scale2, -r.log2s);  // log2 p_v
        const float pv = exp2f(d);
        return (v == t ? r.coef * -expm1f(d * PREFK_LN2) : -r.coef * pv) + entropy_term(d, pv);
    };

    const RowSplit sp = split_row<T>((uint64_t)x, (uint64_t)gx, cols);
    if (tid < sp.head) gx[tid] = from_f32<T>(grad_of(r.skip_read ? 0.f : to_f32(x[tid]), tid));
    const T* xv = x + sp.head;
    T* gv = gx + sp.head;
    for (int64_t base = tid; base < sp.nvec; base += (int64_t)ROW_THREADS * BWD_UNROLL) {
        Vec16<T> v[BWD_UNROLL];
        if (!r.skip_read) {
#pragma unroll
            for (int u = 0; u < BWD_UNROLL; ++u) {
                const int64_t i = base + (int64_t)u * ROW_THREADS;
                if (i < sp.nvec) v[u] = load_vec(xv + i * VEC);
            }
        }
#pragma unroll
        for (int u = 0; u < BWD_UNROLL; ++u) {
            const int64_t i = base + (int64_t)u * ROW_THREADS;
            if (i < sp.nvec) {
                Vec16<T> out;
                if (r.skip_read) {
#pragma unroll
                    for (int k = 0; k < VEC; ++k) out.v[k] = from_f32<T>(r.g);
                } else {
                    // Off-target elements: -coef * p_v. The (rare) vector holding the target then
                    // redoes that one element with expm1.
                    float d[VEC];
#pragma unroll
                    for (int k = 0; k < VEC; ++k) d[k] = fmaf(to_f32(v[u].v[k]) - r.m, scale2, -r.log2s);
                    const int64_t kt = t - (sp.head + i * VEC);
                    float target_grad = 0.f;
                    if (kt >= 0 && kt < VEC) {
#pragma unroll
                        for (int k = 0; k < VEC; ++k)
                            if (k == kt) target_grad = r.coef * -expm1f(d[k] * PREFK_LN2);
                    }
#pragma unroll
                    for (int k = 0; k < VEC; ++k) {
                        const float pv = exp2f(d[k]);
                        out.v[k] = from_f32<T>((k == kt ? target_grad : -r.coef * pv) + entropy_term(d[k], pv));
                    }
                }
                store_vec_stream(gv + i * VEC, out);
            }
        }
    }
    for (int64_t i = sp.tail_start + tid; i < cols; i += ROW_THREADS)
        gx[i] = from_f32<T>(grad_of(r.skip_read ? 0.f : to_f32(x[i]), i));
}

// The backward of rows whose columns are `[col_start, col_start + p.vocab)` of a vocabulary of
// `full_vocab` entries: the whole row here (0, p.vocab), one rank's shard in vocab_parallel.cu.
// A target outside the columns gets the off-target gradient everywhere; one outside the full
// vocabulary is bad.
template <typename T, typename I, int ROW_THREADS, bool ENTROPY>
__device__ __forceinline__ void softmax_rows_bwd(const TokenLogprobsBwdParams& p, int64_t col_start,
                                                 int64_t full_vocab) {
    constexpr int ROWS_PER_BLOCK = SOFTMAX_ROWS_BLOCK / ROW_THREADS;
    const int64_t tid = threadIdx.x % ROW_THREADS;
    const int64_t group = threadIdx.x / ROW_THREADS;
    const float scale2 = p.inv_temperature * PREFK_LOG2E;

    for (int64_t row = (int64_t)blockIdx.x * ROWS_PER_BLOCK + group; row < p.n_rows;
         row += (int64_t)gridDim.x * ROWS_PER_BLOCK) {
        const T* x = reinterpret_cast<const T*>(p.logits) + row * p.logits_stride;
        T* gx = reinterpret_cast<T*>(p.grad_logits) + row * p.grad_stride;
        const int64_t t = load_target<I>(p.targets, row);
        const bool ignored = t == p.ignore_index;
        const bool bad = !ignored && (t < 0 || t >= full_vocab);
        if (bad && tid == 0) report_status(p.status, PREFK_STATUS_BAD_TARGET);

        // Ignored rows get zeros, bad rows NaN (so a caller who skips the status check still sees
        // it); neither reads the row.
        RowGrad r;
        r.skip_read = ignored || bad;
        r.target = t - col_start;
        r.g = ignored ? 0.f : (bad ? __int_as_float(0x7fc00000) : reinterpret_cast<const float*>(p.grad_logp)[row]);
        const float* stats = reinterpret_cast<const float*>(p.stats) + row * PREFK_SOFTMAX_STATS;
        r.m = r.skip_read ? 0.f : stats[PREFK_STATS_MAX];
        r.log2s = r.skip_read ? 0.f : stats[PREFK_STATS_LOG2_SUM];
        r.coef = r.g * p.inv_temperature;
        r.ecoef = ENTROPY && !r.skip_read ? reinterpret_cast<const float*>(p.grad_entropy)[row] * p.inv_temperature : 0.f;
        r.h = ENTROPY && !r.skip_read ? reinterpret_cast<const float*>(p.entropy)[row] : 0.f;
        row_softmax_grad<T, ROW_THREADS, ENTROPY>(x, gx, p.vocab, scale2, r, tid);
    }
}

