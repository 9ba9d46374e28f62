// Fuzz target: a GGUF image goes through everything a downloaded model file reaches — the reader
// (every metadata getter), the model fingerprint, the tokenizer (encode/decode), the Llama loader,
// and for files that load, a 16-token context: eval, logits, sampling. The only exceptions allowed
// out of the engine are headkv::Error; anything else (std::bad_alloc, std::out_of_range, a
// sanitizer report) is a finding. Built by tools/fuzz.sh (libFuzzer) or with fuzz_main.cpp (replay).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "generate/sampler.h"
#include "gguf/gguf.h"
#include "model/context.h"
#include "model/llama.h"
#include "select/scores.h"
#include "tokenize/tokenizer.h"

using namespace headkv;

namespace {

template <class F>
void allow_errors(F&& f) {
  try {
    f();
  } catch (const Error&) {
  }
}

void touch_metadata(const GGUFFile& f) {
  for (const auto& kv : f.metadata()) {
    const std::string& k = kv.first;
    allow_errors([&] { (void)f.get_str(k); });
    allow_errors([&] { (void)f.get_int(k); });
    allow_errors([&] { (void)f.get_float_or(k, 0.0); });
    allow_errors([&] { (void)f.get_bool_or(k, false); });
    allow_errors([&] { (void)f.get_str_array(k); });
    allow_errors([&] { (void)f.get_f32_array(k); });
    allow_errors([&] { (void)f.get_i32_array(k); });
  }
  allow_errors([&] { (void)model_info(f); });
}

const char* const kTexts[] = {
    "Hello world! 123 <|im_start|>user\n\xc3\xa9t\xc3\xa9 \xe2\x82\xac\xf0\x9f\x98\x80<s></s>  \t\n x",
    "\xff\xfe\xc3( invalid \xed\xa0\x80 utf8 \xf4\x90\x80\x80",
    "",
};

void touch_tokenizer(const Tokenizer& t) {
  for (const char* s : kTexts)
    for (int special = 0; special < 2; ++special) {
      std::vector<int32_t> ids;
      allow_errors([&] { ids = t.encode(s, true, special); });
      allow_errors([&] { (void)t.decode(ids); });
    }
  const int32_t n = std::min<int32_t>(t.n_vocab(), 512);
  for (int32_t i = 0; i < n; ++i) allow_errors([&] { (void)t.token_to_piece(i); });
  std::vector<int32_t> all(n);
  for (int32_t i = 0; i < n; ++i) all[i] = i;
  allow_errors([&] { (void)t.decode(all); });
  for (int32_t id : {-1, t.n_vocab(), t.bos_id(), t.eos_id()}) {
    allow_errors([&] { (void)t.token_to_piece(id); });
    (void)t.is_eog(id);
  }
}

void run_model(std::unique_ptr<GGUFFile> f) {
  std::unique_ptr<Model> m = Model::load(std::move(f));
  ContextParams p;
  p.n_ctx = 16;
  p.n_threads = 1;
  p.n_batch = 8;
  Context ctx(*m, p);
  std::vector<int32_t> ids;
  allow_errors([&] { ids = m->tokenizer().encode(kTexts[0], true, true); });
  if (ids.empty()) ids.push_back(0);
  if (ids.size() > 12) ids.resize(12);
  ctx.eval(ids.data(), (int64_t)ids.size(), /*all_logits=*/true);
  SamplerParams sp;
  sp.seed = 1;
  Sampler s(sp);
  int32_t tok = s.sample(ctx.logits(), m->hparams().n_vocab, ctx.history());
  ctx.eval(&tok, 1);
  sp.temperature = 0;
  Sampler g(sp);
  (void)g.sample(ctx.logits(), m->hparams().n_vocab, ctx.history());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The engine reads tensor data in place, as from a page-aligned mmap: give it an aligned copy.
  void* buf = nullptr;
  if (posix_memalign(&buf, 64, size ? size : 1) != 0) return 0;
  std::memcpy(buf, data, size);
  try {
    std::unique_ptr<GGUFFile> f = GGUFFile::from_memory(buf, size, "fuzz.gguf");
    touch_metadata(*f);
    allow_errors([&] { touch_tokenizer(*Tokenizer::from_gguf(*f)); });
    run_model(std::move(f));
  } catch (const Error&) {
  }
  std::free(buf);
  return 0;
}
