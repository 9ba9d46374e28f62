#include "backend/group.h"

#include "common/error.h"
#include "model/context_checks.h"
#include "select/budget.h"

#ifdef HEADKV_WITH_CUDA
#include "backend/cuda_batch.h"
#else
namespace headkv {
class CudaBatch {};  // never constructed without the backend; complete so unique_ptr can delete it
}  // namespace headkv
#endif

namespace headkv {

SessionBatch::SessionBatch() = default;
SessionBatch::~SessionBatch() = default;

#ifdef HEADKV_WITH_CUDA
namespace {
// The GPU's batched step takes one token per sequence (no prompt chunks among its rows).
void check_one_token_each(const int64_t* counts, int64_t n) {
  if (counts)
    for (int64_t i = 0; i < n; ++i)
      if (counts[i] != 1) fail(ErrorKind::Unsupported, "a batched GPU step takes one token per sequence");
}
}  // namespace
#endif

void SessionBatch::step(const std::vector<Session*>& seqs, const int32_t* tokens, const int64_t* ids,
                        const int64_t* counts) {
  if (seqs.empty()) fail(ErrorKind::InvalidArgument, "a batched step needs at least one sequence");
  for (size_t i = 0; i < seqs.size(); ++i)
    if (!seqs[i] || seqs[i]->device() != seqs[0]->device())
      fail(ErrorKind::InvalidArgument, "a batched step runs sessions of one device (sequence " + std::to_string(i) + ")");
#ifdef HEADKV_WITH_CUDA
  if (seqs[0]->gpu()) {
    check_one_token_each(counts, (int64_t)seqs.size());
    std::vector<CudaContext*> cs;
    for (Session* s : seqs) cs.push_back(s->gpu());
    if (!gpu_)
      gpu_ = std::make_unique<CudaBatch>(seqs[0]->model(),
                                         seqs[0]->device() == "cuda" ? CudaPrecision::Fast : CudaPrecision::Fp32);
    gpu_->step(cs, tokens, ids);
    return;
  }
#endif
  std::vector<Context*> cs;
  for (Session* s : seqs) cs.push_back(s->cpu());
  Context::decode_batch(cs, tokens, ids, counts);
}

SequenceGroup::SequenceGroup(const Model& model, const ContextParams& params, uint64_t kv_limit, const std::string& device)
    : model_(model), params_(params), kv_limit_(kv_limit), device_(device) {
  if (device == "cpu") {
    params_.pool = cpu_thread_pool(params_);  // one pool for every sequence of the group
    return;
  }
  if (device != "cuda" && device != "cuda-fp32")
    fail(ErrorKind::InvalidArgument, "unknown device '" + device + "' (cpu, cuda, cuda-fp32)");
  check_context_params(params_);
#ifdef HEADKV_WITH_CUDA
  batch_ = std::make_unique<CudaBatch>(model, device == "cuda" ? CudaPrecision::Fast : CudaPrecision::Fp32);
#else
  fail(ErrorKind::Unsupported, "device '" + device + "' is not available: this build has no CUDA backend");
#endif
}

SequenceGroup::~SequenceGroup() = default;

Session& SequenceGroup::sequence(int64_t id) const {
  const auto it = seqs_.find(id);
  if (it == seqs_.end()) fail(ErrorKind::InvalidArgument, "no sequence with id " + std::to_string(id));
  return *it->second;
}

std::vector<int64_t> SequenceGroup::ids() const {
  std::vector<int64_t> v;
  for (const auto& [id, s] : seqs_) v.push_back(id);
  return v;
}

uint64_t SequenceGroup::kv_bytes() const {
  uint64_t b = 0;
  for (const auto& [id, s] : seqs_) b += s->kv_bytes();
  return b;
}

uint64_t SequenceGroup::scratch_bytes() const {
#ifdef HEADKV_WITH_CUDA
  if (batch_) return batch_->scratch_bytes(batch_->rows_allocated());
#endif
  return 0;
}

const float* SequenceGroup::logits(int64_t id) const { return sequence(id).logits(); }

void SequenceGroup::add(int64_t id, const int32_t* prompt, int64_t n) {
  if (seqs_.count(id)) fail(ErrorKind::InvalidArgument, "sequence id " + std::to_string(id) + " is already in the group");
  if (n <= 0 || !prompt) fail(ErrorKind::InvalidArgument, "a sequence needs a non-empty prompt");
  const uint64_t used = kv_bytes();
  const std::string who = "sequence " + std::to_string(id);
  const std::string held = "; the group holds " + std::to_string(used) + " bytes of its KV limit " + std::to_string(kv_limit_);
  if (kv_limit_ && used >= kv_limit_) fail(ErrorKind::OutOfMemory, who + " refused: no KV room left" + held);
  // A full cache is allocated with its context, sized by n_ctx: its bytes are checked before that (a
  // compressed one against the prompt's plan, before its arena is made).
  if (kv_limit_ && parse_budget_method(params_.kv.method) == BudgetMethod::Full) {
#ifdef HEADKV_WITH_CUDA
    const uint64_t full = batch_ ? CudaContext::full_cache_bytes(model_, params_) : Context::full_cache_bytes(model_, params_);
#else
    const uint64_t full = Context::full_cache_bytes(model_, params_);
#endif
    if (full > kv_limit_ - used)
      fail(ErrorKind::OutOfMemory, who + " refused: its full cache needs " + std::to_string(full) + " bytes" + held);
  }
  std::unique_ptr<Session> s;
  if (!batch_) {
    s = std::make_unique<Session>(model_, params_, "cpu");
    if (kv_limit_) s->cpu()->set_kv_limit(kv_limit_ - used);
  }
#ifdef HEADKV_WITH_CUDA
  if (batch_) {
    try {
      batch_->reserve((int)std::min<int64_t>(size() + 1, CudaBatch::kMaxRows));  // the step it joins
      s = std::make_unique<Session>(model_, params_, device_);
    } catch (const Error& e) {
      fail(e.kind(), who + " refused: " + e.what());
    }
    if (kv_limit_) s->gpu()->set_kv_limit(kv_limit_ - used);
  }
#endif
  try {
    s->eval(prompt, n);
  } catch (const Error& e) {
    fail(e.kind(), who + ": " + e.what());
  }
  if (Context* c = s->cpu()) c->set_kv_limit(0);
#ifdef HEADKV_WITH_CUDA
  if (CudaContext* c = s->gpu()) {
    c->set_kv_limit(0);
    c->release_scratch();  // it decodes through the group's batch
  }
#endif
  seqs_.emplace(id, std::move(s));
}

void SequenceGroup::remove(int64_t id) {
  sequence(id);  // InvalidArgument when unknown
  seqs_.erase(id);
}

void SequenceGroup::step(const int64_t* ids, const int32_t* tokens, int64_t n, const int64_t* counts) {
  if (n <= 0) fail(ErrorKind::InvalidArgument, "a step needs at least one sequence");
#ifdef HEADKV_WITH_CUDA
  if (batch_) {
    check_one_token_each(counts, n);
    std::vector<CudaContext*> cs;
    for (int64_t i = 0; i < n; ++i) cs.push_back(sequence(ids[i]).gpu());
    batch_->step(cs, tokens, ids);  // refuses a sequence given twice, naming its id
    return;
  }
#endif
  std::vector<Context*> cs;
  for (int64_t i = 0; i < n; ++i) cs.push_back(sequence(ids[i]).cpu());
  Context::decode_batch(cs, tokens, ids, counts);  // refuses a sequence given twice, naming its id
}

}  // namespace headkv
