// One inference sequence on a chosen device: the CPU Context or the CUDA backend's CudaContext,
// behind one interface (what the C API, the Python binding and the tools use).
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

  void eval(const int32_t* tokens, int64_t n, bool all_logits = false);
  void reset();
  void truncate(int32_t n_keep);       // Context::truncate
  // Prefix reuse: rolls the context back to the longest prefix of tokens[0..n) it holds that it can
  // keep (at most n - 1 tokens, so the last one is evaluated for its logits; a compressed context
  // keeps all of its compressed prompt or nothing) and returns how many tokens it kept; resets when
  // none. The caller then evaluates tokens[kept..n).
  int32_t reuse_prefix(const int32_t* tokens, int64_t n);
  int32_t n_prompt() const;            // tokens of the compressed prompt (0: full cache / none yet)
  void set_max_new_tokens(int32_t n);  // decode room of the next compressed prompt
  std::vector<uint8_t> save_state() const;         // Context::save_state, serialized (model/state.h)
  void load_state(const uint8_t* data, size_t n);  // InvalidArgument for a foreign or malformed state
  const float* logits() const;
  const float* logits_all() const;
  int64_t n_logit_rows() const;
  const Model& model() const;
  int32_t n_ctx() const;
  int32_t n_past() const;
  int32_t n_threads() const;
  uint64_t kv_bytes() const;
  const std::vector<int32_t>& history() const;
  const KVConfig& kv_config() const;
  bool compressing() const;
  const BudgetPlan* plan() const;
  uint64_t full_kv_bytes() const;
  uint64_t prefill_peak_kv_bytes() const;
  uint64_t entry_bytes() const;        // bytes of one arena entry (K + V + position)
  uint64_t peak_device_bytes() const;  // 0 on the CPU
  const std::string& device() const { return device_; }

  // Arena (compressing methods, after the prompt): false / empty otherwise.
  bool has_arena() const;
  int64_t capacity(int l, int g) const;
  int64_t used(int l, int g) const;
  std::vector<int32_t> positions(int l, int g) const;
  uint64_t bytes_used() const;
  std::vector<std::vector<float>> selection_scores() const;  // GPU debug (see cuda_context.h)

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

  Context* cpu() { return cpu_.get(); }
  CudaContext* gpu() { return gpu_.get(); }  // null on the CPU

 private:
  std::string device_;
  std::unique_ptr<Context> cpu_;
  std::unique_ptr<CudaContext> gpu_;
};

}  // namespace headkv
