// common/alloc.h: overflow-checked sizes and the memory check before large allocations.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "check.h"
#include "common/alloc.h"
#include "common/error.h"
#include "select/kv_arena.h"

using namespace headkv;


int main() {
  CHECK(checked_mul(1ull << 31, 1ull << 31, "x") == 1ull << 62);
  CHECK(checked_add(UINT64_MAX - 1, 1, "x") == UINT64_MAX);
  std::string m = error_of([] { checked_mul(1ull << 32, 1ull << 32, "the thing"); }, ErrorKind::OutOfMemory);
  CHECK(m.find("the thing") != std::string::npos && m.find("4294967296 x 4294967296") != std::string::npos);
  error_of([] { checked_add(UINT64_MAX, 1, "y"); }, ErrorKind::OutOfMemory);

  const uint64_t avail = available_memory_bytes();
  CHECK(avail > (1ull << 20));  // this machine can spare a MiB
  check_alloc(1 << 20, "small");  // no throw
  m = error_of([] { check_alloc(1ull << 62, "a huge buffer"); }, ErrorKind::OutOfMemory);
  CHECK(m.find("cannot allocate a huge buffer: 4611686018427387904 bytes requested, ") != std::string::npos);
  CHECK(m.find(" bytes available") != std::string::npos);

  // HEADKV_MEMORY_LIMIT caps what is available, also for small requests.
  setenv("HEADKV_MEMORY_LIMIT", "1000", 1);
  CHECK(available_memory_bytes() == 1000);
  check_alloc(1000, "exactly the limit");
  m = error_of([] { check_alloc(1001, "one byte too many"); }, ErrorKind::OutOfMemory);
  CHECK(m.find("1001 bytes requested, 1000 bytes available") != std::string::npos);
  std::vector<float> v;
  m = error_of([&] { checked_assign(v, 300, "floats"); }, ErrorKind::OutOfMemory);
  CHECK(m.find("1200 bytes requested") != std::string::npos && v.empty());
  checked_assign(v, 250, "floats", 2.0f);
  CHECK(v.size() == 250 && v[249] == 2.0f);
  // The KV arena checks its total before allocating: 10 heads x 100 entries x 516 bytes (f32).
  m = error_of([] { KVArena a(2, 5, 64, std::vector<int64_t>(10, 100), KVType::F32, KVType::F32); }, ErrorKind::OutOfMemory);
  CHECK(m.find("KV arena") != std::string::npos && m.find("516000 bytes requested, 1000 bytes available") != std::string::npos);
  unsetenv("HEADKV_MEMORY_LIMIT");
  KVArena ok(2, 5, 64, std::vector<int64_t>(10, 100), KVType::F32, KVType::F32);
  CHECK(ok.bytes() == 516000);
  KVArena half(2, 5, 64, std::vector<int64_t>(10, 100), KVType::F16, KVType::F16);
  CHECK(half.bytes() == 1000ull * (2 * 64 * 2 + 4));
  // Element counts whose byte size overflows 64 bits never reach the allocator.
  m = error_of([&] { checked_assign(v, UINT64_MAX / 2, "too many floats"); }, ErrorKind::OutOfMemory);
  CHECK(m.find("overflows 64 bits") != std::string::npos);
  return failures ? 1 : 0;
}
