// spindle/redis/detail/channel_pops.hpp - the channel-interface pops that redis::queue and
// redis::stream share.
//
// channel_pops<Derived, T> gives the pop side of the channel contract (channel.hpp): pop(T&),
// pop(T&, stop_token), try_pop, pop_for, the optional-returning pop(), and ack_last /
// nack_last. Derived provides, and befriends the facade for:
//
//   status pop_value(T&, std::optional<steady_clock::time_point> deadline, std::stop_token,
//                    bool may_block);       // acks this thread's previous value, pops the next
//   bool settle_last(const char* mode);     // "ack" | "nack" this thread's last value
#pragma once

#include <chrono>
#include <optional>
#include <stop_token>

#include "spindle/status.hpp"

namespace spindle::redis::detail {

template <class Derived, class T>
class channel_pops {
 public:
  /// Pops a value, blocking while none (acks this thread's previous value first: see the
  /// channel's header comment). Returns ok | closed. Thread-safe.
  status pop(T& out) { return self().pop_value(out, std::nullopt, {}, true); }
  /// Returns ok | closed | cancelled; st is checked every poll_interval. Thread-safe.
  status pop(T& out, std::stop_token st) { return self().pop_value(out, std::nullopt, st, true); }
  /// Never blocks. Returns ok | empty | closed. Thread-safe.
  status try_pop(T& out) { return self().pop_value(out, clock::now(), {}, false); }
  /// Returns ok | timeout | closed. Thread-safe.
  template <class Rep, class Period>
  status pop_for(T& out, std::chrono::duration<Rep, Period> d) {
    return self().pop_value(out, clock::now() + std::chrono::ceil<std::chrono::milliseconds>(d),
                            {}, true);
  }
  /// The value, or nullopt once closed and nothing is pending. Thread-safe.
  std::optional<T> pop() {
    T v{};
    if (pop(v) == status::ok) return v;
    return std::nullopt;
  }
  /// Acknowledges this thread's last value from pop(T&). Returns false if none or it failed.
  /// Thread-safe.
  bool ack_last() { return self().settle_last("ack"); }
  /// Gives back (requeues) this thread's last value from pop(T&). Returns false if none or it
  /// failed. Thread-safe.
  bool nack_last() { return self().settle_last("nack"); }

 protected:
  channel_pops() = default;
  ~channel_pops() = default;

 private:
  using clock = std::chrono::steady_clock;
  Derived& self() { return static_cast<Derived&>(*this); }
};

}  // namespace spindle::redis::detail
