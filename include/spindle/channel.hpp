// spindle/channel.hpp - the channel concept: the contract every spindle queue keeps.
//
// A channel carries values of C::value_type from producers to consumers. Every in-process queue
// (bounded_queue, spsc_queue) and every Redis channel (redis::queue, redis::stream) models it, so
// the patterns (worker_pool, pipeline, fan_out, ...) run over any of them.
//
// The contract, for T = C::value_type:
//
//   status push(const T&) / push(T&&)    blocks while full; ok | closed. On closed the value is
//                                        NOT moved from.
//   status try_push(const T&) / (T&&)    never blocks; ok | full | closed (value untouched unless ok)
//   status push_for(T&&, duration)       ok | timeout | closed
//   status pop(T& out)                   blocks while empty; ok | closed (closed only once drained)
//   status pop(T& out, std::stop_token)  ok | closed | cancelled
//   status try_pop(T& out)               ok | empty | closed
//   status pop_for(T& out, duration)     ok | timeout | closed
//   std::optional<T> pop()               the value, or nullopt once closed and drained
//   void close()                         idempotent; wakes every blocked caller
//   bool closed() const
//
// Closing never loses data: after close(), every item pushed before it can still be popped;
// pushes fail with `closed`; pops return `closed` only when nothing is left.
//
// Ends: multi_producer_v<C> / multi_consumer_v<C> (and multi_producer(c) / multi_consumer(c) at
// run time, for any_channel) say whether several threads may push or pop at once.
#pragma once

#include <chrono>
#include <concepts>
#include <optional>
#include <stop_token>
#include <utility>

#include "status.hpp"

namespace spindle {

/// The channel contract above. Copy-pushes are required only when value_type is copyable, so
/// channels of move-only types model it too.
template <class C>
concept channel =
    requires(C& c, const C& cc, typename C::value_type& out, typename C::value_type&& v,
             std::chrono::milliseconds d, std::stop_token st) {
      typename C::value_type;
      { c.push(std::move(v)) } -> std::same_as<status>;
      { c.try_push(std::move(v)) } -> std::same_as<status>;
      { c.push_for(std::move(v), d) } -> std::same_as<status>;
      { c.pop(out) } -> std::same_as<status>;
      { c.pop(out, st) } -> std::same_as<status>;
      { c.try_pop(out) } -> std::same_as<status>;
      { c.pop_for(out, d) } -> std::same_as<status>;
      { c.pop() } -> std::same_as<std::optional<typename C::value_type>>;
      c.close();
      { cc.closed() } -> std::convertible_to<bool>;
    } &&
    (!std::copy_constructible<typename C::value_type> ||
     requires(C& c, const typename C::value_type& v) {
       { c.push(v) } -> std::same_as<status>;
       { c.try_push(v) } -> std::same_as<status>;
     });

/// Whether several threads may push to (multi_producer_v) or pop from (multi_consumer_v) a
/// channel at once. A channel says so with `static constexpr bool multi_producer` and
/// `multi_consumer` members; one that says nothing is taken to accept several on both ends (as
/// bounded_queue and the Redis channels do). spsc_queue says false for both. For any_channel
/// these are true ("decided at run time"): ask spindle::multi_producer(c) / multi_consumer(c),
/// which answer for its target. Components that run several threads on one end of a channel
/// refuse a single-ended one: at compile time where the thread count is, with
/// std::invalid_argument where it is known only at run time (worker_pool, fan_in, run()).
template <class C>
inline constexpr bool multi_producer_v = !requires { requires !C::multi_producer; };
template <class C>
inline constexpr bool multi_consumer_v = !requires { requires !C::multi_consumer; };

/// Whether several threads may push to `c` at once (any_channel: its target's answer).
template <class C>
bool multi_producer(const C& c) noexcept {
  if constexpr (requires { { c.target_multi_producer() } -> std::convertible_to<bool>; }) {
    return c.target_multi_producer();
  } else {
    (void)c;
    return multi_producer_v<C>;
  }
}
/// Whether several threads may pop from `c` at once (any_channel: its target's answer).
template <class C>
bool multi_consumer(const C& c) noexcept {
  if constexpr (requires { { c.target_multi_consumer() } -> std::convertible_to<bool>; }) {
    return c.target_multi_consumer();
  } else {
    (void)c;
    return multi_consumer_v<C>;
  }
}

}  // namespace spindle

#include "detail/any_channel.hpp"  // any_channel<T>: a type-erased reference to any channel
