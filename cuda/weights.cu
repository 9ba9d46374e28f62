#include "weights.cuh"

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "matvec.cuh"
#include "quant.cuh"
#include "quant/types.h"

namespace headkv::cu {

namespace {

std::mutex g_mu;
// Model::id(), not the address: a model loaded after this one was destroyed (from a file rewritten
// at the same path with the same size, say) can get the same address and mapping.
uint64_t g_model = 0;
std::shared_ptr<DevModel> g_last;  // the last model uploaded stays resident for the next context

size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

// File units [scales (sb bytes) | quants (qb bytes)] (s_first; Q6_K: quants, then scales) ->
// quants at q, scales at s (quant.cuh). Every size is even, so the copy goes in 2-byte words.
__global__ void split_blocks_kernel(const uint16_t* __restrict__ raw, int64_t n_blocks, int sb, int qb, bool s_first,
                                    uint16_t* __restrict__ q, uint16_t* __restrict__ s) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n_blocks) return;
  const int sw = sb / 2, qw = qb / 2;
  const uint16_t* src = raw + i * (sw + qw);
  const uint16_t* ss = s_first ? src : src + qw;
  const uint16_t* qs = s_first ? src + sw : src;
  for (int j = 0; j < sw; ++j) s[i * sw + j] = ss[j];
  for (int j = 0; j < qw; ++j) q[i * qw + j] = qs[j];
}

struct Split {
  int sb, qb;  // bytes of scales and quants per unit (a block, or a Q6_K super-block)
  bool s_first;
};
Split split_of(int type) {
  Split sp{};
  dispatch_type(type, [&](auto f) {
    using F = decltype(f);
    if constexpr (F::sb > 0) sp = {F::sb, F::qb, F::s_first};
  });
  return sp;
}

constexpr size_t kStageBytes = 64ull << 20;  // upload staging for split types

}  // namespace

std::shared_ptr<DevModel> DevModel::get(const Model& m) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_last && g_model == m.id()) return g_last;
  g_last.reset();  // the previous model's weights go once no context uses them

  const LlamaHParams& hp = m.hparams();
  struct Item {
    const uint8_t* src;
    size_t bytes;
    size_t off;
    int type;  // ggml type, -1 for norm vectors; split types: quants at off, scales at soff
    size_t soff;
  };
  std::vector<Item> items;
  // Tied embeddings (the same tensor twice) are uploaded once. Keyed on the bytes' type and size
  // too, so that only the same tensor shares an upload (the reader also refuses overlapping tensors).
  std::map<std::tuple<const uint8_t*, size_t, int>, size_t> seen;
  std::map<size_t, size_t> scales_at;      // split items: offset of the quants -> of the scales
  size_t total = 0;
  bool any_split = false;
  auto add = [&](const void* src, size_t bytes, int type = -1) {
    const auto key = std::make_tuple((const uint8_t*)src, bytes, type);
    auto it = seen.find(key);
    if (it != seen.end()) return it->second;
    const size_t off = total;
    Item item{(const uint8_t*)src, bytes, off, type, 0};
    if (type_split(type)) {
      const Split sp = split_of(type);
      const size_t nblk = bytes / (size_t)(sp.sb + sp.qb);
      item.soff = off + align256(nblk * sp.qb);
      total = item.soff + align256(nblk * sp.sb);
      scales_at[off] = item.soff;
      any_split = true;
    } else {
      total += align256(bytes);
    }
    items.push_back(item);
    seen[key] = off;
    return off;
  };
  auto weight = [&](const Weight& w, const char* name, size_t* off) {
    if (!type_supported((int)w.type))
      fail(ErrorKind::Unsupported, "device 'cuda': weight " + std::string(name) + " has type " + type_name(w.type) +
                                       ", which the CUDA backend does not support (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)");
    if (w.cols % 32)
      fail(ErrorKind::Unsupported, "device 'cuda': weight " + std::string(name) + " has rows of " + std::to_string(w.cols) +
                                       " elements, not a multiple of 32");
    *off = add(w.data, w.row_bytes * (size_t)w.rows, (int)w.type);
  };
  if (hp.head_dim != 64 && hp.head_dim != 128 && hp.head_dim != 256)
    fail(ErrorKind::Unsupported, "device 'cuda': head_dim " + std::to_string(hp.head_dim) + " is not supported (64, 128, 256)");
  if (hp.n_head % hp.n_head_kv || hp.n_head / hp.n_head_kv > 8 || hp.n_head_kv > 64)
    fail(ErrorKind::Unsupported, "device 'cuda': head layout " + std::to_string(hp.n_head) + "/" +
                                     std::to_string(hp.n_head_kv) + " is not supported");

  {  // the single-token matvecs stage x in shared memory (rows of n_embd, n_head·head_dim or n_ff)
    const size_t optin = smem_optin();
    const int64_t widest = std::max<int64_t>({hp.n_embd, (int64_t)hp.n_head * hp.head_dim, hp.n_ff});
    const size_t need = std::max(mv_norm_smem(hp.n_embd), mv_q8x_smem(widest));
    if (need > optin)
      fail(ErrorKind::Unsupported, "device 'cuda': n_embd " + std::to_string(hp.n_embd) + " / n_ff " + std::to_string(hp.n_ff) +
                                       " need " + std::to_string(need) + " bytes of shared memory per block in the decode matvecs; this GPU allows " +
                                       std::to_string(optin));
  }

  struct LOff {
    size_t wq, wk, wv, wo, gate, up, down, an, fn, bq, bk, bv, qn, kn, pan, pfn;
  };
  std::vector<LOff> lo(hp.n_layer);
  size_t emb_off, out_off;
  weight(m.tok_embd(), "token_embd", &emb_off);
  weight(m.output(), "output", &out_off);
  int64_t max_elems = m.output().rows * m.output().cols;
  for (int il = 0; il < hp.n_layer; ++il) {
    const LayerWeights& L = m.layers()[il];
    weight(L.wq, "attn_q", &lo[il].wq);
    weight(L.wk, "attn_k", &lo[il].wk);
    weight(L.wv, "attn_v", &lo[il].wv);
    weight(L.wo, "attn_output", &lo[il].wo);
    weight(L.w_gate, "ffn_gate", &lo[il].gate);
    weight(L.w_up, "ffn_up", &lo[il].up);
    weight(L.w_down, "ffn_down", &lo[il].down);
    for (const Weight* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down})
      max_elems = std::max<int64_t>(max_elems, w->rows * w->cols);
    lo[il].an = add(L.attn_norm.data(), L.attn_norm.size() * sizeof(float));
    lo[il].fn = add(L.ffn_norm.data(), L.ffn_norm.size() * sizeof(float));
    auto opt = [&](const std::vector<float>& v) { return v.empty() ? SIZE_MAX : add(v.data(), v.size() * sizeof(float)); };
    lo[il].bq = opt(L.bq);
    lo[il].bk = opt(L.bk);
    lo[il].bv = opt(L.bv);
    lo[il].qn = opt(L.q_norm);
    lo[il].kn = opt(L.k_norm);
    lo[il].pan = opt(L.post_attn_norm);
    lo[il].pfn = opt(L.post_ffn_norm);
  }
  const size_t onorm = add(m.output_norm().data(), m.output_norm().size() * sizeof(float));
  const size_t rope = add(m.rope_inv_freq().data(), m.rope_inv_freq().size() * sizeof(float));
  const bool longrope = !m.rope_inv_freq_long().empty();
  const size_t rope_long = longrope ? add(m.rope_inv_freq_long().data(), m.rope_inv_freq_long().size() * sizeof(float)) : 0;
  const int il_swa = hp.first_layer(true);  // Model::rope_inv_freq(il): the local layers' table
  const std::vector<float>* rope_swa = il_swa >= 0 && &m.rope_inv_freq(il_swa, 0) != &m.rope_inv_freq() ? &m.rope_inv_freq(il_swa, 0) : nullptr;
  const size_t rope_s = rope_swa ? add(rope_swa->data(), rope_swa->size() * sizeof(float)) : SIZE_MAX;

  require_device_bytes(total + (any_split ? kStageBytes : 0), "uploading the model's weights");
  auto dm = std::make_shared<DevModel>();
  dm->blob.alloc(total, "model weights");
  {
    DBuf<uint8_t> stage;
    if (any_split) stage.alloc(kStageBytes, "weight upload staging");
    for (const Item& it : items) {
      if (!type_split(it.type)) {
        check(cudaMemcpy(dm->blob.get() + it.off, it.src, it.bytes, cudaMemcpyHostToDevice), "uploading weights");
        continue;
      }
      const Split sp = split_of(it.type);
      const size_t bb = (size_t)(sp.sb + sp.qb), per = kStageBytes / bb;
      const size_t nblk = it.bytes / bb;
      for (size_t b0 = 0; b0 < nblk; b0 += per) {
        const size_t n = std::min(per, nblk - b0);
        check(cudaMemcpy(stage.get(), it.src + b0 * bb, n * bb, cudaMemcpyHostToDevice), "uploading weights");
        split_blocks_kernel<<<(unsigned)cdiv((int64_t)n, 256), 256>>>(
            (const uint16_t*)stage.get(), (int64_t)n, sp.sb, sp.qb, sp.s_first, (uint16_t*)(dm->blob.get() + it.off + b0 * sp.qb),
            (uint16_t*)(dm->blob.get() + it.soff + b0 * sp.sb));
        check_launch("splitting weight blocks");
      }
    }
    check(cudaDeviceSynchronize(), "uploading weights");
  }
  uint8_t* base = dm->blob.get();
  auto dw = [&](const Weight& w, size_t off) {
    DW d{(int)w.type, base + off, nullptr, w.rows, w.cols, w.row_bytes};
    if (type_split(d.type)) d.sc = base + scales_at.at(off);
    return d;
  };
  dm->tok_embd = dw(m.tok_embd(), emb_off);
  dm->output = dw(m.output(), out_off);
  dm->layers.resize(hp.n_layer);
  for (int il = 0; il < hp.n_layer; ++il) {
    const LayerWeights& L = m.layers()[il];
    DevLayer& D = dm->layers[il];
    D.wq = dw(L.wq, lo[il].wq);
    D.wk = dw(L.wk, lo[il].wk);
    D.wv = dw(L.wv, lo[il].wv);
    D.wo = dw(L.wo, lo[il].wo);
    D.gate = dw(L.w_gate, lo[il].gate);
    D.up = dw(L.w_up, lo[il].up);
    D.down = dw(L.w_down, lo[il].down);
    D.attn_norm = (const float*)(base + lo[il].an);
    D.ffn_norm = (const float*)(base + lo[il].fn);
    auto opt = [&](size_t off) { return off == SIZE_MAX ? nullptr : (const float*)(base + off); };
    D.bq = opt(lo[il].bq);
    D.bk = opt(lo[il].bk);
    D.bv = opt(lo[il].bv);
    D.q_norm = opt(lo[il].qn);
    D.k_norm = opt(lo[il].kn);
    D.post_attn_norm = opt(lo[il].pan);
    D.post_ffn_norm = opt(lo[il].pfn);
  }
  dm->output_norm = (const float*)(base + onorm);
  dm->rope_inv_freq = (const float*)(base + rope);
  if (longrope) dm->rope_inv_freq_long = (const float*)(base + rope_long);
  dm->rope_inv_freq_swa = rope_s == SIZE_MAX ? nullptr : (const float*)(base + rope_s);
  dm->bytes = total;
  dm->max_weight_elems = max_elems;
  g_last = dm;
  g_model = m.id();
  return dm;
}

}  // namespace headkv::cu
