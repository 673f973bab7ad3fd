// spindle/future.hpp - promise<T> and future<T> with continuations.
//
// Defines:
//   promise<T>             the producing end: set_value, set_exception, get_future (once).
//   future<T>              the consuming end: get, wait, wait_for, ready, valid, then.
//   make_ready_future      a future that already holds a value (or make_exceptional_future).
//   executor               the concept then(executor, f) needs: anything with post(F).
// when_all, when_any and as_completed are in <spindle/when.hpp>, included at the end.
//
// Guarantees:
//   - One heap allocation per promise/future pair (the shared state), none per continuation when
//     the callable is small (32 bytes or less). T may be void or move-only.
//   - Visibility: everything the producer did before set_value()/set_exception() is visible to
//     the thread that returns from get()/wait() or runs a continuation.
//   - No lock is held while user code runs; continuations run exactly once, either inline in
//     then() (if the value is already there) or on the thread that sets the value.
//   - An exception stored in a future skips every `then` callable and reaches the end of the
//     chain; an exception thrown by a callable does too.
//   - A promise destroyed without a result stores spindle::broken_promise.
//   - Waiting (get()/wait()/wait_for()) sleeps in the kernel after a short spin
//     (detail::spin_until). On a worker of a spindle::thread_pool, get()/wait() for a future of
//     that pool's submit() runs the awaited task itself if no worker has started it yet; it
//     never runs any other task. Otherwise it simply blocks, as std::future does. So nested
//     submit() + get() works on a one-thread pool, and a get() never runs unrelated work while
//     its caller holds a lock or owes a promise (thread_pool.hpp says more).
//   - A chain of then() continuations of any length runs in constant stack depth: a
//     continuation that fulfils the next state hands that state's continuation back to a loop
//     instead of calling it.
//   - wait_for(d) saturates: duration::max() (and deadline<>::never().remaining()) never times
//     out.
//
// Lifetime: a future owns the result; get() moves it out and leaves the future invalid. then()
// consumes the future (valid() is false afterwards).
#pragma once

#include <chrono>
#include <concepts>
#include <exception>
#include <functional>  // std::invoke
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "deadline.hpp"  // detail::time_after: the one saturating deadline computation
#include "detail/future_state.hpp"
#include "errors.hpp"
#include "status.hpp"

namespace spindle {

template <class T>
class future;
template <class T>
class promise;

/// What then(executor, f) needs of an executor: a post() taking a move-only void() callable.
template <class E>
concept executor = requires(E& e, detail::task t) { e.post(std::move(t)); };

namespace detail {

struct future_access {
  template <class T>
  static future<T> make(state_ref<T> s) noexcept {
    return future<T>(std::move(s));
  }
  template <class T>
  static shared_state<T>* state(const future<T>& f) noexcept {
    return f.state_.get();
  }
  template <class T>
  static state_ref<T> take(future<T>& f) noexcept {
    return std::move(f.state_);
  }
};

/// Set by then(executor, f) while it calls post(): a task that the executor destroys unrun during
/// that call does not store broken_promise; then() stores the executor's exception instead.
struct post_scope {
  const void* dst = nullptr;
  bool dropped = false;
};
inline post_scope*& current_post_scope() noexcept {
  static thread_local post_scope* s = nullptr;
  return s;
}

/// The producing side of a state as a value: 8 bytes, stores broken_promise if destroyed unset.
template <class T>
class producer {
 public:
  producer() = default;
  explicit producer(state_ref<T> s) noexcept : s_(std::move(s)) {}
  producer(producer&&) noexcept = default;
  producer& operator=(producer&& o) noexcept {
    if (this != &o) {
      abandon();
      s_ = std::move(o.s_);
    }
    return *this;
  }
  ~producer() { abandon(); }

  shared_state<T>* get() const noexcept { return s_.get(); }
  state_ref<T> share() const noexcept { return s_.share(); }

  /// Runs f(args...) and stores its result or its exception; runs the state's continuation
  /// chain, if any. The producer is empty afterwards.
  template <class F, class... A>
  void fulfil(F&& f, A&&... a) noexcept {
    state_base::run_handed_back(fulfil_tail(std::forward<F>(f), std::forward<A>(a)...));
  }

  void set_exception(std::exception_ptr e) noexcept { s_->set_exception(std::move(e)); }

  /// As fulfil(), but for the end of a continuation: instead of running the state's own
  /// continuation (a nested call), returns the state, with this producer's reference, if it has
  /// one to run (see state_base::run_chain); else nullptr. The producer is empty afterwards.
  template <class F, class... A>
  state_base* fulfil_tail(F&& f, A&&... a) noexcept {
    std::exception_ptr error;
    try {
      if constexpr (std::is_void_v<std::invoke_result_t<F, A...>>) {
        std::invoke(std::forward<F>(f), std::forward<A>(a)...);
        s_->store_value();
      } else {
        s_->store_value(std::invoke(std::forward<F>(f), std::forward<A>(a)...));
      }
    } catch (...) {
      error = std::current_exception();
    }
    // Stored after the catch block has ended, so that this thread no longer holds the
    // in-flight exception when the consumer gets it.
    if (error) s_->store_exception(std::move(error));
    return hand_over();
  }

  /// As set_exception(), for the end of a continuation (see fulfil_tail()).
  state_base* fail_tail(std::exception_ptr e) noexcept {
    s_->store_exception(std::move(e));
    return hand_over();
  }

  void abandon() noexcept {
    if (s_ && !s_->satisfied_by_producer()) {
      post_scope* scope = current_post_scope();
      if (scope != nullptr && scope->dst == s_.get()) {
        scope->dropped = true;  // then(executor, f) reports it
      } else {
        s_->set_exception(std::make_exception_ptr(broken_promise()));
      }
    }
    s_.reset();
  }

 private:
  state_base* hand_over() noexcept {
    state_base* s = s_.detach();  // this producer's reference now travels with s
    if (s->mark_ready()) return s;
    s->release();
    return nullptr;
  }

  state_ref<T> s_;
};

/// A new state with its producer and its future.
template <class T>
std::pair<producer<T>, future<T>> make_pair() {
  auto* s = new shared_state<T>();  // two references: producer and future
  s->mark_retrieved();
  return {producer<T>(state_ref<T>(s)), future_access::make(state_ref<T>(s))};
}

template <class T, class F>
struct then_result {
  using type = std::invoke_result_t<F, T>;
};
template <class F>
struct then_result<void, F> {
  using type = std::invoke_result_t<F>;
};

}  // namespace detail

/// The producing end of a future. Move-only. set_value/set_exception may be called once, from
/// any thread; a promise is not meant to be shared by threads that race to set it.
template <class T>
class promise {
  static_assert(!std::is_reference_v<T>, "spindle::promise<T&> is not supported; use T*");

 public:
  /// A promise with a new shared state. Allocates once.
  promise() : s_(new detail::shared_state<T>()) {}
  promise(promise&&) noexcept = default;
  promise& operator=(promise&& o) noexcept {
    if (this != &o) {
      abandon();
      s_ = std::move(o.s_);
    }
    return *this;
  }
  /// Stores spindle::broken_promise if no result was set.
  ~promise() { abandon(); }

  /// The future of this promise. Throws std::logic_error if called twice or on a moved-from
  /// promise. Never allocates.
  future<T> get_future() {
    check("get_future", false);
    if (!s_->mark_retrieved())
      throw std::logic_error("spindle::promise::get_future: the future was already retrieved");
    return detail::future_access::make(s_.share_adopting_extra());
  }

  /// Stores the value and wakes waiters; runs an attached continuation on this thread.
  /// Throws std::logic_error if a result was already set. Never allocates (beyond T's own).
  template <class U = T>
    requires(!std::is_void_v<U>)
  void set_value(U&& v) {
    check("set_value");
    s_->set_value(std::forward<U>(v));
  }
  template <class U = T>
    requires(std::is_void_v<U>)
  void set_value() {
    check("set_value");
    s_->set_value();
  }

  /// Stores the exception; get() rethrows it. Throws std::logic_error if a result was set.
  void set_exception(std::exception_ptr e) {
    check("set_exception");
    if (!e) throw std::invalid_argument("spindle::promise::set_exception: null exception_ptr");
    s_->set_exception(std::move(e));
  }

 private:
  // A state_ref wrapper that remembers that the future's reference is handed out separately.
  class owner {
   public:
    explicit owner(detail::shared_state<T>* s) noexcept : s_(s) {}
    owner(owner&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
    owner& operator=(owner&& o) noexcept {
      s_ = std::exchange(o.s_, nullptr);
      return *this;
    }
    ~owner() = default;
    detail::shared_state<T>* operator->() const noexcept { return s_; }
    explicit operator bool() const noexcept { return s_ != nullptr; }
    // The state was created with two references; the second is the future's.
    detail::state_ref<T> share_adopting_extra() const noexcept { return detail::state_ref<T>(s_); }
    detail::shared_state<T>* release() noexcept { return std::exchange(s_, nullptr); }

   private:
    detail::shared_state<T>* s_;
  };

  void check(const char* fn, bool setting = true) const {
    if (!s_)
      throw std::logic_error(std::string("spindle::promise::") + fn + ": no state (moved-from)");
    if (setting && s_->satisfied_by_producer())
      throw std::logic_error(std::string("spindle::promise::") + fn + ": a result was already set");
  }

  void abandon() noexcept {
    detail::shared_state<T>* s = s_.release();
    if (s == nullptr) return;
    if (!s->satisfied_by_producer()) s->set_exception(std::make_exception_ptr(broken_promise()));
    if (!s->retrieved()) s->release();  // the future's reference, never handed out
    s->release();
  }

  owner s_;
};

/// The consuming end of a promise. Move-only. One thread at a time may use a future; get() and
/// then() consume it.
template <class T>
class future {
  static_assert(!std::is_reference_v<T>, "spindle::future<T&> is not supported; use T*");

 public:
  using value_type = T;

  /// An invalid future (valid() is false).
  future() noexcept = default;
  future(future&&) noexcept = default;
  future& operator=(future&&) noexcept = default;

  /// True if this future holds a state (not default-constructed, moved-from or consumed).
  bool valid() const noexcept { return static_cast<bool>(state_); }

  /// True if the result (value or exception) is there. Never blocks. Throws std::logic_error if
  /// !valid().
  bool ready() const {
    check("ready");
    return state_->ready();
  }

  /// Blocks until the result is there (see the header: on a worker of the pool whose submit()
  /// made this future, runs the task itself if it has not started). Throws std::logic_error if
  /// !valid().
  void wait() const {
    check("wait");
    state_->wait();
  }

  /// Blocks until the result is there or `d` passed. Returns ok | timeout. Saturates:
  /// duration::max() waits without a time limit. Never runs the task itself (see wait()).
  template <class Rep, class Period>
  status wait_for(std::chrono::duration<Rep, Period> d) const {
    check("wait_for");
    auto deadline = detail::time_after<detail::wake_one_event_count::clock>(d);
    return state_->wait_until(deadline) ? status::ok : status::timeout;
  }

  /// Waits, then returns the value (moved out) or rethrows the stored exception. The future is
  /// invalid afterwards. Throws std::logic_error if !valid().
  T get() {
    check("get");
    state_->wait();
    detail::state_ref<T> s = std::move(state_);
    if (s->has_exception()) std::rethrow_exception(s->take_exception());
    if constexpr (!std::is_void_v<T>) return std::move(s->value());
  }

  /// Returns a future of f(value) (or f() for void). f runs on the thread that sets the value,
  /// or inline now if it is already there. A stored exception skips f and flows to the result;
  /// an exception thrown by f is stored in the result. Consumes this future. Allocates the new
  /// state (and the callable if larger than 32 bytes). Throws std::logic_error if !valid().
  template <class F>
  auto then(F&& f) -> future<typename detail::then_result<T, std::decay_t<F>&>::type> {
    using R = typename detail::then_result<T, std::decay_t<F>&>::type;
    check("then");
    auto [p, out] = detail::make_pair<R>();
    detail::state_ref<T> src = std::move(state_);
    detail::shared_state<T>* raw = src.get();
    // The source state stays alive while it runs its continuation: whoever runs it holds a
    // reference (the producer while publishing, or `src` below).
    raw->set_continuation(
        [raw, p = std::move(p), f = std::forward<F>(f)]() mutable -> detail::state_base* {
          // Tail position: the next state's continuation is handed back, not called (constant
          // stack depth for any chain length).
          if (raw->has_exception()) return p.fail_tail(raw->exception());
          if constexpr (std::is_void_v<T>) {
            return p.fulfil_tail(f);
          } else {
            return p.fulfil_tail(f, std::move(raw->value()));
          }
        });
    return std::move(out);
  }

  /// As then(f), but f runs as a task posted to `ex` (anything with post(F): thread_pool among
  /// them). A stored exception skips f without posting. If post() throws (the executor was shut
  /// down), that exception is stored in the result; if it destroys the task unrun,
  /// broken_promise is. `ex` is held by reference until this future's result is there: it must
  /// outlive that moment (a thread_pool shut down meanwhile is fine, one destroyed is not).
  template <class E, class F>
    requires executor<E>
  auto then(E& ex, F&& f) -> future<typename detail::then_result<T, std::decay_t<F>&>::type> {
    using R = typename detail::then_result<T, std::decay_t<F>&>::type;
    check("then");
    auto [p, out] = detail::make_pair<R>();
    detail::state_ref<T> src = std::move(state_);
    detail::shared_state<T>* raw = src.get();
    // Tail position, as in then(f): every way this link fails without posting (the input's
    // exception, a refused or dropped task) hands the result state back instead of calling its
    // continuation, so a chain of then(executor, f) carries an exception in constant stack depth.
    // Attacked by "a chain of 100,000 then(executor) links carries an exception in constant
    // stack depth" (test_future; SIGSEGV when the link called set_exception()).
    raw->set_continuation([raw, exp = &ex, p = std::move(p),
                           f = std::forward<F>(f)]() mutable -> detail::state_base* {
      if (raw->has_exception()) return p.fail_tail(raw->exception());
      raw->add_ref();  // the posted task's reference to the source
      detail::state_ref<T> keep(raw);
      detail::state_ref<R> guard = p.share();  // keeps the result state alive if post() throws
      auto task = [keep = std::move(keep), p = std::move(p), f = std::move(f)]() mutable {
        if constexpr (std::is_void_v<T>) {
          p.fulfil(f);
        } else {
          p.fulfil(f, std::move(keep->value()));
        }
      };
      detail::post_scope scope{guard.get(), false};
      detail::post_scope* outer = std::exchange(detail::current_post_scope(), &scope);
      std::exception_ptr refused;
      try {
        exp->post(std::move(task));
      } catch (...) {
        refused = std::current_exception();
      }
      detail::current_post_scope() = outer;
      // post() refused the task (the executor was shut down): the result holds that error. Or
      // it destroyed the task unrun: broken_promise.
      if (!refused && scope.dropped) refused = std::make_exception_ptr(broken_promise());
      if (!refused || guard->satisfied_by_producer()) return nullptr;
      return detail::producer<R>(std::move(guard)).fail_tail(std::move(refused));
    });
    return std::move(out);
  }

 private:
  friend struct detail::future_access;
  explicit future(detail::state_ref<T> s) noexcept : state_(std::move(s)) {}

  void check(const char* fn) const {
    if (!state_)
      throw std::logic_error(std::string("spindle::future::") + fn + ": no state (invalid future)");
  }

  detail::state_ref<T> state_;
};

/// A future that already holds `v`. Allocates the state.
template <class T>
future<std::decay_t<T>> make_ready_future(T&& v) {
  auto [p, f] = detail::make_pair<std::decay_t<T>>();
  p.get()->set_value(std::forward<T>(v));
  return std::move(f);
}

/// A ready future<void>. Allocates the state.
inline future<void> make_ready_future() {
  auto [p, f] = detail::make_pair<void>();
  p.get()->set_value();
  return std::move(f);
}

/// A future that already holds the exception `e`. Allocates the state.
template <class T>
future<T> make_exceptional_future(std::exception_ptr e) {
  auto [p, f] = detail::make_pair<T>();
  p.set_exception(std::move(e));
  return std::move(f);
}

}  // namespace spindle

#include "when.hpp"
