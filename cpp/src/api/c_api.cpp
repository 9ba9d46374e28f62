// The public C API (cpp/include/headkv/headkv.h) over the C++ engine: exceptions become
// hk_status codes plus a per-thread message.
#include "headkv/headkv.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>
#include <string>

#include "backend/group.h"
#include "backend/session.h"
#include "common/error.h"
#include "generate/sampler.h"
#include "model/context.h"
#include "model/llama.h"

struct hk_model {
  std::unique_ptr<headkv::Model> m;
};
struct hk_context {
  std::unique_ptr<headkv::Session> c;
};
struct hk_group {
  std::unique_ptr<headkv::SequenceGroup> g;
};
struct hk_sampler {
  std::unique_ptr<headkv::Sampler> s;
};

namespace {
thread_local std::string g_last_error;

template <class F>
hk_status guard(F&& f) {
  try {
    g_last_error.clear();
    f();
    return HK_OK;
  } catch (const headkv::Error& e) {
    g_last_error = e.what();
    return (hk_status)e.kind();
  } catch (const std::bad_alloc&) {
    g_last_error = "out of memory";
    return HK_ERR_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    g_last_error = e.what();
    return HK_ERR_INTERNAL;
  }
}

hk_status null_arg(const char* what) {
  g_last_error = std::string(what) + " must not be NULL";
  return HK_ERR_INVALID_ARGUMENT;
}
// The engine's context parameters of hk_context_params.
headkv::ContextParams to_params(const hk_context_params& d) {
  headkv::ContextParams cp;
  cp.n_ctx = d.n_ctx;
  cp.n_threads = d.n_threads;
  cp.n_batch = d.n_batch;
  if (d.kv_method) cp.kv.method = d.kv_method;
  cp.kv.budget = d.kv_budget;
  cp.kv.window = d.kv_window;
  cp.kv.beta = d.kv_beta;
  cp.kv.kernel = d.kv_kernel;
  cp.kv.max_pool = d.kv_avg_pool == 0;
  if (d.kv_scores) cp.kv.scores = d.kv_scores;
  cp.kv.max_new_tokens = d.kv_max_new_tokens;
  cp.kv.span = d.kv_span;
  cp.kv.reach = d.kv_reach;
  cp.kv.cap_ceiling = d.kv_cap_ceiling;
  if (d.kv_n_probe && !d.kv_probe) headkv::fail(headkv::ErrorKind::InvalidArgument, "kv_n_probe > 0 with a NULL kv_probe");
  if (d.kv_probe) cp.kv.probe.assign(d.kv_probe, d.kv_probe + d.kv_n_probe);
  cp.kv.probe_echo = d.kv_probe_echo != 0;
  cp.kv.adaptive = d.kv_adaptive != 0;
  if (d.type_k) cp.kv.type_k = d.type_k;
  if (d.type_v) cp.kv.type_v = d.type_v;
  cp.kv.budget_bytes = d.kv_budget_bytes;
  cp.kv.value_fit = d.kv_value_fit;
  return cp;
}
}  // namespace

extern "C" {

const char* hk_last_error(void) { return g_last_error.c_str(); }
const char* hk_version(void) { return "0.1.0"; }

hk_status hk_model_load(const char* path, hk_model** out) {
  if (!path || !out) return null_arg("path and out");
  *out = nullptr;
  return guard([&] {
    auto m = std::make_unique<hk_model>();
    m->m = headkv::Model::load(path);
    *out = m.release();
  });
}

void hk_model_free(hk_model* model) { delete model; }
int32_t hk_model_n_vocab(const hk_model* m) { return m->m->hparams().n_vocab; }
int32_t hk_model_n_ctx_train(const hk_model* m) { return m->m->hparams().n_ctx_train; }
int32_t hk_model_bos(const hk_model* m) { return m->m->tokenizer().bos_id(); }
int32_t hk_model_eos(const hk_model* m) { return m->m->tokenizer().eos_id(); }
int hk_model_is_eog(const hk_model* m, int32_t t) { return m->m->tokenizer().is_eog(t) ? 1 : 0; }
const char* hk_model_chat_template(const hk_model* m) { return m->m->chat_template().c_str(); }
uint64_t hk_model_weight_bytes(const hk_model* m) { return m->m->weight_bytes(); }

hk_status hk_tokenize(const hk_model* model, const char* text, size_t len, int add_bos, int parse_special,
                      int32_t* out, size_t cap, size_t* n_out) {
  if (!model || (!text && len) || !n_out) return null_arg("model, text and n_out");
  return guard([&] {
    const headkv::Tokenizer& tok = model->m->tokenizer();
    const bool bos = add_bos < 0 ? tok.add_bos_default() : add_bos != 0;
    const auto ids = tok.encode(std::string_view(text ? text : "", len), bos, parse_special != 0);
    *n_out = ids.size();
    if (ids.size() > cap) headkv::fail(headkv::ErrorKind::InvalidArgument, "output buffer too small for " + std::to_string(ids.size()) + " tokens");
    if (!ids.empty()) std::memcpy(out, ids.data(), ids.size() * sizeof(int32_t));
  });
}

size_t hk_token_to_piece(const hk_model* model, int32_t token, char* buf, size_t cap) {
  if (!model || token < 0 || token >= model->m->tokenizer().n_vocab()) return 0;
  const std::string p = model->m->tokenizer().token_to_piece(token);
  if (buf && cap) std::memcpy(buf, p.data(), p.size() < cap ? p.size() : cap);
  return p.size();
}

hk_context_params hk_context_default_params(void) {
  const headkv::KVConfig kv;
  return hk_context_params{0, 0, 512, nullptr, kv.budget, kv.window, (float)kv.beta, kv.kernel, 0, nullptr,
                           kv.max_new_tokens, nullptr, kv.span, nullptr, 0, 0, kv.adaptive ? 1 : 0,
                           nullptr, nullptr, 0, (float)kv.value_fit, kv.reach,
                           kv.cap_ceiling};
}

hk_status hk_context_new(const hk_model* model, const hk_context_params* p, hk_context** out) {
  if (!model || !out) return null_arg("model and out");
  *out = nullptr;
  return guard([&] {
    const hk_context_params d = p ? *p : hk_context_default_params();
    const headkv::ContextParams cp = to_params(d);
    auto c = std::make_unique<hk_context>();
    c->c = std::make_unique<headkv::Session>(*model->m, cp, d.device ? d.device : "cpu");
    *out = c.release();
  });
}

void hk_context_free(hk_context* ctx) { delete ctx; }
int32_t hk_context_n_ctx(const hk_context* c) { return c->c->n_ctx(); }
int32_t hk_context_n_past(const hk_context* c) { return c->c->n_past(); }
void hk_context_reset(hk_context* c) { c->c->reset(); }
hk_status hk_context_truncate(hk_context* c, int32_t n_keep) {
  if (!c) return null_arg("ctx");
  return guard([&] { c->c->truncate(n_keep); });
}
hk_status hk_context_reuse_prefix(hk_context* c, const int32_t* tokens, size_t n, int32_t* n_kept) {
  if (!c || !n_kept || (!tokens && n)) return null_arg("ctx, tokens and n_kept");
  return guard([&] { *n_kept = c->c->reuse_prefix(tokens, (int64_t)n); });
}
hk_status hk_context_state_save(const hk_context* c, uint8_t* dst, size_t capacity, size_t* written) {
  if (!c || !written) return null_arg("ctx and written");
  return guard([&] {
    const std::vector<uint8_t> b = c->c->save_state();
    *written = b.size();
    if (!dst) return;
    if (capacity < b.size())
      headkv::fail(headkv::ErrorKind::InvalidArgument, "the state needs " + std::to_string(b.size()) + " bytes, the buffer holds " +
                                                          std::to_string(capacity));
    std::copy(b.begin(), b.end(), dst);
  });
}
hk_status hk_context_state_load(hk_context* c, const uint8_t* src, size_t size) {
  if (!c || (!src && size)) return null_arg("ctx and src");
  return guard([&] { c->c->load_state(src, size); });
}
uint64_t hk_context_kv_bytes(const hk_context* c) { return c->c->kv_bytes(); }
uint64_t hk_context_peak_device_bytes(const hk_context* c) { return c->c->peak_device_bytes(); }
int hk_cuda_device_count(void) { return headkv::cuda_devices(); }
void hk_reset_peak_device_bytes(void) { headkv::cuda_reset_peak(); }
const float* hk_logits(const hk_context* c) { return c->c->logits(); }

hk_status hk_eval(hk_context* ctx, const int32_t* tokens, size_t n) {
  if (!ctx || !tokens) return null_arg("ctx and tokens");
  return guard([&] { ctx->c->eval(tokens, (int64_t)n); });
}

hk_sampler_params hk_sampler_default_params(void) {
  headkv::SamplerParams d;
  return hk_sampler_params{d.temperature, d.top_k, d.top_p, d.min_p, d.repeat_penalty, d.repeat_last_n, d.seed};
}

hk_status hk_sampler_new(const hk_sampler_params* p, hk_sampler** out) {
  if (!out) return null_arg("out");
  *out = nullptr;
  return guard([&] {
    const hk_sampler_params d = p ? *p : hk_sampler_default_params();
    headkv::SamplerParams sp;
    sp.temperature = d.temperature;
    sp.top_k = d.top_k;
    sp.top_p = d.top_p;
    sp.min_p = d.min_p;
    sp.repeat_penalty = d.repeat_penalty;
    sp.repeat_last_n = d.repeat_last_n;
    sp.seed = d.seed;
    auto s = std::make_unique<hk_sampler>();
    s->s = std::make_unique<headkv::Sampler>(sp);
    *out = s.release();
  });
}

void hk_sampler_free(hk_sampler* s) { delete s; }

hk_status hk_sample(hk_sampler* s, const hk_context* ctx, int32_t* token) {
  if (!s || !ctx || !token) return null_arg("sampler, ctx and token");
  return guard([&] {
    const float* lg = ctx->c->logits();
    if (!lg) headkv::fail(headkv::ErrorKind::InvalidArgument, "no logits yet: call hk_eval first");
    *token = s->s->sample(lg, ctx->c->model().hparams().n_vocab, ctx->c->history());
  });
}

// ---- sequence groups ----
hk_status hk_group_new(const hk_model* model, const hk_context_params* p, uint64_t kv_limit_bytes, hk_group** out) {
  if (!model || !out) return null_arg("model and out");
  *out = nullptr;
  return guard([&] {
    const hk_context_params d = p ? *p : hk_context_default_params();
    auto g = std::make_unique<hk_group>();
    g->g = std::make_unique<headkv::SequenceGroup>(*model->m, to_params(d), kv_limit_bytes, d.device ? d.device : "cpu");
    *out = g.release();
  });
}

void hk_group_free(hk_group* g) { delete g; }

hk_status hk_group_add(hk_group* g, int64_t id, const int32_t* prompt, size_t n) {
  if (!g || (!prompt && n)) return null_arg("group and prompt");
  return guard([&] { g->g->add(id, prompt, (int64_t)n); });
}

hk_status hk_group_remove(hk_group* g, int64_t id) {
  if (!g) return null_arg("group");
  return guard([&] { g->g->remove(id); });
}

hk_status hk_group_step(hk_group* g, const int64_t* ids, const int32_t* tokens, size_t n) {
  if (!g || !ids || !tokens) return null_arg("group, ids and tokens");
  return guard([&] { g->g->step(ids, tokens, (int64_t)n); });
}

hk_status hk_group_step_n(hk_group* g, const int64_t* ids, const int32_t* tokens, const int64_t* counts, size_t n) {
  if (!g || !ids || !tokens || !counts) return null_arg("group, ids, tokens and counts");
  return guard([&] { g->g->step(ids, tokens, (int64_t)n, counts); });
}

const float* hk_group_logits(const hk_group* g, int64_t id) {
  if (!g) return nullptr;
  try {
    return g->g->logits(id);
  } catch (const headkv::Error&) {
    return nullptr;
  }
}

int32_t hk_group_n_past(const hk_group* g, int64_t id) {
  if (!g) return -1;
  try {
    return g->g->sequence(id).n_past();
  } catch (const headkv::Error&) {
    return -1;
  }
}

uint64_t hk_group_kv_bytes(const hk_group* g) { return g ? g->g->kv_bytes() : 0; }

}  // extern "C"
