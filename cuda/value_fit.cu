// Value fitting on the device (rules and formula: cpp/src/select/value_fit.h): one block per KV
// head, after the layer's kept lists are compacted and before they are gathered into the arena, so
// the arena (any cache type) stores the fitted values. The window rows' logits and probabilities are
// fp32 (from the layer's fp32 or fp16 K), the m x m system and its solve double, as on the CPU.
#include "common.cuh"
#include "kernels.cuh"

namespace headkv::cu {

namespace {

constexpr int FT = 256;  // threads per block

__device__ __forceinline__ void addf(float* p, float v) { *p += v; }
__device__ __forceinline__ void addf(__half* p, float v) { *p = __float2half(__half2float(*p) + v); }

// A: [nkv][m][lda] fp32 scratch (lda >= the most entries a head keeps, window included);
// W: [nkv][m * m + m * hd] doubles (the system and the residuals / solution).
template <class KT>
__global__ void __launch_bounds__(FT) fit_kernel(const float* __restrict__ qwin, const float* __restrict__ owin, int a,
                                                 int nh, int nkv, int hd, float scale, float softcap, double lambda,
                                                 const KT* __restrict__ K, KT* V, int64_t N, int64_t P,
                                                 const int32_t* __restrict__ list, const int32_t* __restrict__ count,
                                                 float* Abuf, int64_t lda, double* Wbuf) {
  const int g = blockIdx.x, tid = threadIdx.x, G = nh / nkv, m = a * G;
  const int cnt = count[g], ns = cnt - a;
  if (ns <= 0) return;
  const int32_t* lst = list + (int64_t)g * N;
  const KT* Kg = K + (int64_t)g * N * hd;
  KT* Vg = V + (int64_t)g * N * hd;
  float* A = Abuf + (int64_t)g * m * lda;
  double* M = Wbuf + (int64_t)g * (m * m + m * hd);
  double* R = M + m * m;
  __shared__ double s_tr, s_d;
  // 1. logits of every window row (t, group head hh) over the kept prefix and the window it sees
  for (int64_t idx = tid; idx < (int64_t)m * cnt; idx += FT) {
    const int r = (int)(idx / cnt), k = (int)(idx % cnt), t = r / G, h = g * G + r % G;
    float l = -INFINITY;
    if (k < ns || k - ns <= t) {
      const float* q = qwin + ((int64_t)t * nh + h) * hd;
      const KT* kr = Kg + (int64_t)lst[k] * hd;
      float d = 0.f;
      for (int i = 0; i < hd; ++i) d += q[i] * to_float(kr[i]);
      d *= scale;
      l = softcap > 0.f ? softcap * tanhf(d / softcap) : d;
    }
    A[(int64_t)r * lda + k] = l;
  }
  __syncthreads();
  // 2. softmax per row (a warp per row)
  const int warp = tid / 32, lane = tid % 32;
  for (int r = warp; r < m; r += FT / 32) {
    float* row = A + (int64_t)r * lda;
    float mx = -INFINITY, z = 0.f;
    for (int k = lane; k < cnt; k += 32) mx = fmaxf(mx, row[k]);
    for (int o = 16; o; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    for (int k = lane; k < cnt; k += 32) z += (row[k] = __expf(row[k] - mx));
    for (int o = 16; o; o >>= 1) z += __shfl_xor_sync(0xffffffffu, z, o);
    const float inv = 1.f / z;
    for (int k = lane; k < cnt; k += 32) row[k] *= inv;
  }
  __syncthreads();
  // 3. residuals R = full output - compressed output; 4. M = A_S A_S^T (lower triangle)
  for (int idx = tid; idx < m * hd; idx += FT) {
    const int r = idx / hd, i = idx % hd, t = r / G, h = g * G + r % G;
    const float* row = A + (int64_t)r * lda;
    double v = owin[((int64_t)t * nh + h) * hd + i];
    for (int k = 0; k < cnt; ++k) v -= (double)row[k] * to_float(Vg[(int64_t)lst[k] * hd + i]);
    R[idx] = v;
  }
  for (int idx = tid; idx < m * m; idx += FT) {
    const int r = idx / m, c = idx % m;
    if (c > r) continue;
    const float *x = A + (int64_t)r * lda, *y = A + (int64_t)c * lda;
    double d = 0;
    for (int k = 0; k < ns; ++k) d += (double)x[k] * y[k];
    M[idx] = d;
  }
  __syncthreads();
  if (tid == 0) {
    double tr = 0;
    for (int r = 0; r < m; ++r) tr += M[r * m + r];
    s_tr = tr;
  }
  __syncthreads();
  if (!(s_tr > 0)) return;  // the window puts no weight on the kept prefix (block-uniform)
  for (int r = tid; r < m; r += FT) M[r * m + r] += lambda * s_tr / m;
  __syncthreads();
  // 5. Cholesky factor (lower, in place), a column at a time
  for (int j = 0; j < m; ++j) {
    if (tid == 0) {
      double d = M[j * m + j];
      for (int k = 0; k < j; ++k) d -= M[j * m + k] * M[j * m + k];
      s_d = M[j * m + j] = sqrt(d);
    }
    __syncthreads();
    for (int i = j + 1 + tid; i < m; i += FT) {
      double v = M[i * m + j];
      for (int k = 0; k < j; ++k) v -= M[i * m + k] * M[j * m + k];
      M[i * m + j] = v / s_d;
    }
    __syncthreads();
  }
  // 6. Y = M^-1 R, a thread per column
  for (int i = tid; i < hd; i += FT) {
    for (int r = 0; r < m; ++r) {
      double v = R[r * hd + i];
      for (int k = 0; k < r; ++k) v -= M[r * m + k] * R[k * hd + i];
      R[r * hd + i] = v / M[r * m + r];
    }
    for (int r = m - 1; r >= 0; --r) {
      double v = R[r * hd + i];
      for (int k = r + 1; k < m; ++k) v -= M[k * m + r] * R[k * hd + i];
      R[r * hd + i] = v / M[r * m + r];
    }
  }
  __syncthreads();
  // 7. V[S] += A_S^T Y
  for (int64_t idx = tid; idx < (int64_t)ns * hd; idx += FT) {
    const int k = (int)(idx / hd), i = (int)(idx % hd);
    double dv = 0;
    for (int r = 0; r < m; ++r) dv += (double)A[(int64_t)r * lda + k] * R[r * hd + i];
    addf(Vg + (int64_t)lst[k] * hd + i, (float)dv);
  }
}

}  // namespace

void fit_values(const ValueFit& f, const void* K, void* V, bool half_kv, int64_t N, int64_t P, const int32_t* list,
                const int32_t* count, float* A, int64_t lda, double* W, cudaStream_t s) {
  if (half_kv)
    fit_kernel<<<f.nkv, FT, 0, s>>>(f.qwin, f.owin, f.a, f.nh, f.nkv, f.hd, f.scale, f.softcap, f.lambda,
                                    (const __half*)K, (__half*)V, N, P, list, count, A, lda, W);
  else
    fit_kernel<<<f.nkv, FT, 0, s>>>(f.qwin, f.owin, f.a, f.nh, f.nkv, f.hd, f.scale, f.softcap, f.lambda,
                                    (const float*)K, (float*)V, N, P, list, count, A, lda, W);
  check_launch("fit_values");
}

}  // namespace headkv::cu
