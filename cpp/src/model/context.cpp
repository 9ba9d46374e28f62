#include "model/context.h"

#include <algorithm>
#include <limits>
#include <new>
#include <thread>

#include "common/alloc.h"
#include "common/error.h"
#include "model/context_checks.h"

namespace headkv {

namespace {

// Tokens per forward chunk of a context of n_ctx positions (its activation scratch and, for
// sliding-window layers, its full cache's rings).
int64_t chunk_tokens(const ContextParams& p, int64_t n_ctx) { return std::min<int64_t>(p.n_batch ? p.n_batch : 512, n_ctx); }

// Allocates a float buffer after checking the size against the memory available (common/alloc.h):
// too large → OutOfMemory naming the requested and available bytes.
void alloc(std::vector<float>& v, uint64_t n, const char* what) { checked_assign(v, n, what); }

}  // namespace

Context::Context(const Model& model, const ContextParams& p)
    : SequenceContext(model, p, &Context::kv_types), pool_owner_(cpu_thread_pool(p)), pool_(*pool_owner_) {
  n_batch_ = (int32_t)chunk_tokens(p, n_ctx_);
  if (!compressing()) {
    // Full cache: an arena of n_ctx rows per (layer, KV head) with implicit positions (position p at row
    // p); a sliding-window layer's heads are rings of n_swa + n_batch rows where that is fewer
    // (position p at row p % rows), enough for a chunk and the window before it.
    std::vector<int64_t> cap;
    std::vector<uint8_t> ring;
    for (int64_t rows : full_cache_rows(hp_, n_ctx_, n_batch_)) {
      cap.insert(cap.end(), hp_.n_head_kv, rows);
      ring.insert(ring.end(), hp_.n_head_kv, rows < n_ctx_);
    }
    arena_ = std::make_unique<KVArena>(hp_.n_layer, hp_.n_head_kv, hp_.head_dim, cap, type_k_, type_v_, ring, false,
                                       "the KV cache for n_ctx=" + std::to_string(n_ctx_));
  }
  const uint64_t B = (uint64_t)n_batch_;
  {  // scratch for one chunk, all buffers together
    const uint64_t d = std::max<int64_t>(hp_.n_embd, (int64_t)hp_.n_head * hp_.head_dim);
    const uint64_t per_tok = hp_.n_embd + d + 2ull * hp_.n_head * hp_.head_dim + 2ull * hp_.n_head_kv * hp_.head_dim +
                             2ull * hp_.n_ff;
    check_alloc(checked_mul(checked_mul(B, per_tok, "activations"), sizeof(float), "activations"),
                "activations for n_batch=" + std::to_string(n_batch_));
  }
  alloc(x_, B * hp_.n_embd, "activations");
  alloc(xn_, B * std::max<int64_t>(hp_.n_embd, (int64_t)hp_.n_head * hp_.head_dim), "activations");
  alloc(q_, B * hp_.n_head * hp_.head_dim, "activations");
  alloc(kc_, B * hp_.n_head_kv * hp_.head_dim, "activations");
  alloc(vc_, B * hp_.n_head_kv * hp_.head_dim, "activations");
  alloc(att_, B * hp_.n_head * hp_.head_dim, "activations");
  alloc(gate_, B * hp_.n_ff, "activations");
  alloc(up_, B * hp_.n_ff, "activations");
}

uint64_t Context::full_cache_bytes(const Model& model, const ContextParams& p) {
  const LlamaHParams& hp = model.hparams();
  const int64_t n_ctx = context_size(p, hp);
  const auto [tk, tv] = kv_types(p, hp.head_dim);
  return headkv::full_cache_bytes(hp, n_ctx, chunk_tokens(p, n_ctx), tk, tv, false);
}

std::pair<KVType, KVType> Context::kv_types(const ContextParams& p, int head_dim) {
  const KVType tk = parse_kv_type(p.kv.type_k, "KV cache type (K)"), tv = parse_kv_type(p.kv.type_v, "KV cache type (V)");
  check_kv_row(tk, head_dim, "KV cache type (K)");
  check_kv_row(tv, head_dim, "KV cache type (V)");
  return {tk, tv};
}

void Context::reset_cache() {
  probe_n_ = 0;
  n_embd_rows_ = 0;
  if (compressing())
    arena_.reset();  // sized by the next prompt's plan
  else
    arena_->clear();
}

void Context::drop_after(int32_t n_keep) {
  if (arena_) arena_->drop_last(n_past_ - n_keep);
  n_embd_rows_ = 0;
  probe_n_ = 0;
}

void Context::set_attention_probe(bool on) {
  if (on && compressing())
    fail(ErrorKind::InvalidArgument, "the attention probe needs the full KV cache (method 'full'), not '" + kv_.method + "'");
  probe_on_ = on;
  probe_n_ = 0;
  if (!on) std::vector<float>().swap(probe_);
}

void Context::set_embeddings(bool on) {
  if (on && compressing())
    fail(ErrorKind::InvalidArgument, "embeddings need the full KV cache (method 'full'), not '" + kv_.method + "'");
  embd_on_ = on;
  n_embd_rows_ = 0;
  if (!on) std::vector<float>().swap(embd_);
}

uint64_t Context::kv_bytes() const { return arena_ ? arena_->bytes() : 0; }

Context::KVRows Context::kv_rows(int il, int g) const {
  if (il < 0 || il >= hp_.n_layer || g < 0 || g >= hp_.n_head_kv)
    fail(ErrorKind::InvalidArgument, "kv_rows: no layer " + std::to_string(il) + ", KV head " + std::to_string(g));
  // rows 0.. of the segment (a sliding-window layer's ring holds its last positions, position p at row p % rows)
  if (arena_) return {arena_->k(il, g), arena_->v(il, g), arena_->used(il, g)};
  return {nullptr, nullptr, 0};
}

uint64_t Context::full_entry_bytes() const {
  return kv_row_bytes(type_k_, hp_.head_dim) + kv_row_bytes(type_v_, hp_.head_dim);
}

std::vector<int32_t> Context::positions(int l, int g) const {
  if (!has_arena()) fail(ErrorKind::InvalidArgument, "positions: no compressed arena");
  return std::vector<int32_t>(arena_->pos(l, g), arena_->pos(l, g) + arena_->used(l, g));
}

void Context::eval_checked(const int32_t* tokens, int64_t n, bool all_logits) {
  const uint64_t rows = all_logits ? (uint64_t)n : 1;
  if (logits_.size() < rows * hp_.n_vocab)
    alloc(logits_, checked_mul(rows, (uint64_t)hp_.n_vocab, "logits"),
          all_logits ? "logits for every token" : "logits");
  if (!has_arena() && compressing()) {
    if (n_past_ != 0) fail(ErrorKind::Internal, "compressed context without an arena after the prompt");
    try {
      prefill_compressed(tokens, n, all_logits);
    } catch (...) {  // never leave a half-built arena behind
      arena_.reset();
      plan_.reset();
      throw;
    }
    history_.insert(history_.end(), tokens, tokens + n);
    n_past_ = n_prompt_ = (int32_t)n;
    n_logit_rows_ = (int64_t)rows;
    return;
  }
  if (embd_on_ && embd_.size() < (uint64_t)n * hp_.n_embd)
    alloc(embd_, checked_mul((uint64_t)n, (uint64_t)hp_.n_embd, "embeddings"), "embeddings");
  for (int64_t off = 0; off < n; off += n_batch_) {
    const int64_t T = std::min<int64_t>(n_batch_, n - off);
    const bool last = off + T == n;
    float* out = all_logits ? logits_.data() + (size_t)off * hp_.n_vocab : (last ? logits_.data() : nullptr);
    forward(tokens + off, T, all_logits, out, embd_on_ ? embd_.data() + (size_t)off * hp_.n_embd : nullptr);
    history_.insert(history_.end(), tokens + off, tokens + off + T);
    n_past_ += (int32_t)T;
  }
  n_logit_rows_ = (int64_t)rows;
  n_embd_rows_ = embd_on_ ? n : 0;
}

}  // namespace headkv
