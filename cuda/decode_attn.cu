// Ragged split-K decode attention over the per-head arena: a layer's work items split every KV
// head's segment into head_splits[g] chunks (proportional to its capacity, so heads of very
// different lengths cost alike per item); each item serves the G query heads of its KV head
// (GQA-packed: K/V rows are read once per group). A second kernel merges the partial softmaxes.
#include <algorithm>

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

// Each warp streams its own tiles of 32 keys (tiles w, w+NW, ... of the item), with no block-level
// synchronisation until the end: a key's row is read by HD/8 lanes (16 bytes each, coalesced), all
// of a tile's K (then V) loads are issued before any is used, the G query heads' vectors live in
// registers (8 dims per lane), and the tile's probabilities pass through shared memory. The
// warps' partial softmaxes are combined once per item.
template <int HD, int G>
__global__ void __launch_bounds__(NT, 3) split_kernel(DecodeArgs a) {
  constexpr int LPK = HD / 8, KPS = 32 / LPK, NS = 32 / KPS;  // lanes per key, keys per step, steps
  constexpr int NB = NS < 8 ? NS : 8;                            // steps per batch of loads
  const int item = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int sub = lane / LPK, dl = (lane % LPK) * 8;  // this lane's key in a step, its 8 dims
  const int g = a.item_head[item], sp = a.item_split[item], S = a.head_splits[g];
  __shared__ float ps[NW][G][32];
  __shared__ float wm[NW][G], wl[NW][G];
  __shared__ float wo[NW][G][HD];
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
  const int64_t len = (int64_t)a.used[g] + 1;
  const int64_t chunk = (len + S - 1) / S;
  const int64_t start = sp * chunk, end = min(len, start + chunk);
  const __half* K = a.k + a.seg_off[g] * HD;
  const __half* V = a.v + a.seg_off[g] * HD;
  // steps j0 .. j0+NB-1 of the tile at t0: this lane's 16 bytes of each key row (zeros past the end)
  auto load_batch = [&](const __half* rows, int64_t t0, int j0, uint4* out) {
#pragma unroll
    for (int j = 0; j < NB; ++j) {
      const int64_t key = t0 + (j0 + j) * KPS + sub;
      out[j] = key < end ? *reinterpret_cast<const uint4*>(rows + key * HD + dl) : make_uint4(0, 0, 0, 0);
    }
  };
  for (int64_t t0 = start + warp * 32; t0 < end; t0 += NW * 32) {
    // K in batches of NB steps (all of a batch's loads in flight before any is used)
#pragma unroll
    for (int j0 = 0; j0 < NS; j0 += NB) {
      uint4 buf[NB];
      load_batch(K, t0, j0, buf);
#pragma unroll
      for (int j = 0; j < NB; ++j) {
        float kf[8];
        unpack8(buf[j], kf);
#pragma unroll
        for (int h = 0; h < G; ++h) {
          float s = 0.0f;
#pragma unroll
          for (int i = 0; i < 8; ++i) s += q[h][i] * kf[i];
#pragma unroll
          for (int off = LPK / 2; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
          const int slot = (j0 + j) * KPS + sub;
          if (lane % LPK == 0) ps[warp][h][slot] = t0 + slot < end ? s : -INFINITY;
        }
      }
    }
    // the first batch of V goes out before the softmax math
    uint4 vb[NB];
    load_batch(V, t0, 0, vb);
    __syncwarp();
#pragma unroll
    for (int h = 0; h < G; ++h) {
      const float s = ps[warp][h][lane];
      float mx = s;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float mn = fmaxf(m[h], mx);  // finite: the tile has at least one key
      const float alpha = expf(m[h] - mn), p = expf(s - mn);
      m[h] = mn;
      l[h] = l[h] * alpha + p;  // per lane; summed over the warp at the end
#pragma unroll
      for (int i = 0; i < 8; ++i) o[h][i] *= alpha;
      ps[warp][h][lane] = p;
    }
    __syncwarp();
#pragma unroll
    for (int j0 = 0; j0 < NS; j0 += NB) {
      if (j0 > 0) load_batch(V, t0, j0, vb);
#pragma unroll
      for (int j = 0; j < NB; ++j) {
        float vf[8];
        unpack8(vb[j], vf);
#pragma unroll
        for (int h = 0; h < G; ++h) {
          const float p = ps[warp][h][(j0 + j) * KPS + sub];
#pragma unroll
          for (int i = 0; i < 8; ++i) o[h][i] += p * vf[i];
        }
      }
    }
    __syncwarp();
  }
  // warp totals: o over the KPS key slots of a step, l over all lanes
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


template <int HD, int G>
void launch_split(const DecodeArgs& a, cudaStream_t s) {
  split_kernel<HD, G><<<a.n_items, NT, 0, s>>>(a);
}

template <int HD>
void launch_hd(const DecodeArgs& a, cudaStream_t s) {
  switch (a.nh / a.nkv) {
    case 1: launch_split<HD, 1>(a, s); break;
    case 2: launch_split<HD, 2>(a, s); break;
    case 3: launch_split<HD, 3>(a, s); break;
    case 4: launch_split<HD, 4>(a, s); break;
    case 5: launch_split<HD, 5>(a, s); break;
    case 6: launch_split<HD, 6>(a, s); break;
    case 7: launch_split<HD, 7>(a, s); break;
    default: launch_split<HD, 8>(a, s); break;
  }
  merge_kernel<HD><<<a.nh, MT, 0, s>>>(a);
}

template <int HD>
int blocks_per_sm_hd(int G) {
  int n = 0;
  auto occ = [&](auto k) { check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, NT, 0), "occupancy"); };
  switch (G) {
    case 1: occ(split_kernel<HD, 1>); break;
    case 2: occ(split_kernel<HD, 2>); break;
    case 3: occ(split_kernel<HD, 3>); break;
    case 4: occ(split_kernel<HD, 4>); break;
    case 5: occ(split_kernel<HD, 5>); break;
    case 6: occ(split_kernel<HD, 6>); break;
    case 7: occ(split_kernel<HD, 7>); break;
    default: occ(split_kernel<HD, 8>); break;
  }
  return std::max(1, n);
}

}  // namespace

int decode_attention_slots(int hd, int G) {
  return (hd == 64 ? blocks_per_sm_hd<64>(G) : blocks_per_sm_hd<128>(G)) * sm_count();
}

void decode_attention(const DecodeArgs& a, cudaStream_t s) {
  if (a.nh / a.nkv > MAXG) fail(ErrorKind::Unsupported, "CUDA backend: more than 8 query heads per KV head");
  if (a.hd == 64) launch_hd<64>(a, s);
  else if (a.hd == 128) launch_hd<128>(a, s);
  else fail(ErrorKind::Unsupported, "CUDA backend: head_dim " + std::to_string(a.hd) + " (supported: 64, 128)");
  check_launch("decode_attention");
}

}  // namespace headkv::cu
