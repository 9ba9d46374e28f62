// The CUDA backend's ops against the CPU's (llama.cpp's test-backend-ops idea): every kernel the
// CUDA forward pass and selection launch, on random inputs from fixed seeds, against the CPU's op
// (model/ops.h, quant/quant.h, select/selection.h) or, where the CPU has no stand-alone function
// (attention, SwiGLU's and GeGLU's products), a plain double-precision reference here. One line per case: op,
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
#include "ops_attention.cuh"
#include "ops_kv_quant.cuh"
#include "ops_matvec.cuh"
#include "ops_rope.cuh"
#include "ops_select.cuh"
#include "ops_value_fit.cuh"
#include "ops_window.cuh"

using namespace opcheck;

namespace {

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

// GeGLU's product against the CPU's formula (model/forward.cpp's gelu_tanh, tanh in float).
void check_gelu_mul(cudaStream_t st) {
  std::mt19937 rng(4);
  const int64_t n = 10007;
  std::vector<float> g = normal(n, rng, 4.0f), u = normal(n, rng), ref(n);
  for (int64_t i = 0; i < n; ++i) {
    const float x = g[i];
    ref[i] = 0.5f * x * (1.0f + std::tanh(0.7978845608028654f * (x + 0.044715f * x * x * x))) * u[i];
  }
  cu::DBuf<float> dg = to_dev(g, "g"), du = to_dev(u, "u");
  cu::gelu_mul(dg.get(), du.get(), n, st);
  sync(st, "gelu_mul");
  report("gelu_mul", fmt("n=%lld", (long long)n), nmax_err(to_host(dg, n, "g"), ref), kExact);
}

// A post-norm added to the residual stream: out += RMSNorm(x) * w (Gemma's post-attention / FFN).
void check_rms_norm_add(cudaStream_t st) {
  std::mt19937 rng(5);
  const int64_t T = 4, d = 640;
  const float eps = 1e-6f;
  std::vector<float> x = normal(T * d, rng, 2.0f), w = normal(d, rng, 0.5f, 1.0f), out = normal(T * d, rng), ref = out;
  std::vector<float> nrm(d);
  for (int64_t t = 0; t < T; ++t) {
    headkv::rms_norm(&x[t * d], w.data(), nrm.data(), d, eps);
    for (int64_t i = 0; i < d; ++i) ref[t * d + i] += nrm[i];
  }
  cu::DBuf<float> dx = to_dev(x, "x"), dw = to_dev(w, "w"), dout = to_dev(out, "out");
  cu::rms_norm_add(dx.get(), dw.get(), dout.get(), T, d, eps, st);
  sync(st, "rms_norm_add");
  report("rms_norm_add", fmt("T=%lld d=%lld", (long long)T, (long long)d), nmax_err(to_host(dout, out.size(), "out"), ref),
         kExact);
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
  cudaStream_t st = nullptr;
  try {
    cu::require_supported_device();
    cudaDeviceProp prop{};
    cu::check(cudaGetDeviceProperties(&prop, 0), "device properties");
    std::printf("test_backend_ops on %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
    cu::check(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), "stream");
  } catch (const std::exception& e) {
    std::printf("test_backend_ops: %s\n", e.what());
    return 1;
  }
  group("rms_norm", check_rms_norm, st);
  group("add_bias", check_add_bias, st);
  group("silu_mul", check_silu_mul, st);
  group("gelu_mul", check_gelu_mul, st);
  group("rms_norm_add", check_rms_norm_add, st);
  group("rope_store", check_rope_store, st);
  group("matvec_qkv_rope", check_qkv_rope, st);
  group("matvec", check_matvec, st);
  group("matvec rows (int8)", check_matvec_rows, st);
  group("matmul (int8 tensor cores)", check_matmul_mma, st);
  group("embed/dequant rows", check_rows, st);
  group("gemm_nt", check_gemm, st);
  group("q8_0/q4_0 K/V stores", check_kv_quant_stores, st);
  group("q8_0/q4_0 fused store", check_fused_quant_store, st);
  group("decode_attention", check_decode_attention, st);
  group("flash_attention", check_flash_attention, st);
  group("decode_attention (window)", check_decode_window, st);
  group("flash_attention (window)", check_flash_window, st);
  group("window_scores", check_window_scores_topk, st);
  group("topk (exact)", check_topk_exact, st);
  group("compact/gather", check_compact_gather, st);
  group("value_fit", check_value_fit, st);
  if (cudaStreamDestroy(st) != cudaSuccess) report_error("cudaStreamDestroy", "", cudaGetErrorString(cudaGetLastError()));
  std::printf("test_backend_ops: %d of %d cases passed%s\n", g_cases - g_failed, g_cases,
              g_failed ? "" : " (all)");
  return g_failed ? 1 : 0;
}

