/* Loads a model, tokenizes a prompt, evaluates it and greedy-generates N tokens through the
 * public C API; prints one token id per line on stdout and the text on stderr. The prompt's state is
 * saved after its eval and restored after generating; generating again from it must repeat the
 * tokens (exit 3 otherwise). On the CPU a sequence group then decodes the prompt again beside a second
 * sequence (its first half), one batched step for both: the first must repeat the tokens (exit 4
 * otherwise), and a step naming an unknown sequence must fail without changing either (exit 5).
 * usage: app MODEL PROMPT N [DEVICE]   (DEVICE: cpu (default), cuda, cuda-fp32) */
#include <headkv/headkv.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char* what) {
  fprintf(stderr, "app: %s: %s\n", what, hk_last_error());
  return 1;
}

int main(int argc, char** argv) {
  if (argc != 4 && argc != 5) {
    fprintf(stderr, "usage: app MODEL PROMPT N [DEVICE]\n");
    return 2;
  }
  const int steps = atoi(argv[3]);
  hk_model* model = NULL;
  if (hk_model_load(argv[1], &model) != HK_OK) return fail("load");

  size_t n = 0;
  int32_t ids[4096];
  if (hk_tokenize(model, argv[2], strlen(argv[2]), -1, 0, ids, 4096, &n) != HK_OK) return fail("tokenize");

  hk_context_params cp = hk_context_default_params();
  cp.n_ctx = 512;
  cp.n_threads = 2;
  if (argc == 5) cp.device = argv[4];
  hk_context* ctx = NULL;
  if (hk_context_new(model, &cp, &ctx) != HK_OK) return fail("context");
  if (hk_eval(ctx, ids, n) != HK_OK) return fail("eval");

  size_t state_size = 0;
  if (hk_context_state_save(ctx, NULL, 0, &state_size) != HK_OK) return fail("state size");
  uint8_t* state = malloc(state_size);
  if (!state || hk_context_state_save(ctx, state, state_size, &state_size) != HK_OK) return fail("state save");

  /* greedy: the argmax of the logits, evaluated back in */
  const int32_t n_vocab = hk_model_n_vocab(model);
  int32_t* out = malloc(sizeof(int32_t) * (steps > 0 ? steps : 1));
  int n_out = 0;
  for (int i = 0; i < steps; ++i) {
    const float* logits = hk_logits(ctx);
    int32_t best = 0;
    for (int32_t t = 1; t < n_vocab; ++t)
      if (logits[t] > logits[best]) best = t;
    out[n_out++] = best;
    char piece[256];
    const size_t len = hk_token_to_piece(model, best, piece, sizeof piece);
    printf("%d\n", best);
    fprintf(stderr, "%.*s", (int)(len < sizeof piece ? len : sizeof piece), piece);
    if (hk_model_is_eog(model, best)) break;
    if (hk_eval(ctx, &best, 1) != HK_OK) return fail("eval");
  }
  fprintf(stderr, "\n");

  if (hk_context_state_load(ctx, state, state_size) != HK_OK) return fail("state load");
  for (int i = 0; i < n_out; ++i) {
    const float* logits = hk_logits(ctx);
    int32_t best = 0;
    for (int32_t t = 1; t < n_vocab; ++t)
      if (logits[t] > logits[best]) best = t;
    if (best != out[i]) {
      fprintf(stderr, "app: token %d after the restored state is %d, was %d\n", i, best, out[i]);
      return 3;
    }
    if (i + 1 < n_out && hk_eval(ctx, &best, 1) != HK_OK) return fail("eval");
  }
  if (argc == 4 || strcmp(argv[4], "cpu") == 0) {
    hk_group* g = NULL;
    if (hk_group_new(model, &cp, 0, &g) != HK_OK) return fail("group");
    if (hk_group_add(g, 7, ids, n) != HK_OK || hk_group_add(g, 9, ids, (n + 1) / 2) != HK_OK) return fail("group add");
    for (int i = 0; i < n_out; ++i) {
      int32_t next[2];
      const int64_t seq[2] = {7, 9};
      for (int s = 0; s < 2; ++s) {
        const float* logits = hk_group_logits(g, seq[s]);
        next[s] = 0;
        for (int32_t t = 1; t < n_vocab; ++t)
          if (logits[t] > logits[next[s]]) next[s] = t;
      }
      if (next[0] != out[i]) {
        fprintf(stderr, "app: batched token %d is %d, alone it was %d\n", i, next[0], out[i]);
        return 4;
      }
      const int64_t bad[2] = {7, 8};
      const int32_t past = hk_group_n_past(g, 7);
      if (hk_group_step(g, bad, next, 2) != HK_ERR_INVALID_ARGUMENT || hk_group_n_past(g, 7) != past) {
        fprintf(stderr, "app: a step with an unknown sequence did not fail cleanly\n");
        return 5;
      }
      if (i + 1 < n_out && hk_group_step(g, seq, next, 2) != HK_OK) return fail("group step");
    }
    /* Sequence 11 joins with the prompt's first half; the rest rides in one step beside sequence 7's
       next token (hk_group_step_n), after which its first greedy token is the prompt's alone. */
    if (n >= 2) {
      const size_t h = n / 2;
      if (hk_group_add(g, 11, ids, h) != HK_OK) return fail("group add");
      const float* l7 = hk_group_logits(g, 7);
      int32_t* rows = malloc((n - h + 1) * sizeof(int32_t));
      rows[0] = 0;
      for (int32_t t = 1; t < n_vocab; ++t)
        if (l7[t] > l7[rows[0]]) rows[0] = t;
      memcpy(rows + 1, ids + h, (n - h) * sizeof(int32_t));
      const int64_t seq[2] = {7, 11}, bad_counts[2] = {1, 0}, counts[2] = {1, (int64_t)(n - h)};
      if (hk_group_step_n(g, seq, rows, bad_counts, 2) != HK_ERR_INVALID_ARGUMENT || hk_group_n_past(g, 11) != (int32_t)h) {
        fprintf(stderr, "app: a step with a zero count did not fail cleanly\n");
        return 6;
      }
      if (hk_group_step_n(g, seq, rows, counts, 2) != HK_OK) return fail("group step_n");
      free(rows);
      const float* l11 = hk_group_logits(g, 11);
      int32_t first = 0;
      for (int32_t t = 1; t < n_vocab; ++t)
        if (l11[t] > l11[first]) first = t;
      if (hk_group_n_past(g, 11) != (int32_t)n || first != out[0]) {
        fprintf(stderr, "app: the chunked prompt's first token is %d, alone it was %d\n", first, out[0]);
        return 7;
      }
    }
    hk_group_free(g);
  }
  free(out);
  free(state);
  hk_context_free(ctx);
  hk_model_free(model);
  return 0;
}
