#include "backend/session.h"

#include <algorithm>
#include <climits>
#include <string>

#include "common/error.h"
#include "select/kv_arena.h"
#ifdef HEADKV_WITH_CUDA
#include "backend/cuda_context.h"
#else
namespace headkv {
class CudaContext {};  // never constructed without the backend; complete so unique_ptr can delete it
}  // namespace headkv
#endif

#ifdef HEADKV_WITH_CUDA
extern "C" int headkv_cuda_device_count(void);
extern "C" void headkv_cuda_reset_peak(void);
extern "C" void headkv_cuda_memory(uint64_t* free_b, uint64_t* total_b, uint64_t* held_b);
#endif

namespace headkv {

int cuda_devices() {
#ifdef HEADKV_WITH_CUDA
  return headkv_cuda_device_count();
#else
  return 0;
#endif
}

void cuda_reset_peak() {
#ifdef HEADKV_WITH_CUDA
  headkv_cuda_reset_peak();
#endif
}

CudaMemory cuda_memory() {
  CudaMemory m;
#ifdef HEADKV_WITH_CUDA
  headkv_cuda_memory(&m.free, &m.total, &m.held);
#endif
  return m;
}

bool cuda_backend_built() {
#ifdef HEADKV_WITH_CUDA
  return true;
#else
  return false;
#endif
}

namespace {
// A budget in bytes -> entries per KV head on average: the largest budget whose kept entries
// (n_layer * n_head_kv * budget, window included) fit kv.budget_bytes at this entry size.
ContextParams resolve_budget_bytes(const Model& model, ContextParams p, uint64_t entry_bytes) {
  if (p.kv.budget_bytes < 0) fail(ErrorKind::InvalidArgument, "KV budget in bytes must be >= 0");
  if (p.kv.budget_bytes == 0 || p.kv.method == "full") return p;  // the full cache has no budget
  const LlamaHParams& hp = model.hparams();
  const uint64_t per_budget = (uint64_t)hp.n_layer * hp.n_head_kv * entry_bytes;
  const uint64_t b = (uint64_t)p.kv.budget_bytes / per_budget;
  if (b <= (uint64_t)std::max(p.kv.window, 0))
    fail(ErrorKind::InvalidArgument, "KV budget of " + std::to_string(p.kv.budget_bytes) + " bytes holds " + std::to_string(b) +
                                         " entries per KV head (" + std::to_string(entry_bytes) + " bytes each, " +
                                         std::to_string(hp.n_layer * hp.n_head_kv) + " heads); it must be more than the window " +
                                         std::to_string(p.kv.window));
  p.kv.budget = (int32_t)std::min<uint64_t>(b, INT32_MAX);
  return p;
}
}  // namespace

Session::Session(const Model& model, const ContextParams& params, const std::string& device) : device_(device) {
  if (device == "cpu") {
    const int hd = model.hparams().head_dim;
    const KVType tk = parse_kv_type(params.kv.type_k, "KV cache type (K)"), tv = parse_kv_type(params.kv.type_v, "KV cache type (V)");
    check_kv_row(tk, hd, "KV cache type (K)");
    check_kv_row(tv, hd, "KV cache type (V)");
    cpu_ = std::make_unique<Context>(model, resolve_budget_bytes(model, params, KVArena::entry_bytes(hd, tk, tv)));
    return;
  }
  if (device != "cuda" && device != "cuda-fp32")
    fail(ErrorKind::InvalidArgument, "unknown device '" + device + "' (cpu, cuda, cuda-fp32)");
#ifdef HEADKV_WITH_CUDA
  const int hd = model.hparams().head_dim;
  const auto [tk, tv] = CudaContext::kv_types(params, hd);  // (typed errors before anything is allocated)
  gpu_ = std::make_unique<CudaContext>(model, resolve_budget_bytes(model, params, CudaContext::entry_bytes(hd, tk, tv)),
                                       device == "cuda" ? CudaPrecision::Fast : CudaPrecision::Fp32);
#else
  fail(ErrorKind::Unsupported, "device '" + device + "' is not available: this build has no CUDA backend");
#endif
}

Session::~Session() = default;

#ifdef HEADKV_WITH_CUDA
#define HK_DISPATCH(expr_cpu, expr_gpu) return cpu_ ? (expr_cpu) : (expr_gpu)
#else
#define HK_DISPATCH(expr_cpu, expr_gpu) return expr_cpu
#endif

void Session::eval(const int32_t* t, int64_t n, bool all) {
  if (cpu_) return cpu_->eval(t, n, all);
#ifdef HEADKV_WITH_CUDA
  gpu_->eval(t, n, all);
#endif
}
void Session::reset() {
  if (cpu_) return cpu_->reset();
#ifdef HEADKV_WITH_CUDA
  gpu_->reset();
#endif
}
void Session::truncate(int32_t n_keep) {
  if (cpu_) return cpu_->truncate(n_keep);
#ifdef HEADKV_WITH_CUDA
  gpu_->truncate(n_keep);
#endif
}
void Session::set_max_new_tokens(int32_t n) {
  if (cpu_) return cpu_->set_max_new_tokens(n);
#ifdef HEADKV_WITH_CUDA
  gpu_->set_max_new_tokens(n);
#endif
}
int32_t Session::reuse_prefix(const int32_t* tokens, int64_t n) {
  const std::vector<int32_t>& h = history();
  int64_t keep = 0;
  while (keep < (int64_t)h.size() && keep + 1 < n && h[(size_t)keep] == tokens[keep]) ++keep;
  if (compressing() && keep < n_prompt()) keep = 0;  // the compressed prompt is not a prefix of this one
  if (keep && cpu_ && !cpu_->can_truncate((int32_t)keep)) keep = 0;  // a ring no longer holds that window
#ifdef HEADKV_WITH_CUDA
  if (keep && gpu_ && !gpu_->can_truncate((int32_t)keep)) keep = 0;
#endif
  if (keep) truncate((int32_t)keep);
  else reset();
  return (int32_t)keep;
}
std::vector<uint8_t> Session::save_state() const { HK_DISPATCH(serialize_state(cpu_->save_state()), serialize_state(gpu_->save_state())); }
void Session::load_state(const uint8_t* data, size_t n) {
  const KVState s = deserialize_state(data, n);
  if (cpu_) return cpu_->load_state(s);
#ifdef HEADKV_WITH_CUDA
  gpu_->load_state(s);
#endif
}
int32_t Session::n_prompt() const { HK_DISPATCH(cpu_->n_prompt(), gpu_->n_prompt()); }
const float* Session::logits() const { HK_DISPATCH(cpu_->logits(), gpu_->logits()); }
const float* Session::logits_all() const { HK_DISPATCH(cpu_->logits_all(), gpu_->logits_all()); }
int64_t Session::n_logit_rows() const { HK_DISPATCH(cpu_->n_logit_rows(), gpu_->n_logit_rows()); }
const Model& Session::model() const { HK_DISPATCH(cpu_->model(), gpu_->model()); }
int32_t Session::n_ctx() const { HK_DISPATCH(cpu_->n_ctx(), gpu_->n_ctx()); }
int32_t Session::n_past() const { HK_DISPATCH(cpu_->n_past(), gpu_->n_past()); }
int32_t Session::n_threads() const { HK_DISPATCH(cpu_->n_threads(), 1); }
uint64_t Session::kv_bytes() const { HK_DISPATCH(cpu_->kv_bytes(), gpu_->kv_bytes()); }
const std::vector<int32_t>& Session::history() const { HK_DISPATCH(cpu_->history(), gpu_->history()); }
const KVConfig& Session::kv_config() const { HK_DISPATCH(cpu_->kv_config(), gpu_->kv_config()); }
bool Session::compressing() const { HK_DISPATCH(cpu_->compressing(), gpu_->compressing()); }
const BudgetPlan* Session::plan() const { HK_DISPATCH(cpu_->plan(), gpu_->plan()); }
uint64_t Session::full_kv_bytes() const { HK_DISPATCH(cpu_->full_kv_bytes(), gpu_->full_kv_bytes()); }
uint64_t Session::prefill_peak_kv_bytes() const {
  HK_DISPATCH(cpu_->prefill_peak_kv_bytes(), gpu_->prefill_peak_kv_bytes());
}
uint64_t Session::entry_bytes() const {
  const int hd = model().hparams().head_dim;
  HK_DISPATCH(KVArena::entry_bytes(hd, cpu_->type_k(), cpu_->type_v()), CudaContext::entry_bytes(hd, gpu_->type_k(), gpu_->type_v()));
}
uint64_t Session::peak_device_bytes() const { HK_DISPATCH(0ull, gpu_->peak_device_bytes()); }
bool Session::has_arena() const { HK_DISPATCH(cpu_->arena() != nullptr, gpu_->has_arena()); }
int64_t Session::capacity(int l, int g) const { HK_DISPATCH(cpu_->arena()->capacity(l, g), gpu_->capacity(l, g)); }
int64_t Session::used(int l, int g) const { HK_DISPATCH(cpu_->arena()->used(l, g), gpu_->used(l, g)); }
uint64_t Session::bytes_used() const { HK_DISPATCH(cpu_->arena()->bytes_used(), gpu_->bytes_used()); }
std::vector<std::vector<float>> Session::selection_scores() const {
#ifdef HEADKV_WITH_CUDA
  if (gpu_) return gpu_->selection_scores();
#endif
  return {};
}

void Session::set_attention_probe(bool on) {
  if (!cpu_) fail(ErrorKind::Unsupported, "the attention probe runs on the CPU backend only (device 'cpu')");
  cpu_->set_attention_probe(on);
}

void Session::set_embeddings(bool on) {
  if (!cpu_) fail(ErrorKind::Unsupported, "embeddings are computed on the CPU backend only (device 'cpu')");
  cpu_->set_embeddings(on);
}

std::vector<int32_t> Session::positions(int l, int g) const {
  if (cpu_) {
    const KVArena* a = cpu_->arena();
    return std::vector<int32_t>(a->pos(l, g), a->pos(l, g) + a->used(l, g));
  }
#ifdef HEADKV_WITH_CUDA
  return gpu_->positions(l, g);
#else
  return {};
#endif
}

}  // namespace headkv
