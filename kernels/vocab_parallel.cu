// Vocabulary-parallel token log-probs: each tensor-parallel rank holds a shard of the vocabulary
// (columns [v0, v0 + Vs) of the logits, or of the LM head's weight rows), never the whole row.
//
//   1. vocab_shard_partials: per row, the shard's partial softmax statistics (max, sum of
//      exponentials, entropy term, target logit and owner flag; PREFK_VP_* in params.h), one
//      streaming pass over the shard's columns (the token log-probs row pass).
//   2. The trainer's distributed engine all-gathers the [n_rows, PREFK_VP_STATS] partials of every
//      rank (NCCL, gloo): PREFK_VP_STATS floats per token and rank, never the logits.
//   3. vocab_parallel_finalize: combines the shards of each row in shard order (so every rank gets
//      bitwise the same logp, lse, entropy) and checks that exactly one shard held the target.
//   4. vocab_shard_bwd: each rank writes d/dlogits of its own columns from the global softmax
//      statistics (and entropy): the token log-probs backward with the target shifted into the shard.
#include "softmax_rows.cuh"

constexpr int BLOCK_THREADS = SOFTMAX_ROWS_BLOCK;
constexpr int FINALIZE_THREADS = 256;

template <typename T, typename I, int ROW_THREADS, bool ENTROPY>
__device__ __forceinline__ void vocab_shard_partials(const VocabShardFwdParams& p) {
    float* partials = reinterpret_cast<float*>(p.partials);
    const SoftmaxRows rows = {p.logits, p.targets, p.status, p.n_rows, p.row_stride, p.shard_vocab,
                              p.vocab_start, p.vocab, p.ignore_index, p.inv_temperature};
    softmax_rows_fwd<T, I, ROW_THREADS, ENTROPY>(rows, [&](int64_t row, const SoftmaxState* st, float xt, RowExtras) {
        float* out = partials + row * PREFK_VP_STATS;
        if (st == nullptr) {  // ignored (0) or bad (NaN): the finalize writes the row's outputs
            for (int k = 0; k < PREFK_VP_STATS; ++k) out[k] = xt;
            return;
        }
        // The state as it is: max and target in the logits' units, sums in base 2.
        const int64_t local = load_target<I>(p.targets, row) - p.vocab_start;
        const bool owner = local >= 0 && local < p.shard_vocab;
        out[PREFK_VP_MAX] = st->m;
        out[PREFK_VP_SUMEXP] = st->s;
        // NaN, not 0, without entropy: a finalize that asks for entropy then returns NaN
        // instead of a plausible ln S.
        out[PREFK_VP_ENTROPY] = ENTROPY ? st->t : __int_as_float(0x7fc00000);
        out[PREFK_VP_TARGET] = owner ? xt : 0.f;
        out[PREFK_VP_OWNER] = owner ? 1.f : 0.f;
    });
}

// One thread per row: the shards' states folded in shard order (never in arrival order), so the
// result is the same on every rank and run.
template <typename I>
__device__ void vocab_parallel_finalize(const VocabFinalizeParams& p) {
    const float* partials = reinterpret_cast<const float*>(p.partials);
    float* logp = reinterpret_cast<float*>(p.logp);
    float* lse = reinterpret_cast<float*>(p.lse);
    float* entropy = reinterpret_cast<float*>(p.entropy);
    float* stats = reinterpret_cast<float*>(p.stats);
    const float scale2 = p.inv_temperature * PREFK_LOG2E;
    const int64_t shard_stride = p.n_rows * PREFK_VP_STATS;
    for (int64_t row = (int64_t)blockIdx.x * FINALIZE_THREADS + threadIdx.x; row < p.n_rows;
         row += (int64_t)gridDim.x * FINALIZE_THREADS) {
        const int64_t t = load_target<I>(p.targets, row);
        const bool ignored = t == p.ignore_index;
        const bool bad_target = !ignored && (t < 0 || t >= p.vocab);
        float out_logp = 0.f, out_lse = 0.f, out_entropy = 0.f, out_m = 0.f, out_log2s = 0.f;
        if (bad_target) {
            report_status(p.status, PREFK_STATUS_BAD_TARGET);
            out_logp = out_lse = out_entropy = out_m = out_log2s = __int_as_float(0x7fc00000);
        } else if (!ignored) {
            // (m, s, e) of the shards seen so far, e relative to m: combining rescales both sides
            // to the larger max, as softmax_combine does.
            const float* q = partials + row * PREFK_VP_STATS;
            float m = q[PREFK_VP_MAX], s = q[PREFK_VP_SUMEXP], e = q[PREFK_VP_ENTROPY];
            float target = q[PREFK_VP_TARGET], owners = q[PREFK_VP_OWNER];
            bool inf = m == INFINITY;
            for (int64_t k = 1; k < p.n_shards; ++k) {
                q += shard_stride;
                const float mk = q[PREFK_VP_MAX], sk = q[PREFK_VP_SUMEXP], ek = q[PREFK_VP_ENTROPY];
                inf = inf || mk == INFINITY;
                const float c = fmaxf(m, mk);
                const float da = softmax_shift(m, c, scale2), db = softmax_shift(mk, c, scale2);
                const float ra = exp2f(da), rb = exp2f(db);
                // A side whose weight underflowed to 0 (or whose logits are all -inf, s = 0) adds
                // nothing, even when its shift overflows to -inf (0 · -inf would be NaN).
                e = (ra > 0.f && s > 0.f ? ra * (e + s * da) : 0.f) + (rb > 0.f && sk > 0.f ? rb * (ek + sk * db) : 0.f);
                s = s * ra + sk * rb;
                m = c;
                target += q[PREFK_VP_TARGET];
                owners += q[PREFK_VP_OWNER];
            }
            if (owners != 1.f) {
                // The shards do not tile the vocabulary at this target (a wrong vocab_start, an
                // overlap, a gap): no log-prob is defined.
                report_status(p.status, PREFK_STATUS_BAD_SHARDS);
                out_logp = out_lse = out_entropy = out_m = out_log2s = __int_as_float(0x7fc00000);
            } else {
                // +inf anywhere in the row: the distribution is undefined, report NaN.
                const float log2s = inf ? __int_as_float(0x7fc00000) : log2f(s);
                // As token_logprobs.cu: from target - m, never target / T or lse.
                out_logp = fmaf(target - m, p.inv_temperature, -log2s * PREFK_LN2);
                out_lse = fmaf(m, p.inv_temperature, log2s * PREFK_LN2);
                out_entropy = (log2s - e / s) * PREFK_LN2;
                out_m = m;
                out_log2s = log2s;
            }
        }
        logp[row] = out_logp;
        lse[row] = out_lse;
        if (entropy) entropy[row] = out_entropy;
        if (stats) {
            stats[row * PREFK_SOFTMAX_STATS + PREFK_STATS_MAX] = out_m;
            stats[row * PREFK_SOFTMAX_STATS + PREFK_STATS_LOG2_SUM] = out_log2s;
        }
    }
}

template <typename T, typename I, int ROW_THREADS, bool ENTROPY>
__device__ __forceinline__ void vocab_shard_bwd(const VocabShardBwdParams& p) {
    softmax_rows_bwd<T, I, ROW_THREADS, ENTROPY>(p.rows, p.vocab_start, p.vocab);
}

// ---- entry points: one per (dtype, target type, row group size[, entropy]) -----------------------
#define PREFK_VP_FWD(NAME, T, I, RT, ENT)                                  \
    PREFK_KERNEL(NAME, VocabShardFwdParams, BLOCK_THREADS, 4) {            \
        vocab_shard_partials<T, I, RT, ENT>(p);                            \
    }
#define PREFK_VP_BWD(NAME, T, I, RT, ENT)                                  \
    PREFK_KERNEL(NAME, VocabShardBwdParams, BLOCK_THREADS, 4) {            \
        vocab_shard_bwd<T, I, RT, ENT>(p);                                 \
    }
#define PREFK_VP_ALL(DT, T, IT, I)                                                    \
    PREFK_VP_FWD(vocab_shard_partials_##DT##_##IT##_w32, T, I, 32, false)             \
    PREFK_VP_FWD(vocab_shard_partials_##DT##_##IT##_w256, T, I, 256, false)           \
    PREFK_VP_FWD(vocab_shard_partials_entropy_##DT##_##IT##_w32, T, I, 32, true)      \
    PREFK_VP_FWD(vocab_shard_partials_entropy_##DT##_##IT##_w256, T, I, 256, true)    \
    PREFK_VP_BWD(vocab_shard_bwd_##DT##_##IT##_w32, T, I, 32, false)                  \
    PREFK_VP_BWD(vocab_shard_bwd_##DT##_##IT##_w256, T, I, 256, false)                \
    PREFK_VP_BWD(vocab_shard_bwd_entropy_##DT##_##IT##_w32, T, I, 32, true)           \
    PREFK_VP_BWD(vocab_shard_bwd_entropy_##DT##_##IT##_w256, T, I, 256, true)

PREFK_VP_ALL(f32, float, i32, int32_t)
PREFK_VP_ALL(f32, float, i64, int64_t)
PREFK_VP_ALL(f16, __half, i32, int32_t)
PREFK_VP_ALL(f16, __half, i64, int64_t)
PREFK_VP_ALL(bf16, __nv_bfloat16, i32, int32_t)
PREFK_VP_ALL(bf16, __nv_bfloat16, i64, int64_t)

PREFK_KERNEL(vocab_parallel_finalize_i32, VocabFinalizeParams, FINALIZE_THREADS) { vocab_parallel_finalize<int32_t>(p); }
PREFK_KERNEL(vocab_parallel_finalize_i64, VocabFinalizeParams, FINALIZE_THREADS) { vocab_parallel_finalize<int64_t>(p); }
