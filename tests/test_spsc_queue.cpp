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

TEST_CASE("a push fits as soon as a pop made room, and full means full, lap after lap") {
  // One thread, so every answer is exact; tiny rings wrap many times (capacity 3: not a power
  // of two). An index or turn that were stale would say full after a pop made room, or
  // overwrite an unpopped item.
  for (std::size_t cap : {1u, 2u, 3u, 8u}) {
    CAPTURE(cap);
    spsc_queue<int> q(cap);
    int v = -1;
    int next_in = 0, next_out = 0;
    for (int lap = 0; lap < 200; ++lap) {
      CHECK(q.try_pop(v) == status::empty);
      while (q.try_push(next_in) == status::ok) ++next_in;  // fills: the producer's copy is stale
      REQUIRE(static_cast<std::size_t>(next_in - next_out) == cap);
      // One pop makes room: the producer must see it at once, not answer full from its copy.
      REQUIRE(q.try_pop(v) == status::ok);
      CHECK(v == next_out++);
      REQUIRE(q.try_push(next_in) == status::ok);
      ++next_in;
      CHECK(q.try_push(next_in) == status::full);
      // Drain: every item in order, then empty.
      while (q.try_pop(v) == status::ok) CHECK(v == next_out++);
      CHECK(next_out == next_in);
    }
  }
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
