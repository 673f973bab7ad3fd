// spindle/redis/topic.hpp - Redis Pub/Sub: publish, and subscriptions with a handler.
//
//   spindle::redis::topic t({.port = 6379});
//   auto sub = t.subscribe({"news"}, [](const spindle::redis::message& m) { show(m.payload); });
//   t.publish("news", "hello");             // returns how many subscribers received it
//   sub.stop();                             // or let it go out of scope
//
// Defines topic, subscription, message, subscription_options.
//
// Guarantees: fire-and-forget, as Redis promises: a message reaches the subscribers connected
// when it is published; none is stored or redelivered. A subscription runs its handler on its own
// thread with its own connection, one message at a time, in the order the server sent them, and
// never while holding a lock. After the connection breaks it reconnects and subscribes again
// (messages published meanwhile are lost). stop() - or the stop token given - ends it within
// about 50 ms (poll granularity), even while no message arrives.
// A handler exception goes to subscription_options::on_error (or is counted and dropped if none
// is set); the subscription goes on.
//
// Thread-safety: topic::publish is thread-safe (a pool). A subscription's stop() is thread-safe;
// its destructor stops and joins (do not destroy it from its own handler).
#pragma once

#include <poll.h>

#include <atomic>
#include <chrono>
#include <condition_variable>  // condition_variable_any: a stop-aware reconnect delay
#include <cstdint>
#include <exception>
#include <functional>  // std::function: the handler and on_error, called once per message
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

#include "spindle/redis/connection.hpp"
#include "spindle/redis/error.hpp"
#include "spindle/redis/options.hpp"
#include "spindle/redis/pool.hpp"

namespace spindle::redis {

/// A received message. `pattern` is empty for a plain subscribe.
struct message {
  std::string channel;
  std::string pattern;
  std::string payload;
};

/// Knobs of a subscription; use with designated initializers.
struct subscription_options {
  std::function<void(std::exception_ptr)> on_error = {};  ///< handler exceptions
  std::chrono::milliseconds reconnect_delay{50};          ///< between reconnect attempts
};

/// A running subscription: a thread, a connection, a handler. Move-only. See the header.
class subscription {
 public:
  using handler = std::function<void(const message&)>;

  /// Subscribes to `channels` and `patterns` (at least one in all) and starts the thread.
  /// Throws std::invalid_argument if both are empty. Connects on its thread: a server that
  /// cannot be reached is retried every reconnect_delay. Allocates.
  subscription(options o, std::vector<std::string> channels, std::vector<std::string> patterns,
               handler h, subscription_options so = {}, std::stop_token st = {})
      : state_(std::make_unique<state>()) {
    if (channels.empty() && patterns.empty())
      throw std::invalid_argument("redis::subscription: no channel and no pattern given");
    if (!h) throw std::invalid_argument("redis::subscription: empty handler");
    state_->opts = std::move(o);
    state_->channels = std::move(channels);
    state_->patterns = std::move(patterns);
    state_->h = std::move(h);
    state_->so = std::move(so);
    state* s = state_.get();
    state_->thread = std::jthread([s](std::stop_token own) { s->run(own); });
    if (st.stop_possible())
      state_->external.emplace(std::move(st), stopper{state_->thread.get_stop_source()});
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
  /// Messages handled so far. Thread-safe.
  std::uint64_t received() const noexcept {
    return state_->received.load(std::memory_order_relaxed);
  }
  /// Successful (re)subscriptions so far: 1 once first subscribed, more after reconnects.
  std::uint64_t subscribed() const noexcept {
    return state_->subscribed.load(std::memory_order_relaxed);
  }
  /// Handler exceptions so far. Thread-safe.
  std::uint64_t errors() const noexcept { return state_->errors.load(std::memory_order_relaxed); }

 private:
  struct stopper {
    std::stop_source src;
    void operator()() noexcept { src.request_stop(); }
  };

  struct state {
    options opts;
    std::vector<std::string> channels, patterns;
    handler h;
    subscription_options so;
    std::atomic<std::uint64_t> received{0};    // relaxed: statistics
    std::atomic<std::uint64_t> subscribed{0};  // relaxed: statistics
    std::atomic<std::uint64_t> errors{0};      // relaxed: statistics
    std::optional<std::stop_callback<stopper>> external;
    std::jthread thread;  // last: joined first on destruction, before the members it uses

    void run(std::stop_token st) {
      std::optional<connection> c;
      while (!st.stop_requested()) {
        try {
          if (!c) {
            c.emplace(opts);
            if (!channels.empty()) c->append("SUBSCRIBE", channels);
            if (!patterns.empty()) c->append("PSUBSCRIBE", patterns);
            c->flush();
          }
          if (c->buffered() == 0) {
            pollfd p{c->native_handle(), POLLIN, 0};
            if (::poll(&p, 1, 50) <= 0) continue;  // 50 ms: how promptly stop is seen
          }
          dispatch(c->read());
        } catch (const error&) {
          c.reset();  // reconnect and subscribe again
          std::mutex m;
          std::unique_lock lock(m);
          std::condition_variable_any cv;
          cv.wait_for(lock, st, so.reconnect_delay, [] { return false; });
        }
      }
    }

    void dispatch(const reply& r) {
      if (!r.is_aggregate() || r.size() < 3) return;
      const std::string& kind = r[0].str();
      message m;
      if (kind == "message") {
        m.channel = r[1].str();
        m.payload = r[2].str();
      } else if (kind == "pmessage" && r.size() >= 4) {
        m.pattern = r[1].str();
        m.channel = r[2].str();
        m.payload = r[3].str();
      } else {
        if (kind == "subscribe" || kind == "psubscribe")
          subscribed.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      std::exception_ptr e;
      try {
        h(m);
      } catch (...) {
        e = std::current_exception();
      }
      received.fetch_add(1, std::memory_order_relaxed);
      if (e) {
        errors.fetch_add(1, std::memory_order_relaxed);
        if (so.on_error) so.on_error(e);
      }
    }
  };

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

 private:
  options opts_;
  pool pool_;
};

}  // namespace spindle::redis
