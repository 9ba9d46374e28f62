// Checks of a context's parameters and calls, made for both backends by SequenceContext
// (model/sequence_context.cpp) and by the sequence group, so their messages and error kinds stay
// identical.
// Each throws headkv::Error (InvalidArgument unless noted) and returns when the input is good.
#pragma once
#include <cstdint>
#include <memory>

#include "model/sequence_context.h"

namespace headkv {

// n_ctx, n_batch and n_threads are >= 0 (0: the default).
void check_context_params(const ContextParams& p);

// The CPU thread pool of a context: p.pool when given (sequences sharing one), else a new pool of
// p.n_threads threads (0: hardware concurrency), n_threads checked first (<= 1024).
std::shared_ptr<ThreadPool> cpu_thread_pool(const ContextParams& p);

// A compressing method's KV configuration: window >= 1, odd pooling kernel, max_new_tokens, sink and
// span >= 0, Ada-KV floor in [0, 1], budget larger than the window, probe token ids in [0, n_vocab).
void check_kv_config(const KVConfig& kv, int32_t n_vocab);

// eval's tokens: at least one, positions below 2^30 and, with a context limit (n_ctx >= 0: the full
// cache; -1 for a compressing context), room for them (ContextFull); every id in [0, n_vocab).
void check_eval_tokens(const int32_t* tokens, int64_t n, int32_t n_past, int32_t n_ctx, int32_t n_vocab);

// A compressed cache's decode room: n more tokens do not fit (ContextFull; always throws).
[[noreturn]] void fail_decode_room(int64_t n, int32_t max_new_tokens);

// truncate(n_keep): 0 <= n_keep <= n_past.
void check_truncate(int32_t n_keep, int32_t n_past);

// truncate(n_keep) of a compressed context after its prompt: the n_prompt tokens stay whole.
void check_truncate_prompt(int32_t n_keep, int32_t n_prompt);

// set_max_new_tokens(n): n >= 0, and only before a compressing context's prompt (prompt_done: after).
void check_max_new_tokens(int32_t n, bool prompt_done);

}  // namespace headkv
