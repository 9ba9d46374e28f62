// The architecture table: what distinguishes the GGUF model families headkv runs. One entry per
// `general.architecture`; the loader (llama.cpp) reads metadata under the entry's key prefix and
// the optional tensors its flags name, and both backends run the block the flags describe:
//   RMSNorm -> Q, K, V (+ bias) -> (per-head q/k RMSNorm) -> RoPE (normal or NeoX pairs) ->
//   causal GQA attention -> output projection -> RMSNorm -> SwiGLU MLP.
#pragma once
#include <string>

namespace headkv {

struct ArchInfo {
  const char* name;       // general.architecture; metadata keys are "<name>.<key>"
  const char* examples;   // for messages
  bool qkv_bias;          // blk.N.attn_{q,k,v}.bias
  bool qk_norm;           // blk.N.attn_{q,k}_norm.weight: RMSNorm over each head's head_dim values
  bool rope_neox;         // RoPE rotates (x[i], x[i + rope_dim/2]) (GPT-NeoX); else adjacent pairs
};

// nullptr for an architecture headkv does not run.
const ArchInfo* find_arch(const std::string& name);
// "llama, qwen2, qwen3" (for messages).
std::string supported_archs();

}  // namespace headkv
