// Scalar reference dequantization, bit-exact with ggml / gguf-py: every product and sum is a
// separately rounded fp32 operation, so FMA contraction is disabled for this file.
#include "common/error.h"
#include "quant/blocks.h"
#include "quant/quant.h"

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace headkv {
using namespace qblk;

namespace {

void deq_q4_0(const uint8_t* b, float* y) {
  const float d = f16at(b);
  for (int l = 0; l < 16; ++l) {
    y[l] = d * (float)((b[2 + l] & 0xF) - 8);
    y[l + 16] = d * (float)((b[2 + l] >> 4) - 8);
  }
}

void deq_q4_1(const uint8_t* b, float* y) {
  const float d = f16at(b), m = f16at(b + 2);
  for (int l = 0; l < 16; ++l) {
    y[l] = d * (float)(b[4 + l] & 0xF) + m;
    y[l + 16] = d * (float)(b[4 + l] >> 4) + m;
  }
}

void deq_q5_0(const uint8_t* b, float* y) {
  const float d = f16at(b);
  const uint32_t qh = rd32(b + 2);
  for (int l = 0; l < 16; ++l) {
    const int lo = (b[6 + l] & 0xF) | (((qh >> l) & 1) << 4);
    const int hi = (b[6 + l] >> 4) | (((qh >> (l + 16)) & 1) << 4);
    y[l] = d * (float)(lo - 16);
    y[l + 16] = d * (float)(hi - 16);
  }
}

void deq_q5_1(const uint8_t* b, float* y) {
  const float d = f16at(b), m = f16at(b + 2);
  const uint32_t qh = rd32(b + 4);
  for (int l = 0; l < 16; ++l) {
    const int lo = (b[8 + l] & 0xF) | (((qh >> l) & 1) << 4);
    const int hi = (b[8 + l] >> 4) | (((qh >> (l + 16)) & 1) << 4);
    y[l] = d * (float)lo + m;
    y[l + 16] = d * (float)hi + m;
  }
}

void deq_q8_0(const uint8_t* b, float* y) {
  const float d = f16at(b);
  for (int l = 0; l < 32; ++l) y[l] = (float)(int8_t)b[2 + l] * d;
}

// Q4_K (qh == nullptr) and Q5_K: 8 sub-blocks of 32, y = d*sc * q - dmin*m.
void deq_q45_k(const uint8_t* b, const uint8_t* qh, const uint8_t* qs, float* y) {
  const float d = f16at(b), dmin = f16at(b + 2);
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    kscale_min(b + 4, j, sc, m);
    const float d1 = d * (float)sc, m1 = dmin * (float)m;
    const uint8_t* q = qs + 32 * (j / 2);
    const int shift = (j & 1) * 4;
    for (int l = 0; l < 32; ++l) {
      int v = (q[l] >> shift) & 0xF;
      if (qh) v |= ((qh[l] >> j) & 1) << 4;
      y[32 * j + l] = d1 * (float)v - m1;
    }
  }
}

void deq_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = (const int8_t*)(b + 192);
  const float d = f16at(b + 208);
  for (int n = 0; n < 2; ++n, ql += 64, qh += 32, sc += 8, y += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = (d * (float)sc[is + 0]) * (float)q1;
      y[l + 32] = (d * (float)sc[is + 2]) * (float)q2;
      y[l + 64] = (d * (float)sc[is + 4]) * (float)q3;
      y[l + 96] = (d * (float)sc[is + 6]) * (float)q4;
    }
  }
}

}  // namespace

void dequantize_row(GGMLType t, const void* src, float* dst, int64_t n) {
  const TypeTraits tr = type_traits(t);
  if (!tr.supported) fail(ErrorKind::Unsupported, "cannot dequantize tensor type " + type_name(t));
  const size_t bytes = row_size(t, n);  // validates n
  (void)bytes;
  const uint8_t* p = (const uint8_t*)src;
  const int64_t nb = n / tr.block_size;
  const size_t ts = tr.type_size;
  switch (t) {
    case GGMLType::F32: std::memcpy(dst, src, (size_t)n * 4); return;
    case GGMLType::F16:
      for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_f32(rd16(p + 2 * i));
      return;
    case GGMLType::BF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(rd16(p + 2 * i));
      return;
    case GGMLType::Q4_0: for (int64_t i = 0; i < nb; ++i) deq_q4_0(p + i * ts, dst + 32 * i); return;
    case GGMLType::Q4_1: for (int64_t i = 0; i < nb; ++i) deq_q4_1(p + i * ts, dst + 32 * i); return;
    case GGMLType::Q5_0: for (int64_t i = 0; i < nb; ++i) deq_q5_0(p + i * ts, dst + 32 * i); return;
    case GGMLType::Q5_1: for (int64_t i = 0; i < nb; ++i) deq_q5_1(p + i * ts, dst + 32 * i); return;
    case GGMLType::Q8_0: for (int64_t i = 0; i < nb; ++i) deq_q8_0(p + i * ts, dst + 32 * i); return;
    case GGMLType::Q4_K:
      for (int64_t i = 0; i < nb; ++i) {
        const uint8_t* b = p + i * ts;
        deq_q45_k(b, nullptr, b + 16, dst + 256 * i);
      }
      return;
    case GGMLType::Q5_K:
      for (int64_t i = 0; i < nb; ++i) {
        const uint8_t* b = p + i * ts;
        deq_q45_k(b, b + 16, b + 48, dst + 256 * i);
      }
      return;
    case GGMLType::Q6_K: for (int64_t i = 0; i < nb; ++i) deq_q6_k(p + i * ts, dst + 256 * i); return;
    default: break;
  }
  fail(ErrorKind::Unsupported, "cannot dequantize tensor type " + type_name(t));
}

}  // namespace headkv
