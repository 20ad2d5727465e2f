// Fused token log-probs (log-softmax gather), forward and backward.
//
// Forward, one pass over each row of logits (never materializing log-softmax):
//   logp[r] = x[r, t_r] / T - lse[r],   lse[r] = logsumexp_v(x[r, v] / T),   entropy[r] optional,
//   and the softmax statistics the backward reads: (m = max_v x[r, v], log2 sum_v 2^((x - m) log2(e) / T)).
// Backward, one read + one write per element, optionally in place over the logits:
//   grad[r, v] = g[r] * (1[v == t_r] - p_v) / T,   log2 p_v = (x[r, v] - m) log2(e) / T - log2 s
//                - gH[r] * p_v (log p_v + H[r]) / T          (ENTROPY: an entropy gradient gH too)
// with the target element computed as g * (-expm1(ln p_t)) / T in f32, so 1 - p does not cancel
// when p -> 1.
//
// Work split: a group of ROW_THREADS threads owns a row (32: a warp per row for small vocabularies;
// 256: a block per row for large ones). The host chooses ROW_THREADS from V alone, so a row's result
// never depends on N or on the other rows. Rows are visited with a 64-bit grid-stride loop.
// Ignored rows (target == ignore_index) and rows with an out-of-range target never read the row.
#include "softmax_rows.cuh"

constexpr int BLOCK_THREADS = SOFTMAX_ROWS_BLOCK;

template <typename T, typename I, int ROW_THREADS, bool ENTROPY>
__device__ __forceinline__ void token_logprobs_fwd(const TokenLogprobsFwdParams& p) {
    float* logp = reinterpret_cast<float*>(p.logp);
    float* lse = reinterpret_cast<float*>(p.lse);
    float* entropy = reinterpret_cast<float*>(p.entropy);
    float* stats = reinterpret_cast<float*>(p.stats);
    float* log_sum_sq = reinterpret_cast<float*>(p.log_sum_sq);
    const SoftmaxRows rows = {p.logits, p.targets, p.status, p.n_rows, p.row_stride, p.vocab, 0, p.vocab,
                              p.ignore_index, p.inv_temperature};
    // Ignored rows give 0, bad ones NaN; a used row's statistics come from its state.
    softmax_rows_fwd<T, I, ROW_THREADS, ENTROPY>(rows, [&](int64_t row, const SoftmaxState* st, float xt) {
        if (st == nullptr) {
            logp[row] = xt;
            lse[row] = xt;
            if (entropy) entropy[row] = xt;
            if (log_sum_sq) log_sum_sq[row] = xt;
            if (stats) {
                stats[row * PREFK_SOFTMAX_STATS + PREFK_STATS_MAX] = xt;
                stats[row * PREFK_SOFTMAX_STATS + PREFK_STATS_LOG2_SUM] = xt;
            }
            return;
        }
        const float log2s = softmax_log2_sum(*st);
        // (x_t - m) / T - ln s, from the exact difference x_t - m: neither x_t / T (which overflows
        // for huge logits at T < 1) nor lse (whose rounding would swallow ln s) is formed; and in
        // natural units, as (x_t - m) * log2(e) may overflow where (x_t - m) / T does not.
        logp[row] = fmaf(xt - st->m, p.inv_temperature, -log2s * PREFK_LN2);
        // lse = m / T + ln s is the one output that may round to +-inf: its true value can exceed
        // FLT_MAX (logits near FLT_MAX at T < 1); the backward reads the statistics instead.
        lse[row] = fmaf(st->m, p.inv_temperature, log2s * PREFK_LN2);
        if (entropy) entropy[row] = ENTROPY ? (log2s - st->t / st->s) * PREFK_LN2 : 0.f;
        // log sum_v p_v^2 = log2(q / s^2) ln 2, both sums relative to the same max.
        if (log_sum_sq) log_sum_sq[row] = ENTROPY ? (log2f(st->q) - 2.f * log2s) * PREFK_LN2 : 0.f;
        if (stats) {
            stats[row * PREFK_SOFTMAX_STATS + PREFK_STATS_MAX] = st->m;
            stats[row * PREFK_SOFTMAX_STATS + PREFK_STATS_LOG2_SUM] = log2s;
        }
    });
}

template <typename T, typename I, int ROW_THREADS, bool ENTROPY>
__device__ __forceinline__ void token_logprobs_bwd(const TokenLogprobsBwdParams& p) {
    softmax_rows_bwd<T, I, ROW_THREADS, ENTROPY>(p, 0, p.vocab);
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
