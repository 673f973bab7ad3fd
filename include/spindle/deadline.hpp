// spindle/deadline.hpp - an absolute point in time that bounds a wait, on any clock.
//
// Defines:
//   deadline<Clock>          a time point of Clock (or "never"), with the clock to read it by:
//                            expired(), remaining(), when(); deadline::after(clock, d),
//                            deadline::at(clock, t), deadline::never(clock).
//   sleep_until(dl, t, st)   sleeps until t, but no later than the deadline; returns
//                            ok | timeout | cancelled.
//
// A deadline is computed once and passed down, so that several waits in a row share one time
// budget: each takes remaining() for its `_for` form (queue.pop_for(x, dl.remaining())) or tests
// expired() between steps. Timed with Clock, so tests use manual_clock.
//
//   auto dl = spindle::deadline<>::after(2s);            // steady_clock
//   while (!done && !dl.expired()) step(dl.remaining());
#pragma once

#include <chrono>
#include <stop_token>

#include "clock.hpp"
#include "status.hpp"

namespace spindle {

// detail::saturating_ceil, saturating_add and time_after, the one saturating deadline
// computation behind every `_for(duration)` call, live in clock.hpp (included above), so that
// clock-aware sleeping uses them too.


/// An absolute time point of `Clock`, or never. Holds a copy of the clock it is read by (copies
/// of manual_clock share one time). A value type: copying it copies the time point.
/// Thread-safe to read from many threads (its members are const after construction).
template <clock Clock = std::chrono::steady_clock>
class deadline {
 public:
  using clock_type = Clock;
  using duration = typename Clock::duration;
  using time_point = typename Clock::time_point;

  /// A deadline that never expires, read by a default-constructed Clock.
  deadline() = default;

  /// A deadline that never expires.
  static deadline never(Clock c = {}) { return deadline(std::move(c), time_point::max()); }

  /// The deadline `d` from now (saturates at never instead of overflowing; `d` of any duration
  /// type, so hours::max() is never too).
  template <class Rep, class Period>
  static deadline after(std::chrono::duration<Rep, Period> d, Clock c = {}) {
    auto t = detail::saturating_add(c.now(), d);
    return deadline(std::move(c), t);
  }

  /// The deadline at time point `t`.
  static deadline at(time_point t, Clock c = {}) { return deadline(std::move(c), t); }

  /// The time point (time_point::max() when never).
  time_point when() const noexcept { return when_; }
  /// Whether this deadline never expires.
  bool is_never() const noexcept { return when_ == time_point::max(); }
  /// The clock this deadline is read by.
  const Clock& clock() const noexcept { return clock_; }

  /// Whether the clock has reached the deadline. Never blocks.
  bool expired() const { return !is_never() && clock_.now() >= when_; }

  /// The time left: zero once expired, duration::max() when never. Pass it to `_for` waits.
  duration remaining() const {
    if (is_never()) return duration::max();
    auto now = clock_.now();
    return now >= when_ ? duration::zero() : when_ - now;
  }

  /// The earlier of this deadline and `t`.
  time_point earlier(time_point t) const noexcept { return t < when_ ? t : when_; }

 private:
  deadline(Clock c, time_point t) : clock_(std::move(c)), when_(t) {}

  [[no_unique_address]] Clock clock_{};
  time_point when_ = time_point::max();
};

/// Sleeps until `t` on the deadline's clock, but no later than the deadline.
/// Returns ok (t reached), timeout (the deadline came first; the clock is then at or past it),
/// or cancelled (a stop was requested on `st`). Never busy-waits. Thread-safe.
template <clock Clock>
status sleep_until(const deadline<Clock>& dl, typename Clock::time_point t,
                   std::stop_token st = {}) {
  if (st.stop_requested()) return status::cancelled;
  const bool cut = dl.when() < t;
  if (!sleep_until(dl.clock(), dl.earlier(t), std::move(st))) return status::cancelled;
  return cut ? status::timeout : status::ok;
}

/// Sleeps for `d` on the deadline's clock, but no later than the deadline (see above).
template <clock Clock, class Rep, class Period>
status sleep_for(const deadline<Clock>& dl, std::chrono::duration<Rep, Period> d,
                 std::stop_token st = {}) {
  return sleep_until(dl, detail::saturating_add(dl.clock().now(), d), std::move(st));
}

}  // namespace spindle
