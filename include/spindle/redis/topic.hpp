// spindle/redis/topic.hpp - Redis Pub/Sub: publish, and subscriptions with a handler or a buffer.
//
//   spindle::redis::topic t({.port = 6379});
//   auto sub = t.subscribe({"news"}, [](const spindle::redis::message& m) { show(m.payload); });
//   sub.wait_subscribed_for(2s);            // the server confirmed: publishes now reach it
//   t.publish("news", "hello");             // returns how many subscribers received it
//   sub.add_channels({"sport"});            // change what it listens to while it runs
//   auto pull = t.listen({"jobs"}, {});     // no handler: messages wait in a buffer
//   spindle::redis::message m;
//   if (pull.pop_for(m, 1s) == spindle::status::ok) use(m);
//   sub.stop();                             // or let it go out of scope
//
//   auto c = std::make_shared<spindle::redis::cluster>("redis+cluster://127.0.0.1:7000");
//   spindle::redis::topic ct(c);            // a cluster: sharded pub/sub (SSUBSCRIBE/SPUBLISH)
//   auto s2 = ct.subscribe({"{user:42}:events", "alerts"}, handler);  // channels on any primaries
//
// Defines topic, subscription, message, subscription_options.
//
// Guarantees: fire-and-forget, as Redis promises: a message reaches the subscribers whose
// subscription the server has confirmed when it is published; none is stored or redelivered.
// wait_subscribed_for() tells when that is (publishing before it is the classic way to lose the
// first messages). A subscription runs on its own thread with its own connection (one per
// primary on a cluster) and hands its messages, one at a time and in the order the server sent them, to its handler (never while
// holding a lock) or to its buffer (pop_for / try_pop).
//
// Dead paths: while no byte arrives for ping_interval it sends PING (valid in subscribed mode);
// if nothing arrives within ping_timeout after it, the connection counts as dead. Every socket
// also has TCP keepalive and TCP_USER_TIMEOUT (options::keepalive). A dead connection, an I/O
// error or an error reply (ACL NOPERM on a channel, ...) is passed to on_error as a
// redis::error / redis::server_error, and the subscription reconnects after a delay that starts
// at reconnect_delay and doubles with each failure in a row, up to max_reconnect_delay (reset
// once the server has confirmed every subscription again). After a reconnect it subscribes to
// its current channels and patterns again, and on_reconnect is called once the server confirmed
// them: messages published in between are lost, and on_reconnect is the place to resynchronise.
//
// On a cluster (topic(shared_ptr<cluster>), subscription(shared_ptr<cluster>, ...)): sharded
// pub/sub, Redis 7+. publish() is SPUBLISH routed by the channel's slot (the cluster client's
// redirects and retries; it counts the subscribers on that slot's primary only). A subscription
// sends SSUBSCRIBE for each channel to the primary that owns its slot in the client's map, on
// one connection per such primary, and closes a primary's connection once none of its channels
// is left. Patterns have no sharded form in Redis: psubscribe, listen with patterns and
// add_patterns/remove_patterns throw std::invalid_argument. Everything above holds per
// connection: PING and deadline, backoff per primary, on_error. When a slot moves (a migration
// or a failover), the server ends the subscription with an unasked sunsubscribe, or answers
// SSUBSCRIBE with MOVED, or the connection dies; the subscription then reads the slot map again
// (at once, then after a delay that doubles like a reconnect's while the nodes disagree) and
// subscribes on the new owner; wait_subscribed_for() is false meanwhile, and on_reconnect is
// called once every channel is confirmed again (a move counts as a reconnect, not a failure).
// What a move loses (pub/sub is at-most-once, and Redis itself keeps nothing): messages
// published on the channel between the end of the old subscription and the confirmation on the
// new owner, messages the old primary sent that were still in transit when its connection died,
// and, in a failover, messages the dead primary accepted that never reached its replica.
// Channels on other primaries are not disturbed.
//
// stop() - or the stop token given - wakes the thread at once (a self-pipe); it ends as soon as
// the call it is in returns: at once while waiting for messages or between reconnects, within
// connect_timeout + io_timeout while a (re)connect is under way (on a cluster, also while it
// reads the slot map: that many per node it asks), and after the handler returns.
// A handler exception goes to on_error (and errors() counts it); the subscription goes on.
//
// Thread-safety: topic::publish is thread-safe (a pool, or the cluster client). Every member of subscription is
// thread-safe except moving it and destroying it; its destructor stops and joins (do not destroy
// it from its own handler or callbacks). on_error, on_reconnect and the handler run on the
// subscription's thread, one at a time.
#pragma once

#include <fcntl.h>  // O_NONBLOCK, O_CLOEXEC
#include <poll.h>
#include <unistd.h>  // pipe2

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>  // std::function: the handler and callbacks, called once per event
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "spindle/deadline.hpp"
#include "spindle/redis/cluster.hpp"
#include "spindle/redis/connection.hpp"
#include "spindle/redis/error.hpp"
#include "spindle/redis/options.hpp"
#include "spindle/redis/pool.hpp"
#include "spindle/status.hpp"

namespace spindle::redis {

/// A received message. `pattern` is empty for a plain subscribe.
struct message {
  std::string channel;
  std::string pattern;
  std::string payload;
};

namespace detail {
// The refusal of a pattern on a cluster, where Redis has no sharded PSUBSCRIBE.
inline std::invalid_argument no_sharded_patterns(const char* fn) {
  return std::invalid_argument(std::string("redis::") + fn +
                               ": patterns on a cluster: Redis has no sharded PSUBSCRIBE "
                               "(subscribe to each channel by name)");
}
}  // namespace detail

/// Knobs of a subscription; use with designated initializers.
struct subscription_options {
  /// Handler exceptions, and each failure of the connection (redis::error: I/O, timeout, dead
  /// path) or error reply (redis::server_error: NOPERM, ...), before the reconnect delay.
  /// Must not throw (what it throws is dropped).
  std::function<void(std::exception_ptr)> on_error = {};
  std::chrono::milliseconds reconnect_delay{50};       ///< first delay after a failure (> 0)
  std::chrono::milliseconds max_reconnect_delay{5000};  ///< the cap of the doubling delay
  /// PING after this much silence from the server; 0: never (then only TCP keepalive notices a
  /// dead path).
  std::chrono::milliseconds ping_interval{1000};
  /// How long a PING may go unanswered (no byte at all arriving) before the connection counts
  /// as dead (> 0).
  std::chrono::milliseconds ping_timeout{2000};
  /// Called after each reconnect (on a cluster, also after a channel's slot moved), once the
  /// servers confirmed every channel and pattern again (not after the first connect). An exception from it counts as a failure: on_error, then a
  /// reconnect.
  std::function<void()> on_reconnect = {};
  /// Messages a buffered subscription (no handler) holds; when full, the oldest is dropped and
  /// counted by dropped(). >= 1.
  std::size_t max_buffered = 10000;
};

/// A running subscription: a thread, a connection, a handler or a buffer. Move-only. See the
/// header comment.
class subscription {
 public:
  using handler = std::function<void(const message&)>;

  /// Subscribes to `channels` and `patterns` (at least one in all) and starts the thread, which
  /// hands each message to `h`. Throws std::invalid_argument if both are empty, `h` is empty or
  /// an option is out of range. Connects on its thread: a server that cannot be reached is
  /// retried with the growing delay. Allocates.
  subscription(options o, std::vector<std::string> channels, std::vector<std::string> patterns,
               handler h, subscription_options so = {}, std::stop_token st = {}) {
    if (!h) throw std::invalid_argument("redis::subscription: empty handler");
    start(std::move(o), nullptr, std::move(channels), std::move(patterns), std::move(h),
          std::move(so), std::move(st));
  }

  /// Like the handler form, but messages wait in a buffer for pop_for() / try_pop().
  subscription(options o, std::vector<std::string> channels, std::vector<std::string> patterns,
               subscription_options so, std::stop_token st = {}) {
    start(std::move(o), nullptr, std::move(channels), std::move(patterns), handler{},
          std::move(so), std::move(st));
  }

  /// On a cluster: subscribes to the sharded `channels` (SSUBSCRIBE, at least one), each on
  /// the primary that owns its slot, one connection per such primary, and hands each message
  /// to `h`. Follows slot moves (see the header comment). Throws std::invalid_argument if
  /// `c` is null, `channels` empty, `h` empty or an option out of range. Allocates.
  subscription(std::shared_ptr<cluster> c, std::vector<std::string> channels, handler h,
               subscription_options so = {}, std::stop_token st = {}) {
    if (!h) throw std::invalid_argument("redis::subscription: empty handler");
    if (!c) throw std::invalid_argument("redis::subscription: null cluster");
    start({}, std::move(c), std::move(channels), {}, std::move(h), std::move(so), std::move(st));
  }

  /// Like the cluster handler form, but messages wait in a buffer for pop_for() / try_pop().
  subscription(std::shared_ptr<cluster> c, std::vector<std::string> channels,
               subscription_options so, std::stop_token st = {}) {
    if (!c) throw std::invalid_argument("redis::subscription: null cluster");
    start({}, std::move(c), std::move(channels), {}, handler{}, std::move(so), std::move(st));
  }

  subscription(subscription&&) noexcept = default;
  subscription& operator=(subscription&&) noexcept = default;
  /// stop() and join.
  ~subscription() = default;

  /// Asks the thread to end; returns at once. Idempotent. Thread-safe.
  void stop() noexcept {
    if (state_) state_->thread.request_stop();
  }
  /// Waits until the thread has ended (after stop() or the stop token). Not from the handler.
  void join() {
    if (state_ && state_->thread.joinable()) state_->thread.join();
  }

  /// Waits until the server has confirmed every channel and pattern asked for so far (by the
  /// constructor and add_*/remove_*) on the live connection; from then on a publish reaches
  /// this subscription. Returns false after `timeout` (or once stopped). A later reconnect
  /// makes it false again until confirmed. Thread-safe.
  template <class Rep, class Period>
  bool wait_subscribed_for(std::chrono::duration<Rep, Period> timeout) {
    auto dl = spindle::detail::time_after<std::chrono::steady_clock>(timeout);
    std::unique_lock lock(state_->mu);
    return wait_until(lock, dl, [&] { return state_->in_sync() || state_->done; }) &&
           state_->in_sync();
  }

  /// Subscribes to more channels on the running connection (and on every later one). Returns
  /// at once; wait_subscribed_for() tells when the server confirmed. Thread-safe. Allocates.
  void add_channels(std::vector<std::string> channels) { change(false, true, std::move(channels)); }
  /// Unsubscribes from channels; messages already received are still delivered. Thread-safe.
  void remove_channels(std::vector<std::string> channels) {
    change(false, false, std::move(channels));
  }
  /// Subscribes to more glob patterns. Thread-safe. Allocates.
  void add_patterns(std::vector<std::string> patterns) { change(true, true, std::move(patterns)); }
  /// Unsubscribes from patterns. Thread-safe.
  void remove_patterns(std::vector<std::string> patterns) {
    change(true, false, std::move(patterns));
  }

  /// Takes the oldest buffered message (a subscription made without a handler). Returns ok,
  /// timeout, or closed once the subscription ended and its buffer is empty. Thread-safe;
  /// several threads may pop.
  template <class Rep, class Period>
  status pop_for(message& out, std::chrono::duration<Rep, Period> timeout) {
    auto dl = spindle::detail::time_after<std::chrono::steady_clock>(timeout);
    std::unique_lock lock(state_->mu);
    if (!wait_until(lock, dl, [&] { return !state_->buffer.empty() || state_->done; }))
      return status::timeout;
    return take(out) ? status::ok : status::closed;
  }
  /// Takes the oldest buffered message if there is one. Never blocks. Thread-safe.
  bool try_pop(message& out) {
    std::lock_guard lock(state_->mu);
    return take(out);
  }

  /// Messages received so far (handed to the handler or buffered). Thread-safe.
  std::uint64_t received() const noexcept {
    return state_->received.load(std::memory_order_relaxed);
  }
  /// Subscription confirmations received so far: one per channel and per pattern, each time
  /// the server confirms it (so 2 after subscribing to two channels; more after reconnects and
  /// add_*). Approximate while the thread runs. Thread-safe.
  std::uint64_t subscribed() const noexcept {
    return state_->subscribed.load(std::memory_order_relaxed);
  }
  /// Handler exceptions so far. Thread-safe.
  std::uint64_t errors() const noexcept { return state_->errors.load(std::memory_order_relaxed); }
  /// Connection failures and error replies so far (each also went to on_error). Thread-safe.
  std::uint64_t failures() const noexcept {
    return state_->failures.load(std::memory_order_relaxed);
  }
  /// Interruptions (a reconnect; on a cluster also a slot move) after which every channel
  /// was confirmed again: on_reconnect calls. Thread-safe.
  std::uint64_t reconnects() const noexcept {
    return state_->reconnects.load(std::memory_order_relaxed);
  }
  /// Buffered messages dropped because the buffer was full. Thread-safe.
  std::uint64_t dropped() const noexcept {
    return state_->dropped.load(std::memory_order_relaxed);
  }

 private:
  struct stopper {
    std::stop_source src;
    void operator()() noexcept { src.request_stop(); }
  };
  struct waker {
    int fd;
    void operator()() const noexcept {
      char b = 1;
      (void)!::write(fd, &b, 1);  // non-blocking: a full pipe already wakes the thread
    }
  };
  struct op {  // a confirmation owed by the server, in the order the commands went
    bool sub = false;
    bool pattern = false;
    std::string name;
  };

  struct state {
    using clock = std::chrono::steady_clock;

    // One connection to one server: the server of a single-server subscription, or one primary
    // of a cluster (the channels whose slots it owns). Only the thread touches it.
    struct link {
      node_address at;                     // the primary; empty for a single server
      std::optional<connection> c;         // none: idle, or waiting out `retry_at`
      std::vector<std::string> names[2];   // [0] channels, [1] patterns, subscribed on c
      std::deque<op> owed;                 // confirmations owed on c, oldest first
      clock::time_point last_rx{}, ping_sent{}, retry_at{};
      bool pinging = false;                // a PING is outstanding, sent at ping_sent
      std::chrono::milliseconds delay{};   // the next reconnect delay
    };

    options opts;                  // a single server
    std::shared_ptr<cluster> cl;   // or a cluster: each channel on its slot's primary
    handler h;
    subscription_options so;
    int wake[2] = {-1, -1};  // self-pipe: [0] polled by the thread, [1] written to wake it

    std::mutex mu;                 // lock order: only lock; never held while calling user code
    std::condition_variable cv;    // buffer, sync and done changes
    std::vector<std::string> channels, patterns;  // guarded by mu: what is asked for
    std::deque<message> buffer;                   // guarded by mu
    bool changed = false;  // guarded by mu: channels/patterns changed; the thread has not looked
    bool synced = false;   // guarded by mu: every name it looked at is confirmed on a live link
    bool done = false;     // guarded by mu: the thread has ended

    std::atomic<std::uint64_t> received{0};    // relaxed: statistics
    std::atomic<std::uint64_t> subscribed{0};  // relaxed: statistics
    std::atomic<std::uint64_t> errors{0};      // relaxed: statistics
    std::atomic<std::uint64_t> failures{0};    // relaxed: statistics
    std::atomic<std::uint64_t> reconnects{0};  // relaxed: statistics
    std::atomic<std::uint64_t> dropped{0};     // relaxed: statistics

    // Only the thread: the links and when to look again.
    std::deque<link> links;       // deque: references stay valid as links are added
    std::vector<pollfd> fds;      // reused by each poll
    std::vector<link*> polled;    // fds[i + 1] is polled[i]'s socket
    bool unplaced = false;        // a name is on no link: place it again at next_try
    clock::time_point next_try = clock::time_point::max();
    bool map_stale = false;       // a cluster: read the slot map before placing names
    std::chrono::milliseconds remap_delay{0};  // the pause before the next remap
    bool been_synced = false;     // synced once: later losses are interruptions
    bool interrupted = false;     // lost a subscription since last synced: on_reconnect is due

    std::optional<std::stop_callback<stopper>> external;
    std::optional<std::stop_callback<waker>> wake_on_stop;
    std::jthread thread;  // last: joined first on destruction, before the members it uses

    ~state() {
      if (thread.joinable()) {
        thread.request_stop();
        thread.join();
      }
      wake_on_stop.reset();
      for (int fd : wake)
        if (fd >= 0) ::close(fd);
    }

    bool in_sync() const { return synced && !changed; }  // requires mu

    void report(std::exception_ptr e) noexcept {
      if (!e || !so.on_error) return;
      try {
        so.on_error(std::move(e));
      } catch (...) {  // on_error must not throw; nowhere left to report it
      }
    }

    const char* command(bool sub, bool pattern) const {
      if (pattern) return sub ? "PSUBSCRIBE" : "PUNSUBSCRIBE";
      if (cl) return sub ? "SSUBSCRIBE" : "SUNSUBSCRIBE";
      return sub ? "SUBSCRIBE" : "UNSUBSCRIBE";
    }

    // The one loop of both kinds: place every name on its link (reconcile), say when all are
    // confirmed (settle), keep each link alive (PING), read whichever link has a reply.
    void run(std::stop_token st) {
      bool need = true;  // the names must be placed again
      while (!st.stop_requested()) {
        try {
          auto now = clock::now();
          {
            std::lock_guard lock(mu);
            need = need || changed;
          }
          if (unplaced && now >= next_try) need = true;
          if (need) {
            need = false;
            reconcile(now);
          }
          settle();
          wait_and_read(now);
        } catch (const std::exception&) {  // poll failed, or out of memory: start again
          fail_all(std::current_exception());
        }
      }
      links.clear();  // close every connection: the servers forget this subscriber
      {
        std::lock_guard lock(mu);
        synced = false;
        done = true;
      }
      cv.notify_all();
    }

    // Places each asked-for name on the link of its server (a cluster: its slot's primary,
    // by the client's map) and takes it off a link that no longer should have it.
    //
    // Invariant: a name is on at most one link, and on that link only while the map says the
    // link's node owns its slot: a slot that moved (the server's unsolicited sunsubscribe, or
    // MOVED to an SSUBSCRIBE) refreshes the map and places the name again on the new owner.
    // Attacked by "a channel whose slot migrates to another primary is subscribed there" and
    // "... whose primary is killed ..." in test_cluster_topic.cpp.
    void reconcile(clock::time_point now) {
      std::vector<std::string> want[2];
      {
        std::lock_guard lock(mu);
        want[0] = channels;
        want[1] = patterns;
        changed = false;
        synced = false;  // with changed: in_sync() never sees a change the thread has not sent
      }
      unplaced = false;
      next_try = clock::time_point::max();
      bool lost = false;  // a name with no owner in the map, or no map
      if (cl && map_stale) {
        try {
          cl->refresh();
          map_stale = false;
        } catch (const error&) {  // the old map stays; look again after the remap delay
          lost = true;
        }
      }
      for (auto& l : links)
        for (int k = 0; k < 2; ++k) {
          auto& have = l.names[k];
          for (std::size_t i = 0; i < have.size();) {
            auto owner = where(have[i]);
            if (contains(want[k], have[i]) && owner && *owner == l.at) {
              ++i;
              continue;
            }
            std::string n = std::move(have[i]);
            have.erase(have.begin() + static_cast<std::ptrdiff_t>(i));
            if (l.c) send(l, false, k == 1, n);
          }
        }
      for (int k = 0; k < 2; ++k)
        for (const auto& n : want[k]) {
          link* l = target(n);
          if (l == nullptr) {
            lost = true;
            continue;
          }
          if (contains(l->names[k], n)) continue;
          if (!l->c && !open(*l, n)) {
            unplaced = true;
            next_try = std::min(next_try, l->retry_at);
            continue;
          }
          if (send(*l, true, k == 1, n)) l->names[k].push_back(n);
        }
      if (lost) remap(now);
    }

    // The server that should carry `name` (empty for a single server); none when the
    // cluster's map has no owner for its slot.
    std::optional<node_address> where(const std::string& name) const {
      if (!cl) return node_address{};
      try {
        return cl->primary_for_key(name);
      } catch (const error&) {
        return std::nullopt;
      }
    }

    // The link that should carry `name` (made on first use); nullptr when where() has none.
    link* target(const std::string& name) {
      auto at = where(name);
      if (!at) return nullptr;
      for (auto& l : links)
        if (l.at == *at) return &l;
      auto& l = links.emplace_back();
      l.at = std::move(*at);
      l.delay = so.reconnect_delay;
      return &l;
    }

    static bool contains(const std::vector<std::string>& v, const std::string& n) {
      return std::find(v.begin(), v.end(), n) != v.end();
    }
    static bool erase(std::vector<std::string>& v, const std::string& n) {
      auto it = std::find(v.begin(), v.end(), n);
      if (it == v.end()) return false;
      v.erase(it);
      return true;
    }

    // Connects `l` unless it waits out a reconnect delay. `name`: one of its names (a
    // cluster's connection goes to the primary of that name's slot).
    bool open(link& l, const std::string& name) {
      if (clock::now() < l.retry_at) return false;
      try {
        if (cl) {
          l.c.emplace(cl->connect_for_key(name));
          const options& o = l.c->get_options();
          if (!(node_address{o.host, o.port} == l.at)) {  // the map changed in between
            l.c.reset();
            remap(clock::now());
            return false;
          }
        } else {
          l.c.emplace(opts);
        }
      } catch (const std::exception&) {  // redis::error, server_error (AUTH), bad options
        fail(l, std::current_exception());
        return false;
      }
      l.last_rx = clock::now();
      l.pinging = false;
      return true;
    }

    // Sends one (un)subscribe of one name; false if the link failed.
    bool send(link& l, bool sub, bool pattern, const std::string& name) {
      try {
        l.c->send(command(sub, pattern), name);
      } catch (const std::exception&) {
        fail(l, std::current_exception());
        return false;
      }
      l.owed.push_back(op{sub, pattern, name});
      return true;
    }

    // Something confirmed is no longer: wait_subscribed_for turns false, on_reconnect is due.
    void interrupt() {
      {
        std::lock_guard lock(mu);
        synced = false;
      }
      if (been_synced) interrupted = true;
    }

    // The link's connection failed (`e`: reported and counted; null: already reported): close
    // it, forget its names, and connect again after its delay, which doubles.
    void fail(link& l, std::exception_ptr e) {
      if (e) failures.fetch_add(1, std::memory_order_relaxed);
      l.c.reset();
      l.names[0].clear();
      l.names[1].clear();
      l.owed.clear();
      l.pinging = false;
      if (cl) map_stale = true;  // a failover may have moved its slots
      interrupt();
      report(std::move(e));
      // Invariant: the delay counts from after on_error returned, so failures in a row are at
      // least the doubling delay apart. Attacked by "a subscription the server refuses calls
      // on_error and backs off exponentially" in test_topic.cpp.
      l.retry_at = spindle::detail::saturating_add(clock::now(), l.delay);
      l.delay = std::min(so.max_reconnect_delay, l.delay * 2);
      unplaced = true;
      next_try = std::min(next_try, l.retry_at);
    }

    void fail_all(std::exception_ptr e) {
      failures.fetch_add(1, std::memory_order_relaxed);
      report(std::move(e));
      bool any = false;
      for (auto& l : links)
        if (l.c) {
          fail(l, nullptr);
          any = true;
        }
      if (!any) {
        unplaced = true;
        next_try = spindle::detail::saturating_add(clock::now(), so.reconnect_delay);
      }
    }

    // A cluster's slot moved (or the map has no owner for it): read the map again and place
    // the names again, at once the first time, then after a delay that doubles like a
    // reconnect's (a map read from a node that has not heard of the move yet names the old
    // owner, which answers MOVED).
    void remap(clock::time_point now) {
      map_stale = true;
      interrupt();
      unplaced = true;
      next_try = std::min(next_try, spindle::detail::saturating_add(now, remap_delay));
      remap_delay = remap_delay.count() == 0
                        ? so.reconnect_delay
                        : std::min(so.max_reconnect_delay, remap_delay * 2);
    }

    // Closes the links left without names once their last confirmation came, publishes
    // whether every name is confirmed, and on reaching it after an interruption resets the
    // delays and calls on_reconnect.
    void settle() {
      // Invariant: a connection per server that has names, no more. Attacked by "sharded
      // channels are added and removed on a running buffered subscription" (a primary left
      // without channels keeps no connection from it) in test_cluster_topic.cpp.
      for (auto& l : links)
        if (l.c && l.names[0].empty() && l.names[1].empty() && l.owed.empty()) l.c.reset();
      bool ok = !unplaced && std::all_of(links.begin(), links.end(),
                                         [](const link& l) { return l.owed.empty(); });
      bool was = false;
      {
        std::lock_guard lock(mu);
        ok = ok && !changed;
        was = synced;
        synced = ok;
      }
      if (!ok || was) return;
      cv.notify_all();
      for (auto& l : links) l.delay = so.reconnect_delay;
      remap_delay = std::chrono::milliseconds::zero();
      been_synced = true;
      if (!interrupted) return;
      interrupted = false;
      reconnects.fetch_add(1, std::memory_order_relaxed);
      if (!so.on_reconnect) return;
      try {
        so.on_reconnect();
      } catch (...) {  // counts as a failure: on_error, then every link reconnects
        fail_all(std::current_exception());
      }
    }

    // PINGs quiet links, declares dead the ones that did not answer, then waits for a reply on
    // any link, the wake pipe, or the next deadline, and reads one reply from each ready link.
    void wait_and_read(clock::time_point now) {
      int wait_ms = -1;
      auto until = [&](clock::time_point t) {
        int ms = millis_until(t, now);
        wait_ms = wait_ms < 0 ? ms : std::min(wait_ms, ms);
      };
      if (unplaced && next_try != clock::time_point::max()) until(next_try);
      fds.clear();
      polled.clear();
      fds.push_back({wake[0], POLLIN, 0});
      for (auto& l : links) {
        if (!l.c) continue;
        // Invariant: a PING is outstanding at most once per link, and the link is declared
        // dead only when no byte at all arrived for ping_timeout after it (a backlog of
        // messages ahead of the PONG keeps it alive). Attacked by "a blackholed subscription
        // notices, reconnects and receives again" in test_topic.cpp.
        if (l.pinging) {
          auto dead_at = spindle::detail::saturating_add(l.ping_sent, so.ping_timeout);
          if (now >= dead_at) {
            fail(l, std::make_exception_ptr(error(
                        "redis::subscription: no answer to PING within " +
                        std::to_string(so.ping_timeout.count()) +
                        " ms: the connection is dead; reconnecting")));
            until(next_try);
            continue;
          }
          until(dead_at);
        } else if (so.ping_interval.count() > 0) {
          auto due = spindle::detail::saturating_add(l.last_rx, so.ping_interval);
          if (now >= due) {
            try {
              l.c->send("PING");
            } catch (const std::exception&) {
              fail(l, std::current_exception());
              until(next_try);
              continue;
            }
            l.pinging = true;
            l.ping_sent = now;
            due = spindle::detail::saturating_add(now, so.ping_timeout);
          }
          until(due);
        }
        if (l.c->buffered() > 0) wait_ms = 0;
        fds.push_back({l.c->native_handle(), POLLIN, 0});
        polled.push_back(&l);
      }
      int rc = ::poll(fds.data(), static_cast<nfds_t>(fds.size()), wait_ms);
      if (rc < 0 && errno != EINTR) throw error("redis::subscription: poll failed");
      if (rc > 0 && (fds[0].revents & POLLIN) != 0) drain_wake();
      for (std::size_t i = 0; i < polled.size(); ++i) {
        link& l = *polled[i];
        bool ready = rc > 0 && (fds[i + 1].revents & (POLLIN | POLLHUP | POLLERR)) != 0;
        if (!l.c || !(ready || l.c->buffered() > 0)) continue;
        try {
          reply r = l.c->read_reply();
          l.last_rx = clock::now();
          l.pinging = false;  // any reply shows the path alive
          handle(l, r);
        } catch (const std::exception&) {  // redis::error, server_error: this link only
          fail(l, std::current_exception());
        }
      }
    }

    static int millis_until(std::chrono::steady_clock::time_point t,
                            std::chrono::steady_clock::time_point now) {
      if (t <= now) return 0;
      auto left = std::chrono::ceil<std::chrono::milliseconds>(t - now).count();
      return static_cast<int>(std::clamp<std::int64_t>(left, 0, 1 << 30));
    }

    void drain_wake() noexcept {
      char buf[64];
      while (::read(wake[0], buf, sizeof buf) > 0) {
      }
    }

    void handle(link& l, const reply& r) {
      if (r.is_error()) {
        op o;
        if (!l.owed.empty()) {  // an error answers the oldest command still owed
          o = std::move(l.owed.front());
          l.owed.pop_front();
        }
        std::string_view code = r.str();
        code = code.substr(0, code.find(' '));
        if (cl && (code == "MOVED" || code == "ASK" || code == "TRYAGAIN" ||
                   code == "CLUSTERDOWN")) {  // SSUBSCRIBE sent to a node that lost the slot
          if (o.sub) erase(l.names[o.pattern ? 1 : 0], o.name);
          remap(clock::now());
          return;
        }
        throw server_error(r.str());
      }
      if (!r.is_aggregate() || r.size() < 2 || !r[0].is_string()) return;  // PONG
      const std::string& kind = r[0].str();
      message m;
      if ((kind == "message" || kind == "smessage") && r.size() >= 3) {
        m.channel = r[1].str();
        m.payload = r[2].str();
      } else if (kind == "pmessage" && r.size() >= 4) {
        m.pattern = r[1].str();
        m.channel = r[2].str();
        m.payload = r[3].str();
      } else {
        bool sub = kind == "subscribe" || kind == "ssubscribe" || kind == "psubscribe";
        bool unsub = kind == "unsubscribe" || kind == "sunsubscribe" || kind == "punsubscribe";
        if (!sub && !unsub) return;  // "pong" in RESP2 subscribed mode
        if (sub) subscribed.fetch_add(1, std::memory_order_relaxed);
        bool pattern = kind[0] == 'p';
        std::string name = r[1].is_string() ? r[1].str() : std::string();
        auto it = std::find_if(l.owed.begin(), l.owed.end(), [&](const op& o) {
          return o.sub == sub && o.pattern == pattern && o.name == name;
        });
        if (it != l.owed.end()) {
          l.owed.erase(it);  // settle() tells the waiters
          return;
        }
        // Unasked: the server ended a subscription (a cluster's slot moved away from this node,
        // or the node became a replica). Place it again where the map now says.
        if (unsub && erase(l.names[pattern ? 1 : 0], name)) remap(clock::now());
        return;
      }
      received.fetch_add(1, std::memory_order_relaxed);
      if (!h) {
        {
          std::lock_guard lock(mu);
          if (buffer.size() >= so.max_buffered) {
            buffer.pop_front();
            dropped.fetch_add(1, std::memory_order_relaxed);
          }
          buffer.push_back(std::move(m));
        }
        cv.notify_one();
        return;
      }
      std::exception_ptr e;
      try {
        h(m);
      } catch (...) {
        e = std::current_exception();
      }
      if (e) {
        errors.fetch_add(1, std::memory_order_relaxed);
        report(e);
      }
    }
  };

  void start(options o, std::shared_ptr<cluster> cl, std::vector<std::string> channels,
             std::vector<std::string> patterns, handler h, subscription_options so,
             std::stop_token st) {
    if (channels.empty() && patterns.empty())
      throw std::invalid_argument("redis::subscription: no channel and no pattern given");
    if (cl && !patterns.empty()) throw detail::no_sharded_patterns("subscription");
    if (so.reconnect_delay.count() <= 0 || so.max_reconnect_delay < so.reconnect_delay)
      throw std::invalid_argument("redis::subscription: reconnect_delay must be > 0 and <= "
                                  "max_reconnect_delay");
    if (so.ping_interval.count() < 0 || so.ping_timeout.count() <= 0)
      throw std::invalid_argument("redis::subscription: ping_interval < 0 or ping_timeout <= 0");
    if (so.max_buffered == 0)
      throw std::invalid_argument("redis::subscription: max_buffered is 0");
    state_ = std::make_unique<state>();
    if (::pipe2(state_->wake, O_NONBLOCK | O_CLOEXEC) != 0)
      throw error("redis::subscription: pipe2 failed");
    state_->opts = std::move(o);
    state_->cl = std::move(cl);
    state_->channels = std::move(channels);
    state_->patterns = std::move(patterns);
    state_->h = std::move(h);
    state_->so = std::move(so);
    state* s = state_.get();
    state_->thread = std::jthread([s](std::stop_token own) { s->run(own); });
    state_->wake_on_stop.emplace(state_->thread.get_stop_token(), waker{state_->wake[1]});
    if (st.stop_possible())
      state_->external.emplace(std::move(st), stopper{state_->thread.get_stop_source()});
  }

  // Moves the oldest buffered message to `out`; false if none. Requires state_->mu.
  bool take(message& out) {
    if (state_->buffer.empty()) return false;
    out = std::move(state_->buffer.front());
    state_->buffer.pop_front();
    return true;
  }

  // Waits on state_->cv until pred() or the deadline; true if pred() held.
  template <class Pred>
  bool wait_until(std::unique_lock<std::mutex>& lock, std::chrono::steady_clock::time_point dl,
                  Pred pred) {
    if (dl == std::chrono::steady_clock::time_point::max()) {
      state_->cv.wait(lock, pred);
      return true;
    }
    return state_->cv.wait_until(lock, dl, pred);
  }

  // Changes what is asked for; the thread sends it (reconcile) once woken.
  void change(bool pattern, bool add, std::vector<std::string> names) {
    if (pattern && state_->cl)
      throw detail::no_sharded_patterns(add ? "subscription::add_patterns"
                                            : "subscription::remove_patterns");
    if (names.empty()) return;
    {
      std::lock_guard lock(state_->mu);
      auto& set = pattern ? state_->patterns : state_->channels;
      for (const auto& n : names) {
        auto it = std::find(set.begin(), set.end(), n);
        if (add && it == set.end()) set.push_back(n);
        if (!add && it != set.end()) set.erase(it);
      }
      state_->changed = true;
    }
    waker{state_->wake[1]}();
  }

  std::unique_ptr<state> state_;
};

/// Publishing, and a factory of subscriptions, for one server or a cluster. See the header
/// comment.
class topic {
 public:
  /// One server. Connects lazily. Allocates.
  explicit topic(options o, pool_options po = {.max_connections = 4})
      : opts_(o), pool_(std::in_place, std::move(o), po) {}

  /// A cluster, shared with whoever else uses it: sharded pub/sub (SPUBLISH, SSUBSCRIBE).
  /// Throws std::invalid_argument if `c` is null. Allocates.
  explicit topic(std::shared_ptr<cluster> c) : cl_(std::move(c)) {
    if (!cl_) throw std::invalid_argument("redis::topic: null cluster");
  }

  /// Publishes payload on channel (SPUBLISH, on a cluster). Returns how many subscribers
  /// received it (on a cluster: those subscribed on the primary that owns the channel's slot).
  /// Throws redis::error on I/O failure (on a cluster, outcome_unknown_error when the
  /// connection failed after the write: not sent again). Thread-safe.
  std::int64_t publish(std::string_view channel, std::string_view payload) {
    if (cl_) return cl_->command("SPUBLISH", channel, payload).integer();
    return pool_->command("PUBLISH", channel, payload).integer();
  }

  /// Starts a subscription to `channels`; see subscription. Thread-safe.
  subscription subscribe(std::vector<std::string> channels, subscription::handler h,
                         subscription_options so = {}, std::stop_token st = {}) {
    if (cl_)
      return subscription(cl_, std::move(channels), std::move(h), std::move(so), std::move(st));
    return subscription(opts_, std::move(channels), {}, std::move(h), std::move(so), std::move(st));
  }
  /// Starts a subscription to glob `patterns`; see subscription. Throws std::invalid_argument
  /// on a cluster (Redis has no sharded PSUBSCRIBE). Thread-safe.
  subscription psubscribe(std::vector<std::string> patterns, subscription::handler h,
                          subscription_options so = {}, std::stop_token st = {}) {
    if (cl_) throw detail::no_sharded_patterns("topic::psubscribe");
    return subscription(opts_, {}, std::move(patterns), std::move(h), std::move(so), std::move(st));
  }
  /// Starts a subscription without a handler: messages wait in its buffer for pop_for().
  /// Throws std::invalid_argument for patterns on a cluster. Thread-safe.
  subscription listen(std::vector<std::string> channels, std::vector<std::string> patterns,
                      subscription_options so = {}, std::stop_token st = {}) {
    if (cl_) {
      if (!patterns.empty()) throw detail::no_sharded_patterns("topic::listen");
      return subscription(cl_, std::move(channels), std::move(so), std::move(st));
    }
    return subscription(opts_, std::move(channels), std::move(patterns), std::move(so),
                        std::move(st));
  }

 private:
  options opts_;
  std::optional<pool> pool_;     // one server
  std::shared_ptr<cluster> cl_;  // or a cluster
};

}  // namespace spindle::redis
