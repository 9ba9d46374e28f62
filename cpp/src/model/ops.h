// Element-wise ops of the transformer block on the CPU (forward.cpp): RMSNorm, RoPE in both pair
// layouts, bias add, SiLU. Header-only so that tests/cuda/test_backend_ops.cu checks the CUDA
// kernels against these very functions.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

namespace headkv {

// out = w * (x / rms(x)): sum of squares in double, scale in float (the CUDA kernels do the same).
inline void rms_norm(const float* x, const float* w, float* out, int64_t n, float eps) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += (double)x[i] * x[i];
  const float scale = 1.0f / std::sqrt((float)(ss / n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * scale);
}

// Rotates adjacent pairs (x[2i], x[2i+1]) of each head: GGUF llama q/k weights are permuted by
// the converters so that this "normal" rotation equals HF's rotate_half.
inline void rope(float* x, int n_heads, int head_dim, int rope_dim, const float* cs, const float* sn) {
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + (size_t)h * head_dim;
    for (int i = 0; i < rope_dim / 2; ++i) {
      const float a = v[2 * i], b = v[2 * i + 1];
      v[2 * i] = a * cs[i] - b * sn[i];
      v[2 * i + 1] = a * sn[i] + b * cs[i];
    }
  }
}

// NeoX-style RoPE: rotates (x[i], x[i + rope_dim/2]) of each head (Qwen, Gemma, Phi-3 files).
inline void rope_neox(float* x, int n_heads, int head_dim, int rope_dim, const float* cs, const float* sn) {
  const int half = rope_dim / 2;
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + (size_t)h * head_dim;
    for (int i = 0; i < half; ++i) {
      const float a = v[i], b = v[i + half];
      v[i] = a * cs[i] - b * sn[i];
      v[i + half] = a * sn[i] + b * cs[i];
    }
  }
}

// x[t][i] += b[i] for T rows of b.size().
inline void add_bias(float* x, const std::vector<float>& b, int64_t T) {
  const size_t n = b.size();
  for (int64_t t = 0; t < T; ++t)
    for (size_t i = 0; i < n; ++i) x[t * n + i] += b[i];
}

inline float silu(float g) { return g / (1.0f + std::exp(-g)); }

}  // namespace headkv
