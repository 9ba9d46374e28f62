// KV cache element types (declared in select/kv_arena.h): names, row sizes, store and load of one row.
// The block types follow llama.cpp's reference quantizers (ggml-quants.c, quantize_row_q8_0_ref and
// quantize_row_q4_0_ref) so a stored row is byte-identical to what llama.cpp would store.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "common/error.h"
#include "common/fp16.h"
#include "common/simd.h"
#include "quant/quant.h"
#include "select/kv_arena.h"

// Plain float arithmetic in the quantizers (no contraction of x*id + 8.5 into an FMA), as llama.cpp's
// reference C code computes it on its baseline target.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace headkv {

KVType parse_kv_type(const std::string& name, const char* which) {
  if (name == "f16") return KVType::F16;
  if (name == "f32") return KVType::F32;
  if (name == "q8_0") return KVType::Q8_0;
  if (name == "q4_0") return KVType::Q4_0;
  for (const char* q : {"q4_1", "q5_0", "q5_1", "iq4_nl", "bf16"})
    if (name == q)
      fail(ErrorKind::Unsupported, std::string(which) + " '" + name + "' is not supported; f16, f32, q8_0 or q4_0");
  fail(ErrorKind::InvalidArgument, std::string(which) + " '" + name + "' is not a KV cache type (f16, f32, q8_0, q4_0)");
}

const char* kv_type_name(KVType t) {
  switch (t) {
    case KVType::F32: return "f32";
    case KVType::F16: return "f16";
    case KVType::Q8_0: return "q8_0";
    case KVType::Q4_0: return "q4_0";
  }
  return "?";
}

void check_kv_row(KVType t, int head_dim, const char* which) {
  if (kv_type_blocked(t) && head_dim % 32 != 0)
    fail(ErrorKind::Unsupported, std::string(which) + " '" + kv_type_name(t) + "' stores blocks of 32 values; this model's " +
                                     "head size " + std::to_string(head_dim) + " is not a multiple of 32 (use f16 or f32)");
}

namespace {

// ggml's block_q8_0: d = max|x| / 127, q = round(x / d) (round half away from zero).
void quantize_q8_0(const float* x, int64_t n, uint8_t* out) {
  for (int64_t b = 0; b < n / 32; ++b, x += 32, out += 34) {
    float amax = 0.0f;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const uint16_t dh = f32_to_fp16(d);
    std::memcpy(out, &dh, 2);
    for (int i = 0; i < 32; ++i) out[2 + i] = (uint8_t)(int8_t)std::roundf(x[i] * id);
  }
}

// ggml's block_q4_0: the value of largest magnitude m (with its sign) maps to -8, d = m / -8,
// q = min(15, trunc(x / d + 8.5)); element i < 16 in the low nibble of qs[i], i + 16 in its high nibble.
void quantize_q4_0(const float* x, int64_t n, uint8_t* out) {
  for (int64_t b = 0; b < n / 32; ++b, x += 32, out += 18) {
    float amax = 0.0f, mx = 0.0f;
    for (int i = 0; i < 32; ++i)
      if (amax < std::fabs(x[i])) {
        amax = std::fabs(x[i]);
        mx = x[i];
      }
    const float d = mx / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const uint16_t dh = f32_to_fp16(d);
    std::memcpy(out, &dh, 2);
    for (int i = 0; i < 16; ++i) {
      const uint8_t lo = (uint8_t)std::min(15, (int)(int8_t)(x[i] * id + 8.5f));
      const uint8_t hi = (uint8_t)std::min(15, (int)(int8_t)(x[i + 16] * id + 8.5f));
      out[2 + i] = (uint8_t)(lo | (hi << 4));
    }
  }
}

}  // namespace

void store_kv_row(KVType t, const float* x, int64_t n, void* dst) {
  switch (t) {
    case KVType::F16: f32_to_f16_row(x, static_cast<uint16_t*>(dst), n); return;
    case KVType::F32: std::copy_n(x, n, static_cast<float*>(dst)); return;
    case KVType::Q8_0: quantize_q8_0(x, n, static_cast<uint8_t*>(dst)); return;
    case KVType::Q4_0: quantize_q4_0(x, n, static_cast<uint8_t*>(dst)); return;
  }
}

void load_kv_row(KVType t, const void* src, int64_t n, float* y) {
  switch (t) {
    case KVType::F16:
      for (int64_t i = 0; i < n; ++i) y[i] = fp16_to_f32(static_cast<const uint16_t*>(src)[i]);
      return;
    case KVType::F32: std::copy_n(static_cast<const float*>(src), n, y); return;
    case KVType::Q8_0: dequantize_row(GGMLType::Q8_0, src, y, n); return;
    case KVType::Q4_0: dequantize_row(GGMLType::Q4_0, src, y, n); return;
  }
}

}  // namespace headkv
