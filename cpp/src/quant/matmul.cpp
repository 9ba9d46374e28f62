// matmul: decode (few tokens) = row-parallel multi-token vec_dot; prefill = weight panels
// dequantized to fp32 (packed [k][MR]) x packed activations ([k][NR]) with a 16x6 FMA micro-kernel.
// The inner kernels are the active CPU level's (common/cpu.h), fetched once per call.
#include <algorithm>
#include <vector>

#include "common/cpu.h"
#include "common/error.h"
#include "quant/kernels.h"
#include "quant/quant.h"

namespace headkv {
namespace {

constexpr int MR = qk::kMR, NR = qk::kNR;  // register tile: weight rows x tokens
constexpr int64_t MC = 256, KC = 256;  // rows per dequantized panel, K block
constexpr int64_t kGemmMinTok = 16;   // below this, the vec_dot path wins (measured)

void matmul_vec(const CpuKernels& ck, GGMLType t, const uint8_t* W, size_t rs, int64_t rows, int64_t K, const float* X,
                int64_t n_tok, float* Y, int64_t ldy, ThreadPool& pool) {
  const int64_t nch = K / 32;
  thread_local std::vector<float> xs;
  xs.resize((size_t)(n_tok * nch));
  for (int64_t j = 0; j < n_tok && nch > 0; ++j) qk::chunk_sums(X + j * K, K, xs.data() + j * nch);
  const float* xsp = nch > 0 ? xs.data() : nullptr;
  pool.parallel_for(rows, [&](int64_t r0, int64_t r1) {
    float out[4];
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t j0 = 0; j0 < n_tok; j0 += 4) {
        const int nt = (int)std::min<int64_t>(4, n_tok - j0);
        ck.dot_multi(t, W + r * rs, X + j0 * K, K, nt, K, out, xsp ? xsp + j0 * nch : nullptr);
        for (int j = 0; j < nt; ++j) Y[(j0 + j) * ldy + r] = out[j];
      }
  }, 16);
}

// Rows [mp0*MR, mp1*MR) x token groups [g0, g1) of the packed activations Xp.
void gemm_block(const CpuKernels& ck, GGMLType t, const uint8_t* W, size_t rs, int64_t rows, int64_t K, const float* Xp,
                int64_t n_tok, float* Y, int64_t ldy, int64_t mp0, int64_t mp1, int64_t g0, int64_t g1) {
  const int64_t ng = (n_tok + NR - 1) / NR;
  thread_local std::vector<float> wp, row;
  wp.resize((size_t)(MC * K));
  row.resize((size_t)(MR * 256));
  const size_t ts = type_traits(t).type_size;
  float tile[NR * MR];
  for (int64_t r0 = mp0 * MR; r0 < std::min(rows, mp1 * MR); r0 += MC) {
    const int64_t mc = std::min({MC, mp1 * MR - r0, ((rows - r0) + MR - 1) / MR * MR});
    // dequantize + pack wp[panel][k][MR]: 16 rows x 256 columns at a time through an L1 tile
    const int64_t bs = type_traits(t).block_size, step = 256;
    for (int64_t i0 = 0; i0 < mc; i0 += MR) {
      float* panel = wp.data() + (i0 / MR) * K * MR;
      for (int64_t c0 = 0; c0 < K; c0 += step) {
        const int64_t cn = std::min(step, K - c0);
        for (int i = 0; i < MR; ++i) {
          if (r0 + i0 + i < rows) ck.dequant_fast(t, W + (r0 + i0 + i) * rs + c0 / bs * ts, row.data() + i * step, cn);
          else std::fill(row.data() + i * step, row.data() + i * step + cn, 0.f);
        }
        for (int64_t k = 0; k < cn; ++k)
          for (int i = 0; i < MR; ++i) panel[(c0 + k) * MR + i] = row[i * step + k];
      }
    }
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
      const int64_t kc = std::min(KC, K - k0);
      for (int64_t g = g0; g < g1; ++g) {
        const float* b = Xp + k0 * ng * NR + g * kc * NR;
        const int64_t j0 = g * NR, nj = std::min<int64_t>(NR, n_tok - j0);
        for (int64_t i = 0; i < mc; i += MR) {
          const float* a = wp.data() + (i / MR) * K * MR + k0 * MR;
          const int64_t r = r0 + i, ni = std::min<int64_t>(MR, rows - r);
          float* C = Y + j0 * ldy + r;
          if (ni == MR && nj == NR) {
            ck.gemm_tile(kc, a, b, C, ldy, k0 > 0);
          } else {
            ck.gemm_tile(kc, a, b, tile, MR, false);
            for (int64_t j = 0; j < nj; ++j)
              for (int64_t ii = 0; ii < ni; ++ii)
                C[j * ldy + ii] = (k0 > 0 ? C[j * ldy + ii] : 0.f) + tile[j * MR + ii];
          }
        }
      }
    }
  }
}

void matmul_gemm(const CpuKernels& ck, GGMLType t, const uint8_t* W, size_t rs, int64_t rows, int64_t K, const float* X,
                 int64_t n_tok, float* Y, int64_t ldy, ThreadPool& pool) {
  const int64_t ng = (n_tok + NR - 1) / NR, nmp = (rows + MR - 1) / MR;
  thread_local std::vector<float> xp;
  xp.resize((size_t)(ng * K * NR));
  float* Xp = xp.data();
  // pack X per K block: Xp[k0 block][g][kk][NR], zero padded past n_tok
  pool.parallel_for(ng, [&](int64_t a, int64_t b) {
    for (int64_t g = a; g < b; ++g)
      for (int64_t k0 = 0; k0 < K; k0 += KC) {
        const int64_t kc = std::min(KC, K - k0);
        float* dst = Xp + k0 * ng * NR + g * kc * NR;
        for (int j = 0; j < NR; ++j) {
          const int64_t tok = g * NR + j;
          for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = tok < n_tok ? X[tok * K + k0 + k] : 0.f;
        }
      }
  });
  const int nt = pool.size();
  if (nmp >= 4 * nt || ng < nt) {  // split weight rows (each panel dequantized once)
    pool.parallel_for(nmp, [&](int64_t a, int64_t b) {
      gemm_block(ck, t, W, rs, rows, K, Xp, n_tok, Y, ldy, a, b, 0, ng);
    });
  } else {  // few rows, many tokens: split tokens
    pool.parallel_for(ng, [&](int64_t a, int64_t b) {
      gemm_block(ck, t, W, rs, rows, K, Xp, n_tok, Y, ldy, 0, nmp, a, b);
    });
  }
}

}  // namespace

void matmul(GGMLType t, const uint8_t* W, int64_t rows, int64_t K, const float* X, int64_t n_tok,
            float* Y, int64_t ldy, ThreadPool& pool) {
  if (!type_traits(t).supported) fail(ErrorKind::Unsupported, "matmul: unsupported tensor type " + type_name(t));
  const size_t rs = row_size(t, K);
  if (rows < 0 || n_tok < 0 || ldy < rows) fail(ErrorKind::InvalidArgument, "matmul: bad dimensions");
  if (rows == 0 || n_tok == 0) return;
  if (K == 0) {
    for (int64_t j = 0; j < n_tok; ++j) std::fill(Y + j * ldy, Y + j * ldy + rows, 0.f);
    return;
  }
  const CpuKernels& ck = cpu_kernels();
  if (n_tok < kGemmMinTok) matmul_vec(ck, t, W, rs, rows, K, X, n_tok, Y, ldy, pool);
  else matmul_gemm(ck, t, W, rs, rows, K, X, n_tok, Y, ldy, pool);
}

}  // namespace headkv
