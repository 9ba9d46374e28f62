// Ragged split-K decode attention over the per-head arena: a layer's work items split every KV
// head's segment into head_splits[g] chunks (proportional to its capacity, so heads of very
// different lengths cost alike per item); each item serves the G query heads of its KV head
// (GQA-packed: K/V rows are read once per group). A second kernel merges the partial softmaxes.
#include <algorithm>
#include <string>

#include "common.cuh"
#include "kernels.cuh"

namespace headkv::cu {

namespace {

constexpr int NT = 128, NW = NT / 32, MAXG = 8;

__device__ __forceinline__ void unpack8(const uint4& u, float* f) {
  const __half2* hp = reinterpret_cast<const __half2*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __half22float2(hp[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}

// An item's keys are cut into tiles of 32; warp w takes tiles w, w+NW, ... with no block-level
// synchronisation until the end. Each warp keeps a ring of R chunks in shared memory (a chunk = the
// K or the V rows of one tile) filled by cp.async, so R-1 chunks are in flight while it computes on
// one. A key row is read by HD/8 lanes (16 bytes each), the G query heads' vectors live in registers
// (8 dims per lane), and the tile's probabilities pass through shared memory; the warps' partial
// softmaxes are combined once per item. Launched as a programmatic dependent (PDL): the first R-1
// chunks of keys already in the arena are requested before griddepcontrol.wait, so they load while
// the Q/K/V projection ends; the new token's row (written by that kernel) and q are read after it.
//
// R = 3 chunks per warp (2 blocks per SM at hd 128). Measured on the H100 (8B Q4_0, decode t/s): R = 2
// gives 426.6 / 401.3 / 251.3 (full d0, headkv-1024 at 8k, full 32k), R = 3 426.0 / 411.0 / 248.8,
// R = 4 - / 406.7 / 223.5; the register-streaming kernel it replaced 397.2 / 351.2 (with the separate
// RoPE kernel) / 200.3.
constexpr int R = 3;
template <int HD>
__host__ __device__ constexpr size_t ring_bytes() { return (size_t)NW * R * 32 * HD * sizeof(__half); }
template <int HD, int G>
__host__ __device__ constexpr size_t split_smem() {
  return ring_bytes<HD>() + (size_t)NW * G * 32 * sizeof(float);
}

template <int HD, int G>
__global__ void __launch_bounds__(NT) split_kernel(DecodeArgs a) {
  constexpr int LPK = HD / 8, KPS = 32 / LPK, NS = 32 / KPS;  // lanes per key, keys per step, steps
  constexpr int CH = 32 * HD, CPL = HD / 8;                   // halves per chunk; 16-byte copies per lane
  static_assert((size_t)NW * G * HD * sizeof(float) <= ring_bytes<HD>(), "warp outputs alias the ring");
  extern __shared__ __align__(16) uint8_t smem[];
  const int item = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int sub = lane / LPK, dl = (lane % LPK) * 8;
  __half* ring = reinterpret_cast<__half*>(smem) + warp * R * CH;
  float(*ps)[32] = reinterpret_cast<float(*)[32]>(smem + ring_bytes<HD>()) + warp * G;
  __shared__ float wm[NW][G], wl[NW][G];

  // Everything up to griddepcontrol.wait reads only what earlier decode steps wrote.
  const int g = a.item_head[item], sp = a.item_split[item], S = a.head_splits[g];
  const int64_t len = (int64_t)a.used[g] + 1, fresh = len - 1;  // fresh: the new token's entry
  const int64_t chunk = (len + S - 1) / S;
  const int64_t start = sp * chunk, end = min(len, start + chunk);
  const int64_t tiles = end > start ? (end - start + 31) / 32 : 0;
  const int nch = warp < tiles ? 2 * (int)((tiles - warp + NW - 1) / NW) : 0;  // this warp's chunks
  const __half* K = a.k + a.seg_off[g] * HD;
  const __half* V = a.v + a.seg_off[g] * HD;
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
        cp_async16(dst + r * HD + col, src + min(key, end - 1) * HD + col, key < end);
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
        *reinterpret_cast<uint4*>(ring + (c % R) * CH + r * HD + col) =
            *reinterpret_cast<const uint4*>(src + fresh * HD + col);
    }
  }

  const float scale = rsqrtf((float)HD);
  float q[G][8], o[G][8], m[G], l[G];
#pragma unroll
  for (int h = 0; h < G; ++h) {
    const float4 a0 = *reinterpret_cast<const float4*>(a.q + (g * G + h) * HD + dl);
    const float4 a1 = *reinterpret_cast<const float4*>(a.q + (g * G + h) * HD + dl + 4);
    q[h][0] = a0.x * scale; q[h][1] = a0.y * scale; q[h][2] = a0.z * scale; q[h][3] = a0.w * scale;
    q[h][4] = a1.x * scale; q[h][5] = a1.y * scale; q[h][6] = a1.z * scale; q[h][7] = a1.w * scale;
#pragma unroll
    for (int i = 0; i < 8; ++i) o[h][i] = 0.0f;
    m[h] = -INFINITY;
    l[h] = 0.0f;
  }

  for (int c = 0; c < nch; ++c) {
    issue(c + R - 1, false);
    cp_async_wait<R - 1>();
    __syncwarp();
    const __half* buf = ring + (c % R) * CH;
    if ((c & 1) == 0) {  // K: the tile's scores, then the online-softmax update
      const int64_t t0 = tile0(c);
#pragma unroll 4
      for (int j = 0; j < NS; ++j) {
        float kf[8];
        unpack8(*reinterpret_cast<const uint4*>(buf + (j * KPS + sub) * HD + dl), kf);
#pragma unroll
        for (int h = 0; h < G; ++h) {
          float s = 0.0f;
#pragma unroll
          for (int i = 0; i < 8; ++i) s += q[h][i] * kf[i];
#pragma unroll
          for (int off = LPK / 2; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
          const int slot = j * KPS + sub;
          if (lane % LPK == 0) ps[h][slot] = t0 + slot < end ? s : -INFINITY;
        }
      }
      __syncwarp();
#pragma unroll
      for (int h = 0; h < G; ++h) {
        const float s = ps[h][lane];
        float mx = s;
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
        const float mn = fmaxf(m[h], mx);  // finite: the tile has at least one key
        const float alpha = expf(m[h] - mn), p = expf(s - mn);
        m[h] = mn;
        l[h] = l[h] * alpha + p;
#pragma unroll
        for (int i = 0; i < 8; ++i) o[h][i] *= alpha;
        ps[h][lane] = p;
      }
    } else {  // V: o += p · v (rows past the end are zeros with p = 0)
#pragma unroll 4
      for (int j = 0; j < NS; ++j) {
        float vf[8];
        unpack8(*reinterpret_cast<const uint4*>(buf + (j * KPS + sub) * HD + dl), vf);
#pragma unroll
        for (int h = 0; h < G; ++h) {
          const float p = ps[h][j * KPS + sub];
#pragma unroll
          for (int i = 0; i < 8; ++i) o[h][i] += p * vf[i];
        }
      }
    }
    __syncwarp();  // the slot is refilled by the next iteration's request
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with its ring: the warp outputs reuse it
  float(*wo)[G][HD] = reinterpret_cast<float(*)[G][HD]>(smem);
#pragma unroll
  for (int h = 0; h < G; ++h) {
#pragma unroll
    for (int off = 16; off >= LPK; off >>= 1)
#pragma unroll
      for (int i = 0; i < 8; ++i) o[h][i] += __shfl_xor_sync(0xffffffffu, o[h][i], off);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) l[h] += __shfl_xor_sync(0xffffffffu, l[h], off);
    if (lane < LPK)
#pragma unroll
      for (int i = 0; i < 8; ++i) wo[warp][h][dl + i] = o[h][i];
    if (lane == 0) {
      wm[warp][h] = m[h];
      wl[warp][h] = l[h];
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
// dimension in each), then combined through shared memory.
constexpr int MT = 512;
template <int HD>
__global__ void __launch_bounds__(MT) merge_kernel(DecodeArgs a) {
  grid_dependency_wait();    // a PDL launch: the split kernel's partials
  grid_dependents_launch();  // the output projection (a PDL launch) may start prefetching weights
  constexpr int MG = MT / HD;
  const int h = blockIdx.x, tid = threadIdx.x, d = tid % HD, grp = tid / HD;
  const int G = a.nh / a.nkv, g = h / G, hh = h % G;
  const int first = a.head_first[g], n = a.head_splits[g];
  __shared__ float red[MT / 32];
  __shared__ float accs[MG][HD], ls[MG];
  float M = -INFINITY;
  for (int i = tid; i < n; i += MT) M = fmaxf(M, a.part[((int64_t)(first + i) * G + hh) * (HD + 2) + HD]);
  for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
  if ((tid & 31) == 0) red[tid >> 5] = M;
  __syncthreads();
  M = -INFINITY;
  for (int w = 0; w < MT / 32; ++w) M = fmaxf(M, red[w]);
  float L = 0.0f, acc = 0.0f;
#pragma unroll 4
  for (int i = grp; i < n; i += MG) {
    const float* p = a.part + ((int64_t)(first + i) * G + hh) * (HD + 2);
    const float l = p[HD + 1];
    const float w = l == 0.0f ? 0.0f : expf(p[HD] - M);
    L += l * w;
    acc += p[d] * w;
  }
  accs[grp][d] = acc;
  if (d == 0) ls[grp] = L;
  __syncthreads();
  if (grp == 0) {
    float A = 0.0f, LL = 0.0f;
    for (int j = 0; j < MG; ++j) {
      A += accs[j][d];
      LL += ls[j];
    }
    a.out[h * HD + d] = A / LL;
  }
}

// The split kernel for (HD, G) and its dynamic shared memory (the attribute is raised once).
struct SplitFn {
  void (*fn)(DecodeArgs);
  size_t smem;
};
template <int HD, int G>
SplitFn split_fn() {
  constexpr size_t smem = split_smem<HD, G>();
  static const bool once = [] {
    check(cudaFuncSetAttribute(split_kernel<HD, G>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
          "attention shared memory");
    return true;
  }();
  (void)once;
  return {split_kernel<HD, G>, smem};
}
template <int HD>
SplitFn split_fn_g(int G) {
  switch (G) {
    case 1: return split_fn<HD, 1>();
    case 2: return split_fn<HD, 2>();
    case 3: return split_fn<HD, 3>();
    case 4: return split_fn<HD, 4>();
    case 5: return split_fn<HD, 5>();
    case 6: return split_fn<HD, 6>();
    case 7: return split_fn<HD, 7>();
    default: return split_fn<HD, 8>();
  }
}
SplitFn split_for(int hd, int G) { return hd == 64 ? split_fn_g<64>(G) : split_fn_g<128>(G); }

}  // namespace

int decode_attention_slots(int hd, int G) {
  const SplitFn f = split_for(hd, G);
  int n = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, f.fn, NT, f.smem), "occupancy");
  return std::max(1, n) * sm_count();
}

void decode_attention(const DecodeArgs& a, cudaStream_t s) {
  if (a.nh / a.nkv > MAXG) fail(ErrorKind::Unsupported, "CUDA backend: more than 8 query heads per KV head");
  if (a.hd != 64 && a.hd != 128)
    fail(ErrorKind::Unsupported, "CUDA backend: head_dim " + std::to_string(a.hd) + " (supported: 64, 128)");
  const SplitFn f = split_for(a.hd, a.nh / a.nkv);
  launch_pdl(f.fn, dim3((unsigned)a.n_items), dim3(NT), f.smem, s, "decode attention", a);
  launch_pdl(a.hd == 64 ? merge_kernel<64> : merge_kernel<128>, dim3((unsigned)a.nh), dim3(MT), 0, s,
             "decode attention merge", a);
  check_launch("decode_attention");
}

}  // namespace headkv::cu
