// Shared machinery of the GGUF vocabularies: token types, special-token partitioning of the
// input, BOS handling and decoding. bpe.cpp and spm.cpp supply the text segmentation.
#pragma once
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenize/tokenizer.h"

namespace headkv {

// tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
enum TokenType : int32_t {
  kTokNormal = 1, kTokUnknown = 2, kTokControl = 3, kTokUserDefined = 4, kTokUnused = 5,
  kTokByte = 6,
};

class VocabTokenizer : public Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  std::string token_to_piece(int32_t id) const override;
  bool is_special(int32_t id) const override { return id >= 0 && id < (int32_t)types_.size() && is_special_type(id); }

 protected:
  // Reads tokens, types, special ids and flags; `model` is "gpt2" or "llama".
  void load_common(const GGUFFile& f, const std::string& model);
  // Segments one stretch of plain text (no special tokens) and appends ids.
  // `after_special` is true at the start of the text and right after a special token.
  virtual void encode_text(std::string_view text, bool after_special, std::vector<int32_t>& out) const = 0;
  // Decoded bytes of a normal token (special tokens are rendered by their text).
  virtual std::string normal_piece(int32_t id) const = 0;
  // Whether decode drops one leading space after the start / a special token.
  virtual bool strips_prefix_space() const { return false; }

  bool is_special_type(int32_t id) const {
    const int32_t t = types_[id];
    return t == kTokControl || t == kTokUserDefined || t == kTokUnknown;
  }
  int32_t find_token(std::string_view s) const {
    auto it = index_.find(s);
    return it == index_.end() ? -1 : it->second;
  }

  std::vector<int32_t> types_;
  std::unordered_map<std::string_view, int32_t> index_;  // views into tokens_
  std::vector<std::string> pieces_;                        // token_to_piece cache
  int32_t unk_ = -1;
  bool add_space_prefix_ = false;

 private:
  struct Fragment {
    size_t begin, end;
    int32_t special;  // -1: raw text
  };
  void partition(std::string_view text, bool parse_special, std::vector<Fragment>& out) const;
  // Special-token candidates by first byte, longest first.
  std::vector<int32_t> specials_by_byte_[256];
};

std::unique_ptr<Tokenizer> make_bpe_tokenizer(const GGUFFile& f, const std::string& pre_override);
std::unique_ptr<Tokenizer> make_spm_tokenizer(const GGUFFile& f);

}  // namespace headkv
