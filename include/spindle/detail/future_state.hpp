// spindle/detail/future_state.hpp - the state a promise and its future share.
//
// Defines:
//   shared_state<T>   one heap object per promise/future pair: the value or an exception, one
//                     continuation slot, an intrusive reference count and a wait_set for
//                     blocked waiters. T = void is stored as `unit`.
//   worker_helper     a hook by which a thread pool lets a future that blocks on one of its
//                     worker threads run queued tasks instead of sleeping (see future::wait()).
//
// Protocol (flags_ holds two bits):
//   producer: writes the result, then fetch_or(ready). If `continuation` was already set, runs it.
//   consumer: stores the continuation, then fetch_or(continuation). If `ready` was already set,
//             runs it. Exactly one side sees both bits and runs the continuation, exactly once,
//             with no lock held.
//   waiters:  the wait_set protocol on `ready`; the producer notifies after setting it.
#pragma once

#include <atomic>
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

/// Installed by a thread pool in each of its worker threads: run_one(ctx) runs one queued task
/// of that pool and returns true, or returns false if none is queued.
struct worker_helper {
  void* ctx = nullptr;
  bool (*run_one)(void* ctx) = nullptr;
};

inline worker_helper& current_helper() noexcept {
  static thread_local worker_helper h;
  return h;
}

/// The non-template part: reference count, flags, exception, continuation, waiters.
class state_base {
 public:
  static constexpr std::uint32_t ready_bit = 1;
  static constexpr std::uint32_t continuation_bit = 2;
  static constexpr std::uint32_t retrieved_bit = 4;  // get_future() was called

  state_base() = default;
  state_base(const state_base&) = delete;
  state_base& operator=(const state_base&) = delete;

  bool ready() const noexcept {
    // acquire: pairs with the release in publish(); the result is visible once ready is seen.
    return (flags_.load(std::memory_order_acquire) & ready_bit) != 0;
  }

  bool has_exception() const noexcept { return static_cast<bool>(error_); }
  const std::exception_ptr& exception() const noexcept { return error_; }
  /// Moves the exception out (for the consumer's get(): the thread that rethrows it then holds
  /// its last reference, whichever thread later frees the state).
  std::exception_ptr take_exception() noexcept { return std::move(error_); }

  /// Blocks until ready. On a pool worker, runs that pool's queued tasks while it waits.
  void wait() noexcept {
    if (spin_until_ready()) return;
    worker_helper& h = current_helper();
    if (h.run_one != nullptr) {
      // Helping: run queued tasks (the awaited one may be among them). With nothing queued,
      // sleep in short slices so that work queued later is still picked up.
      while (!ready()) {
        if (h.run_one(h.ctx)) continue;
        auto key = waiters_.prepare_wait();
        if (ready()) {
          waiters_.cancel_wait(key);
          break;
        }
        waiters_.wait_until(key, wait_set::clock::now() + std::chrono::milliseconds(1));
      }
      return;
    }
    while (!ready()) {
      auto key = waiters_.prepare_wait();
      if (ready()) {
        waiters_.cancel_wait(key);
        break;
      }
      waiters_.wait(key);
    }
  }

  /// Blocks until ready or `deadline`; true if ready.
  bool wait_until(wait_set::clock::time_point deadline) noexcept {
    if (spin_until_ready()) return true;
    while (!ready()) {
      auto key = waiters_.prepare_wait();
      if (ready()) {
        waiters_.cancel_wait(key);
        return true;
      }
      if (!waiters_.wait_until(key, deadline)) return ready();
    }
    return true;
  }

  /// Stores `c` and runs it now if the result is already there (on this thread), else when the
  /// result is published (on the publishing thread).
  void set_continuation(move_function<void()> c) noexcept {
    continuation_ = std::move(c);
    // acq_rel: release publishes continuation_ to the producer; acquire makes the result visible
    // if we run it ourselves. Pairs with the fetch_or in publish().
    auto old = flags_.fetch_or(continuation_bit, std::memory_order_acq_rel);
    if ((old & ready_bit) != 0) run_continuation();
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

 protected:
  ~state_base() = default;

  /// Sets the exception (before publish()).
  void store_exception(std::exception_ptr e) noexcept { error_ = std::move(e); }

  /// Makes the result visible, wakes waiters, runs the continuation if one is attached.
  void publish() noexcept {
    // acq_rel: release publishes the result; acquire sees continuation_ if it was attached.
    // Pairs with the fetch_or in set_continuation() and the acquire in ready().
    auto old = flags_.fetch_or(ready_bit, std::memory_order_acq_rel);
    if ((old & continuation_bit) != 0) {
      run_continuation();
    } else {
      waiters_.notify();
    }
  }

  /// Returns true when the last reference went away (the caller then deletes).
  bool drop_ref() noexcept {
    // acq_rel: release orders this owner's uses before the delete; acquire makes the other
    // owners' uses visible to the deleting thread.
    return refs_.fetch_sub(1, std::memory_order_acq_rel) == 1;
  }

 private:
  bool spin_until_ready() noexcept {
    for (int i = 0; i < 2048; ++i) {
      if (ready()) return true;
      cpu_relax();
    }
    return ready();
  }

  void run_continuation() noexcept {
    auto c = std::move(continuation_);
    c();  // continuations never throw: they catch and forward into their own promise
    // c (and whatever it owns) is destroyed here.
  }

  std::atomic<std::uint32_t> flags_{0};
  std::atomic<std::uint32_t> refs_{2};  // one for the promise, one for the future
  std::exception_ptr error_;
  move_function<void()> continuation_;
  wait_set waiters_;
};

/// The state for a future<T>: state_base plus the value storage.
template <class T>
class shared_state final : public state_base {
 public:
  using value_type = stored_t<T>;

  shared_state() noexcept {}
  ~shared_state() {
    if (has_value_) value_ptr()->~value_type();
  }

  template <class... A>
  void set_value(A&&... a) {
    ::new (static_cast<void*>(storage_)) value_type(std::forward<A>(a)...);
    has_value_ = true;
    publish();
  }

  void set_exception(std::exception_ptr e) noexcept {
    store_exception(std::move(e));
    publish();
  }

  /// The stored value. Requires ready() and no exception.
  value_type& value() noexcept { return *value_ptr(); }

  void release() noexcept {
    if (drop_ref()) delete this;
  }

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
  shared_state<T>* operator->() const noexcept { return s_; }
  explicit operator bool() const noexcept { return s_ != nullptr; }

 private:
  shared_state<T>* s_ = nullptr;
};

}  // namespace spindle::detail
