#include "common/alloc.h"

#include <sys/resource.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

namespace headkv {

uint64_t checked_mul(uint64_t a, uint64_t b, const std::string& what) {
  uint64_t r;
  if (__builtin_mul_overflow(a, b, &r))
    fail(ErrorKind::OutOfMemory, "cannot allocate " + what + ": the size (" + std::to_string(a) + " x " +
                                     std::to_string(b) + ") overflows 64 bits");
  return r;
}

uint64_t checked_add(uint64_t a, uint64_t b, const std::string& what) {
  uint64_t r;
  if (__builtin_add_overflow(a, b, &r))
    fail(ErrorKind::OutOfMemory, "cannot allocate " + what + ": the size (" + std::to_string(a) + " + " +
                                     std::to_string(b) + ") overflows 64 bits");
  return r;
}

namespace {

constexpr uint64_t kUnknown = std::numeric_limits<uint64_t>::max();

// "Key:   1234 kB" from a /proc file, in bytes; kUnknown when absent.
uint64_t proc_kb(const char* file, const char* key) {
  std::ifstream f(file);
  std::string line;
  const size_t n = std::strlen(key);
  while (std::getline(f, line))
    if (line.compare(0, n, key) == 0 && line.size() > n && line[n] == ':')
      return std::strtoull(line.c_str() + n + 1, nullptr, 10) * 1024ull;
  return kUnknown;
}

uint64_t read_u64(const char* file) {
  std::ifstream f(file);
  std::string s;
  if (!(f >> s) || s.empty() || s[0] < '0' || s[0] > '9') return kUnknown;  // "max" or missing
  return std::strtoull(s.c_str(), nullptr, 10);
}

uint64_t rlimit_headroom(int resource, uint64_t used) {
  struct rlimit rl;
  if (getrlimit(resource, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return kUnknown;
  return (uint64_t)rl.rlim_cur > used ? (uint64_t)rl.rlim_cur - used : 0;
}

}  // namespace

namespace {
uint64_t env_limit() {
  const char* env = std::getenv("HEADKV_MEMORY_LIMIT");
  if (!env) return kUnknown;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(env, &end, 10);
  return end != env ? (uint64_t)v : kUnknown;
}
}  // namespace

uint64_t available_memory_bytes() {
  uint64_t avail = proc_kb("/proc/meminfo", "MemAvailable");
  auto lower = [&](uint64_t v) { if (v < avail) avail = v; };
  const uint64_t cg_max = read_u64("/sys/fs/cgroup/memory.max");  // cgroup v2
  if (cg_max != kUnknown) {
    const uint64_t cur = read_u64("/sys/fs/cgroup/memory.current");
    lower(cur != kUnknown && cur < cg_max ? cg_max - cur : 0);
  }
  const uint64_t vm = proc_kb("/proc/self/status", "VmSize");
  lower(rlimit_headroom(RLIMIT_AS, vm == kUnknown ? 0 : vm));
  const uint64_t data = proc_kb("/proc/self/status", "VmData");
  lower(rlimit_headroom(RLIMIT_DATA, data == kUnknown ? 0 : data));
  lower(env_limit());
  return avail;
}

void check_alloc(uint64_t bytes, const std::string& what) {
  // Small requests are not worth reading /proc for (unless a limit below them is set).
  if (bytes < (64ull << 20) && bytes <= env_limit()) return;
  const uint64_t avail = available_memory_bytes();
  if (bytes > avail)
    fail(ErrorKind::OutOfMemory, "cannot allocate " + what + ": " + std::to_string(bytes) + " bytes requested, " +
                                     std::to_string(avail) + " bytes available");
}

}  // namespace headkv
