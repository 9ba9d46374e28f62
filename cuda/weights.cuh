// The model's weights on the GPU, uploaded once from the mmap'd GGUF in their file formats
// (Q4_0 stays 4.5 bits per weight on the device). Shared by every CudaContext over one Model.
#pragma once
#include <memory>
#include <vector>

#include "device_buffer.cuh"
#include "kernels.cuh"
#include "model/llama.h"

namespace headkv::cu {

struct DevLayer {
  DW wq, wk, wv, wo, gate, up, down;
  const float* attn_norm = nullptr;
  const float* ffn_norm = nullptr;
  const float* bq = nullptr;  // Q/K/V biases (qwen2), null when the architecture has none
  const float* bk = nullptr;
  const float* bv = nullptr;
  const float* q_norm = nullptr;  // per-head q/k RMSNorm weights (qwen3), null otherwise
  const float* k_norm = nullptr;
  const float* post_attn_norm = nullptr;  // post-attention / post-FFN RMSNorm weights (gemma), or null
  const float* post_ffn_norm = nullptr;
};

struct DevModel {
  DBuf<uint8_t> blob;  // every weight, 256-byte aligned
  std::vector<DevLayer> layers;
  DW tok_embd, output;
  const float* output_norm = nullptr;
  const float* rope_inv_freq = nullptr;
  const float* rope_inv_freq_long = nullptr;  // LongRoPE files only (Model::rope_inv_freq_long)
  const float* rope_inv_freq_swa = nullptr;  // the sliding-window layers' own RoPE base, or null
  uint64_t bytes = 0;
  int64_t max_weight_elems = 0;  // largest layer matrix (rows * cols)

  // Uploads (or reuses the last upload of) the model's weights. Throws Unsupported for weight
  // types without CUDA kernels and OutOfMemory (naming the bytes) before allocating.
  static std::shared_ptr<DevModel> get(const Model& m);
};

}  // namespace headkv::cu
