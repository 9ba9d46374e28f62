// Decode matrix-vector products on quantized weights: one warp per output row, 4 lanes per 32-wide
// block (8 blocks per warp step), each weight byte read once; x (fp32) comes through L1/L2.
#include "common.cuh"
#include "kernels.cuh"
#include "quant.cuh"

namespace headkv::cu {

namespace {

constexpr int kRowsPerBlock = 8;  // warps per block

template <class F, int MODE, int NT>
__global__ void __launch_bounds__(256) matvec_kernel(const uint8_t* __restrict__ W, const uint8_t* __restrict__ W2,
                                                     size_t row_bytes, int64_t rows, int64_t cols,
                                                     const float* __restrict__ x, int64_t ldx, float* y, int64_t ldy,
                                                     int T) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * kRowsPerBlock + warp;
  if (row >= rows) return;
  const int nb = (int)(cols / 32);
  const int p = lane & 3;
  const uint8_t* wr = W + row * row_bytes;
  const uint8_t* wr2 = MODE == MV_SWIGLU ? W2 + row * row_bytes : nullptr;
  float acc[NT], acc2[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = acc2[t] = 0.0f;
  const int o0 = F::off0(p), o1 = F::off1(p);
#pragma unroll 4
  for (int b = lane >> 2; b < nb; b += 8) {
    float w[8], w2[8];
    F::part(wr + (size_t)b * F::bytes, p, w);
    if (MODE == MV_SWIGLU) F::part(wr2 + (size_t)b * F::bytes, p, w2);
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      if (t < T) {
        const float* xb = x + t * ldx + (int64_t)b * 32;
        const float4 a = __ldg(reinterpret_cast<const float4*>(xb + o0));
        const float4 c = __ldg(reinterpret_cast<const float4*>(xb + o1));
        acc[t] += w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w + w[4] * c.x + w[5] * c.y + w[6] * c.z + w[7] * c.w;
        if (MODE == MV_SWIGLU)
          acc2[t] += w2[0] * a.x + w2[1] * a.y + w2[2] * a.z + w2[3] * a.w + w2[4] * c.x + w2[5] * c.y + w2[6] * c.z +
                     w2[7] * c.w;
      }
    }
  }
#pragma unroll
  for (int t = 0; t < NT; ++t) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], o);
      if (MODE == MV_SWIGLU) acc2[t] += __shfl_xor_sync(0xffffffffu, acc2[t], o);
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      if (t < T) {
        float* out = y + t * ldy + row;
        if (MODE == MV_STORE) *out = acc[t];
        else if (MODE == MV_ADD) *out += acc[t];
        else *out = acc[t] / (1.0f + expf(-acc[t])) * acc2[t];
      }
    }
  }
}

template <class F, int MODE>
void launch_mode(const DW& w, const DW* w2, const float* x, int64_t ldx, float* y, int64_t ldy, int T, cudaStream_t s) {
  const dim3 grid((unsigned)cdiv(w.rows, kRowsPerBlock)), block(32 * kRowsPerBlock);
  const uint8_t* W2 = w2 ? w2->data : nullptr;
  if (T == 1)
    matvec_kernel<F, MODE, 1><<<grid, block, 0, s>>>(w.data, W2, w.row_bytes, w.rows, w.cols, x, ldx, y, ldy, T);
  else
    matvec_kernel<F, MODE, kMatvecMaxT><<<grid, block, 0, s>>>(w.data, W2, w.row_bytes, w.rows, w.cols, x, ldx, y, ldy, T);
}

}  // namespace

void matvec(const DW& w, const DW* w2, const float* x, int64_t ldx, float* y, int64_t ldy, int T, MatvecMode mode,
            cudaStream_t s) {
  if (T < 1 || T > kMatvecMaxT) fail(ErrorKind::Internal, "matvec: T out of range");
  if (w.cols % 32) fail(ErrorKind::Unsupported, "CUDA backend: rows of " + std::to_string(w.cols) + " elements are not a multiple of 32");
  if (mode == MV_SWIGLU && (!w2 || w2->type != w.type || w2->rows != w.rows || w2->cols != w.cols))
    fail(ErrorKind::Internal, "matvec: SwiGLU weights must have one type and shape");
  const bool ok = dispatch_type(w.type, [&](auto f) {
    using F = decltype(f);
    if (mode == MV_STORE) launch_mode<F, MV_STORE>(w, w2, x, ldx, y, ldy, T, s);
    else if (mode == MV_ADD) launch_mode<F, MV_ADD>(w, w2, x, ldx, y, ldy, T, s);
    else launch_mode<F, MV_SWIGLU>(w, w2, x, ldx, y, ldy, T, s);
  });
  if (!ok) fail(ErrorKind::Unsupported, "CUDA backend: weight type " + std::to_string(w.type) + " has no matvec kernel");
  check_launch("matvec");
}

}  // namespace headkv::cu
