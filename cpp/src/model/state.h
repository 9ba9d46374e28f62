// A context's sequence state as host data: its tokens, last logits and KV entries (full cache or
// compressed per-head arena, with the budget plan). save_state / load_state of both backends write
// and read this one layout, so a state saved by one backend loads into the other where the cache
// types match (the llama.cpp state API's idea: llama_state_get_data / llama_state_set_data).
//
// Byte layout (little-endian): "HKVSTATE", u32 version, then the fields of KVState in order; vectors
// are a u64 count followed by their elements. deserialize_state checks every count against the
// bytes left and the model shape, so a truncated or foreign buffer fails with InvalidArgument.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "select/budget.h"
#include "select/kv_arena.h"

namespace headkv {

struct KVState {
  // Identity: what a receiving context must match.
  int32_t n_layer = 0, n_head_kv = 0, head_dim = 0, n_vocab = 0;
  std::string method;  // KVConfig::method
  KVType type_k = KVType::F16, type_v = KVType::F16;
  // Sequence.
  int32_t n_past = 0, n_prompt = 0;  // n_prompt: the compressed prompt's tokens (0: full cache)
  std::vector<int32_t> history;      // n_past tokens
  std::vector<float> logits;         // the last token's logits (n_vocab), or empty
  // KV. Segments are (layer, KV head) in order. Full cache: the segment's last used[s] positions
  // (n_past - used .. n_past - 1: all of them, or a sliding-window layer's ring), no capacities.
  // Arena: each segment's capacity, used entries and positions.
  bool arena = false;
  BudgetPlan plan;                   // arena only (n_layer / n_head_kv: the model shape above)
  std::vector<int64_t> capacity;     // arena only
  std::vector<int64_t> used;
  std::vector<int32_t> pos;          // arena only: the used entries' positions, segment by segment
  std::vector<uint8_t> k, v;         // the used entries' rows in their stored type, segment by segment
};


std::vector<uint8_t> serialize_state(const KVState& s);
// Throws InvalidArgument for a buffer that is not a complete state of this layout.
KVState deserialize_state(const uint8_t* data, size_t n);
// Checks that `s` can load into a context of this model shape, method and cache types (n_ctx:
// the full cache's positions; ignored for an arena). Throws InvalidArgument naming the mismatch.
void check_state(const KVState& s, int32_t n_layer, int32_t n_head_kv, int32_t head_dim, int32_t n_vocab,
                 const std::string& method, KVType type_k, KVType type_v, int32_t n_ctx);

}  // namespace headkv
