#include <doctest/doctest.h>

#include <spindle/clock.hpp>
#include <spindle/deadline.hpp>

#include <atomic>
#include <chrono>
#include <limits>
#include <stop_token>
#include <thread>

#include "support/threads.hpp"

using namespace std::chrono_literals;
using spindle::manual_clock;

TEST_CASE("a manual clock starts at its epoch and moves only when advanced") {
  manual_clock c;
  CHECK(c.now().time_since_epoch() == 0ns);
  c.advance(1500ms);
  CHECK(c.now().time_since_epoch() == 1500ms);
  c.advance(-1s);  // time never goes back
  CHECK(c.now().time_since_epoch() == 1500ms);
  c.advance_to(manual_clock::time_point(1s));  // earlier: ignored
  CHECK(c.now().time_since_epoch() == 1500ms);
  c.advance_to(manual_clock::time_point(2s));
  CHECK(c.now().time_since_epoch() == 2s);
}

TEST_CASE("copies of a manual clock share one time") {
  manual_clock a;
  manual_clock b = a;
  a.advance(3s);
  CHECK(b.now().time_since_epoch() == 3s);
}

TEST_CASE("sleep_until on a manual clock returns at once when the time has come") {
  manual_clock c;
  c.advance(5s);
  CHECK(spindle::sleep_until(c, manual_clock::time_point(4s)));
  CHECK(spindle::sleep_for(c, 0ns));
}

TEST_CASE("sleep_until on a manual clock wakes when another thread advances it far enough") {
  manual_clock c;
  bool reached = false;
  std::thread sleeper([&] { reached = spindle::sleep_until(c, manual_clock::time_point(10s)); });
  REQUIRE(c.wait_for_sleepers(1, 10s));
  c.advance(4s);  // not yet: still sleeping
  REQUIRE(c.wait_for_sleepers(1, 10s));
  c.advance(6s);
  sleeper.join();
  CHECK(reached);
  CHECK(c.sleepers() == 0);
}

TEST_CASE("sleep_until on a manual clock returns false when a stop is requested") {
  manual_clock c;
  std::stop_source stop;
  bool reached = true;
  std::thread sleeper([&] { reached = spindle::sleep_for(c, 1h, stop.get_token()); });
  REQUIRE(c.wait_for_sleepers(1, 10s));
  stop.request_stop();
  sleeper.join();
  CHECK_FALSE(reached);
  CHECK(c.now().time_since_epoch() == 0ns);
}

TEST_CASE("in auto-advance mode a sleep moves the manual clock and returns at once") {
  manual_clock c;
  c.set_auto_advance(true);
  CHECK(spindle::sleep_for(c, 2s));
  CHECK(c.now().time_since_epoch() == 2s);
  std::stop_source stop;
  stop.request_stop();
  CHECK_FALSE(spindle::sleep_for(c, 2s, stop.get_token()));
  CHECK(c.now().time_since_epoch() == 2s);
}

TEST_CASE("sleep_until on the steady clock returns promptly on a stop request") {
  std::stop_source stop;
  bool reached = true;
  test_support::thread_group g;
  g.spawn([&] { reached = spindle::sleep_for(std::chrono::steady_clock{}, 1h, stop.get_token()); });
  stop.request_stop();
  REQUIRE(g.join_within(30s));
  CHECK_FALSE(reached);
}

TEST_CASE("sleep_until on the steady clock returns true once the time has passed") {
  auto t = std::chrono::steady_clock::now() + 1ms;
  CHECK(spindle::sleep_until(std::chrono::steady_clock{}, t));
  CHECK(std::chrono::steady_clock::now() >= t);
}

TEST_CASE("sleep_for with hours::max() or never().remaining() sleeps until a stop request") {
  // The old sleep_for computed now() + d unsaturated: the deadline overflowed into the past
  // and the sleep returned at once.
  for (int which = 0; which < 2; ++which) {
    CAPTURE(which);
    spindle::manual_clock clock;
    clock.advance(std::chrono::hours(1));
    std::stop_source stop;
    std::atomic<int> result{-1};
    test_support::thread_group g;
    g.spawn([&] {
      const bool reached =
          which == 0 ? spindle::sleep_for(clock, std::chrono::hours::max(), stop.get_token())
                     : spindle::sleep_for(
                           clock, spindle::deadline<spindle::manual_clock>::never(clock).remaining(),
                           stop.get_token());
      result.store(reached ? 1 : 0);
    });
    CHECK(clock.wait_for_sleepers(1, std::chrono::seconds(10)));
    clock.advance(std::chrono::hours(24 * 365 * 100));
    stop.request_stop();
    REQUIRE(g.join_within(std::chrono::seconds(10)));
    CHECK(result.load() == 0);  // stopped, never reached
  }
}

// ---- hostile tests (red team) ----

TEST_CASE("a manual clock advanced past its end saturates instead of going back in time") {
  // Attacks "time never goes back": advance() added the count with wrap-around, so a huge step
  // (a sleep to time_point::max() in auto-advance mode, then one more) made now() negative.
  manual_clock c;
  c.advance(1s);
  c.advance(std::chrono::nanoseconds::max());
  CHECK(c.now() == manual_clock::time_point::max());
  c.advance(1ns);
  CHECK(c.now() == manual_clock::time_point::max());
  manual_clock d;
  d.set_auto_advance(true);
  CHECK(spindle::sleep_until(d, manual_clock::time_point::max()));
  CHECK(spindle::sleep_for(d, 1h));
  CHECK(d.now() == manual_clock::time_point::max());
}

TEST_CASE("a NaN duration is no wait at all, never an overflow") {
  // Attacks the saturating conversion behind every _for(duration): NaN compares false with both
  // bounds, and std::chrono::ceil of it is undefined (INT64_MIN on x86: a time point before the
  // epoch, or an overflow in saturating_add).
  volatile double runtime_nan = std::numeric_limits<double>::quiet_NaN();  // no constant folding
  const std::chrono::duration<double> nan(runtime_nan);
  CHECK(spindle::detail::saturating_ceil<std::chrono::nanoseconds>(nan) == 0ns);
  manual_clock c;
  c.advance(5s);
  CHECK(spindle::detail::saturating_add(c.now(), nan) == c.now());
  CHECK(spindle::deadline<manual_clock>::after(nan, c).when() == c.now());
  CHECK(spindle::sleep_for(c, nan));  // returns at once: the time has come
  const std::chrono::duration<double> inf(std::numeric_limits<double>::infinity());
  CHECK(spindle::detail::saturating_ceil<std::chrono::nanoseconds>(inf) ==
        std::chrono::nanoseconds::max());
  CHECK(spindle::detail::saturating_ceil<std::chrono::nanoseconds>(-inf) ==
        std::chrono::nanoseconds::min());
}
