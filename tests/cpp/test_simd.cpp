// Checks the vector helpers against scalar std:: math.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "common/simd.h"

int main() {
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
    const double sum = headkv::exp_shift_sum(x.data(), n, 3.0f);
    for (int i = 0; i < n; ++i)
      if (std::fabs(x[i] - ref[i]) > 4e-7f * ref[i] + 1e-37f) {
        std::printf("exp mismatch n=%d i=%d: %g vs %g\n", n, i, x[i], ref[i]);
        ++bad;
      }
    if (std::fabs(sum - ref_sum) > 1e-6 * ref_sum) {
      std::printf("sum mismatch n=%d: %g vs %g\n", n, sum, ref_sum);
      ++bad;
    }
  }
  for (int m : {1, 8, 13, 40}) {
    const int n = 64;
    std::vector<float> q(n), K(m * n), out(m);
    for (float& v : q) v = U(rng) / 50.0f + 1.0f;
    for (float& v : K) v = U(rng) / 50.0f + 1.0f;
    headkv::dot_rows_f32(q.data(), K.data(), n, n, m, out.data());
    for (int j = 0; j < m; ++j) {
      double r = 0;
      for (int d = 0; d < n; ++d) r += (double)q[d] * K[j * n + d];
      if (std::fabs(out[j] - r) > 1e-5 * std::fabs(r)) {
        std::printf("dot mismatch m=%d j=%d: %g vs %g\n", m, j, out[j], r);
        ++bad;
      }
    }
  }
  std::printf(bad ? "FAILED\n" : "ok\n");
  return bad ? 1 : 0;
}
