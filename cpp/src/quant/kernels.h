// Internal kernel entry points shared by dot.cpp and matmul.cpp (types must be supported and
// n a multiple of the block size; callers validate).
#pragma once
#include <cstdint>

#include "quant/types.h"

namespace headkv::qk {

// out[j] = dot(weight row w, x + j*ldx) for j < nt, 1 <= nt <= 4. The row is decoded once.
// xs: optional chunk_sums of every token's x (token j at xs + j*(n/32)), or nullptr; pass them
// when calling for many rows with the same x (block types with a min/offset term use them).
void dot_multi(GGMLType t, const uint8_t* w, const float* x, int64_t ldx, int nt, int64_t n, float* out,
               const float* xs);

// xs[c] = sum of x[32c .. 32c+32), c < n/32.
void chunk_sums(const float* x, int64_t n, float* xs);

// Fast (SIMD, FMA) dequantization for the GEMM panels: equal to dequantize_row up to one fp32
// rounding per element.
void dequant_fast(GGMLType t, const uint8_t* w, float* y, int64_t n);

}  // namespace headkv::qk
