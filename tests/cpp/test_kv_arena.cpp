// KV arena: CSR segments, in-place appends, full-segment error, byte accounting.
#include <cstdio>
#include <vector>

#include "common/error.h"
#include "select/kv_arena.h"
#include "check.h"

using namespace headkv;


int main() {
  const int L = 2, H = 3, D = 4;
  std::vector<int64_t> cap = {2, 0, 5, 1, 3, 4};
  KVArena a(L, H, D, cap);
  CHECK(a.bytes() == 15ull * (2 * D * 4 + 4));
  CHECK(a.capacity(1, 2) == 4 && a.used(1, 2) == 0);
  float k[D], v[D];
  for (int i = 0; i < 5; ++i) {
    for (int d = 0; d < D; ++d) k[d] = 10 * i + d, v[d] = -k[d];
    a.append(0, 2, 100 + i, k, v);
  }
  const float* seg_k = a.k(0, 2);
  CHECK(a.used(0, 2) == 5 && a.pos(0, 2)[4] == 104 && seg_k[4 * D + 3] == 43 && a.v(0, 2)[D] == -10);
  // the neighbouring segments are untouched and laid out back to back (CSR)
  CHECK(a.k(1, 0) == a.k(0, 2) + 5 * D && a.used(1, 0) == 0);
  bool threw = false;
  try {
    a.append(0, 2, 105, k, v);
  } catch (const Error& e) {
    threw = e.kind() == ErrorKind::ContextFull;
  }
  CHECK(threw);
  threw = false;
  try {
    a.append(0, 1, 0, k, v);  // zero-capacity segment
  } catch (const Error& e) {
    threw = e.kind() == ErrorKind::ContextFull;
  }
  CHECK(threw);
  CHECK(a.bytes_used() == 5ull * KVArena::entry_bytes(D));
  a.clear();
  CHECK(a.used(0, 2) == 0 && a.bytes_used() == 0);
  threw = false;
  try {
    KVArena huge(1, 1, 128, {int64_t(1) << 60});
  } catch (const Error& e) {
    threw = e.kind() == ErrorKind::OutOfMemory;
  }
  CHECK(threw);
  std::printf(failures ? "FAILED\n" : "ok\n");
  return failures ? 1 : 0;
}
