// Prefill GEMMs: weights dequantized (in row chunks) to fp16 or fp32, then cuBLAS with fp32
// accumulation. cuBLAS is loaded at run time (dlopen), so the library builds and imports on
// machines without it (CI); a context on a GPU without libcublas fails with Unsupported.
#include <dlfcn.h>

#include <algorithm>
#include <mutex>
#include <string>

#include "common.cuh"
#include "kernels.cuh"
#include "quant.cuh"

namespace headkv::cu {

namespace {

template <class F, class OUT>
__global__ void dequant_kernel(const uint8_t* __restrict__ W, const uint8_t* __restrict__ S, int64_t r0, int64_t n,
                               int64_t cols, const int32_t* __restrict__ ids, OUT* __restrict__ out) {
  const int64_t parts_per_row = cols / 8;
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n * parts_per_row) return;
  const int64_t r = i / parts_per_row, q = i % parts_per_row;
  const int64_t b = q / 4;
  const int p = (int)(q % 4);
  const int64_t src = ids ? ids[r] : r0 + r;
  float w[8];
  const int64_t nb = cols / 32;
  F::part(blk_q<F>(W, src, nb, b), blk_s<F>(S, src, nb, b), (int)(b % F::per), p, w);
  OUT* o = out + r * cols + b * 32;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    o[F::off0(p) + j] = (OUT)w[j];
    o[F::off1(p) + j] = (OUT)w[4 + j];
  }
}

__global__ void h2f_kernel(const __half* __restrict__ in, float* __restrict__ out, int64_t n) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __half2float(in[i]);
}

__global__ void f2h_kernel(const float* __restrict__ in, __half* __restrict__ out, int64_t n) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __float2half_rn(in[i]);
}

template <class OUT>
void launch_dequant(const DW& w, int64_t r0, int64_t n, const int32_t* ids, OUT* out, cudaStream_t s) {
  if (w.cols % 32) fail(ErrorKind::Unsupported, "CUDA backend: rows of " + std::to_string(w.cols) + " elements are not a multiple of 32");
  const int64_t total = n * (w.cols / 8);
  if (total == 0) return;
  const bool ok = dispatch_type(w.type, [&](auto f) {
    using F = decltype(f);
    dequant_kernel<F, OUT><<<(unsigned)cdiv(total, 256), 256, 0, s>>>(w.data, w.sc, r0, n, w.cols, ids, out);
  });
  if (!ok) fail(ErrorKind::Unsupported, "CUDA backend: weight type " + std::to_string(w.type) + " cannot be dequantized");
  check_launch("dequantize");
}

// ---- cuBLAS through dlopen: the few entry points and enum values we use (cublas_api.h).
using cublasHandle_t = void*;
using Create = int (*)(cublasHandle_t*);
using SetStream = int (*)(cublasHandle_t, cudaStream_t);
using SetMath = int (*)(cublasHandle_t, int);
using GemmEx = int (*)(cublasHandle_t, int, int, int, int, int, const void*, const void*, int, int, const void*, int,
                       int, const void*, void*, int, int, int, int);
constexpr int OP_N = 0, OP_T = 1, R_32F = 0, R_16F = 2;
constexpr int COMPUTE_32F = 68, COMPUTE_32F_PEDANTIC = 69, GEMM_DEFAULT = -1, PEDANTIC_MATH = 2;

struct Blas {
  void* lib = nullptr;
  Create create = nullptr;
  SetStream set_stream = nullptr;
  SetMath set_math = nullptr;
  GemmEx gemm = nullptr;
  cublasHandle_t handle = nullptr;
  std::string error;
};

Blas& blas() {
  static Blas b;
  static std::once_flag once;
  std::call_once(once, [] {
    const char* env = std::getenv("HEADKV_CUBLAS");
    const char* names[] = {env ? env : "libcublas.so.13", "libcublas.so.13", "libcublas.so.12", "libcublas.so",
                           "/usr/local/cuda/lib64/libcublas.so.13", "/usr/local/cuda/lib64/libcublas.so"};
    for (const char* n : names)
      if ((b.lib = dlopen(n, RTLD_NOW | RTLD_LOCAL))) break;
    if (!b.lib) {
      b.error = "cannot load libcublas (set HEADKV_CUBLAS to its path)";
      return;
    }
    b.create = (Create)dlsym(b.lib, "cublasCreate_v2");
    b.set_stream = (SetStream)dlsym(b.lib, "cublasSetStream_v2");
    b.set_math = (SetMath)dlsym(b.lib, "cublasSetMathMode");
    b.gemm = (GemmEx)dlsym(b.lib, "cublasGemmEx");
    if (!b.create || !b.set_stream || !b.set_math || !b.gemm) {
      b.error = "libcublas lacks cublasGemmEx / cublasCreate_v2";
      return;
    }
    if (b.create(&b.handle) != 0) b.error = "cublasCreate failed";
  });
  return b;
}

}  // namespace

void dequant_rows(const DW& w, int64_t r0, int64_t n, void* out, bool half_out, cudaStream_t s) {
  if (half_out) launch_dequant(w, r0, n, nullptr, (__half*)out, s);
  else launch_dequant(w, r0, n, nullptr, (float*)out, s);
}

void embed_rows(const DW& w, const int32_t* ids, int64_t T, float* out, cudaStream_t s) {
  launch_dequant(w, 0, T, ids, out, s);
}

void f16_to_f32(const __half* in, float* out, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  h2f_kernel<<<(unsigned)cdiv(n, 256), 256, 0, s>>>(in, out, n);
  check_launch("f16_to_f32");
}

void f32_to_f16(const float* in, __half* out, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  f2h_kernel<<<(unsigned)cdiv(n, 256), 256, 0, s>>>(in, out, n);
  check_launch("f32_to_f16");
}

void blas_init(cudaStream_t s) {
  Blas& b = blas();
  if (!b.error.empty()) fail(ErrorKind::Unsupported, "CUDA backend: " + b.error);
}

void gemm_nt(const void* A, const void* B, float* C, int64_t m, int64_t n, int64_t k, int64_t ldc, float beta,
             bool half_in, cudaStream_t s) {
  Blas& b = blas();
  if (!b.error.empty()) fail(ErrorKind::Unsupported, "CUDA backend: " + b.error);
  if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX || ldc > INT32_MAX) fail(ErrorKind::Internal, "gemm: size too large");
  const float alpha = 1.0f;
  // One handle for the process: its stream and math mode are set and the GEMM enqueued under a lock,
  // so that contexts running in several threads (a sequence pool) do not enqueue on each other's
  // streams.
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  b.set_stream(b.handle, s);
  b.set_math(b.handle, half_in ? 0 : PEDANTIC_MATH);
  // Column-major view: C^T (m x n) = A (k x m)^T * B (k x n).
  const int st = b.gemm(b.handle, OP_T, OP_N, (int)m, (int)n, (int)k, &alpha, A, half_in ? R_16F : R_32F, (int)k, B,
                        half_in ? R_16F : R_32F, (int)k, &beta, C, R_32F, (int)ldc,
                        half_in ? COMPUTE_32F : COMPUTE_32F_PEDANTIC, GEMM_DEFAULT);
  if (st != 0) fail(ErrorKind::Internal, "cublasGemmEx failed with status " + std::to_string(st));
}

void gemm_weights(const DW& w, const float* in, int64_t T, float* out, int64_t ldo, bool add, bool half, __half* xh,
                  void* wscratch, int64_t wscratch_elems, cudaStream_t s) {
  const float beta = add ? 1.0f : 0.0f;
  const void* B = in;
  if (half) {
    f32_to_f16(in, xh, T * w.cols, s);
    B = xh;
    if (w.type == T_F16) {  // fp16 weights go to cuBLAS as they are
      gemm_nt(w.data, B, out, w.rows, T, w.cols, ldo, beta, true, s);
      return;
    }
  }
  const int64_t rows_per = std::max<int64_t>(1, wscratch_elems / w.cols);
  for (int64_t r0 = 0; r0 < w.rows; r0 += rows_per) {
    const int64_t n = std::min(rows_per, w.rows - r0);
    dequant_rows(w, r0, n, wscratch, half, s);
    gemm_nt(wscratch, B, out + r0, n, T, w.cols, ldo, beta, half, s);
  }
}

}  // namespace headkv::cu
