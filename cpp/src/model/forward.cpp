// The transformer block of model/arch.h: RMSNorm -> QKV (+ bias) -> (q/k RMSNorm) -> RoPE ->
// causal GQA attention over a KV view -> output projection -> RMSNorm -> SwiGLU MLP. Used by chunked prefill/decode over the full cache
// or the arena (forward) and by the layer-by-layer compressed prefill (prefill.cpp).
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/simd.h"
#include "model/context.h"
#include "model/ops.h"
#include "quant/quant.h"

namespace headkv {

namespace {

// GELU, tanh approximation (Gemma's gelu_pytorch_tanh).
float gelu_tanh(float x) {
  return 0.5f * x * (1.0f + std::tanh(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

void mm(const Weight& w, const float* x, int64_t T, float* y, ThreadPool& pool) {
  matmul(w.type, w.data, w.rows, w.cols, x, T, y, w.rows, pool);
}

}  // namespace

void Context::rope_tables(int il, int64_t pos0, int64_t T, std::vector<float>& cs, std::vector<float>& sn) const {
  const int half = hp_.rope_dim / 2;
  const std::vector<float>& inv_freq = model_.rope_inv_freq(il, n_ctx_);
  const double mscale = hp_.rope_mscale;  // LongRoPE's attention factor (1 otherwise)
  // Linear position scaling is the global layers' (Gemma 3 scales only those; others have no local layers).
  const float scale = hp_.is_swa(il) ? 1.0f : hp_.rope_scale;
  if (cs.size() < (size_t)(T * half)) cs.resize(T * half), sn.resize(T * half);
  for (int64_t t = 0; t < T; ++t) {
    const float pos = (float)(pos0 + t) / scale;
    for (int i = 0; i < half; ++i) {
      const float theta = pos * inv_freq[i];  // fp32 product, as the reference computes it
      cs[t * half + i] = (float)(std::cos((double)theta) * mscale);
      sn[t * half + i] = (float)(std::sin((double)theta) * mscale);
    }
  }
}

void Context::qkv(int il, const float* x, int64_t T, float* xn, float* q, float* k, float* v, const float* cs,
                  const float* sn) {
  const LayerWeights& L = model_.layers()[il];
  const int64_t d = hp_.n_embd, hd = hp_.head_dim, nh = hp_.n_head, nkv = hp_.n_head_kv;
  const int half = hp_.rope_dim / 2;
  for (int64_t t = 0; t < T; ++t) rms_norm(&x[t * d], L.attn_norm.data(), &xn[t * d], d, hp_.rms_eps);
  mm(L.wq, xn, T, q, pool_);
  mm(L.wk, xn, T, k, pool_);
  mm(L.wv, xn, T, v, pool_);
  if (hp_.arch->qkv_bias) {
    add_bias(q, L.bq, T);
    add_bias(k, L.bk, T);
    add_bias(v, L.bv, T);
  }
  if (hp_.arch->qk_norm) {  // per head, in place (rms_norm reads each element before writing it)
    for (int64_t r = 0; r < T * nh; ++r) rms_norm(&q[r * hd], L.q_norm.data(), &q[r * hd], hd, hp_.rms_eps);
    for (int64_t r = 0; r < T * nkv; ++r) rms_norm(&k[r * hd], L.k_norm.data(), &k[r * hd], hd, hp_.rms_eps);
  }
  const auto rot = hp_.arch->rope_neox ? rope_neox : rope;
  for (int64_t t = 0; t < T; ++t) {
    rot(&q[t * nh * hd], (int)nh, (int)hd, hp_.rope_dim, &cs[t * half], &sn[t * half]);
    rot(&k[t * nkv * hd], (int)nkv, (int)hd, hp_.rope_dim, &cs[t * half], &sn[t * half]);
  }
}

namespace {
// Scores of nq queries (q + r*hd) against m key rows of hd elements of type t, read in place:
// out[r*ldo + j] = q_r · row j. The block types take the group at once (each block expanded once).
void dot_rows_kv(KVType t, const float* q, int64_t nq, const void* K, int64_t hd, int64_t m, float* out, int64_t ldo) {
  const int64_t ld = (int64_t)kv_row_bytes(t, hd);
  const auto* Kb = static_cast<const uint8_t*>(K);
  switch (t) {
    case KVType::F32:
      for (int64_t r = 0; r < nq; ++r) dot_rows_f32(q + r * hd, static_cast<const float*>(K), hd, hd, m, out + r * ldo);
      return;
    case KVType::F16:
      for (int64_t r = 0; r < nq; ++r) dot_rows_f16(q + r * hd, static_cast<const uint16_t*>(K), hd, hd, m, out + r * ldo);
      return;
    case KVType::Q8_0: return dot_rows_q8_0(q, nq, hd, Kb, ld, hd, m, out, ldo);
    case KVType::Q4_0: return dot_rows_q4_0(q, nq, hd, Kb, ld, hd, m, out, ldo);
  }
}
// out[r*hd + i] = sum_j p[r*ldp + j] * value row j [i], rows as above.
void weighted_rows_kv(KVType t, const float* p, int64_t nq, int64_t ldp, const void* V, int64_t hd, int64_t m, float* out) {
  const int64_t ld = (int64_t)kv_row_bytes(t, hd);
  const auto* Vb = static_cast<const uint8_t*>(V);
  switch (t) {
    case KVType::F32:
      for (int64_t r = 0; r < nq; ++r) weighted_rows_f32(p + r * ldp, static_cast<const float*>(V), hd, hd, m, out + r * hd);
      return;
    case KVType::F16:
      for (int64_t r = 0; r < nq; ++r) weighted_rows_f16(p + r * ldp, static_cast<const uint16_t*>(V), hd, hd, m, out + r * hd);
      return;
    case KVType::Q8_0: return weighted_rows_q8_0(p, nq, ldp, Vb, ld, hd, m, out, hd);
    case KVType::Q4_0: return weighted_rows_q4_0(p, nq, ldp, Vb, ld, hd, m, out, hd);
  }
}
// Scaled (and, with cap > 0, soft-capped) attention scores in place; returns their maximum.
float scale_scores(float* s, int64_t n, float scale, float cap) {
  if (cap > 0)
    for (int64_t j = 0; j < n; ++j) s[j] = cap * std::tanh(s[j] * scale / cap);
  else
    for (int64_t j = 0; j < n; ++j) s[j] *= scale;
  float mx = -INFINITY;
  for (int64_t j = 0; j < n; ++j) mx = std::max(mx, s[j]);
  return mx;
}
}  // namespace

// Causal GQA attention of T queries ([T][n_head][head_dim]) over a KV view per KV head whose
// rows n_before .. n_before+T-1 are the chunk's own keys. K / V rows are read in their stored type
// (f16 converted and q8_0/q4_0 blocks expanded in registers, no dequantized copy). One job per
// (token, KV head): the group's query heads are scored together, so they reuse the K/V rows while
// they are hot in cache (and the block types expand each block once for the group).
void Context::attention(const float* qs, int64_t T, const std::function<KVView(int)>& view, float* out) {
  const int hd = hp_.head_dim, nh = hp_.n_head, nkv = hp_.n_head_kv, group = nh / nkv;
  const float scale = hp_.attn_scale, cap = hp_.attn_softcap;
  std::vector<KVView> views(nkv);
  int64_t max_keys = 0;
  for (int g = 0; g < nkv; ++g) {
    views[g] = view(g);
    max_keys = std::max(max_keys, views[g].n_before + T);
  }
  if (T == 1 && probe_layer_ < 0 && max_keys > kSplitKeys) return attention_split(qs, views, out);
  pool_.parallel_for(T * nkv, [&](int64_t b, int64_t e) {
    std::vector<float> sc((size_t)group * max_keys);  // one score row per query head of the group
    for (int64_t job = b; job < e; ++job) {
      const int64_t t = job / nkv;
      const int g = (int)(job % nkv);
      const KVView& kv = views[g];
      const int64_t n_keys = kv.n_before + t + 1;  // causal
      // Keys first..n_keys-1 (a sliding window keeps the last `window`); with a ring, key j is row
      // j % ring, so the keys are at most two runs of rows: r0.. (n1 keys), then 0.. (n - n1 keys).
      const int64_t first = kv.window ? std::max<int64_t>(0, n_keys - kv.window) : 0, n = n_keys - first;
      const int64_t r0 = kv.ring ? first % kv.ring : first, n1 = kv.ring ? std::min(n, kv.ring - r0) : n;
      const size_t kb = kv_row_bytes(kv.tk, hd), vb = kv_row_bytes(kv.tv, hd);
      const uint8_t* K = static_cast<const uint8_t*>(kv.k);
      const uint8_t* V = static_cast<const uint8_t*>(kv.v);
      const size_t h0 = (size_t)t * nh + (size_t)g * group;  // the group's first query head, token-major
      dot_rows_kv(kv.tk, &qs[h0 * hd], group, K + r0 * kb, hd, n1, sc.data(), max_keys);
      if (n1 < n) dot_rows_kv(kv.tk, &qs[h0 * hd], group, K, hd, n - n1, sc.data() + n1, max_keys);
      for (int hh = 0; hh < group; ++hh) {
        float* s = sc.data() + (size_t)hh * max_keys;
        const float mx = scale_scores(s, n, scale, cap);
        const float inv = (float)(1.0 / exp_shift_sum(s, n, mx));
        for (int64_t j = 0; j < n; ++j) s[j] *= inv;
        if (probe_layer_ >= 0 && t == T - 1)  // attention probe: the chunk's last query (positions first..)
          std::copy_n(s, n, &probe_[((size_t)probe_layer_ * nh + g * group + hh) * probe_n_ + first]);
      }
      weighted_rows_kv(kv.tv, sc.data(), group, max_keys, V + r0 * vb, hd, n1, &out[h0 * hd]);
      if (n1 < n) {  // the second run, accumulated (weighted_rows_kv writes its output)
        std::vector<float> tail((size_t)group * hd);
        weighted_rows_kv(kv.tv, sc.data() + n1, group, max_keys, V, hd, n - n1, tail.data());
        for (size_t i = 0; i < tail.size(); ++i) out[h0 * hd + i] += tail[i];
      }
    }
  });
}

// One query token over long KV views (decode): a KV head's keys are cut into runs of kSplitKeys and
// each (KV head, run) is a job, so every thread has work even when there are fewer KV heads than
// threads (SmolLM2: 3, Gemma-3-270M: 1). A job keeps its run's score maximum, exp-sum and
// unnormalized V sum per query head; the runs are then merged (flash-decoding's split-K). The cut
// depends only on the number of keys, so results do not change with the thread count.
void Context::attention_split(const float* qs, const std::vector<KVView>& views, float* out) {
  const int hd = hp_.head_dim, nh = hp_.n_head, nkv = hp_.n_head_kv, group = nh / nkv;
  const float scale = hp_.attn_scale, cap = hp_.attn_softcap;
  std::vector<int64_t> first(nkv), job0(nkv + 1, 0);
  for (int g = 0; g < nkv; ++g) {
    const KVView& kv = views[g];
    const int64_t n_keys = kv.n_before + 1;
    first[g] = kv.window ? std::max<int64_t>(0, n_keys - kv.window) : 0;
    job0[g + 1] = job0[g] + (n_keys - first[g] + kSplitKeys - 1) / kSplitKeys;
  }
  const int64_t n_jobs = job0[nkv];
  // per job and query head of its group: max, exp-sum, then hd unnormalized output values
  std::vector<float> part((size_t)n_jobs * group * (hd + 2));
  pool_.parallel_for(n_jobs, [&](int64_t b, int64_t e) {
    std::vector<float> sc((size_t)group * kSplitKeys), o((size_t)group * hd), tail((size_t)group * hd);
    for (int64_t job = b; job < e; ++job) {
      const int g = (int)(std::upper_bound(job0.begin(), job0.end(), job) - job0.begin()) - 1;
      const KVView& kv = views[g];
      const int64_t n_keys = kv.n_before + 1;
      const int64_t a = first[g] + (job - job0[g]) * kSplitKeys, n = std::min<int64_t>(kSplitKeys, n_keys - a);
      // logical keys a..a+n-1; with a ring, key j is row j % ring: at most two runs of rows
      const int64_t r0 = kv.ring ? a % kv.ring : a, n1 = kv.ring ? std::min(n, kv.ring - r0) : n;
      const size_t kb = kv_row_bytes(kv.tk, hd), vb = kv_row_bytes(kv.tv, hd);
      const uint8_t* K = static_cast<const uint8_t*>(kv.k);
      const uint8_t* V = static_cast<const uint8_t*>(kv.v);
      const float* q = &qs[(size_t)g * group * hd];
      dot_rows_kv(kv.tk, q, group, K + r0 * kb, hd, n1, sc.data(), kSplitKeys);
      if (n1 < n) dot_rows_kv(kv.tk, q, group, K, hd, n - n1, sc.data() + n1, kSplitKeys);
      float* pj = &part[(size_t)job * group * (hd + 2)];
      for (int hh = 0; hh < group; ++hh) {
        float* s = sc.data() + (size_t)hh * kSplitKeys;
        const float mx = scale_scores(s, n, scale, cap);
        pj[hh * (hd + 2)] = mx;
        pj[hh * (hd + 2) + 1] = (float)exp_shift_sum(s, n, mx);  // s[j] = exp(s[j] - mx)
      }
      weighted_rows_kv(kv.tv, sc.data(), group, kSplitKeys, V + r0 * vb, hd, n1, o.data());
      if (n1 < n) {
        weighted_rows_kv(kv.tv, sc.data() + n1, group, kSplitKeys, V, hd, n - n1, tail.data());
        for (size_t i = 0; i < tail.size(); ++i) o[i] += tail[i];
      }
      for (int hh = 0; hh < group; ++hh) std::copy_n(&o[(size_t)hh * hd], hd, &pj[hh * (hd + 2) + 2]);
    }
  });
  std::vector<double> acc(hd);
  for (int g = 0; g < nkv; ++g)
    for (int hh = 0; hh < group; ++hh) {
      float mx = -INFINITY;
      for (int64_t job = job0[g]; job < job0[g + 1]; ++job) mx = std::max(mx, part[((size_t)job * group + hh) * (hd + 2)]);
      double l = 0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t job = job0[g]; job < job0[g + 1]; ++job) {
        const float* pj = &part[((size_t)job * group + hh) * (hd + 2)];
        const double w = std::exp((double)pj[0] - mx);
        l += w * pj[1];
        for (int i = 0; i < hd; ++i) acc[i] += w * pj[2 + i];
      }
      float* o = &out[((size_t)g * group + hh) * hd];
      for (int i = 0; i < hd; ++i) o[i] = (float)(acc[i] / l);
    }
}

// x += Wo·att; then x += MLP(x), in chunks of n_batch rows so activations stay bounded.
void Context::out_and_mlp(int il, const float* att, int64_t T, float* x, float* tmp) {
  const LayerWeights& L = model_.layers()[il];
  const int64_t d = hp_.n_embd, ff = hp_.n_ff;
  const bool post = hp_.arch->post_norms, gelu = hp_.arch->gelu;
  mm(L.wo, att, T, tmp, pool_);
  if (post)
    for (int64_t t = 0; t < T; ++t) rms_norm(&tmp[t * d], L.post_attn_norm.data(), &tmp[t * d], d, hp_.rms_eps);
  for (int64_t i = 0; i < T * d; ++i) x[i] += tmp[i];
  for (int64_t off = 0; off < T; off += n_batch_) {
    const int64_t C = std::min<int64_t>(n_batch_, T - off);
    float* xc = x + off * d;
    for (int64_t t = 0; t < C; ++t) rms_norm(&xc[t * d], L.ffn_norm.data(), &tmp[t * d], d, hp_.rms_eps);
    mm(L.w_gate, tmp, C, gate_.data(), pool_);
    mm(L.w_up, tmp, C, up_.data(), pool_);
    for (int64_t i = 0; i < C * ff; ++i) {
      const float g = gate_[i];
      gate_[i] = (gelu ? gelu_tanh(g) : silu(g)) * up_[i];
    }
    mm(L.w_down, gate_.data(), C, tmp, pool_);
    if (post)
      for (int64_t t = 0; t < C; ++t) rms_norm(&tmp[t * d], L.post_ffn_norm.data(), &tmp[t * d], d, hp_.rms_eps);
    for (int64_t i = 0; i < C * d; ++i) xc[i] += tmp[i];
  }
}

void Context::final_logits(const float* x, int64_t rows, float* out) {
  const int64_t d = hp_.n_embd;
  const Weight& w = model_.output();
  for (int64_t off = 0; off < rows; off += n_batch_) {  // xn_ holds n_batch rows
    const int64_t C = std::min<int64_t>(n_batch_, rows - off);
    for (int64_t t = 0; t < C; ++t)
      rms_norm(&x[(off + t) * d], model_.output_norm().data(), &xn_[t * d], d, hp_.rms_eps);
    matmul(w.type, w.data, w.rows, w.cols, xn_.data(), C, out + off * w.rows, w.rows, pool_);
  }
  if (const float c = hp_.final_softcap; c > 0)
    for (int64_t i = 0; i < rows * w.rows; ++i) out[i] = c * std::tanh(out[i] / c);
}

void Context::attend(int il, int64_t T, const float* q, const float* k, const float* v, float* att) {
  const int64_t hd = hp_.head_dim, nkv = hp_.n_head_kv;
  const bool local = hp_.is_swa(il), full = !compressing();
  for (int64_t t = 0; t < T; ++t)
    for (int g = 0; g < nkv; ++g)
      arena_->append(il, g, n_past_ + (int32_t)t, &k[(t * nkv + g) * hd], &v[(t * nkv + g) * hd]);
  probe_layer_ = probe_on_ && full ? il : -1;
  attention(q, T, [&](int g) {
    // The full cache holds every position from 0 (a ring: position p at row p % rows); a compressed
    // segment its kept entries, then the consecutive window and decoded positions.
    KVView kv{arena_->k(il, g), arena_->v(il, g), full ? n_past_ : arena_->used(il, g) - T, type_k_, type_v_};
    if (local) {
      kv.window = hp_.n_swa;
      if (full) kv.ring = arena_->capacity(il, g);
    }
    return kv;
  }, att);
  probe_layer_ = -1;
}

void Context::embed(const int32_t* tokens, int64_t T, float* x) const {
  const int64_t d = hp_.n_embd;
  const Weight& emb = model_.tok_embd();
  for (int64_t t = 0; t < T; ++t)
    dequantize_row(emb.type, emb.data + (size_t)tokens[t] * emb.row_bytes, &x[t * d], d);
  if (hp_.embd_scale != 1.0f)
    for (int64_t i = 0; i < T * d; ++i) x[i] *= hp_.embd_scale;
}

void Context::forward(const int32_t* tokens, int64_t T, bool all_logits, float* logits_out, float* hidden_out) {
  const int64_t d = hp_.n_embd;
  embed(tokens, T, x_.data());
  // RoPE tables of the global layers and, where there are any, of the sliding-window layers.
  const int il_global = hp_.first_layer(false), il_local = hp_.first_layer(true);
  if (il_global >= 0) rope_tables(il_global, n_past_, T, rope_cos_, rope_sin_);
  if (il_local >= 0) rope_tables(il_local, n_past_, T, rope_cos_swa_, rope_sin_swa_);
  if (probe_on_ && !compressing()) {
    probe_n_ = n_past_ + T;
    probe_.assign((size_t)hp_.n_layer * hp_.n_head * probe_n_, 0.0f);
  }

  for (int il = 0; il < hp_.n_layer; ++il) {
    const bool local = hp_.is_swa(il);
    qkv(il, x_.data(), T, xn_.data(), q_.data(), kc_.data(), vc_.data(), (local ? rope_cos_swa_ : rope_cos_).data(),
        (local ? rope_sin_swa_ : rope_sin_).data());
    attend(il, T, q_.data(), kc_.data(), vc_.data(), att_.data());
    out_and_mlp(il, att_.data(), T, x_.data(), xn_.data());
  }

  if (hidden_out)  // the final norm, as final_logits applies it before the output projection
    for (int64_t t = 0; t < T; ++t)
      rms_norm(&x_[t * d], model_.output_norm().data(), &hidden_out[t * d], d, hp_.rms_eps);
  if (!logits_out) return;
  const int64_t first = all_logits ? 0 : T - 1;
  final_logits(&x_[first * d], T - first, logits_out);
}

}  // namespace headkv
