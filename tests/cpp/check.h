// Minimal assertion macro for the C++ unit tests: counts failures, prints the first ones.
// Each test's main returns `failures ? 1 : 0`.
#pragma once
#include <cstdio>

static int failures = 0;
#define CHECK(c)                                                                         \
  do {                                                                                   \
    if (!(c) && ++failures < 20) std::printf("FAIL %s:%d %s\n", __FILE__, __LINE__, #c); \
  } while (0)
