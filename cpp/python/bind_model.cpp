// headkv._core.Engine (model + one context), headkv._core.Sampler, and the batched decode of several
// contexts over one model (decode_batch over Engines; SequenceGroup, sequences by id).
#include <algorithm>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <memory>
#include <string>

#include "backend/group.h"
#include "backend/session.h"
#include "common/error.h"
#include "generate/sampler.h"
#include "model/context.h"
#include "model/llama.h"

namespace py = pybind11;
using namespace headkv;

namespace {

constexpr int32_t kDefaultPythonCtx = 4096;
// A context's n_ctx from Python's argument: -1 (not given) is kDefaultPythonCtx, capped by the model's
// training context.
int32_t python_n_ctx(int n_ctx, const Model& m) {
  return n_ctx == -1 ? std::min<int32_t>(kDefaultPythonCtx, m.hparams().n_ctx_train) : n_ctx;
}

struct Engine {
  std::shared_ptr<Model> model;
  std::unique_ptr<Session> ctx;

  // A context over base's model (and thread pool on the CPU; device weights on the GPU) on base's
  // device, for batched steps (decode_batch, BatchStep) with base and its siblings.
  Engine(const Engine& base, int n_ctx, int n_batch, const KVConfig& kv) : model(base.model) {
    ContextParams p;
    p.n_ctx = python_n_ctx(n_ctx, *model);
    p.n_batch = n_batch;
    p.kv = kv;
    if (Context* c = base.ctx->cpu()) p.pool = c->pool();
    ctx = std::make_unique<Session>(*model, p, base.ctx->device());
  }

  Engine(const std::string& path, int n_ctx, int n_threads, int n_batch, const KVConfig& kv,
         const std::string& device = "cpu") {
    {
      py::gil_scoped_release nogil;
      model = Model::load(path);
    }
    ContextParams p;
    // -1: Python's default context, 4096 tokens or the training context if shorter (the full
    // cache is allocated at once; 0 asks for the whole training context).
    p.n_ctx = python_n_ctx(n_ctx, *model);
    p.n_threads = n_threads;
    p.n_batch = n_batch;
    p.kv = kv;
    ctx = std::make_unique<Session>(*model, p, device);
  }

  py::dict kv_stats() const {
    const LlamaHParams& hp = model->hparams();
    py::dict d;
    d["method"] = ctx->kv_config().method;
    d["budget"] = ctx->kv_config().budget;  // entries per KV head on average (resolved from budget_bytes when given)
    d["bytes_held"] = ctx->kv_bytes();
    d["bytes_full"] = ctx->full_kv_bytes();
    d["prefill_peak_bytes"] = ctx->prefill_peak_kv_bytes();
    d["entry_bytes"] = ctx->entry_bytes();
    d["device"] = ctx->device();
    d["peak_device_bytes"] = ctx->peak_device_bytes();
    if (!ctx->has_arena()) return d;
    py::array_t<int64_t> cap({(int64_t)hp.n_layer, (int64_t)hp.n_head_kv}), used({(int64_t)hp.n_layer, (int64_t)hp.n_head_kv});
    for (int l = 0; l < hp.n_layer; ++l)
      for (int g = 0; g < hp.n_head_kv; ++g) {
        cap.mutable_at(l, g) = ctx->capacity(l, g);
        used.mutable_at(l, g) = ctx->used(l, g);
      }
    d["capacity"] = cap;
    d["used"] = used;
    d["bytes_used"] = ctx->bytes_used();
    const BudgetPlan* p = ctx->plan();
    py::array_t<int32_t> caps({(int64_t)hp.n_layer, (int64_t)hp.n_head_kv});
    std::copy(p->cap.begin(), p->cap.end(), caps.mutable_data());
    d["caps"] = caps;
    d["window"] = p->window;
    d["compressed"] = p->compressed;
    d["layer_pooled"] = p->layer_pooled;
    const auto sc = ctx->selection_scores();
    if (!sc.empty()) {
      py::list layers;
      for (const auto& l : sc) {
        const int64_t P = hp.n_head_kv ? (int64_t)l.size() / hp.n_head_kv : 0;
        py::array_t<float> arr({(int64_t)hp.n_head_kv, P});
        std::copy(l.begin(), l.end(), arr.mutable_data());
        layers.append(arr);
      }
      d["selection_scores"] = layers;
    }
    return d;
  }

  // Stored K / V rows of (layer, KV head) as bytes in the cache's element types (CPU backend).
  py::tuple kv_rows(int l, int g) {
    Context* c = ctx->cpu();
    if (!c) fail(ErrorKind::Unsupported, "kv_rows reads the CPU backend's KV cache only");
    const Context::KVRows r = c->kv_rows(l, g);
    const int hd = model->hparams().head_dim;
    const size_t kb = (size_t)r.n * kv_row_bytes(c->type_k(), hd), vb = (size_t)r.n * kv_row_bytes(c->type_v(), hd);
    return py::make_tuple(py::bytes(static_cast<const char*>(r.k), kb), py::bytes(static_cast<const char*>(r.v), vb));
  }

  py::list kv_positions() const {
    if (!ctx->has_arena()) fail(ErrorKind::InvalidArgument, "kv_positions needs a compressing KV method after the prompt was evaluated");
    const LlamaHParams& hp = model->hparams();
    py::list layers;
    for (int l = 0; l < hp.n_layer; ++l) {
      py::list heads;
      for (int g = 0; g < hp.n_head_kv; ++g) {
        const std::vector<int32_t> p = ctx->positions(l, g);
        py::array_t<int32_t> pos((int64_t)p.size());
        std::copy(p.begin(), p.end(), pos.mutable_data());
        heads.append(pos);
      }
      layers.append(heads);
    }
    return layers;
  }

  std::vector<int32_t> tokenize(const py::object& text, bool add_bos, bool special) const {
    std::string s = py::isinstance<py::bytes>(text) ? text.cast<std::string>() : text.cast<std::string>();
    return model->tokenizer().encode(s, add_bos, special);
  }

  py::bytes detokenize(const std::vector<int32_t>& ids) const {
    for (int32_t id : ids)
      if (id < 0 || id >= model->tokenizer().n_vocab())
        fail(ErrorKind::InvalidArgument, "token id " + std::to_string(id) + " is outside the vocabulary");
    return py::bytes(model->tokenizer().decode(ids));
  }

  py::bytes token_to_piece(int32_t id) const {
    if (id < 0 || id >= model->tokenizer().n_vocab())
      fail(ErrorKind::InvalidArgument, "token id " + std::to_string(id) + " is outside the vocabulary");
    return py::bytes(model->tokenizer().token_to_piece(id));
  }

  void eval(const std::vector<int32_t>& tokens, bool logits_all) {
    py::gil_scoped_release nogil;
    ctx->eval(tokens.data(), (int64_t)tokens.size(), logits_all);
  }

  py::array_t<float> logits(bool all) const {
    const int64_t V = model->hparams().n_vocab;
    if (!ctx->n_logit_rows()) fail(ErrorKind::InvalidArgument, "no logits yet: call eval() first");
    if (!all) {
      py::array_t<float> a(V);
      std::copy_n(ctx->logits(), V, a.mutable_data());
      return a;
    }
    const int64_t R = ctx->n_logit_rows();
    py::array_t<float> a({R, V});
    std::copy_n(ctx->logits_all(), R * V, a.mutable_data());
    return a;
  }

  py::dict metadata() const {
    py::dict d;
    for (const auto& kv : model->file().metadata()) {
      const GGUFValue& v = kv.second;
      if (v.type == GGUFType::STRING) d[py::str(kv.first)] = py::str(v.s);
      else if (v.type == GGUFType::BOOL) d[py::str(kv.first)] = py::bool_(v.i != 0);
      else if (v.is_float()) d[py::str(kv.first)] = v.f;
      else if (v.type == GGUFType::UINT64) d[py::str(kv.first)] = v.u;
      else if (v.is_int()) d[py::str(kv.first)] = v.i;
      else if (v.type == GGUFType::ARRAY && v.arr.size() <= 64) {
        py::list l;
        for (const GGUFValue& e : v.arr) {
          if (e.type == GGUFType::STRING) l.append(py::str(e.s));
          else if (e.is_float()) l.append(e.f);
          else l.append(e.i);
        }
        d[py::str(kv.first)] = l;
      }
    }
    return d;
  }
};

// A batched step's arguments: n sequences (`what`: "engines" / "ids") and their tokens, one each, or
// with counts, counts[i] >= 1 for sequence i and the tokens of all of them.
void check_step_counts(size_t n, const char* what, size_t n_tokens, const std::vector<int64_t>& counts) {
  int64_t total = (int64_t)n;
  if (!counts.empty()) {
    if (counts.size() != n)
      fail(ErrorKind::InvalidArgument, "step: " + std::to_string(n) + " " + what + " but " + std::to_string(counts.size()) + " counts");
    total = 0;
    for (int64_t c : counts) {
      if (c < 1) fail(ErrorKind::InvalidArgument, "step: every count must be >= 1");
      total += c;
    }
  }
  if ((int64_t)n_tokens != total)
    fail(ErrorKind::InvalidArgument, counts.empty()
        ? "step: " + std::to_string(n) + " " + what + " but " + std::to_string(n_tokens) + " tokens"
        : "step: the counts add up to " + std::to_string(total) + " tokens but " + std::to_string(n_tokens) + " are given");
}

}  // namespace

// Python view of a SequenceGroup: keeps the model alive.
struct PyGroup {
  std::shared_ptr<Model> model;
  std::unique_ptr<SequenceGroup> g;
  py::array_t<float> logits(int64_t id) const {
    const int64_t V = model->hparams().n_vocab;
    py::array_t<float> a(V);
    std::copy_n(g->logits(id), V, a.mutable_data());
    return a;
  }
};

void bind_model(py::module_& m) {
  m.def("cuda_device_count", &cuda_devices, "CUDA devices visible to the CUDA backend (0 without it)");
  m.def("cuda_built", &cuda_backend_built, "whether this build has the CUDA backend");
  m.def("cuda_memory", [] {
    const CudaMemory c = cuda_memory();
    return py::make_tuple(c.free, c.total, c.held);
  }, "(free, total, held by headkv) bytes of the current CUDA device; zeros without one");
  py::class_<KVConfig>(m, "KVConfigNative")
      .def(py::init([](const std::string& method, int budget, int window, double beta, double temp, int kernel,
                       const std::string& pooling, const std::string& scores, int max_new_tokens, int span,
                       const std::vector<int32_t>& probe, bool probe_echo, bool adaptive,
                       const std::string& type_k, const std::string& type_v, int64_t budget_bytes,
                       double value_fit, int reach, double cap_ceiling) {
             if (pooling != "max" && pooling != "avg")
               fail(ErrorKind::InvalidArgument, "pooling must be 'max' or 'avg', got '" + pooling + "'");
             KVConfig c;
             c.method = method;
             c.budget = budget;
             c.window = window;
             c.beta = beta;
             c.temp = temp;
             c.kernel = kernel;
             c.max_pool = pooling == "max";
             c.scores = scores;
             c.max_new_tokens = max_new_tokens;
             c.span = span;
             c.probe = probe;
             c.probe_echo = probe_echo;
             c.adaptive = adaptive;
             c.type_k = type_k;
             c.type_v = type_v;
             c.budget_bytes = budget_bytes;
             c.value_fit = value_fit;
             c.reach = reach;
             c.cap_ceiling = cap_ceiling;
             return c;
           }),
           py::arg("method") = "full", py::arg("budget") = 128, py::arg("window") = 8, py::arg("beta") = KVConfig{}.beta,
           py::arg("temp") = 1.0, py::arg("kernel") = 7, py::arg("pooling") = "max", py::arg("scores") = "",
           py::arg("max_new_tokens") = 512, py::arg("span") = KVConfig{}.span,
           py::arg("probe") = std::vector<int32_t>{}, py::arg("probe_echo") = false,
           py::arg("adaptive") = KVConfig{}.adaptive, py::arg("type_k") = KVConfig{}.type_k,
           py::arg("type_v") = KVConfig{}.type_v, py::arg("budget_bytes") = 0,
           py::arg("value_fit") = KVConfig{}.value_fit, py::arg("reach") = KVConfig{}.reach,
           py::arg("cap_ceiling") = KVConfig{}.cap_ceiling);

  py::class_<Engine>(m, "Engine")
      .def(py::init<const std::string&, int, int, int, const KVConfig&, const std::string&>(), py::arg("path"),
           py::arg("n_ctx") = 0, py::arg("n_threads") = 0, py::arg("n_batch") = 512, py::arg("kv") = KVConfig{},
           py::arg("device") = "cpu")
      .def("sibling", [](const Engine& e, int n_ctx, int n_batch, const KVConfig& kv) {
             py::gil_scoped_release nogil;
             return std::make_unique<Engine>(e, n_ctx, n_batch, kv);
           }, py::arg("n_ctx") = -1, py::arg("n_batch") = 512, py::arg("kv") = KVConfig{},
           "a new context over this engine's model (and thread pool) on its device, batchable with it (decode_batch, BatchStep)")
      .def("kv_stats", &Engine::kv_stats)
      .def("kv_positions", &Engine::kv_positions)
      .def("kv_rows", &Engine::kv_rows, py::arg("layer"), py::arg("kv_head"),
           "(keys, values) of one KV head as stored on the CPU: bytes of rows in the cache's types")
      .def("tokenize", &Engine::tokenize, py::arg("text"), py::arg("add_bos") = false, py::arg("special") = false)
      .def("detokenize", &Engine::detokenize)
      .def("token_to_piece", &Engine::token_to_piece)
      .def("eval", &Engine::eval, py::arg("tokens"), py::arg("logits_all") = false)
      .def("logits", &Engine::logits, py::arg("all") = false)
      .def("reset", [](Engine& e) { e.ctx->reset(); })
      .def("truncate", [](Engine& e, int32_t n) { e.ctx->truncate(n); }, py::arg("n_keep"))
      .def("set_max_new_tokens", [](Engine& e, int32_t n) { e.ctx->set_max_new_tokens(n); }, py::arg("n"))
      .def("reuse_prefix", [](Engine& e, const std::vector<int32_t>& t) { return e.ctx->reuse_prefix(t.data(), (int64_t)t.size()); },
           py::arg("tokens"))
      .def("save_state", [](const Engine& e) {
        const std::vector<uint8_t> b = e.ctx->save_state();
        return py::bytes(reinterpret_cast<const char*>(b.data()), b.size());
      })
      .def("load_state", [](Engine& e, const py::bytes& data) {
        const std::string_view b = data;
        e.ctx->load_state(reinterpret_cast<const uint8_t*>(b.data()), b.size());
      }, py::arg("data"))
      .def_property_readonly("n_prompt", [](const Engine& e) { return e.ctx->n_prompt(); })
      .def_property_readonly("compressing", [](const Engine& e) { return e.ctx->compressing(); })
      .def("set_attention_probe", [](Engine& e, bool on) { e.ctx->set_attention_probe(on); }, py::arg("on") = true)
      .def("attention_probe", [](const Engine& e) {
        // [n_layer, n_head, n_past] attention of the last evaluated token's query (a copy)
        const LlamaHParams& hp = e.model->hparams();
        if (!e.ctx->attention_probe()) fail(ErrorKind::InvalidArgument, "the attention probe is off: call set_attention_probe(True) first");
        if (!e.ctx->probe()) fail(ErrorKind::InvalidArgument, "no probed attention yet: call eval() first");
        const int64_t n = e.ctx->probe_n();
        py::array_t<float> a({(int64_t)hp.n_layer, (int64_t)hp.n_head, n});
        std::copy_n(e.ctx->probe(), (size_t)hp.n_layer * hp.n_head * n, a.mutable_data());
        return a;
      })
      .def("vocab", [](const Engine& e) {
        // (pieces, special_ids): every token's bytes as decoded output shows them, and the ids of
        // control / user-defined / unknown tokens (what a grammar engine must keep out of text)
        const Tokenizer& t = e.model->tokenizer();
        py::list pieces;
        std::vector<int32_t> special;
        for (int32_t i = 0; i < t.n_vocab(); ++i) {
          pieces.append(py::bytes(t.token_to_piece(i)));
          if (t.is_special(i)) special.push_back(i);
        }
        return py::make_tuple(pieces, special);
      })
      .def_property_readonly("eog_ids", [](const Engine& e) { return e.model->tokenizer().eog_ids(); })
      .def("set_embeddings", [](Engine& e, bool on) { e.ctx->set_embeddings(on); }, py::arg("on") = true)
      .def("embeddings", [](const Engine& e) {
        // [n_tokens, n_embd] final-norm hidden states of the last eval (a copy)
        if (!e.ctx->embeddings()) fail(ErrorKind::InvalidArgument, "no embeddings yet: call set_embeddings(True), then eval()");
        const int64_t R = e.ctx->n_embd_rows(), d = e.model->hparams().n_embd;
        py::array_t<float> a({R, d});
        std::copy_n(e.ctx->embeddings(), R * d, a.mutable_data());
        return a;
      })
      .def_property_readonly("n_embd", [](const Engine& e) { return e.model->hparams().n_embd; })
      .def("metadata", &Engine::metadata)
      .def("is_eog", [](const Engine& e, int32_t t) { return e.model->tokenizer().is_eog(t); })
      .def_property_readonly("n_past", [](const Engine& e) { return e.ctx->n_past(); })
      .def_property_readonly("device", [](const Engine& e) { return e.ctx->device(); })
      .def_property_readonly("n_ctx", [](const Engine& e) { return e.ctx->n_ctx(); })
      .def_property_readonly("n_threads", [](const Engine& e) { return e.ctx->n_threads(); })
      .def_property_readonly("n_vocab", [](const Engine& e) { return e.model->hparams().n_vocab; })
      .def_property_readonly("n_ctx_train", [](const Engine& e) { return e.model->hparams().n_ctx_train; })
      .def_property_readonly("bos", [](const Engine& e) { return e.model->tokenizer().bos_id(); })
      .def_property_readonly("eos", [](const Engine& e) { return e.model->tokenizer().eos_id(); })
      .def_property_readonly("add_bos", [](const Engine& e) { return e.model->tokenizer().add_bos_default(); })
      .def_property_readonly("chat_template", [](const Engine& e) { return e.model->chat_template(); })
      .def_property_readonly("kv_bytes", [](const Engine& e) { return e.ctx->kv_bytes(); })
      .def_property_readonly("weight_bytes", [](const Engine& e) { return e.model->weight_bytes(); })
      .def_property_readonly("history", [](const Engine& e) { return e.ctx->history(); });

  // mask: one bit per token id (int32 words, LSB first; a 0 bit excludes the token), as
  // llguidance's token bitmask; None: no mask.
  using Mask = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
  auto mask_ptr = [](const py::object& mask, int32_t n_vocab) -> const uint32_t* {
    if (mask.is_none()) return nullptr;
    Mask a = mask.cast<Mask>();
    if (a.ndim() != 1 || a.size() < (n_vocab + 31) / 32)
      fail(ErrorKind::InvalidArgument, "mask must be a 1-D int32 array of at least ceil(n_vocab / 32) words");
    return reinterpret_cast<const uint32_t*>(a.data());
  };
  m.def("decode_batch", [](const std::vector<Engine*>& es, const std::vector<int32_t>& tokens) {
    if (es.size() != tokens.size())
      fail(ErrorKind::InvalidArgument, "decode_batch: " + std::to_string(es.size()) + " engines but " + std::to_string(tokens.size()) + " tokens");
    std::vector<Context*> cs;
    for (Engine* e : es) {
      if (!e || !e->ctx->cpu()) fail(ErrorKind::Unsupported, "decode_batch runs CPU contexts only");
      cs.push_back(e->ctx->cpu());
    }
    py::gil_scoped_release nogil;
    Context::decode_batch(cs, tokens.data());
  }, py::arg("engines"), py::arg("tokens"),
        "One batched decode step: appends tokens[i] to engines[i] (siblings sharing one model and thread pool)");

  py::class_<SessionBatch>(m, "BatchStep", "batched decode steps over sibling engines on one device (keeps the GPU scratch)")
      .def(py::init<>())
      .def("step", [](SessionBatch& b, const std::vector<Engine*>& es, const std::vector<int32_t>& tokens,
                      const std::vector<int64_t>& counts) {
        check_step_counts(es.size(), "engines", tokens.size(), counts);
        std::vector<Session*> ss;
        for (Engine* e : es) ss.push_back(e ? e->ctx.get() : nullptr);
        py::gil_scoped_release nogil;
        b.step(ss, tokens.data(), nullptr, counts.empty() ? nullptr : counts.data());
      }, py::arg("engines"), py::arg("tokens"), py::arg("counts") = std::vector<int64_t>{},
      "appends tokens[i] to engines[i] in one batched step; with counts, engines[i] takes counts[i] consecutive tokens");

  py::class_<PyGroup>(m, "SequenceGroup")
      .def(py::init([](const Engine& e, int n_ctx, int n_threads, int n_batch, const KVConfig& kv, uint64_t kv_limit,
                       const std::string& device) {
             ContextParams p;
             p.n_ctx = python_n_ctx(n_ctx, *e.model);
             p.n_threads = n_threads;
             p.n_batch = n_batch;
             p.kv = kv;
             auto g = std::make_unique<PyGroup>();
             g->model = e.model;
             g->g = std::make_unique<SequenceGroup>(*e.model, p, kv_limit, device);
             return g;
           }), py::arg("engine"), py::arg("n_ctx") = -1, py::arg("n_threads") = 0, py::arg("n_batch") = 512,
           py::arg("kv") = KVConfig{}, py::arg("kv_limit") = 0, py::arg("device") = "cpu")
      .def("add", [](PyGroup& g, int64_t id, const std::vector<int32_t>& t) {
        py::gil_scoped_release nogil;
        g.g->add(id, t.data(), (int64_t)t.size());
      }, py::arg("id"), py::arg("tokens"))
      .def("remove", [](PyGroup& g, int64_t id) { g.g->remove(id); }, py::arg("id"))
      .def("step", [](PyGroup& g, const std::vector<int64_t>& ids, const std::vector<int32_t>& tokens,
                      const std::vector<int64_t>& counts) {
        check_step_counts(ids.size(), "ids", tokens.size(), counts);
        {
          py::gil_scoped_release nogil;
          g.g->step(ids.data(), tokens.data(), (int64_t)ids.size(), counts.empty() ? nullptr : counts.data());
        }
        const int64_t V = g.model->hparams().n_vocab;
        py::array_t<float> a({(int64_t)ids.size(), V});
        for (size_t i = 0; i < ids.size(); ++i) std::copy_n(g.g->logits(ids[i]), V, a.mutable_data() + i * V);
        return a;
      }, py::arg("ids"), py::arg("tokens"), py::arg("counts") = std::vector<int64_t>{},
      "one batched step (with counts, ids[i] takes counts[i] consecutive tokens); last logits [len(ids), n_vocab]")
      .def("logits", &PyGroup::logits, py::arg("id"))
      .def("n_past", [](const PyGroup& g, int64_t id) { return g.g->sequence(id).n_past(); }, py::arg("id"))
      .def("kv_bytes", [](const PyGroup& g, int64_t id) { return g.g->sequence(id).kv_bytes(); }, py::arg("id"))
      .def_property_readonly("ids", [](const PyGroup& g) { return g.g->ids(); })
      .def_property_readonly("kv_bytes_total", [](const PyGroup& g) { return g.g->kv_bytes(); })
      .def_property_readonly("kv_limit", [](const PyGroup& g) { return g.g->kv_limit(); })
      .def_property_readonly("device", [](const PyGroup& g) { return g.g->device(); })
      .def_property_readonly("scratch_bytes", [](const PyGroup& g) { return g.g->scratch_bytes(); })
      .def("__len__", [](const PyGroup& g) { return g.g->size(); });

  py::class_<Sampler>(m, "Sampler")
      .def(py::init([](float temperature, int top_k, float top_p, float min_p, float repeat_penalty,
                       int repeat_last_n, uint64_t seed, float frequency_penalty, float presence_penalty,
                       float typical_p, const std::map<int32_t, float>& logit_bias) {
             SamplerParams p;
             p.temperature = temperature;
             p.top_k = top_k;
             p.top_p = top_p;
             p.min_p = min_p;
             p.repeat_penalty = repeat_penalty;
             p.repeat_last_n = repeat_last_n;
             p.seed = seed;
             p.frequency_penalty = frequency_penalty;
             p.presence_penalty = presence_penalty;
             p.typical_p = typical_p;
             p.logit_bias.assign(logit_bias.begin(), logit_bias.end());
             return std::make_unique<Sampler>(p);
           }),
           py::arg("temperature") = 0.8f, py::arg("top_k") = 40, py::arg("top_p") = 0.95f, py::arg("min_p") = 0.05f,
           py::arg("repeat_penalty") = 1.0f, py::arg("repeat_last_n") = 64, py::arg("seed") = 0xC0FFEE,
           py::arg("frequency_penalty") = 0.0f, py::arg("presence_penalty") = 0.0f, py::arg("typical_p") = 1.0f,
           py::arg("logit_bias") = std::map<int32_t, float>{})
      .def("sample", [mask_ptr](Sampler& s, const Engine& e, const py::object& mask) {
        const float* lg = e.ctx->logits();
        if (!lg) fail(ErrorKind::InvalidArgument, "no logits yet: call eval() first");
        const int32_t V = e.model->hparams().n_vocab;
        return s.sample(lg, V, e.ctx->history(), mask_ptr(mask, V));
      }, py::arg("engine"), py::arg("mask") = py::none())
      .def("sample_logits", [mask_ptr](Sampler& s, py::array_t<float, py::array::c_style | py::array::forcecast> logits,
                                       const std::vector<int32_t>& history, const py::object& mask) {
        if (logits.ndim() != 1 || logits.size() == 0) fail(ErrorKind::InvalidArgument, "logits must be a non-empty 1-D array");
        return s.sample(logits.data(), (int32_t)logits.size(), history, mask_ptr(mask, (int32_t)logits.size()));
      }, py::arg("logits"), py::arg("history") = std::vector<int32_t>{}, py::arg("mask") = py::none());
}
