// spindle/redis/keyed_rate_limit.hpp - one rate limit per key (per IP, per user, per API key),
// any number of keys on one object and one connection pool, shared by every process.
//
//   spindle::redis::keyed_fixed_window per_ip("api", {.port = 6379}, 100, 60s);  // 100/min/IP
//   if (!per_ip.try_acquire(client_ip)) reply_429(per_ip.retry_after(client_ip));
//   spindle::redis::keyed_token_bucket per_user("uploads", {.port = 6379}, 2.0, 10);
//   per_user.acquire_for(user_id, 1, 500ms);             // ok | timeout
//
// Defines keyed_fixed_window, keyed_sliding_window and keyed_token_bucket. Each has, with the
// key first: try_acquire(key, n = 1) (never waits), acquire(key, n = 1), acquire(key, n,
// stop_token) -> ok | cancelled, acquire_for(key, n, d) / acquire_until(key, n, t) -> ok |
// timeout | cancelled (timeout at once when the room cannot come in time even if nobody else
// takes any; acquire_for saturates: duration::max() means no limit), and retry_after(key, n = 1):
// how long until n would be granted if nobody else took any (a Retry-After figure; changes
// nothing). n larger than the limit (burst) makes try_acquire return false and the waiting
// forms and retry_after throw std::invalid_argument.
//
// The algorithms:
//   keyed_fixed_window     at most `limit` grants per window; a window starts with its first
//                          grant and lasts `window` (the seed's INCR + EXPIRE, in one script so
//                          a crash between them cannot leave a counter that never expires).
//                          Cheapest (one small key), but up to 2 * limit can pass in a short
//                          span straddling two windows.
//   keyed_sliding_window   never more than `limit` grants in any window of `window` (an exact
//                          log: one sorted-set entry per grant, memory grows with the limit).
//   keyed_token_bucket     bursts of up to `burst`, refilled at `rate_per_second`.
//
// Guarantees: one Lua script per decision, so processes sharing a key never exceed its limit
// together; keys are independent (one key's traffic never uses another's room); time is the
// server's (TIME, key expiry), so client clock skew does not matter; a key's state expires when
// idle, so a million one-off keys leave nothing behind. Waits sleep for the time the server
// names (at most 1 s between tries); they never spin. No fairness between waiters.
//
// Thread safety: every member function is thread-safe; the object shares a connection pool.
// Redis I/O failures throw redis::error (a decision whose reply was lost may have been taken).
//
// Key layout (hash tag {name:key}, so each key's state lives in one cluster slot and different
// keys spread over the cluster):
//   {name:key}:fw                   counter, expiring with its window       (fixed window)
//   {name:key}:sw, {name:key}:sw:seq  sorted set of grants, and its counter   (sliding window)
//   {name:key}:tb                   hash {t: tokens, ts: server ms}         (token bucket)
// Name and key are joined by ':' as they are: limiter "api" with key "v2:login" and limiter
// "api:v2" with key "login" share one state. Give limiters of the same algorithm names that are
// not a prefix of each other followed by ':'. A key with '}' in it keeps its own state, but its
// tag ends there: keys "u}1", "u}2", ... all live in the slot of "u" (users who choose their
// keys can pile them onto one primary).
#pragma once

#include <chrono>
#include <cstdint>
#include <stop_token>
#include <string>
#include <string_view>

#include "spindle/deadline.hpp"
#include "spindle/redis/detail/limit.hpp"
#include "spindle/redis/options.hpp"
#include "spindle/redis/pool.hpp"
#include "spindle/status.hpp"

namespace spindle::redis {

namespace detail {
/// The forms every per-key Redis limiter offers, on top of limit_core with the key prefix
/// "{name:key}".
class keyed_limiter {
 public:
  /// Takes n for `key` if it has room now. Returns false if not (always if n exceeds the
  /// limit). One round trip. Throws redis::error on I/O failure. Thread-safe.
  bool try_acquire(std::string_view key, std::uint64_t n = 1) {
    if (n > core_.most()) return false;
    return core_.run(prefix(key), n, false) == 0;
  }
  /// Takes n for `key`, waiting as long as it takes. Throws std::invalid_argument if n exceeds
  /// the limit. Thread-safe.
  void acquire(std::string_view key, std::uint64_t n = 1) {
    (void)core_.acquire_until("acquire", prefix(key), n,
                              std::chrono::steady_clock::time_point::max(), {});
  }
  /// As acquire(key, n); returns ok, or cancelled once a stop is requested on `st`.
  status acquire(std::string_view key, std::uint64_t n, std::stop_token st) {
    return core_.acquire_until("acquire", prefix(key), n,
                               std::chrono::steady_clock::time_point::max(), st);
  }
  /// As acquire(key, n), waiting until `until` at the latest: ok | timeout | cancelled.
  status acquire_until(std::string_view key, std::uint64_t n,
                       std::chrono::steady_clock::time_point until, std::stop_token st = {}) {
    return core_.acquire_until("acquire_until", prefix(key), n, until, st);
  }
  /// As acquire(key, n), waiting at most `d` (saturating: duration::max() means no limit).
  template <class Rep, class Period>
  status acquire_for(std::string_view key, std::uint64_t n, std::chrono::duration<Rep, Period> d,
                     std::stop_token st = {}) {
    return core_.acquire_until("acquire_for", prefix(key), n,
                               spindle::detail::time_after<std::chrono::steady_clock>(d), st);
  }
  /// How long until n would be granted for `key` if nobody else took any; zero if now.
  /// Changes nothing. Throws std::invalid_argument if n exceeds the limit. Thread-safe.
  std::chrono::milliseconds retry_after(std::string_view key, std::uint64_t n = 1) {
    return core_.retry_after("retry_after", prefix(key), n);
  }

 protected:
  keyed_limiter(const char* what, limit_algorithm a, const std::string& name, options o,
                pool_options po, double rate, std::uint64_t most, std::chrono::milliseconds window)
      : core_(what, a, name, std::move(o), po, rate, most, window) {}
  // On a cluster, each call is routed by its key's {name:key} slot (cluster::eval_script).
  keyed_limiter(const char* what, limit_algorithm a, const std::string& name, cluster& c,
                double rate, std::uint64_t most, std::chrono::milliseconds window)
      : core_(what, a, name, c, "", {}, rate, most, window) {}
  ~keyed_limiter() = default;

 private:
  std::string prefix(std::string_view key) const {
    return "{" + core_.name() + ":" + std::string(key) + "}";
  }
  limit_core core_;
};
}  // namespace detail

/// At most `limit` grants per key per fixed window. See the header comment.
class keyed_fixed_window : public detail::keyed_limiter {
 public:
  /// Throws std::invalid_argument if the name is empty, limit == 0 or window <= 0. Connects
  /// lazily. Allocates.
  keyed_fixed_window(std::string name, options o, std::uint64_t limit,
                     std::chrono::milliseconds window, pool_options po = {.max_connections = 4})
      : keyed_limiter("redis::keyed_fixed_window", detail::limit_algorithm::fixed_window, name,
                      std::move(o), po, 0.0, limit, window) {}
  /// On a Redis Cluster: each key's state lives in the slot of its {name:key} tag, so keys
  /// spread over the primaries; each call goes to the primary of its key's slot
  /// (cluster::eval_script: redirects followed, the script loaded per node). `c` must outlive
  /// the object. Throws like the other constructor.
  keyed_fixed_window(std::string name, cluster& c, std::uint64_t limit,
                     std::chrono::milliseconds window)
      : keyed_limiter("redis::keyed_fixed_window", detail::limit_algorithm::fixed_window, name, c,
                      0.0, limit, window) {}
};

/// Never more than `limit` grants per key in any window. See the header comment.
class keyed_sliding_window : public detail::keyed_limiter {
 public:
  /// Throws std::invalid_argument if the name is empty, limit == 0 or window <= 0. Connects
  /// lazily. Allocates.
  keyed_sliding_window(std::string name, options o, std::uint64_t limit,
                       std::chrono::milliseconds window, pool_options po = {.max_connections = 4})
      : keyed_limiter("redis::keyed_sliding_window", detail::limit_algorithm::sliding_window,
                      name, std::move(o), po, 0.0, limit, window) {}
  /// On a Redis Cluster: each key's state lives in the slot of its {name:key} tag, so keys
  /// spread over the primaries; each call goes to the primary of its key's slot
  /// (cluster::eval_script: redirects followed, the script loaded per node). `c` must outlive
  /// the object. Throws like the other constructor.
  keyed_sliding_window(std::string name, cluster& c, std::uint64_t limit,
                       std::chrono::milliseconds window)
      : keyed_limiter("redis::keyed_sliding_window", detail::limit_algorithm::sliding_window,
                      name, c, 0.0, limit, window) {}
};

/// A token bucket per key. See the header comment.
class keyed_token_bucket : public detail::keyed_limiter {
 public:
  /// Throws std::invalid_argument if the name is empty, rate_per_second <= 0 or burst == 0.
  /// Connects lazily. Allocates.
  keyed_token_bucket(std::string name, options o, double rate_per_second, std::uint64_t burst,
                     pool_options po = {.max_connections = 4})
      : keyed_limiter("redis::keyed_token_bucket", detail::limit_algorithm::token_bucket, name,
                      std::move(o), po, rate_per_second, burst, {}) {}
  /// On a Redis Cluster: each key's state lives in the slot of its {name:key} tag, so keys
  /// spread over the primaries; each call goes to the primary of its key's slot
  /// (cluster::eval_script: redirects followed, the script loaded per node). `c` must outlive
  /// the object. Throws like the other constructor.
  keyed_token_bucket(std::string name, cluster& c, double rate_per_second, std::uint64_t burst)
      : keyed_limiter("redis::keyed_token_bucket", detail::limit_algorithm::token_bucket, name,
                      c, rate_per_second, burst, {}) {}
};

}  // namespace spindle::redis
