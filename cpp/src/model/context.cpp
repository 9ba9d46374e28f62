#include "model/context.h"

#include <algorithm>
#include <limits>
#include <new>
#include <thread>

#include "common/error.h"

namespace headkv {

namespace {
int default_threads(int n) {
  if (n > 0) return n;
  const unsigned hc = std::thread::hardware_concurrency();
  return hc ? (int)hc : 1;
}

// Allocates a float buffer, turning failure into a typed error that names the size.
void alloc(std::vector<float>& v, uint64_t n, const char* what) {
  const uint64_t bytes = n * sizeof(float);
  if (n > std::numeric_limits<size_t>::max() / sizeof(float))
    fail(ErrorKind::OutOfMemory, std::string(what) + ": request too large");
  try {
    v.assign((size_t)n, 0.0f);
  } catch (const std::bad_alloc&) {
    fail(ErrorKind::OutOfMemory, std::string("cannot allocate ") + what + ": " + std::to_string(bytes) + " bytes requested");
  }
}
}  // namespace

Context::Context(const Model& model, const ContextParams& p)
    : model_(model), hp_(model.hparams()), pool_(default_threads(p.n_threads)) {
  if (p.n_ctx < 0 || p.n_batch < 0 || p.n_threads < 0)
    fail(ErrorKind::InvalidArgument, "n_ctx, n_batch and n_threads must be >= 0");
  if (p.n_threads > 1024) fail(ErrorKind::InvalidArgument, "n_threads " + std::to_string(p.n_threads) + " is too large");
  n_ctx_ = p.n_ctx ? p.n_ctx : hp_.n_ctx_train;
  n_batch_ = std::min<int32_t>(p.n_batch ? p.n_batch : 512, n_ctx_);
  // KV cache: 2 * layers * kv_heads * n_ctx * head_dim floats. Check before allocating.
  const uint64_t per_pos = 2ull * hp_.n_layer * hp_.n_head_kv * hp_.head_dim;
  const uint64_t kv_floats = per_pos * (uint64_t)n_ctx_;
  if (kv_floats / per_pos != (uint64_t)n_ctx_ || kv_floats > (1ull << 40))
    fail(ErrorKind::OutOfMemory, "KV cache for n_ctx=" + std::to_string(n_ctx_) + " is too large");
  alloc(k_, kv_floats / 2, "KV cache (keys)");
  alloc(v_, kv_floats / 2, "KV cache (values)");
  const uint64_t B = (uint64_t)n_batch_;
  alloc(x_, B * hp_.n_embd, "activations");
  alloc(xn_, B * std::max<int64_t>(hp_.n_embd, (int64_t)hp_.n_head * hp_.head_dim), "activations");
  alloc(q_, B * hp_.n_head * hp_.head_dim, "activations");
  alloc(kc_, B * hp_.n_head_kv * hp_.head_dim, "activations");
  alloc(vc_, B * hp_.n_head_kv * hp_.head_dim, "activations");
  alloc(att_, B * hp_.n_head * hp_.head_dim, "activations");
  alloc(gate_, B * hp_.n_ff, "activations");
  alloc(up_, B * hp_.n_ff, "activations");
  alloc(rope_cos_, B * (hp_.rope_dim / 2), "rope tables");
  alloc(rope_sin_, B * (hp_.rope_dim / 2), "rope tables");
}

const float* Context::logits() const {
  if (!n_logit_rows_) return nullptr;
  return logits_.data() + (size_t)(n_logit_rows_ - 1) * hp_.n_vocab;
}

void Context::eval(const int32_t* tokens, int64_t n, bool all_logits) {
  if (n <= 0) fail(ErrorKind::InvalidArgument, "eval needs at least one token");
  if (n > (int64_t)n_ctx_ - n_past_)
    fail(ErrorKind::ContextFull, "context is full: " + std::to_string(n_past_) + " tokens cached + " + std::to_string(n) +
                                     " new > n_ctx " + std::to_string(n_ctx_));
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= hp_.n_vocab)
      fail(ErrorKind::InvalidArgument, "token id " + std::to_string(tokens[i]) + " is outside the vocabulary [0, " +
                                           std::to_string(hp_.n_vocab) + ")");
  const uint64_t rows = all_logits ? (uint64_t)n : 1;
  if (logits_.size() < rows * hp_.n_vocab) alloc(logits_, rows * hp_.n_vocab, "logits");
  for (int64_t off = 0; off < n; off += n_batch_) {
    const int64_t T = std::min<int64_t>(n_batch_, n - off);
    const bool last = off + T == n;
    float* out = all_logits ? logits_.data() + (size_t)off * hp_.n_vocab : (last ? logits_.data() : nullptr);
    forward(tokens + off, T, all_logits, out);
    history_.insert(history_.end(), tokens + off, tokens + off + T);
    n_past_ += (int32_t)T;
  }
  n_logit_rows_ = (int64_t)rows;
}

}  // namespace headkv
