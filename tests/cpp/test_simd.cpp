// Checks the fp32 vector kernels and the f16 / q8_0 / q4_0 KV-row kernels of every CPU level this
// machine runs against scalar std:: math (double-precision references), so that all dispatch levels agree within the stated tolerances.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "common/cpu.h"
#include "common/fp16.h"
#include "common/simd.h"

using namespace headkv;

// Value i of a q8_0 (bytes 34) or q4_0 (bytes 18) block, decoded here from llama.cpp's layout: an f16
// scale, then int8 values (q8_0) or nibbles (q4_0: element i < 16 in the low nibble of byte i,
// i >= 16 in the high nibble of byte i - 16, value nibble - 8).
static double block_value(const uint8_t* blk, bool q8, int i) {
  const double d = fp16_to_f32((uint16_t)(blk[0] | blk[1] << 8));
  if (q8) return d * (int8_t)blk[2 + i];
  const int nib = i < 16 ? (blk[2 + i] & 0xF) : (blk[2 + i - 16] >> 4);
  return d * (nib - 8);
}

// q8_0 / q4_0 rows (random scales and integers, rows ld bytes apart), nq queries at once (query r at
// q + r*ldq, results at out + r*ldo, strides padded): dot and weighted-row kernels against double sums
// over the values the blocks decode to.
static int check_blocks(const CpuKernels& k, const char* name, std::mt19937& rng) {
  std::uniform_real_distribution<float> U(-1.0f, 1.0f);
  int bad = 0;
  for (bool q8 : {true, false}) {
    const int bytes = q8 ? 34 : 18;
    const char* tn = q8 ? "q8_0" : "q4_0";
    for (int n : {32, 64, 96, 128, 256})
      for (int m : {1, 4, 7, 13, 40})
        for (int nq : {1, 2, 3, 5}) {
          const int pad = nq % 2 ? 0 : 5;
          const int64_t ld = n / 32 * bytes + pad, ldq = n + pad, ldo = m + pad, ldw = n + 3;
          std::vector<uint8_t> K(m * ld);
          for (auto& b : K) b = (uint8_t)(rng() & 0xFF);
          for (int j = 0; j < m; ++j)
            for (int b = 0; b < n / 32; ++b) {
              const uint16_t h = f32_to_fp16(U(rng) * 0.05f);
              K[j * ld + b * bytes] = h & 0xFF;
              K[j * ld + b * bytes + 1] = h >> 8;
            }
          auto val = [&](int j, int d) { return block_value(&K[j * ld + d / 32 * bytes], q8, d % 32); };
          std::vector<float> q(nq * ldq), p(nq * ldo), out(nq * ldo, NAN), wsum(nq * ldw, NAN);
          for (float& v : q) v = U(rng);
          for (float& v : p) v = (U(rng) + 1.0f) / 2;
          (q8 ? k.dot_rows_q8_0 : k.dot_rows_q4_0)(q.data(), nq, ldq, K.data(), ld, n, m, out.data(), ldo);
          (q8 ? k.weighted_rows_q8_0 : k.weighted_rows_q4_0)(p.data(), nq, ldo, K.data(), ld, n, m, wsum.data(), ldw);
          for (int r = 0; r < nq; ++r) {
            for (int j = 0; j < m; ++j) {
              double ref = 0, mag = 0;
              for (int d = 0; d < n; ++d) ref += q[r * ldq + d] * val(j, d), mag += std::fabs(q[r * ldq + d] * val(j, d));
              if (!(std::fabs(out[r * ldo + j] - ref) <= 1e-6 * mag)) {
                std::printf("%s: %s dot mismatch n=%d m=%d nq=%d r=%d j=%d: %g vs %g\n", name, tn, n, m, nq, r, j,
                            out[r * ldo + j], ref);
                ++bad;
              }
            }
            for (int d = 0; d < n; ++d) {
              double ref = 0, mag = 0;
              for (int j = 0; j < m; ++j) ref += p[r * ldo + j] * val(j, d), mag += std::fabs(p[r * ldo + j] * val(j, d));
              if (!(std::fabs(wsum[r * ldw + d] - ref) <= 1e-6 * mag)) {
                std::printf("%s: %s weighted-rows mismatch n=%d m=%d nq=%d r=%d d=%d: %g vs %g\n", name, tn, n, m, nq, r,
                            d, wsum[r * ldw + d], ref);
                ++bad;
              }
            }
          }
        }
  }
  return bad;
}

static int check_level(const CpuKernels& k, const char* name) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> U(-100.0f, 0.0f);
  int bad = 0;
  for (int n : {1, 7, 8, 9, 64, 1000}) {
    std::vector<float> x(n), ref(n);
    double ref_sum = 0;
    for (int i = 0; i < n; ++i) {
      x[i] = U(rng) + 3.0f;
      ref[i] = std::exp(x[i] - 3.0f);
      ref_sum += ref[i];
    }
    const double sum = k.exp_shift_sum(x.data(), n, 3.0f);
    for (int i = 0; i < n; ++i)
      if (std::fabs(x[i] - ref[i]) > 4e-7f * ref[i] + 1e-37f) {
        std::printf("%s: exp mismatch n=%d i=%d: %g vs %g\n", name, n, i, x[i], ref[i]);
        ++bad;
      }
    if (std::fabs(sum - ref_sum) > 1e-6 * ref_sum) {
      std::printf("%s: sum mismatch n=%d: %g vs %g\n", name, n, sum, ref_sum);
      ++bad;
    }
  }
  for (int n : {64, 40, 3}) {
    for (int m : {1, 8, 13, 40}) {
      std::vector<float> q(n), K(m * n), p(m), out(m), wsum(n), y(n);
      for (float& v : q) v = U(rng) / 50.0f + 1.0f;
      for (float& v : K) v = U(rng) / 50.0f + 1.0f;
      for (float& v : p) v = -U(rng) / 100.0f;
      k.dot_rows_f32(q.data(), K.data(), n, n, m, out.data());
      k.weighted_rows_f32(p.data(), K.data(), n, n, m, wsum.data());
      for (int d = 0; d < n; ++d) y[d] = 0.5f;
      k.axpy_f32(y.data(), 0.25f, q.data(), n);
      for (int j = 0; j < m; ++j) {
        double r = 0, mag = 0;
        for (int d = 0; d < n; ++d) r += (double)q[d] * K[j * n + d], mag += std::fabs((double)q[d] * K[j * n + d]);
        if (std::fabs(out[j] - r) > 1e-6 * mag || std::fabs(k.dot_f32(q.data(), &K[j * n], n) - r) > 1e-6 * mag) {
          std::printf("%s: dot mismatch n=%d m=%d j=%d: %g vs %g\n", name, n, m, j, out[j], r);
          ++bad;
        }
      }
      for (int d = 0; d < n; ++d) {
        double r = 0, mag = 0;
        for (int j = 0; j < m; ++j) r += (double)p[j] * K[j * n + d], mag += std::fabs((double)p[j] * K[j * n + d]);
        if (std::fabs(wsum[d] - r) > 1e-6 * mag) {
          std::printf("%s: weighted-rows mismatch n=%d m=%d d=%d: %g vs %g\n", name, n, m, d, wsum[d], r);
          ++bad;
        }
        if (std::fabs(y[d] - (0.5 + 0.25 * (double)q[d])) > 1e-6) {
          std::printf("%s: axpy mismatch n=%d d=%d\n", name, n, d);
          ++bad;
        }
      }
    }
  }
  // f16 storage: conversion bit-identical to the portable round-to-nearest-even (halfway cases,
  // subnormals, overflow, NaN), and the f16-row kernels against double sums over the halves' values.
  {
    std::vector<float> x = {0.0f, -0.0f, 1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048, 65504.0f, 65520.0f, 1e-7f,
                            -6.1e-5f, 3.14159f, NAN, -INFINITY, 1e5f, 2.98e-8f, -0.333333f, 1024.5f, 7.0f, 0.1f};
    std::vector<uint16_t> h(x.size());
    k.f32_to_f16_row(x.data(), h.data(), (int64_t)x.size());
    for (size_t i = 0; i < x.size(); ++i)
      if (h[i] != f32_to_fp16(x[i])) {
        std::printf("%s: f16 conversion mismatch i=%zu: %04x vs %04x\n", name, i, h[i], f32_to_fp16(x[i]));
        ++bad;
      }
  }
  for (int n : {64, 40, 3}) {
    for (int m : {1, 8, 13, 40}) {
      std::vector<float> q(n), Kf(m * n), p(m), out(m), wsum(n);
      std::vector<uint16_t> K(m * n);
      for (float& v : q) v = U(rng) / 50.0f + 1.0f;
      for (float& v : Kf) v = U(rng) / 50.0f + 1.0f;
      for (float& v : p) v = -U(rng) / 100.0f;
      for (int i = 0; i < m * n; ++i) K[i] = f32_to_fp16(Kf[i]);
      k.dot_rows_f16(q.data(), K.data(), n, n, m, out.data());
      k.weighted_rows_f16(p.data(), K.data(), n, n, m, wsum.data());
      for (int j = 0; j < m; ++j) {
        double r = 0, mag = 0;
        for (int d = 0; d < n; ++d) {
          const double kv = fp16_to_f32(K[j * n + d]);
          r += q[d] * kv, mag += std::fabs(q[d] * kv);
        }
        if (std::fabs(out[j] - r) > 1e-6 * mag) {
          std::printf("%s: f16 dot mismatch n=%d m=%d j=%d: %g vs %g\n", name, n, m, j, out[j], r);
          ++bad;
        }
      }
      for (int d = 0; d < n; ++d) {
        double r = 0, mag = 0;
        for (int j = 0; j < m; ++j) {
          const double kv = fp16_to_f32(K[j * n + d]);
          r += p[j] * kv, mag += std::fabs(p[j] * kv);
        }
        if (std::fabs(wsum[d] - r) > 1e-6 * mag) {
          std::printf("%s: f16 weighted-rows mismatch n=%d m=%d d=%d: %g vs %g\n", name, n, m, d, wsum[d], r);
          ++bad;
        }
      }
    }
  }
  bad += check_blocks(k, name, rng);
  return bad;
}

int main() {
  int bad = 0;
  for (CpuLevel l : cpu_levels()) {
    const int b = check_level(*cpu_kernels_for(l), cpu_level_name(l));
    std::printf("%s: %s\n", cpu_level_name(l), b ? "FAILED" : "ok");
    bad += b;
  }
  // The inline wrappers of common/simd.h reach the active level's kernels.
  const float a[3] = {1, 2, 3}, b3[3] = {4, 5, 6};
  if (dot_f32(a, b3, 3) != 32.0f) ++bad;
  std::printf(bad ? "FAILED\n" : "ok\n");
  return bad ? 1 : 0;
}
