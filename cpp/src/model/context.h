// One inference sequence over a Model: full KV cache, scratch buffers, logits.
// eval() runs batch prefill (chunks of n_batch tokens) or single-token decode.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "common/threadpool.h"
#include "model/llama.h"

namespace headkv {

struct ContextParams {
  int32_t n_ctx = 0;      // 0: the model's training context
  int32_t n_threads = 0;  // 0: hardware concurrency
  int32_t n_batch = 512;  // tokens per forward chunk
};

class Context {
 public:
  // Throws InvalidArgument for bad params and OutOfMemory (naming the bytes) when the KV cache
  // cannot be allocated.
  Context(const Model& model, const ContextParams& params);

  // Appends tokens at positions n_past..; computes logits of the last token, or of every token
  // when all_logits. Throws ContextFull when n_past + n > n_ctx and InvalidArgument for token ids
  // outside the vocabulary; in both cases the context is left unchanged.
  void eval(const int32_t* tokens, int64_t n, bool all_logits = false);
  void reset() { n_past_ = 0; n_logit_rows_ = 0; history_.clear(); }

  // Logits of the last evaluated token (nullptr before any eval).
  const float* logits() const;
  // All rows of the last eval (n_logit_rows() x n_vocab); one row unless all_logits was set.
  const float* logits_all() const { return n_logit_rows_ ? logits_.data() : nullptr; }
  int64_t n_logit_rows() const { return n_logit_rows_; }

  const Model& model() const { return model_; }
  int32_t n_ctx() const { return n_ctx_; }
  int32_t n_past() const { return n_past_; }
  int32_t n_threads() const { return pool_.size(); }
  uint64_t kv_bytes() const { return (k_.size() + v_.size()) * sizeof(float); }
  const std::vector<int32_t>& history() const { return history_; }

 private:
  void forward(const int32_t* tokens, int64_t T, bool all_logits, float* logits_out);
  void attention(int il, int64_t T);
  float* k_at(int il, int h, int64_t pos) { return &k_[(((size_t)il * hp_.n_head_kv + h) * n_ctx_ + pos) * hp_.head_dim]; }
  float* v_at(int il, int h, int64_t pos) { return &v_[(((size_t)il * hp_.n_head_kv + h) * n_ctx_ + pos) * hp_.head_dim]; }

  const Model& model_;
  const LlamaHParams& hp_;
  int32_t n_ctx_ = 0, n_batch_ = 512, n_past_ = 0;
  ThreadPool pool_;
  std::vector<float> k_, v_;  // [layer][kv_head][pos][head_dim]
  // scratch for one chunk of up to n_batch tokens
  std::vector<float> x_, xn_, q_, kc_, vc_, att_, gate_, up_, rope_cos_, rope_sin_;
  std::vector<float> logits_;
  int64_t n_logit_rows_ = 0;
  std::vector<int32_t> history_;
};

}  // namespace headkv
