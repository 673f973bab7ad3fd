// spindle/detail/ring.hpp - the pieces the queues share: slot storage, index arithmetic, the
// closed bit, the blocking call, and argument checks (the sleep/wake primitive,
// wake_all_event_count, and the one spin policy, spin_until, live in wait.hpp).
//
// Defines:
//   ring_index         position -> slot index (a mask when the capacity is a power of two).
//   closed_bit         the top bit of a queue's tail word: set once by close(), it makes every
//                      later claim of a position fail, so close() and push() cannot race.
//   storage<T>         raw, suitably aligned room for one T (constructed and destroyed by hand).
//   queue_options      (public, namespace spindle) how blocking calls spin before sleeping.
//   queue_spin         queue_options as a budget of the one spin policy (detail::spin_budget).
//   blocking_call      try, spin briefly (spin_until), then sleep on a wake_all_event_count
//                      until done, stopped or past a deadline: the blocking forms of both queues.
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
#include <type_traits>

#include "../status.hpp"
#include "../clock.hpp"  // detail::time_after: the saturating deadline
#include "config.hpp"
#include "wait.hpp"  // wake_all_event_count, spin_budget, spin_until


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
      : capacity_(capacity),
        mask_((capacity & (capacity - 1)) == 0 ? capacity - 1 : no_mask) {}

  std::size_t operator()(std::uint64_t pos) const noexcept {
    return mask_ != no_mask ? static_cast<std::size_t>(pos & mask_)
                            : static_cast<std::size_t>(pos % capacity_);
  }
  std::size_t capacity() const noexcept { return capacity_; }

 private:
  // No capacity is 2^64 (check_capacity caps it at 2^40), so no power of two has this mask.
  static constexpr std::uint64_t no_mask = ~std::uint64_t{0};
  std::size_t capacity_;
  std::uint64_t mask_;  // capacity - 1 when the capacity is a power of two (0 for 1), else no_mask
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

/// The budget of the one spin policy (detail::spin_until) that `o` asks for: o.spin pauses and
/// o.yields yields, the yields spread evenly among them (one after every o.spin / o.yields + 1
/// steps). Computed once, when a queue is made, so that no blocking call divides. Saturates.
inline spin_budget queue_spin(const queue_options& o) noexcept {
  const std::uint64_t total = std::uint64_t{o.spin} + o.yields;
  const std::uint64_t period = o.yields == 0 ? 0 : std::uint64_t{o.spin} / o.yields + 1;
  constexpr std::uint64_t most = UINT_MAX;
  return {static_cast<unsigned>(total < most ? total : most),
          static_cast<unsigned>(period < most ? period : most)};
}

using wait_clock = wake_all_event_count::clock;

/// The slow path of blocking_call, after its first attempt returned `busy`: spins, then sleeps.
/// Out of line, so that the fast path inlined at every push and pop is the attempt alone.
template <class Attempt>
[[gnu::noinline]] status blocking_wait(const Attempt& attempt, status busy,
                                       wake_all_event_count& ec, const spin_budget& spin,
                                       const std::stop_token* st,
                                       const wait_clock::time_point* deadline) {
  status s = busy;
  auto done = [&] {
    s = attempt();
    return s != busy;
  };
  if (deadline == nullptr) {
    // Invariant: a stop already requested ends the call after its one attempt, without the
    // spin (an item already there was returned by that attempt). Attacked by test_channel's
    // "pop and push with a stop already requested cost about a try, not a spin".
    if (st != nullptr && st->stop_requested()) return status::cancelled;
    if (respin_until(done, spin)) return s;
  } else {
    // Invariant: a timed call never spins past its deadline. A deadline already past returns
    // after the one attempt (pop_for(v, 0ns) costs a try, not the spin); a near one is checked
    // every 64 polls of the spin. Attacked by test_channel's "pop_for and push_for with a zero
    // or past timeout cost about a try, not a spin".
    if (wait_clock::now() >= *deadline) return status::timeout;
    std::uint32_t polls = 0;
    bool past = false;
    auto done_or_past = [&] {
      if (done()) return true;
      past = (++polls & 63) == 0 && wait_clock::now() >= *deadline;
      return past;
    };
    // Past the deadline during the spin: the sleep below sees it passed and tries once more.
    if (respin_until(done_or_past, spin) && !past) return s;
  }
  for (;;) {
    if (st != nullptr && st->stop_requested()) return status::cancelled;
    auto key = ec.prepare_wait();
    s = attempt();  // the re-check of the event count protocol
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

/// Runs `attempt` (one non-blocking try returning a status) until it returns something other
/// than `busy` (full for pushes, empty for pops): first a bounded spin (spin_until with `spin`),
/// then sleeps on `ec`, whose notifier is the opposite side of the queue. Returns cancelled when
/// `st` has a stop request, timeout when `deadline` passes; a last attempt is made before either.
/// The fast path is the one attempt, inlined into the caller: no budget arithmetic, no clock
/// read and no call before it (out of line, the pop's wrapper cost ~50 of the ~120 instructions
/// a push and a pop took together).
template <class Attempt>
[[gnu::always_inline]] inline status blocking_call(const Attempt& attempt, status busy,
                                                   wake_all_event_count& ec,
                                                   const spin_budget& spin,
                                                   const std::stop_token* st,
                                                   const wait_clock::time_point* deadline) {
  const status s = attempt();
  if (s != busy) return s;
  return blocking_wait(attempt, busy, ec, spin, st, deadline);
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
