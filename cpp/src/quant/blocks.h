// Byte-level helpers for ggml block layouts (little-endian host assumed, as GGUF is little-endian).
//   Q4_0: d:f16, qs[16]            Q4_1: d:f16, m:f16, qs[16]
//   Q5_0: d:f16, qh:u32, qs[16]    Q5_1: d:f16, m:f16, qh:u32, qs[16]
//   Q8_0: d:f16, qs:i8[32]
//   Q4_K: d:f16, dmin:f16, scales[12] (6-bit packed), qs[128]
//   Q5_K: d:f16, dmin:f16, scales[12], qh[32], qs[128]
//   Q6_K: ql[128], qh[64], scales:i8[16], d:f16
#pragma once
#include <cstdint>
#include <cstring>

#include "common/fp16.h"

namespace headkv::qblk {

inline uint16_t rd16(const uint8_t* p) { uint16_t v; std::memcpy(&v, p, 2); return v; }
inline uint32_t rd32(const uint8_t* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
inline float f16at(const uint8_t* p) { return fp16_to_f32(rd16(p)); }

// 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes of Q4_K / Q5_K (also called by
// the CUDA backend's decoders, cuda/quant.cuh).
#ifdef __CUDACC__
__host__ __device__
#endif
inline void kscale_min(const uint8_t* s, int j, int& sc, int& m) {
  if (j < 4) {
    sc = s[j] & 63;
    m = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

}  // namespace headkv::qblk
