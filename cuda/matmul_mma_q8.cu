// Batched-step linear layers on Q4_0 / Q4_1 / Q8_0 weights with int8 tensor cores (the rows of a
// decode step with more than 8 sequences): each token's x is first quantized to int8 blocks of 32
// (quantize_rows_q8: the single-token kernel's rounding, dx = max|x| / 127), then a warp computes 16
// weight rows x up to 64 tokens with mma.m16n8k32 (s8 x s8 -> s32): per block of 32 weights one mma
// per 8 tokens gives the integer dot Σq·xq of every (row, token) pair, which the block's scales turn
// into floats as the dp4a kernels do:
//   Q4_0: d·(dx·Σq·xq − 8·dx·Σxq)   Q4_1: d·dx·Σq·xq + m·dx·Σxq   Q8_0: d·dx·Σq·xq
// Fragments (PTX ISA, m16n8k32 with .s8 A and B; g = lane / 4, t = lane % 4): A (row-major 16 x 32):
// registers 0..3 hold rows g, g + 8, g, g + 8 at k = 4t..4t+3, 4t..4t+3, 16+4t.., 16+4t..; B (32 x 8,
// column-major): registers 0, 1 hold token g at k = 4t..4t+3 and 16+4t..; C: rows g (c0, c1) and
// g + 8 (c2, c3) at tokens 2t, 2t + 1. A Q4_0 / Q4_1 block's byte j holds element j in its low nibble
// and element j + 16 in its high one, so one 32-bit load at byte 4t gives registers 0 and 2 of a row.
// The weights are read once for all tokens, and an activation block is read once per 16 rows (the
// dp4a kernels read it once per row): the step's cost stays near the weights' bytes up to 64 rows.
#include <cuda_fp16.h>

#include "common.cuh"
#include "kernels.cuh"
#include "quant.cuh"

namespace headkv::cu {

namespace {

// x [T][ldx] -> xq [T][nb][32] int8, xd [T][nb] (dx, dx·Σxq): one warp per block of 32 values.
__global__ void quantize_rows_kernel(const float* __restrict__ x, int64_t ldx, int T, int nb, int8_t* xq, float2* xd) {
  const int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (w >= (int64_t)T * nb) return;
  const int t = (int)(w / nb), b = (int)(w % nb);
  const float u = x[t * ldx + (int64_t)b * 32 + lane];
  float m = fabsf(u);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  const float id = m > 0.0f ? 127.0f / m : 0.0f;
  const int q = __float2int_rn(u * id);
  int s = q;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  xq[w * 32 + lane] = (int8_t)q;
  if (lane == 0) {
    const float dx = m / 127.0f;
    xd[w] = make_float2(dx, dx * (float)s);
  }
}

__device__ __forceinline__ void mma_s8(int (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// A fragment of rows (r0, r0 + 8) of block b; scales of both rows (d, and for Q4_1 m).
template <int TYPE>
struct MmaW {
  using F = Fmt<TYPE>;
  __device__ __forceinline__ static void load(const uint8_t* W, const uint8_t* S, int64_t r0, int64_t rows, int nb, int b,
                                              int t, uint32_t (&a)[4], float (&d)[2], float (&mn)[2]) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t r = r0 + 8 * h;
      if (r >= rows) {
        a[h] = a[h + 2] = 0u;
        d[h] = mn[h] = 0.0f;
        continue;
      }
      const uint8_t* q = blk_q<F>(W, r, nb, b);
      const uint8_t* s = blk_s<F>(S, r, nb, b);
      if constexpr (TYPE == T_Q8_0) {
        a[h] = __ldg(reinterpret_cast<const uint32_t*>(q) + t);
        a[h + 2] = __ldg(reinterpret_cast<const uint32_t*>(q) + 4 + t);
      } else {
        const uint32_t w = __ldg(reinterpret_cast<const uint32_t*>(q) + t);
        a[h] = w & 0x0F0F0F0Fu;
        a[h + 2] = (w >> 4) & 0x0F0F0F0Fu;
      }
      d[h] = __half2float(__ldg(reinterpret_cast<const __half*>(s)));
      mn[h] = TYPE == T_Q4_1 ? __half2float(__ldg(reinterpret_cast<const __half*>(s) + 1)) : 0.0f;
    }
  }
  __device__ __forceinline__ static float combine(int c, float d, float mn, float2 dx) {
    if constexpr (TYPE == T_Q4_0) return d * (dx.x * (float)c - 8.0f * dx.y);
    else if constexpr (TYPE == T_Q4_1) return d * dx.x * (float)c + mn * dx.y;
    else return d * dx.x * (float)c;
  }
};

// One block: rows 16·blockIdx.x .. + 15 of W (and of W2 for SwiGLU) times tokens 0 .. T-1 (NJ tiles
// of 8); its KW warps take turns over runs of U consecutive blocks of 32 weights (warp w: blocks
// U·w .. U·w + U - 1, then KW·U further), and warp 0 sums their partial results. Each warp first loads
// the weights and scales of all U blocks, then runs their mmas: U loads in flight per lane instead of
// one, since a warp that waits for each block's weights before its mma keeps too few bytes in flight
// to stream the matrix (the single-token kernels' U, matvec_q8x.cu). KW: 8 warps where one matrix is
// read (a 4096-row matrix is only 256 blocks, two per SM), 4 for SwiGLU's two (its registers would
// leave one 8-warp block per SM).
constexpr int U = 4;
__host__ __device__ constexpr int kw_of(int mode) { return mode == MV_SWIGLU ? 4 : 8; }
template <int TYPE, int MODE, int NJ>
__global__ void __launch_bounds__(32 * kw_of(MODE)) mma_kernel(const uint8_t* __restrict__ W, const uint8_t* __restrict__ S,
                                                 const uint8_t* __restrict__ W2, const uint8_t* __restrict__ S2,
                                                 int64_t rows, int nb, const int8_t* __restrict__ xq,
                                                 const float2* __restrict__ xd, int T, float* y, int64_t ldy) {
  constexpr bool two = MODE == MV_SWIGLU;
  constexpr int NA = two ? 2 : 1, KW = kw_of(MODE);  // accumulator sets, warps
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  __shared__ float part[KW - 1][NA][NJ * 4][32];
  const int64_t r0 = (int64_t)blockIdx.x * 16 + g;
  float acc[NJ][4], acc2[two ? NJ : 1][4];
#pragma unroll
  for (int j = 0; j < NJ; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      acc[j][e] = 0.0f;
      acc2[two ? j : 0][e] = 0.0f;
    }
  for (int b0 = U * warp; b0 < nb; b0 += KW * U) {
    uint32_t a[U][4], a2[two ? U : 1][4];
    float d[U][2], mn[U][2], d2[two ? U : 1][2], mn2[two ? U : 1][2];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (b0 + u >= nb) break;  // uniform over the warp
      MmaW<TYPE>::load(W, S, r0, rows, nb, b0 + u, t, a[u], d[u], mn[u]);
      if (two) MmaW<TYPE>::load(W2, S2, r0, rows, nb, b0 + u, t, a2[two ? u : 0], d2[two ? u : 0], mn2[two ? u : 0]);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int b = b0 + u;
      if (b >= nb) break;
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
        const int tok = 8 * j + g;  // this lane's B column
        uint32_t x0 = 0u, x1 = 0u;
        if (tok < T) {
          const uint32_t* xb = reinterpret_cast<const uint32_t*>(xq + ((int64_t)tok * nb + b) * 32);
          x0 = __ldg(xb + t);
          x1 = __ldg(xb + 4 + t);
        }
        const int c0 = 8 * j + 2 * t;  // this lane's C tokens: c0, c0 + 1
        const float2 dx0 = c0 < T ? __ldg(xd + (int64_t)c0 * nb + b) : make_float2(0.0f, 0.0f);
        const float2 dx1 = c0 + 1 < T ? __ldg(xd + (int64_t)(c0 + 1) * nb + b) : make_float2(0.0f, 0.0f);
        int c[4] = {0, 0, 0, 0};
        mma_s8(c, a[u], x0, x1);
        acc[j][0] += MmaW<TYPE>::combine(c[0], d[u][0], mn[u][0], dx0);
        acc[j][1] += MmaW<TYPE>::combine(c[1], d[u][0], mn[u][0], dx1);
        acc[j][2] += MmaW<TYPE>::combine(c[2], d[u][1], mn[u][1], dx0);
        acc[j][3] += MmaW<TYPE>::combine(c[3], d[u][1], mn[u][1], dx1);
        if constexpr (two) {
          int c2[4] = {0, 0, 0, 0};
          mma_s8(c2, a2[u], x0, x1);
          acc2[j][0] += MmaW<TYPE>::combine(c2[0], d2[u][0], mn2[u][0], dx0);
          acc2[j][1] += MmaW<TYPE>::combine(c2[1], d2[u][0], mn2[u][0], dx1);
          acc2[j][2] += MmaW<TYPE>::combine(c2[2], d2[u][1], mn2[u][1], dx0);
          acc2[j][3] += MmaW<TYPE>::combine(c2[3], d2[u][1], mn2[u][1], dx1);
        }
      }
    }
  }
  if (warp > 0) {
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        part[warp - 1][0][j * 4 + e][lane] = acc[j][e];
        if (two) part[warp - 1][NA - 1][j * 4 + e][lane] = acc2[two ? j : 0][e];
      }
  }
  __syncthreads();
  if (warp > 0) return;
#pragma unroll
  for (int j = 0; j < NJ; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
#pragma unroll
      for (int w = 0; w < KW - 1; ++w) {
        acc[j][e] += part[w][0][j * 4 + e][lane];
        if (two) acc2[two ? j : 0][e] += part[w][NA - 1][j * 4 + e][lane];
      }
      const int64_t r = r0 + (e >= 2 ? 8 : 0);
      const int tok = 8 * j + 2 * t + (e & 1);
      if (r >= rows || tok >= T) continue;
      float* out = y + (int64_t)tok * ldy + r;
      const float v = acc[j][e];
      if (MODE == MV_STORE) *out = v;
      else if (MODE == MV_ADD) *out += v;
      else *out = v / (1.0f + expf(-v)) * acc2[two ? j : 0][e];
    }
}

template <int TYPE, int MODE>
void launch_mode(const DW& w, const DW* w2, int nb, const int8_t* xq, const float2* xd, int T, float* y, int64_t ldy,
                 cudaStream_t s) {
  const dim3 grid((unsigned)cdiv(w.rows, 16));
  constexpr int KW = kw_of(MODE);
  const uint8_t* W2 = w2 ? w2->data : nullptr;
  const uint8_t* S2 = w2 ? w2->sc : nullptr;
  if (T <= 8) mma_kernel<TYPE, MODE, 1><<<grid, 32 * KW, 0, s>>>(w.data, w.sc, W2, S2, w.rows, nb, xq, xd, T, y, ldy);
  else if (T <= 16) mma_kernel<TYPE, MODE, 2><<<grid, 32 * KW, 0, s>>>(w.data, w.sc, W2, S2, w.rows, nb, xq, xd, T, y, ldy);
  else if (T <= 32) mma_kernel<TYPE, MODE, 4><<<grid, 32 * KW, 0, s>>>(w.data, w.sc, W2, S2, w.rows, nb, xq, xd, T, y, ldy);
  else mma_kernel<TYPE, MODE, 8><<<grid, 32 * KW, 0, s>>>(w.data, w.sc, W2, S2, w.rows, nb, xq, xd, T, y, ldy);
}

template <int TYPE>
void launch_type(const DW& w, const DW* w2, int nb, const int8_t* xq, const float2* xd, int T, float* y, int64_t ldy,
                 MatvecMode mode, cudaStream_t s) {
  if (mode == MV_STORE) launch_mode<TYPE, MV_STORE>(w, w2, nb, xq, xd, T, y, ldy, s);
  else if (mode == MV_ADD) launch_mode<TYPE, MV_ADD>(w, w2, nb, xq, xd, T, y, ldy, s);
  else launch_mode<TYPE, MV_SWIGLU>(w, w2, nb, xq, xd, T, y, ldy, s);
}

}  // namespace

bool matmul_mma_q8_supported(int type) { return type == T_Q4_0 || type == T_Q4_1 || type == T_Q8_0; }

size_t matmul_mma_q8_scratch(int64_t cols, int T) { return (size_t)T * (cols / 32) * (32 + sizeof(float2)); }

bool matmul_mma_q8(const DW& w, const DW* w2, const float* x, int64_t ldx, float* y, int64_t ldy, int T,
                   MatvecMode mode, void* scratch, cudaStream_t s) {
  if (!matmul_mma_q8_supported(w.type) || T < 1 || T > kMmaMaxT || w.cols % 32 || mode == MV_ROPE) return false;
  if (mode == MV_SWIGLU && (!w2 || w2->type != w.type || w2->rows != w.rows || w2->cols != w.cols))
    fail(ErrorKind::Internal, "matmul: SwiGLU weights must have one type and shape");
  const int nb = (int)(w.cols / 32);
  int8_t* xq = static_cast<int8_t*>(scratch);
  float2* xd = reinterpret_cast<float2*>(xq + (size_t)T * nb * 32);
  const int64_t warps = (int64_t)T * nb;
  quantize_rows_kernel<<<(unsigned)cdiv(warps * 32, 256), 256, 0, s>>>(x, ldx, T, nb, xq, xd);
  switch (w.type) {
    case T_Q4_0: launch_type<T_Q4_0>(w, w2, nb, xq, xd, T, y, ldy, mode, s); break;
    case T_Q4_1: launch_type<T_Q4_1>(w, w2, nb, xq, xd, T, y, ldy, mode, s); break;
    default: launch_type<T_Q8_0>(w, w2, nb, xq, xd, T, y, ldy, mode, s); break;
  }
  check_launch("matmul (int8 tensor cores)");
  return true;
}

}  // namespace headkv::cu
