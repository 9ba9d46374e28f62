// Overflow-safe size arithmetic and a memory check before every allocation whose size comes from a
// file or a request (tensor sizes, vocabulary, n_ctx, KV arena, logits). Linux over-commits: an
// allocation larger than the machine can back "succeeds" and the process is killed later when the
// pages are touched, so sizes are compared with the memory actually available first.
#pragma once
#include <cstdint>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include "common/error.h"

namespace headkv {

// a * b and a + b; throw OutOfMemory naming `what` when the result does not fit 64 bits.
uint64_t checked_mul(uint64_t a, uint64_t b, const std::string& what);
uint64_t checked_add(uint64_t a, uint64_t b, const std::string& what);

// Bytes this process can still allocate: the smallest of MemAvailable (/proc/meminfo), the cgroup
// memory limit minus its usage, and RLIMIT_AS / RLIMIT_DATA minus what is mapped. When
// HEADKV_MEMORY_LIMIT (bytes) is set, it caps the result (for tests and shared machines).
uint64_t available_memory_bytes();

// Throws OutOfMemory "cannot allocate <what>: N bytes requested, M bytes available" when `bytes`
// exceeds available_memory_bytes(). Cheap for small requests (< 64 MiB are not checked).
void check_alloc(uint64_t bytes, const std::string& what);

// v.assign(n, value) after check_alloc(n * sizeof(T)); a std::bad_alloc that still happens becomes
// the same typed error.
template <class T>
void checked_assign(std::vector<T>& v, uint64_t n, const std::string& what, const T& value = T()) {
  const uint64_t bytes = checked_mul(n, sizeof(T), what);
  if (n > std::numeric_limits<size_t>::max() / sizeof(T) || n > v.max_size())
    fail(ErrorKind::OutOfMemory, "cannot allocate " + what + ": " + std::to_string(bytes) + " bytes requested");
  check_alloc(bytes, what);
  try {
    v.assign((size_t)n, value);
  } catch (const std::bad_alloc&) {
    fail(ErrorKind::OutOfMemory, "cannot allocate " + what + ": " + std::to_string(bytes) +
                                     " bytes requested, " + std::to_string(available_memory_bytes()) +
                                     " bytes available");
  }
}

}  // namespace headkv
