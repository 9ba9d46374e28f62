// Checks the fp32 vector kernels of every CPU level this machine runs against scalar std:: math
// (double-precision references), so that all dispatch levels agree within the stated tolerances.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "common/cpu.h"
#include "common/simd.h"

using namespace headkv;

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
