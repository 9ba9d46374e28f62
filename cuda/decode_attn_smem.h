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
HEADKV_HD constexpr size_t decode_block_smem(int hd, int warps) { return decode_ring_bytes(hd, warps) + (size_t)2 * warps * 8 * 4; }

// Warps per decode attention block: the widest of 8, 4, 2, not above `preferred`, whose shared
// memory fits the device's opt-in limit per block (`optin` bytes), or 0 when none does. At hd 128:
// 8 warps need 204 KB (sm_90: 227 KB), 4 need 102 KB (sm_80: 163 KB), 2 need 51 KB (sm_86 / sm_89:
// 99 KB); at hd 64 about half; at hd 256 (no 8-warp kernel) 4 warps need 198 KB (sm_90), 2 need
// 99.1 KB (sm_80; just over sm_86 / sm_89's 99 KB).
HEADKV_HD constexpr int decode_attention_warps_for(size_t optin, int hd, int preferred) {
  for (int w = 8; w >= 2; w /= 2)
    if (w <= preferred && (hd <= 128 || w <= 4) && decode_block_smem(hd, w) <= optin) return w;
  return 0;
}

}  // namespace headkv::cu
