// Fuzz target: a head-score file (official HeadKV JSON or headkv-scores) goes through the strict
// JSON reader, the score loader (with and without a model to match), the shape check and the
// budget allocation of every method over it. Only headkv::Error may come out.
#include <cstdint>
#include <string>

#include "common/error.h"
#include "common/json.h"
#include "select/budget.h"
#include "select/scores.h"

using namespace headkv;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    JsonParseOptions opt;
    (void)json_parse(text, opt, "fuzz.json");
  } catch (const Error&) {
  }
  ModelInfo info;
  info.architecture = "llama";
  info.n_layer = 2;
  info.n_head = 4;
  info.n_head_kv = 2;
  info.fingerprint = "0123456789abcdef";
  try {
    (void)parse_scores(text, "fuzz.json", &info);
  } catch (const Error&) {
  }
  try {
    const HeadScores s = parse_scores(text, "fuzz.json");
    check_scores(s, s.n_layer, s.n_head);
    // Budget plans over the file's own grid, for every head grouping that divides it.
    for (int nkv : {1, 2, 3, s.n_head}) {
      if (nkv <= 0 || s.n_head % nkv) continue;
      for (int64_t N : {1, 9, 100, 5000}) {
        for (int32_t budget : {9, 16, 128}) {
          BudgetParams bp;
          bp.budget = budget;
          for (double beta : {1.0, 1.2, 1e9}) {
            bp.beta = beta;
            try {
              (void)plan_budget(bp, &s, s.n_layer, s.n_head, nkv, N);
            } catch (const Error&) {
            }
          }
        }
      }
    }
  } catch (const Error&) {
  }
  return 0;
}
