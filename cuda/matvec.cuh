// Arguments shared by the decode matvec kernels (matvec.cu: fp32 activations; matvec_q8x.cu:
// activations quantized to int8 blocks, dp4a). Rows may span up to 3 weight matrices of one type
// and width (Q, K, V in one launch); SwiGLU reads a second matrix (up) beside the first (gate).
#pragma once
#include <cstdint>

#include "kernels.cuh"
#include "kv_quant.cuh"

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
  RopeStore rope;  // MV_ROPE: rows are Q | K | V of one token (matvec_qkv_rope)
};

// Dynamic shared memory of a single-token matvec over rows of `cols` values: RMSNorm(x) staged in
// fp32 (matvec.cu), or x quantized to int8 blocks of 32, each with 8 bytes of scales (matvec_q8x.cu).
constexpr size_t mv_norm_smem(int64_t cols) { return (size_t)cols * sizeof(float); }
constexpr size_t mv_q8x_smem(int64_t cols) { return (size_t)(cols / 32) * 40; }
// One token's share of the several-token kernel's shared memory (16-byte aligned).
__host__ __device__ constexpr size_t mv_q8x_token_bytes(int64_t cols) { return ((size_t)(cols / 32) * 40 + 15) / 16 * 16; }

// Segment of row r and its row index inside that matrix.
__device__ __forceinline__ int mv_segment(const MV& a, int64_t r, int64_t* local) {
  int s = 0;
  while (s + 1 < a.n_seg && r >= a.seg_end[s]) ++s;
  *local = r - (s ? a.seg_end[s - 1] : 0);
  return s;
}

// Rows (local, local + 1) of segment sg (Q, K, V) of one token, as rope_store treats them: Q and K
// pairs inside rope_dim are rotated; Q stays in r.q (fp32), K and V go to the arena entry after the
// head's used ones (f16, or q8_0 / q4_0 blocks through the stage: matvec_qkv_rope), with the
// position. rope_meta reads only what earlier steps wrote (the position, the arena counts), so a
// programmatic dependent computes it before its wait.
struct RopeMeta {
  float c = 1.0f, s = 0.0f;  // the pair's rotation (identity outside rope_dim and for V)
  int64_t e = 0;             // arena entry (K, V)
  int32_t pos = 0;
};
__device__ __forceinline__ RopeMeta rope_meta(const RopeStore& r, int sg, int64_t local) {
  RopeMeta m;
  const int head = (int)(local / r.hd), d = (int)(local % r.hd);
  m.pos = r.pos0_dev ? *r.pos0_dev : r.pos0;
  if (sg < 2 && d < r.rope_dim) rope_cs(m.pos, r.rope_scale, r.inv_freq[d / 2], r.mscale, &m.c, &m.s);
  if (sg > 0) m.e = r.seg_off[head] + r.used[head];
  return m;
}
__device__ __forceinline__ void rope_epilogue(const RopeStore& r, const RopeMeta& m, int sg, int64_t local, float v0,
                                              float v1) {
  const int d = (int)(local % r.hd);
  if (sg < 2 && d < r.rope_dim) {
    const float x0 = v0, x1 = v1;
    v0 = rope_x(x0, x1, m.c, m.s);
    v1 = rope_y(x0, x1, m.c, m.s);
  }
  if (sg == 0) {
    r.q[local] = v0;
    r.q[local + 1] = v1;
    return;
  }
  if (sg == 2 && d == 0) r.pos[m.e] = m.pos;
  const KVType t = sg == 1 ? r.tk : r.tv;
  if (t == KVType::F16) {
    __half* dst = static_cast<__half*>(sg == 1 ? r.kh : r.vh) + m.e * r.hd + d;
    *reinterpret_cast<__half2*>(dst) = __floats2half2_rn(v0, v1);
    return;
  }
  // q8_0 / q4_0: the pair goes to the fp32 stage; the last of the block's 16 pairs to arrive (counted
  // atomically, after a fence that publishes the pair) reads the block back and quantizes it.
  float* stage = sg == 1 ? r.kstage : r.vstage;
  stage[local] = v0;
  stage[local + 1] = v1;
  __threadfence();
  int32_t* cnt = r.qcount + (int64_t)(sg - 1) * (r.nkv * r.hd / 32) + local / 32;
  if (atomicAdd(cnt, 1) == 15) {
    __threadfence();
    float x[32];
    const float* b = stage + local / 32 * 32;
#pragma unroll
    for (int i = 0; i < 32; ++i) x[i] = __ldcg(b + i);  // (from L2: other SMs wrote them)
    uint8_t* row = static_cast<uint8_t*>(sg == 1 ? r.kh : r.vh) + m.e * (int64_t)kv_row_bytes(t, r.hd);
    kv_quantize_block(t, x, row + d / 32 * kv_block_bytes(t));
    *cnt = 0;  // (read again only by a later launch)
  }
}

// Single-token matvec with int8 activations (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K): false for others.
bool matvec_q8x(const MV& a, int type, MatvecMode mode, bool norm, cudaStream_t s);
// T = 1..8 tokens (a.T) without a fused norm or RoPE, reading the weights once: false where the
// type, mode or shared memory (matvec_q8x_rows_smem) does not allow it.
bool matvec_q8x_rows(const MV& a, int type, MatvecMode mode, cudaStream_t s);
size_t matvec_q8x_rows_smem(int64_t cols, int T);

}  // namespace headkv::cu
