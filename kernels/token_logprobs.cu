// Fused token log-probs (log-softmax gather), forward and backward.
//
// Forward, one pass over each row of logits (never materializing log-softmax):
//   logp[r] = x[r, t_r] / T - lse[r],   lse[r] = logsumexp_v(x[r, v] / T),   entropy[r] optional.
// Backward, one read + one write per element, optionally in place over the logits:
//   grad[r, v] = g[r] * (1[v == t_r] - exp(x[r, v] / T - lse[r])) / T
//                - gH[r] * p_v (log p_v + H[r]) / T          (ENTROPY: an entropy gradient gH too)
// with the target element computed as g * (-expm1(x_t / T - lse)) / T in f32, so 1 - p does not
// cancel when p -> 1.
//
// Work split: a group of ROW_THREADS threads owns a row (32: a warp per row for small vocabularies;
// 256: a block per row for large ones). The host chooses ROW_THREADS from V alone, so a row's result
// never depends on N or on the other rows. Rows are visited with a 64-bit grid-stride loop.
// Ignored rows (target == ignore_index) and rows with an out-of-range target never read the row.
#include "common.cuh"

constexpr int BLOCK_THREADS = 256;
constexpr int UNROLL = 4;  // 16-byte loads in flight per thread

template <typename T, typename I, int ROW_THREADS, bool ENTROPY>
__device__ __forceinline__ void token_logprobs_fwd(const TokenLogprobsFwdParams& p) {
    constexpr int ROWS_PER_BLOCK = BLOCK_THREADS / ROW_THREADS;
    constexpr int VEC = Vec16<T>::N;
    PREFK_SHARED_ARRAY(SoftmaxState, scratch, ROW_THREADS / 32);

    const int64_t tid = threadIdx.x % ROW_THREADS;
    const int64_t group = threadIdx.x / ROW_THREADS;
    const float scale2 = p.inv_temperature * PREFK_LOG2E;
    float* logp = reinterpret_cast<float*>(p.logp);
    float* lse = reinterpret_cast<float*>(p.lse);
    float* entropy = reinterpret_cast<float*>(p.entropy);

    // The loop bound is uniform per block for ROW_THREADS == BLOCK_THREADS, so the block-wide
    // reduction inside is reached by every thread.
    for (int64_t row = (int64_t)blockIdx.x * ROWS_PER_BLOCK + group; row < p.n_rows;
         row += (int64_t)gridDim.x * ROWS_PER_BLOCK) {
        const int64_t t = load_target<I>(p.targets, row);
        if (t == p.ignore_index || t < 0 || t >= p.vocab) {
            if (tid == 0) {
                const bool ignored = t == p.ignore_index;
                const float v = ignored ? 0.f : __int_as_float(0x7fc00000);  // NaN marks a bad target
                logp[row] = v;
                lse[row] = v;
                if (entropy) entropy[row] = v;
                if (!ignored) report_status(p.status, PREFK_STATUS_BAD_TARGET);
            }
            continue;
        }

        // Stream the row. The fold order depends on the column index only (chunk j of VEC columns
        // on thread j % ROW_THREADS in increasing j, then the < VEC tail columns), never on the
        // row's address, so a row's result is bitwise the same wherever it sits in memory. A
        // 16-byte aligned row (the usual case) loads each chunk with one 16-byte load.
        const T* x = reinterpret_cast<const T*>(p.logits) + row * p.row_stride;
        const bool aligned = ((uint64_t)x & 15u) == 0;
        const int64_t nvec = p.vocab / VEC, tail_start = nvec * VEC;
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
                    for (int k = 0; k < VEC; ++k) z[k] = to_f32(v[u].v[k]) * scale2;
                    softmax_update<VEC, ENTROPY>(st, z);
                }
            }
        }
        for (int64_t i = tail_start + tid; i < p.vocab; i += ROW_THREADS) {
            const float z[1] = {to_f32(x[i]) * scale2};
            softmax_update<1, ENTROPY>(st, z);
        }

        st = block_reduce_softmax<ROW_THREADS, ENTROPY>(st, scratch);
        if (tid == 0) {
            // +inf anywhere in the row makes m = +inf: the distribution is undefined, report NaN.
            const float log2s = (st.m == INFINITY) ? __int_as_float(0x7fc00000) : log2f(st.s);
            const float lse2 = st.m + log2s;
            const float zt = to_f32(x[t]) * scale2;
            logp[row] = (zt - lse2) * PREFK_LN2;
            lse[row] = lse2 * PREFK_LN2;
            if (entropy) entropy[row] = ENTROPY ? (log2s - st.t / st.s) * PREFK_LN2 : 0.f;
        }
    }
}

template <typename T, typename I, int ROW_THREADS, bool ENTROPY>
__device__ __forceinline__ void token_logprobs_bwd(const TokenLogprobsBwdParams& p) {
    constexpr int ROWS_PER_BLOCK = BLOCK_THREADS / ROW_THREADS;
    constexpr int VEC = Vec16<T>::N;
    // 16 elements per thread per step: enough bytes in flight, and no register spills under the
    // 64-register cap of 4 resident blocks per SM.
    constexpr int BWD_UNROLL = 16 / VEC;
    const int64_t tid = threadIdx.x % ROW_THREADS;
    const int64_t group = threadIdx.x / ROW_THREADS;
    const float scale2 = p.inv_temperature * PREFK_LOG2E;

    for (int64_t row = (int64_t)blockIdx.x * ROWS_PER_BLOCK + group; row < p.n_rows;
         row += (int64_t)gridDim.x * ROWS_PER_BLOCK) {
        const T* x = reinterpret_cast<const T*>(p.logits) + row * p.logits_stride;
        T* gx = reinterpret_cast<T*>(p.grad_logits) + row * p.grad_stride;
        const int64_t t = load_target<I>(p.targets, row);
        const bool ignored = t == p.ignore_index;
        const bool bad = !ignored && (t < 0 || t >= p.vocab);
        if (bad && tid == 0) report_status(p.status, PREFK_STATUS_BAD_TARGET);

        // Ignored rows get zeros, bad rows NaN (so a caller who skips the status check still sees it);
        // neither reads the row.
        const float g = ignored ? 0.f : (bad ? __int_as_float(0x7fc00000) : reinterpret_cast<const float*>(p.grad_logp)[row]);
        const bool skip_read = ignored || bad;
        const float lse2 = skip_read ? 0.f : reinterpret_cast<const float*>(p.lse)[row] * PREFK_LOG2E;
        const float coef = g * p.inv_temperature;
        // Entropy term: -p_v (log p_v + H) gH / T = -p_v (d ln2 + H) ecoef. p_v = 0 (a -inf logit)
        // contributes 0, not 0 * -inf.
        const float ecoef = ENTROPY && !skip_read ? reinterpret_cast<const float*>(p.grad_entropy)[row] * p.inv_temperature : 0.f;
        const float h = ENTROPY && !skip_read ? reinterpret_cast<const float*>(p.entropy)[row] : 0.f;
        auto entropy_term = [&](float d, float pv) -> float {
            if (!ENTROPY) return 0.f;
            return pv > 0.f ? -pv * fmaf(d, PREFK_LN2, h) * ecoef : 0.f;
        };

        // grad for element v of value xv: -coef * p_v, or coef * (1 - p_t) at the target.
        auto grad_of = [&](float xv, int64_t v) -> float {
            if (skip_read) return g;  // 0 or NaN
            const float d = fmaf(xv, scale2, -lse2);  // log2 p_v
            const float pv = exp2f(d);
            return (v == t ? coef * -expm1f(d * PREFK_LN2) : -coef * pv) + entropy_term(d, pv);
        };

        const RowSplit sp = split_row<T>((uint64_t)x, (uint64_t)gx, p.vocab);
        if (tid < sp.head) gx[tid] = from_f32<T>(grad_of(skip_read ? 0.f : to_f32(x[tid]), tid));
        const T* xv = x + sp.head;
        T* gv = gx + sp.head;
        for (int64_t base = tid; base < sp.nvec; base += (int64_t)ROW_THREADS * BWD_UNROLL) {
            Vec16<T> v[BWD_UNROLL];
            if (!skip_read) {
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
                    if (skip_read) {
#pragma unroll
                        for (int k = 0; k < VEC; ++k) out.v[k] = from_f32<T>(g);
                    } else {
                        // Off-target elements: -coef * p_v. The (rare) vector holding the target
                        // then redoes that one element with expm1.
                        float d[VEC];
#pragma unroll
                        for (int k = 0; k < VEC; ++k) d[k] = fmaf(to_f32(v[u].v[k]), scale2, -lse2);
                        const int64_t kt = t - (sp.head + i * VEC);
                        float target_grad = 0.f;
                        if (kt >= 0 && kt < VEC) {
#pragma unroll
                            for (int k = 0; k < VEC; ++k)
                                if (k == kt) target_grad = coef * -expm1f(d[k] * PREFK_LN2);
                        }
#pragma unroll
                        for (int k = 0; k < VEC; ++k) {
                            const float pv = exp2f(d[k]);
                            out.v[k] = from_f32<T>((k == kt ? target_grad : -coef * pv) + entropy_term(d[k], pv));
                        }
                    }
                    store_vec_stream(gv + i * VEC, out);
                }
            }
        }
        for (int64_t i = sp.tail_start + tid; i < p.vocab; i += ROW_THREADS)
            gx[i] = from_f32<T>(grad_of(skip_read ? 0.f : to_f32(x[i]), i));
    }
}

// ---- entry points: one per (dtype, target type, row group size[, entropy]) -----------------------
#define PREFK_FWD(NAME, T, I, RT, ENT)                                                               \
    PREFK_KERNEL(NAME, TokenLogprobsFwdParams, BLOCK_THREADS, 4) {                              \
        token_logprobs_fwd<T, I, RT, ENT>(p);                                                      \
    }
#define PREFK_BWD(NAME, T, I, RT, ENT)                                                               \
    PREFK_KERNEL(NAME, TokenLogprobsBwdParams, BLOCK_THREADS, 4) {                              \
        token_logprobs_bwd<T, I, RT, ENT>(p);                                                      \
    }
#define PREFK_ALL(DT, T, IT, I)                                                     \
    PREFK_FWD(token_logprobs_fwd_##DT##_##IT##_w32, T, I, 32, false)                \
    PREFK_FWD(token_logprobs_fwd_##DT##_##IT##_w256, T, I, 256, false)              \
    PREFK_FWD(token_logprobs_fwd_entropy_##DT##_##IT##_w32, T, I, 32, true)         \
    PREFK_FWD(token_logprobs_fwd_entropy_##DT##_##IT##_w256, T, I, 256, true)       \
    PREFK_BWD(token_logprobs_bwd_##DT##_##IT##_w32, T, I, 32, false)                \
    PREFK_BWD(token_logprobs_bwd_##DT##_##IT##_w256, T, I, 256, false)              \
    PREFK_BWD(token_logprobs_bwd_entropy_##DT##_##IT##_w32, T, I, 32, true)         \
    PREFK_BWD(token_logprobs_bwd_entropy_##DT##_##IT##_w256, T, I, 256, true)

PREFK_ALL(f32, float, i32, int32_t)
PREFK_ALL(f32, float, i64, int64_t)
PREFK_ALL(f16, __half, i32, int32_t)
PREFK_ALL(f16, __half, i64, int64_t)
PREFK_ALL(bf16, __nv_bfloat16, i32, int32_t)
PREFK_ALL(bf16, __nv_bfloat16, i64, int64_t)
