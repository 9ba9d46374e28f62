// JSON reader: accepted documents and rejected ones; returns nonzero on failure.
#include <cmath>
#include <cstdio>
#include <string>

#include "common/error.h"
#include "common/json.h"

#include "check.h"

using namespace headkv;


static bool rejects(const std::string& text, const std::string& needle, JsonParseOptions opt = {}) {
  try {
    json_parse(text, opt);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::Format) return false;
    if (std::string(e.what()).find(needle) == std::string::npos) {
      std::printf("message '%s' lacks '%s'\n", e.what(), needle.c_str());
      return false;
    }
    return true;
  }
  return false;
}

int main() {
  JsonValue v = json_parse(R"( {"a": [1, -2.5e3, 0, 0.25, true, false, null], "b": {"c": "x\u00e9\ud83d\ude00\n"}} )");
  CHECK(v.is_object() && v.as_object().size() == 2);
  const auto& a = v.at("a").as_array();
  CHECK(a.size() == 7);
  CHECK(a[0].as_int() == 1 && a[1].as_number() == -2500.0 && a[3].as_number() == 0.25);
  CHECK(a[4].as_bool() && !a[5].as_bool() && a[6].is_null());
  CHECK(v.at("b").at("c").as_string() == "x\xc3\xa9\xf0\x9f\x98\x80\n");
  CHECK(v.find("zz") == nullptr);
  CHECK(json_parse("1e400").as_number() == INFINITY);
  CHECK(json_parse("-1e-400").as_number() == 0.0);
  CHECK(json_parse("\"\xe2\x82\xac\"").as_string() == "\xe2\x82\xac");

  JsonParseOptions nf;
  nf.allow_nonfinite = true;
  CHECK(std::isnan(json_parse("NaN", nf).as_number()));
  CHECK(json_parse("[Infinity, -Infinity]", nf).as_array()[1].as_number() == -INFINITY);

  CHECK(rejects("NaN", "NaN is not valid JSON"));
  CHECK(rejects("", "empty document"));
  CHECK(rejects("[1,]", "expected a value"));
  CHECK(rejects("{\"a\":1,}", "expected a string key"));
  CHECK(rejects("{\"a\":1 \"b\":2}", "expected ',' or '}'"));
  CHECK(rejects("{\"a\":1, \"a\":2}", "duplicate key \"a\""));
  CHECK(rejects("01", "leading zero"));
  CHECK(rejects("1.", "after '.'"));
  CHECK(rejects("1e", "exponent"));
  CHECK(rejects("+1", "expected a value"));
  CHECK(rejects("[1] [2]", "after the top-level value"));
  CHECK(rejects("\"abc", "unterminated string"));
  CHECK(rejects("\"a\tb\"", "control character"));
  CHECK(rejects("\"\\x\"", "invalid escape"));
  CHECK(rejects("\"\\u12g4\"", "hex digit"));
  CHECK(rejects("\"\\udc00\"", "unpaired low surrogate"));
  CHECK(rejects("\"\\ud800x\"", "unpaired high surrogate"));
  CHECK(rejects("\"\xff\"", "invalid UTF-8"));
  CHECK(rejects("\"\xc3\"", "invalid UTF-8 continuation"));
  CHECK(rejects("\"\xc3", "truncated UTF-8"));
  CHECK(rejects("\"\xc0\xaf\"", "invalid UTF-8 sequence"));  // overlong
  CHECK(rejects("\"\xed\xa0\x80\"", "invalid UTF-8 sequence"));  // encoded surrogate
  CHECK(rejects("tru", "expected a value"));
  CHECK(rejects("// x\n1", "expected a value"));
  CHECK(rejects("[\n  1,\n  x]", "line 3, column 3"));
  JsonParseOptions shallow;
  shallow.max_depth = 3;
  CHECK(json_parse("[[[1]]]", shallow).is_array());
  CHECK(rejects("[[[[1]]]]", "nesting deeper than 3", shallow));
  CHECK(rejects(std::string(100000, '['), "nesting deeper than 64"));
  // typed accessors
  try {
    json_parse("\"s\"").as_number("field x");
    CHECK(false);
  } catch (const Error& e) {
    CHECK(std::string(e.what()) == "field x: expected number, got string");
  }
  try {
    json_parse("1.5").as_int("n");
    CHECK(false);
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("integer") != std::string::npos);
  }
  try {
    json_parse_file("/nonexistent/x.json");
    CHECK(false);
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::Io);
  }
  if (failures) std::printf("%d failures\n", failures);
  else std::printf("json: all passed\n");
  return failures ? 1 : 0;
}
