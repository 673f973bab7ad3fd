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
