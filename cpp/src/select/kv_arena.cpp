#include "select/kv_arena.h"

#include <algorithm>
#include <limits>
#include <new>
#include <string>

#include "common/alloc.h"
#include "common/error.h"
#include "common/simd.h"

namespace headkv {

KVArena::KVArena(int n_layer, int n_head_kv, int head_dim, const std::vector<int64_t>& capacity, KVType type_k,
                 KVType type_v, const std::vector<uint8_t>& ring, bool store_positions, const std::string& what_)
    : n_layer_(n_layer), n_head_kv_(n_head_kv), head_dim_(head_dim), type_k_(type_k), type_v_(type_v),
      store_pos_(store_positions) {
  check_kv_row(type_k, head_dim, "KV cache type (K)");
  check_kv_row(type_v, head_dim, "KV cache type (V)");
  if (n_layer <= 0 || n_head_kv <= 0 || head_dim <= 0 || capacity.size() != (size_t)n_layer * n_head_kv)
    fail(ErrorKind::InvalidArgument, "KV arena: capacities must be given for every (layer, KV head)");
  if (!ring.empty() && ring.size() != capacity.size())
    fail(ErrorKind::InvalidArgument, "KV arena: ring flags must be given for every (layer, KV head)");
  offsets_.assign(capacity.size() + 1, 0);
  for (size_t i = 0; i < capacity.size(); ++i) {
    if (capacity[i] < 0) fail(ErrorKind::InvalidArgument, "KV arena: negative capacity");
    if (capacity[i] > std::numeric_limits<int64_t>::max() / 2 - offsets_[i])
      fail(ErrorKind::OutOfMemory, "KV arena: total capacity overflows");
    offsets_[i + 1] = offsets_[i] + capacity[i];
  }
  const uint64_t entries = (uint64_t)offsets_.back();
  const std::string what = what_ + " (" + std::to_string(entries) + " entries)";
  const uint64_t need = checked_mul(entries, entry_bytes(), what);
  check_alloc(need, what);
  try {
    k_.resize((size_t)(entries * kv_row_bytes(type_k, head_dim)));
    v_.resize((size_t)(entries * kv_row_bytes(type_v, head_dim)));
    if (store_pos_) pos_.resize((size_t)entries);
  } catch (const std::bad_alloc&) {
    k_ = {};
    v_ = {};
    pos_ = {};
    fail(ErrorKind::OutOfMemory, "cannot allocate " + what_ + ": " + std::to_string(need) + " bytes requested, " +
                                     std::to_string(available_memory_bytes()) + " bytes available");
  }
  used_.assign(capacity.size(), 0);
  ring_ = ring;
}

void KVArena::append(int l, int g, int32_t position, const float* key, const float* value) {
  const size_t s = seg(l, g);
  const int64_t cap = offsets_[s + 1] - offsets_[s];
  int64_t row = used_[s];
  if (ring(l, g)) {
    if (position < used_[s] || cap == 0)
      fail(ErrorKind::Internal, "KV ring (layer " + std::to_string(l) + ", head " + std::to_string(g) +
                                    "): position " + std::to_string(position) + " appended out of order");
    row = position % cap;
  } else if (used_[s] >= cap) {
    fail(ErrorKind::ContextFull, "KV head (layer " + std::to_string(l) + ", head " + std::to_string(g) +
                                     ") is full: its segment holds " + std::to_string(cap) + " entries");
  }
  const size_t at = (size_t)(offsets_[s] + row);
  store_kv_row(type_k_, key, head_dim_, &k_[at * kv_row_bytes(type_k_, head_dim_)]);
  store_kv_row(type_v_, value, head_dim_, &v_[at * kv_row_bytes(type_v_, head_dim_)]);
  if (store_pos_) pos_[at] = position;
  used_[s] = ring(l, g) ? (int64_t)position + 1 : used_[s] + 1;
}

void KVArena::append_rows(int l, int g, int64_t n, const int32_t* positions, const void* keys, const void* values) {
  const size_t s = seg(l, g);
  if (ring(l, g)) fail(ErrorKind::Internal, "KV arena: append_rows on a ring");
  if (n < 0 || used_[s] + n > offsets_[s + 1] - offsets_[s])
    fail(ErrorKind::ContextFull, "KV head (layer " + std::to_string(l) + ", head " + std::to_string(g) + ") cannot take " +
                                     std::to_string(n) + " more entries");
  const size_t at = (size_t)(offsets_[s] + used_[s]);
  const size_t rk = kv_row_bytes(type_k_, head_dim_), rv = kv_row_bytes(type_v_, head_dim_);
  std::copy_n(static_cast<const uint8_t*>(keys), (size_t)n * rk, &k_[at * rk]);
  std::copy_n(static_cast<const uint8_t*>(values), (size_t)n * rv, &v_[at * rv]);
  if (store_pos_) std::copy_n(positions, n, &pos_[at]);
  used_[s] += n;
}

void KVArena::put_rows(int l, int g, int64_t first, int64_t n, const void* keys, const void* values) {
  const size_t s = seg(l, g);
  const int64_t cap = offsets_[s + 1] - offsets_[s];
  if (store_pos_ || first < 0 || n < 0 || (!ring(l, g) && first + n > cap) || (ring(l, g) && cap == 0 && n > 0))
    fail(ErrorKind::ContextFull, "KV head (layer " + std::to_string(l) + ", head " + std::to_string(g) + ") cannot take positions " +
                                     std::to_string(first) + ".." + std::to_string(first + n - 1));
  const size_t rk = kv_row_bytes(type_k_, head_dim_), rv = kv_row_bytes(type_v_, head_dim_);
  for (int64_t j = ring(l, g) ? std::max<int64_t>(0, n - cap) : 0; j < n; ++j) {
    const size_t at = (size_t)(offsets_[s] + (ring(l, g) ? (first + j) % cap : first + j));
    std::copy_n(static_cast<const uint8_t*>(keys) + (size_t)j * rk, rk, &k_[at * rk]);
    std::copy_n(static_cast<const uint8_t*>(values) + (size_t)j * rv, rv, &v_[at * rv]);
  }
  used_[s] = first + n;
}

void KVArena::resize_layer(int l, const std::vector<int64_t>& capacity) {
  if (l < 0 || l >= n_layer_ || capacity.size() != (size_t)n_head_kv_)
    fail(ErrorKind::InvalidArgument, "KV arena: resize_layer needs one capacity per KV head");
  int64_t total = 0;
  for (int g = 0; g < n_head_kv_; ++g) {
    if (used_[seg(l, g)] != 0) fail(ErrorKind::InvalidArgument, "KV arena: resize_layer on a non-empty layer");
    if (capacity[g] < 0) fail(ErrorKind::InvalidArgument, "KV arena: negative capacity");
    total += capacity[g];
  }
  const size_t s0 = seg(l, 0);
  if (total != offsets_[s0 + n_head_kv_] - offsets_[s0])
    fail(ErrorKind::InvalidArgument, "KV arena: resize_layer must keep the layer's total");
  for (int g = 0; g + 1 < n_head_kv_; ++g) offsets_[s0 + g + 1] = offsets_[s0 + g] + capacity[g];
}

void KVArena::clear() { std::fill(used_.begin(), used_.end(), 0); }

void KVArena::drop_last(int64_t k) {
  for (int64_t u : used_)
    if (k < 0 || u < k) fail(ErrorKind::InvalidArgument, "cannot drop " + std::to_string(k) + " entries from a KV segment of " + std::to_string(u));
  for (int64_t& u : used_) u -= k;
}

uint64_t KVArena::bytes() const { return (uint64_t)(offsets_.empty() ? 0 : offsets_.back()) * entry_bytes(); }

uint64_t KVArena::bytes_used() const {
  uint64_t n = 0;
  for (int l = 0; l < n_layer_; ++l)
    for (int g = 0; g < n_head_kv_; ++g) n += (uint64_t)used(l, g);
  return n * entry_bytes();
}

}  // namespace headkv
