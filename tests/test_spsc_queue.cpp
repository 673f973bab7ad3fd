// Tests of spindle/spsc_queue.hpp: every status of every operation, close, cancellation,
// element lifetime, idle CPU use, and a small producer/consumer conservation check (the heavy one
// lives in stress/test_spsc_queue_stress.cpp).
#include <doctest/doctest.h>

#include <spindle/spsc_queue.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "support/lifetime.hpp"
#include "support/queue_contract.hpp"
#include "support/threads.hpp"

using namespace std::chrono_literals;
using spindle::spsc_queue;
using spindle::status;
using test_support::tracked;

namespace {
struct family {
  template <class T>
  using queue = spindle::spsc_queue<T>;
  static constexpr const char* name = "spsc_queue";
};
}  // namespace

SPINDLE_QUEUE_CONTRACT(::family);

TEST_CASE("close wakes the blocked consumer and the blocked producer with closed") {
  spsc_queue<int> empty_q(1), full_q(1);
  full_q.push(0);
  std::atomic<int> closed_pops{0}, closed_pushes{0};
  test_support::thread_group g;
  g.spawn([&] {  // the one consumer of empty_q
    int v = 0;
    if (empty_q.pop(v) == status::closed) ++closed_pops;
  });
  g.spawn([&] {  // the one producer of full_q
    if (full_q.push(1) == status::closed) ++closed_pushes;
  });
  empty_q.close();
  full_q.close();
  REQUIRE(g.join_within(30s));
  CHECK(closed_pops.load() == 1);
  CHECK(closed_pushes.load() == 1);
  int v = -1;
  CHECK(full_q.pop(v) == status::ok);  // the item from before close() survives
  CHECK(v == 0);
}

TEST_CASE("a stop request cancels a blocked pop and a blocked push") {
  spsc_queue<int> q(1);
  std::stop_source stop_pop, stop_push;
  status pop_result = status::ok, push_result = status::ok;
  test_support::thread_group g;
  g.spawn([&] {
    int v = 0;
    pop_result = q.pop(v, stop_pop.get_token());
  });
  stop_pop.request_stop();
  REQUIRE(g.join_within(30s));
  CHECK(pop_result == status::cancelled);

  q.push(1);
  g.spawn([&] { push_result = q.push(2, stop_push.get_token()); });
  stop_push.request_stop();
  REQUIRE(g.join_within(30s));
  CHECK(push_result == status::cancelled);
  CHECK(q.size() == 1);
}

TEST_CASE("a stop requested before the call cancels only when the call would block") {
  spsc_queue<int> q(1);
  std::stop_source stop;
  stop.request_stop();
  int v = 0;
  CHECK(q.pop(v, stop.get_token()) == status::cancelled);
  CHECK(q.push(5, stop.get_token()) == status::ok);  // room: no wait, no cancel
  CHECK(q.push(6, stop.get_token()) == status::cancelled);
  CHECK(q.pop(v, stop.get_token()) == status::ok);
  CHECK(v == 5);
}

TEST_CASE("size and empty follow pushes and pops") {
  spsc_queue<int> q(3);
  q.push(1);
  q.push(2);
  CHECK(q.size() == 2);
  int v;
  q.pop(v);
  CHECK(q.size() == 1);
  CHECK_FALSE(q.empty());
  q.pop(v);
  CHECK(q.empty());
}

TEST_CASE("a consumer blocked on an empty queue uses next to no CPU") {
  spsc_queue<int> q(4);
  std::chrono::nanoseconds cpu{0};
  test_support::thread_group g;
  g.spawn([&] {
    auto before = test_support::thread_cpu_time();
    int v = 0;
    auto s = q.pop_for(v, 60s);
    cpu = test_support::thread_cpu_time() - before;
    CHECK(s == status::ok);
  });
  // Not synchronisation: the consumer is meant to wait this long, and must not burn it.
  std::this_thread::sleep_for(400ms);
  q.push(1);
  REQUIRE(g.join_within(30s));
  CHECK(cpu < 100ms);  // a spinning consumer would use most of the 400 ms
}

TEST_CASE("one producer and one consumer hand over every item exactly once, in order") {
  constexpr std::uint64_t n = 50000;
  spsc_queue<std::uint64_t> q(7);
  std::uint64_t count = 0, sum = 0;
  bool order_ok = true;
  test_support::start_gate gate;
  test_support::thread_group producer, consumer;
  producer.spawn([&] {
    gate.wait();
    for (std::uint64_t i = 0; i < n; ++i) {
      // Every push form, so each one meets a full queue now and then.
      if (i % 3 == 0) {
        q.push(i);
      } else if (i % 3 == 1) {
        while (q.try_push(i) == status::full) std::this_thread::yield();
      } else {
        while (q.push_for(i, 1ms) == status::timeout) {
        }
      }
    }
    q.close();
  });
  consumer.spawn([&] {
    gate.wait();
    std::uint64_t expect = 0;
    while (auto v = q.pop()) {
      if (*v != expect) order_ok = false;
      expect = *v + 1;
      ++count;
      sum += *v;
    }
  });
  gate.open();
  REQUIRE(producer.join_within(60s));
  REQUIRE(consumer.join_within(60s));
  CHECK(count == n);
  CHECK(sum == n * (n - 1) / 2);
  CHECK(order_ok);
}

TEST_CASE("a push that races with close either succeeds and is popped, or fails untouched") {
  for (int round = 0; round < 200; ++round) {
    tracked::registry reg;
    {
      spsc_queue<tracked> q(4);
      test_support::start_gate gate;
      test_support::thread_group g;
      std::atomic<int> pushed{0};
      std::atomic<bool> untouched{true};
      g.spawn([&] {
        gate.wait();
        for (int i = 0; i < 8; ++i) {
          tracked t(&reg, static_cast<std::uint64_t>(i));
          status s = q.try_push(std::move(t));
          if (s == status::ok) {
            ++pushed;
          } else if (t.moved_from() || t.value() != static_cast<std::uint64_t>(i)) {
            untouched = false;
          }
        }
      });
      gate.open();
      q.close();
      REQUIRE(g.join_within(30s));
      int popped = 0;
      tracked out(&reg, 0);
      while (q.try_pop(out) == status::ok) ++popped;
      CHECK(q.try_pop(out) == status::closed);
      CHECK(popped == pushed.load());
      CHECK(untouched.load());
    }
    CHECK(reg.alive.load() == 0);
    CHECK(reg.errors.load() == 0);
  }
}
