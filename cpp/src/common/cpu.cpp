#include "common/cpu.h"

#include <atomic>
#include <cstdlib>

#include "common/error.h"

namespace headkv {
namespace {

#define HEADKV_TABLE(lvl, ns)                                                                              \
  CpuKernels {                                                                                             \
    lvl, ns::dot_f32, ns::axpy_f32, ns::exp_shift_sum, ns::dot_rows_f32, ns::weighted_rows_f32, ns::dot_multi, \
        ns::dequant_fast, ns::gemm_tile, ns::dot_rows_f16, ns::weighted_rows_f16, ns::f32_to_f16_row,       \
        ns::dot_rows_q8_0, ns::weighted_rows_q8_0, ns::dot_rows_q4_0, ns::weighted_rows_q4_0                \
  }
const CpuKernels kBaseline = HEADKV_TABLE(CpuLevel::Baseline, isa_baseline);
#ifdef HEADKV_ISA_AVX2
const CpuKernels kAVX2 = HEADKV_TABLE(CpuLevel::AVX2, isa_avx2);
#endif
#ifdef HEADKV_ISA_AVX512
const CpuKernels kAVX512 = HEADKV_TABLE(CpuLevel::AVX512, isa_avx512);
#endif
#undef HEADKV_TABLE

std::atomic<const CpuKernels*> g_active{nullptr};

// What the CPU runs; __builtin_cpu_supports also checks that the OS saves the vector state.
bool cpu_can_run(CpuLevel level) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  switch (level) {
    case CpuLevel::Baseline: return true;
    case CpuLevel::AVX2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case CpuLevel::AVX512:
      return cpu_can_run(CpuLevel::AVX2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq");
  }
  return false;
#else
  return level == CpuLevel::Baseline;
#endif
}

const CpuKernels* built(CpuLevel level) {
  switch (level) {
    case CpuLevel::Baseline: return &kBaseline;
#ifdef HEADKV_ISA_AVX2
    case CpuLevel::AVX2: return &kAVX2;
#endif
#ifdef HEADKV_ISA_AVX512
    case CpuLevel::AVX512: return &kAVX512;
#endif
    default: return nullptr;
  }
}

std::string level_list() {
  std::string s;
  for (CpuLevel l : cpu_levels()) s += (s.empty() ? "" : ", ") + std::string(cpu_level_name(l));
  return s;
}

const CpuKernels& by_name(const std::string& name, const char* source) {
  for (CpuLevel l : {CpuLevel::Baseline, CpuLevel::AVX2, CpuLevel::AVX512}) {
    if (name != cpu_level_name(l)) continue;
    if (const CpuKernels* k = cpu_kernels_for(l)) return *k;
    fail(ErrorKind::Unsupported, std::string(source) + name + ": " +
                                     (built(l) ? "this CPU cannot run it" : "this build does not have it") +
                                     " (available: " + level_list() + ")");
  }
  fail(ErrorKind::InvalidArgument, std::string(source) + name + ": unknown CPU level (baseline, avx2, avx512)");
}

}  // namespace

const char* cpu_level_name(CpuLevel level) {
  switch (level) {
    case CpuLevel::Baseline: return "baseline";
    case CpuLevel::AVX2: return "avx2";
    case CpuLevel::AVX512: return "avx512";
  }
  return "?";
}

std::vector<CpuLevel> cpu_levels() {
  std::vector<CpuLevel> out;
  for (CpuLevel l : {CpuLevel::Baseline, CpuLevel::AVX2, CpuLevel::AVX512})
    if (cpu_kernels_for(l)) out.push_back(l);
  return out;
}

const CpuKernels* cpu_kernels_for(CpuLevel level) { return cpu_can_run(level) ? built(level) : nullptr; }

const CpuKernels& cpu_kernels() {
  if (const CpuKernels* k = g_active.load(std::memory_order_acquire)) return *k;
  const char* env = std::getenv("HEADKV_CPU");
  const CpuKernels* k;
  if (env && *env && std::string(env) != "auto") k = &by_name(env, "HEADKV_CPU=");
  else k = cpu_kernels_for(cpu_levels().back());
  g_active.store(k, std::memory_order_release);
  return *k;
}

void set_cpu_level(const std::string& name) {
  const CpuKernels* k = name == "auto" ? cpu_kernels_for(cpu_levels().back()) : &by_name(name, "CPU level ");
  g_active.store(k, std::memory_order_release);
}

}  // namespace headkv
