#include "tokenize/tokenizer.h"

#include <algorithm>

#include "common/error.h"
#include "gguf/gguf.h"
#include "tokenize/vocab.h"

namespace headkv {

std::unique_ptr<Tokenizer> Tokenizer::from_gguf(const GGUFFile& f) { return from_gguf(f, ""); }

std::unique_ptr<Tokenizer> Tokenizer::from_gguf(const GGUFFile& f, const std::string& pre_override) {
  const std::string model = f.get_str_or("tokenizer.ggml.model", "");
  if (model == "gpt2") return make_bpe_tokenizer(f, pre_override);
  if (model == "llama") return make_spm_tokenizer(f);
  if (model.empty())
    fail(ErrorKind::Unsupported, f.path() + ": no tokenizer (tokenizer.ggml.model missing)");
  fail(ErrorKind::Unsupported, f.path() + ": unsupported tokenizer model tokenizer.ggml.model='" +
                                   model + "' (supported: gpt2, llama)");
}

bool Tokenizer::is_eog(int32_t id) const {
  return id >= 0 && std::find(eog_.begin(), eog_.end(), id) != eog_.end();
}

void VocabTokenizer::load_common(const GGUFFile& f, const std::string& model) {
  model_ = model;
  tokens_ = f.get_str_array("tokenizer.ggml.tokens");
  const size_t n = tokens_.size();
  if (n == 0) fail(ErrorKind::Format, f.path() + ": tokenizer.ggml.tokens is empty");
  if (f.has("tokenizer.ggml.token_type")) {
    types_ = f.get_i32_array("tokenizer.ggml.token_type");
    if (types_.size() != n)
      fail(ErrorKind::Format, f.path() + ": tokenizer.ggml.token_type has " +
                                  std::to_string(types_.size()) + " entries, tokens has " +
                                  std::to_string(n));
  } else {
    types_.assign(n, kTokNormal);
  }
  index_.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) index_.emplace(tokens_[i], (int32_t)i);

  const bool spm = model == "llama";
  auto id_or = [&](const char* key, int64_t def) {
    const int64_t v = f.get_int_or(key, def);
    return (v >= 0 && v < (int64_t)n) ? (int32_t)v : -1;
  };
  bos_ = id_or("tokenizer.ggml.bos_token_id", spm ? 1 : -1);
  eos_ = id_or("tokenizer.ggml.eos_token_id", spm ? 2 : -1);
  unk_ = id_or("tokenizer.ggml.unknown_token_id", spm ? 0 : -1);
  add_bos_ = f.get_bool_or("tokenizer.ggml.add_bos_token", spm) && bos_ >= 0;
  add_space_prefix_ = f.get_bool_or("tokenizer.ggml.add_space_prefix", spm);

  // End-of-generation set: eos, eot, eom and well-known end tokens present as control tokens.
  auto add_eog = [&](int32_t id) {
    if (id >= 0 && std::find(eog_.begin(), eog_.end(), id) == eog_.end()) eog_.push_back(id);
  };
  add_eog(eos_);
  add_eog(id_or("tokenizer.ggml.eot_token_id", -1));
  add_eog(id_or("tokenizer.ggml.eom_token_id", -1));
  static const char* kEnd[] = {"<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>",
                               "</s>", "<|endoftext|>", "<|end|>", "<end_of_turn>"};
  for (const char* t : kEnd) {
    const int32_t id = find_token(t);
    if (id >= 0 && (types_[id] == kTokControl || types_[id] == kTokUserDefined)) add_eog(id);
  }

  for (size_t i = 0; i < n; ++i) {
    if (!is_special_type((int32_t)i) || tokens_[i].empty()) continue;
    specials_by_byte_[(unsigned char)tokens_[i][0]].push_back((int32_t)i);
  }
  for (auto& v : specials_by_byte_)
    std::stable_sort(v.begin(), v.end(), [&](int32_t a, int32_t b) {
      return tokens_[a].size() > tokens_[b].size();
    });
}

void VocabTokenizer::partition(std::string_view text, bool parse_special,
                               std::vector<Fragment>& out) const {
  size_t start = 0, i = 0;
  while (i < text.size()) {
    int32_t hit = -1;
    for (int32_t id : specials_by_byte_[(unsigned char)text[i]]) {
      const int32_t t = types_[id];
      if (!parse_special && t != kTokUserDefined) continue;
      const std::string& s = tokens_[id];
      if (text.compare(i, s.size(), s) == 0) {
        hit = id;
        break;
      }
    }
    if (hit < 0) {
      ++i;
      continue;
    }
    if (i > start) out.push_back({start, i, -1});
    out.push_back({i, i + tokens_[hit].size(), hit});
    i += tokens_[hit].size();
    start = i;
  }
  if (text.size() > start) out.push_back({start, text.size(), -1});
}

std::vector<int32_t> VocabTokenizer::encode(std::string_view text, bool add_bos,
                                            bool parse_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_bos && bos_ >= 0) out.push_back(bos_);
  std::vector<Fragment> frags;
  partition(text, parse_special, frags);
  bool after_special = true;
  for (const Fragment& fr : frags) {
    if (fr.special >= 0) {
      out.push_back(fr.special);
      after_special = true;
    } else {
      encode_text(text.substr(fr.begin, fr.end - fr.begin), after_special, out);
      after_special = false;
    }
  }
  return out;
}

std::string VocabTokenizer::token_to_piece(int32_t id) const {
  if (id < 0 || id >= n_vocab())
    fail(ErrorKind::InvalidArgument, "token id " + std::to_string(id) + " out of range [0, " +
                                         std::to_string(n_vocab()) + ")");
  return pieces_[id];
}

std::string VocabTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  bool after_special = true;
  for (int32_t id : ids) {
    if (id < 0 || id >= n_vocab())
      fail(ErrorKind::InvalidArgument, "token id " + std::to_string(id) + " out of range");
    const std::string& p = pieces_[id];
    if (is_special_type(id)) {
      out += p;
      after_special = true;
      continue;
    }
    if (after_special && strips_prefix_space() && !p.empty() && p[0] == ' ')
      out.append(p, 1, std::string::npos);
    else
      out += p;
    after_special = false;
  }
  return out;
}

}  // namespace headkv
