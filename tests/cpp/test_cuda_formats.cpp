// The CUDA backend's weight decoders (cuda/quant.cuh) and int8-activation dot items
// (cuda/q8x_types.cuh), compiled for the host, against the CPU's dequantize_row (itself checked on
// hand-built blocks in test_quant.cpp): for every type the GPU takes, random rows are decoded block
// by block and part by part exactly as the GPU's dequantize kernel and fp32 matvec walk them
// (blk_q / blk_s, part(j, p), off0 / off1), and dotted item by item as the int8 matvec does. Built
// only with the CUDA backend (it needs cuda_fp16.h); it runs on machines without a GPU.
#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "check.h"
#include "random_weights.h"

static int misaligned = 0;  // vector loads at addresses the GPU would fault on

#include "common/fp16.h"
#include "quant/quant.h"
#include "quant/types.h"

#ifndef __CUDA_ARCH__
// Host versions of the device intrinsics quant.cuh and q8x_types.cuh use.
static inline float __uint_as_float(unsigned int u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
template <class T>
static inline T __ldg(const T* p) {
  if ((uintptr_t)p % sizeof(T) && sizeof(T) <= 16) ++misaligned;  // the GPU needs natural alignment
  return *p;
}
static inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; ++i) c += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
  return c;
}
static inline unsigned __vsub4(unsigned a, unsigned b) {
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= (((a >> (8 * i)) - (b >> (8 * i))) & 0xFFu) << (8 * i);
  return r;
}
#endif
#include "../../cuda/q8x_types.cuh"
#include "../../cuda/quant.cuh"

using namespace headkv;

namespace {

// The upload's layout (cuda/weights.cu): the file's bytes, or for split types every unit's quants
// in q, then every unit's scales in s.
template <class F>
void device_layout(const std::vector<uint8_t>& file, int rows, int cols, bool split, std::vector<uint8_t>& q,
                   std::vector<uint8_t>& s) {
  const int64_t nb = cols / 32;
  q = file;
  s.clear();
  if constexpr (F::sb > 0) {
    CHECK(split);
    const size_t units = (size_t)rows * nb / F::per, bb = F::sb + F::qb;
    q.assign(units * F::qb, 0);
    s.assign(units * F::sb, 0);
    for (size_t i = 0; i < units; ++i) {
      std::memcpy(&s[i * F::sb], &file[i * bb + (F::s_first ? 0 : F::qb)], F::sb);
      std::memcpy(&q[i * F::qb], &file[i * bb + (F::s_first ? F::sb : 0)], F::qb);
    }
  } else {
    CHECK(!split);
  }
}

// Decodes all rows through Fmt<T> the way cuda/gemm.cu's dequant kernel does.
template <class F>
std::vector<float> decode(const std::vector<uint8_t>& file, int rows, int cols, bool split) {
  const int64_t nb = cols / 32;
  std::vector<uint8_t> q, s;
  device_layout<F>(file, rows, cols, split, q, s);
  std::vector<float> y((size_t)rows * cols);
  for (int r = 0; r < rows; ++r)
    for (int64_t b = 0; b < nb; ++b)
      for (int p = 0; p < 4; ++p) {
        float w[8];
        F::part(cu::blk_q<F>(q.data(), r, nb, b), cu::blk_s<F>(s.data(), r, nb, b), (int)(b % F::per), p, w);
        float* o = &y[(size_t)r * cols + b * 32];
        for (int j = 0; j < 4; ++j) {
          o[F::off0(p) + j] = w[j];
          o[F::off1(p) + j] = w[4 + j];
        }
      }
  return y;
}

// The int8-activation matvec's items (q8x_types.cuh) for type T: each row's Σ over items against
// Σ y·dx·xq in double, y the CPU's dequantized row and x quantized as the kernel's quantize_x does;
// for both x read orders h. Returns the number of rows off by more than 1e-5 of Σ|terms|.
template <int T>
int check_q8x(const std::vector<uint8_t>& file, const std::vector<float>& y, int rows, int cols, std::mt19937& rng) {
  using F = cu::Fmt<T>;
  using Q = cu::Q8<T>;
  const int nb = cols / 32, nit = nb / Q::per;
  std::vector<uint8_t> q, s;
  device_layout<F>(file, rows, cols, cu::type_split(T), q, s);
  std::vector<int8_t> xi(cols);
  std::vector<float2> xd(nb);
  std::normal_distribution<float> normal;
  for (int b = 0; b < nb; ++b) {
    float x[32], m = 0.0f;
    for (float& v : x) m = std::fmax(m, std::fabs(v = normal(rng)));
    int sum = 0;
    for (int i = 0; i < 32; ++i) sum += xi[32 * b + i] = (int8_t)std::lrint(x[i] * 127.0f / m);
    xd[b] = make_float2(m / 127.0f, m / 127.0f * (float)sum);
  }
  std::vector<int4> xq(2 * nb);
  std::memcpy(xq.data(), xi.data(), cols);
  int bad = 0;
  for (int r = 0; r < rows; ++r) {
    const uint8_t* rq = cu::blk_q<F>(q.data(), r, nb, 0);
    const uint8_t* rs = cu::blk_s<F>(s.data(), r, nb, 0);
    double ref = 0.0, mag = 0.0;
    for (int i = 0; i < cols; ++i) {
      const double t = (double)y[(size_t)r * cols + i] * xd[i / 32].x * xi[i];
      ref += t;
      mag += std::fabs(t);
    }
    for (int h = 0; h < 2; ++h) {
      double acc = 0.0;
      for (int it = 0; it < nit; ++it) {
        typename Q::W w;
        Q::load(w, rq, rs, it);
        acc += Q{}(w, xq.data(), xd.data(), it, h);
      }
      if (!(std::fabs(acc - ref) <= 1e-5 * mag) && ++bad <= 3)
        std::printf("int8 items, type %d row %d h %d: %g vs %g\n", T, r, h, acc, ref);
    }
  }
  return bad;
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  const int rows = 5, cols = 512;
  int checked = 0, q8checked = 0;
  for (GGMLType t : {GGMLType::F32, GGMLType::F16, GGMLType::BF16, GGMLType::Q4_0, GGMLType::Q4_1, GGMLType::Q5_0,
                     GGMLType::Q5_1, GGMLType::Q8_0, GGMLType::Q4_K, GGMLType::Q5_K, GGMLType::Q6_K}) {
    const int id = (int)t;
    CHECK(cu::type_supported(id));
    const std::vector<uint8_t> file = random_rows(t, rows, cols, rng);
    std::vector<float> ref((size_t)rows * cols);
    for (int r = 0; r < rows; ++r)
      dequantize_row(t, file.data() + r * row_size(t, cols), ref.data() + (size_t)r * cols, cols);
    std::vector<float> got;
    const bool ok = cu::dispatch_type(id, [&](auto f) {
      using F = decltype(f);
      got = decode<F>(file, rows, cols, cu::type_split(id));
    });
    CHECK(ok);
    if (!ok) continue;
    // Bit-identical up to the compilers' choice of fused multiply-add (d*q - m as one rounding).
    float scale = 0.0f;
    for (float v : ref) scale = std::fmax(scale, std::fabs(v));
    CHECK(scale > 0.0f);
    int bad = 0;
    for (size_t i = 0; i < ref.size(); ++i)
      if (!(std::fabs(got[i] - ref[i]) <= scale * 1e-6f)) {
        if (++bad <= 3) std::printf("%s: element %zu: %g vs %g\n", type_name(t).c_str(), i, got[i], ref[i]);
      }
    CHECK(bad == 0);
    ++checked;
    // the int8-activation items of the types that have them
    int q8bad = -1;
    switch (t) {
      case GGMLType::Q4_0: q8bad = check_q8x<cu::T_Q4_0>(file, ref, rows, cols, rng); break;
      case GGMLType::Q4_1: q8bad = check_q8x<cu::T_Q4_1>(file, ref, rows, cols, rng); break;
      case GGMLType::Q8_0: q8bad = check_q8x<cu::T_Q8_0>(file, ref, rows, cols, rng); break;
      case GGMLType::Q4_K: q8bad = check_q8x<cu::T_Q4_K>(file, ref, rows, cols, rng); break;
      case GGMLType::Q5_K: q8bad = check_q8x<cu::T_Q5_K>(file, ref, rows, cols, rng); break;
      case GGMLType::Q6_K: q8bad = check_q8x<cu::T_Q6_K>(file, ref, rows, cols, rng); break;
      default: break;
    }
    CHECK(q8bad <= 0);
    q8checked += q8bad == 0;
  }
  CHECK(checked == 11 && q8checked == 6);
  CHECK(misaligned == 0);
  // Types without a GPU decoder stay refused (weights.cu raises Unsupported for them).
  CHECK(!cu::type_supported((int)GGMLType::IQ4_NL) && !cu::type_supported((int)GGMLType::Q2_K));
  std::printf("%d types checked against the CPU decoder, %d int8-activation item types\n", checked, q8checked);
  return failures ? 1 : 0;
}
