// Batched decode step over several contexts that share one Model and one thread pool: each weight
// matrix is read once for the n new rows (one per sequence); attention runs per sequence over its
// own KV (full cache or arena) at its own position.
#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "common/error.h"
#include "model/context.h"

namespace headkv {

void Context::decode_batch(const std::vector<Context*>& seqs, const int32_t* tokens, const int64_t* ids) {
  const int64_t n = (int64_t)seqs.size();
  if (n == 0) fail(ErrorKind::InvalidArgument, "decode_batch needs at least one sequence");
  Context& r = *seqs[0];  // runs the shared per-row work (same model, same pool for every sequence)
  std::set<const Context*> seen;
  for (int64_t i = 0; i < n; ++i) {
    const Context* c = seqs[i];
    const std::string who = (ids ? "sequence id " + std::to_string(ids[i]) : "sequence " + std::to_string(i)) + ": ";
    if (!c) fail(ErrorKind::InvalidArgument, who + "no context");
    if (!seen.insert(c).second) fail(ErrorKind::InvalidArgument, who + "appears twice in one step");
    if (&c->model_ != &r.model_) fail(ErrorKind::InvalidArgument, who + "is over another model");
    if (&c->pool_ != &r.pool_) fail(ErrorKind::InvalidArgument, who + "does not share the step's thread pool");
    if (c->compressing() && !c->arena_)
      fail(ErrorKind::InvalidArgument, who + "its compressed prompt has not been evaluated yet");
    if (c->probe_on_ || c->embd_on_)
      fail(ErrorKind::InvalidArgument, who + "the attention probe and embeddings need a single-sequence eval");
    try {
      c->check_eval(&tokens[i], 1);
    } catch (const Error& e) {
      fail(e.kind(), who + e.what());
    }
  }
  const LlamaHParams& hp = r.hp_;
  const int64_t d = hp.n_embd, hd = hp.head_dim, nh = hp.n_head, nkv = hp.n_head_kv, half = hp.rope_dim / 2;
  const int64_t wide = std::max<int64_t>(d, nh * hd);
  std::vector<float> x(n * d), tmp(n * wide), q(n * nh * hd), k(n * nkv * hd), v(n * nkv * hd), att(n * nh * hd);
  std::vector<float> logits((size_t)n * hp.n_vocab);
  for (int64_t i = 0; i < n; ++i) r.embed(&tokens[i], 1, &x[i * d]);
  // RoPE rows at each sequence's own position, for the global and the sliding-window layers.
  const int il_global = hp.first_layer(false), il_local = hp.first_layer(true);
  std::vector<float> cs(n * half), sn(n * half), cs_swa(n * half), sn_swa(n * half), c1, s1;
  for (int64_t i = 0; i < n; ++i) {
    if (il_global >= 0) {
      r.rope_tables(il_global, seqs[i]->n_past_, 1, c1, s1);
      std::copy_n(c1.data(), half, &cs[i * half]);
      std::copy_n(s1.data(), half, &sn[i * half]);
    }
    if (il_local >= 0) {
      r.rope_tables(il_local, seqs[i]->n_past_, 1, c1, s1);
      std::copy_n(c1.data(), half, &cs_swa[i * half]);
      std::copy_n(s1.data(), half, &sn_swa[i * half]);
    }
  }
  for (int il = 0; il < hp.n_layer; ++il) {
    const bool local = hp.is_swa(il);
    r.qkv(il, x.data(), n, tmp.data(), q.data(), k.data(), v.data(), (local ? cs_swa : cs).data(),
          (local ? sn_swa : sn).data());
    for (int64_t i = 0; i < n; ++i)
      seqs[i]->attend(il, 1, &q[i * nh * hd], &k[i * nkv * hd], &v[i * nkv * hd], &att[i * nh * hd]);
    r.out_and_mlp(il, att.data(), n, x.data(), tmp.data());
  }
  r.final_logits(x.data(), n, logits.data());
  for (int64_t i = 0; i < n; ++i) {  // each sequence as after a one-token eval
    Context& c = *seqs[i];
    if (c.logits_.size() < (size_t)hp.n_vocab) c.logits_.resize(hp.n_vocab);
    std::copy_n(&logits[(size_t)i * hp.n_vocab], hp.n_vocab, c.logits_.data());
    c.n_logit_rows_ = 1;
    c.n_embd_rows_ = 0;
    c.history_.push_back(tokens[i]);
    ++c.n_past_;
  }
}

}  // namespace headkv
