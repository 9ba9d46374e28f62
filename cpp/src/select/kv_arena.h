// Per-head ragged KV arena: one allocation per context, sized before prefill, holding for every
// (layer, KV head) a segment of `capacity` entries (kept prompt tokens + window + decode room).
// Segments are addressed through CSR offsets; entries are appended in place (no copying of old
// entries, ever). Each entry is a RoPE'd key, a value (head_dim elements each, of the arena's K / V
// element type) and its position.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace headkv {

// Element type of stored keys / values (the CPU KV cache: full cache and arena). f16 is IEEE half
// (common/fp16.h), converted on store and read directly by attention; f32 is kept for reference.
enum class KVType { F32, F16 };
// "f16" | "f32" (llama.cpp's names). Throws Unsupported for llama.cpp cache types not built yet
// (q8_0, q4_0, ...) and InvalidArgument for anything else; `which` names the option in the message.
KVType parse_kv_type(const std::string& name, const char* which);
inline uint64_t kv_type_size(KVType t) { return t == KVType::F16 ? 2 : 4; }
const char* kv_type_name(KVType t);
// Writes n fp32 values to dst as elements of type t.
void store_kv_row(KVType t, const float* x, int64_t n, void* dst);

class KVArena {
 public:
  KVArena() = default;
  // capacity[l * n_head_kv + g]; throws OutOfMemory (naming the bytes) when the arena cannot be
  // allocated and InvalidArgument for negative capacities.
  KVArena(int n_layer, int n_head_kv, int head_dim, const std::vector<int64_t>& capacity, KVType type_k,
          KVType type_v);

  int n_layer() const { return n_layer_; }
  int n_head_kv() const { return n_head_kv_; }
  int head_dim() const { return head_dim_; }
  int64_t capacity(int l, int g) const { return offsets_[seg(l, g) + 1] - offsets_[seg(l, g)]; }
  int64_t used(int l, int g) const { return used_[seg(l, g)]; }
  KVType type_k() const { return type_k_; }
  KVType type_v() const { return type_v_; }
  // Segment (l, g)'s keys / values: head_dim elements of type_k() / type_v() per entry.
  const void* k(int l, int g) const { return &k_[(size_t)offsets_[seg(l, g)] * head_dim_ * kv_type_size(type_k_)]; }
  const void* v(int l, int g) const { return &v_[(size_t)offsets_[seg(l, g)] * head_dim_ * kv_type_size(type_v_)]; }
  const int32_t* pos(int l, int g) const { return &pos_[(size_t)offsets_[seg(l, g)]]; }

  // Appends one entry to segment (l, g), converting the fp32 key / value to the element types; throws
  // ContextFull when the segment is full.
  void append(int l, int g, int32_t position, const float* key, const float* value);
  // Appends n entries already in the stored types (a loaded state's rows); throws ContextFull when
  // they do not fit the segment.
  void append_rows(int l, int g, int64_t n, const int32_t* positions, const void* keys, const void* values);
  void clear();  // forget every entry (capacities stay)
  // Forgets the last k entries of every segment (decoded tokens rolled back together); throws
  // InvalidArgument when a segment holds fewer.
  void drop_last(int64_t k);
  // Re-splits layer l's span among its heads (Ada-KV decides the split at selection time). Only
  // while the layer's segments are empty, and the layer's total must not change; nothing moves.
  void resize_layer(int l, const std::vector<int64_t>& capacity);

  uint64_t bytes() const;           // bytes allocated (keys + values + positions)
  uint64_t bytes_used() const;      // bytes of the entries written so far
  uint64_t entry_bytes() const { return entry_bytes(head_dim_, type_k_, type_v_); }
  static uint64_t entry_bytes(int head_dim, KVType type_k, KVType type_v) {
    return (uint64_t)head_dim * (kv_type_size(type_k) + kv_type_size(type_v)) + sizeof(int32_t);
  }

 private:
  size_t seg(int l, int g) const { return (size_t)l * n_head_kv_ + g; }
  int n_layer_ = 0, n_head_kv_ = 0, head_dim_ = 0;
  std::vector<int64_t> offsets_;  // CSR, n_layer * n_head_kv + 1
  std::vector<int64_t> used_;
  KVType type_k_ = KVType::F16, type_v_ = KVType::F16;
  std::vector<uint8_t> k_, v_;  // raw element storage
  std::vector<int32_t> pos_;
};

}  // namespace headkv
