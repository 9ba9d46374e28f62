// Host-side launchers of the CUDA backend's kernels (one file per concern implements them).
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "select/kv_arena.h"

namespace headkv::cu {

// A weight matrix on the device: rows x cols, row_bytes per row in the file. Float types keep the
// file's rows at data; quantized types are split (quant.cuh): quants at data, scales at sc.
struct DW {
  int type = 0;
  const uint8_t* data = nullptr;
  const uint8_t* sc = nullptr;
  int64_t rows = 0, cols = 0;
  size_t row_bytes = 0;
};

// ---- matvec.cu: y[t][r] (=, +=) W[r]·x[t] for T <= 8 tokens, reading W once.
// q8x: a single token on Q4_0/Q4_1/Q8_0 weights takes the int8-activation kernel (matvec_q8x.cu:
// x quantized to int8 per 32 values, dp4a; the fast precision) instead of fp32 activations.
// SWIGLU: y = silu(W·x) * (W2·x); ROPE: Q/K/V rows with RoPE and the K/V store (matvec_qkv_rope).
enum MatvecMode { MV_STORE = 0, MV_ADD = 1, MV_SWIGLU = 2, MV_ROPE = 3 };
constexpr int kMatvecMaxT = 8;
void matvec(const DW& w, const DW* w2, const float* x, int64_t ldx, float* y, int64_t ldy, int T, MatvecMode mode,
            bool q8x, cudaStream_t s);
// T = 1..8 tokens with int8 activations (each token's x quantized as the single-token q8x kernel
// does; MV_STORE, MV_ADD, MV_SWIGLU): false, launching nothing, where the weight type or the shared
// memory of T quantized rows does not allow it.
bool matvec_rows_q8x(const DW& w, const DW* w2, const float* x, int64_t ldx, float* y, int64_t ldy, int T,
                     MatvecMode mode, cudaStream_t s);
// Single token with the RMSNorm fused in: ys[i] = ws[i] · (RMSNorm(x) * norm_w) for up to 3 weights
// of one type and width (Q, K, V), or y = silu(gate · xn) * (up · xn).
bool matvec_norm_fusable(const DW* ws, int n);
void matvec_norm(const DW* ws, int n, float* const* ys, const float* x, const float* norm_w, float eps, bool q8x,
                 cudaStream_t s);
void matvec_norm_swiglu(const DW& gate, const DW& up, const float* x, const float* norm_w, float eps, float* y,
                        bool q8x, cudaStream_t s);

// ---- matmul_mma_q8.cu: y[t][r] (=, +=) W[r]·x[t] for T <= kMmaMaxT tokens on Q4_0 / Q4_1 / Q8_0
// weights with int8 tensor cores, each token's x quantized as matvec_rows_q8x does (MV_STORE, MV_ADD,
// MV_SWIGLU with w2 the up projection); false, launching nothing, for other types. scratch: at least
// matmul_mma_q8_scratch(w.cols, T) bytes of device memory, 8-byte aligned.
constexpr int kMmaMaxT = 64;
bool matmul_mma_q8_supported(int type);
size_t matmul_mma_q8_scratch(int64_t cols, int T);
bool matmul_mma_q8(const DW& w, const DW* w2, const float* x, int64_t ldx, float* y, int64_t ldy, int T,
                   MatvecMode mode, void* scratch, cudaStream_t s);

// ---- gemm.cu: dequantization, embedding rows, cuBLAS (loaded at run time).
// out[i][c] for rows r0 .. r0+n-1 (row i = r0 + i), as fp32 (half_out false) or fp16.
void dequant_rows(const DW& w, int64_t r0, int64_t n, void* out, bool half_out, cudaStream_t s);
// out[t][:] = row ids[t] of w, fp32.
void embed_rows(const DW& w, const int32_t* ids, int64_t T, float* out, cudaStream_t s);
void f32_to_f16(const float* in, __half* out, int64_t n, cudaStream_t s);
void f16_to_f32(const __half* in, float* out, int64_t n, cudaStream_t s);
// cuBLAS: C[t][r] = alpha * sum_c A[r][c] B[t][c] + beta * C[t][r] (row-major A: m x k, B: n x k,
// C: n x m with leading dimension ldc). half_in: A and B are fp16, else fp32 (pedantic fp32).
void blas_init(cudaStream_t s);  // throws Unsupported when libcublas cannot be loaded
void gemm_nt(const void* A, const void* B, float* C, int64_t m, int64_t n, int64_t k, int64_t ldc, float beta,
             bool half_in, cudaStream_t s);
// out (ldo) (=, +=) W · in for T rows of `in` (rows of W.cols floats) through cuBLAS: fp16 (half, in
// converted into xh; fp16 weights used as they are) or fp32, other weights dequantized in slices of
// at most wscratch_elems elements into wscratch.
void gemm_weights(const DW& w, const float* in, int64_t T, float* out, int64_t ldo, bool add, bool half, __half* xh,
                  void* wscratch, int64_t wscratch_elems, cudaStream_t s);

// ---- ops.cu
void rms_norm(const float* x, const float* w, float* out, int64_t T, int64_t d, float eps, cudaStream_t s);
void silu_mul(float* g, const float* u, int64_t n, cudaStream_t s);
// g = gelu_tanh(g) * u (GeGLU, model/arch.h).
void gelu_mul(float* g, const float* u, int64_t n, cudaStream_t s);
// out[t] += w * (x[t] / rms(x[t])) for T rows of d: a post-norm added to the residual stream.
void rms_norm_add(const float* x, const float* w, float* out, int64_t T, int64_t d, float eps, cudaStream_t s);
// x[i] *= c (the embedding scale), or x[i] = c * tanh(x[i] / c) (soft-capping), for n values.
void scale(float* x, float c, int64_t n, cudaStream_t s);
void softcap(float* x, float c, int64_t n, cudaStream_t s);
// x[t][i] += b[i] for T rows of n (Q/K/V biases).
void add_bias(float* x, const float* b, int64_t T, int64_t n, cudaStream_t s);
// RoPE on q [T][nh][hd] (in place) and k; k, v ([T][nkv][hd]) are stored to the target:
//   layer buffer (head-major [g][N][hd]): kf/vf (fp32) or kfh/vfh (fp16) non-null,
//     entry = g*ld_head + row0 + t
//   arena (rows of type tk / tv: f16, q8_0 or q4_0, kv_row_bytes(type, hd) bytes): kh/vh/pos non-null,
//     entry = seg_off[l*nkv+g] + used[l*nkv+g] + t, pos = pos0 + t;
//     ring > 0 (a sliding-window layer's ring in the full cache): entry = seg_off + (used + t) % ring
// pos0: first position, read from *pos0_dev when non-null (graph replays).
struct RopeStore {
  float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  int T = 0, nh = 0, nkv = 0, hd = 0, rope_dim = 0;
  bool neox = false;  // rotate (x[i], x[i + rope_dim/2]) instead of adjacent pairs (model/arch.h)
  const float* inv_freq = nullptr;
  float rope_scale = 1.0f;
  float mscale = 1.0f;  // LongRoPE's attention factor: cos and sin are multiplied by it
  int32_t pos0 = 0;
  const int32_t* pos0_dev = nullptr;
  float* kf = nullptr;
  float* vf = nullptr;
  __half* kfh = nullptr;
  __half* vfh = nullptr;
  int64_t ld_head = 0, row0 = 0;
  void* kh = nullptr;
  void* vh = nullptr;
  KVType tk = KVType::F16, tv = KVType::F16;
  int32_t* pos = nullptr;
  // The fused epilogue's q8_0 / q4_0 stores (matvec_qkv_rope): fp32 staging of K / V ([nkv][hd]) and
  // 2 * nkv * hd / 32 counters, zero between launches (the last pair of a block resets its counter).
  float* kstage = nullptr;
  float* vstage = nullptr;
  int32_t* qcount = nullptr;
  const int64_t* seg_off = nullptr;
  const int32_t* used = nullptr;
  int64_t ring = 0;
};
void rope_store(const RopeStore& a, cudaStream_t s);
// One token of each of n sequences (args in device memory, T = 1 each, sharing `like`'s head counts and
// head_dim) in one launch.
void rope_store_n(const RopeStore& like, const RopeStore* args, int n, cudaStream_t s);
// One token's RMSNorm -> Q, K, V (ws: wq, wk, wv) with RoPE and the arena store of rope_store fused
// into the matvec's epilogue (int8 or fp32 activations; r: arena target, T = 1, q = the Q output).
// False when the shapes or the target do not fit: the caller runs the separate kernels. q8_0 / q4_0
// rows (whose blocks of 32 span 16 warps' row pairs) need r.kstage / vstage / qcount: each pair goes
// to the fp32 stage, and the last of a block's pairs to arrive quantizes the block into the arena.
bool matvec_qkv_rope(const DW* ws, const float* x, const float* norm_w, float eps, const RopeStore& r, bool q8x,
                     cudaStream_t s);
// The rotation of a RoPE pair, rounded after every product (no fused multiply-add), so that every
// kernel applying it (rope_store, the matvec epilogue) and the CPU agree bit for bit on the inputs.
__device__ __forceinline__ float rope_x(float x0, float x1, float c, float s) {
  return __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
}
__device__ __forceinline__ float rope_y(float x0, float x1, float c, float s) {
  return __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
}
// cos/sin of RoPE pair i at position pos (the CPU's arithmetic: fp32 angle, double cos/sin).
__device__ __forceinline__ void rope_cs(int32_t pos, float scale, float inv_freq, float mscale, float* c, float* s) {
  const float p = (float)pos / scale;
  const float theta = p * inv_freq;  // fp32 product, as the CPU computes it
  *c = (float)(cos((double)theta) * (double)mscale);
  *s = (float)(sin((double)theta) * (double)mscale);
}
// used[i] += T for i < n (end of an eval: the tokens appended to every segment). A PDL launch.
void add_used(int32_t* used, int n, int T, cudaStream_t s);

// ---- flash_attn.cu: causal GQA attention of T queries (q [T][nh][hd], fp32) over keys of each KV
// head g at K + (seg_off ? seg_off[g] : g*ld_head) * hd (fp32 or fp16 rows of hd); query t sees
// keys [0, n_before_g + t], n_before_g = (seg_len ? seg_len[g] : n_before). out [T][nh][hd].
// Arena rows may be q8_0 / q4_0 blocks (tk / tv, with half_kv): the kernels dequantize them while
// loading their tiles.
// window > 0 (sliding-window layers): query t sees only keys (n_before_g + t - window, n_before_g + t].
// ring > 0: key j is row j % ring (a sliding-window layer's ring in the full cache; ring >= window +
// T - 1, so the chunk's own rows overwrite no key its queries see).
struct FlashArgs {
  const float* q = nullptr;
  float* out = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  bool half_kv = false;
  KVType tk = KVType::F16, tv = KVType::F16;
  int T = 0, nh = 0, nkv = 0, hd = 0;
  const int64_t* seg_off = nullptr;
  int64_t ld_head = 0;
  const int32_t* seg_len = nullptr;
  int64_t n_before = 0;
  int64_t window = 0, ring = 0;
  float softcap = 0.0f;  // attention-logit soft-capping (0: none)
};
void flash_attention(const FlashArgs& a, cudaStream_t s);
// The keys a flash-attention block over KV head g sees: K/V rows (KT = float or __half) and how many
// keys come before the chunk's first query.
template <class KT>
struct FlashKV {
  const KT* K;
  const KT* V;
  int64_t n_before;
};
template <class KT, int HD>
__device__ __forceinline__ FlashKV<KT> flash_kv(const FlashArgs& a, int g) {
  const int64_t base = (a.seg_off ? a.seg_off[g] : (int64_t)g * a.ld_head) * HD;
  return {static_cast<const KT*>(a.k) + base, static_cast<const KT*>(a.v) + base,
          a.seg_len ? (int64_t)a.seg_len[g] : a.n_before};
}
// The row of key j (FlashArgs::ring, DecodeArgs::ring).
__device__ __forceinline__ int64_t ring_row(int64_t j, int64_t ring) { return ring ? j % ring : j; }
// Attention-logit soft-capping (Gemma 2; FlashArgs / DecodeArgs::softcap > 0): the raw score q·k whose
// scaled value is cap * tanh(scale * s / cap), as the CPU caps it, so that a kernel goes on scaling
// its scores as it does without a cap.
__device__ __forceinline__ float softcap_raw(float s, float cap, float scale) {
  return cap > 0.0f ? cap * tanhf(s * scale / cap) / scale : s;
}
// flash_attn_mma.cu: the same on tensor cores (mma.sync; fp16 Q/K/V/P, fp32 accumulation and a
// register-resident softmax) for fp16 K/V: the fast precision. (It replaced a WMMA kernel: 1.7x at
// 32k, BENCHMARKS.md.)
void flash_attention_tc(const FlashArgs& a, cudaStream_t s);

// ---- decode_attn.cu: one query token per head over the per-head arena (f16, q8_0 or q4_0 rows
// for K and V independently), split-K.
// Work items of a layer: item i handles KV head item_head[i], split item_split[i] of
// head_splits[g]; length of head g = used[g] + 1 (the token just appended). part: scratch of
// n_items * G * (hd + 2) floats. window > 0 (sliding-window layers): only the last `window` keys
// are attended (the splits cut those); ring > 0: key j is row j % ring (FlashArgs).
struct DecodeArgs {
  const float* q = nullptr;   // [nh][hd]
  float* out = nullptr;       // [nh][hd]
  const void* k = nullptr;  // arena keys (entry-major, kv_row_bytes(tk, hd) bytes per entry)
  const void* v = nullptr;
  KVType tk = KVType::F16, tv = KVType::F16;
  const int64_t* seg_off = nullptr;  // this layer's segments (nkv)
  const int32_t* used = nullptr;     // this layer's used counts (before the new token)
  const int32_t* item_head = nullptr;
  const int32_t* item_split = nullptr;
  const int32_t* head_splits = nullptr;  // [nkv]
  const int32_t* head_first = nullptr;   // [nkv] first item of head g
  int n_items = 0, nh = 0, nkv = 0, hd = 0;
  int warps = 4;  // per block (8, 4 or 2): an item's keys are split over them in tiles of 32
  float* part = nullptr;
  int64_t window = 0, ring = 0;
  float softcap = 0.0f;  // attention-logit soft-capping (0: none)
};
void decode_attention(const DecodeArgs& a, cudaStream_t s);
// The decode attention of n sequences in one launch of each kernel (a batched step): args (device
// memory) holds each sequence's DecodeArgs; they share `like`'s hd, head counts, warps and K/V types,
// and max_items is the largest n_items among them.
void decode_attention_n(const DecodeArgs& like, const DecodeArgs* args, int n, int max_items, cudaStream_t s);
// Blocks of the decode attention kernel resident at once on the device (one wave).
int decode_attention_slots(int hd, int G, int warps, KVType tk, KVType tv);
// Warps per block to use: the widest of 8, 4, 2 up to `preferred` whose shared memory the device
// gives a block (decode_attn_smem.h: at hd 128 sm_90 takes 8, sm_80 4, sm_86 / sm_89 2).
int decode_attention_warps(int hd, int preferred, KVType tk, KVType tv);

// ---- select.cu: per-layer selection on the device (see select/selection.h for the rules).
// Pooled window scores [nkv][P] of the window queries qwin [a][nh][hd] (the layer's last a rows)
// over the layer's keys (head-major [g][N][hd], fp32 or fp16 when half_k), for positions j < P
// (P <= N - a). runs (device, P bytes, or null): token runs made equal to their maximum
// (select/spans.h). max_q: maximum over window queries and group heads instead of the mean.
// reach: max pooling's forward reach (SelectionParams::reach). rowstat: scratch of nh * a * 2 floats.
void window_scores(const float* qwin, const void* K, bool half_k, int64_t N, int a, int64_t P, int nh, int nkv, int hd,
                   int kernel, bool max_pool, int reach, const uint8_t* runs, bool max_q, float* raw, float* pooled,
                   float* rowstat, cudaStream_t s);
// flags[seg][j] = 1 for the top-k[seg] of s[seg][0..n) (ties: lower index first), skipping
// exclude[seg][j] != 0. k from the host array (n_seg values). One block per segment.
void topk_flags(const float* s, int64_t n, int n_seg, const int64_t* k_host, const uint8_t* exclude, uint8_t* flags,
                int64_t* k_dev_scratch, cudaStream_t st);
// Streaming: flags for sink + recent.
void streaming_flags(uint8_t* flags, int64_t P, int nkv, const int64_t* sink_host, const int64_t* cap_host,
                     int64_t* scratch, cudaStream_t s);
// Kept list per head: positions j < P with flags set (in order), then the window P..n_keep-1.
// list [nkv][N] (N >= n_keep), count [nkv] (kept + window).
void compact_flags(const uint8_t* flags, int64_t P, int64_t n_keep, int64_t N, int nkv, int32_t* list, int32_t* count,
                   cudaStream_t s);
// Ada-KV: this layer's segment offsets from the counts (capacity = count + room); first offset fixed.
void layer_offsets(int64_t* seg_off, const int32_t* count, int nkv, int64_t room, cudaStream_t s);
// Copies each head's listed entries from the layer buffer ([g][N][hd], fp32 or fp16 when half_kv)
// into its arena segment (K/V rows of types tk / tv, quantized here for q8_0 / q4_0; positions) and
// sets used[g] = count[g].
void gather_to_arena(const int32_t* list, const int32_t* count, int64_t N, int nkv, int hd, const void* K,
                     const void* V, bool half_kv, const int64_t* seg_off, void* ak, void* av, KVType tk, KVType tv,
                     int32_t* apos, int32_t* used, int64_t max_count, cudaStream_t s);


// ---- value_fit.cu: value fitting (cpp/src/select/value_fit.h) of one layer's kept values in the
// layer buffer V ([g][N][hd], fp32 or fp16 when half_kv), before gather_to_arena. qwin / owin: the
// window rows' queries and full-cache attention outputs, [a][nh][hd]. Scratch: A of nkv * a * G * lda
// floats (lda >= every head's count), W of nkv * (m * m + m * hd) doubles (m = a * G).
struct ValueFit {
  const float* qwin;
  const float* owin;
  int a, nh, nkv, hd;
  float scale, softcap;
  double lambda;
};
void fit_values(const ValueFit& f, const void* K, void* V, bool half_kv, int64_t N, int64_t P, const int32_t* list,
                const int32_t* count, float* A, int64_t lda, double* W, cudaStream_t s);

}  // namespace headkv::cu
