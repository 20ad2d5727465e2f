// Group and listwise losses on sequence scores: KTO (unpaired, detached KL baseline), LiPO-lambda
// (listwise, lambda weights from the current ranking) and PRO (ranking stages with reward
// temperatures, SFT term). Formulas: src/group_loss/mod.rs; reference.rs mirrors this file in f64.
//
// One block does the whole batch: each thread takes sequences (KTO) or groups (LiPO, PRO) in a
// strided loop, the batch sums are fixed-order block sums (deterministic, no float atomics), and
// each sequence's token coefficient c0 (d L / d logp_t = c0 m_t) goes to seq_coef for token_grad
// (seq_reduce.cu). The scores come from seq_stats: sums for KTO and LiPO, means for PRO.
#include "common.cuh"

constexpr int GROUP_THREADS = 256;

__device__ __forceinline__ float gl_logaddexp(float a, float b) {
    const float m = fmaxf(a, b);
    return m == -INFINITY ? -INFINITY : m + log1pf(expf(-fabsf(a - b)));
}

__device__ __forceinline__ const float* seq_stats_row(const GroupLossParams& p, int64_t s) {
    return reinterpret_cast<const float*>(p.stats) + s * PREFK_SEQ_STATS;
}
// The summed log-ratio S - S_ref of a sequence.
__device__ __forceinline__ float log_ratio(const GroupLossParams& p, int64_t s) {
    const float* st = seq_stats_row(p, s);
    return p.ref_seq ? st[PREFK_STAT_SUM] - reinterpret_cast<const float*>(p.ref_seq)[s] : st[PREFK_STAT_DIFF_SUM];
}
__device__ __forceinline__ void write_coef(const GroupLossParams& p, int64_t s, float c0) {
    float* c = reinterpret_cast<float*>(p.seq_coef) + s * 3;
    c[0] = c0 * p.grad_scale;
    c[1] = 0.f;
    c[2] = 0.f;
}
__device__ __forceinline__ void write_out(const GroupLossParams& p, int64_t s, float v) {
    if (p.seq_out) reinterpret_cast<float*>(p.seq_out)[s] = v;
}

// ---- KTO -------------------------------------------------------------------------------------------
// A role label compared exactly: anything but 0, 1, 2 (NaN, 0.5, ...) is ignored.
__device__ __forceinline__ int kto_role(float r) {
    return r == 0.f ? PREFK_KTO_UNDESIRABLE
           : r == 1.f ? PREFK_KTO_DESIRABLE
           : r == 2.f ? PREFK_KTO_KL_SAMPLE
                      : PREFK_KTO_IGNORED;
}
__device__ void kto(const GroupLossParams& p, float* scratch) {
    const float* role = reinterpret_cast<const float*>(p.labels);
    // Pass 1: the KL baseline from the KL samples, and the number of examples (the mean's divisor).
    float c[3] = {0.f, 0.f, 0.f};
    for (int64_t s = threadIdx.x; s < p.n_seqs; s += GROUP_THREADS) {
        const int r = kto_role(role[s]);
        if (r == PREFK_KTO_KL_SAMPLE) {
            c[0] += log_ratio(p, s);
            c[1] += 1.f;
        } else if (r == PREFK_KTO_DESIRABLE || r == PREFK_KTO_UNDESIRABLE) {
            c[2] += 1.f;
        }
    }
    block_sum<GROUP_THREADS, 3>(c, scratch);
    // z0 = max(mean KL-sample log-ratio, 0), detached (TRL clamps after the gather).
    float z0 = 0.f;
    if (p.flags & PREFK_GROUP_FLAG_KL_GIVEN) z0 = fmaxf(p.kl_given, 0.f);
    else if (!(p.flags & PREFK_GROUP_FLAG_APO) && c[1] > 0.f) z0 = fmaxf(c[0] / c[1], 0.f);
    const float n_ex = fmaxf(c[2], 1.f);
    const bool apo = p.flags & PREFK_GROUP_FLAG_APO;
    // Pass 2: losses, rewards, coefficients.
    float v[7] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};  // loss, reward c/r, logps c/r, count c/r
    for (int64_t s = threadIdx.x; s < p.n_seqs; s += GROUP_THREADS) {
        const int r = kto_role(role[s]);
        const float d = log_ratio(p, s);
        const float reward = p.beta * d;
        write_out(p, s, reward);
        if (r != PREFK_KTO_DESIRABLE && r != PREFK_KTO_UNDESIRABLE) {
            write_coef(p, s, 0.f);
            continue;
        }
        const bool good = r == PREFK_KTO_DESIRABLE;
        const float w = good ? p.p0 : p.p1;
        // desirable: 1 - sigma(x), x = beta (d - z0); undesirable: 1 - sigma(beta (z0 - d)).
        // APO-zero unpaired: 1 - sigma(beta d) / sigma(beta d).
        float loss, dd;
        if (apo) {
            const float x = p.beta * d;
            loss = good ? 1.f - sigmoid_(x) : sigmoid_(x);
            dd = (good ? -1.f : 1.f) * p.beta * sigmoid_prime_(x);
        } else {
            const float x = good ? p.beta * (d - z0) : p.beta * (z0 - d);
            loss = 1.f - sigmoid_(x);
            dd = (good ? -1.f : 1.f) * p.beta * sigmoid_prime_(x);
        }
        v[0] += w * loss;
        write_coef(p, s, w * dd / n_ex);
        const float lp = seq_stats_row(p, s)[PREFK_STAT_SUM];
        v[good ? 1 : 2] += reward;
        v[good ? 3 : 4] += lp;
        v[good ? 5 : 6] += 1.f;
    }
    block_sum<GROUP_THREADS, 7>(v, scratch);
    if (threadIdx.x == 0) {
        float* m = reinterpret_cast<float*>(p.metrics);
        const float nc = fmaxf(v[5], 1.f), nr = fmaxf(v[6], 1.f);
        m[0] = v[0] / n_ex;
        m[1] = z0;
        m[2] = v[1] / nc;
        m[3] = v[2] / nr;
        m[4] = (v[5] > 0.f && v[6] > 0.f) ? v[1] / nc - v[2] / nr : 0.f;
        m[5] = v[3] / nc;
        m[6] = v[4] / nr;
        m[7] = v[5];
        m[8] = v[6];
    }
}

// ---- LiPO-lambda -----------------------------------------------------------------------------------
// Ranks under the current scores (descending; ties keep list order), the RAX dcg lambda weight
// K |G_i - G_j| |1/log2(1 + tau_i) - 1/log2(1 + tau_j)| with G = 2^psi - 1, then the mean over every
// valid pair (psi_i > psi_j) of the batch of weight * softplus(-(s_i - s_j)). A list's scores and
// discounts live in the scratch rows of its sequences; its gradients accumulate in their c0.
__device__ void lipo_group(const GroupLossParams& p, int64_t g, float inv_pairs, float (&acc)[3]) {
    const int64_t K = p.group_size, base = g * K;
    const float* psi = reinterpret_cast<const float*>(p.labels) + base;
    float* sc = reinterpret_cast<float*>(p.scratch) + base * 2;  // [K, 2]: score, 1 / discount
    float* coef = reinterpret_cast<float*>(p.seq_coef) + base * 3;
    for (int64_t i = 0; i < K; ++i) {
        sc[2 * i] = p.beta * log_ratio(p, base + i);
        coef[3 * i] = 0.f;
    }
    for (int64_t i = 0; i < K; ++i) {
        int64_t rank = 1;
        for (int64_t j = 0; j < K; ++j) rank += (sc[2 * j] > sc[2 * i] || (sc[2 * j] == sc[2 * i] && j < i)) ? 1 : 0;
        sc[2 * i + 1] = 1.f / log2f(1.f + (float)rank);
    }
    for (int64_t i = 0; i < K; ++i) {
        for (int64_t j = 0; j < K; ++j) {
            if (!(psi[i] > psi[j])) continue;
            const float lw = (p.flags & PREFK_GROUP_FLAG_LAMBDA)
                                 ? (float)K * fabsf(exp2f(psi[i]) - exp2f(psi[j])) * fabsf(sc[2 * i + 1] - sc[2 * j + 1])
                                 : 1.f;
            const float z = sc[2 * i] - sc[2 * j];
            acc[0] += lw * softplus_(-z);
            acc[1] += 1.f;
            acc[2] += z > 0.f ? 1.f : 0.f;
            const float d = -lw * sigmoid_(-z);  // d softplus(-z) / dz
            coef[3 * i] += d;
            coef[3 * j] -= d;
        }
    }
    for (int64_t i = 0; i < K; ++i) {
        write_coef(p, base + i, coef[3 * i] * inv_pairs * p.beta);
        write_out(p, base + i, sc[2 * i]);
    }
}

__device__ void lipo(const GroupLossParams& p, float* scratch) {
    const int64_t n_groups = p.n_seqs / p.group_size;
    // Pass 0: the number of valid pairs (the batch mean's divisor). Pass 1: the same sums again,
    // the coefficients now scaled (a thread redoes its own lists). One loop, so lipo_group is
    // inlined once (twice spilled on sm_100).
    float c[3] = {0.f, 0.f, 0.f};
    float inv_pairs = 0.f;
    for (int pass = 0; pass < 2; ++pass) {
        float acc[3] = {0.f, 0.f, 0.f};
        for (int64_t g = threadIdx.x; g < n_groups; g += GROUP_THREADS) lipo_group(p, g, inv_pairs, acc);
        if (pass == 0) {
            block_sum<GROUP_THREADS, 3>(acc, scratch);
            for (int k = 0; k < 3; ++k) c[k] = acc[k];
            inv_pairs = c[1] > 0.f ? 1.f / c[1] : 0.f;
        }
    }
    if (threadIdx.x == 0) {
        float* m = reinterpret_cast<float*>(p.metrics);
        m[0] = c[0] * inv_pairs;
        m[1] = c[1];
        m[2] = c[2] * inv_pairs;
    }
}

// ---- PRO -------------------------------------------------------------------------------------------
// Responses of a group in ranking order (best first) with rewards r; s_k = mean log-prob. Stage k:
// z_k = s_k T_kk, z_i = s_i (r_k - r_i) for i > k, T_kk = max_i (r_k - r_i);
// L_k = log(1e-10 + sum exp z) - z_k, averaged over the batch and summed over stages; plus
// sft_weight (n - 1)^2 mean(-S_0) on the top response's summed log-prob.
__device__ __forceinline__ float pro_score(const GroupLossParams& p, int64_t s) {
    const float* st = seq_stats_row(p, s);
    return st[PREFK_STAT_SUM] / fmaxf(st[PREFK_STAT_COUNT], 1.f);
}

__device__ void pro(const GroupLossParams& p, float* scratch) {
    const int64_t n = p.group_size, n_groups = p.n_seqs / n;
    const float inv_b = 1.f / (float)n_groups;
    const float sft_coef = p.p0 * (float)((n - 1) * (n - 1));
    const float log_eps = logf(1e-10f);
    float acc[3] = {0.f, 0.f, 0.f};  // ranking loss, sft loss, ordered adjacent pairs
    for (int64_t g = threadIdx.x; g < n_groups; g += GROUP_THREADS) {
        const int64_t base = g * n;
        const float* r = reinterpret_cast<const float*>(p.labels) + base;
        float* ds = reinterpret_cast<float*>(p.scratch) + base * 2;  // [n, 2]: d L / d s, unused
        for (int64_t i = 0; i < n; ++i) ds[2 * i] = 0.f;
        for (int64_t k = 0; k + 1 < n; ++k) {
            const float sk = pro_score(p, base + k);
            float tkk = -INFINITY;
            for (int64_t i = k + 1; i < n; ++i) tkk = fmaxf(tkk, r[k] - r[i]);
            // log(1e-10 + sum_i exp z_i) by a running logaddexp over the stage's terms.
            float lse = gl_logaddexp(log_eps, sk * tkk);
            for (int64_t i = k + 1; i < n; ++i) lse = gl_logaddexp(lse, pro_score(p, base + i) * (r[k] - r[i]));
            acc[0] += lse - sk * tkk;
            ds[2 * k] += (expf(sk * tkk - lse) - 1.f) * tkk;
            for (int64_t i = k + 1; i < n; ++i)
                ds[2 * i] += expf(pro_score(p, base + i) * (r[k] - r[i]) - lse) * (r[k] - r[i]);
            acc[2] += sk > pro_score(p, base + k + 1) ? 1.f : 0.f;
        }
        acc[1] -= seq_stats_row(p, base)[PREFK_STAT_SUM];
        for (int64_t i = 0; i < n; ++i) {
            const float count = fmaxf(seq_stats_row(p, base + i)[PREFK_STAT_COUNT], 1.f);
            write_coef(p, base + i, ds[2 * i] * inv_b / count + (i == 0 ? -sft_coef * inv_b : 0.f));
            write_out(p, base + i, pro_score(p, base + i));
        }
    }
    block_sum<GROUP_THREADS, 3>(acc, scratch);
    if (threadIdx.x == 0) {
        float* m = reinterpret_cast<float*>(p.metrics);
        m[1] = acc[0] * inv_b;
        m[2] = sft_coef * acc[1] * inv_b;
        m[0] = m[1] + m[2];
        m[3] = n > 1 ? acc[2] / (float)(n_groups * (n - 1)) : 0.f;
    }
}

// One block (the lists are few); without the minimum of one block per SM ptxas capped it at 64
// registers for occupancy it cannot use, and spilled on sm_100.
PREFK_KERNEL(group_loss, GroupLossParams, GROUP_THREADS, 1) {
    PREFK_SHARED_ARRAY(float, scratch, (GROUP_THREADS / 32) * 7);
    if (threadIdx.x == 0) {
        float* m = reinterpret_cast<float*>(p.metrics);
        for (int k = 0; k < PREFK_GROUP_METRICS; ++k) m[k] = 0.f;  // the slots a loss leaves unused
    }
    switch (p.kind) {
        case PREFK_GROUP_KTO: kto(p, scratch); break;
        case PREFK_GROUP_LIPO: lipo(p, scratch); break;
        default: pro(p, scratch);
    }
}
