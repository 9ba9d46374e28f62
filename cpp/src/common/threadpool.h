// A small fixed-size thread pool with a blocking parallel_for.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace headkv {

// Threads used when none are asked for: half the CPUs this process may run on (at least 1), about
// the physical cores. Every parallel step waits for its slowest thread, so a thread that shares a
// core with another process stalls all of them (BENCHMARKS.md, thread count).
int default_thread_count();

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls fn(begin, end) over [0, n) split into one contiguous chunk per thread
  // (chunks rounded to multiples of `grain`). Returns when all chunks are done.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain = 1);

  // Calls fn(thread_index, n_threads) once on every thread. Calls from several threads (contexts
  // sharing one pool) take turns.
  void run_on_all(const std::function<void(int, int)>& fn);

 private:
  void worker(int idx);
  int n_threads_;
  std::vector<std::thread> workers_;
  // Workers spin briefly on `generation_` (decode issues hundreds of short jobs per token, where a
  // condition-variable wake-up would cost more than the job), then sleep on cv_; the caller
  // likewise spins, then sleeps on cv_done_ (spinning alone collapses when cores are oversubscribed).
  std::mutex mu_, mu_done_;
  std::mutex call_mu_;  // one caller's job at a time
  std::condition_variable cv_, cv_done_;
  const std::function<void(int, int)>* job_ = nullptr;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace headkv
