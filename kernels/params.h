// Parameter structs shared by the CUDA kernels and the Rust host code.
//
// This header is the single source of truth: src/params.rs mirrors every struct as #[repr(C)] with
// compile-time size/offset assertions (and can be regenerated with `--features regen-bindings`).
// Device pointers are carried as uint64_t so the raw-pointer API (PyTorch data_ptr(), candle, burn)
// passes them through unchanged. All sizes are int64_t: index arithmetic is 64-bit everywhere.
#ifndef PREF_KERNELS_PARAMS_H
#define PREF_KERNELS_PARAMS_H

#include <stdint.h>

// Bits OR-ed into the optional u32 status word by kernels that validate device-side data.
#define PREFK_STATUS_BAD_TARGET 1u

// Forward of the fused token log-probs op (log-softmax gather).
typedef struct TokenLogprobsFwdParams {
    uint64_t logits;        // [n_rows, row_stride] f32/f16/bf16, row-major; only the first vocab columns are read
    uint64_t targets;       // [n_rows] i32 or i64
    uint64_t logp;          // out [n_rows] f32: logit[t]/T - logsumexp(logits/T); 0 on ignored rows
    uint64_t lse;           // out [n_rows] f32: logsumexp(logits/T); 0 on ignored rows
    uint64_t entropy;       // out [n_rows] f32 entropy of softmax(logits/T), or 0 (not computed)
    uint64_t status;        // u32 status word (PREFK_STATUS_*), or 0 (not reported)
    int64_t n_rows;
    int64_t row_stride;     // in elements, >= vocab
    int64_t vocab;
    int64_t ignore_index;
    float inv_temperature;  // 1 / T
    uint32_t reserved;
    uint64_t stats;         // out [n_rows, PREFK_SOFTMAX_STATS] f32 for the backward, or 0 (not written)
    uint64_t log_sum_sq;    // out [n_rows] f32 log sum_v p_v^2 (WPO), or 0; with the entropy only
    uint64_t mean_logits;   // out [n_rows] f32 mean_v logits[r, v] / T, or 0; "full" entry points only
    uint64_t is_top1;       // out [n_rows] u8: the target is the first argmax of the row, or 0; "full" only
} TokenLogprobsFwdParams;

// Top-k log-probs of each row: the k largest log p_v (descending; equal values by ascending id) and
// their ids, from the logits and the forward's softmax statistics, so topk_logp at the target's id
// is bitwise the forward's logp. Ignored rows get logp 0 and id -1, rows with a bad target NaN, -1.
typedef struct TokenTopkParams {
    uint64_t logits;        // [n_rows, row_stride] f32/f16/bf16
    uint64_t targets;       // [n_rows] i32 or i64 (ignored / bad rows are skipped)
    uint64_t stats;         // [n_rows, PREFK_SOFTMAX_STATS] f32, from the forward
    uint64_t topk_logp;     // out [n_rows, k] f32
    uint64_t topk_ids;      // out [n_rows, k] i64
    uint64_t status;        // u32 status word, or 0
    int64_t n_rows;
    int64_t row_stride;     // in elements, >= vocab
    int64_t vocab;          // >= k
    int64_t ignore_index;
    int64_t k;              // 1 ..= PREFK_TOPK_MAX
    float inv_temperature;
    uint32_t reserved;
} TokenTopkParams;
#define PREFK_TOPK_MAX 64

// Per-row softmax statistics: what the backward needs to form p_v from x_v - m (exact in f32 near
// the max) at any logit magnitude. A single rounded lse cannot carry it: its rounding error, half
// an ulp of m / T, becomes a relative error of every p_v. Ignored rows hold 0, bad ones NaN.
#define PREFK_SOFTMAX_STATS 2
#define PREFK_STATS_MAX 0       // m = max_v x_v, in the logits' own units (not divided by T)
#define PREFK_STATS_LOG2_SUM 1  // log2 sum_v 2^((x_v - m) log2(e) / T); lse = m / T + ln2 * this

// Backward: grad_logits[r, v] = grad_logp[r] * (1[v == t_r] - p_v) / T
//                              - grad_entropy[r] * p_v * (log p_v + H_r) / T,   p = softmax(logits[r] / T),
// the entropy term only when grad_entropy is given (then entropy holds H from the forward).
typedef struct TokenLogprobsBwdParams {
    uint64_t logits;        // [n_rows, logits_stride] f32/f16/bf16
    uint64_t targets;       // [n_rows] i32 or i64
    uint64_t stats;         // [n_rows, PREFK_SOFTMAX_STATS] f32, from the forward
    uint64_t grad_logp;     // [n_rows] f32
    uint64_t grad_logits;   // out [n_rows, grad_stride], logits dtype; may equal logits (in place)
    uint64_t status;        // u32 status word, or 0
    int64_t n_rows;
    int64_t logits_stride;  // in elements, >= vocab
    int64_t grad_stride;    // in elements, >= vocab (== logits_stride when in place)
    int64_t vocab;
    int64_t ignore_index;
    float inv_temperature;
    uint32_t reserved;
    uint64_t entropy;       // [n_rows] f32 entropy from the forward, or 0 (no entropy gradient)
    uint64_t grad_entropy;  // [n_rows] f32 dL/dH, or 0; given iff entropy is
} TokenLogprobsBwdParams;

#ifdef __cplusplus
static_assert(sizeof(TokenTopkParams) == 96, "TokenTopkParams layout changed: update src/params.rs");
static_assert(sizeof(TokenLogprobsFwdParams) == 120, "TokenLogprobsFwdParams layout changed: update src/params.rs");
static_assert(sizeof(TokenLogprobsBwdParams) == 112, "TokenLogprobsBwdParams layout changed: update src/params.rs");
#endif

// ---- per-sequence reductions and preference losses ------------------------------------------------
#define PREFK_STATUS_BAD_SEQLENS 2u     // cu_seqlens not non-decreasing within [0, n_tokens]
#define PREFK_STATUS_BAD_PAIR 4u        // a pair index outside [0, n_seqs)

// Per-sequence statistics (f32, PREFK_SEQ_STATS per sequence), m = mask, w = weight, gate = logp < ln tau.
#define PREFK_SEQ_STATS 10
#define PREFK_STAT_COUNT 0          // sum m
#define PREFK_STAT_WMASS 1          // sum m w
#define PREFK_STAT_SUM 2            // sum m logp
#define PREFK_STAT_WSUM 3           // sum m w logp
#define PREFK_STAT_DIFF_SUM 4       // sum m (logp - ref): log-ratios summed per token, no cancellation
#define PREFK_STAT_DIFF_WSUM 5      // sum m w (logp - ref)
#define PREFK_STAT_GATED_WMASS 6    // sum m gate w
#define PREFK_STAT_GATED_COUNT 7    // sum m gate
#define PREFK_STAT_GATED_WSUM 8     // sum m gate w logp

// Aggregation modes (ReduceMode in Rust).
#define PREFK_AGG_SUM 0u
#define PREFK_AGG_MEAN 1u
#define PREFK_AGG_WSUM 2u
#define PREFK_AGG_WMEAN 3u

// Sequences: cu_seqlens (i32, n_seqs + 1) or, when 0, padded rows of seq_len tokens.
typedef struct SeqStatsParams {
    uint64_t logp;          // [n_tokens] f32
    uint64_t mask;          // [n_tokens] u8 (0 = ignored), or 0 = all tokens count
    uint64_t weights;       // [n_tokens] f32, or 0 = 1
    uint64_t ref_logp;      // [n_tokens] f32, or 0
    uint64_t cu_seqlens;    // [n_seqs + 1] i32, or 0 (padded)
    uint64_t stats;         // out [n_seqs, PREFK_SEQ_STATS] f32, or 0
    uint64_t scores;        // out [n_seqs] f32 score by `mode`, or 0
    uint64_t status;        // u32 status word, or 0
    int64_t n_tokens;
    int64_t n_seqs;
    int64_t seq_len;        // padded layout only
    float log_tau;          // TAB-PO gate threshold; -inf disables the gate
    uint32_t mode;          // PREFK_AGG_* for `scores`
} SeqStatsParams;

// Per-token gradient: grad[t] = scale * m_t * (c0_s + c1_s w_t + c2_s gate_t w_t) for t in sequence s,
// 0 for masked tokens and tokens in no sequence. The coefficients come from `seq_coef` ([n_seqs, 3]),
// or, when it is 0, from dscores and the reduction `mode` (backward of the reductions).
typedef struct TokenGradParams {
    uint64_t logp;          // [n_tokens] f32 (for the gate)
    uint64_t mask;          // [n_tokens] u8, or 0
    uint64_t weights;       // [n_tokens] f32, or 0
    uint64_t cu_seqlens;    // [n_seqs + 1] i32, or 0 (padded)
    uint64_t seq_coef;      // [n_seqs, 3] f32, or 0
    uint64_t dscores;       // [n_seqs] f32 (when seq_coef is 0)
    uint64_t stats;         // [n_seqs, PREFK_SEQ_STATS] f32 (when seq_coef is 0)
    uint64_t grad_logp;     // out [n_tokens] f32
    int64_t n_tokens;
    int64_t n_seqs;
    int64_t seq_len;
    float log_tau;
    uint32_t mode;
    float scale;
    uint32_t reserved;
} TokenGradParams;

// Loss term kinds (Loss in Rust).
#define PREFK_LOSS_SIGMOID 0u
#define PREFK_LOSS_ROBUST 1u
#define PREFK_LOSS_HINGE 2u
#define PREFK_LOSS_IPO 3u
#define PREFK_LOSS_EXO_PAIR 4u
#define PREFK_LOSS_NCA_PAIR 5u
#define PREFK_LOSS_BCO_PAIR 6u
#define PREFK_LOSS_SPPO_HARD 7u
#define PREFK_LOSS_APO_ZERO 8u
#define PREFK_LOSS_APO_DOWN 9u
#define PREFK_LOSS_DISCOPOP 10u
#define PREFK_LOSS_SIMPO 11u
#define PREFK_LOSS_CPO 12u
#define PREFK_LOSS_ORPO 13u
#define PREFK_LOSS_TGDPO 14u
#define PREFK_LOSS_TABPO 15u
#define PREFK_LOSS_NLL 16u
#define PREFK_LOSS_SIGMOID_NORM 17u     // DPO family: sigmoid on length-normalized psi(Delta)
#define PREFK_LOSS_AOT 18u              // sorted policy vs sorted reference log-ratio margins
#define PREFK_LOSS_AOT_UNPAIRED 19u     // sorted chosen vs sorted rejected log-ratios

#define PREFK_DIV_REVERSE_KL 0u
#define PREFK_DIV_FORWARD_KL 1u
#define PREFK_DIV_JS 2u
#define PREFK_DIV_ALPHA 3u

#define PREFK_MAX_LOSS_TERMS 4
#define PREFK_PAIR_COLUMNS 6        // loss, chosen_reward, rejected_reward, chosen_logps, rejected_logps, barrier
#define PREFK_METRICS 16
#define PREFK_PAIR_COEF 6           // workspace per pair: chosen (c0, c1, c2), rejected (c0, c1, c2)
#define PREFK_PAIR_SORT 8           // workspace per pair for the AOT sorts (see preference_loss.cu)
#define PREFK_PAIR_FLAG_AOT 1u      // some term sorts the batch (aot, aot_unpaired)

// One loss term: p0..p2 are the kind's extra hyperparameters (label smoothing / epsilon / gamma /
// tau / alpha / lambda), flags its switches (hinge; TAB-PO barrier denominator), agg its aggregation.
typedef struct LossTerm {
    uint32_t kind;
    float weight;
    float beta;
    float p0;
    float p1;
    float p2;
    uint32_t agg;
    uint32_t flags;
} LossTerm;

typedef struct PreferenceLossParams {
    uint64_t stats;         // [n_seqs, PREFK_SEQ_STATS] f32 from the statistics kernel
    uint64_t ref_seq;       // [n_seqs] f32 per-sequence reference scores, or 0 (per-token sums in stats)
    uint64_t chosen;        // [n_pairs] i32, or 0: pair i = (i, i + n_pairs) (first half chosen)
    uint64_t rejected;      // [n_pairs] i32, or 0
    uint64_t pair_out;      // out [n_pairs, PREFK_PAIR_COLUMNS] f32, or 0
    uint64_t metrics;       // out [PREFK_METRICS] f32
    uint64_t pair_coef;     // workspace [n_pairs, PREFK_PAIR_COEF] f32
    uint64_t seq_coef;      // out [n_seqs, 3] f32 token-gradient coefficients
    uint64_t status;        // u32 status word, or 0
    int64_t n_seqs;
    int64_t n_pairs;
    uint32_t n_terms;
    uint32_t divergence;    // PREFK_DIV_*
    float alpha_div;        // alpha of PREFK_DIV_ALPHA
    float grad_scale;
    LossTerm terms[PREFK_MAX_LOSS_TERMS];
    // A sub-batch of a larger batch (the fused LM head's chunks of whole pairs): the mean over
    // pairs divides by batch_pairs (0: n_pairs), the NLL term by batch_nll_count (< 0: the
    // sub-batch's own chosen-token count), so per-chunk metrics and gradients sum to the batch's.
    int64_t batch_pairs;
    float batch_nll_count;
    uint32_t flags;         // PREFK_PAIR_FLAG_*
    uint64_t seq_weights;   // [n_seqs] f32 detached sequence weights (WPO), or 0: pair loss x w_c w_r
    uint64_t pair_sort;     // workspace [n_pairs, PREFK_PAIR_SORT] f32 (used with PREFK_PAIR_FLAG_AOT)
} PreferenceLossParams;

#ifdef __cplusplus
static_assert(sizeof(SeqStatsParams) == 96, "SeqStatsParams layout changed: update src/params.rs");
static_assert(sizeof(TokenGradParams) == 104, "TokenGradParams layout changed: update src/params.rs");
static_assert(sizeof(LossTerm) == 32, "LossTerm layout changed: update src/params.rs");
static_assert(sizeof(PreferenceLossParams) == 264, "PreferenceLossParams layout changed: update src/params.rs");
#endif

// ---- shared-prefix group attention ------------------------------------------------------------------
#define PREFK_ATTN_TILE 64          // query/key tile; tiles never cross a group boundary
#define PREFK_ATTN_TILE_FIELDS 8    // start, end, group start, prefix end, group end, min own-segment
                                    // start of the tile's response rows, end of rows seeing its keys, 0

typedef struct SharedPrefixAttentionParams {
    uint64_t q;             // [T, Hq, d] bf16/f16
    uint64_t k;             // [T, Hkv, d]
    uint64_t v;             // [T, Hkv, d]
    uint64_t o;             // [T, Hq, d] (out in forward, in for the backward's preprocess)
    uint64_t lse;           // [Hq, T] f32, natural log
    uint64_t dout;          // [T, Hq, d]
    uint64_t dq;            // out [T, Hq, d]
    uint64_t dk;            // out [T, Hkv, d]
    uint64_t dv;            // out [T, Hkv, d]
    uint64_t delta;         // workspace [Hq, T] f32: rowsum(dO * O)
    uint64_t tiles;         // [n_tiles, PREFK_ATTN_TILE_FIELDS] i32
    uint64_t seg_lo2;       // [T] i32: start of each token's own segment
    int64_t n_tokens;
    int64_t n_tiles;
    int32_t q_heads;
    int32_t kv_heads;
    float scale;            // softmax scale
    uint32_t reserved;
} SharedPrefixAttentionParams;

#ifdef __cplusplus
static_assert(sizeof(SharedPrefixAttentionParams) == 128, "SharedPrefixAttentionParams layout changed: update src/params.rs");
#endif

// ---- GRPO family (per-token policy-gradient losses) -------------------------------------------------
#define PREFK_GRPO_AGG_SEQ_MEAN 0u            // grpo, sapo: a_s = 1 / (S max(N_s, 1))
#define PREFK_GRPO_AGG_TOKEN_MEAN 1u          // bnpo: a = 1 / max(sum N, 1)
#define PREFK_GRPO_AGG_CONSTANT 2u            // dr_grpo: a = 1 / (S agg_param)
#define PREFK_GRPO_AGG_CONSTANT_OR_TOKENS 3u  // dapo, cispo, vespo: a = 1 / agg_param, or 1 / max(sum N, 1) if 0
#define PREFK_GRPO_AGG_SEQ_SUM 4u             // luspo: a = 1 / S (per-sequence sums, mean over sequences)
#define PREFK_GRPO_SURR_CLIP 0u
#define PREFK_GRPO_SURR_CISPO 1u
#define PREFK_GRPO_SURR_SAPO 2u
#define PREFK_GRPO_SURR_VESPO 3u              // -sg(phi_s) A logp, phi_s the gamma weight of the sequence
#define PREFK_GRPO_FLAG_SEQUENCE_IS 1u        // one ratio per sequence (GSPO)
#define PREFK_GRPO_FLAG_BIAS_KL 2u            // k3 times the (capped) ratio
#define PREFK_GRPO_FLAG_DELTA 4u              // cap the unclipped ratio at delta
#define PREFK_GRPO_FLAG_ENTROPY_MASK 8u       // threshold is computed (top-entropy quantile)
#define PREFK_GRPO_FLAG_OFF_POLICY_MASK 16u   // drop A < 0 sequences whose mean (sampling - logp) > threshold

// Per-sequence workspace row (f32): sums over the sequence's completion tokens.
#define PREFK_GRPO_SEQ_FIELDS 15
#define PREFK_GRPO_COUNT 0      // N_s
#define PREFK_GRPO_DSUM 1       // sum (logp - old)
#define PREFK_GRPO_RHO 2        // the sequence ratio exp(DSUM / max(N_s, 1))
#define PREFK_GRPO_LOSS 3       // sum loss_t (before the aggregation weight)
#define PREFK_GRPO_CROSS 4      // sum d loss_t / d rho (the sequence ratio's gradient share)
#define PREFK_GRPO_KL 5         // sum k3
#define PREFK_GRPO_ENTROPY 6    // sum H
#define PREFK_GRPO_LOW 7        // sum [rho < 1 - eps_low and A < 0]
#define PREFK_GRPO_HIGH 8       // sum [rho > 1 + eps_high and A > 0]
#define PREFK_GRPO_WEIGHT 9     // a_s, the aggregation weight (written by grpo_batch)
#define PREFK_GRPO_ECOUNT 10    // sum e (tokens the top-entropy mask keeps)
#define PREFK_GRPO_EH 11        // sum e H
#define PREFK_GRPO_EWEIGHT 12   // the entropy bonus's aggregation weight (written by grpo_batch)
#define PREFK_GRPO_GATE 13      // the off-policy sequence mask (1 keep, 0 drop)
#define PREFK_GRPO_PHI 14       // vespo's gamma weight phi_s (0 for other surrogates)
#define PREFK_GRPO_METRICS 8    // loss, kl, entropy, clip low, clip high, clip region, policy loss, phi mean

typedef struct GrpoParams {
    uint64_t logp;          // [n_tokens] f32 policy log-probs
    uint64_t old_logp;      // [n_tokens] f32 rollout log-probs, or 0 (on-policy: ratio 1)
    uint64_t sampling_logp; // [n_tokens] f32 inference-engine log-probs for the off-policy mask, or 0 (old_logp)
    uint64_t ref_logp;      // [n_tokens] f32 reference log-probs, or 0 (beta = 0)
    uint64_t mask;          // [n_tokens] u8 completion mask, or 0
    uint64_t is_weights;    // [n_tokens] f32 vLLM importance-sampling weights, or 0
    uint64_t entropy;       // [n_tokens] f32 entropies, or 0
    uint64_t advantages;    // [n_seqs] f32
    uint64_t cu_seqlens;    // [n_seqs + 1] i32, or 0 (padded rows of seq_len)
    uint64_t seq_work;      // workspace [n_seqs, PREFK_GRPO_SEQ_FIELDS] f32
    uint64_t threshold;     // workspace [1] f32: the top-entropy threshold
    uint64_t metrics;       // out [PREFK_GRPO_METRICS] f32
    uint64_t grad_logp;     // out [n_tokens] f32
    uint64_t grad_entropy;  // out [n_tokens] f32, or 0
    uint64_t status;        // u32 status word, or 0
    int64_t n_tokens;
    int64_t n_seqs;
    int64_t seq_len;
    uint32_t agg;           // PREFK_GRPO_AGG_*
    uint32_t surrogate;     // PREFK_GRPO_SURR_*
    uint32_t flags;         // PREFK_GRPO_FLAG_*
    float eps_low;
    float eps_high;
    float delta;
    float beta;
    float entropy_coef;
    float quantile;         // 1 - top_entropy_quantile
    float agg_param;        // dr_grpo max_completion_length; dapo/cispo normalizer (0 = local count)
    float tau_pos;          // sapo
    float tau_neg;
    float grad_scale;
    float accum_steps;      // G: non-dapo-style policy terms and the entropy bonus are divided by it
    float off_policy_threshold;
    float vespo_k_pos;      // vespo gamma shape k and rate lambda, A >= 0 / A < 0
    float vespo_lambda_pos;
    float vespo_k_neg;
    float vespo_lambda_neg;
    float batch_seqs;       // > 0: the whole batch's sequence count, when these are one chunk of it
    float batch_tokens;     // > 0: the whole batch's counted tokens (no top-entropy mask), likewise
    uint32_t reserved;
} GrpoParams;

#ifdef __cplusplus
static_assert(sizeof(GrpoParams) == 232, "GrpoParams layout changed: update src/params.rs");
#endif

// ---- group and listwise losses on sequence scores (KTO, LiPO-lambda, PRO) ---------------------------
#define PREFK_GROUP_KTO 0u
#define PREFK_GROUP_LIPO 1u
#define PREFK_GROUP_PRO 2u
#define PREFK_GROUP_FLAG_KL_GIVEN 1u      // KTO: z0 = kl_given (else from the KL samples, or 0 for APO)
#define PREFK_GROUP_FLAG_APO 2u           // KTO: apo_zero_unpaired
#define PREFK_GROUP_FLAG_LAMBDA 4u        // LiPO: lambda weights (else 1: pairwise logistic)
#define PREFK_KTO_UNDESIRABLE 0           // KTO labels (roles) per sequence
#define PREFK_KTO_DESIRABLE 1
#define PREFK_KTO_KL_SAMPLE 2             // a mismatched (prompt, completion) for the KL baseline
#define PREFK_KTO_IGNORED 3
#define PREFK_GROUP_METRICS 12

typedef struct GroupLossParams {
    uint64_t stats;         // [n_seqs, PREFK_SEQ_STATS] f32 from seq_stats (sums, log-ratio sums)
    uint64_t ref_seq;       // [n_seqs] f32 per-sequence reference sums, or 0 (per-token, in stats)
    uint64_t labels;        // [n_seqs] f32: KTO roles, LiPO labels psi, PRO rewards
    uint64_t seq_coef;      // out [n_seqs, 3] f32 token-gradient coefficients
    uint64_t seq_out;       // out [n_seqs] f32: KTO / LiPO reward beta (S - S_ref), PRO score; or 0
    uint64_t scratch;       // workspace [n_seqs, 2] f32: a list's scores and rank discounts
    uint64_t metrics;       // out [PREFK_GROUP_METRICS] f32
    int64_t n_seqs;
    int64_t group_size;     // LiPO / PRO: consecutive sequences per group (list)
    uint32_t kind;          // PREFK_GROUP_*
    uint32_t flags;         // PREFK_GROUP_FLAG_*
    float beta;
    float p0;               // KTO desirable weight; PRO sft weight
    float p1;               // KTO undesirable weight
    float kl_given;         // KTO z0 when PREFK_GROUP_FLAG_KL_GIVEN
    float grad_scale;
    uint32_t reserved;
} GroupLossParams;

#ifdef __cplusplus
static_assert(sizeof(GroupLossParams) == 104, "GroupLossParams layout changed: update src/params.rs");
#endif

// ---- fused LM head (hidden states -> logits chunks) -----------------------------------------------
#define PREFK_STATUS_BAD_ROW_INDEX 8u   // a gather/scatter row index outside [0, bound)

// Row movement between the full arrays and a chunk: gather dst[r] = src[index[r]] or scatter
// dst[index[r]] = src[r], rows of `width` elements of 2, 4 or 8 bytes.
typedef struct LinearRowsParams {
    uint64_t src;
    uint64_t dst;
    uint64_t index;         // [n_rows] i64 row indices into the full side
    uint64_t status;        // u32 status word, or 0
    int64_t n_rows;         // rows moved (the chunk side)
    int64_t width;          // elements per row
    int64_t src_stride;     // elements between rows of src
    int64_t dst_stride;     // elements between rows of dst
    int64_t bound;          // rows of the full side: index values must lie in [0, bound)
} LinearRowsParams;

// Bias of the LM head: broadcast into a chunk's logits rows, and d_bias += column sums of the
// chunk's d/dlogits (f32, rows in order: deterministic).
typedef struct LinearBiasParams {
    uint64_t bias;          // [vocab] f32 (broadcast: in; grad: in/out accumulator)
    uint64_t logits;        // [n_rows, vocab] logits dtype, contiguous
    int64_t n_rows;
    int64_t vocab;
} LinearBiasParams;

#ifdef __cplusplus
static_assert(sizeof(LinearRowsParams) == 72, "LinearRowsParams layout changed: update src/params.rs");
static_assert(sizeof(LinearBiasParams) == 32, "LinearBiasParams layout changed: update src/params.rs");
#endif

// ---- vocabulary-parallel log-probs (a tensor-parallel LM head: each rank holds a vocabulary shard) --
#define PREFK_STATUS_BAD_SHARDS 16u     // a used row's target held by no shard, or by several

// Per row and shard, PREFK_VP_STATS f32 partial statistics over the shard's columns, with the max
// and the target in the logits' own units (as the token log-probs' softmax statistics) and
// d_v = (x_v - m) log2(e) / T: the finalize combines the shards' rows, in shard order, into logp,
// lse, H and the softmax statistics of the whole row.
#define PREFK_VP_STATS 5
#define PREFK_VP_MAX 0              // m = max_v x_v over the shard (-FLT_MAX when every x is -inf)
#define PREFK_VP_SUMEXP 1           // s = sum_v 2^(d_v)
#define PREFK_VP_ENTROPY 2          // e = sum_v 2^(d_v) d_v (base 2); NaN when entropy is not computed
#define PREFK_VP_TARGET 3           // x_t when the shard holds the target t, else 0
#define PREFK_VP_OWNER 4            // 1 when the shard holds the target, else 0

// Partial statistics of one shard: columns [vocab_start, vocab_start + shard_vocab) of a
// vocabulary of `vocab` entries. Ignored rows get zeros; rows whose target is outside [0, vocab)
// get NaN (and PREFK_STATUS_BAD_TARGET).
typedef struct VocabShardFwdParams {
    uint64_t logits;        // [n_rows, row_stride] the shard's logits, f32/f16/bf16
    uint64_t targets;       // [n_rows] i32 or i64, ids in the whole vocabulary
    uint64_t partials;      // out [n_rows, PREFK_VP_STATS] f32
    uint64_t status;        // u32 status word, or 0
    int64_t n_rows;
    int64_t row_stride;     // in elements, >= shard_vocab
    int64_t shard_vocab;    // columns of this shard (>= 1)
    int64_t vocab_start;    // the shard's first column in the whole vocabulary
    int64_t vocab;          // the whole vocabulary
    int64_t ignore_index;
    float inv_temperature;
    uint32_t reserved;
} VocabShardFwdParams;

// The shards' partials (gathered in shard order) to logp, lse and entropy, identical on every rank.
typedef struct VocabFinalizeParams {
    uint64_t partials;      // [n_shards, n_rows, PREFK_VP_STATS] f32, shard-major (an all-gather's output)
    uint64_t targets;       // [n_rows] i32 or i64
    uint64_t logp;          // out [n_rows] f32 (0 on ignored rows, NaN on bad ones)
    uint64_t lse;           // out [n_rows] f32
    uint64_t entropy;       // out [n_rows] f32, or 0 (not computed)
    uint64_t status;        // u32 status word, or 0
    int64_t n_rows;
    int64_t n_shards;
    int64_t vocab;
    int64_t ignore_index;
    uint64_t stats;         // out [n_rows, PREFK_SOFTMAX_STATS] f32 of the whole row, or 0 (not written)
    float inv_temperature;  // 1 / T, as given to the partials
    uint32_t reserved;
} VocabFinalizeParams;

// Backward of one shard from the global softmax statistics (and entropy): the token log-probs backward over the
// shard's columns (rows.vocab = its size), whose targets are ids in the whole vocabulary.
typedef struct VocabShardBwdParams {
    TokenLogprobsBwdParams rows;
    int64_t vocab_start;
    int64_t vocab;
} VocabShardBwdParams;

#ifdef __cplusplus
static_assert(sizeof(VocabShardFwdParams) == 88, "VocabShardFwdParams layout changed: update src/params.rs");
static_assert(sizeof(VocabFinalizeParams) == 96, "VocabFinalizeParams layout changed: update src/params.rs");
static_assert(sizeof(VocabShardBwdParams) == 128, "VocabShardBwdParams layout changed: update src/params.rs");
#endif

#endif  // PREF_KERNELS_PARAMS_H
