// Several sequences over one Model, decoded together (continuous batching). Each sequence is a
// Session of its own (full cache, or compressed per head as a single context compresses it); a
// sequence joins after its prompt was evaluated alone and leaves when removed, between steps.
// step() appends one token to each named sequence in one batched forward: on the CPU
// Context::decode_batch over one thread pool; on the GPU (device "cuda" / "cuda-fp32") a CudaBatch,
// whose one activation scratch serves every step (a sequence's own scratch is freed once its
// prompt has run).
//
// Admission: the sequences' KV bytes together stay within kv_limit (0: no limit). A sequence whose
// KV would not fit is refused with OutOfMemory before its prefill runs (a full cache's bytes are
// known from n_ctx; a compressed prompt's arena from its budget plan), and nothing of it is kept.
// On the GPU the device's free memory bounds it as well: the batch's scratch for one more row and
// the new sequence's cache and prefill buffers are checked before they are allocated.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/session.h"

namespace headkv {

class CudaBatch;

// One batched decode step over Sessions of one Model on one device (the Python BatchDecoder's
// steps over sibling models): CPU sessions through Context::decode_batch (sharing one thread
// pool), GPU sessions through a CudaBatch made at the first GPU step (its scratch kept between
// steps). Checks as those (typed errors naming ids[i] or the index, nothing changed on error).
class SessionBatch {
 public:
  SessionBatch();
  ~SessionBatch();
  // counts: tokens per session (Context::decode_batch's; CPU sessions only, Unsupported on the GPU).
  void step(const std::vector<Session*>& seqs, const int32_t* tokens, const int64_t* ids = nullptr,
            const int64_t* counts = nullptr);

 private:
  std::unique_ptr<CudaBatch> gpu_;
};

class SequenceGroup {
 public:
  // params: every sequence's context (n_ctx, n_batch, KV method); params.n_threads sizes the one
  // pool (CPU). device: "cpu", "cuda" or "cuda-fp32" (Unsupported without the CUDA backend or a
  // device, or for an architecture the batched GPU step does not run; InvalidArgument otherwise).
  SequenceGroup(const Model& model, const ContextParams& params, uint64_t kv_limit = 0, const std::string& device = "cpu");
  ~SequenceGroup();

  // Adds sequence `id` and evaluates its prompt alone. InvalidArgument: id in use, empty prompt,
  // token outside the vocabulary; ContextFull: the prompt does not fit; OutOfMemory: its KV would
  // pass kv_limit. On error nothing is added and the other sequences are unchanged.
  void add(int64_t id, const int32_t* prompt, int64_t n);
  // InvalidArgument for an unknown id.
  void remove(int64_t id);
  // Appends tokens[i] to sequence ids[i] for every i, in one batched step. Unknown or repeated ids,
  // tokens outside the vocabulary and full sequences fail (InvalidArgument / ContextFull) before any
  // sequence changes. counts (optional): sequence ids[i] takes counts[i] (1 to n_batch) consecutive
  // tokens of `tokens` (a prompt's next chunk riding with the others' decode tokens; its logits are
  // its last token's); CPU only, Unsupported on the GPU for a count other than 1.
  void step(const int64_t* ids, const int32_t* tokens, int64_t n, const int64_t* counts = nullptr);

  // The last logits of a sequence (n_vocab floats); InvalidArgument for an unknown id.
  const float* logits(int64_t id) const;
  Session& sequence(int64_t id) const;
  std::vector<int64_t> ids() const;
  int64_t size() const { return (int64_t)seqs_.size(); }
  uint64_t kv_bytes() const;  // all sequences together
  uint64_t kv_limit() const { return kv_limit_; }
  const Model& model() const { return model_; }
  const std::string& device() const { return device_; }
  // Device bytes of the GPU batch's activation scratch (0 on the CPU).
  uint64_t scratch_bytes() const;

 private:
  const Model& model_;
  ContextParams params_;
  uint64_t kv_limit_;
  std::string device_;
  std::unique_ptr<CudaBatch> batch_;  // GPU devices
  std::map<int64_t, std::unique_ptr<Session>> seqs_;
};

}  // namespace headkv
