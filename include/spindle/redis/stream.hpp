// spindle/redis/stream.hpp - a Redis Stream with a consumer group, as a reliable channel.
//
//   spindle::redis::stream<std::string> s("events", {.port = 6379}, {.group = "workers"});
//   s.push("e1");                                         // XADD (MAXLEN if max_length > 0)
//   spindle::redis::stream<std::string>::delivery d;
//   if (s.pop_delivery(d) == spindle::status::ok) { use(d.value); s.ack(d); }   // XREADGROUP, XACK
//
// Defines stream<T, Codec> (models spindle::channel), stream_options, stream<...>::delivery.
//
// Guarantees:
//   - At-least-once within the group: every entry is delivered to one consumer of the group
//     until acknowledged. The group is created when missing (XGROUP CREATE ... 0 MKSTREAM), so
//     entries pushed before the first consumer are delivered too.
//   - Each pop first claims (XAUTOCLAIM, in a Lua script) a delivery idle for longer than
//     visibility_timeout - that of a dead or stalled consumer - then reads a new entry. A heartbeat
//     thread renews this object's deliveries every visibility_timeout / 3 (XCLAIM JUSTID, which
//     does not count a delivery).
//   - ack (XACK + XDEL) and nack (requeue at the end with its delivery count) fail, returning
//     false, when the entry is no longer held by this consumer (claimed by another after the
//     lease expired, or already settled): they never settle another consumer's delivery.
//   - After max_deliveries deliveries without an ack an entry moves to the dead-letter stream.
//   - max_length > 0 trims the stream (XADD MAXLEN): the oldest entries are dropped, as Redis
//     streams do; there is no backpressure, so try_push never returns full.
//   - close() sets a key seen by every process within poll_interval; pushes then fail with
//     closed; pops drain new and stale entries and return closed once nothing is pending in
//     the group: no new entry AND no entry held by any consumer (XPENDING), since a held entry
//     may still be nacked or claimed after its lease. While some are held, pops wait (polling
//     every poll_interval) and get the entry if it comes back.
//   - Thread-safe: threads share one object (one consumer name) through its connection pool; a
//     blocked pop holds only its own connection.
//
// Acknowledging through the channel interface: as redis::queue - pop(T&) keeps the delivery
// pending until this thread's next pop, ack_last() or nack_last(); that ack travels in the next
// pop's script (one round trip for both). ack_and_pop_delivery() does the same for explicit
// deliveries: worker_pool uses it after a handler returns, and nacks when the handler throws.
// A fused ack of an entry this consumer no longer holds (claimed by another after the lease
// expired) is skipped silently, as ack() would fail; ack() and nack() report the outcome.
//
// Key layout (hash tag {name}):
//   {name}:stream     the stream; entries {v: payload, d: deliveries before (re)adding}
//   {name}:dead       dead-letter stream; entries {v, id (the original id), deliveries}
//   {name}:closed     exists once close() was called
// Consumer group: options.group; consumer name: <pid>-<random> per object.
//
// Lifetime: the destructor stops the heartbeat; deliveries still held are claimed by others
// after the visibility timeout. Redis I/O failures throw redis::error (a blocking pop retries
// for retry_window first).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
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

/// Runtime knobs of redis::stream; use with designated initializers.
struct stream_options {
  std::string group = "spindle";                        ///< consumer group name, not empty
  std::chrono::milliseconds visibility_timeout{30000};  ///< idle time before a claim; > 0
  std::uint32_t max_deliveries = 5;                     ///< 0: never dead-letter
  std::size_t max_length = 0;                           ///< XADD MAXLEN; 0: no trimming
  std::chrono::milliseconds poll_interval{100};         ///< XREADGROUP BLOCK; > 0
  std::chrono::milliseconds retry_window{10000};        ///< blocking pops retry I/O this long
  std::size_t max_connections = 8;                      ///< of this object's pool
};

/// A reliable channel on a Redis Stream consumer group. See the header comment.
template <class T, class Codec = codec<T>>
requires codec_for<Codec, T>
class stream : public detail::channel_pops<stream<T, Codec>, T> {
  friend detail::channel_pops<stream<T, Codec>, T>;

 public:
  using value_type = T;

  /// One delivery: the value, its entry id, and its delivery count (1 the first time).
  struct delivery {
    T value{};
    std::string id{};
    std::uint32_t deliveries = 0;
  };

  /// Opens the stream `name`; connects lazily. Throws std::invalid_argument for an empty name
  /// or group, or a zero visibility_timeout / poll_interval / max_connections. Allocates.
  stream(std::string name, options o, stream_options so = {})
      : name_(std::move(name)),
        so_(std::move(so)),
        pool_(checked(std::move(o), so_), {.max_connections = so_.max_connections}),
        closed_("{" + name_ + "}:closed") {
    if (name_.empty()) throw std::invalid_argument("redis::stream: empty name");
    std::string tag = "{" + name_ + "}";
    stream_ = tag + ":stream";
    dead_ = tag + ":dead";
    consumer_ = detail::consumer_name();
  }

  stream(const stream&) = delete;
  stream& operator=(const stream&) = delete;

  /// Stops the heartbeat; acks still waiting for a pop are sent (best effort). Never throws.
  ~stream() {
    hb_.stop();
    for (const auto& id : acks_.take()) {
      try {
        settle(id, "ack");
      } catch (...) {  // the entry is then claimed by another consumer after its lease
      }
    }
  }

  const std::string& name() const noexcept { return name_; }
  /// This object's consumer name in the group.
  const std::string& consumer_id() const noexcept { return consumer_; }

  // ---- producers ----------------------------------------------------------------------------

  /// Appends v (XADD). Returns ok | closed. Never waits. Thread-safe.
  status push(const T& v) { return push_once(Codec::encode(v)); }
  status push(T&& v) { return push(static_cast<const T&>(v)); }
  /// Same as push(): a stream is never full. Returns ok | closed. Thread-safe.
  status try_push(const T& v) { return push(v); }
  status try_push(T&& v) { return push(static_cast<const T&>(v)); }
  /// Same as push(). Returns ok | closed. Thread-safe.
  template <class Rep, class Period>
  status push_for(T&& v, std::chrono::duration<Rep, Period>) {
    return push(static_cast<const T&>(v));
  }
  template <class Rep, class Period>
  status push_for(const T& v, std::chrono::duration<Rep, Period>) {
    return push(v);
  }

  // ---- consumers: deliveries ----------------------------------------------------------------

  /// Pops one delivery (a stale one first), blocking while none; ack() or nack() it.
  /// Returns ok | closed | cancelled. Thread-safe.
  status pop_delivery(delivery& out, std::stop_token st = {}) {
    return pop_until(out, std::nullopt, st, true);
  }
  /// Returns ok | timeout | closed. Thread-safe.
  template <class Rep, class Period>
  status pop_delivery_for(delivery& out, std::chrono::duration<Rep, Period> d) {
    return pop_until(out, clock::now() + std::chrono::ceil<std::chrono::milliseconds>(d), {}, true);
  }
  /// Never blocks. Returns ok | empty | closed. Thread-safe.
  status try_pop_delivery(delivery& out) { return pop_until(out, clock::now(), {}, false); }

  /// Acknowledges `d` and pops the next delivery into it, the ack travelling in the pop's first
  /// script (one round trip instead of two). Like pop_delivery() otherwise; the ack's outcome
  /// is not reported (an entry no longer held is skipped). Returns ok | closed | cancelled.
  /// Thread-safe.
  status ack_and_pop_delivery(delivery& d, std::stop_token st = {}) {
    acks_.add(std::move(d.id));
    return pop_until(d, std::nullopt, st, true);
  }

  /// Acknowledges d (XACK, XDEL). Returns false if this consumer no longer holds it.
  /// Thread-safe.
  bool ack(const delivery& d) { return settle(d.id, "ack") > 0; }
  /// Requeues d at the end with its delivery count, or dead-letters it at max_deliveries.
  /// Returns false if this consumer no longer holds it. Thread-safe.
  bool nack(const delivery& d) { return settle(d.id, "nack") > 0; }

  // ---- consumers: the channel interface -----------------------------------------------------

  // pop(T&), pop(T&, st), try_pop, pop_for, pop(), ack_last, nack_last: detail::channel_pops

  // ---- state --------------------------------------------------------------------------------

  /// Marks the stream closed for every process. Idempotent. Thread-safe.
  void close() { closed_.close(pool_); }
  /// True once any process closed the stream. Thread-safe.
  bool closed() const { return closed_.closed(pool_); }
  /// Entries in the stream (delivered or not, until acked). Thread-safe.
  std::size_t size() { return static_cast<std::size_t>(pool_.command("XLEN", stream_).integer()); }
  /// Deliveries held by this consumer. Thread-safe.
  std::size_t in_flight() {
    ensure_group();
    auto r = pool_.command("XPENDING", stream_, so_.group, "-", "+", 1000000, consumer_);
    return r.size();
  }
  /// Entries delivered to some consumer of the group and not yet acked (XPENDING). Thread-safe.
  std::size_t pending() {
    ensure_group();
    return static_cast<std::size_t>(pool_.command("XPENDING", stream_, so_.group)[0].integer());
  }
  /// Entries in the dead-letter stream. Thread-safe.
  std::size_t dead_letter_size() {
    return static_cast<std::size_t>(pool_.command("XLEN", dead_).integer());
  }
  /// Deletes every key of the stream. For tests and tear-down.
  void destroy() {
    pool_.command("DEL", stream_, dead_, closed_.key());
    closed_.reset();
    group_ready_.store(false, std::memory_order_relaxed);
  }

 private:
  using clock = std::chrono::steady_clock;
  using time_point = clock::time_point;

  static options checked(options o, const stream_options& so) {
    if (so.group.empty()) throw std::invalid_argument("redis::stream: empty group name");
    detail::check_consumer_options("redis::stream", so.visibility_timeout, so.poll_interval,
                                   so.max_connections, o.io_timeout);
    return o;
  }

  status push_once(const std::string& payload) {
    auto c = pool_.acquire();
    auto r =
        push_.run(*c, {stream_, closed_.key()}, {payload, std::to_string(so_.max_length)}).integer();
    if (r == -1) {
      closed_.seen();
      return status::closed;
    }
    return status::ok;
  }

  void ensure_group() {
    if (group_ready_.load(std::memory_order_relaxed)) return;  // idempotent server-side step
    try {
      pool_.command("XGROUP", "CREATE", stream_, so_.group, "0", "MKSTREAM");
    } catch (const server_error& e) {
      if (e.code() != "BUSYGROUP") throw;
    }
    group_ready_.store(true, std::memory_order_relaxed);
  }

  void start_heartbeat() {
    hb_.start(so_.visibility_timeout / 3, [this] {
      auto c = pool_.acquire();
      heartbeat_.run(*c, {stream_}, {so_.group, consumer_});
    });
  }

  static void fill(delivery& out, const reply& id, const reply& payload, std::int64_t n) {
    out.value = Codec::decode(payload.str());
    out.id = id.str();
    out.deliveries = static_cast<std::uint32_t>(n);
  }

  // One attempt: Lua claim-or-read (drains, sees closed), then XREADGROUP BLOCK.
  status pop_once(connection& c, delivery& out, std::chrono::milliseconds block) {
    std::string cursor;
    {
      std::lock_guard lock(cursor_mu_);
      cursor = cursor_;
    }
    std::vector<std::string> args{so_.group, consumer_,
                                  std::to_string(so_.visibility_timeout.count()),
                                  std::to_string(so_.max_deliveries), std::move(cursor)};
    acks_.append_to(args);
    reply r;
    try {
      r = pop_.run(c, {stream_, dead_, closed_.key()}, args);
    } catch (...) {  // sent again with the retry (acking an entry twice skips the second)
      acks_.restore(args, 5);
      throw;
    }
    auto code = r[0].integer();
    {
      std::lock_guard lock(cursor_mu_);
      cursor_ = r[r.size() - 1].str();
    }
    if (code == 1) {
      fill(out, r[1], r[2], r[3].integer());
      return status::ok;
    }
    if (code == -1) {
      closed_.seen();
      return status::closed;
    }
    if (block.count() <= 0) return status::empty;
    reply m = c.command("XREADGROUP", "GROUP", so_.group, consumer_, "COUNT", 1, "BLOCK",
                        block.count(), "STREAMS", stream_, ">");
    if (m.is_nil() || m.size() == 0) return status::empty;
    // RESP2: [[name, entries]]; RESP3: map {name: entries}.
    const reply& entries = m[0].is_aggregate() ? m[0][1] : m[1];
    if (entries.size() == 0) return status::empty;
    const reply& e = entries[0];
    const reply* v = nullptr;
    std::int64_t before = 0;
    for (std::size_t i = 0; i + 1 < e[1].size(); i += 2) {
      if (e[1][i].str() == "v") v = &e[1][i + 1];
      if (e[1][i].str() == "d") before = e[1][i + 1].integer();
    }
    if (v == nullptr) throw error("redis::stream: entry without a value in " + name_);
    fill(out, e[0], *v, before + 1);
    return status::ok;
  }

  status pop_until(delivery& out, std::optional<time_point> deadline, std::stop_token st,
                   bool may_block) {
    detail::retry_window retry(so_.retry_window, so_.poll_interval);
    for (;;) {
      if (st.stop_requested()) return status::cancelled;
      auto block = detail::block_time(so_.poll_interval, deadline, may_block);
      try {
        ensure_group();
        start_heartbeat();
        auto c = pool_.acquire();
        status s = pop_once(*c, out, block);
        retry.success();
        if (s != status::empty) return s;
      } catch (const error& e) {
        auto* se = dynamic_cast<const server_error*>(&e);
        if (se != nullptr && se->code() == "NOGROUP") {  // stream deleted: create the group again
          group_ready_.store(false, std::memory_order_relaxed);
          continue;
        }
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
      acks_.add(std::move(*prev));
    }
    delivery d;
    status s = pop_until(d, deadline, st, may_block);
    if (s != status::ok) return s;
    out = std::move(d.value);
    last_.set(std::move(d.id));
    return s;
  }

  bool settle_last(const char* mode) {
    return last_.settle([&](const std::string& id) { return settle(id, mode) > 0; });
  }

  std::int64_t settle(const std::string& id, const char* mode) {
    auto c = pool_.acquire();
    return settle_
        .run(*c, {stream_, dead_},
             {so_.group, consumer_, id, mode, std::to_string(so_.max_deliveries)})
        .integer();
  }

  std::string name_;
  stream_options so_;
  mutable pool pool_;  // thread-safe itself; closed() const reads through it
  detail::closed_flag closed_;
  std::string stream_, dead_, consumer_;
  std::atomic<bool> group_ready_{false};  // relaxed: XGROUP CREATE is idempotent
  detail::script push_{detail::lua_stream_push, detail::lua_stream_prelude};
  detail::script pop_{detail::lua_stream_pop, detail::lua_stream_prelude};
  detail::script settle_{detail::lua_stream_settle, detail::lua_stream_prelude};
  detail::script heartbeat_{detail::lua_stream_heartbeat, detail::lua_stream_prelude};

  detail::deferred_acks acks_;  // handled entry ids for the next pop's script

  std::mutex cursor_mu_;
  std::string cursor_ = "0-0";  // guarded by cursor_mu_: XAUTOCLAIM scan position

  detail::last_taken last_;
  detail::heartbeat_thread hb_;  // last member: stopped (joined) first in destruction order
};

}  // namespace spindle::redis
