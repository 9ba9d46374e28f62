// CudaContext::Impl, the CUDA backend's sequence state, shared by the context_*.cu files that
// implement it (private to cuda/; the public interface is backend/cuda_context.h).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "backend/cuda_context.h"
#include "common.cuh"
#include "device_buffer.cuh"
#include "kernels.cuh"
#include "weights.cuh"

namespace headkv {

using namespace cu;

struct CudaContext::Impl {
  CudaContext& self;
  const Model& model;
  const LlamaHParams& hp;
  // The sequence state both backends keep (SequenceContext's members), by the names cuda/ uses.
  KVConfig& kv;
  const BudgetMethod& method;
  const std::optional<HeadScores>& scores;
  std::optional<BudgetPlan>& plan;
  const int32_t& n_ctx;
  int32_t &n_past, &n_prompt;
  const uint64_t& kv_limit;  // SequenceContext::set_kv_limit
  const KVType &tk, &tv;     // K and V element types of the arena (f16, q8_0, q4_0; kernels.cuh)
  std::vector<int32_t>& history;
  uint64_t& prefill_peak;
  int64_t& n_logit_rows;
  bool half_gemm = true;
  // Single-token matvecs with int8 activations (fast precision; HEADKV_MATVEC=fp32 turns it off for
  // comparisons).
  bool mv_q8x = true;
  // One token's RoPE and K/V store fused into the Q/K/V projection (HEADKV_FUSE_ROPE=0: separate).
  bool fuse_rope = true;
  // Warps per decode attention block: 8 (items of multiples of 256 keys, one block per SM), or 4
  // (multiples of 128, two blocks per SM) or 2 (64) with HEADKV_ATTN_WARPS=4 / 2 or where wider
  // blocks do not fit (at hd 128: 4 on sm_80, 2 on sm_86 / sm_89).
  int attn_warps = 8;
  int32_t ub = 2048;
  std::shared_ptr<DevModel> dm;
  cudaStream_t st = nullptr;

  // Bytes of the arena's K and V rows (of types tk and tv)
  uint64_t rb_k = 0, rb_v = 0;
  // arena (K / V rows; kArenaSlack bytes past the last row: the decode attention's 16-byte copies
  // of quantized rows may reach up to 15 bytes past a row's end)
  bool arena = false;
  // Rows of each layer's segments in the full cache when they form a ring (sliding-window layers:
  // window + ub rows, position p at row p % ring, when that is less than n_ctx), else 0.
  std::vector<int64_t> ring;
  DBuf<uint8_t> ak, av;
  DBuf<int32_t> apos, used;
  DBuf<int32_t> qcount;  // the fused decode store's block counters (RopeStore::qcount), q8_0 / q4_0 only
  DBuf<int64_t> seg_off;
  std::vector<int64_t> h_off;
  std::vector<int32_t> h_used;
  // decode work items
  DBuf<int32_t> item_head, item_split, head_splits, head_first;
  std::vector<int32_t> layer_item0, layer_items;
  DBuf<float> part;
  // chunk scratch
  DBuf<float> x, xn, q, k, v, att, gate, up;
  DBuf<__half> xh;
  DBuf<uint8_t> wscratch;
  int64_t wscratch_elems = 0;
  DBuf<int32_t> tok;
  DBuf<float> logits_d;
  std::vector<float> logits_h;
  // decode graph
  DBuf<int32_t> step_in;  // [0] token, [1] position
  int32_t* step_host = nullptr;
  // A decode step's logits: copied by the decode graph itself into pinned memory (no copy call, no
  // staging through pageable memory), and the step's token and position read by the graph from
  // step_host; HEADKV_LOGITS_IN_GRAPH=0 copies both outside the graph, the logits into logits_h.
  bool logits_in_graph = true;
  // (Copy nodes, not mapped memory: the output head storing into mapped pinned memory sends each
  // 4-byte store across PCIe on its own, and a mapped token read gained nothing; BENCHMARKS.md.)
  float* logits_pin = nullptr;
  bool pinned_logits = false;  // the last successful eval's logits are in logits_pin
  cudaGraphExec_t graph = nullptr;
  // HEADKV_PROFILE=1: timing events captured into the decode graph between its stages; the mean
  // GPU time per token of each stage is printed to stderr when the context ends (development).
  struct Profile {
    bool on = false, capturing = false;
    std::vector<cudaEvent_t> ev;
    std::vector<int> stage;
    double ms[8] = {};
    int64_t steps = 0;
  } prof;
  // HEADKV_KEEP_SELECTION_SCORES=1: pooled window scores of every layer kept on the host (tests).
  bool keep_scores = std::getenv("HEADKV_KEEP_SELECTION_SCORES") != nullptr;
  std::vector<std::vector<float>> sel_scores;
  std::vector<uint8_t> tok_edges;  // select/spans.h, filled at the first span-aware prompt

  // context.cu
  Impl(CudaContext& self, const ContextParams& p, CudaPrecision prec);
  ~Impl();
  void release();
  int64_t qdim() const { return (int64_t)hp.n_head * hp.head_dim; }
  int64_t kvdim() const { return (int64_t)hp.n_head_kv * hp.head_dim; }
  uint64_t scratch_bytes(int64_t C) const;
  void alloc_scratch(int64_t C);
  void ensure_scratch();  // after release_scratch: checked, then allocated again

  // context_arena.cu
  void make_arena(const std::vector<int64_t>& cap);
  void build_items();
  uint64_t entry_bytes() const { return self.entry_bytes(); }
  uint64_t arena_bytes() const { return arena ? (uint64_t)h_off.back() * entry_bytes() : 0; }

  // context_forward.cu
  void linear(const DW& w, const float* in, int64_t T, float* out, int64_t ldo, bool add);
  void embed(const int32_t* ids, int64_t T, float* out);
  void attn_out(const DevLayer& L, int64_t T, float* xc);
  void mlp(const DevLayer& L, float* xc, int64_t T);
  void qkv(const DevLayer& L, const float* xc, int64_t T);
  void qkv_post(const DevLayer& L, int64_t T);
  // The fused RMSNorm/QKV/RoPE/store matvec covers the plain llama block only.
  bool qkv_fusable() const { return !hp.arch->qkv_bias && !hp.arch->qk_norm && !hp.arch->rope_neox; }
  // Layer il's RoPE (its own table for sliding-window layers, LongRoPE's factors by n_ctx).
  RopeStore rope_args(int il, int64_t T) const;
  // rope_args with layer il's arena as the store target (ring of the full cache; the fused store's
  // stage: k, v, qcount).
  RopeStore arena_store_args(int il, int64_t T);
  // The decode attention of one token (q, att) over layer il's arena segments (window, ring, softcap).
  DecodeArgs decode_args(int il);
  // The attention's sliding window at layer il (0: a global layer) and the ring of the full cache.
  int64_t window(int il) const { return hp.is_swa(il) ? hp.n_swa : 0; }
  int64_t ring_of(int il) const { return ring.empty() ? 0 : ring[il]; }
  void forward_arena(int64_t T, int32_t pos0, const int32_t* pos0_dev);
  void head(const float* xf, int64_t rows);
  void fetch_logits(int64_t rows, float* dst);

  // context_eval.cu
  void eval(const int32_t* tokens, int64_t n, bool all_logits);

  // context_decode_graph.cu
  void mark(int stage);
  void profile_step();
  void profile_report();
  void drop_graph();
  void capture_decode_graph();
  void prepare_decode();
  void copy_step_input();
  void decode_graph_step(int32_t token);

  // context_prefill.cu
  bool layer_pooled() const { return self.layer_pooled(); }  // SequenceContext::layer_pooled
  void prefill_compressed(const int32_t* tokens, int64_t N, bool all_logits);
  // The layer buffers hold N rows: the prompt (n_prompt), then the observation probe if any.
  // fit: value fitting's buffers (the window rows' full outputs, scratch); null: no fitting.
  struct FitBuffers {
    const float* owin;
    float* A;
    int64_t lda;
    double* W;
  };
  void select_layer(int il, int64_t N, int64_t n_prompt, const void* LK, void* LV, const float* qwin, float* raw,
                    float* pooled, float* rowstat, const uint8_t* runs, uint8_t* flags, int32_t* list, int32_t* count,
                    const FitBuffers* fit);
};

}  // namespace headkv
