// spindle/redis/cache.hpp - cache-aside on Redis with stampede protection, shared by every
// process using the same name.
//
//   spindle::redis::cache<std::string> users("users", {.port = 6379}, {.local_capacity = 1000});
//   auto u = users.get_or_compute("42", 60s, [] { return load_user_from_db(42); });
//   users.invalidate("42");                           // every process forgets it
//
// Defines cache_options, cache_stats and cache<T, Codec>: get_or_compute, get_or_compute_for
// (gives up waiting after a duration or on a stop request), set, invalidate.
//
// get_or_compute(key, ttl, fn) returns the cached value of `key`, or on a miss computes it with
// fn(), stores it for `ttl` and returns it. On a miss exactly one caller - across every thread
// and process using the cache - computes: it wins a compute lock (SET NX PX with a random
// token, in the same script that found the miss); the others wait for a notification, not a
// sleep-and-retry loop: the winner stores the value, deletes its lock (only if it still holds
// its token) and publishes on the cache's channel in one script; each cache object runs one
// subscription that wakes its waiting threads, which then read the value.
//
// Guarantees and their limits:
//   - One computation per miss while the computation finishes within lock_lease: a longer one
//     loses its lock to a waiter, which computes too (the value stored last wins). Set
//     lock_lease above fn's worst case.
//   - Waiters never hang on a dead computer: they wait at most until its lock expires (the
//     script reports the lock's PTTL), then one of them computes. Pub/sub is fire-and-forget, so
//     a waiter also re-reads every `recheck`: a lost notification costs at most that delay.
//   - If fn throws, the lock is released, the waiters are woken (one of them computes again)
//     and the exception propagates to the caller whose fn threw. Nothing is cached.
//   - TTL jitter: each value lives between ttl * (1 - ttl_jitter) and ttl, so values stored
//     together do not expire together (a synchronized-expiry stampede); never longer than asked.
//   - Negative cache (negative_ttl > 0, fn returning std::optional<T>): a nullopt result is
//     remembered for negative_ttl, so a missing row is not looked up again on every call.
//   - invalidate(key) deletes the value and publishes the key; every cache object's in-process
//     second level (local_capacity > 0) drops it on receipt. A local entry is served without a
//     round trip for at most local_ttl; lost invalidations (a broken subscription) therefore
//     leave it stale at most local_ttl, and after a resubscription the whole local level is
//     dropped. A value read from Redis is not kept locally if an invalidation arrived meanwhile.
//   - Only the stored value is trusted: readers never see a half-written value (one SET).
//
// Failure modes: Redis I/O failures throw redis::error; if storing a computed value fails, that
// error is thrown and the value is lost (the lock expires after lock_lease, then a waiter
// computes). fn's exceptions propagate. The constructor waits (at most options::connect_timeout) until its subscription is
// active, so notifications published after construction reach it.
//
// Thread safety: every member function is thread-safe. fn runs on the calling thread, with no
// lock of the cache held. The destructor stops the subscription (joins its thread); it must not
// run while calls are in progress.
//
// Key layout (hash tag {name:key}, so a key's value and lock share a cluster slot while different
// keys spread over the cluster):
//   {name:key}:v     the value: "v" + Codec::encode(value), or "n" (a cached nullopt), PX ttl
//   {name:key}:l     the compute lock: the computing caller's random token, PX lock_lease
//   channel {name}:events   "f" + key when a computed value was stored (or a computation
//                           failed), "i" + key when it was invalidated or replaced by set()
// Name and key are joined by ':' as they are: cache "users" with key "42:name" and cache
// "users:42" with key "name" share one value. Give caches names that are not a prefix of each
// other followed by ':'.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>  // std::function: on_invalidate
#include <list>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>

#include "spindle/deadline.hpp"
#include "spindle/redis/cluster.hpp"
#include "spindle/redis/codec.hpp"
#include "spindle/redis/detail/scripts.hpp"
#include "spindle/redis/detail/token.hpp"
#include "spindle/redis/error.hpp"
#include "spindle/redis/options.hpp"
#include "spindle/redis/pool.hpp"
#include "spindle/redis/topic.hpp"

namespace spindle::redis {

/// Knobs of a cache; use with designated initializers.
struct cache_options {
  /// The compute lock's lease: longer than fn ever takes. >= 10 ms.
  std::chrono::milliseconds lock_lease{10000};
  /// Each value lives between ttl * (1 - ttl_jitter) and ttl. In [0, 1).
  double ttl_jitter = 0.1;
  /// > 0: a nullopt from an optional-returning fn is cached this long. 0: never cached.
  std::chrono::milliseconds negative_ttl{0};
  /// A waiter re-reads at least this often (a notification may be lost). >= 1 ms.
  std::chrono::milliseconds recheck{1000};
  /// > 0: an in-process second level of at most this many entries (oldest evicted first).
  std::size_t local_capacity = 0;
  /// How long a local entry is served without asking Redis. >= 1 ms.
  std::chrono::milliseconds local_ttl{1000};
  /// Called on the subscription thread with the key of each invalidation received (from any
  /// process, this one included), after the local copy was dropped. Must not throw (an
  /// exception goes to nobody: it is dropped). May be empty.
  std::function<void(const std::string& key)> on_invalidate = {};
};

/// Counts of what get_or_compute did, for this object. Approximate under concurrency.
struct cache_stats {
  std::uint64_t local_hits = 0;  ///< served from the in-process level
  std::uint64_t hits = 0;        ///< found in Redis at once
  std::uint64_t computed = 0;    ///< fn ran here
  std::uint64_t waited = 0;      ///< waited for another caller's computation, at least once
};

namespace detail {

// KEYS: value, lock. ARGV: token, lock lease ms, accept negative (1/0).
// Returns {1, value} on a hit; {2} if the caller now holds the compute lock; {3, pttl} if
// someone else computes (pttl: ms its lock still lives).
inline constexpr std::string_view lua_cache_lookup = R"lua(
local v = redis.call('GET', KEYS[1])
if v and (ARGV[3] == '1' or v ~= 'n') then return {1, v} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
local t = redis.call('PTTL', KEYS[2])
if t < 0 then t = 0 end
return {3, t}
)lua";

// KEYS: value, lock. ARGV: token, payload ('' to store nothing), ttl ms, channel, message.
// Stores the value, releases the lock if the caller still holds it, publishes; atomically.
inline constexpr std::string_view lua_cache_fill = R"lua(
if ARGV[2] ~= '' then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
)lua";

template <class R>
struct is_optional : std::false_type {};
template <class U>
struct is_optional<std::optional<U>> : std::true_type {};

}  // namespace detail

/// A cache-aside cache on Redis. See the header comment.
template <class T, class Codec = codec<T>>
class cache {
 public:
  /// Throws std::invalid_argument if the name is empty or an option is out of range. Starts the
  /// subscription and waits (at most connect_timeout) until it is active. Allocates.
  cache(std::string name, options o, cache_options co = {}, pool_options po = {.max_connections = 8})
      : name_(std::move(name)),
        channel_("{" + name_ + "}:events"),
        co_(co),
        pool_(o, po) {
    init(o);
  }

  /// On a Redis Cluster: each key's value and lock share the slot of its {name:key} tag (keys
  /// spread over the primaries), and each call goes to the primary of its key's slot
  /// (cluster::eval_script, cluster::pipeline). The subscription is on the primary of the
  /// channel's slot as the map stood at construction (PUBLISH reaches every node); if that node
  /// goes away, notifications are lost and waiters fall back on `recheck`, local copies on
  /// `local_ttl`. `c` must outlive the cache. Throws like the other constructor, and
  /// std::invalid_argument for a name starting with '}' (its keys would have no hash tag).
  cache(std::string name, cluster& c, cache_options co = {},
        pool_options po = {.max_connections = 8})
      : name_(std::move(name)),
        channel_("{" + name_ + "}:events"),
        co_(co),
        pool_(c, channel_, po),
        cluster_(&c) {
    detail::check_tag_name("redis::cache", name_);
    options o = c.config().node;
    if (!name_.empty()) {
      auto at = c.primary_for_key(channel_);
      o.host = at.host;
      o.port = at.port;
    }
    init(o);
  }

  cache(const cache&) = delete;
  cache& operator=(const cache&) = delete;
  ~cache() { sub_.reset(); }  // joins the subscription thread before the members it uses go

  /// The value of `key`, computing it with fn() on a miss (one computation across processes;
  /// see the header). fn returns T, or std::optional<T> (then the result is std::optional<T> and
  /// nullopt is cached for negative_ttl when that is > 0). Throws std::invalid_argument if
  /// ttl < 1 ms, redis::error on I/O failure, and what fn throws. Thread-safe.
  template <class F>
  auto get_or_compute(std::string_view key, std::chrono::milliseconds ttl, F&& fn) {
    return std::move(*run("get_or_compute", key, ttl, fn,
                          std::chrono::steady_clock::time_point::max(), {}));
  }

  /// As get_or_compute, but gives up waiting for another caller's computation after `d`
  /// (saturating: duration::max() means no limit) or once a stop is requested on `st`, and then
  /// returns nullopt (this caller did not run fn). A caller that computes runs fn to its end.
  /// The result is std::optional of what get_or_compute returns. Thread-safe.
  template <class F, class Rep, class Period>
  auto get_or_compute_for(std::string_view key, std::chrono::milliseconds ttl, F&& fn,
                          std::chrono::duration<Rep, Period> d, std::stop_token st = {}) {
    return run("get_or_compute_for", key, ttl, fn,
               spindle::detail::time_after<std::chrono::steady_clock>(d), st);
  }

  /// Stores `value` for `ttl` (jittered), wakes waiters of `key` and publishes the key as
  /// invalidated, so every cache object of this name drops its local copy. Throws like
  /// get_or_compute. Thread-safe.
  void set(std::string_view key, const T& value, std::chrono::milliseconds ttl) {
    if (ttl.count() < 1)
      throw std::invalid_argument("redis::cache::set: ttl must be >= 1 ms, got " +
                                  std::to_string(ttl.count()));
    drop_local(key);
    fill(key, "", "v" + Codec::encode(value), jittered(ttl), 'i');
  }

  /// Deletes the value of `key` and publishes the invalidation, so every cache object of this
  /// name drops its local copy. Returns whether a value was deleted. Thread-safe.
  bool invalidate(std::string_view key) {
    drop_local(key);
    if (cluster_ != nullptr) {  // the DEL's slot routes both; PUBLISH reaches every node
      batch b;
      b.add("DEL", value_key(key)).add("PUBLISH", channel_, "i" + std::string(key));
      auto rs = cluster_->pipeline(b);
      if (rs.at(0).is_error()) throw server_error(rs[0].str());
      return rs[0].integer() == 1;
    }
    auto c = pool_.acquire();
    c->append("DEL", value_key(key));
    c->append("PUBLISH", channel_, "i" + std::string(key));
    bool deleted = c->read().integer() == 1;
    c->read();
    return deleted;
  }

  /// What get_or_compute did so far. Approximate. Thread-safe.
  cache_stats stats() const noexcept {
    // relaxed: statistics
    return {local_hits_.load(std::memory_order_relaxed), hits_.load(std::memory_order_relaxed),
            computed_.load(std::memory_order_relaxed), waited_.load(std::memory_order_relaxed)};
  }
  /// Threads of this object now waiting for a value (looking up or waiting for another
  /// caller's computation). Approximate. Thread-safe.
  std::size_t waiting() const {
    std::lock_guard lock(wmu_);
    std::size_t n = 0;
    for (const auto& [k, e] : waiting_) n += e.waiters;
    return n;
  }
  /// Entries in the local level now. Thread-safe.
  std::size_t local_size() const {
    std::lock_guard lock(lmu_);
    return local_.size();
  }
  /// The Redis key holding the value of `key` (see the key layout).
  std::string value_key(std::string_view key) const {
    return "{" + name_ + ":" + std::string(key) + "}:v";
  }

 private:
  std::string lock_key(std::string_view key) const {
    return "{" + name_ + ":" + std::string(key) + "}:l";
  }

  std::chrono::milliseconds jittered(std::chrono::milliseconds ttl) const {
    if (co_.ttl_jitter == 0.0) return ttl;
    double u = static_cast<double>(detail::random_u64() >> 11) * 0x1.0p-53;  // [0, 1)
    auto cut = static_cast<std::int64_t>(static_cast<double>(ttl.count()) * co_.ttl_jitter * u);
    return std::max(std::chrono::milliseconds(1), ttl - std::chrono::milliseconds(cut));
  }

  static std::optional<T> decode(const std::string& stored) {
    if (stored == "n") return std::nullopt;
    return Codec::decode(std::string_view(stored).substr(1));
  }

  // get_or_compute's result type for fn: T, or std::optional<T> for an optional-returning fn.
  template <class F>
  using result_for = std::conditional_t<detail::is_optional<std::invoke_result_t<F&>>::value,
                                        std::optional<T>, T>;

  // get_or_compute until `until` or a stop on `st` (then nullopt).
  template <class F>
  std::optional<result_for<F>> run(const char* fn_name, std::string_view key,
                                   std::chrono::milliseconds ttl, F& fn,
                                   std::chrono::steady_clock::time_point until,
                                   const std::stop_token& st) {
    constexpr bool optional_fn = detail::is_optional<std::invoke_result_t<F&>>::value;
    if (ttl.count() < 1)
      throw std::invalid_argument(std::string("redis::cache::") + fn_name +
                                  ": ttl must be >= 1 ms, got " + std::to_string(ttl.count()));
    auto v = lookup_or_compute(key, ttl, optional_fn, until, st, [&]() -> std::optional<T> {
      if constexpr (optional_fn) {
        return fn();
      } else {
        return std::optional<T>(fn());
      }
    });
    if (!v) return std::nullopt;
    if constexpr (optional_fn) {
      return std::move(*v);
    } else {
      return std::move(**v);
    }
  }

  // The value (inner nullopt: a cached or computed nullopt), or nullopt once `until` passed or
  // a stop was requested while waiting for another caller's computation.
  template <class Compute>
  std::optional<std::optional<T>> lookup_or_compute(std::string_view key,
                                                    std::chrono::milliseconds ttl,
                                                    bool accept_negative,
                                                    std::chrono::steady_clock::time_point until,
                                                    const std::stop_token& st, Compute compute) {
    if (co_.local_capacity > 0)
      if (auto hit = local_get(key)) {
        local_hits_.fetch_add(1, std::memory_order_relaxed);
        return hit;  // engaged: a local hit
      }
    const std::string vkey = value_key(key), lkey = lock_key(key), token = detail::random_token();
    const std::string lease = std::to_string(co_.lock_lease.count());
    bool waited = false;
    for (;;) {
      // Registered before the lookup, so a notification arriving between the lookup and the
      // wait is not missed (the generation moves).
      waiter w(*this, key);
      const std::uint64_t epoch = epoch_.load(std::memory_order_acquire);  // pairs with on_message
      reply r;
      r = run_script(lookup_, detail::lua_cache_lookup, {vkey, lkey},
                     {token, lease, accept_negative ? "1" : "0"});
      const auto code = r[0].integer();
      if (code == 1) {
        std::optional<T> v = decode(r[1].str());
        (waited ? waited_ : hits_).fetch_add(1, std::memory_order_relaxed);
        if (co_.local_capacity > 0) local_put(key, v, epoch, co_.local_ttl);
        return std::optional<std::optional<T>>(std::in_place, std::move(v));
      }
      if (code == 2) {
        w.leave();
        computed_.fetch_add(1, std::memory_order_relaxed);
        if (waited) waited_.fetch_add(1, std::memory_order_relaxed);
        std::optional<T> v;
        try {
          v = compute();
        } catch (...) {
          try {
            fill(key, token, "", ttl);  // release and wake the waiters; store nothing
          } catch (const error&) {  // the lock then expires on its own; fn's error matters more
          }
          throw;
        }
        if (v)
          fill(key, token, "v" + Codec::encode(*v), jittered(ttl));
        else if (co_.negative_ttl.count() > 0)
          fill(key, token, "n", jittered(co_.negative_ttl));
        else
          fill(key, token, "", ttl);
        if (co_.local_capacity > 0 && (v || co_.negative_ttl.count() > 0))
          local_put(key, v, epoch, v ? ttl : co_.negative_ttl);
        return std::optional<std::optional<T>>(std::in_place, std::move(v));
      }
      waited = true;
      if (st.stop_requested() || std::chrono::steady_clock::now() >= until) return std::nullopt;
      auto next = spindle::detail::saturating_add(
          std::chrono::steady_clock::now(),
          std::min(co_.recheck, std::chrono::milliseconds(r[1].integer() + 1)));
      w.wait(std::min(next, until), st);
    }
  }

  // Checks the options, starts the subscription with `o` and waits for it (see constructor).
  void init(const options& o) {
    if (name_.empty()) throw std::invalid_argument("redis::cache: empty name");
    if (co_.lock_lease.count() < 10)
      throw std::invalid_argument("redis::cache: lock_lease must be >= 10 ms, got " +
                                  std::to_string(co_.lock_lease.count()));
    if (!(co_.ttl_jitter >= 0.0 && co_.ttl_jitter < 1.0))
      throw std::invalid_argument("redis::cache: ttl_jitter must be in [0, 1), got " +
                                  std::to_string(co_.ttl_jitter));
    if (co_.negative_ttl.count() < 0 || co_.recheck.count() < 1 || co_.local_ttl.count() < 1)
      throw std::invalid_argument(
          "redis::cache: negative_ttl must be >= 0, recheck and local_ttl >= 1 ms");
    sub_.emplace(o, std::vector<std::string>{channel_}, std::vector<std::string>{},
                 [this](const message& m) { on_message(m.payload); });
    // Bounded wait for the first SUBSCRIBE confirmation: polls a counter the subscription
    // thread sets (no notification exists for it); at most connect_timeout.
    auto until = spindle::detail::time_after<std::chrono::steady_clock>(
        o.connect_timeout.count() > 0 ? o.connect_timeout : std::chrono::milliseconds(2000));
    while (sub_->subscribed() == 0 && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    seen_subscriptions_ = sub_->subscribed();
  }

  // Runs `s` (whose source is `source`, no prelude) on this cache's server, or on the primary
  // of the keys' slot on a cluster.
  reply run_script(detail::script& s, std::string_view source,
                   const std::vector<std::string>& keys, const std::vector<std::string>& args) {
    if (cluster_ != nullptr) return cluster_->eval_script(std::string(source), keys, args);
    auto c = pool_.acquire();
    return s.run(*c, keys, args);
  }

  // `kind`: 'f' (filled: wakes waiters) or 'i' (replaced: also drops local copies).
  void fill(std::string_view key, const std::string& token, const std::string& payload,
            std::chrono::milliseconds ttl, char kind = 'f') {
    run_script(fill_, detail::lua_cache_fill, {value_key(key), lock_key(key)},
               {token, payload, std::to_string(ttl.count()), channel_, kind + std::string(key)});
  }

  // ---- waiting for another caller's computation

  // Registers interest in a key while alive; wait() returns when a notification for the key
  // arrives (its generation moves) or after `d`.
  class waiter {
   public:
    waiter(cache& c, std::string_view key) : c_(c), key_(key) {
      std::lock_guard lock(c_.wmu_);
      auto& e = c_.waiting_[key_];
      ++e.waiters;
      gen_ = e.gen;
    }
    ~waiter() { leave(); }
    void leave() {
      if (left_) return;
      left_ = true;
      std::lock_guard lock(c_.wmu_);
      auto it = c_.waiting_.find(key_);
      if (--it->second.waiters == 0) c_.waiting_.erase(it);
    }
    void wait(std::chrono::steady_clock::time_point t, const std::stop_token& st) {
      std::unique_lock lock(c_.wmu_);
      c_.wcv_.wait_until(lock, st, t, [&] { return c_.waiting_[key_].gen != gen_; });
    }

   private:
    cache& c_;
    std::string key_;
    std::uint64_t gen_ = 0;
    bool left_ = false;
  };

  void on_message(const std::string& m) {
    if (m.empty()) return;
    std::string key = m.substr(1);
    if (m[0] == 'i') {
      // release: orders the bump before the local erase; pairs with the acquire in
      // lookup_or_compute, so a value read before this invalidation is not kept locally.
      epoch_.fetch_add(1, std::memory_order_acq_rel);
      drop_local(key);
      if (co_.on_invalidate) {
        try {
          co_.on_invalidate(key);
        } catch (...) {  // documented: dropped
        }
      }
    }
    {
      std::lock_guard lock(wmu_);
      auto it = waiting_.find(key);
      if (it == waiting_.end()) return;
      ++it->second.gen;
    }
    wcv_.notify_all();
  }

  // ---- the in-process second level

  std::optional<std::optional<T>> local_get(std::string_view key) {
    std::lock_guard lock(lmu_);
    check_resubscribed();
    auto it = local_.find(std::string(key));
    if (it == local_.end()) return std::nullopt;
    if (std::chrono::steady_clock::now() >= it->second.expires) {
      order_.erase(it->second.pos);
      local_.erase(it);
      return std::nullopt;
    }
    return it->second.value;
  }

  // Keeps `v` unless an invalidation arrived since `epoch` was read (before the Redis read).
  // Kept for the shorter of local_ttl and `ttl`.
  void local_put(std::string_view key, const std::optional<T>& v, std::uint64_t epoch,
                 std::chrono::milliseconds ttl) {
    std::lock_guard lock(lmu_);
    check_resubscribed();
    if (epoch_.load(std::memory_order_acquire) != epoch) return;  // pairs with on_message
    std::string k(key);
    if (auto it = local_.find(k); it != local_.end()) {
      order_.erase(it->second.pos);
      local_.erase(it);
    }
    while (local_.size() >= co_.local_capacity) {
      local_.erase(order_.front());
      order_.pop_front();
    }
    order_.push_back(k);
    local_.emplace(std::move(k), local_entry{v, spindle::detail::time_after<std::chrono::steady_clock>(
                                                    std::min(co_.local_ttl, ttl)),
                                             std::prev(order_.end())});
  }

  void drop_local(std::string_view key) {
    if (co_.local_capacity == 0) return;
    std::lock_guard lock(lmu_);
    if (auto it = local_.find(std::string(key)); it != local_.end()) {
      order_.erase(it->second.pos);
      local_.erase(it);
    }
  }

  // After a resubscription, invalidations may have been lost: drop everything. Requires lmu_.
  void check_resubscribed() {
    auto s = sub_->subscribed();
    if (s == seen_subscriptions_) return;
    seen_subscriptions_ = s;
    epoch_.fetch_add(1, std::memory_order_acq_rel);
    local_.clear();
    order_.clear();
  }

  struct wait_entry {
    std::uint64_t gen = 0;
    std::size_t waiters = 0;
  };
  struct local_entry {
    std::optional<T> value;
    std::chrono::steady_clock::time_point expires;
    std::list<std::string>::iterator pos;
  };

  const std::string name_, channel_;
  const cache_options co_;
  pool pool_;                   // one server (on a cluster: unused, never connects)
  cluster* cluster_ = nullptr;  // on a cluster: each call routed by its key's slot
  detail::script lookup_{detail::lua_cache_lookup, ""};
  detail::script fill_{detail::lua_cache_fill, ""};

  std::atomic<std::uint64_t> local_hits_{0}, hits_{0}, computed_{0}, waited_{0};  // statistics

  // Lock order: lmu_ and wmu_ are never held together.
  mutable std::mutex wmu_;
  std::condition_variable_any wcv_;  // _any: waits end on a stop request too
  std::unordered_map<std::string, wait_entry> waiting_;  // guarded by wmu_

  mutable std::mutex lmu_;
  std::unordered_map<std::string, local_entry> local_;  // guarded by lmu_
  std::list<std::string> order_;                        // guarded by lmu_; oldest first
  std::uint64_t seen_subscriptions_ = 0;                // guarded by lmu_
  std::atomic<std::uint64_t> epoch_{0};  // bumped by every invalidation and resubscription

  std::optional<subscription> sub_;  // last: stopped and joined first
};

}  // namespace spindle::redis
