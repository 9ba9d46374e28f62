// Selection of the prompt tokens each KV head keeps (SnapKV-style observation window, used by
// snapkv / pyramidkv / adakv / headkv alike):
//   1. for every query head h, softmax (fp32, scaled by 1/sqrt(d)) of each of the last α prompt
//      queries over the prompt keys it may see (causal inside the window);
//   2. per KV head g, the mean of those probabilities over the α window queries and the G query
//      heads of its group, for every prefix key j < P = N - α;
//   3. 1-D pooling over j (kernel k, stride 1, zero padding k/2 — PyTorch's max_pool1d /
//      avg_pool1d(count_include_pad=True) as the official SnapKV/HeadKV code uses);
//   3b. span-aware (`runs` set): every token run gets its maximum pooled score (select/spans.h);
//   4. the top-`cap` prefix positions (ties: lower position first), returned in position order.
// The α window itself is always kept and is not part of the result.
// The scored prefix is the first P = N - α positions, unless `prefix` says otherwise: with an
// observation probe (query-agnostic compression), the window queries are probe tokens appended
// after the document and the scored prefix ends before the document's own last tokens.
#pragma once
#include <cstdint>
#include <vector>

namespace headkv {

// Positions before this one do not reach forward (SelectionParams::reach): the attention sink the
// first tokens are (StreamingLLM's 4) would otherwise lift its followers into every small budget.
constexpr int64_t kReachFrom = 4;

struct SelectionParams {
  int32_t window = 8;     // α
  int32_t kernel = 7;     // pooling kernel (odd, >= 1; 1 = no pooling)
  bool max_pool = true;   // false: average pooling
  int32_t reach = 0;      // max pooling only: a peak at a position >= kReachFrom also lifts the `reach`
                          // positions after it (the pooling window of j also takes [j - kernel/2 - reach,
                          // j - kernel/2) from kReachFrom on); 0: the symmetric window
  int64_t prefix = -1;    // positions scored (P); -1: N - window
  bool max_queries = false;  // step 2 takes the maximum over window queries and group heads, not the
                             // mean (a reconstruction probe: a token counts if its repetition reads it)
  const uint8_t* runs = nullptr;  // per scored position: continues the previous token's run (spans.h)
};

// q: the window queries, [α][n_head][head_dim] (RoPE applied); K(g) = k + g*ldk_head, rows of
// head_dim floats with stride ldk_row, N rows (RoPE applied). cap[g] <= N - α prefix tokens per
// KV head. Returns, per KV head, the chosen prefix positions in increasing order.
// `scores_out` (optional) receives the pooled scores [n_head_kv][P].
std::vector<std::vector<int32_t>> select_window_topk(const float* q, int n_head, int n_head_kv, int head_dim,
                                                     const float* k, int64_t ldk_head, int64_t ldk_row,
                                                     int64_t n_tokens, const int32_t* cap,
                                                     const SelectionParams& p,
                                                     std::vector<float>* scores_out = nullptr);

// Pooled window-attention scores only (steps 1-3b), [n_head_kv][P].
std::vector<float> window_scores(const float* q, int n_head, int n_head_kv, int head_dim, const float* k,
                                 int64_t ldk_head, int64_t ldk_row, int64_t n_tokens, const SelectionParams& p);

// Top-`cap` indices of s[0..n) (ties: lower index first), in increasing index order.
std::vector<int32_t> topk_positions(const float* s, int64_t n, int64_t cap);

}  // namespace headkv
