#include "tokenize/chat.h"

#include "common/error.h"

namespace headkv {

namespace {

bool contains(const std::string& s, const char* needle) { return s.find(needle) != std::string::npos; }

std::string trim(const std::string& s) {
  const char* ws = " \t\n\r\v\f";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

// A literal default system prompt the template inserts when the conversation has none
// (SmolLM2: "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, ...<|im_end|>").
std::string chatml_default_system(const std::string& tpl) {
  for (const char* head : {"<|im_start|>system\n", "<|im_start|>system\\n"}) {
    size_t p = tpl.find(head);
    if (p == std::string::npos) continue;
    p += std::string(head).size();
    const size_t e = tpl.find("<|im_end|>", p);
    if (e == std::string::npos) continue;
    std::string text = tpl.substr(p, e - p);
    if (text.find_first_of("'\"{}+") != std::string::npos) continue;  // not a literal
    std::string out;
    for (size_t i = 0; i < text.size(); ++i) {
      if (text[i] == '\\' && i + 1 < text.size() && text[i + 1] == 'n') {
        out += '\n';
        ++i;
      } else {
        out += text[i];
      }
    }
    return out;
  }
  return "";
}

using Messages = std::vector<std::pair<std::string, std::string>>;

std::string render_chatml(const std::string& tpl, const Messages& msgs, bool gen) {
  std::string out;
  const std::string def = chatml_default_system(tpl);
  if (!def.empty() && !msgs.empty() && msgs[0].first != "system")
    out += "<|im_start|>system\n" + def + "<|im_end|>\n";
  for (const auto& [role, content] : msgs)
    out += "<|im_start|>" + role + "\n" + content + "<|im_end|>\n";
  if (gen) out += "<|im_start|>assistant\n";
  return out;
}

std::string render_llama3(const std::string& tpl, const Messages& msgs, bool gen) {
  std::string out;
  if (contains(tpl, "bos_token") || contains(tpl, "<|begin_of_text|>")) out += "<|begin_of_text|>";
  for (const auto& [role, content] : msgs)
    out += "<|start_header_id|>" + role + "<|end_header_id|>\n\n" + trim(content) + "<|eot_id|>";
  if (gen) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

std::string render_mistral(const std::string& tpl, const Messages& msgs, bool) {
  std::string out;
  if (contains(tpl, "bos_token") || contains(tpl, "<s>")) out += "<s>";
  std::string system;
  for (const auto& [role, content] : msgs) {
    if (role == "system") {
      system += (system.empty() ? "" : "\n\n") + content;
    } else if (role == "user") {
      out += "[INST] " + (system.empty() ? content : system + "\n\n" + content) + " [/INST]";
      system.clear();
    } else if (role == "assistant") {
      out += content + "</s>";
    } else {
      fail(ErrorKind::InvalidArgument, "Mistral chat format: unsupported role '" + role + "'");
    }
  }
  return out;
}

// <start_of_turn>user / model turns; a system message is prefixed to the first user turn.
std::string render_gemma(const std::string& tpl, const Messages& msgs, bool gen) {
  std::string out;
  if (contains(tpl, "bos_token") || contains(tpl, "<bos>")) out += "<bos>";
  std::string system;
  size_t i = 0;
  if (!msgs.empty() && msgs[0].first == "system") system = msgs[i++].second + "\n\n";
  for (bool first = true; i < msgs.size(); ++i, first = false) {
    const auto& [role, content] = msgs[i];
    if (role != "user" && role != "assistant")
      fail(ErrorKind::InvalidArgument, "Gemma chat format: unsupported role '" + role + "' here");
    out += "<start_of_turn>" + std::string(role == "assistant" ? "model" : "user") + "\n" + (first ? system : "") +
           trim(content) + "<end_of_turn>\n";
  }
  if (gen) out += "<start_of_turn>model\n";
  return out;
}

}  // namespace

const char* const kGemmaChatTemplate =
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<start_of_turn>model\n' }}"
    "{%- endif -%}";

ChatFormat detect_chat_format(const std::string& tpl) {
  if (contains(tpl, "<|im_start|>")) return ChatFormat::ChatML;
  if (contains(tpl, "<|start_header_id|>")) return ChatFormat::Llama3;
  if (contains(tpl, "[INST]")) return ChatFormat::Mistral;
  if (contains(tpl, "<start_of_turn>")) return ChatFormat::Gemma;
  fail(ErrorKind::Unsupported,
       "unrecognised chat template (supported natively: ChatML, Llama 3, Mistral [INST], Gemma); "
       "use the Python API, which renders any template with jinja2");
}

std::string render_chat(const std::string& tpl, const Messages& msgs, bool add_generation_prompt) {
  switch (detect_chat_format(tpl)) {
    case ChatFormat::ChatML: return render_chatml(tpl, msgs, add_generation_prompt);
    case ChatFormat::Llama3: return render_llama3(tpl, msgs, add_generation_prompt);
    case ChatFormat::Mistral: return render_mistral(tpl, msgs, add_generation_prompt);
    case ChatFormat::Gemma: return render_gemma(tpl, msgs, add_generation_prompt);
  }
  fail(ErrorKind::Internal, "unreachable chat format");
}

}  // namespace headkv
