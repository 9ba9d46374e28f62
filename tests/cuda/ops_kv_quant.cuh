// CUDA op checks (test_backend_ops.cu): K/V rows stored as q8_0 / q4_0 blocks on the device, against
// the CPU's quantizer (select/kv_types.cpp store_kv_row, llama.cpp's reference arithmetic).
//   gather_to_arena (the compressed prefill's store): the same fp32 (or fp16) inputs on both sides,
//     so the stored bytes must be identical;
//   rope_store into a quantized arena (decode and full-cache prefill): V bytes identical; K goes
//     through RoPE first (the CPU's rounding, cos/sin in double), so its blocks are compared as
//     values: at most one quant step (d) from the CPU's blocks of the CPU's RoPE'd keys (a flip at a
//     rounding boundary, should the keys differ in an ulp; 1.1 steps allow the scale's own ulp);
//   matvec_qkv_rope's quantized store (the decode step's fused epilogue) against the separate kernels.
#pragma once
#include "model/ops.h"
#include "op_check.cuh"
#include "quant/blocks.h"
#include "select/kv_arena.h"

namespace opcheck {

// CPU rows of type t for n rows of hd floats.
inline std::vector<uint8_t> cpu_rows(headkv::KVType t, const float* x, int64_t n, int hd) {
  const size_t rb = headkv::kv_row_bytes(t, hd);
  std::vector<uint8_t> out((size_t)n * rb);
  for (int64_t i = 0; i < n; ++i) headkv::store_kv_row(t, x + i * hd, hd, &out[i * rb]);
  return out;
}

inline void check_kv_quant_stores(cudaStream_t st) {
  using headkv::KVType;
  std::mt19937 rng(21);
  const std::pair<KVType, KVType> types[] = {{KVType::Q8_0, KVType::Q8_0}, {KVType::Q4_0, KVType::Q4_0},
                                             {KVType::Q8_0, KVType::F16}, {KVType::F16, KVType::Q4_0}};
  for (const auto& [tk, tv] : types)
    for (int hd : {64, 128}) {
      const size_t rbk = headkv::kv_row_bytes(tk, hd), rbv = headkv::kv_row_bytes(tv, hd);
      const std::string tn = fmt("K %s V %s hd=%d", headkv::kv_type_name(tk), headkv::kv_type_name(tv), hd);
      // ---- gather_to_arena: head g keeps rows list[g] of a layer buffer of N rows per head
      for (bool half : {false, true}) {
        const int nkv = 3;
        const int64_t N = 70;
        std::vector<int32_t> list((size_t)nkv * N, 0), count(nkv);
        std::vector<int64_t> seg(nkv);
        int64_t off = 5;
        for (int g = 0; g < nkv; ++g) {
          count[g] = 20 + 13 * g;
          for (int i = 0; i < count[g]; ++i) list[(size_t)g * N + i] = (i * 7 + g) % (int32_t)N;
          seg[g] = off;
          off += count[g] + 3;
        }
        const int64_t entries = off + 2;
        // values of a few orders of magnitude, with ties in magnitude of opposite sign (q4_0's rule)
        std::vector<float> K = normal((size_t)nkv * N * hd, rng, 1.5f), V = normal((size_t)nkv * N * hd, rng, 0.3f);
        for (size_t i = 0; i < K.size(); i += 97) K[i] = -K[i + 1 < K.size() ? i + 1 : i];
        if (half) {  // inputs as the fast precision's fp16 layer buffer holds them
          K = from_f16(to_f16(K));
          V = from_f16(to_f16(V));
        }
        cu::DBuf<float> k32 = to_dev(K, "K"), v32 = to_dev(V, "V");
        cu::DBuf<uint16_t> k16 = to_dev(to_f16(K), "K"), v16 = to_dev(to_f16(V), "V");
        cu::DBuf<uint8_t> ak = to_dev(std::vector<uint8_t>((size_t)entries * rbk, 0xA5), "arena K"),
                          av = to_dev(std::vector<uint8_t>((size_t)entries * rbv, 0xA5), "arena V");
        cu::DBuf<int32_t> dl = to_dev(list, "list"), dc = to_dev(count, "count"),
                          apos = to_dev(std::vector<int32_t>(entries, -1), "positions"), used = dev_zeros<int32_t>(nkv, "used");
        cu::DBuf<int64_t> dseg = to_dev(seg, "segments");
        cu::gather_to_arena(dl.get(), dc.get(), N, nkv, hd, half ? (const void*)k16.get() : k32.get(),
                            half ? (const void*)v16.get() : v32.get(), half, dseg.get(), ak.get(), av.get(), tk, tv,
                            apos.get(), used.get(), count[nkv - 1], st);
        sync(st, "gather_to_arena");
        const std::vector<uint8_t> gk = to_host(ak, (size_t)entries * rbk, "arena K"),
                                   gv = to_host(av, (size_t)entries * rbv, "arena V");
        int64_t bad = 0;
        std::vector<char> written((size_t)entries, 0);
        for (int g = 0; g < nkv; ++g)
          for (int i = 0; i < count[g]; ++i) {
            const int64_t e = seg[g] + i, src = (int64_t)g * N + list[(size_t)g * N + i];
            written[e] = 1;
            const std::vector<uint8_t> rk = cpu_rows(tk, &K[src * hd], 1, hd), rv = cpu_rows(tv, &V[src * hd], 1, hd);
            bad += !std::equal(rk.begin(), rk.end(), gk.begin() + e * rbk);
            bad += !std::equal(rv.begin(), rv.end(), gv.begin() + e * rbv);
          }
        for (int64_t e = 0; e < entries; ++e)  // entries not kept stay untouched
          if (!written[e]) {
            bad += std::any_of(gk.begin() + e * rbk, gk.begin() + (e + 1) * rbk, [](uint8_t b) { return b != 0xA5; });
            bad += std::any_of(gv.begin() + e * rbv, gv.begin() + (e + 1) * rbv, [](uint8_t b) { return b != 0xA5; });
          }
        report("gather_to_arena", tn + (half ? " from fp16" : " from fp32") + ": rows unlike the CPU's", (double)bad, 0.0);
      }
      // ---- rope_store into the arena: T tokens appended after each head's used entries
      {
        const int T = 4, nh = 4, nkv = 2, half_rd = hd / 2;
        const int32_t pos0 = 321;
        std::vector<int64_t> seg = {3, 3 + 9 + T + 2};
        const std::vector<int32_t> usedv = {9, 1};
        const int64_t entries = seg[1] + usedv[1] + T + 4;
        const std::vector<float> q = normal((size_t)T * nh * hd, rng), k = normal((size_t)T * nkv * hd, rng, 2.0f),
                                 v = normal((size_t)T * nkv * hd, rng, 0.5f), inv = inv_freqs(hd, 10000.0f);
        std::vector<float> cs, sn, rk = k;
        rope_tables(inv, pos0, T, 1.0f, cs, sn);
        for (int t = 0; t < T; ++t) headkv::rope(&rk[(size_t)t * nkv * hd], nkv, hd, hd, &cs[t * half_rd], &sn[t * half_rd]);
        cu::DBuf<float> dq = to_dev(q, "q"), dk = to_dev(k, "k"), dv = to_dev(v, "v"), dinv = to_dev(inv, "inv_freq");
        cu::DBuf<uint8_t> ak = to_dev(std::vector<uint8_t>((size_t)entries * rbk, 0xA5), "arena K"),
                          av = to_dev(std::vector<uint8_t>((size_t)entries * rbv, 0xA5), "arena V");
        cu::DBuf<int32_t> apos = to_dev(std::vector<int32_t>(entries, -1), "positions"), du = to_dev(usedv, "used");
        cu::DBuf<int64_t> dseg = to_dev(seg, "segments");
        cu::RopeStore r;
        r.q = dq.get();
        r.k = dk.get();
        r.v = dv.get();
        r.T = T;
        r.nh = nh;
        r.nkv = nkv;
        r.hd = hd;
        r.rope_dim = hd;
        r.inv_freq = dinv.get();
        r.pos0 = pos0;
        r.kh = ak.get();
        r.vh = av.get();
        r.tk = tk;
        r.tv = tv;
        r.pos = apos.get();
        r.seg_off = dseg.get();
        r.used = du.get();
        cu::rope_store(r, st);
        sync(st, "rope_store");
        const std::vector<uint8_t> gk = to_host(ak, (size_t)entries * rbk, "arena K"),
                                   gv = to_host(av, (size_t)entries * rbv, "arena V");
        const std::vector<int32_t> gp = to_host(apos, entries, "positions");
        int64_t bad_v = 0, bad_pos = 0;
        double k_steps = 0.0;  // largest |GPU - CPU| of a K value, in units of its block's CPU scale
        for (int t = 0; t < T; ++t)
          for (int g = 0; g < nkv; ++g) {
            const int64_t e = seg[g] + usedv[g] + t, src = (int64_t)t * nkv + g;
            const std::vector<uint8_t> rv = cpu_rows(tv, &v[src * hd], 1, hd), rkq = cpu_rows(tk, &rk[src * hd], 1, hd);
            bad_v += !std::equal(rv.begin(), rv.end(), gv.begin() + e * rbv);
            bad_pos += gp[e] != pos0 + t;
            std::vector<float> a(hd), b(hd);
            headkv::load_kv_row(tk, &gk[e * rbk], hd, a.data());
            headkv::load_kv_row(tk, rkq.data(), hd, b.data());
            for (int d = 0; d < hd; ++d) {
              float step = 1e-3f * std::fabs(b[d]) + 1e-12f;  // f16: an ulp or so
              if (headkv::kv_type_blocked(tk)) {
                const size_t bs = tk == KVType::Q8_0 ? 34 : 18;
                step = std::fabs(headkv::fp16_to_f32(headkv::qblk::rd16(&rkq[(d / 32) * bs]))) + 1e-12f;
              }
              k_steps = std::max(k_steps, (double)std::fabs(a[d] - b[d]) / step);
            }
          }
        report("rope_store", tn + ": V rows unlike the CPU's, positions", (double)(bad_v + bad_pos), 0.0);
        report("rope_store", tn + ": K off the CPU's blocks (quant steps)", k_steps, 1.1);
      }
    }
}

// The decode step's fused store (matvec_qkv_rope: each warp's K/V pair staged in fp32, the last pair
// of a block quantizing it) against the separate kernels (matvec_norm, then rope_store's warp
// quantizer), two tokens in a row (the block counters are reset for the next launch): the same
// arena bytes, q and positions.
inline void check_fused_quant_store(cudaStream_t st) {
  using headkv::KVType;
  std::mt19937 rng(22);
  const int cols = 512;
  const float eps = 1e-5f;
  for (const auto& [tk, tv] : {std::pair{KVType::Q8_0, KVType::Q8_0}, std::pair{KVType::Q4_0, KVType::Q4_0},
                               std::pair{KVType::Q8_0, KVType::F16}})
    for (int hd : {64, 128})
      for (bool q8x : {false, true}) {
        const int nh = cols / hd, nkv = 2;
        const GGMLType wt = GGMLType::Q8_0;
        DevWeight wq = upload_weight(wt, nh * hd, cols, rng), wk = upload_weight(wt, nkv * hd, cols, rng),
                  wv = upload_weight(wt, nkv * hd, cols, rng);
        const cu::DW ws[3] = {wq.w, wk.w, wv.w};
        const std::vector<float> nw = normal(cols, rng, 0.2f, 1.0f), inv = inv_freqs(hd, 10000.0f);
        const size_t rbk = headkv::kv_row_bytes(tk, hd), rbv = headkv::kv_row_bytes(tv, hd);
        const std::vector<int64_t> seg = {2, 11};
        const int64_t entries = 20;
        cu::DBuf<float> dnw = to_dev(nw, "norm"), dinv = to_dev(inv, "inv_freq");
        cu::DBuf<int64_t> dseg = to_dev(seg, "segments");
        struct Out {
          cu::DBuf<uint8_t> ak, av;
          cu::DBuf<int32_t> pos, used;
          cu::DBuf<float> q, k, v;
        } o[2];  // 0: fused, 1: separate
        for (Out& x : o) {
          x.ak = to_dev(std::vector<uint8_t>(entries * rbk, 0), "arena K");
          x.av = to_dev(std::vector<uint8_t>(entries * rbv, 0), "arena V");
          x.pos = to_dev(std::vector<int32_t>(entries, -1), "positions");
          x.used = to_dev(std::vector<int32_t>{3, 0}, "used");
          x.q = dev_zeros<float>((size_t)nh * hd, "q");
          x.k = dev_zeros<float>((size_t)nkv * hd, "k");
          x.v = dev_zeros<float>((size_t)nkv * hd, "v");
        }
        cu::DBuf<int32_t> qcount = dev_zeros<int32_t>(2 * nkv * hd / 32, "counters");
        const std::string what = fmt("K %s V %s hd=%d %s", headkv::kv_type_name(tk), headkv::kv_type_name(tv), hd,
                                     q8x ? "int8 x" : "fp32 x");
        bool ran = true;
        for (int step = 0; step < 2 && ran; ++step) {
          const std::vector<float> x = normal(cols, rng, 1.0f, 0.1f);
          cu::DBuf<float> dx = to_dev(x, "x");
          for (int which = 0; which < 2; ++which) {
            Out& y = o[which];
            cu::RopeStore r;
            r.q = y.q.get();
            r.k = y.k.get();
            r.v = y.v.get();
            r.T = 1;
            r.nh = nh;
            r.nkv = nkv;
            r.hd = hd;
            r.rope_dim = hd;
            r.inv_freq = dinv.get();
            r.pos0 = 40 + step;
            r.kh = y.ak.get();
            r.vh = y.av.get();
            r.tk = tk;
            r.tv = tv;
            r.pos = y.pos.get();
            r.seg_off = dseg.get();
            r.used = y.used.get();
            if (which == 0) {
              r.kstage = y.k.get();
              r.vstage = y.v.get();
              r.qcount = qcount.get();
              if (!cu::matvec_qkv_rope(ws, dx.get(), dnw.get(), eps, r, q8x, st)) {
                report_error("matvec_qkv_rope", what, "the fused path refused quantized K/V");
                ran = false;
                break;
              }
            } else {
              float* ys[3] = {y.q.get(), y.k.get(), y.v.get()};
              cu::matvec_norm(ws, 3, ys, dx.get(), dnw.get(), eps, q8x, st);
              cu::rope_store(r, st);
            }
            cu::add_used(y.used.get(), nkv, 1, st);
          }
          sync(st, "fused / separate quantized store");
        }
        if (!ran) continue;
        int64_t diff = 0;
        diff += to_host(o[0].ak, entries * rbk, "K") != to_host(o[1].ak, entries * rbk, "K");
        diff += to_host(o[0].av, entries * rbv, "V") != to_host(o[1].av, entries * rbv, "V");
        diff += to_host(o[0].q, (size_t)nh * hd, "q") != to_host(o[1].q, (size_t)nh * hd, "q");
        diff += to_host(o[0].pos, entries, "positions") != to_host(o[1].pos, entries, "positions");
        diff += to_host(qcount, 2 * nkv * hd / 32, "counters") != std::vector<int32_t>(2 * nkv * hd / 32, 0);
        report("matvec_qkv_rope", what + ": 2 steps unlike separate (K,V,q,pos,counters)", (double)diff, 0.0);
      }
}

}  // namespace opcheck
