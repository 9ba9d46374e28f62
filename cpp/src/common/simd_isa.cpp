// fp32 vector helpers and the f16 / q8_0 / q4_0 KV-row kernels (see common/simd.h), compiled once per
// CPU level: the AVX2/FMA paths are taken where the level's target flags define __AVX2__ and __FMA__
// (the block kernels use AVX-512 where __AVX512F__ is defined), the portable loops elsewhere.
// HEADKV_ISA names this copy's namespace (isa_baseline, isa_avx2, isa_avx512).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "common/cpu.h"
#include "common/fp16.h"

#ifndef HEADKV_ISA  // a build that compiles this file once (tests/fuzz) has the baseline level only
#define HEADKV_ISA isa_baseline
#endif

namespace headkv::HEADKV_ISA {

float dot_f32(const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  float s = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  acc0 = _mm256_add_ps(acc0, acc1);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc0), _mm256_extractf128_ps(acc0, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  s = _mm_cvtss_f32(h);
#endif
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y += a * x
void axpy_f32(float* y, float a, const float* x, int64_t n) {
  int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 va = _mm256_set1_ps(a);
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#endif
  for (; i < n; ++i) y[i] += a * x[i];
}

// x[i] = exp(x[i] - mx) for x[i] <= mx (softmax numerators); returns their sum (in double).
// The AVX2 path uses a degree-6 polynomial after range reduction (about 2 ulp of expf).
double exp_shift_sum(float* x, int64_t n, float mx) {
  int64_t i = 0;
  double sum = 0.0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 vmx = _mm256_set1_ps(mx), lo = _mm256_set1_ps(-87.0f);
  const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
  const __m256 ln2_hi = _mm256_set1_ps(0.693359375f), ln2_lo = _mm256_set1_ps(-2.12194440e-4f);
  const __m256 c1 = _mm256_set1_ps(1.0f), c2 = _mm256_set1_ps(0.5f), c3 = _mm256_set1_ps(1.6666665459e-1f),
               c4 = _mm256_set1_ps(4.1665795894e-2f), c5 = _mm256_set1_ps(8.3334519073e-3f),
               c6 = _mm256_set1_ps(1.3981999507e-3f), c7 = _mm256_set1_ps(1.9875691500e-4f);
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_sub_ps(_mm256_loadu_ps(x + i), vmx);
    const __m256 under = _mm256_cmp_ps(v, lo, _CMP_LT_OQ);
    v = _mm256_max_ps(v, lo);
    const __m256 k = _mm256_round_ps(_mm256_mul_ps(v, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, ln2_hi, v);
    r = _mm256_fnmadd_ps(k, ln2_lo, r);
    __m256 p = c7;
    p = _mm256_fmadd_ps(p, r, c6);
    p = _mm256_fmadd_ps(p, r, c5);
    p = _mm256_fmadd_ps(p, r, c4);
    p = _mm256_fmadd_ps(p, r, c3);
    p = _mm256_fmadd_ps(p, r, c2);
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, c1));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    y = _mm256_andnot_ps(under, y);
    _mm256_storeu_ps(x + i, y);
    acc = _mm256_add_ps(acc, y);
  }
  float tmp[8];
  _mm256_storeu_ps(tmp, acc);
  for (float t : tmp) sum += t;
#endif
  for (; i < n; ++i) sum += (x[i] = std::exp(x[i] - mx));
  return sum;
}

// out[j] = dot(q, K + j*ld, n) for j < m: eight keys at a time, reduced together.
void dot_rows_f32(const float* q, const float* K, int64_t ld, int64_t n, int64_t m, float* out) {
  int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
  if (n % 8 == 0) {
    for (; j + 8 <= m; j += 8) {
      __m256 a[8];
      for (int r = 0; r < 8; ++r) a[r] = _mm256_setzero_ps();
      for (int64_t d = 0; d < n; d += 8) {
        const __m256 qv = _mm256_loadu_ps(q + d);
        for (int r = 0; r < 8; ++r) a[r] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(K + (j + r) * ld + d), a[r]);
      }
      // Transpose-reduce eight accumulators into one vector of eight sums.
      const __m256 s01 = _mm256_hadd_ps(a[0], a[1]), s23 = _mm256_hadd_ps(a[2], a[3]);
      const __m256 s45 = _mm256_hadd_ps(a[4], a[5]), s67 = _mm256_hadd_ps(a[6], a[7]);
      const __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);
      const __m256 lo = _mm256_permute2f128_ps(s0123, s4567, 0x20), hi = _mm256_permute2f128_ps(s0123, s4567, 0x31);
      _mm256_storeu_ps(out + j, _mm256_add_ps(lo, hi));
    }
  }
#endif
  for (; j < m; ++j) out[j] = dot_f32(q, K + j * ld, n);
}

// out[0..n) = sum_j p[j] * V[j*ld .. +n) for j < m, accumulating in registers when n == 64.
void weighted_rows_f32(const float* p, const float* V, int64_t ld, int64_t n, int64_t m, float* out) {
#if defined(__AVX2__) && defined(__FMA__)
  if (n == 64) {
    __m256 a[8];
    for (int r = 0; r < 8; ++r) a[r] = _mm256_setzero_ps();
    for (int64_t j = 0; j < m; ++j) {
      const __m256 w = _mm256_set1_ps(p[j]);
      const float* v = V + j * ld;
      for (int r = 0; r < 8; ++r) a[r] = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 8 * r), a[r]);
    }
    for (int r = 0; r < 8; ++r) _mm256_storeu_ps(out + 8 * r, a[r]);
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) out[i] = 0.0f;
  for (int64_t j = 0; j < m; ++j) axpy_f32(out, p[j], V + j * ld, n);
}

// f16 storage (KV cache): the keys/values are IEEE halves, converted to fp32 in registers (F16C)
// as they are read; the portable path converts one element at a time.
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define HEADKV_F16C 1
static inline __m256 load_h8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
#endif

// out[j] = dot(q, K + j*ld, n) for j < m, K in f16.
void dot_rows_f16(const float* q, const uint16_t* K, int64_t ld, int64_t n, int64_t m, float* out) {
  int64_t j = 0;
#ifdef HEADKV_F16C
  if (n % 8 == 0) {
    for (; j + 8 <= m; j += 8) {
      __m256 a[8];
      for (int r = 0; r < 8; ++r) a[r] = _mm256_setzero_ps();
      for (int64_t d = 0; d < n; d += 8) {
        const __m256 qv = _mm256_loadu_ps(q + d);
        for (int r = 0; r < 8; ++r) a[r] = _mm256_fmadd_ps(qv, load_h8(K + (j + r) * ld + d), a[r]);
      }
      const __m256 s01 = _mm256_hadd_ps(a[0], a[1]), s23 = _mm256_hadd_ps(a[2], a[3]);
      const __m256 s45 = _mm256_hadd_ps(a[4], a[5]), s67 = _mm256_hadd_ps(a[6], a[7]);
      const __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);
      const __m256 lo = _mm256_permute2f128_ps(s0123, s4567, 0x20), hi = _mm256_permute2f128_ps(s0123, s4567, 0x31);
      _mm256_storeu_ps(out + j, _mm256_add_ps(lo, hi));
    }
    for (; j < m; ++j) {
      __m256 a = _mm256_setzero_ps();
      for (int64_t d = 0; d < n; d += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load_h8(K + j * ld + d), a);
      __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
      h = _mm_add_ps(h, _mm_movehl_ps(h, h));
      h = _mm_add_ss(h, _mm_movehdup_ps(h));
      out[j] = _mm_cvtss_f32(h);
    }
  }
#endif
  for (; j < m; ++j) {
    float s = 0.0f;
    for (int64_t d = 0; d < n; ++d) s += q[d] * fp16_to_f32(K[j * ld + d]);
    out[j] = s;
  }
}

// out[0..n) = sum_j p[j] * V[j*ld .. +n) for j < m, V in f16.
void weighted_rows_f16(const float* p, const uint16_t* V, int64_t ld, int64_t n, int64_t m, float* out) {
#ifdef HEADKV_F16C
  if (n == 64) {
    __m256 a[8];
    for (int r = 0; r < 8; ++r) a[r] = _mm256_setzero_ps();
    for (int64_t j = 0; j < m; ++j) {
      const __m256 w = _mm256_set1_ps(p[j]);
      const uint16_t* v = V + j * ld;
      for (int r = 0; r < 8; ++r) a[r] = _mm256_fmadd_ps(w, load_h8(v + 8 * r), a[r]);
    }
    for (int r = 0; r < 8; ++r) _mm256_storeu_ps(out + 8 * r, a[r]);
    return;
  }
  if (n % 8 == 0) {
    for (int64_t i = 0; i < n; ++i) out[i] = 0.0f;
    for (int64_t j = 0; j < m; ++j) {
      const __m256 w = _mm256_set1_ps(p[j]);
      for (int64_t i = 0; i < n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_fmadd_ps(w, load_h8(V + j * ld + i), _mm256_loadu_ps(out + i)));
    }
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) out[i] = 0.0f;
  for (int64_t j = 0; j < m; ++j)
    for (int64_t i = 0; i < n; ++i) out[i] += p[j] * fp16_to_f32(V[j * ld + i]);
}

// y[i] = half(x[i]), round to nearest even (F16C and the portable path agree bit for bit).
void f32_to_f16_row(const float* x, uint16_t* y, int64_t n) {
  int64_t i = 0;
#ifdef HEADKV_F16C
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
#endif
  for (; i < n; ++i) y[i] = f32_to_fp16(x[i]);
}

}  // namespace headkv::HEADKV_ISA

// q8_0 / q4_0 storage (KV cache, layouts in select/kv_arena.h): rows of 32-value blocks, ld in bytes.
// Each block is expanded to fp32 in registers (exact: an f16 scale times a small integer) and used
// with fp32 FMA against the fp32 query or softmax weights; no dequantized copy of the cache is made.
// GCC 12 reports -Wmaybe-uninitialized inside its own AVX-512 intrinsics (the _mm512_undefined_*
// pass-through operand of the masked builtins) wherever they are inlined; the operand is never read.
#if defined(__GNUC__) && !defined(__clang__) && defined(__AVX512F__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
namespace headkv::HEADKV_ISA {
namespace {

inline float blk_scale(const uint8_t* b) {
  uint16_t h;
  std::memcpy(&h, b, 2);
#ifdef HEADKV_F16C
  return _cvtsh_ss(h);
#else
  return fp16_to_f32(h);
#endif
}

struct Q8_0 {
  static constexpr int64_t bytes = 34;
  static void deq(const uint8_t* b, float* y) {  // portable: the 32 integers (scale applied by the caller)
    for (int i = 0; i < 32; ++i) y[i] = (float)(int8_t)b[2 + i];
  }
#ifdef HEADKV_F16C
  static void unpack(const uint8_t* b, __m256 v[4]) {
    for (int c = 0; c < 4; ++c)
      v[c] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 2 + 8 * c))));
  }
#endif
#ifdef __AVX512F__
  static void unpack(const uint8_t* b, __m512 v[2]) {
    for (int c = 0; c < 2; ++c)
      v[c] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2 + 16 * c))));
  }
#endif
};

struct Q4_0 {
  static constexpr int64_t bytes = 18;
  static void deq(const uint8_t* b, float* y) {
    for (int i = 0; i < 16; ++i) {
      y[i] = (float)((b[2 + i] & 0xF) - 8);
      y[i + 16] = (float)((b[2 + i] >> 4) - 8);
    }
  }
#ifdef HEADKV_F16C
  // Bytes of (nibble - 8): elements 0..15 (low nibbles) and 16..31 (high nibbles).
  static void nibbles(const uint8_t* b, __m128i& lo, __m128i& hi) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2));
    const __m128i mask = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    lo = _mm_sub_epi8(_mm_and_si128(raw, mask), eight);
    hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), mask), eight);
  }
  static void unpack(const uint8_t* b, __m256 v[4]) {
    __m128i lo, hi;
    nibbles(b, lo, hi);
    v[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
    v[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
    v[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
    v[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
  }
#endif
#ifdef __AVX512F__
  static void unpack(const uint8_t* b, __m512 v[2]) {
    __m128i lo, hi;
    nibbles(b, lo, hi);
    v[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo));
    v[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi));
  }
#endif
};

#ifdef HEADKV_F16C
// Four row accumulators -> their four horizontal sums.
inline __m128 reduce4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}
#endif

// Several queries against the same rows (a GQA group shares its KV head): each block is expanded once
// and used by every query, so the expansion cost is shared.
//   dot:      out[r*ldo + j] = sum over blocks b of d_jb * dot(q_r[32b..], ints of block (j, b))
//   weighted: out[r*ldo + i] = sum_j p_r[j] * d_jb * int i of row j
// NQ queries at a time (compile-time, so the accumulators stay in registers); rows four at a time.
template <class B, int NQ>
void dot_rows_blk(const float* q, int64_t ldq, const uint8_t* K, int64_t ld, int64_t n, int64_t m, float* out,
                  int64_t ldo) {
  const int64_t nb = n / 32;
  int64_t j = 0;
#if defined(__AVX512F__)
  for (; j + 4 <= m; j += 4) {
    __m512 a[NQ][4];
    for (int r = 0; r < NQ; ++r)
      for (int c = 0; c < 4; ++c) a[r][c] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      __m512 qv[NQ][2];
      for (int r = 0; r < NQ; ++r) {
        qv[r][0] = _mm512_loadu_ps(q + r * ldq + 32 * b);
        qv[r][1] = _mm512_loadu_ps(q + r * ldq + 32 * b + 16);
      }
      for (int c = 0; c < 4; ++c) {
        const uint8_t* blk = K + (j + c) * ld + b * B::bytes;
        __m512 v[2];
        B::unpack(blk, v);
        const __m512 s = _mm512_set1_ps(blk_scale(blk));
        for (int r = 0; r < NQ; ++r)
          a[r][c] = _mm512_fmadd_ps(_mm512_fmadd_ps(qv[r][1], v[1], _mm512_mul_ps(qv[r][0], v[0])), s, a[r][c]);
      }
    }
    for (int r = 0; r < NQ; ++r) {
      __m256 h[4];
      for (int c = 0; c < 4; ++c) h[c] = _mm256_add_ps(_mm512_castps512_ps256(a[r][c]), _mm512_extractf32x8_ps(a[r][c], 1));
      _mm_storeu_ps(out + r * ldo + j, reduce4(h[0], h[1], h[2], h[3]));
    }
  }
#elif defined(HEADKV_F16C)
  for (; j + 4 <= m; j += 4) {
    __m256 a[NQ][4];
    for (int r = 0; r < NQ; ++r)
      for (int c = 0; c < 4; ++c) a[r][c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b)
      for (int c = 0; c < 4; ++c) {
        const uint8_t* blk = K + (j + c) * ld + b * B::bytes;
        __m256 v[4];
        B::unpack(blk, v);
        const __m256 s = _mm256_set1_ps(blk_scale(blk));
        for (int r = 0; r < NQ; ++r) {
          const float* qb = q + r * ldq + 32 * b;
          __m256 t = _mm256_mul_ps(_mm256_loadu_ps(qb), v[0]);
          for (int e = 1; e < 4; ++e) t = _mm256_fmadd_ps(_mm256_loadu_ps(qb + 8 * e), v[e], t);
          a[r][c] = _mm256_fmadd_ps(t, s, a[r][c]);
        }
      }
    for (int r = 0; r < NQ; ++r) _mm_storeu_ps(out + r * ldo + j, reduce4(a[r][0], a[r][1], a[r][2], a[r][3]));
  }
#endif
  float y[32];
  for (; j < m; ++j)
    for (int r = 0; r < NQ; ++r) {
      float s = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = K + j * ld + b * B::bytes;
        B::deq(blk, y);
        float t = 0.0f;
        for (int i = 0; i < 32; ++i) t += q[r * ldq + 32 * b + i] * y[i];
        s += blk_scale(blk) * t;
      }
      out[r * ldo + j] = s;
    }
}

// Rows of up to 128 values (NB blocks) accumulate in registers.
template <class B, int NQ, int NB>
void weighted_rows_regs(const float* p, int64_t ldp, const uint8_t* V, int64_t ld, int64_t m, float* out, int64_t ldo) {
#if defined(__AVX512F__)
  __m512 a[NQ][2 * NB];
  for (int r = 0; r < NQ; ++r)
    for (int c = 0; c < 2 * NB; ++c) a[r][c] = _mm512_setzero_ps();
  for (int64_t j = 0; j < m; ++j)
    for (int b = 0; b < NB; ++b) {
      const uint8_t* blk = V + j * ld + b * B::bytes;
      const float d = blk_scale(blk);
      __m512 v[2];
      B::unpack(blk, v);
      for (int r = 0; r < NQ; ++r) {
        const __m512 w = _mm512_set1_ps(p[r * ldp + j] * d);
        for (int c = 0; c < 2; ++c) a[r][2 * b + c] = _mm512_fmadd_ps(w, v[c], a[r][2 * b + c]);
      }
    }
  for (int r = 0; r < NQ; ++r)
    for (int c = 0; c < 2 * NB; ++c) _mm512_storeu_ps(out + r * ldo + 16 * c, a[r][c]);
#elif defined(HEADKV_F16C)
  __m256 a[NQ][4 * NB];
  for (int r = 0; r < NQ; ++r)
    for (int c = 0; c < 4 * NB; ++c) a[r][c] = _mm256_setzero_ps();
  for (int64_t j = 0; j < m; ++j)
    for (int b = 0; b < NB; ++b) {
      const uint8_t* blk = V + j * ld + b * B::bytes;
      const float d = blk_scale(blk);
      __m256 v[4];
      B::unpack(blk, v);
      for (int r = 0; r < NQ; ++r) {
        const __m256 w = _mm256_set1_ps(p[r * ldp + j] * d);
        for (int c = 0; c < 4; ++c) a[r][4 * b + c] = _mm256_fmadd_ps(w, v[c], a[r][4 * b + c]);
      }
    }
  for (int r = 0; r < NQ; ++r)
    for (int c = 0; c < 4 * NB; ++c) _mm256_storeu_ps(out + r * ldo + 8 * c, a[r][c]);
#endif
}

template <class B, int NQ>
void weighted_rows_blk(const float* p, int64_t ldp, const uint8_t* V, int64_t ld, int64_t n, int64_t m, float* out,
                       int64_t ldo) {
  const int64_t nb = n / 32;
#ifdef HEADKV_F16C
  if (nb == 1) return weighted_rows_regs<B, NQ, 1>(p, ldp, V, ld, m, out, ldo);
  if (nb == 2) return weighted_rows_regs<B, NQ, 2>(p, ldp, V, ld, m, out, ldo);
  if (nb == 4) return weighted_rows_regs<B, NQ, 4>(p, ldp, V, ld, m, out, ldo);
#endif
  float y[32];
  for (int r = 0; r < NQ; ++r)
    for (int64_t i = 0; i < n; ++i) out[r * ldo + i] = 0.0f;
  for (int64_t j = 0; j < m; ++j)
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = V + j * ld + b * B::bytes;
      B::deq(blk, y);
      const float d = blk_scale(blk);
      for (int r = 0; r < NQ; ++r) {
        const float w = p[r * ldp + j] * d;
        for (int i = 0; i < 32; ++i) out[r * ldo + 32 * b + i] += w * y[i];
      }
    }
}

// Queries in chunks of up to four (two where the registers are 256-bit).
#if defined(__AVX512F__) || !defined(HEADKV_F16C)
constexpr int64_t kChunk = 4;
#else
constexpr int64_t kChunk = 2;
#endif

template <class B>
void dot_rows_group(const float* q, int64_t nq, int64_t ldq, const uint8_t* K, int64_t ld, int64_t n, int64_t m,
                    float* out, int64_t ldo) {
  for (int64_t r = 0; r < nq;) {
    const int64_t c = std::min<int64_t>(kChunk, nq - r);
    const float* qr = q + r * ldq;
    float* o = out + r * ldo;
    if (c >= 4) dot_rows_blk<B, 4>(qr, ldq, K, ld, n, m, o, ldo);
    else if (c == 3) dot_rows_blk<B, 3>(qr, ldq, K, ld, n, m, o, ldo);
    else if (c == 2) dot_rows_blk<B, 2>(qr, ldq, K, ld, n, m, o, ldo);
    else dot_rows_blk<B, 1>(qr, ldq, K, ld, n, m, o, ldo);
    r += c;
  }
}

template <class B>
void weighted_rows_group(const float* p, int64_t nq, int64_t ldp, const uint8_t* V, int64_t ld, int64_t n, int64_t m,
                         float* out, int64_t ldo) {
  for (int64_t r = 0; r < nq;) {
    const int64_t c = std::min<int64_t>(kChunk, nq - r);
    const float* pr = p + r * ldp;
    float* o = out + r * ldo;
    if (c >= 4) weighted_rows_blk<B, 4>(pr, ldp, V, ld, n, m, o, ldo);
    else if (c == 3) weighted_rows_blk<B, 3>(pr, ldp, V, ld, n, m, o, ldo);
    else if (c == 2) weighted_rows_blk<B, 2>(pr, ldp, V, ld, n, m, o, ldo);
    else weighted_rows_blk<B, 1>(pr, ldp, V, ld, n, m, o, ldo);
    r += c;
  }
}

}  // namespace

void dot_rows_q8_0(const float* q, int64_t nq, int64_t ldq, const uint8_t* K, int64_t ld, int64_t n, int64_t m,
                   float* out, int64_t ldo) {
  dot_rows_group<Q8_0>(q, nq, ldq, K, ld, n, m, out, ldo);
}
void weighted_rows_q8_0(const float* p, int64_t nq, int64_t ldp, const uint8_t* V, int64_t ld, int64_t n, int64_t m,
                        float* out, int64_t ldo) {
  weighted_rows_group<Q8_0>(p, nq, ldp, V, ld, n, m, out, ldo);
}
void dot_rows_q4_0(const float* q, int64_t nq, int64_t ldq, const uint8_t* K, int64_t ld, int64_t n, int64_t m,
                   float* out, int64_t ldo) {
  dot_rows_group<Q4_0>(q, nq, ldq, K, ld, n, m, out, ldo);
}
void weighted_rows_q4_0(const float* p, int64_t nq, int64_t ldp, const uint8_t* V, int64_t ld, int64_t n, int64_t m,
                        float* out, int64_t ldo) {
  weighted_rows_group<Q4_0>(p, nq, ldp, V, ld, n, m, out, ldo);
}

}  // namespace headkv::HEADKV_ISA
#if defined(__GNUC__) && !defined(__clang__) && defined(__AVX512F__)
#pragma GCC diagnostic pop
#endif
