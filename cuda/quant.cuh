// Weight formats on the device: every supported ggml type is read as blocks of 32 elements split
// into 4 parts of 8. part(u, s, j, p, w) expands part p of block j of a storage unit to 8 floats
// (scale and offset applied); off0(p) / off1(p) are the element offsets (4 each) inside the block
// of those 8 values. A unit is one block (per = 1) or, for the K-quants, a super-block of per = 8
// blocks (256 elements) sharing one header of scales.
//
// Unit (row r, unit b / per) of a matrix with nb blocks per row sits at q + (r*nb/per + b/per)*qb,
// its scales at s + (...)*sb. Float types, Q5_x, Q4_K and Q5_K keep the file's bytes (sb = 0). The quantized types are stored
// split at upload (weights.cu): every block's quants in one region (16 B for Q4_0/Q4_1, 32 B for
// Q8_0, 192 B per Q6_K super-block, so 16-byte aligned vector loads), the scales in another. Same
// bytes as the file's interleaved blocks; the decode kernels read each as 16-byte loads.
#pragma once
#include <cuda_fp16.h>

#include <cstdint>

#include "quant/blocks.h"

namespace headkv::cu {

enum DevType : int {
  T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8,
  T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14, T_BF16 = 30
};

__device__ __forceinline__ float ld_f16(const uint8_t* p) {  // 2-byte aligned
  return __half2float(__ushort_as_half(*reinterpret_cast<const uint16_t*>(p)));
}
__device__ __forceinline__ float bf16_to_f32(uint32_t b) { return __uint_as_float(b << 16); }
// Exact small-integer -> float without the quarter-rate I2F conversion: the 8-bit value v is placed
// in the mantissa of 2^23 (0x4B000000) and 2^23 + bias is subtracted (both exact in fp32).
__device__ __forceinline__ float u8_minus(uint32_t v, float bias) { return __uint_as_float(0x4B000000u | v) - (8388608.0f + bias); }

template <int T> struct Fmt;

// Pointers to the unit holding block (row, b) of a weight (q: quants or the float row, s: scales);
// part() then takes j = b % F::per.
template <class F>
__device__ __forceinline__ const uint8_t* blk_q(const uint8_t* q, int64_t row, int64_t nb, int64_t b) {
  return q + (row * (nb / F::per) + b / F::per) * F::qb;
}
template <class F>
__device__ __forceinline__ const uint8_t* blk_s(const uint8_t* s, int64_t row, int64_t nb, int64_t b) {
  return s + (row * (nb / F::per) + b / F::per) * F::sb;
}
// Unaligned-safe loads for the formats whose units are only 2-byte aligned (Q5_0, Q6_K).
__device__ __forceinline__ uint32_t ld_u32_a2(const uint8_t* p) {
  const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
  return (uint32_t)h[0] | ((uint32_t)h[1] << 16);
}

template <> struct Fmt<T_Q4_0> {
  static constexpr int bytes = 18, qb = 16, sb = 2, per = 1;
  static constexpr bool s_first = true;  // file blocks: scales, then quants
  __device__ static int off0(int p) { return 4 * p; }
  __device__ static int off1(int p) { return 16 + 4 * p; }
  __device__ __forceinline__ static void part(const uint8_t* b, const uint8_t* sc, int, int p, float* w) {
    const float d = ld_f16(sc);
    const uint32_t q = *reinterpret_cast<const uint32_t*>(b + 4 * p);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      w[i] = d * u8_minus((q >> (8 * i)) & 0xF, 8.0f);
      w[4 + i] = d * u8_minus((q >> (8 * i + 4)) & 0xF, 8.0f);
    }
  }
};

template <> struct Fmt<T_Q4_1> {
  static constexpr int bytes = 20, qb = 16, sb = 4, per = 1;
  static constexpr bool s_first = true;  // file blocks: scales, then quants
  __device__ static int off0(int p) { return 4 * p; }
  __device__ static int off1(int p) { return 16 + 4 * p; }
  __device__ __forceinline__ static void part(const uint8_t* b, const uint8_t* sc, int, int p, float* w) {
    const float d = ld_f16(sc), m = ld_f16(sc + 2);
    const uint32_t q = *reinterpret_cast<const uint32_t*>(b + 4 * p);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      w[i] = d * u8_minus((q >> (8 * i)) & 0xF, 0.0f) + m;
      w[4 + i] = d * u8_minus((q >> (8 * i + 4)) & 0xF, 0.0f) + m;
    }
  }
};

template <> struct Fmt<T_Q8_0> {
  static constexpr int bytes = 34, qb = 32, sb = 2, per = 1;
  static constexpr bool s_first = true;  // file blocks: scales, then quants
  __device__ static int off0(int p) { return 8 * p; }
  __device__ static int off1(int p) { return 8 * p + 4; }
  __device__ __forceinline__ static void part(const uint8_t* b, const uint8_t* sc, int, int p, float* w) {
    const float d = ld_f16(sc);
    const uint32_t q0 = *reinterpret_cast<const uint32_t*>(b + 8 * p), q1 = *reinterpret_cast<const uint32_t*>(b + 8 * p + 4);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      w[i] = d * u8_minus(((q0 >> (8 * i)) & 0xFF) ^ 0x80u, 128.0f);  // int8 = (u ^ 0x80) - 128
      w[4 + i] = d * u8_minus(((q1 >> (8 * i)) & 0xFF) ^ 0x80u, 128.0f);
    }
  }
};

// Q5_0 / Q5_1 as in the file (22 / 24 bytes: d, [m,] qh:u32, qs[16]); element l of a block is the
// low nibble of qs[l] (l < 16) or the high nibble of qs[l - 16], with bit l of qh as its fifth bit.
template <> struct Fmt<T_Q5_0> {
  static constexpr int bytes = 22, qb = 22, sb = 0, per = 1;
  __device__ static int off0(int p) { return 4 * p; }
  __device__ static int off1(int p) { return 16 + 4 * p; }
  __device__ __forceinline__ static void part(const uint8_t* b, const uint8_t*, int, int p, float* w) {
    const float d = ld_f16(b);
    const uint32_t qh = ld_u32_a2(b + 2), q = ld_u32_a2(b + 6 + 4 * p);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      w[i] = d * u8_minus(((q >> (8 * i)) & 0xF) | (((qh >> (4 * p + i)) & 1) << 4), 16.0f);
      w[4 + i] = d * u8_minus(((q >> (8 * i + 4)) & 0xF) | (((qh >> (16 + 4 * p + i)) & 1) << 4), 16.0f);
    }
  }
};

template <> struct Fmt<T_Q5_1> {
  static constexpr int bytes = 24, qb = 24, sb = 0, per = 1;
  __device__ static int off0(int p) { return 4 * p; }
  __device__ static int off1(int p) { return 16 + 4 * p; }
  __device__ __forceinline__ static void part(const uint8_t* b, const uint8_t*, int, int p, float* w) {
    const float d = ld_f16(b), m = ld_f16(b + 2);
    const uint32_t qh = *reinterpret_cast<const uint32_t*>(b + 4), q = *reinterpret_cast<const uint32_t*>(b + 8 + 4 * p);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      w[i] = d * u8_minus(((q >> (8 * i)) & 0xF) | (((qh >> (4 * p + i)) & 1) << 4), 0.0f) + m;
      w[4 + i] = d * u8_minus(((q >> (8 * i + 4)) & 0xF) | (((qh >> (16 + 4 * p + i)) & 1) << 4), 0.0f) + m;
    }
  }
};

// Q4_K / Q5_K super-blocks (144 / 176 bytes: d, dmin:f16, scales[12] (6-bit sc, m per block),
// [qh[32],] qs[128]). Block j's element l is nibble j&1 of qs[32*(j/2) + l] (and bit j of qh[l]);
// its value is d*sc_j * q - dmin*m_j. The 8 values of part p are elements 8p..8p+7.
template <bool Q5>
struct FmtK45 {
  static constexpr int bytes = Q5 ? 176 : 144, qb = bytes, sb = 0, per = 8;
  __device__ static int off0(int p) { return 8 * p; }
  __device__ static int off1(int p) { return 8 * p + 4; }
  __device__ __forceinline__ static void part(const uint8_t* u, const uint8_t*, int j, int p, float* w) {
    int sc, m;
    qblk::kscale_min(u + 4, j, sc, m);
    const float d1 = ld_f16(u) * (float)sc, m1 = ld_f16(u + 2) * (float)m;
    const uint2 q = *reinterpret_cast<const uint2*>(u + (Q5 ? 48 : 16) + 32 * (j >> 1) + 8 * p);
    const int sh = 4 * (j & 1);
    uint2 h = make_uint2(0, 0);
    if (Q5) h = *reinterpret_cast<const uint2*>(u + 16 + 8 * p);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t v0 = ((q.x >> (8 * i + sh)) & 0xF) | (((h.x >> (8 * i + j)) & 1) << 4);
      const uint32_t v1 = ((q.y >> (8 * i + sh)) & 0xF) | (((h.y >> (8 * i + j)) & 1) << 4);
      w[i] = d1 * u8_minus(v0, 0.0f) - m1;
      w[4 + i] = d1 * u8_minus(v1, 0.0f) - m1;
    }
  }
};
template <> struct Fmt<T_Q4_K> : FmtK45<false> {};
template <> struct Fmt<T_Q5_K> : FmtK45<true> {};

// Q6_K super-blocks (file: ql[128], qh[64], scales:i8[16], d:f16; 210 bytes) are stored split at
// upload: ql | qh (192 bytes, 16-byte aligned) per super-block in one region, scales | d (18 bytes)
// in another. Block j = 4n + k (half n of 128 values, quarter k): element l has the low 4 bits in
// nibble k>>1 of ql[64n + 32(k&1) + l], the high 2 in bits 2k of qh[32n + l], and scale
// sc[8n + l/16 + 2k]: value d*sc * (q - 32).
template <> struct Fmt<T_Q6_K> {
  static constexpr int bytes = 210, qb = 192, sb = 18, per = 8;
  static constexpr bool s_first = false;  // the file has the quants before the scales
  __device__ static int off0(int p) { return 8 * p; }
  __device__ static int off1(int p) { return 8 * p + 4; }
  __device__ __forceinline__ static void part(const uint8_t* u, const uint8_t* s, int j, int p, float* w) {
    const int n = j >> 2, k = j & 3;
    const float d1 = ld_f16(s + 16) * (float)(int8_t)s[8 * n + (p >> 1) + 2 * k];
    const uint2 l = *reinterpret_cast<const uint2*>(u + 64 * n + 32 * (k & 1) + 8 * p);
    const uint2 h = *reinterpret_cast<const uint2*>(u + 128 + 32 * n + 8 * p);
    const int sl = 4 * (k >> 1), shh = 2 * k;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t v0 = ((l.x >> (8 * i + sl)) & 0xF) | (((h.x >> (8 * i + shh)) & 3) << 4);
      const uint32_t v1 = ((l.y >> (8 * i + sl)) & 0xF) | (((h.y >> (8 * i + shh)) & 3) << 4);
      w[i] = d1 * u8_minus(v0, 32.0f);
      w[4 + i] = d1 * u8_minus(v1, 32.0f);
    }
  }
};

template <> struct Fmt<T_F16> {
  static constexpr int bytes = 64, qb = 64, sb = 0, per = 1;
  __device__ static int off0(int p) { return 8 * p; }
  __device__ static int off1(int p) { return 8 * p + 4; }
  __device__ __forceinline__ static void part(const uint8_t* b, const uint8_t*, int, int p, float* w) {
    const uint4 u = *reinterpret_cast<const uint4*>(b + 16 * p);
    const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __half22float2(h[i]);
      w[2 * i] = f.x;
      w[2 * i + 1] = f.y;
    }
  }
};

template <> struct Fmt<T_BF16> {
  static constexpr int bytes = 64, qb = 64, sb = 0, per = 1;
  __device__ static int off0(int p) { return 8 * p; }
  __device__ static int off1(int p) { return 8 * p + 4; }
  __device__ __forceinline__ static void part(const uint8_t* b, const uint8_t*, int, int p, float* w) {
    const uint4 u = *reinterpret_cast<const uint4*>(b + 16 * p);
    const uint32_t v[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      w[2 * i] = bf16_to_f32(v[i] & 0xFFFF);
      w[2 * i + 1] = bf16_to_f32(v[i] >> 16);
    }
  }
};

template <> struct Fmt<T_F32> {
  static constexpr int bytes = 128, qb = 128, sb = 0, per = 1;
  __device__ static int off0(int p) { return 8 * p; }
  __device__ static int off1(int p) { return 8 * p + 4; }
  __device__ __forceinline__ static void part(const uint8_t* b, const uint8_t*, int, int p, float* w) {
    const float4 a = *reinterpret_cast<const float4*>(b + 32 * p);
    const float4 c = *reinterpret_cast<const float4*>(b + 32 * p + 16);
    w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w;
    w[4] = c.x; w[5] = c.y; w[6] = c.z; w[7] = c.w;
  }
};

// Calls f.template operator()<Fmt<T>>() for the runtime type id; false when unsupported.
template <class F>
bool dispatch_type(int type, F&& f) {
  switch (type) {
    case T_F32: f(Fmt<T_F32>{}); return true;
    case T_F16: f(Fmt<T_F16>{}); return true;
    case T_BF16: f(Fmt<T_BF16>{}); return true;
    case T_Q4_0: f(Fmt<T_Q4_0>{}); return true;
    case T_Q4_1: f(Fmt<T_Q4_1>{}); return true;
    case T_Q8_0: f(Fmt<T_Q8_0>{}); return true;
    case T_Q5_0: f(Fmt<T_Q5_0>{}); return true;
    case T_Q5_1: f(Fmt<T_Q5_1>{}); return true;
    case T_Q4_K: f(Fmt<T_Q4_K>{}); return true;
    case T_Q5_K: f(Fmt<T_Q5_K>{}); return true;
    case T_Q6_K: f(Fmt<T_Q6_K>{}); return true;
    default: return false;
  }
}

// Types with a decoder (dispatch_type), and those stored split (quants | scales) on the device.
inline bool type_supported(int type) {
  return dispatch_type(type, [](auto) {});
}
inline bool type_split(int type) {
  bool split = false;
  dispatch_type(type, [&](auto f) { split = decltype(f)::sb > 0; });
  return split;
}

}  // namespace headkv::cu
