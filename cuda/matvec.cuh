// Arguments shared by the decode matvec kernels (matvec.cu: fp32 activations; matvec_q8x.cu:
// activations quantized to int8 blocks, dp4a). Rows may span up to 3 weight matrices of one type
// and width (Q, K, V in one launch); SwiGLU reads a second matrix (up) beside the first (gate).
#pragma once
#include <cstdint>

#include "kernels.cuh"

namespace headkv::cu {

struct MV {
  const uint8_t* W[3];
  const uint8_t* S[3];  // scales of split quantized types (quant.cuh)
  float* y[3];
  int64_t seg_end[3];  // cumulative row counts
  int n_seg;
  const uint8_t* W2;  // SwiGLU: the up projection (one segment)
  const uint8_t* S2;
  int64_t rows, cols;
  const float* x;
  int64_t ldx, ldy;
  int T;
  const float* norm_w;
  float eps;
};

// Segment of row r and its row index inside that matrix.
__device__ __forceinline__ int mv_segment(const MV& a, int64_t r, int64_t* local) {
  int s = 0;
  while (s + 1 < a.n_seg && r >= a.seg_end[s]) ++s;
  *local = r - (s ? a.seg_end[s - 1] : 0);
  return s;
}

// Single-token matvec with int8 activations (Q4_0, Q4_1, Q8_0): false for other types.
bool matvec_q8x(const MV& a, int type, MatvecMode mode, bool norm, cudaStream_t s);

}  // namespace headkv::cu
