// Fused preference losses: one block evaluates every pair (per-pair loss, metrics, gradient
// coefficients), reduces the batch metrics in a fixed order, then gathers each sequence's token
// coefficients from the pairs that use it (in pair order). Deterministic; no float atomics.
// AOT terms compare sorted batch statistics: the block first writes every pair's log-ratios, then
// each pair finds its stable rank by counting (O(P^2) comparisons, no sort network to get wrong)
// and scatters its value to that rank, so each pair can read the value it is matched with.
// The per-token gradient is then applied by token_grad (seq_reduce.cu). Formulas: src/preference_loss
// (reference.rs mirrors this file in f64).
#include "common.cuh"

constexpr int PAIR_THREADS = 256;

__device__ __forceinline__ float log1mexp_(float x) {  // log(1 - e^x), x < 0
    return x < -0.6931471805599453f ? log1pf(-expf(x)) : logf(-expm1f(x));
}

struct Stats {
    float count, wmass, sum, wsum, dsum, dwsum, gwmass, gcount, gwsum;  // dsum: sum of logp - ref
};
__device__ __forceinline__ Stats load_stats(uint64_t stats, int64_t s) {
    const float* p = reinterpret_cast<const float*>(stats) + s * PREFK_SEQ_STATS;
    return {p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8]};
}

// psi(d) and psi'(d): TRL's full f-divergence transforms (src/preference_loss/reference.rs): forward KL
// 1 - e^-d (not clamped: inf beyond f32's range), JS log 2 + log sigmoid(d), alpha
// (e^((alpha-1) d) - 1) / (alpha - 1) with the exponent clamped at 80 as TRL does.
__device__ __forceinline__ void psi(uint32_t div, float alpha, float d, float& v, float& dv) {
    switch (div) {
        case PREFK_DIV_FORWARD_KL:
            v = -expm1f(-d);
            dv = expf(-d);
            return;
        case PREFK_DIV_JS:
            v = PREFK_LN2 - softplus_(-d);
            dv = sigmoid_(-d);
            return;
        case PREFK_DIV_ALPHA: {
            const float a = alpha - 1.f;
            if (fabsf(a) >= 1e-6f) {
                const float t = fminf(a * d, 80.f);
                v = expm1f(t) / a;
                dv = a * d < 80.f ? expf(t) : 0.f;
                return;
            }
            [[fallthrough]];  // alpha = 1 is reverse KL
        }
        default:
            v = d;
            dv = 1.f;
    }
}

struct TermOut {
    float phi, cc[3], cr[3], reward_c, reward_r, score_c, score_r, barrier;
    float barrier_loss;  // lambda * barrier, the part of phi TAB-PO logs as loss/barrier
};

__device__ TermOut pair_term(const LossTerm& L, const PreferenceLossParams& p, const Stats& c, const Stats& r,
                             bool has_ref_seq, float ref_c_seq, float ref_r_seq) {
    TermOut o = {};
    const float beta = L.beta;
    const float sc = aggregate(L.agg, c.sum, c.wsum, c.count, c.wmass);
    const float sr = aggregate(L.agg, r.sum, r.wsum, r.count, r.wmass);
    // Log-ratios: aggregated per-token differences, or score minus the given sequence reference.
    const float dc = has_ref_seq ? sc - ref_c_seq : aggregate(L.agg, c.dsum, c.dwsum, c.count, c.wmass);
    const float dr = has_ref_seq ? sr - ref_r_seq : aggregate(L.agg, r.dsum, r.dwsum, r.count, r.wmass);
    float kc0, kc1, kr0, kr1;
    token_coef(L.agg, c.count, c.wmass, kc0, kc1);
    token_coef(L.agg, r.count, r.wmass, kr0, kr1);
    o.score_c = sc;
    o.score_r = sr;
    o.reward_c = beta * dc;
    o.reward_r = beta * dr;
    float gc = 0.f, gr = 0.f;  // dphi/dS_c, dphi/dS_r

    if (L.kind <= PREFK_LOSS_DISCOPOP || L.kind == PREFK_LOSS_SIGMOID_NORM) {  // DPO family: psi(log-ratios)
        float pc, qc, pr, qr;
        psi(p.divergence, p.alpha_div, dc, pc, qc);
        psi(p.divergence, p.alpha_div, dr, pr, qr);
        const float x = beta * (pc - pr);
        float phi = 0.f, dpc = 0.f, dpr = 0.f;  // dphi/dpsi_c, dphi/dpsi_r
        switch (L.kind) {
            case PREFK_LOSS_SIGMOID: {
                const float e = L.p0;
                phi = (1.f - e) * softplus_(-x) + e * softplus_(x);
                const float dx = e - sigmoid_(-x);
                dpc = beta * dx;
                dpr = -beta * dx;
                break;
            }
            case PREFK_LOSS_ROBUST: {
                const float e = L.p0;
                phi = ((1.f - e) * softplus_(-x) - e * softplus_(x)) / (1.f - 2.f * e);
                const float dx = (-(1.f - e) * sigmoid_(-x) - e * sigmoid_(x)) / (1.f - 2.f * e);
                dpc = beta * dx;
                dpr = -beta * dx;
                break;
            }
            case PREFK_LOSS_HINGE: {
                phi = fmaxf(1.f - x, 0.f);
                const float dx = x < 1.f ? -1.f : 0.f;
                dpc = beta * dx;
                dpr = -beta * dx;
                break;
            }
            case PREFK_LOSS_SIGMOID_NORM: {  // TRL: per-side length normalization, as IPO
                const float nc = fmaxf(c.count, 1.f), nr = fmaxf(r.count, 1.f);
                const float y = beta * (pc / nc - pr / nr);
                phi = softplus_(-y);
                const float dy = -sigmoid_(-y);
                dpc = beta * dy / nc;
                dpr = -beta * dy / nr;
                break;
            }
            case PREFK_LOSS_IPO: {
                const float nc = fmaxf(c.count, 1.f), nr = fmaxf(r.count, 1.f);
                const float h = pc / nc - pr / nr - 0.5f / beta;
                phi = h * h;
                dpc = 2.f * h / nc;
                dpr = -2.f * h / nr;
                break;
            }
            case PREFK_LOSS_EXO_PAIR: {
                const float e = L.p0;
                phi = sigmoid_(x) * (-softplus_(-x) - log1pf(-e)) + sigmoid_(-x) * (-softplus_(x) - logf(e));
                const float dx = sigmoid_prime_(x) * (x - logf((1.f - e) / e));
                dpc = beta * dx;
                dpr = -beta * dx;
                break;
            }
            case PREFK_LOSS_NCA_PAIR: {
                const float hc = beta * pc, hr = beta * pr;
                phi = softplus_(-hc) + 0.5f * softplus_(hc) + 0.5f * softplus_(hr);
                dpc = beta * (0.5f * sigmoid_(hc) - sigmoid_(-hc));
                dpr = beta * 0.5f * sigmoid_(hr);
                break;
            }
            case PREFK_LOSS_BCO_PAIR: {
                const float hc = beta * pc, hr = beta * pr;
                phi = softplus_(-hc) + softplus_(hr);
                dpc = -beta * sigmoid_(-hc);
                dpr = beta * sigmoid_(hr);
                break;
            }
            case PREFK_LOSS_SPPO_HARD: {
                const float a = pc - 0.5f / beta, b = pr + 0.5f / beta;
                phi = a * a + b * b;
                dpc = 2.f * a;
                dpr = 2.f * b;
                break;
            }
            case PREFK_LOSS_APO_ZERO: {  // raw log-ratios, no psi
                phi = sigmoid_(-beta * dc) + sigmoid_(beta * dr);
                gc = -beta * sigmoid_prime_(beta * dc);
                gr = beta * sigmoid_prime_(beta * dr);
                break;
            }
            case PREFK_LOSS_APO_DOWN: {
                phi = sigmoid_(beta * dc) + sigmoid_(-x);
                gc = beta * sigmoid_prime_(beta * dc);
                dpc = -beta * sigmoid_prime_(x);
                dpr = -dpc;
                break;
            }
            case PREFK_LOSS_DISCOPOP: {
                const float tau = L.p0;
                // Not clamped, as TRL; for x < 0, mu e^-x and sigma'(x/tau) e^-x come from one
                // exponential e^(x/tau - x), finite wherever the products are.
                const float a = x / tau;
                float mu_e, sp_e;
                if (x < 0.f) {
                    const float ea = expf(a), eax = expf(a - x);
                    mu_e = eax / (1.f + ea);
                    sp_e = eax / ((1.f + ea) * (1.f + ea));
                } else {
                    const float e = expf(-x);
                    mu_e = sigmoid_(a) * e;
                    sp_e = sigmoid_prime_(a) * e;
                }
                const float one_minus_mu = sigmoid_(-a);
                phi = one_minus_mu * softplus_(-x) + mu_e;
                const float dx = (sp_e - sigmoid_prime_(a) * softplus_(-x)) / tau - one_minus_mu * sigmoid_(-x) - mu_e;
                dpc = beta * dx;
                dpr = -beta * dx;
                break;
            }
        }
        o.phi = phi;
        gc += dpc * qc;
        gr += dpr * qr;
    } else {
        switch (L.kind) {
            case PREFK_LOSS_SIMPO:
            case PREFK_LOSS_CPO: {
                const float y = beta * (sc - sr) - (L.kind == PREFK_LOSS_SIMPO ? L.p1 : 0.f);
                float dy;
                if (L.flags & 1u) {
                    o.phi = fmaxf(1.f - y, 0.f);
                    dy = y < 1.f ? -1.f : 0.f;
                } else {
                    const float e = L.p0;
                    o.phi = (1.f - e) * softplus_(-y) + e * softplus_(y);
                    dy = e - sigmoid_(-y);
                }
                gc = beta * dy;
                gr = -beta * dy;
                o.reward_c = beta * sc;
                o.reward_r = beta * sr;
                break;
            }
            case PREFK_LOSS_ORPO: {
                o.reward_c = beta * sc;
                o.reward_r = beta * sr;
                if (c.count == 0.f || r.count == 0.f) return o;  // an empty side contributes 0
                // Mean log-probs clamped at -FLT_MIN only, so log(-expm1(S)) stays finite.
                const float xc = fminf(sc, -FLT_MIN), xr = fminf(sr, -FLT_MIN);
                const float lo = (xc - xr) - (log1mexp_(xc) - log1mexp_(xr));
                o.phi = beta * softplus_(-lo);
                const float dlo = -beta * sigmoid_(-lo);
                gc = sc < -FLT_MIN ? dlo / -expm1f(xc) : 0.f;
                gr = sr < -FLT_MIN ? -dlo / -expm1f(xr) : 0.f;
                break;
            }
            case PREFK_LOSS_TGDPO: {  // token weights carry the rewards; sum aggregation, beta inside z
                const float ab2 = L.p0 * beta * beta;
                const float pc = beta * c.dsum + ab2 * c.dwsum;
                const float pr = beta * r.dsum - ab2 * r.dwsum;
                const float z = pc - pr;
                o.phi = softplus_(-z);
                const float s = sigmoid_(-z);
                o.cc[0] = -s * beta;
                o.cc[1] = -s * ab2;
                o.cr[0] = s * beta;
                o.cr[1] = -s * ab2;
                return o;
            }
            case PREFK_LOSS_TABPO: {
                const float lambda = L.p1;
                const float z = dc - dr;
                o.phi = softplus_(-beta * z);
                gc = -beta * sigmoid_(-beta * z);
                gr = -gc;
                // Barrier on under-confident chosen tokens; w~ = w N / max(W, 1e-6), N = max(count, 1).
                const float scale = fmaxf(c.count, 1.f) / fmaxf(c.wmass, PREFK_WMASS_EPS);
                const float gm = c.gwmass * scale;
                const float d = L.flags == 1u ? fmaxf(c.gcount, 1.f) : (L.flags == 2u ? fmaxf(gm, PREFK_WMASS_EPS) : fmaxf(gm, 1.f));
                o.barrier = -c.gwsum * scale / d;
                o.barrier_loss = lambda * o.barrier;
                o.phi += o.barrier_loss;
                o.cc[2] = -lambda * scale / d;
                break;
            }
        }
    }
    o.cc[0] += gc * kc0;
    o.cc[1] += gc * kc1;
    o.cr[0] += gr * kr0;
    o.cr[1] += gr * kr1;
    return o;
}

// ---- AOT: sorted batch statistics ------------------------------------------------------------------
// pair_sort row i: [0] policy margin Sc - Sr, [1] reference margin, [2] Delta_c, [3] Delta_r, and at
// row k the k-th smallest [4] reference margin, [5] Delta_c, [6] Delta_r (stable: ties by index).
__device__ __forceinline__ int64_t stable_rank(const float* ps, int col, int64_t n, int64_t i) {
    const uint32_t ki = order_key(ps[i * PREFK_PAIR_SORT + col]);
    int64_t rank = 0;
    for (int64_t j = 0; j < n; ++j) {
        const uint32_t kj = order_key(ps[j * PREFK_PAIR_SORT + col]);
        rank += (kj < ki || (kj == ki && j < i)) ? 1 : 0;
    }
    return rank;
}

// The label-smoothed logistic loss of x and its derivative (TRL's aot form).
__device__ __forceinline__ void smoothed_logistic(float x, float e, float& phi, float& dx) {
    phi = (1.f - e) * softplus_(-x) + e * softplus_(x);
    dx = e - sigmoid_(-x);
}

// Pair i of an AOT term: its value at its rank, matched with the other sorted column's value there.
__device__ PREFK_NOINLINE TermOut aot_term(const LossTerm& L, const PreferenceLossParams& p, int64_t i, const Stats& c, const Stats& r) {
    TermOut o = {};
    const float beta = L.beta;
    const float* ps = reinterpret_cast<const float*>(p.pair_sort);
    const float* row = ps + i * PREFK_PAIR_SORT;
    const float sc = aggregate(L.agg, c.sum, c.wsum, c.count, c.wmass);
    const float sr = aggregate(L.agg, r.sum, r.wsum, r.count, r.wmass);
    o.score_c = sc;
    o.score_r = sr;
    o.reward_c = beta * row[2];
    o.reward_r = beta * row[3];
    float gc, gr, dx;
    if (L.kind == PREFK_LOSS_AOT) {
        const int64_t k = stable_rank(ps, 0, p.n_pairs, i);
        smoothed_logistic(beta * (row[0] - ps[k * PREFK_PAIR_SORT + 4]), L.p0, o.phi, dx);
        gc = beta * dx;
        gr = -gc;
    } else {
        const int64_t kc = stable_rank(ps, 2, p.n_pairs, i), kr = stable_rank(ps, 3, p.n_pairs, i);
        smoothed_logistic(beta * (row[2] - ps[kc * PREFK_PAIR_SORT + 6]), L.p0, o.phi, dx);
        gc = beta * dx;
        float phi_r;
        smoothed_logistic(beta * (ps[kr * PREFK_PAIR_SORT + 5] - row[3]), L.p0, phi_r, dx);
        gr = -beta * dx;
    }
    float kc0, kc1, kr0, kr1;
    token_coef(L.agg, c.count, c.wmass, kc0, kc1);
    token_coef(L.agg, r.count, r.wmass, kr0, kr1);
    o.cc[0] = gc * kc0;
    o.cc[1] = gc * kc1;
    o.cr[0] = gr * kr0;
    o.cr[1] = gr * kr1;
    return o;
}

__device__ __forceinline__ bool is_aot(uint32_t kind) {
    return kind == PREFK_LOSS_AOT || kind == PREFK_LOSS_AOT_UNPAIRED;
}

// Pair i's sequences; false (and a status bit) when an explicit index is out of range.
__device__ __forceinline__ bool pair_seqs(const PreferenceLossParams& p, int64_t i, int64_t& c, int64_t& r) {
    if (p.chosen == 0) {
        c = i;
        r = i + p.n_pairs;
        return true;
    }
    c = reinterpret_cast<const int32_t*>(p.chosen)[i];
    r = reinterpret_cast<const int32_t*>(p.rejected)[i];
    if (c < 0 || c >= p.n_seqs || r < 0 || r >= p.n_seqs) {
        report_status(p.status, PREFK_STATUS_BAD_PAIR);
        return false;
    }
    return true;
}

PREFK_KERNEL(preference_loss, PreferenceLossParams, PAIR_THREADS) {
    PREFK_SHARED_ARRAY(float, scratch, (PAIR_THREADS / 32) * 12);
    const float inv_p = 1.f / (float)(p.batch_pairs > 0 ? p.batch_pairs : p.n_pairs);
    float* pair_coef = reinterpret_cast<float*>(p.pair_coef);
    const float* ref_seq = reinterpret_cast<const float*>(p.ref_seq);
    const float* seq_w = reinterpret_cast<const float*>(p.seq_weights);
    // WPO: each pair's loss (every term) times the detached w_c w_r.
    auto pair_weight = [&](int64_t c, int64_t r) -> float { return seq_w ? seq_w[c] * seq_w[r] : 1.f; };

    // 0. AOT: every pair's log-ratios, then the sorted columns (see aot_term).
    if (p.flags & PREFK_PAIR_FLAG_AOT) {
        float* ps = reinterpret_cast<float*>(p.pair_sort);
        uint32_t agg = PREFK_AGG_SUM;
        for (int k = 0; k < (int)p.n_terms; ++k)
            if (is_aot(p.terms[k].kind)) agg = p.terms[k].agg;
        for (int64_t i = threadIdx.x; i < p.n_pairs; i += PAIR_THREADS) {
            float v[4] = {0.f, 0.f, 0.f, 0.f};
            int64_t c, r;
            if (pair_seqs(p, i, c, r)) {
                const Stats a = load_stats(p.stats, c), b = load_stats(p.stats, r);
                const float sc = aggregate(agg, a.sum, a.wsum, a.count, a.wmass);
                const float sr = aggregate(agg, b.sum, b.wsum, b.count, b.wmass);
                const float dc = ref_seq ? sc - ref_seq[c] : aggregate(agg, a.dsum, a.dwsum, a.count, a.wmass);
                const float dr = ref_seq ? sr - ref_seq[r] : aggregate(agg, b.dsum, b.dwsum, b.count, b.wmass);
                v[0] = sc - sr;
                v[1] = ref_seq ? ref_seq[c] - ref_seq[r] : (sc - dc) - (sr - dr);
                v[2] = dc;
                v[3] = dr;
            }
            for (int j = 0; j < 4; ++j) ps[i * PREFK_PAIR_SORT + j] = v[j];
        }
        __syncthreads();
        for (int64_t i = threadIdx.x; i < p.n_pairs; i += PAIR_THREADS) {
            for (int col = 1; col <= 3; ++col) {  // ranks are a permutation: one writer per slot
                const int64_t k = stable_rank(ps, col, p.n_pairs, i);
                ps[k * PREFK_PAIR_SORT + 3 + col] = ps[i * PREFK_PAIR_SORT + col];
            }
        }
        __syncthreads();
    }

    // 1. Batch NLL over all chosen tokens (a sequence counts once per pair it is chosen in), and
    // the WPO weights' sum (the NLL term, a batch scalar in TRL, is scaled by their mean).
    float nll[3] = {0.f, 0.f, 0.f};
    for (int64_t i = threadIdx.x; i < p.n_pairs; i += PAIR_THREADS) {
        int64_t c, r;
        if (!pair_seqs(p, i, c, r)) continue;
        const Stats sc = load_stats(p.stats, c);
        nll[0] -= sc.sum;
        nll[1] += sc.count;
        nll[2] += pair_weight(c, r);
    }
    block_sum<PAIR_THREADS, 3>(nll, scratch);
    if (p.batch_nll_count >= 0.f) nll[1] = p.batch_nll_count;
    const float nll_loss = nll[1] > 0.f ? nll[0] / nll[1] : 0.f;
    const float nll_weight_mean = seq_w ? nll[2] / (float)p.n_pairs : 1.f;

    // 2. Every pair: loss, metrics, gradient coefficients (into the pair_coef workspace).
    int first_pairwise = -1;
    for (int k = (int)p.n_terms - 1; k >= 0; --k)
        if (p.terms[k].kind != PREFK_LOSS_NLL) first_pairwise = k;
    // m: pref loss (without TAB-PO's barrier), rewards c/r, margins, accuracies, logps c/r,
    // barrier loss (lambda B), p_pref, gated, chosen tokens
    float m[11] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int64_t i = threadIdx.x; i < p.n_pairs; i += PAIR_THREADS) {
        float coef[PREFK_PAIR_COEF] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        float col[PREFK_PAIR_COLUMNS] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        float barrier_loss = 0.f;
        int64_t c, r;
        if (pair_seqs(p, i, c, r)) {
            const Stats sc = load_stats(p.stats, c), sr = load_stats(p.stats, r);
            const bool has_ref = ref_seq != nullptr;
            const float rfc = has_ref ? ref_seq[c] : 0.f, rfr = has_ref ? ref_seq[r] : 0.f;
            const float pw = pair_weight(c, r);
            for (int k = 0; k < (int)p.n_terms; ++k) {
                const LossTerm& L = p.terms[k];
                const float w = L.weight;
                if (L.kind == PREFK_LOSS_NLL) {
                    if (nll[1] > 0.f) coef[0] -= p.grad_scale * w * nll_weight_mean / nll[1];
                    continue;
                }
                const TermOut o = is_aot(L.kind) ? aot_term(L, p, i, sc, sr)
                                                 : pair_term(L, p, sc, sr, has_ref, rfc, rfr);
                // WPO's pair weight scales the term's loss and gradient (not its rewards).
                const float wp = w * pw;
                col[0] += wp * o.phi;
                const float g = p.grad_scale * wp * inv_p;
#pragma unroll
                for (int j = 0; j < 3; ++j) {
                    coef[j] += g * o.cc[j];
                    coef[3 + j] += g * o.cr[j];
                }
                if (L.kind == PREFK_LOSS_TABPO) {
                    col[5] = o.barrier;
                    barrier_loss = wp * o.barrier_loss;
                    m[9] += sc.gcount;
                    m[10] += sc.count;
                }
                if (k == first_pairwise) {
                    col[1] = o.reward_c;
                    col[2] = o.reward_r;
                    col[3] = o.score_c;
                    col[4] = o.score_r;
                }
            }
        }
#pragma unroll
        for (int j = 0; j < PREFK_PAIR_COEF; ++j) pair_coef[i * PREFK_PAIR_COEF + j] = coef[j];
        if (p.pair_out) {
            float* out = reinterpret_cast<float*>(p.pair_out) + i * PREFK_PAIR_COLUMNS;
#pragma unroll
            for (int j = 0; j < PREFK_PAIR_COLUMNS; ++j) out[j] = col[j];
        }
        m[0] += col[0] - barrier_loss;
        m[1] += col[1];
        m[2] += col[2];
        m[3] += col[1] - col[2];
        m[4] += col[1] > col[2] ? 1.f : 0.f;
        m[5] += col[3];
        m[6] += col[4];
        m[7] += barrier_loss;
        m[8] += sigmoid_(col[1] - col[2]);
    }
    block_sum<PAIR_THREADS, 11>(m, scratch);
    if (threadIdx.x == 0) {
        float* out = reinterpret_cast<float*>(p.metrics);
        float nll_weight = 0.f;
        for (int k = 0; k < (int)p.n_terms; ++k)
            if (p.terms[k].kind == PREFK_LOSS_NLL) nll_weight += p.terms[k].weight;
        out[1] = m[0] * inv_p;
        out[2] = nll_loss;
        for (int j = 1; j <= 7; ++j) out[2 + j] = m[j] * inv_p;  // rewards .. loss/barrier
        out[0] = out[1] + out[9] + nll_weight * nll_weight_mean * nll_loss;
        out[10] = m[10] > 0.f ? m[9] / m[10] : 0.f;
        out[11] = m[8] * inv_p;
        out[12] = m[9];  // gated and chosen token counts: a chunked batch sums them for out[10]
        out[13] = m[10];
        for (int j = 14; j < PREFK_METRICS; ++j) out[j] = 0.f;
    }
    __syncthreads();  // pair_coef written above is read by other threads below

    // 3. Each sequence gathers the coefficients of the pairs that use it, in pair order.
    float* seq_coef = reinterpret_cast<float*>(p.seq_coef);
    for (int64_t s = threadIdx.x; s < p.n_seqs; s += PAIR_THREADS) {
        float acc[3] = {0.f, 0.f, 0.f};
        if (p.chosen == 0) {
            const int64_t i = s < p.n_pairs ? s : s - p.n_pairs;
            const int off = s < p.n_pairs ? 0 : 3;
            if (i < p.n_pairs)
                for (int j = 0; j < 3; ++j) acc[j] = pair_coef[i * PREFK_PAIR_COEF + off + j];
        } else {
            const int32_t* ch = reinterpret_cast<const int32_t*>(p.chosen);
            const int32_t* rj = reinterpret_cast<const int32_t*>(p.rejected);
            for (int64_t i = 0; i < p.n_pairs; ++i) {
                if (ch[i] == s)
                    for (int j = 0; j < 3; ++j) acc[j] += pair_coef[i * PREFK_PAIR_COEF + j];
                if (rj[i] == s)
                    for (int j = 0; j < 3; ++j) acc[j] += pair_coef[i * PREFK_PAIR_COEF + 3 + j];
            }
        }
        for (int j = 0; j < 3; ++j) seq_coef[s * 3 + j] = acc[j];
    }
}
