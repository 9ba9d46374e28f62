// Random weight rows in a ggml type's file layout, for the tests of the CUDA weight decoders
// (test_cuda_formats.cpp) and of the CUDA ops (tests/cuda/test_backend_ops.cu).
#pragma once
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "common/fp16.h"
#include "quant/types.h"

namespace headkv {

// Random bytes for `rows` rows of `cols` values; the fp16 fields (scales, mins) are set to small
// finite values so every decoded value is finite. Returns the file's bytes.
inline std::vector<uint8_t> random_rows(GGMLType t, int rows, int cols, std::mt19937& rng) {
  const TypeTraits tr = type_traits(t);
  const size_t rb = row_size(t, cols), nblk = (size_t)cols / tr.block_size;
  std::vector<uint8_t> v(rb * rows);
  for (auto& b : v) b = (uint8_t)rng();
  std::uniform_real_distribution<float> u(0.25f, 2.0f);
  auto f16 = [&](uint8_t* p, float f) {
    const uint16_t h = f32_to_fp16(f);
    std::memcpy(p, &h, 2);
  };
  std::vector<int> offs;  // fp16 fields inside a block
  switch (t) {
    case GGMLType::F16: case GGMLType::BF16:
      for (size_t i = 0; i + 1 < v.size(); i += 2) {  // BF16's top half = an fp32 exponent: keep it small
        if (t == GGMLType::F16) f16(&v[i], u(rng) - 1.0f);
        else v[i + 1] = (uint8_t)(0x3E + (rng() & 1)) | (rng() & 0x80);
      }
      return v;
    case GGMLType::F32:
      for (size_t i = 0; i < v.size(); i += 4) {
        const float f = u(rng) - 1.0f;
        std::memcpy(&v[i], &f, 4);
      }
      return v;
    case GGMLType::Q4_0: case GGMLType::Q5_0: case GGMLType::Q8_0: offs = {0}; break;
    case GGMLType::Q4_1: case GGMLType::Q5_1: offs = {0, 2}; break;
    case GGMLType::Q4_K: case GGMLType::Q5_K: offs = {0, 2}; break;
    case GGMLType::Q6_K: offs = {208}; break;
    default: break;
  }
  for (int r = 0; r < rows; ++r)
    for (size_t b = 0; b < nblk; ++b)
      for (int o : offs) f16(&v[r * rb + b * tr.type_size + o], u(rng) * (rng() & 1 ? 1.0f : -1.0f) * 1e-2f);
  return v;
}

}  // namespace headkv
