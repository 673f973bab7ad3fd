// Tests of <spindle/channel.hpp> and any_channel at the edges: huge durations, zero durations.
#include <doctest/doctest.h>

#include <spindle/bounded_queue.hpp>
#include <spindle/channel.hpp>
#include <spindle/deadline.hpp>
#include <spindle/spsc_queue.hpp>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

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

namespace {
// One round of a hostile close: `producers` threads push distinct ids with every blocking form
// (push, push with a stop token, push_for with 0, a past, a short and an unlimited timeout,
// try_push), `consumers` threads pop with every form (pop, pop with a stop token, pop_for with
// 0, a past, a short and an unlimited timeout, try_pop, the optional pop()), and close() lands
// in the middle. Afterwards the queue is drained; every id whose push returned ok is popped
// exactly once, every other id never. A lost wake-up hangs (join_within fails).
template <class Q>
void close_race_round(Q& q, int producers, int consumers, int per_producer, int close_after,
                      unsigned seed) {
  const int ids = producers * per_producer;
  std::vector<std::atomic<int>> pushed(static_cast<std::size_t>(ids));
  std::vector<std::atomic<int>> popped(static_cast<std::size_t>(ids));
  std::atomic<int> pushes_ok{0};
  std::atomic<int> producers_done{0};
  std::stop_source never;  // stop tokens whose stop is never requested: the stop forms block
  test_support::thread_group g;
  for (int p = 0; p < producers; ++p) {
    g.spawn([&, p] {
      struct done_on_exit {
        std::atomic<int>& n;
        ~done_on_exit() { n.fetch_add(1); }
      } done{producers_done};
      unsigned r = seed * 7919u + static_cast<unsigned>(p) * 104729u;
      for (int k = 0; k < per_producer; ++k) {
        const int id = p * per_producer + k;
        r = r * 1103515245u + 12345u;
        status s = status::closed;
        int v = id;
        switch ((r >> 16) % 7) {
          case 0: s = q.push(std::move(v)); break;
          case 1: s = q.push(std::move(v), never.get_token()); break;
          case 2: s = q.push_for(std::move(v), 0ns); break;
          case 3: s = q.push_for(std::move(v), -5ms); break;
          case 4: s = q.push_for(std::move(v), 50us); break;
          case 5: s = q.push_for(std::move(v), std::chrono::hours::max()); break;
          default: s = q.try_push(std::move(v)); break;
        }
        if (s == status::ok) {
          pushed[static_cast<std::size_t>(id)].store(1);
          pushes_ok.fetch_add(1);
        } else if (s == status::closed) {
          return;  // closed: every later push would be refused too
        } else {
          CHECK((s == status::full || s == status::timeout));
        }
      }
    });
  }
  std::atomic<int> consumers_closed{0};
  for (int c = 0; c < consumers; ++c) {
    g.spawn([&, c] {
      unsigned r = seed * 31u + static_cast<unsigned>(c) * 7u + 1u;
      for (;;) {
        r = r * 1103515245u + 12345u;
        status s = status::closed;
        int v = -1;
        switch ((r >> 16) % 8) {
          case 0: s = q.pop(v); break;
          case 1: s = q.pop(v, never.get_token()); break;
          case 2: s = q.pop_for(v, 0ns); break;
          case 3: s = q.pop_for(v, -5ms); break;
          case 4: s = q.pop_for(v, 50us); break;
          case 5: s = q.pop_for(v, std::chrono::nanoseconds::max()); break;
          case 6: {
            auto o = q.pop();
            s = o ? status::ok : status::closed;
            if (o) v = *o;
            break;
          }
          default: s = q.try_pop(v); break;
        }
        if (s == status::ok) {
          if (v < 0 || v >= ids) {
            FAIL_CHECK("popped an id nobody pushed: " << v);
            continue;
          }
          popped[static_cast<std::size_t>(v)].fetch_add(1);
        } else if (s == status::closed) {
          consumers_closed.fetch_add(1);
          return;
        } else {
          CHECK((s == status::empty || s == status::timeout));
        }
      }
    });
  }
  // close() after `close_after` successful pushes, or once every producer is done.
  while (pushes_ok.load() < close_after && producers_done.load() < producers)
    std::this_thread::yield();  // waits on the other threads' progress, which they make alone
  q.close();
  REQUIRE(g.join_within(60s));
  CHECK(consumers_closed.load() == consumers);
  int v = 0;
  while (q.try_pop(v) == status::ok) popped[static_cast<std::size_t>(v)].fetch_add(1);
  CHECK(q.try_pop(v) == status::closed);
  int lost = 0, duplicated = 0, invented = 0;
  for (int id = 0; id < ids; ++id) {
    const int want = pushed[static_cast<std::size_t>(id)].load();
    const int got = popped[static_cast<std::size_t>(id)].load();
    if (got > 1) ++duplicated;
    if (want == 1 && got == 0) ++lost;
    if (want == 0 && got != 0) ++invented;
  }
  CHECK(lost == 0);
  CHECK(duplicated == 0);
  CHECK(invented == 0);
}
}  // namespace

TEST_CASE("close racing pushes and pops of every blocking form loses, duplicates and hangs nothing "
          "(capacity 1 and 2, with and without spin)") {
  // Each round closes at another point; the slow path alone (spin 0, yields 0) must be right.
  for (spindle::queue_options o : {spindle::queue_options{.spin = 0, .yields = 0},
                                   spindle::queue_options{}}) {
    for (std::size_t cap : {1, 2}) {
      for (unsigned round = 0; round < 60; ++round) {
        CAPTURE(cap);
        CAPTURE(round);
        CAPTURE(o.spin);
        const int close_after = static_cast<int>(round * 7 % 150);
        {
          spindle::bounded_queue<int> q(cap, o);
          close_race_round(q, 3, 3, 60, close_after, round);
        }
        {
          spindle::spsc_queue<int> q(cap, o);
          close_race_round(q, 1, 1, 150, close_after, round);
        }
      }
    }
  }
}

TEST_CASE("a consumer asleep in pop, pop(st) or pop_for(max) on an empty queue wakes with closed "
          "on close, spin 0") {
  // Attacks the closed path of both queues with nothing but the sleep: the consumer must be
  // asleep (or about to be) when close() lands. Repeated so that close() falls in every window
  // of prepare_wait / re-check / sleep.
  for (int round = 0; round < 300; ++round) {
    CAPTURE(round);
    spindle::bounded_queue<int> b(1, {.spin = 0, .yields = 0});
    spindle::spsc_queue<int> s(2, {.spin = 0, .yields = 0});
    std::stop_source never;
    std::atomic<int> closed{0};
    test_support::thread_group g;
    g.spawn([&] {
      int v = 0;
      if (b.pop(v) == status::closed) closed.fetch_add(1);
      if (b.pop(v, never.get_token()) == status::closed) closed.fetch_add(1);
      if (b.pop_for(v, std::chrono::hours::max()) == status::closed) closed.fetch_add(1);
    });
    g.spawn([&] {
      int v = 0;
      if (s.pop(v, never.get_token()) == status::closed) closed.fetch_add(1);
      if (s.pop_for(v, std::chrono::hours::max()) == status::closed) closed.fetch_add(1);
      if (s.pop(v) == status::closed) closed.fetch_add(1);
    });
    if (round % 3 == 1) std::this_thread::yield();
    if (round % 3 == 2) std::this_thread::sleep_for(50us);  // not a synchronisation: varies the landing point
    b.close();
    s.close();
    REQUIRE(g.join_within(30s));
    CHECK(closed.load() == 6);
  }
}

TEST_CASE("a producer asleep in push, push(st) or push_for(max) on a full queue wakes with closed "
          "on close and its value stays untouched, spin 0") {
  for (int round = 0; round < 300; ++round) {
    CAPTURE(round);
    spindle::bounded_queue<std::string> b(1, {.spin = 0, .yields = 0});
    spindle::spsc_queue<std::string> s(1, {.spin = 0, .yields = 0});
    REQUIRE(b.push(std::string("first")) == status::ok);
    REQUIRE(s.push(std::string("first")) == status::ok);
    std::stop_source never;
    std::atomic<int> untouched{0};
    test_support::thread_group g;
    g.spawn([&] {
      std::string v = "second, long enough to live on the heap";
      if (b.push(std::move(v)) == status::closed && v.size() > 10) untouched.fetch_add(1);
      if (b.push(std::move(v), never.get_token()) == status::closed && v.size() > 10)
        untouched.fetch_add(1);
      if (b.push_for(std::move(v), std::chrono::hours::max()) == status::closed && v.size() > 10)
        untouched.fetch_add(1);
    });
    g.spawn([&] {
      std::string v = "second, long enough to live on the heap";
      if (s.push(std::move(v), never.get_token()) == status::closed && v.size() > 10)
        untouched.fetch_add(1);
      if (s.push_for(std::move(v), std::chrono::hours::max()) == status::closed && v.size() > 10)
        untouched.fetch_add(1);
      if (s.push(std::move(v)) == status::closed && v.size() > 10) untouched.fetch_add(1);
    });
    if (round % 3 == 1) std::this_thread::yield();
    if (round % 3 == 2) std::this_thread::sleep_for(50us);  // not a synchronisation: varies the landing point
    b.close();
    s.close();
    REQUIRE(g.join_within(30s));
    CHECK(untouched.load() == 6);
    std::string out;
    CHECK(b.pop(out) == status::ok);  // closing never loses the item already there
    CHECK(out == "first");
    CHECK(s.pop(out) == status::ok);
    CHECK(b.pop(out) == status::closed);
    CHECK(s.pop(out) == status::closed);
  }
}

TEST_CASE("pop and push with a stop already requested cost about a try, not a spin") {
  // The first attempt is made (an item already there is returned), then `cancelled` at once:
  // the old blocking call spun its whole budget (~20 us) before it looked at the stop token.
  // CPU time of this thread, not wall time: robust on a loaded machine.
  spindle::bounded_queue<int> q(1);
  spindle::spsc_queue<int> s(1);
  std::stop_source stop;
  stop.request_stop();
  int v = 0;
  constexpr int calls = 4000;
  const auto start = test_support::thread_cpu_time();
  for (int i = 0; i < calls; ++i) {
    REQUIRE(q.pop(v, stop.get_token()) == status::cancelled);
    REQUIRE(s.pop(v, stop.get_token()) == status::cancelled);
  }
  REQUIRE(q.push(1) == status::ok);
  REQUIRE(s.push(1) == status::ok);
  for (int i = 0; i < calls; ++i) {
    REQUIRE(q.push(2, stop.get_token()) == status::cancelled);
    REQUIRE(s.push(2, stop.get_token()) == status::cancelled);
  }
  const auto used = test_support::thread_cpu_time() - start;
  CHECK(used < 80ms);
  REQUIRE(q.pop(v, stop.get_token()) == status::ok);  // an item already there is returned
  CHECK(v == 1);
}
