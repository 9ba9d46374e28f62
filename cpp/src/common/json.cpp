#include "common/json.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>
#include <unordered_set>

#include "common/error.h"

namespace headkv {

// ---- JsonValue ----

JsonValue JsonValue::make_bool(bool b) {
  JsonValue v;
  v.type_ = Type::Bool;
  v.b_ = b;
  return v;
}
JsonValue JsonValue::make_number(double d) {
  JsonValue v;
  v.type_ = Type::Number;
  v.num_ = d;
  return v;
}
JsonValue JsonValue::make_string(std::string s) {
  JsonValue v;
  v.type_ = Type::String;
  v.str_ = std::move(s);
  return v;
}
JsonValue JsonValue::make_array(std::vector<JsonValue> a) {
  JsonValue v;
  v.type_ = Type::Array;
  v.arr_ = std::move(a);
  return v;
}
JsonValue JsonValue::make_object(std::vector<std::pair<std::string, JsonValue>> o) {
  JsonValue v;
  v.type_ = Type::Object;
  v.obj_ = std::move(o);
  return v;
}

const char* JsonValue::type_name(Type t) {
  switch (t) {
    case Type::Null: return "null";
    case Type::Bool: return "boolean";
    case Type::Number: return "number";
    case Type::String: return "string";
    case Type::Array: return "array";
    case Type::Object: return "object";
  }
  return "?";
}

static void expect_type(const JsonValue& v, JsonValue::Type t, const std::string& what) {
  if (v.type() != t)
    fail(ErrorKind::Format, what + ": expected " + JsonValue::type_name(t) + ", got " + JsonValue::type_name(v.type()));
}

bool JsonValue::as_bool(const std::string& what) const {
  expect_type(*this, Type::Bool, what);
  return b_;
}
double JsonValue::as_number(const std::string& what) const {
  expect_type(*this, Type::Number, what);
  return num_;
}
int64_t JsonValue::as_int(const std::string& what, int64_t lo, int64_t hi) const {
  const double d = as_number(what);
  // 2^63 is exactly representable; anything at or beyond it does not fit int64.
  if (!std::isfinite(d) || d != std::floor(d) || d < -9223372036854775808.0 || d >= 9223372036854775808.0)
    fail(ErrorKind::Format, what + ": expected an integer");
  const int64_t i = (int64_t)d;
  if (i < lo || i > hi)
    fail(ErrorKind::Format, what + ": " + std::to_string(i) + " is outside [" + std::to_string(lo) + ", " +
                                std::to_string(hi) + "]");
  return i;
}
const std::string& JsonValue::as_string(const std::string& what) const {
  expect_type(*this, Type::String, what);
  return str_;
}
const std::vector<JsonValue>& JsonValue::as_array(const std::string& what) const {
  expect_type(*this, Type::Array, what);
  return arr_;
}
const std::vector<std::pair<std::string, JsonValue>>& JsonValue::as_object(const std::string& what) const {
  expect_type(*this, Type::Object, what);
  return obj_;
}
const JsonValue* JsonValue::find(const std::string& key) const {
  if (type_ != Type::Object) return nullptr;
  for (const auto& kv : obj_)
    if (kv.first == key) return &kv.second;
  return nullptr;
}
const JsonValue& JsonValue::at(const std::string& key, const std::string& what) const {
  expect_type(*this, Type::Object, what);
  const JsonValue* v = find(key);
  if (!v) fail(ErrorKind::Format, what + ": missing key \"" + key + "\"");
  return *v;
}

// ---- parser ----

namespace {

class Parser {
 public:
  Parser(const std::string& text, const JsonParseOptions& opt, const std::string& source)
      : s_(text), opt_(opt), source_(source) {}

  JsonValue parse_document() {
    skip_ws();
    if (p_ >= s_.size()) error("empty document");
    JsonValue v = parse_value(0);
    skip_ws();
    if (p_ < s_.size()) error("unexpected data after the top-level value");
    return v;
  }

 private:
  const std::string& s_;
  const JsonParseOptions& opt_;
  const std::string& source_;
  size_t p_ = 0;

  [[noreturn]] void error(const std::string& msg) const {
    size_t line = 1, col = 1;
    for (size_t i = 0; i < p_ && i < s_.size(); ++i) {
      if (s_[i] == '\n') ++line, col = 1;
      else ++col;
    }
    std::string where = "line " + std::to_string(line) + ", column " + std::to_string(col);
    fail(ErrorKind::Format, (source_.empty() ? std::string("JSON") : source_ + ": invalid JSON") + " at " + where +
                                ": " + msg);
  }

  static std::string show(char c) {
    if ((unsigned char)c >= 0x20 && (unsigned char)c < 0x7f) return std::string("'") + c + "'";
    char buf[16];
    std::snprintf(buf, sizeof buf, "byte 0x%02x", (unsigned)(unsigned char)c);
    return buf;
  }

  void skip_ws() {
    while (p_ < s_.size() && (s_[p_] == ' ' || s_[p_] == '\t' || s_[p_] == '\n' || s_[p_] == '\r')) ++p_;
  }

  bool match(const char* lit) {
    size_t n = std::char_traits<char>::length(lit);
    if (s_.compare(p_, n, lit) == 0) {
      p_ += n;
      return true;
    }
    return false;
  }

  JsonValue parse_value(int depth) {
    if (p_ >= s_.size()) error("unexpected end of input, expected a value");
    const char c = s_[p_];
    switch (c) {
      case '{': return parse_object(depth + 1);
      case '[': return parse_array(depth + 1);
      case '"': return JsonValue::make_string(parse_string());
      case 't': if (match("true")) return JsonValue::make_bool(true); break;
      case 'f': if (match("false")) return JsonValue::make_bool(false); break;
      case 'n': if (match("null")) return JsonValue::make_null(); break;
      case 'N':
        if (match("NaN")) {
          if (!opt_.allow_nonfinite) { p_ -= 3; error("NaN is not valid JSON"); }
          return JsonValue::make_number(std::numeric_limits<double>::quiet_NaN());
        }
        break;
      case 'I':
        if (match("Infinity")) {
          if (!opt_.allow_nonfinite) { p_ -= 8; error("Infinity is not valid JSON"); }
          return JsonValue::make_number(std::numeric_limits<double>::infinity());
        }
        break;
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return parse_number();
    }
    error("unexpected " + show(c) + ", expected a value");
  }

  JsonValue parse_object(int depth) {
    if (depth > opt_.max_depth) error("nesting deeper than " + std::to_string(opt_.max_depth));
    ++p_;  // '{'
    std::vector<std::pair<std::string, JsonValue>> members;
    std::unordered_set<std::string> keys;
    skip_ws();
    if (p_ < s_.size() && s_[p_] == '}') {
      ++p_;
      return JsonValue::make_object(std::move(members));
    }
    for (;;) {
      skip_ws();
      if (p_ >= s_.size()) error("unexpected end of input inside an object");
      if (s_[p_] != '"') error("unexpected " + show(s_[p_]) + ", expected a string key");
      const size_t key_pos = p_;
      std::string key = parse_string();
      if (!keys.insert(key).second) {
        p_ = key_pos;
        error("duplicate key \"" + key + "\"");
      }
      skip_ws();
      if (p_ >= s_.size() || s_[p_] != ':') error("expected ':' after an object key");
      ++p_;
      skip_ws();
      JsonValue v = parse_value(depth);
      members.emplace_back(std::move(key), std::move(v));
      skip_ws();
      if (p_ >= s_.size()) error("unexpected end of input inside an object");
      if (s_[p_] == ',') { ++p_; continue; }
      if (s_[p_] == '}') { ++p_; break; }
      error("unexpected " + show(s_[p_]) + ", expected ',' or '}'");
    }
    return JsonValue::make_object(std::move(members));
  }

  JsonValue parse_array(int depth) {
    if (depth > opt_.max_depth) error("nesting deeper than " + std::to_string(opt_.max_depth));
    ++p_;  // '['
    std::vector<JsonValue> items;
    skip_ws();
    if (p_ < s_.size() && s_[p_] == ']') {
      ++p_;
      return JsonValue::make_array(std::move(items));
    }
    for (;;) {
      skip_ws();
      items.push_back(parse_value(depth));
      skip_ws();
      if (p_ >= s_.size()) error("unexpected end of input inside an array");
      if (s_[p_] == ',') { ++p_; continue; }
      if (s_[p_] == ']') { ++p_; break; }
      error("unexpected " + show(s_[p_]) + ", expected ',' or ']'");
    }
    return JsonValue::make_array(std::move(items));
  }

  JsonValue parse_number() {
    const size_t start = p_;
    if (s_[p_] == '-') {
      ++p_;
      if (opt_.allow_nonfinite && match("Infinity")) return JsonValue::make_number(-std::numeric_limits<double>::infinity());
    }
    auto digit = [&] { return p_ < s_.size() && s_[p_] >= '0' && s_[p_] <= '9'; };
    if (!digit()) error("invalid number: expected a digit");
    if (s_[p_] == '0') {
      ++p_;
      if (digit()) error("invalid number: leading zero");
    } else {
      while (digit()) ++p_;
    }
    if (p_ < s_.size() && s_[p_] == '.') {
      ++p_;
      if (!digit()) error("invalid number: expected a digit after '.'");
      while (digit()) ++p_;
    }
    if (p_ < s_.size() && (s_[p_] == 'e' || s_[p_] == 'E')) {
      ++p_;
      if (p_ < s_.size() && (s_[p_] == '+' || s_[p_] == '-')) ++p_;
      if (!digit()) error("invalid number: expected a digit in the exponent");
      while (digit()) ++p_;
    }
    double d = 0.0;
    // from_chars is locale-independent; out-of-range magnitudes saturate like strtod (±inf / 0).
    auto r = std::from_chars(s_.data() + start, s_.data() + p_, d);
    if (r.ec == std::errc::result_out_of_range) {
      const bool neg = s_[start] == '-';
      // Overflow when the exponent is positive (or absent), underflow otherwise.
      const size_t e = s_.find_first_of("eE", start);
      const bool under = e != std::string::npos && e < p_ && s_[e + 1] == '-';
      d = under ? (neg ? -0.0 : 0.0)
                : (neg ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity());
    } else if (r.ec != std::errc() || r.ptr != s_.data() + p_) {
      p_ = start;
      error("invalid number");
    }
    return JsonValue::make_number(d);
  }

  unsigned hex4() {
    if (p_ + 4 > s_.size()) error("truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = s_[p_++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
      else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
      else { --p_; error("invalid hex digit " + show(c) + " in \\u escape"); }
    }
    return v;
  }

  static void put_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) out += (char)cp;
    else if (cp < 0x800) out += (char)(0xC0 | (cp >> 6)), out += (char)(0x80 | (cp & 0x3F));
    else if (cp < 0x10000)
      out += (char)(0xE0 | (cp >> 12)), out += (char)(0x80 | ((cp >> 6) & 0x3F)), out += (char)(0x80 | (cp & 0x3F));
    else
      out += (char)(0xF0 | (cp >> 18)), out += (char)(0x80 | ((cp >> 12) & 0x3F)),
          out += (char)(0x80 | ((cp >> 6) & 0x3F)), out += (char)(0x80 | (cp & 0x3F));
  }

  // Validates one UTF-8 sequence starting at p_ and copies it.
  void copy_utf8(std::string& out) {
    const unsigned char c = (unsigned char)s_[p_];
    int n;
    uint32_t cp, min;
    if (c < 0x80) { out += (char)c; ++p_; return; }
    if ((c & 0xE0) == 0xC0) n = 1, cp = c & 0x1F, min = 0x80;
    else if ((c & 0xF0) == 0xE0) n = 2, cp = c & 0x0F, min = 0x800;
    else if ((c & 0xF8) == 0xF0) n = 3, cp = c & 0x07, min = 0x10000;
    else error("invalid UTF-8 " + show((char)c));
    if (p_ + n >= s_.size()) error("truncated UTF-8 sequence");
    for (int i = 1; i <= n; ++i) {
      const unsigned char d = (unsigned char)s_[p_ + i];
      if ((d & 0xC0) != 0x80) { p_ += i; error("invalid UTF-8 continuation " + show((char)d)); }
      cp = (cp << 6) | (d & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) error("invalid UTF-8 sequence");
    out.append(s_, p_, (size_t)n + 1);
    p_ += (size_t)n + 1;
  }

  std::string parse_string() {
    ++p_;  // opening quote
    std::string out;
    for (;;) {
      if (p_ >= s_.size()) error("unterminated string");
      const char c = s_[p_];
      if (c == '"') { ++p_; return out; }
      if ((unsigned char)c < 0x20) error("raw control character " + show(c) + " in a string (escape it)");
      if (c != '\\') { copy_utf8(out); continue; }
      ++p_;
      if (p_ >= s_.size()) error("unterminated string");
      const char e = s_[p_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (!(p_ + 1 < s_.size() && s_[p_] == '\\' && s_[p_ + 1] == 'u')) error("unpaired high surrogate in \\u escape");
            p_ += 2;
            const uint32_t lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) error("invalid low surrogate in \\u escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            error("unpaired low surrogate in \\u escape");
          }
          put_utf8(out, cp);
          break;
        }
        default: --p_; error("invalid escape \\" + std::string(1, e));
      }
    }
  }
};

}  // namespace

JsonValue json_parse(const std::string& text, const JsonParseOptions& opt, const std::string& source) {
  return Parser(text, opt, source).parse_document();
}

JsonValue json_parse_file(const std::string& path, const JsonParseOptions& opt) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(ErrorKind::Io, path + ": cannot open file");
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) fail(ErrorKind::Io, path + ": read error");
  return json_parse(ss.str(), opt, path);
}

}  // namespace headkv
