// Tests for <spindle/scatter_gather.hpp>.
#include <spindle/scatter_gather.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <stop_token>
#include <vector>

#include <spindle/clock.hpp>
#include <spindle/deadline.hpp>
#include <spindle/thread_pool.hpp>

#include "support/threads.hpp"

using namespace std::chrono_literals;

namespace {

using call = std::function<int(std::stop_token)>;

// Runs each task at once, on the caller: completion order is call order.
struct inline_executor {
  template <class F>
  void post(F&& f) {
    f();
  }
};

// One thread per task, joined by the destructor: for tests whose calls block, so that no call
// waits behind another (a pool may run tasks it has batched on one worker in sequence).
struct thread_executor {
  std::mutex mu;
  std::vector<std::jthread> threads;  // guarded by mu
  template <class F>
  void post(F&& f) {
    std::lock_guard lock(mu);
    threads.emplace_back(std::forward<F>(f));
  }
};

// Runs tasks on threads and lets a test wait until n tasks have finished (bounded).
struct counting_executor {
  std::mutex mu;
  std::condition_variable cv;
  int done = 0;            // guarded by mu
  thread_executor threads;  // last: destroyed (joined) first, while mu and cv still exist

  template <class F>
  void post(F&& f) {
    threads.post([this, f = std::forward<F>(f)]() mutable {
      f();
      {
        std::lock_guard lock(mu);
        ++done;
      }
      cv.notify_all();
    });
  }
  bool wait_done(int n) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, 10s, [&] { return done >= n; });
  }
};

// Blocks until its stop is requested (bounded: 10 s), then records that it saw the stop.
int wait_for_stop(std::stop_token st, std::atomic<bool>& saw_stop) {
  std::mutex mu;
  std::condition_variable_any cv;
  std::unique_lock lock(mu);
  cv.wait_for(lock, st, 10s, [] { return false; });
  saw_stop = st.stop_requested();
  return -1;
}

}  // namespace

TEST_CASE("outcome holds a value, an error, or a timeout") {
  spindle::outcome<int> t;
  CHECK(t.timed_out());
  CHECK_FALSE(t.has_value());
  CHECK_FALSE(t);
  CHECK(t.error() == nullptr);
  CHECK_THROWS_AS(t.value(), spindle::timeout_error);
  auto v = spindle::outcome<int>::of_value(5);
  CHECK(v);
  CHECK(v.value() == 5);
  CHECK_FALSE(v.timed_out());
  auto e = spindle::outcome<int>::of_error(std::make_exception_ptr(std::runtime_error("boom")));
  CHECK_FALSE(e);
  CHECK(e.error() != nullptr);
  CHECK_THROWS_WITH_AS(e.value(), "boom", std::runtime_error);
}

TEST_CASE("gather_all returns every outcome in call order") {
  spindle::thread_pool pool(2);
  std::vector<call> calls{
      [](std::stop_token) { return 1; },
      [](std::stop_token) -> int { throw std::runtime_error("service 1 down"); },
      [](std::stop_token) { return 3; },
  };
  auto out = spindle::gather_all(pool, calls, 10s);
  REQUIRE(out.size() == 3);
  CHECK(out[0].value() == 1);
  CHECK_THROWS_WITH(out[1].value(), "service 1 down");
  CHECK(out[2].value() == 3);
}

TEST_CASE("gather_all waits for the other calls after one fails") {
  thread_executor pool;
  test_support::start_gate failed;
  std::vector<call> calls{
      [&](std::stop_token) -> int {
        failed.open();
        throw std::runtime_error("fast failure");
      },
      [&](std::stop_token) {
        failed.wait();
        return 2;
      },
  };
  auto out = spindle::gather_all(pool, calls, 10s);
  CHECK(out[0].error() != nullptr);
  CHECK(out[1].value() == 2);
}

TEST_CASE("gather_all accepts calls that take no stop token") {
  spindle::thread_pool pool(2);
  std::vector<std::function<int()>> calls{[] { return 4; }, [] { return 5; }};
  auto out = spindle::gather_all(pool, calls, 10s);
  CHECK(out[0].value() + out[1].value() == 9);
}

TEST_CASE("gather_all honours the deadline when a call ignores its stop token") {
  counting_executor ex;
  spindle::manual_clock clock;
  test_support::start_gate release;
  std::atomic<bool> stop_seen{false};
  std::vector<call> calls{
      [](std::stop_token) { return 1; },
      [&](std::stop_token st) {
        release.wait();  // ignores st while blocked
        stop_seen = st.stop_requested();
        return 2;
      },
  };
  test_support::thread_group g;
  std::vector<spindle::outcome<int>> out;
  g.spawn([&] { out = spindle::gather_all(ex, calls, 50ms, clock); });
  REQUIRE(clock.wait_for_sleepers(1, 10s));
  REQUIRE(ex.wait_done(1));  // the quick call has finished; the other ignores its token
  clock.advance(50ms);
  REQUIRE(g.join_within(10s));
  release.open();
  REQUIRE(ex.wait_done(2));  // the late call has finished too
  REQUIRE(out.size() == 2);
  CHECK(out[0].value() == 1);
  CHECK(out[1].timed_out());
  CHECK_THROWS_AS(out[1].value(), spindle::timeout_error);
  CHECK(stop_seen.load());  // the late call was asked to stop; its 2 was discarded
}

TEST_CASE("gather_first returns the first success and requests stop on the losers") {
  std::atomic<bool> saw_stop{false};
  {
    thread_executor ex;
    std::vector<call> calls{
        [&](std::stop_token st) { return wait_for_stop(st, saw_stop); },
        [](std::stop_token) { return 7; },
    };
    CHECK(spindle::gather_first(ex, calls, 10s) == 7);
  }  // joins the calls
  CHECK(saw_stop.load());
}

TEST_CASE("gather_first throws the last error when every call fails") {
  inline_executor ex;
  std::vector<call> calls{
      [](std::stop_token) -> int { throw std::runtime_error("first"); },
      [](std::stop_token) -> int { throw std::logic_error("last"); },
  };
  CHECK_THROWS_WITH_AS(spindle::gather_first(ex, calls, 1s), "last", std::logic_error);
}

TEST_CASE("gather_first throws timeout_error when the deadline passes first") {
  spindle::thread_pool pool(2);
  spindle::manual_clock clock;
  std::atomic<bool> saw_stop{false};
  std::vector<call> calls{[&](std::stop_token st) { return wait_for_stop(st, saw_stop); }};
  test_support::thread_group g;
  bool timed_out = false;
  g.spawn([&] {
    try {
      spindle::gather_first(pool, calls, 1s, clock);
    } catch (const spindle::timeout_error&) {
      timed_out = true;
    }
  });
  REQUIRE(clock.wait_for_sleepers(1, 10s));
  clock.advance(1s);
  REQUIRE(g.join_within(10s));
  pool.wait_idle();
  CHECK(timed_out);
  CHECK(saw_stop.load());
}

TEST_CASE("gather_first rejects an empty list of calls") {
  inline_executor ex;
  CHECK_THROWS_WITH_AS(spindle::gather_first(ex, std::vector<call>{}, 1s),
                       doctest::Contains("gather_first"), std::invalid_argument);
}

TEST_CASE("gather_quorum returns the first k successes in completion order") {
  inline_executor ex;  // completion order is call order
  std::vector<call> calls{
      [](std::stop_token) -> int { throw std::runtime_error("down"); },
      [](std::stop_token) { return 10; },
      [](std::stop_token) { return 20; },
      [](std::stop_token) { return 30; },
  };
  CHECK(spindle::gather_quorum(ex, calls, 2, 1s) == std::vector<int>{10, 20});
  CHECK(spindle::gather_quorum(ex, calls, 0, 1s).empty());
}

TEST_CASE("gather_quorum throws the last error once k successes are impossible") {
  inline_executor ex;
  std::vector<call> calls{
      [](std::stop_token) { return 1; },
      [](std::stop_token) -> int { throw std::runtime_error("a"); },
      [](std::stop_token) -> int { throw std::runtime_error("b"); },
  };
  CHECK_THROWS_WITH_AS(spindle::gather_quorum(ex, calls, 2, 1s), "b", std::runtime_error);
}

TEST_CASE("gather_quorum throws timeout_error at the deadline and stops the stragglers") {
  spindle::thread_pool pool(2);
  spindle::manual_clock clock;
  std::atomic<bool> saw_stop{false};
  std::vector<call> calls{
      [](std::stop_token) { return 1; },
      [&](std::stop_token st) { return wait_for_stop(st, saw_stop); },
  };
  test_support::thread_group g;
  bool timed_out = false;
  g.spawn([&] {
    try {
      spindle::gather_quorum(pool, calls, 2, 100ms, clock);
    } catch (const spindle::timeout_error&) {
      timed_out = true;
    }
  });
  REQUIRE(clock.wait_for_sleepers(1, 10s));
  clock.advance(100ms);
  REQUIRE(g.join_within(10s));
  pool.wait_idle();
  CHECK(timed_out);
  CHECK(saw_stop.load());
}

TEST_CASE("gather_quorum rejects k larger than the number of calls") {
  inline_executor ex;
  std::vector<call> calls{[](std::stop_token) { return 1; }};
  CHECK_THROWS_WITH_AS(spindle::gather_quorum(ex, calls, 2, 1s),
                       doctest::Contains("k = 2 exceeds the number of calls (1)"),
                       std::invalid_argument);
}

TEST_CASE("many gathers in a row conserve every result") {
  spindle::thread_pool pool(2);
  long total = 0;
  for (int round = 0; round < 200; ++round) {
    std::vector<call> calls;
    for (int i = 0; i < 8; ++i) calls.push_back([i](std::stop_token) { return i; });
    for (auto& o : spindle::gather_all(pool, calls, 10s)) total += o.value();
  }
  CHECK(total == 200L * 28);
}

TEST_CASE("a call that returns at once comes back as a value beside one that blocks until stopped") {
  // Attacks private runs: a worker that claimed the blocking call and the instant ones behind
  // it in one run reported the instant ones as timed out (gather_all) or threw "the deadline
  // passed" (gather_first).
  int failed_at = -1;
  for (int rep = 0; rep < 20 && failed_at < 0; ++rep) {
    spindle::thread_pool pool(2);
    std::atomic<bool> saw_stop{false};
    std::vector<call> calls{[&](std::stop_token st) { return wait_for_stop(st, saw_stop); }};
    for (int i = 1; i < 8; ++i) calls.push_back([i](std::stop_token) { return i; });
    auto out = spindle::gather_all(pool, calls, 300ms);
    bool good = out[0].timed_out();
    for (std::size_t i = 1; i < out.size(); ++i) good = good && out[i].has_value();
    std::vector<call> two{[&](std::stop_token st) { return wait_for_stop(st, saw_stop); },
                          [](std::stop_token) { return 42; }};
    try {
      good = good && spindle::gather_first(pool, two, 5s) == 42;
    } catch (const spindle::timeout_error&) {
      good = false;
    }
    if (!good) failed_at = rep;
  }
  CHECK(failed_at == -1);
}

TEST_CASE("gather_* with hours::max() or deadline::never().remaining() wait without a limit") {
  // Attacks the deadline computation: now() + hours::max() overflowed to the past, so every
  // call was reported timed out at once.
  spindle::thread_pool pool(2);
  std::vector<call> calls{[](std::stop_token) { return 1; }, [](std::stop_token) { return 2; }};
  auto all = spindle::gather_all(pool, calls, std::chrono::hours::max());
  REQUIRE(all.size() == 2);
  CHECK(all[0].value() == 1);
  CHECK(all[1].value() == 2);
  CHECK(spindle::gather_first(pool, calls, spindle::deadline<>::never().remaining()) >= 1);
  CHECK(spindle::gather_quorum(pool, calls, 2, std::chrono::nanoseconds::max()).size() == 2);
}

// ---- hostile tests (red team) ----

TEST_CASE("an executor that refuses a call mid-scatter: the error reaches the caller and the calls already posted are stopped") {
  // Attacks "every call still running ... is asked to stop": when post() threw for call 3 (an
  // executor shut down mid-scatter), gather rethrew at once and calls 1 and 2, already queued,
  // ran with no stop request, for ever if they wait for one.
  struct refusing_executor {
    std::vector<std::function<void()>> accepted;
    void post(std::function<void()> f) {
      if (accepted.size() == 2) throw spindle::closed_error("refusing_executor: shut down");
      accepted.push_back(std::move(f));
    }
  } ex;
  std::atomic<int> stopped{0};
  std::vector<std::function<int(std::stop_token)>> calls(
      4, [&](std::stop_token st) {
        if (st.stop_requested()) stopped.fetch_add(1);
        return 1;
      });
  CHECK_THROWS_AS(spindle::gather_all(ex, calls, std::chrono::hours(1)), spindle::closed_error);
  REQUIRE(ex.accepted.size() == 2);
  for (auto& f : ex.accepted) f();  // they run after the caller left: each sees its stop
  CHECK(stopped.load() == 2);
  ex.accepted.clear();
  CHECK_THROWS_AS(spindle::gather_first(ex, calls, std::chrono::hours(1)), spindle::closed_error);
  for (auto& f : ex.accepted) f();
  CHECK(stopped.load() == 4);
}
