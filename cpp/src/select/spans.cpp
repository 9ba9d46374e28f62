#include "select/spans.h"

#include <algorithm>
#include <string>

#include "tokenize/tokenizer.h"

namespace headkv {

namespace {
bool is_space(unsigned char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; }
}  // namespace

std::vector<uint8_t> token_edges(const Tokenizer& tok) {
  std::vector<uint8_t> e((size_t)tok.n_vocab(), 0);
  for (int32_t id = 0; id < tok.n_vocab(); ++id) {
    if (tok.is_special(id)) continue;
    const std::string p = tok.token_to_piece(id);
    if (p.empty()) continue;
    e[id] = (uint8_t)((is_space((unsigned char)p.front()) ? 0 : 1) | (is_space((unsigned char)p.back()) ? 0 : 2));
  }
  return e;
}

std::vector<uint8_t> run_continues(const std::vector<uint8_t>& edges, const int32_t* tokens, int64_t n, int32_t span) {
  std::vector<uint8_t> cont((size_t)std::max<int64_t>(n, 0), 0);
  if (span <= 1) return cont;
  auto edge = [&](int32_t t) -> uint8_t { return t >= 0 && (size_t)t < edges.size() ? edges[t] : 0; };
  int64_t len = 1;  // tokens in the current piece of the run
  for (int64_t j = 1; j < n; ++j) {
    const bool joins = (edge(tokens[j - 1]) & 2) && (edge(tokens[j]) & 1);
    if (joins && len < span) {
      cont[j] = 1;
      ++len;
    } else {
      len = 1;
    }
  }
  return cont;
}

void run_max(float* s, int64_t n, const uint8_t* cont) {
  for (int64_t a = 0; a < n;) {
    int64_t b = a + 1;
    while (b < n && cont[b]) ++b;
    if (b - a > 1) {
      const float m = *std::max_element(s + a, s + b);
      std::fill(s + a, s + b, m);
    }
    a = b;
  }
}

}  // namespace headkv
