// Tests of <spindle/channel.hpp> and any_channel at the edges: huge durations, zero durations.
#include <doctest/doctest.h>

#include <spindle/bounded_queue.hpp>
#include <spindle/channel.hpp>
#include <spindle/deadline.hpp>
#include <spindle/spsc_queue.hpp>

#include <atomic>
#include <chrono>
#include <thread>

#include "support/threads.hpp"

using namespace std::chrono_literals;
using spindle::status;

namespace {

// Runs `pop` (a call that must wait without a time limit) on a thread, checks that it has not
// returned after a while (the old deadlines overflowed into the past and timed out at once),
// then pushes and checks that it returned ok.
template <class Q, class Pop>
void check_waits_forever(Q& q, Pop pop) {
  std::atomic<int> returned{0};
  std::atomic<status> result{status::timeout};
  test_support::thread_group g;
  g.spawn([&] {
    result.store(pop());
    returned.store(1);
  });
  std::this_thread::sleep_for(30ms);  // a negative check: it must still be waiting
  CHECK(returned.load() == 0);
  REQUIRE(q.push(7) == status::ok);
  REQUIRE(g.join_within(10s));
  CHECK(result.load() == status::ok);
}

}  // namespace

TEST_CASE("pop_for with hours::max() or never().remaining() waits, on queues and any_channel") {
  for (int which = 0; which < 4; ++which) {
    CAPTURE(which);
    spindle::bounded_queue<int> q(4);
    spindle::any_channel<int> a(q);
    int v = 0;
    check_waits_forever(q, [&] {
      switch (which) {
        case 0: return q.pop_for(v, std::chrono::hours::max());
        case 1: return q.pop_for(v, spindle::deadline<>::never().remaining());
        case 2: return a.pop_for(v, std::chrono::hours::max());
        default: return a.pop_for(v, spindle::deadline<>::never().remaining());
      }
    });
    CHECK(v == 7);
  }
  spindle::spsc_queue<int> s(4);
  int v = 0;
  check_waits_forever(s, [&] { return s.pop_for(v, std::chrono::hours::max()); });
}

TEST_CASE("push_for with hours::max() waits for room, on queues and any_channel") {
  for (int which = 0; which < 2; ++which) {
    CAPTURE(which);
    spindle::bounded_queue<int> q(1);
    spindle::any_channel<int> a(q);
    REQUIRE(q.push(1) == status::ok);
    std::atomic<int> returned{0};
    std::atomic<status> result{status::timeout};
    test_support::thread_group g;
    g.spawn([&] {
      result.store(which == 0 ? q.push_for(2, std::chrono::hours::max())
                              : a.push_for(2, std::chrono::hours::max()));
      returned.store(1);
    });
    std::this_thread::sleep_for(30ms);  // a negative check
    CHECK(returned.load() == 0);
    int v = 0;
    REQUIRE(q.pop(v) == status::ok);
    REQUIRE(g.join_within(10s));
    CHECK(result.load() == status::ok);
  }
}

TEST_CASE("pop_for and push_for with a zero or past timeout cost about a try, not a spin") {
  // The old blocking call spun its whole budget (~23 us) before it looked at the deadline.
  // CPU time of this thread, not wall time: robust on a loaded machine.
  spindle::bounded_queue<int> q(1);
  spindle::spsc_queue<int> s(1);
  int v = 0;
  constexpr int calls = 4000;
  const auto start = test_support::thread_cpu_time();
  for (int i = 0; i < calls; ++i) {
    REQUIRE(q.pop_for(v, 0ns) == status::timeout);
    REQUIRE(s.pop_for(v, -1ms) == status::timeout);
  }
  REQUIRE(q.push(1) == status::ok);
  REQUIRE(s.push(1) == status::ok);
  for (int i = 0; i < calls; ++i) {
    REQUIRE(q.push_for(2, 0ns) == status::timeout);
    REQUIRE(s.push_for(2, 0ns) == status::timeout);
  }
  const auto used = test_support::thread_cpu_time() - start;
  // 16,000 calls; the old spin cost ~0.4 s of CPU here, a try costs well under a microsecond.
  CHECK(used < 80ms);
}

namespace {
// A producer and a consumer hand `n` values through `q` (capacity 1), both blocking on nearly
// every call; the consumer's sum proves that nothing was lost or duplicated.
template <class Q>
void check_hand_offs(Q& q, int n) {
  long long sum = 0;
  test_support::thread_group g;
  g.spawn([&] {
    int v = 0;
    while (q.pop(v) == status::ok) sum += v;
  });
  for (int i = 1; i <= n; ++i) REQUIRE(q.push(i) == status::ok);
  q.close();
  REQUIRE(g.join_within(60s));
  CHECK(sum == static_cast<long long>(n) * (n + 1) / 2);
}
}  // namespace

TEST_CASE("blocking calls are correct without any spin: queues made with spin 0 and yields 0") {
  // Invariant of the one spin policy (detail::spin_until): spinning is a shortcut only, every
  // caller is correct with 0 polls. Here each blocking call goes straight from its one attempt
  // to the event count's prepare_wait / re-check / sleep: a lost wake-up would hang.
  spindle::bounded_queue<int> q(1, {.spin = 0, .yields = 0});
  check_hand_offs(q, 20000);
  spindle::spsc_queue<int> s(1, {.spin = 0, .yields = 0});
  check_hand_offs(s, 20000);
  spindle::spsc_queue<int> y(1, {.spin = 0, .yields = 4});  // yields only, no pause
  check_hand_offs(y, 20000);
}
