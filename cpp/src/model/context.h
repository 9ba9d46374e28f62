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
#include <utility>
#include <vector>

#include "model/sequence_context.h"
#include "select/selection.h"

namespace headkv {

class Context : public SequenceContext {
 public:
  // Throws InvalidArgument for bad params (including a score file that does not match the
  // model) and OutOfMemory (naming the bytes) when the KV cache cannot be allocated.
  Context(const Model& model, const ContextParams& params);

  // The K / V types of params (parse_kv_type) whose rows this backend can store at head_dim.
  static std::pair<KVType, KVType> kv_types(const ContextParams& params, int head_dim);
  // Bytes of the full cache (method "full") that a context of `params` over `model` allocates (the
  // rings of its sliding-window layers at their size): a sequence group checks them before it.
  static uint64_t full_cache_bytes(const Model& model, const ContextParams& params);

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
  const std::shared_ptr<ThreadPool>& pool() const { return pool_owner_; }
  int32_t n_threads() const override { return pool_.size(); }
  uint64_t kv_bytes() const override;
  const float* logits_all() const override { return n_logit_rows_ ? logits_.data() : nullptr; }

  bool has_arena() const override { return compressing() && arena_; }
  int64_t capacity(int l, int g) const override { return arena_->capacity(l, g); }
  int64_t used(int l, int g) const override { return arena_->used(l, g); }
  std::vector<int32_t> positions(int l, int g) const override;
  uint64_t bytes_used() const override { return arena_ ? arena_->bytes_used() : 0; }

  // The compressed prompt's arena (nullptr for the full cache or before the prompt).
  const KVArena* arena() const { return has_arena() ? arena_.get() : nullptr; }
  // Stored rows of (layer il, KV head g), for tests and references: keys and values (rows of
  // kv_row_bytes(type, head_dim) bytes) and their count: the full cache's n_past rows, or the arena
  // segment's used entries (positions in arena()->pos).
  struct KVRows { const void* k; const void* v; int64_t n; };
  KVRows kv_rows(int il, int g) const;

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
  void eval_checked(const int32_t* tokens, int64_t n, bool all_logits) override;
  void reset_cache() override;
  void drop_after(int32_t n_keep) override;
  int64_t ring_rows(int il) const override {
    return !compressing() && arena_->ring(il, 0) ? arena_->capacity(il, 0) : 0;
  }
  uint64_t full_entry_bytes() const override;
  void save_kv(KVState& s) const override;
  void load_kv(const KVState& s) override;
  // Layer il's attention of T new rows at positions n_past.. (q [T][n_head][head_dim], k/v
  // [T][n_head_kv][head_dim]): stores their K/V in the full cache or the arena, then attends.
  void attend(int il, int64_t T, const float* q, const float* k, const float* v, float* att);
  // Token embeddings of T tokens into x [T][n_embd] (scaled as the architecture asks).
  void embed(const int32_t* tokens, int64_t T, float* x) const;
  // hidden_out (optional): the chunk's final-norm hidden states, [T][n_embd].
  void forward(const int32_t* tokens, int64_t T, bool all_logits, float* logits_out, float* hidden_out = nullptr);
  void prefill_compressed(const int32_t* tokens, int64_t N, bool all_logits);
  // K/V hold N rows (the prompt, then the probe when there is one); the prompt is the first n_prompt.
  void select_layer(int il, const float* q_win, const float* o_win, const float* K, float* V, int64_t N, int64_t n_prompt);
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
  int32_t n_batch_ = 512;
  std::shared_ptr<ThreadPool> pool_owner_;
  ThreadPool& pool_;
  // The KV storage: the full cache (from construction), or a compressing method's arena (from its prompt).
  std::unique_ptr<KVArena> arena_;
  // scratch for one chunk of up to n_batch tokens
  std::vector<float> x_, xn_, q_, kc_, vc_, att_, gate_, up_, rope_cos_, rope_sin_, rope_cos_swa_, rope_sin_swa_;
  std::vector<float> logits_;
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
