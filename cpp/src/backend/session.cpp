#include "backend/session.h"

#include <algorithm>
#include <climits>
#include <string>

#include "common/error.h"
#include "select/kv_arena.h"

#ifdef HEADKV_WITH_CUDA
#include "backend/cuda_context.h"
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
  const int hd = model.hparams().head_dim;
  if (device == "cpu") {
    const auto [tk, tv] = Context::kv_types(params, hd);  // (typed errors before anything is allocated)
    auto c = std::make_unique<Context>(model, resolve_budget_bytes(model, params, KVArena::entry_bytes(hd, tk, tv)));
    cpu_ = c.get();
    seq_ = std::move(c);
    return;
  }
  if (device != "cuda" && device != "cuda-fp32")
    fail(ErrorKind::InvalidArgument, "unknown device '" + device + "' (cpu, cuda, cuda-fp32)");
#ifdef HEADKV_WITH_CUDA
  const auto [tk, tv] = CudaContext::kv_types(params, hd);  // (typed errors before anything is allocated)
  auto c = std::make_unique<CudaContext>(model, resolve_budget_bytes(model, params, KVArena::entry_bytes(hd, tk, tv)),
                                         device == "cuda" ? CudaPrecision::Fast : CudaPrecision::Fp32);
  gpu_ = c.get();
  seq_ = std::move(c);
#else
  fail(ErrorKind::Unsupported, "device '" + device + "' is not available: this build has no CUDA backend");
#endif
}

Session::~Session() = default;

int32_t Session::reuse_prefix(const int32_t* tokens, int64_t n) {
  const std::vector<int32_t>& h = history();
  int64_t keep = 0;
  while (keep < (int64_t)h.size() && keep + 1 < n && h[(size_t)keep] == tokens[keep]) ++keep;
  if (compressing() && keep < n_prompt()) keep = 0;  // the compressed prompt is not a prefix of this one
  if (keep && !seq_->can_truncate((int32_t)keep)) keep = 0;  // a ring no longer holds that window
  if (keep) truncate((int32_t)keep);
  else reset();
  return (int32_t)keep;
}
std::vector<uint8_t> Session::save_state() const { return serialize_state(seq_->save_state()); }
void Session::load_state(const uint8_t* data, size_t n) { seq_->load_state(deserialize_state(data, n)); }

void Session::set_attention_probe(bool on) {
  if (!cpu_) fail(ErrorKind::Unsupported, "the attention probe runs on the CPU backend only (device 'cpu')");
  cpu_->set_attention_probe(on);
}

void Session::set_embeddings(bool on) {
  if (!cpu_) fail(ErrorKind::Unsupported, "embeddings are computed on the CPU backend only (device 'cpu')");
  cpu_->set_embeddings(on);
}

}  // namespace headkv
