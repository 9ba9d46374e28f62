// The inference sequence both backends implement (model/context.h: the CPU Context;
// backend/cuda_context.h: the CUDA backend's CudaContext): the interface the Session, the C API and
// the Python binding use, declared once, and the state and checks both backends share (parameters,
// KV configuration and head scores, positions, history, budget plan, cache types, the compressed
// prompt's decode room). Each backend supplies its KV storage, its forward pass and its arena view
// through the virtual hooks below.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/threadpool.h"
#include "model/llama.h"
#include "model/state.h"
#include "select/budget.h"
#include "select/kv_arena.h"
#include "select/scores.h"

namespace headkv {

// Span-aware selection's forward reach by default (EVALUATION.md, "Forward reach").
constexpr int32_t kDefaultReach = 8;

struct KVConfig {
  std::string method = "full";  // full | snapkv | streaming | pyramidkv | adakv | headkv
  int32_t budget = 128;         // KV entries per KV head on average, window included
  int32_t window = 8;           // α
  double beta = 0.0;            // HeadKV β; 0: default_beta(budget) (select/budget.h); the paper's scripts: 1.2
  double temp = 1.0;            // HeadKV score temperature
  double cap_ceiling = 0.0;     // HeadKV: no head keeps more than cap_ceiling x (budget - window) prefix
                                // positions (BudgetParams::cap_ceiling); 0: none (the default)
  int32_t kernel = 7;           // pooling kernel
  bool max_pool = true;         // false: average pooling
  int32_t span = 16;            // span-aware selection: token runs up to this long are kept whole
                                // (select/spans.h); 0: off (the paper's selection)
  int32_t reach = kDefaultReach; // span-aware selection (span > 1) only: a max-pooled attention peak also
                                // keeps the `reach` positions after it (SelectionParams::reach)
  double value_fit = 0.0;       // value fitting's ridge λ (select/value_fit.h): > 0 refits the kept
                                // values to the window's full-cache outputs; 0: off (the default)
  std::vector<int32_t> probe;   // observation probe: tokens appended after the prompt whose attention
                                // selects, then dropped (query-agnostic); empty: the prompt's last
                                // `window` tokens select
  bool probe_echo = false;      // the probe is followed by the prompt again (KVzip-style reconstruction:
                                // each token is scored by the attention its own repetition pays it)
  std::string scores;           // HeadKV score file (official or headkv format)
  int32_t max_new_tokens = 512; // decode room reserved per KV head
  int32_t sink = 4;             // streaming: attention-sink tokens kept at the start
  double adakv_floor = 0.2;     // adakv: each head keeps at least this fraction of its budget
  std::string type_k = "f16";   // element type of stored keys: f16 | f32 | q8_0 | q4_0 (llama.cpp's -ctk
  std::string type_v = "f16";   // names; the CUDA backend has no f32); values likewise (-ctv)
  int64_t budget_bytes = 0;     // > 0: the budget given as bytes of kept entries, all layers and KV heads
                                // together (decode room not counted); the Session turns it into `budget`
                                // at the backend's entry size (resolve_budget_bytes)
  bool adaptive = false;        // headkv: each layer's total comes from the head scores, and is split
                                // among its heads per prompt as Ada-KV splits it (floors: adakv_floor
                                // of each head's score-given cap)
};

// The forward reach a selection uses: kv.reach in span-aware selection, 0 in the paper's (span 0 or 1).
inline int32_t selection_reach(const KVConfig& kv) { return kv.span > 1 ? kv.reach : 0; }

// The rows a compressed prefill runs through its layers: the prompt, then, when the layer's
// selection is scored, the observation probe and (probe_echo) the prompt again. Both backends.
std::vector<int32_t> prefill_rows(const KVConfig& kv, const int32_t* prompt, int64_t n_prompt, bool scored);
// Whether a compressed prompt's global layers refit their kept values (select/value_fit.h): value_fit
// on, a selecting method under a compressed plan, the prompt's own window (no probe rows: N ==
// n_prompt) and a prefix to fit. Sliding-window layers are never fitted. Both backends.
bool fits_values(const KVConfig& kv, const BudgetPlan& plan, BudgetMethod method, int64_t N, int64_t n_prompt);
// The budget parameters of a compressed prompt under `kv` (method, budget, window, β, temperature).
BudgetParams budget_params(const KVConfig& kv, BudgetMethod method);
// The budget plan of a compressed prompt: over every layer, or, with sliding-window layers, over
// the global ones (their rows of `scores`), each local layer keeping the window - 1 positions before
// the observation window (every position a later query sees). Both backends.
BudgetPlan plan_compressed_layers(const BudgetParams& bp, const HeadScores* scores, const LlamaHParams& hp,
                                  int64_t n_prompt);

// The full cache's rows per layer (each of its KV heads alike): n_ctx, or for a sliding-window layer a
// ring of n_swa + chunk rows (a forward chunk of `chunk` tokens and the window before it) where that is
// fewer. Both backends (the CPU's chunk is n_batch, the CUDA backend's its micro-batch).
std::vector<int64_t> full_cache_rows(const LlamaHParams& hp, int64_t n_ctx, int64_t chunk);
// The bytes of that full cache with K / V types tk / tv; positions: an int32 position stored with
// each entry (the CUDA arena), else implicit (the CPU's).
uint64_t full_cache_bytes(const LlamaHParams& hp, int64_t n_ctx, int64_t chunk, KVType tk, KVType tv, bool positions);

struct ContextParams {
  int32_t n_ctx = 0;      // 0: the model's training context
  int32_t n_threads = 0;  // 0: hardware concurrency
  int32_t n_batch = 512;  // tokens per forward chunk
  KVConfig kv;
  // Thread pool shared with other contexts (a batched decode step runs several contexts' sequences
  // on one pool); null: the context makes its own of n_threads threads.
  std::shared_ptr<ThreadPool> pool;
};
// The positions a context of params holds: params.n_ctx, or (0) the model's training context.
int64_t context_size(const ContextParams& params, const LlamaHParams& hp);

class SequenceContext {
 public:
  virtual ~SequenceContext();
  SequenceContext(const SequenceContext&) = delete;
  SequenceContext& operator=(const SequenceContext&) = delete;

  // Appends tokens at positions n_past..; computes logits of the last token, or of every token
  // when all_logits. Throws ContextFull when they do not fit (n_ctx, or a KV head's segment) and
  // InvalidArgument for token ids outside the vocabulary; then the context is left unchanged.
  //
  // n_ctx bounds the full cache. A compressing method's prompt may be longer than n_ctx (it is
  // compressed layer by layer into the arena); its decode room is max_new_tokens per head.
  void eval(const int32_t* tokens, int64_t n, bool all_logits = false);
  // Throws what eval() throws for tokens that do not fit or lie outside the vocabulary (batched
  // steps check each sequence with it before anything runs).
  void check_eval(const int32_t* tokens, int64_t n) const;
  void reset();
  // Forgets the tokens at positions >= n_keep (prefix reuse: a new prompt that shares the first
  // n_keep tokens evaluates only the rest). Full cache: 0 <= n_keep <= n_past. Compressed: n_keep = 0
  // (reset) or n_prompt() <= n_keep <= n_past (the compressed prompt cannot be partly forgotten).
  // Throws InvalidArgument otherwise, leaving the context unchanged.
  void truncate(int32_t n_keep);
  // Whether the full cache still holds what decoding from n_keep needs (a sliding-window layer's
  // ring may have overwritten the window before n_keep).
  bool can_truncate(int32_t n_keep) const;
  // The sequence as host data (model/state.h): tokens, last logits, KV entries (the compressed
  // arena and its plan included).
  KVState save_state() const;
  // Replaces the sequence with a saved one. Throws InvalidArgument when the state does not fit this
  // context (model shape, method, cache types, n_ctx) and OutOfMemory when its arena cannot be
  // allocated; the context is unchanged then (on the GPU, a device allocation or copy that fails
  // after those checks leaves it reset).
  void load_state(const KVState& s);
  // Tokens of the compressed prompt (0 for the full cache or before the prompt).
  int32_t n_prompt() const { return has_arena() ? n_prompt_ : 0; }
  // Decode room per head for the next compressed prompt (KVConfig::max_new_tokens); only before the
  // prompt has been evaluated (InvalidArgument after).
  void set_max_new_tokens(int32_t n);
  // Bytes a compressed prompt's arena may take at most (0: no limit); a prompt whose arena would be
  // larger fails with OutOfMemory before anything of it is allocated (sequence-group admission).
  void set_kv_limit(uint64_t bytes) { kv_limit_ = bytes; }

  const float* logits() const;  // the last row of logits_all()
  virtual const float* logits_all() const = 0;
  int64_t n_logit_rows() const { return n_logit_rows_; }

  const Model& model() const { return model_; }
  int32_t n_ctx() const { return n_ctx_; }
  int32_t n_past() const { return n_past_; }
  virtual int32_t n_threads() const = 0;  // host threads computing the sequence
  const std::vector<int32_t>& history() const { return history_; }
  // Bytes of KV storage held now.
  virtual uint64_t kv_bytes() const = 0;
  // Bytes a full cache would hold for the current sequence plus the decode room.
  uint64_t full_kv_bytes() const;
  // Peak bytes of KV storage during the last compressed prefill (layer buffer + arena).
  uint64_t prefill_peak_kv_bytes() const { return prefill_peak_kv_bytes_; }
  // Bytes of an arena entry: a K row, a V row (kv_row_bytes of their types) and a position.
  uint64_t entry_bytes() const { return KVArena::entry_bytes(hp_.head_dim, type_k_, type_v_); }
  // Peak bytes of device memory (0 on the CPU).
  virtual uint64_t peak_device_bytes() const { return 0; }
  // Pooled window scores of the last compressed prompt, where the backend keeps them (CUDA, with
  // HEADKV_KEEP_SELECTION_SCORES set); empty otherwise.
  virtual std::vector<std::vector<float>> selection_scores() const { return {}; }

  const KVConfig& kv_config() const { return kv_; }
  KVType type_k() const { return type_k_; }
  KVType type_v() const { return type_v_; }
  bool compressing() const { return method_ != BudgetMethod::Full; }
  // Whether only each layer's total is binding and selection splits it among the heads (Ada-KV).
  bool layer_pooled() const {
    return method_ == BudgetMethod::AdaKV || (method_ == BudgetMethod::HeadKV && kv_.adaptive);
  }
  // Compression plan (nullptr for the full cache or before the prompt).
  const BudgetPlan* plan() const { return plan_ ? &*plan_ : nullptr; }

  // Arena view: whether a compressed prompt's arena exists; then the entries of segment (layer l,
  // KV head g): capacity, used, their positions in row order, and the bytes of all used entries.
  virtual bool has_arena() const = 0;
  virtual int64_t capacity(int l, int g) const = 0;
  virtual int64_t used(int l, int g) const = 0;
  virtual std::vector<int32_t> positions(int l, int g) const = 0;
  virtual uint64_t bytes_used() const = 0;

 protected:
  // The K / V types of params that the backend stores; throws naming a type it cannot store.
  using KVTypesOf = std::pair<KVType, KVType> (*)(const ContextParams& params, int head_dim);
  // Checks params (InvalidArgument; the K / V types through kv_types), resolves n_ctx, the method
  // and, for HeadKV, the head scores (the given file, or the shipped one for this model).
  SequenceContext(const Model& model, const ContextParams& params, KVTypesOf kv_types);

  // eval() after check_eval: the backend's forward pass; it moves n_past_, history_ and
  // n_logit_rows_ (and, for the compressed prompt, n_prompt_, plan_ and the arena).
  virtual void eval_checked(const int32_t* tokens, int64_t n, bool all_logits) = 0;
  // reset(): the backend's KV storage and outputs (the shared state is cleared before).
  virtual void reset_cache() = 0;
  // truncate(n_keep), 0 < n_keep <= n_past_ checked: the backend forgets the cache entries of
  // positions >= n_keep (n_past_ and history_ are moved after).
  virtual void drop_after(int32_t n_keep) = 0;
  // Rows of layer il's ring in the full cache (a sliding-window layer keeping fewer than n_ctx
  // positions, position p at row p % rows), else 0.
  virtual int64_t ring_rows(int il) const = 0;
  // Bytes the full cache stores per (position, layer, KV head).
  virtual uint64_t full_entry_bytes() const = 0;
  // save_state() of a full cache or an arena: the KV entries (used, and for an arena capacity and
  // pos, k and v) into s.
  virtual void save_kv(KVState& s) const = 0;
  // load_state() of a full cache or an arena, s checked against the model shape, method and types
  // (a compressing context's state before its prompt only resets): the backend checks that its
  // cache can take s, allocates, resets and stores s's entries and logits (n_logit_rows_); a failed
  // check leaves the context unchanged (CUDA: a failure after the reset leaves it reset). The shared
  // state (positions, history, plan) follows.
  virtual void load_kv(const KVState& s) = 0;

  const Model& model_;
  const LlamaHParams& hp_;
  KVConfig kv_;
  BudgetMethod method_ = BudgetMethod::Full;
  std::optional<HeadScores> scores_;
  std::optional<BudgetPlan> plan_;
  KVType type_k_ = KVType::F16, type_v_ = KVType::F16;
  int32_t n_ctx_ = 0, n_past_ = 0, n_prompt_ = 0;
  uint64_t kv_limit_ = 0;
  uint64_t prefill_peak_kv_bytes_ = 0;
  int64_t n_logit_rows_ = 0;
  std::vector<int32_t> history_;
};

}  // namespace headkv
