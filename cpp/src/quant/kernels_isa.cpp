// Weight kernels compiled once per CPU level (quant/kernels.h, common/cpu.h): vec_dot of a quantized
// row with up to four fp32 vectors, fast dequantization for the GEMM panels, and the GEMM's 16x6
// register tile. With the level's flags defining __AVX2__, __FMA__ and __F16C__, each 32-element
// sub-block is expanded to integer-valued floats q and scale*sum(q*x) (+ min*sum(x)) accumulates in
// fp32; otherwise a scalar path dequantizes chunks and dots them. HEADKV_ISA names this copy's
// namespace. No std:: templates here: a weak out-of-line copy built with AVX-512 flags could be
// picked by the linker for the baseline code (tests/test_cpp.py checks the objects).
#include "common/cpu.h"
#include "quant/blocks.h"
#include "quant/kernels.h"
#include "quant/quant.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define HK_AVX2 1
#include <immintrin.h>
#endif

#ifndef HEADKV_ISA  // a build that compiles this file once (tests/fuzz) has the baseline level only
#define HEADKV_ISA isa_baseline
#endif

namespace headkv::HEADKV_ISA {
using namespace qblk;

namespace {

// Scalar: dequantize chunks of >= 256 elements, dot with every token.
void dot_scalar(GGMLType t, const uint8_t* w, const float* x, int64_t ldx, int nt, int64_t n, float* out) {
  const TypeTraits tr = type_traits(t);
  const int64_t chunk = tr.block_size >= 256 ? tr.block_size : 256 / tr.block_size * tr.block_size;
  float buf[256];
  float acc[4] = {0, 0, 0, 0};
  for (int64_t i = 0; i < n; i += chunk) {
    const int64_t len = n - i < chunk ? n - i : chunk;
    dequantize_row(t, w + (size_t)(i / tr.block_size) * tr.type_size, buf, len);
    for (int j = 0; j < nt; ++j) {
      const float* xj = x + j * ldx + i;
      float s = 0;
      for (int64_t l = 0; l < len; ++l) s += buf[l] * xj[l];
      acc[j] += s;
    }
  }
  for (int j = 0; j < nt; ++j) out[j] = acc[j];
}

#ifdef HK_AVX2
inline float h2f(const uint8_t* p) { return _cvtsh_ss(rd16(p)); }
inline __m256 i32f(__m256i v) { return _mm256_cvtepi32_ps(v); }
inline __m256i u8x8(const uint8_t* p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p)); }
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// 16 bytes of nibbles -> elements 0..15 (low nibbles) and 16..31 (high nibbles).
inline void nib32(const uint8_t* p, __m256* q) {
  const __m256i m = _mm256_set1_epi32(0xF);
  const __m256i a = u8x8(p), b = u8x8(p + 8);
  q[0] = i32f(_mm256_and_si256(a, m));
  q[1] = i32f(_mm256_and_si256(b, m));
  q[2] = i32f(_mm256_srli_epi32(a, 4));
  q[3] = i32f(_mm256_srli_epi32(b, 4));
}
// Q5: element e = nibble | bit e of qh << 4, minus off.
inline void nib5(const uint8_t* p, uint32_t qh, int off, __m256* q) {
  const __m256i m = _mm256_set1_epi32(0xF), one = _mm256_set1_epi32(1), o = _mm256_set1_epi32(off);
  const __m256i h = _mm256_set1_epi32((int)qh), sh = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int g = 0; g < 4; ++g) {
    __m256i v = u8x8(p + 8 * (g & 1));
    v = (g < 2) ? _mm256_and_si256(v, m) : _mm256_srli_epi32(v, 4);
    const __m256i hb = _mm256_and_si256(_mm256_srlv_epi32(h, _mm256_add_epi32(sh, _mm256_set1_epi32(8 * g))), one);
    q[g] = i32f(_mm256_sub_epi32(_mm256_or_si256(v, _mm256_slli_epi32(hb, 4)), o));
  }
}

// Decoders: block(b) reads scales; sub(b, s, q) expands sub-block s (32 elements) into q[4].
struct D_Q4_0 {  // d*(q-8) = d*q + (-8d)
  static constexpr int QK = 32, NSUB = 1, TS = 18; static constexpr bool MIN = true;
  float scale[1], min[1];
  void block(const uint8_t* b) { scale[0] = h2f(b); min[0] = -8.f * scale[0]; }
  void sub(const uint8_t* b, int, __m256* q) const { nib32(b + 2, q); }
};
struct D_Q4_1 {
  static constexpr int QK = 32, NSUB = 1, TS = 20; static constexpr bool MIN = true;
  float scale[1], min[1];
  void block(const uint8_t* b) { scale[0] = h2f(b); min[0] = h2f(b + 2); }
  void sub(const uint8_t* b, int, __m256* q) const { nib32(b + 4, q); }
};
struct D_Q5_0 {
  static constexpr int QK = 32, NSUB = 1, TS = 22; static constexpr bool MIN = false;
  float scale[1], min[1];
  void block(const uint8_t* b) { scale[0] = h2f(b); }
  void sub(const uint8_t* b, int, __m256* q) const { nib5(b + 6, rd32(b + 2), 16, q); }
};
struct D_Q5_1 {
  static constexpr int QK = 32, NSUB = 1, TS = 24; static constexpr bool MIN = true;
  float scale[1], min[1];
  void block(const uint8_t* b) { scale[0] = h2f(b); min[0] = h2f(b + 2); }
  void sub(const uint8_t* b, int, __m256* q) const { nib5(b + 8, rd32(b + 4), 0, q); }
};
struct D_Q8_0 {
  static constexpr int QK = 32, NSUB = 1, TS = 34; static constexpr bool MIN = false;
  float scale[1], min[1];
  void block(const uint8_t* b) { scale[0] = h2f(b); }
  void sub(const uint8_t* b, int, __m256* q) const {
    for (int g = 0; g < 4; ++g)
      q[g] = i32f(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(b + 2 + 8 * g))));
  }
};
template <bool Q5>
struct D_QK45 {  // Q4_K / Q5_K
  static constexpr int QK = 256, NSUB = 8, TS = Q5 ? 176 : 144; static constexpr bool MIN = true;
  float scale[8], min[8];
  void block(const uint8_t* b) {
    const float d = h2f(b), dmin = h2f(b + 2);
    for (int j = 0; j < 8; ++j) {
      int sc, m;
      kscale_min(b + 4, j, sc, m);
      scale[j] = d * (float)sc;
      min[j] = -(dmin * (float)m);
    }
  }
  void sub(const uint8_t* b, int s, __m256* q) const {
    const uint8_t* qs = b + (Q5 ? 48 : 16) + 32 * (s / 2);
    const __m128i ns = _mm_cvtsi32_si128((s & 1) * 4), hs = _mm_cvtsi32_si128(s);
    const __m256i m = _mm256_set1_epi32(0xF), one = _mm256_set1_epi32(1);
    for (int g = 0; g < 4; ++g) {
      __m256i v = _mm256_and_si256(_mm256_srl_epi32(u8x8(qs + 8 * g), ns), m);
      if (Q5) v = _mm256_or_si256(v, _mm256_slli_epi32(_mm256_and_si256(_mm256_srl_epi32(u8x8(b + 16 + 8 * g), hs), one), 4));
      q[g] = i32f(v);
    }
  }
};
struct D_Q6_K {
  static constexpr int QK = 256, NSUB = 8, TS = 210; static constexpr bool MIN = false;
  float scale[8], min[8];
  void block(const uint8_t* b) { scale[0] = h2f(b + 208); for (int j = 1; j < 8; ++j) scale[j] = scale[0]; }
  void sub(const uint8_t* b, int s, __m256* q) const {
    const int n = s / 4, g = s % 4;
    const uint8_t* ql = b + 64 * n + (g & 1) * 32;
    const uint8_t* qh = b + 128 + 32 * n;
    const int8_t* sc = (const int8_t*)(b + 192) + 8 * n + 2 * g;
    const __m128i ns = _mm_cvtsi32_si128((g >> 1) * 4), hs = _mm_cvtsi32_si128(2 * g);
    const __m256i m = _mm256_set1_epi32(0xF), m3 = _mm256_set1_epi32(3), o = _mm256_set1_epi32(32);
    for (int i = 0; i < 4; ++i) {
      const __m256i lo = _mm256_and_si256(_mm256_srl_epi32(u8x8(ql + 8 * i), ns), m);
      const __m256i hi = _mm256_and_si256(_mm256_srl_epi32(u8x8(qh + 8 * i), hs), m3);
      const __m256i v = _mm256_sub_epi32(_mm256_or_si256(lo, _mm256_slli_epi32(hi, 4)), o);
      q[i] = _mm256_mul_ps(i32f(v), _mm256_set1_ps((float)sc[i >> 1]));
    }
  }
};

// xs: sums of the 32-element chunks of each token's x (token j at xs + j*(n/32)); used for the
// min terms: sum_i (s*q_i + m) x_i = s*sum(q*x) + m*sum(x).
template <class D, int NT>
void dot_q(const uint8_t* w, const float* x, int64_t ldx, int64_t n, const float* xs, float* out) {
  constexpr int NA = NT == 1 ? 2 : 1;  // independent accumulator chains per token
  __m256 acc[NT][NA];
  float accm[NT];
  for (int j = 0; j < NT; ++j) {
    for (int a = 0; a < NA; ++a) acc[j][a] = _mm256_setzero_ps();
    accm[j] = 0.f;
  }
  const int64_t nch = n / 32;
  D dec;
  const int64_t nb = n / D::QK;
  for (int64_t ib = 0; ib < nb; ++ib) {
    const uint8_t* b = w + ib * D::TS;
    dec.block(b);
    for (int s = 0; s < D::NSUB; ++s) {
      __m256 q[4];
      dec.sub(b, s, q);
      const __m256 vs = _mm256_set1_ps(dec.scale[s]);
      const float* xb = x + ib * D::QK + 32 * s;
      for (int j = 0; j < NT; ++j) {
        const float* xp = xb + j * ldx;
        const __m256 x0 = _mm256_loadu_ps(xp), x1 = _mm256_loadu_ps(xp + 8);
        const __m256 x2 = _mm256_loadu_ps(xp + 16), x3 = _mm256_loadu_ps(xp + 24);
        __m256 p = _mm256_mul_ps(q[0], x0);
        p = _mm256_fmadd_ps(q[1], x1, p);
        p = _mm256_fmadd_ps(q[2], x2, p);
        p = _mm256_fmadd_ps(q[3], x3, p);
        acc[j][0] = _mm256_fmadd_ps(vs, p, acc[j][0]);
        if (NA == 2) {  // alternate two dependency chains
          const __m256 t0 = acc[j][0];
          acc[j][0] = acc[j][1];
          acc[j][1] = t0;
        }
        if (D::MIN) accm[j] += dec.min[s] * xs[j * nch + ib * D::NSUB + s];
      }
    }
  }
  for (int j = 0; j < NT; ++j) {
    for (int a = 1; a < NA; ++a) acc[j][0] = _mm256_add_ps(acc[j][0], acc[j][a]);
    out[j] = hsum(acc[j][0]) + accm[j];
  }
}

// Float rows: 8 elements at a time.
inline __m256 ld_f32(const uint8_t* p) { return _mm256_loadu_ps((const float*)p); }
inline __m256 ld_f16(const uint8_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
inline __m256 ld_bf16(const uint8_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
template <__m256 (*LD)(const uint8_t*), int ES, int NT>
void dot_f(GGMLType t, const uint8_t* w, const float* x, int64_t ldx, int64_t n, float* out) {
  __m256 acc[NT][4];
  for (int j = 0; j < NT; ++j)
    for (int a = 0; a < 4; ++a) acc[j][a] = _mm256_setzero_ps();
  const int64_t n32 = n & ~(int64_t)31;
  for (int64_t i = 0; i < n32; i += 32) {
    __m256 wv[4];
    for (int a = 0; a < 4; ++a) wv[a] = LD(w + (i + 8 * a) * ES);
    for (int j = 0; j < NT; ++j)
      for (int a = 0; a < 4; ++a)
        acc[j][a] = _mm256_fmadd_ps(wv[a], _mm256_loadu_ps(x + j * ldx + i + 8 * a), acc[j][a]);
  }
  float tail[NT] = {};
  if (n32 < n) dot_scalar(t, w + n32 * ES, x + n32, ldx, NT, n - n32, tail);
  for (int j = 0; j < NT; ++j)
    out[j] = hsum(_mm256_add_ps(_mm256_add_ps(acc[j][0], acc[j][1]), _mm256_add_ps(acc[j][2], acc[j][3]))) + tail[j];
}

template <class D>
void run_q(const uint8_t* w, const float* x, int64_t ldx, int nt, int64_t n, const float* xs, float* out) {
  switch (nt) {
    case 1: return dot_q<D, 1>(w, x, ldx, n, xs, out);
    case 2: return dot_q<D, 2>(w, x, ldx, n, xs, out);
    case 3: return dot_q<D, 3>(w, x, ldx, n, xs, out);
    default: return dot_q<D, 4>(w, x, ldx, n, xs, out);
  }
}
template <__m256 (*LD)(const uint8_t*), int ES>
void run_f(GGMLType t, const uint8_t* w, const float* x, int64_t ldx, int nt, int64_t n, float* out) {
  switch (nt) {
    case 1: return dot_f<LD, ES, 1>(t, w, x, ldx, n, out);
    case 2: return dot_f<LD, ES, 2>(t, w, x, ldx, n, out);
    case 3: return dot_f<LD, ES, 3>(t, w, x, ldx, n, out);
    default: return dot_f<LD, ES, 4>(t, w, x, ldx, n, out);
  }
}

template <class D>
void deq_fast(const uint8_t* w, float* y, int64_t n) {
  D dec;
  for (int64_t ib = 0; ib < n / D::QK; ++ib) {
    const uint8_t* b = w + ib * D::TS;
    dec.block(b);
    for (int s = 0; s < D::NSUB; ++s) {
      __m256 q[4];
      dec.sub(b, s, q);
      const __m256 vs = _mm256_set1_ps(dec.scale[s]), vm = _mm256_set1_ps(D::MIN ? dec.min[s] : 0.f);
      float* yp = y + ib * D::QK + 32 * s;
      for (int g = 0; g < 4; ++g) _mm256_storeu_ps(yp + 8 * g, _mm256_fmadd_ps(q[g], vs, vm));
    }
  }
}
#endif  // HK_AVX2

}  // namespace

void dot_multi(GGMLType t, const uint8_t* w, const float* x, int64_t ldx, int nt, int64_t n, float* out,
               const float* xs) {
#ifdef HK_AVX2
  switch (t) {
    case GGMLType::Q4_0: return run_q<D_Q4_0>(w, x, ldx, nt, n, xs, out);
    case GGMLType::Q4_1: return run_q<D_Q4_1>(w, x, ldx, nt, n, xs, out);
    case GGMLType::Q5_0: return run_q<D_Q5_0>(w, x, ldx, nt, n, xs, out);
    case GGMLType::Q5_1: return run_q<D_Q5_1>(w, x, ldx, nt, n, xs, out);
    case GGMLType::Q8_0: return run_q<D_Q8_0>(w, x, ldx, nt, n, xs, out);
    case GGMLType::Q4_K: return run_q<D_QK45<false>>(w, x, ldx, nt, n, xs, out);
    case GGMLType::Q5_K: return run_q<D_QK45<true>>(w, x, ldx, nt, n, xs, out);
    case GGMLType::Q6_K: return run_q<D_Q6_K>(w, x, ldx, nt, n, xs, out);
    case GGMLType::F32: return run_f<ld_f32, 4>(t, w, x, ldx, nt, n, out);
    case GGMLType::F16: return run_f<ld_f16, 2>(t, w, x, ldx, nt, n, out);
    case GGMLType::BF16: return run_f<ld_bf16, 2>(t, w, x, ldx, nt, n, out);
    default: break;
  }
#endif
  dot_scalar(t, w, x, ldx, nt, n, out);
}

void dequant_fast(GGMLType t, const uint8_t* w, float* y, int64_t n) {
#ifdef HK_AVX2
  switch (t) {
    case GGMLType::Q4_0: return deq_fast<D_Q4_0>(w, y, n);
    case GGMLType::Q4_1: return deq_fast<D_Q4_1>(w, y, n);
    case GGMLType::Q5_0: return deq_fast<D_Q5_0>(w, y, n);
    case GGMLType::Q5_1: return deq_fast<D_Q5_1>(w, y, n);
    case GGMLType::Q8_0: return deq_fast<D_Q8_0>(w, y, n);
    case GGMLType::Q4_K: return deq_fast<D_QK45<false>>(w, y, n);
    case GGMLType::Q5_K: return deq_fast<D_QK45<true>>(w, y, n);
    case GGMLType::Q6_K: return deq_fast<D_Q6_K>(w, y, n);
    default: break;
  }
#endif
  dequantize_row(t, w, y, n);
}


// C[j*ldc + i] (+)= sum_k a[k*qk::kMR + i] * b[k*qk::kNR + j], i < qk::kMR, j < qk::kNR.
void gemm_tile(int64_t kc, const float* a, const float* b, float* C, int64_t ldc, bool accum) {
#if defined(__AVX2__) && defined(__FMA__)
  __m256 c[qk::kNR][2];
  for (int j = 0; j < qk::kNR; ++j) c[j][0] = c[j][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k, a += qk::kMR, b += qk::kNR) {
    const __m256 a0 = _mm256_loadu_ps(a), a1 = _mm256_loadu_ps(a + 8);
    for (int j = 0; j < qk::kNR; ++j) {
      const __m256 bj = _mm256_broadcast_ss(b + j);
      c[j][0] = _mm256_fmadd_ps(a0, bj, c[j][0]);
      c[j][1] = _mm256_fmadd_ps(a1, bj, c[j][1]);
    }
  }
  for (int j = 0; j < qk::kNR; ++j) {
    float* cp = C + j * ldc;
    if (accum) {
      c[j][0] = _mm256_add_ps(c[j][0], _mm256_loadu_ps(cp));
      c[j][1] = _mm256_add_ps(c[j][1], _mm256_loadu_ps(cp + 8));
    }
    _mm256_storeu_ps(cp, c[j][0]);
    _mm256_storeu_ps(cp + 8, c[j][1]);
  }
#else
  float c[qk::kNR][qk::kMR] = {};
  for (int64_t k = 0; k < kc; ++k, a += qk::kMR, b += qk::kNR)
    for (int j = 0; j < qk::kNR; ++j)
      for (int i = 0; i < qk::kMR; ++i) c[j][i] += a[i] * b[j];
  for (int j = 0; j < qk::kNR; ++j)
    for (int i = 0; i < qk::kMR; ++i) C[j * ldc + i] = accum ? C[j * ldc + i] + c[j][i] : c[j][i];
#endif
}

}  // namespace headkv::HEADKV_ISA
