// Whether this build can run on a CUDA device: plain C++, unit-tested without a GPU
// (tests/cpp/test_cuda_plan.cpp). The kernels use sm_80 features (cp.async, bf16 mma.sync), and a
// build holds machine code only for its HEADKV_CUDA_ARCHS (plus PTX of the newest, which newer GPUs
// compile at load time).
#pragma once
#include <string>

namespace headkv::cu {

// An empty string when the device can run this build; otherwise what is wrong and what to do.
// `has_image`: the CUDA runtime found a kernel image for the device (cudaFuncGetAttributes).
inline std::string device_support_problem(const std::string& name, int major, int minor, bool has_image,
                                          const std::string& archs) {
  const std::string cc = std::to_string(major) + "." + std::to_string(minor);
  if (major < 8)
    return "CUDA device '" + name + "' has compute capability " + cc +
           "; the CUDA backend needs 8.0 (Ampere) or newer (use device='cpu')";
  if (!has_image)
    return "this build has no CUDA kernels for device '" + name + "' (compute capability " + cc +
           "; built for HEADKV_CUDA_ARCHS=" + archs + "): rebuild with -DHEADKV_CUDA_ARCHS=" +
           std::to_string(major * 10 + minor) + ", e.g. CMAKE_ARGS=\"-DHEADKV_CUDA_ARCHS=" +
           std::to_string(major * 10 + minor) + "\" pip install .";
  return "";
}

}  // namespace headkv::cu
