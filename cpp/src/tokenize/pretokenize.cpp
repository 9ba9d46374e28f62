#include "tokenize/pretokenize.h"

#include "common/error.h"
#include "tokenize/unicode.h"

namespace headkv {

namespace {

using unicode::kLetter;
using unicode::kNumber;
using unicode::kWhitespace;

// Matcher over code points [lo, hi) of a decoded text; `hi` acts as end of text.
struct Span {
  const uint32_t* cp;
  const uint8_t* cls;
  size_t hi;

  bool is(size_t i, uint8_t f) const { return i < hi && (cls[i] & f); }
  bool is_crlf(size_t i) const { return i < hi && (cp[i] == '\r' || cp[i] == '\n'); }
  bool is_char(size_t i, uint32_t c) const { return i < hi && cp[i] == c; }
  size_t run(size_t i, uint8_t f) const {
    while (i < hi && (cls[i] & f)) ++i;
    return i;
  }
  // [^\s\p{L}\p{N}]+ starting at i; returns i when none.
  size_t other_run(size_t i) const {
    while (i < hi && !(cls[i] & (kLetter | kNumber | kWhitespace))) ++i;
    return i;
  }
  // Case folding for (?i:...): ASCII, plus U+017F LATIN SMALL LETTER LONG S which folds to 's'
  // (the only non-ASCII code point folding onto a letter of the contractions).
  static uint32_t lower(uint32_t c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c == 0x17F ? 's' : c; }
  // 's|'t|'re|'ve|'m|'ll|'d, optionally ASCII case-insensitive. Returns match end or i.
  size_t contraction(size_t i, bool icase) const {
    if (!is_char(i, '\'') || i + 1 >= hi) return i;
    auto c = [&](size_t k) { return k < hi ? (icase ? lower(cp[k]) : cp[k]) : 0u; };
    const uint32_t a = c(i + 1), b = c(i + 2);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    return i;
  }
  // \s+(?!\S) then \s+ (the two trailing alternatives shared by all patterns); i is whitespace.
  size_t space_tail(size_t i) const {
    const size_t e = run(i, kWhitespace);
    if (e == hi || e - i < 2) return e;
    return e - 1;
  }

  size_t gpt2(size_t i) const {
    size_t e = contraction(i, false);
    if (e > i) return e;
    const size_t j = is_char(i, ' ') ? i + 1 : i;
    if (is(j, kLetter)) return run(j, kLetter);
    if (is(j, kNumber)) return run(j, kNumber);
    e = other_run(j);
    if (e > j) return e;
    return space_tail(i);
  }

  size_t llama3(size_t i, size_t max_digits) const {
    size_t e = contraction(i, true);
    if (e > i) return e;
    if (is(i, kLetter)) return run(i, kLetter);
    if (!is_crlf(i) && !is(i, kNumber) && is(i + 1, kLetter)) return run(i + 1, kLetter);
    if (is(i, kNumber)) {
      e = i;
      while (e - i < max_digits && is(e, kNumber)) ++e;
      return e;
    }
    const size_t j = is_char(i, ' ') ? i + 1 : i;
    e = other_run(j);
    if (e > j) {
      while (is_crlf(e)) ++e;
      return e;
    }
    // \s*[\r\n]+ : whitespace run up to and including its last CR/LF.
    const size_t w = run(i, kWhitespace);
    for (size_t k = w; k > i; --k)
      if (is_crlf(k - 1)) return k;
    return space_tail(i);
  }
};

void split_range(PreTokenizer kind, const unicode::Decoded& d, size_t lo, size_t hi,
                 std::vector<std::pair<size_t, size_t>>& out) {
  Span s{d.cps.data(), d.cls.data(), hi};
  size_t i = lo;
  while (i < hi) {
    size_t e;
    switch (kind) {
      case PreTokenizer::Llama3: e = s.llama3(i, 3); break;
      case PreTokenizer::Qwen2: e = s.llama3(i, 1); break;
      default: e = s.gpt2(i); break;
    }
    if (e <= i) e = i + 1;  // defensive: always progress
    out.emplace_back(d.offs[i], d.offs[e]);
    i = e;
  }
}

}  // namespace

PreTokenizer pretokenizer_from_name(const std::string& name) {
  if (name == "default" || name == "gpt2" || name == "gpt-2" || name == "phi-2")
    return PreTokenizer::Gpt2;
  if (name == "llama-bpe" || name == "llama3" || name == "llama-v3" || name == "falcon3" ||
      name == "pixtral")
    return PreTokenizer::Llama3;
  if (name == "qwen2" || name == "deepseek-r1-qwen") return PreTokenizer::Qwen2;
  if (name == "smollm") return PreTokenizer::SmolLM;
  fail(ErrorKind::Unsupported,
       "unsupported BPE pre-tokenizer tokenizer.ggml.pre='" + name +
           "' (supported: default, gpt2, llama-bpe/llama3, qwen2, smollm)");
}

void pretokenize(PreTokenizer kind, std::string_view text,
                 std::vector<std::pair<size_t, size_t>>& out) {
  out.clear();
  unicode::Decoded d;
  unicode::decode_all(text, d);
  const size_t n = d.cps.size();
  if (kind != PreTokenizer::SmolLM) {
    split_range(kind, d, 0, n, out);
    return;
  }
  // \p{N} isolates every digit; the GPT-2 pattern then runs within each remaining stretch.
  size_t i = 0;
  while (i < n) {
    if (d.cls[i] & kNumber) {
      out.emplace_back(d.offs[i], d.offs[i + 1]);
      ++i;
      continue;
    }
    size_t e = i;
    while (e < n && !(d.cls[e] & kNumber)) ++e;
    split_range(PreTokenizer::Gpt2, d, i, e, out);
    i = e;
  }
}

}  // namespace headkv
