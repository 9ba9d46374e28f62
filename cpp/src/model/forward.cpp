// The Llama transformer block over a chunk of T tokens: RMSNorm -> QKV -> RoPE -> causal GQA
// attention over the KV cache -> output projection -> RMSNorm -> SwiGLU MLP.
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/simd.h"
#include "model/context.h"
#include "quant/quant.h"

namespace headkv {

namespace {

void rms_norm(const float* x, const float* w, float* out, int64_t n, float eps) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += (double)x[i] * x[i];
  const float scale = 1.0f / std::sqrt((float)(ss / n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * scale);
}

// Rotates adjacent pairs (x[2i], x[2i+1]) of each head: GGUF llama q/k weights are permuted by
// the converters so that this "normal" rotation equals HF's rotate_half.
void rope(float* x, int n_heads, int head_dim, int rope_dim, const float* cs, const float* sn) {
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + (size_t)h * head_dim;
    for (int i = 0; i < rope_dim / 2; ++i) {
      const float a = v[2 * i], b = v[2 * i + 1];
      v[2 * i] = a * cs[i] - b * sn[i];
      v[2 * i + 1] = a * sn[i] + b * cs[i];
    }
  }
}

void mm(const Weight& w, const float* x, int64_t T, float* y, ThreadPool& pool) {
  matmul(w.type, w.data, w.rows, w.cols, x, T, y, w.rows, pool);
}

}  // namespace

// Causal GQA attention of the chunk's queries over the cache. One job per (token, KV head) so the
// group's query heads reuse the K/V rows while they are hot in cache.
void Context::attention(int il, int64_t T) {
  const int hd = hp_.head_dim, nh = hp_.n_head, nkv = hp_.n_head_kv, group = nh / nkv;
  const float scale = 1.0f / std::sqrt((float)hd);
  pool_.parallel_for(T * nkv, [&](int64_t b, int64_t e) {
    std::vector<float> sc((size_t)group * (n_past_ + T));
    for (int64_t job = b; job < e; ++job) {
      const int64_t t = job / nkv;
      const int g = (int)(job % nkv);
      const int64_t n_keys = n_past_ + t + 1;  // causal: keys 0..pos
      const float* K = k_at(il, g, 0);
      const float* V = v_at(il, g, 0);
      for (int hh = 0; hh < group; ++hh) {
        const int h = g * group + hh;
        float* s = &sc[(size_t)hh * n_keys];
        dot_rows_f32(&q_[((size_t)t * nh + h) * hd], K, hd, hd, n_keys, s);
        float mx = -INFINITY;
        for (int64_t j = 0; j < n_keys; ++j) mx = std::max(mx, s[j] *= scale);
        const float inv = (float)(1.0 / exp_shift_sum(s, n_keys, mx));
        for (int64_t j = 0; j < n_keys; ++j) s[j] *= inv;
        weighted_rows_f32(s, V, hd, hd, n_keys, &att_[((size_t)t * nh + h) * hd]);
      }
    }
  });
}

void Context::forward(const int32_t* tokens, int64_t T, bool all_logits, float* logits_out) {
  const int64_t d = hp_.n_embd, hd = hp_.head_dim, nh = hp_.n_head, nkv = hp_.n_head_kv, ff = hp_.n_ff;
  const int half = hp_.rope_dim / 2;
  const Weight& emb = model_.tok_embd();
  for (int64_t t = 0; t < T; ++t)
    dequantize_row(emb.type, emb.data + (size_t)tokens[t] * emb.row_bytes, &x_[t * d], d);

  const std::vector<float>& inv_freq = model_.rope_inv_freq();
  for (int64_t t = 0; t < T; ++t) {
    const float pos = (float)(n_past_ + t) / hp_.rope_scale;
    for (int i = 0; i < half; ++i) {
      const float theta = pos * inv_freq[i];  // fp32 product, as the reference computes it
      rope_cos_[t * half + i] = (float)std::cos((double)theta);
      rope_sin_[t * half + i] = (float)std::sin((double)theta);
    }
  }

  for (int il = 0; il < hp_.n_layer; ++il) {
    const LayerWeights& L = model_.layers()[il];
    for (int64_t t = 0; t < T; ++t) rms_norm(&x_[t * d], L.attn_norm.data(), &xn_[t * d], d, hp_.rms_eps);
    mm(L.wq, xn_.data(), T, q_.data(), pool_);
    mm(L.wk, xn_.data(), T, kc_.data(), pool_);
    mm(L.wv, xn_.data(), T, vc_.data(), pool_);
    for (int64_t t = 0; t < T; ++t) {
      rope(&q_[t * nh * hd], (int)nh, (int)hd, hp_.rope_dim, &rope_cos_[t * half], &rope_sin_[t * half]);
      rope(&kc_[t * nkv * hd], (int)nkv, (int)hd, hp_.rope_dim, &rope_cos_[t * half], &rope_sin_[t * half]);
      for (int g = 0; g < nkv; ++g) {
        std::copy_n(&kc_[(t * nkv + g) * hd], hd, k_at(il, g, n_past_ + t));
        std::copy_n(&vc_[(t * nkv + g) * hd], hd, v_at(il, g, n_past_ + t));
      }
    }
    attention(il, T);
    mm(L.wo, att_.data(), T, xn_.data(), pool_);
    for (int64_t i = 0; i < T * d; ++i) x_[i] += xn_[i];

    for (int64_t t = 0; t < T; ++t) rms_norm(&x_[t * d], L.ffn_norm.data(), &xn_[t * d], d, hp_.rms_eps);
    mm(L.w_gate, xn_.data(), T, gate_.data(), pool_);
    mm(L.w_up, xn_.data(), T, up_.data(), pool_);
    for (int64_t i = 0; i < T * ff; ++i) {
      const float g = gate_[i];
      gate_[i] = g / (1.0f + std::exp(-g)) * up_[i];
    }
    mm(L.w_down, gate_.data(), T, xn_.data(), pool_);
    for (int64_t i = 0; i < T * d; ++i) x_[i] += xn_[i];
  }

  if (!logits_out) return;
  const int64_t first = all_logits ? 0 : T - 1, rows = T - first;
  for (int64_t t = first; t < T; ++t)
    rms_norm(&x_[t * d], model_.output_norm().data(), &xn_[(t - first) * d], d, hp_.rms_eps);
  const Weight& out = model_.output();
  matmul(out.type, out.data, out.rows, out.cols, xn_.data(), rows, logits_out, out.rows, pool_);
}

}  // namespace headkv
