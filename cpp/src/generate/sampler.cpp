#include "generate/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <unordered_set>

#include "common/error.h"

namespace headkv {

Sampler::Sampler(const SamplerParams& p) : p_(p), rng_(p.seed) {
  auto bad = [](const std::string& m) { fail(ErrorKind::InvalidArgument, m); };
  if (!std::isfinite(p.temperature) || p.temperature < 0) bad("temperature must be a finite number >= 0");
  if (!std::isfinite(p.top_p) || p.top_p <= 0 || p.top_p > 1) bad("top_p must be in (0, 1]");
  if (!std::isfinite(p.min_p) || p.min_p < 0 || p.min_p > 1) bad("min_p must be in [0, 1]");
  if (!std::isfinite(p.repeat_penalty) || p.repeat_penalty <= 0) bad("repeat_penalty must be > 0");
  if (p.top_k < 0) bad("top_k must be >= 0 (0 disables it)");
  if (p.repeat_last_n < 0) bad("repeat_last_n must be >= 0");
}

int32_t Sampler::sample(const float* logits, int32_t n_vocab, const std::vector<int32_t>& history) {
  cand_.resize(n_vocab);
  // A NaN logit (a corrupt model can produce them) would break the sort's strict weak ordering,
  // which is undefined behaviour: NaN ranks below every number instead.
  for (int32_t i = 0; i < n_vocab; ++i)
    cand_[i] = {std::isnan(logits[i]) ? -std::numeric_limits<float>::infinity() : logits[i], i};

  if (p_.repeat_penalty != 1.0f && p_.repeat_last_n > 0) {
    std::unordered_set<int32_t> seen;
    const size_t start = history.size() > (size_t)p_.repeat_last_n ? history.size() - p_.repeat_last_n : 0;
    for (size_t i = start; i < history.size(); ++i) {
      const int32_t t = history[i];
      if (t < 0 || t >= n_vocab || !seen.insert(t).second) continue;
      float& l = cand_[t].first;
      l = l > 0 ? l / p_.repeat_penalty : l * p_.repeat_penalty;
    }
  }

  auto by_logit = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  if (p_.temperature <= 0.0f) return std::min_element(cand_.begin(), cand_.end(), by_logit)->second;

  size_t n = cand_.size();
  if (p_.top_k > 0 && (size_t)p_.top_k < n) {
    std::partial_sort(cand_.begin(), cand_.begin() + p_.top_k, cand_.end(), by_logit);
    n = (size_t)p_.top_k;
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  // Softmax over the survivors (sorted descending); the filters below keep at least one token.
  std::vector<double> prob(n);
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += (prob[i] = std::exp((double)cand_[i].first - cand_[0].first));
  for (double& q : prob) q /= sum;
  if (p_.top_p < 1.0f) {
    double cum = 0.0;
    size_t keep = n;
    for (size_t i = 0; i < n; ++i) {
      cum += prob[i];
      if (cum >= p_.top_p) { keep = i + 1; break; }
    }
    n = keep;
  }
  if (p_.min_p > 0.0f) {
    size_t keep = 1;
    while (keep < n && prob[keep] >= p_.min_p * prob[0]) ++keep;
    n = keep;
  }
  // Temperature over the kept logits, then draw.
  std::vector<double> w(n);
  double tot = 0.0;
  for (size_t i = 0; i < n; ++i) tot += (w[i] = std::exp(((double)cand_[i].first - cand_[0].first) / p_.temperature));
  std::uniform_real_distribution<double> U(0.0, tot);
  double r = U(rng_);
  for (size_t i = 0; i < n; ++i) {
    if ((r -= w[i]) <= 0) return cand_[i].second;
  }
  return cand_[n - 1].second;
}

}  // namespace headkv
