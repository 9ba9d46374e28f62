// Single-token matvec on Q4_0 / Q4_1 / Q8_0 / Q4_K / Q5_K / Q6_K weights with int8 activations
// (the fast precision).
//
// Each block first quantizes x (RMSNorm weight applied when NORM) to int8 in blocks of 32 values,
// one scale per block (dx = max|x|/127), into shared memory; RMSNorm's 1/rms is a per-token factor,
// so it is applied to the finished dot products. Then every warp takes whole rows (grid-stride):
// lane l reads items l, l+32, ... of the row (an item: one block, or two of a K-quant super-block)
// as 16-byte loads and dots them with the int8 x through dp4a (q8x_types.cuh), e.g.
//   Q4_0: d·(dx·Σq·xq − 8·dx·Σxq)   Q4_1: d·dx·Σq·xq + m·dx·Σxq   Q8_0: d·dx·Σq·xq
// so a Q4_0 block of 32 weights costs 1 global load, 8 dp4a and a few integer ops. MV_ROPE (one
// token's Q/K/V) gives each warp a RoPE pair of rows and ends in rope_epilogue (RoPE, K/V store).
// NT > 1 (matvec_q8x_rows: the rows of a batched decode step, no fused norm or RoPE): the block
// quantizes up to NT tokens' x, and each loaded weight item is dotted with every token's x, so the
// weights are read once for all of them.
#include <algorithm>

#include "common.cuh"
#include "matvec.cuh"
#include "q8x_types.cuh"
#include "quant.cuh"

namespace headkv::cu {

namespace {


__device__ __forceinline__ int pack4(int a, int b, int c, int d) {
  return (a & 0xFF) | ((b & 0xFF) << 8) | ((c & 0xFF) << 16) | ((int)((unsigned)d << 24));
}

// x (times norm_w) -> int8 blocks in shared memory: xq (32 bytes per block), xd (dx, dx·Σxq).
// Eight threads per block of 32 values; loads are issued in batches of kBatch per thread.
// Returns this thread's share of Σx² (of x itself, for RMSNorm).
template <bool NORM, int kThreads>
__device__ __forceinline__ float quantize_x(const float* __restrict__ x, const float* __restrict__ nw, int nb, int* xq,
                                            float2* xd) {
  constexpr int kBatch = NORM ? 4 : 8;  // NORM also loads the norm weights: keep registers for 3 blocks per SM
  const int tid = threadIdx.x, lane = tid & 31;
  const unsigned gmask = 0xFFu << (lane & 24);  // the 8 lanes of this block of 32 values
  const int n = nb * 8;                          // float4s of x
  float ss = 0.0f;
  for (int i0 = tid; i0 < n; i0 += kThreads * kBatch) {
    float4 v[kBatch], w[kBatch];
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int i = i0 + j * kThreads;
      if (i < n) {
        v[j] = __ldg(reinterpret_cast<const float4*>(x) + i);
        if (NORM) w[j] = __ldg(reinterpret_cast<const float4*>(nw) + i);
      }
    }
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int i = i0 + j * kThreads;
      if (i >= n) break;  // uniform over each group of 8 lanes (n is a multiple of 8)
      float4 u = v[j];
      ss += u.x * u.x + u.y * u.y + u.z * u.z + u.w * u.w;
      if (NORM) u = make_float4(u.x * w[j].x, u.y * w[j].y, u.z * w[j].z, u.w * w[j].w);
      float m = fmaxf(fmaxf(fabsf(u.x), fabsf(u.y)), fmaxf(fabsf(u.z), fabsf(u.w)));
#pragma unroll
      for (int o = 4; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(gmask, m, o));
      const float id = m > 0.0f ? 127.0f / m : 0.0f;
      const int a = __float2int_rn(u.x * id), b = __float2int_rn(u.y * id), cc = __float2int_rn(u.z * id),
                d = __float2int_rn(u.w * id);
      xq[i] = pack4(a, b, cc, d);
      int s = a + b + cc + d;
#pragma unroll
      for (int o = 4; o > 0; o >>= 1) s += __shfl_xor_sync(gmask, s, o);
      if ((lane & 7) == 0) {
        const float dx = m / 127.0f;
        xd[i >> 3] = make_float2(dx, dx * (float)s);
      }
    }
  }
  return ss;
}

// U: blocks per lane per step (loads in flight); MODE as matvec.cu.
template <int TYPE, int MODE, bool NORM, int U, int kThreads, int NT>
__global__ void __launch_bounds__(kThreads) q8x_kernel(MV a) {
  static_assert(NT == 1 || (!NORM && MODE != MV_ROPE), "several tokens: no fused norm or RoPE");
  constexpr int kWarps = kThreads / 32;
  using F = Fmt<TYPE>;
  using Q = Q8<TYPE>;
  static_assert(F::per % Q::per == 0, "int8 activations: items inside one unit");
  extern __shared__ __align__(16) uint8_t smem[];
  __shared__ float ssw[kWarps];
  const int nb = (int)(a.cols / 32), nit = nb / Q::per;  // blocks and items per row
  const int64_t xs = mv_q8x_token_bytes(a.cols);         // token t's x at smem + t * xs:
  auto xq = [&](int t) { return reinterpret_cast<int4*>(smem + t * xs); };             // 2 per block
  auto xd = [&](int t) { return reinterpret_cast<float2*>(smem + t * xs + nb * 32); };  // 1 per block
  const int T = NT == 1 ? 1 : a.T;  // tokens of this launch (<= NT)
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  // SWIGLU: a warp's unit is row r of gate and of up; ROPE: rows 2r and 2r + 1 (one RoPE pair).
  constexpr bool two = MODE == MV_SWIGLU || MODE == MV_ROPE, pair = MODE == MV_ROPE;
  const int64_t units = pair ? a.rows / 2 : a.rows;
  // A unit's rows: quants and scales of row 1 and, for SWIGLU and ROPE, row 2.
  struct Row {
    const uint8_t *q1, *q2, *s1, *s2;
    int sg;
    int64_t local;
  };
  auto row = [&](int64_t unit) {
    Row r;
    r.sg = mv_segment(a, pair ? 2 * unit : unit, &r.local);
    const uint8_t* W2 = pair ? a.W[r.sg] : a.W2;
    const uint8_t* S2 = pair ? a.S[r.sg] : a.S2;
    const int64_t local2 = pair ? r.local + 1 : r.local;
    r.q1 = blk_q<F>(a.W[r.sg], r.local, nb, 0);
    r.s1 = blk_s<F>(a.S[r.sg], r.local, nb, 0);
    r.q2 = two ? blk_q<F>(W2, local2, nb, 0) : nullptr;
    r.s2 = two ? blk_s<F>(S2, local2, nb, 0) : nullptr;
    return r;
  };
  // One step of U items per lane of a unit's rows, into registers.
  typename Q::W w1[U], w2[U];
  auto load = [&](const Row& r, int i0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int it = i0 + u * 32 + lane;
      if (it < nit) {
        Q::load(w1[u], r.q1, r.s1, it);
        if (two) Q::load(w2[u], r.q2, r.s2, it);
      }
    }
  };

  // Launched as a programmatic dependent of the previous kernel (launch_u): what does not depend on
  // it is started before the wait (x is its output): the first blocks of this warp's first unit are
  // pulled into L2, and for RoPE the rotation and the arena entry are computed.
  // (A bulk prefetch of the unit's whole rows and scales, or the first step loaded into registers
  // instead of L2, did not pay: BENCHMARKS.md, History.)
  const int64_t unit0 = (int64_t)blockIdx.x * kWarps + warp;
  RopeMeta meta;
  if (unit0 < units) {
    const Row r = row(unit0);
    if (pair && lane == 0) meta = rope_meta(a.rope, r.sg, r.local);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int it = u * 32 + lane;
      if (it < nit) {
        prefetch_l2(Q::addr(r.q1, it));
        if (two) prefetch_l2(Q::addr(r.q2, it));
      }
    }
  }
  grid_dependency_wait();
  grid_dependents_launch();

  float ss = 0.0f;
#pragma unroll
  for (int t = 0; t < NT; ++t)
    if (t < T) ss += quantize_x<NORM, kThreads>(a.x + t * a.ldx, a.norm_w, nb, reinterpret_cast<int*>(xq(t)), xd(t));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (lane == 0) ssw[warp] = ss;
  __syncthreads();
  float scale = 1.0f;
  if (NORM) {
    float tot = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) tot += ssw[w];
    scale = rsqrtf(tot / (float)a.cols + a.eps);
  }
  // x reads: lanes 4..7 of each quarter warp take their two 16-byte halves in the other order,
  // so 8 lanes cover 32 distinct banks.
  const int h = (lane >> 2) & 1;

  for (int64_t unit = unit0; unit < units; unit += (int64_t)gridDim.x * kWarps) {
    const Row r = row(unit);
    if (pair && lane == 0 && unit != unit0) meta = rope_meta(a.rope, r.sg, r.local);
    const int sg = r.sg;
    const int64_t local = r.local;
    float acc[NT], acc2[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = acc2[t] = 0.0f;
    for (int i0 = 0; i0 < nit; i0 += 32 * U) {
      load(r, i0);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int it = i0 + u * 32 + lane;
        if (it < nit) {
#pragma unroll
          for (int t = 0; t < NT; ++t) {
            if (t >= T) break;
            acc[t] += Q{}(w1[u], xq(t), xd(t), it, h);
            if (two) acc2[t] += Q{}(w2[u], xq(t), xd(t), it, h);
          }
        }
      }
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], o);
        if (two) acc2[t] += __shfl_xor_sync(0xffffffffu, acc2[t], o);
      }
    }
    if (lane == 0) {
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        if (t >= T) break;
        float* out = a.y[sg] + t * a.ldy + local;
        const float v = acc[t] * scale;
        if (MODE == MV_STORE) *out = v;
        else if (MODE == MV_ADD) *out += v;
        else if (MODE == MV_SWIGLU) *out = v / (1.0f + expf(-v)) * (acc2[t] * scale);
        else rope_epilogue(a.rope, meta, sg, local, v, acc2[t] * scale);
      }
    }
  }
}

template <int TYPE, int MODE, bool NORM, int U, int kThreads, int NT = 1>
void launch_u(const MV& a, cudaStream_t s) {
  constexpr int kWarps = kThreads / 32;
  auto k = q8x_kernel<TYPE, MODE, NORM, U, kThreads, NT>;
  // 32 B of int8 + (dx, dx·Σxq) per block of 32 values, for each of the launch's tokens
  const size_t smem = NT == 1 ? mv_q8x_smem(a.cols) : matvec_q8x_rows_smem(a.cols, a.T);
  static size_t attr = 48 * 1024;
  if (smem > attr) {
    check(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem), "matvec shared memory");
    attr = smem;
  }
  // At most the blocks resident at once, each quantizing x and then striding over rows; the grid is
  // sized so every warp gets the same number of rows.
  static int max_blocks = 0;
  static size_t max_smem = 0;
  if (!max_blocks || max_smem != smem) {
    int n = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, kThreads, smem), "matvec occupancy");
    max_blocks = std::max(1, n) * sm_count();
    max_smem = smem;
  }
  const int64_t units = MODE == MV_ROPE ? a.rows / 2 : a.rows;
  const int64_t rounds = cdiv(units, kWarps * (int64_t)max_blocks);
  launch_pdl(k, dim3((unsigned)cdiv(units, kWarps * rounds)), dim3(kThreads), smem, s, "matvec launch", a);
}

// U = 4 blocks of 32 weights per lane in flight (2 per row for SwiGLU and RoPE pairs, which load two
// rows); more per lane, or clusters sharing the quantized x, were slower (BENCHMARKS.md, History).
// Threads per block: every block quantizes all of x, so the wide plain projections (the
// 14336-wide down projection) take 1024 threads (one block per SM, as many warps as 4 blocks of
// 256): x is quantized once per SM instead of four times; also for the K-quants, Q5_K and Q6_K with
// one item per lane in flight so they fit 64 registers. The output projection (MV_ADD) takes 512;
// Q/K/V and gate/up stay at 256: more gained nothing, and at 1024 (64 registers) the Q8_0 RoPE and
// SwiGLU kernels would spill.
// HEADKV_MATVEC_THREADS=256 runs every shape at 256 (read at each launch: a GPU test requires the
// same logits bit for bit).
template <int TYPE, int MODE, bool NORM>
void launch(const MV& a, cudaStream_t s) {
  // items per lane: the K-quants' items are 2 blocks, so about as many bytes are in flight
  constexpr int U = (MODE == MV_SWIGLU || MODE == MV_ROPE ? 2 : 4) / Q8<TYPE>::per;
  if constexpr (MODE == MV_ADD || (MODE == MV_STORE && !NORM)) {
    if (!env_is("HEADKV_MATVEC_THREADS", "256")) {
      // (at 1024 threads, 64 registers: Q5_K's and Q6_K's items fit with one item per lane in flight)
      constexpr int U1024 = TYPE == T_Q5_K || TYPE == T_Q6_K ? 1 : U;
      if (a.cols > 8192) return launch_u<TYPE, MODE, NORM, U1024, 1024>(a, s);
      if (MODE == MV_ADD) return launch_u<TYPE, MODE, NORM, U, 512>(a, s);
    }
  }
  launch_u<TYPE, MODE, NORM, U, 256>(a, s);
}

template <int TYPE>
void launch_mode(const MV& a, MatvecMode mode, bool norm, cudaStream_t s) {
  if (mode == MV_STORE) norm ? launch<TYPE, MV_STORE, true>(a, s) : launch<TYPE, MV_STORE, false>(a, s);
  else if (mode == MV_ADD) norm ? launch<TYPE, MV_ADD, true>(a, s) : launch<TYPE, MV_ADD, false>(a, s);
  else if (mode == MV_SWIGLU) norm ? launch<TYPE, MV_SWIGLU, true>(a, s) : launch<TYPE, MV_SWIGLU, false>(a, s);
  else launch<TYPE, MV_ROPE, true>(a, s);
}

// Several tokens (2..8): every block quantizes all of them (8 x 18 KB for the 8B shape's
// 14336-wide down projection, one block per SM); 512 threads with the single-token launches' items
// per lane keep the NT accumulators in registers (128 per thread at most).
template <int TYPE, int NT>
void launch_rows(const MV& a, MatvecMode mode, cudaStream_t s) {
  constexpr int U = 4 / Q8<TYPE>::per;  // items per lane in flight, as the single-token launches
  if (mode == MV_STORE) launch_u<TYPE, MV_STORE, false, U, 512, NT>(a, s);
  else if (mode == MV_ADD) launch_u<TYPE, MV_ADD, false, U, 512, NT>(a, s);
  else launch_u<TYPE, MV_SWIGLU, false, U / 2, 512, NT>(a, s);
}

template <int TYPE>
void launch_rows_type(const MV& a, MatvecMode mode, cudaStream_t s) {
  if (a.T <= 2) launch_rows<TYPE, 2>(a, mode, s);
  else if (a.T <= 4) launch_rows<TYPE, 4>(a, mode, s);
  else launch_rows<TYPE, 8>(a, mode, s);
}

}  // namespace

size_t matvec_q8x_rows_smem(int64_t cols, int T) {
  return T <= 1 ? mv_q8x_smem(cols) : (size_t)T * mv_q8x_token_bytes(cols);
}

bool matvec_q8x_rows(const MV& a, int type, MatvecMode mode, cudaStream_t s) {
  if (a.T == 1) return matvec_q8x(a, type, mode, false, s);
  if (a.T < 1 || a.T > kMatvecMaxT || a.cols % 32 || a.ldx < a.cols || mode == MV_ROPE) return false;
  if (matvec_q8x_rows_smem(a.cols, a.T) > smem_optin()) return false;
  switch (type) {
    case T_Q4_0: launch_rows_type<T_Q4_0>(a, mode, s); break;
    case T_Q4_1: launch_rows_type<T_Q4_1>(a, mode, s); break;
    case T_Q8_0: launch_rows_type<T_Q8_0>(a, mode, s); break;
    case T_Q4_K: launch_rows_type<T_Q4_K>(a, mode, s); break;
    case T_Q5_K: launch_rows_type<T_Q5_K>(a, mode, s); break;
    case T_Q6_K: launch_rows_type<T_Q6_K>(a, mode, s); break;
    default: return false;
  }
  check_launch("matvec (int8 activations, several tokens)");
  return true;
}

bool matvec_q8x(const MV& a, int type, MatvecMode mode, bool norm, cudaStream_t s) {
  if (a.T != 1 || a.cols % 32 || a.ldx < a.cols) return false;
  switch (type) {
    case T_Q4_0: launch_mode<T_Q4_0>(a, mode, norm, s); break;
    case T_Q4_1: launch_mode<T_Q4_1>(a, mode, norm, s); break;
    case T_Q8_0: launch_mode<T_Q8_0>(a, mode, norm, s); break;
    case T_Q4_K: launch_mode<T_Q4_K>(a, mode, norm, s); break;
    case T_Q5_K: launch_mode<T_Q5_K>(a, mode, norm, s); break;
    case T_Q6_K: launch_mode<T_Q6_K>(a, mode, norm, s); break;
    default: return false;
  }
  check_launch("matvec (int8 activations)");
  return true;
}

}  // namespace headkv::cu
