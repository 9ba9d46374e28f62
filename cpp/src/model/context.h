// One inference sequence over a Model: KV cache (full, or the per-head ragged arena of a
// compressing method), scratch buffers, logits.
//
// Full cache: eval() runs batch prefill in chunks of n_batch tokens, then decode.
// Compressing methods (snapkv, pyramidkv, adakv, streaming, headkv): the first eval() is the
// prompt. It runs layer by layer over the whole prompt with full causal attention, selects each
// KV head's tokens right after the layer (select/), writes only those to the arena and reuses the
// layer's full K/V buffer for the next layer, so peak KV memory is one layer's full K/V plus the
// arena. Later evals decode over the ragged arena, appending in place.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/threadpool.h"
#include "model/llama.h"
#include "select/budget.h"
#include "model/state.h"
#include "select/kv_arena.h"
#include "select/scores.h"
#include "select/selection.h"

namespace headkv {

struct KVConfig {
  std::string method = "full";  // full | snapkv | streaming | pyramidkv | adakv | headkv
  int32_t budget = 128;         // KV entries per KV head on average, window included
  int32_t window = 8;           // α
  double beta = 0.0;            // HeadKV β; 0: default_beta(budget) (select/budget.h); the paper's scripts: 1.2
  double temp = 1.0;            // HeadKV score temperature
  int32_t kernel = 7;           // pooling kernel
  bool max_pool = true;         // false: average pooling
  int32_t span = 16;            // span-aware selection: token runs up to this long are kept whole
                                // (select/spans.h); 0: off (the paper's selection)
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

// The rows a compressed prefill runs through its layers: the prompt, then, when the layer's
// selection is scored, the observation probe and (probe_echo) the prompt again. Both backends.
std::vector<int32_t> prefill_rows(const KVConfig& kv, const int32_t* prompt, int64_t n_prompt, bool scored);
// The budget parameters of a compressed prompt under `kv` (method, budget, window, β, temperature).
BudgetParams budget_params(const KVConfig& kv, BudgetMethod method);
// The budget plan of a compressed prompt: over every layer, or, with sliding-window layers, over
// the global ones (their rows of `scores`), each local layer keeping the window - 1 positions before
// the observation window (every position a later query sees). Both backends.
BudgetPlan plan_compressed_layers(const BudgetParams& bp, const HeadScores* scores, const LlamaHParams& hp,
                                  int64_t n_prompt);

struct ContextParams {
  int32_t n_ctx = 0;      // 0: the model's training context
  int32_t n_threads = 0;  // 0: hardware concurrency
  int32_t n_batch = 512;  // tokens per forward chunk
  KVConfig kv;
  // Thread pool shared with other contexts (a batched decode step runs several contexts' sequences
  // on one pool); null: the context makes its own of n_threads threads.
  std::shared_ptr<ThreadPool> pool;
};

class Context {
 public:
  // Throws InvalidArgument for bad params (including a score file that does not match the
  // model) and OutOfMemory (naming the bytes) when the KV cache cannot be allocated.
  Context(const Model& model, const ContextParams& params);

  // Appends tokens at positions n_past..; computes logits of the last token, or of every token
  // when all_logits. Throws ContextFull when they do not fit (n_ctx, or a KV head's segment) and
  // InvalidArgument for token ids outside the vocabulary; then the context is left unchanged.
  //
  // n_ctx bounds the full cache. A compressing method's prompt may be longer than n_ctx (it is
  // compressed layer by layer into the arena); its decode room is max_new_tokens per head.
  void eval(const int32_t* tokens, int64_t n, bool all_logits = false);
  // One batched decode step: appends tokens[i] to seqs[i] for every i, as seqs[i]->eval(&tokens[i], 1)
  // would, but runs each weight matrix once over the n rows together (attention per sequence over
  // its own KV at its own position). The contexts must be distinct, over one Model and one thread
  // pool (ContextParams::pool), past their compressed prompt, with the attention probe and embeddings
  // off. Every sequence is checked before anything runs: on an error (InvalidArgument, ContextFull
  // naming the sequence: ids[i] when given, else its index) no context changes. Logits per sequence: seqs[i]->logits().
  // A row's logits equal a single eval's up to the matmul's summation order (several rows take the
  // multi-token dot products, or from 16 rows the GEMM path).
  // counts (optional): seqs[i] takes counts[i] >= 1 consecutive tokens of `tokens` (a full-cache prompt
  // chunk of at most n_batch riding with the decode rows); its logits are those of its last token.
  static void decode_batch(const std::vector<Context*>& seqs, const int32_t* tokens, const int64_t* ids = nullptr,
                           const int64_t* counts = nullptr);
  // Bytes a compressed prompt's arena may take at most (0: no limit); a prompt whose arena would be
  // larger fails with OutOfMemory before any layer runs (sequence-group admission).
  void set_kv_limit(uint64_t bytes) { kv_limit_ = bytes; }
  const std::shared_ptr<ThreadPool>& pool() const { return pool_owner_; }
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
  // allocated; the context is unchanged then.
  void load_state(const KVState& s);
  // Tokens of the compressed prompt (0 for the full cache or before the prompt).
  int32_t n_prompt() const { return arena_ ? n_prompt_ : 0; }
  // Decode room per head for the next compressed prompt (KVConfig::max_new_tokens); only before the
  // prompt has been evaluated (InvalidArgument after).
  void set_max_new_tokens(int32_t n);

  const float* logits() const;
  const float* logits_all() const { return n_logit_rows_ ? logits_.data() : nullptr; }
  int64_t n_logit_rows() const { return n_logit_rows_; }

  const Model& model() const { return model_; }
  int32_t n_ctx() const { return n_ctx_; }
  int32_t n_past() const { return n_past_; }
  int32_t n_threads() const { return pool_.size(); }
  uint64_t kv_bytes() const;
  KVType type_k() const { return type_k_; }
  KVType type_v() const { return type_v_; }
  const std::vector<int32_t>& history() const { return history_; }

  // Compression state (nullptr / empty for the full cache or before the prompt).
  const KVConfig& kv_config() const { return kv_; }
  bool compressing() const { return method_ != BudgetMethod::Full; }
  // Whether only each layer's total is binding and selection splits it among the heads (Ada-KV).
  bool layer_pooled() const {
    return method_ == BudgetMethod::AdaKV || (method_ == BudgetMethod::HeadKV && kv_.adaptive);
  }
  const KVArena* arena() const { return arena_.get(); }
  // Stored rows of (layer il, KV head g), for tests and references: keys and values (rows of
  // kv_row_bytes(type, head_dim) bytes) and their count: the full cache's n_past rows, or the arena
  // segment's used entries (positions in arena()->pos).
  struct KVRows { const void* k; const void* v; int64_t n; };
  KVRows kv_rows(int il, int g) const;
  const BudgetPlan* plan() const { return plan_ ? &*plan_ : nullptr; }
  // Bytes a full cache would hold for the current sequence plus the decode room.
  uint64_t full_kv_bytes() const;
  // Peak bytes of KV storage during the last compressed prefill (layer buffer + arena).
  uint64_t prefill_peak_kv_bytes() const { return prefill_peak_kv_bytes_; }

  // Attention probe (full cache only; head scoring): while on, each eval() records the softmax
  // attention of its last token's query, per (layer, query head), over positions 0..probe_n()-1
  // (= n_past after the eval). Layout [n_layer][n_head][probe_n()]. Throws InvalidArgument when
  // turned on for a compressing method.
  void set_attention_probe(bool on);
  bool attention_probe() const { return probe_on_; }
  const float* probe() const { return probe_n_ ? probe_.data() : nullptr; }
  int64_t probe_n() const { return probe_n_; }

  // Embeddings (full cache only): while on, each eval() keeps the final-norm hidden state of
  // every token it evaluates, [n][n_embd] (what llama.cpp's embedding mode pools). Throws
  // InvalidArgument when turned on for a compressing method.
  void set_embeddings(bool on);
  bool embeddings_on() const { return embd_on_; }
  const float* embeddings() const { return n_embd_rows_ ? embd_.data() : nullptr; }
  int64_t n_embd_rows() const { return n_embd_rows_; }

 private:
  // Keys / values of one KV head, rows of head_dim elements of type tk / tv.
  // ring > 0: key j is row j % ring (a sliding-window layer's ring); window > 0: a query attends only
  // to the last `window` keys up to itself.
  struct KVView {
    const void* k; const void* v; int64_t n_before; KVType tk = KVType::F32, tv = KVType::F32;
    int64_t ring = 0, window = 0;
  };
  // Throws what eval() throws for tokens that do not fit or lie outside the vocabulary.
  void check_eval(const int32_t* tokens, int64_t n) const;
  // Layer il's attention of T new rows at positions n_past.. (q [T][n_head][head_dim], k/v
  // [T][n_head_kv][head_dim]): stores their K/V in the full cache or the arena, then attends.
  void attend(int il, int64_t T, const float* q, const float* k, const float* v, float* att);
  // Token embeddings of T tokens into x [T][n_embd] (scaled as the architecture asks).
  void embed(const int32_t* tokens, int64_t T, float* x) const;
  // hidden_out (optional): the chunk's final-norm hidden states, [T][n_embd].
  void forward(const int32_t* tokens, int64_t T, bool all_logits, float* logits_out, float* hidden_out = nullptr);
  void prefill_compressed(const int32_t* tokens, int64_t N, bool all_logits);
  // K/V hold N rows (the prompt, then the probe when there is one); the prompt is the first n_prompt.
  void select_layer(int il, const float* q_win, const float* K, const float* V, int64_t N, int64_t n_prompt);
  // Pieces of the transformer block, shared by both paths.
  // cos/sin of positions pos0.. for layer il's RoPE (sliding-window layers may have their own base).
  void rope_tables(int il, int64_t pos0, int64_t T, std::vector<float>& cs, std::vector<float>& sn) const;
  void qkv(int il, const float* x, int64_t T, float* xn, float* q, float* k, float* v, const float* cs,
           const float* sn);
  void attention(const float* q, int64_t T, const std::function<KVView(int)>& view, float* out);
  // attention() of one query token over views longer than kSplitKeys keys, split into key runs.
  static constexpr int64_t kSplitKeys = 512;
  void attention_split(const float* q, const std::vector<KVView>& views, float* out);
  void out_and_mlp(int il, const float* att, int64_t T, float* x, float* tmp);
  void final_logits(const float* x, int64_t rows, float* out);
  // Full cache row of (layer, KV head, position): layer il keeps rows_[il] rows per head, n_ctx, or
  // for a sliding-window layer a ring of n_swa + n_batch rows (position pos at row pos % rows).
  size_t kv_row(int il, int h, int64_t pos) const {
    return (size_t)layer_row0_[il] + (size_t)h * rows_[il] + (size_t)(pos % rows_[il]);
  }
  uint8_t* k_at(int il, int h, int64_t pos) { return &k_[kv_row(il, h, pos) * kv_row_bytes(type_k_, hp_.head_dim)]; }
  uint8_t* v_at(int il, int h, int64_t pos) { return &v_[kv_row(il, h, pos) * kv_row_bytes(type_v_, hp_.head_dim)]; }
  const uint8_t* k_at(int il, int h, int64_t pos) const { return const_cast<Context*>(this)->k_at(il, h, pos); }
  const uint8_t* v_at(int il, int h, int64_t pos) const { return const_cast<Context*>(this)->v_at(il, h, pos); }

  const Model& model_;
  const LlamaHParams& hp_;
  int32_t n_ctx_ = 0, n_batch_ = 512, n_past_ = 0, n_prompt_ = 0;
  std::shared_ptr<ThreadPool> pool_owner_;
  ThreadPool& pool_;
  uint64_t kv_limit_ = 0;
  KVConfig kv_;
  BudgetMethod method_ = BudgetMethod::Full;
  std::optional<HeadScores> scores_;
  std::optional<BudgetPlan> plan_;
  std::unique_ptr<KVArena> arena_;
  uint64_t prefill_peak_kv_bytes_ = 0;
  KVType type_k_ = KVType::F16, type_v_ = KVType::F16;
  std::vector<uint8_t> k_, v_;  // full cache: [layer][kv_head][row][head_dim] elements of type_k_ / type_v_
  std::vector<int64_t> rows_, layer_row0_;  // full cache rows per (layer, head); first row of each layer
  // scratch for one chunk of up to n_batch tokens
  std::vector<float> x_, xn_, q_, kc_, vc_, att_, gate_, up_, rope_cos_, rope_sin_, rope_cos_swa_, rope_sin_swa_;
  std::vector<float> logits_;
  int64_t n_logit_rows_ = 0;
  std::vector<int32_t> history_;
  std::vector<uint8_t> tok_edges_;  // select/spans.h, filled at the first span-aware prompt
  std::vector<uint8_t> runs_;       // the current prompt's token runs
  bool probe_on_ = false;
  int probe_layer_ = -1;      // layer whose attention() call records into probe_; -1: none
  int64_t probe_n_ = 0;
  std::vector<float> probe_;
  bool embd_on_ = false;
  std::vector<float> embd_;  // [n_embd_rows_][n_embd]
  int64_t n_embd_rows_ = 0;
};

}  // namespace headkv
