// Context::save_state / load_state: the CPU backend's side of model/state.h.
#include <algorithm>
#include <cstring>

#include "common/alloc.h"
#include "common/error.h"
#include "model/context.h"

namespace headkv {

KVState Context::save_state() const {
  KVState s;
  s.n_layer = hp_.n_layer;
  s.n_head_kv = hp_.n_head_kv;
  s.head_dim = hp_.head_dim;
  s.n_vocab = hp_.n_vocab;
  s.method = kv_.method;
  s.type_k = type_k_;
  s.type_v = type_v_;
  s.n_past = n_past_;
  s.n_prompt = n_prompt();
  s.history = history_;
  if (const float* lg = logits()) s.logits.assign(lg, lg + hp_.n_vocab);
  const int L = hp_.n_layer, H = hp_.n_head_kv, hd = hp_.head_dim;
  const size_t rk = kv_row_bytes(type_k_, hd), rv = kv_row_bytes(type_v_, hd);
  s.arena = arena_ != nullptr;
  if (arena_) {
    s.window = plan_->window;
    s.plan_compressed = plan_->compressed;
    s.layer_pooled = plan_->layer_pooled;
    s.cap = plan_->cap;
  }
  uint64_t entries = 0;
  for (int l = 0; l < L; ++l)
    for (int g = 0; g < H; ++g) entries += arena_ ? (uint64_t)arena_->used(l, g) : (uint64_t)n_past_;
  s.k.resize(entries * rk);
  s.v.resize(entries * rv);
  size_t e = 0;
  for (int l = 0; l < L; ++l)
    for (int g = 0; g < H; ++g) {
      const int64_t n = arena_ ? arena_->used(l, g) : n_past_;
      s.used.push_back(n);
      if (arena_) {
        s.capacity.push_back(arena_->capacity(l, g));
        s.pos.insert(s.pos.end(), arena_->pos(l, g), arena_->pos(l, g) + n);
        std::memcpy(&s.k[e * rk], arena_->k(l, g), (size_t)n * rk);
        std::memcpy(&s.v[e * rv], arena_->v(l, g), (size_t)n * rv);
      } else if (n) {
        std::memcpy(&s.k[e * rk], const_cast<Context*>(this)->k_at(l, g, 0), (size_t)n * rk);
        std::memcpy(&s.v[e * rv], const_cast<Context*>(this)->v_at(l, g, 0), (size_t)n * rv);
      }
      e += (size_t)n;
    }
  return s;
}

void Context::load_state(const KVState& s) {
  check_state(s, hp_.n_layer, hp_.n_head_kv, hp_.head_dim, hp_.n_vocab, kv_.method, type_k_, type_v_, n_ctx_);
  const int L = hp_.n_layer, H = hp_.n_head_kv, hd = hp_.head_dim;
  const size_t rk = kv_row_bytes(type_k_, hd), rv = kv_row_bytes(type_v_, hd);
  // Everything that can fail (allocation) happens before the context changes.
  std::unique_ptr<KVArena> arena;
  if (s.arena) {
    arena = std::make_unique<KVArena>(L, H, hd, s.capacity, type_k_, type_v_);
    size_t e = 0;
    for (int l = 0; l < L; ++l)
      for (int g = 0; g < H; ++g) {
        const int64_t n = s.used[(size_t)l * H + g];
        arena->append_rows(l, g, n, &s.pos[e], &s.k[e * rk], &s.v[e * rv]);
        e += (size_t)n;
      }
  }
  if (!s.logits.empty() && logits_.size() < (size_t)hp_.n_vocab) checked_assign(logits_, (uint64_t)hp_.n_vocab, "logits");
  reset();
  if (s.arena) {
    arena_ = std::move(arena);
    BudgetPlan plan;
    plan.n_layer = L;
    plan.n_head_kv = H;
    plan.cap = s.cap;
    plan.window = s.window;
    plan.compressed = s.plan_compressed;
    plan.layer_pooled = s.layer_pooled;
    plan_ = std::move(plan);
    n_prompt_ = s.n_prompt;
  } else {
    for (int l = 0; l < L; ++l)
      for (int g = 0; g < H; ++g) {
        const size_t e = ((size_t)l * H + g) * (size_t)s.n_past;
        if (s.n_past) {
          std::memcpy(k_at(l, g, 0), &s.k[e * rk], (size_t)s.n_past * rk);
          std::memcpy(v_at(l, g, 0), &s.v[e * rv], (size_t)s.n_past * rv);
        }
      }
  }
  n_past_ = s.n_past;
  history_ = s.history;
  if (!s.logits.empty()) {
    std::copy(s.logits.begin(), s.logits.end(), logits_.begin());
    n_logit_rows_ = 1;
  }
}

}  // namespace headkv
