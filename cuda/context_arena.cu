// CudaContext: the per-head KV arena on the device (segments sized from the budget plan, or n_ctx
// each for the full cache), the decode attention's work items cut from it, and saved state.
#include <algorithm>
#include <string>
#include <tuple>

#include "common/alloc.h"
#include "context_impl.cuh"

namespace headkv {

namespace {

// Decode attention items: a layer's keys are cut into at most one wave of blocks, each item of at
// least kMinKeysPerItem keys, in multiples of 32 keys per warp of a block (its warps stream tiles of
// 32 keys; 8 warps: multiples of 256, so each warp still holds one tile of a short item). Longer
// minimum items were slower and shorter ones no faster (BENCHMARKS.md, History).
constexpr int kMinKeysPerItem = 64, kMaxSplits = 512;
// Bytes past the arena's last K / V row: the decode attention copies quantized rows in 16-byte
// pieces aligned to 16 bytes, the last of which may reach up to 15 bytes past a row's end.
constexpr int64_t kArenaSlack = 16;

}  // namespace

void CudaContext::Impl::make_arena(const std::vector<int64_t>& cap) {
  const int S = (int)cap.size();
  h_off.assign(S + 1, 0);
  for (int i = 0; i < S; ++i) h_off[i + 1] = h_off[i] + cap[i];
  const int64_t total = h_off.back();
  ak.alloc(total * rb_k + kArenaSlack, "KV arena (keys)");
  av.alloc(total * rb_v + kArenaSlack, "KV arena (values)");
  apos.alloc(total, "KV arena (positions)");
  seg_off.alloc(S + 1, "KV arena offsets");
  used.alloc(S, "KV arena counts");
  h_used.assign(S, 0);
  check(cudaMemcpyAsync(seg_off.get(), h_off.data(), (S + 1) * sizeof(int64_t), cudaMemcpyHostToDevice, st), "offsets");
  check(cudaMemsetAsync(used.get(), 0, S * sizeof(int32_t), st), "counts");
  check(cudaStreamSynchronize(st), "arena");
  arena = true;
  build_items();
}

// Decode work items from the segments' capacities (fixed once the arena exists).
void CudaContext::Impl::build_items() {
  drop_graph();
  const int L = hp.n_layer, H = hp.n_head_kv, G = hp.n_head / hp.n_head_kv;
  std::vector<int32_t> ih, is, hs(L * H), hf(L * H);
  layer_item0.assign(L, 0);
  layer_items.assign(L, 0);
  int max_items = 0;
  // one wave of the attention kernel: items per layer <= resident blocks (each head rounds up)
  const int64_t wave = std::max<int64_t>(H, decode_attention_slots(hp.head_dim, G, attn_warps, tk, tv) - H);
  const int64_t keys = 32 * attn_warps;  // a tile of 32 keys per warp
  for (int l = 0; l < L; ++l) {
    layer_item0[l] = (int)ih.size();
    const int64_t layer_cap = h_off[(l + 1) * H] - h_off[l * H];
    const int64_t per_item = std::max<int64_t>(kMinKeysPerItem, cdiv(cdiv(layer_cap, wave), keys) * keys);
    for (int g = 0; g < H; ++g) {
      const int64_t cap = h_off[l * H + g + 1] - h_off[l * H + g];
      const int S = (int)std::clamp<int64_t>(cdiv(cap, per_item), 1, kMaxSplits);
      hs[l * H + g] = S;
      hf[l * H + g] = (int)ih.size() - layer_item0[l];
      for (int s = 0; s < S; ++s) {
        ih.push_back(g);
        is.push_back(s);
      }
    }
    layer_items[l] = (int)ih.size() - layer_item0[l];
    max_items = std::max(max_items, layer_items[l]);
  }
  auto up_i32 = [&](DBuf<int32_t>& b, const std::vector<int32_t>& v, const char* what) {
    b.alloc(v.size(), what);
    check(cudaMemcpyAsync(b.get(), v.data(), v.size() * sizeof(int32_t), cudaMemcpyHostToDevice, st), what);
  };
  // On the context's own stream (non-blocking: not ordered after the default stream's copies), so the
  // decode kernels read the items after they land; the wait keeps the host vectors alive until then.
  up_i32(item_head, ih, "decode items");
  up_i32(item_split, is, "decode items");
  up_i32(head_splits, hs, "decode items");
  up_i32(head_first, hf, "decode items");
  check(cudaStreamSynchronize(st), "decode items");
  part.alloc((size_t)max_items * G * (hp.head_dim + 2), "decode attention partials");
}

void CudaContext::save_kv(KVState& s) const {
  const Impl& I = *p_;
  const int L = hp_.n_layer, H = hp_.n_head_kv;
  const size_t rbk = I.rb_k, rbv = I.rb_v;
  uint64_t entries = 0;
  for (int i = 0; i < L * H; ++i) entries += (uint64_t)used(i / H, i % H);
  s.k.resize(entries * rbk);
  s.v.resize(entries * rbv);
  if (s.arena) s.pos.resize(entries);
  size_t e = 0;
  for (int i = 0; i < L * H; ++i) {
    // A ring (full cache) saves its positions in order, as the CPU's state holds them: the oldest
    // held one, n_past - n, is at row (n_past - n) % ring, and the rows wrap after the last.
    const int64_t n = used(i / H, i % H), at = I.h_off[i], rg = I.ring_of(i / H);
    const int64_t r0 = rg ? (I.h_used[i] - n) % rg : 0, n1 = rg ? std::min(n, rg - r0) : n;
    s.used.push_back(n);
    if (s.arena) s.capacity.push_back(I.h_off[i + 1] - at);
    for (const auto& [row, dst, cnt] : {std::tuple{r0, e, n1}, std::tuple{(int64_t)0, e + (size_t)n1, n - n1}}) {
      if (!cnt) continue;
      check(cudaMemcpy(&s.k[dst * rbk], I.ak.get() + (at + row) * rbk, cnt * rbk, cudaMemcpyDeviceToHost), "save state");
      check(cudaMemcpy(&s.v[dst * rbv], I.av.get() + (at + row) * rbv, cnt * rbv, cudaMemcpyDeviceToHost), "save state");
      if (s.arena) check(cudaMemcpy(&s.pos[dst], I.apos.get() + at + row, cnt * sizeof(int32_t), cudaMemcpyDeviceToHost), "save state");
    }
    e += (size_t)n;
  }
}

void CudaContext::load_kv(const KVState& s) {
  Impl& I = *p_;
  const int L = I.hp.n_layer, H = I.hp.n_head_kv;
  if (!s.arena)  // the full cache: every position, or for a sliding-window layer at least the window before n_past
    for (int i = 0; i < L * H; ++i) {
      const int64_t n = s.used[i], need = I.hp.is_swa(i / H) ? std::min<int64_t>(s.n_past, I.hp.n_swa - 1) : s.n_past;
      if (n < need || n > s.n_past)
        fail(ErrorKind::InvalidArgument, "the state does not fit this context: its full cache lacks positions");
    }
  if (s.arena) {
    uint64_t entries = 0;
    for (int64_t c : s.capacity) entries += (uint64_t)c;
    require_device_bytes(entries * I.entry_bytes(), "the KV arena of a loaded state (" + std::to_string(entries) + " entries)");
  }
  if (!s.logits.empty() && I.logits_h.size() < (size_t)I.hp.n_vocab)
    checked_assign(I.logits_h, (uint64_t)I.hp.n_vocab, "logits");
  reset();
  const size_t rbk = I.rb_k, rbv = I.rb_v;
  try {
    if (s.arena) I.make_arena(s.capacity);
    std::vector<int32_t> pos;
    size_t e = 0;
    for (int i = 0; i < L * H; ++i) {
      const int64_t n = s.used[i], at = I.h_off[i], rg = s.arena ? 0 : I.ring_of(i / H);
      // The full cache holds the state's positions n_past - n .. n_past - 1 (a sliding-window layer's
      // may start past 0), position p at row p, or in a ring the last (at most ring) of them at row
      // p % ring: from row r0 to the ring's end, then from row 0.
      const int64_t m = rg ? std::min(n, rg) : n, skip = n - m;
      const int64_t p0 = s.arena ? 0 : s.n_past - m, r0 = rg ? p0 % rg : p0, m1 = rg ? std::min(m, rg - r0) : m;
      if (!s.arena) {
        pos.resize((size_t)m);
        for (int64_t j = 0; j < m; ++j) pos[j] = (int32_t)(p0 + j);
      }
      const int32_t* p = s.arena ? &s.pos[e] : pos.data();
      for (const auto& [row, src, cnt] : {std::tuple{r0, (int64_t)0, m1}, std::tuple{(int64_t)0, m1, m - m1}}) {
        if (!cnt) continue;
        const size_t se = e + (size_t)(skip + src);
        check(cudaMemcpy(I.ak.get() + (at + row) * rbk, &s.k[se * rbk], cnt * rbk, cudaMemcpyHostToDevice), "load state");
        check(cudaMemcpy(I.av.get() + (at + row) * rbv, &s.v[se * rbv], cnt * rbv, cudaMemcpyHostToDevice), "load state");
        check(cudaMemcpy(I.apos.get() + at + row, p + src, cnt * sizeof(int32_t), cudaMemcpyHostToDevice), "load state");
      }
      I.h_used[i] = (int32_t)(s.arena ? n : s.n_past);  // the full cache counts the positions written
      e += (size_t)n;
    }
    check(cudaMemcpy(I.used.get(), I.h_used.data(), I.h_used.size() * sizeof(int32_t), cudaMemcpyHostToDevice), "load state");
    check(cudaDeviceSynchronize(), "load state");  // the copies land before the context's stream reads them
  } catch (...) {
    reset();
    throw;
  }
  if (!s.logits.empty()) {
    std::copy(s.logits.begin(), s.logits.end(), I.logits_h.begin());
    I.n_logit_rows = 1;
    I.pinned_logits = false;
  }
  if (s.arena) I.prepare_decode();
}

}  // namespace headkv
