// Micro-benchmark of headkv::matmul on the SmolLM2-135M shapes.
// Build (from the repo root):
//   g++ -O3 -march=native -std=c++17 -Icpp/src bench/bench_matmul.cpp cpp/src/quant/*.cpp \
//       cpp/src/common/threadpool.cpp -lpthread -o /tmp/bench_matmul && /tmp/bench_matmul [threads] [type...]
#include <algorithm>
#include <chrono>
#include <cstring>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "common/fp16.h"
#include "quant/quant.h"

using namespace headkv;

static std::vector<uint8_t> random_weights(GGMLType t, int64_t rows, int64_t K, std::mt19937& rng) {
  const TypeTraits tr = type_traits(t);
  std::vector<uint8_t> w(row_size(t, K) * rows);
  for (auto& b : w) b = (uint8_t)rng();
  // finite fp16 scales: overwrite every 2-byte field at the block's scale offsets
  int offs[2] = {0, tr.block_size == 256 ? 2 : 2};
  const int nf = (t == GGMLType::Q4_1 || t == GGMLType::Q5_1 || t == GGMLType::Q4_K || t == GGMLType::Q5_K) ? 2 : 1;
  if (t == GGMLType::Q6_K) offs[0] = 208;
  std::normal_distribution<float> nd(0.f, 0.01f);
  if (t == GGMLType::F32 || t == GGMLType::F16 || t == GGMLType::BF16) {
    for (size_t i = 0; i + 1 < w.size(); i += 2) { uint16_t h = f32_to_fp16(nd(rng)); memcpy(&w[i], &h, 2); }
    return w;
  }
  for (size_t b = 0; b < w.size(); b += tr.type_size)
    for (int f = 0; f < nf; ++f) { uint16_t h = f32_to_fp16(nd(rng)); memcpy(&w[b + offs[f]], &h, 2); }
  return w;
}

int main(int argc, char** argv) {
  const int nthr = argc > 1 ? atoi(argv[1]) : 2;
  std::vector<GGMLType> types;
  for (int i = 2; i < argc; ++i) types.push_back((GGMLType)atoi(argv[i]));
  if (types.empty()) types = {GGMLType::Q4_1, GGMLType::Q8_0, GGMLType::Q4_K, GGMLType::Q6_K, GGMLType::F16};
  ThreadPool pool(nthr);
  std::mt19937 rng(1);
  const int64_t shapes[][2] = {{576, 576}, {1536, 576}, {576, 1536}, {49152, 576}};  // rows x K
  printf("threads=%d\n%-5s %14s %6s %10s %10s %10s %9s\n", nthr, "type", "rows x K", "n_tok", "ms", "GFLOP/s", "W GB/s", "GF/s mean");
  for (GGMLType t : types)
    for (auto& s : shapes)
      for (int64_t n_tok : {1, 512}) {
        const int64_t rows = s[0], K = s[1];
        if (K % type_traits(t).block_size != 0) continue;  // e.g. K-quants need K % 256 == 0
        auto w = random_weights(t, rows, K, rng);
        std::vector<float> x(n_tok * K), y(n_tok * rows);
        std::normal_distribution<float> nd;
        for (auto& v : x) v = nd(rng);
        matmul(t, w.data(), rows, K, x.data(), n_tok, y.data(), rows, pool);  // warm-up
        const double flop = 2.0 * rows * K * n_tok;
        int iters = (int)std::max(3.0, std::min(2000.0, 2e9 / flop));
        // best of `iters` runs (robust to other load on the machine), and the mean
        double best = 1e30, total = 0;
        for (int it = 0; it < iters; ++it) {
          const auto t0 = std::chrono::steady_clock::now();
          matmul(t, w.data(), rows, K, x.data(), n_tok, y.data(), rows, pool);
          const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          best = std::min(best, dt);
          total += dt;
        }
        const double sec = best, mean = total / iters;
        printf("%-5s %7lldx%-6lld %6lld %10.3f %10.1f %10.1f %9.1f\n", type_name(t).c_str(), (long long)rows, (long long)K,
               (long long)n_tok, sec * 1e3, flop / sec * 1e-9, w.size() / sec * 1e-9, flop / mean * 1e-9);
      }
}
