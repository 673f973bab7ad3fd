// spindle/redis/detail/lease.hpp - what redis::queue and redis::stream share to keep their
// consumers' leases and ride over I/O failures: a consumer name, the option checks, the heartbeat
// thread, the retry window of blocking calls, and the per-thread record of the last value handed
// out through pop(T&); and the `{name}:closed` key with its process-local cache.
#pragma once

#include <unistd.h>  // getpid

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>  // std::function: the heartbeat's body, built once per object
#include <iterator>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "spindle/redis/detail/scripts.hpp"
#include "spindle/redis/error.hpp"
#include "spindle/redis/pool.hpp"

namespace spindle::redis::detail {

/// A consumer name unique across processes and objects: "<pid>-<64 random bits>". Allocates.
inline std::string consumer_name() {
  std::random_device rd;
  std::uint64_t r = (std::uint64_t{rd()} << 32) ^ rd();
  return std::to_string(::getpid()) + "-" + std::to_string(r);
}

/// Throws std::invalid_argument naming `who` unless visibility timeout, poll interval and
/// connection count are > 0. Returns max_connections (for a member initializer).
inline std::size_t check_consumer_options(const char* who, std::chrono::milliseconds visibility,
                                          std::chrono::milliseconds poll,
                                          std::size_t max_connections) {
  if (visibility.count() <= 0)
    throw std::invalid_argument(std::string(who) + ": visibility_timeout must be > 0, got " +
                                std::to_string(visibility.count()) + " ms");
  if (poll.count() <= 0)
    throw std::invalid_argument(std::string(who) + ": poll_interval must be > 0, got " +
                                std::to_string(poll.count()) + " ms");
  if (max_connections == 0) throw std::invalid_argument(std::string(who) + ": max_connections is 0");
  return max_connections;
}

/// A thread that calls a function every `period` until stopped; started at most once. The body
/// runs without any lock of this object held; redis::error thrown by it is swallowed (the server
/// is away: the next period retries, the lease may expire meanwhile).
class heartbeat_thread {
 public:
  heartbeat_thread() = default;
  heartbeat_thread(const heartbeat_thread&) = delete;
  heartbeat_thread& operator=(const heartbeat_thread&) = delete;
  /// Stops and joins. Never throws.
  ~heartbeat_thread() { stop(); }

  /// Starts the thread on the first call; later calls do nothing. Allocates. Thread-safe.
  void start(std::chrono::milliseconds period, std::function<void()> body) {
    std::call_once(once_, [&] {
      body_ = std::move(body);
      period_ = std::max(period, std::chrono::milliseconds(1));
      thread_ = std::thread([this] { loop(); });
    });
  }

  /// Stops the thread and waits for it. Idempotent. Must not race start().
  void stop() noexcept {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void loop() {
    std::unique_lock lock(mu_);
    for (;;) {
      if (cv_.wait_for(lock, period_, [&] { return stop_; })) return;
      lock.unlock();
      try {
        body_();
      } catch (const error&) {  // server away: retried next period
      }
      lock.lock();
    }
  }

  std::once_flag once_;
  std::function<void()> body_;  // written once in start(), before the thread exists
  std::chrono::milliseconds period_{1};
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;  // guarded by mu_
};

/// How long one blocking server call of a pop may block: poll_interval, less if the deadline is
/// nearer, 0 for a pop that must not block.
inline std::chrono::milliseconds block_time(
    std::chrono::milliseconds poll,
    std::optional<std::chrono::steady_clock::time_point> deadline, bool may_block) {
  if (!may_block) return std::chrono::milliseconds(0);
  if (!deadline) return poll;
  auto left = std::chrono::ceil<std::chrono::milliseconds>(*deadline -
                                                           std::chrono::steady_clock::now());
  return std::min(poll, std::max(left, std::chrono::milliseconds(0)));
}

/// The retry policy of blocking calls: I/O failures and transient server errors (LOADING after a
/// restart) are retried for `window`, sleeping `pause` between attempts; anything else, or a
/// failure that outlasts the window, is rethrown.
class retry_window {
 public:
  using clock = std::chrono::steady_clock;

  retry_window(std::chrono::milliseconds window, std::chrono::milliseconds poll)
      : window_(window), pause_(std::min(poll, std::chrono::milliseconds(50))) {}

  /// True if a failure is being ridden out (since the first failure() after the last success()).
  bool failing() const noexcept { return failing_; }
  /// Marks the start of a failure run now (a caller that knows it failed in flight).
  void start_failing() noexcept {
    if (!failing_) since_ = clock::now();
    failing_ = true;
  }
  /// Ends the failure run.
  void success() noexcept { failing_ = false; }

  /// Called from a catch block for `e`: rethrows it unless it is worth retrying and the window
  /// is still open; otherwise sleeps `pause` and returns.
  void failure(const error& e) {
    auto* se = dynamic_cast<const server_error*>(&e);
    if (se != nullptr && !transient(*se)) throw;
    start_failing();
    if (clock::now() - since_ > window_) throw;
    std::this_thread::sleep_for(pause_);  // the server is restarting: nothing to wait on
  }

  /// Runs f() until it returns without a retryable failure; returns its result.
  template <class F>
  auto run(F&& f) {
    for (;;) {
      try {
        return f();
      } catch (const error& e) {
        failure(e);
      }
    }
  }

 private:
  std::chrono::milliseconds window_;
  std::chrono::milliseconds pause_;
  bool failing_ = false;
  clock::time_point since_{};
};

/// Acks waiting to travel in a channel's next script call (a fused ack): handles (envelopes or
/// entry ids) of handled deliveries. The script call moves them into its arguments with
/// append_to(); if the call fails in flight it hands them back with restore(), for the retry
/// (acking a handle twice finds nothing the second time). Thread-safe.
class deferred_acks {
 public:
  /// Queues h for the next script call.
  void add(std::string h) {
    std::lock_guard lock(mu_);
    acks_.push_back(std::move(h));
  }
  /// Moves every queued handle to the end of args.
  void append_to(std::vector<std::string>& args) {
    std::lock_guard lock(mu_);
    args.insert(args.end(), std::make_move_iterator(acks_.begin()),
                std::make_move_iterator(acks_.end()));
    acks_.clear();
  }
  /// Queues again the handles [first, args.end()) of a call that failed in flight.
  void restore(std::vector<std::string>& args, std::size_t first) {
    std::lock_guard lock(mu_);
    acks_.insert(acks_.end(), std::make_move_iterator(args.begin() + first),
                 std::make_move_iterator(args.end()));
  }
  bool empty() const {
    std::lock_guard lock(mu_);
    return acks_.empty();
  }
  bool contains(const std::string& h) const {
    std::lock_guard lock(mu_);
    return std::find(acks_.begin(), acks_.end(), h) != acks_.end();
  }
  /// Takes every queued handle (to settle them some other way, or to drop them).
  std::vector<std::string> take() {
    std::lock_guard lock(mu_);
    return std::exchange(acks_, {});
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::string> acks_;  // guarded by mu_
};

/// What each thread last took through pop(T&): the handle (envelope or entry id) its next pop,
/// ack_last() or nack_last() settles. Thread-safe.
class last_taken {
 public:
  /// This thread's pending handle, if any (kept until erase(), so a failed settle can retry).
  std::optional<std::string> peek() const {
    std::lock_guard lock(mu_);
    auto it = map_.find(std::this_thread::get_id());
    if (it == map_.end()) return std::nullopt;
    return it->second;
  }
  /// Records h as this thread's pending handle. Allocates the first time per thread.
  void set(std::string h) {
    std::lock_guard lock(mu_);
    map_[std::this_thread::get_id()] = std::move(h);
  }
  /// Forgets this thread's pending handle.
  void erase() {
    std::lock_guard lock(mu_);
    map_.erase(std::this_thread::get_id());
  }

  /// Settles this thread's pending handle with settle(handle) -> bool, then forgets it.
  /// Returns false if there was none or settle() did. Throws what settle() throws (the handle
  /// is then kept).
  template <class Settle>
  bool settle(Settle&& settle) {
    auto h = peek();
    if (!h) return false;
    bool ok = settle(*h);
    erase();
    return ok;
  }

 private:
  mutable std::mutex mu_;
  std::unordered_map<std::thread::id, std::string> map_;  // guarded by mu_
};

/// A channel's `{name}:closed` key, set by close() in any process, and this object's cache of
/// it (once seen set it stays set, until reset()). Thread-safe.
class closed_flag {
 public:
  explicit closed_flag(std::string key) : key_(std::move(key)) {}

  const std::string& key() const noexcept { return key_; }
  /// Sets the key (idempotent) and the cache. Throws redis::error on I/O failure.
  void close(pool& p) {
    p.command("SET", key_, "1");
    seen();
  }
  /// The cache if set, else asks the server. Throws redis::error on I/O failure.
  bool closed(pool& p) const {
    if (seen_.load(std::memory_order_relaxed)) return true;
    bool c = p.command("EXISTS", key_).integer() == 1;
    if (c) seen();
    return c;
  }
  /// Records that a script found the key set.
  void seen() const noexcept { seen_.store(true, std::memory_order_relaxed); }
  /// Forgets the cache (the keys were deleted).
  void reset() noexcept { seen_.store(false, std::memory_order_relaxed); }

 private:
  std::string key_;
  // relaxed: a cache of a Redis key; the key itself orders nothing between threads
  mutable std::atomic<bool> seen_{false};
};

}  // namespace spindle::redis::detail
