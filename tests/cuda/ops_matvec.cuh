// CUDA op checks (test_backend_ops.cu): decode matvecs of every weight type (fp32 and int8
// activations), embedding and dequantized rows, cuBLAS GEMM, against quant/quant.h's dequantize_row.
#pragma once
#include "model/ops.h"
#include "op_check.cuh"

namespace opcheck {

// ---- matvec (matvec.cu fp32 activations, matvec_q8x.cu int8) against dequantize_row + dot

inline void check_matvec(cudaStream_t st) {
  std::mt19937 rng(6);
  const int rows = 101;  // odd: the last warp's second row is past the end
  const float eps = 1e-5f;
  for (GGMLType t : kTypes)
    for (int cols : {512, 768}) {
      DevWeight w = upload_weight(t, rows, cols, rng), w2 = upload_weight(t, rows, cols, rng),
                w3 = upload_weight(t, 40, cols, rng);
      for (bool q8x : {false, true}) {
        if (q8x && !has_q8x(t)) continue;
        const double bound = q8x ? kInt8 : kDot;
        const char* xs = q8x ? "int8 x" : "fp32 x";
        // what the kernel multiplies the weights by: x, or (one token) x quantized to int8 blocks
        auto act = [&](const std::vector<float>& x) { return q8x ? q8_values(x.data(), nullptr, cols) : x; };
        // y = W x for T tokens (x rows ldx apart, y rows ldy apart); int8 activations: one token
        for (int T : {1, 5}) {
          if (q8x && T > 1) continue;
          const int64_t ldx = cols + 32, ldy = rows + 3;
          const std::vector<float> x = normal((size_t)T * ldx, rng);
          const std::vector<double> ref = ref_matvec(w.deq, rows, cols, act(x).data(), q8x ? cols : ldx, T);
          cu::DBuf<float> dx = to_dev(x, "x"), dy = dev_zeros<float>((size_t)T * ldy, "y");
          cu::matvec(w.w, nullptr, dx.get(), ldx, dy.get(), ldy, T, cu::MV_STORE, q8x, st);
          sync(st, "matvec");
          const std::vector<float> y = to_host(dy, (size_t)T * ldy, "y");
          std::vector<float> got;
          for (int tt = 0; tt < T; ++tt)
            for (int r = 0; r < rows; ++r) got.push_back(y[tt * ldy + r]);
          report("matvec", fmt("%s %dx%d T=%d %s", tname(t), rows, cols, T, xs), nmax_err(got, ref), bound);
        }
        if (cols != 512) continue;
        {  // y += W x
          const int T = q8x ? 1 : 2;
          const std::vector<float> x = normal((size_t)T * cols, rng), y0 = normal((size_t)T * rows, rng, 0.5f);
          const std::vector<double> wx = ref_matvec(w.deq, rows, cols, act(x).data(), cols, T);
          std::vector<double> ref(wx.size());
          for (size_t i = 0; i < ref.size(); ++i) ref[i] = wx[i] + y0[i];
          cu::DBuf<float> dx = to_dev(x, "x"), dy = to_dev(y0, "y");
          cu::matvec(w.w, nullptr, dx.get(), cols, dy.get(), rows, T, cu::MV_ADD, q8x, st);
          sync(st, "matvec add");
          report("matvec add", fmt("%s %dx%d T=%d %s", tname(t), rows, cols, T, xs),
                 nmax_err(to_host(dy, ref.size(), "y"), ref), bound);
        }
        for (int T : {1, 3}) {  // y = silu(W x) * (W2 x)
          if (q8x && T > 1) continue;
          const std::vector<float> x = normal((size_t)T * cols, rng);
          const std::vector<double> a = ref_matvec(w.deq, rows, cols, act(x).data(), cols, T),
                                    b = ref_matvec(w2.deq, rows, cols, act(x).data(), cols, T);
          std::vector<float> ref(a.size());
          for (size_t i = 0; i < ref.size(); ++i) ref[i] = headkv::silu((float)a[i]) * (float)b[i];
          cu::DBuf<float> dx = to_dev(x, "x"), dy = dev_zeros<float>(ref.size(), "y");
          cu::matvec(w.w, &w2.w, dx.get(), cols, dy.get(), rows, T, cu::MV_SWIGLU, q8x, st);
          sync(st, "matvec swiglu");
          report("matvec swiglu", fmt("%s %dx%d T=%d %s", tname(t), rows, cols, T, xs),
                 nmax_err(to_host(dy, ref.size(), "y"), ref), bound);
        }
        const std::vector<float> x = normal(cols, rng, 1.0f, 0.2f), nw = normal(cols, rng, 0.3f, 1.0f);
        std::vector<float> xn(cols);
        headkv::rms_norm(x.data(), nw.data(), xn.data(), cols, eps);
        // RMSNorm fused: the CPU's normalized x, or x times the norm weight in int8 blocks with
        // 1/rms applied to the dot products (as the int8 kernel does)
        const std::vector<float> xin = q8x ? q8_values(x.data(), nw.data(), cols) : xn;
        const double s = q8x ? rms_scale(x.data(), cols, eps) : 1.0;
        auto norm_dot = [&](const DevWeight& dw, int64_t n_rows) {
          std::vector<double> y = ref_matvec(dw.deq, n_rows, cols, xin.data(), cols, 1);
          for (double& v : y) v *= s;
          return y;
        };
        cu::DBuf<float> dx = to_dev(x, "x"), dnw = to_dev(nw, "norm");
        {  // RMSNorm fused, three row segments (Q, K, V of one type)
          const cu::DW ws[3] = {w.w, w2.w, w3.w};
          const DevWeight* hw[3] = {&w, &w2, &w3};
          cu::DBuf<float> ys[3];
          float* yp[3];
          for (int i = 0; i < 3; ++i) {
            ys[i] = dev_zeros<float>(ws[i].rows, "y");
            yp[i] = ys[i].get();
          }
          cu::matvec_norm(ws, 3, yp, dx.get(), dnw.get(), eps, q8x, st);
          sync(st, "matvec_norm");
          std::vector<float> got;
          std::vector<double> ref;
          for (int i = 0; i < 3; ++i) {
            const std::vector<float> g = to_host(ys[i], ws[i].rows, "y");
            const std::vector<double> r = norm_dot(*hw[i], ws[i].rows);
            got.insert(got.end(), g.begin(), g.end());
            ref.insert(ref.end(), r.begin(), r.end());
          }
          report("matvec_norm", fmt("%s rows %d|%d|40 x %d %s", tname(t), rows, rows, cols, xs), nmax_err(got, ref),
                 bound);
        }
        {  // RMSNorm fused, SwiGLU
          const std::vector<double> a = norm_dot(w, rows), b = norm_dot(w2, rows);
          std::vector<float> ref(rows);
          for (int i = 0; i < rows; ++i) ref[i] = headkv::silu((float)a[i]) * (float)b[i];
          cu::DBuf<float> dy = dev_zeros<float>(rows, "y");
          cu::matvec_norm_swiglu(w.w, w2.w, dx.get(), dnw.get(), eps, dy.get(), q8x, st);
          sync(st, "matvec_norm_swiglu");
          report("matvec_norm_swiglu", fmt("%s %dx%d %s", tname(t), rows, cols, xs),
                 nmax_err(to_host(dy, rows, "y"), ref), bound);
        }
      }
    }
}

// ---- several tokens with int8 activations: matvec_rows_q8x (a batched decode step's rows, up to 8)
// and matmul_mma_q8 (int8 tensor cores, from 9 rows), each token's x quantized on its own, against
// dequantize_row + dot of those values

// T tokens (rows of ldx floats) through `launch(dx, ldx, dy, ldy)`, which returns false when it launched
// nothing; reported against the reference, and the rows between ldy's would-be outputs must stay as
// they were.
template <class Launch>
inline void check_int8_rows(const char* op, GGMLType t, const DevWeight& w, const DevWeight& w2, int rows, int cols,
                            int T, cu::MatvecMode mode, std::mt19937& rng, cudaStream_t st, Launch launch) {
  const int64_t ldx = cols + 32, ldy = rows + 3;
  const std::vector<float> x = normal((size_t)T * ldx, rng), y0 = normal((size_t)T * ldy, rng, 0.5f);
  std::vector<float> xq;  // token by token, as the kernels quantize them
  for (int tt = 0; tt < T; ++tt) {
    const std::vector<float> q = q8_values(x.data() + tt * ldx, nullptr, cols);
    xq.insert(xq.end(), q.begin(), q.end());
  }
  const std::vector<double> a = ref_matvec(w.deq, rows, cols, xq.data(), cols, T),
                            b = ref_matvec(w2.deq, rows, cols, xq.data(), cols, T);
  std::vector<double> ref;
  for (int tt = 0; tt < T; ++tt)
    for (int r = 0; r < rows; ++r) {
      const double v = a[(size_t)tt * rows + r];
      ref.push_back(mode == cu::MV_STORE ? v
                    : mode == cu::MV_ADD ? v + y0[tt * ldy + r]
                                         : headkv::silu((float)v) * (float)b[(size_t)tt * rows + r]);
    }
  cu::DBuf<float> dx = to_dev(x, "x"), dy = to_dev(y0, "y");
  const char* what = mode == cu::MV_STORE ? "store" : mode == cu::MV_ADD ? "add" : "swiglu";
  if (!launch(dx.get(), ldx, dy.get(), ldy)) {
    report_error(op, fmt("%s %dx%d T=%d %s", tname(t), rows, cols, T, what), "not launched");
    return;
  }
  sync(st, op);
  const std::vector<float> y = to_host(dy, (size_t)T * ldy, "y");
  std::vector<float> got;
  bool pad_kept = true;
  for (int tt = 0; tt < T; ++tt) {
    for (int r = 0; r < rows; ++r) got.push_back(y[tt * ldy + r]);
    for (int r = rows; r < ldy; ++r) pad_kept = pad_kept && y[tt * ldy + r] == y0[tt * ldy + r];
  }
  report(op, fmt("%s %dx%d T=%d %s int8 x", tname(t), rows, cols, T, what), pad_kept ? nmax_err(got, ref) : 1.0,
         kInt8);
}

inline void check_matvec_rows(cudaStream_t st) {
  std::mt19937 rng(16);
  const int rows = 101;
  for (GGMLType t : kTypes) {
    if (!has_q8x(t)) continue;
    for (int cols : {512, 1536}) {
      DevWeight w = upload_weight(t, rows, cols, rng), w2 = upload_weight(t, rows, cols, rng);
      for (cu::MatvecMode mode : {cu::MV_STORE, cu::MV_ADD, cu::MV_SWIGLU})
        for (int T : {2, 3, 5, 8})
          check_int8_rows("matvec rows", t, w, w2, rows, cols, T, mode, rng, st,
                          [&](const float* x, int64_t ldx, float* y, int64_t ldy) {
                            return cu::matvec_rows_q8x(w.w, &w2.w, x, ldx, y, ldy, T, mode, st);
                          });
    }
  }
}

// The rows past a multiple of 16 and the tokens past a multiple of 8 exercise the edges; T picks each
// token-tile count (1, 2, 4, 8 tiles of 8).
inline void check_matmul_mma(cudaStream_t st) {
  std::mt19937 rng(17);
  const int rows = 101;
  for (GGMLType t : {GGMLType::Q4_0, GGMLType::Q4_1, GGMLType::Q8_0})
    for (int cols : {512, 576, 1536}) {  // 576: 18 blocks, a run of U = 4 cut short
      DevWeight w = upload_weight(t, rows, cols, rng), w2 = upload_weight(t, rows, cols, rng);
      cu::DBuf<uint8_t> scratch = dev_zeros<uint8_t>(cu::matmul_mma_q8_scratch(cols, cu::kMmaMaxT), "scratch");
      for (cu::MatvecMode mode : {cu::MV_STORE, cu::MV_ADD, cu::MV_SWIGLU})
        for (int T : {1, 9, 16, 20, 33, 64})
          check_int8_rows("matmul mma", t, w, w2, rows, cols, T, mode, rng, st,
                          [&](const float* x, int64_t ldx, float* y, int64_t ldy) {
                            return cu::matmul_mma_q8(w.w, &w2.w, x, ldx, y, ldy, T, mode, scratch.get(), st);
                          });
    }
}

// ---- weight rows and GEMM (gemm.cu): embedding lookup, the prefill's dequantization, cuBLAS

inline void check_rows(cudaStream_t st) {
  std::mt19937 rng(7);
  const int rows = 50, cols = 512;
  for (GGMLType t : kTypes) {
    DevWeight w = upload_weight(t, rows, cols, rng);
    const std::vector<int32_t> ids = {0, 49, 7, 7, 23};
    const int64_t T = (int64_t)ids.size();
    cu::DBuf<int32_t> dids = to_dev(ids, "ids");
    cu::DBuf<float> out = dev_zeros<float>((size_t)T * cols, "rows");
    cu::embed_rows(w.w, dids.get(), T, out.get(), st);
    sync(st, "embed_rows");
    std::vector<float> ref;
    for (int32_t id : ids) ref.insert(ref.end(), w.deq.begin() + (size_t)id * cols, w.deq.begin() + (size_t)(id + 1) * cols);
    report("embed_rows", fmt("%s ids 0,49,7,7,23 of %dx%d", tname(t), rows, cols),
           nmax_err(to_host(out, ref.size(), "rows"), ref), kExact);

    const int64_t r0 = 3, n = 20;
    const std::vector<float> dref(w.deq.begin() + r0 * cols, w.deq.begin() + (r0 + n) * cols);
    cu::DBuf<float> o32 = dev_zeros<float>(dref.size(), "rows");
    cu::DBuf<uint16_t> o16 = dev_zeros<uint16_t>(dref.size(), "rows");
    cu::dequant_rows(w.w, r0, n, o32.get(), false, st);
    cu::dequant_rows(w.w, r0, n, o16.get(), true, st);
    sync(st, "dequant_rows");
    report("dequant_rows", fmt("%s rows 3..22 of %dx%d -> fp32", tname(t), rows, cols),
           nmax_err(to_host(o32, dref.size(), "rows"), dref), kExact);
    report("dequant_rows", fmt("%s rows 3..22 of %dx%d -> fp16", tname(t), rows, cols),
           nmax_err(from_f16(to_host(o16, dref.size(), "rows")), dref), kHalf);
  }
}

// cuBLAS through gemm.cu (the prefill's projections): C[t][r] = sum_c A[r][c] B[t][c] + beta C[t][r],
// fp32 (pedantic) or fp16 inputs with fp32 accumulation; C's padding columns stay as they were.
inline void check_gemm(cudaStream_t st) {
  cu::blas_init(st);  // Unsupported without libcublas: reported as this op's error
  std::mt19937 rng(12);
  const int64_t m = 200, n = 37, k = 512, ldc = m + 8;
  for (bool half : {false, true})
    for (float beta : {0.0f, 1.0f}) {
      const std::vector<float> A = normal(m * k, rng), B = normal(n * k, rng), C0 = normal(n * ldc, rng, 0.5f);
      const std::vector<uint16_t> Ah = to_f16(A), Bh = to_f16(B);
      const std::vector<float> Ar = half ? from_f16(Ah) : A, Br = half ? from_f16(Bh) : B;
      std::vector<double> ref(C0.begin(), C0.end());
      for (int64_t t = 0; t < n; ++t)
        for (int64_t r = 0; r < m; ++r) {
          double acc = 0.0;
          for (int64_t c = 0; c < k; ++c) acc += (double)Ar[r * k + c] * Br[t * k + c];
          ref[t * ldc + r] = acc + beta * (double)C0[t * ldc + r];
        }
      cu::DBuf<float> a32 = to_dev(A, "A"), b32 = to_dev(B, "B"), dc = to_dev(C0, "C");
      cu::DBuf<uint16_t> a16 = to_dev(Ah, "A"), b16 = to_dev(Bh, "B");
      cu::gemm_nt(half ? (const void*)a16.get() : a32.get(), half ? (const void*)b16.get() : b32.get(), dc.get(), m, n,
                  k, ldc, beta, half, st);
      sync(st, "gemm_nt");
      report("gemm_nt", fmt("%lldx%lld x %lldx%lld ldc %lld beta %g %s", (long long)m, (long long)k, (long long)n,
                            (long long)k, (long long)ldc, beta, half ? "fp16 in" : "fp32 in"),
             nmax_err(to_host(dc, C0.size(), "C"), ref), half ? kAttn : kDot);
    }
}

}  // namespace opcheck
