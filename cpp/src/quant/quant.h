// Weight kernels working directly on quantized GGUF blocks, with fp32 activations.
//
// Numerics: activations stay fp32 (they are NOT re-quantized to 8 bit as llama.cpp does); each
// weight block is expanded in registers and multiplied with fp32 FMA. This keeps our logits within
// float rounding of a reference that dequantizes weights to fp32 (transformers on the same GGUF),
// at the cost of some compute in prefill; decode is weight-bandwidth-bound either way.
#pragma once
#include <cstdint>

#include "common/threadpool.h"
#include "quant/types.h"

namespace headkv {

// dst[0..n) = dequantized src; n must be a multiple of the block size. Throws Unsupported for
// types we cannot decode.
void dequantize_row(GGMLType t, const void* src, float* dst, int64_t n);

// sum_i w[i] * x[i] for one weight row of n elements of type t.
float vec_dot(GGMLType t, const void* w, const float* x, int64_t n);

// Y[j*ldy + r] = sum_k W[r][k] * X[j*K + k] for r < rows, j < n_tok.
// W holds `rows` rows of K elements of type t, each row_size(t, K) bytes, contiguous.
// Multithreaded over the pool. Chooses a matrix-vector path for small n_tok and a dequantized
// panel GEMM for large n_tok.
void matmul(GGMLType t, const uint8_t* W, int64_t rows, int64_t K, const float* X, int64_t n_tok,
            float* Y, int64_t ldy, ThreadPool& pool);

}  // namespace headkv
