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
// Defines topic, subscription, message, subscription_options.
//
// Guarantees: fire-and-forget, as Redis promises: a message reaches the subscribers whose
// subscription the server has confirmed when it is published; none is stored or redelivered.
// wait_subscribed_for() tells when that is (publishing before it is the classic way to lose the
// first messages). A subscription runs on its own thread with its own connection and hands its
// messages, one at a time and in the order the server sent them, to its handler (never while
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
// stop() - or the stop token given - wakes the thread at once (a self-pipe); it ends as soon as
// the call it is in returns: at once while waiting for messages or between reconnects, within
// connect_timeout + io_timeout while a (re)connect is under way, and after the handler returns.
// A handler exception goes to on_error (and errors() counts it); the subscription goes on.
//
// Thread-safety: topic::publish is thread-safe (a pool). Every member of subscription is
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
#include <condition_variable>  // condition_variable_any: stop-aware waits
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
  /// Called after each reconnect, once the server confirmed every channel and pattern again
  /// (not after the first connect). An exception from it counts as a failure: on_error, then a
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
    start(std::move(o), std::move(channels), std::move(patterns), std::move(h), std::move(so),
          std::move(st));
  }

  /// Like the handler form, but messages wait in a buffer for pop_for() / try_pop().
  subscription(options o, std::vector<std::string> channels, std::vector<std::string> patterns,
               subscription_options so, std::stop_token st = {}) {
    start(std::move(o), std::move(channels), std::move(patterns), handler{}, std::move(so),
          std::move(st));
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
  void add_channels(std::vector<std::string> channels) { change("SUBSCRIBE", std::move(channels)); }
  /// Unsubscribes from channels; messages already received are still delivered. Thread-safe.
  void remove_channels(std::vector<std::string> channels) {
    change("UNSUBSCRIBE", std::move(channels));
  }
  /// Subscribes to more glob patterns. Thread-safe. Allocates.
  void add_patterns(std::vector<std::string> patterns) { change("PSUBSCRIBE", std::move(patterns)); }
  /// Unsubscribes from patterns. Thread-safe.
  void remove_patterns(std::vector<std::string> patterns) {
    change("PUNSUBSCRIBE", std::move(patterns));
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
  /// Reconnects that subscribed again (on_reconnect calls). Thread-safe.
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
  struct request {
    const char* command;  // SUBSCRIBE, UNSUBSCRIBE, PSUBSCRIBE, PUNSUBSCRIBE
    std::vector<std::string> names;
  };

  struct state {
    options opts;
    handler h;
    subscription_options so;
    int wake[2] = {-1, -1};  // self-pipe: [0] polled by the thread, [1] written to wake it

    std::mutex mu;                 // lock order: only lock; never held while calling user code
    std::condition_variable cv;    // buffer, sync and done changes
    std::vector<std::string> channels, patterns;  // guarded by mu: what is asked for
    std::deque<request> requests;                 // guarded by mu: changes not yet sent
    std::deque<message> buffer;                   // guarded by mu
    std::size_t awaiting = 0;  // guarded by mu: confirmations owed on the live connection
    bool live = false;         // guarded by mu: a connection that has sent its subscriptions
    bool done = false;         // guarded by mu: the thread has ended

    std::atomic<std::uint64_t> received{0};    // relaxed: statistics
    std::atomic<std::uint64_t> subscribed{0};  // relaxed: statistics
    std::atomic<std::uint64_t> errors{0};      // relaxed: statistics
    std::atomic<std::uint64_t> failures{0};    // relaxed: statistics
    std::atomic<std::uint64_t> reconnects{0};  // relaxed: statistics
    std::atomic<std::uint64_t> dropped{0};     // relaxed: statistics
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

    bool in_sync() const { return live && awaiting == 0 && requests.empty(); }  // requires mu

    void report(std::exception_ptr e) noexcept {
      if (!so.on_error) return;
      try {
        so.on_error(std::move(e));
      } catch (...) {  // on_error must not throw; nowhere left to report it
      }
    }

    void run(std::stop_token st) {
      using clock = std::chrono::steady_clock;
      std::optional<connection> c;
      auto delay = so.reconnect_delay;
      bool first = true;
      while (!st.stop_requested()) {
        try {
          c.emplace(opts);
          bool confirmed = false;  // on_reconnect and the delay reset wait for this
          {
            std::lock_guard lock(mu);
            requests.clear();  // the full current set is sent below
            awaiting = channels.size() + patterns.size();
            live = true;
            if (!channels.empty()) c->send("SUBSCRIBE", channels);
            if (!patterns.empty()) c->send("PSUBSCRIBE", patterns);
          }
          auto last_rx = clock::now();
          bool pinging = false;  // a PING is outstanding, sent at ping_sent
          clock::time_point ping_sent{};
          while (!st.stop_requested()) {
            send_requests(*c);
            if (!confirmed && sync_reached()) {
              confirmed = true;
              delay = so.reconnect_delay;
              if (!first) {
                reconnects.fetch_add(1, std::memory_order_relaxed);
                if (so.on_reconnect) so.on_reconnect();
              }
              first = false;
            }
            // Invariant: a PING is outstanding at most once, and the connection is declared
            // dead only when no byte at all arrived for ping_timeout after it (a backlog of
            // messages ahead of the PONG keeps it alive). Attacked by "a blackholed
            // subscription notices, reconnects and receives again" in test_topic.cpp.
            auto now = clock::now();
            int wait_ms = -1;
            if (pinging) {
              auto dead_at = spindle::detail::saturating_add(ping_sent, so.ping_timeout);
              if (now >= dead_at)
                throw error("redis::subscription: no answer to PING within " +
                            std::to_string(so.ping_timeout.count()) +
                            " ms: the connection is dead; reconnecting");
              wait_ms = millis_until(dead_at, now);
            } else if (so.ping_interval.count() > 0) {
              auto due = spindle::detail::saturating_add(last_rx, so.ping_interval);
              if (now >= due) {
                c->send("PING");
                pinging = true;
                ping_sent = now;
                continue;
              }
              wait_ms = millis_until(due, now);
            }
            if (c->buffered() == 0) {
              pollfd p[2] = {{c->native_handle(), POLLIN, 0}, {wake[0], POLLIN, 0}};
              int rc = ::poll(p, 2, wait_ms);
              if (rc < 0 && errno != EINTR) throw error("redis::subscription: poll failed");
              if (rc > 0 && (p[1].revents & POLLIN) != 0) drain_wake();
              if (rc <= 0 || (p[0].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
            }
            reply r = c->read_reply();
            last_rx = clock::now();
            pinging = false;  // any reply shows the path alive
            handle(r);
          }
        } catch (const std::exception&) {
          // redis::error and server_error; also whatever on_reconnect threw, or bad options.
          failures.fetch_add(1, std::memory_order_relaxed);
          {
            std::lock_guard lock(mu);
            live = false;
          }
          c.reset();
          report(std::current_exception());
          std::mutex m;
          std::unique_lock lock(m);
          std::condition_variable_any pause;
          pause.wait_for(lock, st, delay, [] { return false; });
          delay = std::min(so.max_reconnect_delay, delay * 2);
        }
      }
      {
        std::lock_guard lock(mu);
        live = false;
        done = true;
      }
      cv.notify_all();
    }

    static int millis_until(std::chrono::steady_clock::time_point t,
                            std::chrono::steady_clock::time_point now) {
      auto left = std::chrono::ceil<std::chrono::milliseconds>(t - now).count();
      return static_cast<int>(std::clamp<std::int64_t>(left, 0, 1 << 30));
    }

    void drain_wake() noexcept {
      char buf[64];
      while (::read(wake[0], buf, sizeof buf) > 0) {
      }
    }

    bool sync_reached() {
      std::lock_guard lock(mu);
      return in_sync();
    }

    void send_requests(connection& c) {
      std::unique_lock lock(mu);
      while (!requests.empty()) {
        request q = std::move(requests.front());
        requests.pop_front();
        awaiting += q.names.size();
        c.send(q.command, q.names);  // under mu: a concurrent change waits for the write
      }
    }

    void handle(const reply& r) {
      if (r.is_error()) throw server_error(r.str());
      if (!r.is_aggregate() || r.size() < 2 || !r[0].is_string()) return;  // PONG
      const std::string& kind = r[0].str();
      message m;
      if (kind == "message" && r.size() >= 3) {
        m.channel = r[1].str();
        m.payload = r[2].str();
      } else if (kind == "pmessage" && r.size() >= 4) {
        m.pattern = r[1].str();
        m.channel = r[2].str();
        m.payload = r[3].str();
      } else {
        if (kind == "subscribe" || kind == "psubscribe" || kind == "unsubscribe" ||
            kind == "punsubscribe") {
          if (kind == "subscribe" || kind == "psubscribe")
            subscribed.fetch_add(1, std::memory_order_relaxed);
          bool now_in_sync = false;
          {
            std::lock_guard lock(mu);
            if (awaiting > 0) --awaiting;
            now_in_sync = in_sync();
          }
          if (now_in_sync) cv.notify_all();
        }
        return;  // "pong" in RESP2 subscribed mode
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

  void start(options o, std::vector<std::string> channels, std::vector<std::string> patterns,
             handler h, subscription_options so, std::stop_token st) {
    if (channels.empty() && patterns.empty())
      throw std::invalid_argument("redis::subscription: no channel and no pattern given");
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

  void change(const char* command, std::vector<std::string> names) {
    if (names.empty()) return;
    {
      std::lock_guard lock(state_->mu);
      std::string_view c(command);
      bool add = c == "SUBSCRIBE" || c == "PSUBSCRIBE";
      auto& set = c.starts_with('P') ? state_->patterns : state_->channels;
      for (const auto& n : names) {
        auto it = std::find(set.begin(), set.end(), n);
        if (add && it == set.end()) set.push_back(n);
        if (!add && it != set.end()) set.erase(it);
      }
      state_->requests.push_back(request{command, std::move(names)});
    }
    waker{state_->wake[1]}();
  }

  std::unique_ptr<state> state_;
};

/// Publishing, and a factory of subscriptions, for one server. See the header comment.
class topic {
 public:
  /// Connects lazily. Allocates.
  explicit topic(options o, pool_options po = {.max_connections = 4})
      : opts_(o), pool_(std::move(o), po) {}

  /// Publishes payload on channel. Returns how many subscribers received it. Throws
  /// redis::error on I/O failure. Thread-safe.
  std::int64_t publish(std::string_view channel, std::string_view payload) {
    return pool_.command("PUBLISH", channel, payload).integer();
  }

  /// Starts a subscription to `channels`; see subscription. Thread-safe.
  subscription subscribe(std::vector<std::string> channels, subscription::handler h,
                         subscription_options so = {}, std::stop_token st = {}) {
    return subscription(opts_, std::move(channels), {}, std::move(h), std::move(so), std::move(st));
  }
  /// Starts a subscription to glob `patterns`; see subscription. Thread-safe.
  subscription psubscribe(std::vector<std::string> patterns, subscription::handler h,
                          subscription_options so = {}, std::stop_token st = {}) {
    return subscription(opts_, {}, std::move(patterns), std::move(h), std::move(so), std::move(st));
  }
  /// Starts a subscription without a handler: messages wait in its buffer for pop_for().
  /// Thread-safe.
  subscription listen(std::vector<std::string> channels, std::vector<std::string> patterns,
                      subscription_options so = {}, std::stop_token st = {}) {
    return subscription(opts_, std::move(channels), std::move(patterns), std::move(so),
                        std::move(st));
  }

 private:
  options opts_;
  pool pool_;
};

}  // namespace spindle::redis
