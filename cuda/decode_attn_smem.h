// Shared memory of the decode attention's split kernel (decode_attn.cu) and the block width a device
// can take. Plain C++ (no CUDA headers), so the choice is unit-tested on machines without a GPU
// (tests/cpp/test_cuda_plan.cpp).
#pragma once
#include <cstddef>

#ifdef __CUDACC__
#define HEADKV_HD __host__ __device__  // also usable in the kernel's compile-time checks
#else
#define HEADKV_HD
#endif

namespace headkv::cu {

// Each warp keeps a ring of kDecodeRing chunks (the K or V rows of a tile of 32 keys, fp16, rows
// hd + 8 halves apart), plus two floats per warp and query head of a group (at most 8) of softmax
// statistics.
constexpr int kDecodeRing = 3;
HEADKV_HD constexpr size_t decode_ring_bytes(int hd, int warps) { return (size_t)warps * kDecodeRing * 32 * (hd + 8) * 2; }

// The kernel for q8_0 / q4_0 rows (K, V or both; the other may be f16): each warp's ring holds
// kDecodeRing chunks of stored rows (32 rows of the larger of the K and V row sizes, rb bytes, copied
// in 16-byte pieces aligned to 16 bytes: up to one piece more), one fp16 tile (32 rows of hd + 8
// halves) that a chunk is converted into and the chunk's block scales as floats (32 rows x hd / 32);
// the warps' outputs (8 heads of hd floats each) reuse it.
HEADKV_HD constexpr size_t decode_slot_bytes(size_t rb) { return (32 * rb + 15) / 16 * 16 + 16; }
HEADKV_HD constexpr size_t decode_warp_bytes_q(int hd, size_t rbk, size_t rbv) {
  return kDecodeRing * decode_slot_bytes(rbk > rbv ? rbk : rbv) + (size_t)32 * (hd + 8) * 2 + (size_t)hd * 4;
}
// Dynamic shared memory of a block: rbk = rbv = 0 for f16 K and V (the f16 kernel), else the K and V
// row bytes (select/kv_arena.h kv_row_bytes).
HEADKV_HD constexpr size_t decode_dyn_smem(int hd, int warps, size_t rbk = 0, size_t rbv = 0) {
  if (rbk == 0 && rbv == 0) return decode_ring_bytes(hd, warps);
  const size_t ring = (size_t)warps * decode_warp_bytes_q(hd, rbk, rbv), outs = (size_t)warps * 8 * hd * 4;
  return ring > outs ? ring : outs;
}
HEADKV_HD constexpr size_t decode_block_smem(int hd, int warps, size_t rbk = 0, size_t rbv = 0) {
  return decode_dyn_smem(hd, warps, rbk, rbv) + (size_t)2 * warps * 8 * 4;
}

// Warps per decode attention block: the widest of 8, 4, 2, not above `preferred`, whose shared
// memory fits the device's opt-in limit per block (`optin` bytes), or 0 when none does. At hd 128:
// 8 warps need 204 KB (sm_90: 227 KB), 4 need 102 KB (sm_80: 163 KB), 2 need 51 KB (sm_86 / sm_89:
// 99 KB); at hd 64 about half; at hd 256 (no 8-warp kernel) 4 warps need 198 KB (sm_90), 2 need
// 99.1 KB (sm_80; just over sm_86 / sm_89's 99 KB). q8_0 K and V at hd 128: 8 warps need 179 KB;
// q8_0 K with f16 V: 8 warps 271 KB (so 4 on sm_90).
HEADKV_HD constexpr int decode_attention_warps_for(size_t optin, int hd, int preferred, size_t rbk = 0, size_t rbv = 0) {
  for (int w = 8; w >= 2; w /= 2)
    if (w <= preferred && (hd <= 128 || w <= 4) && decode_block_smem(hd, w, rbk, rbv) <= optin) return w;
  return 0;
}

}  // namespace headkv::cu
