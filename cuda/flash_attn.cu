// Causal GQA flash attention for prefill (fp32 SIMT): one block per (64 queries, query head),
// key tiles of 64 streamed through shared memory with an online softmax, so no N x N matrix ever
// exists. Keys/values are fp32 (the compressed prefill's layer buffer), fp16 (the cache) or the
// cache's q8_0 / q4_0 rows (KT = uint8_t: rows of FlashArgs::tk / tv, dequantized as the tile loads).
#include <type_traits>

#include "common.cuh"
#include "kernels.cuh"
#include "kv_quant.cuh"

namespace headkv::cu {

namespace {

constexpr int BQ = 64, BK = 64, KPAD = 4, NTHR = 256;

__device__ __forceinline__ float ld(const float* p) { return *p; }
__device__ __forceinline__ float ld(const __half* p) { return __half2float(*p); }

template <class KT, int HD>
__global__ void __launch_bounds__(NTHR) flash_kernel(FlashArgs a) {
  extern __shared__ float sm[];
  float* Qt = sm;                     // [HD][BQ]
  float* KV = Qt + HD * BQ;           // K^T [HD][BK+KPAD], then V [BK][HD]
  float* Pt = KV + HD * (BK + KPAD);  // [BK][BQ]
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int h = blockIdx.y, G = a.nh / a.nkv, g = h / G;
  const int q0 = blockIdx.x * BQ;
  const float scale = 1.0f / sqrtf((float)HD);
  // element d of key / value row r of this KV head
  constexpr bool QROWS = std::is_same_v<KT, uint8_t>;
  const int64_t base = a.seg_off ? a.seg_off[g] : (int64_t)g * a.ld_head;
  const int64_t nb = a.seg_len ? (int64_t)a.seg_len[g] : a.n_before;
  const int64_t rbk = QROWS ? (int64_t)kv_row_bytes(a.tk, HD) : HD, rbv = QROWS ? (int64_t)kv_row_bytes(a.tv, HD) : HD;
  const KT* K = static_cast<const KT*>(a.k) + base * rbk;
  const KT* V = static_cast<const KT*>(a.v) + base * rbv;
  auto ldk = [&](int64_t r, int d) {
    if constexpr (QROWS) return kv_load1(a.tk, K + r * rbk, d);
    else return ld(K + r * HD + d);
  };
  auto ldv = [&](int64_t r, int d) {
    if constexpr (QROWS) return kv_load1(a.tv, V + r * rbv, d);
    else return ld(V + r * HD + d);
  };

  for (int i = tid; i < BQ * HD; i += NTHR) {
    const int r = i / HD, d = i % HD;
    Qt[d * BQ + r] = q0 + r < a.T ? a.q[((int64_t)(q0 + r) * a.nh + h) * HD + d] : 0.0f;
  }
  constexpr int ND = HD / 64;  // output dims per thread: 4 * ND
  float o[4][4 * ND];
  float m[4], l[4];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int j = 0; j < 4 * ND; ++j) o[r][j] = 0.0f;
  }
  const int64_t n_keys = nb + min(q0 + BQ, a.T);
  // A sliding window: the block's first query sees keys from k_first on; earlier tiles are skipped
  // and the keys before k_first in the first tile read as zeros (masked below).
  const int64_t k_first = a.window ? max((int64_t)0, nb + q0 - a.window + 1) : 0;
  for (int64_t k0 = k_first / BK * BK; k0 < n_keys; k0 += BK) {
    __syncthreads();
    for (int i = tid; i < BK * HD; i += NTHR) {
      const int c = i / HD, d = i % HD;
      const bool ok = k0 + c < n_keys && k0 + c >= k_first;
      KV[d * (BK + KPAD) + c] = ok ? ldk(ring_row(k0 + c, a.ring), d) : 0.0f;
    }
    __syncthreads();
    float s[4][4];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) s[r][c] = 0.0f;
#pragma unroll 8
    for (int d = 0; d < HD; ++d) {
      const float4 qv = *reinterpret_cast<const float4*>(&Qt[d * BQ + ty * 4]);
      const float4 kv = *reinterpret_cast<const float4*>(&KV[d * (BK + KPAD) + tx * 4]);
      const float qa[4] = {qv.x, qv.y, qv.z, qv.w}, ka[4] = {kv.x, kv.y, kv.z, kv.w};
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c) s[r][c] += qa[r] * ka[c];
    }
    float alpha[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int64_t last = nb + q0 + ty * 4 + r;  // last key this query may see
      float mx = -INFINITY;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t key = k0 + tx * 4 + c;
        const bool seen = key <= last && key < n_keys && (!a.window || key > last - a.window);
        s[r][c] = seen ? softcap_raw(s[r][c], a.softcap, scale) * scale : -INFINITY;
        mx = fmaxf(mx, s[r][c]);
      }
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float mn = fmaxf(m[r], mx);
      alpha[r] = mn == -INFINITY ? 1.0f : expf(m[r] - mn);
      float sum = 0.0f;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        s[r][c] = mn == -INFINITY ? 0.0f : expf(s[r][c] - mn);
        sum += s[r][c];
      }
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      l[r] = l[r] * alpha[r] + sum;
      m[r] = mn;
    }
    __syncthreads();  // K^T no longer read
#pragma unroll
    for (int c = 0; c < 4; ++c)
      *reinterpret_cast<float4*>(&Pt[(tx * 4 + c) * BQ + ty * 4]) = make_float4(s[0][c], s[1][c], s[2][c], s[3][c]);
    for (int i = tid; i < BK * HD; i += NTHR) {
      const int c = i / HD, d = i % HD;
      const bool ok = k0 + c < n_keys && k0 + c >= k_first;
      KV[c * HD + d] = ok ? ldv(ring_row(k0 + c, a.ring), d) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int j = 0; j < 4 * ND; ++j) o[r][j] *= alpha[r];
#pragma unroll 4
    for (int c = 0; c < BK; ++c) {
      const float4 pv = *reinterpret_cast<const float4*>(&Pt[c * BQ + ty * 4]);
      const float pa[4] = {pv.x, pv.y, pv.z, pv.w};
#pragma unroll
      for (int jj = 0; jj < ND; ++jj) {
        const float4 vv = *reinterpret_cast<const float4*>(&KV[c * HD + jj * 64 + tx * 4]);
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          o[r][jj * 4 + 0] += pa[r] * vv.x;
          o[r][jj * 4 + 1] += pa[r] * vv.y;
          o[r][jj * 4 + 2] += pa[r] * vv.z;
          o[r][jj * 4 + 3] += pa[r] * vv.w;
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int t = q0 + ty * 4 + r;
    if (t >= a.T) continue;
    const float inv = 1.0f / l[r];
    float* out = a.out + ((int64_t)t * a.nh + h) * HD;
#pragma unroll
    for (int jj = 0; jj < ND; ++jj)
      *reinterpret_cast<float4*>(&out[jj * 64 + tx * 4]) =
          make_float4(o[r][jj * 4] * inv, o[r][jj * 4 + 1] * inv, o[r][jj * 4 + 2] * inv, o[r][jj * 4 + 3] * inv);
  }
}

template <class KT, int HD>
void launch(const FlashArgs& a, cudaStream_t s) {
  const size_t smem = (size_t)(HD * BQ + HD * (BK + KPAD) + BK * BQ) * sizeof(float);
  static bool attr = false;
  if (!attr) {
    check(cudaFuncSetAttribute(flash_kernel<KT, HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
          "flash attention shared memory");
    attr = true;
  }
  const dim3 grid((unsigned)cdiv(a.T, BQ), (unsigned)a.nh);
  flash_kernel<KT, HD><<<grid, NTHR, smem, s>>>(a);
}

}  // namespace

void flash_attention(const FlashArgs& a, cudaStream_t s) {
  if (a.T == 0) return;
  const bool q = a.tk != KVType::F16 || a.tv != KVType::F16;  // arena rows of q8_0 / q4_0 (or mixed with f16)
  if (q && !a.half_kv) fail(ErrorKind::Internal, "flash_attention: quantized K/V are arena rows (half_kv)");
  if (a.hd == 64) q ? launch<uint8_t, 64>(a, s) : a.half_kv ? launch<__half, 64>(a, s) : launch<float, 64>(a, s);
  else if (a.hd == 128) q ? launch<uint8_t, 128>(a, s) : a.half_kv ? launch<__half, 128>(a, s) : launch<float, 128>(a, s);
  else if (a.hd == 256 && !q) a.half_kv ? launch<__half, 256>(a, s) : launch<float, 256>(a, s);
  else if (a.hd == 256)  // (no q8_0 / q4_0 instance at hd 256: the context refuses those caches for such models)
    fail(ErrorKind::Unsupported, "CUDA backend: q8_0 / q4_0 KV at head_dim 256 is not built; use f16");
  else fail(ErrorKind::Unsupported, "CUDA backend: head_dim " + std::to_string(a.hd) + " (supported: 64, 128, 256)");
  check_launch("flash_attention");
}

}  // namespace headkv::cu
