#include "model/sequence_context.h"

#include <algorithm>
#include <string>
#include <tuple>

#include "common/error.h"
#include "model/context_checks.h"
#include "select/kv_arena.h"
#include "select/shipped_scores.h"

namespace headkv {

std::vector<int64_t> full_cache_rows(const LlamaHParams& hp, int64_t n_ctx, int64_t chunk) {
  std::vector<int64_t> rows((size_t)hp.n_layer, n_ctx);
  for (int il = 0; il < hp.n_layer; ++il)
    if (hp.is_swa(il)) rows[(size_t)il] = std::min<int64_t>(n_ctx, (int64_t)hp.n_swa + chunk);
  return rows;
}

int64_t context_size(const ContextParams& p, const LlamaHParams& hp) { return p.n_ctx ? p.n_ctx : hp.n_ctx_train; }

uint64_t full_cache_bytes(const LlamaHParams& hp, int64_t n_ctx, int64_t chunk, KVType tk, KVType tv, bool positions) {
  uint64_t rows = 0;
  for (int64_t r : full_cache_rows(hp, n_ctx, chunk)) rows += (uint64_t)r * hp.n_head_kv;
  return rows * (KVArena::entry_bytes(hp.head_dim, tk, tv) - (positions ? 0 : sizeof(int32_t)));
}

SequenceContext::SequenceContext(const Model& model, const ContextParams& p, KVTypesOf kv_types)
    : model_(model), hp_(model.hparams()), kv_(p.kv) {
  check_context_params(p);
  std::tie(type_k_, type_v_) = kv_types(p, hp_.head_dim);
  n_ctx_ = context_size(p, hp_);
  method_ = parse_budget_method(kv_.method);
  if (compressing()) {
    check_kv_config(kv_, hp_.n_vocab);
    if (method_ == BudgetMethod::HeadKV) {
      scores_ = resolve_head_scores(kv_.scores, model_info(model.file()));  // the given file, or the shipped one
    }
  }
}

SequenceContext::~SequenceContext() = default;

void SequenceContext::check_eval(const int32_t* tokens, int64_t n) const {
  check_eval_tokens(tokens, n, n_past_, compressing() ? -1 : n_ctx_, hp_.n_vocab);
  if (has_arena()) {  // decode room is the same for every head: check before touching anything
    for (int l = 0; l < hp_.n_layer; ++l)
      for (int g = 0; g < hp_.n_head_kv; ++g)
        if (used(l, g) + n > capacity(l, g)) fail_decode_room(n, kv_.max_new_tokens);
  }
}

void SequenceContext::eval(const int32_t* tokens, int64_t n, bool all_logits) {
  check_eval(tokens, n);
  eval_checked(tokens, n, all_logits);
}

void SequenceContext::reset() {
  n_past_ = 0;
  n_logit_rows_ = 0;
  history_.clear();
  plan_.reset();
  prefill_peak_kv_bytes_ = 0;
  reset_cache();
}

bool SequenceContext::can_truncate(int32_t n_keep) const {
  if (n_keep == 0) return true;
  for (int il = 0; il < hp_.n_layer; ++il) {  // the window before n_keep must be the ring's
    const int64_t rows = ring_rows(il);
    if (rows && std::max<int64_t>(0, (int64_t)n_keep - hp_.n_swa + 1) < (int64_t)n_past_ - rows) return false;
  }
  return true;
}

void SequenceContext::truncate(int32_t n_keep) {
  check_truncate(n_keep, n_past_);
  if (n_keep == 0) return reset();
  if (has_arena()) check_truncate_prompt(n_keep, n_prompt_);
  if (!can_truncate(n_keep))
    fail(ErrorKind::InvalidArgument, "truncate: the sliding-window layers no longer hold the window before position " +
                                         std::to_string(n_keep) + " (reset and evaluate again)");
  drop_after(n_keep);
  n_past_ = n_keep;
  history_.resize((size_t)n_keep);
  n_logit_rows_ = 0;  // the logits were of a forgotten token
}

void SequenceContext::set_max_new_tokens(int32_t n) {
  check_max_new_tokens(n, has_arena());
  kv_.max_new_tokens = n;
}

const float* SequenceContext::logits() const {
  const float* all = logits_all();
  return all ? all + (size_t)(n_logit_rows_ - 1) * hp_.n_vocab : nullptr;
}

uint64_t SequenceContext::full_kv_bytes() const {
  // What a cache of n_ctx rows in every layer would hold (for the full cache: n_ctx positions).
  const uint64_t positions = compressing() ? (uint64_t)n_past_ + (has_arena() ? kv_.max_new_tokens : 0) : (uint64_t)n_ctx_;
  return positions * hp_.n_layer * hp_.n_head_kv * full_entry_bytes();
}

KVState SequenceContext::save_state() const {
  KVState s;
  s.n_layer = hp_.n_layer;
  s.n_head_kv = hp_.n_head_kv;
  s.head_dim = hp_.head_dim;
  s.n_vocab = hp_.n_vocab;
  s.method = kv_.method;
  s.type_k = type_k_;
  s.type_v = type_v_;
  s.n_past = n_past_;
  s.n_prompt = n_prompt();
  s.history = history_;
  if (const float* lg = logits()) s.logits.assign(lg, lg + hp_.n_vocab);
  s.arena = has_arena();
  if (s.arena) s.plan = *plan_;
  if (compressing() && !s.arena) {  // a compressing context before its prompt: nothing cached
    s.used.assign((size_t)hp_.n_layer * hp_.n_head_kv, 0);
    return s;
  }
  save_kv(s);
  return s;
}

void SequenceContext::load_state(const KVState& s) {
  check_state(s, hp_.n_layer, hp_.n_head_kv, hp_.head_dim, hp_.n_vocab, kv_.method, type_k_, type_v_, n_ctx_);
  if (compressing() && !s.arena) {  // the state of a compressing context before its prompt: nothing cached
    if (s.n_past != 0)
      fail(ErrorKind::InvalidArgument, "the state does not fit this context: it holds tokens without a compressed arena");
    return reset();
  }
  load_kv(s);
  if (s.arena) {
    plan_ = s.plan;
    n_prompt_ = s.n_prompt;
  }
  n_past_ = s.n_past;
  history_ = s.history;
}

}  // namespace headkv
