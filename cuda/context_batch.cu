// CudaBatch: one decode step over several CudaContexts of one Model (backend/cuda_batch.h).
// The rows of the step share every linear layer. In the fast precision on Q4_0 / Q4_1 / Q8_0 weights,
// 9 rows and more run on int8 tensor cores (matmul_mma_q8.cu; HEADKV_BATCH_MMQ=0: the paths below).
// Otherwise up to 31 rows go through the matvec kernels (each weight read once per 8 rows, so the step
// grows with every 8 rows; int8 activations in the fast precision, as a lone sequence's step, else
// fp32), 32 and more through cuBLAS on weights dequantized to a scratch (a fixed cost per step that 32
// rows repay: BENCHMARKS.md, "Several sequences"); HEADKV_BATCH_GEMM=1 takes cuBLAS from 9 rows, =0
// never. RoPE with the K/V store and the decode attention run against each sequence's own arena, with
// its own decode work items: one launch of each kernel per layer for all sequences (their arguments in
// device memory, grid.y or grid.z the sequence) when they share the K/V types and attention warps, else
// (or with HEADKV_BATCH_ATTN=0) one per sequence. Positions and tokens are read from device memory, so
// a captured step replays for as long as the list of sequences (and their arenas) stays the same.
#include <algorithm>
#include <functional>
#include <map>
#include <set>
#include <string>

#include "backend/cuda_batch.h"
#include "context_impl.cuh"
#include "quant.cuh"

namespace headkv {

struct CudaBatch::Impl {
  const Model& model;
  const LlamaHParams& hp;
  std::shared_ptr<DevModel> dm;
  cudaStream_t st = nullptr;
  int gemm_from = kGemmRows;  // rows from which the linear layers run as cuBLAS GEMMs
  bool use_graph = true;
  int rows = 0;          // rows the scratch holds
  bool half_gemm = true;  // the sequences' precision: fp16 GEMM operands (HEADKV_BATCH_GEMM=1)
  bool q8x = true;        // the matvecs' activations: int8 (the fast precision's, as CudaContext's mv_q8x)
  bool mmq = true;        // q8x from 9 rows: int8 tensor cores on Q4_0 / Q4_1 / Q8_0 (HEADKV_BATCH_MMQ=0: off)
  DBuf<uint8_t> mmq_scratch;  // the rows' x quantized for matmul_mma_q8
  DBuf<float> x, xn, q, k, v, att, gate, up, logits;
  DBuf<__half> xh;
  DBuf<uint8_t> wscratch;
  int64_t wscratch_elems = 0;
  DBuf<int32_t> in_dev;  // [kMaxRows] tokens, then [kMaxRows] positions
  int32_t* in_host = nullptr;
  // Captured steps by row count: the instantiated graph and what it was captured for.
  struct Graph {
    cudaGraphExec_t exec = nullptr;
    std::vector<intptr_t> key;
    DBuf<uint8_t> args;  // the batched RoPE/store and attention launches' arguments (SeqArgs)
  };
  bool attn_n = true;  // one RoPE/store and one attention launch per layer for all sequences
  DBuf<uint8_t> plain_args;  // SeqArgs of a step without graphs
  // Per layer, every sequence's RopeStore, then every sequence's DecodeArgs, in device memory.
  struct SeqArgs {
    const RopeStore* rope = nullptr;  // [n_layer][n]
    const DecodeArgs* dec = nullptr;  // [n_layer][n]
    std::vector<int> max_items;       // per layer
  };
  SeqArgs seq_args;  // of the step being launched (empty rope: one launch per sequence)
  std::map<int, Graph> graphs;
  int64_t captures = 0, updates = 0;  // graphs instantiated, and updated in place

  Impl(const Model& m, CudaPrecision prec) : model(m), hp(m.hparams()), half_gemm(prec == CudaPrecision::Fast) {
    const ArchInfo& a = *hp.arch;
    if (a.post_norms || a.gelu || a.embd_scale || a.softcaps || hp.has_swa())
      fail(ErrorKind::Unsupported, std::string("batched decode on the GPU: architecture '") + a.name +
                                       "' is not built for it (post-norms, GeGLU, embedding scale, soft-capping and "
                                       "sliding-window layers)");
    if (env_is("HEADKV_BATCH_GEMM", "1")) gemm_from = kMatvecMaxT + 1;
    if (env_is("HEADKV_BATCH_GEMM", "0")) gemm_from = kMaxRows + 1;
    use_graph = !env_is("HEADKV_BATCH_GRAPH", "0");
    attn_n = !env_is("HEADKV_BATCH_ATTN", "0");
    q8x = half_gemm && !env_is("HEADKV_MATVEC", "fp32");
    mmq = q8x && !env_is("HEADKV_BATCH_MMQ", "0");
    require_supported_device();
    dm = DevModel::get(m);
    try {
      check(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), "stream");
      blas_init(st);
      in_dev.alloc(2 * kMaxRows, "batch step input");
      check(cudaMallocHost(&in_host, 2 * kMaxRows * sizeof(int32_t)), "pinned step buffer");
    } catch (...) {
      release();
      throw;
    }
  }
  ~Impl() { release(); }

  void release() {
    if (st) cudaStreamSynchronize(st);
    drop_graph();
    if (in_host) cudaFreeHost(in_host);
    in_host = nullptr;
    if (st) cudaStreamDestroy(st);
    st = nullptr;
  }

  void drop_graph() {
    for (auto& [n, g] : graphs) cudaGraphExecDestroy(g.exec);
    graphs.clear();
  }

  int64_t qdim() const { return (int64_t)hp.n_head * hp.head_dim; }
  int64_t kvdim() const { return (int64_t)hp.n_head_kv * hp.head_dim; }
  bool gemm(int64_t B) const { return B >= gemm_from; }
  int64_t wscratch_for(int B) const { return gemm(B) ? std::min<int64_t>(dm->max_weight_elems, 64ll << 20) : 0; }

  // The int8 copy of up to kMmaMaxT rows of the widest input the tensor-core rows take (0: none).
  size_t mmq_bytes(int B) const {
    const int64_t widest = std::max<int64_t>({hp.n_embd, qdim(), hp.n_ff});
    return mmq && B > kMatvecMaxT ? matmul_mma_q8_scratch(widest, std::min(B, kMmaMaxT)) : 0;
  }

  uint64_t scratch_bytes(int B) const {
    if (B == 0) return 0;
    const int64_t d = hp.n_embd, ff = hp.n_ff, xs = std::max<int64_t>(d, qdim());
    uint64_t b = (uint64_t)B * (d + xs + 2 * qdim() + 2 * kvdim() + 2 * ff + hp.n_vocab) * 4;
    if (gemm(B)) b += (uint64_t)B * std::max<int64_t>(xs, ff) * 2 + (uint64_t)wscratch_for(B) * (half_gemm ? 2 : 4);
    return b + mmq_bytes(B);
  }

  static int bucket(int n) {
    int B = 8;
    while (B < n) B *= 2;
    return std::min(B, kMaxRows);
  }

  // Scratch for at least n rows, in buckets of 8, 16, 32, 64 (each growth drops the captured step).
  void ensure_rows(int n) {
    if (n <= rows) return;
    const int B = bucket(n);
    require_device_bytes(scratch_bytes(B) - scratch_bytes(rows), "batched decode scratch for " + std::to_string(B) + " sequences");
    cudaStreamSynchronize(st);
    drop_graph();
    rows = 0;
    const int64_t d = hp.n_embd, ff = hp.n_ff, xs = std::max<int64_t>(d, qdim());
    x.alloc(B * d, "batch activations");
    xn.alloc(B * xs, "batch activations");
    q.alloc(B * qdim(), "batch activations");
    k.alloc(B * kvdim(), "batch activations");
    v.alloc(B * kvdim(), "batch activations");
    att.alloc(B * qdim(), "batch activations");
    gate.alloc(B * ff, "batch activations");
    up.alloc(B * ff, "batch activations");
    logits.alloc((size_t)B * hp.n_vocab, "batch logits");
    if (mmq_bytes(B)) mmq_scratch.alloc(mmq_bytes(B), "batch activations (int8)");
    if (gemm(B)) {
      xh.alloc(B * std::max<int64_t>(xs, ff), "batch activations (fp16)");
      wscratch_elems = wscratch_for(B);
      wscratch.alloc(wscratch_elems * (half_gemm ? 2 : 4), "dequantized weight scratch");
    }
    rows = B;
  }

  // out (ldo) (=, +=) W · in for T rows of `in` (rows of W.cols floats).
  void linear(const DW& w, const float* in, int64_t T, float* out, int64_t ldo, bool add) {
    if (!mma(w, T) && gemm(T))
      return gemm_weights(w, in, T, out, ldo, add, half_gemm, xh.get(), wscratch.get(), wscratch_elems, st);
    linear_rows(w, nullptr, in, w.cols, T, out, ldo, add ? MV_ADD : MV_STORE);
  }

  // T rows without cuBLAS: on the int8 tensor cores (mma) in slices of kMmaMaxT, else through the
  // matvec rows in slices of kMatvecMaxT.
  void linear_rows(const DW& w, const DW* w2, const float* in, int64_t ldx, int64_t T, float* out, int64_t ldo,
            MatvecMode mode) {
    const bool tc = mma(w, T);
    const int64_t slice = tc ? kMmaMaxT : kMatvecMaxT;
    for (int64_t t0 = 0; t0 < T; t0 += slice) {
      const int t = (int)std::min(slice, T - t0);
      if (tc) matmul_mma_q8(w, w2, in + t0 * ldx, ldx, out + t0 * ldo, ldo, t, mode, mmq_scratch.get(), st);
      else matvec_rows(w, w2, in + t0 * ldx, ldx, out + t0 * ldo, ldo, t, mode);
    }
  }

  // More than kMatvecMaxT rows on int8 tensor cores (the fast precision, Q4_0 / Q4_1 / Q8_0 weights).
  bool mma(const DW& w, int64_t T) const { return mmq && T > kMatvecMaxT && matmul_mma_q8_supported(w.type); }

  // Up to kMatvecMaxT rows: int8 activations where the weights' type allows, else fp32.
  void matvec_rows(const DW& w, const DW* w2, const float* in, int64_t ldx, float* out, int64_t ldo, int T,
                   MatvecMode mode) {
    if (!(q8x && matvec_rows_q8x(w, w2, in, ldx, out, ldo, T, mode, st))) matvec(w, w2, in, ldx, out, ldo, T, mode, false, st);
  }

  // Sequence i's RoPE/store and attention arguments at layer il (row i of q/k/v/att).
  RopeStore rope_args(CudaContext::Impl& C, int il, int i) {
    RopeStore r = C.arena_store_args(il, 1);
    r.q = q.get() + i * qdim();
    r.k = k.get() + i * kvdim();
    r.v = v.get() + i * kvdim();
    r.kstage = r.vstage = nullptr;  // the separate store kernel needs no stage
    r.qcount = nullptr;
    r.pos0_dev = in_dev.get() + kMaxRows + i;
    return r;
  }
  DecodeArgs attn_args(CudaContext::Impl& C, int il, int i) {
    DecodeArgs a = C.decode_args(il);
    a.q = q.get() + i * qdim();
    a.out = att.get() + i * qdim();
    return a;
  }

  // Every layer's arguments of the n sequences into buf (device), for one launch per layer: none
  // (seq_args.rope null) when the sequences differ in K/V types or attention warps.
  void prepare_args(const std::vector<CudaContext::Impl*>& seqs, int n, DBuf<uint8_t>& buf) {
    seq_args = SeqArgs{};
    if (!attn_n) return;
    for (const CudaContext::Impl* C : seqs)
      if (C->tk != seqs[0]->tk || C->tv != seqs[0]->tv || C->attn_warps != seqs[0]->attn_warps) return;
    const int L = hp.n_layer;
    std::vector<RopeStore> rs((size_t)L * n);
    std::vector<DecodeArgs> ds((size_t)L * n);
    seq_args.max_items.assign(L, 0);
    for (int il = 0; il < L; ++il)
      for (int i = 0; i < n; ++i) {
        rs[(size_t)il * n + i] = rope_args(*seqs[i], il, i);
        ds[(size_t)il * n + i] = attn_args(*seqs[i], il, i);
        seq_args.max_items[il] = std::max(seq_args.max_items[il], ds[(size_t)il * n + i].n_items);
      }
    const size_t rb = rs.size() * sizeof(RopeStore), db = ds.size() * sizeof(DecodeArgs);
    const size_t off = (rb + 255) / 256 * 256;
    buf.reserve(off + db, "batched attention arguments");
    check(cudaMemcpyAsync(buf.get(), rs.data(), rb, cudaMemcpyHostToDevice, st), "batch arguments");
    check(cudaMemcpyAsync(buf.get() + off, ds.data(), db, cudaMemcpyHostToDevice, st), "batch arguments");
    check(cudaStreamSynchronize(st), "batch arguments");  // (the host vectors go out of scope)
    seq_args.rope = reinterpret_cast<const RopeStore*>(buf.get());
    seq_args.dec = reinterpret_cast<const DecodeArgs*>(buf.get() + off);
  }

  // The step's launches for n rows (seqs[i] is row i).
  void forward(const std::vector<CudaContext::Impl*>& seqs, int n) {
    const int H = hp.n_head_kv;
    const int64_t d = hp.n_embd, ff = hp.n_ff;
    embed_rows(dm->tok_embd, in_dev.get(), n, x.get(), st);
    for (int il = 0; il < hp.n_layer; ++il) {
      const DevLayer& L = dm->layers[il];
      rms_norm(x.get(), L.attn_norm, xn.get(), n, d, hp.rms_eps, st);
      linear(L.wq, xn.get(), n, q.get(), qdim(), false);
      linear(L.wk, xn.get(), n, k.get(), kvdim(), false);
      linear(L.wv, xn.get(), n, v.get(), kvdim(), false);
      if (L.bq) {  // what the architecture adds before RoPE (CudaContext::Impl::qkv_post)
        add_bias(q.get(), L.bq, n, qdim(), st);
        add_bias(k.get(), L.bk, n, kvdim(), st);
        add_bias(v.get(), L.bv, n, kvdim(), st);
      }
      if (L.q_norm) {
        rms_norm(q.get(), L.q_norm, q.get(), (int64_t)n * hp.n_head, hp.head_dim, hp.rms_eps, st);
        rms_norm(k.get(), L.k_norm, k.get(), (int64_t)n * H, hp.head_dim, hp.rms_eps, st);
      }
      // each sequence's own arena, cache types and RoPE tables; this batch's rows of q/k/v/att
      if (seq_args.rope) {
        rope_store_n(rope_args(*seqs[0], il, 0), seq_args.rope + (size_t)il * n, n, st);
        decode_attention_n(attn_args(*seqs[0], il, 0), seq_args.dec + (size_t)il * n, n, seq_args.max_items[il], st);
      } else {
        for (int i = 0; i < n; ++i) {
          rope_store(rope_args(*seqs[i], il, i), st);
          decode_attention(attn_args(*seqs[i], il, i), st);
        }
      }
      linear(L.wo, att.get(), n, x.get(), d, true);
      rms_norm(x.get(), L.ffn_norm, xn.get(), n, d, hp.rms_eps, st);
      if ((mma(L.gate, n) || !gemm(n)) && L.gate.type == L.up.type) {
        linear_rows(L.gate, &L.up, xn.get(), d, n, gate.get(), ff, MV_SWIGLU);
      } else {
        linear(L.gate, xn.get(), n, gate.get(), ff, false);
        linear(L.up, xn.get(), n, up.get(), ff, false);
        silu_mul(gate.get(), up.get(), (int64_t)n * ff, st);
      }
      linear(L.down, gate.get(), n, x.get(), d, true);
    }
    for (int i = 0; i < n; ++i) add_used(seqs[i]->used.get(), hp.n_layer * H, 1, st);
    rms_norm(x.get(), dm->output_norm, xn.get(), n, d, hp.rms_eps, st);
    linear(dm->output, xn.get(), n, logits.get(), hp.n_vocab, false);
    // Each row into its sequence's pinned logits buffer (where a lone decode step puts them).
    for (int i = 0; i < n; ++i)
      check(cudaMemcpyAsync(seqs[i]->logits_pin, logits.get() + (size_t)i * hp.n_vocab, hp.n_vocab * sizeof(float),
                            cudaMemcpyDeviceToHost, st),
            "batch logits");
  }

  // What a captured step bakes in: the rows, the scratch, and each sequence's arena and items.
  std::vector<intptr_t> key_of(const std::vector<CudaContext::Impl*>& seqs) const {
    std::vector<intptr_t> key{(intptr_t)seqs.size(), rows, half_gemm};
    for (const CudaContext::Impl* C : seqs) {
      for (const void* p : {(const void*)C->ak.get(), (const void*)C->av.get(), (const void*)C->apos.get(),
                            (const void*)C->seg_off.get(), (const void*)C->used.get(), (const void*)C->item_head.get(),
                            (const void*)C->item_split.get(), (const void*)C->head_splits.get(),
                            (const void*)C->head_first.get(), (const void*)C->part.get(), (const void*)C->logits_pin})
        key.push_back((intptr_t)p);
      key.push_back(C->attn_warps);
      key.insert(key.end(), C->layer_item0.begin(), C->layer_item0.end());
      key.insert(key.end(), C->layer_items.begin(), C->layer_items.end());
    }
    return key;
  }

  // Captures the step for this list of sequences into G, the graph of its row count. A list of the
  // same length has the same launches with other arguments: G is updated in place when CUDA allows
  // it (cheaper than instantiating it again), else instantiated anew.
  void capture(const std::vector<CudaContext::Impl*>& seqs, int n, Graph& G) {
    cudaGraph_t g = nullptr;
    check(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal), "batch graph capture");
    try {
      forward(seqs, n);
    } catch (...) {
      cudaStreamEndCapture(st, &g);
      if (g) cudaGraphDestroy(g);
      throw;
    }
    check(cudaStreamEndCapture(st, &g), "batch graph capture");
    G.key.clear();  // (set again by the caller once G holds this capture)
    if (G.exec) {
      cudaGraphExecUpdateResultInfo info{};
      if (cudaGraphExecUpdate(G.exec, g, &info) == cudaSuccess) {
        cudaGraphDestroy(g);
        ++updates;
        return;
      }
      cudaGetLastError();
      cudaGraphExecDestroy(G.exec);
      G.exec = nullptr;
    }
    const cudaError_t e = cudaGraphInstantiate(&G.exec, g, 0);
    cudaGraphDestroy(g);
    if (e != cudaSuccess) G.exec = nullptr;
    check(e, "batch graph instantiate");
    ++captures;
  }

  // One slice of at most kMaxRows checked sequences.
  void run(const std::vector<CudaContext::Impl*>& seqs, const int32_t* tokens) {
    const int n = (int)seqs.size();
    ensure_rows(n);
    for (int i = 0; i < n; ++i) {
      in_host[i] = tokens[i];
      in_host[kMaxRows + i] = seqs[i]->n_past;
    }
    check(cudaMemcpyAsync(in_dev.get(), in_host, 2 * kMaxRows * sizeof(int32_t), cudaMemcpyHostToDevice, st), "step input");
    if (use_graph) {
      std::vector<intptr_t> key = key_of(seqs);
      Graph& G = graphs[n];
      if (!G.exec || key != G.key) {
        prepare_args(seqs, n, G.args);
        capture(seqs, n, G);
        G.key = std::move(key);
      }
      check(cudaGraphLaunch(G.exec, st), "batch graph launch");
    } else {
      prepare_args(seqs, n, plain_args);
      forward(seqs, n);
    }
    check(cudaStreamSynchronize(st), "batched decode");
    for (int i = 0; i < n; ++i) {  // each sequence as after a one-token eval
      CudaContext::Impl& C = *seqs[i];
      for (auto& u : C.h_used) ++u;
      C.history.push_back(tokens[i]);
      ++C.n_past;
      C.n_logit_rows = 1;
      C.pinned_logits = true;
    }
  }
};

CudaBatch::CudaBatch(const Model& model, CudaPrecision prec) : p_(std::make_unique<Impl>(model, prec)) {}
CudaBatch::~CudaBatch() = default;
uint64_t CudaBatch::scratch_bytes(int rows) const { return rows > 0 ? p_->scratch_bytes(Impl::bucket(rows)) : 0; }
void CudaBatch::reserve(int rows) { p_->ensure_rows(std::clamp(rows, 1, kMaxRows)); }
int CudaBatch::rows_allocated() const { return p_->rows; }
int64_t CudaBatch::graph_captures() const { return p_->captures; }
int64_t CudaBatch::graph_updates() const { return p_->updates; }

void CudaBatch::step(const std::vector<CudaContext*>& seqs, const int32_t* tokens, const int64_t* ids) {
  Impl& B = *p_;
  const int64_t n = (int64_t)seqs.size();
  if (n == 0) fail(ErrorKind::InvalidArgument, "a batched step needs at least one sequence");
  if (!tokens) fail(ErrorKind::InvalidArgument, "a batched step needs its tokens");
  std::set<const CudaContext*> seen;
  std::vector<CudaContext::Impl*> cs;
  for (int64_t i = 0; i < n; ++i) {
    const std::string who = (ids ? "sequence id " + std::to_string(ids[i]) : "sequence " + std::to_string(i)) + ": ";
    CudaContext* c = seqs[i];
    if (!c) fail(ErrorKind::InvalidArgument, who + "no context");
    if (!seen.insert(c).second) fail(ErrorKind::InvalidArgument, who + "appears twice in one step");
    CudaContext::Impl& C = c->impl();
    if (&C.model != &B.model) fail(ErrorKind::InvalidArgument, who + "is over another model");
    if (C.half_gemm != B.half_gemm)
      fail(ErrorKind::InvalidArgument, who + "has another precision (cuda / cuda-fp32) than the batch");
    if (!C.arena) fail(ErrorKind::InvalidArgument, who + "its compressed prompt has not been evaluated yet");
    try {
      c->check_eval(&tokens[i], 1);
    } catch (const Error& e) {
      fail(e.kind(), who + e.what());
    }
    cs.push_back(&C);
  }
  // One sequence: its own decode step (the lone context's fused, captured step), so a group of one
  // decodes exactly as the sequence alone and at its speed (the batched rows' separate RMSNorm and
  // unfused QKV/RoPE cost a lone sequence about a third: BENCHMARKS.md, "Several sequences").
  if (n == 1) {
    seqs[0]->eval(tokens, 1);
    return;
  }
  // Rows in a fixed order (by context), so that the same sequences given in another order replay
  // the same captured step; a row's result does not depend on its place.
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return std::less<>()(cs[a], cs[b]); });
  std::vector<CudaContext::Impl*> sorted(n);
  std::vector<int32_t> toks(n);
  for (int64_t i = 0; i < n; ++i) {
    sorted[i] = cs[order[i]];
    toks[i] = tokens[order[i]];
  }
  for (int64_t i0 = 0; i0 < n; i0 += kMaxRows) {
    const int64_t m = std::min<int64_t>(kMaxRows, n - i0);
    const std::vector<CudaContext::Impl*> slice(sorted.begin() + i0, sorted.begin() + i0 + m);
    try {
      B.run(slice, toks.data() + i0);
    } catch (...) {
      cudaStreamSynchronize(B.st);
      cudaGetLastError();
      B.drop_graph();
      throw;
    }
  }
}

}  // namespace headkv
