// Value fitting: after selection, the values a KV head keeps are changed so that the observation
// window's queries read over the compressed cache what they read over the full one. Dropping
// entries moves each window query's attention output by R (full output minus compressed output);
// the smallest change dV of the kept values (ridge least squares) that gives it back is
//     A  = the window rows' attention over the kept prefix S, softmax over S and the visible window,
//          m = window * G rows (every query head of the group, every window token),
//     dV = A^T (A A^T + lambda * tr(A A^T) / m * I)^-1 R,      V[S] += dV.
// The keys and the window's own values are not changed; the ridge is relative to the mean
// diagonal so that lambda means the same at every budget. Sliding-window layers, streaming and an
// observation probe (whose queries are not the prompt's own) are not fitted. CUDA: cuda/value_fit.cu.
// Off by default (KVConfig::value_fit 0): it brings continuations closer to the full cache's but
// dilutes the values retrieval reads (EVALUATION.md, "Value fitting").
#pragma once
#include <cstdint>
#include <vector>

namespace headkv {

struct ValueFitArgs {
  const float* q_win = nullptr;  // the window queries, [window][n_head][head_dim] (RoPE applied)
  const float* o_win = nullptr;  // the window rows' full-cache attention outputs, same layout
  int window = 0;                // α: the window is positions P .. P + α - 1
  int n_head = 0, n_head_kv = 0, head_dim = 0;
  float scale = 0.0f;            // attention score scale
  float softcap = 0.0f;          // scores -> c * tanh(scores / c) (0: none)
  double lambda = 1.0;           // ridge, relative to the mean diagonal of A A^T
};

// K, V: KV head g's rows (head_dim floats each, positions 0 .. P + α - 1); kept: its kept prefix
// positions (< P). Adds dV to V at the kept positions.
void fit_values(const ValueFitArgs& a, int g, const float* K, float* V, int64_t P, const std::vector<int32_t>& kept);

}  // namespace headkv
