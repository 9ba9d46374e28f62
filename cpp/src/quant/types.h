// ggml tensor types, block layouts and per-type traits.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace headkv {

enum class GGMLType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22,
  IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
};

struct TypeTraits {
  const char* name;
  int64_t block_size;   // elements per block (1 for float types); 0 = unknown type
  size_t type_size;     // bytes per block
  bool supported;       // we can dequantize / dot it
};

// Traits for any type id found in a file; unknown ids give {"unknown", 0, 0, false}.
TypeTraits type_traits(GGMLType t);
std::string type_name(GGMLType t);
// Bytes of a row of n elements; throws Error(Format) if n is not a multiple of the block size.
size_t row_size(GGMLType t, int64_t n);

}  // namespace headkv
