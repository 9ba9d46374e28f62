#include "model/arch.h"

namespace headkv {

namespace {
// llama: the converters permute Q/K rows so that adjacent-pair rotation equals HF's rotate_half.
// qwen2 / qwen3 are stored unpermuted and rotated NeoX-style (llama.cpp's LLAMA_ROPE_TYPE_NEOX).
// phi3: fused Q/K/V and gate/up tensors (read as row ranges of them), NeoX RoPE; a sliding window in
// the file is not applied (as llama.cpp and transformers' GGUF loader do); LongRoPE factor tensors
// (Phi-3 128k files) pick long or short frequencies by the context size (model/llama.h).
// llama: a file with attention.sliding_window (Mistral 7B v0.1 style) slides in every layer.
// gemma2: every other layer (the even ones) slides over attention.sliding_window positions with the
// global RoPE; attention scores and the final logits are soft-capped.
// gemma3: five sliding-window layers (window from attention.sliding_window, RoPE base 10000) to
// each global one (the file's freq_base), as llama.cpp and transformers configure it.
constexpr ArchInfo kArchs[] = {
    //  name     examples                       bias   qknorm neox   escale postn  gelu   swa  swa base softcap fused
    {"llama", "Llama 2/3, Mistral, SmolLM2", false, false, false, false, false, false, -1, 0.0f, false, false},
    {"qwen2", "Qwen2, Qwen2.5", true, false, true, false, false, false, 0, 0.0f, false, false},
    {"qwen3", "Qwen3", false, true, true, false, false, false, 0, 0.0f, false, false},
    {"phi3", "Phi-3", false, false, true, false, false, false, 0, 0.0f, false, true},
    {"gemma2", "Gemma 2", false, false, true, true, true, true, 2, 0.0f, true, false},
    {"gemma3", "Gemma 3", false, true, true, true, true, true, 6, 10000.0f, false, false},
};
}  // namespace

const ArchInfo* find_arch(const std::string& name) {
  for (const ArchInfo& a : kArchs)
    if (name == a.name) return &a;
  return nullptr;
}

std::string supported_archs() {
  std::string s;
  for (const ArchInfo& a : kArchs) s += std::string(s.empty() ? "" : ", ") + a.name + " (" + a.examples + ")";
  return s;
}

}  // namespace headkv
