/* C ABI of pref-kernels (src/ffi/). Link against the cdylib (target/release/libpref_kernels.so).
 *
 * Every op entry point takes one argument struct, Prefk<Op><Direction>Args, whose first field
 * struct_size is sizeof the struct the caller compiled against: the device (a CUDA ordinal, or
 * PREFK_DEVICE_EMULATOR = -1 for the CPU emulator, whose pointers are host addresses), the
 * caller's CUstream as an integer (0 = legacy default stream; from PyTorch:
 * torch.cuda.current_stream().cuda_stream) and raw device pointers as uint64_t
 * (tensor.data_ptr()) are fields of it. Entry points return 0 on success, -1 on error, -2 if an
 * internal panic was caught; prefk_last_error() then describes it.
 *
 * ABI versioning (PREFK_ABI_VERSION): a struct only grows, by fields appended at its end whose 0
 * means "the old behaviour". A caller built against an older header passes a smaller struct_size:
 * the library reads that many bytes and treats the newer fields as 0. A struct_size smaller than
 * the struct's first published size, or larger than the library's (a header newer than the
 * library), is refused with a message (-1), never read past. Zero-initialize the struct (C: = {0}),
 * set struct_size = sizeof(it), then the fields. Nothing synchronizes; work is ordered on
 * the given stream. Dtype codes: 0 f32, 1 f16, 2 bf16. Index codes: 0 i32, 1 i64.
 * Loss kinds, divergences and aggregations use the codes of kernels/params.h.
 *
 * Softmax statistics ("stats", [n_rows, 2] f32 per row: the row max of the raw logits and
 * log2 sum 2^((x - max) log2(e) / T)) are what every log-prob forward writes for its backward:
 * the backward forms probabilities from x - max, exact near the max at any logit magnitude. */
#ifndef PREFK_H
#define PREFK_H

#include <stdint.h>

#define PREFK_DEVICE_EMULATOR (-1)
#define PREFK_ABI_VERSION 2  /* 1: positional arguments (before 2026-12); 2: argument structs */

#ifdef __cplusplus
extern "C" {
#endif

typedef struct PrefkLossTerm {
    uint32_t kind;   /* PREFK_LOSS_* */
    float weight;
    float beta;
    float p0;        /* label smoothing / epsilon / tau (discopop, TAB-PO) / alpha (TGDPO) */
    float p1;        /* gamma (SimPO) / lambda (TAB-PO) */
    uint32_t flags;  /* bit 0: hinge (SimPO, CPO); TAB-PO: barrier denominator (0..2), bit 8 weighted-sum scores */
} PrefkLossTerm;

const char* prefk_last_error(void);
int32_t prefk_init(int32_t device);

typedef struct PrefkTokenLogprobsForwardArgs {
    uint64_t struct_size;
    uint64_t stream;
    uint64_t logits;
    uint64_t targets;
    uint64_t logp;
    uint64_t lse;
    uint64_t stats;
    uint64_t entropy;
    uint64_t log_sum_sq;
    uint64_t status;
    int64_t n_rows;
    int64_t vocab;
    int64_t row_stride;
    int64_t ignore_index;
    int32_t device;
    uint32_t dtype_code;
    uint32_t index_code;
    float temperature;
    uint64_t mean_logits; /* [n_rows] f32 mean of logits / T (TRL's mean_logits), or 0 */
    uint64_t is_top1;     /* [n_rows] u8: target is the first argmax (TRL's is_top1), or 0 */
} PrefkTokenLogprobsForwardArgs;
int32_t prefk_token_logprobs_forward(const PrefkTokenLogprobsForwardArgs* args);

/* Top-k log-probs: per row the k (1..=64, <= vocab) largest log p_v of softmax(logits / T),
 * descending (equal logits by ascending id), and their ids; stats from a forward on the same
 * logits, targets and temperature (the target's entry is bitwise its logp). Ignored rows: 0, -1. */
typedef struct PrefkTokenLogprobsTopkArgs {
    uint64_t struct_size;
    uint64_t stream;
    uint64_t logits;
    uint64_t targets;
    uint64_t stats;
    uint64_t topk_logp;
    uint64_t topk_ids;
    uint64_t status;
    int64_t n_rows;
    int64_t vocab;
    int64_t row_stride;
    int64_t ignore_index;
    int64_t k;
    int32_t device;
    uint32_t dtype_code;
    uint32_t index_code;
    float temperature;
} PrefkTokenLogprobsTopkArgs;
int32_t prefk_token_logprobs_topk(const PrefkTokenLogprobsTopkArgs* args);

typedef struct PrefkTokenLogprobsBackwardArgs {
    uint64_t struct_size;
    uint64_t stream;
    uint64_t logits;
    uint64_t targets;
    uint64_t stats;
    uint64_t grad_logp;
    uint64_t grad_logits;
    uint64_t status;
    int64_t n_rows;
    int64_t vocab;
    int64_t row_stride;
    int64_t grad_stride;
    int64_t ignore_index;
    int32_t device;
    uint32_t dtype_code;
    uint32_t index_code;
    float temperature;
} PrefkTokenLogprobsBackwardArgs;
int32_t prefk_token_logprobs_backward(const PrefkTokenLogprobsBackwardArgs* args);

/* The backward above, plus the entropy's gradient when grad_entropy != 0 (entropy: the forward's
 * [n_rows] f32 entropy). */
typedef struct PrefkTokenLogprobsBackwardEntropyArgs {
    uint64_t struct_size;
    uint64_t stream;
    uint64_t logits;
    uint64_t targets;
    uint64_t stats;
    uint64_t entropy;
    uint64_t grad_logp;
    uint64_t grad_entropy;
    uint64_t grad_logits;
    uint64_t status;
    int64_t n_rows;
    int64_t vocab;
    int64_t row_stride;
    int64_t grad_stride;
    int64_t ignore_index;
    int32_t device;
    uint32_t dtype_code;
    uint32_t index_code;
    float temperature;
} PrefkTokenLogprobsBackwardEntropyArgs;
int32_t prefk_token_logprobs_backward_entropy(const PrefkTokenLogprobsBackwardEntropyArgs* args);

typedef struct PrefkPreferenceLossArgs {
    uint64_t struct_size;
    uint64_t stream;
    uint64_t logp;
    uint64_t mask;
    uint64_t weights;
    uint64_t ref_logp;
    uint64_t ref_seq;
    uint64_t seq_weights;
    int64_t n_tokens;
    uint64_t cu_seqlens;
    int64_t n_seqs;
    int64_t seq_len;
    uint64_t chosen;
    uint64_t rejected;
    int64_t n_pairs;
    const PrefkLossTerm* terms;
    uint64_t pair_out;
    uint64_t metrics;
    uint64_t grad_logp;
    uint64_t workspace;
    uint64_t status;
    int32_t device;
    uint32_t n_terms;
    uint32_t divergence;
    float alpha;
    uint32_t aggregation;
    float grad_scale;
} PrefkPreferenceLossArgs;
int32_t prefk_preference_loss(const PrefkPreferenceLossArgs* args);

int64_t prefk_preference_loss_workspace_len(int64_t n_seqs, int64_t n_pairs);

/* GRPO family (see src/grpo): loss_type 0 grpo, 1 bnpo, 2 dr_grpo, 3 dapo, 4 cispo, 5 sapo,
 * 6 luspo, 7 vespo; importance 0 token, 1 sequence (GSPO); delta 0 = no cap; agg_param: dr_grpo's
 * max_completion_length, or the dapo/cispo/vespo normalizer (0 = the local token count);
 * accumulation_steps 0 counts as 1; off_policy_mask_threshold NaN = off. */
typedef struct PrefkGrpoConfig {
    uint32_t loss_type;
    uint32_t importance;
    float epsilon_low;
    float epsilon_high;
    float delta;
    float beta;
    uint32_t bias_corrected_kl;
    float entropy_coef;
    float top_entropy_quantile;
    float grad_scale;
    float agg_param;
    float tau_pos;
    float tau_neg;
    uint32_t accumulation_steps;
    float off_policy_mask_threshold;
    float vespo_k_pos;
    float vespo_lambda_pos;
    float vespo_k_neg;
    float vespo_lambda_neg;
} PrefkGrpoConfig;

typedef struct PrefkGrpoLossArgs {
    uint64_t struct_size;
    uint64_t stream;
    const PrefkGrpoConfig* config;
    uint64_t logp;
    uint64_t old_logp;
    uint64_t sampling_logp;
    uint64_t ref_logp;
    uint64_t mask;
    uint64_t is_weights;
    uint64_t entropy;
    uint64_t advantages;
    int64_t n_tokens;
    uint64_t cu_seqlens;
    int64_t n_seqs;
    int64_t seq_len;
    uint64_t metrics;
    uint64_t grad_logp;
    uint64_t grad_entropy;
    uint64_t workspace;
    uint64_t status;
    int32_t device;
    uint32_t reserved;
} PrefkGrpoLossArgs;
int32_t prefk_grpo_loss(const PrefkGrpoLossArgs* args);

int64_t prefk_grpo_workspace_len(int64_t n_seqs);

/* Bytes of workspace_bytes the fused LM head needs for chunks of `rows` rows (1: token log-probs;
 * the largest group of pairs' tokens: the preference step); -1 for bad arguments or overflow. */
int64_t prefk_linear_workspace_bytes(uint32_t dtype_code, int64_t hidden, int64_t vocab, int64_t rows);
/* Bytes of a stream-ordered call's workspace holding one chunk of `rows` rows (rows = n_rows: one
 * chunk); -1 for an invalid argument or an overflow. A call over more rows splits the workspace into
 * two slots (chunks of about rows / 2, a second stream running one chunk's row pass while the next
 * chunk's GEMM fills the other slot): twice this size keeps chunks of `rows` rows. */
int64_t prefk_linear_ordered_workspace_bytes(uint32_t dtype_code, int64_t hidden, int64_t vocab, int64_t rows);

/* Group / listwise losses: kind 0 KTO (p0/p1 desirable/undesirable weights, kl_given NaN = from the
 * KL samples, flags bit 1 apo_zero_unpaired; labels = roles 0 undesirable, 1 desirable, 2 KL sample,
 * 3 ignored), 1 LiPO-lambda (flags bit 2 lambda weights; labels psi), 2 PRO (p0 sft weight; labels =
 * rewards, ranking order). */
typedef struct PrefkGroupLossArgs {
    uint64_t struct_size;
    uint64_t stream;
    int64_t list_size;
    uint64_t logp;
    uint64_t mask;
    uint64_t ref_logp;
    uint64_t ref_seq;
    uint64_t labels;
    int64_t n_tokens;
    uint64_t cu_seqlens;
    int64_t n_seqs;
    int64_t seq_len;
    uint64_t seq_out;
    uint64_t metrics;
    uint64_t grad_logp;
    uint64_t workspace;
    uint64_t status;
    int32_t device;
    uint32_t kind;
    float beta;
    float p0;
    float p1;
    float kl_given;
    uint32_t flags;
    float grad_scale;
} PrefkGroupLossArgs;
int32_t prefk_group_loss(const PrefkGroupLossArgs* args);

int64_t prefk_group_loss_workspace_len(int64_t n_seqs);

/* Host-side layout builder for the attention kernels: call with null tiles/seg_lo2 to get n_tokens
 * and n_tiles, then with buffers of 8 * n_tiles and n_tokens int32 to fill (upload them). */
typedef struct PrefkPrefixLayoutArgs {
    uint64_t struct_size;
    const int64_t* prefix_lens;
    const int64_t* resp_counts;
    const int64_t* resp_lens;
    int64_t n_groups;
    int64_t* n_tokens;
    int64_t* n_tiles;
    int32_t* tiles;
    int32_t* seg_lo2;
} PrefkPrefixLayoutArgs;
int32_t prefk_prefix_layout(const PrefkPrefixLayoutArgs* args);

typedef struct PrefkSharedPrefixAttentionForwardArgs {
    uint64_t struct_size;
    uint64_t stream;
    uint64_t q;
    uint64_t k;
    uint64_t v;
    uint64_t o;
    uint64_t lse;
    uint64_t tiles;
    uint64_t seg_lo2;
    int64_t n_tiles;
    int64_t n_tokens;
    int32_t device;
    uint32_t dtype_code;
    int32_t q_heads;
    int32_t kv_heads;
    int32_t head_dim;
    float scale;
} PrefkSharedPrefixAttentionForwardArgs;
int32_t prefk_shared_prefix_attention_forward(const PrefkSharedPrefixAttentionForwardArgs* args);

typedef struct PrefkSharedPrefixAttentionBackwardArgs {
    uint64_t struct_size;
    uint64_t stream;
    uint64_t q;
    uint64_t k;
    uint64_t v;
    uint64_t o;
    uint64_t lse;
    uint64_t dout;
    uint64_t dq;
    uint64_t dk;
    uint64_t dv;
    uint64_t delta;
    uint64_t tiles;
    uint64_t seg_lo2;
    int64_t n_tiles;
    int64_t n_tokens;
    int32_t device;
    uint32_t dtype_code;
    int32_t q_heads;
    int32_t kv_heads;
    int32_t head_dim;
    float scale;
} PrefkSharedPrefixAttentionBackwardArgs;
int32_t prefk_shared_prefix_attention_backward(const PrefkSharedPrefixAttentionBackwardArgs* args);

/* Fused LM head: hidden [n_rows, hidden_dim] and weight [vocab, hidden_dim] (dtype_code), bias 0 or
 * [vocab] f32; no [n_rows, vocab] logits tensor. With workspace == 0: chunks of the used rows within
 * workspace_bytes of device workspace allocated inside the call; targets read back once to plan; the
 * stream is synchronized at the end. With a workspace (stream-ordered): every row in order, in chunks
 * that fit the caller's workspace_bytes (prefk_linear_ordered_workspace_bytes), nothing read back,
 * allocated or synchronized (capturable in a CUDA graph); bad targets set bits in *status.
 * logp, lse, entropy (0 to skip): [n_rows] f32. n_chunks: null or a host int64. */
typedef struct PrefkLinearTokenLogprobsForwardArgs {
    uint64_t struct_size;
    uint64_t stream;
    uint64_t hidden;
    uint64_t weight;
    uint64_t bias;
    uint64_t targets;
    uint64_t logp;
    uint64_t lse;
    uint64_t entropy;
    int64_t n_rows;
    int64_t hidden_dim;
    int64_t vocab;
    int64_t ignore_index;
    int64_t workspace_bytes;
    int64_t* n_chunks;
    int32_t device;
    uint32_t dtype_code;
    uint32_t index_code;
    float temperature;
    uint64_t log_sum_sq;  /* [n_rows] f32 log sum p^2 (WPO), or 0; needs entropy */
    uint64_t mean_logits; /* [n_rows] f32 mean of logits / T, or 0 */
    uint64_t is_top1;     /* [n_rows] u8 target is the first argmax, or 0 */
    uint64_t topk_logp;   /* [n_rows, top_k] f32 largest log-probs, descending, or 0 */
    uint64_t topk_ids;    /* [n_rows, top_k] i64 their ids (-1 on ignored rows), or 0 */
    int64_t top_k;        /* 0 (none) ..= 64 */
    uint64_t workspace;   /* 0.3: device workspace of workspace_bytes (16-byte aligned), or 0 (see above) */
    uint64_t status;      /* 0.3: device u32 status word of a stream-ordered call, or 0 */
} PrefkLinearTokenLogprobsForwardArgs;
int32_t prefk_linear_token_logprobs_forward(const PrefkLinearTokenLogprobsForwardArgs* args);

/* Its backward for any per-token loss: grad_logp (and grad_entropy, or 0) [n_rows] f32 in;
 * d_hidden [n_rows, hidden_dim] (dtype_code), d_weight [vocab, hidden_dim] f32, d_bias [vocab] f32
 * (exactly with a bias) overwritten. */
typedef struct PrefkLinearTokenLogprobsBackwardArgs {
    uint64_t struct_size;
    uint64_t stream;
    uint64_t hidden;
    uint64_t weight;
    uint64_t bias;
    uint64_t targets;
    uint64_t grad_logp;
    uint64_t grad_entropy;
    uint64_t d_hidden;
    uint64_t d_weight;
    uint64_t d_bias;
    int64_t n_rows;
    int64_t hidden_dim;
    int64_t vocab;
    int64_t ignore_index;
    int64_t workspace_bytes;
    int32_t device;
    uint32_t dtype_code;
    uint32_t index_code;
    float temperature;
    uint64_t workspace;   /* 0.3: as in the forward */
    uint64_t status;      /* 0.3: as in the forward */
} PrefkLinearTokenLogprobsBackwardArgs;
int32_t prefk_linear_token_logprobs_backward(const PrefkLinearTokenLogprobsBackwardArgs* args);

/* The whole preference step from hidden states, chunked by whole groups of pairs (3 GEMMs per used
 * token). Loss terms as the preference loss above. cu_seqlens: null (padded n_seqs x seq_len) or n_seqs + 1
 * HOST int32; chosen/rejected: null (first half chosen) or n_pairs HOST int32 each. weights, ref_logp
 * ([n_rows]) and ref_seq ([n_seqs]) device f32 or 0. Outputs: logp [n_rows] f32 and the gradients
 * (device), metrics (16 f32) and pair_out (null or n_pairs x 6 f32) on the HOST. */
typedef struct PrefkLinearPreferenceStepArgs {
    uint64_t struct_size;
    uint64_t stream;
    uint64_t hidden;
    uint64_t weight;
    uint64_t bias;
    uint64_t targets;
    uint64_t weights;
    uint64_t ref_logp;
    uint64_t ref_seq;
    const int32_t* cu_seqlens;
    int64_t n_seqs;
    int64_t seq_len;
    const int32_t* chosen;
    const int32_t* rejected;
    int64_t n_pairs;
    const PrefkLossTerm* terms;
    uint64_t logp;
    uint64_t d_hidden;
    uint64_t d_weight;
    uint64_t d_bias;
    float* metrics;
    float* pair_out;
    int64_t n_rows;
    int64_t hidden_dim;
    int64_t vocab;
    int64_t ignore_index;
    int64_t workspace_bytes;
    int32_t device;
    uint32_t dtype_code;
    uint32_t index_code;
    uint32_t n_terms;
    uint32_t divergence;
    float alpha;
    uint32_t aggregation;
    float temperature;
} PrefkLinearPreferenceStepArgs;
int32_t prefk_linear_preference_step(const PrefkLinearPreferenceStepArgs* args);

/* The whole GRPO-family step from hidden states, chunked by whole sequences (3 GEMMs per counted
 * token; a row counts when its mask byte is set, or every row without a mask, and its target is not
 * ignore_index). config: HOST PrefkGrpoConfig (not the top-entropy mask; not VESPO with
 * is_weights). cu_seqlens: null (padded n_seqs x seq_len) or n_seqs + 1 HOST int32. mask [n_rows]
 * device u8 or 0; old_logp, sampling_logp, ref_logp, is_weights [n_rows] device f32 or 0;
 * advantages [n_seqs] device f32. Outputs: logp and (with compute_entropy) entropy [n_rows] f32 and
 * the gradients (device), metrics (8 f32) on the HOST. */
typedef struct PrefkLinearGrpoStepArgs {
    uint64_t struct_size;
    uint64_t stream;
    const PrefkGrpoConfig* config;
    uint64_t hidden;
    uint64_t weight;
    uint64_t bias;
    uint64_t targets;
    uint64_t mask;
    uint64_t old_logp;
    uint64_t sampling_logp;
    uint64_t ref_logp;
    uint64_t is_weights;
    uint64_t advantages;
    const int32_t* cu_seqlens;
    int64_t n_seqs;
    int64_t seq_len;
    uint64_t logp;
    uint64_t entropy;
    uint64_t d_hidden;
    uint64_t d_weight;
    uint64_t d_bias;
    float* metrics;
    int64_t n_rows;
    int64_t hidden_dim;
    int64_t vocab;
    int64_t ignore_index;
    int64_t workspace_bytes;
    int32_t device;
    uint32_t dtype_code;
    uint32_t index_code;
    uint32_t compute_entropy;
    float temperature;
    uint32_t reserved;
} PrefkLinearGrpoStepArgs;
int32_t prefk_linear_grpo_step(const PrefkLinearGrpoStepArgs* args);

/* ---- vocabulary parallel (a tensor-parallel LM head: each rank holds vocabulary ids
 * [vocab_start, vocab_start + shard_vocab) of vocab). Per call: partials of this rank's shard,
 * an all-gather of the [n_rows, 5] f32 partials over the group in rank order (the caller's NCCL or
 * gloo), the finalize (bitwise the same on every rank), then each rank's backward into its own
 * columns (or d_weight rows) from the global softmax stats. Partials per row: max of the raw logits
 * x, sum of 2^((x - max) log2(e) / T), its entropy term (base 2), the target's raw logit (0 off the
 * owning shard), owner flag. */

/* A logits shard [n_rows, row_stride] -> partials [n_rows, 5] f32; targets are whole-vocabulary ids.
 * No synchronization; bad targets set status bit 1. */
typedef struct PrefkVocabShardPartialsArgs {
    uint64_t struct_size;
    uint64_t stream;
    uint64_t logits;
    uint64_t targets;
    uint64_t partials;
    uint64_t status;
    int64_t n_rows;
    int64_t shard_vocab;
    int64_t row_stride;
    int64_t vocab_start;
    int64_t vocab;
    int64_t ignore_index;
    int32_t device;
    uint32_t dtype_code;
    uint32_t index_code;
    float temperature;
    uint32_t compute_entropy;
    uint32_t reserved;
} PrefkVocabShardPartialsArgs;
int32_t prefk_vocab_shard_partials(const PrefkVocabShardPartialsArgs* args);

/* Whether a group's shards (host starts[n_shards], sizes[n_shards]; any order) tile [0, vocab): no gap,
 * no overlap. The finalize sees a bad tiling only at a target: run this once per group. */
int32_t prefk_vocab_check_tiling(const int64_t* starts, const int64_t* sizes, int64_t n_shards, int64_t vocab);

/* Gathered partials [n_shards, n_rows, 5] f32 -> logp, lse (and entropy, or 0) [n_rows] f32 and the
 * rows' softmax stats [n_rows, 2] f32 (or 0) for the shard backward. Shards
 * that do not tile the vocabulary at a target set status bit 16 and give that row NaN (gaps and
 * overlaps no target falls in are for the tiling check above). */
typedef struct PrefkVocabParallelFinalizeArgs {
    uint64_t struct_size;
    uint64_t stream;
    uint64_t partials;
    uint64_t targets;
    uint64_t logp;
    uint64_t lse;
    uint64_t stats;
    uint64_t entropy;
    uint64_t status;
    int64_t n_rows;
    int64_t n_shards;
    int64_t vocab;
    int64_t ignore_index;
    int32_t device;
    uint32_t index_code;
    float temperature;
    uint32_t reserved;
} PrefkVocabParallelFinalizeArgs;
int32_t prefk_vocab_parallel_finalize(const PrefkVocabParallelFinalizeArgs* args);

/* d/dlogits of a shard's columns from the global softmax stats (and entropy with grad_entropy, or 0): grad_logits
 * [n_rows, grad_stride] (in place when equal to logits). */
typedef struct PrefkVocabShardBackwardArgs {
    uint64_t struct_size;
    uint64_t stream;
    uint64_t logits;
    uint64_t targets;
    uint64_t stats;
    uint64_t entropy;
    uint64_t grad_logp;
    uint64_t grad_entropy;
    uint64_t grad_logits;
    uint64_t status;
    int64_t n_rows;
    int64_t shard_vocab;
    int64_t row_stride;
    int64_t grad_stride;
    int64_t vocab_start;
    int64_t vocab;
    int64_t ignore_index;
    int32_t device;
    uint32_t dtype_code;
    uint32_t index_code;
    float temperature;
} PrefkVocabShardBackwardArgs;
int32_t prefk_vocab_shard_backward(const PrefkVocabShardBackwardArgs* args);

/* The fused LM head's shard: weight [shard_vocab, hidden_dim] (and bias [shard_vocab] f32, or 0) are
 * its rows; partials [n_rows, 5] f32 out, no logits tensor. Synchronizes once to plan, once at the end. */
typedef struct PrefkLinearShardPartialsArgs {
    uint64_t struct_size;
    uint64_t stream;
    uint64_t hidden;
    uint64_t weight;
    uint64_t bias;
    uint64_t targets;
    uint64_t partials;
    int64_t n_rows;
    int64_t hidden_dim;
    int64_t shard_vocab;
    int64_t vocab_start;
    int64_t vocab;
    int64_t ignore_index;
    int64_t workspace_bytes;
    int32_t device;
    uint32_t dtype_code;
    uint32_t index_code;
    float temperature;
    uint32_t compute_entropy;
    uint32_t reserved;
} PrefkLinearShardPartialsArgs;
int32_t prefk_linear_shard_partials(const PrefkLinearShardPartialsArgs* args);

/* Its backward from the global softmax stats (entropy and grad_entropy, or 0): d_weight [shard_vocab, hidden_dim]
 * f32 and d_bias of the shard, and this rank's partial d_hidden [n_rows, hidden_dim], which the
 * caller all-reduces (sum) over the group. */
typedef struct PrefkLinearShardBackwardArgs {
    uint64_t struct_size;
    uint64_t stream;
    uint64_t hidden;
    uint64_t weight;
    uint64_t bias;
    uint64_t targets;
    uint64_t stats;
    uint64_t entropy;
    uint64_t grad_logp;
    uint64_t grad_entropy;
    uint64_t d_hidden;
    uint64_t d_weight;
    uint64_t d_bias;
    int64_t n_rows;
    int64_t hidden_dim;
    int64_t shard_vocab;
    int64_t vocab_start;
    int64_t vocab;
    int64_t ignore_index;
    int64_t workspace_bytes;
    int32_t device;
    uint32_t dtype_code;
    uint32_t index_code;
    float temperature;
} PrefkLinearShardBackwardArgs;
int32_t prefk_linear_shard_backward(const PrefkLinearShardBackwardArgs* args);

/* Per-sequence scores of masked per-token log-probs: mode 0 sum, 1 mean, 2 weighted sum, 3 weighted
 * mean; cu_seqlens 0 = padded. scores [n_seqs] f32 and stats [n_seqs, 10] f32 (either may be 0). */
typedef struct PrefkSeqReduceArgs {
    uint64_t struct_size;
    uint64_t stream;
    uint64_t logp;
    uint64_t mask;
    uint64_t weights;
    int64_t n_tokens;
    uint64_t cu_seqlens;
    int64_t n_seqs;
    int64_t seq_len;
    uint64_t scores;
    uint64_t stats;
    uint64_t status;
    int32_t device;
    uint32_t mode;
} PrefkSeqReduceArgs;
int32_t prefk_seq_reduce(const PrefkSeqReduceArgs* args);

/* Its backward: grad_logp [n_tokens] f32 from dscores [n_seqs] and the forward's stats. */
typedef struct PrefkSeqReduceBackwardArgs {
    uint64_t struct_size;
    uint64_t stream;
    uint64_t logp;
    uint64_t mask;
    uint64_t weights;
    int64_t n_tokens;
    uint64_t cu_seqlens;
    int64_t n_seqs;
    int64_t seq_len;
    uint64_t dscores;
    uint64_t stats;
    uint64_t grad_logp;
    int32_t device;
    uint32_t mode;
} PrefkSeqReduceBackwardArgs;
int32_t prefk_seq_reduce_backward(const PrefkSeqReduceBackwardArgs* args);

/* Validates n_seqs HOST labels for the group loss of these codes (KTO roles, LiPO labels, PRO ranking
 * order), as the safe API does: the raw group loss uses device labels as given. */
typedef struct PrefkGroupLossCheckLabelsArgs {
    uint64_t struct_size;
    int64_t list_size;
    const float* labels;
    int64_t n_seqs;
    uint32_t kind;
    float beta;
    float p0;
    float p1;
    float kl_given;
    uint32_t flags;
} PrefkGroupLossCheckLabelsArgs;
int32_t prefk_group_loss_check_labels(const PrefkGroupLossCheckLabelsArgs* args);

/* 0 when the status word a kernel wrote (read back by the caller) has no bit set, else -1 with the
 * crate's message in the last-error string. */
int32_t prefk_check_status(uint32_t status);

/* CPU tensors through the emulator (device -1): register each storage [ptr, ptr + bytes) once
 * (initialized = 0 for outputs: reads before a write are then reported), unregister before freeing. */
int32_t prefk_register_host_memory(uint64_t ptr, int64_t bytes, int32_t initialized);
int32_t prefk_unregister_host_memory(uint64_t ptr);

#ifdef __cplusplus
}
#endif

#endif /* PREFK_H */
