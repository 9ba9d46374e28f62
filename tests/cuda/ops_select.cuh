// CUDA op checks (test_backend_ops.cu): window scores, top-k, streaming flags, kept lists and the
// gather into the arena, against select/selection.h and the rules of model/prefill.cpp.
#pragma once
#include <algorithm>
#include <iterator>

#include "op_check.cuh"
#include "select/selection.h"

namespace opcheck {

// ---- selection (select.cu) against select/selection.h

// Kept positions per segment from the device's flags [n_seg][n].
inline std::vector<std::vector<int32_t>> kept(const cu::DBuf<uint8_t>& flags, int n_seg, int64_t n) {
  const std::vector<uint8_t> f = to_host(flags, (size_t)n_seg * n, "flags");
  std::vector<std::vector<int32_t>> out(n_seg);
  for (int s = 0; s < n_seg; ++s)
    for (int64_t j = 0; j < n; ++j)
      if (f[s * n + j]) out[s].push_back((int32_t)j);
  return out;
}

inline void check_window_scores_topk(cudaStream_t st) {
  std::mt19937 rng(10);
  struct C {
    int nh, nkv, hd;
    int64_t N;
    int a;
    int64_t probe;  // P = N - a - probe (an observation probe after the document)
    int kernel;
    bool max_pool, runs, max_q, half_k;
    int reach = 0;
  };
  const C cases[] = {
      {9, 3, 64, 600, 8, 0, 7, true, false, false, false},     // SnapKV's defaults, SmolLM2's heads
      {9, 3, 64, 600, 8, 0, 7, true, false, false, true},      // fp16 keys (the fast precision)
      {8, 2, 128, 1000, 16, 0, 5, false, false, false, false}, // average pooling
      {8, 2, 128, 1000, 8, 40, 7, true, true, false, true},    // probe, span-aware
      {4, 4, 64, 300, 8, 0, 1, true, false, true, false},      // maximum over queries, no pooling
      {9, 3, 64, 600, 8, 0, 1, true, true, false, false},      // no pooling, span-aware
      {9, 3, 64, 600, 8, 0, 7, true, true, false, true, 8},    // span-aware with the default forward reach
      {8, 2, 128, 1000, 8, 40, 1, true, true, false, false, 5},  // probe, reach without the symmetric pool
      {8, 2, 128, 1000, 16, 0, 5, false, false, false, false, 8}, // average pooling ignores the reach
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
    p.reach = c.reach;
    const std::vector<float> ref =
        headkv::window_scores(q.data(), c.nh, c.nkv, c.hd, Kc.data(), N * c.hd, c.hd, N, p);

    cu::DBuf<float> dq = to_dev(q, "q"), dk32 = to_dev(K, "K"), raw = dev_zeros<float>((size_t)c.nkv * P, "raw"),
                    pooled = dev_zeros<float>((size_t)c.nkv * P, "pooled"),
                    rowstat = dev_zeros<float>((size_t)c.nh * c.a * 2, "rowstat");
    cu::DBuf<uint16_t> dk16 = to_dev(Kh, "K");
    cu::DBuf<uint8_t> druns = to_dev(runs, "runs");
    cu::window_scores(dq.get(), c.half_k ? (const void*)dk16.get() : dk32.get(), c.half_k, N, c.a, P, c.nh, c.nkv,
                      c.hd, c.kernel, c.max_pool, c.reach, c.runs ? druns.get() : nullptr, c.max_q, raw.get(), pooled.get(),
                      rowstat.get(), st);
    sync(st, "window_scores");
    const std::vector<float> got = to_host(pooled, (size_t)c.nkv * P, "pooled");
    const std::string what = fmt("heads %d/%d hd=%d N=%lld a=%d P=%lld %s%d%s%s%s%s", c.nh, c.nkv, c.hd, (long long)N,
                                 c.a, (long long)P, c.max_pool ? "max" : "avg", c.kernel, c.runs ? " spans" : "",
                                 c.max_q ? " max-q" : "", c.half_k ? " fp16 K" : "",
                                 c.reach ? fmt(" reach %d", c.reach).c_str() : "");
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
inline void check_topk_exact(cudaStream_t st) {
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
inline void check_compact_gather(cudaStream_t st) {
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
      fl[j] = rng() % 3 == 0;           // head 0: a third; head 1: nothing (only the window is kept)
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
                        half ? (const void*)v16.get() : v32.get(), half, dseg.get(), hptr(ak), hptr(av),
                        headkv::KVType::F16, headkv::KVType::F16, apos.get(), used.get(), max_count, st);
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

}  // namespace opcheck
