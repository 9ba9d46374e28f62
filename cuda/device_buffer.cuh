// Device allocations of the CUDA backend: typed owning buffers that count every byte (current and
// peak, process-wide) and turn allocation failure into OutOfMemory naming the size.
#pragma once
#include <atomic>
#include <string>
#include <utility>

#include "common.cuh"

namespace headkv::cu {

struct MemCounter {
  std::atomic<uint64_t> cur{0}, peak{0};
  void add(uint64_t b) {
    const uint64_t now = cur += b;
    uint64_t p = peak.load();
    while (now > p && !peak.compare_exchange_weak(p, now)) {
    }
  }
  void sub(uint64_t b) { cur -= b; }
};
MemCounter& mem_counter();

// Free device memory (bytes); fails with Unsupported when no device is usable.
uint64_t device_free_bytes();
// UnsupportedError unless the current device can run this build (compute capability 8.0+, and a
// kernel image for it); called before a context allocates anything.
void require_supported_device();
// Throws OutOfMemory naming `what` and the bytes when `bytes` exceed the free device memory
// (keeping `reserve` bytes for the CUDA runtime and cuBLAS).
void require_device_bytes(uint64_t bytes, const std::string& what, uint64_t reserve = 256ull << 20);

template <class T>
class DBuf {
 public:
  DBuf() = default;
  DBuf(const DBuf&) = delete;
  DBuf& operator=(const DBuf&) = delete;
  DBuf(DBuf&& o) noexcept { *this = std::move(o); }
  DBuf& operator=(DBuf&& o) noexcept {
    if (this != &o) {
      reset();
      p_ = o.p_;
      n_ = o.n_;
      o.p_ = nullptr;
      o.n_ = 0;
    }
    return *this;
  }
  ~DBuf() { reset(); }

  void alloc(size_t n, const char* what) {
    reset();
    if (n == 0) return;
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, n * sizeof(T));
    if (e != cudaSuccess) {
      cudaGetLastError();
      fail(ErrorKind::OutOfMemory, std::string("cannot allocate ") + what + " on the GPU: " +
                                       std::to_string(n * sizeof(T)) + " bytes requested (" + cudaGetErrorString(e) + ")");
    }
    p_ = static_cast<T*>(p);
    n_ = n;
    mem_counter().add(bytes());
  }
  // Grows to at least n elements (contents are not kept).
  void reserve(size_t n, const char* what) {
    if (n > n_) alloc(n, what);
  }
  void reset() {
    if (p_) {
      cudaFree(p_);
      mem_counter().sub(bytes());
    }
    p_ = nullptr;
    n_ = 0;
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }
  uint64_t bytes() const { return (uint64_t)n_ * sizeof(T); }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace headkv::cu
