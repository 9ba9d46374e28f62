// vec_dot: one weight row (quantized blocks) . one fp32 vector, through the active CPU level's
// dot kernel (quant/kernels_isa.cpp).
#include <vector>

#include "common/cpu.h"
#include "common/error.h"
#include "quant/kernels.h"
#include "quant/quant.h"

namespace headkv {

namespace qk {

void chunk_sums(const float* x, int64_t n, float* xs) {
  for (int64_t c = 0; c < n / 32; ++c) {
    float s = 0;
    for (int l = 0; l < 32; ++l) s += x[32 * c + l];
    xs[c] = s;
  }
}

}  // namespace qk

float vec_dot(GGMLType t, const void* w, const float* x, int64_t n) {
  if (!type_traits(t).supported) fail(ErrorKind::Unsupported, "vec_dot: unsupported tensor type " + type_name(t));
  row_size(t, n);  // validates n
  const CpuKernels& ck = cpu_kernels();
  float out = 0;
  if (n <= 0) return out;
  std::vector<float> xs((size_t)(n / 32));
  qk::chunk_sums(x, n, xs.data());
  ck.dot_multi(t, (const uint8_t*)w, x, n, 1, n, &out, xs.empty() ? nullptr : xs.data());
  return out;
}

}  // namespace headkv
