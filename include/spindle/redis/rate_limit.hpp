// spindle/redis/rate_limit.hpp - rate limiters shared by every process using the same key.
//
//   spindle::redis::token_bucket tb("api", {.port = 6379}, 100.0, 20);   // 100/s, bursts of 20
//   if (tb.try_acquire()) call_api();
//   spindle::redis::sliding_window sw("logins", {.port = 6379}, 5, 60s); // 5 per minute
//   sw.acquire();                                                        // waits for room
//
// Defines token_bucket and sliding_window; both model spindle::rate_limiter
// (bool try_acquire(n = 1), void acquire(n = 1)) and have the waits of the in-process limiters:
// acquire(n, stop_token) -> ok | cancelled, acquire_for(n, d) / acquire_until(n, t) -> ok |
// timeout | cancelled (timeout at once when the room cannot come in time even if nobody else
// takes any; acquire_for saturates: duration::max() means no limit), and retry_after(n): how long
// until n would be granted if nobody else took any (a Retry-After figure; changes nothing).
// Waits sleep for the time the server names (at most 1 s between tries); they never spin.
// For one limit per IP, user or API key on one object, see keyed_rate_limit.hpp.
//
// Guarantees: one Lua script per decision (EVALSHA, loaded again on NOSCRIPT), so processes
// sharing a key never exceed the limit together; time is the server's (TIME), so client clock
// skew does not matter; keys expire when idle (token bucket: once it would be full again;
// sliding window: after the window), so an unused limiter leaves nothing behind.
//   token_bucket: starts full with `burst` tokens, refills at `rate_per_second` up to burst.
//   sliding_window: never more than `limit` grants in any window of `window` (an exact log,
//   one sorted-set entry per grant: memory grows with the limit).
// Thread-safe: threads share one object through its connection pool. Redis I/O failures throw
// redis::error.
//
// Key layout (hash tag {name}):
//   {name}:tb          hash {t: tokens, ts: last refill, server ms}  (token_bucket)
//   {name}:sw          sorted set of grants scored by server ms      (sliding_window)
//   {name}:sw:seq      counter naming the grants                     (sliding_window)
#pragma once

#include <chrono>
#include <cstdint>
#include <stop_token>
#include <string>

#include "spindle/deadline.hpp"
#include "spindle/redis/detail/limit.hpp"
#include "spindle/redis/options.hpp"
#include "spindle/redis/pool.hpp"
#include "spindle/status.hpp"

namespace spindle::redis {

namespace detail {
/// The forms every single-key Redis limiter offers, on top of limit_core with the key prefix
/// "{name}". Derived only names itself in error messages.
class single_key_limiter {
 public:
  /// Takes n if there is room now. Returns false if not (always if n exceeds the capacity).
  /// One round trip. Throws redis::error on I/O failure. Thread-safe.
  bool try_acquire(std::uint64_t n = 1) {
    if (n > core_.most()) return false;
    return core_.run(prefix_, n, false) == 0;
  }
  /// Takes n, waiting (sleeping for the time the server names) as long as it takes.
  /// Throws std::invalid_argument if n exceeds the capacity. Thread-safe.
  void acquire(std::uint64_t n = 1) {
    (void)core_.acquire_until("acquire", prefix_, n, std::chrono::steady_clock::time_point::max(),
                              {});
  }
  /// As acquire(n); returns ok, or cancelled once a stop is requested on `st` (nothing taken).
  status acquire(std::uint64_t n, std::stop_token st) {
    return core_.acquire_until("acquire", prefix_, n, std::chrono::steady_clock::time_point::max(),
                               st);
  }
  /// As acquire(n), waiting until `until` at the latest: ok | timeout | cancelled.
  status acquire_until(std::uint64_t n, std::chrono::steady_clock::time_point until,
                       std::stop_token st = {}) {
    return core_.acquire_until("acquire_until", prefix_, n, until, st);
  }
  /// As acquire(n), waiting at most `d` (saturating: duration::max() means no limit).
  template <class Rep, class Period>
  status acquire_for(std::uint64_t n, std::chrono::duration<Rep, Period> d,
                     std::stop_token st = {}) {
    return core_.acquire_until("acquire_for", prefix_, n,
                               spindle::detail::time_after<std::chrono::steady_clock>(d), st);
  }
  /// How long until n would be granted if nobody else took any; zero if now. Changes nothing.
  /// Throws std::invalid_argument if n exceeds the capacity. Thread-safe.
  std::chrono::milliseconds retry_after(std::uint64_t n = 1) {
    return core_.retry_after("retry_after", prefix_, n);
  }

 protected:
  single_key_limiter(const char* what, limit_algorithm a, const std::string& name, options o,
                     pool_options po, double rate, std::uint64_t most,
                     std::chrono::milliseconds window)
      : core_(what, a, name, std::move(o), po, rate, most, window), prefix_("{" + name + "}") {}
  single_key_limiter(const char* what, limit_algorithm a, const std::string& name, cluster& c,
                     pool_options po, double rate, std::uint64_t most,
                     std::chrono::milliseconds window)
      : core_(what, a, name, c, "{" + name + "}", po, rate, most, window),
        prefix_("{" + name + "}") {}
  ~single_key_limiter() = default;

 private:
  limit_core core_;
  std::string prefix_;
};
}  // namespace detail

/// A token bucket on Redis. See the header comment.
class token_bucket : public detail::single_key_limiter {
 public:
  /// Throws std::invalid_argument if the name is empty, rate_per_second <= 0 or burst == 0.
  /// Connects lazily. Allocates.
  token_bucket(std::string name, options o, double rate_per_second, std::uint64_t burst,
               pool_options po = {.max_connections = 4})
      : single_key_limiter("redis::token_bucket", detail::limit_algorithm::token_bucket, name,
                           std::move(o), po, rate_per_second, burst, {}) {}
  /// On a Redis Cluster: its one key lives in the slot of {name}, served through a pool pinned
  /// to that slot's primary. `c` must outlive the object. Throws like the other constructor.
  token_bucket(std::string name, cluster& c, double rate_per_second, std::uint64_t burst,
               pool_options po = {.max_connections = 4})
      : single_key_limiter("redis::token_bucket", detail::limit_algorithm::token_bucket, name, c,
                           po, rate_per_second, burst, {}) {}
};

/// An exact sliding-window limiter on Redis. See the header comment.
class sliding_window : public detail::single_key_limiter {
 public:
  /// Throws std::invalid_argument if the name is empty, limit == 0 or window <= 0.
  /// Connects lazily. Allocates.
  sliding_window(std::string name, options o, std::uint64_t limit, std::chrono::milliseconds window,
                 pool_options po = {.max_connections = 4})
      : single_key_limiter("redis::sliding_window", detail::limit_algorithm::sliding_window, name,
                           std::move(o), po, 0.0, limit, window) {}
  /// On a Redis Cluster, as token_bucket's. Throws like the other constructor.
  sliding_window(std::string name, cluster& c, std::uint64_t limit,
                 std::chrono::milliseconds window, pool_options po = {.max_connections = 4})
      : single_key_limiter("redis::sliding_window", detail::limit_algorithm::sliding_window, name,
                           c, po, 0.0, limit, window) {}
};

}  // namespace spindle::redis
