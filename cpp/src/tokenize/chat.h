// Native chat prompt rendering for the CLI: recognises a tokenizer.chat_template by its marker
// tokens and renders ChatML (SmolLM2, Qwen), Llama 3, Mistral [INST] or Gemma prompts. Python renders
// templates with jinja2 instead.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace headkv {

enum class ChatFormat { ChatML, Llama3, Mistral, Gemma };

// Gemma's chat template (Google's, for text): what a gemma2 / gemma3 GGUF without a
// tokenizer.chat_template is given, as llama.cpp falls back to its built-in gemma format.
extern const char* const kGemmaChatTemplate;

// Throws Error(Unsupported) when the template is not one of the known formats.
ChatFormat detect_chat_format(const std::string& chat_template);

// messages: (role, content) pairs, role in {system, user, assistant}. Special tokens appear as
// text (e.g. "<|im_start|>"); tokenize the result with special parsing on and add_bos=false.
std::string render_chat(const std::string& chat_template,
                        const std::vector<std::pair<std::string, std::string>>& messages,
                        bool add_generation_prompt);

}  // namespace headkv
