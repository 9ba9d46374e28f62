// Pre-tokenizers of byte-level BPE vocabularies: hand-written matchers equivalent to the
// split regexes of GPT-2, Llama 3, Qwen2 and SmolLM2 (no std::regex).
#pragma once
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace headkv {

enum class PreTokenizer {
  Gpt2,    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  Llama3,  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
           //  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  Qwen2,   // as Llama3 but \p{N} (single digits)
  SmolLM,  // \p{N} split first (each digit alone), then Gpt2 within the rest
};

// Maps tokenizer.ggml.pre to a pre-tokenizer; throws Error(Unsupported) for unknown names.
PreTokenizer pretokenizer_from_name(const std::string& name);

// Splits `text` into byte ranges [first, second) covering it entirely, in order.
void pretokenize(PreTokenizer kind, std::string_view text,
                 std::vector<std::pair<size_t, size_t>>& out);

}  // namespace headkv
