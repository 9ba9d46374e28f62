// Unit checks of the tokenizer building blocks that need no GGUF file: Unicode classes,
// UTF-8 decoding, pre-tokenizer splits, chat rendering.
#include <cstdio>
#include <string>
#include <vector>

#include "common/error.h"
#include "tokenize/chat.h"
#include "tokenize/pretokenize.h"
#include "tokenize/unicode.h"

using namespace headkv;

static int failures = 0;
#define CHECK(c)                                                   \
  do {                                                             \
    if (!(c)) {                                                    \
      std::fprintf(stderr, "%s:%d: CHECK(%s)\n", __FILE__, __LINE__, #c); \
      ++failures;                                                  \
    }                                                              \
  } while (0)

static std::vector<std::string> split(PreTokenizer k, const std::string& s) {
  std::vector<std::pair<size_t, size_t>> r;
  pretokenize(k, s, r);
  std::vector<std::string> out;
  for (auto& [a, b] : r) out.push_back(s.substr(a, b - a));
  return out;
}

int main() {
  using V = std::vector<std::string>;
  CHECK(unicode::flags('a') == unicode::kLetter);
  CHECK(unicode::flags('7') == unicode::kNumber);
  CHECK(unicode::flags(' ') == unicode::kWhitespace);
  CHECK(unicode::flags('!') == unicode::kPunct);
  CHECK(unicode::flags(0x65E5) == unicode::kLetter);   // 日
  CHECK(unicode::flags(0x00BD) == unicode::kNumber);   // ½
  CHECK(unicode::flags(0x3000) == unicode::kWhitespace);
  CHECK(unicode::flags(0x1F389) == 0);                 // 🎉 (So)
  size_t len;
  CHECK(unicode::decode_utf8("\xE6\x97\xA5", 0, &len) == 0x65E5 && len == 3);
  CHECK(unicode::decode_utf8("\xE6\x97", 0, &len) == unicode::kInvalid && len == 1);

  CHECK((split(PreTokenizer::Gpt2, "I'm  here 123\n\nok") ==
         V{"I", "'m", " ", " here", " 123", "\n", "\n", "ok"}));
  CHECK((split(PreTokenizer::Llama3, "I'M  here 12345\n\n  ok!!\n") ==
         V{"I", "'M", " ", " here", " ", "123", "45", "\n\n", " ", " ok", "!!\n"}));
  CHECK((split(PreTokenizer::Qwen2, "a12") == V{"a", "1", "2"}));
  CHECK((split(PreTokenizer::SmolLM, "x  99%") == V{"x", "  ", "9", "9", "%"}));
  bool threw = false;
  try {
    pretokenizer_from_name("nope");
  } catch (const Error& e) {
    threw = e.kind() == ErrorKind::Unsupported;
  }
  CHECK(threw);

  const std::vector<std::pair<std::string, std::string>> msgs = {{"user", "Hi"}};
  CHECK(render_chat("{{'<|im_start|>' + m}}", msgs, true) ==
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  CHECK(render_chat("{{ bos_token }}<|start_header_id|>", msgs, false) ==
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>");
  CHECK(render_chat("{{ bos_token }}[INST]", msgs, true) == "<s>[INST] Hi [/INST]");
  threw = false;
  try {
    render_chat("{{ x }}", msgs, true);
  } catch (const Error& e) {
    threw = e.kind() == ErrorKind::Unsupported;
  }
  CHECK(threw);

  if (failures) std::fprintf(stderr, "%d failures\n", failures);
  else std::printf("test_tokenizer: ok\n");
  return failures ? 1 : 0;
}
