// CudaContext: the CUDA backend's inference sequence (see cpp/src/backend/cuda_context.h).
//
// KV storage is one per-head ragged arena on the device (fp16 K and V, int32 positions, CSR
// segment offsets, per-segment used counts): the full cache is the arena with n_ctx entries per
// segment, a compressing method sizes it from the budget plan before the prompt runs.
//   prefill (compressing): layer by layer over the whole prompt in chunks of `ub` tokens; the
//     layer's K/V (fp32, head-major) sit in one buffer, the chunk's queries attend to it (flash
//     attention), then selection runs on the GPU and gathers the kept entries into the arena.
//   prefill (full) / multi-token evals: chunks of `ub` tokens through all layers, K/V appended to
//     the arena, flash attention over each head's segment.
//   decode (1 token): matvec kernels + split-K ragged attention, captured once as a CUDA graph
//     (position and lengths are read from device memory, so every step replays the same graph).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>

#include "backend/cuda_context.h"
#include "common/alloc.h"
#include "common.cuh"
#include "device_buffer.cuh"
#include "kernels.cuh"
#include "quant.cuh"
#include "select/kv_arena.h"
#include "select/shipped_scores.h"
#include "select/spans.h"
#include "weights.cuh"

namespace headkv {

using namespace cu;

namespace {

void check_kv_config(const KVConfig& kv) {
  auto bad = [](const std::string& m) { fail(ErrorKind::InvalidArgument, m); };
  if (kv.window < 1) bad("window must be >= 1");
  if (kv.kernel < 1 || kv.kernel % 2 == 0) bad("pooling kernel must be an odd number >= 1");
  if (kv.max_new_tokens < 0) bad("max_new_tokens must be >= 0");
  if (kv.sink < 0) bad("sink must be >= 0");
  if (!(kv.adakv_floor >= 0 && kv.adakv_floor <= 1)) bad("adakv floor must be in [0, 1]");
  if (kv.span < 0) bad("span must be >= 0");
}

// Decode attention items: a layer's keys are cut into at most one wave of blocks, each item of at
// least kMinKeysPerItem keys, in multiples of 32 keys per warp of a block (its warps stream tiles of
// 32 keys; 8 warps: multiples of 256, so each warp still holds one tile of a short item). Longer
// minimum items were slower and shorter ones no faster (BENCHMARKS.md, History).
constexpr int kMinKeysPerItem = 64, kMaxSplits = 512;

}  // namespace

struct CudaContext::Impl {
  const Model& model;
  const LlamaHParams& hp;
  KVConfig kv;
  BudgetMethod method = BudgetMethod::Full;
  std::optional<HeadScores> scores;
  std::optional<BudgetPlan> plan;
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
  // Capture the decode graph at the end of a prompt (HEADKV_EAGER_GRAPH=0: at the first decode step).
  bool eager_graph = true;
  int32_t n_ctx = 0, ub = 2048, n_past = 0, n_prompt = 0;
  std::shared_ptr<DevModel> dm;
  cudaStream_t st = nullptr;

  // arena
  bool arena = false;
  DBuf<__half> ak, av;
  DBuf<int32_t> apos, used;
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
  int64_t n_logit_rows = 0;
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
  std::vector<int32_t> history;
  uint64_t prefill_peak = 0;
  // HEADKV_KEEP_SELECTION_SCORES=1: pooled window scores of every layer kept on the host (tests).
  bool keep_scores = std::getenv("HEADKV_KEEP_SELECTION_SCORES") != nullptr;
  std::vector<std::vector<float>> sel_scores;
  std::vector<uint8_t> tok_edges;  // select/spans.h, filled at the first span-aware prompt

  Impl(const Model& m, const ContextParams& p, CudaPrecision prec) : model(m), hp(m.hparams()), kv(p.kv) {
    if (p.n_ctx < 0 || p.n_batch < 0 || p.n_threads < 0)
      fail(ErrorKind::InvalidArgument, "n_ctx, n_batch and n_threads must be >= 0");
    half_gemm = prec == CudaPrecision::Fast;
    mv_q8x = half_gemm && !env_is("HEADKV_MATVEC", "fp32");
    fuse_rope = !env_is("HEADKV_FUSE_ROPE", "0");
    eager_graph = !env_is("HEADKV_EAGER_GRAPH", "0");
    logits_in_graph = !env_is("HEADKV_LOGITS_IN_GRAPH", "0");
    prof.on = env_is("HEADKV_PROFILE", "1");
    n_ctx = p.n_ctx ? p.n_ctx : hp.n_ctx_train;
    ub = std::min<int32_t>(std::max<int32_t>(p.n_batch ? p.n_batch : 512, 2048), n_ctx);
    method = parse_budget_method(kv.method);
    if (method != BudgetMethod::Full) {
      check_kv_config(kv);
      if (kv.budget <= kv.window)
        fail(ErrorKind::InvalidArgument, "KV budget " + std::to_string(kv.budget) + " must be larger than the window " +
                                             std::to_string(kv.window));
      for (int32_t t : kv.probe)
        if (t < 0 || t >= hp.n_vocab)
          fail(ErrorKind::InvalidArgument, "probe token id " + std::to_string(t) + " is outside the vocabulary");
      if (method == BudgetMethod::HeadKV) {
        scores = resolve_head_scores(kv.scores, model_info(m.file()));  // the given file, or the shipped one
      }
    }
    require_supported_device();
    if (device_free_bytes() == 0) fail(ErrorKind::OutOfMemory, "no free GPU memory");
    // Everything this context needs at construction, checked before the first allocation.
    const uint64_t L = hp.n_layer, H = hp.n_head_kv, hd = hp.head_dim;
    const uint64_t full_kv = method == BudgetMethod::Full ? (uint64_t)n_ctx * L * H * CudaContext::entry_bytes((int)hd) : 0;
    dm = DevModel::get(m);
    attn_warps = decode_attention_warps(hp.head_dim, env_is("HEADKV_ATTN_WARPS", "2")   ? 2
                                                     : env_is("HEADKV_ATTN_WARPS", "4") ? 4
                                                                                        : 8);
    require_device_bytes(full_kv + scratch_bytes(ub), "a context with n_ctx=" + std::to_string(n_ctx) + " (KV cache " +
                                                          std::to_string(full_kv) + " bytes + scratch)");
    try {  // a constructor that throws runs no destructor: the stream and pinned buffer go here
      check(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), "stream");
      blas_init(st);
      alloc_scratch(ub);
      step_in.alloc(2, "decode step input");
      check(cudaMallocHost(&step_host, 2 * sizeof(int32_t)), "pinned step buffer");
      check(cudaMallocHost(&logits_pin, (size_t)hp.n_vocab * sizeof(float)), "pinned logits buffer");
      if (method == BudgetMethod::Full) {
        std::vector<int64_t> cap((size_t)L * H, n_ctx);
        make_arena(cap);
      }
    } catch (...) {
      release();
      throw;
    }
  }

  void mark(int stage) {
    if (!prof.capturing) return;
    cudaEvent_t e = nullptr;
    check(cudaEventCreate(&e), "profile event");
    check(cudaEventRecordWithFlags(e, st, cudaEventRecordExternal), "profile event");  // a graph node
    prof.ev.push_back(e);
    prof.stage.push_back(stage);
  }

  void profile_step() {
    if (!prof.on || prof.ev.size() < 2) return;
    check(cudaStreamSynchronize(st), "profile");
    for (size_t i = 1; i < prof.ev.size(); ++i) {
      float t = 0.0f;
      if (cudaEventElapsedTime(&t, prof.ev[i - 1], prof.ev[i]) == cudaSuccess) prof.ms[prof.stage[i]] += t;
    }
    ++prof.steps;
  }

  void profile_report() {
    if (!prof.steps) return;
    static const char* names[8] = {"embed", "qkv matvec", "rope+store", "attention", "out matvec", "gate/up matvec",
                                   "down matvec", "output head"};
    double tot = 0.0;
    for (double v : prof.ms) tot += v;
    std::fprintf(stderr, "headkv profile: %lld decode steps, %.3f ms/token between the first and last event\n",
                 (long long)prof.steps, tot / prof.steps);
    for (int i = 0; i < 8; ++i)
      std::fprintf(stderr, "  %-16s %8.1f us/token  %5.1f%%\n", names[i], 1e3 * prof.ms[i] / prof.steps,
                   tot > 0 ? 100.0 * prof.ms[i] / tot : 0.0);
  }

  ~Impl() {
    profile_report();
    release();
  }

  // What the device buffers' own destructors do not free (idempotent).
  void release() {
    if (st) cudaStreamSynchronize(st);  // (the graph writes the pinned buffers)
    drop_graph();
    if (step_host) cudaFreeHost(step_host);
    step_host = nullptr;
    if (logits_pin) cudaFreeHost(logits_pin);
    logits_pin = nullptr;
    if (st) cudaStreamDestroy(st);
    st = nullptr;
  }

  int64_t qdim() const { return (int64_t)hp.n_head * hp.head_dim; }
  int64_t kvdim() const { return (int64_t)hp.n_head_kv * hp.head_dim; }

  uint64_t scratch_bytes(int64_t C) const {
    const int64_t d = hp.n_embd, ff = hp.n_ff, wmax = std::min<int64_t>(dm ? dm->max_weight_elems : 0, 64ll << 20);
    const int64_t xs = std::max<int64_t>(d, qdim());
    uint64_t b = (uint64_t)C * (d + xs + qdim() + 2 * kvdim() + qdim() + 2 * ff) * 4;
    b += (uint64_t)C * std::max<int64_t>(xs, ff) * 2 + (uint64_t)wmax * (half_gemm ? 2 : 4);
    return b;
  }

  void alloc_scratch(int64_t C) {
    const int64_t d = hp.n_embd, ff = hp.n_ff, xs = std::max<int64_t>(d, qdim());
    x.alloc(C * d, "activations");
    xn.alloc(C * xs, "activations");
    q.alloc(C * qdim(), "activations");
    k.alloc(C * kvdim(), "activations");
    v.alloc(C * kvdim(), "activations");
    att.alloc(C * qdim(), "activations");
    gate.alloc(C * ff, "activations");
    up.alloc(C * ff, "activations");
    xh.alloc(C * std::max<int64_t>(xs, ff), "activations (fp16)");
    wscratch_elems = std::min<int64_t>(dm->max_weight_elems, 64ll << 20);
    wscratch.alloc(wscratch_elems * (half_gemm ? 2 : 4), "dequantized weight scratch");
    tok.alloc(C, "token ids");
    logits_d.alloc(hp.n_vocab, "logits");
  }

  // ---- arena
  void make_arena(const std::vector<int64_t>& cap) {
    const int S = (int)cap.size(), hd = hp.head_dim;
    h_off.assign(S + 1, 0);
    for (int i = 0; i < S; ++i) h_off[i + 1] = h_off[i] + cap[i];
    const int64_t total = h_off.back();
    ak.alloc(total * hd, "KV arena (keys)");
    av.alloc(total * hd, "KV arena (values)");
    apos.alloc(total, "KV arena (positions)");
    seg_off.alloc(S + 1, "KV arena offsets");
    used.alloc(S, "KV arena counts");
    h_used.assign(S, 0);
    check(cudaMemcpyAsync(seg_off.get(), h_off.data(), (S + 1) * sizeof(int64_t), cudaMemcpyHostToDevice, st), "offsets");
    check(cudaMemsetAsync(used.get(), 0, S * sizeof(int32_t), st), "counts");
    check(cudaStreamSynchronize(st), "arena");
    arena = true;
    build_items();
  }

  void drop_graph() {
    if (graph) cudaGraphExecDestroy(graph);
    graph = nullptr;
    for (cudaEvent_t e : prof.ev) cudaEventDestroy(e);
    prof.ev.clear();
    prof.stage.clear();
  }

  // Decode work items from the segments' capacities (fixed once the arena exists).
  void build_items() {
    drop_graph();
    const int L = hp.n_layer, H = hp.n_head_kv, G = hp.n_head / hp.n_head_kv;
    std::vector<int32_t> ih, is, hs(L * H), hf(L * H);
    layer_item0.assign(L, 0);
    layer_items.assign(L, 0);
    int max_items = 0;
    // one wave of the attention kernel: items per layer <= resident blocks (each head rounds up)
    const int64_t wave = std::max<int64_t>(H, decode_attention_slots(hp.head_dim, G, attn_warps) - H);
    const int64_t keys = 32 * attn_warps;  // a tile of 32 keys per warp
    for (int l = 0; l < L; ++l) {
      layer_item0[l] = (int)ih.size();
      const int64_t layer_cap = h_off[(l + 1) * H] - h_off[l * H];
      const int64_t per_item = std::max<int64_t>(kMinKeysPerItem, cdiv(cdiv(layer_cap, wave), keys) * keys);
      for (int g = 0; g < H; ++g) {
        const int64_t cap = h_off[l * H + g + 1] - h_off[l * H + g];
        const int S = (int)std::clamp<int64_t>(cdiv(cap, per_item), 1, kMaxSplits);
        hs[l * H + g] = S;
        hf[l * H + g] = (int)ih.size() - layer_item0[l];
        for (int s = 0; s < S; ++s) {
          ih.push_back(g);
          is.push_back(s);
        }
      }
      layer_items[l] = (int)ih.size() - layer_item0[l];
      max_items = std::max(max_items, layer_items[l]);
    }
    auto up_i32 = [&](DBuf<int32_t>& b, const std::vector<int32_t>& v, const char* what) {
      b.alloc(v.size(), what);
      check(cudaMemcpy(b.get(), v.data(), v.size() * sizeof(int32_t), cudaMemcpyHostToDevice), what);
    };
    up_i32(item_head, ih, "decode items");
    up_i32(item_split, is, "decode items");
    up_i32(head_splits, hs, "decode items");
    up_i32(head_first, hf, "decode items");
    part.alloc((size_t)max_items * G * (hp.head_dim + 2), "decode attention partials");
  }

  uint64_t arena_bytes() const {
    return arena ? (uint64_t)h_off.back() * CudaContext::entry_bytes(hp.head_dim) : 0;
  }

  // ---- building blocks
  // out (ldo) (=, +=) W · in for T rows of `in` (contiguous rows of W.cols floats).
  void linear(const DW& w, const float* in, int64_t T, float* out, int64_t ldo, bool add) {
    if (T <= kMatvecMaxT) {
      matvec(w, nullptr, in, w.cols, out, ldo, (int)T, add ? MV_ADD : MV_STORE, mv_q8x, st);
      return;
    }
    const void* B = in;
    if (half_gemm) {
      f32_to_f16(in, xh.get(), T * w.cols, st);
      B = xh.get();
      if (w.type == T_F16) {  // fp16 weights go to cuBLAS as they are
        gemm_nt(w.data, B, out, w.rows, T, w.cols, ldo, add ? 1.0f : 0.0f, true, st);
        return;
      }
    }
    const int64_t rows_per = std::max<int64_t>(1, wscratch_elems / w.cols);
    for (int64_t r0 = 0; r0 < w.rows; r0 += rows_per) {
      const int64_t n = std::min(rows_per, w.rows - r0);
      dequant_rows(w, r0, n, wscratch.get(), half_gemm, st);
      gemm_nt(wscratch.get(), B, out + r0, n, T, w.cols, ldo, add ? 1.0f : 0.0f, half_gemm, st);
    }
  }

  // x[T][d] += MLP(RMSNorm(x)).
  void mlp(const DevLayer& L, float* xc, int64_t T) {
    const int64_t d = hp.n_embd, ff = hp.n_ff;
    if (T == 1 && L.gate.type == L.up.type && d % 4 == 0) {
      matvec_norm_swiglu(L.gate, L.up, xc, L.ffn_norm, hp.rms_eps, gate.get(), mv_q8x, st);
      mark(5);
      linear(L.down, gate.get(), T, xc, d, true);
      mark(6);
      return;
    }
    rms_norm(xc, L.ffn_norm, xn.get(), T, d, hp.rms_eps, st);
    if (T <= kMatvecMaxT && L.gate.type == L.up.type) {
      matvec(L.gate, &L.up, xn.get(), d, gate.get(), ff, (int)T, MV_SWIGLU, mv_q8x, st);
    } else {
      linear(L.gate, xn.get(), T, gate.get(), ff, false);
      linear(L.up, xn.get(), T, up.get(), ff, false);
      silu_mul(gate.get(), up.get(), T * ff, st);
    }
    linear(L.down, gate.get(), T, xc, d, true);
  }

  // RMSNorm -> Q, K, V for T rows of xc into q / k / v.
  void qkv(const DevLayer& L, const float* xc, int64_t T) {
    rms_norm(xc, L.attn_norm, xn.get(), T, hp.n_embd, hp.rms_eps, st);
    linear(L.wq, xn.get(), T, q.get(), qdim(), false);
    linear(L.wk, xn.get(), T, k.get(), kvdim(), false);
    linear(L.wv, xn.get(), T, v.get(), kvdim(), false);
  }
  // What the architecture adds between the projections and RoPE (model/arch.h): Q/K/V biases,
  // per-head q/k RMSNorm (in place: each thread reads its element before writing it).
  void qkv_post(const DevLayer& L, int64_t T) {
    if (L.bq) {
      add_bias(q.get(), L.bq, T, qdim(), st);
      add_bias(k.get(), L.bk, T, kvdim(), st);
      add_bias(v.get(), L.bv, T, kvdim(), st);
    }
    if (L.q_norm) {
      rms_norm(q.get(), L.q_norm, q.get(), T * hp.n_head, hp.head_dim, hp.rms_eps, st);
      rms_norm(k.get(), L.k_norm, k.get(), T * hp.n_head_kv, hp.head_dim, hp.rms_eps, st);
    }
  }
  // The fused RMSNorm/QKV/RoPE/store matvec covers the plain llama block only.
  bool qkv_fusable() const { return !hp.arch->qkv_bias && !hp.arch->qk_norm && !hp.arch->rope_neox; }

  RopeStore rope_args(int64_t T) const {
    RopeStore r;
    r.q = q.get();
    r.k = k.get();
    r.v = v.get();
    r.T = (int)T;
    r.nh = hp.n_head;
    r.nkv = hp.n_head_kv;
    r.hd = hp.head_dim;
    r.rope_dim = hp.rope_dim;
    r.neox = hp.arch->rope_neox;
    r.inv_freq = dm->rope_inv_freq;
    r.rope_scale = hp.rope_scale;
    return r;
  }

  // One chunk of T tokens through every layer, K/V appended to the arena at each segment's end.
  // The chunk's first position is pos0, or read from device memory at pos0_dev (graph capture).
  void forward_arena(int64_t T, int32_t pos0, const int32_t* pos0_dev) {
    const int H = hp.n_head_kv;
    mark(0);
    embed_rows(dm->tok_embd, pos0_dev ? step_in.get() : tok.get(), T, x.get(), st);
    for (int il = 0; il < hp.n_layer; ++il) {
      const DevLayer& L = dm->layers[il];
      mark(0);
      RopeStore r = rope_args(T);
      r.pos0 = pos0;
      r.pos0_dev = pos0_dev;
      r.kh = ak.get();
      r.vh = av.get();
      r.pos = apos.get();
      r.seg_off = seg_off.get() + il * H;
      r.used = used.get() + il * H;
      const DW wqkv[3] = {L.wq, L.wk, L.wv};
      const bool one = T == 1 && matvec_norm_fusable(wqkv, 3);
      if (one && fuse_rope && qkv_fusable() && matvec_qkv_rope(wqkv, x.get(), L.attn_norm, hp.rms_eps, r, mv_q8x, st)) {
        mark(1);  // RoPE and the K/V store ran in the projection's epilogue
      } else {
        float* ys[3] = {q.get(), k.get(), v.get()};
        if (one) {
          matvec_norm(wqkv, 3, ys, x.get(), L.attn_norm, hp.rms_eps, mv_q8x, st);
        } else if (T == 1 && matvec_norm_fusable(wqkv, 1)) {
          // Q, K, V of different types (Q4_K_M's Q6_K attn_v layers): one RMSNorm-fused matvec per
          // run of one type, instead of a separate (single-block) RMSNorm and three matvecs
          for (int i = 0, n; i < 3; i += n) {
            for (n = 1; i + n < 3 && matvec_norm_fusable(wqkv + i, n + 1);) ++n;
            matvec_norm(wqkv + i, n, ys + i, x.get(), L.attn_norm, hp.rms_eps, mv_q8x, st);
          }
        } else {
          qkv(L, x.get(), T);
        }
        qkv_post(L, T);
        mark(1);
        rope_store(r, st);
      }
      mark(2);
      if (T == 1) {
        DecodeArgs a;
        a.q = q.get();
        a.out = att.get();
        a.k = ak.get();
        a.v = av.get();
        a.seg_off = seg_off.get() + il * H;
        a.used = used.get() + il * H;
        a.item_head = item_head.get() + layer_item0[il];
        a.item_split = item_split.get() + layer_item0[il];
        a.head_splits = head_splits.get() + il * H;
        a.head_first = head_first.get() + il * H;
        a.n_items = layer_items[il];
        a.nh = hp.n_head;
        a.nkv = H;
        a.hd = hp.head_dim;
        a.part = part.get();
        a.warps = attn_warps;
        decode_attention(a, st);
      } else {
        FlashArgs f;
        f.q = q.get();
        f.out = att.get();
        f.k = ak.get();
        f.v = av.get();
        f.half_kv = true;
        f.T = (int)T;
        f.nh = hp.n_head;
        f.nkv = H;
        f.hd = hp.head_dim;
        f.seg_off = seg_off.get() + il * H;
        f.seg_len = used.get() + il * H;
        half_gemm ? flash_attention_tc(f, st) : flash_attention(f, st);
      }
      mark(3);
      linear(L.wo, att.get(), T, x.get(), hp.n_embd, true);
      mark(4);
      mlp(L, x.get(), T);
    }
    add_used(used.get(), hp.n_layer * H, (int)T, st);
  }

  // Final norm + output head for `rows` rows of xf into logits_d (row-major [rows][vocab]).
  void head(const float* xf, int64_t rows) {
    if (rows == 1 && hp.n_embd % 4 == 0) {
      float* y = logits_d.get();
      matvec_norm(&dm->output, 1, &y, xf, dm->output_norm, hp.rms_eps, mv_q8x, st);
      return;
    }
    rms_norm(xf, dm->output_norm, xn.get(), rows, hp.n_embd, hp.rms_eps, st);
    const float* before = logits_d.get();
    logits_d.reserve((size_t)rows * hp.n_vocab, "logits");
    // The decode graph writes the logits buffer it was captured with: a larger buffer (logits of
    // several rows) invalidates it. (Never during capture: a single row always fits.)
    if (logits_d.get() != before) drop_graph();
    linear(dm->output, xn.get(), rows, logits_d.get(), hp.n_vocab, false);
  }

  void fetch_logits(int64_t rows, float* dst) {
    check(cudaMemcpyAsync(dst, logits_d.get(), rows * hp.n_vocab * sizeof(float), cudaMemcpyDeviceToHost, st), "logits");
  }

  // The decode step's graph (one token: forward over the arena + output head), captured once per
  // arena layout and logits buffer. It is captured when a prompt has been evaluated (eager_graph),
  // so a prompt's cost includes it, and a decode step only replays it; otherwise at the first step.
  void capture_decode_graph() {
    if (!graph) {
      cudaGraph_t g = nullptr;
      check(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal), "graph capture");
      prof.capturing = prof.on;
      try {
        if (logits_in_graph) copy_step_input();
        forward_arena(1, 0, step_in.get() + 1);
        head(x.get(), 1);
        mark(7);
        if (logits_in_graph) fetch_logits(1, logits_pin);
        prof.capturing = false;
      } catch (...) {
        prof.capturing = false;
        cudaStreamEndCapture(st, &g);
        if (g) cudaGraphDestroy(g);
        throw;
      }
      check(cudaStreamEndCapture(st, &g), "graph capture");
      const cudaError_t e = cudaGraphInstantiate(&graph, g, 0);
      cudaGraphDestroy(g);
      check(e, "graph instantiate");
    }
  }
  // After a prompt: the graph is captured now (a failure here is left for the first decode step to
  // report: the prompt itself has been evaluated).
  void prepare_decode() {
    if (!eager_graph || graph) return;
    try {
      capture_decode_graph();
    } catch (...) {
      cudaGetLastError();
    }
  }
  // The step's token and position, step_host -> step_in (a node of the graph with logits_in_graph).
  void copy_step_input() {
    check(cudaMemcpyAsync(step_in.get(), step_host, 2 * sizeof(int32_t), cudaMemcpyHostToDevice, st), "step input");
  }
  void decode_graph_step(int32_t token) {
    capture_decode_graph();
    step_host[0] = token;  // no step runs now (eval synchronizes): the graph reads them when it runs
    step_host[1] = n_past;
    if (!logits_in_graph) copy_step_input();
    check(cudaGraphLaunch(graph, st), "graph launch");
    profile_step();
  }

  // ---- compressed prefill
  // Whether only each layer's total is binding and selection splits it among the heads (Ada-KV).
  bool layer_pooled() const {
    return method == BudgetMethod::AdaKV || (method == BudgetMethod::HeadKV && kv.adaptive);
  }
  void prefill_compressed(const int32_t* tokens, int64_t N, bool all_logits);
  // The layer buffers hold N rows: the prompt (n_prompt), then the observation probe if any.
  void select_layer(int il, int64_t N, int64_t n_prompt, const void* LK, const void* LV, const float* qwin, float* raw,
                    float* pooled, float* rowstat, const uint8_t* runs, uint8_t* flags, int32_t* list, int32_t* count);

  void eval(const int32_t* tokens, int64_t n, bool all_logits);
};

void CudaContext::Impl::select_layer(int il, int64_t N, int64_t n_prompt, const void* LK, const void* LV,
                                     const float* qwin, float* raw, float* pooled, float* rowstat, const uint8_t* runs,
                                     uint8_t* flags, int32_t* list, int32_t* count) {
  const int H = hp.n_head_kv, hd = hp.head_dim;
  const int a = plan->window;
  const int64_t P = n_prompt - a;
  const int n_win = N > n_prompt ? (int)(N - n_prompt) : a;  // the probe's tokens, or the prompt's last α
  std::vector<int64_t> caps(H);
  for (int g = 0; g < H; ++g) caps[g] = plan->at(il, g);
  if (P > 0) check(cudaMemsetAsync(flags, plan->compressed ? 0 : 1, (size_t)H * P, st), "flags");
  if (plan->compressed && P > 0) {
    if (method == BudgetMethod::Streaming) {
      std::vector<int64_t> sink(H);
      for (int g = 0; g < H; ++g) sink[g] = std::min<int64_t>(kv.sink, caps[g]);
      streaming_flags(flags, P, H, sink.data(), caps.data(), nullptr, st);
    } else {
      window_scores(qwin, LK, half_gemm, N, n_win, P, hp.n_head, H, hd, kv.kernel, kv.max_pool, runs, kv.probe_echo,
                    raw, pooled, rowstat, st);
      if (keep_scores) {
        sel_scores.resize(hp.n_layer);
        sel_scores[il].resize((size_t)H * P);
        check(cudaMemcpyAsync(sel_scores[il].data(), pooled, (size_t)H * P * sizeof(float), cudaMemcpyDeviceToHost, st),
              "scores");
        check(cudaStreamSynchronize(st), "scores");
      }
      if (layer_pooled()) {
        std::vector<int64_t> fl(H);
        int64_t total = 0, floors = 0;
        for (int g = 0; g < H; ++g) {
          fl[g] = std::min<int64_t>(P, (int64_t)(kv.adakv_floor * caps[g]));
          total += caps[g];
          floors += fl[g];
        }
        topk_flags(pooled, P, H, fl.data(), nullptr, flags, nullptr, st);
        const int64_t extra = std::min<int64_t>(total - floors, (int64_t)H * P - floors);
        topk_flags(pooled, (int64_t)H * P, 1, &extra, flags, flags, nullptr, st);
      } else {
        topk_flags(pooled, P, H, caps.data(), nullptr, flags, nullptr, st);
      }
    }
  }
  compact_flags(flags, P, n_prompt, N, H, list, count, st);
  int64_t max_count = N;
  if (layer_pooled() && plan->compressed) {
    layer_offsets(seg_off.get() + il * H, count, H, kv.max_new_tokens, st);
  } else {
    max_count = 0;
    for (int g = 0; g < H; ++g) max_count = std::max<int64_t>(max_count, caps[g] + a);
  }
  gather_to_arena(list, count, N, H, hd, LK, LV, half_gemm, seg_off.get() + il * H, ak.get(), av.get(), apos.get(),
                  used.get() + il * H, max_count, st);
}

void CudaContext::Impl::prefill_compressed(const int32_t* prompt, int64_t n_prompt, bool all_logits) {
  const int H = hp.n_head_kv, hd = hp.head_dim, nh = hp.n_head;
  const int64_t d = hp.n_embd;
  BudgetParams bp;
  bp.method = method;
  bp.budget = kv.budget;
  bp.window = kv.window;
  bp.beta = kv.beta;
  bp.temp = kv.temp;
  sel_scores.clear();
  plan = plan_budget(bp, scores ? &*scores : nullptr, hp.n_layer, nh, H, n_prompt);
  plan->layer_pooled = layer_pooled();
  std::vector<int64_t> cap(plan->cap.size());
  for (size_t i = 0; i < cap.size(); ++i) cap[i] = (int64_t)plan->cap[i] + plan->window + kv.max_new_tokens;
  const bool scored = plan->compressed && method != BudgetMethod::Streaming;
  const std::vector<int32_t> rows_tok = prefill_rows(kv, prompt, n_prompt, scored);
  const int32_t* tokens = rows_tok.data();
  const int64_t N = (int64_t)rows_tok.size();
  const int a = plan->window;
  const int64_t P = n_prompt - a;
  const int n_win = N > n_prompt ? (int)(N - n_prompt) : a;
  std::vector<uint8_t> runs_h;
  if (scored && kv.span > 1) {
    if (tok_edges.empty()) tok_edges = token_edges(model.tokenizer());
    runs_h = run_continues(tok_edges, prompt, P, kv.span);
  }
  // Everything the prompt needs, checked before allocating any of it.
  uint64_t arena_b = 0;
  for (int64_t c : cap) arena_b += (uint64_t)c * CudaContext::entry_bytes(hd);
  // The layer's K/V: fp16 in the fast precision (what the arena keeps), fp32 in cuda-fp32.
  const uint64_t layer_kv = 2ull * H * N * hd * (half_gemm ? 2 : 4);
  // The prompt's residual stream (every token's activations between layers) is the largest buffer
  // after the layer's K/V: fp16 in the fast precision too (each chunk runs its layer in fp32 scratch).
  const uint64_t need = arena_b + layer_kv + (uint64_t)N * d * (half_gemm ? 2 : 4) + (uint64_t)n_win * nh * hd * 4 +
                        2ull * H * P * 4 + (uint64_t)H * P + (uint64_t)P + (uint64_t)H * N * 4 + (uint64_t)nh * n_win * 8 + 1024;
  require_device_bytes(need, "a compressed prompt of " + std::to_string(N) + " tokens (arena " + std::to_string(arena_b) +
                                 " bytes, one layer's K/V " + std::to_string(layer_kv) + " bytes)");
  DBuf<float> X, LK, LV, qwin, raw, pooled, rowstat;
  DBuf<__half> Xh, LKh, LVh;
  DBuf<uint8_t> flags, runs;
  DBuf<int32_t> list, count;
  make_arena(cap);
  if (!runs_h.empty()) {
    runs.alloc(runs_h.size(), "token runs");
    check(cudaMemcpyAsync(runs.get(), runs_h.data(), runs_h.size(), cudaMemcpyHostToDevice, st), "token runs");
  }
  if (half_gemm) {
    Xh.alloc(N * d, "prompt activations (fp16)");
    LKh.alloc((size_t)H * N * hd, "layer keys");
    LVh.alloc((size_t)H * N * hd, "layer values");
  } else {
    X.alloc(N * d, "prompt activations");
    LK.alloc((size_t)H * N * hd, "layer keys");
    LV.alloc((size_t)H * N * hd, "layer values");
  }
  const void* lk = half_gemm ? (const void*)LKh.get() : (const void*)LK.get();
  const void* lv = half_gemm ? (const void*)LVh.get() : (const void*)LV.get();
  qwin.alloc((size_t)std::max(n_win, 1) * nh * hd, "window queries");
  raw.alloc((size_t)H * std::max<int64_t>(P, 1), "window scores");
  pooled.alloc((size_t)H * std::max<int64_t>(P, 1), "pooled scores");
  rowstat.alloc((size_t)nh * std::max(n_win, 1) * 2, "softmax statistics");
  flags.alloc((size_t)H * std::max<int64_t>(P, 1), "selection flags");
  list.alloc((size_t)H * N, "kept lists");
  count.alloc(H, "kept counts");
  prefill_peak = layer_kv + arena_bytes();

  for (int64_t c0 = 0; c0 < N; c0 += ub) {
    const int64_t T = std::min<int64_t>(ub, N - c0);
    check(cudaMemcpyAsync(tok.get(), tokens + c0, T * sizeof(int32_t), cudaMemcpyHostToDevice, st), "tokens");
    if (half_gemm) {
      embed_rows(dm->tok_embd, tok.get(), T, x.get(), st);
      f32_to_f16(x.get(), Xh.get() + c0 * d, T * d, st);
    } else {
      embed_rows(dm->tok_embd, tok.get(), T, X.get() + c0 * d, st);
    }
    check(cudaStreamSynchronize(st), "tokens");  // the host token buffer is reused
  }
  for (int il = 0; il < hp.n_layer; ++il) {
    const DevLayer& L = dm->layers[il];
    for (int64_t c0 = 0; c0 < N; c0 += ub) {
      const int64_t T = std::min<int64_t>(ub, N - c0);
      float* xc = half_gemm ? x.get() : X.get() + c0 * d;
      if (half_gemm) f16_to_f32(Xh.get() + c0 * d, xc, T * d, st);
      qkv(L, xc, T);
      qkv_post(L, T);
      RopeStore r = rope_args(T);
      r.pos0 = (int32_t)c0;
      r.kf = LK.get();  // null in the fast precision
      r.vf = LV.get();
      r.kfh = LKh.get();
      r.vfh = LVh.get();
      r.ld_head = N;
      r.row0 = c0;
      rope_store(r, st);
      FlashArgs f;
      f.q = q.get();
      f.out = att.get();
      f.k = lk;
      f.v = lv;
      f.half_kv = half_gemm;
      f.T = (int)T;
      f.nh = nh;
      f.nkv = H;
      f.hd = hd;
      f.ld_head = N;
      f.n_before = c0;
      half_gemm ? flash_attention_tc(f, st) : flash_attention(f, st);
      const int64_t wb = N - n_win, w0 = std::max<int64_t>(c0, wb);  // window rows in this chunk
      if (w0 < c0 + T)
        check(cudaMemcpyAsync(qwin.get() + (w0 - wb) * nh * hd, q.get() + (w0 - c0) * nh * hd,
                              (c0 + T - w0) * nh * hd * sizeof(float), cudaMemcpyDeviceToDevice, st), "window queries");
      linear(L.wo, att.get(), T, xc, d, true);
      mlp(L, xc, T);
      if (half_gemm) f32_to_f16(xc, Xh.get() + c0 * d, T * d, st);
    }
    select_layer(il, N, n_prompt, lk, lv, qwin.get(), raw.get(), pooled.get(), rowstat.get(), runs.get(), flags.get(),
                 list.get(), count.get());
  }
  const int64_t rows = all_logits ? n_prompt : 1;  // logits_h was sized by eval() before the prompt ran
  for (int64_t r0 = n_prompt - rows; r0 < n_prompt; r0 += ub) {
    const int64_t R = std::min<int64_t>(ub, n_prompt - r0);
    if (half_gemm) f16_to_f32(Xh.get() + r0 * d, x.get(), R * d, st);
    head(half_gemm ? x.get() : X.get() + r0 * d, R);
    fetch_logits(R, logits_h.data() + (r0 - (n_prompt - rows)) * hp.n_vocab);
    check(cudaStreamSynchronize(st), "logits");
  }
  // Host mirrors of the arena layout (Ada-KV re-split layers on the device).
  check(cudaMemcpyAsync(h_off.data(), seg_off.get(), h_off.size() * sizeof(int64_t), cudaMemcpyDeviceToHost, st), "offsets");
  check(cudaMemcpyAsync(h_used.data(), used.get(), h_used.size() * sizeof(int32_t), cudaMemcpyDeviceToHost, st), "counts");
  check(cudaStreamSynchronize(st), "compressed prefill");
  if (layer_pooled()) build_items();
}

void CudaContext::Impl::eval(const int32_t* tokens, int64_t n, bool all_logits) {
  if (n <= 0) fail(ErrorKind::InvalidArgument, "eval needs at least one token");
  if (n > (int64_t)INT32_MAX / 2 - n_past)
    fail(ErrorKind::ContextFull, "positions past 2^30 are not supported (" + std::to_string(n_past) + " + " + std::to_string(n) + ")");
  if (method == BudgetMethod::Full && n > (int64_t)n_ctx - n_past)
    fail(ErrorKind::ContextFull, "context is full: " + std::to_string(n_past) + " tokens cached + " + std::to_string(n) +
                                     " new > n_ctx " + std::to_string(n_ctx));
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= hp.n_vocab)
      fail(ErrorKind::InvalidArgument, "token id " + std::to_string(tokens[i]) + " is outside the vocabulary [0, " +
                                           std::to_string(hp.n_vocab) + ")");
  if (arena && method != BudgetMethod::Full) {
    for (size_t s = 0; s < h_used.size(); ++s)
      if (h_used[s] + n > h_off[s + 1] - h_off[s])
        fail(ErrorKind::ContextFull, "compressed KV cache is full: " + std::to_string(n) + " more tokens do not fit the " +
                                         std::to_string(kv.max_new_tokens) + " decode slots reserved per head (raise max_new_tokens)");
  }
  // Host logits first, with the CPU backend's checked allocation: a request larger than the memory
  // available fails with OutOfMemory here, before any work, instead of an over-committed vector
  // that gets the process killed when its pages are written.
  const int64_t rows = all_logits ? n : 1;
  if (logits_h.size() < (uint64_t)rows * hp.n_vocab)
    checked_assign(logits_h, checked_mul((uint64_t)rows, (uint64_t)hp.n_vocab, "logits"),
                   all_logits ? "logits for every token" : "logits");
  if (method != BudgetMethod::Full && !arena) {
    try {
      prefill_compressed(tokens, n, all_logits);
    } catch (...) {
      cudaStreamSynchronize(st);
      cudaGetLastError();
      arena = false;
      ak.reset();
      av.reset();
      apos.reset();
      plan.reset();
      drop_graph();
      throw;
    }
    history.insert(history.end(), tokens, tokens + n);
    n_past = n_prompt = (int32_t)n;
    n_logit_rows = rows;
    pinned_logits = false;
    prepare_decode();
    return;
  }
  if (n == 1) {
    decode_graph_step(tokens[0]);
    if (!logits_in_graph) fetch_logits(1, logits_h.data());
    check(cudaStreamSynchronize(st), "decode");
  } else {
    for (int64_t off = 0; off < n; off += ub) {  // n_past moves only once every chunk has run
      const int64_t T = std::min<int64_t>(ub, n - off);
      check(cudaMemcpyAsync(tok.get(), tokens + off, T * sizeof(int32_t), cudaMemcpyHostToDevice, st), "tokens");
      forward_arena(T, n_past + (int32_t)off, nullptr);
      if (all_logits) {
        for (int64_t r0 = 0; r0 < T; r0 += ub) {
          head(x.get() + r0 * hp.n_embd, std::min<int64_t>(ub, T - r0));
          fetch_logits(std::min<int64_t>(ub, T - r0), logits_h.data() + (off + r0) * hp.n_vocab);
        }
      } else if (off + T == n) {
        head(x.get() + (T - 1) * hp.n_embd, 1);
        fetch_logits(1, logits_h.data());
      }
      check(cudaStreamSynchronize(st), "prefill");
    }
  }
  for (auto& u : h_used) u += (int32_t)n;
  history.insert(history.end(), tokens, tokens + n);
  n_past += (int32_t)n;
  n_logit_rows = rows;
  pinned_logits = n == 1 && logits_in_graph;  // (set with the rows: a failed eval leaves the last ones)
  if (n > 1) prepare_decode();  // a single token has just captured or replayed the graph
}

// ---- public surface
namespace {
// The CUDA backend stores K and V in f16 only: other type names fail here, before any allocation.
const ContextParams& check_cuda_kv_types(const ContextParams& p) {
  for (const auto& [name, which] : {std::pair{p.kv.type_k, "KV cache type (K)"}, std::pair{p.kv.type_v, "KV cache type (V)"}})
    if (parse_kv_type(name, which) != KVType::F16)
      fail(ErrorKind::Unsupported, std::string(which) + " '" + name + "': the CUDA backend stores the KV cache in f16 only");
  return p;
}
}  // namespace

CudaContext::CudaContext(const Model& m, const ContextParams& p, CudaPrecision prec)
    : p_(std::make_unique<Impl>(m, check_cuda_kv_types(p), prec)) {}
CudaContext::~CudaContext() = default;

void CudaContext::eval(const int32_t* tokens, int64_t n, bool all_logits) { p_->eval(tokens, n, all_logits); }

void CudaContext::truncate(int32_t n_keep) {
  Impl& I = *p_;
  if (n_keep < 0 || n_keep > I.n_past)
    fail(ErrorKind::InvalidArgument, "truncate: " + std::to_string(n_keep) + " tokens to keep, the context holds " + std::to_string(I.n_past));
  if (n_keep == 0) return reset();
  const bool comp = I.method != BudgetMethod::Full;
  if (comp && I.arena && n_keep < I.n_prompt)
    fail(ErrorKind::InvalidArgument, "truncate: the compressed prompt's " + std::to_string(I.n_prompt) +
                                         " tokens cannot be partly forgotten (keep at least them, or reset)");
  const int32_t k = I.n_past - n_keep;
  if (k > 0) {  // every segment (full cache: one per head; arena: the decoded entries) drops k entries
    add_used(I.used.get(), (int)I.h_used.size(), -k, I.st);
    check(cudaStreamSynchronize(I.st), "truncate");
    for (auto& u : I.h_used) u -= k;
  }
  I.n_past = n_keep;
  I.history.resize((size_t)n_keep);
  I.n_logit_rows = 0;  // the logits were of a forgotten token
}

int32_t CudaContext::n_prompt() const { return p_->method != BudgetMethod::Full && p_->arena ? p_->n_prompt : 0; }

void CudaContext::set_max_new_tokens(int32_t n) {
  if (n < 0) fail(ErrorKind::InvalidArgument, "max_new_tokens must be >= 0");
  if (p_->method != BudgetMethod::Full && p_->arena)
    fail(ErrorKind::InvalidArgument, "max_new_tokens can only change before the compressed prompt is evaluated");
  p_->kv.max_new_tokens = n;
}

void CudaContext::reset() {
  Impl& I = *p_;
  I.n_past = 0;
  I.n_logit_rows = 0;
  I.history.clear();
  I.prefill_peak = 0;
  if (I.method == BudgetMethod::Full) {
    check(cudaMemsetAsync(I.used.get(), 0, I.h_used.size() * sizeof(int32_t), I.st), "reset");
    check(cudaStreamSynchronize(I.st), "reset");
    std::fill(I.h_used.begin(), I.h_used.end(), 0);
  } else {
    I.drop_graph();
    I.arena = false;
    I.ak.reset();
    I.av.reset();
    I.apos.reset();
    I.plan.reset();
  }
}

KVState CudaContext::save_state() const {
  const Impl& I = *p_;
  const int L = I.hp.n_layer, H = I.hp.n_head_kv, hd = I.hp.head_dim;
  KVState s;
  s.n_layer = L;
  s.n_head_kv = H;
  s.head_dim = hd;
  s.n_vocab = I.hp.n_vocab;
  s.method = I.kv.method;
  s.type_k = s.type_v = KVType::F16;
  s.n_past = I.n_past;
  s.n_prompt = n_prompt();
  s.history = I.history;
  if (const float* lg = logits()) s.logits.assign(lg, lg + I.hp.n_vocab);
  const bool comp = I.method != BudgetMethod::Full;
  s.arena = comp && I.arena;
  if (s.arena) {
    s.plan = *I.plan;
  }
  if (comp && !I.arena) {  // a compressing context before its prompt: nothing cached
    s.used.assign((size_t)L * H, 0);
    return s;
  }
  const size_t rb = kv_row_bytes(KVType::F16, hd);
  uint64_t entries = 0;
  for (int32_t u : I.h_used) entries += (uint64_t)u;
  s.k.resize(entries * rb);
  s.v.resize(entries * rb);
  if (s.arena) s.pos.resize(entries);
  size_t e = 0;
  for (int i = 0; i < L * H; ++i) {
    const int64_t n = I.h_used[i], at = I.h_off[i];
    s.used.push_back(n);
    if (s.arena) s.capacity.push_back(I.h_off[i + 1] - at);
    if (n) {
      check(cudaMemcpy(&s.k[e * rb], I.ak.get() + at * hd, n * rb, cudaMemcpyDeviceToHost), "save state");
      check(cudaMemcpy(&s.v[e * rb], I.av.get() + at * hd, n * rb, cudaMemcpyDeviceToHost), "save state");
      if (s.arena) check(cudaMemcpy(&s.pos[e], I.apos.get() + at, n * sizeof(int32_t), cudaMemcpyDeviceToHost), "save state");
    }
    e += (size_t)n;
  }
  return s;
}

void CudaContext::load_state(const KVState& s) {
  Impl& I = *p_;
  const int L = I.hp.n_layer, H = I.hp.n_head_kv, hd = I.hp.head_dim;
  check_state(s, L, H, hd, I.hp.n_vocab, I.kv.method, KVType::F16, KVType::F16, I.n_ctx);
  if (!s.arena)
    for (int64_t n : s.used)
      if (n != s.n_past) fail(ErrorKind::InvalidArgument, "the state does not fit this context: its full cache lacks positions");
  if (s.arena) {
    uint64_t entries = 0;
    for (int64_t c : s.capacity) entries += (uint64_t)c;
    require_device_bytes(entries * entry_bytes(hd), "the KV arena of a loaded state (" + std::to_string(entries) + " entries)");
  }
  if (!s.logits.empty() && I.logits_h.size() < (size_t)I.hp.n_vocab)
    checked_assign(I.logits_h, (uint64_t)I.hp.n_vocab, "logits");
  reset();
  const size_t rb = kv_row_bytes(KVType::F16, hd);
  try {
    if (s.arena) I.make_arena(s.capacity);
    std::vector<int32_t> pos;
    size_t e = 0;
    for (int i = 0; i < L * H; ++i) {
      const int64_t n = s.used[i], at = I.h_off[i];
      if (n) {
        check(cudaMemcpy(I.ak.get() + at * hd, &s.k[e * rb], n * rb, cudaMemcpyHostToDevice), "load state");
        check(cudaMemcpy(I.av.get() + at * hd, &s.v[e * rb], n * rb, cudaMemcpyHostToDevice), "load state");
        if (!s.arena) {  // the full cache's positions are its rows
          pos.resize((size_t)n);
          for (int64_t j = 0; j < n; ++j) pos[j] = (int32_t)j;
        }
        const int32_t* p = s.arena ? &s.pos[e] : pos.data();
        check(cudaMemcpy(I.apos.get() + at, p, n * sizeof(int32_t), cudaMemcpyHostToDevice), "load state");
      }
      I.h_used[i] = (int32_t)n;
      e += (size_t)n;
    }
    check(cudaMemcpy(I.used.get(), I.h_used.data(), I.h_used.size() * sizeof(int32_t), cudaMemcpyHostToDevice), "load state");
  } catch (...) {
    reset();
    throw;
  }
  if (s.arena) {
    I.plan = s.plan;
    I.n_prompt = s.n_prompt;
  }
  I.n_past = s.n_past;
  I.history = s.history;
  if (!s.logits.empty()) {
    std::copy(s.logits.begin(), s.logits.end(), I.logits_h.begin());
    I.n_logit_rows = 1;
    I.pinned_logits = false;
  }
  if (s.arena) I.prepare_decode();
}

const float* CudaContext::logits_all() const {
  if (!p_->n_logit_rows) return nullptr;
  return p_->pinned_logits ? p_->logits_pin : p_->logits_h.data();  // pinned: one row
}
const float* CudaContext::logits() const {
  const float* all = logits_all();
  return all ? all + (size_t)(p_->n_logit_rows - 1) * p_->hp.n_vocab : nullptr;
}
int64_t CudaContext::n_logit_rows() const { return p_->n_logit_rows; }
const Model& CudaContext::model() const { return p_->model; }
int32_t CudaContext::n_ctx() const { return p_->n_ctx; }
int32_t CudaContext::n_past() const { return p_->n_past; }
const std::vector<int32_t>& CudaContext::history() const { return p_->history; }
uint64_t CudaContext::kv_bytes() const { return p_->arena_bytes(); }
uint64_t CudaContext::full_kv_bytes() const {
  const Impl& I = *p_;
  const bool comp = I.method != BudgetMethod::Full;
  const uint64_t positions = comp ? (uint64_t)I.n_past + (I.arena ? I.kv.max_new_tokens : 0) : (uint64_t)I.n_ctx;
  return positions * I.hp.n_layer * I.hp.n_head_kv * entry_bytes(I.hp.head_dim);
}
uint64_t CudaContext::prefill_peak_kv_bytes() const { return p_->prefill_peak; }
const KVConfig& CudaContext::kv_config() const { return p_->kv; }
bool CudaContext::compressing() const { return p_->method != BudgetMethod::Full; }
const BudgetPlan* CudaContext::plan() const { return p_->plan ? &*p_->plan : nullptr; }
bool CudaContext::has_arena() const { return compressing() && p_->arena; }
int CudaContext::n_layer() const { return p_->hp.n_layer; }
int CudaContext::n_head_kv() const { return p_->hp.n_head_kv; }
int64_t CudaContext::capacity(int l, int g) const {
  const size_t s = (size_t)l * p_->hp.n_head_kv + g;
  return p_->h_off[s + 1] - p_->h_off[s];
}
int64_t CudaContext::used(int l, int g) const { return p_->h_used[(size_t)l * p_->hp.n_head_kv + g]; }
std::vector<int32_t> CudaContext::positions(int l, int g) const {
  const size_t s = (size_t)l * p_->hp.n_head_kv + g;
  std::vector<int32_t> out((size_t)p_->h_used[s]);
  if (!out.empty())
    check(cudaMemcpy(out.data(), p_->apos.get() + p_->h_off[s], out.size() * sizeof(int32_t), cudaMemcpyDeviceToHost),
          "positions");
  return out;
}
uint64_t CudaContext::bytes_used() const {
  uint64_t n = 0;
  for (int32_t u : p_->h_used) n += (uint64_t)u;
  return n * entry_bytes(p_->hp.head_dim);
}
const std::vector<std::vector<float>>& CudaContext::selection_scores() const { return p_->sel_scores; }
uint64_t CudaContext::peak_device_bytes() const { return mem_counter().peak.load(); }

}  // namespace headkv
