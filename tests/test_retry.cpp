#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <spindle/deadline.hpp>
#include <spindle/retry.hpp>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <vector>

#include "support/threads.hpp"

using namespace std::chrono_literals;
using spindle::manual_clock;
using spindle::retry_policy;
using spindle::status;
using mdeadline = spindle::deadline<manual_clock>;

namespace {
struct transient : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct fatal : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class F>
std::string thrown_message(F f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(nothing thrown)";
}

// A manual clock in auto-advance mode: each backoff sleep moves it, so a test reads the schedule.
manual_clock simulated() {
  manual_clock c;
  c.set_auto_advance(true);
  return c;
}
}  // namespace

TEST_CASE("retry returns the first attempt's value without sleeping") {
  manual_clock clock = simulated();
  int calls = 0;
  int v = spindle::retry(
      {}, [&] { return ++calls * 7; }, mdeadline::never(clock));
  CHECK(v == 7);
  CHECK(calls == 1);
  CHECK(clock.now().time_since_epoch() == 0ns);
}

TEST_CASE("retry retries failures and returns the value once an attempt succeeds") {
  manual_clock clock = simulated();
  int calls = 0;
  std::string v = spindle::retry(
      {.initial = 10ms, .max_attempts = 5},
      [&] {
        if (++calls < 3) throw transient("not yet");
        return std::string("done");
      },
      mdeadline::never(clock));
  CHECK(v == "done");
  CHECK(calls == 3);
  CHECK(clock.now().time_since_epoch() == 30ms);  // 10 + 20
}

TEST_CASE("retry backs off exponentially up to the cap and rethrows the last error") {
  manual_clock clock = simulated();
  std::vector<std::chrono::nanoseconds> attempts_at, delays;
  int calls = 0;
  retry_policy p{.initial = 100ms,
                 .multiplier = 2.0,
                 .max_delay = 1s,
                 .max_attempts = 7,
                 .on_retry = [&](std::uint32_t, const std::exception_ptr&,
                                 std::chrono::nanoseconds d) { delays.push_back(d); }};
  auto msg = thrown_message([&] {
    spindle::retry(
        p,
        [&] {
          attempts_at.push_back(clock.now().time_since_epoch());
          throw transient("failure " + std::to_string(++calls));
        },
        mdeadline::never(clock));
  });
  CHECK(msg == "failure 7");  // the last error, as thrown
  CHECK(calls == 7);
  const std::vector<std::chrono::nanoseconds> want_delays = {100ms, 200ms, 400ms, 800ms, 1s, 1s};
  CHECK(delays == want_delays);
  const std::vector<std::chrono::nanoseconds> want_at = {0ms,    100ms,  300ms, 700ms,
                                                         1500ms, 2500ms, 3500ms};
  CHECK(attempts_at == want_at);
}

TEST_CASE("backoff_delay grows by the multiplier, caps at max_delay and never overflows") {
  retry_policy p{.initial = 1ms, .multiplier = 10.0, .max_delay = 5s};
  CHECK(spindle::backoff_delay(p, 0) == 0ns);
  CHECK(spindle::backoff_delay(p, 1) == 1ms);
  CHECK(spindle::backoff_delay(p, 2) == 10ms);
  CHECK(spindle::backoff_delay(p, 4) == 1s);
  CHECK(spindle::backoff_delay(p, 5) == 5s);
  CHECK(spindle::backoff_delay(p, 4000) == 5s);
  retry_policy flat{.initial = 50ms, .multiplier = 1.0};
  CHECK(spindle::backoff_delay(flat, 9) == 50ms);
}

TEST_CASE("retry with max_attempts 1 calls once and rethrows") {
  int calls = 0;
  CHECK_THROWS_AS(spindle::retry({.max_attempts = 1},
                                 [&] {
                                   ++calls;
                                   throw transient("x");
                                 }),
                  transient);
  CHECK(calls == 1);
}

TEST_CASE("retry_on chooses which exceptions are retried; others are rethrown at once") {
  manual_clock clock = simulated();
  int calls = 0;
  retry_policy p{.initial = 1ms, .max_attempts = 10, .retry_on = spindle::retry_if<transient>()};
  CHECK_THROWS_AS(spindle::retry(
                      p,
                      [&] {
                        if (++calls < 3) throw transient("again");
                        throw fatal("give up");
                      },
                      mdeadline::never(clock)),
                  fatal);
  CHECK(calls == 3);

  calls = 0;
  retry_policy any_of{.initial = 1ms, .retry_on = spindle::retry_if<fatal, transient>()};
  CHECK(spindle::retry(
            any_of,
            [&] {
              if (++calls == 1) throw fatal("first");
              if (calls == 2) throw transient("second");
              return calls;
            },
            mdeadline::never(clock)) == 3);

  calls = 0;
  retry_policy not_ints{.initial = 1ms, .retry_on = spindle::retry_if<std::exception>()};
  CHECK_THROWS_AS(spindle::retry(
                      not_ints,
                      [&] {
                        ++calls;
                        throw 42;
                      },
                      mdeadline::never(clock)),
                  int);
  CHECK(calls == 1);
}

TEST_CASE("retry jitter shortens each delay within its bound, reproducibly for one seed") {
  auto run = [](std::uint64_t seed) {
    manual_clock clock = simulated();
    std::vector<std::chrono::nanoseconds> delays;
    retry_policy p{.initial = 100ms,
                   .multiplier = 2.0,
                   .max_delay = 10s,
                   .max_attempts = 8,
                   .jitter = 0.5,
                   .jitter_seed = seed,
                   .on_retry = [&](std::uint32_t, const std::exception_ptr&,
                                   std::chrono::nanoseconds d) { delays.push_back(d); }};
    try {
      spindle::retry(
          p, [] { throw transient("x"); }, mdeadline::never(clock));
    } catch (const transient&) {
    }
    return delays;
  };
  auto a = run(42), b = run(42), c = run(7);
  REQUIRE(a.size() == 7);
  CHECK(a == b);
  CHECK(a != c);
  retry_policy p{.initial = 100ms, .multiplier = 2.0, .max_delay = 10s};
  for (std::uint32_t k = 1; k <= a.size(); ++k) {
    auto d = spindle::backoff_delay(p, k);
    CHECK(a[k - 1] <= d);
    CHECK(a[k - 1] >= d / 2);
  }
}

TEST_CASE("retry rejects a malformed policy before calling f") {
  int calls = 0;
  auto f = [&] { return ++calls; };
  CHECK(thrown_message([&] { spindle::retry({.max_attempts = 0}, f); }).find("max_attempts") !=
        std::string::npos);
  CHECK(thrown_message([&] { spindle::retry({.multiplier = 0.5}, f); }).find("0.5") !=
        std::string::npos);
  CHECK(thrown_message([&] { spindle::retry({.initial = -1ms}, f); }).find("initial") !=
        std::string::npos);
  CHECK(thrown_message([&] { spindle::retry({.max_delay = -1ms}, f); }).find("max_delay") !=
        std::string::npos);
  CHECK(thrown_message([&] { spindle::retry({.jitter = 1.5}, f); }).find("jitter") !=
        std::string::npos);
  CHECK_THROWS_AS(spindle::retry({.jitter = -0.1}, f), std::invalid_argument);
  CHECK(calls == 0);
}

TEST_CASE("retry works with a void function") {
  manual_clock clock = simulated();
  int calls = 0;
  spindle::retry(
      {.initial = 5ms},
      [&] {
        if (++calls < 2) throw transient("x");
      },
      mdeadline::never(clock));
  CHECK(calls == 2);
}

TEST_CASE("a stop request during the backoff sleep ends retry promptly with the last error") {
  manual_clock clock;  // not auto-advancing: the retry thread sleeps until stopped
  std::stop_source stop;
  std::atomic<int> calls{0};
  std::string msg;
  test_support::thread_group g;
  g.spawn([&] {
    msg = thrown_message([&] {
      spindle::retry(
          {.initial = 1h, .max_attempts = 100},
          [&] { throw transient("attempt " + std::to_string(++calls)); }, mdeadline::never(clock),
          stop.get_token());
    });
  });
  REQUIRE(clock.wait_for_sleepers(1, 10s));
  stop.request_stop();
  REQUIRE(g.join_within(10s));
  CHECK(msg == "attempt 1");
  CHECK(calls.load() == 1);
  CHECK(clock.now().time_since_epoch() == 0ns);
}

TEST_CASE("retry with a stop already requested makes one attempt and passes the token to f") {
  std::stop_source stop;
  stop.request_stop();
  int calls = 0;
  bool saw_stop = false;
  CHECK_THROWS_AS(spindle::retry(
                      {.initial = 1h},
                      [&](std::stop_token st) {
                        ++calls;
                        saw_stop = st.stop_requested();
                        throw transient("x");
                      },
                      stop.get_token()),
                  transient);
  CHECK(calls == 1);
  CHECK(saw_stop);
}

TEST_CASE("retry gives up at once when the next attempt would start past the deadline") {
  manual_clock clock = simulated();
  std::vector<std::chrono::nanoseconds> at;
  auto msg = thrown_message([&] {
    spindle::retry(
        {.initial = 300ms, .multiplier = 2.0, .max_attempts = 100},
        [&] {
          at.push_back(clock.now().time_since_epoch());
          throw transient("late " + std::to_string(at.size()));
        },
        mdeadline::after(1s, clock));
  });
  const std::vector<std::chrono::nanoseconds> want = {0ms, 300ms, 900ms};
  CHECK(at == want);  // 900 + 1200 would pass 1000
  CHECK(msg == "late 3");
  CHECK(clock.now().time_since_epoch() == 900ms);  // no pointless sleep to the deadline
}

TEST_CASE("retry on the steady clock with a real backoff returns the value") {
  int calls = 0;
  int v = spindle::retry({.initial = 1ms, .max_attempts = 3}, [&] {
    if (++calls < 2) throw transient("x");
    return 5;
  });
  CHECK(v == 5);
  CHECK(calls == 2);
}

// ---------------------------------------------------------------------------------------------
// deadline helpers

TEST_CASE("a deadline reports its remaining time and expiry on its clock") {
  manual_clock clock;
  auto dl = mdeadline::after(2s, clock);
  CHECK_FALSE(dl.expired());
  CHECK(dl.remaining() == 2s);
  CHECK(dl.when().time_since_epoch() == 2s);
  clock.advance(1500ms);
  CHECK(dl.remaining() == 500ms);
  clock.advance(500ms);
  CHECK(dl.expired());
  CHECK(dl.remaining() == 0ns);
  auto never = mdeadline::never(clock);
  CHECK(never.is_never());
  CHECK_FALSE(never.expired());
  CHECK(never.remaining() == manual_clock::duration::max());
  CHECK(mdeadline::after(manual_clock::duration::max(), clock).is_never());  // saturates
  CHECK(mdeadline::at(manual_clock::time_point(1s), clock).expired());
  spindle::deadline<> steady;  // default: never, on steady_clock
  CHECK(steady.is_never());
}

TEST_CASE("sleep_until a deadline returns ok, timeout or cancelled") {
  manual_clock clock = simulated();
  auto dl = mdeadline::after(1s, clock);
  CHECK(spindle::sleep_for(dl, 400ms) == status::ok);
  CHECK(clock.now().time_since_epoch() == 400ms);
  CHECK(spindle::sleep_for(dl, 5s) == status::timeout);  // cut at the deadline
  CHECK(clock.now().time_since_epoch() == 1s);
  std::stop_source stop;
  stop.request_stop();
  CHECK(spindle::sleep_for(mdeadline::never(clock), 1s, stop.get_token()) == status::cancelled);
  CHECK(clock.now().time_since_epoch() == 1s);
}

TEST_CASE("sleep_until a deadline wakes promptly on a stop request") {
  manual_clock clock;
  std::stop_source stop;
  status s = status::ok;
  test_support::thread_group g;
  g.spawn([&] { s = spindle::sleep_for(mdeadline::after(1h, clock), 2h, stop.get_token()); });
  REQUIRE(clock.wait_for_sleepers(1, 10s));
  stop.request_stop();
  REQUIRE(g.join_within(10s));
  CHECK(s == status::cancelled);
}

TEST_CASE("sleep_until a deadline on a manual clock wakes when time reaches the deadline") {
  manual_clock clock;
  status s = status::ok;
  test_support::thread_group g;
  g.spawn([&] { s = spindle::sleep_for(mdeadline::after(1s, clock), 1h); });
  REQUIRE(clock.wait_for_sleepers(1, 10s));
  clock.advance(1s);
  REQUIRE(g.join_within(10s));
  CHECK(s == status::timeout);
}

TEST_CASE("deadline::after(hours::max()) is never, on any clock") {
  // The old after() took Clock::duration: hours::max() overflowed in the implicit conversion
  // to nanoseconds and made a deadline in the past.
  manual_clock clock;
  clock.advance(std::chrono::hours(1));
  CHECK(mdeadline::after(std::chrono::hours::max(), clock).is_never());
  CHECK(spindle::deadline<>::after(std::chrono::hours::max()).is_never());
  CHECK_FALSE(mdeadline::after(std::chrono::hours::max(), clock).expired());
  CHECK(mdeadline::after(std::chrono::hours(-5), clock).expired());  // negative: now
}

// ---- hostile tests (red team) ----

TEST_CASE("backoff_delay with initial 0 stays 0 however many retries (multiplier^k overflows)") {
  // Attacks "min(max_delay, initial * multiplier^(k-1))": multiplier^(k-1) overflows to inf for
  // a large k, and 0 * inf is NaN, which read as "over the cap" and slept max_delay.
  retry_policy p{.initial = 0ns, .multiplier = 2.0, .max_delay = 30s};
  for (std::uint32_t k : {1u, 2u, 1024u, 1025u, 1100u, 100000u, 0xffffffffu})
    CHECK(spindle::backoff_delay(p, k) == 0ns);
  retry_policy big{.initial = 1ns, .multiplier = 1e300, .max_delay = 7s};
  CHECK(spindle::backoff_delay(big, 3) == 7s);
  CHECK(spindle::backoff_delay(big, 0xffffffffu) == 7s);
}

TEST_CASE("retry with initial 0 and thousands of attempts never sleeps") {
  manual_clock clock;  // not auto-advancing: a sleep would block this test for ever
  std::uint32_t calls = 0;
  int r = spindle::retry(
      {.initial = 0ns, .multiplier = 2.0, .max_attempts = 3000},
      [&] {
        if (++calls < 3000) throw transient("again");
        return 7;
      },
      mdeadline::never(clock));
  CHECK(r == 7);
  CHECK(calls == 3000);
  CHECK(clock.now().time_since_epoch() == 0ns);
}

TEST_CASE("jitter on a huge delay never makes it negative or longer than the delay") {
  // Attacks the jitter arithmetic at the top of the range: nanoseconds::max() as a double is
  // 2^63, and a jitter too small to change it turned the delay into a double that does not fit
  // in int64 (UB; INT64_MIN on x86, so retry slept nothing instead of "for ever").
  for (double jitter : {1e-300, 1e-18, 1e-9}) {
    manual_clock clock = simulated();
    std::vector<std::chrono::nanoseconds> delays;
    retry_policy p{.initial = std::chrono::nanoseconds::max(),
                   .multiplier = 1.0,
                   .max_delay = std::chrono::nanoseconds::max(),
                   .max_attempts = 2,
                   .jitter = jitter,
                   .jitter_seed = 1,
                   .on_retry = [&](std::uint32_t, const std::exception_ptr&,
                                   std::chrono::nanoseconds d) { delays.push_back(d); }};
    CHECK_THROWS_AS(spindle::retry(p, [] { throw transient("x"); }, mdeadline::never(clock)),
                    transient);
    REQUIRE(delays.size() == 1);
    CHECK(delays[0] > 0ns);
    CHECK(delays[0] <= std::chrono::nanoseconds::max());
    CHECK(clock.now().time_since_epoch() >= delays[0]);  // it slept what it announced
  }
}

TEST_CASE("retry with a deadline already in the past makes exactly one attempt") {
  manual_clock clock;
  clock.advance(10s);
  int calls = 0;
  CHECK_THROWS_AS(spindle::retry({.initial = 1ms, .max_attempts = 100},
                                 [&]() -> int {
                                   ++calls;
                                   throw transient("x");
                                 },
                                 mdeadline::at(manual_clock::time_point(1s), clock)),
                  transient);
  CHECK(calls == 1);
}

TEST_CASE("retry with max_attempts at its maximum and a stop requested mid-way ends") {
  std::stop_source stop;
  int calls = 0;
  CHECK_THROWS_AS(spindle::retry({.initial = 0ns, .max_attempts = 0xffffffffu},
                                 [&]() -> int {
                                   if (++calls == 50) stop.request_stop();
                                   throw transient("x");
                                 },
                                 stop.get_token()),
                  transient);
  CHECK(calls == 50);
}
