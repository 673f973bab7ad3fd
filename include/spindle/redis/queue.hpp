// spindle/redis/queue.hpp - a reliable queue on a Redis list, shared by many processes.
//
//   spindle::redis::queue<std::string> q("jobs", {.port = 6379}, {.visibility_timeout = 30s});
//   q.push("job 1");
//   q.push_all(std::vector<std::string>{"job 2", "job 3"});   // one round trip per 64 items
//   spindle::redis::queue<std::string>::delivery d;
//   if (q.pop_delivery(d) == spindle::status::ok) { work(d.value); q.ack(d); }
//
// Defines queue<T, Codec> (models spindle::channel), queue_options, queue<...>::delivery.
// Operations: push / try_push / push_for / push_all, pop_delivery (+ ack / nack /
// ack_and_pop_delivery), the channel pops (pop(T&) ...), close, recover, dead letters.
//
// Guarantees:
//   - At-least-once: every pushed item is delivered until a consumer acknowledges it. Each item
//     travels in an envelope "<id>:<previous deliveries>:<payload>" with a unique id.
//   - A pop moves the envelope atomically (Lua LMOVE, or BLMOVE while blocking) from the ready
//     list to this object's processing list; ack() removes it. While an object holds deliveries
//     (or has popped once), a heartbeat thread renews its lease every visibility_timeout / 3.
//   - With queue_options::prefetch = n > 1, a pop that finds this object's local buffer empty
//     moves up to n envelopes in one script; the others wait in the buffer (already in the
//     processing list, so covered by the lease, redelivered if this process dies) and are handed
//     out by the next pops of any thread. Buffered envelopes never handed out go back to the pop
//     end of the ready list, delivery count unchanged, when the object is destroyed. If this
//     object's lease expires they are requeued by recovery like any held delivery; the buffer
//     is dropped once a fetch or the next heartbeat finds the lease lost (expired, or taken by
//     another consumer's recovery), and until then may still hand them out (duplicates, whose
//     acks fail).
//   - A consumer that dies (or stalls past its lease) loses its deliveries: any live object
//     (in pop() and in its heartbeat) requeues the processing lists of expired leases, at the
//     pop end of the ready list, with the delivery count incremented. An ack after the lease
//     expired fails (returns false) and never removes another consumer's delivery.
//   - After max_deliveries deliveries without an ack (nack, throwing worker_pool handler, dead
//     consumer), an item goes to the dead-letter list instead.
//   - max_length > 0 bounds the ready list: try_push returns full, push waits (polling).
//   - close() sets a key that every process sees within poll_interval; pushes then fail with
//     closed; pops drain what is left, then return closed once nothing is pending anywhere:
//     the ready list is empty AND no consumer (of any process) holds a delivery, since a held
//     delivery may still be requeued (nack, throwing handler, expired lease). While some are
//     held, pops wait (polling every poll_interval), and get the item if it is requeued.
//   - FIFO per producer while no item is redelivered. Thread-safe: threads share one object
//     through its connection pool; a blocked pop holds only its own connection.
//
// Acknowledging through the channel interface: pop(T&) and its variants hand out the value and
// keep the delivery pending; it is acknowledged when the same thread next calls any pop variant
// on this object (whatever that returns), or by ack_last() / nack_last(); that ack and the next
// pop share one round trip (one Lua script). ack_and_pop_delivery() does the same for explicit
// deliveries (worker_pool uses it after a handler returns; it nacks if the handler throws).
// Such fused acks are sent with this object's next script call that reaches the server: with
// prefetch 1 that is the pop itself; with prefetch > 1 a pop served from the local buffer
// defers them to the next fetch or heartbeat (at most visibility_timeout / 3 later). A deferred
// ack of an item whose lease expired meanwhile fails silently (the item is redelivered), as an
// ack does. ack() and nack() always go to the server at once and report the outcome.
//
// Key layout (every key shares the hash tag {name}, so one queue lives in one cluster slot):
//   {name}:ready        list of envelopes; producers LPUSH, consumers pop from the right
//   {name}:proc:<id>    list: the deliveries held by consumer <id> (one per queue object)
//   {name}:consumers    sorted set: consumer id -> lease expiry (server time, ms)
//   {name}:dead         dead-letter list of envelopes
//   {name}:seq          counter giving envelope ids
//   {name}:pending      counter: items ready or held (pushed, not yet acked or dead-lettered)
//   {name}:closed       exists once close() was called
// Every script declares the keys it touches as KEYS (recovery reads the expired consumers first,
// then passes their processing lists to a second script that re-checks each lease). The
// counters are only consistent if the keys are changed through this class (or destroy()).
//
// Lifetime: the destructor stops the heartbeat, sends deferred acks, gives back buffered
// prefetched envelopes and drops the lease if nothing is held; held deliveries are then
// recovered by others after the visibility timeout. Redis I/O failures throw redis::error (a
// blocking pop retries for a while first, to ride over a server restart).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <iterator>
#include <mutex>
#include <optional>
#include <ranges>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include "spindle/redis/codec.hpp"
#include "spindle/redis/detail/channel_pops.hpp"
#include "spindle/redis/detail/lease.hpp"
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
  /// Envelopes one pop may take from the server into this object's local buffer; >= 1.
  /// 1 (the default) takes one per pop, so no item waits in one consumer's buffer while another
  /// consumer is idle. Larger values cut round trips (one per `prefetch` items) for short jobs.
  std::size_t prefetch = 1;
};

/// A reliable Redis list queue. See the header comment.
template <class T, class Codec = codec<T>>
requires codec_for<Codec, T>
class queue : public detail::channel_pops<queue<T, Codec>, T> {
  friend detail::channel_pops<queue<T, Codec>, T>;

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

  /// The most payloads one push script carries (push_all splits longer ranges).
  static constexpr std::size_t push_batch = 64;

  /// Opens the queue `name` on the server of `o`; connects lazily. Throws std::invalid_argument
  /// for an empty name or a zero visibility_timeout / poll_interval / max_connections /
  /// prefetch. Allocates.
  queue(std::string name, options o, queue_options qo = {})
      : name_(std::move(name)),
        qo_(qo),
        pool_(std::move(o), {.max_connections = check(qo)}),
        closed_("{" + name_ + "}:closed") {
    if (name_.empty()) throw std::invalid_argument("redis::queue: empty name");
    std::string tag = "{" + name_ + "}";
    ready_ = tag + ":ready";
    consumers_ = tag + ":consumers";
    dead_ = tag + ":dead";
    seq_ = tag + ":seq";
    pending_ = tag + ":pending";
    proc_prefix_ = tag + ":proc:";
    consumer_ = detail::consumer_name();
    proc_ = proc_prefix_ + consumer_;
    max_arg_ = std::to_string(qo_.max_deliveries);
    length_arg_ = std::to_string(qo_.max_length);
    prefetch_arg_ = std::to_string(qo_.prefetch);
  }

  queue(const queue&) = delete;
  queue& operator=(const queue&) = delete;

  /// Stops the heartbeat; sends deferred acks, gives back buffered envelopes never handed out,
  /// and drops the lease if nothing is held. Never throws (on failure the lease just expires
  /// and the held items are recovered by others).
  ~queue() {
    hb_.stop();
    if (!registered_.load(std::memory_order_acquire)) return;  // pairs with maintain()'s release
    try {
      auto c = pool_.acquire();
      flush_acks(*c);
      std::vector<std::string> back;
      {
        std::lock_guard lock(buf_mu_);
        back.assign(std::make_move_iterator(buffer_.begin()),
                    std::make_move_iterator(buffer_.end()));
        buffer_.clear();
      }
      if (!back.empty()) {
        back.insert(back.begin(), consumer_);
        give_back_.run(*c, {consumers_, proc_, ready_}, back);
      }
      leave_.run(*c, {consumers_, proc_}, {consumer_});
    } catch (...) {  // the lease then just expires
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

  /// Pushes every item of `items` in order, push_batch per round trip (one script each, so
  /// each batch is checked against close() and max_length atomically); waits like push() while
  /// full. `pushed` is set to how many went in (all of them when ok; a prefix when closed).
  /// Returns ok | closed. Throws redis::error on I/O failure (then `pushed` counts the batches
  /// confirmed; the batch in flight may or may not have gone in). Allocates. Thread-safe.
  template <std::ranges::input_range R>
  requires std::convertible_to<std::ranges::range_reference_t<R>, const T&>
  status push_all(R&& items, std::size_t& pushed) {
    pushed = 0;
    std::vector<std::string> args{length_arg_};
    args.reserve(push_batch + 1);
    auto it = std::ranges::begin(items);
    auto end = std::ranges::end(items);
    while (it != end || args.size() > 1) {
      for (; it != end && args.size() <= push_batch; ++it)
        args.push_back(Codec::encode(static_cast<const T&>(*it)));
      std::int64_t n = push_wait(args, std::nullopt);
      if (n < 0) return status::closed;
      pushed += static_cast<std::size_t>(n);
      args.erase(args.begin() + 1, args.begin() + 1 + n);
    }
    return status::ok;
  }
  /// push_all(items, pushed) without the count. Returns ok | closed. Thread-safe.
  template <std::ranges::input_range R>
  requires std::convertible_to<std::ranges::range_reference_t<R>, const T&>
  status push_all(R&& items) {
    std::size_t n = 0;
    return push_all(std::forward<R>(items), n);
  }

  // ---- consumers: deliveries ----------------------------------------------------------------

  /// Pops one delivery, blocking while empty; the caller must ack() or nack() it.
  /// Returns ok | closed (closed and nothing pending) | cancelled (st). Thread-safe.
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

  /// Acknowledges d and pops the next delivery into d, the ack riding on the pop's round trip
  /// (see the header comment: with prefetch > 1 it may be deferred). Its outcome is not
  /// reported; use ack() where it matters. Blocks while empty. Returns ok | closed |
  /// cancelled (st; the ack is then sent at once). Thread-safe.
  status ack_and_pop_delivery(delivery& d, std::stop_token st = {}) {
    defer_ack(std::move(d.envelope));
    return pop_until(d, std::nullopt, st, true);
  }

  /// Acknowledges d: removes it from this object's processing list. Returns false if the lease
  /// expired (the item is or will be redelivered) or d is not held here. Thread-safe.
  bool ack(const delivery& d) { return settle(d.envelope, "ack") == 1; }
  /// Gives d back: requeued at the front with its delivery count, or dead-lettered once it
  /// reached max_deliveries. Returns false like ack(). Thread-safe.
  bool nack(const delivery& d) { return settle(d.envelope, "nack") > 0; }

  // ---- consumers: the channel interface -----------------------------------------------------

  // pop(T&), pop(T&, st), try_pop, pop_for, pop(), ack_last, nack_last: detail::channel_pops

  // ---- state --------------------------------------------------------------------------------

  /// Marks the queue closed for every process. Idempotent. Thread-safe.
  void close() { closed_.close(pool_); }
  /// True once any process closed the queue. Thread-safe.
  bool closed() const { return closed_.closed(pool_); }
  /// Items ready (not held by a consumer). Approximate. Thread-safe.
  std::size_t size() { return static_cast<std::size_t>(pool_.command("LLEN", ready_).integer()); }
  /// Items held by this object (handed out, or prefetched and buffered). Thread-safe.
  std::size_t in_flight() {
    return static_cast<std::size_t>(pool_.command("LLEN", proc_).integer());
  }
  /// Items pushed and not yet acked or dead-lettered, by every process (ready + held).
  /// Approximate. Thread-safe.
  std::size_t pending() {
    reply r = pool_.command("GET", pending_);
    return r.is_nil() ? 0 : static_cast<std::size_t>(std::max<std::int64_t>(
                                std::stoll(r.str()), 0));
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
    return recover_expired(*c);
  }
  /// Deletes every key of the queue (all processes' state). For tests and tear-down.
  void destroy() {
    auto members = pool_.command("ZRANGE", consumers_, 0, -1);
    std::vector<std::string> keys{ready_, consumers_, dead_, seq_, pending_, closed_.key(), proc_};
    for (const auto& m : members.elements()) keys.push_back(proc_prefix_ + m.str());
    pool_.command("DEL", keys);
    closed_.reset();
    acks_.take();  // dropped: the envelopes they name are gone
    std::lock_guard lock(buf_mu_);
    buffer_.clear();
  }

 private:
  using clock = std::chrono::steady_clock;
  using time_point = clock::time_point;

  static std::size_t check(const queue_options& qo) {
    if (qo.prefetch == 0) throw std::invalid_argument("redis::queue: prefetch must be >= 1, got 0");
    return detail::check_consumer_options("redis::queue", qo.visibility_timeout,
                                          qo.poll_interval, qo.max_connections);
  }

  template <class Rep, class Period>
  static std::chrono::milliseconds ceil_ms(std::chrono::duration<Rep, Period> d) {
    return std::chrono::ceil<std::chrono::milliseconds>(d);
  }

  // One push script with args = {max_length, payload...}. Returns how many were pushed, -1 closed.
  std::int64_t push_script(const std::vector<std::string>& args) {
    auto c = pool_.acquire();
    auto r = push_.run(*c, {ready_, closed_.key(), seq_, pending_}, args).integer();
    if (r < 0) closed_.seen();
    return r;
  }

  // Pushes some of args (a prefix), waiting while full. Returns how many (> 0), -1 closed, or
  // 0 once `deadline` passed.
  std::int64_t push_wait(const std::vector<std::string>& args, std::optional<time_point> deadline) {
    auto backoff = std::chrono::milliseconds(1);
    for (;;) {
      std::int64_t n = push_script(args);
      if (n != 0) return n;
      auto now = clock::now();
      if (deadline && now >= *deadline) return 0;
      auto wait = std::min(backoff, qo_.poll_interval);
      if (deadline) wait = std::min(wait, ceil_ms(*deadline - now));
      std::this_thread::sleep_for(wait);  // polling Redis for room: no server-side notification
      backoff *= 2;
    }
  }

  status push_once(std::string payload) {
    std::int64_t n = push_script({length_arg_, std::move(payload)});
    return n > 0 ? status::ok : n < 0 ? status::closed : status::full;
  }

  status push_until(std::string payload, std::optional<time_point> deadline) {
    std::int64_t n = push_wait({length_arg_, std::move(payload)}, deadline);
    return n > 0 ? status::ok : n < 0 ? status::closed : status::timeout;
  }

  void decode_envelope(std::string e, delivery& out) {
    auto a = e.find(':');
    auto b = a == std::string::npos ? a : e.find(':', a + 1);
    if (b == std::string::npos) throw error("redis::queue: malformed envelope in " + name_);
    out.id = std::stoull(e.substr(0, a));
    out.deliveries = static_cast<std::uint32_t>(std::stoul(e.substr(a + 1, b - a - 1))) + 1;
    out.value = Codec::decode(std::string_view(e).substr(b + 1));
    out.envelope = std::move(e);
  }

  // Registers the lease and starts the heartbeat on first use; recovers expired leases at most
  // every poll_interval from pop.
  void maintain(connection& c) {
    if (!registered_.load(std::memory_order_acquire)) {  // pairs with the release below
      std::call_once(start_once_, [&] {
        heartbeat(c, false);
        registered_.store(true, std::memory_order_release);  // publishes the lease to ~queue
        hb_.start(qo_.visibility_timeout / 3, [this] {
          auto hc = pool_.acquire();
          heartbeat(*hc, true);
          recover_expired(*hc);
          flush_acks(*hc);
        });
      });
    }
    auto now = clock::now();
    std::unique_lock lock(recover_mu_, std::try_to_lock);
    if (lock.owns_lock() && now - last_recover_ >= qo_.poll_interval) {
      last_recover_ = now;
      lock.unlock();
      recover_expired(c);
    }
  }

  // Takes (renewal false) or renews the lease. Drops the local buffer when the lease had been
  // lost: the buffered envelopes were requeued, here or by the consumer that recovered them.
  void heartbeat(connection& c, bool renewal) {
    auto lost = heartbeat_
                    .run(c, {consumers_, proc_, ready_, dead_, pending_},
                         {consumer_, std::to_string(qo_.visibility_timeout.count()), max_arg_,
                          renewal ? "1" : "0"})
                    .integer();
    if (lost != 0) drop_buffer();
  }

  // Recovery in two steps, so that every key is declared: which leases expired, then their
  // processing lists (each lease re-checked inside the script).
  std::size_t recover_expired(connection& c) {
    reply ids = expired_.run(c, {consumers_}, {});
    if (ids.size() == 0) return 0;
    std::vector<std::string> keys{consumers_, ready_, dead_, pending_};
    std::vector<std::string> args{max_arg_};
    for (const auto& id : ids.elements()) {
      keys.push_back(proc_prefix_ + id.str());
      args.push_back(id.str());
    }
    return static_cast<std::size_t>(recover_.run(c, keys, args).integer());
  }

  void drop_buffer() {
    std::lock_guard lock(buf_mu_);
    buffer_.clear();
  }

  // Queues an ack for the next fetch (or heartbeat, or destructor).
  void defer_ack(std::string envelope) { acks_.add(std::move(envelope)); }

  // Sends the deferred acks now (one fetch script that pops nothing).
  void flush_acks(connection& c) {
    if (!acks_.empty()) fetch(c, 0, nullptr);
  }

  bool take_buffered(delivery& out) {
    std::string e;
    {
      std::lock_guard lock(buf_mu_);
      if (buffer_.empty()) return false;
      e = std::move(buffer_.front());
      buffer_.pop_front();
    }
    decode_envelope(std::move(e), out);
    return true;
  }

  // One fetch script: sends the deferred acks, moves up to n envelopes to proc_ (the first into
  // *out, the rest into the buffer). Returns ok | empty | closed. On an I/O failure the acks are
  // kept for the next call (a repeated ack finds nothing and is harmless); then rethrows (the
  // caller marks the object stranded: the script may have moved envelopes we never saw).
  status fetch(connection& c, std::size_t n, delivery* out) {
    std::vector<std::string> args{consumer_, n == qo_.prefetch ? prefetch_arg_ : std::to_string(n)};
    acks_.append_to(args);
    reply r;
    try {
      r = fetch_.run(c, {consumers_, proc_, ready_, closed_.key(), pending_}, args);
    } catch (...) {
      acks_.restore(args, 2);
      throw;
    }
    if (args.size() > 2) {
      std::lock_guard lock(out_mu_);
      for (auto a = args.begin() + 2; a != args.end(); ++a) outstanding_.erase(*a);
    }
    if (r[1].integer() < 0) drop_buffer();  // lease lost: the buffer was or will be requeued
    auto code = r[0].integer();
    if (code == -1) {
      closed_.seen();
      return status::closed;
    }
    if (code != 1 || out == nullptr) return status::empty;
    decode_envelope(r[2].str(), *out);
    if (r.size() > 3) {
      std::lock_guard lock(buf_mu_);
      for (std::size_t i = 3; i < r.size(); ++i) buffer_.push_back(r[i].str());
    }
    return status::ok;
  }

  // One attempt: the buffer, else a fetch (drains, sees closed), then a short BLMOVE if blocking
  // is allowed. Returns ok | empty | closed.
  status pop_once(connection& c, delivery& out, std::chrono::milliseconds block) {
    maintain(c);
    status s = fetch(c, qo_.prefetch, &out);
    if (s != status::empty) return s;
    if (block.count() <= 0) return status::empty;
    std::string secs = std::to_string(static_cast<double>(block.count()) / 1000.0);
    reply m = c.command("BLMOVE", ready_, proc_, "RIGHT", "LEFT", secs);
    if (m.is_nil()) return status::empty;
    decode_envelope(m.str(), out);
    return status::ok;
  }

  // After an I/O failure a pop may have moved items into the processing list without the reply
  // reaching us: give back every held envelope this object never handed out or buffered.
  void return_stranded(connection& c) {
    reply held = c.command("LRANGE", proc_, 0, -1);
    for (const auto& e : held.elements()) {
      {
        std::lock_guard lock(out_mu_);
        if (outstanding_.count(e.str()) != 0) continue;
      }
      {
        std::lock_guard lock(buf_mu_);
        if (std::find(buffer_.begin(), buffer_.end(), e.str()) != buffer_.end()) continue;
      }
      if (acks_.contains(e.str())) continue;
      settle_.run(c, {consumers_, proc_, ready_, dead_, pending_},
                  {consumer_, e.str(), "nack", max_arg_});
    }
  }

  status pop_until(delivery& out, std::optional<time_point> deadline, std::stop_token st,
                   bool may_block) {
    status s = pop_until_raw(out, deadline, st, may_block);
    if (s == status::ok) {
      std::lock_guard lock(out_mu_);
      outstanding_.insert(out.envelope);
    }
    return s;
  }

  status pop_until_raw(delivery& out, std::optional<time_point> deadline, std::stop_token st,
                       bool may_block) {
    detail::retry_window retry(qo_.retry_window, qo_.poll_interval);
    for (;;) {
      if (st.stop_requested()) {  // still send the acks this call was asked to carry
        retry.run([&] {
          auto c = pool_.acquire();
          flush_acks(*c);
          return 0;
        });
        return status::cancelled;
      }
      if (take_buffered(out)) return status::ok;
      auto block = detail::block_time(qo_.poll_interval, deadline, may_block);
      try {
        auto c = pool_.acquire();
        // relaxed: a hint between this object's threads; return_stranded reads the server
        if (stranded_.exchange(false, std::memory_order_relaxed)) return_stranded(*c);
        status s = pop_once(*c, out, block);
        retry.success();
        if (s != status::empty) return s;
      } catch (const error& e) {  // I/O failure or LOADING: retry a while (restart), then throw
        // relaxed: see stranded_. A fetch or BLMOVE may have moved an item we never saw.
        stranded_.store(true, std::memory_order_relaxed);
        if (!may_block) throw;
        retry.failure(e);
      }
      if (!may_block) return status::empty;
      if (deadline && clock::now() >= *deadline) return status::timeout;
    }
  }

  status pop_value(T& out, std::optional<time_point> deadline, std::stop_token st, bool may_block) {
    if (auto prev = last_.peek()) {  // this thread's previous pop(T&): acked with this pop
      last_.erase();
      defer_ack(std::move(*prev));
    }
    delivery d;
    status s = pop_until(d, deadline, st, may_block);
    if (s != status::ok) return s;
    out = std::move(d.value);
    last_.set(std::move(d.envelope));
    return s;
  }

  bool settle_last(const char* mode) {
    return last_.settle([&](const std::string& e) { return settle(e, mode) > 0; });
  }

  std::int64_t settle(const std::string& envelope, const char* mode) {
    auto c = pool_.acquire();
    auto r = settle_
                 .run(*c, {consumers_, proc_, ready_, dead_, pending_},
                      {consumer_, envelope, mode, max_arg_})
                 .integer();
    std::lock_guard lock(out_mu_);
    outstanding_.erase(envelope);
    return r;
  }

  std::string name_;
  queue_options qo_;
  mutable pool pool_;  // thread-safe itself; closed() const reads through it
  detail::closed_flag closed_;
  std::string ready_, consumers_, dead_, seq_, pending_, proc_prefix_, consumer_, proc_;
  std::string max_arg_, length_arg_, prefetch_arg_;  // option values as script arguments
  std::atomic<bool> stranded_{false};  // relaxed: a fetch failed in flight; see pop_until_raw
  detail::script push_{detail::lua_queue_push};
  detail::script fetch_{detail::lua_queue_fetch};
  detail::script heartbeat_{detail::lua_queue_heartbeat};
  detail::script expired_{detail::lua_queue_expired};
  detail::script recover_{detail::lua_queue_recover};
  detail::script settle_{detail::lua_queue_settle};
  detail::script give_back_{detail::lua_queue_give_back};
  detail::script leave_{detail::lua_queue_leave};

  std::once_flag start_once_;
  std::atomic<bool> registered_{false};  // set once, after the lease exists and hb_ started

  std::mutex recover_mu_;
  time_point last_recover_{};  // guarded by recover_mu_

  std::mutex out_mu_;  // never held together with buf_mu_
  std::unordered_set<std::string> outstanding_;  // guarded by out_mu_: handed out, not settled

  std::mutex buf_mu_;
  std::deque<std::string> buffer_;  // guarded by buf_mu_: prefetched, not yet handed out
  detail::deferred_acks acks_;      // for the next fetch (its own lock, never held with others)

  detail::last_taken last_;
  detail::heartbeat_thread hb_;  // last member: stopped (joined) first in destruction order
};

}  // namespace spindle::redis
