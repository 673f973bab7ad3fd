// spindle/actor.hpp - actor<Msg>: a bounded mailbox and a handler that sees one message at a
// time, on its own thread or on an executor.
//
//   spindle::actor<int> counter([&](int n) { total += n; });       // its own thread
//   spindle::actor<int> on_pool(pool, [&](int n) { total += n; }); // runs on a thread_pool
//   counter.send(5);                                              // blocks while the mailbox is full
//   auto f = counter.ask([&] { return total; });                  // runs inside the actor
//   counter.stop();                                               // handles what is queued, then ends
//
// Guarantees:
// - One at a time: the handler and ask() functions of one actor never run concurrently, so the
//   state they touch needs no lock. They run in mailbox order: FIFO per sender, and send/ask
//   calls of one thread are handled in the order they were made.
// - Visibility: everything a thread did before send()/ask() is visible to the handler (or ask
//   function) that handles that message; everything the actor did before fulfilling an ask()
//   is visible to the thread that gets the future's value.
// - Backpressure: the mailbox holds actor_options::mailbox_capacity messages; send() blocks while
//   it is full, try_send() returns full. A handler that blocks (a send to a full mailbox, a wait
//   on ask()) holds its worker, as any blocking task does: it deadlocks when it waits on its own
//   actor, or on an actor that needs the same executor when no other worker is free (a
//   one-thread pool). With a free worker, send-then-ask, ask to a third actor and nested asks
//   all work: every turn is an ordinary task of the executor, taken by any idle worker.
// - On an executor the actor owns no thread: a send to an idle actor posts one task, which handles
//   up to actor_options::batch messages and then posts itself again if more are queued, so actors
//   sharing a pool take turns (fairness) and never run two handlers of one actor at once. A turn
//   is never deferred onto the sending worker: it is posted, so an idle worker can take it.
// - Errors: an exception from the handler goes to actor_options::on_error (on the actor's
//   thread) and the actor goes on; failures() counts them. No exception vanishes unseen: without
//   on_error, or when on_error itself throws, the exception is printed to stderr and
//   std::terminate() is called (the rule of std::thread and of thread_pool::post). An exception
//   from an ask() function goes to its future.
// - stop() closes the mailbox (send returns closed; ask's future holds spindle::closed_error),
//   handles every message already queued, then joins the actor's thread (or waits for its last
//   task on the executor). Idempotent. The destructor calls it. From inside the handler, stop()
//   only closes the mailbox. Called from a task on the only worker of the actor's executor (an
//   executor with in_worker() and size(), as thread_pool) while a turn is queued there, it
//   would wait for itself: it throws std::logic_error at once instead (the mailbox is closed;
//   a later stop() from another thread finishes the job). The destructor cannot throw, nor
//   return while a queued turn refers to the actor: there the same error ends in
//   std::terminate, with its message, instead of a hang.
// - No allocation per message: the mailbox is a fixed ring. ask() allocates (its job and future).
// - User code never runs under the mailbox lock.
#pragma once

#include <atomic>
#include <algorithm>
#include <climits>  // UINT_MAX
#include <concepts>
#include <condition_variable>
#include <cstdio>  // std::fprintf for an unhandled exception
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "detail/wait.hpp"
#include "errors.hpp"
#include "future.hpp"
#include "status.hpp"

namespace spindle {


/// Options of an actor.
struct actor_options {
  /// Messages the mailbox holds before send() blocks. >= 1.
  std::size_t mailbox_capacity = 1024;
  /// Called with each exception the handler throws (on the actor's thread). If empty, or if it
  /// throws, the exception is printed and std::terminate() is called.
  std::function<void(std::exception_ptr)> on_error = {};
  /// Messages handled per turn on an executor before the actor yields its worker (fairness);
  /// also the most messages taken from the mailbox in one lock. >= 1.
  std::size_t batch = 64;
  /// Polls an idle actor thread makes of its mailbox before it sleeps (own thread only; see
  /// detail::spin_until). Spinning saves a kernel wake-up when messages come in quick
  /// succession; 0 sleeps at once.
  std::size_t spin = detail::default_spin;
};

/// An actor receiving messages of type Msg (see the header comment). Neither copyable nor
/// movable (its tasks refer to it). send/try_send/ask/stop are thread-safe.
template <class Msg>
class actor {
 public:
  using message_type = Msg;

  /// An actor running `h` on its own thread. Allocates (mailbox, thread). Throws
  /// std::invalid_argument if mailbox_capacity or batch is 0.
  template <class Handler>
    requires std::is_invocable_v<Handler&, Msg&&>
  explicit actor(Handler h, actor_options opts = {}) : actor(init_tag{}, std::move(h), opts) {
    thread_ = std::thread([this] { run_own_thread(); });
  }

  /// An actor running `h` on `ex` (any type with post(F); it must outlive the actor) without a
  /// thread of its own. Allocates (mailbox). Throws std::invalid_argument as above.
  template <class E, class Handler>
    requires std::is_invocable_v<Handler&, Msg&&>
  actor(E& ex, Handler h, actor_options opts = {}) : actor(init_tag{}, std::move(h), opts) {
    executor_ = static_cast<void*>(&ex);
    post_ = [](void* e, actor* self) { static_cast<E*>(e)->post([self] { self->drain(); }); };
    if constexpr (requires(E& x) {
                    { x.in_worker() } -> std::convertible_to<bool>;
                    { x.size() } -> std::convertible_to<std::size_t>;
                  }) {
      sole_worker_ = [](void* e) {
        auto& x = *static_cast<E*>(e);
        return x.in_worker() && x.size() == 1;
      };
    }
  }

  actor(const actor&) = delete;
  actor& operator=(const actor&) = delete;

  /// Calls stop() (see the header for the one case where that terminates).
  ~actor() { stop(); }

  /// Queues `m`. Blocks while the mailbox is full. Returns ok | closed (after stop()). On an
  /// executor, rethrows an exception of its post() (the message stays queued; stop() handles
  /// it). Never allocates. Thread-safe.
  status send(Msg m) {
    envelope e(std::in_place_index<0>, std::move(m));
    return push(e, true);
  }

  /// Queues `m` if there is room. Never blocks. Returns ok | full | closed. Thread-safe.
  status try_send(Msg m) {
    envelope e(std::in_place_index<0>, std::move(m));
    return push(e, false);
  }

  /// Runs `f()` inside the actor, after the messages queued before it, with the same exclusive
  /// access as the handler; its result (or exception) fulfils the returned future. Blocks while
  /// the mailbox is full. After stop() the future holds spindle::closed_error. Allocates.
  /// Thread-safe.
  template <class F>
  auto ask(F f) -> future<std::invoke_result_t<F&>> {
    using R = std::invoke_result_t<F&>;
    promise<R> p;
    auto fut = p.get_future();
    envelope e(std::in_place_index<1>, std::make_unique<ask_job<F, R>>(std::move(f), std::move(p)));
    if (push(e, true) != status::ok) std::get<1>(e)->refuse();
    return fut;
  }

  /// Closes the mailbox, handles what is queued, and joins the actor's thread (or waits for its
  /// last task on the executor). Idempotent. From inside the handler it only closes the mailbox.
  /// Throws std::logic_error if it would wait for itself (see the header). Thread-safe.
  void stop() {
    {
      std::lock_guard lock(mu_);
      closed_ = true;
    }
    not_empty_.notify_all();
    not_full_.notify_all();
    if (in_handler()) return;
    if (executor_ == nullptr) {
      std::lock_guard join_lock(join_mu_);
      if (thread_.joinable()) thread_.join();
      return;
    }
    std::unique_lock lock(mu_);
    if (scheduled_ && sole_worker_ != nullptr && sole_worker_(executor_))
      throw std::logic_error(
          "spindle::actor::stop: called from the only worker of the actor's executor while its "
          "turn is queued there (it would wait for itself); the mailbox is closed, call stop() "
          "again from another thread");
    idle_.wait(lock, [&] { return !scheduled_; });
    if (count_ > 0) {
      // The executor refused a task earlier: handle what is left here.
      scheduled_ = true;
      lock.unlock();
      drain_all();
    }
  }

  /// Handler exceptions handed to on_error. Thread-safe.
  std::size_t failures() const noexcept { return failures_.load(std::memory_order_relaxed); }

  /// The mailbox capacity.
  std::size_t capacity() const noexcept { return ring_.size(); }

 private:
  struct init_tag {};

  struct handler_base {
    virtual ~handler_base() = default;
    virtual void call(Msg&& m) = 0;
  };
  template <class H>
  struct handler_impl final : handler_base {
    explicit handler_impl(H h) : h_(std::move(h)) {}
    void call(Msg&& m) override { std::invoke(h_, std::move(m)); }
    H h_;
  };

  struct ask_base {
    virtual ~ask_base() = default;
    virtual void run() noexcept = 0;
    virtual void refuse() noexcept = 0;
  };
  template <class F, class R>
  struct ask_job final : ask_base {
    ask_job(F f, promise<R> p) : f_(std::move(f)), p_(std::move(p)) {}
    void run() noexcept override {
      try {
        if constexpr (std::is_void_v<R>) {
          std::invoke(f_);
          p_.set_value();
        } else {
          p_.set_value(std::invoke(f_));
        }
      } catch (...) {
        p_.set_exception(std::current_exception());
      }
    }
    void refuse() noexcept override {
      p_.set_exception(std::make_exception_ptr(closed_error("spindle::actor::ask: the actor is stopped")));
    }
    F f_;
    promise<R> p_;
  };

  using envelope = std::variant<Msg, std::unique_ptr<ask_base>>;

  template <class Handler>
  actor(init_tag, Handler h, actor_options opts)
      : handler_(std::make_unique<handler_impl<Handler>>(std::move(h))),
        on_error_(std::move(opts.on_error)),
        batch_(opts.batch),
        spin_(opts.spin),
        ring_(check_capacity(opts.mailbox_capacity)) {
    if (batch_ == 0) throw std::invalid_argument("spindle::actor: batch must be >= 1 (got 0)");
  }

  static std::size_t check_capacity(std::size_t c) {
    if (c == 0) throw std::invalid_argument("spindle::actor: mailbox_capacity must be >= 1 (got 0)");
    return c;
  }

  bool in_handler() const noexcept {
    // relaxed: compared with this thread's own id, which only this thread stores.
    return handler_thread_.load(std::memory_order_relaxed) == std::this_thread::get_id();
  }

  // Moves `e` into the mailbox (only on ok); posts a turn if the actor was idle.
  status push(envelope& e, bool block) {
    bool post = false;
    {
      std::unique_lock lock(mu_);
      while (!closed_ && count_ == ring_.size()) {
        if (!block) return status::full;
        ++push_waiters_;
        not_full_.wait(lock);
        --push_waiters_;
      }
      if (closed_) return status::closed;
      ring_[(head_ + count_) % ring_.size()].emplace(std::move(e));
      ++count_;
      // relaxed: a hint for the spinning consumer, which then takes mu_ (the real handover).
      count_hint_.store(count_, std::memory_order_relaxed);
      if (executor_ != nullptr && !scheduled_) {
        scheduled_ = true;
        post = true;
      }
      if (pop_waiters_ > 0) {
        lock.unlock();
        not_empty_.notify_one();
      }
    }
    if (post) {
      try {
        post_(executor_, this);
      } catch (...) {
        {
          std::lock_guard lock(mu_);
          scheduled_ = false;
        }
        idle_.notify_all();
        throw;
      }
    }
    return status::ok;
  }

  // Requires mu_. Moves up to `max` envelopes into `out`.
  void take(std::vector<envelope>& out, std::size_t max, std::unique_lock<std::mutex>& lock) {
    std::size_t n = count_ < max ? count_ : max;
    for (std::size_t i = 0; i < n; ++i) {
      auto& slot = ring_[head_];
      out.push_back(std::move(*slot));
      slot.reset();
      head_ = (head_ + 1) % ring_.size();
    }
    count_ -= n;
    count_hint_.store(count_, std::memory_order_relaxed);  // relaxed: see push()
    if (push_waiters_ > 0 && n > 0) {
      lock.unlock();
      not_full_.notify_all();
      lock.lock();
    }
  }

  void handle(envelope& e) {
    if (e.index() == 1) {
      std::get<1>(e)->run();
      return;
    }
    std::exception_ptr error;
    try {
      handler_->call(std::move(std::get<0>(e)));
      return;
    } catch (...) {
      error = std::current_exception();
    }
    if (!on_error_) unhandled(error, "the handler threw and there is no on_error");
    failures_.fetch_add(1, std::memory_order_relaxed);
    try {
      on_error_(error);
    } catch (...) {
      unhandled(std::current_exception(), "on_error threw");
    }
  }

  // No exception vanishes unseen: print it and terminate (see the header).
  [[noreturn]] static void unhandled(const std::exception_ptr& e, const char* why) noexcept {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      std::fprintf(stderr, "spindle::actor: %s: %s\n", why, ex.what());
    } catch (...) {
      std::fprintf(stderr, "spindle::actor: %s (a non-std exception)\n", why);
    }
    std::terminate();
  }

  void handle_all(std::vector<envelope>& local) {
    // relaxed: only this thread reads its own id back (in_handler()).
    handler_thread_.store(std::this_thread::get_id(), std::memory_order_relaxed);
    for (auto& e : local) handle(e);
    handler_thread_.store(std::thread::id{}, std::memory_order_relaxed);
    local.clear();
  }

  void run_own_thread() {
    std::vector<envelope> local;
    local.reserve(batch_);
    for (;;) {
      // Spin briefly before sleeping (latency only): a reply often arrives within microseconds.
      detail::spin_until([&] { return count_hint_.load(std::memory_order_relaxed) != 0; },
                         static_cast<unsigned>(std::min<std::size_t>(spin_, UINT_MAX)));
      {
        std::unique_lock lock(mu_);
        while (count_ == 0 && !closed_) {
          ++pop_waiters_;
          not_empty_.wait(lock);
          --pop_waiters_;
        }
        if (count_ == 0) return;  // closed and drained
        take(local, batch_, lock);
      }
      handle_all(local);
    }
  }

  // One turn on the executor: up to batch_ messages, then yield the worker.
  void drain() {
    std::vector<envelope>& local = turn_buffer_;  // only the scheduled runner touches it
    {
      std::unique_lock lock(mu_);
      if (count_ == 0) {
        scheduled_ = false;
        idle_.notify_all();  // under mu_: stop() may destroy the actor once it sees this
        return;
      }
      take(local, batch_, lock);
    }
    handle_all(local);
    {
      std::unique_lock lock(mu_);
      if (count_ == 0) {
        scheduled_ = false;
        idle_.notify_all();  // under mu_, as above
        return;
      }
    }
    try {
      post_(executor_, this);  // more is queued: take another turn behind the other tasks
    } catch (...) {
      drain_all();  // the executor refuses work: finish here
    }
  }

  // Handles everything queued, on the calling thread; for stop() and a refusing executor.
  void drain_all() {
    std::vector<envelope> local;
    for (;;) {
      {
        std::unique_lock lock(mu_);
        if (count_ == 0) {
          scheduled_ = false;
          idle_.notify_all();
          return;
        }
        take(local, batch_, lock);
      }
      handle_all(local);
    }
  }

  std::unique_ptr<handler_base> handler_;
  std::function<void(std::exception_ptr)> on_error_;
  const std::size_t batch_;
  const std::size_t spin_;
  void* executor_ = nullptr;                 // null: own thread
  void (*post_)(void*, actor*) = nullptr;    // posts drain() to executor_
  bool (*sole_worker_)(void*) = nullptr;     // is the caller the executor's only worker?
  std::thread thread_;                       // own-thread mode
  std::mutex join_mu_;                       // serialises stop()'s join
  std::atomic<std::thread::id> handler_thread_{};
  std::atomic<std::size_t> failures_{0};
  std::vector<envelope> turn_buffer_;        // executor mode: touched only by the scheduled runner

  // Lock order: join_mu_ before mu_ (never both today). mu_ is never held while calling user code.
  std::mutex mu_;
  std::condition_variable not_empty_;        // the actor thread waits here for messages
  std::condition_variable not_full_;         // senders wait here for room
  std::condition_variable idle_;             // stop() waits here for the last executor turn
  std::vector<std::optional<envelope>> ring_;  // guarded by mu_: the mailbox
  std::size_t head_ = 0;                     // guarded by mu_
  std::size_t count_ = 0;                    // guarded by mu_
  std::atomic<std::size_t> count_hint_{0};   // a relaxed copy of count_ for spinning
  std::size_t push_waiters_ = 0;             // guarded by mu_
  std::size_t pop_waiters_ = 0;              // guarded by mu_
  bool scheduled_ = false;                   // guarded by mu_: a drain() task is posted/running
  bool closed_ = false;                      // guarded by mu_
};

}  // namespace spindle
