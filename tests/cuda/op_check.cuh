// Helpers of the CUDA op checks (test_backend_ops.cu): device buffers filled from host vectors,
// weights uploaded in the backend's device layout, the error measure and the per-case report.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common.cuh"
#include "device_buffer.cuh"
#include "kernels.cuh"
#include "quant.cuh"
#include "common/error.h"
#include "common/fp16.h"
#include "quant/quant.h"
#include "quant/types.h"
#include "random_weights.h"

namespace opcheck {

using headkv::GGMLType;
namespace cu = headkv::cu;

inline int g_cases = 0, g_failed = 0;

// One line per case; a NaN error fails.
inline bool report(const std::string& op, const std::string& what, double err, double bound) {
  const bool ok = err <= bound;
  ++g_cases;
  g_failed += !ok;
  std::printf("%-20s %-58s err %-10.3e bound %-8.1e %s\n", op.c_str(), what.c_str(), err, bound, ok ? "PASS" : "FAIL");
  std::fflush(stdout);
  return ok;
}
inline void report_error(const std::string& op, const std::string& what, const char* msg) {
  ++g_cases;
  ++g_failed;
  std::printf("%-20s %-58s error: %s FAIL\n", op.c_str(), what.c_str(), msg);
  std::fflush(stdout);
}

// Normalized maximum error: max_i |got_i - ref_i| / max_i |ref_i| (infinite when got has a NaN or
// an infinity where ref is finite).
template <class A, class B>
double nmax_err(const A* got, const B* ref, size_t n) {
  double md = 0.0, mr = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double g = (double)got[i], r = (double)ref[i];
    if (!std::isfinite(g)) return INFINITY;
    md = std::max(md, std::fabs(g - r));
    mr = std::max(mr, std::fabs(r));
  }
  return mr > 0.0 ? md / mr : md;
}
template <class A, class B>
double nmax_err(const std::vector<A>& got, const std::vector<B>& ref) {
  if (got.size() != ref.size()) return INFINITY;
  return nmax_err(got.data(), ref.data(), got.size());
}

inline std::string fmt(const char* f, ...) {
  char buf[256];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

template <class T>
cu::DBuf<T> to_dev(const std::vector<T>& h, const char* what) {
  cu::DBuf<T> d;
  d.alloc(h.size(), what);
  if (!h.empty()) cu::check(cudaMemcpy(d.get(), h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), what);
  cu::check(cudaDeviceSynchronize(), what);  // see to_host
  return d;
}
template <class T>
cu::DBuf<T> dev_zeros(size_t n, const char* what) {
  cu::DBuf<T> d;
  d.alloc(n, what);
  if (n) cu::check(cudaMemset(d.get(), 0, n * sizeof(T)), what);
  cu::check(cudaDeviceSynchronize(), what);  // see to_host
  return d;
}
template <class T>
std::vector<T> to_host(const cu::DBuf<T>& d, size_t n, const char* what) {
  std::vector<T> h(n);
  // The ops run on non-blocking streams, which the default stream's cudaMemcpy / cudaMemset are not
  // ordered with (and a pageable upload or a memset may return before it lands): every transfer waits
  // for the whole device, so a case never reads its result early or runs on inputs still arriving
  // (seen as random FAILs when other processes loaded the GPU).
  cu::check(cudaDeviceSynchronize(), what);
  if (n) cu::check(cudaMemcpy(h.data(), d.get(), n * sizeof(T), cudaMemcpyDeviceToHost), what);
  return h;
}
// Waits for the stream and turns an execution error of the op into a headkv::Error.
inline void sync(cudaStream_t s, const char* what) { cu::check(cudaStreamSynchronize(s), what); }

inline std::vector<float> normal(size_t n, std::mt19937& rng, float sd = 1.0f, float mean = 0.0f) {
  std::normal_distribution<float> d(mean, sd);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}
// fp16 bits (the device's __half) of v, and v rounded through fp16.
inline std::vector<uint16_t> to_f16(const std::vector<float>& v) {
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = headkv::f32_to_fp16(v[i]);
  return h;
}
inline std::vector<float> from_f16(const std::vector<uint16_t>& h) {
  std::vector<float> v(h.size());
  for (size_t i = 0; i < h.size(); ++i) v[i] = headkv::fp16_to_f32(h[i]);
  return v;
}
inline __half* hptr(const cu::DBuf<uint16_t>& b) { return reinterpret_cast<__half*>(b.get()); }

// A weight matrix on the device in the layout cuda/weights.cu uploads (the file's bytes; split
// types: every unit's quants, then every unit's scales), and its rows dequantized by the CPU.
struct DevWeight {
  cu::DBuf<uint8_t> q, s;
  cu::DW w;
  std::vector<float> deq;  // rows x cols, headkv::dequantize_row
};
inline DevWeight upload_weight(GGMLType t, int rows, int cols, std::mt19937& rng) {
  const std::vector<uint8_t> file = headkv::random_rows(t, rows, cols, rng);
  const int id = (int)t;
  std::vector<uint8_t> q = file, s;
  const bool ok = cu::dispatch_type(id, [&](auto f) {
    using F = decltype(f);
    if constexpr (F::sb > 0) {
      const size_t units = file.size() / F::bytes;
      q.assign(units * F::qb, 0);
      s.assign(units * F::sb, 0);
      for (size_t i = 0; i < units; ++i) {
        std::memcpy(&s[i * F::sb], &file[i * F::bytes + (F::s_first ? 0 : F::qb)], F::sb);
        std::memcpy(&q[i * F::qb], &file[i * F::bytes + (F::s_first ? F::sb : 0)], F::qb);
      }
    }
  });
  if (!ok) headkv::fail(headkv::ErrorKind::Unsupported, "no CUDA decoder for " + headkv::type_name(t));
  DevWeight d;
  d.q = to_dev(q, "weight quants");
  d.s = to_dev(s, "weight scales");
  const size_t rb = headkv::row_size(t, cols);
  d.w = cu::DW{id, d.q.get(), s.empty() ? nullptr : d.s.get(), rows, cols, rb};
  d.deq.resize((size_t)rows * cols);
  for (int r = 0; r < rows; ++r) headkv::dequantize_row(t, file.data() + r * rb, d.deq.data() + (size_t)r * cols, cols);
  return d;
}

// y[t][r] = sum_c W[r][c] x[t][c] in double, W the CPU's dequantized rows.
inline std::vector<double> ref_matvec(const std::vector<float>& deq, int64_t rows, int64_t cols, const float* x,
                                      int64_t ldx, int T) {
  std::vector<double> y((size_t)T * rows);
  for (int t = 0; t < T; ++t)
    for (int64_t r = 0; r < rows; ++r) {
      double acc = 0.0;
      const float* w = &deq[(size_t)r * cols];
      for (int64_t c = 0; c < cols; ++c) acc += (double)w[c] * x[t * ldx + c];
      y[(size_t)t * rows + r] = acc;
    }
  return y;
}

// x as the int8-activation matvecs use it (matvec_q8x.cu quantize_x): u = x (times the RMSNorm
// weight nw when given); per block of 32 values q = round-to-nearest-even(u * (127 / max|u|)), the
// value q * (max|u| / 127). The int8 checks dot the weights with these values, so their bound covers
// fp32 rounding (and a rare value rounded the other way), not the quantization itself.
inline std::vector<float> q8_values(const float* x, const float* nw, int64_t n) {
  std::vector<float> out((size_t)n);
  for (int64_t b = 0; b < n; b += 32) {
    float u[32], m = 0.0f;
    for (int i = 0; i < 32; ++i) {
      u[i] = nw ? x[b + i] * nw[b + i] : x[b + i];
      m = std::max(m, std::fabs(u[i]));
    }
    const float id = m > 0.0f ? 127.0f / m : 0.0f, dx = m / 127.0f;
    for (int i = 0; i < 32; ++i) out[b + i] = (float)std::nearbyint(u[i] * id) * dx;
  }
  return out;
}
// The factor headkv::rms_norm multiplies x by (before its weight).
inline float rms_scale(const float* x, int64_t n, float eps) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += (double)x[i] * x[i];
  return 1.0f / std::sqrt((float)(ss / n) + eps);
}

// The CPU's RoPE tables for positions pos0 .. pos0+T-1 (model/context Context::rope_tables: fp32
// position and angle, double cos/sin), [T][rope_dim/2].
inline void rope_tables(const std::vector<float>& inv_freq, int32_t pos0, int T, float scale, std::vector<float>& cs,
                        std::vector<float>& sn) {
  const size_t half = inv_freq.size();
  cs.assign(T * half, 0.0f);
  sn.assign(T * half, 0.0f);
  for (int t = 0; t < T; ++t) {
    const float pos = (float)(pos0 + t) / scale;
    for (size_t i = 0; i < half; ++i) {
      const float theta = pos * inv_freq[i];
      cs[t * half + i] = (float)std::cos((double)theta);
      sn[t * half + i] = (float)std::sin((double)theta);
    }
  }
}
inline std::vector<float> inv_freqs(int rope_dim, float base) {
  std::vector<float> f(rope_dim / 2);
  for (int i = 0; i < rope_dim / 2; ++i) f[i] = (float)std::pow((double)base, -2.0 * i / rope_dim);
  return f;
}

// Softmax attention of one query over keys K[0..n) (rows of hd), in double; cap > 0: scores
// soft-capped to cap * tanh(score / cap) (Gemma 2).
inline void ref_attend(const float* q, const float* K, const float* V, int64_t n, int hd, double* out, double cap = 0) {
  std::vector<double> s((size_t)n);
  double mx = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    double d = 0.0;
    for (int i = 0; i < hd; ++i) d += (double)q[i] * K[j * hd + i];
    s[j] = d / std::sqrt((double)hd);
    if (cap > 0) s[j] = cap * std::tanh(s[j] / cap);
    mx = std::max(mx, s[j]);
  }
  double sum = 0.0;
  for (int64_t j = 0; j < n; ++j) sum += (s[j] = std::exp(s[j] - mx));
  for (int i = 0; i < hd; ++i) out[i] = 0.0;
  for (int64_t j = 0; j < n; ++j)
    for (int i = 0; i < hd; ++i) out[i] += s[j] / sum * V[j * hd + i];
}

const GGMLType kTypes[] = {GGMLType::F32,  GGMLType::F16,  GGMLType::BF16, GGMLType::Q4_0,
                           GGMLType::Q4_1, GGMLType::Q5_0, GGMLType::Q5_1, GGMLType::Q8_0,
                           GGMLType::Q4_K, GGMLType::Q5_K, GGMLType::Q6_K};
// Types with int8-activation matvecs (matvec_q8x.cu).
inline bool has_q8x(GGMLType t) {
  return t == GGMLType::Q4_0 || t == GGMLType::Q4_1 || t == GGMLType::Q8_0 || t == GGMLType::Q4_K ||
         t == GGMLType::Q5_K || t == GGMLType::Q6_K;
}
inline const char* tname(GGMLType t) {
  static std::string s[64];
  std::string& n = s[(int)t % 64];
  if (n.empty()) n = headkv::type_name(t);
  return n.c_str();
}

// Bounds. fp32 kernels doing the CPU's arithmetic (RMSNorm's double sum, RoPE's unfused products,
// the decoders' d*q+m): 1e-6, i.e. a few ulps. fp32 dot products / attention in another summation
// order: 5e-5 / 1e-4 (their rounding is ~1e-6). A result stored as fp16: 1e-3 (half an fp16 ulp is
// 4.9e-4 of the value). int8 activations against a dot with x quantized as the kernel does
// (q8_values): 2e-3, room for one value of x rounded the other way (~1e-3 of the output); the
// quantization itself costs up to ~2.5e-2 of a SwiGLU output, which the reference does not see.
// fp16 Q and softmax weights on tensor cores (flash_attention_tc): 1e-2 (~1e-3 expected).
constexpr double kExact = 1e-6, kDot = 5e-5, kAttn = 1e-4, kHalf = 1e-3, kInt8 = 2e-3, kAttnTc = 1e-2;

}  // namespace opcheck
