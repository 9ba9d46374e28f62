// Minimal assertion macro for the C++ unit tests: counts failures, prints the first ones.
// Each test's main returns `failures ? 1 : 0`.
#pragma once
#include <cstdio>
#include <string>

#include "common/error.h"

static int failures = 0;
#define CHECK(c)                                                                         \
  do {                                                                                   \
    if (!(c) && ++failures < 20) std::printf("FAIL %s:%d %s\n", __FILE__, __LINE__, #c); \
  } while (0)

// The message of the headkv::Error that f() throws, after checking its kind; "" (and a failure) when
// nothing was thrown.
template <class F>
static std::string error_of(F&& f, headkv::ErrorKind want) {
  try {
    f();
  } catch (const headkv::Error& e) {
    CHECK(e.kind() == want);
    return e.what();
  }
  CHECK(!"no error thrown");
  return "";
}
