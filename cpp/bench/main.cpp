// headkv-bench: prompt-processing and decode throughput, llama-bench style.
//
//   headkv-bench -m model.gguf -p 512 -n 128 -d 0,4096 -t 2 -r 5 -o md|json|csv
//
// Flags shared with llama-bench keep its meaning; comma lists form a cross product. Tests:
//   ppN [@ dD]   time to evaluate N prompt tokens in one hk_eval (after D untimed depth tokens)
//   tgN [@ dD]   N single-token evals (after D untimed depth tokens; for a compressing method at
//                depth 0, after an untimed 1-token prompt: the context's first eval compresses)
//   ppN+tgM      -pg N,M: a prompt of N then M single-token evals, timed together
// A warm-up run precedes each test; each repetition starts from an empty context. Written against
// the public C API (headkv/headkv.h) only.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/threadpool.h"
#include "headkv/headkv.h"

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "headkv-bench: %s\n", msg.c_str());
  std::exit(1);
}

// ---------------------------------------------------------------------------------- options

const char* const kKvMethods[] = {"full", "headkv", "snapkv", "pyramidkv", "adakv", "streaming", "streamingllm", "h2o"};
const char* const kDevices[] = {"cpu", "cuda", "cuda-fp32", "auto"};

struct Options {
  std::vector<std::string> models;
  std::vector<int> n_prompt{512};
  std::vector<int> n_gen{128};
  std::vector<std::pair<int, int>> pg;
  std::vector<int> n_depth{0};
  std::vector<int> n_threads;
  std::vector<int> n_batch{512};
  std::vector<std::string> devices{"cpu"};
  std::vector<std::string> kv_methods{"full"};
  std::vector<std::string> types_k{"f16"}, types_v{"f16"};  // KV cache element types (llama-bench's -ctk/-ctv)
  std::vector<double> kv_budgets{0};  // 0: the method's default (128); else KV entries per head
  std::vector<double> kv_budget_mibs{0};  // > 0: the budget as MiB of kept entries (replaces kv_budgets)
  bool mib_given = false;
  std::vector<double> betas{0};       // 0: method default
  std::string scores;                 // per-head importance scores file (headkv method)
  int reps = 5;
  std::string output = "md";
  double bandwidth_gbps = 0;  // 0: measure
  bool warmup = true;
  bool progress = false;
  uint64_t seed = 1234;
  bool budgets_given = false, betas_given = false;
};

std::vector<std::string> split(const std::string& s, char sep = ',') {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream in(s);
  while (std::getline(in, cur, sep)) {
    if (!cur.empty()) out.push_back(cur);
  }
  if (out.empty()) die("empty list '" + s + "'");
  return out;
}

long parse_int(const std::string& flag, const std::string& s) {
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(s.c_str(), &end, 10);
  // accept k suffix (4k = 4096) for convenience
  if (end && (*end == 'k' || *end == 'K')) { v *= 1024; ++end; }
  if (errno || !end || *end || s.empty()) die("bad integer '" + s + "' for " + flag);
  return v;
}

double parse_double(const std::string& flag, const std::string& s) {
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(s.c_str(), &end);
  if (errno || !end || *end || s.empty() || !std::isfinite(v)) die("bad number '" + s + "' for " + flag);
  return v;
}

std::vector<int> int_list(const std::string& flag, const std::string& s, long lo) {
  std::vector<int> out;
  for (const auto& x : split(s)) {
    long v = parse_int(flag, x);
    if (v < lo) die(flag + " values must be >= " + std::to_string(lo) + " (got " + x + ")");
    out.push_back((int)v);
  }
  return out;
}

std::vector<double> double_list(const std::string& flag, const std::string& s, double lo) {
  std::vector<double> out;
  for (const auto& x : split(s)) {
    double v = parse_double(flag, x);
    if (v < lo) die(flag + " values must be >= " + std::to_string(lo) + " (got " + x + ")");
    out.push_back(v);
  }
  return out;
}

void usage(FILE* f) {
  std::fprintf(f,
      "usage: headkv-bench [options]\n"
      "\n"
      "options (comma-separated lists form a cross product):\n"
      "  -m, --model FILE[,FILE]      GGUF model(s) (required)\n"
      "  -p, --n-prompt N[,N]         prompt tokens per pp test (default 512; 0 = no pp test)\n"
      "  -n, --n-gen N[,N]            generated tokens per tg test (default 128; 0 = no tg test)\n"
      "  -pg N,M                      add a combined test: prompt N then M generated (repeatable)\n"
      "  -d, --n-depth D[,D]          tokens already in the context before the test (default 0)\n"
      "  -t, --threads T[,T]          threads (default: half the CPUs, about the physical cores)\n"
      "  -b, --batch-size B[,B]       prefill chunk size, context n_batch (default 512)\n"
      "  -r, --repetitions R          timed repetitions per test (default 5)\n"
      "  -o, --output md|json|csv|jsonl  output format on stdout (default md)\n"
      "      --device D[,D]           cpu (default), cuda, cuda-fp32, auto (cuda when a GPU is usable)\n"
      "      --kv-method M[,M]        KV cache: full, snapkv, streaming, pyramidkv, adakv, headkv (compressing\n"
      "                               methods compress the depth+prompt as one prompt; pp needs -d 0)\n"
      "      --kv-budget B[,B]        KV entries per KV head on average, window included (default 128)\n"
      "      --kv-budget-mib M[,M]    the budget as MiB of kept entries, all layers and heads (types compare at\n"
      "                               equal memory; replaces --kv-budget)\n"
      "  -ctk, --cache-type-k T[,T]   KV cache key type: f16 (default), q8_0, q4_0; CPU only: f32\n"
      "  -ctv, --cache-type-v T[,T]   KV cache value type: f16 (default), q8_0, q4_0; CPU only: f32\n"
      "      --scores FILE            head-importance score file (headkv; default: the file shipped for the\n"
      "                               model, matched by fingerprint)\n"
      "      --beta X[,X]             HeadKV beta: 1/beta of the budget is shared by score (default 4 at budgets <= 64, else 2)\n"
      "      --bandwidth GBPS         memory bandwidth for the roofline (default: measured)\n"
      "      --seed S                 token RNG seed (default 1234)\n"
      "      --no-warmup              skip the warm-up run\n"
      "      --progress               progress messages on stderr\n"
      "  -h, --help\n");
}

Options parse_args(int argc, char** argv) {
  Options o;
  bool threads_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    std::string val;
    auto eq = a.find('=');
    bool has_eq = a.rfind("--", 0) == 0 && eq != std::string::npos;
    if (has_eq) { val = a.substr(eq + 1); a = a.substr(0, eq); }
    auto next = [&]() -> std::string {
      if (has_eq) return val;
      if (i + 1 >= argc) die("missing value for " + a);
      return argv[++i];
    };
    if (a == "-h" || a == "--help") { usage(stdout); std::exit(0); }
    else if (a == "-m" || a == "--model") { for (auto& m : split(next())) o.models.push_back(m); }
    else if (a == "-p" || a == "--n-prompt") o.n_prompt = int_list(a, next(), 0);
    else if (a == "-n" || a == "--n-gen") o.n_gen = int_list(a, next(), 0);
    else if (a == "-pg") {
      auto v = int_list(a, next(), 0);
      if (v.size() != 2) die("-pg takes N,M");
      o.pg.emplace_back(v[0], v[1]);
    }
    else if (a == "-d" || a == "--n-depth") o.n_depth = int_list(a, next(), 0);
    else if (a == "-t" || a == "--threads") { o.n_threads = int_list(a, next(), 1); threads_given = true; }
    else if (a == "-b" || a == "--batch-size") o.n_batch = int_list(a, next(), 1);
    else if (a == "-r" || a == "--repetitions") {
      long r = parse_int(a, next());
      if (r < 1) die("-r must be >= 1");
      o.reps = (int)r;
    }
    else if (a == "-o" || a == "--output") {
      o.output = next();
      if (o.output != "md" && o.output != "json" && o.output != "csv" && o.output != "jsonl")
        die("-o must be md, json, jsonl or csv (got '" + o.output + "')");
    }
    else if (a == "--device") o.devices = split(next());
    else if (a == "--kv-method") o.kv_methods = split(next());
    else if (a == "-ctk" || a == "--cache-type-k") o.types_k = split(next());
    else if (a == "-ctv" || a == "--cache-type-v") o.types_v = split(next());
    else if (a == "--kv-budget-mib") {  // as the CLI's: MiB of kept entries, all heads together
      o.kv_budget_mibs = double_list(a, next(), 1e-6);
      o.mib_given = true;
    }
    else if (a == "--kv-budget") {  // KV entries per head, as in the CLI and Python
      o.kv_budgets = double_list(a, next(), 1);
      for (double b : o.kv_budgets)
        if (b != (double)(int64_t)b) die("--kv-budget takes KV entries per head (whole numbers), got " + std::to_string(b));
      o.budgets_given = true;
    }
    else if (a == "--beta") { o.betas = double_list(a, next(), 0); o.betas_given = true; }
    else if (a == "--scores") o.scores = next();
    else if (a == "--bandwidth") {
      o.bandwidth_gbps = parse_double(a, next());
      if (o.bandwidth_gbps <= 0) die("--bandwidth must be > 0");
    }
    else if (a == "--seed") o.seed = (uint64_t)parse_int(a, next());
    else if (a == "--no-warmup") o.warmup = false;
    else if (a == "--progress") o.progress = true;
    else { usage(stderr); die("unknown argument '" + a + "'"); }
  }
  if (o.models.empty()) { usage(stderr); die("-m is required"); }
  if (!threads_given) {
    o.n_threads = {headkv::default_thread_count()};
  }
  for (const auto& d : o.devices) {
    if (std::find(std::begin(kDevices), std::end(kDevices), d) == std::end(kDevices))
      die("unknown --device '" + d + "' (cpu, cuda, cuda-fp32, auto)");
    if (d != "cpu" && d != "auto" && hk_cuda_device_count() < 1)
      die("--device " + d + ": not available (the CUDA backend is not built or no CUDA device is visible)");
  }
  for (const auto& m : o.kv_methods) {
    if (std::find(std::begin(kKvMethods), std::end(kKvMethods), m) == std::end(kKvMethods))
      die("unknown --kv-method '" + m + "' (full, headkv, snapkv, pyramidkv, adakv, streaming, h2o)");
    if (m == "h2o") die("--kv-method h2o: not available in this build");
    const bool pp = std::any_of(o.n_prompt.begin(), o.n_prompt.end(), [](int p) { return p > 0; }) || !o.pg.empty();
    const bool depth = std::any_of(o.n_depth.begin(), o.n_depth.end(), [](int d) { return d > 0; });
    if (m != "full" && pp && depth)
      die("--kv-method " + m + ": a pp test with -d > 0 is not defined (the prompt is compressed as a whole); "
          "use -p 0 for decode at depth, or -d 0 for prefill");
  }
  if (o.mib_given && o.budgets_given) die("--kv-budget and --kv-budget-mib: give one of them");
  // Only the full cache exists: budgets, betas and scores have nothing to act on yet.
  if (o.budgets_given || o.betas_given || !o.scores.empty()) {
    bool all_full = std::all_of(o.kv_methods.begin(), o.kv_methods.end(), [](auto& m) { return m == "full"; });
    if (all_full)
      std::fprintf(stderr, "headkv-bench: note: --kv-budget/--beta/--scores are ignored by --kv-method full\n");
  }
  if (!o.scores.empty()) {
    std::ifstream f(o.scores);
    if (!f) die("--scores: cannot open '" + o.scores + "'");
  }
  return o;
}

// ---------------------------------------------------------------------------------- system info

uint64_t proc_status_kb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(key);
  while (std::getline(f, line)) {
    if (line.compare(0, n, key) == 0 && line.size() > n && line[n] == ':')
      return std::strtoull(line.c_str() + n + 1, nullptr, 10);
  }
  return 0;
}
uint64_t peak_rss_bytes() { return proc_status_kb("VmHWM") * 1024; }
uint64_t cur_rss_bytes() { return proc_status_kb("VmRSS") * 1024; }
// Resets VmHWM to the current RSS (Linux >= 4.0) so each test reports its own peak.
void reset_peak_rss() {
  FILE* f = std::fopen("/proc/self/clear_refs", "w");
  if (f) { std::fputs("5", f); std::fclose(f); }
}

std::string cpu_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto p = line.find(':');
      if (p != std::string::npos) {
        auto s = line.substr(p + 1);
        s.erase(0, s.find_first_not_of(" \t"));
        return s;
      }
    }
  }
  return "unknown";
}

std::string basename_of(const std::string& p) {
  auto s = p.find_last_of('/');
  return s == std::string::npos ? p : p.substr(s + 1);
}

std::string iso_time() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

// Streaming read bandwidth (GB/s) with n threads over a buffer well beyond the last-level cache.
double measure_bandwidth_gbps(int n_threads) {
  const size_t bytes = (size_t)512 << 20;
  const size_t n = bytes / sizeof(uint64_t);
  std::unique_ptr<uint64_t[]> buf(new uint64_t[n]);
  {  // first touch from the reading threads' split, so pages are resident
    std::vector<std::thread> th;
    for (int t = 0; t < n_threads; ++t)
      th.emplace_back([&, t] {
        size_t b = n * t / n_threads, e = n * (t + 1) / n_threads;
        for (size_t i = b; i < e; ++i) buf[i] = i * 2654435761u;
      });
    for (auto& x : th) x.join();
  }
  std::atomic<uint64_t> sink{0};
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    std::vector<std::thread> th;
    auto t0 = Clock::now();
    for (int t = 0; t < n_threads; ++t)
      th.emplace_back([&, t] {
        size_t b = n * t / n_threads, e = n * (t + 1) / n_threads;
        uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
        size_t i = b;
        for (; i + 8 <= e; i += 8) {
          a0 += buf[i]; a1 += buf[i + 1]; a2 += buf[i + 2]; a3 += buf[i + 3];
          a4 += buf[i + 4]; a5 += buf[i + 5]; a6 += buf[i + 6]; a7 += buf[i + 7];
        }
        for (; i < e; ++i) a0 += buf[i];
        sink += a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
      });
    for (auto& x : th) x.join();
    double s = std::chrono::duration<double>(Clock::now() - t0).count();
    best = std::max(best, bytes / s / 1e9);
  }
  if (sink.load() == 42) std::fprintf(stderr, " ");  // keep the reads
  return best;
}

// ---------------------------------------------------------------------------------- tests

struct Test {
  std::string model;
  int n_prompt = 0, n_gen = 0, n_depth = 0, n_threads = 1, n_batch = 512;
  std::string device, kv_method, type_k = "f16", type_v = "f16";
  double kv_budget = 0, beta = 0, kv_budget_mib = 0;

  std::string kind() const {
    if (n_prompt > 0 && n_gen > 0) return "pp" + std::to_string(n_prompt) + "+tg" + std::to_string(n_gen);
    if (n_prompt > 0) return "pp" + std::to_string(n_prompt);
    return "tg" + std::to_string(n_gen);
  }
  std::string name() const { return n_depth ? kind() + " @ d" + std::to_string(n_depth) : kind(); }
  int n_ctx() const { return n_depth + n_prompt + n_gen + 1; }
};

struct Result {
  Test t;
  std::vector<double> samples_ns;
  uint64_t weight_bytes = 0, kv_bytes = 0, kv_bytes_read = 0, peak_rss = 0, peak_device = 0;
  int n_vocab = 0, n_ctx = 0;
  double bandwidth_gbps = 0;
  std::string bandwidth_source;

  int n_tokens() const { return t.n_prompt + t.n_gen; }
  std::vector<double> samples_ts() const {
    std::vector<double> v;
    for (double ns : samples_ns) v.push_back(n_tokens() * 1e9 / ns);
    return v;
  }
  static double mean(const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += x;
    return v.empty() ? 0 : s / v.size();
  }
  static double stdev(const std::vector<double>& v) {
    if (v.size() < 2) return 0;
    double m = mean(v), s = 0;
    for (double x : v) s += (x - m) * (x - m);
    return std::sqrt(s / (v.size() - 1));
  }
  double avg_ts() const { return mean(samples_ts()); }
  double stdev_ts() const { return stdev(samples_ts()); }
  bool decode_only() const { return t.n_prompt == 0 && t.n_gen > 0; }
  // Bytes a decode step must stream: every weight once plus the KV entries attended to.
  double bytes_per_token() const { return (double)weight_bytes + (double)kv_bytes_read; }
  double roofline() const {
    if (!decode_only() || bandwidth_gbps <= 0) return NAN;
    return bytes_per_token() * avg_ts() / (bandwidth_gbps * 1e9);
  }
};

void check(hk_status st, const std::string& what) {
  if (st != HK_OK) die(what + ": " + hk_last_error() + " (status " + std::to_string((int)st) + ")");
}

struct Runner {
  const Options& o;
  std::mt19937_64 rng;
  std::map<int, double> bw_cache;

  explicit Runner(const Options& opt) : o(opt), rng(opt.seed) {}

  std::vector<int32_t> random_tokens(int n, int n_vocab, int32_t bos) {
    std::uniform_int_distribution<int32_t> d(0, n_vocab - 1);
    std::vector<int32_t> v(n);
    for (auto& x : v) x = d(rng);
    if (n > 0 && bos >= 0) v[0] = bos;
    return v;
  }

  double bandwidth(int n_threads, std::string* source) {
    if (o.bandwidth_gbps > 0) { *source = "given"; return o.bandwidth_gbps; }
    *source = "measured";
    auto it = bw_cache.find(n_threads);
    if (it != bw_cache.end()) return it->second;
    if (o.progress) std::fprintf(stderr, "headkv-bench: measuring memory bandwidth with %d threads\n", n_threads);
    double bw = measure_bandwidth_gbps(n_threads);
    bw_cache[n_threads] = bw;
    return bw;
  }

  // One timed pass: depth (untimed), then the test. Returns nanoseconds. A compressing method's tg
  // test at depth 0 first evaluates the BOS (or one random token) untimed, as a depth of 1: a
  // compressed context's first eval is the prompt it compresses (the arena is sized and the decode
  // graph captured there), which the full cache's arena and graph, made with the context, do not
  // pay in their first step; both then time n_gen decode steps.
  double run_once(hk_context* ctx, const Test& t, int n_vocab, int32_t bos, bool compressing) {
    hk_context_reset(ctx);
    const bool one_token_prompt = compressing && t.n_depth == 0 && t.n_prompt == 0 && t.n_gen > 0;
    if (t.n_depth > 0 || one_token_prompt) {
      auto depth = random_tokens(one_token_prompt ? 1 : t.n_depth, n_vocab, bos);
      check(hk_eval(ctx, depth.data(), depth.size()), "depth prefill");
    }
    const bool empty = t.n_depth == 0 && !one_token_prompt;  // nothing evaluated yet: BOS first
    auto prompt = random_tokens(t.n_prompt, n_vocab, empty ? bos : -1);
    auto gen = random_tokens(t.n_gen, n_vocab, -1);
    if (empty && t.n_prompt == 0 && !gen.empty() && bos >= 0) gen[0] = bos;
    auto t0 = Clock::now();
    if (t.n_prompt > 0) check(hk_eval(ctx, prompt.data(), prompt.size()), "prompt eval");
    for (int i = 0; i < t.n_gen; ++i) check(hk_eval(ctx, &gen[i], 1), "decode eval");
    return std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
  }

  Result run(hk_model* model, const Test& t) {
    Result r;
    r.t = t;
    r.n_vocab = hk_model_n_vocab(model);
    r.weight_bytes = hk_model_weight_bytes(model);
    const int32_t bos = hk_model_bos(model);

    reset_peak_rss();
    hk_reset_peak_device_bytes();
    hk_context_params cp = hk_context_default_params();
    cp.device = t.device.c_str();
    cp.n_ctx = t.n_ctx();
    cp.n_threads = t.n_threads;
    cp.n_batch = t.n_batch;
    cp.type_k = t.type_k.c_str();
    cp.type_v = t.type_v.c_str();
    const std::string method = t.kv_method == "streamingllm" ? "streaming" : t.kv_method;
    const bool compressing = method != "full";
    if (compressing) {
      if (t.n_depth > 0 && t.n_prompt > 0)
        die("--kv-method " + method + ": a pp test with -d > 0 is not defined (the prompt is compressed as a whole)");
      cp.kv_method = method.c_str();
      if (t.kv_budget >= 1) cp.kv_budget = (int32_t)t.kv_budget;
      if (t.kv_budget_mib > 0) cp.kv_budget_bytes = (int64_t)(t.kv_budget_mib * 1048576.0);
      if (t.beta > 0) cp.kv_beta = (float)t.beta;
      if (!o.scores.empty()) cp.kv_scores = o.scores.c_str();
      cp.kv_max_new_tokens = t.n_gen + 1;
    }
    hk_context* ctx = nullptr;
    check(hk_context_new(model, &cp, &ctx), "hk_context_new (n_ctx " + std::to_string(cp.n_ctx) + ")");
    r.n_ctx = hk_context_n_ctx(ctx);

    // The compressing methods are warmed up too: without it, their first repetition at depth 0
    // (nothing evaluated before the timer) includes the first use of every kernel of the step (CUDA
    // loads modules lazily), the likely cause of the spread of headkv-1024 at depth 0 on the H200
    // (one of two repetitions ~30 t/s below the other).
    if (o.warmup) {
      hk_context_reset(ctx);
      if (t.n_prompt > 0) {
        auto w = random_tokens(std::min(t.n_prompt, t.n_batch), r.n_vocab, bos);
        check(hk_eval(ctx, w.data(), w.size()), "warm-up");
      } else {
        auto w = random_tokens(1, r.n_vocab, bos);
        check(hk_eval(ctx, w.data(), 1), "warm-up");
      }
    }
    for (int rep = 0; rep < o.reps; ++rep) {
      double ns = run_once(ctx, t, r.n_vocab, bos, compressing);
      r.samples_ns.push_back(ns);
      if (o.progress)
        std::fprintf(stderr, "headkv-bench: %s %s rep %d/%d: %.2f t/s\n", basename_of(t.model).c_str(),
                     t.name().c_str(), rep + 1, o.reps, r.n_tokens() * 1e9 / ns);
    }
    // KV held by the context (allocated for n_ctx); a decode step reads the filled part, on
    // average positions depth + prompt + n_gen/2.
    r.kv_bytes = hk_context_kv_bytes(ctx);
    double mean_fill = t.n_depth + t.n_prompt + (t.n_gen + 1) / 2.0;
    r.kv_bytes_read = r.n_ctx > 0 ? (uint64_t)(r.kv_bytes * std::min(1.0, mean_fill / r.n_ctx)) : 0;
    r.peak_rss = peak_rss_bytes();
    r.peak_device = hk_context_peak_device_bytes(ctx);
    hk_context_free(ctx);
    r.bandwidth_gbps = bandwidth(t.n_threads, &r.bandwidth_source);
    return r;
  }
};

// ---------------------------------------------------------------------------------- output

std::string json_str(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) { char b[8]; std::snprintf(b, sizeof b, "\\u%04x", c); out += b; }
        else out += (char)c;
    }
  }
  return out + "\"";
}

std::string json_num(double v) {
  if (!std::isfinite(v)) return "null";
  char b[64];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}

struct Env {
  std::string cpu, version, time;
};

std::string to_json(const Result& r, const Env& e, const std::string& indent) {
  auto ts = r.samples_ts();
  std::ostringstream s;
  const std::string in = indent + "  ";
  auto arr = [](const std::vector<double>& v, bool integral) {
    std::string a = "[";
    for (size_t i = 0; i < v.size(); ++i) {
      if (i) a += ", ";
      a += integral ? std::to_string((uint64_t)std::llround(v[i])) : json_num(v[i]);
    }
    return a + "]";
  };
  s << indent << "{\n"
    << in << "\"build\": " << json_str("headkv " + e.version) << ",\n"
    << in << "\"cpu_info\": " << json_str(e.cpu) << ",\n"
    << in << "\"device\": " << json_str(r.t.device) << ",\n"
    << in << "\"device_name\": " << json_str(r.t.device.rfind("cuda", 0) == 0 ? "n/a" : e.cpu) << ",\n"
    << in << "\"model_filename\": " << json_str(r.t.model) << ",\n"
    << in << "\"model_size\": " << r.weight_bytes << ",\n"
    << in << "\"n_vocab\": " << r.n_vocab << ",\n"
    << in << "\"n_threads\": " << r.t.n_threads << ",\n"
    << in << "\"n_batch\": " << r.t.n_batch << ",\n"
    << in << "\"n_ctx\": " << r.n_ctx << ",\n"
    << in << "\"kv_method\": " << json_str(r.t.kv_method) << ",\n"
    << in << "\"type_k\": " << json_str(r.t.type_k) << ",\n"
    << in << "\"type_v\": " << json_str(r.t.type_v) << ",\n"
    << in << "\"kv_budget\": " << (r.t.kv_budget > 0 ? json_num(r.t.kv_budget) : "null") << ",\n"
    << in << "\"kv_budget_mib\": " << (r.t.kv_budget_mib > 0 ? json_num(r.t.kv_budget_mib) : "null") << ",\n"
    << in << "\"beta\": " << (r.t.beta > 0 ? json_num(r.t.beta) : "null") << ",\n"
    << in << "\"n_prompt\": " << r.t.n_prompt << ",\n"
    << in << "\"n_gen\": " << r.t.n_gen << ",\n"
    << in << "\"n_depth\": " << r.t.n_depth << ",\n"
    << in << "\"test\": " << json_str(r.t.kind()) << ",\n"
    << in << "\"name\": " << json_str(r.t.name()) << ",\n"
    << in << "\"test_time\": " << json_str(e.time) << ",\n"
    << in << "\"repetitions\": " << r.samples_ns.size() << ",\n"
    << in << "\"avg_ns\": " << std::llround(Result::mean(r.samples_ns)) << ",\n"
    << in << "\"stddev_ns\": " << std::llround(Result::stdev(r.samples_ns)) << ",\n"
    << in << "\"avg_ts\": " << json_num(r.avg_ts()) << ",\n"
    << in << "\"stddev_ts\": " << json_num(r.stdev_ts()) << ",\n"
    << in << "\"samples_ns\": " << arr(r.samples_ns, true) << ",\n"
    << in << "\"samples_ts\": " << arr(ts, false) << ",\n"
    << in << "\"weight_bytes\": " << r.weight_bytes << ",\n"
    << in << "\"kv_bytes\": " << r.kv_bytes << ",\n"
    << in << "\"kv_bytes_read\": " << r.kv_bytes_read << ",\n"
    << in << "\"peak_rss_bytes\": " << r.peak_rss << ",\n"
    << in << "\"peak_device_bytes\": " << r.peak_device << ",\n"
    << in << "\"bandwidth_gbps\": " << json_num(r.bandwidth_gbps) << ",\n"
    << in << "\"bandwidth_source\": " << json_str(r.bandwidth_source) << ",\n"
    << in << "\"bytes_per_token\": " << (r.decode_only() ? json_num(r.bytes_per_token()) : "null") << ",\n"
    << in << "\"roofline_fraction\": " << json_num(r.roofline()) << "\n"
    << indent << "}";
  return s.str();
}

std::string mib(uint64_t b) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", b / 1048576.0);
  return buf;
}

void print_md_header(const Options& o) {
  std::printf("| model | size | threads | kv | test | t/s | KV MiB | peak RSS MiB | roofline |\n");
  std::printf("| ----- | ---: | ------: | -- | ---- | --: | -----: | -----------: | -------: |\n");
}

void print_md_row(const Result& r) {
  char size[32], ts[64], roof[32];
  std::snprintf(size, sizeof size, "%.2f MiB", r.weight_bytes / 1048576.0);
  std::snprintf(ts, sizeof ts, "%.2f ± %.2f", r.avg_ts(), r.stdev_ts());
  double rf = r.roofline();
  if (std::isfinite(rf)) std::snprintf(roof, sizeof roof, "%.1f%%", rf * 100);
  else std::snprintf(roof, sizeof roof, "-");
  std::string kv = r.t.kv_method;
  if (r.t.kv_budget > 0) kv += "/" + json_num(r.t.kv_budget);
  if (r.t.kv_budget_mib > 0) kv += "/" + json_num(r.t.kv_budget_mib) + "MiB";
  if (r.t.type_k != "f16" || r.t.type_v != "f16") kv += " " + r.t.type_k + "/" + r.t.type_v;
  std::printf("| %s | %s | %d | %s | %s | %s | %s | %s | %s |\n", basename_of(r.t.model).c_str(), size,
              r.t.n_threads, kv.c_str(), r.t.name().c_str(), ts, mib(r.kv_bytes).c_str(),
              mib(r.peak_rss).c_str(), roof);
  std::fflush(stdout);
}

const char* kCsvCols =
    "model_filename,device,n_threads,n_batch,n_ctx,kv_method,kv_budget,beta,n_prompt,n_gen,n_depth,test,"
    "avg_ns,stddev_ns,avg_ts,stddev_ts,weight_bytes,kv_bytes,kv_bytes_read,peak_rss_bytes,"
    "peak_device_bytes,bandwidth_gbps,roofline_fraction,type_k,type_v";

void print_csv_row(const Result& r) {
  auto q = [](const std::string& s) { return "\"" + s + "\""; };
  double rf = r.roofline();
  std::printf("%s,%s,%d,%d,%d,%s,%g,%g,%d,%d,%d,%s,%lld,%lld,%.6f,%.6f,%llu,%llu,%llu,%llu,0,%.3f,%s,%s,%s\n",
              q(r.t.model).c_str(), r.t.device.c_str(), r.t.n_threads, r.t.n_batch, r.n_ctx,
              r.t.kv_method.c_str(), r.t.kv_budget, r.t.beta, r.t.n_prompt, r.t.n_gen, r.t.n_depth,
              q(r.t.name()).c_str(), (long long)std::llround(Result::mean(r.samples_ns)),
              (long long)std::llround(Result::stdev(r.samples_ns)), r.avg_ts(), r.stdev_ts(),
              (unsigned long long)r.weight_bytes, (unsigned long long)r.kv_bytes,
              (unsigned long long)r.kv_bytes_read, (unsigned long long)r.peak_rss, r.bandwidth_gbps,
              std::isfinite(rf) ? json_num(rf).c_str() : "", r.t.type_k.c_str(), r.t.type_v.c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse_args(argc, argv);
  Env env{cpu_name(), hk_version(), iso_time()};

  // Cross product, in llama-bench's nesting order: model, then params, then the tests.
  std::vector<Test> tests;
  for (const auto& m : o.models)
    for (const auto& dev : o.devices)
      for (const auto& kvm : o.kv_methods)
       for (const auto& tk : o.types_k)
        for (const auto& tv : o.types_v)
        for (double budget : o.kv_budgets)
         for (double mib : o.kv_budget_mibs)
          for (double beta : o.betas)
            for (int nb : o.n_batch)
              for (int nt : o.n_threads)
                for (int d : o.n_depth) {
                  Test base;
                  base.model = m; base.device = dev == "auto" ? "cpu" : dev; base.kv_method = kvm;
                  base.type_k = tk; base.type_v = tv;
                  base.kv_budget = budget; base.kv_budget_mib = mib; base.beta = beta; base.n_batch = nb;
                  base.n_threads = nt;
                  base.n_depth = d;
                  for (int p : o.n_prompt)
                    if (p > 0) { Test t = base; t.n_prompt = p; tests.push_back(t); }
                  for (int n : o.n_gen)
                    if (n > 0) { Test t = base; t.n_gen = n; tests.push_back(t); }
                  for (auto [p, n] : o.pg) {
                    Test t = base; t.n_prompt = p; t.n_gen = n;
                    if (p + n > 0) tests.push_back(t);
                  }
                }
  if (tests.empty()) die("nothing to run (all of -p, -n and -pg are 0)");

  Runner runner(o);
  std::vector<Result> results;
  hk_model* model = nullptr;
  std::string loaded;
  auto load = [&](const std::string& path) {
    if (model) hk_model_free(model);
    model = nullptr;
    if (o.progress) std::fprintf(stderr, "headkv-bench: loading %s\n", path.c_str());
    check(hk_model_load(path.c_str(), &model), "loading " + path);
    loaded = path;
  };
  load(tests.front().model);  // fail before printing anything

  if (o.output == "md") print_md_header(o);
  if (o.output == "csv") std::printf("%s\n", kCsvCols);
  if (o.output == "json") { std::printf("[\n"); std::fflush(stdout); }

  bool first = true;
  for (const auto& t : tests) {
    if (t.model != loaded) load(t.model);
    Result r = runner.run(model, t);
    if (o.output == "md") print_md_row(r);
    else if (o.output == "csv") print_csv_row(r);
    else if (o.output == "jsonl") {
      std::string j = to_json(r, env, "");
      std::string line;
      for (char c : j) if (c != '\n') line += c;
      std::printf("%s\n", line.c_str());
      std::fflush(stdout);
    } else {
      std::printf("%s%s", first ? "" : ",\n", to_json(r, env, "  ").c_str());
      std::fflush(stdout);
    }
    first = false;
    results.push_back(std::move(r));
  }
  if (o.output == "json") std::printf("\n]\n");
  if (o.output == "md") {
    const auto& r0 = results.front();
    std::printf("\nbuild: headkv %s, cpu: %s, bandwidth %.1f GB/s (%s)\n", env.version.c_str(),
                env.cpu.c_str(), r0.bandwidth_gbps, r0.bandwidth_source.c_str());
  }
  if (model) hk_model_free(model);
  return 0;
}
