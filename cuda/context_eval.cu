// CudaContext::Impl::eval, after SequenceContext::eval's checks: the compressed prefill (a
// compressing context's prompt), a decode step (one token: the decode graph) or full-cache chunks
// of `ub` tokens through all layers.
#include <algorithm>
#include <cstdint>
#include <string>

#include "common/alloc.h"
#include "context_impl.cuh"

namespace headkv {

void CudaContext::Impl::eval(const int32_t* tokens, int64_t n, bool all_logits) {
  // Host logits first, with the CPU backend's checked allocation: a request larger than the memory
  // available fails with OutOfMemory here, before any work, instead of an over-committed vector
  // that gets the process killed when its pages are written.
  const int64_t rows = all_logits ? n : 1;
  if (logits_h.size() < (uint64_t)rows * hp.n_vocab)
    checked_assign(logits_h, checked_mul((uint64_t)rows, (uint64_t)hp.n_vocab, "logits"),
                   all_logits ? "logits for every token" : "logits");
  ensure_scratch();
  if (method != BudgetMethod::Full && !arena) {
    try {
      prefill_compressed(tokens, n, all_logits);
    } catch (...) {
      cudaStreamSynchronize(st);
      cudaGetLastError();
      arena = false;
      ak.reset();
      av.reset();
      apos.reset();
      plan.reset();
      drop_graph();
      throw;
    }
    history.insert(history.end(), tokens, tokens + n);
    n_past = n_prompt = (int32_t)n;
    n_logit_rows = rows;
    pinned_logits = false;
    prepare_decode();
    return;
  }
  if (n == 1) {
    decode_graph_step(tokens[0]);
    if (!logits_in_graph) fetch_logits(1, logits_h.data());
    check(cudaStreamSynchronize(st), "decode");
  } else {
    for (int64_t off = 0; off < n; off += ub) {  // n_past moves only once every chunk has run
      const int64_t T = std::min<int64_t>(ub, n - off);
      check(cudaMemcpyAsync(tok.get(), tokens + off, T * sizeof(int32_t), cudaMemcpyHostToDevice, st), "tokens");
      forward_arena(T, n_past + (int32_t)off, nullptr);
      if (all_logits) {
        for (int64_t r0 = 0; r0 < T; r0 += ub) {
          head(x.get() + r0 * hp.n_embd, std::min<int64_t>(ub, T - r0));
          fetch_logits(std::min<int64_t>(ub, T - r0), logits_h.data() + (off + r0) * hp.n_vocab);
        }
      } else if (off + T == n) {
        head(x.get() + (T - 1) * hp.n_embd, 1);
        fetch_logits(1, logits_h.data());
      }
      check(cudaStreamSynchronize(st), "prefill");
    }
  }
  for (auto& u : h_used) u += (int32_t)n;
  history.insert(history.end(), tokens, tokens + n);
  n_past += (int32_t)n;
  n_logit_rows = rows;
  pinned_logits = n == 1 && logits_in_graph;  // (set with the rows: a failed eval leaves the last ones)
  if (n > 1) prepare_decode();  // a single token has just captured or replayed the graph
}

}  // namespace headkv
