// A small, strict JSON reader (RFC 8259) for configuration-sized files (score files, settings).
//
// Strict: one top-level value, no comments, no trailing commas, no leading zeros, no raw control
// characters in strings, escapes and UTF-8 validated, duplicate object keys rejected, nesting depth
// bounded. Errors throw headkv::Error(ErrorKind::Format) with "line L, column C: what".
//
// One opt-in extension: `allow_nonfinite` accepts the tokens NaN, Infinity and -Infinity that
// Python's json module writes by default, so that callers can reject such values with a message
// that names the offending entry instead of a bare syntax error.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace headkv {

class JsonValue {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };

  JsonValue() = default;
  static JsonValue make_null() { return JsonValue(); }
  static JsonValue make_bool(bool b);
  static JsonValue make_number(double d);
  static JsonValue make_string(std::string s);
  static JsonValue make_array(std::vector<JsonValue> a);
  static JsonValue make_object(std::vector<std::pair<std::string, JsonValue>> o);

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_bool() const { return type_ == Type::Bool; }
  bool is_number() const { return type_ == Type::Number; }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }

  // Accessors throw Error(Format) naming `what` when the type is not the expected one.
  bool as_bool(const std::string& what = "value") const;
  double as_number(const std::string& what = "value") const;
  // A number that is an exact integer in [lo, hi].
  int64_t as_int(const std::string& what = "value", int64_t lo = INT64_MIN, int64_t hi = INT64_MAX) const;
  const std::string& as_string(const std::string& what = "value") const;
  const std::vector<JsonValue>& as_array(const std::string& what = "value") const;
  // Members in file order (keys are unique).
  const std::vector<std::pair<std::string, JsonValue>>& as_object(const std::string& what = "value") const;

  // Object member lookup; nullptr when absent (or when this is not an object).
  const JsonValue* find(const std::string& key) const;
  // Object member that must exist; throws Error(Format) naming `what` and the key otherwise.
  const JsonValue& at(const std::string& key, const std::string& what = "object") const;

  static const char* type_name(Type t);

 private:
  Type type_ = Type::Null;
  bool b_ = false;
  double num_ = 0.0;
  std::string str_;
  std::vector<JsonValue> arr_;
  std::vector<std::pair<std::string, JsonValue>> obj_;
};

struct JsonParseOptions {
  int max_depth = 64;            // arrays/objects nested deeper than this are rejected
  bool allow_nonfinite = false;  // accept NaN / Infinity / -Infinity (see above)
};

// Parses `text`. `source` (a file name) prefixes error messages when not empty.
JsonValue json_parse(const std::string& text, const JsonParseOptions& opt = {}, const std::string& source = "");
// Reads and parses a file; missing/unreadable → Error(Io).
JsonValue json_parse_file(const std::string& path, const JsonParseOptions& opt = {});

}  // namespace headkv
