// Greedy-generates N tokens from a prompt through the public C API and prints their ids.
// usage: example MODEL PROMPT N
#include <headkv/headkv.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

static int fail(const char* what) {
  std::fprintf(stderr, "example: %s: %s\n", what, hk_last_error());
  return 1;
}

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: example MODEL PROMPT N\n");
    return 2;
  }
  hk_model* model = nullptr;
  if (hk_model_load(argv[1], &model) != HK_OK) return fail("load");
  std::vector<int32_t> ids(4096);
  size_t n = 0;
  if (hk_tokenize(model, argv[2], std::strlen(argv[2]), -1, 0, ids.data(), ids.size(), &n) != HK_OK) return fail("tokenize");
  ids.resize(n);
  hk_context_params cp = hk_context_default_params();
  cp.n_ctx = 512;
  cp.n_threads = 2;
  hk_context* ctx = nullptr;
  if (hk_context_new(model, &cp, &ctx) != HK_OK) return fail("context");
  hk_sampler_params sp = hk_sampler_default_params();
  sp.temperature = 0.0f;
  hk_sampler* s = nullptr;
  if (hk_sampler_new(&sp, &s) != HK_OK) return fail("sampler");
  if (hk_eval(ctx, ids.data(), ids.size()) != HK_OK) return fail("eval");
  const int steps = std::atoi(argv[3]);
  for (int i = 0; i < steps; ++i) {
    int32_t tok;
    if (hk_sample(s, ctx, &tok) != HK_OK) return fail("sample");
    std::printf("%d\n", tok);
    if (hk_eval(ctx, &tok, 1) != HK_OK) return fail("eval");
  }
  hk_sampler_free(s);
  hk_context_free(ctx);
  hk_model_free(model);
  return 0;
}
