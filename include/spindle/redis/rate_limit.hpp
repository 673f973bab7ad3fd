// spindle/redis/rate_limit.hpp - rate limiters shared by every process using the same key.
//
//   spindle::redis::token_bucket tb("api", {.port = 6379}, 100.0, 20);   // 100/s, bursts of 20
//   if (tb.try_acquire()) call_api();
//   spindle::redis::sliding_window sw("logins", {.port = 6379}, 5, 60s); // 5 per minute
//   sw.acquire();                                                        // waits for room
//
// Defines token_bucket and sliding_window; both model spindle::rate_limiter
// (bool try_acquire(n = 1), void acquire(n = 1)).
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

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>

#include "spindle/redis/codec.hpp"
#include "spindle/redis/detail/scripts.hpp"
#include "spindle/redis/options.hpp"
#include "spindle/redis/pool.hpp"

namespace spindle::redis {

namespace detail {
/// The blocking loop both Redis limiters share: `run()` asks the server (one script call) and
/// returns 0 once granted, else the milliseconds until it could be; sleeps that long (at most
/// 1 s, so a grant freed by others is not missed for long) and asks again.
template <class Run>
void acquire_by_server_wait(Run run) {
  for (;;) {
    std::int64_t wait = run();
    if (wait == 0) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min<std::int64_t>(wait, 1000)));
  }
}
}  // namespace detail

/// A token bucket on Redis. See the header comment.
class token_bucket {
 public:
  /// Throws std::invalid_argument if the name is empty, rate_per_second <= 0 or burst == 0.
  /// Connects lazily. Allocates.
  token_bucket(std::string name, options o, double rate_per_second, std::uint64_t burst,
               pool_options po = {.max_connections = 4})
      : key_("{" + name + "}:tb"), rate_(rate_per_second), burst_(burst), pool_(std::move(o), po) {
    if (name.empty()) throw std::invalid_argument("redis::token_bucket: empty name");
    if (!(rate_per_second > 0))
      throw std::invalid_argument("redis::token_bucket: rate_per_second must be > 0, got " +
                                  std::to_string(rate_per_second));
    if (burst == 0) throw std::invalid_argument("redis::token_bucket: burst must be >= 1, got 0");
  }

  /// Takes n tokens if there are. Returns false if not (always if n > burst). Thread-safe.
  bool try_acquire(std::uint64_t n = 1) {
    if (n > burst_) return false;
    return run(n) == 0;
  }
  /// Takes n tokens, waiting (sleeping for the time the server says) until there are.
  /// Throws std::invalid_argument if n > burst. Thread-safe.
  void acquire(std::uint64_t n = 1) {
    if (n > burst_)
      throw std::invalid_argument("redis::token_bucket::acquire: n = " + std::to_string(n) +
                                  " exceeds burst " + std::to_string(burst_));
    detail::acquire_by_server_wait([&] { return run(n); });
  }

 private:
  std::int64_t run(std::uint64_t n) {
    auto c = pool_.acquire();
    return script_
        .run(*c, {key_}, {codec<double>::encode(rate_), std::to_string(burst_), std::to_string(n)})
        .integer();
  }

  std::string key_;
  double rate_;
  std::uint64_t burst_;
  pool pool_;
  detail::script script_{detail::lua_token_bucket};
};

/// An exact sliding-window limiter on Redis. See the header comment.
class sliding_window {
 public:
  /// Throws std::invalid_argument if the name is empty, limit == 0 or window <= 0.
  /// Connects lazily. Allocates.
  sliding_window(std::string name, options o, std::uint64_t limit, std::chrono::milliseconds window,
                 pool_options po = {.max_connections = 4})
      : key_("{" + name + "}:sw"),
        seq_("{" + name + "}:sw:seq"),
        limit_(limit),
        window_(window),
        pool_(std::move(o), po) {
    if (name.empty()) throw std::invalid_argument("redis::sliding_window: empty name");
    if (limit == 0) throw std::invalid_argument("redis::sliding_window: limit must be >= 1, got 0");
    if (window.count() <= 0)
      throw std::invalid_argument("redis::sliding_window: window must be > 0 ms, got " +
                                  std::to_string(window.count()));
  }

  /// Records n grants if the window has room. Returns false if not (always if n > limit).
  /// Thread-safe.
  bool try_acquire(std::uint64_t n = 1) {
    if (n > limit_) return false;
    return run(n) == 0;
  }
  /// Records n grants, waiting until the window has room. Throws std::invalid_argument if
  /// n > limit. Thread-safe.
  void acquire(std::uint64_t n = 1) {
    if (n > limit_)
      throw std::invalid_argument("redis::sliding_window::acquire: n = " + std::to_string(n) +
                                  " exceeds limit " + std::to_string(limit_));
    detail::acquire_by_server_wait([&] { return run(n); });
  }

 private:
  std::int64_t run(std::uint64_t n) {
    if (n == 0) return 0;
    auto c = pool_.acquire();
    return script_
        .run(*c, {key_, seq_},
             {std::to_string(limit_), std::to_string(window_.count()), std::to_string(n)})
        .integer();
  }

  std::string key_, seq_;
  std::uint64_t limit_;
  std::chrono::milliseconds window_;
  pool pool_;
  detail::script script_{detail::lua_sliding_window};
};

}  // namespace spindle::redis
