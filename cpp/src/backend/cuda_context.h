// CUDA backend: one inference sequence on the GPU, a SequenceContext (model/sequence_context.h) as
// the CPU's Context is (eval, logits, reset, KV statistics and kept positions). Plain C++ header: the implementation
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

#include "model/sequence_context.h"

namespace headkv {

enum class CudaPrecision { Fast, Fp32 };


class CudaContext : public SequenceContext {
 public:
  // Throws Unsupported (no device, unsupported weight type or head_dim), InvalidArgument (bad
  // params, as Context) and OutOfMemory naming the bytes before anything is allocated.
  CudaContext(const Model& model, const ContextParams& params, CudaPrecision precision = CudaPrecision::Fast);
  ~CudaContext() override;

  const float* logits_all() const override;
  int32_t n_threads() const override { return 1; }
  uint64_t kv_bytes() const override;

  // Arena view (compressing methods, after the prompt); host copies of the device state.
  bool has_arena() const override;
  int n_layer() const;
  int n_head_kv() const;
  int64_t capacity(int l, int g) const override;
  int64_t used(int l, int g) const override;
  std::vector<int32_t> positions(int l, int g) const override;  // copied from the device
  uint64_t bytes_used() const override;
  // The K / V types of params (parse_kv_type) that this backend stores: f16, q8_0 and q4_0 (head_dim
  // a multiple of 32); throws InvalidArgument / Unsupported naming the type before any allocation.
  static std::pair<KVType, KVType> kv_types(const ContextParams& params, int head_dim);
  // Bytes of the full cache (method "full") that a context of `params` over `model` allocates: the
  // rings of its sliding-window layers at their size (admission checks of sequence groups).
  static uint64_t full_cache_bytes(const Model& model, const ContextParams& params);

  // With HEADKV_KEEP_SELECTION_SCORES set: the pooled window scores ([n_head_kv][P] per layer)
  // of the last compressed prompt; empty otherwise.
  std::vector<std::vector<float>> selection_scores() const override;

  // Peak bytes of device memory allocated by this context and the model's device weights.
  uint64_t peak_device_bytes() const override;

  // Frees the activation scratch of multi-token evals and the single-token decode graph (a
  // sequence of a group decodes through the group's batch); the next eval allocates them again.
  void release_scratch();
  // Device bytes of that scratch (a context holds it from construction until release_scratch).
  uint64_t scratch_bytes() const;

  struct Impl;
  Impl& impl() const { return *p_; }  // cuda/ internals (the batched step, backend/cuda_batch.h)

 private:
  void eval_checked(const int32_t* tokens, int64_t n, bool all_logits) override;
  void reset_cache() override;
  void drop_after(int32_t n_keep) override;
  int64_t ring_rows(int il) const override;
  uint64_t full_entry_bytes() const override { return entry_bytes(); }
  void save_kv(KVState& s) const override;
  void load_kv(const KVState& s) override;

  std::unique_ptr<Impl> p_;
};

}  // namespace headkv
