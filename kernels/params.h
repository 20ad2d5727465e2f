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

#endif  // PREF_KERNELS_PARAMS_H
