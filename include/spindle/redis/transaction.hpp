// spindle/redis/transaction.hpp - MULTI/EXEC with every queued reply checked, and a WATCH-based
// optimistic check-and-set loop with bounded retries.
//
//   spindle::redis::transaction tx;
//   tx.add("DECRBY", "{acct}:a", 10).add("INCRBY", "{acct}:b", 10);
//   auto replies = spindle::redis::exec(conn, tx);          // one round trip, all or nothing queued
//
//   auto r = spindle::redis::check_and_set(pool, {"{acct}:a"}, [](connection& c) {
//     auto bal = c.command("GET", "{acct}:a");                 // read under WATCH
//     if (bal.is_nil() || bal.integer() < 10) return std::optional<transaction>{};  // abort
//     transaction tx;
//     tx.add("DECRBY", "{acct}:a", 10);
//     return std::optional<transaction>(std::move(tx));
//   });                                                        // r.outcome: committed | ...
//
// Defines transaction, exec() / exec_for() / exec_until(), cas_options, cas_outcome,
// cas_result and check_and_set() / check_and_set_for() / check_and_set_until().
//
// Guarantees of exec(connection&, transaction&): MULTI, the commands and EXEC go in one write.
// If the server refuses any command while queueing (unknown command, wrong arity: its reply is
// not QUEUED), nothing runs and server_error is thrown naming the command's position; otherwise
// the commands run atomically - no other client's command runs between them - and their replies
// come back in order. Redis does not roll back: a command that fails while running (WRONGTYPE)
// leaves its error reply in the result while the others took effect; check each reply.
//
// Guarantees of check_and_set(): WATCH keys, run `f` (which reads through the same connection
// and returns the transaction to run, or nullopt to abort), EXEC. If a watched key changed
// between WATCH and EXEC, EXEC does nothing and the loop starts again, at most
// cas_options::max_attempts times, with a short random backoff between attempts; it then
// returns outcome contended. So the writes commit only if what f read was still current: the
// optimistic check-and-set of seed 004. The WATCH lives on one connection, held for the whole
// loop (a pool lease is held, never shared); a failure (f throws, I/O error) leaves the
// connection unwatched or closed, so no later user inherits a WATCH or a half-open MULTI.
//
// Deadlines (the _for / _until forms): they bound the waiting - for a pooled connection, and
// between check-and-set attempts (the backoff never sleeps past the deadline) - never a block
// already sent: cutting off a MULTI/EXEC in flight would leave its outcome unknown, so each of
// its reads is bounded by options::io_timeout instead. duration::max() means no deadline.
//
// On a Redis Cluster every key of a transaction must share one slot (one {tag}): run exec() on
// a connection of a pool pinned to that slot, `redis::pool p(cluster, "{acct}")` (pool.hpp), or
// send MULTI ... EXEC through cluster::pipeline(); check_and_set(p, ...) on such a pool. A key
// of another slot is refused by the node (server_error MOVED or CROSSSLOT), nothing written.
//
// Failure modes: redis::error on I/O failure (an EXEC whose reply was lost may have run),
// server_error as above. f's exceptions propagate after UNWATCH.
//
// Thread safety: a transaction is a value (build it on one thread). exec and check_and_set use
// the connection given (not thread-safe: one thread per connection); the pool form is
// thread-safe.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>  // std::invoke
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "spindle/clock.hpp"
#include "spindle/redis/connection.hpp"
#include "spindle/redis/detail/token.hpp"
#include "spindle/redis/error.hpp"
#include "spindle/redis/pool.hpp"
#include "spindle/redis/resp.hpp"

namespace spindle::redis {

/// Commands to run as one MULTI/EXEC block. A value type; allocates as it grows.
class transaction {
 public:
  transaction() { b_.add("MULTI"); }

  /// Queues one command. Returns *this. Allocates.
  template <command_arg... A>
  transaction& add(const A&... args) {
    b_.add(args...);
    return *this;
  }
  /// Commands queued (MULTI and EXEC not counted).
  std::size_t size() const noexcept { return b_.size() - 1; }
  bool empty() const noexcept { return size() == 0; }

  /// The encoded block: MULTI, then the commands (EXEC is added when it runs).
  const batch& encoded() const noexcept { return b_; }

 private:
  batch b_;  // MULTI, then the commands
};

namespace detail {

// Runs `t` on `c`: MULTI, commands, EXEC in one write. Returns the replies, or nullopt if EXEC
// returned nil (a watched key changed). Throws server_error if a command was refused while
// queueing (nothing ran) or EXEC failed.
inline std::optional<std::vector<reply>> run_transaction(connection& c, const batch& commands,
                                                         std::size_t n) {
  batch b = commands;
  b.add("EXEC");
  std::vector<reply> rs = c.pipeline(b);  // error replies are returned, not thrown
  if (rs.front().is_error())
    throw server_error(rs.front().str() + " (redis::exec: MULTI refused; nothing ran)");
  for (std::size_t i = 1; i <= n; ++i)
    if (rs[i].is_error())
      throw server_error(rs[i].str() + " (redis::exec: command " + std::to_string(i) + " of " +
                         std::to_string(n) + " refused while queueing; nothing ran)");
  reply& e = rs.back();
  if (e.is_nil()) return std::nullopt;
  if (e.is_error()) throw server_error(e.str() + " (redis::exec: EXEC failed; nothing ran)");
  if (!e.is_aggregate() || e.size() != n)
    throw error("redis::exec: EXEC returned " + std::to_string(e.size()) + " replies for " +
                std::to_string(n) + " commands");
  return std::vector<reply>(e.elements().begin(), e.elements().end());
}

}  // namespace detail

/// Runs one attempt of `t` on `c`; nullopt when a key WATCHed on `c` changed. Otherwise as
/// exec(). Allocates.
inline std::optional<std::vector<reply>> exec_watched(connection& c, const transaction& t) {
  return detail::run_transaction(c, t.encoded(), t.size());
}

/// Runs `t` atomically on `c` (see the header). Returns one reply per command, in order; a
/// command that failed while running has an error reply there. Throws server_error if a command
/// was refused while queueing (nothing ran), redis::error on I/O failure. An empty transaction
/// returns no replies without a round trip. Allocates.
inline std::vector<reply> exec(connection& c, const transaction& t) {
  if (t.empty()) return {};
  return exec_watched(c, t).value();  // without WATCH, EXEC never returns nil
}

/// The outcome of check_and_set.
enum class cas_outcome {
  committed,  ///< the transaction ran; replies holds its replies
  aborted,    ///< f returned nullopt: nothing was written
  contended,  ///< a watched key changed on every attempt; nothing was written
  timeout,    ///< (_for / _until forms) the deadline passed first; nothing was written
};

/// What check_and_set did.
struct cas_result {
  cas_outcome outcome = cas_outcome::contended;
  std::vector<reply> replies;  ///< the EXEC replies when committed
  int attempts = 0;            ///< how many times f ran
};

/// Knobs of check_and_set; use with designated initializers.
struct cas_options {
  int max_attempts = 16;                       ///< >= 1
  std::chrono::milliseconds max_backoff{20};   ///< the longest random pause between attempts
};

namespace detail {

using cas_clock = std::chrono::steady_clock;

// The longest single wait handed to pool::acquire_for: it adds the wait to now() in
// nanoseconds, so a far deadline is cut to a wait that cannot overflow (a century).
inline constexpr std::chrono::milliseconds longest_pool_wait =
    std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::hours(24 * 365 * 100));

// A connection of `p` by `until` (time_point::max(): the pool's own acquire(), which throws
// after its acquire_timeout), or nullopt once `until` passed.
inline std::optional<pool::lease> acquire_until(pool& p, cas_clock::time_point until) {
  if (until == cas_clock::time_point::max()) return p.acquire();
  auto left = until - cas_clock::now();
  auto wait = left <= left.zero()
                  ? std::chrono::milliseconds(0)
                  : spindle::detail::saturating_ceil<std::chrono::milliseconds>(left);
  return p.acquire_for(std::min(wait, longest_pool_wait));
}

// The loop of check_and_set and its _until form; `until` max(): no deadline. The first attempt
// always runs; another starts only before `until`, and the backoff never sleeps past it.
template <class F>
cas_result cas_loop(const char* fn, connection& c, const std::vector<std::string>& keys, F& f,
                    const cas_options& o, cas_clock::time_point until) {
  if (keys.empty())
    throw std::invalid_argument(std::string("redis::") + fn + ": no key to watch");
  if (o.max_attempts < 1)
    throw std::invalid_argument(std::string("redis::") + fn + ": max_attempts must be >= 1, got " +
                                std::to_string(o.max_attempts));
  cas_result r;
  while (r.attempts < o.max_attempts) {
    if (r.attempts > 0) {
      if (cas_clock::now() >= until) {
        r.outcome = cas_outcome::timeout;
        return r;
      }
      if (o.max_backoff.count() > 0) {  // desynchronise the contenders
        auto us = std::chrono::microseconds(
            random_u64() % (static_cast<std::uint64_t>(o.max_backoff.count()) * 1000));
        // Never sleep past the deadline; attacked by "check_and_set_for gives up with timeout
        // at its deadline ..." (test_transaction.cpp).
        auto left = std::max(until - cas_clock::now(), cas_clock::duration::zero());
        if (left < us) us = std::chrono::ceil<std::chrono::microseconds>(left);
        std::this_thread::sleep_for(us);
      }
    }
    c.command("WATCH", keys);
    ++r.attempts;
    std::optional<transaction> t;
    try {
      t = std::invoke(f, c);
    } catch (...) {
      try {
        c.command("UNWATCH");
      } catch (...) {
        c.close();  // cannot unwatch: a fresh connection next time carries no WATCH
      }
      throw;
    }
    if (!t) {
      c.command("UNWATCH");
      r.outcome = cas_outcome::aborted;
      return r;
    }
    std::optional<std::vector<reply>> rs;
    try {
      rs = exec_watched(c, *t);  // EXEC (or its failure) ends the WATCH
    } catch (const server_error&) {
      throw;
    } catch (...) {
      c.close();  // I/O failure mid-transaction: never hand on a half-open MULTI
      throw;
    }
    if (rs) {
      r.outcome = cas_outcome::committed;
      r.replies = std::move(*rs);
      return r;
    }
  }
  r.outcome = cas_outcome::contended;
  return r;
}

}  // namespace detail

/// Runs `t` like exec() on a connection of `p`, waiting for a free connection until `until`.
/// Returns the replies, or nullopt if no connection came free in time (nothing was sent). The
/// deadline bounds the wait for a connection only: once sent, the block runs to its end, each
/// read bounded by options::io_timeout (a deadline that cut it off would leave its outcome
/// unknown). Throws like exec(). Allocates. Thread-safe.
inline std::optional<std::vector<reply>> exec_until(pool& p, const transaction& t,
                                                    std::chrono::steady_clock::time_point until) {
  auto lease = detail::acquire_until(p, until);
  if (!lease) return std::nullopt;
  return exec(**lease, t);
}
/// As exec_until(p, t, now + d); saturates (duration::max(): the pool's own acquire_timeout,
/// then redis::error, as without a deadline). Thread-safe.
template <class Rep, class Period>
std::optional<std::vector<reply>> exec_for(pool& p, const transaction& t,
                                           std::chrono::duration<Rep, Period> d) {
  return exec_until(p, t, spindle::detail::time_after<std::chrono::steady_clock>(d));
}

/// The optimistic check-and-set loop on a connection used by this thread alone (see the header).
/// `f(connection&)` returns std::optional<transaction>. Throws std::invalid_argument if `keys`
/// is empty or max_attempts < 1; redis::error / server_error as exec(); what f throws.
template <class F>
cas_result check_and_set(connection& c, const std::vector<std::string>& keys, F&& f,
                         cas_options o = {}) {
  return detail::cas_loop("check_and_set", c, keys, f, o,
                          std::chrono::steady_clock::time_point::max());
}

/// As above, on a connection leased from `p` for the whole loop. Thread-safe.
template <class F>
cas_result check_and_set(pool& p, const std::vector<std::string>& keys, F&& f,
                         cas_options o = {}) {
  auto lease = p.acquire();
  return check_and_set(*lease, keys, std::forward<F>(f), o);
}

/// check_and_set() with a deadline: the first attempt always runs (as a try_ call would);
/// another starts only before `until`, and the backoff pause never sleeps past it. An attempt
/// in progress is not cut off (its I/O is bounded by options::io_timeout). Returns outcome
/// timeout, having written nothing, when `until` passed with every attempt so far contended;
/// otherwise as check_and_set(). Throws like check_and_set().
template <class F>
cas_result check_and_set_until(connection& c, const std::vector<std::string>& keys, F&& f,
                               std::chrono::steady_clock::time_point until, cas_options o = {}) {
  return detail::cas_loop("check_and_set_until", c, keys, f, o, until);
}
/// As check_and_set_until(c, keys, f, now + d); saturates (duration::max(): no deadline).
template <class F, class Rep, class Period>
cas_result check_and_set_for(connection& c, const std::vector<std::string>& keys, F&& f,
                             std::chrono::duration<Rep, Period> d, cas_options o = {}) {
  return detail::cas_loop("check_and_set_for", c, keys, f, o,
                          spindle::detail::time_after<std::chrono::steady_clock>(d));
}
/// check_and_set_until on a connection of `p`, waiting for one until `until` at the latest
/// (outcome timeout, attempts 0, if none came free). Thread-safe.
template <class F>
cas_result check_and_set_until(pool& p, const std::vector<std::string>& keys, F&& f,
                               std::chrono::steady_clock::time_point until, cas_options o = {}) {
  if (keys.empty()) throw std::invalid_argument("redis::check_and_set_until: no key to watch");
  auto lease = detail::acquire_until(p, until);
  if (!lease) return cas_result{cas_outcome::timeout, {}, 0};
  return detail::cas_loop("check_and_set_until", **lease, keys, f, o, until);
}
/// As check_and_set_until(p, keys, f, now + d); saturates. Thread-safe.
template <class F, class Rep, class Period>
cas_result check_and_set_for(pool& p, const std::vector<std::string>& keys, F&& f,
                             std::chrono::duration<Rep, Period> d, cas_options o = {}) {
  return check_and_set_until(p, keys, std::forward<F>(f),
                             spindle::detail::time_after<std::chrono::steady_clock>(d), o);
}

}  // namespace spindle::redis
