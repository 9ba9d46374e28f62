// Causal GQA flash attention for the fast prefill over fp16 K/V (the arena or the compressed
// prefill's layer buffer), FlashAttention-2 style on mma.sync m16n8k16: one block of 4 warps per
// (64 queries, query head), each warp owning 16 query rows. Q stays in registers as A fragments;
// key/value tiles of 64 are copied into shared memory with cp.async, double-buffered; S = Q·Kᵀ,
// the online softmax and P (as fp16 A fragments) never leave registers; O accumulates in registers.
// Measured slower on the H200 (F16 8B prefill at 32k, 13601 / 13530 t/s as is): 128-query blocks
// (13029), 32-key tiles (12650; limited to 3 blocks per SM 13141, to 4 with spills 12811); the
// heavy-first order of query tiles was within noise (13543 vs 13504).
#include <cuda_fp16.h>

#include "common.cuh"
#include "kernels.cuh"

namespace headkv::cu {

namespace {

constexpr int BQ = 64, BK = 64, NW = 4, NTHR = NW * 32;

template <int HD>
__global__ void __launch_bounds__(NTHR) flash_mma_kernel(FlashArgs a) {
  constexpr int LD = HD + 8;  // halves per shared row (16-byte pad: conflict-free ldmatrix)
  constexpr int NT = BK / 8, DT = HD / 8, KS = HD / 16;  // key n-tiles, dim n-tiles, dim k-steps
  extern __shared__ __align__(16) unsigned char smraw[];
  __half* Qs = reinterpret_cast<__half*>(smraw);  // [BQ][LD]
  __half* Ks = Qs + BQ * LD;                      // [2][BK][LD]
  __half* Vs = Ks + 2 * BK * LD;                  // [2][BK][LD]
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int h = blockIdx.y, G = a.nh / a.nkv, g = h / G;
  const int q0 = blockIdx.x * BQ;
  const FlashKV<__half> kv = flash_kv<__half, HD>(a, g);  // named: load_tile captures K and V
  const __half *K = kv.K, *V = kv.V;
  const int64_t nb = kv.n_before;
  const int64_t n_keys = nb + min(q0 + BQ, a.T);
  const int n_tiles = (int)((n_keys + BK - 1) / BK);

  auto load_tile = [&](int tile, int buf) {
    const int64_t k0 = (int64_t)tile * BK;
    for (int i = tid; i < BK * HD / 8; i += NTHR) {
      const int r = i / (HD / 8), c = (i % (HD / 8)) * 8;
      const bool ok = k0 + r < n_keys;
      const int64_t src = ok ? (k0 + r) * HD + c : 0;
      cp_async16(Ks + (buf * BK + r) * LD + c, K + src, ok);
      cp_async16(Vs + (buf * BK + r) * LD + c, V + src, ok);
    }
    cp_async_commit();
  };
  load_tile(0, 0);

  // Q (fp32) -> fp16 shared, then this warp's rows into A fragments
  for (int i = tid; i < BQ * HD / 4; i += NTHR) {
    const int r = i / (HD / 4), c = (i % (HD / 4)) * 4;
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (q0 + r < a.T) v = *reinterpret_cast<const float4*>(a.q + ((int64_t)(q0 + r) * a.nh + h) * HD + c);
    *reinterpret_cast<uint2*>(Qs + r * LD + c) = make_uint2(pack_h2(v.x, v.y), pack_h2(v.z, v.w));
  }
  __syncthreads();
  uint32_t qf[KS][4];
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) ldsm_x4(qf[kk], Qs + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);

  const float sl2 = 1.4426950408889634f / sqrtf((float)HD);  // softmax in base 2
  const int r0 = lane >> 2, c2 = (lane & 3) * 2;
  const int t_a = q0 + warp * 16 + r0, t_b = t_a + 8;  // this lane's two query rows
  float o[DT][4];
#pragma unroll
  for (int j = 0; j < DT; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;

  for (int tile = 0; tile < n_tiles; ++tile) {
    const int buf = tile & 1;
    if (tile + 1 < n_tiles) {
      load_tile(tile + 1, buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const __half* Kt = Ks + buf * BK * LD;
    const __half* Vt = Vs + buf * BK * LD;
    const int64_t k0 = (int64_t)tile * BK;
    // S = Q Kᵀ (16 rows x 64 keys per warp)
    float s[NT][4];
#pragma unroll
    for (int j = 0; j < NT; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
#pragma unroll
      for (int j = 0; j < NT; j += 2) mma_abt2(s[j], s[j + 1], qf[kk], Kt + j * 8 * LD + kk * 16, LD, lane);
    }
    // causal / range mask where this tile reaches past a row's last key
    const bool edge = k0 + BK - 1 > nb + q0 + warp * 16 || k0 + BK > n_keys;
    float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int64_t key = k0 + j * 8 + c2 + e;
        float va = s[j][e] * sl2, vb = s[j][2 + e] * sl2;
        if (edge) {
          if (key > nb + t_a || t_a >= a.T || key >= n_keys) va = -INFINITY;
          if (key > nb + t_b || t_b >= a.T || key >= n_keys) vb = -INFINITY;
        }
        s[j][e] = va;
        s[j][2 + e] = vb;
        mx_a = fmaxf(mx_a, va);
        mx_b = fmaxf(mx_b, vb);
      }
    }
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
      mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, off));
      mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, off));
    }
    const float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
    const float al_a = mn_a == -INFINITY ? 1.0f : exp2f(m_a - mn_a);
    const float al_b = mn_b == -INFINITY ? 1.0f : exp2f(m_b - mn_b);
    m_a = mn_a;
    m_b = mn_b;
    float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float pa = mn_a == -INFINITY ? 0.0f : exp2f(s[j][e] - mn_a);
        const float pb = mn_b == -INFINITY ? 0.0f : exp2f(s[j][2 + e] - mn_b);
        s[j][e] = pa;
        s[j][2 + e] = pb;
        sum_a += pa;
        sum_b += pb;
      }
    }
    l_a = l_a * al_a + sum_a;  // per lane; the 4 lanes of a row are summed at the end
    l_b = l_b * al_b + sum_b;
#pragma unroll
    for (int j = 0; j < DT; ++j) {
      o[j][0] *= al_a;
      o[j][1] *= al_a;
      o[j][2] *= al_b;
      o[j][3] *= al_b;
    }
    // O += P V: P's accumulator layout is the A fragment of the next mma (16 keys per k-step)
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t pf[4];
      pf[0] = pack_h2(s[2 * kk][0], s[2 * kk][1]);
      pf[1] = pack_h2(s[2 * kk][2], s[2 * kk][3]);
      pf[2] = pack_h2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pf[3] = pack_h2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int j = 0; j < DT; j += 2) mma_ab2(o[j], o[j + 1], pf, Vt + kk * 16 * LD + j * 8, LD, lane);
    }
    __syncthreads();  // the buffer is refilled by the next iteration's load
  }
#pragma unroll
  for (int off = 1; off < 4; off <<= 1) {
    l_a += __shfl_xor_sync(0xffffffffu, l_a, off);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, off);
  }
  const float ia = l_a > 0.0f ? 1.0f / l_a : 0.0f, ib = l_b > 0.0f ? 1.0f / l_b : 0.0f;
#pragma unroll
  for (int j = 0; j < DT; ++j) {
    if (t_a < a.T)
      *reinterpret_cast<float2*>(a.out + ((int64_t)t_a * a.nh + h) * HD + j * 8 + c2) =
          make_float2(o[j][0] * ia, o[j][1] * ia);
    if (t_b < a.T)
      *reinterpret_cast<float2*>(a.out + ((int64_t)t_b * a.nh + h) * HD + j * 8 + c2) =
          make_float2(o[j][2] * ib, o[j][3] * ib);
  }
}

template <int HD>
void launch(const FlashArgs& a, cudaStream_t s) {
  constexpr int LD = HD + 8;
  const size_t smem = (size_t)(BQ + 4 * BK) * LD * sizeof(__half);
  static bool attr = false;
  if (!attr) {
    check(cudaFuncSetAttribute(flash_mma_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
          "flash attention (mma) shared memory");
    attr = true;
  }
  flash_mma_kernel<HD><<<dim3((unsigned)cdiv(a.T, BQ), (unsigned)a.nh), NTHR, smem, s>>>(a);
}

}  // namespace

bool flash_attention_mma(const FlashArgs& a, cudaStream_t s) {
  if (!a.half_kv || (a.hd != 64 && a.hd != 128)) return false;
  if (a.T == 0) return true;
  if (a.hd == 64) launch<64>(a, s);
  else launch<128>(a, s);
  check_launch("flash_attention_mma");
  return true;
}

}  // namespace headkv::cu
