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
// Defines transaction, exec(), cas_options, cas_outcome, cas_result and check_and_set().
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

/// The optimistic check-and-set loop on a connection used by this thread alone (see the header).
/// `f(connection&)` returns std::optional<transaction>. Throws std::invalid_argument if `keys`
/// is empty or max_attempts < 1; redis::error / server_error as exec(); what f throws.
template <class F>
cas_result check_and_set(connection& c, const std::vector<std::string>& keys, F&& f,
                         cas_options o = {}) {
  if (keys.empty()) throw std::invalid_argument("redis::check_and_set: no key to watch");
  if (o.max_attempts < 1)
    throw std::invalid_argument("redis::check_and_set: max_attempts must be >= 1, got " +
                                std::to_string(o.max_attempts));
  cas_result r;
  while (r.attempts < o.max_attempts) {
    if (r.attempts > 0 && o.max_backoff.count() > 0) {  // desynchronise the contenders
      auto us = detail::random_u64() % (static_cast<std::uint64_t>(o.max_backoff.count()) * 1000);
      std::this_thread::sleep_for(std::chrono::microseconds(us));
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

/// As above, on a connection leased from `p` for the whole loop. Thread-safe.
template <class F>
cas_result check_and_set(pool& p, const std::vector<std::string>& keys, F&& f,
                         cas_options o = {}) {
  auto lease = p.acquire();
  return check_and_set(*lease, keys, std::forward<F>(f), o);
}

}  // namespace spindle::redis
