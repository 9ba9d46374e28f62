#include "generate/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <unordered_map>

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
  if (!std::isfinite(p.frequency_penalty)) bad("frequency_penalty must be a finite number");
  if (!std::isfinite(p.presence_penalty)) bad("presence_penalty must be a finite number");
  if (!std::isfinite(p.typical_p) || p.typical_p <= 0) bad("typical_p must be > 0 (>= 1 disables it)");
  for (const auto& b : p.logit_bias)
    if (std::isnan(b.second) || b.second == std::numeric_limits<float>::infinity())
      bad("logit_bias values must be numbers < +inf (-inf bans a token)");
}

int32_t Sampler::sample(const float* logits, int32_t n_vocab, const std::vector<int32_t>& history,
                        const uint32_t* allowed) {
  cand_.resize(n_vocab);
  // A NaN logit (a corrupt model can produce them) would break the sort's strict weak ordering,
  // which is undefined behaviour: NaN ranks below every number instead.
  for (int32_t i = 0; i < n_vocab; ++i)
    cand_[i] = {std::isnan(logits[i]) ? -std::numeric_limits<float>::infinity() : logits[i], i};

  for (const auto& b : p_.logit_bias)
    if (b.first >= 0 && b.first < n_vocab) cand_[b.first].first += b.second;

  const bool penalize = p_.repeat_penalty != 1.0f || p_.frequency_penalty != 0.0f || p_.presence_penalty != 0.0f;
  if (penalize && p_.repeat_last_n > 0) {
    std::unordered_map<int32_t, int> count;
    const size_t start = history.size() > (size_t)p_.repeat_last_n ? history.size() - p_.repeat_last_n : 0;
    for (size_t i = start; i < history.size(); ++i)
      if (history[i] >= 0 && history[i] < n_vocab) ++count[history[i]];
    for (const auto& c : count) {
      float& l = cand_[c.first].first;
      l = l > 0 ? l / p_.repeat_penalty : l * p_.repeat_penalty;
      l -= (float)c.second * p_.frequency_penalty + p_.presence_penalty;
    }
  }
  if (allowed)
    for (int32_t i = 0; i < n_vocab; ++i)
      if (!((allowed[i >> 5] >> (i & 31)) & 1u)) cand_[i].first = -std::numeric_limits<float>::infinity();

  auto by_logit = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  const auto best = std::min_element(cand_.begin(), cand_.end(), by_logit);
  if (best->first == -std::numeric_limits<float>::infinity() && (allowed || !p_.logit_bias.empty()))
    fail(ErrorKind::InvalidArgument, "logit_bias and the grammar leave no token to sample");
  if (p_.temperature <= 0.0f) return best->second;

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
  if (p_.typical_p < 1.0f && n > 1) {
    // Keep the tokens whose surprisal is closest to the entropy until their mass reaches typical_p,
    // then restore the descending-logit order and renormalize.
    double entropy = 0.0;
    for (size_t i = 0; i < n; ++i)
      if (prob[i] > 0) entropy -= prob[i] * std::log(prob[i]);
    std::vector<size_t> order(n);
    for (size_t i = 0; i < n; ++i) order[i] = i;
    auto shift = [&](size_t i) { return prob[i] > 0 ? std::fabs(-std::log(prob[i]) - entropy) : INFINITY; };
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return shift(a) < shift(b); });
    double cum = 0.0;
    size_t keep = n;
    for (size_t i = 0; i < n; ++i) {
      cum += prob[order[i]];
      if (cum >= p_.typical_p) { keep = i + 1; break; }
    }
    order.resize(keep);
    std::sort(order.begin(), order.end());  // indices into the sorted candidates: keeps logit order
    for (size_t i = 0; i < keep; ++i) cand_[i] = cand_[order[i]];
    n = keep;
    prob.resize(n);
    sum = 0.0;
    for (size_t i = 0; i < n; ++i) sum += (prob[i] = std::exp((double)cand_[i].first - cand_[0].first));
    for (double& q : prob) q /= sum;
  }
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
