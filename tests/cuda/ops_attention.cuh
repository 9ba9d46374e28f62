// CUDA op checks (test_backend_ops.cu): decode attention over the arena and causal prefill
// attention, against a double-precision softmax attention (the CPU's attention is a Context member).
#pragma once
#include "op_check.cuh"

namespace opcheck {

// ---- decode attention (decode_attn.cu): one query per head over the arena, split-K; K and V rows
// of f16 (split_body), or q8_0 / q4_0 blocks (split_body_q, also with f16 V), stored by the
// CPU's store_kv_row; the reference attends in double over the same rows read back by load_kv_row,
// so the bound is the f16 kernel's.

inline void check_decode_attention(cudaStream_t st) {
  using headkv::KVType;
  struct C {
    int hd, nh, nkv;
  };
  const std::pair<KVType, KVType> types[] = {
      {KVType::F16, KVType::F16}, {KVType::Q8_0, KVType::Q8_0}, {KVType::Q4_0, KVType::Q4_0},
      {KVType::Q8_0, KVType::F16}, {KVType::F16, KVType::Q4_0}};
  for (const auto& [tk, tv] : types) {
  std::mt19937 rng(8);
  // keys per KV head (its used entries + the token just appended): tile edges (32), a 256-key
  // block of 8 warps and beyond, a single key
  const int64_t lens[] = {1, 32, 33, 256, 257, 1000, 4100, 78};
  int ci = 0;
  for (const C c : {C{64, 8, 8}, C{64, 12, 4}, C{128, 32, 8}, C{128, 16, 2}, C{256, 4, 1}, C{256, 16, 2}}) {
    const int hd = c.hd, nh = c.nh, nkv = c.nkv, G = nh / nkv;
    for (int warps : {8, 4, 2}) {
      if (hd == 256 && (tk != KVType::F16 || tv != KVType::F16)) break;  // not built at hd 256 (refused)
      if (cu::decode_attention_warps(hd, warps, tk, tv) != warps) {
        std::printf("%-20s hd=%d warps %d K %s V %s: not run (too wide for the device's shared memory per block; "
                    "hd 256: 4 at most)\n",
                    "decode_attention", hd, warps, headkv::kv_type_name(tk), headkv::kv_type_name(tv));
        continue;
      }
      ++ci;
      std::vector<int64_t> len(nkv), seg(nkv + 1);
      std::vector<int32_t> used(nkv), item_head, item_split, head_splits(nkv), head_first(nkv);
      int64_t off = 5;  // entries before the first segment: never read
      std::string shape;
      for (int g = 0; g < nkv; ++g) {
        len[g] = lens[(g + ci) % 8];
        used[g] = (int32_t)(len[g] - 1);
        seg[g] = off;
        off += len[g] + 37;  // capacity beyond the used entries: never read
        // splits: one, ~64 and ~256 keys per item, or more items than tiles (empty items)
        const int64_t variants[4] = {1, cu::cdiv(len[g], 64), cu::cdiv(len[g], 256) + 1,
                                     std::min<int64_t>(512, len[g] / 16 + 3)};
        head_splits[g] = (int32_t)std::clamp<int64_t>(variants[(g + ci) % 4], 1, 512);
        head_first[g] = (int32_t)item_head.size();
        for (int s = 0; s < head_splits[g]; ++s) {
          item_head.push_back(g);
          item_split.push_back(s);
        }
        shape += fmt("%s%lld/%d", g ? "," : "", (long long)len[g], head_splits[g]);
      }
      seg[nkv] = off;
      const int64_t entries = off + 3;
      const std::vector<float> q = normal((size_t)nh * hd, rng);
      std::vector<float> K = normal((size_t)entries * hd, rng), V = normal((size_t)entries * hd, rng);
      for (int g = 0; g < nkv; ++g) {
        // Each query head of the group gets one key it strongly attends to (score 6) at a place an
        // off-by-one would miss: the new token, the first key, tile edges, the middle.
        const int64_t at[8] = {len[g] - 1, 0, 31, 32, len[g] / 2, 255, 256, len[g] - 2};
        std::vector<float> strong(hd);
        for (int hh = 0; hh < G; ++hh) {
          const float* qh = &q[(size_t)(g * G + hh) * hd];
          double n2 = 0.0;
          for (int i = 0; i < hd; ++i) n2 += (double)qh[i] * qh[i];
          for (int i = 0; i < hd; ++i) strong[i] = (float)(qh[i] * 6.0 * std::sqrt((double)hd) / n2);
          const int64_t j = at[hh % 8];
          if (j < 0 || j >= len[g]) continue;
          std::copy(strong.begin(), strong.end(), K.begin() + (seg[g] + j) * hd);
          for (int i = 0; i < hd; ++i) V[(seg[g] + j) * hd + i] = (i + hh) % 2 ? 3.0f : -3.0f;
        }
        // unused capacity: keys the group's last head would weigh most, values far off
        for (int64_t e = seg[g] + len[g]; e < seg[g + 1]; ++e)
          for (int i = 0; i < hd; ++i) {
            K[e * hd + i] = strong[i];
            V[e * hd + i] = 500.0f;
          }
      }
      // the stored rows (and 16 spare bytes, as the arena has) and what they hold
      const size_t rbk = headkv::kv_row_bytes(tk, hd), rbv = headkv::kv_row_bytes(tv, hd);
      std::vector<uint8_t> Kq((size_t)entries * rbk + 16), Vq((size_t)entries * rbv + 16);
      std::vector<float> Kr(K.size()), Vr(V.size());
      for (int64_t e = 0; e < entries; ++e) {
        headkv::store_kv_row(tk, &K[e * hd], hd, &Kq[e * rbk]);
        headkv::store_kv_row(tv, &V[e * hd], hd, &Vq[e * rbv]);
        headkv::load_kv_row(tk, &Kq[e * rbk], hd, &Kr[e * hd]);
        headkv::load_kv_row(tv, &Vq[e * rbv], hd, &Vr[e * hd]);
      }
      std::vector<double> ref((size_t)nh * hd);
      for (int h = 0; h < nh; ++h) {
        const int g = h / G;
        ref_attend(&q[(size_t)h * hd], &Kr[seg[g] * hd], &Vr[seg[g] * hd], len[g], hd, &ref[(size_t)h * hd]);
      }
      cu::DBuf<float> dq = to_dev(q, "q"), dout = dev_zeros<float>(q.size(), "out"),
                      part = dev_zeros<float>(item_head.size() * G * (hd + 2), "partials");
      cu::DBuf<uint8_t> dk = to_dev(Kq, "K"), dv = to_dev(Vq, "V");
      cu::DBuf<int64_t> dseg = to_dev(std::vector<int64_t>(seg.begin(), seg.begin() + nkv), "segments");
      cu::DBuf<int32_t> dused = to_dev(used, "used"), dih = to_dev(item_head, "items"), dis = to_dev(item_split, "items"),
                        dhs = to_dev(head_splits, "items"), dhf = to_dev(head_first, "items");
      cu::DecodeArgs a;
      a.q = dq.get();
      a.out = dout.get();
      a.k = dk.get();
      a.v = dv.get();
      a.tk = tk;
      a.tv = tv;
      a.seg_off = dseg.get();
      a.used = dused.get();
      a.item_head = dih.get();
      a.item_split = dis.get();
      a.head_splits = dhs.get();
      a.head_first = dhf.get();
      a.n_items = (int)item_head.size();
      a.nh = nh;
      a.nkv = nkv;
      a.hd = hd;
      a.warps = warps;
      a.part = part.get();
      cu::decode_attention(a, st);
      sync(st, "decode_attention");
      report("decode_attention", fmt("%s/%s hd=%d heads %d/%d warps %d keys/splits ", headkv::kv_type_name(tk),
                                     headkv::kv_type_name(tv), hd, nh, nkv, warps) + shape,
             nmax_err(to_host(dout, q.size(), "out"), ref), kAttn);
    }
  }
  }
}

// ---- prefill attention (flash_attn.cu fp32 SIMT, flash_attn_mma.cu tensor cores), causal GQA

inline void check_flash_attention(cudaStream_t st) {
  std::mt19937 rng(9);
  struct L {
    int T;
    int64_t n_before;
  };
  for (int hd : {64, 128, 256})
    for (const auto& [nh, nkv] : {std::pair<int, int>{4, 4}, std::pair<int, int>{8, 2}}) {
      const int G = nh / nkv;
      // the compressed prefill's layer buffer ([g][N][hd]: keys n_before + t), then the arena
      // (segments of several lengths: seg_len[g] keys before the chunk)
      for (const L l : {L{1, 0}, L{70, 0}, L{200, 77}, L{90, -1}}) {
        const int T = l.T;
        const bool arena = l.n_before < 0;
        std::vector<int64_t> seg(nkv), nb(nkv);
        std::vector<int32_t> seg_len(nkv);
        int64_t entries = 0, ld_head = 0;
        if (arena) {
          const int32_t lens[4] = {0, 100, 33, 250};
          int64_t off = 9;
          for (int g = 0; g < nkv; ++g) {
            seg[g] = off;
            nb[g] = seg_len[g] = lens[g % 4];
            off += seg_len[g] + T + 11;
          }
          entries = off;
        } else {
          ld_head = l.n_before + T + 5;
          for (int g = 0; g < nkv; ++g) {
            seg[g] = g * ld_head;
            nb[g] = l.n_before;
          }
          entries = nkv * ld_head;
        }
        const std::vector<float> q = normal((size_t)T * nh * hd, rng), K = normal((size_t)entries * hd, rng),
                                 V = normal((size_t)entries * hd, rng);
        const std::vector<uint16_t> Kh = to_f16(K), Vh = to_f16(V);
        const std::vector<float> Kr = from_f16(Kh), Vr = from_f16(Vh);
        std::vector<double> ref32((size_t)T * nh * hd), ref16(ref32.size());
        for (int t = 0; t < T; ++t)
          for (int h = 0; h < nh; ++h) {
            const int g = h / G;
            const size_t o = ((size_t)t * nh + h) * hd;
            if (!arena) ref_attend(&q[o], &K[seg[g] * hd], &V[seg[g] * hd], nb[g] + t + 1, hd, &ref32[o]);
            ref_attend(&q[o], &Kr[seg[g] * hd], &Vr[seg[g] * hd], nb[g] + t + 1, hd, &ref16[o]);
          }
        cu::DBuf<float> dq = to_dev(q, "q"), dout = dev_zeros<float>(q.size(), "out"), dk32 = to_dev(K, "K"),
                        dv32 = to_dev(V, "V");
        cu::DBuf<uint16_t> dk16 = to_dev(Kh, "K"), dv16 = to_dev(Vh, "V");
        cu::DBuf<int64_t> dseg = to_dev(seg, "segments");
        cu::DBuf<int32_t> dlen = to_dev(seg_len, "segment lengths");
        const std::string what =
            arena ? fmt("hd=%d heads %d/%d T=%d arena, keys before %s", hd, nh, nkv, T, nkv == 2 ? "0,100" : "0,100,33,250")
                  : fmt("hd=%d heads %d/%d T=%d layer, %lld keys before", hd, nh, nkv, T, (long long)l.n_before);
        for (int kernel = 0; kernel < 3; ++kernel) {  // fp32 K/V SIMT, fp16 K/V SIMT, fp16 tensor cores
          if (arena && kernel == 0) continue;            // the arena is fp16
          cu::FlashArgs f;
          f.q = dq.get();
          f.out = dout.get();
          f.half_kv = kernel > 0;
          f.k = kernel ? (const void*)dk16.get() : dk32.get();
          f.v = kernel ? (const void*)dv16.get() : dv32.get();
          f.T = T;
          f.nh = nh;
          f.nkv = nkv;
          f.hd = hd;
          if (arena) {
            f.seg_off = dseg.get();
            f.seg_len = dlen.get();
          } else {
            f.ld_head = ld_head;
            f.n_before = l.n_before;
          }
          cu::check(cudaMemsetAsync(dout.get(), 0xFF, q.size() * sizeof(float), st), "out");  // NaN: unwritten shows
          kernel == 2 ? cu::flash_attention_tc(f, st) : cu::flash_attention(f, st);
          sync(st, "flash_attention");
          const char* kn[3] = {" fp32 K/V", " fp16 K/V", " fp16 K/V"};
          report(kernel == 2 ? "flash_attention_tc" : "flash_attention", what + kn[kernel],
                 nmax_err(to_host(dout, q.size(), "out"), kernel ? ref16 : ref32), kernel == 2 ? kAttnTc : kAttn);
        }
        // the arena's rows as q8_0 / q4_0 blocks (store_kv_row), the reference over what they hold
        // (not built at hd 256: flash_attention refuses it)
        if (!arena || hd == 256) continue;
        using headkv::KVType;
        for (const auto& [tk, tv] : {std::pair{KVType::Q8_0, KVType::Q8_0}, std::pair{KVType::Q4_0, KVType::Q4_0},
                                     std::pair{KVType::Q8_0, KVType::F16}}) {
          const size_t rbk = headkv::kv_row_bytes(tk, hd), rbv = headkv::kv_row_bytes(tv, hd);
          std::vector<uint8_t> Kq((size_t)entries * rbk), Vq((size_t)entries * rbv);
          std::vector<float> Kd(K.size()), Vd(V.size());
          for (int64_t e = 0; e < entries; ++e) {
            headkv::store_kv_row(tk, &K[e * hd], hd, &Kq[e * rbk]);
            headkv::store_kv_row(tv, &V[e * hd], hd, &Vq[e * rbv]);
            headkv::load_kv_row(tk, &Kq[e * rbk], hd, &Kd[e * hd]);
            headkv::load_kv_row(tv, &Vq[e * rbv], hd, &Vd[e * hd]);
          }
          std::vector<double> refq(ref32.size());
          for (int t = 0; t < T; ++t)
            for (int h = 0; h < nh; ++h) {
              const size_t o = ((size_t)t * nh + h) * hd;
              ref_attend(&q[o], &Kd[seg[h / G] * hd], &Vd[seg[h / G] * hd], nb[h / G] + t + 1, hd, &refq[o]);
            }
          cu::DBuf<uint8_t> dkq = to_dev(Kq, "K"), dvq = to_dev(Vq, "V");
          for (bool tc : {false, true}) {
            cu::FlashArgs f;
            f.q = dq.get();
            f.out = dout.get();
            f.half_kv = true;
            f.k = dkq.get();
            f.v = dvq.get();
            f.tk = tk;
            f.tv = tv;
            f.T = T;
            f.nh = nh;
            f.nkv = nkv;
            f.hd = hd;
            f.seg_off = dseg.get();
            f.seg_len = dlen.get();
            cu::check(cudaMemsetAsync(dout.get(), 0xFF, q.size() * sizeof(float), st), "out");
            tc ? cu::flash_attention_tc(f, st) : cu::flash_attention(f, st);
            sync(st, "flash_attention");
            report(tc ? "flash_attention_tc" : "flash_attention",
                   what + fmt(" K %s V %s", headkv::kv_type_name(tk), headkv::kv_type_name(tv)),
                   nmax_err(to_host(dout, q.size(), "out"), refq), tc ? kAttnTc : kAttn);
          }
        }
      }
    }
}

}  // namespace opcheck
