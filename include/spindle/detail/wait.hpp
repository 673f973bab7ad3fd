// spindle/detail/wait.hpp - blocking without burning a core.
//
// Defines:
//   cpu_relax()          a pause hint for spin loops.
//   seq_cst_fence()      a full fence (store-load ordering) that also builds under ThreadSanitizer.
//   fence_light/heavy    asymmetric fences (membarrier): the fast path pays a compiler barrier,
//                        the thread about to sleep pays a system call.
//   default_spin, default_yield_every, spin_budget, spin_until, respin_until,
//   spin_then_yield_until, adaptive_spin
//                        the one spin-then-sleep policy (how long a thread polls before it
//                        sleeps, and how it waits between polls), tunable in one place.
//   The pair of event counts (Vyukov, Folly): waiters register, re-check their condition, then
//   sleep in the kernel (a futex). They differ in who wakes and who pays for the fence:
//   wake_all_event_count  notify() wakes every registered waiter and starts a new epoch, so the
//                        notifies that follow cost a load; the store-load fence is asymmetric
//                        (the waiter pays a membarrier system call, the notifier a compiler
//                        barrier). For queues: a notify on every push, waiters rare.
//   wake_one_event_count notify_one() or notify_all(); symmetric fences (a seq_cst fence on both
//                        sides, no system call unless someone sleeps). For futures, limiters and
//                        one-of-N sleepers.
//
// The protocol (waiter / notifier):
//
//   waiter:   for (;;) {                          notifier:
//               if (ready()) break;                  make_ready();   // any atomic store
//               auto key = ws.prepare_wait();        ws.notify();
//               if (ready()) { ws.cancel_wait(key); break; }
//               ws.wait(key);
//             }
//
// prepare_wait() registers the waiter before it re-checks; notify() fences before it looks for
// waiters. Whatever the interleaving, either the notifier sees the waiter (and wakes it) or the
// waiter's re-check sees the notifier's change: no wake-up is lost.
#pragma once

#include <atomic>
#include <bit>  // std::endian: the futex is one half of a 64-bit word
#include <chrono>
#include <cerrno>     // errno, ETIMEDOUT
#include <climits>    // INT_MAX for futex wake-all
#include <cstdint>
#include <exception>  // std::terminate
#include <stop_token>
#include <thread>  // std::this_thread::yield

#include "config.hpp"

#if defined(__linux__)
#include <linux/futex.h>       // FUTEX_WAIT_PRIVATE, FUTEX_WAKE_PRIVATE
#include <linux/membarrier.h>  // MEMBARRIER_CMD_*
#include <sys/syscall.h>       // SYS_futex, SYS_membarrier
#include <unistd.h>            // syscall

#include <ctime>  // timespec
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

/// The one spin-then-sleep policy of spindle (queues, thread_pool, futures, actors, map_reduce,
/// concurrency_limiter, pipelines): a thread about to sleep first polls its condition a bounded
/// number of times, a pause instruction between two polls except every `default_yield_every`-th
/// time, where it yields its core instead (on a busy machine, or with every thread on one core,
/// the thread it waits for can then run at once instead of after the whole spin); then it
/// sleeps in the kernel.
///
/// Invariant: spinning is a latency shortcut only; every caller is correct with 0 polls (it
/// re-checks under its event count or lock before it sleeps). Attacked by test_channel's
/// "blocking calls are correct without any spin" (queues with spin 0 and yields 0).
///
/// These two constants are the one place to tune it. A call site that needs another budget
/// passes it to spin_until() and says why at the call: queue_options (per queue),
/// thread_pool_options::spin and actor_options::spin (per object), map_reduce's 256 and
/// concurrency_limiter's 64 polls, the pipeline's adaptive_spin.
///
/// Cost: the poll loop reads no clock and divides nothing (a countdown finds the yield steps; a
/// timed caller reads the clock every 64 polls), and a caller whose first poll succeeds pays
/// only that poll. A blocking queue call makes its one attempt before it touches the budget (an
/// earlier draft derived the budget, with a division, before the attempt: 43 more instructions
/// per item pushed and popped, and 1P1C throughput 15-25% lower on one core).
inline constexpr unsigned default_spin = 2048;
inline constexpr unsigned default_yield_every = 64;

/// A spin budget: `polls` polls after the first, and every `yield_every`-th wait between two
/// polls is a yield of the core instead of a pause (0: never yields).
struct spin_budget {
  unsigned polls = default_spin;
  unsigned yield_every = default_yield_every;
};

/// For a caller whose own poll of `ready()` has just failed: up to `b.polls` times, waits (a
/// pause, or a yield every b.yield_every-th time) and polls again. Returns true as soon as
/// ready() does, false once the budget is spent. Never sleeps in the kernel; no clock read, no
/// division.
template <class Ready>
bool respin_until(Ready&& ready, spin_budget b) {
  unsigned to_yield = b.yield_every;
  for (unsigned i = 0; i < b.polls; ++i) {
    if (b.yield_every != 0 && --to_yield == 0) {
      to_yield = b.yield_every;
      std::this_thread::yield();
    } else {
      cpu_relax();
    }
    if (ready()) return true;
  }
  return false;
}

/// The policy's spin: polls `ready()` at once, then as respin_until(ready, b): ready() runs at
/// most b.polls + 1 times, with b.polls pauses or yields between. Returns true as soon as
/// ready() does (its first true answer), false once the budget is spent.
template <class Ready>
bool spin_until(Ready&& ready, spin_budget b) {
  return ready() || respin_until(ready, b);
}

/// spin_until with `polls` polls and the default yield period.
template <class Ready>
bool spin_until(Ready&& ready, unsigned polls) {
  return spin_until(ready, spin_budget{polls, default_yield_every});
}

/// For a wait with nothing to sleep on, that another thread ends within a few instructions (a
/// push in progress that close() waits for): spins as spin_until(ready, b), then yields the core
/// until ready(). Never sleeps in the kernel; use only where the wait is bounded by the other
/// thread's progress, never where it may last while that thread is idle.
template <class Ready>
void spin_then_yield_until(Ready&& ready, spin_budget b) {
  if (spin_until(ready, b)) return;
  while (!ready()) std::this_thread::yield();
}

/// The policy for a waiter whose wake-ups come at an unknown pace (a pipeline stage's queue):
/// spin_until with a budget that learns, shared by the object's waiters. The budget doubles (up
/// to `most`) when the condition came true during a spin, and halves (down to `least`, a short
/// probe so that a faster feed is noticed) when the waiter had to sleep anyway, so a waiter fed
/// more slowly than its spin stops burning a core on it.
/// Usage: auto r = a.spin(ready); ...sleep if still needed...; a.learn(r, slept).
/// Thread-safe; the budget is a relaxed heuristic (a lost update only misjudges once).
class adaptive_spin {
 public:
  /// What one spin did, for learn().
  struct result {
    unsigned budget;  // the budget it spun with
    bool spun;        // the first poll failed, so it spun (and maybe gave up)
  };

  /// A budget between `least` and `most` polls, starting at `most`; `yield_every` as in
  /// spin_budget.
  constexpr adaptive_spin(unsigned least, unsigned most,
                          unsigned yield_every = default_yield_every) noexcept
      : least_(least), most_(most), yield_every_(yield_every), budget_(most) {}

  /// spin_until(ready, budget()); reports what it did.
  template <class Ready>
  result spin(Ready&& ready) {
    // relaxed: a heuristic (see the class comment).
    const unsigned budget = budget_.load(std::memory_order_relaxed);
    if (ready()) return {budget, false};
    respin_until(ready, spin_budget{budget, yield_every_});
    return {budget, true};
  }

  /// Adapts the budget: halves it when the waiter slept after the spin, doubles it when the
  /// condition came during the spin; leaves it when the condition held at once.
  void learn(result r, bool slept) noexcept {
    // relaxed: a heuristic (see the class comment).
    if (slept) {
      budget_.store(r.budget / 2 > least_ ? r.budget / 2 : least_, std::memory_order_relaxed);
    } else if (r.spun) {
      budget_.store(r.budget > most_ / 2 ? most_ : r.budget * 2, std::memory_order_relaxed);
    }
  }

  /// The budget the next spin uses.
  unsigned budget() const noexcept { return budget_.load(std::memory_order_relaxed); }

 private:
  unsigned least_, most_, yield_every_;
  std::atomic<unsigned> budget_;
};

/// Whether asymmetric fences are available: membarrier(2) with PRIVATE_EXPEDITED (Linux >= 4.14),
/// registered once per process on first use. Thread-safe. The answer is kept in one relaxed
/// byte rather than a function-local static, whose guard check cost every fence_light() a
/// few instructions more on the queues' fast paths. Two threads asking first may both query and
/// register: both are idempotent. A thread that reads 1 knows the registration happened (it
/// precedes the store), so a fence_heavy() of any thread may rely on it.
inline bool asymmetric_fences() noexcept {
#if defined(__linux__) && defined(SYS_membarrier)
  // -1: not asked yet; 0: unavailable; 1: registered.
  static constinit std::atomic<signed char> state{-1};
  // relaxed: the value is the same for every thread once known; see above for registration.
  signed char s = state.load(std::memory_order_relaxed);
  if (s >= 0) [[likely]] return s != 0;
  long cmds = ::syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
  bool ok = cmds >= 0 && (cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0 &&
            ::syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
  // release: publishes nothing but the answer; the registration is a system call, ordered
  // before this store in this thread.
  state.store(ok ? 1 : 0, std::memory_order_release);
  return ok;
#else
  return false;
#endif
}

/// The cheap half of an asymmetric Dekker pair: orders this thread's earlier stores before its
/// later loads against a thread that runs fence_heavy(). With membarrier, only a compiler
/// barrier (the heavy side makes every running thread of the process execute a full barrier);
/// without it, a full fence. Used on the queues' fast paths; fence_heavy() only before a sleep.
inline void fence_light() noexcept {
  if (asymmetric_fences()) {
    std::atomic_signal_fence(std::memory_order_seq_cst);  // the compiler must not reorder
  } else {
    seq_cst_fence();
  }
}

/// The expensive half: a system call (a few microseconds) that orders against every
/// fence_light() in the process. Callers are about to sleep or to close, never on a fast path.
inline void fence_heavy() noexcept {
#if defined(__linux__) && defined(SYS_membarrier)
  if (asymmetric_fences()) {
    seq_cst_fence();  // this thread's own store-load order
    if (::syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0) return;
    // Refused (a child after fork() whose registration did not carry over): register again,
    // else fall back to the global command, slower but needing no registration.
    if (::syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0 &&
        ::syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0)
      return;
    if (::syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) == 0) return;
    // Light sides have only a compiler barrier; nothing can restore the guarantee here.
    std::terminate();
  }
#endif
  seq_cst_fence();
}

/// The sleep/wake primitive of spindle's queues: an event count whose notify is free when
/// nobody sleeps and costs one wake-up system call per sleep episode, not one per item.
///
/// A plain event count keeps its waiter count until each woken waiter runs again, so every
/// notify in the microseconds a woken thread takes to be scheduled makes another FUTEX_WAKE
/// call: a producer feeding a consumer that has just gone to sleep pays a system call per item.
/// Here one 64-bit word holds (epoch << 32 | waiters registered in this epoch); a notify that
/// finds waiters moves to the next epoch with zero waiters in one CAS and wakes them all, so the
/// notifies that follow see no waiter and cost a load. The store-load fence a notifier needs is
/// asymmetric (fence_light/fence_heavy): the waiter pays for it, the fast path does not.
/// Waiters of an old epoch know they were woken (the epoch moved) and do not deregister.
///
/// Protocol (see the header comment): key = prepare_wait(); re-check the condition; then wait(key) or
/// cancel_wait(key). Never allocates. Thread-safe. Spurious wake-ups happen.
class wake_all_event_count {
 public:
  using key = std::uint32_t;
  using clock = std::chrono::steady_clock;

  wake_all_event_count() = default;
  wake_all_event_count(const wake_all_event_count&) = delete;
  wake_all_event_count& operator=(const wake_all_event_count&) = delete;

  /// Registers a waiter in the current epoch; the caller re-checks its condition next.
  key prepare_wait() noexcept {
    // seq_cst + heavy fence: the registration is ordered before the caller's re-check; pairs
    // with the light fence in notify() (the Dekker store-load pattern, asymmetric: sleeping is
    // the slow path, so it pays).
    std::uint64_t old = word_.fetch_add(1, std::memory_order_seq_cst);
    fence_heavy();
    return static_cast<key>(old >> 32);
  }

  /// Withdraws a registration that decided not to sleep.
  void cancel_wait(key k) noexcept { deregister(k); }

  /// Sleeps until a notify moves the epoch past `k`.
  void wait(key k) noexcept {
    while (epoch() == k) sleep(k, nullptr);
  }

  /// As wait(k); returns false if `deadline` passed first (the registration is then withdrawn).
  bool wait_until(key k, clock::time_point deadline) noexcept {
    for (;;) {
      if (epoch() != k) return true;
      auto now = clock::now();
      if (now >= deadline) {
        deregister(k);
        return epoch() != k;
      }
      auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now);
      sleep(k, &left);
    }
  }

  /// As wait(k), but a stop request on `st` ends it too (the caller sees stop_requested()).
  void wait(key k, const std::stop_token& st) noexcept {
    std::stop_callback wake_on_stop(st, [this] { notify(); });
    while (epoch() == k && !st.stop_requested()) sleep(k, nullptr);
    if (epoch() == k) deregister(k);
  }

  /// Wakes every registered waiter. A fence and a load when nobody waits.
  void notify() noexcept {
    // Pairs with the heavy fence in prepare_wait(): orders the caller's state change before
    // the load of the word.
    fence_light();
    std::uint64_t w = word_.load(std::memory_order_relaxed);
    while ((w & count_mask) != 0) {
      // release: a waiter that reads the new epoch (acquire, in epoch()) sees the caller's
      // state change.
      if (word_.compare_exchange_weak(w, (w & ~count_mask) + epoch_one, std::memory_order_release,
                                      std::memory_order_relaxed)) {
        wake_all();
        return;
      }
    }
  }

  /// Waiters registered in the current epoch (approximate; for tests).
  std::uint32_t waiters() const noexcept {
    return static_cast<std::uint32_t>(word_.load(std::memory_order_relaxed) & count_mask);
  }

 private:
  static constexpr std::uint64_t count_mask = 0xffffffffu;
  static constexpr std::uint64_t epoch_one = std::uint64_t{1} << 32;

  key epoch() const noexcept {
    // acquire: pairs with the release CAS in notify().
    return static_cast<key>(word_.load(std::memory_order_acquire) >> 32);
  }

  // Removes one registration of epoch k, unless a notify already cleared that epoch's count.
  void deregister(key k) noexcept {
    std::uint64_t w = word_.load(std::memory_order_relaxed);
    while (static_cast<key>(w >> 32) == k && (w & count_mask) != 0) {
      // relaxed: only the count changes; nothing is published.
      if (word_.compare_exchange_weak(w, w - 1, std::memory_order_relaxed,
                                      std::memory_order_relaxed))
        return;
    }
  }

#if defined(__linux__)
  // The futex is the epoch half of the word.
  std::uint32_t* futex_word() noexcept {
    static_assert(std::endian::native == std::endian::little ||
                      std::endian::native == std::endian::big,
                  "mixed-endian targets are not supported");
    constexpr int high = std::endian::native == std::endian::little ? 1 : 0;
    return reinterpret_cast<std::uint32_t*>(&word_) + high;
  }
  void sleep(key k, const std::chrono::nanoseconds* rel) noexcept {
    timespec ts{};
    if (rel != nullptr) {
      ts.tv_sec = static_cast<time_t>(rel->count() / 1000000000);
      ts.tv_nsec = static_cast<long>(rel->count() % 1000000000);
    }
    ::syscall(SYS_futex, futex_word(), FUTEX_WAIT_PRIVATE, k, rel != nullptr ? &ts : nullptr,
              nullptr, 0);
  }
  void wake_all() noexcept {
    ::syscall(SYS_futex, futex_word(), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
  }
  static_assert(sizeof(std::atomic<std::uint64_t>) == sizeof(std::uint64_t) &&
                    std::atomic<std::uint64_t>::is_always_lock_free,
                "the wait word must be a plain 64-bit integer");
#else
  void sleep(key k, const std::chrono::nanoseconds* rel) noexcept {
    std::unique_lock lock(mu_);
    auto moved = [&] { return epoch() != k; };
    if (rel == nullptr) {
      cv_.wait(lock, moved);
    } else {
      cv_.wait_for(lock, *rel, moved);
    }
  }
  void wake_all() noexcept {
    { std::lock_guard lock(mu_); }  // a sleeper between its check and its wait has now slept
    cv_.notify_all();
  }
  std::mutex mu_;
  std::condition_variable cv_;
#endif

  std::atomic<std::uint64_t> word_{0};  // epoch << 32 | waiters registered in this epoch
};

/// A condition-agnostic sleep/wake primitive with notify_one: the protocol of wake_all_event_count (key =
/// prepare_wait(); re-check; wait(key) or cancel_wait()), for waiters of which one at a time
/// should wake. Its waiter count stays up until a woken waiter runs again, so a notify soon after
/// a wake-up may make a redundant wake-up call; where every waiter should wake on a hot notify
/// path, wake_all_event_count is cheaper.
/// Never allocates. Thread-safe. Spurious wake-ups happen; callers re-check their condition.
class wake_one_event_count {
 public:
  using key = std::uint32_t;
  using clock = std::chrono::steady_clock;

  wake_one_event_count() = default;
  wake_one_event_count(const wake_one_event_count&) = delete;
  wake_one_event_count& operator=(const wake_one_event_count&) = delete;

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
