#include "backend/group.h"

#include "common/error.h"
#include "model/context_checks.h"

namespace headkv {

SequenceGroup::SequenceGroup(const Model& model, const ContextParams& params, uint64_t kv_limit, const std::string& device)
    : model_(model), params_(params), kv_limit_(kv_limit) {
  if (device != "cpu")
    fail(ErrorKind::Unsupported, "sequence groups run on the CPU backend only (device '" + device + "')");
  params_.pool = cpu_thread_pool(params_);  // one pool for every sequence of the group
}

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

const float* SequenceGroup::logits(int64_t id) const { return sequence(id).logits(); }

void SequenceGroup::add(int64_t id, const int32_t* prompt, int64_t n) {
  if (seqs_.count(id)) fail(ErrorKind::InvalidArgument, "sequence id " + std::to_string(id) + " is already in the group");
  if (n <= 0 || !prompt) fail(ErrorKind::InvalidArgument, "a sequence needs a non-empty prompt");
  const uint64_t used = kv_bytes();
  auto s = std::make_unique<Session>(model_, params_, "cpu");
  Context& c = *s->cpu();
  if (kv_limit_) {
    const std::string held = "; the group holds " + std::to_string(used) + " bytes of its KV limit " + std::to_string(kv_limit_);
    if (used >= kv_limit_) fail(ErrorKind::OutOfMemory, "sequence " + std::to_string(id) + " refused: no KV room left" + held);
    if (!c.compressing() && c.kv_bytes() > kv_limit_ - used)  // the full cache is sized by n_ctx
      fail(ErrorKind::OutOfMemory, "sequence " + std::to_string(id) + " refused: its full cache needs " +
                                       std::to_string(c.kv_bytes()) + " bytes" + held);
    c.set_kv_limit(kv_limit_ - used);  // compressed: checked against the prompt's plan before the arena is made
  }
  try {
    s->eval(prompt, n);
  } catch (const Error& e) {
    fail(e.kind(), "sequence " + std::to_string(id) + ": " + e.what());
  }
  c.set_kv_limit(0);
  seqs_.emplace(id, std::move(s));
}

void SequenceGroup::remove(int64_t id) {
  sequence(id);  // InvalidArgument when unknown
  seqs_.erase(id);
}

void SequenceGroup::step(const int64_t* ids, const int32_t* tokens, int64_t n) {
  if (n <= 0) fail(ErrorKind::InvalidArgument, "a step needs at least one sequence");
  std::vector<Context*> cs;
  for (int64_t i = 0; i < n; ++i) cs.push_back(sequence(ids[i]).cpu());
  Context::decode_batch(cs, tokens, ids);  // refuses a sequence given twice, naming its id
}

}  // namespace headkv
