// Row movement and bias for the fused LM head (src/linear_token_logprobs): the GEMMs are cuBLAS (or the
// emulator's host GEMM); these kernels move the used rows of the hidden states into a chunk
// before the logits GEMM (ignored rows never reach it), move the chunk's per-row results and
// d_hidden rows back, broadcast the bias into a chunk's logits and sum d/dlogits into d_bias.
#include "common.cuh"

constexpr int ROWS_THREADS = 256;

// Gather (dst[r] = src[index[r]]) or scatter (dst[index[r]] = src[r]) of rows of E. Threads run
// over the flattened (row, column) range, so narrow rows (one f32 per token) use every lane. A
// row index outside [0, bound) is reported and its row left untouched.
template <typename E, bool SCATTER>
__device__ void move_rows(const LinearRowsParams& p) {
    const E* src = reinterpret_cast<const E*>(p.src);
    E* dst = reinterpret_cast<E*>(p.dst);
    const int64_t* index = reinterpret_cast<const int64_t*>(p.index);
    const int64_t total = p.n_rows * p.width;
    for (int64_t i = (int64_t)blockIdx.x * ROWS_THREADS + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * ROWS_THREADS) {
        const int64_t r = i / p.width, c = i - r * p.width;
        const int64_t j = index[r];
        if (j < 0 || j >= p.bound) {
            if (c == 0) report_status(p.status, PREFK_STATUS_BAD_ROW_INDEX);
            continue;
        }
        if (SCATTER)
            dst[j * p.dst_stride + c] = src[r * p.src_stride + c];
        else
            dst[r * p.dst_stride + c] = src[j * p.src_stride + c];
    }
}

PREFK_KERNEL(linear_gather_rows_b2, LinearRowsParams, ROWS_THREADS) { move_rows<uint16_t, false>(p); }
PREFK_KERNEL(linear_gather_rows_b4, LinearRowsParams, ROWS_THREADS) { move_rows<uint32_t, false>(p); }
PREFK_KERNEL(linear_gather_rows_b8, LinearRowsParams, ROWS_THREADS) { move_rows<uint64_t, false>(p); }
PREFK_KERNEL(linear_scatter_rows_b1, LinearRowsParams, ROWS_THREADS) { move_rows<uint8_t, true>(p); }
PREFK_KERNEL(linear_scatter_rows_b2, LinearRowsParams, ROWS_THREADS) { move_rows<uint16_t, true>(p); }
PREFK_KERNEL(linear_scatter_rows_b4, LinearRowsParams, ROWS_THREADS) { move_rows<uint32_t, true>(p); }
PREFK_KERNEL(linear_scatter_rows_b8, LinearRowsParams, ROWS_THREADS) { move_rows<uint64_t, true>(p); }

// logits[r, v] = bias[v]: the logits GEMM then accumulates onto it (beta = 1).
template <typename T>
__device__ void bias_rows(const LinearBiasParams& p) {
    const float* bias = reinterpret_cast<const float*>(p.bias);
    T* logits = reinterpret_cast<T*>(p.logits);
    const int64_t total = p.n_rows * p.vocab;
    for (int64_t i = (int64_t)blockIdx.x * ROWS_THREADS + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * ROWS_THREADS)
        logits[i] = from_f32<T>(bias[i % p.vocab]);
}

// d_bias[v] += sum over the chunk's rows of dlogits[r, v]: one thread per column, rows in order
// (coalesced across the warp's columns; the sum order never depends on the grid).
template <typename T>
__device__ void bias_grad(const LinearBiasParams& p) {
    float* d_bias = reinterpret_cast<float*>(p.bias);
    const T* g = reinterpret_cast<const T*>(p.logits);
    for (int64_t v = (int64_t)blockIdx.x * ROWS_THREADS + threadIdx.x; v < p.vocab;
         v += (int64_t)gridDim.x * ROWS_THREADS) {
        float acc = 0.f;
        for (int64_t r = 0; r < p.n_rows; ++r) acc += to_f32(g[r * p.vocab + v]);
        d_bias[v] += acc;
    }
}

PREFK_KERNEL(linear_bias_rows_f32, LinearBiasParams, ROWS_THREADS) { bias_rows<float>(p); }
PREFK_KERNEL(linear_bias_rows_f16, LinearBiasParams, ROWS_THREADS) { bias_rows<__half>(p); }
PREFK_KERNEL(linear_bias_rows_bf16, LinearBiasParams, ROWS_THREADS) { bias_rows<__nv_bfloat16>(p); }
PREFK_KERNEL(linear_bias_grad_f32, LinearBiasParams, ROWS_THREADS) { bias_grad<float>(p); }
PREFK_KERNEL(linear_bias_grad_f16, LinearBiasParams, ROWS_THREADS) { bias_grad<__half>(p); }
PREFK_KERNEL(linear_bias_grad_bf16, LinearBiasParams, ROWS_THREADS) { bias_grad<__nv_bfloat16>(p); }
