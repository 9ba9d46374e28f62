// Token runs for span-aware selection (select/spans.h): which neighbours join, the cut every
// `span` tokens, and the run maximum; hand-checked on a small vocabulary of edge flags.
#include <cstdio>
#include <vector>

#include "select/spans.h"
#include "check.h"

using namespace headkv;

int main() {
  // edge flags per token id: bit 0 = starts with a non-space byte, bit 1 = ends with one.
  // 0: " " (space token)  1: "1" (a digit)  2: " is" (starts with a space)  3: "." 4: special/empty
  // 5: "\n" (whitespace only)
  const std::vector<uint8_t> edges = {0, 3, 2, 3, 0, 0};
  // " is" " " 1 1 1 1 "." " is" 1 special 1 "\n" 1
  const std::vector<int32_t> t = {2, 0, 1, 1, 1, 1, 3, 2, 1, 4, 1, 5, 1};
  const std::vector<uint8_t> c = run_continues(edges, t.data(), (int64_t)t.size(), 16);
  const std::vector<uint8_t> want = {0, 0, 0, 1, 1, 1, 1, 0, 1, 0, 0, 0, 0};
  CHECK(c == want);
  // cut every 3 tokens from the run's start: 1 1 1 | 1 .
  const std::vector<uint8_t> c3 = run_continues(edges, t.data(), (int64_t)t.size(), 3);
  const std::vector<uint8_t> want3 = {0, 0, 0, 1, 1, 0, 1, 0, 1, 0, 0, 0, 0};
  CHECK(c3 == want3);
  // span 0 or 1: no runs; out-of-vocabulary ids break runs instead of reading past the table
  CHECK(run_continues(edges, t.data(), (int64_t)t.size(), 0) == std::vector<uint8_t>(t.size(), 0));
  const std::vector<int32_t> bad = {1, 99, 1, -3, 1};
  CHECK(run_continues(edges, bad.data(), 5, 16) == std::vector<uint8_t>(5, 0));
  CHECK(run_continues(edges, t.data(), 0, 16).empty());
  // run maximum over the first 8 positions only (the scored prefix may end inside a run)
  std::vector<float> s = {0.1f, 0.2f, 0.9f, 0.3f, 0.4f, 0.5f, 0.6f, 0.05f};
  run_max(s.data(), 8, want.data());
  const std::vector<float> ws = {0.1f, 0.2f, 0.9f, 0.9f, 0.9f, 0.9f, 0.9f, 0.05f};
  CHECK(s == ws);
  std::vector<float> s2 = {0.3f, 0.7f, 0.2f};
  const uint8_t cont2[] = {0, 1, 1};
  run_max(s2.data(), 2, cont2);  // n = 2: the third value is outside and stays
  CHECK(s2[0] == 0.7f && s2[1] == 0.7f && s2[2] == 0.2f);
  std::printf(failures ? "FAILED\n" : "ok\n");
  return failures ? 1 : 0;
}
