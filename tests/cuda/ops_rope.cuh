// CUDA op checks (test_backend_ops.cu): RoPE and the K/V store, separate (rope_store) and fused
// into the Q/K/V matvec's epilogue (matvec_qkv_rope), against model/ops.h.
#pragma once
#include "model/ops.h"
#include "op_check.cuh"

namespace opcheck {

// ---- RoPE and the K/V store (ops.cu rope_store; matvec epilogue matvec_qkv_rope)

enum Target { ARENA, LAYER_F32, LAYER_F16 };
inline const char* target_name(Target t) { return t == ARENA ? "arena fp16" : t == LAYER_F32 ? "layer fp32" : "layer fp16"; }
constexpr float kSentinel = -12345.0f;
constexpr uint16_t kSentinel16 = 0xFBFF;  // -65504

// Where rope_store puts K/V row (t, g), and its host-side mirror of the target buffers.
struct KVTarget {
  Target tgt;
  int T, nkv, hd;
  std::vector<int64_t> seg;   // arena segment offsets
  std::vector<int32_t> used;  // arena entries already used per head
  int64_t ld_head = 0, row0 = 0, entries = 0;
  cu::DBuf<float> kf, vf;
  cu::DBuf<uint16_t> kh, vh;
  cu::DBuf<int32_t> pos;
  cu::DBuf<int64_t> dseg;
  cu::DBuf<int32_t> dused;

  KVTarget(Target t, int T_, int nkv_, int hd_) : tgt(t), T(T_), nkv(nkv_), hd(hd_) {
    if (tgt == ARENA) {  // heads at uneven offsets, head 0 already holding 7 entries
      int64_t off = 3;
      for (int g = 0; g < nkv; ++g) {
        seg.push_back(off);
        used.push_back(g == 0 ? 7 : g);
        off += used.back() + T + 5 + g;
      }
      entries = off + 9;
      pos = to_dev(std::vector<int32_t>(entries, -1), "positions");
      dseg = to_dev(seg, "segment offsets");
      dused = to_dev(used, "used counts");
    } else {
      ld_head = T + 13;
      row0 = 6;
      entries = nkv * ld_head;
    }
    const size_t n = (size_t)entries * hd;
    if (tgt == LAYER_F32) {
      kf = to_dev(std::vector<float>(n, kSentinel), "K");
      vf = to_dev(std::vector<float>(n, kSentinel), "V");
    } else {
      kh = to_dev(std::vector<uint16_t>(n, kSentinel16), "K");
      vh = to_dev(std::vector<uint16_t>(n, kSentinel16), "V");
    }
  }
  int64_t entry(int g, int t) const { return tgt == ARENA ? seg[g] + used[g] + t : g * ld_head + row0 + t; }
  void set(cu::RopeStore& r) const {
    if (tgt == ARENA) {
      r.kh = hptr(kh);
      r.vh = hptr(vh);
      r.pos = pos.get();
      r.seg_off = dseg.get();
      r.used = dused.get();
    } else if (tgt == LAYER_F32) {
      r.kf = kf.get();
      r.vf = vf.get();
    } else {
      r.kfh = hptr(kh);
      r.vfh = hptr(vh);
    }
    r.ld_head = ld_head;
    r.row0 = row0;
  }
  // Reports the stored rows against k, v ([T][nkv][hd], fp32), then (as a count) the entries
  // written that should not have been and the arena's positions pos0 + t.
  void compare(const std::string& op, const std::string& what, const std::vector<float>& k,
               const std::vector<float>& v, int32_t pos0, double bound) const {
    const size_t n = (size_t)entries * hd;
    std::vector<float> gk, gv;
    int64_t stray = 0;
    std::vector<char> written((size_t)entries, 0);
    for (int t = 0; t < T; ++t)
      for (int g = 0; g < nkv; ++g) written[entry(g, t)] = 1;
    if (tgt == LAYER_F32) {
      gk = to_host(kf, n, "K");
      gv = to_host(vf, n, "V");
      for (int64_t e = 0; e < entries; ++e)
        for (int d = 0; d < hd; ++d)
          stray += !written[e] && (gk[e * hd + d] != kSentinel || gv[e * hd + d] != kSentinel);
    } else {
      const std::vector<uint16_t> bk = to_host(kh, n, "K"), bv = to_host(vh, n, "V");
      for (int64_t e = 0; e < entries; ++e)
        for (int d = 0; d < hd; ++d) stray += !written[e] && (bk[e * hd + d] != kSentinel16 || bv[e * hd + d] != kSentinel16);
      gk = from_f16(bk);
      gv = from_f16(bv);
    }
    std::vector<float> got, ref;
    for (int t = 0; t < T; ++t)
      for (int g = 0; g < nkv; ++g)
        for (int d = 0; d < hd; ++d) {
          const size_t src = ((size_t)t * nkv + g) * hd + d, dst = (size_t)entry(g, t) * hd + d;
          got.push_back(gk[dst]);
          ref.push_back(k[src]);
          got.push_back(gv[dst]);
          ref.push_back(v[src]);
        }
    report(op, what + " K/V", nmax_err(got, ref), bound);
    int64_t bad_pos = 0;
    if (tgt == ARENA) {
      const std::vector<int32_t> p = to_host(pos, entries, "positions");
      for (int64_t e = 0; e < entries; ++e) bad_pos += !written[e] && p[e] != -1;
      for (int t = 0; t < T; ++t)
        for (int g = 0; g < nkv; ++g) bad_pos += p[entry(g, t)] != pos0 + t;
    }
    report(op, what + " stray+pos", (double)(stray + bad_pos), 0.0);
  }
};

inline void check_rope_store(cudaStream_t st) {
  std::mt19937 rng(4);
  struct C {
    int hd, rope_dim;
    bool neox;
    Target tgt;
    int T;
    bool pos_dev;  // position read from device memory (decode graph replays)
    float scale;   // linear position scaling
  };
  std::vector<C> cases;
  for (int hd : {64, 128})
    for (bool neox : {false, true})
      for (Target t : {ARENA, LAYER_F32, LAYER_F16}) cases.push_back({hd, hd, neox, t, 5, false, 1.0f});
  cases.push_back({128, 64, false, ARENA, 3, false, 1.0f});  // partial rotary dimensions
  cases.push_back({128, 64, true, LAYER_F32, 3, false, 1.0f});
  cases.push_back({64, 64, false, ARENA, 1, true, 4.0f});
  cases.push_back({128, 128, true, ARENA, 1, true, 1.0f});
  const int nh = 8, nkv = 2;
  const int32_t pos0 = 1000;
  for (const C& c : cases) {
    const int T = c.T, hd = c.hd, half = c.rope_dim / 2;
    const std::vector<float> q = normal((size_t)T * nh * hd, rng), k = normal((size_t)T * nkv * hd, rng),
                             v = normal((size_t)T * nkv * hd, rng), inv = inv_freqs(c.rope_dim, 10000.0f);
    std::vector<float> cs, sn, rq = q, rk = k;
    rope_tables(inv, pos0, T, c.scale, cs, sn);
    const auto rot = c.neox ? headkv::rope_neox : headkv::rope;
    for (int t = 0; t < T; ++t) {
      rot(&rq[(size_t)t * nh * hd], nh, hd, c.rope_dim, &cs[t * half], &sn[t * half]);
      rot(&rk[(size_t)t * nkv * hd], nkv, hd, c.rope_dim, &cs[t * half], &sn[t * half]);
    }
    cu::DBuf<float> dq = to_dev(q, "q"), dk = to_dev(k, "k"), dv = to_dev(v, "v"), dinv = to_dev(inv, "inv_freq");
    cu::DBuf<int32_t> dpos0 = to_dev(std::vector<int32_t>{pos0}, "pos0");
    KVTarget kv(c.tgt, T, nkv, hd);
    cu::RopeStore r;
    r.q = dq.get();
    r.k = dk.get();
    r.v = dv.get();
    r.T = T;
    r.nh = nh;
    r.nkv = nkv;
    r.hd = hd;
    r.rope_dim = c.rope_dim;
    r.neox = c.neox;
    r.inv_freq = dinv.get();
    r.rope_scale = c.scale;
    r.pos0 = c.pos_dev ? -77 : pos0;  // pos0_dev wins when set
    r.pos0_dev = c.pos_dev ? dpos0.get() : nullptr;
    kv.set(r);
    cu::rope_store(r, st);
    sync(st, "rope_store");
    const std::string what = fmt("hd=%d rope_dim=%d %s T=%d -> %s%s", hd, c.rope_dim, c.neox ? "neox" : "normal", T,
                                 target_name(c.tgt), c.pos_dev ? " pos0 on device" : "") +
                             (c.scale != 1.0f ? fmt(" scale %g", c.scale) : std::string());
    report("rope_store", what + " q", nmax_err(to_host(dq, q.size(), "q"), rq), kExact);
    kv.compare("rope_store", what, rk, v, pos0, c.tgt == LAYER_F32 ? kExact : kHalf);
  }
}

// One token's RMSNorm -> Q/K/V matvec with RoPE (normal pairs: the fused path is taken for llama
// blocks only) and the arena store in the epilogue, against RMSNorm, dequantize+dot, RoPE.
inline void check_qkv_rope(cudaStream_t st) {
  std::mt19937 rng(5);
  const int cols = 512;
  const float eps = 1e-5f;
  const int32_t pos0 = 517;
  for (GGMLType t : kTypes)
    for (int hd : {64, 128})
      for (bool q8x : {false, true}) {
        if (q8x && !has_q8x(t)) continue;
        const int nh = cols / hd, nkv = 2;
        DevWeight wq = upload_weight(t, nh * hd, cols, rng), wk = upload_weight(t, nkv * hd, cols, rng),
                  wv = upload_weight(t, nkv * hd, cols, rng);
        const std::vector<float> x = normal(cols, rng, 1.0f, 0.1f), nw = normal(cols, rng, 0.2f, 1.0f),
                                 inv = inv_freqs(hd, 10000.0f);
        std::vector<float> xn(cols), cs, sn;
        headkv::rms_norm(x.data(), nw.data(), xn.data(), cols, eps);
        // int8 activations: x times the norm weight quantized as the kernel does, 1/rms applied after
        const std::vector<float> xin = q8x ? q8_values(x.data(), nw.data(), cols) : xn;
        const double s = q8x ? rms_scale(x.data(), cols, eps) : 1.0;
        auto proj = [&](const DevWeight& w, int rows) {
          const std::vector<double> y = ref_matvec(w.deq, rows, cols, xin.data(), cols, 1);
          std::vector<float> out(y.size());
          for (size_t i = 0; i < y.size(); ++i) out[i] = (float)(y[i] * s);
          return out;
        };
        std::vector<float> rq = proj(wq, nh * hd), rk = proj(wk, nkv * hd), rv = proj(wv, nkv * hd);
        rope_tables(inv, pos0, 1, 1.0f, cs, sn);
        headkv::rope(rq.data(), nh, hd, hd, cs.data(), sn.data());
        headkv::rope(rk.data(), nkv, hd, hd, cs.data(), sn.data());

        cu::DBuf<float> dx = to_dev(x, "x"), dnw = to_dev(nw, "norm"), dinv = to_dev(inv, "inv_freq"),
                        dq = dev_zeros<float>(rq.size(), "q");
        KVTarget kv(ARENA, 1, nkv, hd);
        cu::RopeStore r;
        r.q = dq.get();
        r.T = 1;
        r.nh = nh;
        r.nkv = nkv;
        r.hd = hd;
        r.rope_dim = hd;
        r.inv_freq = dinv.get();
        r.pos0 = pos0;
        kv.set(r);
        const cu::DW ws[3] = {wq.w, wk.w, wv.w};
        const std::string what = fmt("%s hd=%d heads %d/%d %s", tname(t), hd, nh, nkv, q8x ? "int8 x" : "fp32 x");
        if (!cu::matvec_qkv_rope(ws, dx.get(), dnw.get(), eps, r, q8x, st)) {
          report_error("matvec_qkv_rope", what, "the fused path refused these shapes");
          continue;
        }
        sync(st, "matvec_qkv_rope");
        report("matvec_qkv_rope", what + " q", nmax_err(to_host(dq, rq.size(), "q"), rq), q8x ? kInt8 : kDot);
        kv.compare("matvec_qkv_rope", what, rk, rv, pos0, q8x ? kInt8 : kHalf);
      }
}

}  // namespace opcheck
