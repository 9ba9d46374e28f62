// Ragged split-K decode attention over the per-head arena: a layer's work items split every KV
// head's segment into head_splits[g] chunks (proportional to its capacity, so heads of very
// different lengths cost alike per item); each item serves the G query heads of its KV head
// (GQA-packed: K/V rows are read once per group). A second kernel merges the partial softmaxes.
#include "common.cuh"
#include "kernels.cuh"

namespace headkv::cu {

namespace {

constexpr int NT = 128, TILE = 128, MAXG = 8;

template <int HD>
__global__ void __launch_bounds__(NT) split_kernel(DecodeArgs a) {
  constexpr int R = NT / HD;  // replicas over keys in the PV phase
  const int item = blockIdx.x, tid = threadIdx.x;
  const int g = a.item_head[item], sp = a.item_split[item], S = a.head_splits[g];
  const int G = a.nh / a.nkv;
  __shared__ float qs[MAXG][HD];
  __shared__ float sc[MAXG][TILE];
  __shared__ float mh[MAXG], lh[MAXG], ah[MAXG];
  __shared__ float red[R > 1 ? R : 1][MAXG][HD];
  __shared__ __align__(16) __half vs[TILE][HD];  // the tile's values, staged with 16-byte loads
  for (int i = tid; i < G * HD; i += NT) qs[i / HD][i % HD] = a.q[(g * G + i / HD) * HD + i % HD];
  if (tid < G) {
    mh[tid] = -INFINITY;
    lh[tid] = 0.0f;
  }
  const int64_t len = (int64_t)a.used[g] + 1;
  const int64_t chunk = (len + S - 1) / S;
  const int64_t start = sp * chunk, end = min(len, start + chunk);
  const __half* K = a.k + a.seg_off[g] * HD;
  const __half* V = a.v + a.seg_off[g] * HD;
  const float scale = 1.0f / sqrtf((float)HD);
  const int d = tid % HD, rep = tid / HD;
  float o[MAXG];
#pragma unroll
  for (int h = 0; h < MAXG; ++h) o[h] = 0.0f;
  __syncthreads();
  for (int64_t k0 = start; k0 < end; k0 += TILE) {
    const int64_t key = k0 + tid;
    const int64_t n = min((int64_t)TILE, end - k0);
    for (int i = tid; i < n * (HD / 8); i += NT) {
      const int c = i / (HD / 8), j = (i % (HD / 8)) * 8;
      *reinterpret_cast<uint4*>(&vs[c][j]) = *reinterpret_cast<const uint4*>(V + (k0 + c) * HD + j);
    }
    if (key < end) {
      float s[MAXG];
#pragma unroll
      for (int h = 0; h < MAXG; ++h) s[h] = 0.0f;
      const uint4* kr = reinterpret_cast<const uint4*>(K + key * HD);
      uint4 ku[HD / 8];
#pragma unroll
      for (int c = 0; c < HD / 8; ++c) ku[c] = kr[c];  // all loads in flight at once
#pragma unroll
      for (int c = 0; c < HD / 8; ++c) {
        const uint4 u = ku[c];
        const __half2* hp = reinterpret_cast<const __half2*>(&u);
        float kf[8];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float2 f = __half22float2(hp[i]);
          kf[2 * i] = f.x;
          kf[2 * i + 1] = f.y;
        }
#pragma unroll
        for (int h = 0; h < MAXG; ++h)
          if (h < G)
#pragma unroll
            for (int i = 0; i < 8; ++i) s[h] += qs[h][c * 8 + i] * kf[i];
      }
#pragma unroll
      for (int h = 0; h < MAXG; ++h)
        if (h < G) sc[h][tid] = s[h] * scale;
    } else {
      for (int h = 0; h < G; ++h) sc[h][tid] = -INFINITY;
    }
    __syncthreads();
    const int warp = tid >> 5, lane = tid & 31;
    for (int h = warp; h < G; h += NT / 32) {
      float mx = -INFINITY;
      for (int c = lane; c < TILE; c += 32) mx = fmaxf(mx, sc[h][c]);
      for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float mn = fmaxf(mh[h], mx);
      float sum = 0.0f;
      for (int c = lane; c < TILE; c += 32) {
        const float p = expf(sc[h][c] - mn);
        sc[h][c] = p;
        sum += p;
      }
      for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      if (lane == 0) {
        ah[h] = expf(mh[h] - mn);
        lh[h] = lh[h] * ah[h] + sum;
        mh[h] = mn;
      }
    }
    __syncthreads();
#pragma unroll
    for (int h = 0; h < MAXG; ++h)
      if (h < G) o[h] *= ah[h];
    for (int c = rep; c < n; c += R) {
      const float v = __half2float(vs[c][d]);
#pragma unroll
      for (int h = 0; h < MAXG; ++h)
        if (h < G) o[h] += sc[h][c] * v;
    }
    __syncthreads();
  }
  if (R > 1) {
    for (int h = 0; h < G; ++h) red[rep][h][d] = o[h];
    __syncthreads();
    if (rep == 0)
      for (int h = 0; h < G; ++h)
        for (int r = 1; r < R; ++r) o[h] += red[r][h][d];
  }
  if (rep == 0) {
    for (int h = 0; h < G; ++h) {
      float* p = a.part + ((int64_t)item * G + h) * (HD + 2);
      p[d] = o[h];
      if (d == 0) {
        p[HD] = mh[h];
        p[HD + 1] = lh[h];
      }
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

}  // namespace

void decode_attention(const DecodeArgs& a, cudaStream_t s) {
  if (a.nh / a.nkv > MAXG) fail(ErrorKind::Unsupported, "CUDA backend: more than 8 query heads per KV head");
  if (a.hd == 64) {
    split_kernel<64><<<a.n_items, NT, 0, s>>>(a);
    merge_kernel<64><<<a.nh, MT, 0, s>>>(a);
  } else if (a.hd == 128) {
    split_kernel<128><<<a.n_items, NT, 0, s>>>(a);
    merge_kernel<128><<<a.nh, MT, 0, s>>>(a);
  } else {
    fail(ErrorKind::Unsupported, "CUDA backend: head_dim " + std::to_string(a.hd) + " (supported: 64, 128)");
  }
  check_launch("decode_attention");
}

}  // namespace headkv::cu
