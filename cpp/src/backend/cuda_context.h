// CUDA backend: one inference sequence on the GPU with the same public surface as Context
// (eval, logits, reset, KV statistics and kept positions). Plain C++ header: the implementation
// lives in cuda/ and is compiled only when the CUDA backend is built (HEADKV_WITH_CUDA).
//
// Numerics. Activations, the residual stream, norms, softmax and every accumulation are fp32.
// The KV cache (full cache and per-head arena) is stored in f16 on the GPU (the default), or as
// llama.cpp's q8_0 / q4_0 blocks (type_k / type_v); attention reads the blocks directly. Prefill GEMMs run
// through cuBLAS on dequantized weights: precision Fast = fp16 operands, fp32 accumulate (tensor
// cores); precision Fp32 = fp32 operands, fp32 pedantic (no TF32), i.e. the CPU backend's
// arithmetic up to summation order. Decode (few tokens) uses quantized matrix-vector kernels that
// read each weight once and multiply in fp32. Selection (window attention, pooling, top-k) runs on
// the GPU from the layer's fp32 keys, so kept positions match the CPU backend in Fp32 mode except
// for exact near-ties (see tests/test_cuda.py).
#pragma once
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "model/context.h"

namespace headkv {

enum class CudaPrecision { Fast, Fp32 };


class CudaContext {
 public:
  // Throws Unsupported (no device, unsupported weight type or head_dim), InvalidArgument (bad
  // params, as Context) and OutOfMemory naming the bytes before anything is allocated.
  CudaContext(const Model& model, const ContextParams& params, CudaPrecision precision = CudaPrecision::Fast);
  ~CudaContext();
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;

  void eval(const int32_t* tokens, int64_t n, bool all_logits = false);
  void reset();
  void truncate(int32_t n_keep);  // as Context::truncate
  bool can_truncate(int32_t n_keep) const;  // as Context::can_truncate (the sliding-window rings)
  int32_t n_prompt() const;
  void set_max_new_tokens(int32_t n);
  KVState save_state() const;       // as Context::save_state (K/V rows of this context's types)
  void load_state(const KVState& s);  // as Context::load_state

  const float* logits() const;
  const float* logits_all() const;
  int64_t n_logit_rows() const;

  const Model& model() const;
  int32_t n_ctx() const;
  int32_t n_past() const;
  const std::vector<int32_t>& history() const;
  uint64_t kv_bytes() const;
  uint64_t full_kv_bytes() const;
  uint64_t prefill_peak_kv_bytes() const;
  const KVConfig& kv_config() const;
  KVType type_k() const;
  KVType type_v() const;
  bool compressing() const;
  const BudgetPlan* plan() const;

  // Arena view (compressing methods, after the prompt); host copies of the device state.
  bool has_arena() const;
  int n_layer() const;
  int n_head_kv() const;
  int64_t capacity(int l, int g) const;
  int64_t used(int l, int g) const;
  std::vector<int32_t> positions(int l, int g) const;  // copied from the device
  uint64_t bytes_used() const;
  // Bytes of an arena entry: a K row, a V row (kv_row_bytes of their types) and a position.
  static uint64_t entry_bytes(int head_dim, KVType type_k, KVType type_v) {
    return KVArena::entry_bytes(head_dim, type_k, type_v);
  }
  // The K / V types of params (parse_kv_type) that this backend stores: f16, q8_0 and q4_0 (head_dim
  // a multiple of 32); throws InvalidArgument / Unsupported naming the type before any allocation.
  static std::pair<KVType, KVType> kv_types(const ContextParams& params, int head_dim);

  // With HEADKV_KEEP_SELECTION_SCORES set: the pooled window scores ([n_head_kv][P] per layer)
  // of the last compressed prompt; empty otherwise.
  const std::vector<std::vector<float>>& selection_scores() const;

  // Peak bytes of device memory allocated by this context and the model's device weights.
  uint64_t peak_device_bytes() const;

  // Bytes a compressed prompt's arena may take at most (0: no limit); a prompt whose arena would be
  // larger fails with OutOfMemory before anything of it is allocated (sequence-group admission).
  void set_kv_limit(uint64_t bytes);
  // Frees the activation scratch of multi-token evals and the single-token decode graph (a
  // sequence of a group decodes through the group's batch); the next eval allocates them again.
  void release_scratch();
  // Device bytes of that scratch (a context holds it from construction until release_scratch).
  uint64_t scratch_bytes() const;

  struct Impl;
  Impl& impl() const { return *p_; }  // cuda/ internals (the batched step, backend/cuda_batch.h)

 private:
  std::unique_ptr<Impl> p_;
};

}  // namespace headkv
