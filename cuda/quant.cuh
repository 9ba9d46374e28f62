// Weight formats on the device: every supported ggml type is read as blocks of 32 elements split
// into 4 parts of 8. part(q, s, p, w) expands part p of a block to 8 floats (scale and offset
// applied); off0(p) / off1(p) are the element offsets (4 each) inside the block of those 8 values.
//
// Block (row r, block b) of a matrix with nb blocks per row sits at q + (r*nb + b)*qb, its scales at
// s + (r*nb + b)*sb. Float types keep the file's rows (sb = 0). The quantized types are stored
// split at upload (weights.cu): every block's quants in one region (16 B for Q4_0/Q4_1, 32 B for
// Q8_0, so 16-byte aligned vector loads), the fp16 scales (Q4_1: scale, min) in another. Same bytes
// as the file's interleaved blocks; the decode kernels read each as one 16-byte load.
#pragma once
#include <cuda_fp16.h>

#include <cstdint>

namespace headkv::cu {

enum DevType : int { T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q8_0 = 8, T_BF16 = 30 };

__device__ __forceinline__ float ld_f16(const uint8_t* p) {  // 2-byte aligned
  return __half2float(__ushort_as_half(*reinterpret_cast<const uint16_t*>(p)));
}
__device__ __forceinline__ float bf16_to_f32(uint32_t b) { return __uint_as_float(b << 16); }
// Exact small-integer -> float without the quarter-rate I2F conversion: the 8-bit value v is placed
// in the mantissa of 2^23 (0x4B000000) and 2^23 + bias is subtracted (both exact in fp32).
__device__ __forceinline__ float u8_minus(uint32_t v, float bias) { return __uint_as_float(0x4B000000u | v) - (8388608.0f + bias); }

template <int T> struct Fmt;

// Pointers to block (row, b) of a weight (q: quants or the float row, s: scales).
template <class F>
__device__ __forceinline__ const uint8_t* blk_q(const uint8_t* q, int64_t row, int64_t nb, int64_t b) {
  return q + (row * nb + b) * F::qb;
}
template <class F>
__device__ __forceinline__ const uint8_t* blk_s(const uint8_t* s, int64_t row, int64_t nb, int64_t b) {
  return s + (row * nb + b) * F::sb;
}

template <> struct Fmt<T_Q4_0> {
  static constexpr int bytes = 18, qb = 16, sb = 2;
  __device__ static int off0(int p) { return 4 * p; }
  __device__ static int off1(int p) { return 16 + 4 * p; }
  __device__ __forceinline__ static void part(const uint8_t* b, const uint8_t* sc, int p, float* w) {
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
  static constexpr int bytes = 20, qb = 16, sb = 4;
  __device__ static int off0(int p) { return 4 * p; }
  __device__ static int off1(int p) { return 16 + 4 * p; }
  __device__ __forceinline__ static void part(const uint8_t* b, const uint8_t* sc, int p, float* w) {
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
  static constexpr int bytes = 34, qb = 32, sb = 2;
  __device__ static int off0(int p) { return 8 * p; }
  __device__ static int off1(int p) { return 8 * p + 4; }
  __device__ __forceinline__ static void part(const uint8_t* b, const uint8_t* sc, int p, float* w) {
    const float d = ld_f16(sc);
    const uint32_t q0 = *reinterpret_cast<const uint32_t*>(b + 8 * p), q1 = *reinterpret_cast<const uint32_t*>(b + 8 * p + 4);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      w[i] = d * u8_minus(((q0 >> (8 * i)) & 0xFF) ^ 0x80u, 128.0f);  // int8 = (u ^ 0x80) - 128
      w[4 + i] = d * u8_minus(((q1 >> (8 * i)) & 0xFF) ^ 0x80u, 128.0f);
    }
  }
};

template <> struct Fmt<T_F16> {
  static constexpr int bytes = 64, qb = 64, sb = 0;
  __device__ static int off0(int p) { return 8 * p; }
  __device__ static int off1(int p) { return 8 * p + 4; }
  __device__ __forceinline__ static void part(const uint8_t* b, const uint8_t*, int p, float* w) {
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
  static constexpr int bytes = 64, qb = 64, sb = 0;
  __device__ static int off0(int p) { return 8 * p; }
  __device__ static int off1(int p) { return 8 * p + 4; }
  __device__ __forceinline__ static void part(const uint8_t* b, const uint8_t*, int p, float* w) {
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
  static constexpr int bytes = 128, qb = 128, sb = 0;
  __device__ static int off0(int p) { return 8 * p; }
  __device__ static int off1(int p) { return 8 * p + 4; }
  __device__ __forceinline__ static void part(const uint8_t* b, const uint8_t*, int p, float* w) {
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
    default: return false;
  }
}

// Types stored split (quants | scales) on the device.
inline bool type_split(int type) { return type == T_Q4_0 || type == T_Q4_1 || type == T_Q8_0; }

inline bool type_supported(int type) {
  return type == T_F32 || type == T_F16 || type == T_BF16 || type == T_Q4_0 || type == T_Q4_1 || type == T_Q8_0;
}

}  // namespace headkv::cu
