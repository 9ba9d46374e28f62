// Per-head ragged KV arena: one allocation per context, holding for every (layer, KV head) a segment
// of `capacity` entries: a compressed context's kept prompt tokens + window + decode room (sized
// before prefill), or the full cache's n_ctx positions. Segments are addressed through CSR offsets;
// entries are appended in place (no copying of old entries, ever). Each entry is a RoPE'd key, a
// value (head_dim elements each, of the arena's K / V element type) and, unless the arena keeps
// positions implicit (the full cache: position p at row p, or p % capacity in a ring), its position.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace headkv {

// Element type of stored keys / values (the CPU KV cache: full cache and arena). f16 is IEEE half
// (common/fp16.h), converted on store and read directly by attention; f32 is kept for reference.
// q8_0 / q4_0 are llama.cpp's block layouts (ggml's block_q8_0 / block_q4_0), 32 values a block:
//   q8_0: d (f16), qs[32] int8;              value i = d * qs[i]                          34 bytes
//   q4_0: d (f16), qs[16] nibbles;           value i = d * (nibble i - 8), elements 0..15 in the
//         low nibbles of qs[0..15], 16..31 in the high nibbles                            18 bytes
// A row (one head's head_dim values) is a whole number of blocks; attention reads the blocks directly.
enum class KVType { F32, F16, Q8_0, Q4_0 };
// "f16" | "f32" | "q8_0" | "q4_0" (llama.cpp's names). Throws Unsupported for llama.cpp cache types
// not built (q4_1, q5_0, ...) and InvalidArgument for anything else; `which` names the option.
KVType parse_kv_type(const std::string& name, const char* which);
const char* kv_type_name(KVType t);
// (Also called by the CUDA backend's kernels: cuda/kv_quant.cuh.)
#ifdef __CUDACC__
#define HEADKV_KV_HD __host__ __device__
#else
#define HEADKV_KV_HD
#endif
HEADKV_KV_HD constexpr bool kv_type_blocked(KVType t) { return t == KVType::Q8_0 || t == KVType::Q4_0; }
// Bytes of a row of n elements of type t (n a multiple of 32 for the block types).
HEADKV_KV_HD constexpr uint64_t kv_row_bytes(KVType t, int64_t n) {
  switch (t) {
    case KVType::F32: return 4ull * n;
    case KVType::F16: return 2ull * n;
    case KVType::Q8_0: return (uint64_t)n / 32 * 34;
    case KVType::Q4_0: return (uint64_t)n / 32 * 18;
  }
  return 0;
}
// Throws Unsupported when rows of head_dim elements cannot be stored as t (block types need a
// multiple of 32); called before any KV storage is allocated.
void check_kv_row(KVType t, int head_dim, const char* which);
// Writes n fp32 values to dst as a row of type t (block types: llama.cpp's reference quantization,
// quantize_row_q8_0_ref / quantize_row_q4_0_ref).
void store_kv_row(KVType t, const float* x, int64_t n, void* dst);
// Reads a row of type t back as n fp32 values (tests and references; attention reads rows in place).
void load_kv_row(KVType t, const void* src, int64_t n, float* y);

class KVArena {
 public:
  KVArena() = default;
  // capacity[l * n_head_kv + g]; throws OutOfMemory (naming the bytes and `what`) when the arena cannot
  // be allocated, InvalidArgument for negative capacities and Unsupported for a type head_dim cannot take.
  // ring (optional, one flag per segment): the segment is a ring holding the last `capacity` positions
  // of a run that starts at position 0, position p at row p % capacity (a sliding-window layer's full
  // cache); its entries must be appended in increasing position order. store_positions false: no
  // position array (pos() is nullptr; positions are implicit, as in the full cache).
  KVArena(int n_layer, int n_head_kv, int head_dim, const std::vector<int64_t>& capacity, KVType type_k,
          KVType type_v, const std::vector<uint8_t>& ring = {}, bool store_positions = true,
          const std::string& what = "the KV arena");

  int n_layer() const { return n_layer_; }
  int n_head_kv() const { return n_head_kv_; }
  int head_dim() const { return head_dim_; }
  int64_t capacity(int l, int g) const { return offsets_[seg(l, g) + 1] - offsets_[seg(l, g)]; }
  // Entries held (a ring: at most its capacity).
  int64_t used(int l, int g) const { return std::min(used_[seg(l, g)], capacity(l, g)); }
  bool ring(int l, int g) const { return !ring_.empty() && ring_[seg(l, g)]; }
  KVType type_k() const { return type_k_; }
  KVType type_v() const { return type_v_; }
  // Segment (l, g)'s keys / values: one row of head_dim elements of type_k() / type_v() per entry.
  const void* k(int l, int g) const { return &k_[(size_t)offsets_[seg(l, g)] * kv_row_bytes(type_k_, head_dim_)]; }
  const void* v(int l, int g) const { return &v_[(size_t)offsets_[seg(l, g)] * kv_row_bytes(type_v_, head_dim_)]; }
  const int32_t* pos(int l, int g) const { return !store_pos_ ? nullptr : &pos_[(size_t)offsets_[seg(l, g)]]; }
  // Row j of segment (l, g)'s keys / values.
  const void* k_row(int l, int g, int64_t j) const {
    return static_cast<const uint8_t*>(k(l, g)) + (size_t)j * kv_row_bytes(type_k_, head_dim_);
  }
  const void* v_row(int l, int g, int64_t j) const {
    return static_cast<const uint8_t*>(v(l, g)) + (size_t)j * kv_row_bytes(type_v_, head_dim_);
  }

  // Appends one entry to segment (l, g), converting the fp32 key / value to the element types; throws
  // ContextFull when the segment is full (a ring never is; it overwrites its oldest row).
  void append(int l, int g, int32_t position, const float* key, const float* value);
  // Appends n entries already in the stored types (a loaded state's rows); throws ContextFull when
  // they do not fit the segment.
  void append_rows(int l, int g, int64_t n, const int32_t* positions, const void* keys, const void* values);
  // Implicit positions (the full cache): writes n rows already in the stored types for positions
  // first .. first + n - 1 (row = position, in a ring position % capacity); the segment then holds
  // positions up to first + n. Throws ContextFull when they do not fit a segment that is no ring.
  void put_rows(int l, int g, int64_t first, int64_t n, const void* keys, const void* values);
  void clear();  // forget every entry (capacities stay)
  // Forgets the last k entries of every segment (decoded tokens rolled back together); throws
  // InvalidArgument when a segment holds fewer.
  void drop_last(int64_t k);
  // Re-splits layer l's span among its heads (Ada-KV decides the split at selection time). Only
  // while the layer's segments are empty, and the layer's total must not change; nothing moves.
  void resize_layer(int l, const std::vector<int64_t>& capacity);

  uint64_t bytes() const;           // bytes allocated (keys + values + positions)
  uint64_t bytes_used() const;      // bytes of the entries written so far
  // Bytes of one entry as stored (without the position when positions are implicit).
  uint64_t entry_bytes() const { return entry_bytes(head_dim_, type_k_, type_v_) - (store_pos_ ? 0 : sizeof(int32_t)); }
  static uint64_t entry_bytes(int head_dim, KVType type_k, KVType type_v) {
    return kv_row_bytes(type_k, head_dim) + kv_row_bytes(type_v, head_dim) + sizeof(int32_t);
  }

 private:
  size_t seg(int l, int g) const { return (size_t)l * n_head_kv_ + g; }
  int n_layer_ = 0, n_head_kv_ = 0, head_dim_ = 0;
  std::vector<int64_t> offsets_;  // CSR, n_layer * n_head_kv + 1
  std::vector<int64_t> used_;   // entries appended; a ring: its last position + 1
  std::vector<uint8_t> ring_;   // per segment, or empty (no rings)
  KVType type_k_ = KVType::F16, type_v_ = KVType::F16;
  std::vector<uint8_t> k_, v_;  // raw element storage
  std::vector<int32_t> pos_;
  bool store_pos_ = true;
};

}  // namespace headkv
