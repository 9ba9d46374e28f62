// CPU kernel levels and runtime dispatch.
//
// The hot CPU kernels (fp32 vector helpers in common/simd_isa.cpp, weight kernels in
// quant/kernels_isa.cpp) are compiled once per level with that level's target flags, each copy in
// its own namespace (isa_baseline, isa_avx2, isa_avx512). At first use the best level this CPU runs
// is chosen, or the one named by the environment variable HEADKV_CPU (baseline | avx2 | avx512).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "quant/types.h"

namespace headkv {

enum class CpuLevel { Baseline = 0, AVX2 = 1, AVX512 = 2 };

// The kernels of one level. Preconditions are those of the wrappers in common/simd.h and
// quant/kernels.h; dot_multi needs xs (chunk sums) for every block type with a min term.
struct CpuKernels {
  CpuLevel level;
  float (*dot_f32)(const float* a, const float* b, int64_t n);
  void (*axpy_f32)(float* y, float a, const float* x, int64_t n);
  double (*exp_shift_sum)(float* x, int64_t n, float mx);
  void (*dot_rows_f32)(const float* q, const float* K, int64_t ld, int64_t n, int64_t m, float* out);
  void (*weighted_rows_f32)(const float* p, const float* V, int64_t ld, int64_t n, int64_t m, float* out);
  void (*dot_multi)(GGMLType t, const uint8_t* w, const float* x, int64_t ldx, int nt, int64_t n, float* out,
                    const float* xs);
  void (*dequant_fast)(GGMLType t, const uint8_t* w, float* y, int64_t n);
  void (*gemm_tile)(int64_t kc, const float* a, const float* b, float* C, int64_t ldc, bool accum);
  void (*dot_rows_f16)(const float* q, const uint16_t* K, int64_t ld, int64_t n, int64_t m, float* out);
  void (*weighted_rows_f16)(const float* p, const uint16_t* V, int64_t ld, int64_t n, int64_t m, float* out);
  void (*f32_to_f16_row)(const float* x, uint16_t* y, int64_t n);
  void (*dot_rows_q8_0)(const float* q, int64_t nq, int64_t ldq, const uint8_t* K, int64_t ld, int64_t n, int64_t m,
                        float* out, int64_t ldo);
  void (*weighted_rows_q8_0)(const float* p, int64_t nq, int64_t ldp, const uint8_t* V, int64_t ld, int64_t n,
                             int64_t m, float* out, int64_t ldo);
  void (*dot_rows_q4_0)(const float* q, int64_t nq, int64_t ldq, const uint8_t* K, int64_t ld, int64_t n, int64_t m,
                        float* out, int64_t ldo);
  void (*weighted_rows_q4_0)(const float* p, int64_t nq, int64_t ldp, const uint8_t* V, int64_t ld, int64_t n,
                             int64_t m, float* out, int64_t ldo);
};

const char* cpu_level_name(CpuLevel level);
// Levels this build has and this CPU can run, lowest first (baseline is always there).
std::vector<CpuLevel> cpu_levels();
// The active kernels. The first call picks them (HEADKV_CPU or the best level); an unknown
// HEADKV_CPU value throws Error(InvalidArgument), a level this CPU or build lacks Error(Unsupported).
const CpuKernels& cpu_kernels();
// Switches the active kernels to a level by name, or "auto" for the best one (tests compare levels
// in one process); same errors as above.
// Not to be called while kernels run on other threads.
void set_cpu_level(const std::string& name);
// Kernels of one level, or nullptr when this build lacks it or this CPU cannot run it.
const CpuKernels* cpu_kernels_for(CpuLevel level);

// Declarations of each level's kernels (defined in the *_isa.cpp files).
#define HEADKV_ISA_DECLS                                                                                      \
  float dot_f32(const float* a, const float* b, int64_t n);                                                   \
  void axpy_f32(float* y, float a, const float* x, int64_t n);                                                \
  double exp_shift_sum(float* x, int64_t n, float mx);                                                        \
  void dot_rows_f32(const float* q, const float* K, int64_t ld, int64_t n, int64_t m, float* out);            \
  void weighted_rows_f32(const float* p, const float* V, int64_t ld, int64_t n, int64_t m, float* out);       \
  void dot_multi(GGMLType t, const uint8_t* w, const float* x, int64_t ldx, int nt, int64_t n, float* out,    \
                 const float* xs);                                                                            \
  void dequant_fast(GGMLType t, const uint8_t* w, float* y, int64_t n);                                       \
  void gemm_tile(int64_t kc, const float* a, const float* b, float* C, int64_t ldc, bool accum);              \
  void dot_rows_f16(const float* q, const uint16_t* K, int64_t ld, int64_t n, int64_t m, float* out);         \
  void weighted_rows_f16(const float* p, const uint16_t* V, int64_t ld, int64_t n, int64_t m, float* out);    \
  void f32_to_f16_row(const float* x, uint16_t* y, int64_t n);                                                \
  void dot_rows_q8_0(const float* q, int64_t nq, int64_t ldq, const uint8_t* K, int64_t ld, int64_t n,        \
                     int64_t m, float* out, int64_t ldo);                                                     \
  void weighted_rows_q8_0(const float* p, int64_t nq, int64_t ldp, const uint8_t* V, int64_t ld, int64_t n,   \
                          int64_t m, float* out, int64_t ldo);                                                \
  void dot_rows_q4_0(const float* q, int64_t nq, int64_t ldq, const uint8_t* K, int64_t ld, int64_t n,        \
                     int64_t m, float* out, int64_t ldo);                                                     \
  void weighted_rows_q4_0(const float* p, int64_t nq, int64_t ldp, const uint8_t* V, int64_t ld, int64_t n,   \
                          int64_t m, float* out, int64_t ldo);
namespace isa_baseline { HEADKV_ISA_DECLS }
namespace isa_avx2 { HEADKV_ISA_DECLS }
namespace isa_avx512 { HEADKV_ISA_DECLS }
#undef HEADKV_ISA_DECLS

}  // namespace headkv
