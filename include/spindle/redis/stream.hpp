// spindle/redis/stream.hpp - a Redis Stream with a consumer group, as a reliable channel.
//
//   spindle::redis::stream<std::string> s("events", {.port = 6379}, {.group = "workers"});
//   s.push("e1");                                         // XADD (MAXLEN if max_length > 0)
//   spindle::redis::stream<std::string>::delivery d;
//   if (s.pop_delivery(d) == spindle::status::ok) { use(d.value); s.ack(d); }   // XREADGROUP, XACK
//
// Defines stream<T, Codec> (models spindle::channel), stream_options, stream<...>::delivery,
// and for reading the log and watching it: stream<...>::read_range / read_range_reverse /
// read_dead_letters (pages of stream<...>::record / dead_letter) and health() (stream_health).
//
// Guarantees:
//   - A stream is a log: every consumer group sees every entry. Within one group, every entry is
//     delivered to one consumer of the group until acknowledged (at-least-once). The group is
//     created when missing (XGROUP CREATE ... 0 MKSTREAM), so entries pushed before the first
//     consumer are delivered too.
//   - ack is XACK: it never deletes the entry (another group may still need it). Retention is an
//     explicit policy (stream_options): by default (trim_acknowledged) the heartbeat trims the
//     entries every existing group has acknowledged, so nothing a group still needs is dropped
//     (a group created later sees only what is left); max_length (XADD MAXLEN) and max_age
//     (XTRIM MINID) are opt-in bounds that drop the oldest entries whether acknowledged or not.
//   - Each pop first claims (XAUTOCLAIM, in a Lua script) a delivery idle for longer than
//     visibility_timeout - that of a dead or stalled consumer, or one whose reply was lost - then
//     reads a new entry. The lease of a delivery is its idle time: a heartbeat thread renews,
//     every visibility_timeout / 3, exactly the deliveries this object handed out and has not
//     settled (XCLAIM JUSTID, which does not count a delivery), never others its PEL may hold.
//   - An entry whose payload Codec::decode rejects, or that has no v field, is dead-lettered at
//     once with the reason ("undecodable payload", "entry without a v field").
//   - ack and nack fail, returning false, when the entry is no longer held by this consumer
//     (claimed by another after the lease expired, or already settled): they never settle
//     another consumer's delivery. nack leaves the entry pending but claimable at once by any
//     consumer of the group (the claim counts the next delivery).
//   - After max_deliveries deliveries without an ack an entry moves to the dead-letter stream
//     (recording max_deliveries deliveries and the reason "max_deliveries") and is acked.
//   - The dead-letter stream is never trimmed (a bound would drop failed entries silently):
//     watch dead_letter_size().
//   - close() sets a key seen by every process within poll_interval; pushes then fail with
//     closed; pops drain new and stale entries and return closed once nothing is pending in
//     the group: no new entry AND no entry held by any consumer (XPENDING), since a held entry
//     may still be nacked or claimed after its lease. While some are held, pops wait (polling
//     every poll_interval) and get the entry if it comes back.
//   - A consumer object that holds nothing is deleted from the group when it is destroyed; the
//     heartbeat deletes the group's consumers that hold nothing and were idle longer than the
//     visibility timeout.
//   - The log can be read back at any time without a group (replay, audit, event sourcing):
//     read_range(from, to, count) returns at most count entries (clamped to max_read_count, so
//     a huge stream never loads at once) and the bound to continue from. An entry that does not
//     decode is returned with its reason, never skipped. Reading acknowledges nothing.
//   - health() reports, per group, lag, pending, the oldest pending entry (idle time and age)
//     and each consumer's pending count and idle time, in one read-only script: it never
//     blocks and creates no key or group.
//   - Thread-safe: threads share one object (one consumer name) through its connection pool; a
//     blocked pop holds only its own connection. Needs Redis >= 6.2 (checked on first use).
//
// pipeline and fan_* over a redis::stream: as for redis::queue, the channel interface acks a
// value at the same thread's next pop, before the value is handled downstream; use worker_pool
// or pop_delivery + ack for at-least-once processing.
//
// Acknowledging through the channel interface: as redis::queue - pop(T&) keeps the delivery
// pending until this thread's next pop, ack_last() or nack_last(); that ack travels in the next
// pop's script (one round trip for both). ack_and_pop_delivery() does the same for explicit
// deliveries: worker_pool uses it after a handler returns, and nacks when the handler throws.
// A fused ack of an entry this consumer no longer holds (claimed by another after the lease
// expired) is skipped silently, as ack() would fail; ack() and nack() report the outcome.
//
// Key layout (hash tag {name}; no key is shared with a redis::queue of the same name):
//   {name}:stream          the stream; entries {v: payload[, d: deliveries before (re)adding]}
//   {name}:stream:dead     dead-letter stream; entries {v, id (the original id), group,
//                          deliveries (made), reason}
//   {name}:stream:closed   exists once close() was called
// Consumer group: options.group; consumer name: <pid>-<random> per object. The wire format is
// documented in README.md ("Wire format of queue and stream").
//
// Lifetime: the destructor stops the heartbeat, sends deferred acks, and leaves the group if it
// holds nothing; deliveries still held are claimed by others after the visibility timeout.
// Redis I/O failures throw redis::error (a blocking pop retries for retry_window first).
#pragma once

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <iterator>
#include <utility>
#include <vector>

#include "spindle/deadline.hpp"
#include "spindle/redis/cluster.hpp"
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
  /// Retention, opt-in: XADD MAXLEN keeps the newest max_length entries, dropping older ones
  /// even if a group has not acknowledged them. 0: no length bound.
  std::size_t max_length = 0;
  std::chrono::milliseconds poll_interval{100};  ///< XREADGROUP BLOCK; > 0, < io_timeout
  std::chrono::milliseconds retry_window{10000};  ///< blocking pops retry I/O this long
  std::size_t max_connections = 8;               ///< of this object's pool
  /// Retention, opt-in: each push trims entries older than max_age (server time), acknowledged
  /// or not. 0: no age bound.
  std::chrono::milliseconds max_age{0};
  /// Retention, the default: the heartbeat trims the entries that every group of the stream has
  /// acknowledged (never one a group still needs). false: keep everything.
  bool trim_acknowledged = true;
};

/// One consumer of a group, as stream<...>::health() reports it (XINFO CONSUMERS).
struct stream_consumer_health {
  std::string name{};
  std::uint64_t pending = 0;          ///< entries delivered to it and not acknowledged
  std::chrono::milliseconds idle{0};  ///< since its last read or claim (server's figure)
};

/// One consumer group, as stream<...>::health() reports it.
struct stream_group_health {
  std::string name{};
  /// Entries of the stream not yet delivered to the group (XINFO GROUPS `lag`); nullopt when
  /// unknown: Redis < 7 does not report it, and Redis 7 cannot tell after some deletions.
  std::optional<std::uint64_t> lag{};
  std::uint64_t pending = 0;      ///< delivered to a consumer, not acknowledged (XPENDING)
  std::string last_delivered_id{};
  std::string oldest_pending_id{};  ///< empty when nothing is pending
  /// Time since the oldest pending entry was last delivered (XPENDING); nullopt if none.
  std::optional<std::chrono::milliseconds> oldest_pending_idle{};
  /// Server time less the oldest pending entry's id time (its age, for ids XADD made with `*`;
  /// 0 for a foreign id in the future); nullopt if none.
  std::optional<std::chrono::milliseconds> oldest_pending_age{};
  std::uint32_t oldest_pending_deliveries = 0;  ///< the group's delivery count of that entry
  std::vector<stream_consumer_health> consumers{};
};

/// What stream<...>::health() reports: the stream and every consumer group of it.
struct stream_health {
  std::uint64_t length = 0;        ///< entries in the stream (XLEN)
  std::uint64_t dead_letters = 0;  ///< entries in the dead-letter stream
  bool closed = false;             ///< close() was called
  std::vector<stream_group_health> groups{};  ///< every group of the stream, not only ours
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
  /// or group, a zero visibility_timeout / poll_interval / max_connections, or poll_interval >=
  /// o.io_timeout. Allocates.
  stream(std::string name, options o, stream_options so = {})
      : name_(std::move(name)),
        so_(std::move(so)),
        pool_(checked(std::move(o), so_), {.max_connections = so_.max_connections}),
        closed_("{" + name_ + "}:stream:closed") {
    init();
  }

  /// Opens the stream `name` on a Redis Cluster: every key shares the tag {name}, and the
  /// object's pool is pinned to that slot's primary (pool.hpp), following a failover or a
  /// resharding. `c` must outlive the stream. Throws like the other constructor (poll_interval
  /// is checked against c.config().node.io_timeout), and std::invalid_argument for a name
  /// starting with '}' (its keys would have no hash tag). Allocates.
  stream(std::string name, cluster& c, stream_options so = {})
      : name_(std::move(name)),
        so_(std::move(so)),
        pool_(c, "{" + name_ + "}", {.max_connections = checked_count(c.config().node, so_)}),
        closed_("{" + name_ + "}:stream:closed") {
    detail::check_tag_name("redis::stream", name_);
    init();
  }

  stream(const stream&) = delete;
  stream& operator=(const stream&) = delete;

  /// Stops the heartbeat; acks still waiting for a pop are sent, and the consumer leaves the
  /// group if it holds nothing (best effort). Never throws.
  ~stream() {
    hb_.stop();
    for (const auto& id : acks_.take()) {
      try {
        settle(id, "ack");
      } catch (...) {  // the entry is then claimed by another consumer after its lease
      }
    }
    if (!group_ready_.load(std::memory_order_relaxed)) return;
    try {
      auto c = pool_.acquire();
      leave_.run(*c, keys_, {so_.group, consumer_});
    } catch (...) {  // swept later by another consumer's heartbeat
    }
  }

  const std::string& name() const noexcept { return name_; }
  /// This object's consumer name in the group.
  const std::string& consumer_id() const noexcept { return consumer_; }

  // ---- producers ----------------------------------------------------------------------------

  /// Appends v (XADD, trimmed per max_length / max_age). Returns ok | closed. Never waits.
  /// Thread-safe.
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
  /// Returns ok | timeout | closed (duration::max(): no limit). Thread-safe.
  template <class Rep, class Period>
  status pop_delivery_for(delivery& out, std::chrono::duration<Rep, Period> d) {
    return pop_until(out, spindle::detail::time_after<clock>(d), {}, true);
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

  /// Acknowledges d (XACK). Returns false if this consumer no longer holds it. Thread-safe.
  bool ack(const delivery& d) { return settle(d.id, "ack") > 0; }
  /// Gives d back (claimable at once by any consumer of the group), or dead-letters it at
  /// max_deliveries. Returns false if this consumer no longer holds it. Thread-safe.
  bool nack(const delivery& d) { return settle(d.id, "nack") > 0; }

  // ---- consumers: the channel interface -----------------------------------------------------

  // pop(T&), pop(T&, st), try_pop, pop_for, pop(), ack_last, nack_last: detail::channel_pops

  // ---- state --------------------------------------------------------------------------------

  /// Marks the stream closed for every process. Idempotent. Thread-safe.
  void close() { closed_.close(pool_); }
  /// True once any process closed the stream. Thread-safe.
  bool closed() const { return closed_.closed(pool_); }
  /// Entries in the stream (acknowledged or not, until trimmed by the retention policy).
  /// Thread-safe.
  std::size_t size() { return static_cast<std::size_t>(pool_.command("XLEN", keys_[0]).integer()); }
  /// Deliveries held by this consumer. Thread-safe.
  std::size_t in_flight() {
    ensure_group();
    auto r = pool_.command("XPENDING", keys_[0], so_.group, "-", "+", 1000000, consumer_);
    return r.size();
  }
  /// Entries delivered to some consumer of the group and not yet acked (XPENDING). Thread-safe.
  std::size_t pending() {
    ensure_group();
    return static_cast<std::size_t>(pool_.command("XPENDING", keys_[0], so_.group)[0].integer());
  }
  /// Entries in the dead-letter stream. Thread-safe.
  std::size_t dead_letter_size() {
    return static_cast<std::size_t>(pool_.command("XLEN", keys_[1]).integer());
  }
  /// Trims now what the retention policy trim_acknowledged would (entries every group has
  /// acknowledged). Returns how many entries went. Thread-safe.
  std::size_t trim() {
    auto c = pool_.acquire();
    return static_cast<std::size_t>(trim_.run(*c, keys_, {}).integer());
  }
  // ---- reading the log: replay, audit, event sourcing ---------------------------------------

  /// One entry read back from the log: its id and its value, or why it has none.
  struct record {
    std::string id{};
    std::optional<T> value{};  ///< nullopt when the entry does not decode (see error)
    std::string error{};       ///< "" | "entry without a v field" | "undecodable payload"
  };

  /// One entry of the dead-letter stream ({name}:stream:dead).
  struct dead_letter {
    std::string id{};           ///< the dead letter's own id (in the dead-letter stream)
    std::string original_id{};  ///< the entry's id in the stream
    std::string group{};        ///< the group that gave up on it
    std::uint32_t deliveries = 0;
    std::string reason{};       ///< "max_deliveries" | "undecodable payload" | ...
    std::string payload{};      ///< the payload bytes as they were in the entry
    std::optional<T> value{};   ///< the payload decoded; nullopt if it does not decode
  };

  /// One page of a read, in the order read, and where the next page starts.
  template <class Item>
  struct page {
    std::vector<Item> items{};
    /// The `from` of the next page ("(<last id>": exclusive), or "" once the range is
    /// exhausted (fewer than `count` items came back, or, reading forwards, the last has the
    /// largest id there is; a full last page is otherwise followed by an empty one).
    std::string next{};
  };

  /// The most entries one read returns: a larger count is clamped to it.
  static constexpr std::size_t max_read_count = 10000;

  /// Reads at most `count` entries with ids in [from, to], oldest first (XRANGE ... COUNT), and
  /// decodes each with Codec; an entry that does not decode is returned with its error, never
  /// skipped. `from` / `to` are entry ids ("1700000000000-0", or "1700000000000" for a whole
  /// millisecond), "-" / "+" for the ends, or "(<id>" for an exclusive bound: replay from an
  /// offset is read_range(offset), then read_range(page.next) until next is "". Reads the log
  /// only: no group, delivery or ack is involved. Throws std::invalid_argument for an empty
  /// bound or count 0 (count > max_read_count is clamped), server_error for a malformed id,
  /// redis::error on I/O failure. Allocates. Thread-safe.
  page<record> read_range(std::string_view from = "-", std::string_view to = "+",
                          std::size_t count = 100) {
    return read_page<record>("read_range", "XRANGE", keys_[0], from, to, count,
                             [](record& r, const reply& fields) { decode_entry(r, fields); });
  }
  /// Like read_range(), newest first (XREVRANGE): `from` is the upper bound ("+" the newest),
  /// `to` the lower one; next continues downwards. Thread-safe.
  page<record> read_range_reverse(std::string_view from = "+", std::string_view to = "-",
                                  std::size_t count = 100) {
    return read_page<record>("read_range_reverse", "XREVRANGE", keys_[0], from, to, count,
                             [](record& r, const reply& fields) { decode_entry(r, fields); });
  }
  /// Reads the dead-letter stream like read_range() (oldest first): each letter with the
  /// original id, group, deliveries made, reason and payload, decoded where it can be. Dead
  /// letters stay until deleted (XDEL {name}:stream:dead <id>, or destroy()). Throws like
  /// read_range(). Allocates. Thread-safe.
  page<dead_letter> read_dead_letters(std::string_view from = "-", std::string_view to = "+",
                                      std::size_t count = 100) {
    return read_page<dead_letter>("read_dead_letters", "XRANGE", keys_[1], from, to, count,
                                  [](dead_letter& d, const reply& fields) {
                                    decode_dead_letter(d, fields);
                                  });
  }

  /// Reports the stream and each of its consumer groups: lag, pending, the oldest pending
  /// entry's idle time and age, and each consumer's pending count and idle time (see
  /// stream_health). One read-only script: one round trip, a consistent snapshot; sends no
  /// blocking command (it waits only for a pooled connection, like every call), creates
  /// nothing (a stream or group that does not exist is reported absent).
  /// Throws redis::error on I/O failure. Allocates. Thread-safe.
  stream_health health() {
    reply r;
    {
      auto c = pool_.acquire();
      r = health_.run(*c, keys_, {});
    }
    stream_health h;
    h.length = static_cast<std::uint64_t>(r[0].integer());
    h.dead_letters = static_cast<std::uint64_t>(r[1].integer());
    h.closed = r[2].integer() != 0;
    const std::int64_t now = r[3].integer();
    for (std::size_t i = 4; i < r.size(); ++i) {
      const reply& g = r[i];
      stream_group_health gh;
      gh.name = g[0].str();
      if (g[1].integer() >= 0) gh.lag = static_cast<std::uint64_t>(g[1].integer());
      gh.pending = static_cast<std::uint64_t>(g[2].integer());
      gh.last_delivered_id = g[3].str();
      gh.oldest_pending_id = g[4].str();
      if (!gh.oldest_pending_id.empty()) {
        gh.oldest_pending_idle =
            std::chrono::milliseconds(std::max<std::int64_t>(g[5].integer(), 0));
        gh.oldest_pending_deliveries = static_cast<std::uint32_t>(g[6].integer());
        std::int64_t ms = 0;
        const std::string& id = gh.oldest_pending_id;
        std::from_chars(id.data(), id.data() + id.size(), ms);
        gh.oldest_pending_age = std::chrono::milliseconds(std::max<std::int64_t>(now - ms, 0));
      }
      const reply& cs = g[7];
      for (std::size_t j = 0; j + 2 < cs.size(); j += 3)
        gh.consumers.push_back({cs[j].str(), static_cast<std::uint64_t>(cs[j + 1].integer()),
                                std::chrono::milliseconds(cs[j + 2].integer())});
      h.groups.push_back(std::move(gh));
    }
    return h;
  }

  /// Deletes every key of the stream. For tests and tear-down.
  void destroy() {
    pool_.command("DEL", keys_);
    closed_.reset();
    group_ready_.store(false, std::memory_order_relaxed);
  }

 private:
  using clock = std::chrono::steady_clock;
  using time_point = clock::time_point;

  void init() {
    if (name_.empty()) throw std::invalid_argument("redis::stream: empty name");
    std::string tag = "{" + name_ + "}";
    keys_ = {tag + ":stream", tag + ":stream:dead", closed_.key()};
    consumer_ = detail::consumer_name();
    vis_arg_ = std::to_string(so_.visibility_timeout.count());
    max_arg_ = std::to_string(so_.max_deliveries);
  }

  // Checks the options; returns max_connections.
  static std::size_t checked_count(const options& o, const stream_options& so) {
    if (so.group.empty()) throw std::invalid_argument("redis::stream: empty group name");
    return detail::check_consumer_options("redis::stream", so.visibility_timeout,
                                          so.poll_interval, so.max_connections, o.io_timeout);
  }
  static options checked(options o, const stream_options& so) {
    checked_count(o, so);
    return o;
  }

  status push_once(const std::string& payload) {
    auto c = pool_.acquire();
    auto r = push_
                 .run(*c, keys_,
                      {payload, std::to_string(so_.max_length), std::to_string(so_.max_age.count())})
                 .integer();
    if (r == -1) {
      closed_.seen();
      return status::closed;
    }
    return status::ok;
  }

  void ensure_group() {
    if (group_ready_.load(std::memory_order_relaxed)) return;  // idempotent server-side step
    std::call_once(checked_once_, [&] {
      auto c = pool_.acquire();
      detail::check_server(*c, "redis::stream");
    });
    try {
      pool_.command("XGROUP", "CREATE", keys_[0], so_.group, "0", "MKSTREAM");
    } catch (const server_error& e) {
      if (e.code() != "BUSYGROUP") throw;
    }
    group_ready_.store(true, std::memory_order_relaxed);
  }

  // Renews exactly what this object handed out and has not settled.
  // Invariant: attacked by "an entry whose reply was lost is not renewed by its consumer's
  // heartbeat: another claims it" (test_stream.cpp).
  void start_heartbeat() {
    hb_.start(so_.visibility_timeout / 3, [this] {
      auto c = pool_.acquire();
      std::vector<std::string> args{so_.group, consumer_, vis_arg_};
      auto ids = held_.handed_out();
      args.insert(args.end(), std::make_move_iterator(ids.begin()),
                  std::make_move_iterator(ids.end()));
      heartbeat_.run(*c, keys_, args);
      if (so_.trim_acknowledged) trim_.run(*c, keys_, {});
    });
  }

  // Hands out entry `id` (payload, or nullptr if it has no v field) as out. If it cannot be
  // decoded it is dead-lettered at once with the reason and false is returned.
  bool deliver(std::string id, const std::string* payload, std::int64_t n, delivery& out) {
    const char* reason = "entry without a v field";
    if (payload != nullptr) {
      try {
        out.value = Codec::decode(*payload);
        out.id = std::move(id);
        out.deliveries = static_cast<std::uint32_t>(n);
        held_.hand_out(out.id);
        return true;
      } catch (...) {  // Codec's own exception: the payload is poison
        reason = "undecodable payload";
      }
    }
    settle(id, "dead", reason);
    return false;
  }

  // An entry as a pop took it, before it is decoded and handed out.
  struct taken_entry {
    std::string id;
    std::optional<std::string> payload;  // nullopt: no v field
    std::int64_t deliveries = 0;
  };

  // One attempt: Lua claim-or-read (drains, sees closed), then XREADGROUP BLOCK. Returns ok
  // (the entry in `got`, not yet decoded) | empty | closed.
  status pop_once(connection& c, taken_entry& got, std::chrono::milliseconds block) {
    std::string cursor;
    {
      std::lock_guard lock(cursor_mu_);
      cursor = cursor_;
    }
    std::vector<std::string> args{so_.group, consumer_, vis_arg_, max_arg_, std::move(cursor)};
    acks_.append_to(args);
    reply r;
    try {
      r = pop_.run(c, keys_, args);
    } catch (...) {  // sent again with the retry (acking an entry twice skips the second)
      acks_.restore(args, 5);
      throw;
    }
    for (auto a = args.begin() + 5; a != args.end(); ++a) held_.settled(*a);
    auto code = r[0].integer();
    {
      std::lock_guard lock(cursor_mu_);
      cursor_ = r[r.size() - 1].str();
    }
    if (code == 1) {
      got.id = r[1].str();
      if (!r[2].is_nil()) got.payload = r[2].str();
      got.deliveries = r[3].integer();
      return status::ok;
    }
    if (code == -1) {
      closed_.seen();
      return status::closed;
    }
    if (block.count() <= 0) return status::empty;
    reply m = c.command("XREADGROUP", "GROUP", so_.group, consumer_, "COUNT", 1, "BLOCK",
                        block.count(), "STREAMS", keys_[0], ">");
    if (m.is_nil() || m.size() == 0) return status::empty;
    // RESP2: [[name, entries]]; RESP3: map {name: entries}.
    const reply& entries = m[0].is_aggregate() ? m[0][1] : m[1];
    if (entries.size() == 0) return status::empty;
    const reply& e = entries[0];
    std::int64_t before = 0;
    for (std::size_t i = 0; i + 1 < e[1].size(); i += 2) {
      if (e[1][i].str() == "v") got.payload = e[1][i + 1].str();
      if (e[1][i].str() == "d") {
        std::string d = e[1][i + 1].str();
        std::from_chars(d.data(), d.data() + d.size(), before);
      }
    }
    got.id = e[0].str();
    got.deliveries = before + 1;
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
        taken_entry got;
        status s = status::empty;
        {
          auto c = pool_.acquire();
          s = pop_once(*c, got, block);
        }
        retry.success();
        // Invariant: the lease is given back before deliver(), whose dead-lettering of a
        // poison entry takes a connection of its own (holding one while asking for another
        // starves a pool of one connection for acquire_timeout); attacked by "a stream pop
        // that meets a poison entry does not wait for a second pooled connection"
        // (test_redis_hostile.cpp).
        if (s == status::ok) {
          if (deliver(std::move(got.id), got.payload ? &*got.payload : nullptr, got.deliveries,
                      out))
            return s;
          continue;  // dead-lettered: the next one at once
        }
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

  // Settles one entry. Whatever the outcome (a failure in flight leaves it unknown), the entry
  // is no longer renewed: if it is still pending it goes stale and is claimed.
  std::int64_t settle(const std::string& id, const char* mode, const char* reason = "") {
    std::int64_t r = 0;
    try {
      auto c = pool_.acquire();
      r = settle_.run(*c, keys_, {so_.group, consumer_, id, mode, max_arg_, reason, vis_arg_})
              .integer();
    } catch (...) {
      held_.settled(id);
      throw;
    }
    held_.settled(id);
    return r;
  }

  // One XRANGE / XREVRANGE page of `key`, each entry made into an Item by fill(item, fields).
  template <class Item, class Fill>
  page<Item> read_page(const char* fn, const char* cmd, const std::string& key,
                       std::string_view from, std::string_view to, std::size_t count, Fill fill) {
    if (from.empty() || to.empty())
      throw std::invalid_argument(std::string("redis::stream::") + fn + ": empty " +
                                  (from.empty() ? "from" : "to") + " bound");
    if (count == 0)
      throw std::invalid_argument(std::string("redis::stream::") + fn +
                                  ": count must be >= 1, got 0");
    count = std::min(count, max_read_count);
    reply r = pool_.command(cmd, key, from, to, "COUNT", count);
    page<Item> p;
    p.items.reserve(r.size());
    for (const reply& e : r.elements()) {
      Item it;
      it.id = e[0].str();
      fill(it, e[1]);
      p.items.push_back(std::move(it));
    }
    // The largest id has no successor: "(" + it is refused by the server (XRANGE), and no
    // entry can follow it, so that page is the last.
    constexpr std::string_view largest_id = "18446744073709551615-18446744073709551615";
    if (p.items.size() == count &&
        !(std::string_view(cmd) == "XRANGE" && p.items.back().id == largest_id))
      p.next = "(" + p.items.back().id;
    return p;
  }

  // The value of field `name` in an entry's field list, or nullptr.
  static const std::string* entry_field(const reply& fields, std::string_view name) {
    for (std::size_t i = 0; i + 1 < fields.size(); i += 2)
      if (fields[i].str() == name) return &fields[i + 1].str();
    return nullptr;
  }

  static void decode_entry(record& r, const reply& fields) {
    const std::string* v = entry_field(fields, "v");
    if (v == nullptr) {
      r.error = "entry without a v field";
      return;
    }
    try {
      r.value = Codec::decode(*v);
    } catch (...) {  // Codec's own exception: reported in the record
      r.error = "undecodable payload";
    }
  }

  static void decode_dead_letter(dead_letter& d, const reply& fields) {
    if (const std::string* v = entry_field(fields, "v")) {
      d.payload = *v;
      try {
        d.value = Codec::decode(*v);
      } catch (...) {  // the reason says why it is here
      }
    }
    if (const std::string* v = entry_field(fields, "id")) d.original_id = *v;
    if (const std::string* v = entry_field(fields, "group")) d.group = *v;
    if (const std::string* v = entry_field(fields, "reason")) d.reason = *v;
    if (const std::string* v = entry_field(fields, "deliveries"))
      std::from_chars(v->data(), v->data() + v->size(), d.deliveries);
  }

  std::string name_;
  stream_options so_;
  mutable pool pool_;  // thread-safe itself; closed() const reads through it
  detail::closed_flag closed_;
  std::vector<std::string> keys_;  // stream, dead, closed: the KEYS of every stream script
  std::string consumer_, vis_arg_, max_arg_;
  std::once_flag checked_once_;
  std::atomic<bool> group_ready_{false};  // relaxed: XGROUP CREATE is idempotent
  detail::script push_{detail::lua_stream_push, detail::lua_stream_prelude};
  detail::script pop_{detail::lua_stream_pop, detail::lua_stream_prelude};
  detail::script settle_{detail::lua_stream_settle, detail::lua_stream_prelude};
  detail::script heartbeat_{detail::lua_stream_heartbeat, detail::lua_stream_prelude};
  detail::script leave_{detail::lua_stream_leave, detail::lua_stream_prelude};
  detail::script trim_{detail::lua_stream_trim, detail::lua_stream_prelude};
  detail::script health_{detail::lua_stream_health, detail::lua_stream_prelude};

  detail::holdings held_;       // handed out and not settled: what the heartbeat renews
  detail::deferred_acks acks_;  // handled entry ids for the next pop's script

  std::mutex cursor_mu_;
  std::string cursor_ = "0-0";  // guarded by cursor_mu_: XAUTOCLAIM scan position

  detail::last_taken last_;
  detail::heartbeat_thread hb_;  // last member: stopped (joined) first in destruction order
};

}  // namespace spindle::redis
