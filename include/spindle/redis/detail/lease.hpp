// spindle/redis/detail/lease.hpp - what redis::queue and redis::stream share to keep their
// consumers' leases and ride over I/O failures: a consumer name, the option and server checks,
// the heartbeat thread, the retry window of blocking calls, the client side of the lease
// protocol (holdings: what this object handed out or buffered, fenced against lease loss), and
// the per-thread record of the last value handed out through pop(T&); and the `{name}:closed`
// key with its process-local cache.
//
// The lease protocol, client side (the server side is in scripts.hpp):
//   - A consumer object holds deliveries only under a lease: for redis::queue an entry in
//     `{name}:consumers` checked and renewed by every fetch script; for redis::stream the idle
//     time of the entries it was handed (renewed by XCLAIM of exactly those, never of others
//     its PEL may hold).
//   - holdings::fence: scripts that move items to this consumer run under a shared lock until
//     their result is recorded (handed out or buffered); what must see a quiescent state (taking
//     the lease again after a loss, giving back items a lost reply stranded) runs under the
//     exclusive lock. So no item is ever "between" the server and this object's records when
//     they are compared.
//     Invariant: attacked by "a consumer whose lease is gone moves no item ..." and
//     "a heartbeat that finds its lease gone requeues ..." (test_queue.cpp), and the process
//     fault tests (test_queue_faults.cpp).
#pragma once

#include <unistd.h>  // getpid

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <functional>  // std::function: the heartbeat's body, built once per object
#include <iterator>
#include <mutex>
#include <optional>
#include <random>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
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
/// connection count are > 0, and the poll interval (the longest block of a blocking read) is
/// shorter than the connection's io_timeout (0: no limit), which would fail every blocking read.
/// Returns max_connections (for a member initializer).
inline std::size_t check_consumer_options(const char* who, std::chrono::milliseconds visibility,
                                          std::chrono::milliseconds poll,
                                          std::size_t max_connections,
                                          std::chrono::milliseconds io_timeout) {
  if (visibility.count() <= 0)
    throw std::invalid_argument(std::string(who) + ": visibility_timeout must be > 0, got " +
                                std::to_string(visibility.count()) + " ms");
  if (poll.count() <= 0)
    throw std::invalid_argument(std::string(who) + ": poll_interval must be > 0, got " +
                                std::to_string(poll.count()) + " ms");
  if (max_connections == 0) throw std::invalid_argument(std::string(who) + ": max_connections is 0");
  if (io_timeout.count() > 0 && poll >= io_timeout)
    throw std::invalid_argument(std::string(who) + ": poll_interval (" +
                                std::to_string(poll.count()) +
                                " ms) must be shorter than options::io_timeout (" +
                                std::to_string(io_timeout.count()) + " ms)");
  return max_connections;
}

/// A block time as the seconds argument of BLPOP ("1.250"), formatted with std::to_chars so the
/// C locale's decimal point never matters. Allocates.
inline std::string seconds_arg(std::chrono::milliseconds ms) {
  char buf[32];
  auto v = std::max<std::int64_t>(ms.count(), 0);
  auto r = std::to_chars(buf, buf + 24, v / 1000);
  *r.ptr++ = '.';
  auto frac = v % 1000;
  *r.ptr++ = static_cast<char>('0' + frac / 100);
  *r.ptr++ = static_cast<char>('0' + frac / 10 % 10);
  *r.ptr++ = static_cast<char>('0' + frac % 10);
  return std::string(buf, r.ptr);
}

/// True if the version "major.minor[.patch]" is at least major.minor; false for anything else.
inline bool version_at_least(std::string_view v, int major, int minor) {
  int a = 0, b = 0;
  auto r = std::from_chars(v.data(), v.data() + v.size(), a);
  if (r.ec != std::errc{} || r.ptr == v.data() + v.size() || *r.ptr != '.') return false;
  auto r2 = std::from_chars(r.ptr + 1, v.data() + v.size(), b);
  if (r2.ec != std::errc{}) return false;
  return a > major || (a == major && b >= minor);
}

/// Checks, once per object, what the Redis channels need of the server: version >= 6.2 (LMOVE,
/// XAUTOCLAIM, BLPOP with a decimal timeout) - throws redis::error naming `who` otherwise - and
/// maxmemory-policy noeviction (any other policy may evict a queue's keys: that is printed once
/// per process on stderr, as BullMQ warns). Returns that warning ("" if none). Throws
/// redis::error on I/O failure.
inline std::string check_server(connection& c, const char* who) {
  auto field = [](const std::string& text, std::string_view key) -> std::string {
    auto at = text.find(key);
    if (at == std::string::npos) return {};
    auto begin = at + key.size();
    auto end = text.find_first_of("\r\n", begin);
    return text.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
  };
  std::string v = field(c.command("INFO", "server").str(), "redis_version:");
  if (!v.empty() && !version_at_least(v, 6, 2))
    throw error(std::string(who) + ": needs Redis >= 6.2 (LMOVE, XAUTOCLAIM), the server is " + v);
  std::string policy = field(c.command("INFO", "memory").str(), "maxmemory_policy:");
  if (policy.empty() || policy == "noeviction") return {};
  std::string warning = std::string(who) + ": warning: the server's maxmemory-policy is " +
                        policy + ", not noeviction: Redis may evict queue keys and lose jobs";
  static std::once_flag warned;
  std::call_once(warned, [&] { std::fprintf(stderr, "%s\n", warning.c_str()); });
  return warning;
}

/// The client side of a consumer's lease (see the header comment): what this object handed out
/// and has not settled (`outstanding`), what it fetched and not yet handed out (`buffer`, queue
/// only), the lease generation (bumped when a lost lease is taken again: everything recorded
/// before is forfeit), and the fence. Thread-safe.
class holdings {
 public:
  /// Scripts that move items to this consumer hold it shared until their result is recorded;
  /// lease re-takes and stranded-item returns hold it exclusively.
  std::shared_mutex fence;

  /// Records h as handed out.
  void hand_out(const std::string& h) {
    std::lock_guard lock(mu_);
    out_.insert(h);
  }
  /// Appends fetched handles to the buffer (in hand-out order).
  template <class It>
  void buffer(It first, It last) {
    std::lock_guard lock(mu_);
    buf_.insert(buf_.end(), first, last);
  }
  /// Moves the oldest buffered handle to the handed-out set. False if none.
  bool take_buffered(std::string& h) {
    std::lock_guard lock(mu_);
    if (buf_.empty()) return false;
    h = std::move(buf_.front());
    buf_.pop_front();
    out_.insert(h);
    return true;
  }
  /// Forgets h (settled, or dead-lettered).
  void settled(const std::string& h) {
    std::lock_guard lock(mu_);
    out_.erase(h);
  }
  /// True if h is handed out or buffered here.
  bool holds(const std::string& h) const {
    std::lock_guard lock(mu_);
    return out_.count(h) != 0 || std::find(buf_.begin(), buf_.end(), h) != buf_.end();
  }
  /// The handed-out handles (for a renewal of exactly those).
  std::vector<std::string> handed_out() const {
    std::lock_guard lock(mu_);
    return {out_.begin(), out_.end()};
  }
  bool empty() const {
    std::lock_guard lock(mu_);
    return out_.empty() && buf_.empty();
  }
  /// The lease was lost: forgets everything, returns the buffer (never handed out), bumps the
  /// generation. Call with the fence held exclusively.
  std::vector<std::string> forfeit() {
    std::lock_guard lock(mu_);
    std::vector<std::string> b(std::make_move_iterator(buf_.begin()),
                               std::make_move_iterator(buf_.end()));
    buf_.clear();
    out_.clear();
    ++generation_;
    return b;
  }
  /// Takes the buffer (to give it back on destruction).
  std::vector<std::string> take_buffer() {
    std::lock_guard lock(mu_);
    std::vector<std::string> b(std::make_move_iterator(buf_.begin()),
                               std::make_move_iterator(buf_.end()));
    buf_.clear();
    return b;
  }
  void clear() { forfeit(); }
  /// Lease generation: how many times the lease was taken again after a loss.
  std::uint64_t generation() const {
    std::lock_guard lock(mu_);
    return generation_;
  }

 private:
  mutable std::mutex mu_;
  std::unordered_set<std::string> out_;  // guarded by mu_
  std::deque<std::string> buf_;          // guarded by mu_
  std::uint64_t generation_ = 0;         // guarded by mu_
};

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
    // On a cluster, MOVED (the slot's primary changed: the pinned pool reads the map again)
    // and CLUSTERDOWN (a failover in progress) mean "not run": retried like I/O failures.
    if (se != nullptr && !transient(*se) && !se->transient() && se->code() != "MOVED") throw;
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
