// Weight formats on the device: every supported ggml type is read as blocks of 32 elements split
// into 4 parts of 8. part(blk, p, w) expands part p of a block to 8 floats (scale and offset
// applied); off0(p) / off1(p) are the element offsets (4 each) inside the block of those 8 values.
#pragma once
#include <cuda_fp16.h>

#include <cstdint>

namespace headkv::cu {

enum DevType : int { T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q8_0 = 8, T_BF16 = 30 };

__device__ __forceinline__ float ld_f16(const uint8_t* p) {  // 2-byte aligned
  return __half2float(__ushort_as_half(*reinterpret_cast<const uint16_t*>(p)));
}
__device__ __forceinline__ uint32_t ld_u32_a2(const uint8_t* p) {  // 4 bytes at a 2-byte aligned address
  const uint16_t* q = reinterpret_cast<const uint16_t*>(p);
  return (uint32_t)q[0] | ((uint32_t)q[1] << 16);
}
__device__ __forceinline__ float bf16_to_f32(uint32_t b) { return __uint_as_float(b << 16); }
// Exact small-integer -> float without the quarter-rate I2F conversion: the 8-bit value v is placed
// in the mantissa of 2^23 (0x4B000000) and 2^23 + bias is subtracted (both exact in fp32).
__device__ __forceinline__ float u8_minus(uint32_t v, float bias) { return __uint_as_float(0x4B000000u | v) - (8388608.0f + bias); }

template <int T> struct Fmt;

template <> struct Fmt<T_Q4_0> {
  static constexpr int bytes = 18;
  __device__ static int off0(int p) { return 4 * p; }
  __device__ static int off1(int p) { return 16 + 4 * p; }
  __device__ __forceinline__ static void part(const uint8_t* b, int p, float* w) {
    const float d = ld_f16(b);
    const uint32_t q = ld_u32_a2(b + 2 + 4 * p);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      w[i] = d * u8_minus((q >> (8 * i)) & 0xF, 8.0f);
      w[4 + i] = d * u8_minus((q >> (8 * i + 4)) & 0xF, 8.0f);
    }
  }
};

template <> struct Fmt<T_Q4_1> {
  static constexpr int bytes = 20;
  __device__ static int off0(int p) { return 4 * p; }
  __device__ static int off1(int p) { return 16 + 4 * p; }
  __device__ __forceinline__ static void part(const uint8_t* b, int p, float* w) {
    const float d = ld_f16(b), m = ld_f16(b + 2);
    const uint32_t q = *reinterpret_cast<const uint32_t*>(b + 4 + 4 * p);  // 4-byte aligned
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      w[i] = d * u8_minus((q >> (8 * i)) & 0xF, 0.0f) + m;
      w[4 + i] = d * u8_minus((q >> (8 * i + 4)) & 0xF, 0.0f) + m;
    }
  }
};

template <> struct Fmt<T_Q8_0> {
  static constexpr int bytes = 34;
  __device__ static int off0(int p) { return 8 * p; }
  __device__ static int off1(int p) { return 8 * p + 4; }
  __device__ __forceinline__ static void part(const uint8_t* b, int p, float* w) {
    const float d = ld_f16(b);
    const uint32_t q0 = ld_u32_a2(b + 2 + 8 * p), q1 = ld_u32_a2(b + 6 + 8 * p);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      w[i] = d * u8_minus(((q0 >> (8 * i)) & 0xFF) ^ 0x80u, 128.0f);  // int8 = (u ^ 0x80) - 128
      w[4 + i] = d * u8_minus(((q1 >> (8 * i)) & 0xFF) ^ 0x80u, 128.0f);
    }
  }
};

template <> struct Fmt<T_F16> {
  static constexpr int bytes = 64;
  __device__ static int off0(int p) { return 8 * p; }
  __device__ static int off1(int p) { return 8 * p + 4; }
  __device__ __forceinline__ static void part(const uint8_t* b, int p, float* w) {
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
  static constexpr int bytes = 64;
  __device__ static int off0(int p) { return 8 * p; }
  __device__ static int off1(int p) { return 8 * p + 4; }
  __device__ __forceinline__ static void part(const uint8_t* b, int p, float* w) {
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
  static constexpr int bytes = 128;
  __device__ static int off0(int p) { return 8 * p; }
  __device__ static int off1(int p) { return 8 * p + 4; }
  __device__ __forceinline__ static void part(const uint8_t* b, int p, float* w) {
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

inline bool type_supported(int type) {
  return type == T_F32 || type == T_F16 || type == T_BF16 || type == T_Q4_0 || type == T_Q4_1 || type == T_Q8_0;
}

}  // namespace headkv::cu
