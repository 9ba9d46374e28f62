// Value fitting (select/value_fit.h), in double precision: the solve is a small m x m system
// (m = window * G, 24 for SmolLM2 at α 8) per KV head.
#include "select/value_fit.h"

#include <algorithm>
#include <cmath>

namespace headkv {

void fit_values(const ValueFitArgs& a, int g, const float* K, float* V, int64_t P, const std::vector<int32_t>& kept) {
  const int G = a.n_head / a.n_head_kv, hd = a.head_dim, m = a.window * G, ns = (int)kept.size();
  if (ns == 0 || m == 0 || !(a.lambda > 0)) return;
  std::vector<double> A((size_t)m * ns), R((size_t)m * hd), s(ns + a.window);
  auto logit = [&](const float* q, const float* k) {
    double d = 0;
    for (int i = 0; i < hd; ++i) d += (double)q[i] * k[i];
    d *= a.scale;
    return a.softcap > 0 ? a.softcap * std::tanh(d / a.softcap) : d;
  };
  for (int t = 0; t < a.window; ++t)
    for (int hh = 0; hh < G; ++hh) {
      const int h = g * G + hh, r = t * G + hh, nw = t + 1;  // window row t sees P .. P + t
      const float* q = a.q_win + ((size_t)t * a.n_head + h) * hd;
      double mx = -INFINITY, z = 0;
      for (int k = 0; k < ns; ++k) mx = std::max(mx, s[k] = logit(q, K + (size_t)kept[k] * hd));
      for (int w = 0; w < nw; ++w) mx = std::max(mx, s[ns + w] = logit(q, K + (size_t)(P + w) * hd));
      for (int k = 0; k < ns + nw; ++k) z += (s[k] = std::exp(s[k] - mx));
      const float* o = a.o_win + ((size_t)t * a.n_head + h) * hd;
      double* rr = &R[(size_t)r * hd];
      for (int i = 0; i < hd; ++i) rr[i] = o[i];
      for (int k = 0; k < ns + nw; ++k) {
        const double p = s[k] / z;
        const float* v = V + (size_t)(k < ns ? kept[k] : P + (k - ns)) * hd;
        for (int i = 0; i < hd; ++i) rr[i] -= p * v[i];
        if (k < ns) A[(size_t)r * ns + k] = p;
      }
    }
  std::vector<double> M((size_t)m * m);  // A A^T + ridge, then its Cholesky factor (lower)
  double tr = 0;
  for (int r = 0; r < m; ++r)
    for (int c = 0; c <= r; ++c) {
      double d = 0;
      for (int k = 0; k < ns; ++k) d += A[(size_t)r * ns + k] * A[(size_t)c * ns + k];
      M[(size_t)r * m + c] = d;
      if (r == c) tr += d;
    }
  if (!(tr > 0)) return;  // the window puts no weight on the kept prefix: nothing to fit with
  const double ridge = a.lambda * tr / m;
  for (int r = 0; r < m; ++r) M[(size_t)r * m + r] += ridge;
  for (int j = 0; j < m; ++j) {
    double d = M[(size_t)j * m + j];
    for (int k = 0; k < j; ++k) d -= M[(size_t)j * m + k] * M[(size_t)j * m + k];
    M[(size_t)j * m + j] = d = std::sqrt(d);  // d >= ridge > 0: A A^T is positive semi-definite
    for (int i = j + 1; i < m; ++i) {
      double v = M[(size_t)i * m + j];
      for (int k = 0; k < j; ++k) v -= M[(size_t)i * m + k] * M[(size_t)j * m + k];
      M[(size_t)i * m + j] = v / d;
    }
  }
  std::vector<double> y(m);
  for (int i = 0; i < hd; ++i) {  // y = M^-1 R[:, i], then dV[:, i] = A^T y
    for (int r = 0; r < m; ++r) {
      double v = R[(size_t)r * hd + i];
      for (int k = 0; k < r; ++k) v -= M[(size_t)r * m + k] * y[k];
      y[r] = v / M[(size_t)r * m + r];
    }
    for (int r = m - 1; r >= 0; --r) {
      double v = y[r];
      for (int k = r + 1; k < m; ++k) v -= M[(size_t)k * m + r] * y[k];
      y[r] = v / M[(size_t)r * m + r];
    }
    for (int k = 0; k < ns; ++k) {
      double dv = 0;
      for (int r = 0; r < m; ++r) dv += A[(size_t)r * ns + k] * y[r];
      V[(size_t)kept[k] * hd + i] += (float)dv;
    }
  }
}

}  // namespace headkv
