// Next-token sampling, in llama.cpp's order: logit bias -> penalties (repeat, frequency, presence)
// -> allowed-token mask (grammar) -> top-k -> typical -> top-p -> min-p -> temperature -> draw.
// temperature <= 0 is greedy (argmax after bias, penalties and mask).
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
  int32_t repeat_last_n = 64;    // the window of all three penalties
  float frequency_penalty = 0.0f;  // logit -= count in the window * this; 0: off
  float presence_penalty = 0.0f;   // logit -= this if the token is in the window; 0: off
  float typical_p = 1.0f;          // locally typical sampling; >= 1: off
  std::vector<std::pair<int32_t, float>> logit_bias;  // added to the raw logits (-inf bans)
  uint64_t seed = 0xC0FFEE;
};

class Sampler {
 public:
  // Throws InvalidArgument for NaN/negative/out-of-range parameters.
  explicit Sampler(const SamplerParams& p);
  // `history` is the sequence so far (only its last repeat_last_n tokens are penalised).
  // `allowed` (optional): one bit per token id, LSB first in 32-bit words; a 0 bit excludes the
  // token. Throws InvalidArgument when bias and mask leave no token.
  int32_t sample(const float* logits, int32_t n_vocab, const std::vector<int32_t>& history,
                 const uint32_t* allowed = nullptr);
  const SamplerParams& params() const { return p_; }

 private:
  SamplerParams p_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;
};

}  // namespace headkv
