// Byte-level BPE (tokenizer.ggml.model = gpt2): GPT-2 byte<->unicode mapping, merge ranks,
// pre-tokenizer chosen by tokenizer.ggml.pre.
#include <algorithm>
#include <functional>

#include "common/error.h"
#include "gguf/gguf.h"
#include "tokenize/pretokenize.h"
#include "tokenize/unicode.h"
#include "tokenize/vocab.h"

namespace headkv {

namespace {

// GPT-2's reversible byte -> code point map: printable bytes map to themselves, the rest to
// 256, 257, ... in byte order.
struct ByteMap {
  uint32_t to_cp[256];
  ByteMap() {
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      to_cp[b] = keep ? b : next++;
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

class BpeTokenizer final : public VocabTokenizer {
 public:
  BpeTokenizer(const GGUFFile& f, const std::string& pre_override) {
    load_common(f, "gpt2");
    pre_ = pre_override.empty() ? f.get_str_or("tokenizer.ggml.pre", "default") : pre_override;
    pre_kind_ = pretokenizer_from_name(pre_);
    ignore_merges_ = pre_kind_ == PreTokenizer::Llama3;
    const ByteMap& bm = byte_map();
    for (int b = 0; b < 256; ++b) {
      std::string s;
      unicode::append_utf8(s, bm.to_cp[b]);
      byte_id_[b] = find_token(s);
    }
    const std::vector<std::string> merges = f.get_str_array("tokenizer.ggml.merges");
    merges_.reserve(merges.size() * 2);
    for (size_t r = 0; r < merges.size(); ++r) {
      const std::string& m = merges[r];
      const size_t sp = m.find(' ', 1);
      if (sp == std::string::npos)
        fail(ErrorKind::Format, f.path() + ": malformed merge '" + m + "' at " + std::to_string(r));
      const int32_t a = find_token(std::string_view(m).substr(0, sp));
      const int32_t b = find_token(std::string_view(m).substr(sp + 1));
      const int32_t c = find_token(m.substr(0, sp) + m.substr(sp + 1));
      if (a < 0 || b < 0 || c < 0) continue;  // merge of tokens not in the vocabulary
      merges_.emplace(key(a, b), Merge{(int32_t)r, c});
    }
    // Pieces: normal tokens decode through the inverse byte map; code points outside the map
    // (possible in added tokens) are kept as UTF-8.
    uint32_t inv[324];
    for (auto& v : inv) v = 0xFFFFFFFF;
    for (int b = 0; b < 256; ++b) inv[bm.to_cp[b]] = b;
    pieces_.resize(tokens_.size());
    for (size_t id = 0; id < tokens_.size(); ++id) {
      const std::string& t = tokens_[id];
      if (is_special_type((int32_t)id)) {
        pieces_[id] = t;
        continue;
      }
      std::string& p = pieces_[id];
      for (size_t i = 0; i < t.size();) {
        size_t len;
        const uint32_t cp = unicode::decode_utf8(t, i, &len);
        if (cp < 324 && inv[cp] != 0xFFFFFFFF) p += (char)inv[cp];
        else p.append(t, i, len);
        i += len;
      }
    }
  }

 protected:
  void encode_text(std::string_view text, bool, std::vector<int32_t>& out) const override {
    std::vector<std::pair<size_t, size_t>> words;
    pretokenize(pre_kind_, text, words);
    Work w;
    for (const auto& [b, e] : words) encode_word(text.substr(b, e - b), w, out);
  }
  std::string normal_piece(int32_t id) const override { return pieces_[id]; }

 private:
  struct Merge {
    int32_t rank, id;
  };
  struct Sym {
    int32_t id;
    int32_t prev, next;
  };
  struct Cand {
    int32_t rank, left, a, b;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  struct Work {
    std::vector<Sym> syms;
    std::vector<Cand> heap;
    std::string mapped;
  };
  static uint64_t key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

  const Merge* find_merge(int32_t a, int32_t b) const {
    if (a < 0 || b < 0) return nullptr;
    auto it = merges_.find(key(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  }

  void encode_word(std::string_view word, Work& w, std::vector<int32_t>& out) const {
    const ByteMap& bm = byte_map();
    if (ignore_merges_) {
      w.mapped.clear();
      for (unsigned char c : word) unicode::append_utf8(w.mapped, bm.to_cp[c]);
      const int32_t id = find_token(w.mapped);
      if (id >= 0) {
        out.push_back(id);
        return;
      }
    }
    if (word.empty()) return;
    auto& syms = w.syms;
    syms.clear();
    // A byte whose byte-level character is missing from the vocabulary is dropped before
    // merging, as the HF BPE model does (tokenizer.ggml.unknown_token_id would insert e.g.
    // <|endoftext|>).
    for (unsigned char c : word) {
      const int32_t id = byte_id_[c];
      if (id >= 0) syms.push_back({id, (int32_t)syms.size() - 1, (int32_t)syms.size() + 1});
    }
    if (syms.empty()) return;
    syms.back().next = -1;
    auto& heap = w.heap;
    heap.clear();
    auto push = [&](int32_t l) {
      const int32_t r = syms[l].next;
      if (r < 0) return;
      if (const Merge* m = find_merge(syms[l].id, syms[r].id)) {
        heap.push_back({m->rank, l, syms[l].id, syms[r].id});
        std::push_heap(heap.begin(), heap.end(), std::greater<Cand>());
      }
    };
    for (int32_t i = 0; i + 1 < (int32_t)syms.size(); ++i) push(i);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<Cand>());
      const Cand c = heap.back();
      heap.pop_back();
      Sym& l = syms[c.left];
      if (l.id != c.a || l.next < 0 || syms[l.next].id != c.b) continue;  // stale
      const int32_t r = l.next;
      l.id = merges_.find(key(c.a, c.b))->second.id;
      l.next = syms[r].next;
      if (l.next >= 0) syms[l.next].prev = c.left;
      syms[r].id = -2;  // dead
      if (l.prev >= 0) push(l.prev);
      push(c.left);
    }
    for (int32_t i = 0; i >= 0; i = syms[i].next) out.push_back(syms[i].id);
  }

  PreTokenizer pre_kind_ = PreTokenizer::Gpt2;
  bool ignore_merges_ = false;
  int32_t byte_id_[256];
  std::unordered_map<uint64_t, Merge> merges_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_bpe_tokenizer(const GGUFFile& f, const std::string& pre_override) {
  return std::make_unique<BpeTokenizer>(f, pre_override);
}

}  // namespace headkv
