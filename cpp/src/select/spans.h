// Token runs for span-aware selection. A run is a stretch of prompt tokens with no whitespace
// between them: a number the tokenizer split into digits, a code, a hyphenated word, a word split
// into pieces. Selection scores are made equal over each run (the run's maximum), so a head that
// keeps one token of a run keeps the rest of it too: an answer copied out of the prompt does not
// lose its tail to the pooling kernel's edge. Runs longer than `span` tokens are cut into pieces
// of `span` tokens from the run's start; span 0 turns this off (the paper's selection).
#pragma once
#include <cstdint>
#include <vector>

namespace headkv {

class Tokenizer;

// Per vocabulary id: bit 0 = its piece starts with a non-whitespace byte, bit 1 = it ends with one;
// 0 for special tokens and empty pieces (they never join a run).
std::vector<uint8_t> token_edges(const Tokenizer& tok);

// cont[j] = 1 when token j continues the run of token j-1 (neither side has whitespace at the
// joint), with runs cut every `span` tokens; cont[0] = 0. Token ids outside `edges` break runs.
std::vector<uint8_t> run_continues(const std::vector<uint8_t>& edges, const int32_t* tokens, int64_t n, int32_t span);

// s[j] = max of s over j's run, for j < n (runs given by `cont`).
void run_max(float* s, int64_t n, const uint8_t* cont);

}  // namespace headkv
