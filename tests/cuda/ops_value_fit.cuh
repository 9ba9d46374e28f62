// CUDA op check (test_backend_ops.cu): value fitting (value_fit.cu) against select/value_fit.h.
#pragma once
#include <algorithm>
#include <cmath>

#include "op_check.cuh"
#include "select/value_fit.h"

namespace opcheck {

// Random window queries and keys / values, the window rows' full outputs from a double-precision
// softmax here, kept sets of every size class per head (none, a few, a third, the whole prefix);
// the device's fitted values against the CPU's fit_values. Error: the change of the values
// (fitted - before), normalized by its largest magnitude; with the fp16 layer buffer (fast
// precision), the values themselves (the device adds the change to halves: one half ulp apart).
inline void check_value_fit(cudaStream_t st) {
  std::mt19937 rng(21);
  struct C {
    int nh, nkv, hd, a;
    int64_t N;
    float softcap;
    bool half_kv;
  };
  const C cases[] = {{9, 3, 64, 8, 600, 0.f, false}, {9, 3, 64, 8, 600, 0.f, true}, {32, 8, 128, 8, 1500, 0.f, false},
                     {8, 2, 128, 16, 700, 50.f, false}};
  for (const C& c : cases) {
    const int64_t N = c.N, P = N - c.a;
    const int G = c.nh / c.nkv, hd = c.hd;
    const float scale = 1.0f / std::sqrt((float)hd);
    const std::vector<float> q = normal((size_t)c.a * c.nh * hd, rng, 1.5f);
    std::vector<float> K = normal((size_t)c.nkv * N * hd, rng), V = normal((size_t)c.nkv * N * hd, rng);
    const std::vector<uint16_t> Kh = to_f16(K), Vh = to_f16(V);
    if (c.half_kv) K = from_f16(Kh), V = from_f16(Vh);
    std::vector<float> o((size_t)c.a * c.nh * hd, 0.f);  // full outputs of the window rows
    for (int t = 0; t < c.a; ++t)
      for (int h = 0; h < c.nh; ++h) {
        const int g = h / G;
        const int64_t n = P + t + 1;
        std::vector<double> s(n);
        double mx = -INFINITY, z = 0;
        for (int64_t j = 0; j < n; ++j) {
          double d = 0;
          for (int i = 0; i < hd; ++i) d += (double)q[((size_t)t * c.nh + h) * hd + i] * K[((size_t)g * N + j) * hd + i];
          d *= scale;
          s[j] = c.softcap > 0 ? c.softcap * std::tanh(d / c.softcap) : d;
          mx = std::max(mx, s[j]);
        }
        for (double& x : s) z += (x = std::exp(x - mx));
        for (int64_t j = 0; j < n; ++j)
          for (int i = 0; i < hd; ++i) o[((size_t)t * c.nh + h) * hd + i] += (float)(s[j] / z * V[((size_t)g * N + j) * hd + i]);
      }
    std::vector<std::vector<int32_t>> kept(c.nkv);
    std::vector<int32_t> list((size_t)c.nkv * N, 0), count(c.nkv);
    int64_t lda = 0;
    for (int g = 0; g < c.nkv; ++g) {
      const int64_t want = std::vector<int64_t>{0, 40, P / 3, P}[g % 4];
      std::vector<int32_t> all(P);
      for (int64_t j = 0; j < P; ++j) all[j] = (int32_t)j;
      std::shuffle(all.begin(), all.end(), rng);
      kept[g].assign(all.begin(), all.begin() + want);
      std::sort(kept[g].begin(), kept[g].end());
      std::copy(kept[g].begin(), kept[g].end(), list.begin() + (size_t)g * N);
      for (int w = 0; w < c.a; ++w) list[(size_t)g * N + want + w] = (int32_t)(P + w);
      count[g] = (int32_t)(want + c.a);
      lda = std::max<int64_t>(lda, count[g]);
    }
    headkv::ValueFitArgs fa;
    fa.q_win = q.data();
    fa.o_win = o.data();
    fa.window = c.a;
    fa.n_head = c.nh;
    fa.n_head_kv = c.nkv;
    fa.head_dim = hd;
    fa.scale = scale;
    fa.softcap = c.softcap;
    fa.lambda = 1.0;
    std::vector<float> ref = V;
    for (int g = 0; g < c.nkv; ++g) headkv::fit_values(fa, g, &K[(size_t)g * N * hd], &ref[(size_t)g * N * hd], P, kept[g]);

    const int m = c.a * G;
    cu::DBuf<float> dq = to_dev(q, "q"), dout = to_dev(o, "o"), dk = to_dev(K, "K"), dv = to_dev(V, "V"),
                    dA = dev_zeros<float>((size_t)c.nkv * m * lda, "A");
    cu::DBuf<uint16_t> dkh = to_dev(Kh, "K"), dvh = to_dev(Vh, "V");
    cu::DBuf<double> dW = dev_zeros<double>((size_t)c.nkv * (m * m + m * hd), "W");
    cu::DBuf<int32_t> dl = to_dev(list, "list"), dc = to_dev(count, "count");
    const cu::ValueFit f{dq.get(), dout.get(), c.a, c.nh, c.nkv, hd, scale, c.softcap, 1.0};
    cu::fit_values(f, c.half_kv ? (const void*)dkh.get() : dk.get(), c.half_kv ? (void*)dvh.get() : dv.get(), c.half_kv,
                   N, P, dl.get(), dc.get(), dA.get(), lda, dW.get(), st);
    sync(st, "fit_values");
    std::vector<float> got = c.half_kv ? from_f16(to_host(dvh, V.size(), "V")) : to_host(dv, V.size(), "V");
    std::vector<float> dgot(V.size()), dref(V.size());
    for (size_t i = 0; i < V.size(); ++i) dgot[i] = got[i] - V[i], dref[i] = ref[i] - V[i];
    if (c.half_kv) dgot = got, dref = ref;
    report("value_fit", fmt("heads %d/%d hd=%d a=%d N=%lld kept 0,40,P/3,P%s%s", c.nh, c.nkv, hd, c.a, (long long)N,
                            c.softcap > 0 ? " softcap" : "", c.half_kv ? " fp16 V" : ""),
           nmax_err(dgot, dref), c.half_kv ? kHalf : kAttn);
  }
}

}  // namespace opcheck
