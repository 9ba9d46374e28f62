// headkv-cli: generate text from a GGUF model, streaming tokens to stdout, timings to stderr.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <iostream>
#include <string>
#include <vector>

#include "headkv/headkv.h"
#include "tokenize/chat.h"

namespace {

struct Args {
  std::string model, prompt, system, context, probe;
  int n_predict = 128, n_threads = 0, n_ctx = -1, n_batch = 512;
  bool chat = false, conversation = false;
  hk_sampler_params sp = hk_sampler_default_params();
  hk_context_params cp = hk_context_default_params();
  std::string kv_method = "full", scores;
  std::string type_k = "f16", type_v = "f16";  // KV cache element types (-ctk / -ctv)
  bool span_set = false, pool_set = false;
  std::string device = "cpu";
};

const char* kUsage =
    "usage: headkv-cli -m MODEL (-p PROMPT | -f FILE) [options]\n"
    "  -m, --model PATH        GGUF model file\n"
    "  -p, --prompt TEXT       prompt\n"
    "  -f, --file PATH         read the prompt from a file\n"
    "      --context-file PATH a document evaluated (and compressed) before the prompt, which is then\n"
    "                          appended as a follow-up: the query-agnostic use of KV compression\n"
    "                          (with --chat the user message is the document, a blank line, the prompt)\n"
    "  -n, --n-predict N       tokens to generate (default 128; -1 = until end of text/context)\n"
    "  -c, --ctx-size N        context size: what the full cache holds; a compressing --kv-method\n"
    "                          takes longer prompts (default 4096, or the training context if\n"
    "                          shorter; 0 = the training context)\n"
    "  -b, --batch-size N      prompt tokens per forward chunk (default 512)\n"
    "  -t, --threads N         CPU threads (default: half the CPUs, about the physical cores)\n"
    "      --temp T            temperature (default 0.8; 0 = greedy)\n"
    "      --top-k N           top-k (default 40; 0 = off)\n"
    "      --top-p P           top-p (default 0.95; 1 = off)\n"
    "      --min-p P           min-p (default 0.05; 0 = off)\n"
    "      --repeat-penalty R  repetition penalty (default 1.0 = off)\n"
    "      --repeat-last-n N   tokens the penalty looks back over (default 64)\n"
    "  -s, --seed N            RNG seed\n"
    "      --chat              treat the prompt as a user message and apply the model's chat format\n"
    "  -cnv, --conversation    interactive chat (implies --chat): after each reply, read the next user\n"
    "                          message from stdin (an empty line or end of input ends); each turn\n"
    "                          evaluates only its new tokens (prefix reuse)\n"
    "      --system TEXT       system message for --chat\n"
    "      --device D          cpu (default), cuda, cuda-fp32 (where the CUDA backend is built), auto\n"
    "                          (cuda when a GPU is usable, else cpu)\n"
    "KV cache compression (the prompt is compressed per KV head; see README):\n"
    "      --kv-method M       full (default), snapkv, streaming, pyramidkv, adakv, headkv\n"
    "      --kv-budget B       KV entries per KV head on average, window included (default 128)\n"
    "      --kv-budget-mib M   the budget as MiB of kept entries, all layers and heads (replaces --kv-budget;\n"
    "                          entries per head follow from the cache types' entry size)\n"
    "  -ctk, --cache-type-k T  KV cache key type: f16 (default), q8_0, q4_0; CPU only: f32\n"
    "  -ctv, --cache-type-v T  KV cache value type: f16 (default), q8_0, q4_0; CPU only: f32\n"
    "      --scores FILE       head-importance score file (headkv)\n"
    "      --beta X            HeadKV beta (default: 4 at budgets <= 64, else 2; the paper's scripts: 1.2)\n"
    "      --cap-ceiling X     headkv: no head keeps more than X times (budget - window) positions\n"
    "                          (X >= 1; default 0 = no ceiling)\n"
    "      --window N          observation window (default 8)\n"
    "      --pool max|avg      pooling before top-k (default max)\n"
    "      --kernel K          pooling kernel (default 7)\n"
    "      --span N            span-aware selection: token runs up to N long kept whole (default 16;\n"
    "                          0 = the paper's rule, the default when --pool or --kernel is given)\n"
    "      --reach N           span-aware selection: an attention peak also keeps the N positions\n"
    "                          after it (default 8; 0 = the symmetric pooling window)\n"
    "      --value-fit L       refit the kept values to the window's full-cache outputs, ridge L\n"
    "                          (e.g. 1: closer continuations, weaker retrieval; default 0 = off)\n"
    "      --probe TEXT        observation probe: text run after the prompt (or the --context-file\n"
    "                          document) whose attention selects, then dropped; 'repeat' = a request\n"
    "                          to repeat the text, 'reconstruct' = that request followed by the text\n"
    "                          itself, 'none' = the prompt's last --window tokens select (default:\n"
    "                          reconstruct with --context-file, none otherwise)\n"
    "      --adaptive 0|1      headkv: split each layer's score-given total among its heads per prompt\n"
    "                          (Ada-KV style; default 0)\n";

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "headkv-cli: error: %s\n", msg.c_str());
  std::exit(1);
}

long to_int(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  errno = 0;
  const long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end || errno) die("invalid integer for " + flag + ": '" + v + "'");
  return x;
}

double to_double(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end) die("invalid number for " + flag + ": '" + v + "'");
  return x;
}

float to_float(const std::string& flag, const std::string& v) { return (float)to_double(flag, v); }

std::string read_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) die(std::string("cannot read ") + what + " file '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Args parse(int argc, char** argv) {
  Args a;
  std::string device = "cpu";
  bool have_prompt = false;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) die("missing value for " + f);
      return argv[++i];
    };
    if (f == "-h" || f == "--help") { std::fputs(kUsage, stdout); std::exit(0); }
    else if (f == "-m" || f == "--model") a.model = val();
    else if (f == "-p" || f == "--prompt") { a.prompt = val(); have_prompt = true; }
    else if (f == "-f" || f == "--file") { a.prompt = read_file(val(), "prompt"); have_prompt = true; }
    else if (f == "--context-file") {
      const std::string path = val();
      a.context = read_file(path, "context");
      if (a.context.empty()) die("context file '" + path + "' is empty");
    }
    else if (f == "-n" || f == "--n-predict") a.n_predict = (int)to_int(f, val());
    else if (f == "-c" || f == "--ctx-size") a.n_ctx = (int)to_int(f, val());
    else if (f == "-b" || f == "--batch-size") a.n_batch = (int)to_int(f, val());
    else if (f == "-t" || f == "--threads") a.n_threads = (int)to_int(f, val());
    else if (f == "--temp") a.sp.temperature = to_float(f, val());
    else if (f == "--top-k") a.sp.top_k = (int)to_int(f, val());
    else if (f == "--top-p") a.sp.top_p = to_float(f, val());
    else if (f == "--min-p") a.sp.min_p = to_float(f, val());
    else if (f == "--repeat-penalty") a.sp.repeat_penalty = to_float(f, val());
    else if (f == "--repeat-last-n") a.sp.repeat_last_n = (int)to_int(f, val());
    else if (f == "-s" || f == "--seed") a.sp.seed = (uint64_t)to_int(f, val());
    else if (f == "--chat") a.chat = true;
    else if (f == "-cnv" || f == "--conversation") a.chat = a.conversation = true;
    else if (f == "--system") a.system = val();
    else if (f == "--device") device = val();
    else if (f == "--kv-method") a.kv_method = val();
    else if (f == "-ctk" || f == "--cache-type-k") a.type_k = val();
    else if (f == "-ctv" || f == "--cache-type-v") a.type_v = val();
    else if (f == "--kv-budget") a.cp.kv_budget = (int)to_int(f, val());
    else if (f == "--kv-budget-mib") {  // the budget as MiB of kept entries, all heads together
      const float mib = to_float(f, val());
      if (!(mib > 0 && mib < 1e9f)) die("--kv-budget-mib must be a positive number of MiB");
      a.cp.kv_budget_bytes = (int64_t)((double)mib * 1048576.0);
    }
    else if (f == "--scores") a.scores = val();
    else if (f == "--beta") a.cp.kv_beta = to_float(f, val());
    else if (f == "--window") a.cp.kv_window = (int)to_int(f, val());
    else if (f == "--kernel") { a.cp.kv_kernel = (int)to_int(f, val()); a.pool_set = true; }
    else if (f == "--pool") {
      const std::string p = val();
      if (p != "max" && p != "avg") die("--pool must be max or avg");
      a.cp.kv_avg_pool = p == "avg";
      a.pool_set = true;
    }
    else if (f == "--span") { a.cp.kv_span = (int)to_int(f, val()); a.span_set = true; }
    else if (f == "--reach") a.cp.kv_reach = (int)to_int(f, val());
    else if (f == "--value-fit") a.cp.kv_value_fit = to_float(f, val());
    else if (f == "--cap-ceiling") a.cp.kv_cap_ceiling = to_double(f, val());
    else if (f == "--probe") a.probe = val();
    else if (f == "--adaptive") a.cp.kv_adaptive = (int)to_int(f, val());
    else die("unknown argument '" + f + "' (see --help)");
  }
  if (a.pool_set && !a.span_set) a.cp.kv_span = 0;  // explicit pooling: the paper's rule
  if (a.model.empty()) die("no model given (-m MODEL)");
  if (!have_prompt) die("no prompt given (-p PROMPT or -f FILE)");
  if (device == "auto") device = hk_cuda_device_count() > 0 ? "cuda" : "cpu";
  if (device != "cpu" && device != "cuda" && device != "cuda-fp32")
    die("device '" + device + "' is not supported (cpu, cuda, cuda-fp32, auto)");
  a.device = device;
  if (a.n_ctx < -1 || a.n_threads < 0 || a.n_batch <= 0) die("--ctx-size, --threads must be >= 0 and --batch-size > 0");
  if (a.conversation && !a.context.empty()) die("-cnv and --context-file cannot be combined (paste the document in the chat)");
  return a;
}

void check(hk_status s, const char* what) {
  if (s != HK_OK) die(std::string(what) + ": " + hk_last_error());
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

int main(int argc, char** argv) {
  Args a = parse(argc, argv);
  const double t0 = now_s();
  hk_model* model = nullptr;
  check(hk_model_load(a.model.c_str(), &model), "loading model");
  const double t_load = now_s() - t0;

  // The text to evaluate, as a document part (--context-file: evaluated, and compressed, first) and
  // the rest (the prompt), each tokenized on its own.
  std::string text = a.context.empty() ? a.prompt : a.context + a.prompt;
  size_t split = a.context.size();
  bool special = false;
  std::vector<std::pair<std::string, std::string>> msgs;
  if (a.chat) {
    if (!a.system.empty()) msgs.emplace_back("system", a.system);
    msgs.emplace_back("user", a.context.empty() ? a.prompt : a.context + "\n\n" + a.prompt);
    try {
      text = headkv::render_chat(hk_model_chat_template(model), msgs, true);
    } catch (const std::exception& e) {
      die(std::string("--chat: ") + e.what());
    }
    if (!a.context.empty()) {  // the user message as a whole: the document cannot match inside the header
      const size_t at = text.find(a.context + "\n\n" + a.prompt);
      if (at == std::string::npos) die("--chat: the chat format changed the document's text");
      split = at + a.context.size();
    }
    special = true;
  }
  auto tokenize = [&](const std::string& s, int add_bos, const char* what) {
    std::vector<int32_t> out(s.size() + 16);
    size_t n = 0;
    check(hk_tokenize(model, s.data(), s.size(), add_bos, special, out.data(), out.size(), &n), what);
    out.resize(n);
    return out;
  };
  // add_bos = -1: follow the model's add_bos_token metadata, unless the chat template wrote the BOS
  // itself (as Llama 3's and Gemma's do): one BOS, as Python and llama.cpp give.
  int add_bos = -1;
  if (a.chat && hk_model_bos(model) >= 0) {
    std::vector<char> bos(64);
    const size_t len = hk_token_to_piece(model, hk_model_bos(model), bos.data(), bos.size());
    if (len > 0 && len <= bos.size() && text.compare(0, len, bos.data(), len) == 0) add_bos = 0;
  }
  std::vector<int32_t> toks = tokenize(text.substr(0, a.context.empty() ? text.size() : split), add_bos, "tokenizing prompt");
  std::vector<int32_t> follow;
  if (!a.context.empty()) follow = tokenize(text.substr(split), 0, "tokenizing prompt");
  if (toks.empty()) die("the prompt is empty after tokenization");
  // A document compressed before its question selects by reconstruction (EVALUATION.md: the best
  // question-free observation measured); a prompt that holds its question selects by its last tokens.
  if (a.probe.empty() && !a.context.empty()) a.probe = "reconstruct";
  if (a.probe == "none") a.probe.clear();
  std::vector<int32_t> probe;
  if (!a.probe.empty()) {
    const bool echo = a.probe == "reconstruct";
    const std::string pt = a.probe == "repeat" || echo ? "\n\nRepeat the text above word for word." : a.probe;
    a.cp.kv_probe_echo = echo;
    std::vector<int32_t> buf(pt.size() + 16);
    size_t n = 0;
    check(hk_tokenize(model, pt.data(), pt.size(), 0, 0, buf.data(), buf.size(), &n), "tokenizing --probe");
    probe.assign(buf.begin(), buf.begin() + n);
  }

  hk_context_params cp = a.cp;
  cp.kv_method = a.kv_method.c_str();
  cp.type_k = a.type_k.c_str();
  cp.type_v = a.type_v.c_str();
  cp.device = a.device.c_str();
  cp.kv_scores = a.scores.empty() ? nullptr : a.scores.c_str();
  cp.kv_max_new_tokens = (a.n_predict >= 0 ? a.n_predict + 1 : cp.kv_max_new_tokens) + (int32_t)follow.size();
  if (a.conversation) cp.kv_max_new_tokens = std::max<int32_t>(cp.kv_max_new_tokens, 4096);  // later turns append
  cp.kv_probe = probe.empty() ? nullptr : probe.data();
  cp.kv_n_probe = probe.size();
  cp.kv_probe_echo = a.cp.kv_probe_echo;
  // The default context as in Python: 4096 tokens, or the training context if shorter.
  cp.n_ctx = a.n_ctx >= 0 ? a.n_ctx : std::min<int32_t>(4096, hk_model_n_ctx_train(model));
  const bool compressing = a.kv_method != "full";
  cp.n_threads = a.n_threads;
  cp.n_batch = a.n_batch;
  hk_context* ctx = nullptr;
  check(hk_context_new(model, &cp, &ctx), "creating context");
  if (!compressing && (int)(toks.size() + follow.size()) > hk_context_n_ctx(ctx))
    die("prompt has " + std::to_string(toks.size() + follow.size()) + " tokens but the context holds " + std::to_string(hk_context_n_ctx(ctx)) +
        " (raise --ctx-size)");
  hk_sampler* sampler = nullptr;
  check(hk_sampler_new(&a.sp, &sampler), "sampling parameters");

  const double t1 = now_s();
  check(hk_eval(ctx, toks.data(), toks.size()), "prompt evaluation");
  if (!follow.empty()) check(hk_eval(ctx, follow.data(), follow.size()), "prompt evaluation (after the context)");
  const double t_prompt = now_s() - t1;
  const size_t n_prompt = toks.size() + follow.size();

  // Samples and prints one reply.
  std::vector<char> piece(256);
  auto reply = [&](int& n_gen) {
    std::string out;
    n_gen = 0;
    while (a.n_predict < 0 || n_gen < a.n_predict) {
      int32_t tok;
      check(hk_sample(sampler, ctx, &tok), "sampling");
      if (hk_model_is_eog(model, tok)) break;
      size_t len = hk_token_to_piece(model, tok, piece.data(), piece.size());
      if (len > piece.size()) {
        piece.resize(len);
        hk_token_to_piece(model, tok, piece.data(), piece.size());
      }
      std::fwrite(piece.data(), 1, len, stdout);
      std::fflush(stdout);
      out.append(piece.data(), len);
      ++n_gen;
      if (!compressing && hk_context_n_past(ctx) >= hk_context_n_ctx(ctx)) {
        std::fprintf(stderr, "\nheadkv-cli: context full after %d tokens\n", n_gen);
        break;
      }
      const hk_status s = hk_eval(ctx, &tok, 1);
      if (s == HK_ERR_CONTEXT_FULL && compressing) {
        std::fprintf(stderr, "\nheadkv-cli: the compressed KV cache's decode room is used up after %d tokens\n", n_gen);
        break;
      }
      check(s, "decoding");
    }
    return out;
  };
  const double t2 = now_s();
  int n_gen = 0;
  std::string answer = reply(n_gen);
  const double t_gen = now_s() - t2;
  std::fputc('\n', stdout);
  std::fprintf(stderr, "\nheadkv-cli: load %.2f s | prompt %zu tokens in %.3f s (%.1f t/s) | generated %d tokens in %.3f s (%.1f t/s)\n",
               t_load, n_prompt, t_prompt, n_prompt / std::max(t_prompt, 1e-9), n_gen, t_gen,
               n_gen / std::max(t_gen, 1e-9));
  // -cnv: each turn renders the whole conversation and evaluates what the context does not hold yet.
  for (std::string line; a.conversation;) {
    std::fputs("\n> ", stderr);
    if (!std::getline(std::cin, line) || line.empty()) break;
    msgs.emplace_back("assistant", answer);
    msgs.emplace_back("user", line);
    std::string t;
    try {
      t = headkv::render_chat(hk_model_chat_template(model), msgs, true);
    } catch (const std::exception& e) {
      die(std::string("-cnv: ") + e.what());
    }
    const std::vector<int32_t> all = tokenize(t, add_bos, "tokenizing the conversation");
    int32_t kept = 0;  // what the context holds of the conversation is not evaluated again
    check(hk_context_reuse_prefix(ctx, all.data(), all.size(), &kept), "prefix reuse");
    const size_t keep = (size_t)kept;
    const double t3 = now_s();
    check(hk_eval(ctx, all.data() + keep, all.size() - keep), "evaluating the turn");
    const double t_turn = now_s() - t3;
    answer = reply(n_gen);
    std::fputc('\n', stdout);
    std::fprintf(stderr, "\nheadkv-cli: turn: %zu new tokens (%zu reused) in %.3f s | generated %d tokens\n",
                 all.size() - keep, keep, t_turn, n_gen);
  }
  hk_sampler_free(sampler);
  hk_context_free(ctx);
  hk_model_free(model);
  return 0;
}
