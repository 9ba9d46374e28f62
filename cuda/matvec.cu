// Decode matrix-vector products on quantized weights. A warp computes 2 output rows, 4 lanes per
// 32-wide block (8 blocks per warp step), so every weight byte is read once and each x value
// loaded serves 2 rows. With NORM (single token), the block first stages RMSNorm(x) * w_norm in
// shared memory (sum of squares in double, as the CPU) and the dots read it from there; this
// fuses the norm into the projection that follows it. Rows may span up to 3 weight matrices of
// one type and width (Q, K, V in one launch); MV_ROPE ends a warp's row pair in rope_epilogue.
#include <cstdlib>
#include <string>

#include "common.cuh"
#include "kernels.cuh"
#include "matvec.cuh"
#include "quant.cuh"

namespace headkv::cu {

namespace {

// Row-per-warp kernel: 4 warps x 2 rows, x read through L1 (several tokens; NORM stages it).
constexpr int kWarpsN = 4, kRowsN = 2;

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
  const uint8_t* sr[kRowsPerWarp];
  const uint8_t* sr2[kRowsPerWarp];
  float* out[kRowsPerWarp];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int64_t r = min(row0 + i, a.rows - 1);
    int64_t local;
    const int s = mv_segment(a, r, &local);
    wr[i] = blk_q<F>(a.W[s], local, nb, 0);
    sr[i] = blk_s<F>(a.S[s], local, nb, 0);
    wr2[i] = MODE == MV_SWIGLU ? blk_q<F>(a.W2, local, nb, 0) : nullptr;
    sr2[i] = MODE == MV_SWIGLU ? blk_s<F>(a.S2, local, nb, 0) : nullptr;
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
    const size_t u = (unsigned)b / F::per;  // the block's unit and its place in it
    const int j = (unsigned)b % F::per;
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      F::part(wr[i] + u * F::qb, sr[i] + u * F::sb, j, p, w[i]);
      if constexpr (MODE == MV_SWIGLU) F::part(wr2[i] + u * F::qb, sr2[i] + u * F::sb, j, p, w2[i]);
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
  if constexpr (MODE == MV_ROPE) {  // one token, rows row0 and row0 + 1: a RoPE pair
    static_assert(kRowsPerWarp == 2 && NT == 1, "RoPE epilogue: one pair of rows per warp");
    if (lane == 0 && row0 + 1 < a.rows) {
      int64_t local;
      const int sg = mv_segment(a, row0, &local);
      rope_epilogue(a.rope, rope_meta(a.rope, sg, local), sg, local, acc[0][0] * scale, acc[1][0] * scale);
    }
    return;
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


template <class F, int MODE, bool NORM>
void launch(const MV& a, cudaStream_t s) {
  if (a.T == 1) {
    const size_t smem = NORM ? mv_norm_smem(a.cols) : 0;
    // 8 warps per block when the block stages RMSNorm(x), so fewer blocks re-read and reduce x; without
    // RMSNorm (output and down projections) 4 warps are faster (BENCHMARKS.md, History).
    constexpr int warps = NORM ? 8 : kWarpsN;
    auto k = matvec_kernel<F, MODE, 1, NORM, NORM, kRowsN, warps>;
    if constexpr (NORM) {
      static size_t attr = 48 * 1024;
      if (smem > attr) {
        check(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem), "matvec shared memory");
        attr = smem;
      }
    }
    // Launched normally: PDL launches, an L2 prefetch of the rows before the wait, a one-wave grid and
    // more blocks in flight per lane gained nothing or lost on 8B F16 (BENCHMARKS.md, History).
    k<<<(unsigned)cdiv(a.rows, kRowsN * warps), 32 * warps, smem, s>>>(a);
  } else if constexpr (MODE != MV_ROPE) {
    matvec_kernel<F, MODE, kMatvecMaxT, false, false, kRowsN, kWarpsN>
        <<<(unsigned)cdiv(a.rows, kRowsN * kWarpsN), 32 * kWarpsN, 0, s>>>(a);
  }
}

void run(const MV& a, int type, MatvecMode mode, bool norm, bool q8x, cudaStream_t s) {
  if (a.cols % 32) fail(ErrorKind::Unsupported, "CUDA backend: rows of " + std::to_string(a.cols) + " elements are not a multiple of 32");
  if (a.T < 1 || a.T > kMatvecMaxT || (norm && a.T != 1)) fail(ErrorKind::Internal, "matvec: bad token count");
  if (q8x && a.T == 1 && matvec_q8x(a, type, mode, norm, s)) return;
  const bool ok = dispatch_type(type, [&](auto f) {
    using F = decltype(f);
    if (mode == MV_STORE) norm ? launch<F, MV_STORE, true>(a, s) : launch<F, MV_STORE, false>(a, s);
    else if (mode == MV_ADD) launch<F, MV_ADD, false>(a, s);
    else if (mode == MV_ROPE) launch<F, MV_ROPE, true>(a, s);
    else norm ? launch<F, MV_SWIGLU, true>(a, s) : launch<F, MV_SWIGLU, false>(a, s);
  });
  if (!ok) fail(ErrorKind::Unsupported, "CUDA backend: weight type " + std::to_string(type) + " has no matvec kernel");
  check_launch("matvec");
}

MV base(const DW& w, const float* x, int64_t ldx, int64_t ldy, int T) {
  MV a{};
  a.cols = w.cols;
  a.x = x;
  a.ldx = ldx;
  a.ldy = ldy;
  a.T = T;
  return a;
}

// One token's RMSNorm(x) times up to 3 weights of one type and width, stacked as row segments.
MV norm_segments(const DW* ws, int n, float* const* ys, const float* x, const float* norm_w, float eps) {
  MV a = base(ws[0], x, ws[0].cols, 0, 1);
  int64_t end = 0;
  for (int i = 0; i < n; ++i) {
    a.W[i] = ws[i].data;
    a.S[i] = ws[i].sc;
    a.y[i] = ys[i];
    a.seg_end[i] = end += ws[i].rows;
  }
  a.rows = end;
  a.n_seg = n;
  a.norm_w = norm_w;
  a.eps = eps;
  return a;
}

// T tokens against one weight (and, for SwiGLU, the up projection w2 of its type and shape).
MV one_weight(const DW& w, const DW* w2, const float* x, int64_t ldx, float* y, int64_t ldy, int T, MatvecMode mode) {
  if (mode == MV_SWIGLU && (!w2 || w2->type != w.type || w2->rows != w.rows || w2->cols != w.cols))
    fail(ErrorKind::Internal, "matvec: SwiGLU weights must have one type and shape");
  MV a = base(w, x, ldx, ldy, T);
  a.W[0] = w.data;
  a.S[0] = w.sc;
  a.y[0] = y;
  a.seg_end[0] = a.rows = w.rows;
  a.n_seg = 1;
  a.W2 = w2 ? w2->data : nullptr;
  a.S2 = w2 ? w2->sc : nullptr;
  return a;
}

}  // namespace

void matvec(const DW& w, const DW* w2, const float* x, int64_t ldx, float* y, int64_t ldy, int T, MatvecMode mode,
            bool q8x, cudaStream_t s) {
  run(one_weight(w, w2, x, ldx, y, ldy, T, mode), w.type, mode, false, q8x, s);
}

bool matvec_rows_q8x(const DW& w, const DW* w2, const float* x, int64_t ldx, float* y, int64_t ldy, int T,
                     MatvecMode mode, cudaStream_t s) {
  return matvec_q8x_rows(one_weight(w, w2, x, ldx, y, ldy, T, mode), w.type, mode, s);
}

bool matvec_norm_fusable(const DW* ws, int n) {
  for (int i = 1; i < n; ++i)
    if (ws[i].type != ws[0].type || ws[i].cols != ws[0].cols) return false;
  return ws[0].cols % 4 == 0;
}

void matvec_norm(const DW* ws, int n, float* const* ys, const float* x, const float* norm_w, float eps, bool q8x,
                 cudaStream_t s) {
  if (n < 1 || n > 3 || !matvec_norm_fusable(ws, n)) fail(ErrorKind::Internal, "matvec_norm: bad segments");
  run(norm_segments(ws, n, ys, x, norm_w, eps), ws[0].type, MV_STORE, true, q8x, s);
}

bool matvec_qkv_rope(const DW* ws, const float* x, const float* norm_w, float eps, const RopeStore& r, bool q8x,
                     cudaStream_t s) {
  if (!matvec_norm_fusable(ws, 3) || r.T != 1 || !r.kh || !r.vh || !r.pos || r.kf || r.kfh || r.ring || r.hd % 2 ||
      ((r.tk != KVType::F16 || r.tv != KVType::F16) && (!r.kstage || !r.vstage || !r.qcount || r.hd % 32)) ||
      r.rope_dim % 2 || ws[0].rows != (int64_t)r.nh * r.hd || ws[1].rows != (int64_t)r.nkv * r.hd ||
      ws[2].rows != ws[1].rows)
    return false;
  float* const ys[3] = {r.q, nullptr, nullptr};  // K and V go to the arena (rope_epilogue)
  MV a = norm_segments(ws, 3, ys, x, norm_w, eps);
  a.rope = r;
  run(a, ws[0].type, MV_ROPE, true, q8x, s);
  return true;
}

void matvec_norm_swiglu(const DW& gate, const DW& up, const float* x, const float* norm_w, float eps, float* y,
                        bool q8x, cudaStream_t s) {
  if (gate.type != up.type || gate.rows != up.rows || gate.cols != up.cols || gate.cols % 4)
    fail(ErrorKind::Internal, "matvec_norm_swiglu: gate and up differ");
  MV a = base(gate, x, gate.cols, 0, 1);
  a.W[0] = gate.data;
  a.S[0] = gate.sc;
  a.y[0] = y;
  a.seg_end[0] = a.rows = gate.rows;
  a.n_seg = 1;
  a.W2 = up.data;
  a.S2 = up.sc;
  a.norm_w = norm_w;
  a.eps = eps;
  run(a, gate.type, MV_SWIGLU, true, q8x, s);
}

}  // namespace headkv::cu
