// Ragged split-K decode attention over the per-head arena: a layer's work items split every KV
// head's segment into head_splits[g] chunks (proportional to its capacity, so heads of very
// different lengths cost alike per item); each item serves the G query heads of its KV head
// (GQA-packed: K/V rows are read once per group). A second kernel merges the partial softmaxes.
#include <algorithm>
#include <string>

#include "common.cuh"
#include "decode_attn_smem.h"
#include "kernels.cuh"
#include "kv_quant.cuh"

namespace headkv::cu {

namespace {

constexpr int MAXG = 8;  // NW warps per block: 8, 4 or 2 (DecodeArgs::warps)

__device__ __forceinline__ float f16_round(float x) { return __half2float(__float2half_rn(x)); }

// An item's keys are cut into tiles of 32; warp w takes tiles w, w+NW, ... with no block-level
// synchronisation until the end. Each warp keeps a ring of R chunks in shared memory (a chunk = the
// K or the V rows of one tile) filled by cp.async, so R-1 chunks are in flight while it computes on
// one with tensor cores (below); the warps' partial softmaxes are combined once per item. Launched
// as a programmatic dependent (PDL): the first R-1 chunks of keys already in the arena are requested
// before griddepcontrol.wait, so they load while the Q/K/V projection ends; the new token's row
// (written by that kernel) and q are read after it.
//
// NW = 8 warps per block by default (one block per SM at hd 128; 4 warps: two, HEADKV_ATTN_WARPS=4;
// 2 warps where a block may have only ~99 KB of shared memory, sm_86 / sm_89 at hd 128).
// R = 3 chunks per warp: the best of 2, 3 and 4 over short and long contexts. The tile math runs on
// tensor cores because at short contexts a warp's one tile is the kernel's critical path (on CUDA
// cores it was a long chain of dependent instructions). Merging the partials in this kernel (by the
// last item of a KV head) or in a thread-block cluster was slower than the separate merge kernel,
// a PDL launch; figures in BENCHMARKS.md, History.
constexpr int R = kDecodeRing;
// Key rows in the ring are HD + 8 halves apart (16 bytes of padding: conflict-free ldmatrix).
template <int HD>
__host__ __device__ constexpr int ring_ld() { return HD + 8; }
template <int HD, int NW>
__host__ __device__ constexpr size_t ring_bytes() { return decode_ring_bytes(HD, NW); }

// (The kernels' bodies take their arguments and item from the kernel below them: one sequence's
// DecodeArgs as the parameter, or, for a batched step, sequence blockIdx.y's from an array.)
template <int HD, int G, int NW>
__device__ __forceinline__ void split_body(const DecodeArgs& a, const int item) {
  constexpr int NT = NW * 32;
  constexpr int LD = ring_ld<HD>(), CH = 32 * LD, CPL = HD / 8;  // row stride, halves per chunk, copies per lane
  static_assert((size_t)NW * R * CH * sizeof(__half) == ring_bytes<HD, NW>(), "the warps' rings fill the allocation");
  static_assert((size_t)NW * G * HD * sizeof(float) <= ring_bytes<HD, NW>(), "warp outputs alias the ring");
  extern __shared__ __align__(16) uint8_t smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __half* ring = reinterpret_cast<__half*>(smem) + warp * R * CH;
  __shared__ float wm[NW][G], wl[NW][G];  // (counted in decode_block_smem for G <= 8)

  // Everything up to griddepcontrol.wait reads only what earlier decode steps wrote.
  const int g = a.item_head[item], sp = a.item_split[item], S = a.head_splits[g];
  const int64_t len = (int64_t)a.used[g] + 1, fresh = len - 1;  // fresh: the new token's entry
  // Keys lo..len-1 (a sliding window: the last `window`); key j is row ring_row(j) of the segment.
  const int64_t lo = a.window ? max((int64_t)0, len - a.window) : 0;
  const int64_t chunk = (len - lo + S - 1) / S;
  const int64_t start = lo + sp * chunk, end = min(len, start + chunk);
  const int64_t tiles = end > start ? (end - start + 31) / 32 : 0;
  const int nch = warp < tiles ? 2 * (int)((tiles - warp + NW - 1) / NW) : 0;  // this warp's chunks
  const __half* K = static_cast<const __half*>(a.k) + a.seg_off[g] * HD;
  const __half* V = static_cast<const __half*>(a.v) + a.seg_off[g] * HD;
  auto tile0 = [&](int c) { return start + (int64_t)(warp + (c >> 1) * NW) * 32; };
  // Requests chunk c into its ring slot (always commits a group, empty past the last chunk). Rows
  // past the item's end are zero-filled (so p = 0 meets v = 0, never stale shared memory); before
  // the wait, the fresh row, when inside the item, is left for later.
  auto issue = [&](int c, bool before_wait) {
    if (c < nch) {
      const int64_t t0 = tile0(c);
      const __half* src = c & 1 ? V : K;
      __half* dst = ring + (c % R) * CH;
#pragma unroll
      for (int j = 0; j < CPL; ++j) {
        const int idx = j * 32 + lane, r = idx / (HD / 8), col = (idx % (HD / 8)) * 8;
        const int64_t key = t0 + r;
        if (before_wait && key == fresh && key < end) continue;
        cp_async16(dst + r * LD + col, src + ring_row(min(key, end - 1), a.ring) * HD + col, key < end);
      }
    }
    cp_async_commit();
  };
#pragma unroll
  for (int c = 0; c < R - 1; ++c) issue(c, true);
  grid_dependency_wait();
  grid_dependents_launch();  // the merge kernel (a PDL launch) may take its slots as blocks finish
  // the fresh row in the chunks requested before the wait
#pragma unroll
  for (int c = 0; c < R - 1; ++c) {
    if (c >= nch) break;
    const int64_t t0 = tile0(c);
    if (fresh < t0 || fresh >= t0 + 32 || fresh >= end) continue;
    const __half* src = c & 1 ? V : K;
#pragma unroll
    for (int j = 0; j < CPL; ++j) {
      const int idx = j * 32 + lane, r = idx / (HD / 8), col = (idx % (HD / 8)) * 8;
      if (t0 + r == fresh)
        *reinterpret_cast<uint4*>(ring + (c % R) * CH + r * LD + col) =
            *reinterpret_cast<const uint4*>(src + ring_row(fresh, a.ring) * HD + col);
    }
  }

  float(*wo)[G][HD] = reinterpret_cast<float(*)[G][HD]>(smem);  // the warps' outputs, after the ring's use
  {
    // Tensor cores: the G query heads are rows 0..G-1 of a 16-row A fragment, so S = Q·Kᵀ for a
    // tile is 4 n-tiles x HD/16 k-steps of mma m16n8k16 and O += P·V is 2 k-steps x HD/8 n-tiles;
    // P stays in registers (its accumulator layout is the A fragment). Rows 8 + r carry the fp16
    // rounding residue of row r (q - fp16(q), p - fp16(p)), so the sums of rows r and 8 + r are
    // products of fp32 q and p with the fp16 K and V, at no extra mma (rows G..7 are zero).
    // This lane: rows r0 and r0 + 8 (head g*G + r0 when r0 < G), keys / dims c2, c2 + 1 of each
    // 8-wide n-tile. q must lie within fp16 range (|q| < 65504), as K and V in the arena do.
    constexpr int KS = HD / 16, DT = HD / 8;
    const int r0 = lane >> 2, c2 = (lane & 3) * 2;
    const float sl2 = 1.4426950408889634f * rsqrtf((float)HD);  // softmax in base 2
    uint32_t qa[KS][4];
    {
      const float* qr = a.q + (int64_t)(g * G + min(r0, G - 1)) * HD;
#pragma unroll
      for (int kk = 0; kk < KS; ++kk) {
        const float2 x0 = *reinterpret_cast<const float2*>(qr + kk * 16 + c2);
        const float2 x1 = *reinterpret_cast<const float2*>(qr + kk * 16 + 8 + c2);
        qa[kk][0] = r0 < G ? pack_h2(x0.x, x0.y) : 0u;
        qa[kk][2] = r0 < G ? pack_h2(x1.x, x1.y) : 0u;
        qa[kk][1] = r0 < G ? pack_h2(x0.x - f16_round(x0.x), x0.y - f16_round(x0.y)) : 0u;
        qa[kk][3] = r0 < G ? pack_h2(x1.x - f16_round(x1.x), x1.y - f16_round(x1.y)) : 0u;
      }
    }
    float o[DT][4], sc[4][4];
#pragma unroll
    for (int j = 0; j < DT; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float m = -INFINITY, l = 0.0f;  // row r0, base 2; l summed over this lane's keys
    for (int c = 0; c < nch; ++c) {
      issue(c + R - 1, false);
      cp_async_wait<R - 1>();
      __syncwarp();
      const __half* buf = ring + (c % R) * CH;
      if ((c & 1) == 0) {  // K: the tile's scores, then the online-softmax update
#pragma unroll
        for (int j = 0; j < 4; ++j) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
#pragma unroll
          for (int j = 0; j < 4; j += 2) mma_abt2(sc[j], sc[j + 1], qa[kk], buf + j * 8 * LD + kk * 16, LD, lane);
        }
        const int64_t t0 = tile0(c);
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float raw = softcap_raw(sc[j][e] + sc[j][2 + e], a.softcap, rsqrtf((float)HD));
            const float v = t0 + j * 8 + c2 + e < end ? raw * sl2 : -INFINITY;
            sc[j][e] = v;
            mx = fmaxf(mx, v);
          }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mn = fmaxf(m, mx);  // finite: the tile has at least one key
        const float alpha = exp2f(m - mn);
        m = mn;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            sc[j][e] = exp2f(sc[j][e] - mn);
            sum += sc[j][e];
          }
        l = l * alpha + sum;
#pragma unroll
        for (int j = 0; j < DT; ++j) {
          o[j][0] *= alpha;
          o[j][1] *= alpha;
          o[j][2] *= alpha;
          o[j][3] *= alpha;
        }
      } else {  // V: O += P·V (rows past the end are zeros with p = 0)
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
          const float* p0 = sc[2 * kk];
          const float* p1 = sc[2 * kk + 1];
          const uint32_t pf[4] = {pack_h2(p0[0], p0[1]), pack_h2(p0[0] - f16_round(p0[0]), p0[1] - f16_round(p0[1])),
                                  pack_h2(p1[0], p1[1]), pack_h2(p1[0] - f16_round(p1[0]), p1[1] - f16_round(p1[1]))};
#pragma unroll
          for (int j = 0; j < DT; j += 2) mma_ab2(o[j], o[j + 1], pf, buf + kk * 16 * LD + j * 8, LD, lane);
        }
      }
      __syncwarp();  // the slot is refilled by the next iteration's request
    }
    cp_async_wait<0>();
    __syncthreads();  // every warp is done with its ring: the warp outputs reuse it
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if (r0 < G) {
#pragma unroll
      for (int j = 0; j < DT; ++j)
        *reinterpret_cast<float2*>(&wo[warp][r0][j * 8 + c2]) = make_float2(o[j][0] + o[j][2], o[j][1] + o[j][3]);
      if ((lane & 3) == 0) {
        wm[warp][r0] = m * 0.6931471805599453f;  // natural log units (the merge uses expf)
        wl[warp][r0] = l;
      }
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * HD; i += NT) {
    const int h = i / HD, d = i % HD;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < NW; ++w) M = fmaxf(M, wm[w][h]);
    float acc = 0.0f, L = 0.0f;
#pragma unroll
    for (int w = 0; w < NW; ++w) {
      const float f = wl[w][h] == 0.0f ? 0.0f : expf(wm[w][h] - M);
      acc += wo[w][h][d] * f;
      L += wl[w][h] * f;
    }
    float* p = a.part + ((int64_t)item * G + h) * (HD + 2);
    p[d] = acc;
    if (d == 0) {
      p[HD] = M;
      p[HD + 1] = L;
    }
  }
}

// ---- q8_0 / q4_0 rows (K, V or both; the other may be f16): split_body_q.
// The data path is split_body's, with stored rows instead of fp16 rows in the ring: a chunk (the K
// or V rows of a tile of 32 keys, 32 * rb bytes, about half of f16's for q8_0 and a quarter for q4_0)
// is requested by cp.async in 16-byte pieces aligned to 16 bytes (rows of 34- or 18-byte blocks are
// only 2-byte aligned: the pieces cover the chunk's bytes and up to 15 more on each side, which are
// ignored; the arena keeps 16 spare bytes past its end). So the loads stay 16-byte, coalesced and
// asynchronous, and each warp keeps R-1 chunks in flight at half (q8_0) the bytes of f16's. When a
// chunk is due, the warp converts its quants into one fp16 tile as integers (exact: |q| <= 128) with
// byte_perm (0x6400 | (q + 128) is the half 1024 + q + 128), and the tensor-core math runs on the
// tile: S = Q·Kᵀ per block of 32 dims (2 k-steps) scaled per key by the block's d in fp32; for
// O += P·V the block's d folds into P (each 32-dim block of V takes its own A fragment p * d * 256,
// split into fp16 + residue as P is; the 256 keeps small p * d out of fp16's subnormals and is
// divided out at the end; it bounds d below 255, |v| below ~32k for q8_0 and ~2k for q4_0, as
// fp16 values bound an f16 cache). Values are d * q as the CPU reads them; products keep fp32 accuracy.

// int8 pair (the low 16 bits of w) -> half2 of the two values.
__device__ __forceinline__ uint32_t i8x2_h2(uint32_t w) {
  const uint32_t u = __byte_perm(w ^ 0x8080u, 0x64646464u, 0x4140);
  const __half2 h = __hsub2(*reinterpret_cast<const __half2*>(&u), __float2half2_rn(1152.0f));
  return *reinterpret_cast<const uint32_t*>(&h);
}
// Nibble pair (the low nibbles of the low two bytes of w) -> half2 of nibble - 8.
__device__ __forceinline__ uint32_t u4x2_h2(uint32_t w) {
  const uint32_t u = __byte_perm(w & 0x0f0fu, 0x64646464u, 0x4140);
  const __half2 h = __hsub2(*reinterpret_cast<const __half2*>(&u), __float2half2_rn(1032.0f));
  return *reinterpret_cast<const uint32_t*>(&h);
}
__device__ __forceinline__ uint32_t ld_u16(const uint8_t* p) { return *reinterpret_cast<const uint16_t*>(p); }

// Rows 0..nrow-1 of a chunk of stored rows (type t, rb bytes each, starting at raw) into the fp16
// tile (rows HD + 8 halves apart): f16 values as they are, q8_0 / q4_0 quants as integers; rows past
// nrow are zeros. The block scales go to sf[b * 32 + row] as floats (0 past nrow: those rows' bytes
// are not the item's). One warp; 8 values per lane and step.
template <int HD>
__device__ __forceinline__ void chunk_to_tile(KVType t, const uint8_t* raw, int rb, int nrow, __half* tile, float* sf,
                                              int lane) {
  constexpr int LD = ring_ld<HD>();
  const int bs = t == KVType::Q8_0 ? 34 : 18;
  if (t != KVType::F16) {
#pragma unroll
    for (int b = 0; b < HD / 32; ++b)
      sf[b * 32 + lane] = lane < nrow ? __half2float(*reinterpret_cast<const __half*>(raw + lane * rb + b * bs)) : 0.0f;
  }
#pragma unroll 4
  for (int i = lane; i < 32 * HD / 8; i += 32) {
    const int r = i / (HD / 8), c = (i % (HD / 8)) * 8;
    uint4 v = make_uint4(0u, 0u, 0u, 0u);
    if (r < nrow) {
      const uint8_t* row = raw + r * rb;
      if (t == KVType::F16) {  // (f16 rows are 16-byte aligned: 2 * HD bytes each)
        v = *reinterpret_cast<const uint4*>(row + c * 2);
      } else if (t == KVType::Q8_0) {
        const uint8_t* q = row + (c / 32) * bs + 2 + c % 32;
        v = make_uint4(i8x2_h2(ld_u16(q)), i8x2_h2(ld_u16(q + 2)), i8x2_h2(ld_u16(q + 4)), i8x2_h2(ld_u16(q + 6)));
      } else {  // q4_0: values i < 16 in the low nibbles of bytes i, 16 + i in the high ones
        const uint8_t* q = row + (c / 32) * bs + 2 + c % 16;
        const int sh = c % 32 >= 16 ? 4 : 0;
        v = make_uint4(u4x2_h2(ld_u16(q) >> sh), u4x2_h2(ld_u16(q + 2) >> sh), u4x2_h2(ld_u16(q + 4) >> sh),
                       u4x2_h2(ld_u16(q + 6) >> sh));
      }
    }
    *reinterpret_cast<uint4*>(tile + r * LD + c) = v;
  }
}

template <int HD, int G, int NW>
__device__ __forceinline__ void split_body_q(const DecodeArgs& a, const int item) {
  constexpr int NT = NW * 32;
  constexpr int LD = ring_ld<HD>(), CH = 32 * LD, NB = HD / 32;
  extern __shared__ __align__(16) uint8_t smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const KVType tk = a.tk, tv = a.tv;
  const int rbk = (int)kv_row_bytes(tk, HD), rbv = (int)kv_row_bytes(tv, HD);
  const int slot = (int)decode_slot_bytes(rbk > rbv ? rbk : rbv);
  uint8_t* ring = smem + (size_t)warp * (R * slot + CH * 2 + HD * 4);  // (decode_warp_bytes_q)
  __half* tile = reinterpret_cast<__half*>(ring + R * slot);
  float* sf = reinterpret_cast<float*>(tile + CH);  // the chunk's block scales [HD / 32][32 rows]
  __shared__ float wm[NW][G], wl[NW][G];

  const int g = a.item_head[item], sp = a.item_split[item], S = a.head_splits[g];
  const int64_t len = (int64_t)a.used[g] + 1, fresh = len - 1;
  const int64_t chunk = (len + S - 1) / S;
  const int64_t start = sp * chunk, end = min(len, start + chunk);
  const int64_t tiles = end > start ? (end - start + 31) / 32 : 0;
  const int nch = warp < tiles ? 2 * (int)((tiles - warp + NW - 1) / NW) : 0;
  const uint8_t* K = static_cast<const uint8_t*>(a.k) + a.seg_off[g] * rbk;
  const uint8_t* V = static_cast<const uint8_t*>(a.v) + a.seg_off[g] * rbv;
  auto tile0 = [&](int c) { return start + (int64_t)(warp + (c >> 1) * NW) * 32; };
  // Chunk c's 16-byte pieces: fn(piece index, source) for each, or only for those that hold bytes
  // of the fresh row (only_fresh; none when the fresh row is not in the chunk).
  auto pieces = [&](int c, int mode, auto&& fn) {  // mode 0: all, 1: all but the fresh row's, 2: only those
    const int64_t t0 = tile0(c);
    const int rb = c & 1 ? rbv : rbk;
    const uint8_t* lo = (c & 1 ? V : K) + t0 * rb;
    const uint8_t* a0 = reinterpret_cast<const uint8_t*>(reinterpret_cast<uintptr_t>(lo) & ~(uintptr_t)15);
    const int nrow = (int)min((int64_t)32, end - t0);
    const int np = (int)((lo + nrow * rb - a0 + 15) >> 4);
    const bool fin = mode != 0 && fresh >= t0 && fresh < t0 + nrow;
    if (mode == 2 && !fin) return;
    const uint8_t* fl = lo + (fresh - t0) * rb;
    for (int p = lane; p < np; p += 32) {
      const uint8_t* ps = a0 + 16 * p;
      const bool hits = fin && ps < fl + rb && ps + 16 > fl;
      if (mode == 0 || (mode == 1) != hits) fn(p, ps);
    }
  };
  auto issue = [&](int c, bool before_wait) {
    if (c < nch) {
      uint8_t* dst = ring + (c % R) * slot;
      pieces(c, before_wait ? 1 : 0, [&](int p, const uint8_t* src) { cp_async16(dst + 16 * p, src, true); });
    }
    cp_async_commit();
  };
#pragma unroll
  for (int c = 0; c < R - 1; ++c) issue(c, true);
  grid_dependency_wait();
  grid_dependents_launch();
#pragma unroll
  for (int c = 0; c < R - 1; ++c) {
    if (c >= nch) break;
    uint8_t* dst = ring + (c % R) * slot;
    pieces(c, 2, [&](int p, const uint8_t* src) {
      *reinterpret_cast<uint4*>(dst + 16 * p) = *reinterpret_cast<const uint4*>(src);
    });
  }

  float(*wo)[G][HD] = reinterpret_cast<float(*)[G][HD]>(smem);
  {
    constexpr int KS = HD / 16, DT = HD / 8;
    const int r0 = lane >> 2, c2 = (lane & 3) * 2;
    const float sl2 = 1.4426950408889634f * rsqrtf((float)HD);
    uint32_t qa[KS][4];
    {
      const float* qr = a.q + (int64_t)(g * G + min(r0, G - 1)) * HD;
#pragma unroll
      for (int kk = 0; kk < KS; ++kk) {
        const float2 x0 = *reinterpret_cast<const float2*>(qr + kk * 16 + c2);
        const float2 x1 = *reinterpret_cast<const float2*>(qr + kk * 16 + 8 + c2);
        qa[kk][0] = r0 < G ? pack_h2(x0.x, x0.y) : 0u;
        qa[kk][2] = r0 < G ? pack_h2(x1.x, x1.y) : 0u;
        qa[kk][1] = r0 < G ? pack_h2(x0.x - f16_round(x0.x), x0.y - f16_round(x0.y)) : 0u;
        qa[kk][3] = r0 < G ? pack_h2(x1.x - f16_round(x1.x), x1.y - f16_round(x1.y)) : 0u;
      }
    }
    float o[DT][4], sc[4][4];
#pragma unroll
    for (int j = 0; j < DT; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int c = 0; c < nch; ++c) {
      issue(c + R - 1, false);
      cp_async_wait<R - 1>();
      __syncwarp();
      const bool isv = c & 1;
      const KVType t = isv ? tv : tk;
      const int rb = isv ? rbv : rbk;
      const int64_t t0 = tile0(c);
      const int nrow = (int)min((int64_t)32, end - t0);
      const uint8_t* raw = ring + (c % R) * slot + (reinterpret_cast<uintptr_t>((isv ? V : K) + t0 * rb) & 15);
      chunk_to_tile<HD>(t, raw, rb, nrow, tile, sf, lane);
      __syncwarp();
      if (!isv) {  // K: the tile's scores (per block of 32 dims times its scale), then the online softmax
#pragma unroll
        for (int j = 0; j < 4; ++j) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.0f;
        if (t == KVType::F16) {
#pragma unroll
          for (int kk = 0; kk < KS; ++kk)
#pragma unroll
            for (int j = 0; j < 4; j += 2) mma_abt2(sc[j], sc[j + 1], qa[kk], tile + j * 8 * LD + kk * 16, LD, lane);
        } else {
#pragma unroll
          for (int b = 0; b < NB; ++b) {
            float tb[4][4];
#pragma unroll
            for (int j = 0; j < 4; ++j) tb[j][0] = tb[j][1] = tb[j][2] = tb[j][3] = 0.0f;
#pragma unroll
            for (int kk = 2 * b; kk < 2 * b + 2; ++kk)
#pragma unroll
              for (int j = 0; j < 4; j += 2) mma_abt2(tb[j], tb[j + 1], qa[kk], tile + j * 8 * LD + kk * 16, LD, lane);
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                const float d = sf[b * 32 + j * 8 + c2 + e];
                sc[j][e] = fmaf(tb[j][e], d, sc[j][e]);
                sc[j][2 + e] = fmaf(tb[j][2 + e], d, sc[j][2 + e]);
              }
          }
        }
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float v = t0 + j * 8 + c2 + e < end ? (sc[j][e] + sc[j][2 + e]) * sl2 : -INFINITY;
            sc[j][e] = v;
            mx = fmaxf(mx, v);
          }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mn = fmaxf(m, mx);
        const float alpha = exp2f(m - mn);
        m = mn;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            sc[j][e] = exp2f(sc[j][e] - mn);
            sum += sc[j][e];
          }
        l = l * alpha + sum;
#pragma unroll
        for (int j = 0; j < DT; ++j) {
          o[j][0] *= alpha;
          o[j][1] *= alpha;
          o[j][2] *= alpha;
          o[j][3] *= alpha;
        }
      } else if (t == KVType::F16) {  // V as f16: O += P·V as split_body
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
          const float* p0 = sc[2 * kk];
          const float* p1 = sc[2 * kk + 1];
          const uint32_t pf[4] = {pack_h2(p0[0], p0[1]), pack_h2(p0[0] - f16_round(p0[0]), p0[1] - f16_round(p0[1])),
                                  pack_h2(p1[0], p1[1]), pack_h2(p1[0] - f16_round(p1[0]), p1[1] - f16_round(p1[1]))};
#pragma unroll
          for (int j = 0; j < DT; j += 2) mma_ab2(o[j], o[j + 1], pf, tile + kk * 16 * LD + j * 8, LD, lane);
        }
      } else {  // V blocks: per 32-dim block b, O[:, b] += (P * d_b * 256) · Q_b
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
          const float* p0 = sc[2 * kk];
          const float* p1 = sc[2 * kk + 1];
#pragma unroll
          for (int b = 0; b < NB; ++b) {
            const float* d = sf + b * 32 + kk * 16 + c2;  // keys kk*16 + c2 + {0, 1, 8, 9}
            const float x0 = p0[0] * (256.0f * d[0]);
            const float x1 = p0[1] * (256.0f * d[1]);
            const float y0 = p1[0] * (256.0f * d[8]);
            const float y1 = p1[1] * (256.0f * d[9]);
            const uint32_t pf[4] = {pack_h2(x0, x1), pack_h2(x0 - f16_round(x0), x1 - f16_round(x1)), pack_h2(y0, y1),
                                    pack_h2(y0 - f16_round(y0), y1 - f16_round(y1))};
#pragma unroll
            for (int j = 4 * b; j < 4 * b + 4; j += 2) mma_ab2(o[j], o[j + 1], pf, tile + kk * 16 * LD + j * 8, LD, lane);
          }
        }
      }
      __syncwarp();  // the slot and the tile are refilled by the next iteration
    }
    cp_async_wait<0>();
    __syncthreads();
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const float vs = tv == KVType::F16 ? 1.0f : 1.0f / 256.0f;
    if (r0 < G) {
#pragma unroll
      for (int j = 0; j < DT; ++j)
        *reinterpret_cast<float2*>(&wo[warp][r0][j * 8 + c2]) =
            make_float2((o[j][0] + o[j][2]) * vs, (o[j][1] + o[j][3]) * vs);
      if ((lane & 3) == 0) {
        wm[warp][r0] = m * 0.6931471805599453f;
        wl[warp][r0] = l;
      }
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * HD; i += NT) {
    const int h = i / HD, d = i % HD;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < NW; ++w) M = fmaxf(M, wm[w][h]);
    float acc = 0.0f, L = 0.0f;
#pragma unroll
    for (int w = 0; w < NW; ++w) {
      const float f = wl[w][h] == 0.0f ? 0.0f : expf(wm[w][h] - M);
      acc += wo[w][h][d] * f;
      L += wl[w][h] * f;
    }
    float* p = a.part + ((int64_t)item * G + h) * (HD + 2);
    p[d] = acc;
    if (d == 0) {
      p[HD] = M;
      p[HD + 1] = L;
    }
  }
}

// One block per query head: the head's partials are split over MG thread groups (one thread per
// dimension in each). One pass: a thread loads the max, sum and value of UN of its partials at once
// and combines them at its own running max; the groups' results are then combined through shared
// memory at the block's max. Empty partials (l = 0: an item past the head's keys) weigh nothing.
// One pass replaced two (the head's max, then the sums): one dependent round of loads and a barrier
// fewer. Held to 32 registers (UN = 2 partials in flight): with more registers its early-launched
// (PDL) blocks slowed the full cache at long contexts, and UN = 4 spills (BENCHMARKS.md, History).
constexpr int MT = 512;
template <int HD>
__device__ __forceinline__ void merge_body(const DecodeArgs& a, const int h) {
  grid_dependency_wait();    // a PDL launch: the split kernel's partials
  grid_dependents_launch();  // the output projection (a PDL launch) may start prefetching weights
  constexpr int MG = MT / HD, UN = 2;
  const int tid = threadIdx.x, d = tid % HD, grp = tid / HD;
  const int G = a.nh / a.nkv, g = h / G, hh = h % G;
  const int first = a.head_first[g], n = a.head_splits[g];
  __shared__ float accs[MG][HD], ms[MG], ls[MG];
  float m = -INFINITY, L = 0.0f, acc = 0.0f;
  for (int i0 = grp; i0 < n; i0 += MG * UN) {
    float pm[UN], pl[UN], pv[UN];
#pragma unroll
    for (int u = 0; u < UN; ++u) {
      const int i = i0 + u * MG;
      pl[u] = 0.0f;
      if (i < n) {
        const float* p = a.part + ((int64_t)(first + i) * G + hh) * (HD + 2);
        pm[u] = p[HD];
        pl[u] = p[HD + 1];
        pv[u] = p[d];
      }
    }
    float mn = m;
#pragma unroll
    for (int u = 0; u < UN; ++u)
      if (pl[u] > 0.0f) mn = fmaxf(mn, pm[u]);
    if (mn == -INFINITY) continue;  // nothing yet
    const float sc = m == -INFINITY ? 0.0f : expf(m - mn);
    acc *= sc;
    L *= sc;
    m = mn;
#pragma unroll
    for (int u = 0; u < UN; ++u)
      if (pl[u] > 0.0f) {
        const float w = expf(pm[u] - m);
        acc += pv[u] * w;
        L += pl[u] * w;
      }
  }
  accs[grp][d] = acc;
  if (d == 0) {
    ms[grp] = m;
    ls[grp] = L;
  }
  __syncthreads();
  if (grp == 0) {
    float M = -INFINITY;
#pragma unroll
    for (int j = 0; j < MG; ++j)
      if (ls[j] > 0.0f) M = fmaxf(M, ms[j]);
    float A = 0.0f, LL = 0.0f;
#pragma unroll
    for (int j = 0; j < MG; ++j)
      if (ls[j] > 0.0f) {
        const float w = expf(ms[j] - M);
        A += accs[j][d] * w;
        LL += ls[j] * w;
      }
    a.out[h * HD + d] = A / LL;
  }
}

// One sequence (the parameter), or blockIdx.y of several (a batched step: every sequence's
// arguments in device memory; blocks past a sequence's items or heads end at once). Q: q8_0 / q4_0
// rows (split_body_q), else f16 (split_body).
template <int HD, int G, int NW, bool Q>
__device__ __forceinline__ void split_item(const DecodeArgs& a, const int item) {
  if constexpr (Q) split_body_q<HD, G, NW>(a, item);
  else split_body<HD, G, NW>(a, item);
}
template <int HD, int G, int NW, bool Q>
__global__ void __launch_bounds__(NW * 32) split_kernel(DecodeArgs a) {
  split_item<HD, G, NW, Q>(a, blockIdx.x);
}
template <int HD, int G, int NW, bool Q>
__global__ void __launch_bounds__(NW * 32) split_kernel_n(const DecodeArgs* __restrict__ as) {
  const DecodeArgs a = as[blockIdx.y];
  if ((int)blockIdx.x < a.n_items) split_item<HD, G, NW, Q>(a, blockIdx.x);
}
template <int HD>
__global__ void __launch_bounds__(MT, 4) merge_kernel(DecodeArgs a) {
  merge_body<HD>(a, blockIdx.x);
}
template <int HD>
__global__ void __launch_bounds__(MT, 4) merge_kernel_n(const DecodeArgs* __restrict__ as) {
  const DecodeArgs a = as[blockIdx.y];
  if ((int)blockIdx.x < a.nh) merge_body<HD>(a, blockIdx.x);
}

// The split kernels for (HD, G, NW, Q) and their dynamic shared memory (the attribute is raised to
// the largest size asked so far: for q8_0 / q4_0 rows it depends on the K and V row sizes).
struct SplitFn {
  void (*fn)(DecodeArgs);
  void (*fn_n)(const DecodeArgs*);  // the several-sequence kernel
  size_t smem;
  int threads;
};
template <int HD, int G, int NW, bool Q>
SplitFn split_fn(size_t rbk, size_t rbv) {
  const size_t smem = Q ? decode_dyn_smem(HD, NW, rbk, rbv) : ring_bytes<HD, NW>();
  static size_t raised = 0;
  if (smem > raised) {
    check(cudaFuncSetAttribute(split_kernel<HD, G, NW, Q>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
          "attention shared memory");
    check(cudaFuncSetAttribute(split_kernel_n<HD, G, NW, Q>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
          "attention shared memory");
    raised = smem;
  }
  return {split_kernel<HD, G, NW, Q>, split_kernel_n<HD, G, NW, Q>, smem, NW * 32};
}
template <int HD, int NW, bool Q>
SplitFn split_fn_g(int G, size_t rbk, size_t rbv) {
  switch (G) {
    case 1: return split_fn<HD, 1, NW, Q>(rbk, rbv);
    case 2: return split_fn<HD, 2, NW, Q>(rbk, rbv);
    case 3: return split_fn<HD, 3, NW, Q>(rbk, rbv);
    case 4: return split_fn<HD, 4, NW, Q>(rbk, rbv);
    case 5: return split_fn<HD, 5, NW, Q>(rbk, rbv);
    case 6: return split_fn<HD, 6, NW, Q>(rbk, rbv);
    case 7: return split_fn<HD, 7, NW, Q>(rbk, rbv);
    default: return split_fn<HD, 8, NW, Q>(rbk, rbv);
  }
}
template <int HD, bool Q>
SplitFn split_fn_w(int G, int warps, size_t rbk, size_t rbv) {
  if (warps == 8) return split_fn_g<HD, 8, Q>(G, rbk, rbv);
  if (warps == 2) return split_fn_g<HD, 2, Q>(G, rbk, rbv);
  return split_fn_g<HD, 4, Q>(G, rbk, rbv);
}
// Row bytes of the K / V types as decode_dyn_smem takes them: 0, 0 for f16 K and V (split_body).
bool quantized(KVType tk, KVType tv) { return tk != KVType::F16 || tv != KVType::F16; }
// hd 256 (Gemma 3) has no 8-warp instance: its ring of 8 warps (405 KB) fits no GPU's shared memory;
// and no q8_0 / q4_0 instance (split_body_q is built at hd 64 and 128; decode_attention refuses).
SplitFn split_for(int hd, int G, int warps, KVType tk, KVType tv) {
  const bool q = quantized(tk, tv);
  const size_t rbk = q ? kv_row_bytes(tk, hd) : 0, rbv = q ? kv_row_bytes(tv, hd) : 0;
  if (q && hd == 256)
    fail(ErrorKind::Unsupported, "CUDA backend: q8_0 / q4_0 KV at head_dim 256 is not built; use f16");
  if (q) return hd == 64 ? split_fn_w<64, true>(G, warps, rbk, rbv) : split_fn_w<128, true>(G, warps, rbk, rbv);
  if (hd == 64) return split_fn_w<64, false>(G, warps, 0, 0);
  if (hd == 128) return split_fn_w<128, false>(G, warps, 0, 0);
  return warps == 2 ? split_fn_g<256, 2, false>(G, 0, 0) : split_fn_g<256, 4, false>(G, 0, 0);
}

}  // namespace

int decode_attention_warps(int hd, int preferred, KVType tk, KVType tv) {
  int dev = 0, optin = 0;
  check(cudaGetDevice(&dev), "device");
  check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "device attributes");
  const bool q = quantized(tk, tv);
  const size_t rbk = q ? kv_row_bytes(tk, hd) : 0, rbv = q ? kv_row_bytes(tv, hd) : 0;
  const int w = decode_attention_warps_for((size_t)optin, hd, preferred, rbk, rbv);
  if (!w)
    fail(ErrorKind::Unsupported, "CUDA backend: the decode attention at head_dim " + std::to_string(hd) + " (K " +
                                     kv_type_name(tk) + ", V " + kv_type_name(tv) + ") needs " +
                                     std::to_string(decode_block_smem(hd, 2, rbk, rbv)) +
                                     " bytes of shared memory per block; this device allows " + std::to_string(optin));
  return w;
}

int decode_attention_slots(int hd, int G, int warps, KVType tk, KVType tv) {
  const SplitFn f = split_for(hd, G, warps, tk, tv);
  int n = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, f.fn, f.threads, f.smem), "occupancy");
  return std::max(1, n) * sm_count();
}

namespace {
void check_decode_args(const DecodeArgs& a) {
  if (a.nh / a.nkv > MAXG) fail(ErrorKind::Unsupported, "CUDA backend: more than 8 query heads per KV head");
  if (a.hd != 64 && a.hd != 128 && a.hd != 256)
    fail(ErrorKind::Unsupported, "CUDA backend: head_dim " + std::to_string(a.hd) + " (supported: 64, 128, 256)");
  if (a.warps != 2 && a.warps != 4 && (a.warps != 8 || a.hd == 256))
    fail(ErrorKind::Internal, "decode attention: 2, 4 or 8 warps per block (hd 256: 2 or 4)");
  // split_body_q (q8_0 / q4_0 rows) has neither windows, rings nor soft-capping, and no hd 256
  // instance; the context refuses these cache types for such models before allocating.
  if (quantized(a.tk, a.tv) && (a.hd == 256 || a.window || a.ring || a.softcap > 0.0f))
    fail(ErrorKind::Unsupported, std::string("CUDA backend: the decode attention over ") + kv_type_name(a.tk) + " / " +
                                     kv_type_name(a.tv) + " K / V with head_dim 256, sliding windows or soft-capping is not built; use f16");
}
}  // namespace

void decode_attention(const DecodeArgs& a, cudaStream_t s) {
  check_decode_args(a);
  const SplitFn f = split_for(a.hd, a.nh / a.nkv, a.warps, a.tk, a.tv);
  launch_pdl(f.fn, dim3((unsigned)a.n_items), dim3(f.threads), f.smem, s, "decode attention", a);
  launch_pdl(a.hd == 64 ? merge_kernel<64> : a.hd == 128 ? merge_kernel<128> : merge_kernel<256>, dim3((unsigned)a.nh), dim3(MT), 0, s,
             "decode attention merge", a);
  check_launch("decode_attention");
}

void decode_attention_n(const DecodeArgs& like, const DecodeArgs* args, int n, int max_items, cudaStream_t s) {
  check_decode_args(like);
  if (n <= 0) return;
  const SplitFn f = split_for(like.hd, like.nh / like.nkv, like.warps, like.tk, like.tv);
  launch_pdl(f.fn_n, dim3((unsigned)max_items, (unsigned)n), dim3(f.threads), f.smem, s, "decode attention", args);
  launch_pdl(like.hd == 64 ? merge_kernel_n<64> : like.hd == 128 ? merge_kernel_n<128> : merge_kernel_n<256>,
             dim3((unsigned)like.nh, (unsigned)n), dim3(MT), 0, s, "decode attention merge", args);
  check_launch("decode_attention_n");
}

}  // namespace headkv::cu
