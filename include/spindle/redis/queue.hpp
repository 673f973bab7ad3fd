// spindle/redis/queue.hpp - a reliable queue on a Redis list, shared by many processes.
//
//   spindle::redis::queue<std::string> q("jobs", {.port = 6379}, {.visibility_timeout = 30s});
//   q.push("job 1");
//   spindle::redis::queue<std::string>::delivery d;
//   if (q.pop_delivery(d) == spindle::status::ok) { work(d.value); q.ack(d); }
//
// Defines queue<T, Codec> (models spindle::channel), queue_options, queue<...>::delivery.
//
// Guarantees:
//   - At-least-once: every pushed item is delivered until a consumer acknowledges it. Each item
//     travels in an envelope "<id>:<previous deliveries>:<payload>" with a unique id.
//   - A pop moves the envelope atomically (Lua LMOVE, or BLMOVE while blocking) from the ready
//     list to this object's processing list; ack() removes it. While an object holds deliveries
//     (or has popped once), a heartbeat thread renews its lease every visibility_timeout / 3.
//   - A consumer that dies (or stalls past its lease) loses its deliveries: any live object
//     (in pop() and in its heartbeat) requeues the processing lists of expired leases, at the
//     pop end of the ready list, with the delivery count incremented. An ack after the lease
//     expired fails (returns false) and never removes another consumer's delivery.
//   - After max_deliveries deliveries without an ack (nack, throwing worker_pool handler, dead
//     consumer), an item goes to the dead-letter list instead.
//   - max_length > 0 bounds the ready list: try_push returns full, push waits (polling).
//   - close() sets a key that every process sees within poll_interval; pushes then fail with
//     closed, pops drain what is left in the ready list, then return closed.
//   - FIFO per producer while no item is redelivered. Thread-safe: threads share one object
//     through its connection pool; a blocked pop holds only its own connection.
//
// Acknowledging through the channel interface: pop(T&) and its variants hand out the value and
// keep the delivery pending; it is acknowledged when the same thread next calls any pop variant
// on this object (whatever that returns), or by ack_last() / nack_last(); that ack and the next
// pop share one round trip (one Lua script) unless it fails in flight. worker_pool uses
// pop_delivery()/ack()/nack() instead: it acks after the handler returns, nacks if it throws.
//
// Key layout (every key shares the hash tag {name}, so one queue lives in one cluster slot):
//   {name}:ready        list of envelopes; producers LPUSH, consumers pop from the right
//   {name}:proc:<id>    list: the deliveries held by consumer <id> (one per queue object)
//   {name}:consumers    sorted set: consumer id -> lease expiry (server time, ms)
//   {name}:dead         dead-letter list of envelopes
//   {name}:seq          counter giving envelope ids
//   {name}:closed       exists once close() was called
//
// Lifetime: the destructor stops the heartbeat and drops the lease if nothing is held; held
// deliveries are then recovered by others after the visibility timeout. Redis I/O failures
// throw redis::error (a blocking pop retries for a while first, to ride over a server restart).
#pragma once

#include <unistd.h>  // getpid

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "spindle/redis/codec.hpp"
#include "spindle/redis/detail/scripts.hpp"
#include "spindle/redis/error.hpp"
#include "spindle/redis/options.hpp"
#include "spindle/redis/pool.hpp"
#include "spindle/status.hpp"

namespace spindle::redis {

/// Runtime knobs of redis::queue; use with designated initializers.
struct queue_options {
  /// A consumer's lease; its deliveries are requeued this long after its last heartbeat. > 0.
  std::chrono::milliseconds visibility_timeout{30000};
  /// Deliveries before an item goes to the dead-letter list; 0: never.
  std::uint32_t max_deliveries = 5;
  /// Bound on the ready list; 0: unbounded.
  std::size_t max_length = 0;
  /// Longest single block (BLMOVE timeout, push retry) and so the delay to see close(). > 0.
  std::chrono::milliseconds poll_interval{100};
  /// How long a blocking pop retries after a Redis I/O failure before throwing.
  std::chrono::milliseconds retry_window{10000};
  /// Connections of this object's pool (each blocked pop holds one).
  std::size_t max_connections = 8;
};

/// A reliable Redis list queue. See the header comment.
template <class T, class Codec = codec<T>>
requires codec_for<Codec, T>
class queue {
 public:
  using value_type = T;

  /// One delivery: the value, its envelope id, and how many times it has been delivered
  /// (1 the first time).
  struct delivery {
    T value{};
    std::uint64_t id = 0;
    std::uint32_t deliveries = 0;
    std::string envelope{};  // as stored in the processing list; what ack() removes
  };

  /// Opens the queue `name` on the server of `o`; connects lazily. Throws std::invalid_argument
  /// for an empty name or a zero visibility_timeout / poll_interval / max_connections.
  /// Allocates.
  queue(std::string name, options o, queue_options qo = {})
      : name_(std::move(name)), qo_(qo), pool_(std::move(o), {.max_connections = check(qo)}) {
    if (name_.empty()) throw std::invalid_argument("redis::queue: empty name");
    std::string tag = "{" + name_ + "}";
    ready_ = tag + ":ready";
    consumers_ = tag + ":consumers";
    dead_ = tag + ":dead";
    seq_ = tag + ":seq";
    closed_key_ = tag + ":closed";
    proc_prefix_ = tag + ":proc:";
    std::random_device rd;
    std::uint64_t r = (std::uint64_t{rd()} << 32) ^ rd();
    consumer_ = std::to_string(::getpid()) + "-" + std::to_string(r);
    proc_ = proc_prefix_ + consumer_;
  }

  queue(const queue&) = delete;
  queue& operator=(const queue&) = delete;

  /// Stops the heartbeat; drops the lease if nothing is held. Never throws.
  ~queue() {
    {
      std::lock_guard lock(hb_mu_);
      hb_stop_ = true;
    }
    hb_cv_.notify_all();
    if (hb_.joinable()) hb_.join();
    if (registered_.load(std::memory_order_acquire)) {  // pairs with the release in maintain()
      try {
        auto c = pool_.acquire();
        leave_.run(*c, {consumers_, proc_}, {consumer_});
      } catch (...) {  // the lease then just expires
      }
    }
  }

  const std::string& name() const noexcept { return name_; }
  /// This object's consumer id (names its processing list).
  const std::string& consumer_id() const noexcept { return consumer_; }

  // ---- producers ----------------------------------------------------------------------------

  /// Pushes v; waits (polling every poll_interval) while max_length items are ready.
  /// Returns ok | closed. Throws redis::error on I/O failure. Thread-safe.
  status push(const T& v) { return push_until(Codec::encode(v), std::nullopt); }
  status push(T&& v) { return push(static_cast<const T&>(v)); }
  /// Pushes unless full. Returns ok | full | closed. Thread-safe.
  status try_push(const T& v) { return push_once(Codec::encode(v)); }
  status try_push(T&& v) { return try_push(static_cast<const T&>(v)); }
  /// Like push(), for at most d. Returns ok | timeout | closed. Thread-safe.
  template <class Rep, class Period>
  status push_for(T&& v, std::chrono::duration<Rep, Period> d) {
    return push_until(Codec::encode(v), clock::now() + ceil_ms(d));
  }
  template <class Rep, class Period>
  status push_for(const T& v, std::chrono::duration<Rep, Period> d) {
    return push_until(Codec::encode(v), clock::now() + ceil_ms(d));
  }

  // ---- consumers: deliveries ----------------------------------------------------------------

  /// Pops one delivery, blocking while empty; the caller must ack() or nack() it.
  /// Returns ok | closed (closed and drained) | cancelled (st). Thread-safe.
  status pop_delivery(delivery& out, std::stop_token st = {}) {
    return pop_until(out, std::nullopt, st, true);
  }
  /// Like pop_delivery(), for at most d. Returns ok | timeout | closed. Thread-safe.
  template <class Rep, class Period>
  status pop_delivery_for(delivery& out, std::chrono::duration<Rep, Period> d) {
    return pop_until(out, clock::now() + ceil_ms(d), {}, true);
  }
  /// Never blocks. Returns ok | empty | closed. Thread-safe.
  status try_pop_delivery(delivery& out) { return pop_until(out, clock::now(), {}, false); }

  /// Acknowledges d: removes it from this object's processing list. Returns false if the lease
  /// expired (the item is or will be redelivered) or d is not held here. Thread-safe.
  bool ack(const delivery& d) { return settle(d.envelope, "ack") == 1; }
  /// Gives d back: requeued at the front with its delivery count, or dead-lettered once it
  /// reached max_deliveries. Returns false like ack(). Thread-safe.
  bool nack(const delivery& d) { return settle(d.envelope, "nack") > 0; }

  // ---- consumers: the channel interface -----------------------------------------------------

  /// Pops a value, blocking while empty (acks this thread's previous pop first).
  /// Returns ok | closed. Thread-safe.
  status pop(T& out) { return pop_value(out, std::nullopt, {}, true); }
  /// Returns ok | closed | cancelled; st is checked every poll_interval. Thread-safe.
  status pop(T& out, std::stop_token st) { return pop_value(out, std::nullopt, st, true); }
  /// Never blocks. Returns ok | empty | closed. Thread-safe.
  status try_pop(T& out) { return pop_value(out, clock::now(), {}, false); }
  /// Returns ok | timeout | closed. Thread-safe.
  template <class Rep, class Period>
  status pop_for(T& out, std::chrono::duration<Rep, Period> d) {
    return pop_value(out, clock::now() + ceil_ms(d), {}, true);
  }
  /// The value, or nullopt once closed and drained. Thread-safe.
  std::optional<T> pop() {
    T v{};
    if (pop(v) == status::ok) return v;
    return std::nullopt;
  }
  /// Acknowledges this thread's last value from pop(T&). Returns false if none or it failed.
  bool ack_last() { return settle_last("ack"); }
  /// Gives back this thread's last value from pop(T&). Returns false if none or it failed.
  bool nack_last() { return settle_last("nack"); }

  // ---- state --------------------------------------------------------------------------------

  /// Marks the queue closed for every process. Idempotent. Thread-safe.
  void close() {
    pool_.command("SET", closed_key_, "1");
    closed_seen_.store(true, std::memory_order_relaxed);
  }
  /// True once any process closed the queue. Thread-safe.
  bool closed() const {
    if (closed_seen_.load(std::memory_order_relaxed)) return true;
    bool c = pool_.command("EXISTS", closed_key_).integer() == 1;
    if (c) closed_seen_.store(true, std::memory_order_relaxed);
    return c;
  }
  /// Items ready (not held by a consumer). Approximate. Thread-safe.
  std::size_t size() { return static_cast<std::size_t>(pool_.command("LLEN", ready_).integer()); }
  /// Items held by this object's consumers. Thread-safe.
  std::size_t in_flight() {
    return static_cast<std::size_t>(pool_.command("LLEN", proc_).integer());
  }
  /// Items in the dead-letter list. Thread-safe.
  std::size_t dead_letter_size() {
    return static_cast<std::size_t>(pool_.command("LLEN", dead_).integer());
  }
  /// Takes one dead letter (oldest first). Returns ok | empty. Thread-safe.
  status try_pop_dead(delivery& out) {
    reply r = pool_.command("RPOP", dead_);
    if (r.is_nil()) return status::empty;
    decode_envelope(r.str(), out);
    return status::ok;
  }
  /// Requeues the deliveries of every consumer whose lease expired; pop() and the heartbeat do
  /// this by themselves. Returns how many items moved. Thread-safe.
  std::size_t recover() {
    auto c = pool_.acquire();
    return static_cast<std::size_t>(recover_
                                        .run(*c, {consumers_, ready_, dead_},
                                             {proc_prefix_, std::to_string(qo_.max_deliveries)})
                                        .integer());
  }
  /// Deletes every key of the queue (all processes' state). For tests and tear-down.
  void destroy() {
    auto members = pool_.command("ZRANGE", consumers_, 0, -1);
    std::vector<std::string> keys{ready_, consumers_, dead_, seq_, closed_key_, proc_};
    for (const auto& m : members.elements()) keys.push_back(proc_prefix_ + m.str());
    pool_.command("DEL", keys);
    closed_seen_.store(false, std::memory_order_relaxed);
  }

 private:
  using clock = std::chrono::steady_clock;
  using time_point = clock::time_point;

  static std::size_t check(const queue_options& qo) {
    if (qo.visibility_timeout.count() <= 0)
      throw std::invalid_argument("redis::queue: visibility_timeout must be > 0, got " +
                                  std::to_string(qo.visibility_timeout.count()) + " ms");
    if (qo.poll_interval.count() <= 0)
      throw std::invalid_argument("redis::queue: poll_interval must be > 0, got " +
                                  std::to_string(qo.poll_interval.count()) + " ms");
    if (qo.max_connections == 0) throw std::invalid_argument("redis::queue: max_connections is 0");
    return qo.max_connections;
  }

  template <class Rep, class Period>
  static std::chrono::milliseconds ceil_ms(std::chrono::duration<Rep, Period> d) {
    return std::chrono::ceil<std::chrono::milliseconds>(d);
  }

  status push_once(const std::string& payload) {
    auto c = pool_.acquire();
    auto r = push_.run(*c, {ready_, closed_key_, seq_}, {payload, std::to_string(qo_.max_length)})
                 .integer();
    if (r == 1) return status::ok;
    if (r == -1) {
      closed_seen_.store(true, std::memory_order_relaxed);
      return status::closed;
    }
    return status::full;
  }

  status push_until(const std::string& payload, std::optional<time_point> deadline) {
    auto backoff = std::chrono::milliseconds(1);
    for (;;) {
      status s = push_once(payload);
      if (s != status::full) return s;
      auto now = clock::now();
      if (deadline && now >= *deadline) return status::timeout;
      auto wait = std::min(backoff, qo_.poll_interval);
      if (deadline)
        wait = std::min(wait, std::chrono::ceil<std::chrono::milliseconds>(*deadline - now));
      std::this_thread::sleep_for(wait);  // polling Redis for room: no server-side notification
      backoff *= 2;
    }
  }

  void decode_envelope(const std::string& e, delivery& out) {
    auto a = e.find(':');
    auto b = a == std::string::npos ? a : e.find(':', a + 1);
    if (b == std::string::npos) throw error("redis::queue: malformed envelope in " + name_);
    out.id = std::stoull(e.substr(0, a));
    out.deliveries = static_cast<std::uint32_t>(std::stoul(e.substr(a + 1, b - a - 1))) + 1;
    out.value = Codec::decode(std::string_view(e).substr(b + 1));
    out.envelope = e;
  }

  // Registers the lease and starts the heartbeat on first use; recovers expired leases at most
  // every poll_interval from pop.
  void maintain(connection& c) {
    if (!registered_.load(std::memory_order_acquire)) {  // pairs with the release in call_once
      std::call_once(start_once_, [&] {
        heartbeat(c);
        registered_.store(true, std::memory_order_release);  // pairs with the acquire loads
        hb_ = std::thread([this] { heartbeat_loop(); });
      });
    }
    auto now = clock::now();
    std::unique_lock lock(recover_mu_, std::try_to_lock);
    if (lock.owns_lock() && now - last_recover_ >= qo_.poll_interval) {
      last_recover_ = now;
      lock.unlock();
      recover_.run(c, {consumers_, ready_, dead_},
                   {proc_prefix_, std::to_string(qo_.max_deliveries)});
    }
  }

  void heartbeat(connection& c) {
    heartbeat_.run(c, {consumers_, proc_, ready_, dead_},
                   {consumer_, std::to_string(qo_.visibility_timeout.count()),
                    std::to_string(qo_.max_deliveries)});
  }

  void heartbeat_loop() {
    auto period = std::max(qo_.visibility_timeout / 3, std::chrono::milliseconds(1));
    std::unique_lock lock(hb_mu_);
    for (;;) {
      if (hb_cv_.wait_for(lock, period, [&] { return hb_stop_; })) return;
      lock.unlock();
      try {
        auto c = pool_.acquire();
        heartbeat(*c);
        recover_.run(*c, {consumers_, ready_, dead_},
                     {proc_prefix_, std::to_string(qo_.max_deliveries)});
      } catch (const error&) {  // server away: retried next period; the lease may expire
      }
      lock.lock();
    }
  }

  // One attempt: Lua pop (drains, sees closed), then a short BLMOVE if blocking is allowed.
  // Returns ok | empty | closed.
  status pop_once(connection& c, delivery& out, std::chrono::milliseconds block) {
    maintain(c);
    reply r = pop_.run(c, {ready_, proc_, closed_key_}, {});
    auto code = r[0].integer();
    if (code == 1) {
      decode_envelope(r[1].str(), out);
      return status::ok;
    }
    if (code == -1) {
      closed_seen_.store(true, std::memory_order_relaxed);
      return status::closed;
    }
    if (block.count() <= 0) return status::empty;
    std::string secs = std::to_string(static_cast<double>(block.count()) / 1000.0);
    reply m = c.command("BLMOVE", ready_, proc_, "RIGHT", "LEFT", secs);
    if (m.is_nil()) return status::empty;
    decode_envelope(m.str(), out);
    return status::ok;
  }

  // After an I/O failure a pop may have moved an item into the processing list without the
  // reply reaching us: give back every held envelope this object never handed out.
  void return_stranded(connection& c) {
    reply held = c.command("LRANGE", proc_, 0, -1);
    for (const auto& e : held.elements()) {
      {
        std::lock_guard lock(out_mu_);
        if (outstanding_.count(e.str()) != 0) continue;
      }
      settle_.run(c, {consumers_, proc_, ready_, dead_},
                  {consumer_, e.str(), "nack", std::to_string(qo_.max_deliveries)});
    }
  }

  status pop_until(delivery& out, std::optional<time_point> deadline, std::stop_token st,
                   bool may_block, bool stranded = false) {
    status s = pop_until_raw(out, deadline, st, may_block, stranded);
    if (s == status::ok) {
      std::lock_guard lock(out_mu_);
      outstanding_.insert(out.envelope);
    }
    return s;
  }

  status pop_until_raw(delivery& out, std::optional<time_point> deadline, std::stop_token st,
                       bool may_block, bool stranded) {
    bool failing = stranded;  // since failing_since (not an optional: g++ -O2 warns falsely)
    time_point failing_since = clock::now();
    for (;;) {
      if (st.stop_requested()) return status::cancelled;
      auto block = qo_.poll_interval;
      if (deadline) {
        auto left = std::chrono::ceil<std::chrono::milliseconds>(*deadline - clock::now());
        block = std::min(block, std::max(left, std::chrono::milliseconds(0)));
      }
      if (!may_block) block = std::chrono::milliseconds(0);
      try {
        auto c = pool_.acquire();
        if (failing) return_stranded(*c);
        status s = pop_once(*c, out, block);
        failing = false;
        if (s != status::empty) return s;
      } catch (const error& e) {  // I/O failure or LOADING: retry a while (restart), then throw
        auto* se = dynamic_cast<const server_error*>(&e);
        if (se != nullptr && !detail::transient(*se)) throw;
        if (!may_block) throw;
        auto now = clock::now();
        if (!failing) {
          failing = true;
          failing_since = now;
        }
        if (now - failing_since > qo_.retry_window) throw;
        std::this_thread::sleep_for(std::min(qo_.poll_interval, std::chrono::milliseconds(50)));
      }
      if (!may_block) return status::empty;
      if (deadline && clock::now() >= *deadline) return status::timeout;
    }
  }

  status pop_value(T& out, std::optional<time_point> deadline, std::stop_token st, bool may_block) {
    delivery d;
    status s = status::empty;
    std::string prev;
    if (!st.stop_requested()) {
      std::lock_guard lock(last_mu_);
      if (auto it = last_.find(std::this_thread::get_id()); it != last_.end()) prev = it->second;
    }
    bool stranded = false;  // an ack_pop failed in flight: it may have moved an item to proc_
    if (!prev.empty()) {
      try {
        s = ack_and_pop(prev, d);
      } catch (const server_error& e) {
        if (!detail::transient(e)) throw;
        stranded = true;
      } catch (const error&) {
        stranded = true;
      }
    }
    if (prev.empty() || stranded) {  // the slow path: the ack (retried), then the pop
      ack_previous();
      s = pop_until(d, deadline, st, may_block, stranded);
    } else if (s == status::empty && may_block) {  // acked; nothing ready yet: block as usual
      s = pop_until(d, deadline, st, may_block);
    }
    if (s != status::ok) return s;
    out = std::move(d.value);
    std::lock_guard lock(last_mu_);
    last_[std::this_thread::get_id()] = std::move(d.envelope);
    return s;
  }

  // Acks `prev` (this thread's previous pop(T&)) and pops once without blocking, in one round
  // trip (lua_queue_ack_pop). Returns ok | empty | closed. Throws redis::error on I/O failure:
  // then the ack and the pop may or may not have happened.
  status ack_and_pop(const std::string& prev, delivery& out) {
    auto c = pool_.acquire();
    maintain(*c);
    reply r = ack_pop_.run(*c, {consumers_, proc_, ready_, closed_key_}, {consumer_, prev});
    {
      std::lock_guard lock(out_mu_);
      outstanding_.erase(prev);
    }
    {
      std::lock_guard lock(last_mu_);
      last_.erase(std::this_thread::get_id());
    }
    auto code = r[0].integer();
    if (code == 1) {
      decode_envelope(r[2].str(), out);
      std::lock_guard lock(out_mu_);
      outstanding_.insert(out.envelope);
      return status::ok;
    }
    if (code == -1) {
      closed_seen_.store(true, std::memory_order_relaxed);
      return status::closed;
    }
    return status::empty;
  }

  // Acks this thread's previous pop(T&), retrying I/O failures for retry_window (a server
  // restart) so that a finished item is not redelivered.
  void ack_previous() {
    auto start = clock::now();
    for (;;) {
      try {
        settle_last("ack");
        return;
      } catch (const server_error& e) {
        if (!detail::transient(e)) throw;
        if (clock::now() - start > qo_.retry_window) throw;
        std::this_thread::sleep_for(std::min(qo_.poll_interval, std::chrono::milliseconds(50)));
      } catch (const error&) {
        if (clock::now() - start > qo_.retry_window) throw;
        std::this_thread::sleep_for(std::min(qo_.poll_interval, std::chrono::milliseconds(50)));
      }
    }
  }

  bool settle_last(const char* mode) {
    std::string e;
    {
      std::lock_guard lock(last_mu_);
      auto it = last_.find(std::this_thread::get_id());
      if (it == last_.end()) return false;
      e = it->second;  // erased only once settled, so a failed attempt can be retried
    }
    bool ok = settle(e, mode) > 0;
    std::lock_guard lock(last_mu_);
    last_.erase(std::this_thread::get_id());
    return ok;
  }

  std::int64_t settle(const std::string& envelope, const char* mode) {
    auto c = pool_.acquire();
    auto r = settle_
                 .run(*c, {consumers_, proc_, ready_, dead_},
                      {consumer_, envelope, mode, std::to_string(qo_.max_deliveries)})
                 .integer();
    std::lock_guard lock(out_mu_);
    outstanding_.erase(envelope);
    return r;
  }

  std::string name_;
  queue_options qo_;
  mutable pool pool_;  // thread-safe itself; closed() const reads through it
  std::string ready_, consumers_, dead_, seq_, closed_key_, proc_prefix_, consumer_, proc_;
  mutable std::atomic<bool> closed_seen_{false};  // relaxed: a cache of a Redis key; never resets
                                                  // to false except in destroy()
  detail::script push_{detail::lua_queue_push};
  detail::script pop_{detail::lua_queue_pop};
  detail::script heartbeat_{detail::lua_queue_heartbeat};
  detail::script recover_{detail::lua_queue_recover};
  detail::script settle_{detail::lua_queue_settle};
  detail::script ack_pop_{detail::lua_queue_ack_pop};
  detail::script leave_{detail::lua_queue_leave};

  std::once_flag start_once_;
  std::atomic<bool> registered_{false};  // set once, after the lease exists and hb_ started
  std::thread hb_;
  std::mutex hb_mu_;
  std::condition_variable hb_cv_;
  bool hb_stop_ = false;  // guarded by hb_mu_

  std::mutex recover_mu_;
  time_point last_recover_{};  // guarded by recover_mu_

  std::mutex out_mu_;
  std::unordered_set<std::string> outstanding_;  // guarded by out_mu_: handed out, not settled

  std::mutex last_mu_;
  std::unordered_map<std::thread::id, std::string> last_;  // guarded by last_mu_
};

}  // namespace spindle::redis
