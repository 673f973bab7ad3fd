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
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <utility>
#include <vector>

#include "spindle/redis/connection.hpp"
#include "spindle/redis/options.hpp"

namespace spindle::redis {

/// Pool settings; use with designated initializers.
struct pool_options {
  std::size_t max_connections = 8;                  ///< >= 1
  std::chrono::milliseconds acquire_timeout{10000};  ///< acquire() throws after this long
};

/// A thread-safe pool of connections to one server. See the header comment.
class pool {
 public:
  /// Exclusive use of one pooled connection until destroyed. Move-only.
  class lease {
   public:
    lease(lease&& o) noexcept : pool_(std::exchange(o.pool_, nullptr)), conn_(std::move(o.conn_)) {}
    lease& operator=(lease&&) = delete;
    lease(const lease&) = delete;
    lease& operator=(const lease&) = delete;
    ~lease() {
      if (pool_ != nullptr) pool_->give_back(std::move(conn_));
    }
    connection& operator*() const noexcept { return *conn_; }
    connection* operator->() const noexcept { return conn_.get(); }

   private:
    friend class pool;
    lease(pool* p, std::unique_ptr<connection> c) : pool_(p), conn_(std::move(c)) {}
    pool* pool_;
    std::unique_ptr<connection> conn_;
  };

  /// Makes an empty pool; nothing connects yet. Throws std::invalid_argument if
  /// max_connections is 0.
  explicit pool(options o, pool_options po = {}) : opts_(std::move(o)), popts_(po) {
    if (popts_.max_connections == 0)
      throw std::invalid_argument("redis::pool: max_connections is 0");
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

  /// Like acquire(), but returns nullopt once `timeout` passes. Throws redis::error if
  /// connecting fails. Thread-safe.
  std::optional<lease> acquire_for(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, timeout,
                      [&] { return !idle_.empty() || open_ < popts_.max_connections; }))
      return std::nullopt;
    if (!idle_.empty()) {
      auto c = std::move(idle_.back());
      idle_.pop_back();
      return lease(this, std::move(c));
    }
    ++open_;  // reserve the slot, connect without the lock
    lock.unlock();
    try {
      return lease(this, std::make_unique<connection>(opts_));
    } catch (...) {
      lock.lock();
      --open_;
      lock.unlock();
      cv_.notify_one();
      throw;
    }
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
  void give_back(std::unique_ptr<connection> c) {
    if (c->pending() != 0) c->close();  // out of step: the next holder must not read its replies
    {
      std::lock_guard lock(mu_);
      idle_.push_back(std::move(c));
    }
    cv_.notify_one();
  }

  const options opts_;
  const pool_options popts_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<connection>> idle_;  // guarded by mu_
  std::size_t open_ = 0;                           // guarded by mu_
};

}  // namespace spindle::redis
