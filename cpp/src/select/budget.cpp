#include "select/budget.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <numeric>

#include "common/error.h"
#include "select/scores.h"

namespace headkv {

BudgetMethod parse_budget_method(const std::string& name) {
  std::string n = name;
  for (char& c : n) c = (char)std::tolower((unsigned char)c);
  if (n == "full") return BudgetMethod::Full;
  if (n == "snapkv") return BudgetMethod::SnapKV;
  if (n == "streaming" || n == "streamingllm") return BudgetMethod::Streaming;
  if (n == "pyramidkv") return BudgetMethod::PyramidKV;
  if (n == "adakv") return BudgetMethod::AdaKV;
  if (n == "headkv") return BudgetMethod::HeadKV;
  fail(ErrorKind::InvalidArgument, "unknown KV budget method '" + name +
                                       "' (expected full, snapkv, streaming, pyramidkv, adakv or headkv)");
}

const char* budget_method_name(BudgetMethod m) {
  switch (m) {
    case BudgetMethod::Full: return "full";
    case BudgetMethod::SnapKV: return "snapkv";
    case BudgetMethod::Streaming: return "streaming";
    case BudgetMethod::PyramidKV: return "pyramidkv";
    case BudgetMethod::AdaKV: return "adakv";
    case BudgetMethod::HeadKV: return "headkv";
  }
  return "?";
}

double py_floordiv(double a, double b) {
  // CPython's float_floor_div, step for step (fmod is exact; the division rounds; the result is
  // snapped to the nearest integer), so the same inputs give the same F as the reference code.
  double mod = std::fmod(a, b);
  double div = (a - mod) / b;
  if (mod != 0.0 && ((b < 0) != (mod < 0))) div -= 1.0;
  if (div != 0.0) {
    double f = std::floor(div);
    if (div - f > 0.5) f += 1.0;
    return f;
  }
  return std::copysign(0.0, a / b);
}

double default_beta(int32_t budget) { return budget <= 64 ? 4.0 : 2.0; }

std::vector<int32_t> headkv_caps(const std::vector<double>& kv_scores, int32_t budget, int32_t window, double beta,
                                 double temp, int64_t prompt_len, double ceiling) {
  const size_t n = kv_scores.size();
  if (n == 0) fail(ErrorKind::InvalidArgument, "headkv: no heads");
  if (!(std::isfinite(beta) && beta >= 1.0))
    fail(ErrorKind::InvalidArgument, "headkv: beta must be a finite number >= 1");
  if (!(std::isfinite(temp) && temp >= 0.0))
    fail(ErrorKind::InvalidArgument, "headkv: temperature must be a finite number >= 0");
  if (!(std::isfinite(ceiling) && (ceiling == 0.0 || ceiling >= 1.0)))
    fail(ErrorKind::InvalidArgument, "headkv: cap_ceiling must be 0 (none) or a finite number >= 1");
  if (budget <= window)
    fail(ErrorKind::InvalidArgument, "headkv: budget " + std::to_string(budget) + " must exceed the window " +
                                         std::to_string(window));
  // 2. normalized shares
  std::vector<double> S(n);
  double tot = 0;
  for (size_t i = 0; i < n; ++i) {
    const double s = kv_scores[i];
    if (!std::isfinite(s) || s < 0)
      fail(ErrorKind::InvalidArgument, "headkv: KV head " + std::to_string(i) + " has a negative or non-finite score");
    S[i] = std::pow(s, temp);
    tot += S[i];
  }
  if (!(tot > 0) || !std::isfinite(tot))
    fail(ErrorKind::InvalidArgument, "headkv: all head scores are zero (or overflow at this temperature); "
                                     "cannot allocate by score");
  for (double& s : S) s /= tot;
  // 3. fixed part + shared pool
  const double Bp = (double)budget - window;
  const double F = py_floordiv(Bp, beta);
  const double pool = F * (double)n;
  const double fixed = Bp - F;
  std::vector<double> c(n);
  for (size_t i = 0; i < n; ++i) c[i] = S[i] * pool + fixed;
  // 4. clamp to the prefix length (and the ceiling), redistribute the surplus by score; a ceiling >= 1
  // leaves room for the whole pool, since the caps average B'
  double P = (double)std::max<int64_t>(prompt_len - window, 0);
  if (ceiling > 0) P = std::min(P, std::floor(ceiling * Bp + 1e-9));  // 2.05 * 120 is 245.99999999999997
  std::vector<char> clamped(n, 0);
  for (size_t iter = 0; iter <= n; ++iter) {
    double surplus = 0;
    for (size_t i = 0; i < n; ++i)
      if (!clamped[i] && c[i] > P) surplus += c[i] - P, c[i] = P, clamped[i] = 1;
    if (surplus <= 0) break;
    double share = 0;
    size_t free_heads = 0;
    for (size_t i = 0; i < n; ++i)
      if (!clamped[i]) share += S[i], ++free_heads;
    if (free_heads == 0) break;
    for (size_t i = 0; i < n; ++i)
      if (!clamped[i]) c[i] += share > 0 ? surplus * S[i] / share : surplus / (double)free_heads;
  }
  // 5. round, clamp, trim the rounding overshoot from the largest caps
  std::vector<int32_t> cap(n);
  const int64_t Pi = (int64_t)P;
  for (size_t i = 0; i < n; ++i) {
    const double r = std::nearbyint(c[i]);  // default rounding mode: half to even (as torch/numpy)
    cap[i] = (int32_t)std::min<int64_t>(std::max<int64_t>((int64_t)r, 0), Pi);
  }
  const int64_t target = (int64_t)n * (int64_t)(budget - window);
  int64_t sum = std::accumulate(cap.begin(), cap.end(), (int64_t)0);
  while (sum > target) {
    std::vector<size_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return cap[a] > cap[b]; });
    for (size_t k = 0; k < n && sum > target; ++k)
      if (cap[order[k]] > 0) --cap[order[k]], --sum;
  }
  return cap;
}

static std::vector<int32_t> pyramid_layer_caps(int n_layer, int64_t Bp, int64_t P, int32_t pyramid_beta) {
  int64_t lo = Bp / pyramid_beta, hi = 2 * Bp - lo;
  if (hi > P) hi = P, lo = 2 * Bp - hi;
  std::vector<int32_t> caps(n_layer);
  if (n_layer == 1) {
    caps[0] = (int32_t)Bp;
    return caps;
  }
  const int64_t d = n_layer - 1;
  std::vector<int64_t> rem(n_layer);
  int64_t sum = 0;
  for (int l = 0; l < n_layer; ++l) {
    const int64_t num = hi * d - (int64_t)l * (hi - lo);  // c_l * d, >= lo * d >= 0
    caps[l] = (int32_t)(num / d);
    rem[l] = num % d;
    sum += caps[l];
  }
  int64_t missing = (int64_t)n_layer * Bp - sum;
  std::vector<int> order(n_layer);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return rem[a] > rem[b]; });
  for (int k = 0; k < n_layer && missing > 0; ++k, --missing) ++caps[order[k]];
  return caps;
}

BudgetPlan plan_budget(const BudgetParams& p, const HeadScores* scores, int n_layer, int n_head, int n_head_kv,
                       int64_t prompt_len) {
  const std::string m = budget_method_name(p.method);
  if (n_layer <= 0 || n_head <= 0 || n_head_kv <= 0)
    fail(ErrorKind::InvalidArgument, m + ": n_layer, n_head and n_head_kv must be positive");
  if (n_head % n_head_kv != 0)
    fail(ErrorKind::InvalidArgument, m + ": n_head " + std::to_string(n_head) + " is not a multiple of n_head_kv " +
                                         std::to_string(n_head_kv));
  if (prompt_len < 0 || prompt_len > (int64_t)1 << 30)
    fail(ErrorKind::InvalidArgument, m + ": prompt length " + std::to_string(prompt_len) + " is out of range");
  if (p.window < 1) fail(ErrorKind::InvalidArgument, m + ": window must be >= 1");
  if (p.method != BudgetMethod::Full && p.budget <= p.window)
    fail(ErrorKind::InvalidArgument, m + ": budget " + std::to_string(p.budget) +
                                         " (KV entries per head, window included) must be larger than the window " +
                                         std::to_string(p.window));
  if (p.method == BudgetMethod::PyramidKV && p.pyramid_beta < 1)
    fail(ErrorKind::InvalidArgument, m + ": pyramid_beta must be >= 1");
  if (p.method == BudgetMethod::HeadKV) {
    if (!scores) fail(ErrorKind::InvalidArgument, "headkv: head scores are required");
    check_scores(*scores, n_layer, n_head);
  }

  const size_t n = (size_t)n_layer * n_head_kv;
  BudgetPlan plan;
  plan.n_layer = n_layer;
  plan.n_head_kv = n_head_kv;
  if (p.method == BudgetMethod::Full || p.budget >= prompt_len) {
    plan.window = (int32_t)std::min<int64_t>(p.window, prompt_len);
    plan.cap.assign(n, (int32_t)(prompt_len - plan.window));
    plan.compressed = false;
    return plan;
  }
  plan.window = p.window;
  plan.compressed = true;
  const int32_t Bp = p.budget - p.window;
  const int64_t P = prompt_len - p.window;  // > Bp here
  switch (p.method) {
    case BudgetMethod::SnapKV:
    case BudgetMethod::Streaming:
      plan.cap.assign(n, Bp);
      break;
    case BudgetMethod::AdaKV:
      plan.cap.assign(n, Bp);
      plan.layer_pooled = true;
      break;
    case BudgetMethod::PyramidKV: {
      const std::vector<int32_t> lc = pyramid_layer_caps(n_layer, Bp, P, p.pyramid_beta);
      plan.cap.resize(n);
      for (int l = 0; l < n_layer; ++l)
        for (int g = 0; g < n_head_kv; ++g) plan.cap[(size_t)l * n_head_kv + g] = lc[l];
      break;
    }
    case BudgetMethod::HeadKV: {
      const int G = n_head / n_head_kv;
      std::vector<double> kv(n, 0.0);
      for (int l = 0; l < n_layer; ++l)
        for (int h = 0; h < n_head; ++h) kv[(size_t)l * n_head_kv + h / G] += scores->at(l, h);
      if (p.group_mean)
        for (double& v : kv) v /= G;
      plan.cap = headkv_caps(kv, p.budget, p.window, p.beta == 0 ? default_beta(p.budget) : p.beta, p.temp,
                             prompt_len, p.cap_ceiling);
      break;
    }
    case BudgetMethod::Full: break;  // handled above
  }
  return plan;
}

}  // namespace headkv
