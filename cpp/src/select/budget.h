// KV-cache budget allocation per KV head: HeadKV (score-proportional, Fu et al., ICLR 2025) and the
// baselines' allocations with the same total (full, SnapKV, StreamingLLM, PyramidKV, Ada-KV).
//
// Every method keeps, for each KV head, the last `window` (α) prompt tokens (the observation
// window) plus `cap` tokens chosen from the prefix before it (the first N - α tokens). The
// average per-head budget B counts the window: B = α + mean(cap) for uniform methods.
//
// HeadKV rule (this file's exact arithmetic; python/headkv/reference/budget.py restates it):
//   1. Group: the score of KV head (l, g) is the SUM of the scores of the query heads it serves
//      (h = g*G .. g*G+G-1, G = n_head / n_head_kv, the llama/HF repeat_kv layout). The KV head's
//      entries are read by all G query heads, so its importance is the total of theirs. The mean
//      would give the same shares after normalization (it differs by the constant factor G^temp).
//   2. Normalize over all n = L*H_kv KV heads: S = s^temp / Σ s^temp (temp >= 0; all-zero → error).
//   3. B' = B - α; F = B' // β computed exactly as CPython's float floor division does (the
//      official implementation uses Python `//` on floats): 12 // 1.2 == 10, 0.3 // 0.1 == 2;
//      pool = F * n; every head gets the fixed part B' - F and its share S*pool of the pool:
//      c = S * pool + (B' - F)      (Σ c = n * B' exactly, in real numbers).
//   4. Clamp to the prefix: a head cannot keep more than P = N - α prefix tokens. Heads with c > P
//      are set to P and their surplus is spread over the heads not yet clamped in proportion to
//      their S (equally when all of those have S = 0); repeated until no head exceeds P. With a
//      ceiling (cap_ceiling > 0, off by default) P is min(P, floor(cap_ceiling * B')): no head holds
//      most of a short prompt while the others share what is left.
//   5. cap = round-half-to-even(c), clamped to [0, P]. If Σ cap > n * B' (rounding overshoot), the
//      largest caps are decreased by 1 (ties: lowest flat index l*H_kv+g first) until Σ cap <= n*B'.
//      Hence Σ (cap + α) <= L * H_kv * B and every cap >= 0.
//
// Baselines (uniform over the heads of a layer; `cap` is B' unless stated):
//   full       every head keeps the whole prompt (compressed = false; budget ignored).
//   snapkv     cap = B' for every head.
//   streaming  cap = B' for every head (the selection keeps sink + recent tokens).
//   pyramidkv  per layer, decreasing linearly from the bottom layer (0) to the top (L-1), mean B':
//                lo = B' // pyramid_beta (integers), hi = 2B' - lo; if hi > P: hi = P, lo = 2B' - hi
//                (PyramidKV's rule, its default pyramid_beta = 20);
//                real c_l = hi - l*(hi - lo)/(L-1) (L == 1: c_0 = B'); cap_l = floor(c_l), then the
//                L*B' - Σ floor(c_l) missing units go one each to the layers with the largest
//                fractional part (ties: lower layer first), so Σ_l cap_l = L*B' exactly.
//   adakv      cap = B' for every head, but only the per-layer total (H_kv * B') is binding:
//              Ada-KV splits it among the layer's heads at selection time from attention scores
//              (layer_pooled = true).
//
// Edge cases: budget <= window → InvalidArgument (except `full`). budget >= prompt length N → no
// compression: every head keeps everything (cap = max(N - α, 0), window = min(α, N),
// compressed = false), for every method.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace headkv {

struct HeadScores;

enum class BudgetMethod { Full, SnapKV, Streaming, PyramidKV, AdaKV, HeadKV };

// "full", "snapkv", "streaming", "pyramidkv", "adakv", "headkv" (case-insensitive); else InvalidArgument.
BudgetMethod parse_budget_method(const std::string& name);
const char* budget_method_name(BudgetMethod m);

struct BudgetParams {
  BudgetMethod method = BudgetMethod::HeadKV;
  int32_t budget = 128;      // B: average KV entries per KV head, window included
  int32_t window = 8;        // α: observation window, always kept
  double beta = 1.2;         // β (HeadKV): 1/β of B' is pooled and shared by score; >= 1, or 0 for
                             // default_beta(budget)
  double temp = 1.0;         // score temperature (HeadKV): S ∝ s^temp; >= 0
  double cap_ceiling = 0.0;  // HeadKV: no head keeps more than cap_ceiling * B' prefix positions (the rest
                             // goes to the other heads by score, as above the prefix length); 0: none, else >= 1
  int32_t pyramid_beta = 20; // PyramidKV: top layer gets about B' / pyramid_beta; >= 1
  bool group_mean = false;   // HeadKV: aggregate GQA groups by mean instead of sum (same shares)
};

struct BudgetPlan {
  int32_t n_layer = 0;
  int32_t n_head_kv = 0;
  std::vector<int32_t> cap;  // [L*H_kv], index l*H_kv + g: prefix tokens kept, window excluded
  int32_t window = 0;        // tokens of the observation window kept by every head
  bool compressed = false;   // false: every head keeps the whole prompt
  bool layer_pooled = false; // true (adakv): only per-layer sums of cap are binding

  int32_t at(int layer, int kv_head) const { return cap[(size_t)layer * n_head_kv + kv_head]; }
  // KV entries kept over all heads, windows included.
  int64_t total() const {
    int64_t t = 0;
    for (int32_t c : cap) t += c;
    return t + (int64_t)cap.size() * window;
  }
};

// `scores` (query-head scores, n_layer x n_head) is required for HeadKV and ignored otherwise.
// Throws InvalidArgument on bad parameters or mismatched scores.
BudgetPlan plan_budget(const BudgetParams& p, const HeadScores* scores, int n_layer, int n_head, int n_head_kv,
                       int64_t prompt_len);

// HeadKV core on raw per-KV-head scores (already grouped; n values): steps 2-5 above.
// Exposed for tests and for callers that aggregate differently.
// ceiling: cap_ceiling (0: only the prefix length bounds a cap).
std::vector<int32_t> headkv_caps(const std::vector<double>& kv_scores, int32_t budget, int32_t window, double beta,
                                 double temp, int64_t prompt_len, double ceiling = 0.0);

// headkv's default β at a budget (BudgetParams::beta = 0): 4 at budgets <= 64, else 2. A larger
// floor keeps every head above ~40 entries at small budgets (EVALUATION.md, tuning split); the
// paper's scripts use 1.2.
double default_beta(int32_t budget);

// Python's float floor division a // b, computed as CPython does (see step 3 above).
double py_floordiv(double a, double b);

}  // namespace headkv
