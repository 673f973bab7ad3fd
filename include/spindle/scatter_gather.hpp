// spindle/scatter_gather.hpp - send N calls out on an executor, gather their results under a
// deadline: gather_all, gather_first, gather_quorum, and outcome<R>.
//
//   std::vector<std::function<double(std::stop_token)>> quotes = ...;
//   auto all  = spindle::gather_all(pool, quotes, 50ms);        // std::vector<outcome<double>>
//   auto best = spindle::gather_first(pool, quotes, 50ms);      // first success
//   auto two  = spindle::gather_quorum(pool, quotes, 2, 50ms);  // first two successes
//
// Each call takes a std::stop_token (or nothing) and runs as one task on the executor (any type
// with post(F), thread_pool among them).
//
// Guarantees:
// - The deadline is honoured even when a call ignores its stop token: the caller returns by the
//   deadline; such a call's stop is requested and its result, when it comes, is discarded. The
//   tasks keep the shared state alive, so a late call touches nothing of the caller's.
// - gather_first and gather_quorum request stop on every call still running once they have their
//   answer (the losers); every call still running at the deadline is asked to stop too.
// - No exception is lost: a call's exception is its outcome (gather_all) or, when no success
//   comes, the exception thrown to the caller (the last one in completion order).
// - Everything a call did before returning is visible to the caller that receives its result.
// - Time comes from a Clock (steady_clock by default; manual_clock in tests). The timeout
//   saturates: duration::max() (and deadline<>::never().remaining()) means no limit.
// - On a thread_pool every call is an ordinary task that any idle worker takes, so a call that
//   returns at once is never held behind one that blocks (thread_pool.hpp's invariant). A gather
//   called from a worker of that pool holds the worker while it waits and never runs a call
//   itself: with no other idle worker the calls cannot start before the deadline (they time
//   out; with no limit it waits for ever, as a get() on such a worker would).
// - Allocates: the shared state, one stop_source per call, and a task per call.
#pragma once

#include <chrono>
#include <cstddef>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "clock.hpp"
#include "deadline.hpp"  // detail::saturating_add
#include "errors.hpp"

namespace spindle {

/// The result of one call: a value, an error, or nothing because the deadline came first.
/// A default-constructed outcome is timed out.
template <class R>
class outcome {
  static_assert(!std::is_void_v<R> && !std::is_reference_v<R>,
                "spindle::outcome<R>: R must be an object type (return a value, e.g. bool)");

 public:
  /// A timed-out outcome.
  outcome() = default;
  /// A value.
  static outcome of_value(R v) {
    outcome o;
    o.v_.template emplace<1>(std::move(v));
    return o;
  }
  /// An error (`e` must not be null).
  static outcome of_error(std::exception_ptr e) {
    outcome o;
    o.v_.template emplace<2>(std::move(e));
    return o;
  }

  /// Whether it holds a value.
  bool has_value() const noexcept { return v_.index() == 1; }
  explicit operator bool() const noexcept { return has_value(); }
  /// Whether the deadline came before the call finished.
  bool timed_out() const noexcept { return v_.index() == 0; }
  /// The error, or null if it holds a value or timed out.
  std::exception_ptr error() const noexcept {
    return v_.index() == 2 ? std::get<2>(v_) : std::exception_ptr{};
  }
  /// The value. Rethrows the error; throws spindle::timeout_error if timed out.
  R& value() & {
    check();
    return std::get<1>(v_);
  }
  const R& value() const& {
    check();
    return std::get<1>(v_);
  }
  R&& value() && {
    check();
    return std::get<1>(std::move(v_));
  }

 private:
  void check() const {
    if (v_.index() == 2) std::rethrow_exception(std::get<2>(v_));
    if (v_.index() == 0) throw timeout_error("spindle::outcome::value: the call timed out");
  }
  std::variant<std::monostate, R, std::exception_ptr> v_;
};

namespace detail {

template <class F>
decltype(auto) call_with_stop(F& f, std::stop_token st) {
  if constexpr (std::is_invocable_v<F&, std::stop_token>) {
    return f(std::move(st));
  } else {
    static_assert(std::is_invocable_v<F&>,
                  "spindle::gather_*: a call must take a std::stop_token or nothing");
    return f();
  }
}

template <class F>
using call_result_t = std::decay_t<decltype(call_with_stop(std::declval<F&>(), std::stop_token{}))>;

/// What the caller and the call tasks share.
template <class R>
struct gather_state {
  explicit gather_state(std::size_t n, std::size_t need_) : results(n), stops(n), need(need_) {}

  std::mutex mu;
  std::vector<outcome<R>> results;        // guarded by mu; by call index
  std::vector<std::stop_source> stops;    // one per call; request_stop is thread-safe
  std::vector<std::size_t> successes;     // guarded by mu: call indices in completion order
  std::exception_ptr last_error;          // guarded by mu
  std::size_t done = 0;                   // guarded by mu
  std::size_t need;                       // successes that end the gather early; 0: wait for all
  bool closed = false;                    // guarded by mu: the caller has left; discard results
  std::stop_source wake;                  // requested when the caller should stop waiting

  // Requires mu. Whether the caller has its answer (or knows it cannot get one).
  bool settled() const {
    const std::size_t n = results.size();
    if (done == n) return true;
    if (need == 0) return false;  // gather_all: every call counts
    return successes.size() >= need || successes.size() + (n - done) < need;
  }

  void finish(std::size_t i, outcome<R> o) {
    std::unique_lock lock(mu);
    if (closed) return;  // the deadline passed: the result is discarded
    ++done;
    if (o.has_value()) {
      successes.push_back(i);
    } else {
      last_error = o.error();
    }
    results[i] = std::move(o);
    if (settled()) {
      lock.unlock();
      wake.request_stop();
    }
  }
};

/// Posts every call, waits until settled or the deadline, closes the state, and stops the calls
/// still running. Returns the state (now touched by the caller only).
template <class R, class E, class F, class Clock, class Rep, class Per>
std::shared_ptr<gather_state<R>> scatter(E& ex, std::vector<F>& calls, std::size_t need,
                                         std::chrono::duration<Rep, Per> timeout, const Clock& clock) {
  // Saturates: duration::max() (and deadline<>::never().remaining()) means no limit.
  const auto deadline = detail::saturating_add(clock.now(), timeout);
  auto state = std::make_shared<gather_state<R>>(calls.size(), need);
  {
    std::lock_guard lock(state->mu);
    if (state->settled()) state->wake.request_stop();  // nothing to wait for (need 0, no calls)
  }
  // Closes the state: late results are discarded, every call not finished is asked to stop.
  auto close = [&] {
    std::lock_guard lock(state->mu);
    state->closed = true;
    for (std::size_t i = 0; i < state->results.size(); ++i)
      if (state->results[i].timed_out()) state->stops[i].request_stop();
  };
  try {
    for (std::size_t i = 0; i < calls.size(); ++i) {
      ex.post([state, i, f = std::move(calls[i])]() mutable {
        std::stop_token st = state->stops[i].get_token();
        try {
          state->finish(i, outcome<R>::of_value(call_with_stop(f, std::move(st))));
        } catch (...) {
          state->finish(i, outcome<R>::of_error(std::current_exception()));
        }
      });
    }
  } catch (...) {
    // post() refused a call (the executor shut down): the calls already posted are stopped
    // (attacked by "an executor that refuses a call mid-scatter: ... are stopped").
    close();
    throw;
  }
  spindle::sleep_until(clock, deadline, state->wake.get_token());
  close();
  return state;
}

/// Takes the last error out of a closed state and drops the others, on the caller's thread (a
/// late task may be the one that destroys the state).
template <class R>
std::exception_ptr release_errors(gather_state<R>& s) {
  std::exception_ptr e = std::move(s.last_error);
  s.results.clear();
  return e;
}

[[noreturn]] inline void gather_failed(std::exception_ptr last_error, bool timed_out,
                                       const char* fn) {
  if (timed_out || !last_error) throw timeout_error(std::string(fn) + ": the deadline passed");
  std::rethrow_exception(last_error);
}

}  // namespace detail

/// Runs every call on `ex` and returns, in call order, each one's outcome: its value, its error,
/// or timed out if it had not finished by `timeout` (its stop is then requested and its late
/// result discarded). Blocks until every call has finished or the deadline. Allocates.
/// Rethrows an exception of ex.post (the calls already posted are then asked to stop and their
/// results discarded; so for gather_first and gather_quorum).
template <class E, class F, class Rep, class Per, class Clock = std::chrono::steady_clock>
auto gather_all(E& ex, std::vector<F> calls, std::chrono::duration<Rep, Per> timeout,
                Clock clock = {}) -> std::vector<outcome<detail::call_result_t<F>>> {
  using R = detail::call_result_t<F>;
  auto state = detail::scatter<R>(ex, calls, 0, timeout, clock);
  return std::move(state->results);
}

/// Runs every call on `ex` and returns the first value to arrive; then requests stop on the
/// others. Throws spindle::timeout_error if the deadline passes first (stop is requested on
/// every call), or the last error if every call fails. Allocates.
template <class E, class F, class Rep, class Per, class Clock = std::chrono::steady_clock>
auto gather_first(E& ex, std::vector<F> calls, std::chrono::duration<Rep, Per> timeout,
                  Clock clock = {}) -> detail::call_result_t<F> {
  using R = detail::call_result_t<F>;
  if (calls.empty()) throw std::invalid_argument("spindle::gather_first: calls is empty (size 0)");
  auto state = detail::scatter<R>(ex, calls, 1, timeout, clock);
  if (!state->successes.empty()) {
    const std::size_t win = state->successes.front();
    for (std::size_t i = 0; i < state->stops.size(); ++i)
      if (i != win) state->stops[i].request_stop();
    return std::move(state->results[win]).value();
  }
  const bool timed_out = state->done < calls.size();
  detail::gather_failed(detail::release_errors(*state), timed_out, "spindle::gather_first");
}

/// Runs every call on `ex` and returns the first `k` values in completion order; then requests
/// stop on the others. Throws spindle::timeout_error if the deadline passes first, or the last
/// error once failures make k successes impossible. Throws std::invalid_argument if k exceeds
/// the number of calls. k = 0 returns an empty vector without running any call. Allocates.
template <class E, class F, class Rep, class Per, class Clock = std::chrono::steady_clock>
auto gather_quorum(E& ex, std::vector<F> calls, std::size_t k,
                   std::chrono::duration<Rep, Per> timeout, Clock clock = {})
    -> std::vector<detail::call_result_t<F>> {
  using R = detail::call_result_t<F>;
  if (k > calls.size())
    throw std::invalid_argument("spindle::gather_quorum: k = " + std::to_string(k) +
                                " exceeds the number of calls (" + std::to_string(calls.size()) +
                                ")");
  const std::size_t n = calls.size();
  if (k == 0) return {};  // nothing to wait for: no call is run
  auto state = detail::scatter<R>(ex, calls, k, timeout, clock);
  if (state->successes.size() >= k) {
    std::vector<R> out;
    out.reserve(k);
    std::vector<bool> won(n, false);
    for (std::size_t j = 0; j < k; ++j) {
      const std::size_t i = state->successes[j];
      won[i] = true;
      out.push_back(std::move(state->results[i]).value());
    }
    for (std::size_t i = 0; i < n; ++i)
      if (!won[i]) state->stops[i].request_stop();
    return out;
  }
  const bool unreachable = state->successes.size() + (n - state->done) < k;
  detail::gather_failed(detail::release_errors(*state), !unreachable, "spindle::gather_quorum");
}

}  // namespace spindle
