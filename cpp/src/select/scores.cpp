#include "select/scores.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "common/error.h"
#include "common/json.h"
#include "gguf/gguf.h"
#include "model/arch.h"

namespace headkv {

// ---- fingerprint ----

namespace {

struct Fnv1a64 {
  uint64_t h = 1469598103934665603ull;
  void bytes(const void* p, size_t n) {
    const uint8_t* b = (const uint8_t*)p;
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  }
  void u64(uint64_t v) {
    uint8_t b[8];
    for (int i = 0; i < 8; ++i) b[i] = (uint8_t)(v >> (8 * i));  // little-endian on every host
    bytes(b, 8);
  }
  void str(const std::string& s) {
    u64(s.size());
    bytes(s.data(), s.size());
  }
};

void hash_value(Fnv1a64& h, const GGUFValue& v) {
  h.u64((uint64_t)v.type);
  switch (v.type) {
    case GGUFType::FLOAT32:
    case GGUFType::FLOAT64: {
      uint64_t bits;
      std::memcpy(&bits, &v.f, 8);
      h.u64(bits);
      break;
    }
    case GGUFType::STRING: h.str(v.s); break;
    case GGUFType::ARRAY:
      h.u64((uint64_t)v.elem_type);
      h.u64(v.arr.size());
      for (const GGUFValue& e : v.arr) hash_value(h, e);
      break;
    case GGUFType::UINT8:
    case GGUFType::UINT16:
    case GGUFType::UINT32:
    case GGUFType::UINT64: h.u64(v.u); break;
    default: h.u64((uint64_t)v.i); break;  // signed ints, bool
  }
}

}  // namespace

std::string model_fingerprint(const GGUFFile& f) {
  Fnv1a64 h;
  h.str("headkv-fingerprint-v1");
  const std::string arch = f.get_str_or("general.architecture", "");
  h.str(arch);
  const std::string prefix = arch + ".";
  for (const auto& kv : f.metadata()) {  // std::map: sorted by key
    if (kv.first.compare(0, prefix.size(), prefix) != 0) continue;
    h.str(kv.first);
    hash_value(h, kv.second);
  }
  std::vector<const TensorInfo*> ts;
  for (const TensorInfo& t : f.tensors()) ts.push_back(&t);
  std::sort(ts.begin(), ts.end(), [](const TensorInfo* a, const TensorInfo* b) { return a->name < b->name; });
  h.u64(ts.size());
  for (const TensorInfo* t : ts) {
    h.str(t->name);
    h.u64((uint64_t)t->type);
    h.u64(t->ne.size());
    for (int64_t d : t->ne) h.u64((uint64_t)d);
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", (unsigned long long)h.h);
  return buf;
}

ModelInfo model_info(const GGUFFile& f) {
  ModelInfo m;
  m.architecture = f.get_str("general.architecture");
  const std::string a = m.architecture + ".";
  auto count = [&](const std::string& key, int64_t v) {
    if (v <= 0 || v > 4096)
      fail(ErrorKind::Format, f.path() + ": metadata '" + key + "' = " + std::to_string(v) + " is out of range");
    return (int32_t)v;
  };
  m.n_layer = count(a + "block_count", f.get_int(a + "block_count"));
  m.n_head = count(a + "attention.head_count", f.get_int(a + "attention.head_count"));
  m.n_head_kv = count(a + "attention.head_count_kv", f.get_int_or(a + "attention.head_count_kv", m.n_head));
  m.fingerprint = model_fingerprint(f);
  if (const ArchInfo* arch = find_arch(m.architecture)) {
    const int64_t n_swa = arch->swa_pattern ? f.get_int_or(a + "attention.sliding_window", 0) : 0;
    for (int il = 0; il < m.n_layer; ++il)
      if (layer_slides(*arch, il, n_swa)) m.local_layers.push_back(il);
  }
  return m;
}

// ---- loading ----

namespace {

constexpr int kMaxGrid = 4096;  // layers and heads per layer, as in the headkv format's bounds

std::string head_name(int l, int h) { return std::to_string(l) + "-" + std::to_string(h); }

std::string describe(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

void check_value(const std::string& path, const std::string& where, double v) {
  if (!std::isfinite(v) || v < 0)
    fail(ErrorKind::Format, path + ": " + where + " is " + describe(v) +
                                "; head scores must be finite and non-negative");
}

// "12-3" -> (12, 3); digits only, no sign, no leading zeros beyond "0".
bool parse_key(const std::string& k, int& l, int& h) {
  const size_t dash = k.find('-');
  if (dash == std::string::npos || dash == 0 || dash + 1 >= k.size()) return false;
  auto num = [](const std::string& s, int& out) {
    if (s.empty() || s.size() > 6 || (s.size() > 1 && s[0] == '0')) return false;
    int v = 0;
    for (char c : s) {
      if (c < '0' || c > '9') return false;
      v = v * 10 + (c - '0');
    }
    out = v;
    return true;
  };
  return num(k.substr(0, dash), l) && num(k.substr(dash + 1), h);
}

HeadScores load_official(const std::string& path, const JsonValue& doc) {
  const auto& members = doc.as_object(path);
  if (members.empty()) fail(ErrorKind::Format, path + ": no head scores (empty object)");
  struct Entry { int l, h; double mean; };
  std::vector<Entry> entries;
  entries.reserve(members.size());
  int max_l = -1, max_h = -1;
  for (const auto& kv : members) {
    int l, h;
    if (!parse_key(kv.first, l, h))
      fail(ErrorKind::Format, path + ": key \"" + kv.first +
                                  "\" is not of the form \"layer-head\" (official HeadKV score format)");
    const std::string where = "head " + kv.first;
    if (!kv.second.is_array())
      fail(ErrorKind::Format, path + ": " + where + ": expected a list of scores, got " +
                                  JsonValue::type_name(kv.second.type()));
    const auto& list = kv.second.as_array();
    if (list.empty()) fail(ErrorKind::Format, path + ": " + where + " has an empty score list");
    double sum = 0;
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string w = where + " entry " + std::to_string(i);
      if (!list[i].is_number())
        fail(ErrorKind::Format, path + ": " + w + ": expected a number, got " + JsonValue::type_name(list[i].type()));
      check_value(path, w, list[i].as_number());
      sum += list[i].as_number();
    }
    const double mean = sum / (double)list.size();
    check_value(path, where + " mean", mean);
    if (l >= kMaxGrid || h >= kMaxGrid)
      fail(ErrorKind::Format, path + ": " + where + " is outside the largest supported grid (" +
                                  std::to_string(kMaxGrid) + " layers x " + std::to_string(kMaxGrid) + " heads)");
    entries.push_back({l, h, mean});
    max_l = std::max(max_l, l), max_h = std::max(max_h, h);
  }
  HeadScores s;
  s.format = "official";
  s.n_layer = max_l + 1;
  s.n_head = max_h + 1;
  if ((int64_t)s.n_layer * s.n_head != (int64_t)entries.size()) {
    // Keys are unique, so fewer entries than the grid: name the first missing head (in grid order)
    // without allocating the grid, which the keys alone could make huge.
    std::sort(entries.begin(), entries.end(),
              [](const Entry& a, const Entry& b) { return a.l != b.l ? a.l < b.l : a.h < b.h; });
    int64_t want = 0;
    for (const Entry& e : entries) {
      if ((int64_t)e.l * s.n_head + e.h != want) break;
      ++want;
    }
    fail(ErrorKind::Format, path + ": head " + head_name((int)(want / s.n_head), (int)(want % s.n_head)) +
                                " is missing; keys imply " + std::to_string(s.n_layer) + " layers x " +
                                std::to_string(s.n_head) + " heads but the file has " +
                                std::to_string(entries.size()) + " entries");
  }
  s.score.assign((size_t)s.n_layer * s.n_head, 0.0);
  for (const Entry& e : entries) s.score[(size_t)e.l * s.n_head + e.h] = e.mean;
  return s;
}

HeadScores load_headkv(const std::string& path, const JsonValue& doc) {
  HeadScores s;
  s.format = "headkv-scores";
  const int64_t version = doc.at("version", path).as_int(path + ": \"version\"");
  if (version < 1) fail(ErrorKind::Format, path + ": \"version\" must be >= 1");
  if (version > 1)
    fail(ErrorKind::Unsupported, path + ": headkv-scores version " + std::to_string(version) +
                                     " is newer than this build reads (1)");
  const JsonValue& m = doc.at("model", path);
  const std::string mw = path + ": \"model\"";
  m.as_object(mw);
  s.model.architecture = m.at("architecture", mw).as_string(mw + ".architecture");
  s.model.n_layer = (int32_t)m.at("n_layer", mw).as_int(mw + ".n_layer", 1, 4096);
  s.model.n_head = (int32_t)m.at("n_head", mw).as_int(mw + ".n_head", 1, 4096);
  s.model.n_head_kv = (int32_t)m.at("n_head_kv", mw).as_int(mw + ".n_head_kv", 1, 4096);
  s.model.fingerprint = m.at("fingerprint", mw).as_string(mw + ".fingerprint");
  if (s.model.n_head % s.model.n_head_kv != 0)
    fail(ErrorKind::Format, mw + ": n_head " + std::to_string(s.model.n_head) + " is not a multiple of n_head_kv " +
                                std::to_string(s.model.n_head_kv));
  if (const JsonValue* ll = m.find("local_layers")) {
    const auto& arr = ll->as_array(mw + ".local_layers");
    for (size_t i = 0; i < arr.size(); ++i) {
      const std::string w = mw + ".local_layers[" + std::to_string(i) + "]";
      const int32_t il = (int32_t)arr[i].as_int(w, 0, s.model.n_layer - 1);
      if (!s.model.local_layers.empty() && il <= s.model.local_layers.back())
        fail(ErrorKind::Format, w + ": layers must be listed in increasing order");
      s.model.local_layers.push_back(il);
    }
    s.lists_local_layers = true;
  }
  s.method = doc.at("method", path).as_string(path + ": \"method\"");
  if (s.method != "R" && s.method != "R2")
    fail(ErrorKind::Format, path + ": \"method\" must be \"R\" or \"R2\", got \"" + s.method + "\"");
  if (const JsonValue* st = doc.find("settings")) st->as_object(path + ": \"settings\"");
  s.n_layer = s.model.n_layer;
  s.n_head = s.model.n_head;
  const auto& rows = doc.at("scores", path).as_array(path + ": \"scores\"");
  if ((int64_t)rows.size() != s.n_layer)
    fail(ErrorKind::Format, path + ": \"scores\" has " + std::to_string(rows.size()) + " layers, model.n_layer is " +
                                std::to_string(s.n_layer));
  s.score.reserve((size_t)s.n_layer * s.n_head);
  for (int l = 0; l < s.n_layer; ++l) {
    const auto& row = rows[l].as_array(path + ": scores[" + std::to_string(l) + "]");
    if ((int64_t)row.size() != s.n_head)
      fail(ErrorKind::Format, path + ": scores[" + std::to_string(l) + "] has " + std::to_string(row.size()) +
                                  " heads, model.n_head is " + std::to_string(s.n_head));
    for (int h = 0; h < s.n_head; ++h) {
      const std::string w = "scores[" + std::to_string(l) + "][" + std::to_string(h) + "]";
      const double v = row[h].as_number(path + ": " + w);
      check_value(path, w, v);
      s.score.push_back(v);
    }
  }
  return s;
}

std::string layer_list(const std::vector<int32_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

[[noreturn]] void mismatch(const std::string& path, const std::string& what, const std::string& expected,
                           const std::string& got) {
  fail(ErrorKind::InvalidArgument, path + ": score file does not match the model: " + what + " expected " + expected +
                                       " (model), got " + got + " (score file)");
}

}  // namespace

namespace {

JsonParseOptions score_json_options() {
  JsonParseOptions opt;
  opt.allow_nonfinite = true;  // so NaN/Infinity get a message naming the head (check_value)
  opt.max_depth = 16;
  return opt;
}

HeadScores scores_from_doc(const std::string& path, const JsonValue& doc, const ModelInfo* expect) {
  if (!doc.is_object())
    fail(ErrorKind::Format, path + ": expected a JSON object at the top level, got " + JsonValue::type_name(doc.type()));
  HeadScores s;
  if (const JsonValue* fmt = doc.find("format")) {
    if (!fmt->is_string() || fmt->as_string() != "headkv-scores")
      fail(ErrorKind::Format, path + ": unknown score file format (\"format\" must be \"headkv-scores\")");
    s = load_headkv(path, doc);
  } else {
    s = load_official(path, doc);
  }
  if (expect) {
    if (s.n_layer != expect->n_layer)
      mismatch(path, "n_layer", std::to_string(expect->n_layer), std::to_string(s.n_layer));
    if (s.n_head != expect->n_head)
      mismatch(path, "n_head (query heads)", std::to_string(expect->n_head), std::to_string(s.n_head));
    if (s.format == "headkv-scores") {
      if (s.model.n_head_kv != expect->n_head_kv)
        mismatch(path, "n_head_kv", std::to_string(expect->n_head_kv), std::to_string(s.model.n_head_kv));
      if (s.model.architecture != expect->architecture)
        mismatch(path, "architecture", "\"" + expect->architecture + "\"", "\"" + s.model.architecture + "\"");
      if (s.model.fingerprint != expect->fingerprint)
        mismatch(path, "fingerprint", expect->fingerprint, s.model.fingerprint);
      if (s.lists_local_layers && s.model.local_layers != expect->local_layers)
        mismatch(path, "sliding-window layers", layer_list(expect->local_layers), layer_list(s.model.local_layers));
    }
  }
  return s;
}

}  // namespace

HeadScores load_scores(const std::string& path, const ModelInfo* expect) {
  return scores_from_doc(path, json_parse_file(path, score_json_options()), expect);
}

HeadScores parse_scores(const std::string& text, const std::string& source, const ModelInfo* expect) {
  return scores_from_doc(source, json_parse(text, score_json_options(), source), expect);
}

void check_scores(const HeadScores& s, int n_layer, int n_head) {
  if (s.n_layer != n_layer || s.n_head != n_head)
    fail(ErrorKind::InvalidArgument, "head scores have shape " + std::to_string(s.n_layer) + " x " +
                                         std::to_string(s.n_head) + " (layers x query heads), expected " +
                                         std::to_string(n_layer) + " x " + std::to_string(n_head));
  if (s.score.size() != (size_t)n_layer * n_head)
    fail(ErrorKind::InvalidArgument, "head scores: " + std::to_string(s.score.size()) + " values for a " +
                                         std::to_string(n_layer) + " x " + std::to_string(n_head) + " grid");
  for (int l = 0; l < n_layer; ++l)
    for (int h = 0; h < n_head; ++h) {
      const double v = s.at(l, h);
      if (!std::isfinite(v) || v < 0)
        fail(ErrorKind::InvalidArgument, "head " + head_name(l, h) + " score is " + describe(v) +
                                             "; head scores must be finite and non-negative");
    }
}

}  // namespace headkv
