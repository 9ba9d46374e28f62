#include "model/context_checks.h"

#include <string>

#include "common/error.h"
#include "common/threadpool.h"

namespace headkv {

namespace {
[[noreturn]] void bad(const std::string& m) { fail(ErrorKind::InvalidArgument, m); }
}  // namespace

void check_context_params(const ContextParams& p) {
  if (p.n_ctx < 0 || p.n_batch < 0 || p.n_threads < 0) bad("n_ctx, n_batch and n_threads must be >= 0");
}

std::shared_ptr<ThreadPool> cpu_thread_pool(const ContextParams& p) {
  if (p.pool) return p.pool;
  check_context_params(p);
  if (p.n_threads > 1024) bad("n_threads " + std::to_string(p.n_threads) + " is too large");
  return std::make_shared<ThreadPool>(p.n_threads > 0 ? p.n_threads : default_thread_count());
}

void check_kv_config(const KVConfig& kv, int32_t n_vocab) {
  if (kv.window < 1) bad("window must be >= 1");
  if (kv.kernel < 1 || kv.kernel % 2 == 0) bad("pooling kernel must be an odd number >= 1");
  if (kv.max_new_tokens < 0) bad("max_new_tokens must be >= 0");
  if (kv.sink < 0) bad("sink must be >= 0");
  if (!(kv.adakv_floor >= 0 && kv.adakv_floor <= 1)) bad("adakv floor must be in [0, 1]");
  if (kv.span < 0) bad("span must be >= 0");
  if (kv.reach < 0) bad("reach must be >= 0");
  if (!(kv.cap_ceiling == 0 || (kv.cap_ceiling >= 1 && kv.cap_ceiling <= 1e6)))
    bad("cap_ceiling must be 0 (none) or in [1, 1e6]");
  if (kv.cap_ceiling > 0 && kv.adaptive)
    bad("cap_ceiling does not apply with adaptive (the per-prompt split is bounded per layer, not per head)");
  if (!(kv.value_fit >= 0 && kv.value_fit <= 1e6)) bad("value_fit (ridge) must be in [0, 1e6]");
  if (kv.budget <= kv.window)
    bad("KV budget " + std::to_string(kv.budget) + " must be larger than the window " + std::to_string(kv.window));
  for (int32_t t : kv.probe)
    if (t < 0 || t >= n_vocab) bad("probe token id " + std::to_string(t) + " is outside the vocabulary");
}

void check_eval_tokens(const int32_t* tokens, int64_t n, int32_t n_past, int32_t n_ctx, int32_t n_vocab) {
  if (n <= 0) bad("eval needs at least one token");
  if (n > (int64_t)INT32_MAX / 2 - n_past)
    fail(ErrorKind::ContextFull, "positions past 2^30 are not supported (" + std::to_string(n_past) + " + " + std::to_string(n) + ")");
  if (n_ctx >= 0 && n > (int64_t)n_ctx - n_past)
    fail(ErrorKind::ContextFull, "context is full: " + std::to_string(n_past) + " tokens cached + " + std::to_string(n) +
                                     " new > n_ctx " + std::to_string(n_ctx));
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= n_vocab)
      bad("token id " + std::to_string(tokens[i]) + " is outside the vocabulary [0, " + std::to_string(n_vocab) + ")");
}

void fail_decode_room(int64_t n, int32_t max_new_tokens) {
  fail(ErrorKind::ContextFull, "compressed KV cache is full: " + std::to_string(n) + " more tokens do not fit the " +
                                   std::to_string(max_new_tokens) + " decode slots reserved per head (raise max_new_tokens)");
}

void check_truncate(int32_t n_keep, int32_t n_past) {
  if (n_keep < 0 || n_keep > n_past)
    bad("truncate: " + std::to_string(n_keep) + " tokens to keep, the context holds " + std::to_string(n_past));
}

void check_truncate_prompt(int32_t n_keep, int32_t n_prompt) {
  if (n_keep < n_prompt)
    bad("truncate: the compressed prompt's " + std::to_string(n_prompt) +
        " tokens cannot be partly forgotten (keep at least them, or reset)");
}

void check_max_new_tokens(int32_t n, bool prompt_done) {
  if (n < 0) bad("max_new_tokens must be >= 0");
  if (prompt_done) bad("max_new_tokens can only change before the compressed prompt is evaluated");
}

}  // namespace headkv
