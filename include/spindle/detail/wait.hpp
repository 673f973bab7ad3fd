// spindle/detail/wait.hpp - blocking without burning a core.
//
// Defines:
//   cpu_relax()        a pause hint for spin loops.
//   seq_cst_fence()    a full fence (store-load ordering) that also builds under ThreadSanitizer.
//   event_count        the "eventcount" of Vyukov and Folly: waiters register, re-check their
//                      condition, then sleep in the kernel; notifiers pay one load when nobody
//                      waits. Supports deadlines and std::stop_token.
//
// The protocol (waiter / notifier):
//
//   waiter:   for (;;) {                      notifier:
//               if (ready()) break;              make_ready();   // any atomic store
//               auto key = ec.prepare_wait();    ec.notify_all(); // or notify_one()
//               if (ready()) { ec.cancel_wait(); break; }
//               ec.wait(key);
//             }
//
// prepare_wait() announces the waiter before it re-checks; notify_*() issues a full fence before
// it looks for waiters. Whatever the interleaving, either the notifier sees the waiter (and wakes
// it) or the waiter's re-check sees the notifier's change: no wake-up is lost.
#pragma once

#include <atomic>
#include <chrono>
#include <cerrno>   // errno, ETIMEDOUT
#include <climits>  // INT_MAX for futex wake-all
#include <cstdint>
#include <stop_token>

#include "config.hpp"

#if defined(__linux__)
#include <linux/futex.h>  // FUTEX_WAIT_PRIVATE, FUTEX_WAKE_PRIVATE
#include <sys/syscall.h>  // SYS_futex
#include <unistd.h>       // syscall
#include <ctime>          // timespec
#else
#include <condition_variable>
#include <mutex>
#endif

namespace spindle::detail {

/// Tells the processor that this thread spins (x86 `pause`, Arm `yield`).
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
  asm volatile("yield" ::: "memory");
#endif
}

/// A sequentially consistent fence: orders this thread's earlier stores before its later loads.
/// g++ warns (-Wtsan) that ThreadSanitizer does not model fences; TSan checks data races, not
/// store-load ordering, so the warning is silenced here and only here.
inline void seq_cst_fence() noexcept {
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wtsan"
#endif
  std::atomic_thread_fence(std::memory_order_seq_cst);
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#pragma GCC diagnostic pop
#endif
}

/// A condition-agnostic sleep/wake primitive: see the protocol in the header comment.
/// Never allocates. Thread-safe. Spurious wake-ups happen; callers re-check their condition.
class event_count {
 public:
  using key = std::uint32_t;
  using clock = std::chrono::steady_clock;

  event_count() = default;
  event_count(const event_count&) = delete;
  event_count& operator=(const event_count&) = delete;

  /// Announces a waiter and returns the key to pass to wait(). The caller must re-check its
  /// condition after this call, then call wait(key) or cancel_wait().
  key prepare_wait() noexcept {
    // seq_cst: the increment must be ordered before the caller's re-check of its condition;
    // pairs with the fence in notify_*() (the Dekker store-load pattern).
    waiters_.fetch_add(1, std::memory_order_seq_cst);
    seq_cst_fence();
    // acquire: a notifier's epoch bump happens after its state change; seeing the bump means
    // seeing the change.
    return epoch_.load(std::memory_order_acquire);
  }

  /// Withdraws a waiter announced by prepare_wait() that decided not to sleep.
  void cancel_wait() noexcept { waiters_.fetch_sub(1, std::memory_order_relaxed); }

  /// Sleeps until a notify after prepare_wait() returned `k` (or spuriously). Ends the wait.
  void wait(key k) noexcept {
    sleep(k, nullptr);
    waiters_.fetch_sub(1, std::memory_order_relaxed);
  }

  /// As wait(k), but returns false if `deadline` passed before a wake-up.
  bool wait_until(key k, clock::time_point deadline) noexcept {
    bool woke = true;
    auto now = clock::now();
    if (now >= deadline) {
      woke = false;
    } else if (epoch_.load(std::memory_order_acquire) == k) {
      auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now);
      woke = sleep(k, &left);
    }
    waiters_.fetch_sub(1, std::memory_order_relaxed);
    return woke;
  }

  /// As wait(k), but a stop request on `st` wakes it too (the caller then sees stop_requested()).
  void wait(key k, const std::stop_token& st) noexcept {
    {
      std::stop_callback wake_on_stop(st, [this] { notify_all(); });
      if (!st.stop_requested()) sleep(k, nullptr);
    }
    waiters_.fetch_sub(1, std::memory_order_relaxed);
  }

  /// Wakes one sleeping waiter, if any. Cheap (a fence and a load) when nobody waits.
  void notify_one() noexcept { notify(1); }

  /// Wakes every sleeping waiter. Cheap (a fence and a load) when nobody waits.
  void notify_all() noexcept { notify(INT_MAX); }

  /// The number of announced waiters (approximate under concurrency; for tests and heuristics).
  std::uint32_t waiters() const noexcept { return waiters_.load(std::memory_order_relaxed); }

 private:
  void notify(int n) noexcept {
    // Pairs with the fence in prepare_wait(): orders the caller's state change before the load
    // of waiters_.
    seq_cst_fence();
    if (waiters_.load(std::memory_order_relaxed) == 0) return;
    // release: the bump publishes the caller's state change to a waiter that reads the epoch.
    epoch_.fetch_add(1, std::memory_order_release);
    wake(n);
  }

#if defined(__linux__)
  // Returns false on timeout.
  bool sleep(key k, const std::chrono::nanoseconds* rel) noexcept {
    timespec ts{};
    if (rel != nullptr) {
      ts.tv_sec = static_cast<time_t>(rel->count() / 1000000000);
      ts.tv_nsec = static_cast<long>(rel->count() % 1000000000);
    }
    long rc = ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&epoch_), FUTEX_WAIT_PRIVATE,
                        k, rel != nullptr ? &ts : nullptr, nullptr, 0);
    return !(rc == -1 && errno == ETIMEDOUT);
  }
  void wake(int n) noexcept {
    ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&epoch_), FUTEX_WAKE_PRIVATE, n,
              nullptr, nullptr, 0);
  }
  static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t) &&
                    std::atomic<std::uint32_t>::is_always_lock_free,
                "the futex word must be a plain 32-bit integer");
#else
  bool sleep(key k, const std::chrono::nanoseconds* rel) noexcept {
    std::unique_lock lock(mu_);
    auto changed = [&] { return epoch_.load(std::memory_order_acquire) != k; };
    if (rel == nullptr) {
      cv_.wait(lock, changed);
      return true;
    }
    return cv_.wait_for(lock, *rel, changed);
  }
  void wake(int n) noexcept {
    { std::lock_guard lock(mu_); }  // a sleeper between its check and its wait has now slept
    if (n == 1) cv_.notify_one(); else cv_.notify_all();
  }
  std::mutex mu_;
  std::condition_variable cv_;
#endif

  std::atomic<key> epoch_{0};               // bumped by each notify that found waiters
  std::atomic<std::uint32_t> waiters_{0};   // announced waiters
};

}  // namespace spindle::detail
