// Decode matrix-vector products on quantized weights. A warp computes 2 output rows, 4 lanes per
// 32-wide block (8 blocks per warp step), so every weight byte is read once and each x value
// loaded serves 2 rows. With NORM (single token), the block first stages RMSNorm(x) * w_norm in
// shared memory (sum of squares in double, as the CPU) and the dots read it from there; this
// fuses the norm into the projection that follows it. Rows may span up to 3 weight matrices of
// one type and width (Q, K, V in one launch).
#include <cstdlib>
#include <string>

#include "common.cuh"
#include "kernels.cuh"
#include "quant.cuh"

namespace headkv::cu {

namespace {

// Row-per-warp kernel: 4 warps x 2 rows, x read through L1 (several tokens; NORM stages it).
constexpr int kWarpsN = 4, kRowsN = 2;

struct MV {
  const uint8_t* W[3];
  float* y[3];
  int64_t seg_end[3];  // cumulative row counts
  int n_seg;
  const uint8_t* W2;   // SwiGLU: the up projection (one segment)
  size_t row_bytes;
  int64_t rows, cols;
  const float* x;
  int64_t ldx, ldy;
  int T;
  const float* norm_w;
  float eps;
};

template <class F, int MODE, int NT, bool NORM, bool STAGE, int kRowsPerWarp, int kWarps>
__global__ void __launch_bounds__(32 * kWarps) matvec_kernel(MV a) {
  extern __shared__ float xs[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int nb = (int)(a.cols / 32);
  float scale = 1.0f;
  if (NORM) {
    __shared__ double red[kWarps];
    double ss = 0.0;
    for (int64_t c = threadIdx.x * 4; c < a.cols; c += 32 * kWarps * 4) {
      const float4 v = *reinterpret_cast<const float4*>(a.x + c);
      const float4 w = *reinterpret_cast<const float4*>(a.norm_w + c);
      ss += (double)v.x * v.x + (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
      *reinterpret_cast<float4*>(xs + c) = make_float4(v.x * w.x, v.y * w.y, v.z * w.z, v.w * w.w);
    }
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (lane == 0) red[warp] = ss;
    __syncthreads();
    double tot = 0.0;
    for (int w = 0; w < kWarps; ++w) tot += red[w];
    scale = 1.0f / sqrtf((float)(tot / a.cols) + a.eps);
  } else if (STAGE) {
    for (int64_t c = threadIdx.x * 4; c < a.cols; c += 32 * kWarps * 4)
      *reinterpret_cast<float4*>(xs + c) = *reinterpret_cast<const float4*>(a.x + c);
    __syncthreads();
  }
  const int64_t row0 = ((int64_t)blockIdx.x * kWarps + warp) * kRowsPerWarp;
  if (row0 >= a.rows) return;
  const uint8_t* wr[kRowsPerWarp];
  const uint8_t* wr2[kRowsPerWarp];
  float* out[kRowsPerWarp];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int64_t r = min(row0 + i, a.rows - 1);
    int s = 0;
    while (s + 1 < a.n_seg && r >= a.seg_end[s]) ++s;
    const int64_t local = r - (s ? a.seg_end[s - 1] : 0);
    wr[i] = a.W[s] + local * a.row_bytes;
    wr2[i] = MODE == MV_SWIGLU ? a.W2 + local * a.row_bytes : nullptr;
    out[i] = a.y[s] + local;
  }
  const int p = lane & 3, odd = (lane >> 2) & 1;
  // Blocks of odd index read their two x halves in the other order: a quarter warp then covers
  // 8 distinct 16-byte bank groups (no shared-memory bank conflicts).
  const int oa = odd ? F::off1(p) : F::off0(p), ob = odd ? F::off0(p) : F::off1(p);
  const float* xsrc = STAGE ? xs : a.x;
  float acc[kRowsPerWarp][NT], acc2[kRowsPerWarp][NT];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i)
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[i][t] = acc2[i][t] = 0.0f;
#pragma unroll 2
  for (int b = lane >> 2; b < nb; b += 8) {
    float w[kRowsPerWarp][8], w2[kRowsPerWarp][8];
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      F::part(wr[i] + (size_t)b * F::bytes, p, w[i]);
      if constexpr (MODE == MV_SWIGLU) F::part(wr2[i] + (size_t)b * F::bytes, p, w2[i]);
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      if (t < a.T) {
        const float* xb = xsrc + t * a.ldx + (int64_t)b * 32;
        const float4 va = *reinterpret_cast<const float4*>(xb + oa);
        const float4 vb = *reinterpret_cast<const float4*>(xb + ob);
        const float4 lo = odd ? vb : va, hi = odd ? va : vb;
#pragma unroll
        for (int i = 0; i < kRowsPerWarp; ++i) {
          acc[i][t] += w[i][0] * lo.x + w[i][1] * lo.y + w[i][2] * lo.z + w[i][3] * lo.w + w[i][4] * hi.x +
                       w[i][5] * hi.y + w[i][6] * hi.z + w[i][7] * hi.w;
          if constexpr (MODE == MV_SWIGLU)
            acc2[i][t] += w2[i][0] * lo.x + w2[i][1] * lo.y + w2[i][2] * lo.z + w2[i][3] * lo.w + w2[i][4] * hi.x +
                          w2[i][5] * hi.y + w2[i][6] * hi.z + w2[i][7] * hi.w;
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i)
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        acc[i][t] += __shfl_xor_sync(0xffffffffu, acc[i][t], o);
        if constexpr (MODE == MV_SWIGLU) acc2[i][t] += __shfl_xor_sync(0xffffffffu, acc2[i][t], o);
      }
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      if (row0 + i >= a.rows) continue;
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        if (t < a.T) {
          float* o = out[i] + t * a.ldy;
          const float v = acc[i][t] * scale;
          if (MODE == MV_STORE) *o = v;
          else if (MODE == MV_ADD) *o += v;
          else {
            const float u = acc2[i][t] * scale;
            *o = v / (1.0f + expf(-v)) * u;
          }
        }
      }
    }
  }
}


// x-stationary single-token kernel: a block of 256 threads owns kXsRows rows; each thread keeps
// its share of x (parts q = tid + i*256 of 8 elements, RMSNorm and w_norm applied) in registers,
// loaded once, and streams the rows' weights against it: x is read once per kXsRows rows and
// every thread has kXsRows * parts independent weight loads in flight.
constexpr int kXsThreads = 256, kXsRows = 8;

template <class F, int MODE, bool NORM, int NP>
__global__ void __launch_bounds__(kXsThreads) matvec_xs_kernel(MV a) {
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int64_t nparts = a.cols / 8;
  float xr[NP][8];
  double ss = 0.0;
#pragma unroll
  for (int i = 0; i < NP; ++i) {
    const int64_t q = tid + (int64_t)i * kXsThreads;
    if (q < nparts) {
      const int64_t b = q / 4;
      const int p = (int)(q % 4);
      const float* xb = a.x + b * 32;
      const float4 lo = *reinterpret_cast<const float4*>(xb + F::off0(p));
      const float4 hi = *reinterpret_cast<const float4*>(xb + F::off1(p));
      float v[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
      if (NORM) {
        const float4 wl = *reinterpret_cast<const float4*>(a.norm_w + b * 32 + F::off0(p));
        const float4 wh = *reinterpret_cast<const float4*>(a.norm_w + b * 32 + F::off1(p));
        const float w[8] = {wl.x, wl.y, wl.z, wl.w, wh.x, wh.y, wh.z, wh.w};
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          ss += (double)v[j] * v[j];
          v[j] *= w[j];
        }
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) xr[i][j] = v[j];
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) xr[i][j] = 0.0f;
    }
  }
  __shared__ double dred[kXsThreads / 32];
  __shared__ float red[kXsThreads / 32][kXsRows], red2[kXsThreads / 32][kXsRows];
  float scale = 1.0f;
  if (NORM) {
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (lane == 0) dred[warp] = ss;
    __syncthreads();
    double tot = 0.0;
    for (int w = 0; w < kXsThreads / 32; ++w) tot += dred[w];
    scale = 1.0f / sqrtf((float)(tot / a.cols) + a.eps);
  }
  const int64_t row0 = (int64_t)blockIdx.x * kXsRows;
  float acc[kXsRows], acc2[kXsRows];
#pragma unroll
  for (int r = 0; r < kXsRows; ++r) {
    acc[r] = acc2[r] = 0.0f;
    const int64_t row = min(row0 + r, a.rows - 1);
    int s = 0;
    while (s + 1 < a.n_seg && row >= a.seg_end[s]) ++s;
    const int64_t local = row - (s ? a.seg_end[s - 1] : 0);
    const uint8_t* wr = a.W[s] + local * a.row_bytes;
    const uint8_t* wr2 = MODE == MV_SWIGLU ? a.W2 + local * a.row_bytes : nullptr;
#pragma unroll
    for (int i = 0; i < NP; ++i) {
      const int64_t q = tid + (int64_t)i * kXsThreads;
      if (q < nparts) {
        float w[8];
        F::part(wr + (q / 4) * F::bytes, (int)(q % 4), w);
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[r] += w[j] * xr[i][j];
        if constexpr (MODE == MV_SWIGLU) {
          F::part(wr2 + (q / 4) * F::bytes, (int)(q % 4), w);
#pragma unroll
          for (int j = 0; j < 8; ++j) acc2[r] += w[j] * xr[i][j];
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kXsRows; ++r)
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], o);
      if constexpr (MODE == MV_SWIGLU) acc2[r] += __shfl_xor_sync(0xffffffffu, acc2[r], o);
    }
  if (lane == 0)
#pragma unroll
    for (int r = 0; r < kXsRows; ++r) {
      red[warp][r] = acc[r];
      red2[warp][r] = acc2[r];
    }
  __syncthreads();
  if (tid < kXsRows && row0 + tid < a.rows) {
    float v = 0.0f, u = 0.0f;
    for (int w = 0; w < kXsThreads / 32; ++w) {
      v += red[w][tid];
      u += red2[w][tid];
    }
    v *= scale;
    const int64_t row = row0 + tid;
    int s = 0;
    while (s + 1 < a.n_seg && row >= a.seg_end[s]) ++s;
    float* o = a.y[s] + (row - (s ? a.seg_end[s - 1] : 0));
    if (MODE == MV_STORE) *o = v;
    else if (MODE == MV_ADD) *o += v;
    else *o = v / (1.0f + expf(-v)) * (u * scale);
  }
}

template <class F, int MODE, bool NORM>
bool launch_xs(const MV& a, cudaStream_t s) {
  const int64_t np = cdiv(a.cols / 8, kXsThreads);
  const unsigned grid = (unsigned)cdiv(a.rows, kXsRows);
  switch (np) {
    case 1: matvec_xs_kernel<F, MODE, NORM, 1><<<grid, kXsThreads, 0, s>>>(a); return true;
    case 2: matvec_xs_kernel<F, MODE, NORM, 2><<<grid, kXsThreads, 0, s>>>(a); return true;
    case 3: case 4: matvec_xs_kernel<F, MODE, NORM, 4><<<grid, kXsThreads, 0, s>>>(a); return true;
    case 5: case 6: case 7: case 8: matvec_xs_kernel<F, MODE, NORM, 8><<<grid, kXsThreads, 0, s>>>(a); return true;
    default: return false;
  }
}

// Single tokens use the row-per-warp kernel (231 t/s vs 188 for the x-stationary one on the 8B
// Q4_0 file, H100, 2026-11-24); HEADKV_MATVEC=xs selects the x-stationary kernel (comparisons).
bool use_xs() {
  static const bool xs = [] {
    const char* e = std::getenv("HEADKV_MATVEC");
    return e && std::string(e) == "xs";
  }();
  return xs;
}

template <class F, int MODE, bool NORM>
void launch(const MV& a, cudaStream_t s) {
  if (a.T == 1 && use_xs() && launch_xs<F, MODE, NORM>(a, s)) return;
  if (a.T == 1) {
    const size_t smem = NORM ? (size_t)a.cols * sizeof(float) : 0;
    auto k = matvec_kernel<F, MODE, 1, NORM, NORM, kRowsN, kWarpsN>;
    if constexpr (NORM) {
      static size_t attr = 48 * 1024;
      if (smem > attr) {
        check(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem), "matvec shared memory");
        attr = smem;
      }
    }
    k<<<(unsigned)cdiv(a.rows, kRowsN * kWarpsN), 32 * kWarpsN, smem, s>>>(a);
  } else {
    matvec_kernel<F, MODE, kMatvecMaxT, false, false, kRowsN, kWarpsN>
        <<<(unsigned)cdiv(a.rows, kRowsN * kWarpsN), 32 * kWarpsN, 0, s>>>(a);
  }
}

void run(const MV& a, int type, MatvecMode mode, bool norm, cudaStream_t s) {
  if (a.cols % 32) fail(ErrorKind::Unsupported, "CUDA backend: rows of " + std::to_string(a.cols) + " elements are not a multiple of 32");
  if (a.T < 1 || a.T > kMatvecMaxT || (norm && a.T != 1)) fail(ErrorKind::Internal, "matvec: bad token count");
  const bool ok = dispatch_type(type, [&](auto f) {
    using F = decltype(f);
    if (mode == MV_STORE) norm ? launch<F, MV_STORE, true>(a, s) : launch<F, MV_STORE, false>(a, s);
    else if (mode == MV_ADD) launch<F, MV_ADD, false>(a, s);
    else norm ? launch<F, MV_SWIGLU, true>(a, s) : launch<F, MV_SWIGLU, false>(a, s);
  });
  if (!ok) fail(ErrorKind::Unsupported, "CUDA backend: weight type " + std::to_string(type) + " has no matvec kernel");
  check_launch("matvec");
}

MV base(const DW& w, const float* x, int64_t ldx, int64_t ldy, int T) {
  MV a{};
  a.row_bytes = w.row_bytes;
  a.cols = w.cols;
  a.x = x;
  a.ldx = ldx;
  a.ldy = ldy;
  a.T = T;
  return a;
}

}  // namespace

void matvec(const DW& w, const DW* w2, const float* x, int64_t ldx, float* y, int64_t ldy, int T, MatvecMode mode,
            cudaStream_t s) {
  if (mode == MV_SWIGLU && (!w2 || w2->type != w.type || w2->rows != w.rows || w2->cols != w.cols))
    fail(ErrorKind::Internal, "matvec: SwiGLU weights must have one type and shape");
  MV a = base(w, x, ldx, ldy, T);
  a.W[0] = w.data;
  a.y[0] = y;
  a.seg_end[0] = a.rows = w.rows;
  a.n_seg = 1;
  a.W2 = w2 ? w2->data : nullptr;
  run(a, w.type, mode, false, s);
}

bool matvec_norm_fusable(const DW* ws, int n) {
  for (int i = 1; i < n; ++i)
    if (ws[i].type != ws[0].type || ws[i].cols != ws[0].cols || ws[i].row_bytes != ws[0].row_bytes) return false;
  return ws[0].cols % 4 == 0;
}

void matvec_norm(const DW* ws, int n, float* const* ys, const float* x, const float* norm_w, float eps, cudaStream_t s) {
  if (n < 1 || n > 3 || !matvec_norm_fusable(ws, n)) fail(ErrorKind::Internal, "matvec_norm: bad segments");
  MV a = base(ws[0], x, ws[0].cols, 0, 1);
  int64_t end = 0;
  for (int i = 0; i < n; ++i) {
    a.W[i] = ws[i].data;
    a.y[i] = ys[i];
    a.seg_end[i] = end += ws[i].rows;
  }
  a.rows = end;
  a.n_seg = n;
  a.norm_w = norm_w;
  a.eps = eps;
  run(a, ws[0].type, MV_STORE, true, s);
}

void matvec_norm_swiglu(const DW& gate, const DW& up, const float* x, const float* norm_w, float eps, float* y,
                        cudaStream_t s) {
  if (gate.type != up.type || gate.rows != up.rows || gate.cols != up.cols || gate.cols % 4)
    fail(ErrorKind::Internal, "matvec_norm_swiglu: gate and up differ");
  MV a = base(gate, x, gate.cols, 0, 1);
  a.W[0] = gate.data;
  a.y[0] = y;
  a.seg_end[0] = a.rows = gate.rows;
  a.n_seg = 1;
  a.W2 = up.data;
  a.norm_w = norm_w;
  a.eps = eps;
  run(a, gate.type, MV_SWIGLU, true, s);
}

}  // namespace headkv::cu
