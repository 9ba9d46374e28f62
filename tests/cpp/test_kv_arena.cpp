// KV arena: CSR segments, in-place appends, full-segment error, byte accounting, stored element types.
#include <algorithm>
#include <cstdio>
#include <vector>

#include "common/error.h"
#include "select/kv_arena.h"
#include "check.h"

using namespace headkv;


int main() {
  const int L = 2, H = 3, D = 4;
  std::vector<int64_t> cap = {2, 0, 5, 1, 3, 4};
  KVArena a(L, H, D, cap, KVType::F32, KVType::F32);
  CHECK(a.bytes() == 15ull * (2 * D * 4 + 4));
  CHECK(a.capacity(1, 2) == 4 && a.used(1, 2) == 0);
  float k[D], v[D];
  for (int i = 0; i < 5; ++i) {
    for (int d = 0; d < D; ++d) k[d] = 10 * i + d, v[d] = -k[d];
    a.append(0, 2, 100 + i, k, v);
  }
  const float* seg_k = static_cast<const float*>(a.k(0, 2));
  CHECK(a.used(0, 2) == 5 && a.pos(0, 2)[4] == 104 && seg_k[4 * D + 3] == 43 &&
        static_cast<const float*>(a.v(0, 2))[D] == -10);
  // the neighbouring segments are untouched and laid out back to back (CSR)
  CHECK(static_cast<const float*>(a.k(1, 0)) == seg_k + 5 * D && a.used(1, 0) == 0);
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
  CHECK(a.bytes_used() == 5ull * KVArena::entry_bytes(D, KVType::F32, KVType::F32));
  a.clear();
  CHECK(a.used(0, 2) == 0 && a.bytes_used() == 0);
  threw = false;
  try {
    KVArena huge(1, 1, 128, {int64_t(1) << 60}, KVType::F16, KVType::F16);
  } catch (const Error& e) {
    threw = e.kind() == ErrorKind::OutOfMemory;
  }
  CHECK(threw);
  {  // f16 keys, f32 values: halves stored (round to nearest even), bytes follow the element sizes
    KVArena h(1, 1, D, {2}, KVType::F16, KVType::F32);
    CHECK(h.bytes() == 2ull * (D * 2 + D * 4 + 4));
    const float kk[D] = {1.0f, -2.5f, 65504.0f, 1.0f + 1.0f / 4096}, vv[D] = {0.1f, 0.2f, 0.3f, 0.4f};
    h.append(0, 0, 7, kk, vv);
    const uint16_t* hk = static_cast<const uint16_t*>(h.k(0, 0));
    CHECK(hk[0] == 0x3c00 && hk[1] == 0xc100 && hk[2] == 0x7bff && hk[3] == 0x3c00);  // 1+2^-12 ties to 1
    CHECK(static_cast<const float*>(h.v(0, 0))[2] == 0.3f && h.pos(0, 0)[0] == 7);
  }
  {  // q8_0 keys, q4_0 values, one block each: llama.cpp's reference quantization, checked by hand.
    // x[i] = i/2 - 8: q8_0 d = 8/127, q = round(x * 127/8); q4_0: the largest magnitude is -8 at i = 0,
    // so d = -8/-8 = 1 and nibble = min(15, trunc(x + 8.5)) = min(15, (i + 1) / 2).
    KVArena q(1, 1, 32, {1}, KVType::Q8_0, KVType::Q4_0);
    CHECK(q.bytes() == 34 + 18 + 4 && q.entry_bytes() == 56);
    float x[32];
    for (int i = 0; i < 32; ++i) x[i] = 0.5f * i - 8.0f;
    q.append(0, 0, 3, x, x);
    const uint8_t* bk = static_cast<const uint8_t*>(q.k(0, 0));
    const uint8_t* bv = static_cast<const uint8_t*>(q.v(0, 0));
    CHECK((bk[0] | bk[1] << 8) == 0x2c08);  // half(8/127 = 0.0629921) = 0x2c08 (0.062988)
    CHECK((int8_t)bk[2] == -127 && (int8_t)bk[2 + 16] == 0 && (int8_t)bk[2 + 31] == 119 && (int8_t)bk[2 + 1] == -119);
    CHECK((bv[0] | bv[1] << 8) == 0x3c00);  // d = 1
    bool nibbles_ok = true;
    for (int j = 0; j < 16; ++j)
      nibbles_ok &= (bv[2 + j] & 0xF) == (j + 1) / 2 && (bv[2 + j] >> 4) == std::min(15, (j + 17) / 2);
    CHECK(nibbles_ok);
    float back[32];
    load_kv_row(KVType::Q4_0, bv, 32, back);
    CHECK(back[0] == -8.0f && back[31] == 7.0f && back[16] == 0.0f);
  }
  threw = false;
  try {  // a head size that is not a whole number of blocks fails before the (impossible) allocation
    KVArena bad(1, 1, 48, {int64_t(1) << 60}, KVType::F16, KVType::Q4_0);
  } catch (const Error& e) {
    threw = e.kind() == ErrorKind::Unsupported;
  }
  CHECK(threw);
  threw = false;
  try {
    parse_kv_type("q4_1", "type_k");
  } catch (const Error& e) {
    threw = e.kind() == ErrorKind::Unsupported;
  }
  CHECK(threw);
  threw = false;
  try {
    parse_kv_type("half", "type_k");
  } catch (const Error& e) {
    threw = e.kind() == ErrorKind::InvalidArgument;
  }
  CHECK(threw && parse_kv_type("f16", "t") == KVType::F16 && parse_kv_type("f32", "t") == KVType::F32 &&
        parse_kv_type("q8_0", "t") == KVType::Q8_0 && parse_kv_type("q4_0", "t") == KVType::Q4_0);
  {  // the full cache's layout: implicit positions (no position bytes), a ring segment beside a plain one
    KVArena f(1, 2, D, {3, 6}, KVType::F32, KVType::F32, {1, 0}, false);
    CHECK(f.bytes() == 9ull * 2 * D * 4 && f.entry_bytes() == 2ull * D * 4 && f.pos(0, 0) == nullptr);
    CHECK(f.ring(0, 0) && !f.ring(0, 1));
    for (int p = 0; p < 5; ++p) {  // positions 0..4: the ring keeps 2, 3, 4 at rows 2, 0, 1
      for (int d = 0; d < D; ++d) k[d] = 10 * p + d, v[d] = -k[d];
      f.append(0, 0, p, k, v);
      f.append(0, 1, p, k, v);
    }
    auto key0 = [&](int g, int row) { return static_cast<const float*>(f.k_row(0, g, row))[0]; };
    CHECK(f.used(0, 0) == 3 && f.used(0, 1) == 5 && key0(0, 0) == 30 && key0(0, 1) == 40 && key0(0, 2) == 20);
    CHECK(key0(1, 4) == 40 && f.bytes_used() == 8ull * f.entry_bytes());
    threw = false;
    try {  // a ring takes positions in order only
      f.append(0, 0, 2, k, v);
    } catch (const Error& e) {
      threw = e.kind() == ErrorKind::Internal;
    }
    CHECK(threw);
    f.drop_last(2);  // back to positions 0..2: the ring's count follows its positions
    CHECK(f.used(0, 0) == 3 && f.used(0, 1) == 3);
    // put_rows: a saved state's last positions back in place (rows = positions; the ring: p % 3)
    f.clear();
    std::vector<float> rk(4 * D), rv(4 * D);
    for (int j = 0; j < 4 * D; ++j) rk[j] = 100 + j, rv[j] = -rk[j];
    f.put_rows(0, 0, 6, 4, rk.data(), rv.data());  // positions 6..9: the ring keeps 7, 8, 9
    f.put_rows(0, 1, 2, 4, rk.data(), rv.data());  // positions 2..5 at rows 2..5
    CHECK(f.used(0, 0) == 3 && key0(0, 1) == 100 + D && key0(0, 0) == 100 + 3 * D && key0(0, 2) == 100 + 2 * D);
    CHECK(f.used(0, 1) == 6 && key0(1, 2) == 100 && key0(1, 5) == 100 + 3 * D);
    threw = false;
    try {  // past the end of a plain segment
      f.put_rows(0, 1, 4, 4, rk.data(), rv.data());
    } catch (const Error& e) {
      threw = e.kind() == ErrorKind::ContextFull;
    }
    CHECK(threw);
  }
  std::printf(failures ? "FAILED\n" : "ok\n");
  return failures ? 1 : 0;
}
