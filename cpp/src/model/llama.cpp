#include "model/llama.h"

#include <atomic>
#include <cmath>

#include "common/error.h"
#include "tokenize/chat.h"
#include "quant/quant.h"

namespace headkv {

Model::Model() {
  static std::atomic<uint64_t> next{1};
  id_ = next.fetch_add(1, std::memory_order_relaxed);
}

std::unique_ptr<Model> Model::load(const std::string& path) { return load(GGUFFile::open(path)); }

std::unique_ptr<Model> Model::load(std::unique_ptr<GGUFFile> file) {
  std::unique_ptr<Model> m(new Model());
  m->file_ = std::move(file);
  const std::string& path = m->file_->path();
  const std::string arch = m->file_->get_str_or("general.architecture", "");
  m->hp_.arch = find_arch(arch);
  if (!m->hp_.arch)
    fail(ErrorKind::Unsupported, path + ": architecture '" + arch + "' is not supported (headkv runs " + supported_archs() + ")");
  m->load_hparams();
  m->tok_ = Tokenizer::from_gguf(*m->file_);
  m->chat_template_ = m->file_->get_str_or("tokenizer.chat_template", "");
  const std::string a = m->hp_.arch->name;
  if (m->chat_template_.empty() && (a == "gemma2" || a == "gemma3")) m->chat_template_ = kGemmaChatTemplate;
  m->load_weights();
  return m;
}

std::string Model::key(const char* k) const { return std::string(hp_.arch->name) + "." + k; }

void Model::load_hparams() {
  const GGUFFile& f = *file_;
  auto need_pos = [&](const std::string& key, int64_t v, int64_t max) {
    if (v <= 0 || v > max)
      fail(ErrorKind::Format, f.path() + ": metadata '" + key + "' = " + std::to_string(v) + " is out of range");
    return (int32_t)v;
  };
  hp_.n_embd = need_pos(key("embedding_length"), f.get_int(key("embedding_length")), 1 << 17);
  hp_.n_layer = need_pos(key("block_count"), f.get_int(key("block_count")), 1024);
  hp_.n_head = need_pos(key("attention.head_count"), f.get_int(key("attention.head_count")), 1024);
  hp_.n_head_kv = need_pos(key("attention.head_count_kv"),
                           f.get_int_or(key("attention.head_count_kv"), hp_.n_head), 1024);
  hp_.n_ff = need_pos(key("feed_forward_length"), f.get_int(key("feed_forward_length")), 1 << 20);
  hp_.n_ctx_train = need_pos(key("context_length"), f.get_int_or(key("context_length"), 4096), 1 << 24);
  if (hp_.n_head % hp_.n_head_kv != 0)
    fail(ErrorKind::Format, f.path() + ": head_count " + std::to_string(hp_.n_head) +
                                " is not a multiple of head_count_kv " + std::to_string(hp_.n_head_kv));
  const int64_t hd_default = hp_.n_embd / hp_.n_head;
  hp_.head_dim = need_pos(key("attention.key_length"), f.get_int_or(key("attention.key_length"), hd_default), 4096);
  if (f.get_int_or(key("attention.value_length"), hp_.head_dim) != hp_.head_dim)
    fail(ErrorKind::Unsupported, f.path() + ": key_length != value_length is not supported");
  hp_.rope_dim = need_pos(key("rope.dimension_count"), f.get_int_or(key("rope.dimension_count"), hp_.head_dim), hp_.head_dim);
  if (hp_.rope_dim % 2) fail(ErrorKind::Format, f.path() + ": odd rope dimension count");
  hp_.rope_theta = (float)f.get_float_or(key("rope.freq_base"), 10000.0);
  hp_.rms_eps = (float)f.get_float_or(key("attention.layer_norm_rms_epsilon"), 1e-5);
  if (!(hp_.rope_theta > 0) || !(hp_.rms_eps > 0) || !std::isfinite(hp_.rope_theta))
    fail(ErrorKind::Format, f.path() + ": invalid rope.freq_base or rms epsilon");

  // RoPE frequencies: theta^(-2i/d), then the model's scaling rule.
  const int half = hp_.rope_dim / 2;
  rope_inv_freq_.resize(half);
  for (int i = 0; i < half; ++i) rope_inv_freq_[i] = (float)std::pow((double)hp_.rope_theta, -2.0 * i / hp_.rope_dim);
  const std::string scaling = f.get_str_or(key("rope.scaling.type"), "none");
  const double factor = f.get_float_or(key("rope.scaling.factor"), 1.0);
  if (scaling == "linear") {
    if (!(factor > 0)) fail(ErrorKind::Format, f.path() + ": rope.scaling.factor must be > 0");
    hp_.rope_scale = (float)factor;
  } else if (scaling == "llama3") {
    // Llama 3.1 rule: long wavelengths divided by `factor`, short kept, smooth in between.
    const double lo = f.get_float_or(key("rope.scaling.low_freq_factor"), 1.0);
    const double hi = f.get_float_or(key("rope.scaling.high_freq_factor"), 4.0);
    const double orig = f.get_float_or(key("rope.scaling.original_context_length"), 8192);
    for (int i = 0; i < half; ++i) {
      const double freq = rope_inv_freq_[i], wavelen = 2 * M_PI / freq;
      double nf;
      if (wavelen < orig / hi) nf = freq;
      else if (wavelen > orig / lo) nf = freq / factor;
      else {
        const double smooth = (orig / wavelen - lo) / (hi - lo);
        nf = (1 - smooth) * freq / factor + smooth * freq;
      }
      rope_inv_freq_[i] = (float)nf;
    }
  } else if (scaling != "none" && scaling != "") {
    fail(ErrorKind::Unsupported, f.path() + ": rope scaling type '" + scaling + "' is not supported");
  }
  const ArchInfo& A = *hp_.arch;
  if (A.embd_scale) hp_.embd_scale = std::sqrt((float)hp_.n_embd);
  hp_.attn_scale = 1.0f / std::sqrt((float)hp_.head_dim);
  if (A.softcaps) {
    hp_.attn_softcap = (float)f.get_float_or(key("attn_logit_softcapping"), 0.0);
    hp_.final_softcap = (float)f.get_float_or(key("final_logit_softcapping"), 0.0);
    if (!(hp_.attn_softcap >= 0) || !(hp_.final_softcap >= 0) || !std::isfinite(hp_.attn_softcap) || !std::isfinite(hp_.final_softcap))
      fail(ErrorKind::Format, f.path() + ": invalid logit soft-capping");
  }
  if (A.swa_pattern != 0) {
    const int64_t w = f.get_int_or(key("attention.sliding_window"), 0);
    if (w < 0 || w > (1 << 24)) fail(ErrorKind::Format, f.path() + ": attention.sliding_window is out of range");
    hp_.n_swa = (int32_t)w;
    hp_.swa.assign(hp_.n_layer, 0);
    for (int il = 0; il < hp_.n_layer; ++il) hp_.swa[il] = layer_slides(A, il, w);
    if (hp_.n_swa && A.rope_base_swa > 0) {
      rope_inv_freq_swa_.resize(half);
      for (int i = 0; i < half; ++i)
        rope_inv_freq_swa_[i] = (float)std::pow((double)A.rope_base_swa, -2.0 * i / hp_.rope_dim);
    }
  }
  if (f.tensor("rope_factors_long.weight") || f.tensor("rope_factors_short.weight")) {
    // LongRoPE: each pair's frequency divided by its factor (one set for contexts beyond the original
    // training length, one below it), cos/sin scaled by attn_factor; as llama.cpp and transformers.
    if (!f.tensor("rope_factors_long.weight") || !f.tensor("rope_factors_short.weight"))
      fail(ErrorKind::Format, f.path() + ": LongRoPE needs both rope_factors_long and rope_factors_short");
    if (f.tensor("rope_freqs.weight")) fail(ErrorKind::Format, f.path() + ": both rope_freqs and LongRoPE factors");
    for (const char* n : {"rope_factors_long.weight", "rope_factors_short.weight"})
      if (f.tensor(n)->nelements() != half) fail(ErrorKind::Format, f.path() + ": " + n + " has the wrong size");
    const std::vector<float> lf = vec("rope_factors_long.weight", half), sf = vec("rope_factors_short.weight", half);
    rope_inv_freq_long_ = rope_inv_freq_;
    for (int i = 0; i < half; ++i) {
      if (!(lf[i] > 0) || !(sf[i] > 0) || !std::isfinite(lf[i]) || !std::isfinite(sf[i]))
        fail(ErrorKind::Format, f.path() + ": LongRoPE factors must be positive and finite");
      rope_inv_freq_long_[i] /= lf[i];
      rope_inv_freq_[i] /= sf[i];
    }
    hp_.n_ctx_orig = need_pos(key("rope.scaling.original_context_length"),
                              f.get_int_or(key("rope.scaling.original_context_length"), hp_.n_ctx_train), 1 << 24);
    hp_.rope_mscale = (float)f.get_float_or(key("rope.scaling.attn_factor"), 1.0);
    if (!(hp_.rope_mscale > 0) || !std::isfinite(hp_.rope_mscale))
      fail(ErrorKind::Format, f.path() + ": rope.scaling.attn_factor must be positive and finite");
  }
  // llama.cpp's converters store Llama 3.1 frequency factors as a tensor instead.
  if (const TensorInfo* rf = f.tensor("rope_freqs.weight")) {
    if (rf->nelements() != half) fail(ErrorKind::Format, f.path() + ": rope_freqs.weight has the wrong size");
    std::vector<float> ff = vec("rope_freqs.weight", half);
    for (int i = 0; i < half; ++i) rope_inv_freq_[i] /= ff[i];
  }
}

Weight Model::weight(const std::string& name, int64_t cols, int64_t rows, bool required) {
  const TensorInfo* t = file_->tensor(name);
  if (!t) {
    if (required) fail(ErrorKind::Format, file_->path() + ": missing tensor '" + name + "'");
    return Weight{};
  }
  if (t->ne.size() > 2 || t->ne[0] != cols || t->rows() != rows)
    fail(ErrorKind::Format, file_->path() + ": tensor '" + name + "' has shape [" + std::to_string(t->ne[0]) + ", " +
                                std::to_string(t->rows()) + "], expected [" + std::to_string(cols) + ", " + std::to_string(rows) + "]");
  if (!type_traits(t->type).supported)
    fail(ErrorKind::Unsupported, file_->path() + ": tensor '" + name + "' has type " + type_name(t->type) + ", which headkv does not support");
  Weight w;
  w.type = t->type;
  w.data = t->data;
  w.rows = rows;
  w.cols = cols;
  w.row_bytes = row_size(t->type, cols);
  weight_bytes_ += t->nbytes;
  return w;
}

Weight Model::rows_of(const Weight& w, int64_t r0, int64_t n) {
  Weight r = w;
  r.data = w.data + (size_t)r0 * w.row_bytes;
  r.rows = n;
  return r;
}

std::vector<float> Model::vec(const std::string& name, int64_t n) {
  Weight w = weight(name, n, 1);
  std::vector<float> out((size_t)n);
  dequantize_row(w.type, w.data, out.data(), n);
  return out;
}

void Model::load_weights() {
  const int64_t d = hp_.n_embd, hd = hp_.head_dim, ff = hp_.n_ff;
  const TensorInfo* te = file_->tensor("token_embd.weight");
  if (!te) fail(ErrorKind::Format, file_->path() + ": missing tensor 'token_embd.weight'");
  if (te->ne.size() != 2) fail(ErrorKind::Format, file_->path() + ": token_embd.weight must be 2-D");
  hp_.n_vocab = (int32_t)te->ne[1];
  if (hp_.n_vocab != tok_->n_vocab())
    fail(ErrorKind::Format, file_->path() + ": token_embd.weight has " + std::to_string(hp_.n_vocab) +
                                " rows but the vocabulary has " + std::to_string(tok_->n_vocab()) + " tokens");
  tok_embd_ = weight("token_embd.weight", d, hp_.n_vocab);
  output_norm_ = vec("output_norm.weight", d);
  output_ = weight("output.weight", d, hp_.n_vocab, /*required=*/false);
  if (!output_.data) output_ = tok_embd_;  // tied embeddings
  layers_.resize(hp_.n_layer);
  for (int il = 0; il < hp_.n_layer; ++il) {
    const std::string p = "blk." + std::to_string(il) + ".";
    LayerWeights& L = layers_[il];
    L.attn_norm = vec(p + "attn_norm.weight", d);
    L.ffn_norm = vec(p + "ffn_norm.weight", d);
    if (hp_.arch->qkv_bias) {
      L.bq = vec(p + "attn_q.bias", hp_.n_head * hd);
      L.bk = vec(p + "attn_k.bias", hp_.n_head_kv * hd);
      L.bv = vec(p + "attn_v.bias", hp_.n_head_kv * hd);
    }
    if (hp_.arch->qk_norm) {
      L.q_norm = vec(p + "attn_q_norm.weight", hd);
      L.k_norm = vec(p + "attn_k_norm.weight", hd);
    }
    if (hp_.arch->post_norms) {
      L.post_attn_norm = vec(p + "post_attention_norm.weight", d);
      L.post_ffn_norm = vec(p + "post_ffw_norm.weight", d);
    }
    if (hp_.arch->fused) {  // Q, K, V: consecutive row ranges of one tensor (no copy)
      const Weight qkv = weight(p + "attn_qkv.weight", d, (int64_t)(hp_.n_head + 2 * hp_.n_head_kv) * hd);
      L.wq = rows_of(qkv, 0, hp_.n_head * hd);
      L.wk = rows_of(qkv, hp_.n_head * hd, hp_.n_head_kv * hd);
      L.wv = rows_of(qkv, (int64_t)(hp_.n_head + hp_.n_head_kv) * hd, hp_.n_head_kv * hd);
    } else {
      L.wq = weight(p + "attn_q.weight", d, hp_.n_head * hd);
      L.wk = weight(p + "attn_k.weight", d, hp_.n_head_kv * hd);
      L.wv = weight(p + "attn_v.weight", d, hp_.n_head_kv * hd);
    }
    L.wo = weight(p + "attn_output.weight", hp_.n_head * hd, d);
    if (hp_.arch->fused) {  // gate rows, then up rows
      const Weight gu = weight(p + "ffn_up.weight", d, 2 * ff);
      L.w_gate = rows_of(gu, 0, ff);
      L.w_up = rows_of(gu, ff, ff);
    } else {
      L.w_gate = weight(p + "ffn_gate.weight", d, ff);
      L.w_up = weight(p + "ffn_up.weight", d, ff);
    }
    L.w_down = weight(p + "ffn_down.weight", ff, d);
  }
}

}  // namespace headkv
