// CUDA backend: device discovery and memory accounting.
#include <cuda_runtime.h>

#include "device_buffer.cuh"
#include "device_support.h"

#ifndef HEADKV_CUDA_ARCHS_STR
#define HEADKV_CUDA_ARCHS_STR "?"
#endif

extern "C" int headkv_cuda_device_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

namespace headkv::cu {

MemCounter& mem_counter() {
  static MemCounter c;
  return c;
}

}  // namespace headkv::cu

// Free and total memory of the current device, and the bytes headkv's buffers hold (all 0 when no
// device is usable).
extern "C" void headkv_cuda_memory(uint64_t* free_b, uint64_t* total_b, uint64_t* held_b) {
  size_t f = 0, t = 0;
  if (cudaMemGetInfo(&f, &t) != cudaSuccess) {
    cudaGetLastError();
    f = t = 0;
  }
  *free_b = f;
  *total_b = t;
  *held_b = headkv::cu::mem_counter().cur.load();
}

extern "C" void headkv_cuda_reset_peak(void) {
  headkv::cu::MemCounter& c = headkv::cu::mem_counter();
  c.peak.store(c.cur.load());
}

namespace headkv::cu {

namespace {
__global__ void probe_kernel() {}  // built like every kernel: its image exists iff theirs do

void require_visible_device() {
  if (headkv_cuda_device_count() < 1) fail(ErrorKind::Unsupported, "device 'cuda': no CUDA device is visible");
}
}  // namespace

void require_supported_device() {
  require_visible_device();
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties");
  cudaFuncAttributes fa{};
  const cudaError_t e = cudaFuncGetAttributes(&fa, probe_kernel);
  const bool has_image = !(e == cudaErrorNoKernelImageForDevice || e == cudaErrorInvalidDeviceFunction);
  if (has_image) check(e, "cudaFuncGetAttributes");  // any other failure is not about this build
  else cudaGetLastError();  // the failed query also left its error as the last error
  const std::string why = device_support_problem(prop.name, prop.major, prop.minor, has_image, HEADKV_CUDA_ARCHS_STR);
  if (!why.empty()) fail(ErrorKind::Unsupported, why);
}

uint64_t device_free_bytes() {
  require_visible_device();
  size_t free_b = 0, total_b = 0;
  check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
  return free_b;
}

void require_device_bytes(uint64_t bytes, const std::string& what, uint64_t reserve) {
  const uint64_t free_b = device_free_bytes();
  if (bytes + reserve > free_b)
    fail(ErrorKind::OutOfMemory, what + " needs " + std::to_string(bytes) + " bytes of GPU memory but only " +
                                     std::to_string(free_b > reserve ? free_b - reserve : 0) + " bytes are free");
}

}  // namespace headkv::cu
