// Shared helpers of the CUDA backend: error checks that throw headkv::Error, launch checks.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

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

}  // namespace headkv::cu
