// The decode attention's block width per device (cuda/decode_attn_smem.h), against shared memory
// sizes worked out by hand: the split kernel's ring is warps x 3 chunks x 32 keys x (hd + 8) halves,
// plus 2 floats per warp and query head (8 at most). Built with the CUDA backend; runs without a GPU.
#include "../../cuda/decode_attn_smem.h"

#include "check.h"

using headkv::cu::decode_attention_warps_for;
using headkv::cu::decode_block_smem;

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
  // the preferred width caps the choice (HEADKV_ATTN_WARPS), a smaller device lowers it further
  CHECK(decode_attention_warps_for(232448, 128, 4) == 4);
  CHECK(decode_attention_warps_for(232448, 128, 2) == 2);
  CHECK(decode_attention_warps_for(101376, 128, 4) == 2);
  // exactly at the limit fits, one byte under does not
  CHECK(decode_attention_warps_for(209408, 128, 8) == 8);
  CHECK(decode_attention_warps_for(209407, 128, 8) == 4);
  return failures ? 1 : 0;
}
