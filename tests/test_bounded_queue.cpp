// Tests of spindle/bounded_queue.hpp: every status of every operation, close, cancellation,
// element lifetime, idle CPU use, and a small MPMC conservation check (the heavy one lives in
// stress/test_bounded_queue_stress.cpp).
#include <doctest/doctest.h>

#include <spindle/bounded_queue.hpp>

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
using spindle::bounded_queue;
using spindle::status;
using test_support::tracked;

namespace {
struct family {
  template <class T>
  using queue = spindle::bounded_queue<T>;
  static constexpr const char* name = "bounded_queue";
};
}  // namespace

SPINDLE_QUEUE_CONTRACT(::family);

TEST_CASE("close wakes every blocked consumer and producer with closed") {
  bounded_queue<int> empty_q(1), full_q(1);
  full_q.push(0);
  std::atomic<int> closed_pops{0}, closed_pushes{0};
  test_support::thread_group g;
  for (int i = 0; i < 3; ++i) {
    g.spawn([&] {
      int v = 0;
      if (empty_q.pop(v) == status::closed) ++closed_pops;
    });
    g.spawn([&] {
      if (full_q.push(1) == status::closed) ++closed_pushes;
    });
  }
  empty_q.close();
  full_q.close();
  REQUIRE(g.join_within(30s));
  CHECK(closed_pops.load() == 3);
  CHECK(closed_pushes.load() == 3);
  int v = -1;
  CHECK(full_q.pop(v) == status::ok);  // the item from before close() survives
  CHECK(v == 0);
}

TEST_CASE("a stop request cancels a blocked pop and a blocked push") {
  bounded_queue<int> q(1);
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
  bounded_queue<int> q(1);
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
  bounded_queue<int> q(3);
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
  bounded_queue<int> q(4);
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

TEST_CASE("two producers and two consumers hand over every item exactly once, FIFO per producer") {
  constexpr std::uint64_t per_producer = 20000;
  bounded_queue<std::uint64_t> q(16);
  std::atomic<std::uint64_t> count{0}, sum{0};
  std::atomic<bool> order_ok{true};
  test_support::start_gate gate;
  test_support::thread_group producers, consumers;
  for (std::uint64_t p = 0; p < 2; ++p)
    producers.spawn([&, p] {
      gate.wait();
      for (std::uint64_t i = 0; i < per_producer; ++i) q.push((p << 32) | i);
    });
  for (int c = 0; c < 2; ++c)
    consumers.spawn([&] {
      gate.wait();
      std::uint64_t last[2] = {0, 0};
      bool seen[2] = {false, false};
      while (auto v = q.pop()) {
        std::uint64_t p = *v >> 32, i = *v & 0xffffffffu;
        if (seen[p] && i <= last[p]) order_ok = false;
        seen[p] = true;
        last[p] = i;
        count.fetch_add(1, std::memory_order_relaxed);
        sum.fetch_add(*v, std::memory_order_relaxed);
      }
    });
  gate.open();
  REQUIRE(producers.join_within(60s));
  q.close();
  REQUIRE(consumers.join_within(60s));
  std::uint64_t expect = 0;
  for (std::uint64_t p = 0; p < 2; ++p)
    for (std::uint64_t i = 0; i < per_producer; ++i) expect += (p << 32) | i;
  CHECK(count.load() == 2 * per_producer);
  CHECK(sum.load() == expect);
  CHECK(order_ok.load());
}
