// spindle/detail/ring.hpp - the pieces the queues share: slot storage, index arithmetic, the
// closed bit, the spin-then-sleep policy, and argument checks (the sleep/wake primitive,
// wait_set, lives in wait.hpp).
//
// Defines:
//   ring_index         position -> slot index (a mask when the capacity is a power of two).
//   closed_bit         the top bit of a queue's tail word: set once by close(), it makes every
//                      later claim of a position fail, so close() and push() cannot race.
//   storage<T>         raw, suitably aligned room for one T (constructed and destroyed by hand).
//   spin_then          the bounded spin a blocking call does before it sleeps.
//   queue_options      (public, namespace spindle) how blocking calls spin before sleeping.
//   blocking_call      try, spin briefly, then sleep on a wait_set until done, stopped or
//                      past a deadline: the blocking forms of both queues.
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
#include "../clock.hpp"  // detail::time_after: the saturating deadline
#include "config.hpp"
#include "wait.hpp"  // wait_set, cpu_relax


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

/// Set in a tail word once the queue is closed: bit 63. Positions count pushes in the low 63
/// bits, so they would reach it only after 2^63 pushes (centuries at 10^9 pushes a second), and
/// the slots' turn numbers, 2 * position (+ 1), stay below 2^64.
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
  // Invariant: a timed call never spins past its deadline. A deadline already past returns
  // after the one attempt (pop_for(v, 0ns) costs a try, not the spin); a near one is checked
  // every 64 steps of the spin. Attacked by test_channel's "pop_for and push_for with a zero or
  // past timeout cost about a try, not a spin".
  if (deadline != nullptr && wait_clock::now() >= *deadline) return status::timeout;
  std::uint32_t steps = 0;
  for (spin_then spin(options); spin.again();) {
    s = attempt();
    if (s != busy) return s;
    if (deadline != nullptr && (++steps & 63) == 0 && wait_clock::now() >= *deadline) break;
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
