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
} TokenLogprobsFwdParams;

// Backward: grad_logits[r, v] = grad_logp[r] * (1[v == t_r] - softmax(logits[r] / T)[v]) / T.
typedef struct TokenLogprobsBwdParams {
    uint64_t logits;        // [n_rows, logits_stride] f32/f16/bf16
    uint64_t targets;       // [n_rows] i32 or i64
    uint64_t lse;           // [n_rows] f32, from the forward
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
} TokenLogprobsBwdParams;

#ifdef __cplusplus
static_assert(sizeof(TokenLogprobsFwdParams) == 88, "TokenLogprobsFwdParams layout changed: update src/params.rs");
static_assert(sizeof(TokenLogprobsBwdParams) == 96, "TokenLogprobsBwdParams layout changed: update src/params.rs");
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

#define PREFK_DIV_REVERSE_KL 0u
#define PREFK_DIV_FORWARD_KL 1u
#define PREFK_DIV_JS 2u
#define PREFK_DIV_ALPHA 3u

#define PREFK_MAX_LOSS_TERMS 4
#define PREFK_PAIR_COLUMNS 6        // loss, chosen_reward, rejected_reward, chosen_logps, rejected_logps, barrier
#define PREFK_METRICS 16
#define PREFK_PAIR_COEF 6           // workspace per pair: chosen (c0, c1, c2), rejected (c0, c1, c2)

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

typedef struct PairLossParams {
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
} PairLossParams;

#ifdef __cplusplus
static_assert(sizeof(SeqStatsParams) == 96, "SeqStatsParams layout changed: update src/params.rs");
static_assert(sizeof(TokenGradParams) == 104, "TokenGradParams layout changed: update src/params.rs");
static_assert(sizeof(LossTerm) == 32, "LossTerm layout changed: update src/params.rs");
static_assert(sizeof(PairLossParams) == 232, "PairLossParams layout changed: update src/params.rs");
#endif

// ---- shared-prefix group attention ------------------------------------------------------------------
#define PREFK_ATTN_TILE 64          // query/key tile; tiles never cross a group boundary
#define PREFK_ATTN_TILE_FIELDS 8    // start, end, group start, prefix end, group end, min own-segment
                                    // start of the tile's response rows, end of rows seeing its keys, 0

typedef struct PrefixAttnParams {
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
} PrefixAttnParams;

#ifdef __cplusplus
static_assert(sizeof(PrefixAttnParams) == 128, "PrefixAttnParams layout changed: update src/params.rs");
#endif

#endif  // PREF_KERNELS_PARAMS_H
