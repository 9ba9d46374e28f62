// Several sequences over one Model and one thread pool, decoded together (continuous batching on
// the CPU backend). Each sequence is a Session of its own (full cache, or compressed per head as a
// single context compresses it); a sequence joins after its prompt was evaluated alone and leaves
// when removed, between steps. step() appends one token to each named sequence in one batched
// forward (Context::decode_batch).
//
// Admission: the sequences' KV bytes together stay within kv_limit (0: no limit). A sequence whose
// KV would not fit is refused with OutOfMemory before its prefill runs (a full cache's bytes are
// known from n_ctx; a compressed prompt's arena from its budget plan), and nothing of it is kept.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/session.h"

namespace headkv {

class SequenceGroup {
 public:
  // params: every sequence's context (n_ctx, n_batch, KV method); params.n_threads sizes the one
  // pool. device must be "cpu" (Unsupported otherwise).
  SequenceGroup(const Model& model, const ContextParams& params, uint64_t kv_limit = 0, const std::string& device = "cpu");

  // Adds sequence `id` and evaluates its prompt alone. InvalidArgument: id in use, empty prompt,
  // token outside the vocabulary; ContextFull: the prompt does not fit; OutOfMemory: its KV would
  // pass kv_limit. On error nothing is added and the other sequences are unchanged.
  void add(int64_t id, const int32_t* prompt, int64_t n);
  // InvalidArgument for an unknown id.
  void remove(int64_t id);
  // Appends tokens[i] to sequence ids[i] for every i, in one batched step. Unknown or repeated ids,
  // tokens outside the vocabulary and full sequences fail (InvalidArgument / ContextFull) before any
  // sequence changes.
  void step(const int64_t* ids, const int32_t* tokens, int64_t n);

  // The last logits of a sequence (n_vocab floats); InvalidArgument for an unknown id.
  const float* logits(int64_t id) const;
  Session& sequence(int64_t id) const;
  std::vector<int64_t> ids() const;
  int64_t size() const { return (int64_t)seqs_.size(); }
  uint64_t kv_bytes() const;  // all sequences together
  uint64_t kv_limit() const { return kv_limit_; }
  const Model& model() const { return model_; }

 private:
  const Model& model_;
  ContextParams params_;
  uint64_t kv_limit_;
  std::map<int64_t, std::unique_ptr<Session>> seqs_;
};

}  // namespace headkv
