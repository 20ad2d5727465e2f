// GRPO family: per-token clipped / soft / CISPO policy-gradient losses with the k3 KL term, an
// entropy bonus and the top-entropy token mask (formulas: src/grpo/mod.rs; reference.rs mirrors
// this file in f64). Four small launches that read only per-token f32 data, never the logits:
//
//   grpo_entropy_threshold  one block: the (1 - top_entropy_quantile) quantile of the completion
//                           tokens' entropies, as torch.quantile (linear interpolation), by an exact
//                           radix select (4 bits per pass, integer counts summed by block_sum: no atomics)
//   grpo_seq                one block per sequence: N_s, sum (logp - old) (the sequence ratio), the
//                           off-policy mask's mean KL and vespo's log-weight, then every token's loss
//                           and metric terms, summed in a fixed order
//   grpo_batch              one block: aggregation weights a_s, the batch loss and metrics
//   grpo_token_grad         one thread per token: dL/dlogp (and dL/dH) from its sequence's row
#include "common.cuh"

constexpr int GRPO_THREADS = 256;

// ---- one token's terms ---------------------------------------------------------------------------
struct GrpoToken {
    float loss;    // pg e v + beta kl (the entropy bonus is aggregated apart)
    float direct;  // d loss / d logp through everything but the ratio
    float drho;    // d loss / d rho
    float rho;     // the ratio used
    float kl;      // the KL term as TRL logs it (k3, times the ratio when bias-corrected)
    float e;       // the top-entropy mask
    float low, high;
};

// What a token needs from its sequence: the sequence ratio, the off-policy mask, vespo's weight.
struct GrpoSeq {
    float rho;
    float gate;
    float phi;
};

// Clip metrics on the (delta-capped) ratio; CISPO logs its cap (cispo_clip_ratio, in `high`),
// SAPO and VESPO none.
__device__ __forceinline__ void clip_flags(const GrpoParams& p, float rho, float a, float& low, float& high) {
    const float c1 = (p.flags & PREFK_GRPO_FLAG_DELTA) && rho > p.delta ? p.delta : rho;
    low = p.surrogate == PREFK_GRPO_SURR_CLIP && c1 < 1.f - p.eps_low && a < 0.f ? 1.f : 0.f;
    const bool logs_high = p.surrogate == PREFK_GRPO_SURR_CLIP || p.surrogate == PREFK_GRPO_SURR_CISPO;
    high = !logs_high ? 0.f
           : (p.surrogate == PREFK_GRPO_SURR_CISPO ? rho > p.eps_high : c1 > 1.f + p.eps_high) && a > 0.f ? 1.f : 0.f;
}

// VESPO's gamma weight phi(w) = e^lambda w^k e^(-lambda w), normalised so phi(1) = 1, evaluated in
// log space from the clamped sequence log-ratio as TRL's get_gamma_weights; non-finite -> 0.
__device__ __forceinline__ float vespo_phi(const GrpoParams& p, float a, float log_w) {
    const float lo = -18.420680743952367f;  // log(1e-8)
    const float lw = fminf(fmaxf(log_w, lo), 20.f);
    const bool pos = a >= 0.f;
    const float k = pos ? p.vespo_k_pos : p.vespo_k_neg;
    const float lambda = fmaxf(pos ? p.vespo_lambda_pos : p.vespo_lambda_neg, 1e-4f);
    const float phi = expf(lambda + k * lw - lambda * expf(lw));
    return isfinite(phi) ? phi : 0.f;
}

__device__ __forceinline__ GrpoToken grpo_token(const GrpoParams& p, int64_t t, float a, const GrpoSeq& seq,
                                                float threshold) {
    const float l = reinterpret_cast<const float*>(p.logp)[t];
    const float old = p.old_logp ? reinterpret_cast<const float*>(p.old_logp)[t] : l;
    const float h = p.entropy ? reinterpret_cast<const float*>(p.entropy)[t] : 0.f;
    // VESPO folds the vLLM weights into phi instead of multiplying the loss by them (TRL).
    const float v = p.is_weights && p.surrogate != PREFK_GRPO_SURR_VESPO
                        ? reinterpret_cast<const float*>(p.is_weights)[t] : 1.f;
    const float rho = (p.flags & PREFK_GRPO_FLAG_SEQUENCE_IS) ? seq.rho : expf(l - old);
    // c1: the (delta-capped) unclipped ratio; clamp backward passes the gradient on closed bounds.
    const bool capped = (p.flags & PREFK_GRPO_FLAG_DELTA) && rho > p.delta;
    const float c1 = capped ? p.delta : rho;
    const float dc1 = capped ? 0.f : 1.f;
    float pg, dpg_drho = 0.f, dpg_dl = 0.f;
    switch (p.surrogate) {
        case PREFK_GRPO_SURR_CISPO: {
            const float c = fminf(rho, p.eps_high);  // detached
            pg = -c * a * l;
            dpg_dl = -c * a;
            break;
        }
        case PREFK_GRPO_SURR_SAPO: {
            const float tau = a > 0.f ? p.tau_pos : p.tau_neg;
            const float s = sigmoid_(tau * (rho - 1.f));
            pg = -s * (4.f / tau) * a;
            dpg_drho = -4.f * s * (1.f - s) * a;
            break;
        }
        case PREFK_GRPO_SURR_VESPO: {
            pg = -seq.phi * a * l;  // phi detached
            dpg_dl = -seq.phi * a;
            break;
        }
        default: {
            const float lo = 1.f - p.eps_low, hi = 1.f + p.eps_high;
            const float c2 = fminf(fmaxf(rho, lo), hi);
            const float dc2 = (rho >= lo && rho <= hi) ? 1.f : 0.f;
            const float l1 = c1 * a, l2 = c2 * a;
            // torch.minimum's backward: the smaller side, half each on a tie.
            const float d = l1 < l2 ? dc1 * a : (l2 < l1 ? dc2 * a : 0.5f * (dc1 + dc2) * a);
            pg = -fminf(l1, l2);
            dpg_drho = -d;
        }
    }
    // The off-policy mask and the top-entropy mask gate the policy term only (TRL's order).
    const float e = h >= threshold ? 1.f : 0.f;
    const float gated = e * v * seq.gate;
    float k3 = 0.f, dk3 = 0.f;
    if (p.beta != 0.f) {
        const float r = reinterpret_cast<const float*>(p.ref_logp)[t] - l;
        const float er = expf(r);
        k3 = (er - r) - 1.f;
        dk3 = 1.f - er;
    }
    // TRL multiplies the KL by the raw ratio (before the delta cap, never detached).
    const bool bias = p.flags & PREFK_GRPO_FLAG_BIAS_KL;
    const float kl = bias ? k3 * rho : k3;
    const float dkl_dl = bias ? dk3 * rho : dk3;
    const float dkl_drho = bias ? k3 : 0.f;
    GrpoToken o;
    // TRL's order: the entropy mask and the vLLM weight multiply the policy term; the KL is added
    // after both.
    o.loss = pg * gated + p.beta * kl;
    o.direct = dpg_dl * gated + p.beta * dkl_dl;
    o.drho = dpg_drho * gated + p.beta * dkl_drho;
    o.rho = rho;
    o.kl = kl;
    o.e = e;
    clip_flags(p, rho, a, o.low, o.high);
    return o;
}

__device__ __forceinline__ bool grpo_counts(const GrpoParams& p, int64_t t) {
    return !p.mask || reinterpret_cast<const uint8_t*>(p.mask)[t] != 0;
}

// ---- top-entropy threshold -------------------------------------------------------------------------

// The k-th smallest (0-based) key among the completion tokens, 4 bits per pass from the top.
__device__ uint32_t select_key(const GrpoParams& p, unsigned long long k, unsigned long long* scratch) {
    const float* h = reinterpret_cast<const float*>(p.entropy);
    uint32_t prefix = 0, known = 0;
    for (int shift = 28; shift >= 0; shift -= 4) {
        unsigned long long c[16] = {};
        for (int64_t s = 0; s < p.n_seqs; ++s) {
            int64_t begin, end;
            seq_range(p.cu_seqlens, p.seq_len, p.n_tokens, s, 0, begin, end);
            for (int64_t t = begin + threadIdx.x; t < end; t += GRPO_THREADS) {
                if (!grpo_counts(p, t)) continue;
                const uint32_t key = order_key(h[t]);
                if ((key & known) != prefix) continue;
                const uint32_t digit = (key >> shift) & 15u;
#pragma unroll
                for (int d = 0; d < 16; ++d) c[d] += digit == (uint32_t)d ? 1ull : 0ull;
            }
        }
        block_sum<GRPO_THREADS, 16, unsigned long long>(c, scratch);
        uint32_t digit = 15;
        for (uint32_t d = 0; d < 16; ++d) {  // same values in every thread: a uniform decision
            if (k < c[d]) { digit = d; break; }
            k -= c[d];
        }
        prefix |= digit << shift;
        known |= 15u << shift;
    }
    return prefix;
}

PREFK_KERNEL(grpo_entropy_threshold, GrpoParams, GRPO_THREADS) {
    PREFK_SHARED_ARRAY(unsigned long long, scratch, (GRPO_THREADS / 32) * 16);
    unsigned long long n[1] = {0};
    for (int64_t s = 0; s < p.n_seqs; ++s) {
        int64_t begin, end;
        seq_range(p.cu_seqlens, p.seq_len, p.n_tokens, s, p.status, begin, end);
        for (int64_t t = begin + threadIdx.x; t < end; t += GRPO_THREADS) n[0] += grpo_counts(p, t) ? 1ull : 0ull;
    }
    block_sum<GRPO_THREADS, 1, unsigned long long>(n, scratch);
    float threshold = -INFINITY;
    if (n[0] > 0) {
        // torch.quantile in f32: rank q (n - 1), linear interpolation between its neighbours.
        const float rank = p.quantile * (float)(n[0] - 1);
        const float lo_rank = floorf(rank);
        const unsigned long long lo_raw = (unsigned long long)lo_rank;
        const unsigned long long lo = lo_raw < n[0] - 1 ? lo_raw : n[0] - 1;
        const unsigned long long hi = lo + 1 < n[0] && rank > lo_rank ? lo + 1 : lo;
        const float a = key_value(select_key(p, lo, scratch));
        const float b = hi == lo ? a : key_value(select_key(p, hi, scratch));
        const float w = rank - lo_rank;
        threshold = w < 0.5f ? a + w * (b - a) : b - (b - a) * (1.f - w);  // torch.lerp
    }
    if (threadIdx.x == 0) *reinterpret_cast<float*>(p.threshold) = threshold;
}

__device__ __forceinline__ float grpo_threshold(const GrpoParams& p) {
    return (p.flags & PREFK_GRPO_FLAG_ENTROPY_MASK) ? *reinterpret_cast<const float*>(p.threshold) : -INFINITY;
}

// ---- per-sequence sums -----------------------------------------------------------------------------
PREFK_KERNEL(grpo_seq, GrpoParams, GRPO_THREADS) {
    PREFK_SHARED_ARRAY(float, scratch, (GRPO_THREADS / 32) * 8);
    const float* logp = reinterpret_cast<const float*>(p.logp);
    const float* old = reinterpret_cast<const float*>(p.old_logp);
    // The off-policy mask compares with the inference engine's log-probs, else the rollout's
    // (TRL: sampling_per_token_logps, else old_per_token_logps, else logp itself).
    const float* sampling = p.sampling_logp ? reinterpret_cast<const float*>(p.sampling_logp) : old;
    const float* is_w = reinterpret_cast<const float*>(p.is_weights);
    const bool vespo = p.surrogate == PREFK_GRPO_SURR_VESPO;
    const bool off_policy = p.flags & PREFK_GRPO_FLAG_OFF_POLICY_MASK;
    const float threshold = grpo_threshold(p);
    for (int64_t s = blockIdx.x; s < p.n_seqs; s += gridDim.x) {
        int64_t begin, end;
        seq_range(p.cu_seqlens, p.seq_len, p.n_tokens, s, p.status, begin, end);
        // Pass 1: the length and the summed log-ratio (the sequence ratio needs both), the
        // off-policy mask's summed KL, and vespo's clamped log-ratio sum.
        float c[4] = {0.f, 0.f, 0.f, 0.f};
        for (int64_t t = begin + threadIdx.x; t < end; t += GRPO_THREADS) {
            if (vespo && is_w) {
                // TRL sums the log weights over the whole row, masked positions included.
                c[3] += fminf(fmaxf(logf(is_w[t]), -18.420680743952367f), 20.f);
            }
            if (!grpo_counts(p, t)) continue;
            const float d = old ? logp[t] - old[t] : 0.f;
            c[0] += 1.f;
            c[1] += d;
            if (off_policy && sampling) {
                const float kl = sampling[t] - logp[t];
                c[2] += isnan(kl) ? 0.f : kl;  // torch.nan_to_num: unscored tokens give no evidence
            }
            if (vespo) c[3] += fminf(fmaxf(d, -20.f), 20.f);
        }
        block_sum<GRPO_THREADS, 4>(c, scratch);
        const float a = reinterpret_cast<const float*>(p.advantages)[s];
        GrpoSeq seq;
        seq.rho = expf(c[1] / fmaxf(c[0], 1.f));
        seq.gate = off_policy && !(a >= 0.f) && !(c[2] / fmaxf(c[0], 1.f) <= p.off_policy_threshold) ? 0.f : 1.f;
        seq.phi = vespo ? vespo_phi(p, a, c[3]) : 0.f;
        // Pass 2: every token's loss, the ratio's gradient share and the metric terms.
        float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        for (int64_t t = begin + threadIdx.x; t < end; t += GRPO_THREADS) {
            if (!grpo_counts(p, t)) continue;
            const GrpoToken g = grpo_token(p, t, a, seq, threshold);
            const float h = p.entropy ? reinterpret_cast<const float*>(p.entropy)[t] : 0.f;
            v[0] += g.loss;
            v[1] += g.drho;
            v[2] += g.kl;
            v[3] += h;
            v[4] += g.low;
            v[5] += g.high;
            v[6] += g.e;
            v[7] += g.e * h;
        }
        block_sum<GRPO_THREADS, 8>(v, scratch);
        // Sequence-level ratios: one clip indicator per sequence (TRL's (B, 1) metrics), empty
        // sequences included.
        if (p.flags & PREFK_GRPO_FLAG_SEQUENCE_IS) clip_flags(p, seq.rho, a, v[4], v[5]);
        if (threadIdx.x == 0) {
            float* row = reinterpret_cast<float*>(p.seq_work) + s * PREFK_GRPO_SEQ_FIELDS;
            row[PREFK_GRPO_COUNT] = c[0];
            row[PREFK_GRPO_DSUM] = c[1];
            row[PREFK_GRPO_RHO] = seq.rho;
            row[PREFK_GRPO_LOSS] = v[0];
            row[PREFK_GRPO_CROSS] = v[1];
            row[PREFK_GRPO_KL] = v[2];
            row[PREFK_GRPO_ENTROPY] = v[3];
            row[PREFK_GRPO_LOW] = v[4];
            row[PREFK_GRPO_HIGH] = v[5];
            row[PREFK_GRPO_WEIGHT] = 0.f;
            row[PREFK_GRPO_ECOUNT] = v[6];
            row[PREFK_GRPO_EH] = v[7];
            row[PREFK_GRPO_EWEIGHT] = 0.f;
            row[PREFK_GRPO_GATE] = seq.gate;
            row[PREFK_GRPO_PHI] = seq.phi;
        }
    }
}

// ---- batch: aggregation weights, loss, metrics ------------------------------------------------------
// TRL 1.16's aggregation: the policy term of every loss type but dapo/cispo/vespo (whose normalizer
// already holds the accumulation) is divided by the accumulation steps G after `policy_loss` is
// logged; the entropy bonus is the mean over the effective mask (completion and top-entropy masks)
// divided by G, whatever the loss type.
PREFK_KERNEL(grpo_batch, GrpoParams, GRPO_THREADS) {
    PREFK_SHARED_ARRAY(float, scratch, (GRPO_THREADS / 32) * 7);
    float* work = reinterpret_cast<float*>(p.seq_work);
    float n[2] = {0.f, 0.f};
    for (int64_t s = threadIdx.x; s < p.n_seqs; s += GRPO_THREADS) {
        n[0] += work[s * PREFK_GRPO_SEQ_FIELDS + PREFK_GRPO_COUNT];
        n[1] += work[s * PREFK_GRPO_SEQ_FIELDS + PREFK_GRPO_ECOUNT];
    }
    block_sum<GRPO_THREADS, 2>(n, scratch);
    // A chunk of a batch (the fused-head step) divides by the batch's counts, so the chunks'
    // losses, metrics and gradients add up to the batch's.
    if (p.batch_tokens > 0.f) n[0] = n[1] = p.batch_tokens;
    const float total = fmaxf(n[0], 1.f);
    const float n_seqs = p.batch_seqs > 0.f ? p.batch_seqs : (float)p.n_seqs;
    const float clip_count = (p.flags & PREFK_GRPO_FLAG_SEQUENCE_IS) ? n_seqs : total;
    const bool per_normalizer = p.agg == PREFK_GRPO_AGG_CONSTANT_OR_TOKENS;
    const float normalizer = p.agg_param > 0.f ? p.agg_param : total;
    const float policy_scale = per_normalizer ? 1.f : 1.f / p.accum_steps;
    const float ew = 1.f / (fmaxf(n[1], 1.f) * p.accum_steps);
    float v[7] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int64_t s = threadIdx.x; s < p.n_seqs; s += GRPO_THREADS) {
        float* row = work + s * PREFK_GRPO_SEQ_FIELDS;
        float w;
        switch (p.agg) {
            case PREFK_GRPO_AGG_SEQ_MEAN: w = 1.f / (n_seqs * fmaxf(row[PREFK_GRPO_COUNT], 1.f)); break;
            case PREFK_GRPO_AGG_TOKEN_MEAN: w = 1.f / total; break;
            case PREFK_GRPO_AGG_CONSTANT: w = 1.f / (n_seqs * p.agg_param); break;
            case PREFK_GRPO_AGG_SEQ_SUM: w = 1.f / n_seqs; break;
            default: w = 1.f / normalizer;
        }
        row[PREFK_GRPO_WEIGHT] = w * policy_scale;
        row[PREFK_GRPO_EWEIGHT] = ew;
        v[0] += w * row[PREFK_GRPO_LOSS];
        v[1] += row[PREFK_GRPO_KL];
        v[2] += row[PREFK_GRPO_ENTROPY];
        v[3] += row[PREFK_GRPO_LOW];
        v[4] += row[PREFK_GRPO_HIGH];
        v[5] += row[PREFK_GRPO_EH];
        v[6] += row[PREFK_GRPO_PHI];
    }
    block_sum<GRPO_THREADS, 7>(v, scratch);
    if (threadIdx.x == 0) {
        float* m = reinterpret_cast<float*>(p.metrics);
        m[0] = v[0] * policy_scale - p.entropy_coef * ew * v[5];
        m[1] = v[1] / total;
        m[2] = v[2] / total;
        m[3] = v[3] / clip_count;
        m[4] = v[4] / clip_count;
        m[5] = (v[3] + v[4]) / clip_count;
        m[6] = v[0];  // TRL `policy_loss`: before the entropy bonus and the division by G
        m[7] = v[6] / n_seqs;  // TRL `vespo/phi_seq_mean` (0 for other surrogates)
    }
}

// ---- per-token gradient ----------------------------------------------------------------------------
PREFK_KERNEL(grpo_token_grad, GrpoParams, GRPO_THREADS) {
    float* grad = reinterpret_cast<float*>(p.grad_logp);
    float* grad_h = reinterpret_cast<float*>(p.grad_entropy);
    const float threshold = grpo_threshold(p);
    const bool seq_is = p.flags & PREFK_GRPO_FLAG_SEQUENCE_IS;
    for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < p.n_tokens;
         t += (int64_t)gridDim.x * blockDim.x) {
        const int64_t s = seq_of_token(p.cu_seqlens, p.seq_len, p.n_seqs, t);
        const float* row = s < 0 ? nullptr : reinterpret_cast<const float*>(p.seq_work) + s * PREFK_GRPO_SEQ_FIELDS;
        // A sequence with no counted token (empty, or with bad offsets: reported) gives 0.
        if (s < 0 || !grpo_counts(p, t) || row[PREFK_GRPO_COUNT] == 0.f) {
            grad[t] = 0.f;
            if (grad_h) grad_h[t] = 0.f;
            continue;
        }
        const float w = row[PREFK_GRPO_WEIGHT] * p.grad_scale;
        const float a = reinterpret_cast<const float*>(p.advantages)[s];
        const GrpoSeq seq = {row[PREFK_GRPO_RHO], row[PREFK_GRPO_GATE], row[PREFK_GRPO_PHI]};
        const GrpoToken g = grpo_token(p, t, a, seq, threshold);
        // Sequence ratio: d rho_s / d logp_t = rho_s / N_s for every counted token of s.
        const float via_rho = seq_is ? row[PREFK_GRPO_CROSS] * row[PREFK_GRPO_RHO] / fmaxf(row[PREFK_GRPO_COUNT], 1.f)
                                     : g.drho * g.rho;
        grad[t] = w * (g.direct + via_rho);
        if (grad_h) grad_h[t] = -p.entropy_coef * row[PREFK_GRPO_EWEIGHT] * g.e * p.grad_scale;
    }
}
