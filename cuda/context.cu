// CudaContext: the CUDA backend's inference sequence (see cpp/src/backend/cuda_context.h).
//
// KV storage is one per-head ragged arena on the device (K and V rows of their types: f16 by default,
// or llama.cpp's q8_0 / q4_0 blocks, quantized where they are stored; int32 positions, CSR
// segment offsets, per-segment used counts): the full cache is the arena with n_ctx entries per
// segment, a compressing method sizes it from the budget plan before the prompt runs.
//   prefill (compressing): layer by layer over the whole prompt in chunks of `ub` tokens; the
//     layer's K/V (fp32, head-major) sit in one buffer, the chunk's queries attend to it (flash
//     attention), then selection runs on the GPU and gathers the kept entries into the arena.
//   prefill (full) / multi-token evals: chunks of `ub` tokens through all layers, K/V appended to
//     the arena, flash attention over each head's segment.
//   decode (1 token): matvec kernels + split-K ragged attention, captured once as a CUDA graph
//     (position and lengths are read from device memory, so every step replays the same graph).
//
// The Impl is split by concern (context_impl.cuh): this file construction and the public surface;
// context_arena.cu the arena, decode items and saved state; context_forward.cu the building blocks
// and the forward pass over the arena; context_eval.cu eval (full-cache chunks and decode steps);
// context_decode_graph.cu the decode step's CUDA graph; context_prefill.cu the compressed prefill.
#include <algorithm>
#include <string>
#include <tuple>
#include <utility>

#include "context_impl.cuh"

namespace headkv {

namespace {

// The q8_0 / q4_0 kernels (decode_attn.cu split_body_q, flash_attn_mma.cu's quantized tiles) are
// built at head_dim 64 and 128 without sliding windows, rings or attention soft-capping; models
// that need those (Gemma 2 / 3, Mistral-style files whose layers slide) keep f16 K and V. Checked
// before anything is allocated.
void check_quantized_kv(const LlamaHParams& hp, KVType tk, KVType tv) {
  const KVType q = tk != KVType::F16 ? tk : tv;
  if (q == KVType::F16) return;
  const char* what = hp.first_layer(true) >= 0 ? "sliding-window layers"
                     : hp.attn_softcap > 0.0f  ? "attention-logit soft-capping"
                     : hp.head_dim == 256      ? "head_dim 256"
                                               : nullptr;
  if (what)
    fail(ErrorKind::Unsupported, std::string("CUDA backend: ") + kv_type_name(q) + " KV with " + what +
                                     " is not built; use f16 (KV cache types K " + kv_type_name(tk) + ", V " +
                                     kv_type_name(tv) + ")");
}

// Rows of a forward chunk (the micro-batch): at least 2048 for the prefill GEMMs, at most n_ctx.
int32_t micro_batch(const ContextParams& p, int64_t n_ctx) {
  return (int32_t)std::min<int64_t>(std::max<int32_t>(p.n_batch ? p.n_batch : 512, 2048), n_ctx);
}

}  // namespace

uint64_t CudaContext::full_cache_bytes(const Model& model, const ContextParams& p) {
  const LlamaHParams& hp = model.hparams();
  const int64_t n_ctx = context_size(p, hp);
  const auto [tk, tv] = kv_types(p, hp.head_dim);
  return headkv::full_cache_bytes(hp, n_ctx, micro_batch(p, n_ctx), tk, tv, true);
}

CudaContext::Impl::Impl(CudaContext& c, const ContextParams& p, CudaPrecision prec)
    : self(c),
      model(c.model_),
      hp(c.hp_),
      kv(c.kv_),
      method(c.method_),
      scores(c.scores_),
      plan(c.plan_),
      n_ctx(c.n_ctx_),
      n_past(c.n_past_),
      n_prompt(c.n_prompt_),
      kv_limit(c.kv_limit_),
      tk(c.type_k_),
      tv(c.type_v_),
      history(c.history_),
      prefill_peak(c.prefill_peak_kv_bytes_),
      n_logit_rows(c.n_logit_rows_) {
  half_gemm = prec == CudaPrecision::Fast;
  mv_q8x = half_gemm && !env_is("HEADKV_MATVEC", "fp32");
  fuse_rope = !env_is("HEADKV_FUSE_ROPE", "0");
  logits_in_graph = !env_is("HEADKV_LOGITS_IN_GRAPH", "0");
  prof.on = env_is("HEADKV_PROFILE", "1");
  ub = micro_batch(p, n_ctx);
  check_quantized_kv(hp, tk, tv);
  rb_k = kv_row_bytes(tk, hp.head_dim);
  rb_v = kv_row_bytes(tv, hp.head_dim);
  require_supported_device();
  if (device_free_bytes() == 0) fail(ErrorKind::OutOfMemory, "no free GPU memory");
  // Everything this context needs at construction, checked before the first allocation.
  const uint64_t L = hp.n_layer, H = hp.n_head_kv;
  // The full cache: n_ctx entries per head; a sliding-window layer's heads a ring of window + ub
  // entries (a chunk of ub tokens and the window before it), as the CPU's ring of window + n_batch.
  std::vector<int64_t> cap;
  uint64_t full_kv = 0;
  if (method == BudgetMethod::Full) {
    ring.assign(L, 0);
    const std::vector<int64_t> rows = full_cache_rows(hp, n_ctx, ub);
    for (int il = 0; il < (int)L; ++il) {
      if (rows[il] < n_ctx) ring[il] = rows[il];
      cap.insert(cap.end(), H, rows[il]);
    }
    for (int64_t c : cap) full_kv += (uint64_t)c * entry_bytes();
  }
  dm = DevModel::get(model);
  attn_warps = decode_attention_warps(hp.head_dim,
                                      env_is("HEADKV_ATTN_WARPS", "2")   ? 2
                                      : env_is("HEADKV_ATTN_WARPS", "4") ? 4
                                                                         : 8,
                                      tk, tv);
  require_device_bytes(full_kv + scratch_bytes(ub), "a context with n_ctx=" + std::to_string(n_ctx) + " (KV cache " +
                                                        std::to_string(full_kv) + " bytes + scratch)");
  try {  // a constructor that throws runs no destructor: the stream and pinned buffer go here
    check(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), "stream");
    blas_init(st);
    alloc_scratch(ub);
    step_in.alloc(2, "decode step input");
    check(cudaMallocHost(&step_host, 2 * sizeof(int32_t)), "pinned step buffer");
    check(cudaMallocHost(&logits_pin, (size_t)hp.n_vocab * sizeof(float)), "pinned logits buffer");
    if (tk != KVType::F16 || tv != KVType::F16) {
      qcount.alloc(2 * kvdim() / 32, "KV block counters");
      check(cudaMemsetAsync(qcount.get(), 0, 2 * kvdim() / 32 * sizeof(int32_t), st), "KV block counters");
    }
    if (method == BudgetMethod::Full) make_arena(cap);
  } catch (...) {
    release();
    throw;
  }
}

CudaContext::Impl::~Impl() {
  profile_report();
  release();
}

// What the device buffers' own destructors do not free (idempotent).
void CudaContext::Impl::release() {
  if (st) cudaStreamSynchronize(st);  // (the graph writes the pinned buffers)
  drop_graph();
  if (step_host) cudaFreeHost(step_host);
  step_host = nullptr;
  if (logits_pin) cudaFreeHost(logits_pin);
  logits_pin = nullptr;
  if (st) cudaStreamDestroy(st);
  st = nullptr;
}

uint64_t CudaContext::Impl::scratch_bytes(int64_t C) const {
  const int64_t d = hp.n_embd, ff = hp.n_ff, wmax = std::min<int64_t>(dm ? dm->max_weight_elems : 0, 64ll << 20);
  const int64_t xs = std::max<int64_t>(d, qdim());
  uint64_t b = (uint64_t)C * (d + xs + qdim() + 2 * kvdim() + qdim() + 2 * ff) * 4;
  b += (uint64_t)C * std::max<int64_t>(xs, ff) * 2 + (uint64_t)wmax * (half_gemm ? 2 : 4);
  return b;
}

void CudaContext::Impl::alloc_scratch(int64_t C) {
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

void CudaContext::Impl::ensure_scratch() {
  if (x.get()) return;
  require_device_bytes(scratch_bytes(ub), "the activation scratch of a context (" + std::to_string(ub) + " rows)");
  alloc_scratch(ub);
}

// ---- public surface
// The CUDA backend stores K and V as f16, q8_0 or q4_0: f32 (the CPU's reference type) and rows the
// block types cannot take fail here, before any allocation.
std::pair<KVType, KVType> CudaContext::kv_types(const ContextParams& p, int head_dim) {
  KVType t[2];
  const std::string* names[2] = {&p.kv.type_k, &p.kv.type_v};
  const char* which[2] = {"KV cache type (K)", "KV cache type (V)"};
  for (int i = 0; i < 2; ++i) {
    t[i] = parse_kv_type(*names[i], which[i]);
    if (t[i] == KVType::F32)
      fail(ErrorKind::Unsupported, std::string(which[i]) + " 'f32' is not supported by the CUDA backend (f16, q8_0 or q4_0; " +
                                       "f32 is the CPU backend's reference type)");
    check_kv_row(t[i], head_dim, which[i]);
  }
  return {t[0], t[1]};
}

CudaContext::CudaContext(const Model& m, const ContextParams& p, CudaPrecision prec)
    : SequenceContext(m, p, &CudaContext::kv_types) {
  p_ = std::make_unique<Impl>(*this, p, prec);
}
CudaContext::~CudaContext() = default;

void CudaContext::eval_checked(const int32_t* tokens, int64_t n, bool all_logits) { p_->eval(tokens, n, all_logits); }

void CudaContext::drop_after(int32_t n_keep) {
  Impl& I = *p_;
  const int32_t k = n_past_ - n_keep;
  if (k > 0) {  // every segment (full cache: one per head; arena: the decoded entries) drops k entries
    add_used(I.used.get(), (int)I.h_used.size(), -k, I.st);
    check(cudaStreamSynchronize(I.st), "truncate");
    for (auto& u : I.h_used) u -= k;
  }
}

int64_t CudaContext::ring_rows(int il) const { return p_->ring_of(il); }

void CudaContext::reset_cache() {
  Impl& I = *p_;
  if (!compressing()) {
    check(cudaMemsetAsync(I.used.get(), 0, I.h_used.size() * sizeof(int32_t), I.st), "reset");
    check(cudaStreamSynchronize(I.st), "reset");
    std::fill(I.h_used.begin(), I.h_used.end(), 0);
  } else {
    I.drop_graph();
    I.arena = false;
    I.ak.reset();
    I.av.reset();
    I.apos.reset();
  }
}

const float* CudaContext::logits_all() const {
  if (!n_logit_rows_) return nullptr;
  return p_->pinned_logits ? p_->logits_pin : p_->logits_h.data();  // pinned: one row
}
uint64_t CudaContext::kv_bytes() const { return p_->arena_bytes(); }
bool CudaContext::has_arena() const { return compressing() && p_->arena; }
int CudaContext::n_layer() const { return hp_.n_layer; }
int CudaContext::n_head_kv() const { return hp_.n_head_kv; }
int64_t CudaContext::capacity(int l, int g) const {
  const size_t s = (size_t)l * hp_.n_head_kv + g;
  return p_->h_off[s + 1] - p_->h_off[s];
}
// Entries held: a ring holds at most its rows (its used count is the positions written).
int64_t CudaContext::used(int l, int g) const {
  const size_t s = (size_t)l * hp_.n_head_kv + g;
  return std::min<int64_t>(p_->h_used[s], p_->h_off[s + 1] - p_->h_off[s]);
}
// The held entries' positions in row order (a ring's wrap after its oldest rows).
std::vector<int32_t> CudaContext::positions(int l, int g) const {
  const size_t s = (size_t)l * hp_.n_head_kv + g;
  std::vector<int32_t> out((size_t)used(l, g));
  if (!out.empty())
    check(cudaMemcpy(out.data(), p_->apos.get() + p_->h_off[s], out.size() * sizeof(int32_t), cudaMemcpyDeviceToHost),
          "positions");
  return out;
}
uint64_t CudaContext::bytes_used() const {
  uint64_t n = 0;
  for (int l = 0; l < hp_.n_layer; ++l)
    for (int g = 0; g < hp_.n_head_kv; ++g) n += (uint64_t)used(l, g);
  return n * entry_bytes();
}
std::vector<std::vector<float>> CudaContext::selection_scores() const { return p_->sel_scores; }
uint64_t CudaContext::peak_device_bytes() const { return mem_counter().peak.load(); }
uint64_t CudaContext::scratch_bytes() const { return p_->x.get() ? p_->scratch_bytes(p_->ub) : 0; }
void CudaContext::release_scratch() {
  Impl& I = *p_;
  if (I.st) check(cudaStreamSynchronize(I.st), "release scratch");
  I.drop_graph();  // it was captured over the scratch
  for (DBuf<float>* b : {&I.x, &I.xn, &I.q, &I.k, &I.v, &I.att, &I.gate, &I.up}) b->reset();
  I.xh.reset();
  I.wscratch.reset();
}

}  // namespace headkv
