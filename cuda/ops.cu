// Small element-wise kernels of the transformer block: RMSNorm, SwiGLU / GeGLU, RoPE + K/V store,
// scaling and soft-capping.
#include "common.cuh"
#include "kernels.cuh"
#include "kv_quant.cuh"

namespace headkv::cu {

namespace {

// Same arithmetic as the CPU: sum of squares in double, scale in float. ADD: out += the norm (a
// post-norm into the residual stream; x and out are distinct buffers).
template <bool ADD>
__global__ void rms_norm_kernel(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ out,
                                int64_t d, float eps) {
  const float* xr = x + blockIdx.x * d;
  float* o = out + blockIdx.x * d;
  double ss = 0.0;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) ss += (double)xr[i] * xr[i];
  __shared__ double red[32];
  for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    double v = threadIdx.x < blockDim.x / 32 ? red[threadIdx.x] : 0.0;
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (threadIdx.x == 0) red[0] = v;
  }
  __syncthreads();
  const float scale = 1.0f / sqrtf((float)(red[0] / d) + eps);
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    const float y = w[i] * (xr[i] * scale);
    o[i] = ADD ? o[i] + y : y;
  }
}

__global__ void silu_mul_kernel(float* g, const float* __restrict__ u, int64_t n) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    const float a = g[i];
    g[i] = a / (1.0f + expf(-a)) * u[i];
  }
}

// GELU, tanh approximation (the CPU's gelu_tanh in model/forward.cpp).
__global__ void gelu_mul_kernel(float* g, const float* __restrict__ u, int64_t n) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    const float x = g[i];
    g[i] = 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x))) * u[i];
  }
}

__global__ void scale_kernel(float* x, float c, int64_t n, bool cap) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = cap ? c * tanhf(x[i] / c) : x[i] * c;
}

// One block per (token, head): heads < nh rotate q in place; the others rotate k of KV head
// g = head - nh and store k and v. One thread per dimension.
__device__ __forceinline__ void rope_store_body(const RopeStore& a, const int t, const int head, const int d) {
  const int32_t pos = (a.pos0_dev ? *a.pos0_dev : a.pos0) + t;
  const int half = a.rope_dim / 2;
  if (head < a.nh) {  // thread d rotates pair d: (2d, 2d+1), or (d, d+half) NeoX-style
    if (d >= half) return;
    float c, s;
    rope_cs(pos, a.rope_scale, a.inv_freq[d], a.mscale, &c, &s);
    float* v = a.q + ((int64_t)t * a.nh + head) * a.hd;
    const int i0 = a.neox ? d : 2 * d, i1 = a.neox ? d + half : 2 * d + 1;
    const float x0 = v[i0], x1 = v[i1];
    v[i0] = rope_x(x0, x1, c, s);
    v[i1] = rope_y(x0, x1, c, s);
    return;
  }
  const int g = head - a.nh;
  const float* kr = a.k + ((int64_t)t * a.nkv + g) * a.hd;
  float kv = kr[d];
  if (d < a.rope_dim) {  // thread d writes element d of its pair
    const int pair = a.neox ? d % half : d / 2;
    const bool second = a.neox ? d >= half : (d & 1);
    float c, s;
    rope_cs(pos, a.rope_scale, a.inv_freq[pair], a.mscale, &c, &s);
    const float x0 = a.neox ? kr[pair] : kr[d & ~1], x1 = a.neox ? kr[pair + half] : kr[d | 1];
    kv = second ? rope_y(x0, x1, c, s) : rope_x(x0, x1, c, s);
  }
  const float vval = a.v[((int64_t)t * a.nkv + g) * a.hd + d];
  if (a.kf) {
    const int64_t e = g * a.ld_head + a.row0 + t;
    a.kf[e * a.hd + d] = kv;
    a.vf[e * a.hd + d] = vval;
  } else if (a.kfh) {
    const int64_t e = g * a.ld_head + a.row0 + t;
    a.kfh[e * a.hd + d] = __float2half_rn(kv);
    a.vfh[e * a.hd + d] = __float2half_rn(vval);
  } else {  // the arena: f16 rows, or q8_0 / q4_0 blocks quantized by each warp (32 dims a block)
    const int64_t e = a.seg_off[g] + (a.ring ? (a.used[g] + t) % a.ring : a.used[g] + t);
    const int lane = d & 31;
    kv_store_elem(a.tk, static_cast<uint8_t*>(a.kh) + e * (int64_t)kv_row_bytes(a.tk, a.hd), d, kv, lane);
    kv_store_elem(a.tv, static_cast<uint8_t*>(a.vh) + e * (int64_t)kv_row_bytes(a.tv, a.hd), d, vval, lane);
    if (d == 0) a.pos[e] = pos;
  }
}

__global__ void add_bias_kernel(float* x, const float* __restrict__ b, int64_t n, int64_t total) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < total) x[i] += b[i % n];
}

__global__ void rope_store_kernel(RopeStore a) { rope_store_body(a, blockIdx.x, blockIdx.y, threadIdx.x); }
// Sequence blockIdx.z of several, one token each.
__global__ void rope_store_kernel_n(const RopeStore* __restrict__ as) {
  const RopeStore a = as[blockIdx.z];
  rope_store_body(a, 0, blockIdx.y, threadIdx.x);
}

// A programmatic dependent (PDL): the next kernel (in decode, the output head) may launch at once;
// the counts change only after the previous kernel has finished (every reader of them has).
__global__ void add_used_kernel(int32_t* used, int n, int T) {
  grid_dependents_launch();
  grid_dependency_wait();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) used[i] += T;
}

}  // namespace

void rms_norm(const float* x, const float* w, float* out, int64_t T, int64_t d, float eps, cudaStream_t s) {
  if (T == 0) return;
  rms_norm_kernel<false><<<(unsigned)T, 256, 0, s>>>(x, w, out, d, eps);
  check_launch("rms_norm");
}

void rms_norm_add(const float* x, const float* w, float* out, int64_t T, int64_t d, float eps, cudaStream_t s) {
  if (T == 0) return;
  rms_norm_kernel<true><<<(unsigned)T, 256, 0, s>>>(x, w, out, d, eps);
  check_launch("rms_norm_add");
}

void gelu_mul(float* g, const float* u, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  gelu_mul_kernel<<<(unsigned)cdiv(n, 256), 256, 0, s>>>(g, u, n);
  check_launch("gelu_mul");
}

void scale(float* x, float c, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  scale_kernel<<<(unsigned)cdiv(n, 256), 256, 0, s>>>(x, c, n, false);
  check_launch("scale");
}

void softcap(float* x, float c, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  scale_kernel<<<(unsigned)cdiv(n, 256), 256, 0, s>>>(x, c, n, true);
  check_launch("softcap");
}

void silu_mul(float* g, const float* u, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  silu_mul_kernel<<<(unsigned)cdiv(n, 256), 256, 0, s>>>(g, u, n);
  check_launch("silu_mul");
}

void add_bias(float* x, const float* b, int64_t T, int64_t n, cudaStream_t s) {
  if (T == 0) return;
  add_bias_kernel<<<(unsigned)cdiv(T * n, 256), 256, 0, s>>>(x, b, n, T * n);
  check_launch("add_bias");
}

void rope_store(const RopeStore& a, cudaStream_t s) {
  if (a.T == 0) return;
  rope_store_kernel<<<dim3((unsigned)a.T, (unsigned)(a.nh + a.nkv)), (unsigned)a.hd, 0, s>>>(a);
  check_launch("rope_store");
}

void rope_store_n(const RopeStore& like, const RopeStore* args, int n, cudaStream_t s) {
  if (n == 0) return;
  rope_store_kernel_n<<<dim3(1, (unsigned)(like.nh + like.nkv), (unsigned)n), (unsigned)like.hd, 0, s>>>(args);
  check_launch("rope_store_n");
}

void add_used(int32_t* used, int n, int T, cudaStream_t s) {
  launch_pdl(add_used_kernel, dim3((unsigned)cdiv(n, 256)), dim3(256), 0, s, "add_used", used, n, T);
}

}  // namespace headkv::cu
