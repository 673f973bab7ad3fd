// tests/support/threads.hpp - helpers for concurrent tests: a start gate, a bounded join, and a
// thread's CPU time.
#pragma once

#include <pthread.h>  // pthread_getcpuclockid
#include <time.h>     // clock_gettime, CLOCK_THREAD_CPUTIME_ID

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace test_support {

/// Releases every waiting thread at once, so that contention starts together.
class start_gate {
 public:
  void wait() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return open_; });
  }
  void open() {
    {
      std::lock_guard lock(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

/// Runs functions on threads; join_within() waits for all of them at most `limit` and reports
/// whether they finished (a test then fails instead of hanging; the threads are detached).
class thread_group {
 public:
  thread_group() = default;
  thread_group(const thread_group&) = delete;
  thread_group& operator=(const thread_group&) = delete;
  ~thread_group() {
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }

  void spawn(std::function<void()> f) {
    threads_.emplace_back([this, f = std::move(f)] {
      f();
      {
        std::lock_guard lock(mu_);
        ++done_;
      }
      cv_.notify_all();
    });
  }

  /// True if every thread finished within `limit`; they are then joined.
  bool join_within(std::chrono::milliseconds limit) {
    std::unique_lock lock(mu_);
    bool all = cv_.wait_for(lock, limit, [&] { return done_ == threads_.size(); });
    lock.unlock();
    if (all) {
      for (auto& t : threads_) t.join();
    } else {
      for (auto& t : threads_) t.detach();  // the test fails; do not hang the runner
    }
    threads_.clear();
    return all;
  }

 private:
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::size_t done_ = 0;
};

/// CPU time the calling thread has used.
inline std::chrono::nanoseconds thread_cpu_time() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

/// CPU time of a std::thread, read from its native handle.
inline std::chrono::nanoseconds thread_cpu_time(std::thread& t) {
  clockid_t cid;
  pthread_getcpuclockid(t.native_handle(), &cid);
  timespec ts{};
  clock_gettime(cid, &ts);
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

/// Polls `pred` until it holds or `limit` passes; returns whether it held. Only for conditions
/// that have no notification (another process's or the server's state): a bounded poll every
/// `every`, never an unbounded wait.
template <class P>
bool eventually(P pred, std::chrono::milliseconds limit = std::chrono::seconds(10),
                std::chrono::milliseconds every = std::chrono::milliseconds(5)) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(every);  // polling external state with a bounded deadline
  }
  return pred();
}

}  // namespace test_support
