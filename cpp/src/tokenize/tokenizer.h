// Native tokenizer built from GGUF `tokenizer.ggml.*` metadata: byte-level BPE (gpt2 family,
// pre-tokenizer chosen by tokenizer.ggml.pre) and SentencePiece (llama) with byte fallback.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace headkv {

class GGUFFile;

class Tokenizer {
 public:
  // Throws Error(Unsupported) for an unknown tokenizer model or pre-tokenizer name, and
  // Error(Format) for inconsistent metadata (e.g. scores/types length != tokens length).
  static std::unique_ptr<Tokenizer> from_gguf(const GGUFFile& f);
  // Same, with the BPE pre-tokenizer forced to `pre_override` instead of tokenizer.ggml.pre
  // (empty: use the metadata). E.g. "gpt2" on SmolLM2 reproduces transformers' GGUF loader,
  // which ignores tokenizer.ggml.pre; the default "smollm" matches the model's own tokenizer.
  static std::unique_ptr<Tokenizer> from_gguf(const GGUFFile& f, const std::string& pre_override);
  virtual ~Tokenizer() = default;

  // add_bos: prepend BOS (only when the vocabulary has one). parse_special: recognise
  // control/user-defined special token texts (e.g. "<|im_start|>") in `text` as single tokens;
  // when false they are tokenized as plain text.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const = 0;
  // Raw bytes of the concatenated pieces (may contain partial UTF-8 at the edges).
  // Special tokens are rendered as their text. Leading space rules of SentencePiece are undone
  // so that decode(encode(s)) == s.
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  // Bytes of one token as it appears in decoded output (no space stripping).
  virtual std::string token_to_piece(int32_t id) const = 0;
  // Control, user-defined and unknown tokens (rendered by their text, never part of a word).
  virtual bool is_special(int32_t id) const { return false; }

  int32_t n_vocab() const { return (int32_t)tokens_.size(); }
  const std::string& token_text(int32_t id) const { return tokens_.at(id); }
  int32_t bos_id() const { return bos_; }   // -1 when absent
  int32_t eos_id() const { return eos_; }   // -1 when absent
  bool add_bos_default() const { return add_bos_; }
  // End-of-generation: eos, eot, and other tokens marked as such (e.g. <|im_end|>, <|eot_id|>).
  bool is_eog(int32_t id) const;
  const std::vector<int32_t>& eog_ids() const { return eog_; }
  const std::string& model_name() const { return model_; }  // "gpt2" or "llama"
  const std::string& pre_name() const { return pre_; }

 protected:
  std::vector<std::string> tokens_;
  int32_t bos_ = -1, eos_ = -1;
  bool add_bos_ = false;
  std::vector<int32_t> eog_;
  std::string model_, pre_;
};

}  // namespace headkv
