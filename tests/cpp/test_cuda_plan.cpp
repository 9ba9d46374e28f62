// Per-device choices of the CUDA backend, checked without a GPU (built with the CUDA backend):
// - the decode attention's block width (cuda/decode_attn_smem.h), against shared memory sizes worked
//   out by hand: the split kernel's ring is warps x 3 chunks x 32 keys x (hd + 8) halves, plus 2
//   floats per warp and query head (8 at most); for q8_0 / q4_0 rows, the stored rows' slots and a tile;
// - whether a device can run the build at all (cuda/device_support.h).
#include <string>

#include "../../cuda/decode_attn_smem.h"
#include "../../cuda/device_support.h"

#include "check.h"

using headkv::cu::decode_attention_warps_for;
using headkv::cu::decode_block_smem;
using headkv::cu::device_support_problem;

static bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

int main() {
  // hd 128: 8 warps 8*3*32*136*2 = 208896 + 512; 4 warps 104448 + 256; 2 warps 52224 + 128.
  CHECK(decode_block_smem(128, 8) == 209408);
  CHECK(decode_block_smem(128, 4) == 104704);
  CHECK(decode_block_smem(128, 2) == 52352);
  CHECK(decode_block_smem(64, 8) == 8 * 3 * 32 * 72 * 2 + 512);
  // opt-in shared memory per block: sm_90 232448, sm_80 166912, sm_86 / sm_89 101376, sm_75 65536
  CHECK(decode_attention_warps_for(232448, 128, 8) == 8);
  CHECK(decode_attention_warps_for(166912, 128, 8) == 4);
  CHECK(decode_attention_warps_for(101376, 128, 8) == 2);
  CHECK(decode_attention_warps_for(65536, 128, 8) == 2);
  CHECK(decode_attention_warps_for(101376, 64, 8) == 4);  // hd 64: 110592 + 512 do not fit, 55296 + 256 do
  CHECK(decode_attention_warps_for(232448, 64, 8) == 8);
  CHECK(decode_attention_warps_for(48 * 1024, 128, 8) == 0);  // not even 2 warps
  // hd 256: at most 4 warps (4*3*32*264*2 = 202752 + 256), 2 warps 101376 + 128
  CHECK(decode_block_smem(256, 4) == 203008);
  CHECK(decode_attention_warps_for(232448, 256, 8) == 4);
  CHECK(decode_attention_warps_for(166912, 256, 8) == 2);
  CHECK(decode_attention_warps_for(101376, 256, 8) == 0);
  // the preferred width caps the choice (HEADKV_ATTN_WARPS), a smaller device lowers it further
  CHECK(decode_attention_warps_for(232448, 128, 4) == 4);
  CHECK(decode_attention_warps_for(232448, 128, 2) == 2);
  CHECK(decode_attention_warps_for(101376, 128, 4) == 2);
  // exactly at the limit fits, one byte under does not
  CHECK(decode_attention_warps_for(209408, 128, 8) == 8);
  CHECK(decode_attention_warps_for(209407, 128, 8) == 4);
  // q8_0 / q4_0 rows (split_body_q): per warp 3 slots of 32 rows (rounded up to 16 bytes, + 16),
  // one fp16 tile of 32 x (hd + 8) halves and 32 x hd/32 float scales. q8_0 K and V at hd 128
  // (136-byte rows): slots of 4352 + 16, 8 warps 8*(3*4368 + 8704 + 512) = 178560 + 512; q4_0 (72-byte
  // rows): 8*(3*2320 + 8704 + 512) + 512; q8_0 K with f16 V (256-byte rows): 8*(3*8208 + 8704 + 512) =
  // 270720 + 512, too much for sm_90's 8 warps.
  CHECK(decode_block_smem(128, 8, 136, 136) == 179072);
  CHECK(decode_block_smem(128, 8, 72, 72) == 8 * (3 * 2320 + 8704 + 512) + 512);
  CHECK(decode_block_smem(128, 8, 136, 256) == 271232);
  CHECK(decode_attention_warps_for(232448, 128, 8, 136, 136) == 8);
  CHECK(decode_attention_warps_for(232448, 128, 8, 136, 256) == 4);
  CHECK(decode_attention_warps_for(101376, 128, 8, 136, 136) == 4);  // (f16: 2 on sm_86 / sm_89)
  // hd 64, q4_0 (36-byte rows: slots 1152 + 16): the warps' outputs (8 heads x 64 floats) are smaller
  CHECK(decode_block_smem(64, 2, 36, 36) == 2 * (3 * 1168 + 32 * 72 * 2 + 256) + 128);

  // devices: 8.0+ with a kernel image runs; below 8.0 never; no image names the arch to build for
  CHECK(device_support_problem("NVIDIA H200", 9, 0, true, "90").empty());
  CHECK(device_support_problem("NVIDIA A100", 8, 0, true, "80,90").empty());
  const std::string t4 = device_support_problem("Tesla T4", 7, 5, true, "90");
  CHECK(has(t4, "Tesla T4") && has(t4, "compute capability 7.5") && has(t4, "8.0"));
  const std::string t4_noimg = device_support_problem("Tesla T4", 7, 5, false, "90");
  CHECK(has(t4_noimg, "8.0") && !has(t4_noimg, "rebuild"));  // too old comes first: rebuilding would not help
  const std::string a10 = device_support_problem("NVIDIA A10", 8, 6, false, "90");
  CHECK(has(a10, "compute capability 8.6") && has(a10, "HEADKV_CUDA_ARCHS=90") && has(a10, "-DHEADKV_CUDA_ARCHS=86"));
  const std::string l4 = device_support_problem("NVIDIA L4", 8, 9, false, "90,100");
  CHECK(has(l4, "HEADKV_CUDA_ARCHS=90,100") && has(l4, "-DHEADKV_CUDA_ARCHS=89"));
  return failures ? 1 : 0;
}
