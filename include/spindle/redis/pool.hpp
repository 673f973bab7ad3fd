// spindle/redis/pool.hpp - a pool of connections that threads share.
//
//   spindle::redis::pool p({.port = 6379}, {.max_connections = 4});
//   p.command("INCR", "hits");                    // borrows a connection for one command
//   { auto c = p.acquire(); c->append(...); c->read(); }   // a lease for several
//
// Guarantees: each connection is used by one thread at a time (the holder of its lease); a
// thread blocked on a slow command (BLPOP) holds only its own connection, so other threads'
// commands go on while connections remain. Connections are opened lazily, outside the pool's
// lock, up to max_connections. A lease given back with unread pipelined replies is closed (it
// reconnects on its next use) so the next holder never reads someone else's reply.
// Every connection gets the pool's options: the same client_name (CLIENT LIST shows each
// connection under it) and the same on_push, called on the thread that holds the lease.
// Lifetime: the pool must outlive every lease; its destructor closes idle connections.
//
// Pinned to a cluster slot: pool(cluster&, route_key, pool_options) (defined in cluster.hpp)
// opens each connection to the primary that serves `route_key`'s slot in the cluster's current
// map. A lease given back while an exception propagates (a command on it failed: I/O failure,
// MOVED, CLUSTERDOWN, ...), or a connect that fails, closes that connection and marks the map
// stale; the next acquire refreshes the map, and once the slot's primary changed (a failover, a
// resharding) connections to the old one are closed as they come back (idle ones at once), so
// every new lease reaches the new owner. Nothing is resent: the caller sees the failure and
// decides (the structures retry what is safe to retry). One code path: a pool of one server is
// a pool whose target never changes.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>  // std::uncaught_exceptions: a lease given back by a failed command
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>
#include <stdexcept>
#include <utility>
#include <vector>

#include "spindle/clock.hpp"  // detail::time_after: acquire_for saturates
#include "spindle/redis/connection.hpp"
#include "spindle/redis/options.hpp"

namespace spindle::redis {

class cluster;  // cluster.hpp

namespace detail {
/// Where a pool pinned to a cluster slot connects (implemented in cluster.hpp).
class pool_route {
 public:
  virtual ~pool_route() = default;
  /// Options of a connection to the slot's current primary, after refreshing a map marked
  /// stale. Throws redis::error if no primary serves the slot. Thread-safe.
  virtual options target() = 0;
  /// A command on one of the pool's connections failed, or a connect did: the map may be
  /// stale. Thread-safe.
  virtual void failed() noexcept = 0;
};
}  // namespace detail

/// Pool settings; use with designated initializers.
struct pool_options {
  std::size_t max_connections = 8;                  ///< >= 1
  std::chrono::milliseconds acquire_timeout{10000};  ///< acquire() throws after this long
};

/// A thread-safe pool of connections to one server, or to the primary of one cluster slot. See
/// the header comment.
class pool {
 public:
  /// Exclusive use of one pooled connection until destroyed. Move-only.
  class lease {
   public:
    lease(lease&& o) noexcept
        : pool_(std::exchange(o.pool_, nullptr)),
          conn_(std::move(o.conn_)),
          gen_(o.gen_),
          uncaught_(o.uncaught_) {}
    lease& operator=(lease&&) = delete;
    lease(const lease&) = delete;
    lease& operator=(const lease&) = delete;
    ~lease() {
      if (pool_ != nullptr)
        pool_->give_back(std::move(conn_), gen_, std::uncaught_exceptions() > uncaught_);
    }
    connection& operator*() const noexcept { return *conn_; }
    connection* operator->() const noexcept { return conn_.get(); }

   private:
    friend class pool;
    lease(pool* p, std::unique_ptr<connection> c, std::uint64_t gen)
        : pool_(p), conn_(std::move(c)), gen_(gen), uncaught_(std::uncaught_exceptions()) {}
    pool* pool_;
    std::unique_ptr<connection> conn_;
    std::uint64_t gen_;  // the pool's target generation when the connection was opened
    int uncaught_;       // exceptions in flight when leased: more at give-back = it failed
  };

  /// Makes an empty pool; nothing connects yet. Throws std::invalid_argument if
  /// max_connections is 0.
  explicit pool(options o, pool_options po = {}) : opts_(std::move(o)), popts_(po) {
    if (popts_.max_connections == 0)
      throw std::invalid_argument("redis::pool: max_connections is 0");
  }
  /// Makes an empty pool pinned to the primary that serves `route_key`'s slot on `c` (see the
  /// header comment); nothing connects yet. `c` must outlive the pool. Defined in cluster.hpp.
  /// Throws std::invalid_argument if max_connections is 0.
  pool(cluster& c, std::string_view route_key, pool_options po = {});
  /// Makes an empty pool whose connections go where `route` says. Throws std::invalid_argument
  /// if max_connections is 0 or route is null.
  pool(std::unique_ptr<detail::pool_route> route, pool_options po)
      : popts_(po), route_(std::move(route)) {
    if (popts_.max_connections == 0)
      throw std::invalid_argument("redis::pool: max_connections is 0");
    if (!route_) throw std::invalid_argument("redis::pool: null route");
  }
  pool(const pool&) = delete;
  pool& operator=(const pool&) = delete;

  /// A connection: an idle one, else a new one (while under max_connections), else waits for
  /// one to come back. Throws redis::error after acquire_timeout, or if connecting fails.
  /// Thread-safe.
  lease acquire() {
    if (auto l = acquire_for(popts_.acquire_timeout)) return std::move(*l);
    throw error("redis::pool::acquire: no connection free within " +
                std::to_string(popts_.acquire_timeout.count()) + " ms");
  }

  /// Like acquire(), but returns nullopt once `timeout` passes (saturating: duration::max()
  /// waits without a time limit). Throws redis::error if connecting fails. Thread-safe.
  template <class Rep, class Period>
  std::optional<lease> acquire_for(std::chrono::duration<Rep, Period> timeout) {
    return acquire_by(spindle::detail::time_after<std::chrono::steady_clock>(timeout));
  }

  /// Runs one command on a pooled connection. Throws like acquire() and connection::command().
  /// Thread-safe.
  template <command_arg... A>
  reply command(const A&... args) {
    auto l = acquire();
    return l->command(args...);
  }

  /// Connections open or being opened (idle and leased). Approximate. Thread-safe.
  std::size_t size() const {
    std::lock_guard lock(mu_);
    return open_;
  }
  /// Connections waiting in the pool. Approximate. Thread-safe.
  std::size_t idle() const {
    std::lock_guard lock(mu_);
    return idle_.size();
  }

 private:
  // acquire_for's work, until `until` (time_point::max(): no limit).
  std::optional<lease> acquire_by(std::chrono::steady_clock::time_point until) {
    std::optional<options> target;
    if (route_) target = route_->target();  // may read the slot map: no lock held across I/O
    std::vector<std::unique_ptr<connection>> dropped;  // closed after the lock is released
    std::unique_lock lock(mu_);
    if (target && (gen_ == 0 || target->host != opts_.host || target->port != opts_.port)) {
      // The first target, or the slot has a new primary: connections to the old one are
      // closed, idle ones now and leased ones when they come back (give_back compares
      // generations).
      opts_ = std::move(*target);
      ++gen_;
      for (auto& c : idle_) dropped.push_back(std::move(c));
      open_ -= idle_.size();
      idle_.clear();
      cv_.notify_all();
    }
    auto available = [&] { return !idle_.empty() || open_ < popts_.max_connections; };
    // Invariant: no limit is a plain wait (a wait_for of the largest durations overflows and
    // returns at once); attacked by "pool::acquire_for(duration::max()) waits for a connection
    // ..." (test_redis_hostile.cpp).
    if (until == std::chrono::steady_clock::time_point::max())
      cv_.wait(lock, available);
    else if (!cv_.wait_until(lock, until, available))
      return std::nullopt;
    if (!idle_.empty()) {
      auto c = std::move(idle_.back());
      idle_.pop_back();
      return lease(this, std::move(c), gen_);
    }
    ++open_;  // reserve the slot, connect without the lock
    options o = opts_;
    auto gen = gen_;
    lock.unlock();
    try {
      return lease(this, std::make_unique<connection>(std::move(o)), gen);
    } catch (...) {
      if (route_) route_->failed();  // the primary may be gone: read the map again
      lock.lock();
      --open_;
      lock.unlock();
      cv_.notify_one();
      throw;
    }
  }

  // `failed`: given back while an exception propagated (the command on it failed).
  // Invariant (pinned pools): a connection given back by a failed command, or opened to a
  // primary the slot no longer has, is closed and not pooled again, so that after a failover
  // or a MOVED no lease reaches the old node; attacked by "a primary SIGKILLed during a
  // worker_pool run over one queue per primary" (tests/redis/test_cluster_structures.cpp).
  void give_back(std::unique_ptr<connection> c, std::uint64_t gen, bool failed) {
    if (route_ && failed) route_->failed();
    {
      std::unique_lock lock(mu_);
      if (route_ && (failed || gen != gen_)) {
        --open_;
        lock.unlock();
        cv_.notify_one();
        return;  // c is closed here, without the lock
      }
      if (c->pending() != 0) c->close();  // out of step: the next holder must not read its replies
      idle_.push_back(std::move(c));
    }
    cv_.notify_one();
  }

  options opts_;  // guarded by mu_ when route_ is set (its target changes), else constant
  const pool_options popts_;
  const std::unique_ptr<detail::pool_route> route_;  // null: one server, opts_
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<connection>> idle_;  // guarded by mu_
  std::size_t open_ = 0;                           // guarded by mu_
  std::uint64_t gen_ = 0;  // guarded by mu_: bumped when a pinned pool's target is set or changes
};

}  // namespace spindle::redis
