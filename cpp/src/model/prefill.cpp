// Compressed prefill: the whole prompt goes through one layer at a time with full causal
// attention; right after each layer every KV head keeps only its selected tokens in the arena.
// Sliding-window layers (model/arch.h) are not compressed: each of their heads keeps the prompt's
// last window - 1 positions (all a later query can see) plus the decode room; the budget is
// planned over the global layers.
#include <algorithm>
#include <string>
#include <vector>

#include "common/alloc.h"
#include "common/error.h"
#include "model/context.h"
#include "quant/quant.h"
#include "select/spans.h"
#include "select/value_fit.h"

namespace headkv {

namespace {

// Ada-KV split of a layer's pooled budget: every head first keeps its top floor_g tokens, the rest
// of the layer total goes to the best remaining (head, position) scores across the layer's heads.
std::vector<std::vector<int32_t>> adakv_split(const std::vector<float>& scores, int nkv, int64_t P,
                                              const std::vector<int32_t>& caps, double floor_frac) {
  std::vector<std::vector<int32_t>> kept(nkv);
  int64_t total = 0, floors = 0;
  std::vector<char> taken((size_t)nkv * P, 0);
  for (int g = 0; g < nkv; ++g) {
    total += caps[g];
    const int64_t f = std::min<int64_t>(P, (int64_t)(floor_frac * caps[g]));
    kept[g] = topk_positions(&scores[(size_t)g * P], P, f);
    for (int32_t j : kept[g]) taken[(size_t)g * P + j] = 1;
    floors += f;
  }
  std::vector<int64_t> rest;
  rest.reserve((size_t)nkv * P);
  for (int64_t i = 0; i < (int64_t)nkv * P; ++i)
    if (!taken[i]) rest.push_back(i);
  const int64_t extra = std::min<int64_t>(total - floors, (int64_t)rest.size());
  std::nth_element(rest.begin(), rest.begin() + extra, rest.end(), [&](int64_t a, int64_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  });
  for (int64_t i = 0; i < extra; ++i) kept[rest[i] / P].push_back((int32_t)(rest[i] % P));
  for (auto& k : kept) std::sort(k.begin(), k.end());
  return kept;
}

}  // namespace

std::vector<int32_t> prefill_rows(const KVConfig& kv, const int32_t* prompt, int64_t n_prompt, bool scored) {
  std::vector<int32_t> rows(prompt, prompt + n_prompt);
  if (scored) rows.insert(rows.end(), kv.probe.begin(), kv.probe.end());
  if (scored && kv.probe_echo) rows.insert(rows.end(), prompt, prompt + n_prompt);
  return rows;
}

bool fits_values(const KVConfig& kv, const BudgetPlan& plan, BudgetMethod method, int64_t N, int64_t n_prompt) {
  return kv.value_fit > 0 && plan.compressed && method != BudgetMethod::Streaming && N == n_prompt &&
         n_prompt > plan.window;
}

BudgetParams budget_params(const KVConfig& kv, BudgetMethod method) {
  BudgetParams bp;
  bp.method = method;
  bp.budget = kv.budget;
  bp.window = kv.window;
  bp.beta = kv.beta;
  bp.temp = kv.temp;
  bp.cap_ceiling = kv.cap_ceiling;
  return bp;
}

BudgetPlan plan_compressed_layers(const BudgetParams& bp, const HeadScores* scores, const LlamaHParams& hp,
                                  int64_t n_prompt) {
  const int nh = hp.n_head, nkv = hp.n_head_kv;
  if (!hp.has_swa()) return plan_budget(bp, scores, hp.n_layer, nh, nkv, n_prompt);
  // The global layers share the budget (their rows of the score file); each sliding-window layer
  // keeps the window before the observation window.
  std::vector<int> global;
  for (int il = 0; il < hp.n_layer; ++il)
    if (!hp.is_swa(il)) global.push_back(il);
  std::optional<HeadScores> sub;
  if (scores) {
    sub = *scores;
    sub->n_layer = (int32_t)global.size();
    sub->score.clear();
    for (int il : global)
      for (int h = 0; h < nh; ++h) sub->score.push_back(scores->at(il, h));
  }
  BudgetPlan pg;  // every layer slides (Mistral-style): nothing to plan but the window
  if (global.empty()) {
    pg.window = (int32_t)std::min<int64_t>(bp.window, n_prompt);
    pg.compressed = true;
  } else {
    pg = plan_budget(bp, sub ? &*sub : nullptr, (int)global.size(), nh, nkv, n_prompt);
  }
  BudgetPlan plan = pg;
  plan.n_layer = hp.n_layer;
  const int64_t P = n_prompt - pg.window;
  const int32_t local = (int32_t)std::max<int64_t>(0, std::min<int64_t>(P, (int64_t)hp.n_swa - 1 - pg.window));
  plan.cap.assign((size_t)hp.n_layer * nkv, local);
  for (size_t i = 0; i < global.size(); ++i)
    for (int g = 0; g < nkv; ++g) plan.cap[(size_t)global[i] * nkv + g] = pg.cap[i * nkv + g];
  return plan;
}

void Context::select_layer(int il, const float* q_win, const float* o_win, const float* K, float* V, int64_t N,
                           int64_t n_prompt) {
  const int nkv = hp_.n_head_kv, hd = hp_.head_dim;
  const int32_t a = plan_->window;
  const int64_t P = n_prompt - a;
  std::vector<int32_t> caps(nkv);
  for (int g = 0; g < nkv; ++g) caps[g] = plan_->at(il, g);
  std::vector<std::vector<int32_t>> kept;
  if (hp_.is_swa(il)) {  // the prefix's last cap positions (the window before the observation window)
    kept.assign(nkv, {});
    for (int g = 0; g < nkv; ++g)
      for (int64_t j = P - caps[g]; j < P; ++j) kept[g].push_back((int32_t)j);
  } else if (!plan_->compressed) {
    kept.assign(nkv, {});
    for (auto& k : kept)
      for (int64_t j = 0; j < P; ++j) k.push_back((int32_t)j);
  } else if (method_ == BudgetMethod::Streaming) {
    kept.assign(nkv, {});
    for (int g = 0; g < nkv; ++g) {
      const int64_t sink = std::min<int64_t>(kv_.sink, caps[g]);
      for (int64_t j = 0; j < sink; ++j) kept[g].push_back((int32_t)j);
      for (int64_t j = P - (caps[g] - sink); j < P; ++j) kept[g].push_back((int32_t)j);
    }
  } else {
    SelectionParams sp;
    sp.window = (int32_t)(N > n_prompt ? N - n_prompt : a);  // the probe's tokens, or the prompt's last α
    sp.prefix = P;
    sp.max_queries = kv_.probe_echo;
    sp.kernel = kv_.kernel;
    sp.max_pool = kv_.max_pool;
    sp.reach = selection_reach(kv_);
    sp.runs = runs_.empty() ? nullptr : runs_.data();
    if (layer_pooled()) {
      const std::vector<float> sc = window_scores(q_win, hp_.n_head, nkv, hd, K, N * hd, hd, N, sp);
      kept = adakv_split(sc, nkv, P, caps, kv_.adakv_floor);
    } else {
      kept = select_window_topk(q_win, hp_.n_head, nkv, hd, K, N * hd, hd, N, caps.data(), sp);
    }
  }
  if (layer_pooled() && plan_->compressed && !hp_.is_swa(il)) {  // the layer's pool, split by score
    std::vector<int64_t> cap(nkv);
    for (int g = 0; g < nkv; ++g) cap[g] = (int64_t)kept[g].size() + a + kv_.max_new_tokens;
    arena_->resize_layer(il, cap);
  }
  if (!hp_.is_swa(il) && fits_values(kv_, *plan_, method_, N, n_prompt)) {
    ValueFitArgs fa;
    fa.q_win = q_win;
    fa.o_win = o_win;
    fa.window = a;
    fa.n_head = hp_.n_head;
    fa.n_head_kv = nkv;
    fa.head_dim = hd;
    fa.scale = hp_.attn_scale;
    fa.softcap = hp_.attn_softcap;
    fa.lambda = kv_.value_fit;
    pool_.parallel_for(nkv, [&](int64_t b, int64_t e) {
      for (int64_t g = b; g < e; ++g)
        fit_values(fa, (int)g, K + (size_t)g * N * hd, V + (size_t)g * N * hd, P, kept[g]);
    });
  }
  for (int g = 0; g < nkv; ++g) {
    const float* Kg = K + (size_t)g * N * hd;
    const float* Vg = V + (size_t)g * N * hd;
    for (int32_t j : kept[g]) arena_->append(il, g, j, Kg + (size_t)j * hd, Vg + (size_t)j * hd);
    for (int64_t j = P; j < n_prompt; ++j) arena_->append(il, g, (int32_t)j, Kg + j * hd, Vg + j * hd);
  }
}

void Context::prefill_compressed(const int32_t* prompt, int64_t n_prompt, bool all_logits) {
  const int64_t d = hp_.n_embd, hd = hp_.head_dim, nh = hp_.n_head, nkv = hp_.n_head_kv;
  plan_ = plan_compressed_layers(budget_params(kv_, method_), scores_ ? &*scores_ : nullptr, hp_, n_prompt);
  plan_->layer_pooled = layer_pooled();
  const bool scored = plan_->compressed && method_ != BudgetMethod::Streaming;
  const std::vector<int32_t> rows_tok = prefill_rows(kv_, prompt, n_prompt, scored);
  const int32_t* tokens = rows_tok.data();
  const int64_t N = (int64_t)rows_tok.size();
  runs_.clear();
  if (scored && kv_.span > 1) {
    if (tok_edges_.empty()) tok_edges_ = token_edges(model_.tokenizer());
    runs_ = run_continues(tok_edges_, prompt, n_prompt - plan_->window, kv_.span);
  }
  // Arena sized once, before any layer runs: kept prefix + window + decode room per head.
  std::vector<int64_t> capacity(plan_->cap.size());
  for (size_t i = 0; i < capacity.size(); ++i) capacity[i] = (int64_t)plan_->cap[i] + plan_->window + kv_.max_new_tokens;
  if (kv_limit_) {  // admission (sequence groups): refused before anything is allocated
    uint64_t entries = 0;
    for (int64_t c : capacity) entries += (uint64_t)c;
    const uint64_t bytes = entries * KVArena::entry_bytes((int)hd, type_k_, type_v_);
    if (bytes > kv_limit_)
      fail(ErrorKind::OutOfMemory, "the compressed KV of this prompt needs " + std::to_string(bytes) + " bytes, " +
                                       std::to_string(kv_limit_) + " are left under the KV limit");
  }
  arena_ = std::make_unique<KVArena>(hp_.n_layer, (int)nkv, (int)hd, capacity, type_k_, type_v_);

  {  // the prompt's activations and one layer's full K/V, checked before anything is allocated
    const std::string what = "compressed prefill buffers for " + std::to_string(N) + " prompt tokens";
    const uint64_t per_tok = (uint64_t)d + std::max<int64_t>(d, nh * hd) + 2 * nh * hd + 4 * nkv * hd;
    check_alloc(checked_mul(checked_mul((uint64_t)N, per_tok, what), sizeof(float), what), what);
  }
  std::vector<float> x(N * d), tmp(N * std::max<int64_t>(d, nh * hd)), q(N * nh * hd), att(N * nh * hd);
  std::vector<float> kc(N * nkv * hd), vc(N * nkv * hd);   // this layer's projections, token-major
  std::vector<float> K(nkv * N * hd), V(nkv * N * hd);      // this layer's full K/V, head-major
  std::vector<float> cs, sn;
  prefill_peak_kv_bytes_ = (uint64_t)(kc.size() + vc.size() + K.size() + V.size()) * sizeof(float) + arena_->bytes();
  embed(tokens, N, x.data());
  std::vector<float> cs_swa, sn_swa;  // the sliding-window layers' RoPE
  if (const int il = hp_.first_layer(false); il >= 0) rope_tables(il, 0, N, cs, sn);
  if (const int il = hp_.first_layer(true); il >= 0) rope_tables(il, 0, N, cs_swa, sn_swa);

  for (int il = 0; il < hp_.n_layer; ++il) {
    const bool local = hp_.is_swa(il);
    qkv(il, x.data(), N, tmp.data(), q.data(), kc.data(), vc.data(), (local ? cs_swa : cs).data(),
        (local ? sn_swa : sn).data());
    for (int64_t t = 0; t < N; ++t)
      for (int g = 0; g < nkv; ++g) {
        std::copy_n(&kc[(t * nkv + g) * hd], hd, &K[((size_t)g * N + t) * hd]);
        std::copy_n(&vc[(t * nkv + g) * hd], hd, &V[((size_t)g * N + t) * hd]);
      }
    attention(q.data(), N, [&](int g) {
      KVView kv{&K[(size_t)g * N * hd], &V[(size_t)g * N * hd], 0};
      if (local) kv.window = hp_.n_swa;
      return kv;
    }, att.data());
    const int64_t n_win = N > n_prompt ? N - n_prompt : plan_->window;
    select_layer(il, &q[(size_t)(N - n_win) * nh * hd], &att[(size_t)(N - n_win) * nh * hd], K.data(), V.data(), N,
                 n_prompt);
    out_and_mlp(il, att.data(), N, x.data(), tmp.data());
  }
  const uint64_t rows = all_logits ? (uint64_t)n_prompt : 1;
  if (logits_.size() < rows * hp_.n_vocab) logits_.resize(rows * hp_.n_vocab);
  final_logits(&x[(n_prompt - rows) * d], (int64_t)rows, logits_.data());
}

}  // namespace headkv
