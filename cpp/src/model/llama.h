// A decoder model of one of the architectures in model/arch.h (Llama 2/3, Mistral, SmolLM2, Qwen2,
// Qwen3): hyper-parameters and weights bound to the mmap'd GGUF. Weights stay in their quantized file formats; only small vectors (norms, RoPE
// frequencies) are converted to fp32 at load.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "model/arch.h"
#include "tokenize/tokenizer.h"

namespace headkv {

struct LlamaHParams {
  const ArchInfo* arch = nullptr;  // the architecture's table entry (never null after load)
  int32_t n_vocab = 0;
  int32_t n_ctx_train = 0;
  int32_t n_embd = 0;
  int32_t n_layer = 0;
  int32_t n_head = 0;
  int32_t n_head_kv = 0;
  int32_t head_dim = 0;   // n_embd / n_head unless given
  int32_t rope_dim = 0;   // dimensions rotated (<= head_dim)
  int32_t n_ff = 0;
  float rope_theta = 10000.0f;
  float rope_scale = 1.0f;  // linear position scaling (positions are divided by it)
  // LongRoPE (phi3 files with rope_factors_long/short): contexts longer than n_ctx_orig rotate with
  // the long factors, others with the short ones (llama.cpp's rule, by n_ctx); cos and sin are
  // multiplied by rope_mscale (rope.scaling.attn_factor) in every layer.
  int32_t n_ctx_orig = 0;
  float rope_mscale = 1.0f;
  float rms_eps = 1e-5f;
  float embd_scale = 1.0f;      // arch->embd_scale: sqrt(n_embd)
  float attn_scale = 0.0f;      // attention score scale (1/sqrt(head_dim) unless the architecture says)
  float attn_softcap = 0.0f;    // arch->softcaps: scores -> c * tanh(scores / c) (0: none)
  float final_softcap = 0.0f;   // likewise for the output logits
  int32_t n_swa = 0;            // sliding window of the local layers (0: none)
  std::vector<uint8_t> swa;     // [n_layer]: 1 for a sliding-window layer
  bool is_swa(int il) const { return n_swa > 0 && swa[(size_t)il]; }
  bool has_swa() const { return n_swa > 0; }
  // The first sliding-window (swa) or global (!swa) layer; -1 when there is none.
  int first_layer(bool swa) const {
    for (int il = 0; il < n_layer; ++il)
      if (is_swa(il) == swa) return il;
    return -1;
  }
};

// A 2-D weight matrix in its file format: `rows` rows of `cols` elements.
struct Weight {
  GGMLType type = GGMLType::F32;
  const uint8_t* data = nullptr;
  int64_t rows = 0, cols = 0;
  size_t row_bytes = 0;
};

struct LayerWeights {
  std::vector<float> attn_norm, ffn_norm;
  std::vector<float> bq, bk, bv;        // arch->qkv_bias: [n_head * head_dim], [n_head_kv * head_dim] x2
  std::vector<float> q_norm, k_norm;    // arch->qk_norm: [head_dim] each
  std::vector<float> post_attn_norm, post_ffn_norm;  // arch->post_norms: [n_embd] each
  Weight wq, wk, wv, wo, w_gate, w_up, w_down;
};

class Model {
 public:
  // Throws Error (Io/Format/Unsupported) with a clear message; never returns a half-built model.
  static std::unique_ptr<Model> load(const std::string& path);
  // Same, over an already parsed file (e.g. GGUFFile::from_memory; used by the fuzzers).
  static std::unique_ptr<Model> load(std::unique_ptr<GGUFFile> file);

  const LlamaHParams& hparams() const { return hp_; }
  const Tokenizer& tokenizer() const { return *tok_; }
  const GGUFFile& file() const { return *file_; }
  const std::string& chat_template() const { return chat_template_; }

  const Weight& tok_embd() const { return tok_embd_; }
  const Weight& output() const { return output_; }
  const std::vector<float>& output_norm() const { return output_norm_; }
  const std::vector<LayerWeights>& layers() const { return layers_; }
  // Inverse frequencies per rotated pair (rope_dim/2), llama3 scaling / rope_freqs / LongRoPE's
  // short factors applied.
  const std::vector<float>& rope_inv_freq() const { return rope_inv_freq_; }
  // LongRoPE's long-factor frequencies (empty for other files).
  const std::vector<float>& rope_inv_freq_long() const { return rope_inv_freq_long_; }
  // Layer il's RoPE frequencies (the sliding-window layers' own base where the architecture has one).
  // n_ctx: the context's size, which picks LongRoPE's long or short factors (others ignore it).
  const std::vector<float>& rope_inv_freq(int il, int64_t n_ctx) const {
    if (hp_.is_swa(il) && !rope_inv_freq_swa_.empty()) return rope_inv_freq_swa_;
    return !rope_inv_freq_long_.empty() && n_ctx > hp_.n_ctx_orig ? rope_inv_freq_long_ : rope_inv_freq_;
  }
  uint64_t weight_bytes() const { return weight_bytes_; }
  // Unique among the process's models: caches keyed on a model (the GPU's uploaded weights) use it,
  // not the address, which a later model (another file at the same path, say) can be given.
  uint64_t id() const { return id_; }

 private:
  Model();
  void load_hparams();
  std::string key(const char* k) const;  // "<architecture>.<k>"
  void load_weights();
  Weight weight(const std::string& name, int64_t cols, int64_t rows, bool required = true);
  std::vector<float> vec(const std::string& name, int64_t n);
  static Weight rows_of(const Weight& w, int64_t r0, int64_t n);  // rows r0 .. r0+n-1 of w

  std::unique_ptr<GGUFFile> file_;
  std::unique_ptr<Tokenizer> tok_;
  LlamaHParams hp_;
  Weight tok_embd_, output_;
  std::vector<float> output_norm_;
  std::vector<LayerWeights> layers_;
  std::vector<float> rope_inv_freq_, rope_inv_freq_swa_, rope_inv_freq_long_;
  std::string chat_template_;
  uint64_t weight_bytes_ = 0;
  uint64_t id_ = 0;
};

}  // namespace headkv
