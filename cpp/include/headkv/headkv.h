/* headkv public C API: opaque handles, status codes, no C++ types across the boundary.
 *
 *   hk_model*   weights + tokenizer, read-only after load, shareable between contexts
 *   hk_context* KV cache + scratch + logits for one sequence
 *
 * Every function that can fail returns hk_status; hk_last_error() gives the message of the
 * last failure on the calling thread.
 */
#ifndef HEADKV_HEADKV_H
#define HEADKV_HEADKV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum hk_status {
  HK_OK = 0,
  HK_ERR_IO = 1,
  HK_ERR_FORMAT = 2,
  HK_ERR_UNSUPPORTED = 3,
  HK_ERR_INVALID_ARGUMENT = 4,
  HK_ERR_OUT_OF_MEMORY = 5,
  HK_ERR_CONTEXT_FULL = 6,
  HK_ERR_INTERNAL = 7,
} hk_status;

typedef struct hk_model hk_model;
typedef struct hk_context hk_context;

/* Message of the last error on this thread ("" when none). */
const char* hk_last_error(void);
const char* hk_version(void);

/* ---- model ---- */
hk_status hk_model_load(const char* path, hk_model** out);
void hk_model_free(hk_model* model);
int32_t hk_model_n_vocab(const hk_model* model);
int32_t hk_model_n_ctx_train(const hk_model* model);
int32_t hk_model_bos(const hk_model* model); /* -1 when absent */
int32_t hk_model_eos(const hk_model* model);
int hk_model_is_eog(const hk_model* model, int32_t token);
/* Chat template text from the GGUF ("" when absent); valid while the model lives. */
const char* hk_model_chat_template(const hk_model* model);
/* Size in bytes of the weights as stored in the file. */
uint64_t hk_model_weight_bytes(const hk_model* model);

/* ---- tokenizer ----
 * add_bos: 1 prepend BOS, 0 do not, -1 follow the model's tokenizer.ggml.add_bos_token.
 * Writes up to `cap` ids to `out` and stores the full count in *n_out; when *n_out > cap the
 * call returns HK_ERR_INVALID_ARGUMENT and nothing beyond cap is written (call again larger). */
hk_status hk_tokenize(const hk_model* model, const char* text, size_t len, int add_bos,
                      int parse_special, int32_t* out, size_t cap, size_t* n_out);
/* Bytes of one token as it appears in output; returns the byte count, copies min(count, cap). */
size_t hk_token_to_piece(const hk_model* model, int32_t token, char* buf, size_t cap);

/* ---- context ---- */
typedef struct hk_context_params {
  int32_t n_ctx;      /* 0 = model's training context */
  int32_t n_threads;  /* 0 = hardware concurrency */
  int32_t n_batch;    /* max tokens per forward chunk during prefill; 0 = 512 */
  /* KV cache compression. With a method other than "full", the first hk_eval is the prompt: it is
   * compressed layer by layer into a per-head arena; later evals decode into reserved slots. */
  const char* kv_method;     /* NULL/"full", "snapkv", "streaming", "pyramidkv", "adakv", "headkv" */
  int32_t kv_budget;         /* KV entries per KV head on average, window included (128) */
  int32_t kv_window;         /* observation window α (8) */
  float kv_beta;             /* HeadKV β; 0 (default): 4 at budgets <= 64, else 2; the paper's scripts use 1.2 */
  int32_t kv_kernel;         /* pooling kernel, odd (7) */
  int32_t kv_avg_pool;       /* 0: max pooling (default), 1: average pooling */
  const char* kv_scores;     /* HeadKV head-score file (official or headkv JSON) */
  int32_t kv_max_new_tokens; /* decode slots reserved per KV head (512) */
  const char* device;        /* NULL/"cpu", "cuda" (GPU, fp16 prefill GEMMs) or "cuda-fp32" (fp32 GEMMs) */
  int32_t kv_span;           /* span-aware selection: token runs up to this long kept whole; 0 = off (the
                              * paper's selection) */
  const int32_t* kv_probe;   /* observation probe (query-agnostic compression): tokens appended after the
                              * prompt whose attention selects, then dropped; NULL = the prompt's last
                              * kv_window tokens select */
  size_t kv_n_probe;         /* tokens in kv_probe */
  int32_t kv_probe_echo;     /* 1: the probe is followed by the prompt again (each token scored by the
                              * attention its repetition pays it; costs a second pass over the prompt) */
  int32_t kv_adaptive;       /* headkv: 1 = each layer's score-given total is split among its heads per
                              * prompt, as Ada-KV splits it */
  const char* type_k;        /* element type of stored keys (llama.cpp's -ctk names): NULL/"f16" (default);
                              * CPU only: "f32" (reference), "q8_0", "q4_0" (llama.cpp's blocks of 32 values;
                              * the model's head size must be a multiple of 32). Other llama.cpp types, a type
                              * the backend cannot run or an unusable head size fail with HK_ERR_UNSUPPORTED,
                              * unknown names with HK_ERR_INVALID_ARGUMENT, before anything is allocated */
  const char* type_v;        /* element type of stored values (-ctv), as type_k */
  int64_t kv_budget_bytes;   /* > 0: the KV budget as bytes of kept entries, all layers and KV heads together
                              * (decode room not counted), replacing kv_budget: kv_budget becomes the most
                              * entries per head that fit at the cache types' entry size (0) */
  float kv_value_fit;        /* value fitting's ridge (e.g. 1): the kept values are refitted so that the
                              * observation window reads what it read over the full cache; 0 = off (default) */
  int32_t kv_reach;          /* span-aware selection (kv_span > 1) only: a max-pooled attention peak also keeps
                              * the kv_reach prompt positions after it (a needle's value after its key); 0 =
                              * the symmetric pooling window (8) */
  double kv_cap_ceiling;     /* headkv: no head keeps more than kv_cap_ceiling x (kv_budget - kv_window) prompt
                              * positions, the rest going to the other heads by score; 0 = none (default),
                              * else >= 1 */
} hk_context_params;

hk_context_params hk_context_default_params(void);
hk_status hk_context_new(const hk_model* model, const hk_context_params* params, hk_context** out);
void hk_context_free(hk_context* ctx);
int32_t hk_context_n_ctx(const hk_context* ctx);
int32_t hk_context_n_past(const hk_context* ctx);
/* Forget every cached token. */
void hk_context_reset(hk_context* ctx);
/* Forget the tokens at positions >= n_keep (prefix reuse: then evaluate only what differs). Full
 * cache: 0 <= n_keep <= n_past; compressed: 0 or at least the compressed prompt's tokens. */
hk_status hk_context_truncate(hk_context* ctx, int32_t n_keep);
/* Prefix reuse (llama-cpp-python's cache_prompt): rolls the context back to the longest prefix of
 * tokens[0..n) it holds that it can keep (at most n - 1, so the last token is evaluated for its
 * logits; a compressed context keeps all of its compressed prompt or nothing; resets when none) and
 * writes that count to *n_kept; then evaluate tokens + *n_kept. */
hk_status hk_context_reuse_prefix(hk_context* ctx, const int32_t* tokens, size_t n, int32_t* n_kept);
/* The sequence's state (tokens, last logits, KV cache: the compressed per-head arena and its plan
 * included) as bytes, to restore later into a context of the same model, KV method and cache types
 * (either backend, where the cache types match). hk_context_state_save writes at most `capacity`
 * bytes and the size to *written; with dst NULL it only reports the size (InvalidArgument when
 * capacity is too small). hk_context_state_load replaces the sequence; a foreign or malformed buffer
 * fails with InvalidArgument and leaves the context unchanged. */
hk_status hk_context_state_save(const hk_context* ctx, uint8_t* dst, size_t capacity, size_t* written);
hk_status hk_context_state_load(hk_context* ctx, const uint8_t* src, size_t size);
/* Appends `n` tokens to the sequence (prefill or decode) and computes the logits of the last one. */
hk_status hk_eval(hk_context* ctx, const int32_t* tokens, size_t n);
/* Logits (n_vocab floats) of the last evaluated token; NULL before the first eval. */
const float* hk_logits(const hk_context* ctx);
/* Bytes held by the KV cache of this context. */
uint64_t hk_context_kv_bytes(const hk_context* ctx);
/* Peak bytes of GPU memory allocated by the CUDA backend in this process (0 on the CPU). */
uint64_t hk_context_peak_device_bytes(const hk_context* ctx);
/* CUDA devices the CUDA backend can use (0 when it is not built or no device is visible). */
int hk_cuda_device_count(void);
/* Restarts the peak of hk_context_peak_device_bytes at the bytes allocated now. */
void hk_reset_peak_device_bytes(void);

/* ---- sequence groups ----
 * Several sequences over one model, decoded together: hk_group_step appends one token to each named
 * sequence, reading every weight matrix once for all of them on the CPU (one thread pool), once per
 * 8 sequences on the GPU (attention per sequence over its own KV). A sequence joins with
 * hk_group_add (its prompt evaluated alone) and leaves with hk_group_remove, between steps. Each
 * sequence's logits equal a separate context's up to the matrix products' summation order (on the
 * GPU: up to the cuda-fp32 single-token arithmetic, which the "cuda" device's single-token step
 * replaces with int8 activations). */
typedef struct hk_group hk_group;
/* Every sequence gets a context of `params` (NULL: defaults; n_threads sizes the group's one thread
 * pool on the CPU; device "cpu", "cuda" or "cuda-fp32", HK_ERR_UNSUPPORTED without the CUDA backend
 * or a device). kv_limit_bytes > 0 bounds the KV bytes of all sequences together; on the GPU the
 * free device memory bounds them too (checked before a sequence's prefill). */
hk_status hk_group_new(const hk_model* model, const hk_context_params* params, uint64_t kv_limit_bytes,
                       hk_group** out);
void hk_group_free(hk_group* group);
/* Adds sequence `id` and evaluates its prompt. HK_ERR_INVALID_ARGUMENT: id in use, empty prompt, token
 * outside the vocabulary; HK_ERR_CONTEXT_FULL: the prompt does not fit; HK_ERR_OUT_OF_MEMORY: its KV
 * would pass the group's limit (refused before its prefill). Nothing is added on error. */
hk_status hk_group_add(hk_group* group, int64_t id, const int32_t* prompt, size_t n);
hk_status hk_group_remove(hk_group* group, int64_t id); /* HK_ERR_INVALID_ARGUMENT: unknown id */
/* Appends tokens[i] to sequence ids[i] (i < n) in one batched step. Unknown or repeated ids, tokens
 * outside the vocabulary and full sequences fail before any sequence changes. */
hk_status hk_group_step(hk_group* group, const int64_t* ids, const int32_t* tokens, size_t n);
/* As hk_group_step, but sequence ids[i] takes counts[i] (1 to n_batch) consecutive tokens of `tokens`
 * (counts[0] + ... + counts[n-1] of them): a prompt that joined with its first piece (hk_group_add)
 * goes on in chunks that ride in the steps of the decoding sequences (llama_batch's several tokens per
 * sequence). A sequence's logits are those of its last token. CPU groups; on the GPU a count other than
 * 1 is HK_ERR_UNSUPPORTED. Bad counts fail with HK_ERR_INVALID_ARGUMENT before any sequence changes. */
hk_status hk_group_step_n(hk_group* group, const int64_t* ids, const int32_t* tokens, const int64_t* counts, size_t n);
/* Last logits of a sequence (n_vocab floats, valid until its next step); NULL for an unknown id. */
const float* hk_group_logits(const hk_group* group, int64_t id);
int32_t hk_group_n_past(const hk_group* group, int64_t id); /* -1 for an unknown id */
uint64_t hk_group_kv_bytes(const hk_group* group);          /* all sequences' KV together */

/* ---- sampling ---- */
typedef struct hk_sampler_params {
  float temperature;    /* <= 0: greedy */
  int32_t top_k;        /* <= 0: off */
  float top_p;          /* >= 1: off */
  float min_p;          /* <= 0: off */
  float repeat_penalty; /* 1: off */
  int32_t repeat_last_n;/* window for the penalty */
  uint64_t seed;
} hk_sampler_params;

typedef struct hk_sampler hk_sampler;
hk_sampler_params hk_sampler_default_params(void);
hk_status hk_sampler_new(const hk_sampler_params* params, hk_sampler** out);
void hk_sampler_free(hk_sampler* s);
/* Picks the next token from the context's current logits; the repetition penalty applies to the
 * last repeat_last_n tokens evaluated in that context. */
hk_status hk_sample(hk_sampler* s, const hk_context* ctx, int32_t* token);

#ifdef __cplusplus
}
#endif
#endif /* HEADKV_HEADKV_H */
