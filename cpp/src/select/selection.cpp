#include "select/selection.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "common/error.h"
#include "common/simd.h"
#include "select/spans.h"

namespace headkv {

std::vector<float> window_scores(const float* q, int n_head, int n_head_kv, int head_dim, const float* k,
                                 int64_t ldk_head, int64_t ldk_row, int64_t N, const SelectionParams& p) {
  const int64_t a = p.window;
  if (a < 1 || a >= N) fail(ErrorKind::InvalidArgument, "selection window " + std::to_string(a) +
                                                          " must be in [1, prompt length " + std::to_string(N) + ")");
  if (p.kernel < 1 || p.kernel % 2 == 0) fail(ErrorKind::InvalidArgument, "pooling kernel must be odd and >= 1");
  if (n_head_kv < 1 || n_head % n_head_kv) fail(ErrorKind::InvalidArgument, "n_head must be a multiple of n_head_kv");
  const int G = n_head / n_head_kv;
  const int64_t P = p.prefix < 0 ? N - a : p.prefix;
  if (P > N - a) fail(ErrorKind::InvalidArgument, "scored prefix overlaps the window queries");
  const float scale = 1.0f / std::sqrt((float)head_dim);
  std::vector<float> raw((size_t)n_head_kv * P, 0.0f), row((size_t)N);
  for (int g = 0; g < n_head_kv; ++g) {
    const float* K = k + g * ldk_head;
    float* acc = &raw[(size_t)g * P];
    for (int hh = 0; hh < G; ++hh) {
      const int h = g * G + hh;
      for (int64_t i = 0; i < a; ++i) {
        const int64_t n_keys = N - a + i + 1;  // causal inside the window
        const float* qi = q + ((size_t)i * n_head + h) * head_dim;
        float mx = -INFINITY;
        for (int64_t j = 0; j < n_keys; ++j) {
          row[j] = dot_f32(qi, K + j * ldk_row, head_dim) * scale;
          mx = std::max(mx, row[j]);
        }
        double sum = 0.0;
        for (int64_t j = 0; j < n_keys; ++j) sum += (row[j] = std::exp(row[j] - mx));
        const float inv = (float)(1.0 / sum);
        if (p.max_queries)
          for (int64_t j = 0; j < P; ++j) acc[j] = std::max(acc[j], row[j] * inv);
        else
          for (int64_t j = 0; j < P; ++j) acc[j] += row[j] * inv;
      }
    }
    const float mean = 1.0f / (float)(a * G);
    if (!p.max_queries)
      for (int64_t j = 0; j < P; ++j) acc[j] *= mean;
  }
  // Forward reach: the tokens after an attended position (a needle's value after the key the question
  // names) are kept with it.
  const int64_t reach = p.max_pool ? std::max<int32_t>(0, p.reach) : 0;
  if (p.kernel == 1 && reach == 0) {
    if (p.runs)
      for (int g = 0; g < n_head_kv; ++g) run_max(&raw[(size_t)g * P], P, p.runs);
    return raw;
  }
  std::vector<float> pooled(raw.size());
  const int64_t r = p.kernel / 2;
  for (int g = 0; g < n_head_kv; ++g) {
    const float* s = &raw[(size_t)g * P];
    float* o = &pooled[(size_t)g * P];
    for (int64_t j = 0; j < P; ++j) {
      const int64_t lo_sym = std::max<int64_t>(0, j - r), hi = std::min<int64_t>(P - 1, j + r);
      const int64_t lo = reach ? std::max(std::min(lo_sym, kReachFrom), j - r - reach) : lo_sym;
      if (p.max_pool) {
        float m = s[lo];
        for (int64_t t = lo + 1; t <= hi; ++t) m = std::max(m, s[t]);
        o[j] = m;
      } else {
        float sum = 0.0f;
        for (int64_t t = lo; t <= hi; ++t) sum += s[t];
        o[j] = sum / (float)p.kernel;  // zero padding counts (count_include_pad=True)
      }
    }
    if (p.runs) run_max(o, P, p.runs);
  }
  return pooled;
}

std::vector<int32_t> topk_positions(const float* s, int64_t n, int64_t cap) {
  cap = std::max<int64_t>(0, std::min(cap, n));
  std::vector<int32_t> idx((size_t)n);
  std::iota(idx.begin(), idx.end(), 0);
  auto better = [&](int32_t x, int32_t y) { return s[x] > s[y] || (s[x] == s[y] && x < y); };
  std::nth_element(idx.begin(), idx.begin() + cap, idx.end(), better);
  idx.resize((size_t)cap);
  std::sort(idx.begin(), idx.end());
  return idx;
}

std::vector<std::vector<int32_t>> select_window_topk(const float* q, int n_head, int n_head_kv, int head_dim,
                                                     const float* k, int64_t ldk_head, int64_t ldk_row,
                                                     int64_t N, const int32_t* cap, const SelectionParams& p,
                                                     std::vector<float>* scores_out) {
  std::vector<float> sc = window_scores(q, n_head, n_head_kv, head_dim, k, ldk_head, ldk_row, N, p);
  const int64_t P = p.prefix < 0 ? N - p.window : p.prefix;
  std::vector<std::vector<int32_t>> out((size_t)n_head_kv);
  for (int g = 0; g < n_head_kv; ++g) {
    if (cap[g] < 0 || cap[g] > P)
      fail(ErrorKind::InvalidArgument, "cap " + std::to_string(cap[g]) + " of KV head " + std::to_string(g) +
                                           " is outside [0, " + std::to_string(P) + "]");
    out[g] = topk_positions(&sc[(size_t)g * P], P, cap[g]);
  }
  if (scores_out) *scores_out = std::move(sc);
  return out;
}

}  // namespace headkv
