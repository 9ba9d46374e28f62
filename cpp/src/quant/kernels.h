// Internal weight-kernel entry points shared by dot.cpp and matmul.cpp (types must be supported and
// n a multiple of the block size; callers validate). The kernels themselves are per CPU level
// (quant/kernels_isa.cpp), reached through cpu_kernels() (common/cpu.h):
//   dot_multi(t, w, x, ldx, nt, n, out, xs): out[j] = dot(weight row w, x + j*ldx), 1 <= nt <= 4;
//     xs = chunk_sums of every token's x (token j at xs + j*(n/32)), required for block types with
//     a min/offset term, may be nullptr for the others.
//   dequant_fast(t, w, y, n): SIMD dequantization for the GEMM panels, equal to dequantize_row up to
//     one fp32 rounding per element.
//   gemm_tile(kc, a, b, C, ldc, accum): C[j*ldc + i] (+)= sum_k a[k*kMR + i] * b[k*kNR + j].
#pragma once
#include <cstdint>

#include "quant/types.h"

namespace headkv::qk {

constexpr int kMR = 16, kNR = 6;  // GEMM register tile: 16 weight rows x 6 tokens

// xs[c] = sum of x[32c .. 32c+32), c < n/32.
void chunk_sums(const float* x, int64_t n, float* xs);

}  // namespace headkv::qk
