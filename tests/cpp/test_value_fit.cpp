// Value fitting (select/value_fit.h) on small random heads, checked by what the fit promises rather
// than by a second copy of the formula: with more kept entries than window rows and a vanishing
// ridge, the window's compressed outputs equal its full outputs after the fit; with ridge 1 they
// move closer; only the kept prefix values change; nothing to fit (no kept entry, the whole prefix
// kept, ridge 0) changes nothing.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "select/value_fit.h"
#include "check.h"

using namespace headkv;

namespace {

struct Case {
  int nh = 4, nkv = 2, hd = 8, a = 3;
  int64_t P = 20;
  std::vector<float> q, K, V;  // q [a][nh][hd]; K, V [nkv][P + a][hd]
  std::vector<float> full;     // the window rows' full outputs, [a][nh][hd]
};

// Window row (t, h)'s output over the kept prefix S and the window positions it sees (S empty and
// `all` set: every position up to P + t).
std::vector<double> output(const Case& c, const std::vector<float>& V, int t, int h, const std::vector<int32_t>& S,
                           bool all) {
  const int g = h / (c.nh / c.nkv);
  std::vector<int64_t> pos;
  if (all) {
    for (int64_t j = 0; j <= c.P + t; ++j) pos.push_back(j);
  } else {
    pos.assign(S.begin(), S.end());
    for (int64_t j = c.P; j <= c.P + t; ++j) pos.push_back(j);
  }
  std::vector<double> s(pos.size()), o(c.hd, 0.0);
  double mx = -INFINITY, z = 0;
  for (size_t i = 0; i < pos.size(); ++i) {
    double d = 0;
    for (int e = 0; e < c.hd; ++e)
      d += (double)c.q[((size_t)t * c.nh + h) * c.hd + e] * c.K[((size_t)g * (c.P + c.a) + pos[i]) * c.hd + e];
    s[i] = d / std::sqrt((double)c.hd);
    mx = std::max(mx, s[i]);
  }
  for (double& x : s) z += (x = std::exp(x - mx));
  for (size_t i = 0; i < pos.size(); ++i)
    for (int e = 0; e < c.hd; ++e) o[e] += s[i] / z * V[((size_t)g * (c.P + c.a) + pos[i]) * c.hd + e];
  return o;
}

Case make(unsigned seed) {
  Case c;
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.f, 1.f);
  const int64_t N = c.P + c.a;
  for (size_t i = 0; i < (size_t)c.a * c.nh * c.hd; ++i) c.q.push_back(2.f * n(rng));
  for (size_t i = 0; i < (size_t)c.nkv * N * c.hd; ++i) c.K.push_back(n(rng)), c.V.push_back(n(rng));
  c.full.resize((size_t)c.a * c.nh * c.hd);
  for (int t = 0; t < c.a; ++t)
    for (int h = 0; h < c.nh; ++h) {
      const std::vector<double> o = output(c, c.V, t, h, {}, true);
      for (int e = 0; e < c.hd; ++e) c.full[((size_t)t * c.nh + h) * c.hd + e] = (float)o[e];
    }
  return c;
}

// Largest |compressed - full| over the window rows and heads, with values V and kept sets S.
double residual(const Case& c, const std::vector<float>& V, const std::vector<std::vector<int32_t>>& S) {
  double r = 0;
  for (int t = 0; t < c.a; ++t)
    for (int h = 0; h < c.nh; ++h) {
      const std::vector<double> o = output(c, V, t, h, S[h / (c.nh / c.nkv)], false);
      for (int e = 0; e < c.hd; ++e) r = std::max(r, std::fabs(o[e] - c.full[((size_t)t * c.nh + h) * c.hd + e]));
    }
  return r;
}

std::vector<float> fitted(const Case& c, const std::vector<std::vector<int32_t>>& S, double lambda) {
  ValueFitArgs fa;
  fa.q_win = c.q.data();
  fa.o_win = c.full.data();
  fa.window = c.a;
  fa.n_head = c.nh;
  fa.n_head_kv = c.nkv;
  fa.head_dim = c.hd;
  fa.scale = 1.0f / std::sqrt((float)c.hd);
  fa.lambda = lambda;
  std::vector<float> V = c.V;
  const int64_t N = c.P + c.a;
  for (int g = 0; g < c.nkv; ++g) fit_values(fa, g, &c.K[(size_t)g * N * c.hd], &V[(size_t)g * N * c.hd], c.P, S[g]);
  return V;
}

}  // namespace

int main() {
  for (unsigned seed : {1u, 2u, 3u}) {
    const Case c = make(seed);
    // 8 kept entries per head: more unknowns per value dimension than the 6 window rows (3 x 2 heads)
    const std::vector<std::vector<int32_t>> S = {{0, 2, 5, 7, 9, 11, 15, 19}, {1, 3, 4, 8, 10, 12, 13, 18}};
    const double before = residual(c, c.V, S);
    CHECK(before > 1e-2);
    const std::vector<float> exact = fitted(c, S, 1e-9), ridge = fitted(c, S, 1.0);
    CHECK(residual(c, exact, S) < 1e-3 * before);
    const double after = residual(c, ridge, S);
    CHECK(after < before && after > residual(c, exact, S));
    // only the kept prefix values move
    const int64_t N = c.P + c.a;
    for (int g = 0; g < c.nkv; ++g)
      for (int64_t j = 0; j < N; ++j) {
        bool kept = false;
        for (int32_t k : S[g]) kept |= k == j;
        double moved = 0;
        for (int e = 0; e < c.hd; ++e) moved += std::fabs(exact[((size_t)g * N + j) * c.hd + e] - c.V[((size_t)g * N + j) * c.hd + e]);
        CHECK(kept ? moved > 0 : moved == 0);
      }
    // nothing to fit: no kept entry, ridge 0, or the whole prefix kept (the window already reads its
    // full outputs: the change is rounding only)
    CHECK(fitted(c, {{}, {}}, 1.0) == c.V);
    CHECK(fitted(c, S, 0.0) == c.V);
    std::vector<int32_t> all;
    for (int64_t j = 0; j < c.P; ++j) all.push_back((int32_t)j);
    const std::vector<float> same = fitted(c, {all, all}, 1.0);
    double d = 0;
    for (size_t i = 0; i < same.size(); ++i) d = std::max(d, (double)std::fabs(same[i] - c.V[i]));
    CHECK(d < 1e-5);
  }
  std::printf(failures ? "FAILED\n" : "ok\n");
  return failures ? 1 : 0;
}
