// Per-sequence log-prob reductions (statistics + scores) and the per-token gradient broadcast.
//
// seq_stats: one block per sequence (grid-stride over sequences). Each thread sums its strided
// tokens in f32, then a fixed-order block sum gives the PREFK_SEQ_STATS statistics; thread 0
// writes them and the score of the requested mode. Deterministic, no atomics on floats.
// token_grad: one thread per token (grid-stride); finds its sequence by binary search over
// cu_seqlens (or division for the padded layout) and applies the sequence's coefficients.
#include "common.cuh"

constexpr int SEQ_THREADS = 256;

PREFK_KERNEL(seq_stats, SeqStatsParams, SEQ_THREADS) {
    PREFK_SHARED_ARRAY(float, scratch, (SEQ_THREADS / 32) * 9);
    const float* logp = reinterpret_cast<const float*>(p.logp);
    const uint8_t* mask = reinterpret_cast<const uint8_t*>(p.mask);
    const float* weights = reinterpret_cast<const float*>(p.weights);
    const float* ref = reinterpret_cast<const float*>(p.ref_logp);
    for (int64_t s = blockIdx.x; s < p.n_seqs; s += gridDim.x) {
        int64_t begin, end;
        seq_range(p.cu_seqlens, p.seq_len, p.n_tokens, s, p.status, begin, end);
        float v[9] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        for (int64_t t = begin + threadIdx.x; t < end; t += SEQ_THREADS) {
            if (mask && mask[t] == 0) continue;
            const float w = weights ? weights[t] : 1.f;
            const float l = logp[t];
            const float r = ref ? ref[t] : 0.f;
            const float gate = l < p.log_tau ? 1.f : 0.f;
            v[PREFK_STAT_COUNT] += 1.f;
            v[PREFK_STAT_WMASS] += w;
            v[PREFK_STAT_SUM] += l;
            v[PREFK_STAT_WSUM] = fmaf(w, l, v[PREFK_STAT_WSUM]);
            // The log-ratio per token, then summed: sum(l) - sum(r) would cancel two large f32
            // sums (~1e-4 absolute error over a thousand tokens) in exactly what the losses use.
            v[PREFK_STAT_DIFF_SUM] += l - r;
            v[PREFK_STAT_DIFF_WSUM] = fmaf(w, l - r, v[PREFK_STAT_DIFF_WSUM]);
            v[PREFK_STAT_GATED_WMASS] += gate * w;
            v[PREFK_STAT_GATED_COUNT] += gate;
            v[PREFK_STAT_GATED_WSUM] += gate * w * l;
        }
        block_sum<SEQ_THREADS, 9>(v, scratch);
        if (threadIdx.x == 0) {
            if (p.stats) {
                float* out = reinterpret_cast<float*>(p.stats) + s * PREFK_SEQ_STATS;
#pragma unroll
                for (int k = 0; k < 9; ++k) out[k] = v[k];
                out[9] = 0.f;
            }
            if (p.scores)
                reinterpret_cast<float*>(p.scores)[s] = aggregate(p.mode, v[PREFK_STAT_SUM], v[PREFK_STAT_WSUM],
                                                                  v[PREFK_STAT_COUNT], v[PREFK_STAT_WMASS]);
        }
    }
}

PREFK_KERNEL(token_grad, TokenGradParams, 256) {
    const float* logp = reinterpret_cast<const float*>(p.logp);
    const uint8_t* mask = reinterpret_cast<const uint8_t*>(p.mask);
    const float* weights = reinterpret_cast<const float*>(p.weights);
    float* grad = reinterpret_cast<float*>(p.grad_logp);
    for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < p.n_tokens;
         t += (int64_t)gridDim.x * blockDim.x) {
        const int64_t s = seq_of_token(p.cu_seqlens, p.seq_len, p.n_seqs, t);
        // A sequence with no counted token (empty, or with bad offsets that seq_stats reported and
        // read as empty) passes no gradient, so the loss and the gradient agree.
        const bool counted =
            s >= 0 && (!p.stats || reinterpret_cast<const float*>(p.stats)[s * PREFK_SEQ_STATS + PREFK_STAT_COUNT] > 0.f);
        if (!counted || (mask && mask[t] == 0)) {
            grad[t] = 0.f;
            continue;
        }
        float c0, c1, c2 = 0.f;
        if (p.seq_coef) {
            const float* c = reinterpret_cast<const float*>(p.seq_coef) + s * 3;
            c0 = c[0];
            c1 = c[1];
            c2 = c[2];
        } else {
            const float* st = reinterpret_cast<const float*>(p.stats) + s * PREFK_SEQ_STATS;
            token_coef(p.mode, st[PREFK_STAT_COUNT], st[PREFK_STAT_WMASS], c0, c1);
            const float d = reinterpret_cast<const float*>(p.dscores)[s];
            c0 *= d;
            c1 *= d;
        }
        const float w = weights ? weights[t] : 1.f;
        const float gate = logp[t] < p.log_tau ? 1.f : 0.f;
        grad[t] = p.scale * (c0 + w * (c1 + c2 * gate));
    }
}
