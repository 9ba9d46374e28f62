// Small fp32 vector helpers used by attention and selection. Each call goes to the kernels of
// the active CPU level (common/cpu.h; bodies in common/simd_isa.cpp).
#pragma once
#include <cstdint>

#include "common/cpu.h"

namespace headkv {

inline float dot_f32(const float* a, const float* b, int64_t n) { return cpu_kernels().dot_f32(a, b, n); }

// y += a * x
inline void axpy_f32(float* y, float a, const float* x, int64_t n) { cpu_kernels().axpy_f32(y, a, x, n); }

// x[i] = exp(x[i] - mx) for x[i] <= mx (softmax numerators); returns their sum (in double).
// The AVX2 path uses a degree-6 polynomial after range reduction (about 2 ulp of expf).
inline double exp_shift_sum(float* x, int64_t n, float mx) { return cpu_kernels().exp_shift_sum(x, n, mx); }

// out[j] = dot(q, K + j*ld, n) for j < m.
inline void dot_rows_f32(const float* q, const float* K, int64_t ld, int64_t n, int64_t m, float* out) {
  cpu_kernels().dot_rows_f32(q, K, ld, n, m, out);
}

// out[0..n) = sum_j p[j] * V[j*ld .. +n) for j < m.
inline void weighted_rows_f32(const float* p, const float* V, int64_t ld, int64_t n, int64_t m, float* out) {
  cpu_kernels().weighted_rows_f32(p, V, ld, n, m, out);
}

// The same over f16 storage (the KV cache): K / V rows are IEEE halves read directly.
inline void dot_rows_f16(const float* q, const uint16_t* K, int64_t ld, int64_t n, int64_t m, float* out) {
  cpu_kernels().dot_rows_f16(q, K, ld, n, m, out);
}
inline void weighted_rows_f16(const float* p, const uint16_t* V, int64_t ld, int64_t n, int64_t m, float* out) {
  cpu_kernels().weighted_rows_f16(p, V, ld, n, m, out);
}
// The same over q8_0 / q4_0 storage (layouts in select/kv_arena.h) for nq queries at once (a GQA
// group: each block is expanded once for all of them): rows of n values (n a multiple of 32) every
// ld bytes; query / weight vector r at q + r*ldq / p + r*ldp, its results at out + r*ldo.
//   dot:      out[r*ldo + j] = dot(q_r, row j) for j < m
//   weighted: out[r*ldo + i] = sum_j p_r[j] * row j [i] for i < n
inline void dot_rows_q8_0(const float* q, int64_t nq, int64_t ldq, const uint8_t* K, int64_t ld, int64_t n, int64_t m,
                          float* out, int64_t ldo) {
  cpu_kernels().dot_rows_q8_0(q, nq, ldq, K, ld, n, m, out, ldo);
}
inline void weighted_rows_q8_0(const float* p, int64_t nq, int64_t ldp, const uint8_t* V, int64_t ld, int64_t n,
                               int64_t m, float* out, int64_t ldo) {
  cpu_kernels().weighted_rows_q8_0(p, nq, ldp, V, ld, n, m, out, ldo);
}
inline void dot_rows_q4_0(const float* q, int64_t nq, int64_t ldq, const uint8_t* K, int64_t ld, int64_t n, int64_t m,
                          float* out, int64_t ldo) {
  cpu_kernels().dot_rows_q4_0(q, nq, ldq, K, ld, n, m, out, ldo);
}
inline void weighted_rows_q4_0(const float* p, int64_t nq, int64_t ldp, const uint8_t* V, int64_t ld, int64_t n,
                               int64_t m, float* out, int64_t ldo) {
  cpu_kernels().weighted_rows_q4_0(p, nq, ldp, V, ld, n, m, out, ldo);
}
// y[i] = half(x[i]), round to nearest even.
inline void f32_to_f16_row(const float* x, uint16_t* y, int64_t n) { cpu_kernels().f32_to_f16_row(x, y, n); }

}  // namespace headkv
