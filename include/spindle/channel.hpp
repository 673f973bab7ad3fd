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

}  // namespace spindle

#include "detail/any_channel.hpp"  // any_channel<T>: a type-erased reference to any channel
