// spindle/detail/future_state.hpp - the state a promise and its future share.
//
// Defines:
//   shared_state<T>   one heap object per promise/future pair: the value or an exception, one
//                     continuation slot, an optional job (the task that will fulfil it, for
//                     thread_pool::submit), an intrusive reference count and an event count for
//                     blocked waiters. T = void is stored as `unit`.
//   current_pool_token()  which thread pool the calling thread works for (set by thread_pool).
//
// Protocol (flags_ holds these bits):
//   producer: writes the result, then fetch_or(ready). If `continuation` was already set, runs it.
//   consumer: stores the continuation, then fetch_or(continuation). If `ready` was already set,
//             runs it. Exactly one side sees both bits and runs the continuation, exactly once,
//             with no lock held.
//   chains:   a continuation returns the state it has just made ready if that state has a
//             continuation of its own; run_chain() then runs that one in a loop instead of a
//             nested call, so a chain of any length of then() runs in constant stack depth.
//   job:      set_job() stores the callable that fulfils the state; the first of run_job() (the
//             pool's queue entry) and a wait() on a worker of the same pool to claim it
//             (fetch_or(claimed)) runs it; the other does nothing.
//   waiters:  the wake_one_event_count protocol on `ready`; the producer notifies after setting it.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <new>  // std::launder
#include <type_traits>
#include <utility>

#include "function.hpp"
#include "wait.hpp"

namespace spindle::detail {

/// The value type stored for future<void>.
struct unit {};

template <class T>
using stored_t = std::conditional_t<std::is_void_v<T>, unit, T>;

/// The thread pool (an opaque token) whose worker the calling thread is; nullptr on other
/// threads. Set by thread_pool's workers; read by wait() to decide whether it may run the job.
inline const void*& current_pool_token() noexcept {
  static thread_local const void* p = nullptr;
  return p;
}

/// The non-template part: reference count, flags, exception, continuation, job, waiters.
class state_base {
 public:
  static constexpr std::uint32_t ready_bit = 1;
  static constexpr std::uint32_t continuation_bit = 2;
  static constexpr std::uint32_t retrieved_bit = 4;  // get_future() was called
  static constexpr std::uint32_t job_bit = 8;        // set_job() was called
  static constexpr std::uint32_t claimed_bit = 16;   // the job was claimed (run or dropped)

  /// A continuation: runs when the result is there; returns a state it made ready whose own
  /// continuation must run next, holding one reference for the caller (or nullptr).
  using continuation = move_function<state_base*()>;

  state_base() = default;
  state_base(const state_base&) = delete;
  state_base& operator=(const state_base&) = delete;

  bool ready() const noexcept {
    // acquire: pairs with the release in mark_ready(); the result is visible once ready is seen.
    return (flags_.load(std::memory_order_acquire) & ready_bit) != 0;
  }

  bool has_exception() const noexcept { return static_cast<bool>(error_); }
  const std::exception_ptr& exception() const noexcept { return error_; }
  /// Moves the exception out (for the consumer's get(): the thread that rethrows it then holds
  /// its last reference, whichever thread later frees the state).
  std::exception_ptr take_exception() noexcept { return std::move(error_); }

  /// Blocks until ready. On a worker of the pool that holds this state's unclaimed job, runs the
  /// job here first (nothing else); otherwise spins briefly (detail::spin_until), then sleeps in
  /// the kernel until the producer publishes.
  void wait() noexcept {
    if (ready()) return;
    if (job_here()) run_job();
    if (spin_until([&] { return ready(); }, default_spin)) return;
    while (!ready()) {
      auto key = waiters_.prepare_wait();
      if (ready()) {
        waiters_.cancel_wait();
        break;
      }
      waiters_.wait(key);
    }
  }

  /// Blocks until ready or `deadline`; true if ready. Never runs the job (a job may take longer
  /// than the deadline).
  bool wait_until(wake_one_event_count::clock::time_point deadline) noexcept {
    if (spin_until([&] { return ready(); }, default_spin)) return true;
    while (!ready()) {
      auto key = waiters_.prepare_wait();
      if (ready()) {
        waiters_.cancel_wait();
        return true;
      }
      if (!waiters_.wait_until(key, deadline)) return ready();
    }
    return true;
  }

  /// Stores `c` and runs it now if the result is already there (on this thread), else when the
  /// result is published (on the publishing thread). `c` returns void or state_base* (see
  /// `continuation`).
  template <class C>
  void set_continuation(C&& c) noexcept {
    if constexpr (std::is_void_v<std::invoke_result_t<std::decay_t<C>&>>) {
      continuation_ = [c = std::forward<C>(c)]() mutable -> state_base* {
        c();
        return nullptr;
      };
    } else {
      continuation_ = std::forward<C>(c);
    }
    // acq_rel: release publishes continuation_ to the producer; acquire makes the result visible
    // if we run it ourselves. Pairs with the fetch_or in mark_ready().
    auto old = flags_.fetch_or(continuation_bit, std::memory_order_acq_rel);
    if ((old & ready_bit) != 0) run_chain(this);
  }

  /// Stores the job that fulfils this state; `owner` is the pool (current_pool_token()) whose
  /// workers may claim it in wait(). Before the state is shared.
  void set_job(move_function<void()> job, const void* owner) noexcept {
    job_ = std::move(job);
    job_owner_ = owner;
    flags_.fetch_or(job_bit, std::memory_order_relaxed);  // relaxed: before sharing
  }

  /// Runs the job unless it was claimed already. Any thread.
  void run_job() noexcept {
    if (!claim()) return;
    auto j = std::move(job_);
    j();  // fulfils this state (the job catches everything)
  }

  /// Destroys the job unclaimed (its producer then stores broken_promise), unless claimed.
  void drop_job() noexcept {
    if (!claim()) return;
    auto j = std::move(job_);
  }

  /// Marks the future as retrieved; false if it already was. Producer side only.
  bool mark_retrieved() noexcept {
    return (flags_.fetch_or(retrieved_bit, std::memory_order_relaxed) & retrieved_bit) == 0;
  }
  /// Whether get_future() was called. Producer side only (relaxed: only the producer sets it).
  bool retrieved() const noexcept {
    return (flags_.load(std::memory_order_relaxed) & retrieved_bit) != 0;
  }
  /// Whether the result was set. Producer side only (relaxed: only the producer sets it).
  bool satisfied_by_producer() const noexcept {
    return (flags_.load(std::memory_order_relaxed) & ready_bit) != 0;
  }

  void add_ref() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }

  /// Drops one reference; deletes the state with the last one.
  void release() noexcept {
    if (drop_ref()) delete this;
  }

  /// Sets the exception (before mark_ready()/publish()).
  void store_exception(std::exception_ptr e) noexcept { error_ = std::move(e); }

  /// Marks the result visible. Returns true if a continuation is attached: the caller must run
  /// it (run_chain or return this from its own continuation); otherwise wakes the waiters.
  bool mark_ready() noexcept {
    // acq_rel: release publishes the result; acquire sees continuation_ if it was attached.
    // Pairs with the fetch_or in set_continuation() and the acquire in ready().
    auto old = flags_.fetch_or(ready_bit, std::memory_order_acq_rel);
    if ((old & continuation_bit) != 0) return true;
    waiters_.notify_all();
    return false;
  }

  /// Makes the result visible, wakes waiters, runs the continuation (chain) if one is attached.
  void publish() noexcept {
    // Invariant: the state outlives its own wake-up. A waiter may see ready (it spins before
    // it sleeps), return, and drop the future's reference while the promise object that called
    // us is being destroyed on that thread too (a promise captured by reference); the extra
    // reference keeps the state alive until notify_all() and the continuation are done.
    // Attacked by "a promise may be destroyed as soon as its future saw the value" (test_future)
    // and test_async_client under TSan and ASan (a use after free of the event count without it).
    add_ref();
    if (mark_ready()) run_chain(this);
    release();
  }

  /// Runs the continuation of `next` (a state handed back with one reference, or nullptr), then
  /// each continuation it hands back, in a loop (constant stack depth), releasing each state.
  static void run_handed_back(state_base* next) noexcept {
    while (next != nullptr) {
      state_base* after = next->run_continuation();
      next->release();
      next = after;
    }
  }

 protected:
  virtual ~state_base() = default;

  /// Returns true when the last reference went away (the caller then deletes).
  bool drop_ref() noexcept {
    // acq_rel: release orders this owner's uses before the delete; acquire makes the other
    // owners' uses visible to the deleting thread.
    return refs_.fetch_sub(1, std::memory_order_acq_rel) == 1;
  }

 private:
  bool claim() noexcept {
    // acq_rel: the winner sees job_ as stored; the loser touches nothing.
    return (flags_.fetch_or(claimed_bit, std::memory_order_acq_rel) & claimed_bit) == 0;
  }

  bool job_here() const noexcept {
    auto f = flags_.load(std::memory_order_relaxed);
    return (f & job_bit) != 0 && (f & claimed_bit) == 0 && job_owner_ != nullptr &&
           job_owner_ == current_pool_token();
  }

  // Runs s's continuation chain; the caller keeps s alive.
  static void run_chain(state_base* s) noexcept { run_handed_back(s->run_continuation()); }

  state_base* run_continuation() noexcept {
    auto c = std::move(continuation_);
    return c();  // continuations never throw: they catch and forward into their own promise
    // c (and whatever it owns) is destroyed here.
  }

  std::atomic<std::uint32_t> flags_{0};
  std::atomic<std::uint32_t> refs_{2};  // one for the promise, one for the future
  std::exception_ptr error_;
  continuation continuation_;
  move_function<void()> job_;       // see set_job()
  const void* job_owner_ = nullptr;  // the pool whose workers may claim job_
  wake_one_event_count waiters_;
};

/// The state for a future<T>: state_base plus the value storage.
template <class T>
class shared_state final : public state_base {
 public:
  using value_type = stored_t<T>;

  shared_state() noexcept {}
  ~shared_state() override {
    if (has_value_) value_ptr()->~value_type();
  }

  /// Stores the value without publishing it (see mark_ready()).
  template <class... A>
  void store_value(A&&... a) {
    ::new (static_cast<void*>(storage_)) value_type(std::forward<A>(a)...);
    has_value_ = true;
  }

  template <class... A>
  void set_value(A&&... a) {
    store_value(std::forward<A>(a)...);
    publish();
  }

  void set_exception(std::exception_ptr e) noexcept {
    store_exception(std::move(e));
    publish();
  }

  /// The stored value. Requires ready() and no exception.
  value_type& value() noexcept { return *value_ptr(); }

 private:
  value_type* value_ptr() noexcept { return std::launder(reinterpret_cast<value_type*>(storage_)); }

  bool has_value_ = false;
  alignas(value_type) unsigned char storage_[sizeof(value_type)];
};

/// An owning reference to a shared_state (the intrusive count).
template <class T>
class state_ref {
 public:
  state_ref() noexcept = default;
  explicit state_ref(shared_state<T>* s) noexcept : s_(s) {}  // adopts one reference
  state_ref(state_ref&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
  state_ref& operator=(state_ref&& o) noexcept {
    if (this != &o) {
      reset();
      s_ = std::exchange(o.s_, nullptr);
    }
    return *this;
  }
  ~state_ref() { reset(); }

  /// A new reference to the same state.
  state_ref share() const noexcept {
    s_->add_ref();
    return state_ref(s_);
  }

  void reset() noexcept {
    if (s_ != nullptr) std::exchange(s_, nullptr)->release();
  }
  shared_state<T>* get() const noexcept { return s_; }
  /// Gives up ownership of the reference without dropping it.
  shared_state<T>* detach() noexcept { return std::exchange(s_, nullptr); }
  shared_state<T>* operator->() const noexcept { return s_; }
  explicit operator bool() const noexcept { return s_ != nullptr; }

 private:
  shared_state<T>* s_ = nullptr;
};

}  // namespace spindle::detail
