// CUDA op checks (test_backend_ops.cu): the attention kernels' sliding window (a query sees only the
// last `window` keys), ring (key j at row j % ring) and score soft-capping, as Gemma's layers use
// them (DecodeArgs / FlashArgs::window, ::ring, ::softcap), against the double-precision softmax
// attention over exactly the keys the window holds, gathered from their rows.
#pragma once
#include "op_check.cuh"

namespace opcheck {

// Rows of segment `seg` (ring rows, or 0: row j = key j) of keys lo..hi-1, gathered contiguously.
inline std::vector<float> window_rows(const std::vector<float>& X, int64_t seg, int64_t ring, int64_t lo, int64_t hi,
                                      int hd) {
  std::vector<float> out;
  for (int64_t j = lo; j < hi; ++j) {
    const int64_t r = seg + (ring ? j % ring : j);
    out.insert(out.end(), X.begin() + r * hd, X.begin() + (r + 1) * hd);
  }
  return out;
}

inline void check_decode_window(cudaStream_t st) {
  std::mt19937 rng(21);
  struct C {
    int64_t used, window, ring;  // keys before the new token, window, ring rows (0: none)
    int splits;
    float cap;  // soft-capping (0: none; 1.5 bites on scores of about N(0, 1))
  };
  for (const int hd : {64, 256})
    for (const C c : {C{300, 40, 0, 3, 0}, C{57, 40, 100, 1, 0}, C{250, 40, 100, 2, 0}, C{1000, 64, 72, 5, 0},
                      C{5, 8, 12, 2, 0}, C{700, 0, 0, 4, 1.5f}, C{250, 40, 100, 2, 1.5f}}) {
      const int warps = cu::decode_attention_warps(hd, 4, headkv::KVType::F16, headkv::KVType::F16);
      const int nkv = 2, G = 4, nh = nkv * G;
      const int64_t rows = c.ring ? c.ring : c.used + 1 + 7;
      std::vector<int64_t> seg(nkv);
      std::vector<int32_t> used(nkv, (int32_t)c.used), item_head, item_split, head_splits(nkv, c.splits), head_first(nkv);
      for (int g = 0; g < nkv; ++g) {
        seg[g] = 3 + g * rows;
        head_first[g] = (int32_t)item_head.size();
        for (int s = 0; s < c.splits; ++s) {
          item_head.push_back(g);
          item_split.push_back(s);
        }
      }
      const int64_t entries = 3 + nkv * rows;
      const std::vector<float> q = normal((size_t)nh * hd, rng), K = normal((size_t)entries * hd, rng),
                               V = normal((size_t)entries * hd, rng);
      const std::vector<uint16_t> Kh = to_f16(K), Vh = to_f16(V);
      const std::vector<float> Kr = from_f16(Kh), Vr = from_f16(Vh);
      const int64_t len = c.used + 1, lo = c.window ? std::max<int64_t>(0, len - c.window) : 0;
      std::vector<double> ref((size_t)nh * hd);
      for (int h = 0; h < nh; ++h) {
        const int g = h / G;
        const std::vector<float> kw = window_rows(Kr, seg[g], c.ring, lo, len, hd), vw = window_rows(Vr, seg[g], c.ring, lo, len, hd);
        ref_attend(&q[(size_t)h * hd], kw.data(), vw.data(), len - lo, hd, &ref[(size_t)h * hd], c.cap);
      }
      cu::DBuf<float> dq = to_dev(q, "q"), dout = dev_zeros<float>(q.size(), "out"),
                      part = dev_zeros<float>(item_head.size() * G * (hd + 2), "partials");
      cu::DBuf<uint16_t> dk = to_dev(Kh, "K"), dv = to_dev(Vh, "V");
      cu::DBuf<int64_t> dseg = to_dev(seg, "segments");
      cu::DBuf<int32_t> dused = to_dev(used, "used"), dih = to_dev(item_head, "items"), dis = to_dev(item_split, "items"),
                        dhs = to_dev(head_splits, "items"), dhf = to_dev(head_first, "items");
      cu::DecodeArgs a;
      a.q = dq.get();
      a.out = dout.get();
      a.k = hptr(dk);
      a.v = hptr(dv);
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
      a.window = c.window;
      a.ring = c.ring;
      a.softcap = c.cap;
      cu::decode_attention(a, st);
      sync(st, "decode_attention (window)");
      report("decode_attention", fmt("hd=%d keys %lld window %lld ring %lld softcap %.1f splits %d warps %d", hd,
                                     (long long)len, (long long)c.window, (long long)c.ring, c.cap, c.splits, warps),
             nmax_err(to_host(dout, q.size(), "out"), ref), kAttn);
    }
}

inline void check_flash_window(cudaStream_t st) {
  std::mt19937 rng(22);
  struct C {
    int T;
    int64_t n_before, window, ring;  // ring 0: the layer buffer (rows = keys), else an arena ring
    float cap;
  };
  for (const int hd : {64, 256})
    for (const C c : {C{200, 0, 40, 0, 0}, C{70, 130, 16, 0, 0}, C{90, 150, 40, 140, 0}, C{300, 2000, 64, 400, 0},
                      C{1, 33, 8, 20, 0}, C{150, 100, 0, 0, 1.5f}, C{90, 150, 40, 140, 1.5f}}) {
      const int nkv = 2, G = 4, nh = nkv * G, T = c.T;
      const int64_t n_keys = c.n_before + T, rows = c.ring ? c.ring : n_keys + 5;
      std::vector<int64_t> seg(nkv);
      std::vector<int32_t> seg_len(nkv, (int32_t)c.n_before);
      for (int g = 0; g < nkv; ++g) seg[g] = 7 + g * rows;
      const int64_t entries = 7 + nkv * rows;
      const std::vector<float> q = normal((size_t)T * nh * hd, rng), K = normal((size_t)entries * hd, rng),
                               V = normal((size_t)entries * hd, rng);
      const std::vector<uint16_t> Kh = to_f16(K), Vh = to_f16(V);
      const std::vector<float> Kr = from_f16(Kh), Vr = from_f16(Vh);
      std::vector<double> ref32((size_t)T * nh * hd), ref16(ref32.size());
      for (int t = 0; t < T; ++t)
        for (int h = 0; h < nh; ++h) {
          const int g = h / G;
          const int64_t hi = c.n_before + t + 1, lo = c.window ? std::max<int64_t>(0, hi - c.window) : 0;
          const size_t o = ((size_t)t * nh + h) * hd;
          std::vector<float> kw = window_rows(K, seg[g], c.ring, lo, hi, hd), vw = window_rows(V, seg[g], c.ring, lo, hi, hd);
          ref_attend(&q[o], kw.data(), vw.data(), hi - lo, hd, &ref32[o], c.cap);
          kw = window_rows(Kr, seg[g], c.ring, lo, hi, hd);
          vw = window_rows(Vr, seg[g], c.ring, lo, hi, hd);
          ref_attend(&q[o], kw.data(), vw.data(), hi - lo, hd, &ref16[o], c.cap);
        }
      cu::DBuf<float> dq = to_dev(q, "q"), dout = dev_zeros<float>(q.size(), "out"), dk32 = to_dev(K, "K"),
                      dv32 = to_dev(V, "V");
      cu::DBuf<uint16_t> dk16 = to_dev(Kh, "K"), dv16 = to_dev(Vh, "V");
      cu::DBuf<int64_t> dseg = to_dev(seg, "segments");
      cu::DBuf<int32_t> dlen = to_dev(seg_len, "segment lengths");
      const std::string what = fmt("hd=%d T=%d keys before %lld window %lld ring %lld softcap %.1f", hd, T,
                                   (long long)c.n_before, (long long)c.window, (long long)c.ring, c.cap);
      for (int kernel = 0; kernel < 3; ++kernel) {  // fp32 K/V SIMT (layer buffer only), fp16 SIMT, fp16 tensor cores
        if (c.ring && kernel == 0) continue;
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
        f.seg_off = dseg.get();
        f.seg_len = dlen.get();
        f.window = c.window;
        f.ring = c.ring;
        f.softcap = c.cap;
        cu::check(cudaMemsetAsync(dout.get(), 0xFF, q.size() * sizeof(float), st), "out");  // NaN: unwritten shows
        kernel == 2 ? cu::flash_attention_tc(f, st) : cu::flash_attention(f, st);
        sync(st, "flash_attention (window)");
        const char* kn[3] = {" fp32 K/V", " fp16 K/V", " fp16 K/V"};
        report(kernel == 2 ? "flash_attention_tc" : "flash_attention", what + kn[kernel],
               nmax_err(to_host(dout, q.size(), "out"), kernel ? ref16 : ref32), kernel == 2 ? kAttnTc : kAttn);
      }
    }
}

}  // namespace opcheck
