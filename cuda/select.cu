// Selection on the GPU, right after a layer's prefill (rules: cpp/src/select/selection.h):
// window-query softmax over all prompt keys -> mean over window queries and the GQA group ->
// 1-D pooling -> per-KV-head top-k with a per-head k (radix select in one block per head,
// ties to the lower position as on the CPU) -> kept positions in order -> gathered into the arena.
// Nothing comes back to the host in between.
#include <cub/block/block_scan.cuh>

#include "common.cuh"
#include "kernels.cuh"
#include "kv_quant.cuh"
#include "select/selection.h"

namespace headkv::cu {

namespace {

constexpr int MAXSEG = 64;
struct I64s {
  int64_t v[MAXSEG];
};

// 4 consecutive key/value elements of the layer buffer (fp32, or fp16 in the fast precision).
__device__ __forceinline__ float4 ld4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 ld4(const __half* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
  const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
  return make_float4(a.x, a.y, b.x, b.y);
}

// Softmax statistics of one window query row (h, i) over its n_keys = P + i + 1 keys.
template <class KT>
__global__ void rowstat_kernel(const float* __restrict__ qwin, const KT* __restrict__ K, int64_t N, int a, int nh,
                               int nkv, int hd, float* __restrict__ rowstat) {
  const int h = blockIdx.x / a, i = blockIdx.x % a, g = h / (nh / nkv);
  const int64_t n_keys = N - a + i + 1;
  const float* q = qwin + ((int64_t)i * nh + h) * hd;
  const KT* Kg = K + (int64_t)g * N * hd;
  const float scale = 1.0f / sqrtf((float)hd);
  float m = -INFINITY, l = 0.0f;
  for (int64_t j = threadIdx.x; j < n_keys; j += blockDim.x) {
    const KT* kr = Kg + j * hd;
    float s = 0.0f;
    for (int d = 0; d < hd; d += 4) {
      const float4 kv = ld4(kr + d);
      s += q[d] * kv.x + q[d + 1] * kv.y + q[d + 2] * kv.z + q[d + 3] * kv.w;
    }
    s *= scale;
    if (s > m) {
      l = l * expf(m - s) + 1.0f;
      m = s;
    } else {
      l += expf(s - m);
    }
  }
  __shared__ float sm[32], sl[32];
  for (int off = 16; off > 0; off >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, off), l2 = __shfl_xor_sync(0xffffffffu, l, off);
    const float mn = fmaxf(m, m2);
    l = (mn == -INFINITY) ? 0.0f : l * expf(m - mn) + l2 * expf(m2 - mn);
    m = mn;
  }
  if ((threadIdx.x & 31) == 0) {
    sm[threadIdx.x >> 5] = m;
    sl[threadIdx.x >> 5] = l;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float M = -INFINITY, L = 0.0f;
    for (int w = 0; w < (int)blockDim.x / 32; ++w) M = fmaxf(M, sm[w]);
    for (int w = 0; w < (int)blockDim.x / 32; ++w) L += sl[w] * expf(sm[w] - M);
    rowstat[blockIdx.x * 2] = M;
    rowstat[blockIdx.x * 2 + 1] = (float)(1.0 / (double)L);
  }
}

// raw[g][j] = mean over (group head hh, window query i) of softmax prob of key j, summed in the
// CPU's order (hh outer, i inner).
constexpr int RB = 32;  // rows (hh, i) per register batch
template <class KT>
__global__ void raw_kernel(const float* __restrict__ qwin, const KT* __restrict__ K, int64_t N, int a, int64_t P,
                           int nh, int nkv, int hd, const float* __restrict__ rowstat, bool max_q, float* __restrict__ raw) {
  const int g = blockIdx.y, G = nh / nkv;
  const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= P) return;
  const KT* kr = K + ((int64_t)g * N + j) * hd;
  const float scale = 1.0f / sqrtf((float)hd);
  const int rows = G * a;
  float acc = 0.0f;
  for (int b0 = 0; b0 < rows; b0 += RB) {
    float s[RB];
#pragma unroll
    for (int r = 0; r < RB; ++r) s[r] = 0.0f;
    for (int d = 0; d < hd; d += 4) {
      const float4 kv = ld4(kr + d);
#pragma unroll
      for (int r = 0; r < RB; ++r) {
        if (b0 + r < rows) {
          const int hh = (b0 + r) / a, i = (b0 + r) % a;
          const float4 qv = __ldg(reinterpret_cast<const float4*>(qwin + ((int64_t)i * nh + g * G + hh) * hd + d));
          s[r] += qv.x * kv.x + qv.y * kv.y + qv.z * kv.z + qv.w * kv.w;
        }
      }
    }
#pragma unroll
    for (int r = 0; r < RB; ++r) {
      if (b0 + r < rows) {
        const int hh = (b0 + r) / a, i = (b0 + r) % a;
        const int row = (g * G + hh) * a + i;
        const float pr = expf(s[r] * scale - rowstat[row * 2]) * rowstat[row * 2 + 1];
        acc = max_q ? fmaxf(acc, pr) : acc + pr;
      }
    }
  }
  raw[g * P + j] = max_q ? acc : acc * (1.0f / (float)(a * G));
}

// reach (max pooling only, else 0): the window of j also takes the `reach` positions before it from
// kReachFrom on (select/selection.h)
__global__ void pool_kernel(const float* __restrict__ raw, float* __restrict__ out, int64_t P, int kernel, bool max_pool,
                            int64_t reach) {
  const int g = blockIdx.y;
  const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= P) return;
  const float* s = raw + g * P;
  const int64_t r = kernel / 2;
  const int64_t lo_sym = max((int64_t)0, j - r), hi = min(P - 1, j + r);
  const int64_t lo = reach ? max(min(lo_sym, kReachFrom), j - r - reach) : lo_sym;
  float v;
  if (max_pool) {
    v = s[lo];
    for (int64_t t = lo + 1; t <= hi; ++t) v = fmaxf(v, s[t]);
  } else {
    v = 0.0f;
    for (int64_t t = lo; t <= hi; ++t) v += s[t];
    v = v / (float)kernel;
  }
  out[g * P + j] = v;
}

// s[g][j] = max over j's token run (runs[t] = 1: t continues the run of t-1). In place: every
// thread of a run writes the same maximum, so reading a value a neighbour already replaced gives
// the same result.
__global__ void run_max_kernel(float* s, const uint8_t* __restrict__ runs, int64_t P) {
  const int g = blockIdx.y;
  const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= P) return;
  float* x = s + g * P;
  int64_t a = j, b = j + 1;
  while (a > 0 && runs[a]) --a;
  while (b < P && runs[b]) ++b;
  if (b - a < 2) return;
  float m = x[a];
  for (int64_t t = a + 1; t < b; ++t) m = fmaxf(m, x[t]);
  x[j] = m;
}

__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

constexpr int TK = 1024;
__global__ void __launch_bounds__(TK) topk_kernel(const float* __restrict__ s, int64_t n, I64s ks,
                                                  const uint8_t* __restrict__ exclude, uint8_t* __restrict__ flags) {
  const int seg = blockIdx.x, tid = threadIdx.x;
  const float* x = s + seg * n;
  const uint8_t* ex = exclude ? exclude + seg * n : nullptr;
  uint8_t* fl = flags + seg * n;
  const int64_t k = ks.v[seg];
  if (k <= 0) return;
  __shared__ int64_t hist[256];
  __shared__ int64_t s_kk, s_total;
  __shared__ uint32_t s_sel;
  uint32_t prefix = 0, pmask = 0;
  int64_t kk = k;
  bool take_all = false;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += TK) hist[i] = 0;
    __syncthreads();
    for (int64_t j = tid; j < n; j += TK) {
      if (ex && ex[j]) continue;
      const uint32_t u = order_key(x[j]);
      if ((u & pmask) == prefix) atomicAdd((unsigned long long*)&hist[(u >> shift) & 255], 1ull);
    }
    __syncthreads();
    if (tid == 0) {
      if (shift == 24) {
        int64_t tot = 0;
        for (int i = 0; i < 256; ++i) tot += hist[i];
        s_total = tot;
      }
      int64_t cum = 0;
      uint32_t sel = 0;
      for (int dg = 255; dg >= 0; --dg) {
        if (cum + hist[dg] >= kk) {
          sel = (uint32_t)dg;
          break;
        }
        cum += hist[dg];
      }
      s_sel = sel;
      s_kk = kk - cum;
    }
    __syncthreads();
    if (shift == 24 && k >= s_total) {
      take_all = true;
      break;
    }
    prefix |= s_sel << shift;
    pmask |= 0xFFu << shift;
    kk = s_kk;
    __syncthreads();
  }
  using Scan = cub::BlockScan<int, TK>;
  __shared__ typename Scan::TempStorage tmp;
  int64_t eq_base = 0;
  for (int64_t c = 0; c < n; c += TK) {
    const int64_t j = c + tid;
    bool valid = j < n && !(ex && ex[j]);
    int eq = 0;
    bool take = false;
    if (valid) {
      if (take_all) {
        take = true;
      } else {
        const uint32_t u = order_key(x[j]);
        take = u > prefix;
        eq = u == prefix;
      }
    }
    int rank, agg;
    Scan(tmp).ExclusiveSum(eq, rank, agg);
    if (eq && eq_base + rank < kk) take = true;
    if (take) fl[j] = 1;
    eq_base += agg;
    __syncthreads();
  }
}

__global__ void streaming_kernel(uint8_t* flags, int64_t P, I64s sink, I64s cap) {
  const int g = blockIdx.y;
  const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= P) return;
  if (j < sink.v[g] || j >= P - (cap.v[g] - sink.v[g])) flags[g * P + j] = 1;
}

__global__ void __launch_bounds__(TK) compact_kernel(const uint8_t* __restrict__ flags, int64_t P, int64_t n_keep,
                                                     int64_t N, int32_t* __restrict__ list, int32_t* __restrict__ count) {
  const int g = blockIdx.x, tid = threadIdx.x;
  using Scan = cub::BlockScan<int, TK>;
  __shared__ typename Scan::TempStorage tmp;
  const uint8_t* f = flags + g * P;
  int32_t* out = list + g * N;
  int64_t base = 0;
  for (int64_t c = 0; c < P; c += TK) {
    const int64_t j = c + tid;
    const int v = j < P && f[j];
    int rank, agg;
    Scan(tmp).ExclusiveSum(v, rank, agg);
    if (v) out[base + rank] = (int32_t)j;
    base += agg;
    __syncthreads();
  }
  for (int64_t w = tid; w < n_keep - P; w += TK) out[base + w] = (int32_t)(P + w);
  if (tid == 0) count[g] = (int32_t)(base + (n_keep - P));
}

__global__ void layer_offsets_kernel(int64_t* seg_off, const int32_t* count, int nkv, int64_t room) {
  for (int g = 0; g + 1 < nkv; ++g) seg_off[g + 1] = seg_off[g] + count[g] + room;
}

// One thread per (kept entry, dimension); a warp covers 32 dimensions of one entry (hd is a multiple
// of 32 for the block types), so it quantizes a q8_0 / q4_0 block together.
template <class KT>
__global__ void gather_kernel(const int32_t* __restrict__ list, const int32_t* __restrict__ count, int64_t N, int hd,
                              const KT* __restrict__ K, const KT* __restrict__ V, const int64_t* __restrict__ seg_off,
                              uint8_t* ak, uint8_t* av, KVType tk, KVType tv, int32_t* apos, int32_t* used) {
  const int g = blockIdx.y;
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t idx = i / hd;
  const int d = (int)(i % hd);
  if (i == 0) used[g] = count[g];
  if (idx >= count[g]) return;  // warp-uniform where blocks are stored (a warp lies in one entry)
  const int32_t j = list[g * N + idx];
  const int64_t dst = seg_off[g] + idx;
  const int lane = threadIdx.x & 31;
  kv_store_elem(tk, ak + dst * (int64_t)kv_row_bytes(tk, hd), d, to_float(K[((int64_t)g * N + j) * hd + d]), lane);
  kv_store_elem(tv, av + dst * (int64_t)kv_row_bytes(tv, hd), d, to_float(V[((int64_t)g * N + j) * hd + d]), lane);
  if (d == 0) apos[dst] = j;
}

I64s to_i64s(const int64_t* v, int n) {
  if (n > MAXSEG) fail(ErrorKind::Unsupported, "CUDA backend: more than 64 KV heads");
  I64s r{};
  for (int i = 0; i < n; ++i) r.v[i] = v[i];
  return r;
}

}  // namespace

void window_scores(const float* qwin, const void* K, bool half_k, int64_t N, int a, int64_t P, int nh, int nkv, int hd,
                   int kernel, bool max_pool, int reach, const uint8_t* runs, bool max_q, float* raw, float* pooled,
                   float* rowstat, cudaStream_t s) {
  if (P > N - a) fail(ErrorKind::Internal, "window_scores: scored prefix overlaps the window queries");
  const dim3 rg((unsigned)cdiv(P, 128), nkv);
  if (half_k) {
    rowstat_kernel<<<nh * a, 256, 0, s>>>(qwin, (const __half*)K, N, a, nh, nkv, hd, rowstat);
    raw_kernel<<<rg, 128, 0, s>>>(qwin, (const __half*)K, N, a, P, nh, nkv, hd, rowstat, max_q, raw);
  } else {
    rowstat_kernel<<<nh * a, 256, 0, s>>>(qwin, (const float*)K, N, a, nh, nkv, hd, rowstat);
    raw_kernel<<<rg, 128, 0, s>>>(qwin, (const float*)K, N, a, P, nh, nkv, hd, rowstat, max_q, raw);
  }
  if (!max_pool) reach = 0;
  if (kernel > 1 || reach > 0)
    pool_kernel<<<dim3((unsigned)cdiv(P, 256), nkv), 256, 0, s>>>(raw, pooled, P, kernel, max_pool, reach);
  else check(cudaMemcpyAsync(pooled, raw, (size_t)nkv * P * sizeof(float), cudaMemcpyDeviceToDevice, s), "copy scores");
  if (runs) run_max_kernel<<<dim3((unsigned)cdiv(P, 256), nkv), 256, 0, s>>>(pooled, runs, P);
  check_launch("window_scores");
}

void topk_flags(const float* sc, int64_t n, int n_seg, const int64_t* k_host, const uint8_t* exclude, uint8_t* flags,
                int64_t*, cudaStream_t st) {
  topk_kernel<<<n_seg, TK, 0, st>>>(sc, n, to_i64s(k_host, n_seg), exclude, flags);
  check_launch("topk");
}

void streaming_flags(uint8_t* flags, int64_t P, int nkv, const int64_t* sink_host, const int64_t* cap_host, int64_t*,
                     cudaStream_t s) {
  if (P == 0) return;
  streaming_kernel<<<dim3((unsigned)cdiv(P, 256), nkv), 256, 0, s>>>(flags, P, to_i64s(sink_host, nkv),
                                                                      to_i64s(cap_host, nkv));
  check_launch("streaming_flags");
}

void compact_flags(const uint8_t* flags, int64_t P, int64_t n_keep, int64_t N, int nkv, int32_t* list, int32_t* count,
                   cudaStream_t s) {
  compact_kernel<<<nkv, TK, 0, s>>>(flags, P, n_keep, N, list, count);
  check_launch("compact");
}

void layer_offsets(int64_t* seg_off, const int32_t* count, int nkv, int64_t room, cudaStream_t s) {
  layer_offsets_kernel<<<1, 1, 0, s>>>(seg_off, count, nkv, room);
  check_launch("layer_offsets");
}

void gather_to_arena(const int32_t* list, const int32_t* count, int64_t N, int nkv, int hd, const void* K,
                     const void* V, bool half_kv, const int64_t* seg_off, void* ak, void* av, KVType tk, KVType tv,
                     int32_t* apos, int32_t* used, int64_t max_count, cudaStream_t s) {
  if (max_count <= 0) return;
  const dim3 grid((unsigned)cdiv(max_count * hd, 256), nkv);
  uint8_t *k8 = static_cast<uint8_t*>(ak), *v8 = static_cast<uint8_t*>(av);
  if (half_kv)
    gather_kernel<<<grid, 256, 0, s>>>(list, count, N, hd, (const __half*)K, (const __half*)V, seg_off, k8, v8, tk, tv,
                                       apos, used);
  else
    gather_kernel<<<grid, 256, 0, s>>>(list, count, N, hd, (const float*)K, (const float*)V, seg_off, k8, v8, tk, tv,
                                       apos, used);
  check_launch("gather_to_arena");
}

}  // namespace headkv::cu
