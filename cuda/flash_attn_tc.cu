// Causal GQA flash attention on tensor cores (WMMA, fp16 operands, fp32 accumulation and
// softmax) for the fast prefill precision: one block of 4 warps per (64 queries, query head),
// each warp owning 16 query rows; key tiles of 64 are converted to fp16 in shared memory. The
// output accumulator stays in registers (each lane owns half of one row), so the online-softmax
// rescale needs no fragment layout knowledge: P·V goes through a per-warp shared scratch.
#include <mma.h>

#include <string>

#include "common.cuh"
#include "kernels.cuh"

namespace headkv::cu {

namespace {

using namespace nvcuda;
constexpr int BQ = 64, BK = 64, NW = 4, NTHR = NW * 32;

__device__ __forceinline__ void load8(const float* p, __half* d) {
  const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
  d[0] = __float2half_rn(a.x); d[1] = __float2half_rn(a.y); d[2] = __float2half_rn(a.z); d[3] = __float2half_rn(a.w);
  d[4] = __float2half_rn(b.x); d[5] = __float2half_rn(b.y); d[6] = __float2half_rn(b.z); d[7] = __float2half_rn(b.w);
}
__device__ __forceinline__ void load8(const __half* p, __half* d) {
  *reinterpret_cast<uint4*>(d) = *reinterpret_cast<const uint4*>(p);
}

template <class KT, int HD>
__global__ void __launch_bounds__(NTHR) flash_tc_kernel(FlashArgs a) {
  constexpr int LDH = HD + 8, LDP = BK + 8, LDO = HD + 4, LDS = BK + 4;
  constexpr int SCR = 16 * (LDO > LDS ? LDO : LDS);  // floats of one warp's scratch
  extern __shared__ __align__(32) unsigned char smraw[];
  __half* Qh = reinterpret_cast<__half*>(smraw);  // [BQ][LDH]
  __half* Kh = Qh + BQ * LDH;                      // [BK][LDH]
  __half* Vh = Kh + BK * LDH;                      // [BK][LDH]
  __half* Ph = Vh + BK * LDH;                      // [BQ][LDP]
  float* scr = reinterpret_cast<float*>(Ph + BQ * LDP);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  float* ws = scr + warp * SCR;
  const int h = blockIdx.y, G = a.nh / a.nkv, g = h / G;
  const int q0 = blockIdx.x * BQ;
  const auto [K, V, nb] = flash_kv<KT, HD>(a, g);
  const float scale = 1.0f / sqrtf((float)HD);

  for (int i = tid; i < BQ * HD / 8; i += NTHR) {
    const int r = i / (HD / 8), c = (i % (HD / 8)) * 8;
    __half tmp[8];
    if (q0 + r < a.T) load8(a.q + ((int64_t)(q0 + r) * a.nh + h) * HD + c, tmp);
    else
      for (int j = 0; j < 8; ++j) tmp[j] = __float2half(0.0f);
    *reinterpret_cast<uint4*>(&Qh[r * LDH + c]) = *reinterpret_cast<uint4*>(tmp);
  }
  const int row = lane >> 1, half = lane & 1;  // this lane's row of the warp's 16, and half of it
  const int t = q0 + warp * 16 + row;
  float o[HD / 2];
#pragma unroll
  for (int j = 0; j < HD / 2; ++j) o[j] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  const int64_t n_keys = nb + min(q0 + BQ, a.T);
  const int64_t last = nb + t;  // last key this row may see

  for (int64_t k0 = 0; k0 < n_keys; k0 += BK) {
    __syncthreads();
    for (int i = tid; i < BK * HD / 8; i += NTHR) {
      const int r = i / (HD / 8), c = (i % (HD / 8)) * 8;
      __half tk[8], tv[8];
      if (k0 + r < n_keys) {
        load8(K + (k0 + r) * HD + c, tk);
        load8(V + (k0 + r) * HD + c, tv);
      } else {
        for (int j = 0; j < 8; ++j) tk[j] = tv[j] = __float2half(0.0f);
      }
      *reinterpret_cast<uint4*>(&Kh[r * LDH + c]) = *reinterpret_cast<uint4*>(tk);
      *reinterpret_cast<uint4*>(&Vh[r * LDH + c]) = *reinterpret_cast<uint4*>(tv);
    }
    __syncthreads();
    // S = Q K^T for this warp's 16 rows
    {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> sf[BK / 16];
#pragma unroll
      for (int j = 0; j < BK / 16; ++j) wmma::fill_fragment(sf[j], 0.0f);
#pragma unroll
      for (int kk = 0; kk < HD / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> qa;
        wmma::load_matrix_sync(qa, Qh + warp * 16 * LDH + kk * 16, LDH);
#pragma unroll
        for (int j = 0; j < BK / 16; ++j) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> kb;
          wmma::load_matrix_sync(kb, Kh + j * 16 * LDH + kk * 16, LDH);
          wmma::mma_sync(sf[j], qa, kb, sf[j]);
        }
      }
#pragma unroll
      for (int j = 0; j < BK / 16; ++j) wmma::store_matrix_sync(ws + j * 16, sf[j], LDS, wmma::mem_row_major);
    }
    __syncwarp();
    // online softmax: this lane covers keys [half*32, half*32+32) of its row
    float s[32];
    float mx = -INFINITY;
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      const int64_t key = k0 + half * 32 + c;
      const float v = ws[row * LDS + half * 32 + c] * scale;
      s[c] = (key <= last && key < n_keys && t < a.T) ? v : -INFINITY;
      mx = fmaxf(mx, s[c]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float mn = fmaxf(m, mx);
    const float alpha = mn == -INFINITY ? 1.0f : expf(m - mn);
    float sum = 0.0f;
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      const float p = mn == -INFINITY ? 0.0f : expf(s[c] - mn);
      sum += p;
      Ph[(warp * 16 + row) * LDP + half * 32 + c] = __float2half_rn(p);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * alpha + sum;
    m = mn;
    __syncwarp();
    // P V for this warp's rows -> scratch, then o = o * alpha + scratch
    {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> of[HD / 16];
#pragma unroll
      for (int j = 0; j < HD / 16; ++j) wmma::fill_fragment(of[j], 0.0f);
#pragma unroll
      for (int kk = 0; kk < BK / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> pa;
        wmma::load_matrix_sync(pa, Ph + warp * 16 * LDP + kk * 16, LDP);
#pragma unroll
        for (int j = 0; j < HD / 16; ++j) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> vb;
          wmma::load_matrix_sync(vb, Vh + kk * 16 * LDH + j * 16, LDH);
          wmma::mma_sync(of[j], pa, vb, of[j]);
        }
      }
#pragma unroll
      for (int j = 0; j < HD / 16; ++j) wmma::store_matrix_sync(ws + j * 16, of[j], LDO, wmma::mem_row_major);
    }
    __syncwarp();
#pragma unroll
    for (int j = 0; j < HD / 2; j += 4) {
      const float4 pv = *reinterpret_cast<const float4*>(&ws[row * LDO + half * (HD / 2) + j]);
      o[j] = o[j] * alpha + pv.x;
      o[j + 1] = o[j + 1] * alpha + pv.y;
      o[j + 2] = o[j + 2] * alpha + pv.z;
      o[j + 3] = o[j + 3] * alpha + pv.w;
    }
    __syncwarp();
  }
  if (t < a.T) {
    const float inv = 1.0f / l;
    float* out = a.out + ((int64_t)t * a.nh + h) * HD + half * (HD / 2);
#pragma unroll
    for (int j = 0; j < HD / 2; j += 4)
      *reinterpret_cast<float4*>(&out[j]) = make_float4(o[j] * inv, o[j + 1] * inv, o[j + 2] * inv, o[j + 3] * inv);
  }
}

template <class KT, int HD>
void launch(const FlashArgs& a, cudaStream_t s) {
  constexpr int LDH = HD + 8, LDP = BK + 8, LDO = HD + 4, LDS = BK + 4;
  constexpr int SCR = 16 * (LDO > LDS ? LDO : LDS);
  const size_t smem = (size_t)(BQ * LDH + 2 * BK * LDH + BQ * LDP) * sizeof(__half) + (size_t)NW * SCR * sizeof(float);
  static bool attr = false;
  if (!attr) {
    check(cudaFuncSetAttribute(flash_tc_kernel<KT, HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
          "flash attention (tensor cores) shared memory");
    attr = true;
  }
  flash_tc_kernel<KT, HD><<<dim3((unsigned)cdiv(a.T, BQ), (unsigned)a.nh), NTHR, smem, s>>>(a);
}

}  // namespace

void flash_attention_tc(const FlashArgs& a, cudaStream_t s) {
  if (a.T == 0) return;
  // fp16 K/V: the mma.sync kernel (flash_attn_mma.cu); HEADKV_FLASH=wmma keeps this one (A/B runs)
  static const bool wmma_only = env_is("HEADKV_FLASH", "wmma");
  if (!wmma_only && flash_attention_mma(a, s)) return;
  if (a.hd == 64) a.half_kv ? launch<__half, 64>(a, s) : launch<float, 64>(a, s);
  else if (a.hd == 128) a.half_kv ? launch<__half, 128>(a, s) : launch<float, 128>(a, s);
  else fail(ErrorKind::Unsupported, "CUDA backend: head_dim " + std::to_string(a.hd) + " (supported: 64, 128)");
  check_launch("flash_attention_tc");
}

}  // namespace headkv::cu
