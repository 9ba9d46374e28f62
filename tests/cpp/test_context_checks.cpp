// model/context_checks.h: the checks both backends make, at the edges of what each accepts.
#include <cstdint>
#include <string>
#include <vector>

#include "check.h"
#include "common/error.h"
#include "model/context_checks.h"

using namespace headkv;

template <class F>
static bool passes(F&& f) {
  try {
    f();
    return true;
  } catch (const Error&) {
    return false;
  }
}
static bool has(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

int main() {
  const auto IA = ErrorKind::InvalidArgument, CF = ErrorKind::ContextFull;
  {
    ContextParams p;
    CHECK(passes([&] { check_context_params(p); }));
    for (int i = 0; i < 3; ++i) {
      ContextParams b;
      (i == 0 ? b.n_ctx : i == 1 ? b.n_batch : b.n_threads) = -1;
      CHECK(has(error_of([&] { check_context_params(b); }, IA), "n_ctx, n_batch and n_threads must be >= 0"));
    }
  }
  {
    KVConfig kv;
    kv.window = 1;
    kv.kernel = 1;
    kv.budget = 2;
    kv.max_new_tokens = 0;
    kv.sink = 0;
    kv.span = 0;
    kv.adakv_floor = 1;
    kv.probe = {0, 9};
    CHECK(passes([&] { check_kv_config(kv, 10); }));  // every edge accepted
    auto fails = [&](auto set, const char* msg) {
      KVConfig b = kv;
      set(b);
      CHECK(has(error_of([&] { check_kv_config(b, 10); }, IA), msg));
    };
    fails([](KVConfig& b) { b.window = 0; }, "window must be >= 1");
    fails([](KVConfig& b) { b.kernel = 2; }, "pooling kernel must be an odd number >= 1");
    fails([](KVConfig& b) { b.kernel = 0; }, "pooling kernel must be an odd number >= 1");
    fails([](KVConfig& b) { b.max_new_tokens = -1; }, "max_new_tokens must be >= 0");
    fails([](KVConfig& b) { b.sink = -1; }, "sink must be >= 0");
    fails([](KVConfig& b) { b.adakv_floor = 1.01; }, "adakv floor must be in [0, 1]");
    fails([](KVConfig& b) { b.adakv_floor = -0.01; }, "adakv floor must be in [0, 1]");
    fails([](KVConfig& b) { b.span = -1; }, "span must be >= 0");
    fails([](KVConfig& b) { b.budget = 1; }, "KV budget 1 must be larger than the window 1");
    fails([](KVConfig& b) { b.probe = {10}; }, "probe token id 10 is outside the vocabulary");
    fails([](KVConfig& b) { b.probe = {-1}; }, "probe token id -1 is outside the vocabulary");
  }
  {
    const std::vector<int32_t> ids = {0, 9, 3};
    CHECK(passes([&] { check_eval_tokens(ids.data(), 3, 7, 10, 10); }));  // fills n_ctx exactly
    CHECK(passes([&] { check_eval_tokens(ids.data(), 3, 100, -1, 10); }));  // no limit (compressing)
    CHECK(has(error_of([&] { check_eval_tokens(ids.data(), 3, 8, 10, 10); }, CF),
              "context is full: 8 tokens cached + 3 new > n_ctx 10"));
    CHECK(has(error_of([&] { check_eval_tokens(ids.data(), 1, 0, 0, 10); }, CF), "n_ctx 0"));
    CHECK(has(error_of([&] { check_eval_tokens(ids.data(), 0, 0, 10, 10); }, IA), "eval needs at least one token"));
    CHECK(has(error_of([&] { check_eval_tokens(ids.data(), 3, INT32_MAX / 2 - 2, -1, 10); }, CF),
              "positions past 2^30 are not supported"));
    CHECK(has(error_of([&] { check_eval_tokens(ids.data(), 3, 0, 10, 9); }, IA),
              "token id 9 is outside the vocabulary [0, 9)"));
    CHECK(has(error_of([] { fail_decode_room(5, 4); }, CF),
              "compressed KV cache is full: 5 more tokens do not fit the 4 decode slots reserved per head"));
  }
  {
    CHECK(passes([] { check_truncate(0, 5); }) && passes([] { check_truncate(5, 5); }));
    CHECK(has(error_of([] { check_truncate(6, 5); }, IA), "truncate: 6 tokens to keep, the context holds 5"));
    CHECK(has(error_of([] { check_truncate(-1, 5); }, IA), "truncate: -1 tokens to keep"));
    CHECK(passes([] { check_truncate_prompt(4, 4); }));
    CHECK(has(error_of([] { check_truncate_prompt(3, 4); }, IA), "the compressed prompt's 4 tokens cannot be partly forgotten"));
    CHECK(passes([] { check_max_new_tokens(0, false); }));
    CHECK(has(error_of([] { check_max_new_tokens(-1, false); }, IA), "max_new_tokens must be >= 0"));
    CHECK(has(error_of([] { check_max_new_tokens(8, true); }, IA), "can only change before the compressed prompt"));
  }
  return failures ? 1 : 0;
}
