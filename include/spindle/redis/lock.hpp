// spindle/redis/lock.hpp - a lock shared by every process using the same name, with a fencing
// token per acquisition and a lease-renewal thread.
//
//   spindle::redis::distributed_lock m("invoices", {.port = 6379}, {.lease = 10s});
//   if (auto held = m.lock_for(2s)) {                  // std::optional<held_lock>
//     storage.write(data, held->fence());              // the resource rejects stale fences
//   }                                                  // released here (compare-and-delete)
//
// Defines lock_options, held_lock (the RAII guard of one acquisition) and distributed_lock
// (try_lock, lock_for, lock_until, lock with a stop_token, lock).
//
// How it works: an acquisition is one Lua script: SET {name}:lock <random token> NX PX <lease>
// and, if that succeeded, INCR {name}:lock:fence; the new counter value is the acquisition's
// fencing token. Release and extension are compare-and-act scripts (delete / PEXPIRE only while
// the key still holds the caller's token). With lock_options::renew (default) each held lock has
// a thread that extends the lease every lease/3; if an extension finds the lock gone (it expired
// during a pause, or someone deleted it) or cannot reach the server before the lease runs out,
// the lock is marked lost() and lock_options::on_lost is called once.
//
// What a single Redis instance with fencing guarantees:
//   - Mutual exclusion on the server: at any moment at most one token is stored under the key,
//     so at most one acquisition succeeds until the previous one is released or its lease ends
//     (leases are timed by the server's clock; client clocks do not matter).
//   - Only the holder releases or extends: a holder whose lease ran out cannot delete or extend
//     its successor's lock (release() and extend() return false instead).
//   - Fencing: every acquisition's fence() is strictly greater than every earlier acquisition's
//     on that server (the INCR runs in the same atomic script as the SET). A holder can never
//     know that it still holds the lock - a process pause, a swap storm or a slow network can
//     outlast its lease between its check and its write - so a resource that must not be
//     written by two holders keeps the highest fence it has accepted and refuses lower ones.
//     That check, not the lease, is what makes the lock safe (Kleppmann, "How to do distributed
//     locking", 2016).
//   These hold while the server keeps its data: a restart without an fsynced AOF, or a failover
//   to a replica that missed the latest writes, can forget the lock (two holders at once) and
//   move the fence counter backwards. Run the lock's server with appendonly yes, appendfsync
//   always when the resource's safety depends on it.
// What Redlock (seed 004: the lock taken on a majority of N independent masters) would add:
//   availability and safety when a minority of instances fail or lose their data. What it
//   cannot guarantee without fencing: that a holder paused past its validity time does not write
//   after another holder acquired the lock; its safety rests on bounded clock drift, pauses and
//   network delay, and N independent masters have no common counter from which to draw a
//   monotonic fence. spindle offers the single-instance lock with fencing because its guarantee
//   is one a resource can enforce; where the lock must survive failover too, use a consensus
//   store (etcd, ZooKeeper) that provides fencing natively.
//
// Failure modes: an I/O error throws redis::error; an acquisition whose reply was lost may have
// taken the lock on the server (nobody holds its token: it expires after the lease). Waiting
// acquirers poll: a released lock is taken by a waiter within lock_options::max_retry_delay (the
// PTTL the server reports shortens the wait when the lease is about to end). No fairness: a
// waiter may be overtaken.
//
// Thread safety: distributed_lock is thread-safe (its connections are pooled). A held_lock is
// used by one thread at a time; its renewal thread and its lost() flag are internally
// synchronised. A held_lock may outlive its distributed_lock (they share the connection pool).
//
// Key layout (hash tag {name}):
//   {name}:lock         the holder's token, with the lease as its expiry
//   {name}:lock:fence   the fence counter; never expires (deleting it restarts fences at 1 and
//                       breaks the fencing guarantee)
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>  // condition_variable_any: a stop-aware wait between renewals
#include <cstdint>
#include <functional>  // std::function: on_lost, called at most once per held lock
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "spindle/deadline.hpp"
#include "spindle/redis/cluster.hpp"
#include "spindle/redis/detail/scripts.hpp"
#include "spindle/redis/detail/token.hpp"
#include "spindle/redis/error.hpp"
#include "spindle/redis/options.hpp"
#include "spindle/redis/pool.hpp"

namespace spindle::redis {

/// Knobs of a distributed_lock; use with designated initializers.
struct lock_options {
  /// How long an acquisition (and each renewal) lives on the server. >= 10 ms.
  std::chrono::milliseconds lease{10000};
  /// Whether each held lock runs a thread that extends the lease until release.
  bool renew = true;
  /// The renewal period; 0 means lease / 3. Must be below the lease.
  std::chrono::milliseconds renew_every{0};
  /// The longest sleep of a waiting acquirer between two tries. >= 1 ms.
  std::chrono::milliseconds max_retry_delay{50};
  /// Called once, on the renewal thread, with the acquisition's fence, when renewal finds the
  /// lock no longer held or cannot reach the server before the lease runs out. Must not throw
  /// (an exception is dropped). May be empty.
  std::function<void(std::uint64_t fence)> on_lost = {};
};

namespace detail {

// KEYS: lock, fence counter. ARGV: token, lease ms.
// Takes the lock and draws the next fence atomically. Returns the fence (>= 1) if taken, else
// -(ms the lock still lives + 1) (-1 when it has no expiry).
inline constexpr std::string_view lua_lock_acquire = R"lua(
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
local t = redis.call('PTTL', KEYS[1])
if t < 0 then t = 0 end
return -t - 1
)lua";

// KEYS: lock. ARGV: token, lease ms. Extends the lease only while the lock holds `token`.
// Returns 1 if extended, 0 if the lock is gone or someone else's.
inline constexpr std::string_view lua_lock_extend = R"lua(
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
)lua";

// What a distributed_lock and its held locks share (they may outlive each other).
struct lock_shared {
  lock_shared(std::string name, options o, lock_options lo, pool_options po)
      : key("{" + name + "}:lock"),
        fence_key("{" + name + "}:lock:fence"),
        opts(std::move(lo)),
        connections(std::move(o), po) {}
  lock_shared(std::string name, cluster& c, lock_options lo, pool_options po)
      : key("{" + name + "}:lock"),
        fence_key("{" + name + "}:lock:fence"),
        opts(std::move(lo)),
        connections(c, "{" + name + "}", po) {}
  const std::string key, fence_key;
  const lock_options opts;
  pool connections;
  script acquire{lua_lock_acquire, ""};
  script extend{lua_lock_extend, ""};
  script release{lua_release_if_owner, ""};
};

}  // namespace detail

/// One acquisition of a distributed_lock: its token, its fence, its renewal thread. Releases
/// the lock when destroyed. Move-only. See the header comment.
class held_lock {
 public:
  held_lock(held_lock&&) noexcept = default;
  held_lock& operator=(held_lock&& o) noexcept {
    if (this != &o) {
      release_quietly();
      s_ = std::move(o.s_);
      st_ = std::move(o.st_);
    }
    return *this;
  }
  held_lock(const held_lock&) = delete;
  held_lock& operator=(const held_lock&) = delete;

  /// Releases the lock if still held (see release()); an I/O error is swallowed (the lease then
  /// ends on its own).
  ~held_lock() { release_quietly(); }

  // Every member below but the destructor and move requires a guard not moved from.

  /// This acquisition's fencing token: strictly greater than every earlier acquisition's of the
  /// same name on the same server. Never blocks.
  std::uint64_t fence() const noexcept { return st_->fence; }
  /// The random token stored under the lock key while this acquisition holds it.
  const std::string& token() const noexcept { return st_->token; }

  /// Whether this process knows the lock is no longer held: renewal or extend() found it gone,
  /// renewal could not reach the server within the lease, or release() ran. Thread-safe.
  /// `false` is no proof of holding it (only a fence check at the resource is).
  bool lost() const noexcept {
    // acquire: pairs with the release store in mark_lost(), so on_lost's effects are visible.
    return st_->lost.load(std::memory_order_acquire);
  }

  /// Stops renewal and deletes the lock if it still holds this token. Returns true if it did,
  /// false if the lease had run out (someone else may hold the lock now) or it was released
  /// already. Idempotent. Throws redis::error on I/O failure (the lease then ends on its own).
  bool release() {
    if (!s_) return false;
    stop_renewal();
    if (st_->released.exchange(true, std::memory_order_acq_rel)) return false;
    mark_lost();
    auto c = s_->connections.acquire();
    return s_->release.run(*c, {s_->key}, {st_->token}).integer() == 1;
  }

  /// Sets the lease to `lease` from now if this token still holds the lock. Returns true if it
  /// did; false (and lost() becomes true) if not. Throws std::invalid_argument if lease < 1 ms,
  /// redis::error on I/O failure. Thread-safe with the renewal thread.
  bool extend(std::chrono::milliseconds lease) {
    if (lease.count() < 1)
      throw std::invalid_argument("redis::held_lock::extend: lease must be >= 1 ms, got " +
                                  std::to_string(lease.count()));
    if (!s_ || st_->released.load(std::memory_order_acquire)) return false;
    auto c = s_->connections.acquire();
    bool ok = s_->extend.run(*c, {s_->key}, {st_->token, std::to_string(lease.count())})
                  .integer() == 1;
    if (!ok) mark_lost();
    return ok;
  }

 private:
  friend class distributed_lock;

  // The state the renewal thread shares with the guard; heap-allocated so that a move of the
  // guard does not move what the thread reads.
  struct state {
    std::string token;
    std::uint64_t fence = 0;
    std::atomic<bool> lost{false};      // see lost()
    std::atomic<bool> released{false};  // release() ran
    std::atomic<bool> notified{false};  // on_lost ran (or will not)
    std::mutex mu;                      // the renewal thread's sleep
    std::condition_variable_any cv;
    std::jthread renewer;  // last: joined first
  };

  held_lock(std::shared_ptr<detail::lock_shared> s, std::string token, std::uint64_t fence)
      : s_(std::move(s)), st_(std::make_unique<state>()) {
    st_->token = std::move(token);
    st_->fence = fence;
    if (s_->opts.renew) {
      auto every = s_->opts.renew_every.count() > 0 ? s_->opts.renew_every : s_->opts.lease / 3;
      if (every.count() < 1) every = std::chrono::milliseconds(1);
      st_->renewer = std::jthread([s = s_, st = st_.get(), every](std::stop_token stop) {
        renew_loop(*s, *st, every, stop);
      });
    }
  }

  // Extends the lease every `every`; marks the lock lost (and calls on_lost once) when an
  // extension finds another token or none, or when no extension succeeded within a lease.
  static void renew_loop(detail::lock_shared& s, state& st, std::chrono::milliseconds every,
                         std::stop_token stop) {
    auto last_ok = std::chrono::steady_clock::now();
    const std::string lease = std::to_string(s.opts.lease.count());
    for (;;) {
      {
        std::unique_lock lock(st.mu);
        st.cv.wait_for(lock, stop, every, [] { return false; });  // wakes early on stop
      }
      if (stop.stop_requested()) return;
      try {
        auto c = s.connections.acquire();
        if (s.extend.run(*c, {s.key}, {st.token, lease}).integer() == 1) {
          last_ok = std::chrono::steady_clock::now();
          continue;
        }
      } catch (const error&) {
        if (std::chrono::steady_clock::now() - last_ok < s.opts.lease) continue;  // retry
      }
      if (stop.stop_requested()) return;  // released meanwhile: not lost
      notify_lost(s, st);
      return;
    }
  }

  static void notify_lost(detail::lock_shared& s, state& st) {
    // release: publishes the loss before on_lost runs; pairs with the acquire in lost().
    st.lost.store(true, std::memory_order_release);
    if (st.notified.exchange(true, std::memory_order_acq_rel)) return;
    if (s.opts.on_lost) {
      try {
        s.opts.on_lost(st.fence);
      } catch (...) {  // documented: dropped
      }
    }
  }

  // Marks lost without calling on_lost (the caller learns it from the return value).
  void mark_lost() noexcept {
    st_->notified.store(true, std::memory_order_relaxed);  // relaxed: only on_lost's once-flag
    st_->lost.store(true, std::memory_order_release);      // release: pairs with lost()
  }

  void stop_renewal() {
    if (st_->renewer.joinable()) {
      st_->renewer.request_stop();
      st_->renewer.join();
    }
  }

  void release_quietly() noexcept {
    try {
      release();
    } catch (...) {  // documented: the lease ends on its own
    }
  }

  std::shared_ptr<detail::lock_shared> s_;  // null once moved from
  std::unique_ptr<state> st_;
};

/// A lock shared by every process using the same name on the same server. See the header.
class distributed_lock {
 public:
  /// Throws std::invalid_argument if the name is empty, lease < 10 ms, renew_every >= lease,
  /// or max_retry_delay < 1 ms. Connects lazily. Allocates.
  distributed_lock(std::string name, options o, lock_options lo = {},
                   pool_options po = {.max_connections = 4}) {
    check(name, lo);
    s_ = std::make_shared<detail::lock_shared>(std::move(name), std::move(o), std::move(lo), po);
  }

  /// On a Redis Cluster: the lock's keys share the tag {name}, served through a pool pinned to
  /// that slot's primary. A failover can lose a lock taken just before it (asynchronous
  /// replication: see README, "Redis Cluster"); the fence, drawn in the same script, tells a
  /// resource that checks it. `c` must outlive the lock and every held_lock. Throws like the
  /// other constructor, and std::invalid_argument for a name starting with '}' (its keys would
  /// have no hash tag).
  distributed_lock(std::string name, cluster& c, lock_options lo = {},
                   pool_options po = {.max_connections = 4}) {
    check(name, lo);
    detail::check_tag_name("redis::distributed_lock", name);
    s_ = std::make_shared<detail::lock_shared>(std::move(name), c, std::move(lo), po);
  }

  /// Takes the lock if it is free. Returns the held lock, or nullopt if someone holds it.
  /// One round trip. Throws redis::error on I/O failure. Thread-safe.
  std::optional<held_lock> try_lock() {
    std::chrono::milliseconds ignored{};
    return try_once(ignored);
  }

  /// Takes the lock, waiting until `until` at the latest or a stop request on `st`. Returns
  /// nullopt on timeout or stop. Polls (see the header). Throws redis::error. Thread-safe.
  std::optional<held_lock> lock_until(std::chrono::steady_clock::time_point until,
                                      std::stop_token st = {}) {
    for (;;) {
      std::chrono::milliseconds hint{};
      if (auto h = try_once(hint)) return h;
      if (st.stop_requested() || std::chrono::steady_clock::now() >= until) return std::nullopt;
      if (!detail::wait_next_try(hint, s_->opts.max_retry_delay, until, st)) return std::nullopt;
    }
  }

  /// As lock_until(now + d); saturates (duration::max() waits without a time limit).
  template <class Rep, class Period>
  std::optional<held_lock> lock_for(std::chrono::duration<Rep, Period> d, std::stop_token st = {}) {
    return lock_until(spindle::detail::time_after<std::chrono::steady_clock>(d), std::move(st));
  }

  /// Takes the lock, waiting without a time limit; nullopt only if a stop is requested on `st`.
  std::optional<held_lock> lock(std::stop_token st) {
    return lock_until(std::chrono::steady_clock::time_point::max(), std::move(st));
  }

  /// Takes the lock, waiting as long as it takes. Throws redis::error on I/O failure.
  held_lock lock() { return std::move(*lock_until(std::chrono::steady_clock::time_point::max())); }

  /// The last fence drawn on the server (0 if none yet). One round trip. Thread-safe.
  std::uint64_t last_fence() {
    auto r = s_->connections.command("GET", s_->fence_key);
    return r.is_nil() ? 0 : static_cast<std::uint64_t>(r.integer());
  }

 private:
  static void check(const std::string& name, const lock_options& lo) {
    if (name.empty()) throw std::invalid_argument("redis::distributed_lock: empty name");
    if (lo.lease.count() < 10)
      throw std::invalid_argument("redis::distributed_lock: lease must be >= 10 ms, got " +
                                  std::to_string(lo.lease.count()));
    if (lo.renew_every.count() < 0 || lo.renew_every >= lo.lease)
      throw std::invalid_argument(
          "redis::distributed_lock: renew_every must be >= 0 and below the lease, got " +
          std::to_string(lo.renew_every.count()) + " ms");
    if (lo.max_retry_delay.count() < 1)
      throw std::invalid_argument("redis::distributed_lock: max_retry_delay must be >= 1 ms");
  }

  std::optional<held_lock> try_once(std::chrono::milliseconds& hint) {
    std::string token = detail::random_token();
    std::int64_t r;
    {
      auto c = s_->connections.acquire();
      r = s_->acquire
              .run(*c, {s_->key, s_->fence_key},
                   {token, std::to_string(s_->opts.lease.count())})
              .integer();
    }
    if (r > 0) return held_lock(s_, std::move(token), static_cast<std::uint64_t>(r));
    hint = std::chrono::milliseconds(-r - 1);
    return std::nullopt;
  }

  std::shared_ptr<detail::lock_shared> s_;
};

}  // namespace spindle::redis
