// Next-token sampling: repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw.
// temperature <= 0 is greedy (argmax after the penalty).
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace headkv {

struct SamplerParams {
  float temperature = 0.8f;
  int32_t top_k = 40;        // <= 0: off
  float top_p = 0.95f;       // >= 1: off
  float min_p = 0.05f;       // <= 0: off
  float repeat_penalty = 1.0f;  // 1: off
  int32_t repeat_last_n = 64;
  uint64_t seed = 0xC0FFEE;
};

class Sampler {
 public:
  // Throws InvalidArgument for NaN/negative/out-of-range parameters.
  explicit Sampler(const SamplerParams& p);
  // `history` is the sequence so far (only its last repeat_last_n tokens are penalised).
  int32_t sample(const float* logits, int32_t n_vocab, const std::vector<int32_t>& history);
  const SamplerParams& params() const { return p_; }

 private:
  SamplerParams p_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;
};

}  // namespace headkv
