// Per-head ragged KV arena: one allocation per context, sized before prefill, holding for every
// (layer, KV head) a segment of `capacity` entries (kept prompt tokens + window + decode room).
// Segments are addressed through CSR offsets; entries are appended in place (no copying of old
// entries, ever). Each entry is a RoPE'd key, a value (head_dim floats each) and its position.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace headkv {

class KVArena {
 public:
  KVArena() = default;
  // capacity[l * n_head_kv + g]; throws OutOfMemory (naming the bytes) when the arena cannot be
  // allocated and InvalidArgument for negative capacities.
  KVArena(int n_layer, int n_head_kv, int head_dim, const std::vector<int64_t>& capacity);

  int n_layer() const { return n_layer_; }
  int n_head_kv() const { return n_head_kv_; }
  int head_dim() const { return head_dim_; }
  int64_t capacity(int l, int g) const { return offsets_[seg(l, g) + 1] - offsets_[seg(l, g)]; }
  int64_t used(int l, int g) const { return used_[seg(l, g)]; }
  const float* k(int l, int g) const { return &k_[(size_t)offsets_[seg(l, g)] * head_dim_]; }
  const float* v(int l, int g) const { return &v_[(size_t)offsets_[seg(l, g)] * head_dim_]; }
  const int32_t* pos(int l, int g) const { return &pos_[(size_t)offsets_[seg(l, g)]]; }

  // Appends one entry to segment (l, g); throws ContextFull when the segment is full.
  void append(int l, int g, int32_t position, const float* key, const float* value);
  void clear();  // forget every entry (capacities stay)
  // Forgets the last k entries of every segment (decoded tokens rolled back together); throws
  // InvalidArgument when a segment holds fewer.
  void drop_last(int64_t k);
  // Re-splits layer l's span among its heads (Ada-KV decides the split at selection time). Only
  // while the layer's segments are empty, and the layer's total must not change; nothing moves.
  void resize_layer(int l, const std::vector<int64_t>& capacity);

  uint64_t bytes() const;           // bytes allocated (keys + values + positions)
  uint64_t bytes_used() const;      // bytes of the entries written so far
  static uint64_t entry_bytes(int head_dim) { return 2ull * head_dim * sizeof(float) + sizeof(int32_t); }

 private:
  size_t seg(int l, int g) const { return (size_t)l * n_head_kv_ + g; }
  int n_layer_ = 0, n_head_kv_ = 0, head_dim_ = 0;
  std::vector<int64_t> offsets_;  // CSR, n_layer * n_head_kv + 1
  std::vector<int64_t> used_;
  std::vector<float> k_, v_;
  std::vector<int32_t> pos_;
};

}  // namespace headkv
