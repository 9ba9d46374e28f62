// Shared helpers of the CUDA backend: error checks that throw headkv::Error, launch checks.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>

#include "common/error.h"

namespace headkv::cu {

inline void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  const ErrorKind k = e == cudaErrorMemoryAllocation ? ErrorKind::OutOfMemory : ErrorKind::Internal;
  fail(k, std::string("CUDA: ") + what + ": " + cudaGetErrorString(e));
}

// After a kernel launch: launch-configuration errors surface here (execution errors at the next sync).
inline void check_launch(const char* what) { check(cudaGetLastError(), what); }

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// An element of a layer's K/V buffer (fp32, or fp16 in the fast precision) as fp32.
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }  // (exact: f16 stores it back as is)

// Streaming multiprocessors of the current device (grid sizing).
inline int sm_count() {
  static const int n = [] {
    int dev = 0, c = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&c, cudaDevAttrMultiProcessorCount, dev);
    return c > 0 ? c : 1;
  }();
  return n;
}

// Largest dynamic shared memory one block of the current device may opt in to (bytes).
inline size_t smem_optin() {
  static const size_t n = [] {
    int dev = 0, b = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&b, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    return (size_t)(b > 0 ? b : 48 * 1024);
  }();
  return n;
}

// Programmatic dependent launch (sm_90): a kernel launched with the programmatic-serialization
// attribute (when pdl_enabled()) may start while the previous kernel in the stream finishes; it must
// call grid_dependency_wait() before reading that kernel's results (every block, before it exits).
// grid_dependents_launch() lets the next such kernel start early. Both are no-ops without PDL.
// PDL is on wherever the device has it (sm_90+): +3% decode (BENCHMARKS.md).
__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void grid_dependents_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// cp.async (sm_80+): 16-byte global -> shared copies that complete in commit groups.
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;  // 0: the 16 bytes are zero-filled (src is not read)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Tensor-core helpers (sm_80+): ldmatrix of four 8x8 fp16 tiles (x4_t: transposed) and
// mma.sync m16n8k16 (fp16 in, fp32 accumulate).
__device__ __forceinline__ void ldsm_x4(uint32_t* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
// d += a (16x16, row) * b (16x8, col), fp16 in, fp32 accumulate
__device__ __forceinline__ void mma16816(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Two 8-wide n-tiles of d += a · B from a row-major fp16 tile in shared memory (ld halves per row),
// one k-step of 16. mma_abt2: B = Rᵀ, R's rows 0..15 are the n index (keys: S = Q·Kᵀ), `r` points
// at R[n0][k0]. mma_ab2: B = R, R's rows 0..15 are the k index (values: O += P·V), `r` points at
// R[k0][n0].
__device__ __forceinline__ void mma_abt2(float* d0, float* d1, const uint32_t* a, const __half* r, int ld, int lane) {
  uint32_t b[4];
  ldsm_x4(b, r + ((lane >> 4) * 8 + (lane & 7)) * ld + ((lane >> 3) & 1) * 8);
  mma16816(d0, a, b[0], b[1]);
  mma16816(d1, a, b[2], b[3]);
}
__device__ __forceinline__ void mma_ab2(float* d0, float* d1, const uint32_t* a, const __half* r, int ld, int lane) {
  uint32_t b[4];
  ldsm_x4_t(b, r + (((lane >> 3) & 1) * 8 + (lane & 7)) * ld + (lane >> 4) * 8);
  mma16816(d0, a, b[0], b[1]);
  mma16816(d1, a, b[2], b[3]);
}
__device__ __forceinline__ uint32_t pack_h2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// True when the environment variable `name` is set to `value` (development switches).
inline bool env_is(const char* name, const char* value) {
  const char* e = std::getenv(name);
  return e && std::string(e) == value;
}

inline bool pdl_enabled() {
  static const bool on = [] {
    int dev = 0, major = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    return major >= 9;
  }();
  return on;
}

// Launches kernel<<<grid, block, smem, s>>>(args...) as a programmatic dependent of the stream's
// previous kernel (when pdl_enabled()); the kernel calls grid_dependency_wait() before reading that
// kernel's results.
template <class... P, class... A>
void launch_pdl(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, const char* what,
                A&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute pdl;
  pdl.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  pdl.val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = &pdl;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  check(cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...), what);
}

}  // namespace headkv::cu
