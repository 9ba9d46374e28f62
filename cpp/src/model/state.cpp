#include "model/state.h"

#include <cstring>

#include "common/error.h"

namespace headkv {

namespace {
constexpr char kMagic[8] = {'H', 'K', 'V', 'S', 'T', 'A', 'T', 'E'};
constexpr uint32_t kVersion = 1;

struct Writer {
  std::vector<uint8_t> out;
  void raw(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + n);
  }
  template <class T> void put(T x) { raw(&x, sizeof x); }
  template <class T> void vec(const std::vector<T>& v) {
    put<uint64_t>(v.size());
    raw(v.data(), v.size() * sizeof(T));
  }
  void str(const std::string& s) {
    put<uint64_t>(s.size());
    raw(s.data(), s.size());
  }
};

struct Reader {
  const uint8_t* p;
  size_t left;
  [[noreturn]] static void bad(const std::string& what) {
    fail(ErrorKind::InvalidArgument, "not a headkv state: " + what);
  }
  void raw(void* dst, size_t n) {
    if (n > left) bad("truncated");
    if (!n) return;  // an empty vector's data() may be null
    std::memcpy(dst, p, n);
    p += n;
    left -= n;
  }
  template <class T> T get() {
    T x;
    raw(&x, sizeof x);
    return x;
  }
  template <class T> std::vector<T> vec() {
    const uint64_t n = get<uint64_t>();
    if (n > left / sizeof(T)) bad("truncated");
    std::vector<T> v((size_t)n);
    raw(v.data(), (size_t)n * sizeof(T));
    return v;
  }
  std::string str() {
    const auto v = vec<char>();
    return std::string(v.begin(), v.end());
  }
};

KVType type_from(uint8_t b) {
  for (KVType t : {KVType::F32, KVType::F16, KVType::Q8_0, KVType::Q4_0})
    if (b == (uint8_t)t) return t;
  Reader::bad("unknown cache type " + std::to_string(b));
}

[[noreturn]] void mismatch(const std::string& what) {
  fail(ErrorKind::InvalidArgument, "the state does not fit this context: " + what);
}
}  // namespace

std::vector<uint8_t> serialize_state(const KVState& s) {
  Writer w;
  w.raw(kMagic, sizeof kMagic);
  w.put<uint32_t>(kVersion);
  for (int32_t x : {s.n_layer, s.n_head_kv, s.head_dim, s.n_vocab}) w.put<int32_t>(x);
  w.str(s.method);
  w.put<uint8_t>((uint8_t)s.type_k);
  w.put<uint8_t>((uint8_t)s.type_v);
  w.put<int32_t>(s.n_past);
  w.put<int32_t>(s.n_prompt);
  w.vec(s.history);
  w.vec(s.logits);
  w.put<uint8_t>(s.arena);
  w.put<int32_t>(s.plan.window);
  w.put<uint8_t>(s.plan.compressed);
  w.put<uint8_t>(s.plan.layer_pooled);
  w.vec(s.plan.cap);
  w.vec(s.capacity);
  w.vec(s.used);
  w.vec(s.pos);
  w.vec(s.k);
  w.vec(s.v);
  return std::move(w.out);
}

KVState deserialize_state(const uint8_t* data, size_t n) {
  if (!data && n) Reader::bad("null buffer");
  Reader r{data, n};
  char magic[sizeof kMagic];
  if (n < sizeof kMagic) Reader::bad("too short");
  r.raw(magic, sizeof magic);
  if (std::memcmp(magic, kMagic, sizeof kMagic) != 0) Reader::bad("bad magic");
  const uint32_t version = r.get<uint32_t>();
  if (version != kVersion) Reader::bad("version " + std::to_string(version) + " (this build reads " + std::to_string(kVersion) + ")");
  KVState s;
  s.n_layer = r.get<int32_t>();
  s.n_head_kv = r.get<int32_t>();
  s.head_dim = r.get<int32_t>();
  s.n_vocab = r.get<int32_t>();
  s.plan.n_layer = s.n_layer;
  s.plan.n_head_kv = s.n_head_kv;
  s.method = r.str();
  s.type_k = type_from(r.get<uint8_t>());
  s.type_v = type_from(r.get<uint8_t>());
  s.n_past = r.get<int32_t>();
  s.n_prompt = r.get<int32_t>();
  s.history = r.vec<int32_t>();
  s.logits = r.vec<float>();
  s.arena = r.get<uint8_t>() != 0;
  s.plan.window = r.get<int32_t>();
  s.plan.compressed = r.get<uint8_t>() != 0;
  s.plan.layer_pooled = r.get<uint8_t>() != 0;
  s.plan.cap = r.vec<int32_t>();
  s.capacity = r.vec<int64_t>();
  s.used = r.vec<int64_t>();
  s.pos = r.vec<int32_t>();
  s.k = r.vec<uint8_t>();
  s.v = r.vec<uint8_t>();
  if (r.left) Reader::bad(std::to_string(r.left) + " trailing bytes");
  // Internal consistency: counts agree with each other, so a loader can copy without bounds checks.
  if (s.n_layer <= 0 || s.n_head_kv <= 0 || s.head_dim <= 0 || s.n_vocab <= 0) Reader::bad("bad model shape");
  if ((kv_type_blocked(s.type_k) || kv_type_blocked(s.type_v)) && s.head_dim % 32) Reader::bad("a block type with a head size not a multiple of 32");
  if (s.n_past < 0 || (size_t)s.n_past != s.history.size()) Reader::bad("history does not hold n_past tokens");
  for (int32_t t : s.history)
    if (t < 0 || t >= s.n_vocab) Reader::bad("a token id is outside the vocabulary");
  if (!s.logits.empty() && s.logits.size() != (size_t)s.n_vocab) Reader::bad("logits are not one row");
  const size_t S = (size_t)s.n_layer * s.n_head_kv;
  if (s.used.size() != S) Reader::bad("one used count per (layer, KV head) expected");
  uint64_t entries = 0;
  for (size_t i = 0; i < S; ++i) {
    if (s.used[i] < 0 || s.used[i] > s.n_past) Reader::bad("a segment's count is out of range");
    if (s.arena && (s.capacity.size() != S || s.used[i] > s.capacity[i])) Reader::bad("a segment holds more than its capacity");

    entries += (uint64_t)s.used[i];
  }
  if (s.arena) {
    if (s.plan.cap.size() != S || s.plan.window < 0 || s.n_prompt <= 0 || s.n_prompt > s.n_past) Reader::bad("bad budget plan");
    if (s.pos.size() != entries) Reader::bad("one position per entry expected");
    for (int32_t p : s.pos)
      if (p < 0 || p >= s.n_past) Reader::bad("an entry's position is outside the sequence");
  } else if (!s.capacity.empty() || !s.pos.empty() || !s.plan.cap.empty() || s.n_prompt != 0) {
    Reader::bad("a full-cache state with arena fields");
  }
  if (s.k.size() != entries * kv_row_bytes(s.type_k, s.head_dim) || s.v.size() != entries * kv_row_bytes(s.type_v, s.head_dim))
    Reader::bad("K/V bytes do not match the entries");
  return s;
}

void check_state(const KVState& s, int32_t n_layer, int32_t n_head_kv, int32_t head_dim, int32_t n_vocab,
                 const std::string& method, KVType type_k, KVType type_v, int32_t n_ctx) {
  if (s.n_layer != n_layer || s.n_head_kv != n_head_kv || s.head_dim != head_dim || s.n_vocab != n_vocab)
    mismatch("it was saved from a model of another shape (layers, KV heads, head size or vocabulary)");
  if (s.method != method) mismatch("it was saved with KV method '" + s.method + "', this context uses '" + method + "'");
  if (s.type_k != type_k || s.type_v != type_v)
    mismatch(std::string("its cache types are ") + kv_type_name(s.type_k) + "/" + kv_type_name(s.type_v) +
             ", this context stores " + kv_type_name(type_k) + "/" + kv_type_name(type_v));
  if (!s.arena && s.n_past > n_ctx)
    mismatch("it holds " + std::to_string(s.n_past) + " tokens, more than n_ctx " + std::to_string(n_ctx));
}

}  // namespace headkv
