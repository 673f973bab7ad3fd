// spindle/worker_pool.hpp - N threads consuming any channel with one handler.
//
// Defines:
//   worker_pool<C>         worker_pool(source, workers, handler, options) starts at once; join(),
//                          stop(), stats(), last_error().
//   worker_pool_options    on_error: receives every exception a handler throws.
//   worker_pool_stats      {processed, failed}.
//
// Guarantees:
//   - Each item popped from the source is passed (moved) to exactly one call of the handler.
//   - Visibility: everything a producer did before push() is visible to the handler call that
//     receives the item (the channel's own guarantee).
//   - No exception is lost: a handler exception is counted in stats().failed, kept as
//     last_error(), and passed to options.on_error (on the worker thread, no lock held); the
//     worker goes on with the next item. processed counts successful calls only.
//   - The handler is called concurrently from every worker: it must be safe to call so.
//   - A channel with acknowledgements (detail::acknowledging_channel: pop_delivery(d, st),
//     ack(d), nack(d), d.value - redis::queue, redis::stream) is consumed through them: a
//     delivery is acked only after the handler returns normally and nacked (redelivered, then
//     dead-lettered by the channel) when it throws. Where the channel offers
//     ack_and_pop_delivery(d, st) (detail::fused_ack_channel: redis::queue), the ack of a
//     handled delivery travels with the worker's next pop; a worker that stops acks at once.
//   - A worker whose pop from such a channel throws (Redis away longer than the channel's own
//     retry window, say) does not give up: each failure is counted in stats().failed and
//     reported through on_error, and the worker tries again after a backoff doubling from
//     10 ms to 1 s (cut short by stop()). It ends only on stop() or once the channel is closed
//     and drained, as Sidekiq and BullMQ workers reconnect for ever.
//
// Shutdown: close the source, then join(): every item pushed before close() is handled. stop()
// ends early: each worker finishes the item in hand and exits; items left in the source stay
// there. The destructor calls stop() and joins (join() first to drain). join() from a handler
// throws std::logic_error (it would wait for its own worker); the pool must not be destroyed
// from its own handler (the handler is part of it).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>      // std::fprintf when on_error throws
#include <exception>
#include <functional>  // std::function (options)
#include <memory>
#include <mutex>
#include <stdexcept>
#include <stop_token>
#include <string>  // std::to_string
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "channel.hpp"
#include "detail/config.hpp"
#include "detail/function.hpp"
#include "status.hpp"

namespace spindle {

namespace detail {
/// A channel with explicit acknowledgement (redis::queue, redis::stream): worker_pool pops a
/// delivery, acks it after the handler returns and nacks it (redelivery) if the handler throws.
template <class C>
concept acknowledging_channel =
    requires(C& c, typename C::delivery& d, std::stop_token st) {
      { c.pop_delivery(d, st) } -> std::same_as<status>;
      { std::move(d.value) } -> std::convertible_to<typename C::value_type>;
      { c.ack(d) } -> std::convertible_to<bool>;
      { c.nack(d) } -> std::convertible_to<bool>;
    };

/// The worker_pool whose worker the calling thread is (nullptr if none): join() refuses to wait
/// for itself.
inline const void*& current_worker_pool() noexcept {
  static thread_local const void* p = nullptr;
  return p;
}

/// An acknowledging channel that can ack a delivery and pop the next one in one step
/// (redis::queue: one round trip); worker_pool then uses it after a handler returns.
template <class C>
concept fused_ack_channel =
    acknowledging_channel<C> && requires(C& c, typename C::delivery& d, std::stop_token st) {
      { c.ack_and_pop_delivery(d, st) } -> std::same_as<status>;
    };
}  // namespace detail

/// Runtime knobs of a worker_pool.
struct worker_pool_options {
  /// Receives every exception a handler throws, on the worker thread. If it throws in turn,
  /// std::terminate() is called.
  std::function<void(std::exception_ptr)> on_error = {};
};

/// Counters of a worker_pool.
struct worker_pool_stats {
  std::uint64_t processed = 0;  ///< handler calls that returned normally
  std::uint64_t failed = 0;     ///< handler calls that threw
};

/// N threads popping from a channel and passing each item to a handler. See the header comment.
template <channel C>
class worker_pool {
 public:
  using value_type = typename C::value_type;

  /// Starts `workers` threads that pop from `source` and call handler(std::move(item)).
  /// `source` must outlive the pool. Throws std::invalid_argument if workers == 0, or if
  /// workers > 1 on a channel that takes one consumer (multi_consumer(source) is false).
  /// Allocates.
  template <class F>
    requires std::is_invocable_v<F&, value_type&&>
  worker_pool(C& source, std::size_t workers, F handler, worker_pool_options options = {})
      : source_(source), handler_(std::move(handler)), opts_(std::move(options)) {
    if (workers == 0)
      throw std::invalid_argument("spindle::worker_pool: workers must be >= 1, got 0");
    if (workers > 1 && !multi_consumer(source))  // several threads would pop a single-ended one
      throw std::invalid_argument("spindle::worker_pool: " + std::to_string(workers) +
                                  " workers on a single-consumer channel (spsc_queue); use 1 "
                                  "worker or a multi-consumer channel");
    counters_ = std::make_unique<counter[]>(workers);
    n_ = workers;
    threads_.reserve(workers);
    try {
      for (std::size_t i = 0; i < workers; ++i)
        threads_.emplace_back([this, i] { run(counters_[i]); });
    } catch (...) {
      stop();
      join();
      throw;
    }
  }

  worker_pool(const worker_pool&) = delete;
  worker_pool& operator=(const worker_pool&) = delete;

  /// stop(), then join(): items still in the source stay there.
  ~worker_pool() {
    stop();
    join();
  }

  /// Blocks until every worker has exited: the source is closed and drained, or stop() was
  /// called. Rethrows nothing (see stats(), last_error(), on_error). Idempotent. Throws
  /// std::logic_error if called from a handler of this pool (it would wait for itself; attacked
  /// by "join from inside a handler throws std::logic_error instead of hanging"). Thread-safe.
  void join() {
    if (detail::current_worker_pool() == this)
      throw std::logic_error(
          "spindle::worker_pool::join: called from a handler of this pool (it would wait for "
          "its own worker)");
    std::lock_guard lock(join_mu_);
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }

  /// Asks every worker to exit after the item in hand; does not wait (join() does) and does not
  /// close the source. Idempotent. Never blocks. Thread-safe.
  void stop() noexcept { stop_.request_stop(); }

  /// Handler calls so far: {processed (successes), failed}. Approximate while running.
  /// Thread-safe.
  worker_pool_stats stats() const noexcept {
    worker_pool_stats s;
    for (std::size_t i = 0; i < n_; ++i) {
      s.processed += counters_[i].processed.load(std::memory_order_relaxed);
      s.failed += counters_[i].failed.load(std::memory_order_relaxed);
    }
    return s;
  }

  /// The most recent handler exception, or null. Thread-safe.
  std::exception_ptr last_error() const {
    std::lock_guard lock(error_mu_);
    return last_error_;
  }

  /// The number of worker threads. Thread-safe.
  std::size_t size() const noexcept { return n_; }

 private:
  struct alignas(detail::false_sharing_range) counter {
    std::atomic<std::uint64_t> processed{0};  // relaxed: a statistic
    std::atomic<std::uint64_t> failed{0};     // relaxed: a statistic
  };

  void run(counter& c) {
    detail::current_worker_pool() = this;
    if constexpr (detail::acknowledging_channel<C>) {
      run_acknowledged(c);
      return;
    }
    std::stop_token st = stop_.get_token();
    value_type item{};
    for (;;) {
      status s = source_.pop(item, st);
      if (s != status::ok) return;  // closed and drained, or cancelled by stop()
      std::exception_ptr error;
      try {
        handler_(std::move(item));
      } catch (...) {
        error = std::current_exception();
      }
      if (error) {
        fail(c, std::move(error));  // outside the catch block, so on_error may hand it off freely
      } else {
        c.processed.fetch_add(1, std::memory_order_relaxed);
      }
      if (st.stop_requested()) return;
    }
  }

  // The loop for a channel with acknowledgements: ack after the handler returns, nack if it
  // throws. A failing pop (e.g. Redis I/O) is reported like a handler failure and retried after
  // a capped backoff until stop(); a failing ack or nack is reported too.
  // Invariant: attacked by "worker_pool over a Redis queue outlives an outage longer than the
  // retry window" (test_queue.cpp).
  void run_acknowledged(counter& c) {
    std::stop_token st = stop_.get_token();
    typename C::delivery d{};
    bool ack_due = false;  // d was handled; fused channels ack it with the next pop
    auto backoff = std::chrono::milliseconds(10);
    for (;;) {
      std::exception_ptr error;
      status s = status::closed;
      try {
        if constexpr (detail::fused_ack_channel<C>) {
          bool fused = std::exchange(ack_due, false);  // the channel holds the ack from here on
          s = fused ? source_.ack_and_pop_delivery(d, st) : source_.pop_delivery(d, st);
        } else {
          s = source_.pop_delivery(d, st);
        }
      } catch (...) {
        error = std::current_exception();
      }
      if (error) {
        fail(c, std::move(error));
        std::unique_lock lock(backoff_mu_);
        backoff_cv_.wait_for(lock, st, backoff, [] { return false; });  // woken by stop()
        if (st.stop_requested()) return;
        backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
        continue;
      }
      backoff = std::chrono::milliseconds(10);
      if (s != status::ok) return;  // closed and drained, or cancelled by stop()
      bool handled = false;
      try {
        handler_(std::move(d.value));
        handled = true;
        if constexpr (detail::fused_ack_channel<C>) {
          ack_due = true;  // sent with the next pop, or below when stopping
        } else {
          source_.ack(d);
        }
      } catch (...) {
        error = std::current_exception();
      }
      if (error) {
        if (!handled) {
          try {
            source_.nack(d);
          } catch (...) {  // the lease then expires and the item is redelivered anyway
          }
        }
        fail(c, std::move(error));
      } else {
        c.processed.fetch_add(1, std::memory_order_relaxed);
      }
      if (st.stop_requested()) {
        if (ack_due) {
          try {
            source_.ack(d);  // no next pop to carry it
          } catch (...) {
            error = std::current_exception();
          }
          if (error) fail(c, std::move(error));
        }
        return;
      }
    }
  }

  // Counts a failure of worker `c` and reports it: last_error(), then on_error.
  void fail(counter& c, std::exception_ptr e) noexcept {
    c.failed.fetch_add(1, std::memory_order_relaxed);
    {
      std::lock_guard lock(error_mu_);
      last_error_ = e;
    }
    if (opts_.on_error) {
      try {
        opts_.on_error(std::move(e));
      } catch (...) {
        std::fprintf(stderr, "spindle::worker_pool: on_error threw\n");
        std::terminate();
      }
    }
  }

  C& source_;
  detail::move_function<void(value_type&&)> handler_;  // called concurrently by the workers
  worker_pool_options opts_;
  std::stop_source stop_;
  std::unique_ptr<counter[]> counters_;
  std::size_t n_ = 0;
  std::vector<std::thread> threads_;
  std::mutex join_mu_;                 // serialises join()
  std::mutex backoff_mu_;              // only for backoff_cv_'s waits
  std::condition_variable_any backoff_cv_;  // a worker's backoff after a failing pop
  mutable std::mutex error_mu_;
  std::exception_ptr last_error_;      // guarded by error_mu_
};

template <class C, class F>
worker_pool(C&, std::size_t, F, worker_pool_options = {}) -> worker_pool<C>;

}  // namespace spindle
