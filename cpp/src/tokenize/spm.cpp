// SentencePiece-style vocabulary (tokenizer.ggml.model = llama): spaces become U+2581, an
// optional space prefix, score-driven pair merges (as SentencePiece BPE encoding), and byte
// fallback through <0xNN> tokens.
#include <algorithm>
#include <functional>

#include "common/error.h"
#include "gguf/gguf.h"
#include "tokenize/unicode.h"
#include "tokenize/vocab.h"

namespace headkv {

namespace {

const char kSpace[] = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

class SpmTokenizer final : public VocabTokenizer {
 public:
  explicit SpmTokenizer(const GGUFFile& f) {
    load_common(f, "llama");
    pre_ = "";
    if (f.has("tokenizer.ggml.scores")) {
      scores_ = f.get_f32_array("tokenizer.ggml.scores");
      if (scores_.size() != tokens_.size())
        fail(ErrorKind::Format, f.path() + ": tokenizer.ggml.scores has " +
                                    std::to_string(scores_.size()) + " entries, tokens has " +
                                    std::to_string(tokens_.size()));
    } else {
      scores_.assign(tokens_.size(), 0.0f);
    }
    for (auto& b : byte_id_) b = -1;
    pieces_.resize(tokens_.size());
    for (size_t id = 0; id < tokens_.size(); ++id) {
      const std::string& t = tokens_[id];
      if (types_[id] == kTokByte && t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' &&
          hex_digit(t[3]) >= 0 && hex_digit(t[4]) >= 0) {
        const int b = hex_digit(t[3]) * 16 + hex_digit(t[4]);
        byte_id_[b] = (int32_t)id;
        pieces_[id] = std::string(1, (char)b);
        continue;
      }
      if (is_special_type((int32_t)id)) {
        pieces_[id] = t;
        continue;
      }
      std::string& p = pieces_[id];
      for (size_t i = 0; i < t.size();) {
        if (t.compare(i, 3, kSpace) == 0) {
          p += ' ';
          i += 3;
        } else {
          p += t[i++];
        }
      }
    }
  }

 protected:
  void encode_text(std::string_view text, bool after_special, std::vector<int32_t>& out) const override {
    std::string s;
    s.reserve(text.size() * 2 + 3);
    if (add_space_prefix_ && after_special) s += kSpace;
    for (char c : text) {
      if (c == ' ') s += kSpace;
      else s += c;
    }
    // Symbols are byte ranges of s (initially one per UTF-8 character).
    std::vector<Sym> syms;
    for (size_t i = 0; i < s.size();) {
      size_t len;
      unicode::decode_utf8(s, i, &len);
      syms.push_back({(uint32_t)i, (uint32_t)len, (int32_t)syms.size() - 1, (int32_t)syms.size() + 1});
      i += len;
    }
    if (syms.empty()) return;
    syms.back().next = -1;
    std::vector<Cand> heap;
    auto push = [&](int32_t l) {
      const int32_t r = syms[l].next;
      if (r < 0) return;
      const int32_t id = mergeable(std::string_view(s).substr(syms[l].start, syms[l].len + syms[r].len));
      if (id < 0) return;
      heap.push_back({scores_[id], l, syms[l].len + syms[r].len});
      std::push_heap(heap.begin(), heap.end(), Cand::Less());
    };
    for (int32_t i = 0; i + 1 < (int32_t)syms.size(); ++i) push(i);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), Cand::Less());
      const Cand c = heap.back();
      heap.pop_back();
      Sym& l = syms[c.left];
      if (l.len == 0 || l.next < 0 || l.len + syms[l.next].len != c.len) continue;  // stale
      const int32_t r = l.next;
      l.len += syms[r].len;
      l.next = syms[r].next;
      if (l.next >= 0) syms[l.next].prev = c.left;
      syms[r].len = 0;
      if (l.prev >= 0) push(l.prev);
      push(c.left);
    }
    for (int32_t i = 0; i >= 0; i = syms[i].next) {
      const std::string_view piece = std::string_view(s).substr(syms[i].start, syms[i].len);
      const int32_t id = mergeable(piece);
      if (id >= 0) {
        out.push_back(id);
        continue;
      }
      for (unsigned char b : piece) {
        if (byte_id_[b] >= 0) out.push_back(byte_id_[b]);
        else if (unk_ >= 0) out.push_back(unk_);
      }
    }
  }
  std::string normal_piece(int32_t id) const override { return pieces_[id]; }
  bool strips_prefix_space() const override { return add_space_prefix_; }

 private:
  struct Sym {
    uint32_t start, len;
    int32_t prev, next;
  };
  struct Cand {
    float score;
    int32_t left;
    uint32_t len;
    // Max-heap on score, ties to the leftmost pair.
    struct Less {
      bool operator()(const Cand& a, const Cand& b) const {
        return a.score != b.score ? a.score < b.score : a.left > b.left;
      }
    };
  };
  // Pieces that merges may produce: normal, user-defined and unused tokens.
  int32_t mergeable(std::string_view piece) const {
    const int32_t id = find_token(piece);
    if (id < 0) return -1;
    const int32_t t = types_[id];
    return (t == kTokNormal || t == kTokUserDefined || t == kTokUnused) ? id : -1;
  }

  std::vector<float> scores_;
  int32_t byte_id_[256];
};

}  // namespace

std::unique_ptr<Tokenizer> make_spm_tokenizer(const GGUFFile& f) {
  return std::make_unique<SpmTokenizer>(f);
}

}  // namespace headkv
