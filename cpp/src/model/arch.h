// The architecture table: what distinguishes the GGUF model families headkv runs. One entry per
// `general.architecture`; the loader (llama.cpp) reads metadata under the entry's key prefix and
// the optional tensors its flags name, and the backends run the block the flags describe:
//   x = embedding (* sqrt(n_embd))
//   per layer: RMSNorm -> Q, K, V (+ bias) -> (per-head q/k RMSNorm) -> RoPE (normal or NeoX pairs;
//   local layers with their own base) -> causal GQA attention (local layers: the last
//   `sliding_window` positions) -> output projection (-> RMSNorm) -> + x;
//   RMSNorm -> SwiGLU or GeGLU MLP (-> RMSNorm) -> + x
//   final RMSNorm -> output.
// Norm weights are used as stored (llama.cpp's converters store Gemma's 1 + w).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace headkv {

struct ArchInfo {
  const char* name;       // general.architecture; metadata keys are "<name>.<key>"
  const char* examples;   // for messages
  bool qkv_bias;          // blk.N.attn_{q,k,v}.bias
  bool qk_norm;           // blk.N.attn_{q,k}_norm.weight: RMSNorm over each head's head_dim values
  bool rope_neox;         // RoPE rotates (x[i], x[i + rope_dim/2]) (GPT-NeoX); else adjacent pairs
  bool embd_scale;        // the embedding is multiplied by sqrt(n_embd)
  bool post_norms;        // blk.N.post_attention_norm / post_ffw_norm after attention / MLP
  bool gelu;              // GeGLU MLP (tanh-approximated GELU) instead of SwiGLU
  int swa_pattern;        // sliding-window layers: every layer but each swa_pattern-th; -1: every
                          // layer when the file gives attention.sliding_window (Mistral-style); 0: none
  float rope_base_swa;    // RoPE base of the sliding-window layers (0: the file's freq_base)
  bool softcaps;          // <name>.attn_logit_softcapping / final_logit_softcapping: c * tanh(x / c)
  bool fused;             // blk.N.attn_qkv (Q, K, V rows in order) and ffn_up holding gate then up rows
};

// nullptr for an architecture headkv does not run.
const ArchInfo* find_arch(const std::string& name);
// Whether layer il of an n_layer model slides (attends to the last n_swa positions only), given the
// file's attention.sliding_window n_swa (0: none).
inline bool layer_slides(const ArchInfo& a, int il, int64_t n_swa) {
  return n_swa > 0 && a.swa_pattern != 0 && (a.swa_pattern < 0 || (il + 1) % a.swa_pattern != 0);
}
// "llama, qwen2, qwen3" (for messages).
std::string supported_archs();

}  // namespace headkv
