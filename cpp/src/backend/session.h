// One inference sequence on a chosen device: the CPU Context or the CUDA backend's CudaContext,
// behind their common interface (model/sequence_context.h), with what the C API, the Python binding
// and the tools add: device choice, the budget in bytes, prefix reuse and serialized states.
//   device: "cpu", "cuda" (fp16 tensor-core prefill GEMMs) or "cuda-fp32" (fp32 GEMMs, the CPU
//   backend's arithmetic up to summation order).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/context.h"

namespace headkv {

class CudaContext;

bool cuda_backend_built();
int cuda_devices();  // CUDA devices visible (0 without the backend, a driver or a device)
void cuda_reset_peak();  // peak_device_bytes() restarts from the bytes allocated now
// The current device's free and total bytes and those headkv's device buffers hold (0 without a
// usable device).
struct CudaMemory {
  uint64_t free = 0, total = 0, held = 0;
};
CudaMemory cuda_memory();

class Session {
 public:
  Session(const Model& model, const ContextParams& params, const std::string& device = "cpu");
  ~Session();

  // The sequence's interface (model/sequence_context.h), forwarded to the backend's context.
  void eval(const int32_t* tokens, int64_t n, bool all_logits = false) { seq_->eval(tokens, n, all_logits); }
  void reset() { seq_->reset(); }
  void truncate(int32_t n_keep) { seq_->truncate(n_keep); }
  // Prefix reuse: rolls the context back to the longest prefix of tokens[0..n) it holds that it can
  // keep (at most n - 1 tokens, so the last one is evaluated for its logits; a compressed context
  // keeps all of its compressed prompt or nothing) and returns how many tokens it kept; resets when
  // none. The caller then evaluates tokens[kept..n).
  int32_t reuse_prefix(const int32_t* tokens, int64_t n);
  int32_t n_prompt() const { return seq_->n_prompt(); }
  void set_max_new_tokens(int32_t n) { seq_->set_max_new_tokens(n); }
  std::vector<uint8_t> save_state() const;         // SequenceContext::save_state, serialized (model/state.h)
  void load_state(const uint8_t* data, size_t n);  // InvalidArgument for a foreign or malformed state
  const float* logits() const { return seq_->logits(); }
  const float* logits_all() const { return seq_->logits_all(); }
  int64_t n_logit_rows() const { return seq_->n_logit_rows(); }
  const Model& model() const { return seq_->model(); }
  int32_t n_ctx() const { return seq_->n_ctx(); }
  int32_t n_past() const { return seq_->n_past(); }
  int32_t n_threads() const { return seq_->n_threads(); }
  uint64_t kv_bytes() const { return seq_->kv_bytes(); }
  const std::vector<int32_t>& history() const { return seq_->history(); }
  const KVConfig& kv_config() const { return seq_->kv_config(); }
  bool compressing() const { return seq_->compressing(); }
  const BudgetPlan* plan() const { return seq_->plan(); }
  uint64_t full_kv_bytes() const { return seq_->full_kv_bytes(); }
  uint64_t prefill_peak_kv_bytes() const { return seq_->prefill_peak_kv_bytes(); }
  uint64_t entry_bytes() const { return seq_->entry_bytes(); }              // bytes of one arena entry (K + V + position)
  uint64_t peak_device_bytes() const { return seq_->peak_device_bytes(); }  // 0 on the CPU
  const std::string& device() const { return device_; }

  // Arena (compressing methods, after the prompt): false / empty otherwise.
  bool has_arena() const { return seq_->has_arena(); }
  int64_t capacity(int l, int g) const { return seq_->capacity(l, g); }
  int64_t used(int l, int g) const { return seq_->used(l, g); }
  std::vector<int32_t> positions(int l, int g) const { return seq_->positions(l, g); }
  uint64_t bytes_used() const { return seq_->bytes_used(); }
  std::vector<std::vector<float>> selection_scores() const { return seq_->selection_scores(); }  // GPU debug

  // Attention probe: CPU backend only (Unsupported on the GPU).
  void set_attention_probe(bool on);
  bool attention_probe() const { return cpu_ && cpu_->attention_probe(); }
  const float* probe() const { return cpu_ ? cpu_->probe() : nullptr; }
  int64_t probe_n() const { return cpu_ ? cpu_->probe_n() : 0; }

  // Embeddings (final-norm hidden states of every evaluated token): CPU backend only
  // (Unsupported on the GPU).
  void set_embeddings(bool on);
  const float* embeddings() const { return cpu_ ? cpu_->embeddings() : nullptr; }
  int64_t n_embd_rows() const { return cpu_ ? cpu_->n_embd_rows() : 0; }

  // The backend's context, for what only it offers (batched steps, the probe, embeddings, KV rows).
  Context* cpu() { return cpu_; }      // null on the GPU
  CudaContext* gpu() { return gpu_; }  // null on the CPU

 private:
  std::string device_;
  std::unique_ptr<SequenceContext> seq_;
  Context* cpu_ = nullptr;      // seq_ as the CPU context
  CudaContext* gpu_ = nullptr;  // seq_ as the CUDA context
};

}  // namespace headkv
