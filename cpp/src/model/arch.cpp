#include "model/arch.h"

namespace headkv {

namespace {
// llama: the converters permute Q/K rows so that adjacent-pair rotation equals HF's rotate_half.
// qwen2 / qwen3 are stored unpermuted and rotated NeoX-style (llama.cpp's LLAMA_ROPE_TYPE_NEOX).
constexpr ArchInfo kArchs[] = {
    {"llama", "Llama 2/3, Mistral, SmolLM2", false, false, false},
    {"qwen2", "Qwen2, Qwen2.5", true, false, true},
    {"qwen3", "Qwen3", false, true, true},
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
