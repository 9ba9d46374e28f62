// Causal GQA flash attention for the fast prefill over fp16 K/V (the arena or the compressed
// prefill's layer buffer), FlashAttention-2 style on mma.sync m16n8k16: one block of 4 warps per
// (128 queries, query head), each warp owning 32 query rows (two 16-row m-tiles, so every K and V
// fragment read from shared memory serves two mma). Key/value tiles of 32 are copied into shared
// memory with cp.async, double-buffered; Q's fragments are read from shared memory at each k-step
// (in registers they would spill); S = Q·Kᵀ, the online softmax (scores scaled inside the FFMA
// that feeds ex2.approx.ftz) and P (as fp16 A fragments) never leave registers; O accumulates in
// registers. A warp skips the tiles wholly past its rows' last key.
// Each of these choices (32 rows per warp, 32-key tiles without spills, the scale inside the FFMA)
// beat the variants tried; 128-query blocks and a heavy-first tile order did not (BENCHMARKS.md).
// QROWS: the arena's K/V rows are q8_0 / q4_0 blocks (or one of them f16; FlashArgs::tk / tv): a
// tile's stored rows are copied by cp.async in 16-byte pieces aligned to 16 bytes (the rows are only
// 2-byte aligned; decode_attn.cu does the same) into double-buffered staging, and once they have
// arrived the block dequantizes them into the same fp16 tiles (d * q rounded to fp16, the fast
// precision); the rest of the kernel is unchanged.
#include <cuda_fp16.h>

#include <string>

#include "common.cuh"
#include "decode_attn_smem.h"
#include "kernels.cuh"
#include "kv_quant.cuh"

namespace headkv::cu {

namespace {

constexpr int BK = 32, NW = 4, NTHR = NW * 32;  // keys per tile
// m-tiles per warp: 2 (32 query rows); 1 at hd 256, whose O accumulators of two m-tiles (256 floats
// per lane) would not fit the registers.
__host__ __device__ constexpr int m_tiles(int hd) { return hd > 128 ? 1 : 2; }

__device__ __forceinline__ float ex2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint4 pack_h8(const float* x) {
  return make_uint4(pack_h2(x[0], x[1]), pack_h2(x[2], x[3]), pack_h2(x[4], x[5]), pack_h2(x[6], x[7]));
}

template <int HD, bool QROWS>
__global__ void __launch_bounds__(NTHR, 2) flash_mma_kernel(FlashArgs a) {
  constexpr int MT = m_tiles(HD);
  constexpr int BQ = 16 * MT * NW, RW = 16 * MT;
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
  // A sliding window: the block's first query sees keys from k_first on; the tiles before are
  // skipped and the keys before k_first in the first tile load as zeros (masked below).
  const int64_t k_first = a.window ? max((int64_t)0, nb + q0 - a.window + 1) : 0;
  const int t_first = (int)(k_first / BK);

  // quantized rows: this KV head's first K / V row (bytes) and the staging of a tile's stored rows
  // ([2] buffers of K, then [2] of V, after the fp16 tiles; launch() sizes them)
  const int64_t rbk = kv_row_bytes(a.tk, HD), rbv = kv_row_bytes(a.tv, HD);
  const int64_t seg0 = a.seg_off ? a.seg_off[g] : (int64_t)g * a.ld_head;
  const uint8_t* Kq = static_cast<const uint8_t*>(a.k) + seg0 * rbk;
  const uint8_t* Vq = static_cast<const uint8_t*>(a.v) + seg0 * rbv;
  const int slot_k = (int)decode_slot_bytes(rbk), slot_v = (int)decode_slot_bytes(rbv);
  uint8_t* stage = reinterpret_cast<uint8_t*>(Vs + 2 * BK * LD);
  // The 16-byte pieces holding rows [k0, k0 + n) of src (rb bytes each) into dst; the rows start at
  // dst + (their address & 15).
  auto stage_rows = [&](const uint8_t* src, int64_t rb, int64_t k0, int n, uint8_t* dst) {
    const uint8_t* lo = src + k0 * rb;
    const uint8_t* a0 = reinterpret_cast<const uint8_t*>(reinterpret_cast<uintptr_t>(lo) & ~(uintptr_t)15);
    const int np = (int)((lo + n * rb - a0 + 15) >> 4);
    for (int p = tid; p < np; p += NTHR) cp_async16(dst + 16 * p, a0 + 16 * p, true);
  };
  // Staged tile -> fp16 tiles (rows past n_keys are zeros).
  auto stage_to_tiles = [&](int tile, int buf) {
    const int64_t k0 = (int64_t)tile * BK;
    const uint8_t* sk = stage + buf * slot_k + (reinterpret_cast<uintptr_t>(Kq + k0 * rbk) & 15);
    const uint8_t* sv = stage + 2 * slot_k + buf * slot_v + (reinterpret_cast<uintptr_t>(Vq + k0 * rbv) & 15);
    for (int i = tid; i < BK * HD / 8; i += NTHR) {
      const int r = i / (HD / 8), c = (i % (HD / 8)) * 8;
      uint4 hk = make_uint4(0u, 0u, 0u, 0u), hv = hk;
      if (k0 + r < n_keys) {
        float x[8];
        kv_load8(a.tk, sk + r * rbk, c, x);
        hk = pack_h8(x);
        kv_load8(a.tv, sv + r * rbv, c, x);
        hv = pack_h8(x);
      }
      *reinterpret_cast<uint4*>(Ks + (buf * BK + r) * LD + c) = hk;
      *reinterpret_cast<uint4*>(Vs + (buf * BK + r) * LD + c) = hv;
    }
  };

  // (QROWS stages a tile's rows as one contiguous run, so it takes no ring: flash_attention_tc refuses
  // one; keys before k_first load as the stored rows they are and are masked with the scores.)
  auto load_tile = [&](int tile, int buf) {
    const int64_t k0 = (int64_t)tile * BK;
    if constexpr (QROWS) {
      const int n = (int)min((int64_t)BK, n_keys - k0);
      stage_rows(Kq, rbk, k0, n, stage + buf * slot_k);
      stage_rows(Vq, rbv, k0, n, stage + 2 * slot_k + buf * slot_v);
    } else {
      for (int i = tid; i < BK * HD / 8; i += NTHR) {
        const int r = i / (HD / 8), c = (i % (HD / 8)) * 8;
        const bool ok = k0 + r < n_keys && k0 + r >= k_first;
        const int64_t src = ok ? ring_row(k0 + r, a.ring) * HD + c : 0;
        cp_async16(Ks + (buf * BK + r) * LD + c, K + src, ok);
        cp_async16(Vs + (buf * BK + r) * LD + c, V + src, ok);
      }
    }
    cp_async_commit();
  };
  load_tile(t_first, 0);

  // Q (fp32) -> fp16 shared
  for (int i = tid; i < BQ * HD / 4; i += NTHR) {
    const int r = i / (HD / 4), c = (i % (HD / 4)) * 4;
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (q0 + r < a.T) v = *reinterpret_cast<const float4*>(a.q + ((int64_t)(q0 + r) * a.nh + h) * HD + c);
    *reinterpret_cast<uint2*>(Qs + r * LD + c) = make_uint2(pack_h2(v.x, v.y), pack_h2(v.z, v.w));
  }
  __syncthreads();
  const __half* Qw = Qs + (warp * RW + (lane & 15)) * LD + (lane >> 4) * 8;  // this lane's ldmatrix row

  const float sl2 = 1.4426950408889634f / sqrtf((float)HD);  // softmax in base 2
  const int r0 = lane >> 2, c2 = (lane & 3) * 2;
  const int tw = q0 + warp * RW + r0;  // this lane's query rows: tw + 16 mt + {0, 8}
  const int64_t w_last = nb + q0 + warp * RW + RW - 1;  // the warp's last row's last key
  float o[MT][DT][4];
  float m[MT][2], l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int j = 0; j < DT; ++j) o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.0f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.0f;
  }

  const int win = (int)a.window;
  const int64_t w_first = nb + q0 + warp * RW - win + 1;  // (window) the warp's first row's first key
  for (int tile = t_first; tile < n_tiles; ++tile) {
    const int buf = (tile - t_first) & 1;
    if (tile + 1 < n_tiles) {
      load_tile(tile + 1, buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if constexpr (QROWS) {  // the staged rows into this tile's fp16 K/V (every thread, then a barrier)
      stage_to_tiles(tile, buf);
      __syncthreads();
    }
    const int64_t k0 = (int64_t)tile * BK;
    // warp-uniform: past w_last (or wholly before w_first) every key of the tile is masked for this warp
    if (k0 <= w_last && (!win || k0 + BK > w_first)) {
      const __half* Kt = Ks + buf * BK * LD;
      const __half* Vt = Vs + buf * BK * LD;
      // S = Q Kᵀ (RW rows x BK keys per warp)
      float s[MT][NT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int j = 0; j < NT; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < KS; ++kk) {
        uint32_t qa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) ldsm_x4(qa[mt], Qw + mt * 16 * LD + kk * 16);
#pragma unroll
        for (int j = 0; j < NT; j += 2) {
          uint32_t b[4];
          ldsm_x4(b, Kt + (j * 8 + (lane >> 4) * 8 + (lane & 7)) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            mma16816(s[mt][j], qa[mt], b[0], b[1]);
            mma16816(s[mt][j + 1], qa[mt], b[2], b[3]);
          }
        }
      }
      if (a.softcap > 0.0f) {  // (block-uniform)
        const float scale = rsqrtf((float)HD);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[mt][j][e] = softcap_raw(s[mt][j][e], a.softcap, scale);
      }
      // causal / range mask where this tile reaches past a row's last key, then the online softmax
      const bool edge = k0 + BK - 1 > nb + q0 + warp * RW || k0 + BK > n_keys || (win && k0 <= w_last - win);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        // a key (rel: its index relative to the chunk's first query) is masked past the row's own
        // position, which also covers the keys past n_keys; rows past T mask every key
        const int t_a = tw + mt * 16, t_b = t_a + 8;
        const int lim_a = t_a < a.T ? t_a : -(1 << 30), lim_b = t_b < a.T ? t_b : -(1 << 30);
        const int rel = (int)(k0 - nb) + c2;
        float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
        for (int j = 0; j < NT; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float va = s[mt][j][e], vb = s[mt][j][2 + e];
            if (edge) {  // (window: keys at or before the row's position - window are masked too)
              if (rel + j * 8 + e > lim_a || (win && rel + j * 8 + e <= lim_a - win)) va = -INFINITY;
              if (rel + j * 8 + e > lim_b || (win && rel + j * 8 + e <= lim_b - win)) vb = -INFINITY;
            }
            s[mt][j][e] = va;
            s[mt][j][2 + e] = vb;
            mx_a = fmaxf(mx_a, va);
            mx_b = fmaxf(mx_b, vb);
          }
        }
#pragma unroll
        for (int off = 1; off < 4; off <<= 1) {
          mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, off));
          mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, off));
        }
        const float mn_a = fmaxf(m[mt][0], mx_a), mn_b = fmaxf(m[mt][1], mx_b);
        // raw units: the scaled max is subtracted inside the FFMA; a row with no key yet uses 0
        // (ex2(-inf) = 0 for its masked scores and for alpha)
        const float ms_a = mn_a == -INFINITY ? 0.0f : mn_a * sl2;
        const float ms_b = mn_b == -INFINITY ? 0.0f : mn_b * sl2;
        const float al_a = ex2_ftz(fmaf(m[mt][0], sl2, -ms_a)), al_b = ex2_ftz(fmaf(m[mt][1], sl2, -ms_b));
        float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
        for (int j = 0; j < NT; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float pa = ex2_ftz(fmaf(s[mt][j][e], sl2, -ms_a));
            const float pb = ex2_ftz(fmaf(s[mt][j][2 + e], sl2, -ms_b));
            s[mt][j][e] = pa;
            s[mt][j][2 + e] = pb;
            sum_a += pa;
            sum_b += pb;
          }
        }
        m[mt][0] = mn_a;
        m[mt][1] = mn_b;
        l[mt][0] = l[mt][0] * al_a + sum_a;  // per lane; the 4 lanes of a row are summed at the end
        l[mt][1] = l[mt][1] * al_b + sum_b;
#pragma unroll
        for (int j = 0; j < DT; ++j) {
          o[mt][j][0] *= al_a;
          o[mt][j][1] *= al_a;
          o[mt][j][2] *= al_b;
          o[mt][j][3] *= al_b;
        }
      }
      // O += P V: P's accumulator layout is the A fragment of the next mma (16 keys per k-step)
#pragma unroll
      for (int kk = 0; kk < BK / 16; ++kk) {
        uint32_t pf[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          pf[mt][0] = pack_h2(s[mt][2 * kk][0], s[mt][2 * kk][1]);
          pf[mt][1] = pack_h2(s[mt][2 * kk][2], s[mt][2 * kk][3]);
          pf[mt][2] = pack_h2(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
          pf[mt][3] = pack_h2(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int j = 0; j < DT; j += 2) {
          uint32_t b[4];
          ldsm_x4_t(b, Vt + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LD + j * 8 + (lane >> 4) * 8);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            mma16816(o[mt][j], pf[mt], b[0], b[1]);
            mma16816(o[mt][j + 1], pf[mt], b[2], b[3]);
          }
        }
      }
    }
    __syncthreads();  // the buffer is refilled by the next iteration's load
  }
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    float la = l[mt][0], lb = l[mt][1];
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
      la += __shfl_xor_sync(0xffffffffu, la, off);
      lb += __shfl_xor_sync(0xffffffffu, lb, off);
    }
    const float ia = la > 0.0f ? 1.0f / la : 0.0f, ib = lb > 0.0f ? 1.0f / lb : 0.0f;
    const int t_a = tw + mt * 16, t_b = t_a + 8;
#pragma unroll
    for (int j = 0; j < DT; ++j) {
      if (t_a < a.T)
        *reinterpret_cast<float2*>(a.out + ((int64_t)t_a * a.nh + h) * HD + j * 8 + c2) =
            make_float2(o[mt][j][0] * ia, o[mt][j][1] * ia);
      if (t_b < a.T)
        *reinterpret_cast<float2*>(a.out + ((int64_t)t_b * a.nh + h) * HD + j * 8 + c2) =
            make_float2(o[mt][j][2] * ib, o[mt][j][3] * ib);
    }
  }
}

template <int HD, bool QROWS>
void launch(const FlashArgs& a, cudaStream_t s) {
  constexpr int LD = HD + 8, BQ = 16 * m_tiles(HD) * NW;
  size_t smem = (size_t)(BQ + 4 * BK) * LD * sizeof(__half);
  if (QROWS) smem += 2 * (decode_slot_bytes(kv_row_bytes(a.tk, HD)) + decode_slot_bytes(kv_row_bytes(a.tv, HD)));
  static size_t attr = 0;  // (raised to the largest size asked: QROWS sizes vary with the types)
  if (smem > attr) {
    check(cudaFuncSetAttribute(flash_mma_kernel<HD, QROWS>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               (int)smem),
          "flash attention (mma) shared memory");
    attr = smem;
  }
  flash_mma_kernel<HD, QROWS><<<dim3((unsigned)cdiv(a.T, BQ), (unsigned)a.nh), NTHR, smem, s>>>(a);
}

}  // namespace

void flash_attention_tc(const FlashArgs& a, cudaStream_t s) {
  if (a.T == 0) return;
  if (!a.half_kv) fail(ErrorKind::Internal, "flash_attention_tc: the tensor-core kernel reads fp16 K/V only");
  if (a.hd != 64 && a.hd != 128 && a.hd != 256)
    fail(ErrorKind::Unsupported, "CUDA backend: head_dim " + std::to_string(a.hd) + " (supported: 64, 128, 256)");
  const bool q = a.tk != KVType::F16 || a.tv != KVType::F16;
  // q8_0 / q4_0 tiles are built at hd 64 and 128 without rings (the context refuses these caches for
  // models with sliding-window layers or head_dim 256 before allocating).
  if (q && (a.hd == 256 || a.ring))
    fail(ErrorKind::Unsupported, "CUDA backend: flash attention over q8_0 / q4_0 K/V with head_dim 256 or a ring is not built; use f16");
  if (a.hd == 64) q ? launch<64, true>(a, s) : launch<64, false>(a, s);
  else if (a.hd == 128) q ? launch<128, true>(a, s) : launch<128, false>(a, s);
  else launch<256, false>(a, s);
  check_launch("flash_attention_tc");
}

}  // namespace headkv::cu
