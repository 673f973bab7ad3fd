// spindle/redis/queue.hpp - a reliable queue on a Redis list, shared by many processes.
//
//   spindle::redis::queue<std::string> q("jobs", {.port = 6379}, {.visibility_timeout = 30s});
//   q.push("job 1");
//   q.push_all(std::vector<std::string>{"job 2", "job 3"});   // one round trip per 64 items
//   spindle::redis::queue<std::string>::delivery d;
//   if (q.pop_delivery(d) == spindle::status::ok) { work(d.value); q.ack(d); }
//
// Defines queue<T, Codec> (models spindle::channel), queue_options, queue<...>::delivery,
// queue_health. Operations: push / try_push / push_for / push_all, pop_delivery (+ ack / nack /
// ack_and_pop_delivery), the channel pops (pop(T&) ...), close, recover, dead letters, health.
//
// Guarantees:
//   - At-least-once: every pushed item is delivered until a consumer acknowledges it. Each item
//     travels in an envelope "<id>:<previous deliveries>:<payload>" with a unique id (the wire
//     format is documented in README.md, "Wire format of queue and stream").
//   - No item is taken without a live lease. Each queue object is one consumer with a lease (an
//     entry in {name}:consumers, renewed by every fetch and by a heartbeat thread every
//     visibility_timeout / 3). A fetch is one Lua script that checks and renews the lease, then
//     moves envelopes from the ready list to this consumer's processing list; a fetch that
//     finds the lease gone or expired moves nothing and reports it, and the object takes a new
//     lease first, requeueing whatever its processing list still held (those deliveries are
//     forfeit: their acks fail). The heartbeat does the same when it finds the lease gone. A
//     blocked pop waits on a signal list ({name}:signal, BLPOP), never on the ready list, and
//     then fetches. See detail/lease.hpp and detail/scripts.hpp for the protocol.
//   - With queue_options::prefetch = n > 1, a fetch that finds this object's local buffer empty
//     moves up to n envelopes in one script; the others wait in the buffer (already in the
//     processing list, so covered by the lease, redelivered if this process dies) and are handed
//     out by the next pops of any thread. Buffered envelopes never handed out go back to the pop
//     end of the ready list, delivery count unchanged, when the object is destroyed or its lease
//     is taken again after a loss.
//   - A consumer that dies (or stalls past its lease) loses its deliveries: any live object
//     (in pop() and in its heartbeat) requeues the processing lists of expired leases, at the
//     pop end of the ready list, with the delivery count incremented; and the lists of known
//     consumers ({name}:known) that have no lease entry at all (a failover lost it). An ack after
//     the lease expired fails (returns false) and never removes another consumer's delivery.
//   - Envelopes a fetch moved but whose reply was lost (I/O failure) go back to the ready list
//     with their count unchanged (never handed out), before this object fetches again.
//   - After max_deliveries deliveries without an ack (nack, throwing worker_pool handler, dead
//     consumer), an item goes to the dead-letter list instead, recording max_deliveries
//     deliveries and the reason "max_deliveries". An item whose payload Codec::decode rejects is
//     dead-lettered at once (reason "undecodable payload"); its batch-mates are unaffected.
//   - Dead letters are kept until taken (try_pop_dead): the dead-letter list and its reasons
//     grow with them, never trimmed (a bound would drop failed jobs silently). Watch
//     dead_letter_size().
//   - Foreign producers: a ready item that is not an envelope (e.g. `LPUSH {jobs}:ready hello`
//     from redis-cli, Python or Node) is accepted as a first delivery: the fetch wraps it with a
//     fresh id and counts it pending. Such pushes do not wake blocked pops: they are seen within
//     poll_interval.
//   - max_length > 0 bounds the ready list: try_push returns full, push waits (polling, backoff
//     doubling from 1 ms up to poll_interval).
//   - close() sets a key that every process sees within poll_interval; pushes then fail with
//     closed; pops drain what is left, then return closed once nothing is pending anywhere:
//     the ready list is empty AND no consumer (of any process) holds a delivery, since a held
//     delivery may still be requeued (nack, throwing handler, expired lease). While some are
//     held, pops wait (polling every poll_interval), and get the item if it is requeued.
//   - health() reports ready, held per consumer (with its lease), dead, pending and the oldest
//     ready item with its age (from push-time marks: see queue_health) by read-only commands;
//     it never blocks.
//   - FIFO per producer while no item is redelivered. Thread-safe: threads share one object
//     through its connection pool; a blocked pop holds only its own connection.
//   - Needs Redis >= 6.2 (checked on first use: redis::error otherwise). A maxmemory-policy other
//     than noeviction is reported once on stderr: Redis may then evict the queue's keys.
//
// pipeline and fan_* over a redis::queue: they pop through the channel interface (pop(T&)),
// which acknowledges a value at the same thread's next pop - that is, as soon as the stage has
// taken the next item, not after the value was handled downstream. A crash can then lose items
// that were acknowledged but not yet handled. For at-least-once processing use worker_pool
// (it acks after the handler returned and nacks when it throws) or pop_delivery + ack.
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
//   {name}:ready        list of envelopes; producers LPUSH, consumers take from the right
//   {name}:proc:<id>    list: the deliveries held by consumer <id> (one per queue object)
//   {name}:consumers    sorted set: consumer id -> lease expiry (server time, ms)
//   {name}:known        set of consumer ids that may hold a processing list
//   {name}:signal       list of wake-up tokens for blocked pops (at most 64)
//   {name}:dead         dead-letter list of envelopes "<id>:<deliveries made>:<payload>"
//   {name}:dead-reasons hash: dead-lettered id -> reason
//   {name}:seq          counter giving envelope ids
//   {name}:pending      counter: items ready or held (pushed, not yet acked or dead-lettered)
//   {name}:closed       exists once close() was called
// Every script declares the keys it touches as KEYS (recovery reads the expired consumers first,
// then passes their processing lists to a second script that re-checks each lease). The
// counters are only consistent if the keys are changed through this class (or destroy()), or
// by producers that follow the wire format.
//
// Lifetime: the destructor stops the heartbeat, sends deferred acks, gives back buffered
// prefetched envelopes and drops the lease if nothing is held; held deliveries are then
// recovered by others after the visibility timeout. Redis I/O failures throw redis::error (a
// blocking pop retries for retry_window first, to ride over a server restart).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <charconv>
#include <iterator>
#include <mutex>
#include <optional>
#include <ranges>
#include <shared_mutex>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
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

/// Runtime knobs of redis::queue; use with designated initializers.
struct queue_options {
  /// A consumer's lease; its deliveries are requeued this long after its last heartbeat. > 0.
  std::chrono::milliseconds visibility_timeout{30000};
  /// Deliveries before an item goes to the dead-letter list; 0: never.
  std::uint32_t max_deliveries = 5;
  /// Bound on the ready list; 0: unbounded.
  std::size_t max_length = 0;
  /// Longest single block (BLPOP on the signal list, push retry) and so the delay to see
  /// close() or a foreign push. > 0, and shorter than options::io_timeout.
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

/// One consumer of a queue, as queue<...>::health() reports it.
struct queue_consumer_health {
  std::string id{};
  std::uint64_t held = 0;  ///< envelopes in its processing list (handed out or prefetched)
  /// Time left on its lease by server time: negative once expired (its list is requeued by
  /// the next recovery); nullopt when it has no lease (it left, or a failover lost the entry).
  std::optional<std::chrono::milliseconds> lease_left{};
};

/// What queue<...>::health() reports.
///
/// The oldest ready item's age comes from push-time marks, not from the envelope (whose wire
/// format, shared with other languages, carries no time): each push records the first id
/// pushed in each second of server time (`{name}:push-times`, the newest 4096 seconds that saw
/// a push), and an item was pushed in the second of the last mark at or below its id. Besides
/// the age: the oldest ready item's id and delivery count, and how many ids were given out
/// after it (pushes since then: how far behind the consumers are, in items).
struct queue_health {
  std::uint64_t ready = 0;         ///< items waiting in the ready list
  std::uint64_t held = 0;          ///< items in every consumer's processing list (sum)
  std::uint64_t dead_letters = 0;  ///< items in the dead-letter list
  std::uint64_t pending = 0;       ///< pushed, not yet acked or dead-lettered (the counter)
  bool closed = false;             ///< close() was called
  std::vector<queue_consumer_health> consumers{};  ///< every known or leased consumer
  /// The envelope id of the next item to be delivered (the oldest ready one); 0 when none is
  /// ready or it is a bare payload from a foreign producer (no id until it is fetched).
  std::uint64_t oldest_ready_id = 0;
  std::uint32_t oldest_ready_deliveries = 0;  ///< its deliveries so far (0: never delivered)
  /// Ids given out after the oldest ready item's (pushes and wrapped bare payloads since it
  /// was pushed); 0 when oldest_ready_id is 0.
  std::uint64_t ids_since_oldest_ready = 0;
  /// How long ago the oldest ready item was first pushed (a requeued item keeps its id, so its
  /// age counts from its first push), by server time, rounded up to the start of the second
  /// it was pushed in (so at most 1 s too high). nullopt when oldest_ready_id is 0 or no mark
  /// covers its id (pushed more than 4096 push-seconds ago). An item pushed by a producer that
  /// writes no marks (README, wire format) gets the age of the last mark before it: too high.
  std::optional<std::chrono::milliseconds> oldest_ready_age{};
};

/// A reliable Redis list queue. See the header comment.
template <class T, class Codec = codec<T>>
requires codec_for<Codec, T>
class queue : public detail::channel_pops<queue<T, Codec>, T> {
  friend detail::channel_pops<queue<T, Codec>, T>;

 public:
  using value_type = T;

  /// One delivery: the value, its envelope id, and how many times it has been delivered
  /// (1 the first time). From try_pop_dead: the deliveries made and the reason it was
  /// dead-lettered ("max_deliveries", "undecodable payload", ...); `value` is left
  /// value-initialised if the payload does not decode.
  struct delivery {
    T value{};
    std::uint64_t id = 0;
    std::uint32_t deliveries = 0;
    std::string envelope{};  // as stored in the processing list; what ack() removes
    std::string reason{};    // dead letters only
  };

  /// The most payloads one push script carries (push_all splits longer ranges).
  static constexpr std::size_t push_batch = 64;

  /// Opens the queue `name` on the server of `o`; connects lazily. Throws std::invalid_argument
  /// for an empty name, a zero visibility_timeout / poll_interval / max_connections / prefetch,
  /// or poll_interval >= o.io_timeout. Allocates.
  queue(std::string name, options o, queue_options qo = {})
      : name_(std::move(name)),
        qo_(qo),
        pool_(checked(std::move(o), qo), {.max_connections = qo.max_connections}),
        closed_("{" + name_ + "}:closed") {
    init();
  }

  /// Opens the queue `name` on a Redis Cluster: every key shares the tag {name}, and the
  /// object's pool is pinned to that slot's primary (pool.hpp), following a failover or a
  /// resharding. `c` must outlive the queue. Throws like the other constructor (poll_interval
  /// is checked against c.config().node.io_timeout), and std::invalid_argument for a name
  /// starting with '}' (its keys would have no hash tag). Allocates.
  queue(std::string name, cluster& c, queue_options qo = {})
      : name_(std::move(name)),
        qo_(qo),
        pool_(c, "{" + name_ + "}", {.max_connections = checked_count(c.config().node, qo)}),
        closed_("{" + name_ + "}:closed") {
    detail::check_tag_name("redis::queue", name_);
    init();
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
      std::vector<std::string> back = held_.take_buffer();
      if (!back.empty()) {
        back.insert(back.begin(), consumer_);
        give_back_.run(*c, keys_, back);
      }
      leave_.run(*c, keys_, {consumer_});
    } catch (...) {  // the lease then just expires
    }
  }

  const std::string& name() const noexcept { return name_; }
  /// This object's consumer id (names its processing list).
  const std::string& consumer_id() const noexcept { return consumer_; }

  // ---- producers ----------------------------------------------------------------------------

  /// Pushes v; waits (polling every poll_interval at most) while max_length items are ready.
  /// Returns ok | closed. Throws redis::error on I/O failure. Thread-safe.
  status push(const T& v) { return push_until(Codec::encode(v), std::nullopt); }
  status push(T&& v) { return push(static_cast<const T&>(v)); }
  /// Pushes unless full. Returns ok | full | closed. Thread-safe.
  status try_push(const T& v) { return push_once(Codec::encode(v)); }
  status try_push(T&& v) { return try_push(static_cast<const T&>(v)); }
  /// Like push(), for at most d (duration::max(): no limit). Returns ok | timeout | closed.
  /// Thread-safe.
  template <class Rep, class Period>
  status push_for(T&& v, std::chrono::duration<Rep, Period> d) {
    return push_until(Codec::encode(v), spindle::detail::time_after<clock>(d));
  }
  template <class Rep, class Period>
  status push_for(const T& v, std::chrono::duration<Rep, Period> d) {
    return push_until(Codec::encode(v), spindle::detail::time_after<clock>(d));
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
  /// Like pop_delivery(), for at most d (duration::max(): no limit). Returns ok | timeout |
  /// closed. Thread-safe.
  template <class Rep, class Period>
  status pop_delivery_for(delivery& out, std::chrono::duration<Rep, Period> d) {
    return pop_until(out, spindle::detail::time_after<clock>(d), {}, true);
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
  std::size_t size() { return static_cast<std::size_t>(pool_.command("LLEN", ready()).integer()); }
  /// Items held by this object (handed out, or prefetched and buffered). Thread-safe.
  std::size_t in_flight() {
    return static_cast<std::size_t>(pool_.command("LLEN", keys_[1]).integer());
  }
  /// Items pushed and not yet acked or dead-lettered, by every process (ready + held).
  /// Approximate. Thread-safe.
  std::size_t pending() {
    reply r = pool_.command("GET", keys_[4]);
    if (r.is_nil()) return 0;
    std::int64_t n = 0;
    std::string v = r.str();
    std::from_chars(v.data(), v.data() + v.size(), n);
    return static_cast<std::size_t>(std::max<std::int64_t>(n, 0));
  }
  /// Items in the dead-letter list. Thread-safe.
  std::size_t dead_letter_size() {
    return static_cast<std::size_t>(pool_.command("LLEN", keys_[3]).integer());
  }
  /// Takes one dead letter (oldest first): its value (value-initialised if it does not decode),
  /// id, deliveries made and reason. Returns ok | empty. At most once: the letter leaves the
  /// list with the RPOP, so if that reply is lost (redis::error) the letter is gone; read
  /// letters you cannot afford to lose with LRANGE {name}:dead before taking them. Thread-safe.
  status try_pop_dead(delivery& out) {
    reply r = pool_.command("RPOP", keys_[3]);
    if (r.is_nil()) return status::empty;
    std::string_view payload;
    std::uint32_t count = 0;
    out = delivery{};
    if (!parse_envelope(r.str(), out.id, count, payload)) {
      out.reason = "malformed dead letter";
      return status::ok;
    }
    out.deliveries = count;
    std::string id = std::to_string(out.id);
    reply why = pool_.command("HGET", keys_[9], id);
    if (!why.is_nil()) out.reason = why.str();
    pool_.command("HDEL", keys_[9], id);
    try {
      out.value = Codec::decode(payload);
    } catch (...) {  // the reason says why it is here
    }
    out.envelope = r.str();
    return status::ok;
  }
  /// Reports the queue (see queue_health): ready, held per consumer with its lease, dead,
  /// pending, and the oldest ready item. Two pipelined round trips of read-only commands (the
  /// consumers, then their processing lists and leases: each key named, as a cluster needs),
  /// so the figures are approximate under traffic - an item moving between the two may be
  /// counted in neither or both. Sends no blocking command (it waits only for a pooled
  /// connection, like every call); changes nothing. Throws redis::error on I/O
  /// failure. Allocates. Thread-safe.
  queue_health health() {
    auto c = pool_.acquire();
    batch first;
    first.add("TIME");
    first.add("LLEN", ready());
    first.add("LLEN", keys_[3]);
    first.add("GET", keys_[4]);
    first.add("EXISTS", keys_[5]);
    first.add("LINDEX", ready(), -1);  // consumers take from the right: the oldest ready item
    first.add("GET", keys_[6]);
    first.add("SMEMBERS", keys_[8]);
    first.add("ZRANGE", keys_[0], 0, -1);
    std::vector<reply> r = c->pipeline(first);
    for (const reply& x : r)
      if (x.is_error()) throw server_error(x.str() + " (redis::queue::health)");
    auto count = [](const reply& x) -> std::uint64_t {
      if (x.is_nil()) return 0;
      std::int64_t n = x.is_integer() ? x.integer() : 0;
      if (!x.is_integer()) std::from_chars(x.str().data(), x.str().data() + x.str().size(), n);
      return static_cast<std::uint64_t>(std::max<std::int64_t>(n, 0));
    };
    queue_health h;
    const auto now = static_cast<std::int64_t>(count(r[0][0]) * 1000 + count(r[0][1]) / 1000);
    h.ready = count(r[1]);
    h.dead_letters = count(r[2]);
    h.pending = count(r[3]);
    h.closed = count(r[4]) != 0;
    if (!r[5].is_nil()) {
      std::string_view payload;
      std::uint32_t deliveries = 0;
      std::uint64_t id = 0;
      if (parse_envelope(r[5].str(), id, deliveries, payload)) {
        h.oldest_ready_id = id;
        h.oldest_ready_deliveries = deliveries;
        std::uint64_t seq = count(r[6]);
        h.ids_since_oldest_ready = seq > id ? seq - id : 0;
      }
    }
    std::vector<std::string> ids;
    for (const reply& m : r[7].elements()) ids.push_back(m.str());
    for (const reply& m : r[8].elements()) ids.push_back(m.str());
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    if (ids.empty() && h.oldest_ready_id == 0) return h;
    batch second;
    for (const auto& id : ids) {
      second.add("LLEN", proc_prefix_ + id);
      second.add("ZSCORE", keys_[0], id);
    }
    if (h.oldest_ready_id != 0)  // the last push-time mark at or below its id
      second.add("ZREVRANGEBYSCORE", keys_[10], h.oldest_ready_id, "-inf", "LIMIT", 0, 1);
    std::vector<reply> s = c->pipeline(second);
    if (h.oldest_ready_id != 0) {
      const reply& mark = s.back();
      if (mark.is_error()) throw server_error(mark.str() + " (redis::queue::health)");
      if (!mark.elements().empty()) {
        const auto sec = static_cast<std::int64_t>(count(mark[0]));
        h.oldest_ready_age = std::chrono::milliseconds(std::max<std::int64_t>(now - sec * 1000, 0));
      }
    }
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const reply& len = s[2 * i];
      const reply& score = s[2 * i + 1];
      if (len.is_error() || score.is_error())
        throw server_error((len.is_error() ? len : score).str() + " (redis::queue::health)");
      queue_consumer_health ch{ids[i], count(len), std::nullopt};
      if (!score.is_nil())
        ch.lease_left = std::chrono::milliseconds(static_cast<std::int64_t>(score.number()) - now);
      h.held += ch.held;
      h.consumers.push_back(std::move(ch));
    }
    return h;
  }
  /// Requeues the deliveries of every consumer whose lease expired, and the processing lists of
  /// known consumers without a lease; pop() and the heartbeat do this by themselves. Returns how
  /// many items moved. Thread-safe.
  std::size_t recover() {
    auto c = pool_.acquire();
    return recover_expired(*c);
  }
  /// Deletes every key of the queue (all processes' state). For tests and tear-down.
  void destroy() {
    auto members = pool_.command("SMEMBERS", keys_[8]);
    std::vector<std::string> keys(keys_.begin(), keys_.end());
    for (const auto& m : members.elements()) keys.push_back(proc_prefix_ + m.str());
    pool_.command("DEL", keys);
    closed_.reset();
    acks_.take();  // dropped: the envelopes they name are gone
    std::unique_lock fence(held_.fence);
    held_.clear();
  }

 private:
  using clock = std::chrono::steady_clock;
  using time_point = clock::time_point;

  void init() {
    if (name_.empty()) throw std::invalid_argument("redis::queue: empty name");
    std::string tag = "{" + name_ + "}";
    consumer_ = detail::consumer_name();
    proc_prefix_ = tag + ":proc:";
    keys_ = {tag + ":consumers", proc_prefix_ + consumer_, tag + ":ready", tag + ":dead",
             tag + ":pending", closed_.key(), tag + ":seq", tag + ":signal", tag + ":known",
             tag + ":dead-reasons", tag + ":push-times"};
    max_arg_ = std::to_string(qo_.max_deliveries);
    length_arg_ = std::to_string(qo_.max_length);
    prefetch_arg_ = std::to_string(qo_.prefetch);
    vis_arg_ = std::to_string(qo_.visibility_timeout.count());
  }

  // Checks the options; returns max_connections.
  static std::size_t checked_count(const options& o, const queue_options& qo) {
    if (qo.prefetch == 0) throw std::invalid_argument("redis::queue: prefetch must be >= 1, got 0");
    return detail::check_consumer_options("redis::queue", qo.visibility_timeout,
                                          qo.poll_interval, qo.max_connections, o.io_timeout);
  }
  static options checked(options o, const queue_options& qo) {
    checked_count(o, qo);
    return o;
  }

  const std::string& ready() const noexcept { return keys_[2]; }

  // "<id>:<count>:<payload>" with decimal id and count. False if e is not an envelope.
  static bool parse_envelope(std::string_view e, std::uint64_t& id, std::uint32_t& count,
                             std::string_view& payload) {
    auto a = e.find(':');
    auto b = a == std::string_view::npos ? a : e.find(':', a + 1);
    if (b == std::string_view::npos || a == 0 || b == a + 1) return false;
    auto r1 = std::from_chars(e.data(), e.data() + a, id);
    auto r2 = std::from_chars(e.data() + a + 1, e.data() + b, count);
    if (r1.ec != std::errc{} || r1.ptr != e.data() + a || r2.ec != std::errc{} ||
        r2.ptr != e.data() + b)
      return false;
    payload = e.substr(b + 1);
    return true;
  }

  // One push script with args = {max_length, payload...}. Returns how many were pushed, -1 closed.
  std::int64_t push_script(const std::vector<std::string>& args) {
    auto c = pool_.acquire();
    auto r = push_.run(*c, keys_, args).integer();
    if (r < 0) closed_.seen();
    return r;
  }

  // Pushes some of args (a prefix), waiting while full. Returns how many (> 0), -1 closed, or
  // 0 once `deadline` passed. The wait doubles from 1 ms up to poll_interval (clamped).
  std::int64_t push_wait(const std::vector<std::string>& args, std::optional<time_point> deadline) {
    auto backoff = std::chrono::milliseconds(1);
    for (;;) {
      std::int64_t n = push_script(args);
      if (n != 0) return n;
      auto now = clock::now();
      if (deadline && now >= *deadline) return 0;
      auto wait = backoff;
      if (deadline) wait = std::min(wait, std::chrono::ceil<std::chrono::milliseconds>(*deadline - now));
      std::this_thread::sleep_for(wait);  // polling Redis for room: no server-side notification
      backoff = std::min(backoff * 2, qo_.poll_interval);
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

  // Decodes the handed-out envelope e into out. If it cannot be decoded it is dead-lettered at
  // once with the reason (batch-mates untouched) and false is returned.
  bool deliver(std::string e, delivery& out) {
    std::string_view payload;
    std::uint64_t id = 0;
    std::uint32_t count = 0;
    const char* reason = "malformed envelope";
    if (parse_envelope(e, id, count, payload)) {
      try {
        out.value = Codec::decode(payload);
        out.id = id;
        out.deliveries = count + 1;
        out.envelope = std::move(e);
        out.reason.clear();
        return true;
      } catch (...) {  // Codec's own exception: the payload is poison
        reason = "undecodable payload";
      }
    }
    settle(e, "dead", reason);
    return false;
  }

  // Registers the lease and starts the heartbeat on first use; recovers expired leases at most
  // every poll_interval from pop.
  void maintain(connection& c) {
    if (!registered_.load(std::memory_order_acquire)) {  // pairs with the release below
      std::call_once(start_once_, [&] {
        detail::check_server(c, "redis::queue");
        take(c, std::nullopt);
        registered_.store(true, std::memory_order_release);  // publishes the lease to ~queue
        hb_.start(qo_.visibility_timeout / 3, [this] {
          auto hc = pool_.acquire();
          auto seen = held_.generation();
          if (heartbeat_.run(*hc, keys_, {consumer_, vis_arg_}).integer() < 0) take(*hc, seen);
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

  // Takes the lease: first use, or after it was found lost (then everything this object
  // recorded is forfeit: the buffer goes back unchanged, the rest of the processing list is
  // requeued, handed-out deliveries' acks will fail). Exclusive fence: no fetch is between the
  // server and held_ meanwhile. If the script fails in flight, the buffer stays in the
  // processing list and the next take (the lease is still lost) requeues it. `seen`: the lease
  // generation when the loss was observed; if another thread took the lease since, nothing is
  // done (taking it twice would forfeit what was fetched under the new lease).
  void take(connection& c, std::optional<std::uint64_t> seen) {
    std::unique_lock fence(held_.fence);
    if (seen && held_.generation() != *seen) return;
    std::vector<std::string> args{consumer_, vis_arg_, max_arg_};
    auto back = held_.forfeit();
    args.insert(args.end(), std::make_move_iterator(back.begin()),
                std::make_move_iterator(back.end()));
    acks_.take();  // forfeit with their deliveries
    take_.run(c, keys_, args);
  }

  // Recovery in two steps, so that every key is declared: which leases expired (or are
  // missing for a known consumer), then their processing lists (each lease re-checked inside
  // the script).
  std::size_t recover_expired(connection& c) {
    reply ids = expired_.run(c, keys_, {});
    if (ids.size() == 0) return 0;
    std::vector<std::string> keys(keys_.begin(), keys_.end());
    std::vector<std::string> args{max_arg_};
    for (const auto& id : ids.elements()) {
      if (id.str() == consumer_) continue;  // ours: the fetch or heartbeat takes it again
      keys.push_back(proc_prefix_ + id.str());
      args.push_back(id.str());
    }
    if (args.size() == 1) return 0;
    return static_cast<std::size_t>(recover_.run(c, keys, args).integer());
  }

  // Queues an ack for the next fetch (or heartbeat, or destructor).
  void defer_ack(std::string envelope) { acks_.add(std::move(envelope)); }

  // Sends the deferred acks now (one fetch script that pops nothing).
  void flush_acks(connection& c) {
    std::string unused;
    if (!acks_.empty()) fetch(c, 0, unused);
  }

  // One fenced fetch script: sends the deferred acks, moves up to n envelopes to this
  // consumer's processing list (the first into `first`, handed out; the rest buffered). If the
  // lease is lost, takes it again and retries (a few times). Returns ok | empty | closed. On
  // an I/O failure the acks are kept for the next call (a repeated ack finds nothing and is
  // harmless), then it rethrows (the caller marks the object stranded: the script may have
  // moved envelopes we never saw).
  status fetch(connection& c, std::size_t n, std::string& first) {
    for (int attempt = 0;; ++attempt) {
      std::vector<std::string> args{consumer_,
                                    n == qo_.prefetch ? prefetch_arg_ : std::to_string(n), vis_arg_};
      std::shared_lock fence(held_.fence);
      auto seen = held_.generation();  // stable while the fence is held shared
      acks_.append_to(args);
      reply r;
      try {
        r = fetch_.run(c, keys_, args);
      } catch (...) {
        acks_.restore(args, 3);
        throw;
      }
      auto code = r[0].integer();
      if (code == -2) {  // lease lost before anything moved: the acks are forfeit
        fence.unlock();
        if (attempt == 3)
          throw error("redis::queue::fetch: the lease of " + name_ +
                      " was lost again right after it was taken (visibility_timeout " + vis_arg_ +
                      " ms too short?)");
        take(c, seen);
        continue;
      }
      for (auto a = args.begin() + 3; a != args.end(); ++a) held_.settled(*a);
      if (code == -1) {
        closed_.seen();
        return status::closed;
      }
      if (code != 1) return status::empty;
      first = r[2].str();
      held_.hand_out(first);
      std::vector<std::string> rest;
      for (std::size_t i = 3; i < r.size(); ++i) rest.push_back(r[i].str());
      held_.buffer(rest.begin(), rest.end());
      return status::ok;
    }
  }

  // One attempt: a fetch (drains, sees closed), then a short BLPOP on the signal list if
  // blocking is allowed. Returns ok | empty | closed; `e` holds the handed-out envelope.
  status pop_once(connection& c, std::string& e, std::chrono::milliseconds block) {
    maintain(c);
    status s = fetch(c, qo_.prefetch, e);
    if (s != status::empty) return s;
    if (block.count() <= 0) return status::empty;
    // A token means "something was added": fetch again. Stale tokens only cost a fetch.
    // Invariant: nothing moves outside the fenced fetch; attacked by "a consumer whose lease is
    // gone moves no item ..." and, for items that come without a token, by "a bare payload
    // pushed by redis-cli ..." (seen within poll_interval).
    c.command("BLPOP", keys_[7], detail::seconds_arg(block));
    s = fetch(c, qo_.prefetch, e);
    return s;
  }

  // After an I/O failure a fetch may have moved items into the processing list without the
  // reply reaching us: give back (count unchanged) every held envelope this object never
  // handed out or buffered. Exclusive fence: no other thread's fetch is in flight, so every
  // envelope it moved is already recorded.
  // Invariant: attacked by "a fetch whose reply was lost gives its item back uncounted ..."
  // (test_queue.cpp).
  void return_stranded(connection& c) {
    std::unique_lock fence(held_.fence);
    reply held = c.command("LRANGE", keys_[1], 0, -1);
    std::vector<std::string> args{consumer_};
    for (std::size_t i = held.size(); i-- > 0;) {  // oldest first
      std::string e = held[i].str();
      if (held_.holds(e) || acks_.contains(e)) continue;
      args.push_back(std::move(e));
    }
    if (args.size() > 1) give_back_.run(c, keys_, args);
  }

  status pop_until(delivery& out, std::optional<time_point> deadline, std::stop_token st,
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
      std::string e;
      if (held_.take_buffered(e)) {
        if (deliver(std::move(e), out)) return status::ok;
        continue;  // poison, dead-lettered: the next one at once
      }
      auto block = detail::block_time(qo_.poll_interval, deadline, may_block);
      status s = status::empty;
      try {
        auto c = pool_.acquire();
        // relaxed: a hint between this object's threads; return_stranded reads the server
        if (stranded_.exchange(false, std::memory_order_relaxed)) return_stranded(*c);
        s = pop_once(*c, e, block);
        retry.success();
      } catch (const error& err) {  // I/O failure or LOADING: retry a while (restart), then throw
        // relaxed: see stranded_. A fetch may have moved an item we never saw.
        stranded_.store(true, std::memory_order_relaxed);
        if (!may_block) throw;
        retry.failure(err);
      }
      if (s == status::ok) {
        if (deliver(std::move(e), out)) return status::ok;
        continue;
      }
      if (s == status::closed) return s;
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

  // Settles one envelope. If the call fails in flight the outcome is unknown: the envelope is
  // forgotten and the object marked stranded, so the next pop gives it back (count unchanged)
  // if it is still held - never left in the processing list under a live lease for ever.
  // Invariant: attacked by the restart runs of test_queue_faults.cpp.
  std::int64_t settle(const std::string& envelope, const char* mode, const char* reason = "") {
    std::int64_t r = 0;
    try {
      auto c = pool_.acquire();
      r = settle_.run(*c, keys_, {consumer_, envelope, mode, max_arg_, reason}).integer();
    } catch (const error&) {
      held_.settled(envelope);
      stranded_.store(true, std::memory_order_relaxed);  // relaxed: see stranded_
      throw;
    }
    held_.settled(envelope);
    return r;
  }

  std::string name_;
  queue_options qo_;
  mutable pool pool_;  // thread-safe itself; closed() const reads through it
  detail::closed_flag closed_;
  // consumers, proc, ready, dead, pending, closed, seq, signal, known, dead-reasons: the KEYS
  // of every script (scripts.hpp)
  std::vector<std::string> keys_;
  std::string proc_prefix_, consumer_;
  std::string max_arg_, length_arg_, prefetch_arg_, vis_arg_;  // options as script arguments
  std::atomic<bool> stranded_{false};  // relaxed: a fetch failed in flight; see pop_until
  detail::script push_{detail::lua_queue_push};
  detail::script fetch_{detail::lua_queue_fetch};
  detail::script take_{detail::lua_queue_take};
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

  detail::holdings held_;       // handed out and buffered envelopes, the fence
  detail::deferred_acks acks_;  // for the next fetch (its own lock, never held with others)

  detail::last_taken last_;
  detail::heartbeat_thread hb_;  // last member: stopped (joined) first in destruction order
};

}  // namespace spindle::redis
