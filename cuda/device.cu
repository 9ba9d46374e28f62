// CUDA backend entry point. The kernels of the CUDA issue land here; for now the backend only
// reports the devices it can see, so that the build (HEADKV_CUDA=AUTO|ON) is exercised.
#include <cuda_runtime.h>

extern "C" int headkv_cuda_device_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}
