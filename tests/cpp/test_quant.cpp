// Hand-computed blocks for the weight kernels; returns nonzero on failure.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "common/cpu.h"
#include "common/error.h"
#include "common/fp16.h"
#include "quant/quant.h"

#include "check.h"

using namespace headkv;


static void put16(uint8_t* p, float f) { const uint16_t h = f32_to_fp16(f); std::memcpy(p, &h, 2); }

int main() {
  // Q4_0: d = 0.5, byte l = (hi << 4) | lo with lo = l, hi = 15 - l.
  uint8_t q40[18];
  put16(q40, 0.5f);
  for (int l = 0; l < 16; ++l) q40[2 + l] = (uint8_t)(((15 - l) << 4) | l);
  float y[256];
  dequantize_row(GGMLType::Q4_0, q40, y, 32);
  for (int l = 0; l < 16; ++l) {
    CHECK(y[l] == 0.5f * (l - 8));
    CHECK(y[l + 16] == 0.5f * (15 - l - 8));
  }
  // Q4_1: d = 2, m = -1 -> y = 2q - 1
  uint8_t q41[20];
  put16(q41, 2.f), put16(q41 + 2, -1.f);
  std::memcpy(q41 + 4, q40 + 2, 16);
  dequantize_row(GGMLType::Q4_1, q41, y, 32);
  for (int l = 0; l < 16; ++l) CHECK(y[l] == 2.f * l - 1.f && y[l + 16] == 2.f * (15 - l) - 1.f);
  // Q5_0: qh bit e sets bit 4 of element e; here only even elements.
  uint8_t q50[22];
  put16(q50, 1.f);
  const uint32_t qh = 0x55555555u;
  std::memcpy(q50 + 2, &qh, 4);
  std::memcpy(q50 + 6, q40 + 2, 16);
  dequantize_row(GGMLType::Q5_0, q50, y, 32);
  for (int l = 0; l < 16; ++l) {
    CHECK(y[l] == (float)(l + (l % 2 == 0 ? 16 : 0) - 16));
    CHECK(y[l + 16] == (float)((15 - l) + (l % 2 == 0 ? 16 : 0) - 16));
  }
  // Q8_0: d = 0.25, q = l - 16
  uint8_t q80[34];
  put16(q80, 0.25f);
  for (int l = 0; l < 32; ++l) q80[2 + l] = (uint8_t)(int8_t)(l - 16);
  dequantize_row(GGMLType::Q8_0, q80, y, 32);
  for (int l = 0; l < 32; ++l) CHECK(y[l] == 0.25f * (l - 16));
  // Q4_K: d = 1, dmin = 0.5, sub-block j has scale j+1 and min 2j (j < 4 low bytes, j >= 4 packed).
  uint8_t q4k[144] = {};
  put16(q4k, 1.f), put16(q4k + 2, 0.5f);
  for (int j = 0; j < 8; ++j) {
    const int sc = j + 1 + (j >= 4 ? 32 : 0), m = 2 * j + (j >= 4 ? 16 : 0);
    if (j < 4) {
      q4k[4 + j] = (uint8_t)sc;
      q4k[8 + j] = (uint8_t)m;
    } else {
      q4k[4 + j + 4] = (uint8_t)((sc & 0xF) | ((m & 0xF) << 4));
      q4k[4 + j - 4] |= (uint8_t)((sc >> 4) << 6);
      q4k[8 + j - 4] |= (uint8_t)((m >> 4) << 6);
    }
  }
  for (int i = 0; i < 128; ++i) q4k[16 + i] = (uint8_t)(((i + 3) % 16) << 4 | (i % 16));
  dequantize_row(GGMLType::Q4_K, q4k, y, 256);
  for (int j = 0; j < 8; ++j) {
    const int sc = j + 1 + (j >= 4 ? 32 : 0), m = 2 * j + (j >= 4 ? 16 : 0);
    for (int l = 0; l < 32; ++l) {
      const int i = 32 * (j / 2) + l, q = (j & 1) ? (i + 3) % 16 : i % 16;
      CHECK(y[32 * j + l] == (float)sc * q - 0.5f * m);
    }
  }
  // Q6_K: d = 1, scales 1..16, q = 0 -> every value is -32 * scale.
  uint8_t q6k[210] = {};
  for (int i = 0; i < 16; ++i) q6k[192 + i] = (uint8_t)(i + 1);
  put16(q6k + 208, 1.f);
  dequantize_row(GGMLType::Q6_K, q6k, y, 256);
  for (int i = 0; i < 256; ++i) CHECK(y[i] == -32.f * (float)(i / 16 + 1));

  // vec_dot / matmul agree with the dequantized weights at every CPU level this machine runs
  // (vec_dot and the multi-token path through dot_multi, 9 tokens through the GEMM tile).
  std::vector<float> x(256);
  for (int i = 0; i < 256; ++i) x[i] = std::sin(0.1f * i);
  double ref = 0, mag = 0;
  for (int i = 0; i < 256; ++i) ref += (double)y[i] * x[i], mag += std::fabs((double)y[i] * x[i]);
  const double tol = 1e-5 * mag;
  std::vector<uint8_t> w(3 * 210);
  for (int r = 0; r < 3; ++r) std::memcpy(w.data() + 210 * r, q6k, 210);
  std::vector<float> X(9 * 256), Y(9 * 3);
  for (int j = 0; j < 9; ++j) std::memcpy(X.data() + 256 * j, x.data(), 1024);
  ThreadPool pool(2);
  for (CpuLevel level : cpu_levels()) {
    set_cpu_level(cpu_level_name(level));
    CHECK(cpu_kernels().level == level);
    CHECK(std::fabs(vec_dot(GGMLType::Q6_K, q6k, x.data(), 256) - ref) < tol);
    for (int nt : {1, 9}) {
      matmul(GGMLType::Q6_K, w.data(), 3, 256, X.data(), nt, Y.data(), 3, pool);
      for (int i = 0; i < 3 * nt; ++i) CHECK(std::fabs(Y[i] - ref) < tol);
    }
    // dequant_fast equals dequantize_row up to one rounding per element
    float fast[256];
    cpu_kernels().dequant_fast(GGMLType::Q4_K, q4k, fast, 256);
    float exact[256];
    dequantize_row(GGMLType::Q4_K, q4k, exact, 256);
    for (int i = 0; i < 256; ++i) CHECK(std::fabs(fast[i] - exact[i]) <= 1e-6f * std::fabs(exact[i]));
  }
  set_cpu_level("auto");
  CHECK(cpu_kernels().level == cpu_levels().back());
  bool threw_level = false;
  try { set_cpu_level("sse9"); } catch (const Error& e) { threw_level = e.kind() == ErrorKind::InvalidArgument; }
  CHECK(threw_level);

  // errors
  bool threw = false;
  try { row_size(GGMLType::Q4_0, 33); } catch (const Error& e) { threw = e.kind() == ErrorKind::Format; }
  CHECK(threw);
  threw = false;
  try { dequantize_row(GGMLType::Q2_K, q4k, y, 256); } catch (const Error& e) { threw = e.kind() == ErrorKind::Unsupported; }
  CHECK(threw);
  threw = false;
  try { row_size((GGMLType)77, 32); } catch (const Error& e) { threw = e.kind() == ErrorKind::Unsupported; }
  CHECK(threw);
  CHECK(type_traits((GGMLType)77).block_size == 0 && !type_traits((GGMLType)77).supported);
  CHECK(row_size(GGMLType::Q5_K, 512) == 352 && row_size(GGMLType::BF16, 3) == 6);

  std::printf(failures ? "test_quant: %d failures\n" : "test_quant: ok\n", failures);
  return failures ? 1 : 0;
}
