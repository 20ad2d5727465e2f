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
//
// The "full" forward also gives what TRL's fused head reports for its metrics, folded into the same
// pass: the mean logit / T and whether the target is the row's first argmax (TRL's `is_top1`: a tie
// with an earlier column does not count). The top-k kernel at the end is a second launch over rows
// the forward has read (see there).
#include "softmax_rows.cuh"

constexpr int BLOCK_THREADS = SOFTMAX_ROWS_BLOCK;

template <typename T, typename I, int ROW_THREADS, bool ENTROPY, bool EXTRAS>
__device__ __forceinline__ void token_logprobs_fwd(const TokenLogprobsFwdParams& p) {
    float* logp = reinterpret_cast<float*>(p.logp);
    float* lse = reinterpret_cast<float*>(p.lse);
    float* entropy = reinterpret_cast<float*>(p.entropy);
    float* stats = reinterpret_cast<float*>(p.stats);
    float* log_sum_sq = reinterpret_cast<float*>(p.log_sum_sq);
    float* mean_logits = EXTRAS ? reinterpret_cast<float*>(p.mean_logits) : nullptr;
    uint8_t* is_top1 = EXTRAS ? reinterpret_cast<uint8_t*>(p.is_top1) : nullptr;
    const SoftmaxRows rows = {p.logits, p.targets, p.status, p.n_rows, p.row_stride, p.vocab, 0, p.vocab,
                              p.ignore_index, p.inv_temperature};
    // Ignored rows give 0, bad ones NaN; a used row's statistics come from its state.
    softmax_rows_fwd<T, I, ROW_THREADS, ENTROPY, EXTRAS>(rows, [&](int64_t row, const SoftmaxState* st, float xt,
                                                                   const RowExtras& ex) {
        if (st == nullptr) {
            if (mean_logits) mean_logits[row] = xt;
            if (is_top1) is_top1[row] = 0;
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
        if (mean_logits) mean_logits[row] = ex.sum * p.inv_temperature / (float)p.vocab;
        // First argmax: the target reaches the max and nothing left of it does. A row with NaN or
        // +inf (no distribution: log2s is NaN) has no argmax.
        if (is_top1) is_top1[row] = (xt >= st->m && xt > ex.before_max && !isnan(log2s)) ? 1 : 0;
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

// ---- top-k log-probs: a block per row, radix select on unique 64-bit keys -----------------------
// key(v) = order_key(x_v) << 32 | ~v: larger value first, then smaller id, and no two columns share a
// key, so "the k largest keys" is exactly the answer, ties included. Radix select over the key's 8
// bytes from the top: a histogram of the next byte among the keys that match the prefix chosen so
// far, the byte where the k-th largest lies is appended to the prefix; it stops as soon as the
// whole bucket is needed (usually after the value's 2-3 bytes; the id's bytes only break ties at
// the k-th value). Then one pass collects the k keys >= the prefix and they are ranked in shared
// memory. Each round is one read of the row (L2-resident after the forward read it); the counts are
// integers, so the result does not depend on the order of the shared-memory atomics.
constexpr int TOPK_THREADS = 256;
constexpr int TOPK_WARPS = TOPK_THREADS / 32;

__device__ __forceinline__ uint64_t topk_key(float x, int64_t v) {
    // -0 and +0 are the same logit (a tie broken by id, as torch.sort and argmax see it).
    const float canonical = x == 0.f ? 0.f : x;
    return ((uint64_t)order_key(canonical) << 32) | (uint64_t)(0xffffffffu - (uint32_t)v);
}

template <typename T, typename I>
__device__ __forceinline__ void token_logprobs_topk(const TokenTopkParams& p) {
    PREFK_SHARED_ARRAY(uint32_t, hist, TOPK_WARPS * 256);  // one histogram per warp: less contention
    PREFK_SHARED_ARRAY(uint64_t, chosen, PREFK_TOPK_MAX);
    PREFK_SHARED_ARRAY(uint32_t, control, 4);               // selected byte, remaining need, done, count
    float* out_logp = reinterpret_cast<float*>(p.topk_logp);
    int64_t* out_ids = reinterpret_cast<int64_t*>(p.topk_ids);
    const int tid = threadIdx.x, warp = tid >> 5;
    const int k = (int)p.k;
    for (int64_t row = blockIdx.x; row < p.n_rows; row += gridDim.x) {  // uniform per block
        const int64_t t = load_target<I>(p.targets, row);
        const bool ignored = t == p.ignore_index;
        if (ignored || t < 0 || t >= p.vocab) {
            if (!ignored && tid == 0) report_status(p.status, PREFK_STATUS_BAD_TARGET);
            if (tid < k) {
                out_logp[row * p.k + tid] = ignored ? 0.f : __int_as_float(0x7fc00000);
                out_ids[row * p.k + tid] = -1;
            }
            continue;
        }
        const T* x = reinterpret_cast<const T*>(p.logits) + row * p.row_stride;
        uint64_t prefix = 0, mask = 0;
        uint32_t need = (uint32_t)k;
        for (int shift = 56; shift >= 0; shift -= 8) {
            // Histogram of byte `shift` among the keys under the prefix.
            for (int i = tid; i < TOPK_WARPS * 256; i += TOPK_THREADS) hist[i] = 0;
            __syncthreads();
            for (int64_t v = tid; v < p.vocab; v += TOPK_THREADS) {
                const uint64_t key = topk_key(to_f32(x[v]), v);
                if ((key & mask) == prefix) atomicAdd(&hist[warp * 256 + (int)((key >> shift) & 255u)], 1u);
            }
            __syncthreads();
            for (int d = tid; d < 256; d += TOPK_THREADS) {
                uint32_t c = 0;
                for (int w = 0; w < TOPK_WARPS; ++w) c += hist[w * 256 + d];
                hist[d] = c;  // warp 0's row becomes the total (each thread owns its own column d)
            }
            __syncthreads();
            // The byte holding the need-th largest key, from the top (one thread; 256 steps).
            if (tid == 0) {
                uint32_t above = 0;
                int d = 255;
                for (; d > 0 && above + hist[d] < need; --d) above += hist[d];
                control[0] = (uint32_t)d;
                control[1] = need - above;
                control[2] = hist[d] == need - above ? 1u : 0u;
            }
            __syncthreads();
            prefix |= (uint64_t)control[0] << shift;
            mask |= (uint64_t)255u << shift;
            need = control[1];
            const bool done = control[2] != 0;
            __syncthreads();  // control is rewritten by the next round
            if (done) break;
        }
        // Collect the k keys whose masked bytes are >= the prefix (any order), then rank them.
        if (tid == 0) control[3] = 0;
        __syncthreads();
        for (int64_t v = tid; v < p.vocab; v += TOPK_THREADS) {
            const uint64_t key = topk_key(to_f32(x[v]), v);
            if ((key & mask) >= prefix) {
                const uint32_t slot = atomicAdd(&control[3], 1u);
                if (slot < (uint32_t)k) chosen[slot] = key;
            }
        }
        __syncthreads();
        // Exactly k keys qualify: the keys are unique and vocab >= k (checked by the host).
        if (tid < k) {
            const uint64_t key = chosen[tid];
            int rank = 0;
            for (int j = 0; j < k; ++j) rank += chosen[j] > key ? 1 : 0;
            const int64_t id = (int64_t)(0xffffffffu - (uint32_t)(key & 0xffffffffu));
            const float* st = reinterpret_cast<const float*>(p.stats) + row * PREFK_SOFTMAX_STATS;
            // The forward's formula for logp, so the target's entry is bitwise its logp.
            const float xv = to_f32(x[id]);
            out_logp[row * p.k + rank] = fmaf(xv - st[PREFK_STATS_MAX], p.inv_temperature,
                                              -st[PREFK_STATS_LOG2_SUM] * PREFK_LN2);
            out_ids[row * p.k + rank] = id;
        }
        __syncthreads();  // chosen and control are reused by the next row
    }
}

// ---- entry points: one per (dtype, target type, row group size[, entropy]) -----------------------
// The full forward keeps 32 values, the softmax state and the extras live: 4 blocks per SM (64
// registers) would spill, so it is built for 2.
#define PREFK_FWD(NAME, T, I, RT, ENT, EXTRAS)                                                       \
    PREFK_KERNEL(NAME, TokenLogprobsFwdParams, BLOCK_THREADS, EXTRAS ? 2 : 4) {                 \
        token_logprobs_fwd<T, I, RT, ENT, EXTRAS>(p);                                              \
    }
#define PREFK_BWD(NAME, T, I, RT, ENT)                                                               \
    PREFK_KERNEL(NAME, TokenLogprobsBwdParams, BLOCK_THREADS, 4) {                              \
        token_logprobs_bwd<T, I, RT, ENT>(p);                                                      \
    }
#define PREFK_TOPK(NAME, T, I) \
    PREFK_KERNEL(NAME, TokenTopkParams, TOPK_THREADS) { token_logprobs_topk<T, I>(p); }
#define PREFK_ALL(DT, T, IT, I)                                                     \
    PREFK_FWD(token_logprobs_fwd_##DT##_##IT##_w32, T, I, 32, false, false)         \
    PREFK_FWD(token_logprobs_fwd_##DT##_##IT##_w256, T, I, 256, false, false)       \
    PREFK_FWD(token_logprobs_fwd_entropy_##DT##_##IT##_w32, T, I, 32, true, false)  \
    PREFK_FWD(token_logprobs_fwd_entropy_##DT##_##IT##_w256, T, I, 256, true, false) \
    PREFK_FWD(token_logprobs_fwd_full_##DT##_##IT##_w32, T, I, 32, true, true)      \
    PREFK_FWD(token_logprobs_fwd_full_##DT##_##IT##_w256, T, I, 256, true, true)    \
    PREFK_TOPK(token_logprobs_topk_##DT##_##IT, T, I)                                \
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
