// spindle/detail/ring.hpp - the pieces the queues share: slot storage, index arithmetic, the
// closed bit, asymmetric fences, the sleep/wake primitive, the spin-then-sleep policy, and
// argument checks.
//
// Defines:
//   ring_index         position -> slot index (a mask when the capacity is a power of two).
//   closed_bit         the top bit of a queue's tail word: set once by close(), it makes every
//                      later claim of a position fail, so close() and push() cannot race.
//   storage<T>         raw, suitably aligned room for one T (constructed and destroyed by hand).
//   fence_light/heavy  asymmetric fences (membarrier): the fast path pays a compiler barrier,
//                      the thread about to sleep pays a system call.
//   wait_set           the queues' sleep/wake primitive (one wake-up call per sleep episode).
//   spin_then          the bounded spin a blocking call does before it sleeps.
//   queue_options      (public, namespace spindle) how blocking calls spin before sleeping.
//   blocking_call      try, spin briefly, then sleep on a wait_set until done, stopped or
//                      past a deadline: the blocking forms of both queues.
//   deadline_after     now + d on the wait clock (steady_clock), saturating.
//   check_capacity     capacity >= 1, else std::invalid_argument naming the function and value.
#pragma once

#include <bit>  // std::endian
#include <chrono>
#include <climits>  // INT_MAX
#include <cstddef>
#include <cstdint>
#include <exception>  // std::terminate
#include <memory>     // std::construct_at, std::destroy_at
#include <new>        // std::launder
#include <stdexcept>  // std::invalid_argument
#include <stop_token>
#include <string>
#include <thread>     // std::this_thread::yield
#include <type_traits>

#include "../status.hpp"
#include "config.hpp"
#include "wait.hpp"  // cpu_relax, seq_cst_fence, and the futex headers

#if defined(__linux__)
#include <linux/futex.h>       // FUTEX_WAIT_PRIVATE, FUTEX_WAKE_PRIVATE
#include <linux/membarrier.h>  // MEMBARRIER_CMD_*
#include <sys/syscall.h>       // SYS_futex, SYS_membarrier
#include <unistd.h>       // syscall
#include <ctime>          // timespec
#else
#include <condition_variable>
#include <mutex>
#endif

namespace spindle {

/// How the blocking calls of a queue wait (bounded_queue, spsc_queue): a bounded spin, then a
/// sleep in the kernel. Use with designated initializers:
///
///   spindle::bounded_queue<int> q(1024, {.spin = 4096});
struct queue_options {
  /// Re-tries, each after a pause instruction, before a blocking call sleeps: tens of
  /// microseconds by default, long enough to ride out a hand-off across cores without a system
  /// call. 0: no pause-spin.
  std::uint32_t spin = 1024;
  /// Re-tries after sched_yield(), spread evenly through the spin (by default one every 64
  /// pauses): when the thread that would end the wait shares this core, it runs at once instead
  /// of after the whole spin. Cheap when the core has nothing else to run.
  std::uint32_t yields = 16;
};

}  // namespace spindle

namespace spindle::detail {

/// Set in a tail word once the queue is closed. Positions stay far below it (2^62 pushes).
inline constexpr std::uint64_t closed_bit = std::uint64_t{1} << 63;

/// Maps an ever-increasing position to a slot index; a mask when the capacity is a power of two
/// (the common case, one AND), a division otherwise. Never allocates. Thread-safe (immutable).
class ring_index {
 public:
  explicit ring_index(std::size_t capacity) noexcept
      : capacity_(capacity), mask_((capacity & (capacity - 1)) == 0 ? capacity - 1 : 0) {}

  std::size_t operator()(std::uint64_t pos) const noexcept {
    return mask_ != 0 || capacity_ == 1 ? static_cast<std::size_t>(pos & mask_)
                                        : static_cast<std::size_t>(pos % capacity_);
  }
  std::size_t capacity() const noexcept { return capacity_; }

 private:
  std::size_t capacity_;
  std::uint64_t mask_;  // capacity - 1 when the capacity is a power of two, else 0
};

/// Raw room for one T. The owner tracks whether an object lives there.
template <class T>
struct storage {
  alignas(T) unsigned char bytes[sizeof(T)];

  T* get() noexcept { return std::launder(reinterpret_cast<T*>(bytes)); }
  template <class... A>
  void construct(A&&... a) noexcept(std::is_nothrow_constructible_v<T, A...>) {
    std::construct_at(reinterpret_cast<T*>(bytes), static_cast<A&&>(a)...);
  }
  void destroy() noexcept { std::destroy_at(get()); }
};

/// Whether asymmetric fences are available: membarrier(2) with PRIVATE_EXPEDITED (Linux >= 4.14),
/// registered once per process on first use. Thread-safe (a function-local static).
inline bool asymmetric_fences() noexcept {
#if defined(__linux__) && defined(SYS_membarrier)
  static const bool ok = [] {
    long cmds = ::syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
    if (cmds < 0 || (cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0) return false;
    return ::syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
  }();
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

/// The sleep/wake primitive of the queues: an event count whose notify is free when nobody
/// sleeps and costs one wake-up system call per sleep episode, not one per item.
///
/// detail::event_count keeps its waiter count until each woken waiter runs again, so every
/// notify in the microseconds a woken thread takes to be scheduled makes another FUTEX_WAKE
/// call: a producer feeding a consumer that has just gone to sleep pays a system call per item.
/// Here one 64-bit word holds (epoch << 32 | waiters registered in this epoch); a notify that
/// finds waiters moves to the next epoch with zero waiters in one CAS and wakes them all, so the
/// notifies that follow see no waiter and cost a load. The store-load fence a notifier needs is
/// asymmetric (fence_light/fence_heavy): the waiter pays for it, the fast path does not.
/// Waiters of an old epoch know they were woken (the epoch moved) and do not deregister.
///
/// Protocol (as event_count): key = prepare_wait(); re-check the condition; then wait(key) or
/// cancel_wait(key). Never allocates. Thread-safe. Spurious wake-ups happen.
class wait_set {
 public:
  using key = std::uint32_t;
  using clock = std::chrono::steady_clock;

  wait_set() = default;
  wait_set(const wait_set&) = delete;
  wait_set& operator=(const wait_set&) = delete;

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

/// The bounded spin of a blocking call: pause-spins with yields spread among them (a yield lets
/// another thread on this core run when threads outnumber cores), then the caller sleeps.
/// again() returns false once the budget (queue_options) is spent.
class spin_then {
 public:
  spin_then() noexcept : spin_then(queue_options{}) {}
  explicit spin_then(const queue_options& o) noexcept
      : total_(std::uint64_t{o.spin} + o.yields),
        period_(o.yields == 0 ? 0 : std::uint64_t{o.spin} / o.yields + 1) {}

  bool again() noexcept {
    if (n_ >= total_) return false;
    ++n_;
    if (period_ != 0 && n_ % period_ == 0) {
      std::this_thread::yield();
    } else {
      cpu_relax();
    }
    return true;
  }

 private:
  std::uint64_t total_;   // pauses + yields
  std::uint64_t period_;  // every period_-th step yields (0: never)
  std::uint64_t n_ = 0;
};

using wait_clock = wait_set::clock;

/// now + d, saturating at time_point::max() (a wait "for a year" must not overflow).
template <class Rep, class Period>
wait_clock::time_point deadline_after(std::chrono::duration<Rep, Period> d) {
  auto now = wait_clock::now();
  if (d <= d.zero()) return now;
  if (d >= std::chrono::hours(24 * 365 * 100)) return wait_clock::time_point::max();
  return now + std::chrono::ceil<wait_clock::duration>(d);
}

/// Runs `attempt` (one non-blocking try returning a status) until it returns something other
/// than `busy` (full for pushes, empty for pops): first a bounded spin, then sleeps on `ec`,
/// whose notifier is the opposite side of the queue. Returns cancelled when `st` has a stop
/// request, timeout when `deadline` passes; a last attempt is made before either.
template <class Attempt>
status blocking_call(const Attempt& attempt, status busy, wait_set& ec,
                     const queue_options& options, const std::stop_token* st,
                     const wait_clock::time_point* deadline) {
  status s = attempt();
  if (s != busy) return s;
  for (spin_then spin(options); spin.again();) {
    s = attempt();
    if (s != busy) return s;
  }
  for (;;) {
    if (st != nullptr && st->stop_requested()) return status::cancelled;
    auto key = ec.prepare_wait();
    s = attempt();  // the re-check of the wait_set protocol
    if (s != busy) {
      ec.cancel_wait(key);
      return s;
    }
    if (deadline != nullptr) {
      if (!ec.wait_until(key, *deadline)) {
        s = attempt();
        return s == busy ? status::timeout : s;
      }
    } else if (st != nullptr) {
      ec.wait(key, *st);
    } else {
      ec.wait(key);
    }
    s = attempt();
    if (s != busy) return s;
  }
}

/// Throws std::invalid_argument unless capacity >= 1.
inline void check_capacity(const char* who, std::size_t capacity) {
  if (capacity == 0)
    throw std::invalid_argument(std::string(who) + ": capacity must be >= 1, got " +
                                std::to_string(capacity));
  if (capacity > (std::size_t{1} << 40))
    throw std::invalid_argument(std::string(who) + ": capacity too large, got " +
                                std::to_string(capacity));
}

/// The requirements both queues put on their element type, with how to comply.
template <class T>
constexpr void check_element() {
  static_assert(std::is_nothrow_move_constructible_v<T> && std::is_nothrow_move_assignable_v<T>,
                "spindle queues need a nothrow move constructor and move assignment: mark them "
                "noexcept, or store std::unique_ptr<T> instead");
  static_assert(std::is_nothrow_destructible_v<T>, "spindle queues need a noexcept destructor");
}

}  // namespace spindle::detail
