// spindle/clock.hpp - the clock concept, manual_clock, and clock-aware sleeping.
//
// Everything in spindle that depends on time takes a Clock template parameter. In production it
// is std::chrono::steady_clock; in tests it is manual_clock, whose time moves only when the test
// says so, so timed behaviour is deterministic and no test sleeps.
//
//   spindle::manual_clock clock;                  // copies share one time
//   spindle::token_bucket bucket(2.0, 3, clock);
//   clock.advance(500ms);                         // half a second passes, instantly
//
// sleep_until(clock, t, stop) blocks until the clock reaches t or a stop is requested: real time
// for real clocks; for manual_clock, until another thread advances it (or at once, in auto-advance
// mode, which moves the clock to t: a simulation of time in one thread).
#pragma once

#include <atomic>
#include <chrono>
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stop_token>

namespace spindle {

/// What spindle needs of a clock: its duration and time_point types and now().
template <class C>
concept clock = requires(const C& c) {
  typename C::duration;
  typename C::time_point;
  { c.now() } -> std::same_as<typename C::time_point>;
};

namespace detail {

/// `d` converted to `To`, rounded up (a wait is never shorter than asked), saturating at
/// To::max() / To::min() instead of overflowing: `hours::max()` becomes `nanoseconds::max()`.
/// A NaN duration (floating-point Rep) is zero: no wait. The one conversion behind every
/// `_for(duration)` call. Never throws.
template <class To, class Rep, class Period>
constexpr To saturating_ceil(std::chrono::duration<Rep, Period> d) noexcept {
  using std::chrono::duration;
  using wide = duration<long double, typename To::period>;
  const auto w = std::chrono::duration_cast<wide>(d);
  // NaN fails both bound checks below and would reach std::chrono::ceil, whose conversion of it
  // is undefined (INT64_MIN on x86). Attacked by "a NaN duration is no wait at all, never an
  // overflow" (test_clock).
  if (w != w) return To::zero();
  if (w >= wide(static_cast<long double>(To::max().count()))) return To::max();
  if (w <= wide(static_cast<long double>(To::min().count()))) return To::min();
  return std::chrono::ceil<To>(d);
}

/// The time point `d` after `now`, saturating at time_point::max() ("never") instead of
/// overflowing, and at `now` for negative durations. The one deadline computation behind every
/// `_for(duration)` call: `duration::max()` and `deadline<>::never().remaining()` mean no limit.
template <class TimePoint, class Rep, class Period>
constexpr TimePoint saturating_add(TimePoint now, std::chrono::duration<Rep, Period> d) noexcept {
  using dur = typename TimePoint::duration;
  if (d <= d.zero()) return now;
  const dur step = saturating_ceil<dur>(d);
  if (step >= TimePoint::max() - now) return TimePoint::max();
  return now + step;
}

/// `Clock::now() + d`, saturating (see saturating_add).
template <class Clock, class Rep, class Period>
typename Clock::time_point time_after(std::chrono::duration<Rep, Period> d) {
  return saturating_add(Clock::now(), d);
}

}  // namespace detail

/// A clock whose time moves only by advance(). Copies share one time (and its sleepers), so a
/// test can keep one copy and give another to the object under test.
///
/// Thread-safe: now() and advance() may be called from any thread. sleep_until() blocks until
/// another thread advances the clock far enough, or returns at once after moving the clock there
/// itself when auto-advance is on.
class manual_clock {
 public:
  using rep = std::int64_t;
  using period = std::nano;
  using duration = std::chrono::nanoseconds;
  using time_point = std::chrono::time_point<manual_clock>;
  static constexpr bool is_steady = true;

  /// A clock at time zero (its epoch). Allocates the shared state.
  manual_clock() : state_(std::make_shared<state>()) {}

  /// The current time. Never blocks.
  time_point now() const noexcept {
    // acquire: pairs with the release in advance(), so whatever the advancing thread did before
    // is visible to a thread that sees the new time.
    return time_point(duration(state_->now.load(std::memory_order_acquire)));
  }

  /// Moves the time forward by `d` (negative durations are ignored: time never goes back;
  /// saturates at time_point::max()) and wakes the threads sleeping on this clock.
  void advance(duration d) {
    if (d <= duration::zero()) return;
    {
      std::lock_guard lock(state_->mu);  // the only writer: a load and a store suffice
      // Saturating: a step past the end used to wrap to a negative time (attacked by "a
      // manual clock advanced past its end saturates instead of going back in time").
      const auto next = detail::saturating_add(now(), d);
      state_->now.store(next.time_since_epoch().count(), std::memory_order_release);
    }
    state_->cv.notify_all();
  }

  /// Moves the time to `t` if it is later than now.
  void advance_to(time_point t) { advance(t - now()); }

  /// In auto-advance mode a sleep moves the clock to its wake-up time and returns at once.
  void set_auto_advance(bool on) noexcept {
    state_->auto_advance.store(on, std::memory_order_relaxed);
  }

  /// The number of threads now blocked in sleep_until() on this clock. Lets a test advance the
  /// clock only once the thread under test sleeps.
  std::size_t sleepers() const {
    std::lock_guard lock(state_->mu);
    return state_->sleepers;
  }

  /// Waits (in real time, at most `limit`) until at least `n` threads sleep on this clock.
  /// Returns whether they did. For tests: a bounded wait, never a sleep.
  bool wait_for_sleepers(std::size_t n, std::chrono::milliseconds limit) const {
    std::unique_lock lock(state_->mu);
    return state_->sleepers_cv.wait_for(lock, limit, [&] { return state_->sleepers >= n; });
  }

  /// Blocks until now() >= t or `st` has a stop request. Returns false if stopped first.
  bool sleep_until(time_point t, std::stop_token st = {}) const {
    if (state_->auto_advance.load(std::memory_order_relaxed)) {
      if (st.stop_requested()) return false;
      const_cast<manual_clock*>(this)->advance_to(t);
      return true;
    }
    std::unique_lock lock(state_->mu);
    ++state_->sleepers;
    state_->sleepers_cv.notify_all();
    bool reached = state_->cv.wait(lock, st, [&] { return now() >= t; });
    --state_->sleepers;
    return reached;
  }

 private:
  struct state {
    std::atomic<rep> now{0};
    std::atomic<bool> auto_advance{false};
    mutable std::mutex mu;                     // guards sleepers; advance() bumps now under it
    std::condition_variable_any cv;            // sleepers wait here for time to move
    std::condition_variable sleepers_cv;       // tests wait here for sleepers to arrive
    std::size_t sleepers = 0;                  // guarded by mu
  };
  std::shared_ptr<state> state_;
};

static_assert(clock<manual_clock>);
static_assert(clock<std::chrono::steady_clock>);

/// Blocks until `c.now() >= t` or `st` has a stop request; returns false if stopped first.
/// For manual_clock, see manual_clock::sleep_until(); for real clocks, sleeps in real time
/// without spinning and wakes promptly on a stop request.
template <clock C>
bool sleep_until(const C& c, typename C::time_point t, std::stop_token st = {}) {
  if constexpr (requires { c.sleep_until(t, st); }) {
    return c.sleep_until(t, st);
  } else {
    std::mutex mu;
    std::condition_variable_any cv;
    std::unique_lock lock(mu);
    while (c.now() < t) {
      if (st.stop_requested()) return false;
      // wait_until with a stop_token returns when t passes or a stop is requested.
      cv.wait_until(lock, st, t, [] { return false; });
    }
    return true;
  }
}

/// Blocks for `d` on clock `c` (see sleep_until()). Saturates: `duration::max()` (of any
/// duration type) sleeps until a stop request.
template <clock C, class Rep, class Period>
bool sleep_for(const C& c, std::chrono::duration<Rep, Period> d, std::stop_token st = {}) {
  return sleep_until(c, detail::saturating_add(c.now(), d), st);
}

}  // namespace spindle
