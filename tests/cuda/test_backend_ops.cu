// The CUDA backend's ops against the CPU's (llama.cpp's test-backend-ops idea): every kernel the
// CUDA forward pass and selection launch, on random inputs from fixed seeds, against the CPU's op
// (model/ops.h, quant/quant.h, select/selection.h) or, where the CPU has no stand-alone function
// (attention, SwiGLU's product), a plain double-precision reference here. One line per case: op,
// shape/type, error, bound, PASS/FAIL; exit 1 on any failure, 77 (ctest: skipped) without a GPU.
//
// Error: normalized maximum error max|gpu - ref| / max|ref| over the case's outputs (the GPU
// output's NaN or infinity fails), or a count of wrong entries where results are discrete (stored
// positions, untouched memory, kept positions). The bounds (see each check) sit well above the
// rounding the kernels are designed to, and far below what a wrong index, rotation style, causal
// extent or scale would cost.
#include <algorithm>
#include <iterator>

#include "model/ops.h"
#include "op_check.cuh"
#include "select/selection.h"

using namespace opcheck;

namespace {

const GGMLType kTypes[] = {GGMLType::F32,  GGMLType::F16,  GGMLType::BF16, GGMLType::Q4_0,
                           GGMLType::Q4_1, GGMLType::Q5_0, GGMLType::Q5_1, GGMLType::Q8_0,
                           GGMLType::Q4_K, GGMLType::Q5_K, GGMLType::Q6_K};
// Types with int8-activation matvecs (matvec_q8x.cu).
bool has_q8x(GGMLType t) {
  return t == GGMLType::Q4_0 || t == GGMLType::Q4_1 || t == GGMLType::Q8_0 || t == GGMLType::Q4_K ||
         t == GGMLType::Q5_K || t == GGMLType::Q6_K;
}
const char* tname(GGMLType t) {
  static std::string s[64];
  std::string& n = s[(int)t % 64];
  if (n.empty()) n = headkv::type_name(t);
  return n.c_str();
}

// Bounds. fp32 kernels doing the CPU's arithmetic (RMSNorm's double sum, RoPE's unfused products,
// the decoders' d*q+m): 1e-6, i.e. a few ulps. fp32 dot products / attention in another summation
// order: 5e-5 / 1e-4 (measured rounding is ~1e-6). A result stored as fp16: 1e-3 (half an fp16 ulp
// is 4.9e-4 of the value). int8 activations (one scale per 32 values, llama.cpp's q8_1): 3e-2
// (the quantization error of x is ~0.5% of a dot product). fp16 Q and softmax weights on tensor
// cores (flash_attention_tc): 1e-2.
constexpr double kExact = 1e-6, kDot = 5e-5, kAttn = 1e-4, kHalf = 1e-3, kInt8 = 3e-2, kAttnTc = 1e-2;

// ---- element-wise ops (ops.cu) against model/ops.h

void check_rms_norm(cudaStream_t st) {
  std::mt19937 rng(1);
  struct S {
    int64_t T, d;
    bool in_place;  // per-head q/k norm (qwen3) runs in place
  };
  for (const S sh : {S{3, 576, false}, S{2, 4096, false}, S{24, 64, true}, S{16, 128, true}}) {
    const float eps = 1e-5f;
    std::vector<float> x = normal(sh.T * sh.d, rng, 2.0f, 0.3f), w = normal(sh.d, rng, 0.5f, 1.0f), ref(x.size());
    for (int64_t t = 0; t < sh.T; ++t) headkv::rms_norm(&x[t * sh.d], w.data(), &ref[t * sh.d], sh.d, eps);
    cu::DBuf<float> dx = to_dev(x, "x"), dw = to_dev(w, "w"), dout;
    if (!sh.in_place) dout = dev_zeros<float>(x.size(), "out");
    cu::DBuf<float>& res = sh.in_place ? dx : dout;
    cu::rms_norm(dx.get(), dw.get(), res.get(), sh.T, sh.d, eps, st);
    sync(st, "rms_norm");
    report("rms_norm", fmt("T=%lld d=%lld%s", (long long)sh.T, (long long)sh.d, sh.in_place ? " in place" : ""),
           nmax_err(to_host(res, x.size(), "out"), ref), kExact);
  }
}

void check_add_bias(cudaStream_t st) {
  std::mt19937 rng(2);
  for (const int64_t n : {64, 896}) {
    const int64_t T = 5;
    std::vector<float> x = normal(T * n, rng), b = normal(n, rng), ref = x;
    headkv::add_bias(ref.data(), b, T);
    cu::DBuf<float> dx = to_dev(x, "x"), db = to_dev(b, "b");
    cu::add_bias(dx.get(), db.get(), T, n, st);
    sync(st, "add_bias");
    report("add_bias", fmt("T=%lld n=%lld", (long long)T, (long long)n), nmax_err(to_host(dx, x.size(), "x"), ref),
           0.0);  // one fp32 addition: bit-identical
  }
}

void check_silu_mul(cudaStream_t st) {
  std::mt19937 rng(3);
  const int64_t n = 10007;
  std::vector<float> g = normal(n, rng, 4.0f), u = normal(n, rng), ref(n);
  for (int64_t i = 0; i < n; ++i) ref[i] = headkv::silu(g[i]) * u[i];
  cu::DBuf<float> dg = to_dev(g, "g"), du = to_dev(u, "u");
  cu::silu_mul(dg.get(), du.get(), n, st);
  sync(st, "silu_mul");
  report("silu_mul", fmt("n=%lld", (long long)n), nmax_err(to_host(dg, n, "g"), ref), kExact);
}

// ---- RoPE and the K/V store (ops.cu rope_store; matvec epilogue matvec_qkv_rope)

enum Target { ARENA, LAYER_F32, LAYER_F16 };
const char* target_name(Target t) { return t == ARENA ? "arena fp16" : t == LAYER_F32 ? "layer fp32" : "layer fp16"; }
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

void check_rope_store(cudaStream_t st) {
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
void check_qkv_rope(cudaStream_t st) {
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
        auto proj = [&](const DevWeight& w, int rows) {
          const std::vector<double> y = ref_matvec(w.deq, rows, cols, xn.data(), cols, 1);
          return std::vector<float>(y.begin(), y.end());
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

// ---- matvec (matvec.cu fp32 activations, matvec_q8x.cu int8) against dequantize_row + dot

void check_matvec(cudaStream_t st) {
  std::mt19937 rng(6);
  const int rows = 101;  // odd: the last warp's second row is past the end
  const float eps = 1e-5f;
  for (GGMLType t : kTypes)
    for (int cols : {512, 768}) {
      DevWeight w = upload_weight(t, rows, cols, rng), w2 = upload_weight(t, rows, cols, rng),
                w3 = upload_weight(t, 40, cols, rng);
      for (bool q8x : {false, true}) {
        if (q8x && !has_q8x(t)) continue;
        const double bound = q8x ? kInt8 : kDot;
        const char* xs = q8x ? "int8 x" : "fp32 x";
        // y = W x for T tokens (x rows ldx apart, y rows ldy apart); int8 activations: one token
        for (int T : {1, 5}) {
          if (q8x && T > 1) continue;
          const int64_t ldx = cols + 32, ldy = rows + 3;
          const std::vector<float> x = normal((size_t)T * ldx, rng);
          const std::vector<double> ref = ref_matvec(w.deq, rows, cols, x.data(), ldx, T);
          cu::DBuf<float> dx = to_dev(x, "x"), dy = dev_zeros<float>((size_t)T * ldy, "y");
          cu::matvec(w.w, nullptr, dx.get(), ldx, dy.get(), ldy, T, cu::MV_STORE, q8x, st);
          sync(st, "matvec");
          const std::vector<float> y = to_host(dy, (size_t)T * ldy, "y");
          std::vector<float> got;
          for (int tt = 0; tt < T; ++tt)
            for (int r = 0; r < rows; ++r) got.push_back(y[tt * ldy + r]);
          report("matvec", fmt("%s %dx%d T=%d %s", tname(t), rows, cols, T, xs), nmax_err(got, ref), bound);
        }
        if (cols != 512) continue;
        {  // y += W x
          const int T = q8x ? 1 : 2;
          const std::vector<float> x = normal((size_t)T * cols, rng), y0 = normal((size_t)T * rows, rng, 0.5f);
          const std::vector<double> wx = ref_matvec(w.deq, rows, cols, x.data(), cols, T);
          std::vector<double> ref(wx.size());
          for (size_t i = 0; i < ref.size(); ++i) ref[i] = wx[i] + y0[i];
          cu::DBuf<float> dx = to_dev(x, "x"), dy = to_dev(y0, "y");
          cu::matvec(w.w, nullptr, dx.get(), cols, dy.get(), rows, T, cu::MV_ADD, q8x, st);
          sync(st, "matvec add");
          report("matvec add", fmt("%s %dx%d T=%d %s", tname(t), rows, cols, T, xs),
                 nmax_err(to_host(dy, ref.size(), "y"), ref), bound);
        }
        for (int T : {1, 3}) {  // y = silu(W x) * (W2 x)
          if (q8x && T > 1) continue;
          const std::vector<float> x = normal((size_t)T * cols, rng);
          const std::vector<double> a = ref_matvec(w.deq, rows, cols, x.data(), cols, T),
                                    b = ref_matvec(w2.deq, rows, cols, x.data(), cols, T);
          std::vector<float> ref(a.size());
          for (size_t i = 0; i < ref.size(); ++i) ref[i] = headkv::silu((float)a[i]) * (float)b[i];
          cu::DBuf<float> dx = to_dev(x, "x"), dy = dev_zeros<float>(ref.size(), "y");
          cu::matvec(w.w, &w2.w, dx.get(), cols, dy.get(), rows, T, cu::MV_SWIGLU, q8x, st);
          sync(st, "matvec swiglu");
          report("matvec swiglu", fmt("%s %dx%d T=%d %s", tname(t), rows, cols, T, xs),
                 nmax_err(to_host(dy, ref.size(), "y"), ref), bound);
        }
        const std::vector<float> x = normal(cols, rng, 1.0f, 0.2f), nw = normal(cols, rng, 0.3f, 1.0f);
        std::vector<float> xn(cols);
        headkv::rms_norm(x.data(), nw.data(), xn.data(), cols, eps);
        cu::DBuf<float> dx = to_dev(x, "x"), dnw = to_dev(nw, "norm");
        {  // RMSNorm fused, three row segments (Q, K, V of one type)
          const cu::DW ws[3] = {w.w, w2.w, w3.w};
          const DevWeight* hw[3] = {&w, &w2, &w3};
          cu::DBuf<float> ys[3];
          float* yp[3];
          for (int i = 0; i < 3; ++i) {
            ys[i] = dev_zeros<float>(ws[i].rows, "y");
            yp[i] = ys[i].get();
          }
          cu::matvec_norm(ws, 3, yp, dx.get(), dnw.get(), eps, q8x, st);
          sync(st, "matvec_norm");
          std::vector<float> got;
          std::vector<double> ref;
          for (int i = 0; i < 3; ++i) {
            const std::vector<float> g = to_host(ys[i], ws[i].rows, "y");
            const std::vector<double> r = ref_matvec(hw[i]->deq, ws[i].rows, cols, xn.data(), cols, 1);
            got.insert(got.end(), g.begin(), g.end());
            ref.insert(ref.end(), r.begin(), r.end());
          }
          report("matvec_norm", fmt("%s rows %d|%d|40 x %d %s", tname(t), rows, rows, cols, xs), nmax_err(got, ref),
                 bound);
        }
        {  // RMSNorm fused, SwiGLU
          const std::vector<double> a = ref_matvec(w.deq, rows, cols, xn.data(), cols, 1),
                                    b = ref_matvec(w2.deq, rows, cols, xn.data(), cols, 1);
          std::vector<float> ref(rows);
          for (int i = 0; i < rows; ++i) ref[i] = headkv::silu((float)a[i]) * (float)b[i];
          cu::DBuf<float> dy = dev_zeros<float>(rows, "y");
          cu::matvec_norm_swiglu(w.w, w2.w, dx.get(), dnw.get(), eps, dy.get(), q8x, st);
          sync(st, "matvec_norm_swiglu");
          report("matvec_norm_swiglu", fmt("%s %dx%d %s", tname(t), rows, cols, xs),
                 nmax_err(to_host(dy, rows, "y"), ref), bound);
        }
      }
    }
}

// ---- weight rows and GEMM (gemm.cu): embedding lookup, the prefill's dequantization, cuBLAS

void check_rows(cudaStream_t st) {
  std::mt19937 rng(7);
  const int rows = 50, cols = 512;
  for (GGMLType t : kTypes) {
    DevWeight w = upload_weight(t, rows, cols, rng);
    const std::vector<int32_t> ids = {0, 49, 7, 7, 23};
    const int64_t T = (int64_t)ids.size();
    cu::DBuf<int32_t> dids = to_dev(ids, "ids");
    cu::DBuf<float> out = dev_zeros<float>((size_t)T * cols, "rows");
    cu::embed_rows(w.w, dids.get(), T, out.get(), st);
    sync(st, "embed_rows");
    std::vector<float> ref;
    for (int32_t id : ids) ref.insert(ref.end(), w.deq.begin() + (size_t)id * cols, w.deq.begin() + (size_t)(id + 1) * cols);
    report("embed_rows", fmt("%s ids 0,49,7,7,23 of %dx%d", tname(t), rows, cols),
           nmax_err(to_host(out, ref.size(), "rows"), ref), kExact);

    const int64_t r0 = 3, n = 20;
    const std::vector<float> dref(w.deq.begin() + r0 * cols, w.deq.begin() + (r0 + n) * cols);
    cu::DBuf<float> o32 = dev_zeros<float>(dref.size(), "rows");
    cu::DBuf<uint16_t> o16 = dev_zeros<uint16_t>(dref.size(), "rows");
    cu::dequant_rows(w.w, r0, n, o32.get(), false, st);
    cu::dequant_rows(w.w, r0, n, o16.get(), true, st);
    sync(st, "dequant_rows");
    report("dequant_rows", fmt("%s rows 3..22 of %dx%d -> fp32", tname(t), rows, cols),
           nmax_err(to_host(o32, dref.size(), "rows"), dref), kExact);
    report("dequant_rows", fmt("%s rows 3..22 of %dx%d -> fp16", tname(t), rows, cols),
           nmax_err(from_f16(to_host(o16, dref.size(), "rows")), dref), kHalf);
  }
}

// cuBLAS through gemm.cu (the prefill's projections): C[t][r] = sum_c A[r][c] B[t][c] + beta C[t][r],
// fp32 (pedantic) or fp16 inputs with fp32 accumulation; C's padding columns stay as they were.
void check_gemm(cudaStream_t st) {
  cu::blas_init(st);  // Unsupported without libcublas: reported as this op's error
  std::mt19937 rng(12);
  const int64_t m = 200, n = 37, k = 512, ldc = m + 8;
  for (bool half : {false, true})
    for (float beta : {0.0f, 1.0f}) {
      const std::vector<float> A = normal(m * k, rng), B = normal(n * k, rng), C0 = normal(n * ldc, rng, 0.5f);
      const std::vector<uint16_t> Ah = to_f16(A), Bh = to_f16(B);
      const std::vector<float> Ar = half ? from_f16(Ah) : A, Br = half ? from_f16(Bh) : B;
      std::vector<double> ref(C0.begin(), C0.end());
      for (int64_t t = 0; t < n; ++t)
        for (int64_t r = 0; r < m; ++r) {
          double acc = 0.0;
          for (int64_t c = 0; c < k; ++c) acc += (double)Ar[r * k + c] * Br[t * k + c];
          ref[t * ldc + r] = acc + beta * (double)C0[t * ldc + r];
        }
      cu::DBuf<float> a32 = to_dev(A, "A"), b32 = to_dev(B, "B"), dc = to_dev(C0, "C");
      cu::DBuf<uint16_t> a16 = to_dev(Ah, "A"), b16 = to_dev(Bh, "B");
      cu::gemm_nt(half ? (const void*)a16.get() : a32.get(), half ? (const void*)b16.get() : b32.get(), dc.get(), m, n,
                  k, ldc, beta, half, st);
      sync(st, "gemm_nt");
      report("gemm_nt", fmt("%lldx%lld x %lldx%lld ldc %lld beta %g %s", (long long)m, (long long)k, (long long)n,
                            (long long)k, (long long)ldc, beta, half ? "fp16 in" : "fp32 in"),
             nmax_err(to_host(dc, C0.size(), "C"), ref), half ? kAttn : kDot);
    }
}

// ---- decode attention (decode_attn.cu): one query per head over the fp16 arena, split-K

void check_decode_attention(cudaStream_t st) {
  std::mt19937 rng(8);
  struct C {
    int hd, nh, nkv;
  };
  // keys per KV head (its used entries + the token just appended): tile edges (32), a 256-key
  // block of 8 warps and beyond, a single key
  const int64_t lens[] = {1, 32, 33, 256, 257, 1000, 4100, 78};
  int ci = 0;
  for (const C c : {C{64, 8, 8}, C{64, 12, 4}, C{128, 32, 8}, C{128, 16, 2}}) {
    const int hd = c.hd, nh = c.nh, nkv = c.nkv, G = nh / nkv;
    for (int warps : {8, 4, 2}) {
      if (cu::decode_attention_warps(hd, warps) != warps) {
        std::printf("%-20s hd=%d warps %d: not run (the device's shared memory per block is too small)\n",
                    "decode_attention", hd, warps);
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
      const std::vector<uint16_t> Kh = to_f16(K), Vh = to_f16(V);
      const std::vector<float> Kr = from_f16(Kh), Vr = from_f16(Vh);
      std::vector<double> ref((size_t)nh * hd);
      for (int h = 0; h < nh; ++h) {
        const int g = h / G;
        ref_attend(&q[(size_t)h * hd], &Kr[seg[g] * hd], &Vr[seg[g] * hd], len[g], hd, &ref[(size_t)h * hd]);
      }
      cu::DBuf<float> dq = to_dev(q, "q"), dout = dev_zeros<float>(q.size(), "out"),
                      part = dev_zeros<float>(item_head.size() * G * (hd + 2), "partials");
      cu::DBuf<uint16_t> dk = to_dev(Kh, "K"), dv = to_dev(Vh, "V");
      cu::DBuf<int64_t> dseg = to_dev(std::vector<int64_t>(seg.begin(), seg.begin() + nkv), "segments");
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
      cu::decode_attention(a, st);
      sync(st, "decode_attention");
      report("decode_attention", fmt("hd=%d heads %d/%d warps %d keys/splits ", hd, nh, nkv, warps) + shape,
             nmax_err(to_host(dout, q.size(), "out"), ref), kAttn);
    }
  }
}

// ---- prefill attention (flash_attn.cu fp32 SIMT, flash_attn_mma.cu tensor cores), causal GQA

void check_flash_attention(cudaStream_t st) {
  std::mt19937 rng(9);
  struct L {
    int T;
    int64_t n_before;
  };
  for (int hd : {64, 128})
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
            arena ? fmt("hd=%d heads %d/%d T=%d arena, keys before 0,100,33,250", hd, nh, nkv, T)
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
      }
    }
}

// ---- selection (select.cu) against select/selection.h

// Kept positions per segment from the device's flags [n_seg][n].
std::vector<std::vector<int32_t>> kept(const cu::DBuf<uint8_t>& flags, int n_seg, int64_t n) {
  const std::vector<uint8_t> f = to_host(flags, (size_t)n_seg * n, "flags");
  std::vector<std::vector<int32_t>> out(n_seg);
  for (int s = 0; s < n_seg; ++s)
    for (int64_t j = 0; j < n; ++j)
      if (f[s * n + j]) out[s].push_back((int32_t)j);
  return out;
}

void check_window_scores_topk(cudaStream_t st) {
  std::mt19937 rng(10);
  struct C {
    int nh, nkv, hd;
    int64_t N;
    int a;
    int64_t probe;  // P = N - a - probe (an observation probe after the document)
    int kernel;
    bool max_pool, runs, max_q, half_k;
  };
  const C cases[] = {
      {9, 3, 64, 600, 8, 0, 7, true, false, false, false},     // SnapKV's defaults, SmolLM2's heads
      {9, 3, 64, 600, 8, 0, 7, true, false, false, true},      // fp16 keys (the fast precision)
      {8, 2, 128, 1000, 16, 0, 5, false, false, false, false}, // average pooling
      {8, 2, 128, 1000, 8, 40, 7, true, true, false, true},    // probe, span-aware
      {4, 4, 64, 300, 8, 0, 1, true, false, true, false},      // maximum over queries, no pooling
      {9, 3, 64, 600, 8, 0, 1, true, true, false, false},      // no pooling, span-aware
  };
  for (const C& c : cases) {
    const int64_t N = c.N, P = N - c.a - c.probe;
    const std::vector<float> q = normal((size_t)c.a * c.nh * c.hd, rng, 1.5f), K = normal((size_t)c.nkv * N * c.hd, rng);
    const std::vector<uint16_t> Kh = to_f16(K);
    const std::vector<float> Kc = c.half_k ? from_f16(Kh) : K;
    std::vector<uint8_t> runs((size_t)P, 0);
    for (int64_t j = 1; j < P; ++j) runs[j] = rng() % 3 != 0;  // runs of about 3 tokens
    headkv::SelectionParams p;
    p.window = c.a;
    p.kernel = c.kernel;
    p.max_pool = c.max_pool;
    p.prefix = P;
    p.max_queries = c.max_q;
    p.runs = c.runs ? runs.data() : nullptr;
    const std::vector<float> ref =
        headkv::window_scores(q.data(), c.nh, c.nkv, c.hd, Kc.data(), N * c.hd, c.hd, N, p);

    cu::DBuf<float> dq = to_dev(q, "q"), dk32 = to_dev(K, "K"), raw = dev_zeros<float>((size_t)c.nkv * P, "raw"),
                    pooled = dev_zeros<float>((size_t)c.nkv * P, "pooled"),
                    rowstat = dev_zeros<float>((size_t)c.nh * c.a * 2, "rowstat");
    cu::DBuf<uint16_t> dk16 = to_dev(Kh, "K");
    cu::DBuf<uint8_t> druns = to_dev(runs, "runs");
    cu::window_scores(dq.get(), c.half_k ? (const void*)dk16.get() : dk32.get(), c.half_k, N, c.a, P, c.nh, c.nkv,
                      c.hd, c.kernel, c.max_pool, c.runs ? druns.get() : nullptr, c.max_q, raw.get(), pooled.get(),
                      rowstat.get(), st);
    sync(st, "window_scores");
    const std::vector<float> got = to_host(pooled, (size_t)c.nkv * P, "pooled");
    const std::string what = fmt("heads %d/%d hd=%d N=%lld a=%d P=%lld %s%d%s%s%s", c.nh, c.nkv, c.hd, (long long)N,
                                 c.a, (long long)P, c.max_pool ? "max" : "avg", c.kernel, c.runs ? " spans" : "",
                                 c.max_q ? " max-q" : "", c.half_k ? " fp16 K" : "");
    report("window_scores", what, nmax_err(got, ref), kAttn);

    // top-k on the device's scores against the CPU's top-k on its own: the same positions except
    // swaps of near-ties (sorted by the device's score, the i-th position only the CPU kept and the
    // i-th only the device kept score within 1e-4 relative).
    std::vector<int64_t> caps(c.nkv);
    for (int g = 0; g < c.nkv; ++g) caps[g] = std::vector<int64_t>{64, 1, P / 3, P}[g % 4];
    cu::DBuf<uint8_t> flags = dev_zeros<uint8_t>((size_t)c.nkv * P, "flags");
    cu::topk_flags(pooled.get(), P, c.nkv, caps.data(), nullptr, flags.get(), nullptr, st);
    sync(st, "topk_flags");
    const auto gk = kept(flags, c.nkv, P);
    int64_t bad = 0, swaps = 0;
    for (int g = 0; g < c.nkv; ++g) {
      const std::vector<int32_t> ck = headkv::topk_positions(&ref[(size_t)g * P], P, caps[g]);
      std::vector<int32_t> only_c, only_g;
      std::set_difference(ck.begin(), ck.end(), gk[g].begin(), gk[g].end(), std::back_inserter(only_c));
      std::set_difference(gk[g].begin(), gk[g].end(), ck.begin(), ck.end(), std::back_inserter(only_g));
      bad += std::labs((long)only_c.size() - (long)only_g.size());
      const float* s = &got[(size_t)g * P];
      auto by_score = [&](int32_t x, int32_t y) { return s[x] > s[y]; };
      std::sort(only_c.begin(), only_c.end(), by_score);
      std::sort(only_g.begin(), only_g.end(), by_score);
      for (size_t i = 0; i < std::min(only_c.size(), only_g.size()); ++i) {
        const float x = s[only_c[i]], y = s[only_g[i]];
        if (std::fabs(x - y) <= 1e-4f * std::max(std::fabs(x), std::fabs(y))) ++swaps;
        else ++bad;
      }
    }
    report("topk (scores)", what + fmt(" caps 64,1,P/3,P: %lld near-tie swaps", (long long)swaps), (double)bad, 0.0);
  }
}

// Top-k on the same scores (many exact ties, negative values, exclusions): identical positions.
void check_topk_exact(cudaStream_t st) {
  std::mt19937 rng(11);
  for (const int64_t n : {1000, 5000})
    for (bool excl : {false, true}) {
      const int n_seg = 7;
      const int64_t caps_v[n_seg] = {0, 1, 17, n / 2, n - 3, n, n + 5};
      std::vector<int64_t> caps(caps_v, caps_v + n_seg);
      std::vector<float> s = normal((size_t)n_seg * n, rng, 8.0f);
      for (float& v : s) v = std::round(v) / 8.0f + 0.0f;  // ties; +0.0f turns -0 into +0
      for (int64_t j = 0; j < n; ++j) s[2 * n + j] = 0.25f;  // segment 2: all equal
      std::vector<uint8_t> ex((size_t)n_seg * n, 0);
      if (excl)
        for (auto& e : ex) e = rng() % 5 == 0;
      cu::DBuf<float> ds = to_dev(s, "scores");
      cu::DBuf<uint8_t> dex = to_dev(ex, "exclude"), flags = dev_zeros<uint8_t>(ex.size(), "flags");
      cu::topk_flags(ds.get(), n, n_seg, caps.data(), excl ? dex.get() : nullptr, flags.get(), nullptr, st);
      sync(st, "topk_flags");
      const auto gk = kept(flags, n_seg, n);
      int64_t bad = 0;
      for (int g = 0; g < n_seg; ++g) {
        std::vector<float> sg(s.begin() + g * n, s.begin() + (g + 1) * n);
        int64_t allowed = 0;
        for (int64_t j = 0; j < n; ++j) {
          if (ex[g * n + j]) sg[j] = -INFINITY;  // never better than a position that may be kept
          else ++allowed;
        }
        const std::vector<int32_t> ck = headkv::topk_positions(sg.data(), n, std::min(caps[g], allowed));
        std::vector<int32_t> diff;
        std::set_symmetric_difference(ck.begin(), ck.end(), gk[g].begin(), gk[g].end(), std::back_inserter(diff));
        bad += (int64_t)diff.size();
      }
      report("topk (exact)", fmt("n=%lld, 7 segments, caps 0,1,17,n/2,n-3,n,n+5, ties%s", (long long)n,
                                 excl ? ", exclusions" : ""),
             (double)bad, 0.0);
    }
}

// The steps after top-k (select.cu), against the rules they implement (model/prefill.cpp keeps the
// same positions on the CPU): streaming's sink + recent flags; each head's kept list (flagged
// positions in order, then the window P .. n_keep-1); Ada-KV's segment offsets from the counts; the
// kept K/V rows gathered into the arena (fp16) with their positions and counts.
void check_compact_gather(cudaStream_t st) {
  std::mt19937 rng(13);
  const int nkv = 3, hd = 64;
  const int64_t P = 700, n_keep = 708, N = 720, room = 5;
  {  // streaming
    const std::vector<int64_t> cap = {64, 30, 10}, sink = {4, 0, 10};
    cu::DBuf<uint8_t> flags = dev_zeros<uint8_t>((size_t)nkv * P, "flags");
    cu::streaming_flags(flags.get(), P, nkv, sink.data(), cap.data(), nullptr, st);
    sync(st, "streaming_flags");
    const auto got = kept(flags, nkv, P);
    int64_t bad = 0;
    for (int g = 0; g < nkv; ++g) {
      std::vector<int32_t> want;
      for (int64_t j = 0; j < sink[g]; ++j) want.push_back((int32_t)j);
      for (int64_t j = P - (cap[g] - sink[g]); j < P; ++j) want.push_back((int32_t)j);
      bad += want != got[g];
    }
    report("streaming_flags", "P=700 caps 64,30,10 sinks 4,0,10", (double)bad, 0.0);
  }
  for (bool half : {false, true}) {
    std::vector<uint8_t> fl((size_t)nkv * P, 0);
    for (int64_t j = 0; j < P; ++j) {
      fl[j] = rng() % 3 == 0;             // head 1: nothing flagged (only the window is kept)
      fl[2 * P + j] = rng() % 50 != 0;  // head 2: nearly everything
    }
    std::vector<std::vector<int32_t>> want(nkv);
    for (int g = 0; g < nkv; ++g) {
      for (int64_t j = 0; j < P; ++j)
        if (fl[g * P + j]) want[g].push_back((int32_t)j);
      for (int64_t j = P; j < n_keep; ++j) want[g].push_back((int32_t)j);
    }
    cu::DBuf<uint8_t> dfl = to_dev(fl, "flags");
    cu::DBuf<int32_t> list = dev_zeros<int32_t>((size_t)nkv * N, "list"), count = dev_zeros<int32_t>(nkv, "count");
    cu::compact_flags(dfl.get(), P, n_keep, N, nkv, list.get(), count.get(), st);
    sync(st, "compact_flags");
    const std::vector<int32_t> gl = to_host(list, (size_t)nkv * N, "list"), gc = to_host(count, nkv, "count");
    int64_t bad = 0;
    for (int g = 0; g < nkv; ++g)
      bad += gc[g] != (int32_t)want[g].size() ||
             !std::equal(want[g].begin(), want[g].end(), gl.begin() + (size_t)g * N);
    report("compact_flags", fmt("P=%lld n_keep=%lld N=%lld, %d heads", (long long)P, (long long)n_keep, (long long)N, nkv),
           (double)bad, 0.0);

    std::vector<int64_t> off(nkv);
    off[0] = 4;
    for (int g = 0; g + 1 < nkv; ++g) off[g + 1] = off[g] + (int64_t)want[g].size() + room;
    cu::DBuf<int64_t> dseg = to_dev(std::vector<int64_t>{4, -1, -1}, "segment offsets");
    cu::layer_offsets(dseg.get(), count.get(), nkv, room, st);
    sync(st, "layer_offsets");
    report("layer_offsets", fmt("counts of compact_flags, room %lld", (long long)room),
           (double)(to_host(dseg, nkv, "segment offsets") != off), 0.0);

    const int64_t entries = off[nkv - 1] + (int64_t)want[nkv - 1].size() + room;
    const std::vector<float> K = normal((size_t)nkv * N * hd, rng), V = normal((size_t)nkv * N * hd, rng);
    const std::vector<uint16_t> Kh = to_f16(K), Vh = to_f16(V);
    cu::DBuf<float> k32 = to_dev(K, "K"), v32 = to_dev(V, "V");
    cu::DBuf<uint16_t> k16 = to_dev(Kh, "K"), v16 = to_dev(Vh, "V"),
                       ak = dev_zeros<uint16_t>((size_t)entries * hd, "arena K"), av = dev_zeros<uint16_t>((size_t)entries * hd, "arena V");
    cu::DBuf<int32_t> apos = to_dev(std::vector<int32_t>(entries, -1), "arena positions"),
                      used = dev_zeros<int32_t>(nkv, "used");
    int64_t max_count = 0;
    for (const auto& w : want) max_count = std::max<int64_t>(max_count, (int64_t)w.size());
    cu::gather_to_arena(list.get(), count.get(), N, nkv, hd, half ? (const void*)k16.get() : k32.get(),
                        half ? (const void*)v16.get() : v32.get(), half, dseg.get(), hptr(ak), hptr(av), apos.get(),
                        used.get(), max_count, st);
    sync(st, "gather_to_arena");
    const std::vector<float> gk = from_f16(to_host(ak, (size_t)entries * hd, "arena K")),
                             gv = from_f16(to_host(av, (size_t)entries * hd, "arena V"));
    const std::vector<int32_t> gp = to_host(apos, entries, "arena positions"), gu = to_host(used, nkv, "used");
    std::vector<float> got, ref;
    int64_t wrong = 0;
    for (int g = 0; g < nkv; ++g) {
      wrong += gu[g] != (int32_t)want[g].size();
      for (size_t i = 0; i < want[g].size(); ++i) {
        const int64_t e = off[g] + (int64_t)i, src = ((int64_t)g * N + want[g][i]) * hd;
        wrong += gp[e] != want[g][i];
        for (int d = 0; d < hd; ++d) {
          got.push_back(gk[e * hd + d]);
          ref.push_back(K[src + d]);
          got.push_back(gv[e * hd + d]);
          ref.push_back(V[src + d]);
        }
      }
    }
    const std::string what = fmt("%d heads, %lld/%lld/%lld kept, from %s", nkv, (long long)want[0].size(),
                                 (long long)want[1].size(), (long long)want[2].size(), half ? "fp16" : "fp32");
    report("gather_to_arena", what + " K/V", nmax_err(got, ref), kHalf);
    report("gather_to_arena", what + " positions+used", (double)wrong, 0.0);
  }
}

template <class F>
void group(const char* name, F&& f, cudaStream_t st) {
  try {
    f(st);
  } catch (const std::exception& e) {
    report_error(name, "(the remaining cases of this op did not run)", e.what());
  }
}

}  // namespace

int main() {
  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev < 1) {
    cudaGetLastError();
    std::printf("test_backend_ops: no CUDA device, skipped\n");
    return 77;
  }
  try {
    cu::require_supported_device();
  } catch (const std::exception& e) {
    std::printf("test_backend_ops: %s\n", e.what());
    return 1;
  }
  cudaDeviceProp prop{};
  cu::check(cudaGetDeviceProperties(&prop, 0), "device properties");
  std::printf("test_backend_ops on %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  cudaStream_t st = nullptr;
  cu::check(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), "stream");
  group("rms_norm", check_rms_norm, st);
  group("add_bias", check_add_bias, st);
  group("silu_mul", check_silu_mul, st);
  group("rope_store", check_rope_store, st);
  group("matvec_qkv_rope", check_qkv_rope, st);
  group("matvec", check_matvec, st);
  group("embed/dequant rows", check_rows, st);
  group("gemm_nt", check_gemm, st);
  group("decode_attention", check_decode_attention, st);
  group("flash_attention", check_flash_attention, st);
  group("window_scores", check_window_scores_topk, st);
  group("topk (exact)", check_topk_exact, st);
  group("compact/gather", check_compact_gather, st);
  cudaStreamDestroy(st);
  std::printf("test_backend_ops: %d of %d cases passed%s\n", g_cases - g_failed, g_cases,
              g_failed ? "" : " (all)");
  return g_failed ? 1 : 0;
}
