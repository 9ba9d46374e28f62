// Batched decode step over several contexts that share one Model and one thread pool: each weight
// matrix is read once for the new rows (one per sequence, or a prompt chunk's rows for a sequence
// given several tokens); attention runs per sequence over its own KV (full cache or arena) at its
// own positions.
#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "common/error.h"
#include "model/context.h"

namespace headkv {

void Context::decode_batch(const std::vector<Context*>& seqs, const int32_t* tokens, const int64_t* ids,
                           const int64_t* counts) {
  const int64_t n = (int64_t)seqs.size();
  if (n == 0) fail(ErrorKind::InvalidArgument, "decode_batch needs at least one sequence");
  Context& r = *seqs[0];  // runs the shared per-row work (same model, same pool for every sequence)
  std::vector<int64_t> off(n + 1, 0);  // sequence i's rows: [off[i], off[i + 1])
  for (int64_t i = 0; i < n; ++i) off[i + 1] = off[i] + (counts ? counts[i] : 1);
  const int64_t R = off[n];
  std::set<const Context*> seen;
  for (int64_t i = 0; i < n; ++i) {
    const Context* c = seqs[i];
    const int64_t T = off[i + 1] - off[i];
    const std::string who = (ids ? "sequence id " + std::to_string(ids[i]) : "sequence " + std::to_string(i)) + ": ";
    if (!c) fail(ErrorKind::InvalidArgument, who + "no context");
    if (!seen.insert(c).second) fail(ErrorKind::InvalidArgument, who + "appears twice in one step");
    if (&c->model_ != &r.model_) fail(ErrorKind::InvalidArgument, who + "is over another model");
    if (&c->pool_ != &r.pool_) fail(ErrorKind::InvalidArgument, who + "does not share the step's thread pool");
    if (c->compressing() && !c->arena_)
      fail(ErrorKind::InvalidArgument, who + "its compressed prompt has not been evaluated yet");
    if (c->probe_on_ || c->embd_on_)
      fail(ErrorKind::InvalidArgument, who + "the attention probe and embeddings need a single-sequence eval");
    if (T < 1 || T > c->n_batch_)
      fail(ErrorKind::InvalidArgument, who + std::to_string(T) + " tokens in one step (1 to n_batch=" +
                                           std::to_string(c->n_batch_) + ")");
    try {
      c->check_eval(&tokens[off[i]], T);
    } catch (const Error& e) {
      fail(e.kind(), who + e.what());
    }
  }
  const LlamaHParams& hp = r.hp_;
  const int64_t d = hp.n_embd, hd = hp.head_dim, nh = hp.n_head, nkv = hp.n_head_kv, half = hp.rope_dim / 2;
  const int64_t wide = std::max<int64_t>(d, nh * hd);
  std::vector<float> x(R * d), tmp(R * wide), q(R * nh * hd), k(R * nkv * hd), v(R * nkv * hd), att(R * nh * hd);
  std::vector<float> logits((size_t)n * hp.n_vocab);
  r.embed(tokens, R, x.data());
  // RoPE rows at each sequence's own positions, for the global and the sliding-window layers.
  const int il_global = hp.first_layer(false), il_local = hp.first_layer(true);
  std::vector<float> cs(R * half), sn(R * half), cs_swa(R * half), sn_swa(R * half), c1, s1;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t T = off[i + 1] - off[i];
    if (il_global >= 0) {
      seqs[i]->rope_tables(il_global, seqs[i]->n_past_, T, c1, s1);
      std::copy_n(c1.data(), T * half, &cs[off[i] * half]);
      std::copy_n(s1.data(), T * half, &sn[off[i] * half]);
    }
    if (il_local >= 0) {
      seqs[i]->rope_tables(il_local, seqs[i]->n_past_, T, c1, s1);
      std::copy_n(c1.data(), T * half, &cs_swa[off[i] * half]);
      std::copy_n(s1.data(), T * half, &sn_swa[off[i] * half]);
    }
  }
  // Allocated before any layer appends to a cache, so that nothing after the layers can fail and
  // leave a sequence's KV ahead of its position.
  std::vector<float> last(n * d);  // each sequence's last row
  for (int64_t i = 0; i < n; ++i) {
    seqs[i]->history_.reserve(seqs[i]->history_.size() + (off[i + 1] - off[i]));
    if (seqs[i]->logits_.size() < (size_t)hp.n_vocab) seqs[i]->logits_.resize(hp.n_vocab);
  }
  for (int il = 0; il < hp.n_layer; ++il) {
    const bool local = hp.is_swa(il);
    r.qkv(il, x.data(), R, tmp.data(), q.data(), k.data(), v.data(), (local ? cs_swa : cs).data(),
          (local ? sn_swa : sn).data());
    for (int64_t i = 0; i < n; ++i)
      seqs[i]->attend(il, off[i + 1] - off[i], &q[off[i] * nh * hd], &k[off[i] * nkv * hd], &v[off[i] * nkv * hd],
                      &att[off[i] * nh * hd]);
    r.out_and_mlp(il, att.data(), R, x.data(), tmp.data());
  }
  for (int64_t i = 0; i < n; ++i) std::copy_n(&x[(off[i + 1] - 1) * d], d, &last[i * d]);
  r.final_logits(last.data(), n, logits.data());
  for (int64_t i = 0; i < n; ++i) {  // each sequence as after an eval of its tokens
    Context& c = *seqs[i];
    if (c.logits_.size() < (size_t)hp.n_vocab) c.logits_.resize(hp.n_vocab);
    std::copy_n(&logits[(size_t)i * hp.n_vocab], hp.n_vocab, c.logits_.data());
    c.n_logit_rows_ = 1;
    c.n_embd_rows_ = 0;
    c.history_.insert(c.history_.end(), &tokens[off[i]], &tokens[off[i + 1]]);
    c.n_past_ += (int32_t)(off[i + 1] - off[i]);
  }
}

}  // namespace headkv
