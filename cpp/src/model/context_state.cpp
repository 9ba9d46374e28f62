// Context::save_kv / load_kv: the CPU backend's side of model/state.h (SequenceContext::save_state /
// load_state).
#include <algorithm>
#include <cstring>

#include "common/alloc.h"
#include "common/error.h"
#include "model/context.h"

namespace headkv {

void Context::save_kv(KVState& s) const {
  const int L = hp_.n_layer, H = hp_.n_head_kv, hd = hp_.head_dim;
  const size_t rk = kv_row_bytes(type_k_, hd), rv = kv_row_bytes(type_v_, hd);
  // Entries per segment: the arena's used ones (the full cache: its last min(n_past, rows) positions,
  // every position except in a sliding-window layer's ring), saved in position order.
  uint64_t entries = 0;
  for (int l = 0; l < L; ++l)
    for (int g = 0; g < H; ++g) entries += (uint64_t)arena_->used(l, g);
  s.k.resize(entries * rk);
  s.v.resize(entries * rv);
  size_t e = 0;
  for (int l = 0; l < L; ++l)
    for (int g = 0; g < H; ++g) {
      const int64_t n = arena_->used(l, g);
      s.used.push_back(n);
      if (has_arena()) {
        s.capacity.push_back(arena_->capacity(l, g));
        s.pos.insert(s.pos.end(), arena_->pos(l, g), arena_->pos(l, g) + n);
      }
      if (arena_->ring(l, g)) {
        for (int64_t j = 0; j < n; ++j) {  // positions n_past - n .. n_past - 1 at rows pos % rows
          const int64_t row = (n_past_ - n + j) % arena_->capacity(l, g);
          std::memcpy(&s.k[(e + j) * rk], arena_->k_row(l, g, row), rk);
          std::memcpy(&s.v[(e + j) * rv], arena_->v_row(l, g, row), rv);
        }
      } else {
        std::memcpy(&s.k[e * rk], arena_->k(l, g), (size_t)n * rk);
        std::memcpy(&s.v[e * rv], arena_->v(l, g), (size_t)n * rv);
      }
      e += (size_t)n;
    }
}

void Context::load_kv(const KVState& s) {
  const int L = hp_.n_layer, H = hp_.n_head_kv, hd = hp_.head_dim;
  const size_t rk = kv_row_bytes(type_k_, hd), rv = kv_row_bytes(type_v_, hd);
  if (!s.arena)  // the full cache: every position, or in a ring at least the window before n_past
    for (int l = 0; l < L; ++l)
      for (int g = 0; g < H; ++g) {
        const int64_t n = s.used[(size_t)l * H + g];
        const int64_t need = hp_.is_swa(l) ? std::min<int64_t>(s.n_past, hp_.n_swa - 1) : s.n_past;
        if (n < need)
          fail(ErrorKind::InvalidArgument, "the state does not fit this context: layer " + std::to_string(l) + " holds " +
                                               std::to_string(n) + " of the " + std::to_string(need) + " positions it needs");
      }
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
  } else {  // entries in position order, the last of them at n_past - 1 (a ring keeps its last rows)
    size_t e = 0;
    for (int l = 0; l < L; ++l)
      for (int g = 0; g < H; ++g) {
        const int64_t n = s.used[(size_t)l * H + g];
        arena_->put_rows(l, g, s.n_past - n, n, &s.k[e * rk], &s.v[e * rv]);
        e += (size_t)n;
      }
  }
  if (!s.logits.empty()) {
    std::copy(s.logits.begin(), s.logits.end(), logits_.begin());
    n_logit_rows_ = 1;
  }
}

}  // namespace headkv
