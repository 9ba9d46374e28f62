// KV cache rows on the device in the CPU's element types (select/kv_arena.h): f16 halves, or
// llama.cpp's q8_0 / q4_0 blocks of 32 values (f16 scale d, then 32 int8 / 16 bytes of nibbles).
// Stores quantize as select/kv_types.cpp does (llama.cpp's reference quantizers), so CPU and CUDA
// store the same bytes for the same fp32 values; loads dequantize in fp32 (d * q is exact in fp32).
#pragma once
#include <cuda_fp16.h>

#include <cstdint>

#include "select/kv_arena.h"

namespace headkv::cu {

// Bytes of a q8_0 / q4_0 block.
__host__ __device__ constexpr int kv_block_bytes(KVType t) { return t == KVType::Q8_0 ? 34 : 18; }

__device__ __forceinline__ float kv_scale(const uint8_t* blk) {
  return __half2float(*reinterpret_cast<const __half*>(blk));  // blocks start at even bytes
}

// The 32 lanes of a warp hold the 32 values of one block (lane i: element i); the block is written
// at dst (t = Q8_0 or Q4_0). The arithmetic is the CPU's: correctly rounded division, no FMA.
__device__ __forceinline__ void kv_store_block(KVType t, uint8_t* dst, float x, int lane) {
  constexpr unsigned FULL = 0xffffffffu;
  if (t == KVType::Q8_0) {
    float amax = fabsf(x);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(FULL, amax, off));
    const float d = __fdiv_rn(amax, 127.0f);
    const float id = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
    if (lane == 0) *reinterpret_cast<__half*>(dst) = __float2half_rn(d);
    dst[2 + lane] = (uint8_t)(int8_t)roundf(__fmul_rn(x, id));  // round half away from zero
    return;
  }
  // q4_0: the value of largest magnitude (the first such element, as the CPU's strict compare
  // keeps it) with its sign maps to -8; all-zero blocks keep d = 0/-8 = -0 as on the CPU.
  float a = fabsf(x), v = x;
  int idx = lane;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float oa = __shfl_xor_sync(FULL, a, off), ov = __shfl_xor_sync(FULL, v, off);
    const int oi = __shfl_xor_sync(FULL, idx, off);
    if (oa > a || (oa == a && oi < idx)) {
      a = oa;
      v = ov;
      idx = oi;
    }
  }
  if (a == 0.0f) v = 0.0f;
  const float d = __fdiv_rn(v, -8.0f);
  const float id = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
  const int q = min(15, (int)__fadd_rn(__fmul_rn(x, id), 8.5f));  // truncation, as the CPU's cast
  const int hi = __shfl_down_sync(FULL, q, 16);
  if (lane == 0) *reinterpret_cast<__half*>(dst) = __float2half_rn(d);
  if (lane < 16) dst[2 + lane] = (uint8_t)(q | (hi << 4));
}

// The block of x[0..31] at dst (t = Q8_0 or Q4_0) by one thread: the same arithmetic and result as
// kv_store_block (and the CPU's quantizers).
__device__ __forceinline__ void kv_quantize_block(KVType t, const float* x, uint8_t* dst) {
  if (t == KVType::Q8_0) {
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 32; ++i) amax = fmaxf(amax, fabsf(x[i]));
    const float d = __fdiv_rn(amax, 127.0f);
    const float id = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
    *reinterpret_cast<__half*>(dst) = __float2half_rn(d);
#pragma unroll
    for (int i = 0; i < 32; ++i) dst[2 + i] = (uint8_t)(int8_t)roundf(__fmul_rn(x[i], id));
    return;
  }
  float amax = 0.0f, mx = 0.0f;
#pragma unroll
  for (int i = 0; i < 32; ++i)
    if (amax < fabsf(x[i])) {
      amax = fabsf(x[i]);
      mx = x[i];
    }
  const float d = __fdiv_rn(mx, -8.0f);
  const float id = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
  *reinterpret_cast<__half*>(dst) = __float2half_rn(d);
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    const int lo = min(15, (int)__fadd_rn(__fmul_rn(x[i], id), 8.5f));
    const int hi = min(15, (int)__fadd_rn(__fmul_rn(x[i + 16], id), 8.5f));
    dst[2 + i] = (uint8_t)(lo | (hi << 4));
  }
}

// Element d of a stored row of type t (F16, Q8_0 or Q4_0), in fp32; the whole warp stores element
// b*32 + lane of block b together (every lane must call it for the block types).
__device__ __forceinline__ void kv_store_elem(KVType t, uint8_t* row, int d, float x, int lane) {
  if (t == KVType::F16) reinterpret_cast<__half*>(row)[d] = __float2half_rn(x);
  else kv_store_block(t, row + (d / 32) * kv_block_bytes(t), x, lane);
}

// Values d .. d+7 (d a multiple of 8) of a stored row of type t, dequantized to fp32.
__device__ __forceinline__ void kv_load8(KVType t, const uint8_t* row, int d, float* out) {
  if (t == KVType::F16) {
    const __half* h = reinterpret_cast<const __half*>(row) + d;
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = __half2float(h[i]);
    return;
  }
  const uint8_t* blk = row + (d / 32) * kv_block_bytes(t);
  const float s = kv_scale(blk);
  const int i0 = d % 32;
  // (quants in 2-byte loads: blocks, and so the 8 quants, start at even bytes)
  if (t == KVType::Q8_0) {
    const uint16_t* q = reinterpret_cast<const uint16_t*>(blk + 2 + i0);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint16_t w = q[i];
      out[2 * i] = s * (float)(int8_t)(w & 0xff);
      out[2 * i + 1] = s * (float)(int8_t)(w >> 8);
    }
  } else {
    const int sh = i0 >= 16 ? 4 : 0;
    const uint16_t* q = reinterpret_cast<const uint16_t*>(blk + 2 + i0 % 16);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int w = q[i] >> sh;
      out[2 * i] = s * (float)((w & 15) - 8);
      out[2 * i + 1] = s * (float)(((w >> 8) & 15) - 8);
    }
  }
}

// One element of a stored row (the fp32 SIMT kernels' element-wise loads).
__device__ __forceinline__ float kv_load1(KVType t, const uint8_t* row, int d) {
  if (t == KVType::F16) return __half2float(reinterpret_cast<const __half*>(row)[d]);
  const uint8_t* blk = row + (d / 32) * kv_block_bytes(t);
  const int i = d % 32;
  const int q = t == KVType::Q8_0 ? (int)(int8_t)blk[2 + i] : ((blk[2 + i % 16] >> (i >= 16 ? 4 : 0)) & 15) - 8;
  return kv_scale(blk) * (float)q;
}

}  // namespace headkv::cu
