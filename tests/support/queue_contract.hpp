// tests/support/queue_contract.hpp - the channel contract tests every in-process queue passes:
// every status of every operation, value untouched on failure, element lifetime, close,
// timeouts, one producer and one consumer blocking on each other. Each test is a doctest
// template over a queue family; a test file runs them all for its queue with
//
//   SPINDLE_QUEUE_CONTRACT(my_family)   // my_family::queue<T>, my_family::name
#pragma once

#include <doctest/doctest.h>

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

#include "lifetime.hpp"
#include "threads.hpp"

namespace test_support::contract {

using namespace std::chrono_literals;
using spindle::status;
using test_support::tracked;

template <class Family, class T>
using queue_of = typename Family::template queue<T>;

// A copyable type whose copy constructor throws on demand.
struct throwing_copy {
  static inline bool fail = false;
  int v = 0;
  explicit throwing_copy(int x) : v(x) {}
  throwing_copy(const throwing_copy& o) : v(o.v) {
    if (fail) throw std::runtime_error("copy failed");
  }
  throwing_copy(throwing_copy&&) noexcept = default;
  throwing_copy& operator=(const throwing_copy&) = default;
  throwing_copy& operator=(throwing_copy&&) noexcept = default;
};

TEST_CASE_TEMPLATE_DEFINE(
    "a capacity of zero throws invalid_argument naming the function and the value", Family,
    queue_contract_1) {
  try {
    queue_of<Family, int> q(0);
    FAIL("no exception");
  } catch (const std::invalid_argument& e) {
    std::string what = e.what();
    CHECK(what.find(Family::name) != std::string::npos);
    CHECK(what.find("0") != std::string::npos);
  }
}

TEST_CASE_TEMPLATE_DEFINE("a new queue is empty, open, and reports its capacity", Family,
                          queue_contract_2) {
  queue_of<Family, int> q(5);
  CHECK(q.capacity() == 5);
  CHECK(q.size() == 0);
  CHECK(q.empty());
  CHECK_FALSE(q.closed());
  int out = -1;
  CHECK(q.try_pop(out) == status::empty);
  CHECK(out == -1);
}

TEST_CASE_TEMPLATE_DEFINE("try_push fills the queue to capacity, then returns full", Family,
                          queue_contract_3) {
  for (std::size_t cap : {1u, 3u, 4u, 7u}) {
    queue_of<Family, int> q(cap);
    for (std::size_t i = 0; i < cap; ++i) CHECK(q.try_push(static_cast<int>(i)) == status::ok);
    CHECK(q.size() == cap);
    CHECK(q.try_push(99) == status::full);
    int x = 5;
    CHECK(q.try_push(x) == status::full);
    CHECK(x == 5);
  }
}

TEST_CASE_TEMPLATE_DEFINE(
    "items come out in the order one thread pushed them, across many laps of the ring", Family,
    queue_contract_4) {
  queue_of<Family, std::uint64_t> q(3);  // not a power of two: the modulo path
  std::uint64_t next_out = 0;
  for (std::uint64_t i = 0; i < 1000; ++i) {
    REQUIRE(q.push(i) == status::ok);
    if (i % 2 == 1) {
      std::uint64_t v = 0;
      REQUIRE(q.try_pop(v) == status::ok);
      CHECK(v == next_out++);
      REQUIRE(q.pop(v) == status::ok);
      CHECK(v == next_out++);
    }
  }
  CHECK(q.empty());
}

TEST_CASE_TEMPLATE_DEFINE("push of an lvalue copies it and leaves the original intact", Family,
                          queue_contract_5) {
  queue_of<Family, std::string> q(2);
  std::string s = "hello";
  CHECK(q.push(s) == status::ok);
  CHECK(s == "hello");
  CHECK(q.push_for(s, 1s) == status::ok);
  std::string out;
  CHECK(q.pop(out) == status::ok);
  CHECK(out == "hello");
}

TEST_CASE_TEMPLATE_DEFINE("a failed try_push leaves a move-only value untouched", Family,
                          queue_contract_6) {
  queue_of<Family, std::unique_ptr<int>> q(1);
  CHECK(q.try_push(std::make_unique<int>(1)) == status::ok);
  auto p = std::make_unique<int>(2);
  CHECK(q.try_push(std::move(p)) == status::full);
  REQUIRE(p != nullptr);
  CHECK(*p == 2);
  q.close();
  CHECK(q.try_push(std::move(p)) == status::closed);
  CHECK(q.push(std::move(p)) == status::closed);
  CHECK(q.push_for(std::move(p), 1ms) == status::closed);
  REQUIRE(p != nullptr);
  std::unique_ptr<int> out;
  CHECK(q.pop(out) == status::ok);
  CHECK(*out == 1);
}

TEST_CASE_TEMPLATE_DEFINE(
    "values are not moved from on full, timeout or closed, and no object leaks", Family,
    queue_contract_7) {
  tracked::registry reg;
  {
    queue_of<Family, tracked> q(2);
    tracked a(&reg, 1), b(&reg, 2), c(&reg, 3);
    CHECK(q.push(std::move(a)) == status::ok);
    CHECK(q.push(b) == status::ok);  // copy
    long moves = reg.moves.load();
    CHECK(q.try_push(std::move(c)) == status::full);
    CHECK(q.push_for(std::move(c), 1ms) == status::timeout);
    CHECK_FALSE(c.moved_from());
    CHECK(reg.moves.load() == moves);
    q.close();
    CHECK(q.push(std::move(c)) == status::closed);
    CHECK(q.try_push(c) == status::closed);
    CHECK_FALSE(c.moved_from());
    CHECK(c.value() == 3);
    tracked out(&reg, 0);
    CHECK(q.pop(out) == status::ok);
    CHECK(out.value() == 1);
    // one item stays queued: the destructor destroys it
  }
  CHECK(reg.alive.load() == 0);
  CHECK(reg.errors.load() == 0);
  CHECK(reg.constructed.load() == reg.destroyed.load());
}

TEST_CASE_TEMPLATE_DEFINE("a throwing copy leaves the queue as it was", Family, queue_contract_8) {
  queue_of<Family, throwing_copy> q(2);
  throwing_copy v(7);
  throwing_copy::fail = true;
  CHECK_THROWS_AS(q.push(v), std::runtime_error);
  CHECK_THROWS_AS(q.try_push(v), std::runtime_error);
  throwing_copy::fail = false;
  CHECK(q.empty());
  CHECK(q.push(v) == status::ok);
  throwing_copy out(0);
  CHECK(q.try_pop(out) == status::ok);
  CHECK(out.v == 7);
}

TEST_CASE_TEMPLATE_DEFINE("pop after close drains what was pushed, then returns closed", Family,
                          queue_contract_9) {
  queue_of<Family, int> q(4);
  CHECK(q.push(1) == status::ok);
  CHECK(q.push(2) == status::ok);
  q.close();
  q.close();  // idempotent
  CHECK(q.closed());
  int out = 0;
  CHECK(q.pop(out) == status::ok);
  CHECK(out == 1);
  CHECK(q.try_pop(out) == status::ok);
  CHECK(out == 2);
  out = -1;
  CHECK(q.pop(out) == status::closed);
  CHECK(q.try_pop(out) == status::closed);
  CHECK(q.pop_for(out, 1s) == status::closed);
  std::stop_source stop;
  CHECK(q.pop(out, stop.get_token()) == status::closed);
  CHECK(out == -1);
  CHECK(q.pop() == std::nullopt);
}

TEST_CASE_TEMPLATE_DEFINE(
    "the optional pop returns the items, then nullopt once closed and drained", Family,
    queue_contract_10) {
  queue_of<Family, int> q(4);
  q.push(10);
  q.push(11);
  q.close();
  CHECK(q.pop() == std::optional<int>(10));
  CHECK(q.pop() == std::optional<int>(11));
  CHECK_FALSE(q.pop().has_value());
}

TEST_CASE_TEMPLATE_DEFINE("pop_for returns timeout on an empty queue and ok when an item is there",
                          Family, queue_contract_11) {
  queue_of<Family, int> q(2);
  int out = 0;
  CHECK(q.pop_for(out, 1ms) == status::timeout);
  CHECK(q.pop_for(out, 0ms) == status::timeout);
  CHECK(q.pop_for(out, -5ms) == status::timeout);
  q.push(4);
  CHECK(q.pop_for(out, 0ms) == status::ok);
  CHECK(out == 4);
  q.push(5);
  CHECK(q.pop_for(out, std::chrono::hours(24 * 365 * 1000)) == status::ok);  // no overflow
  CHECK(out == 5);
}

TEST_CASE_TEMPLATE_DEFINE("push_for returns timeout on a full queue and ok when there is room",
                          Family, queue_contract_12) {
  queue_of<Family, int> q(1);
  CHECK(q.push_for(1, 1ms) == status::ok);
  CHECK(q.push_for(2, 1ms) == status::timeout);
  CHECK(q.push_for(2, 0ms) == status::timeout);
  CHECK(q.size() == 1);
}

TEST_CASE_TEMPLATE_DEFINE("a blocked pop returns the item another thread pushes", Family,
                          queue_contract_13) {
  queue_of<Family, int> q(1);
  std::atomic<int> got{0};
  status result = status::empty;
  test_support::thread_group g;
  g.spawn([&] {
    int v = 0;
    result = q.pop(v);
    got = v;
  });
  CHECK(q.push(42) == status::ok);
  REQUIRE(g.join_within(30s));
  CHECK(result == status::ok);
  CHECK(got.load() == 42);
}

TEST_CASE_TEMPLATE_DEFINE("a blocked push completes once another thread pops", Family,
                          queue_contract_14) {
  queue_of<Family, int> q(1);
  q.push(1);
  status result = status::empty;
  test_support::thread_group g;
  g.spawn([&] { result = q.push(2); });
  int v = 0;
  CHECK(q.pop(v) == status::ok);
  CHECK(v == 1);
  CHECK(q.pop_for(v, 30s) == status::ok);
  CHECK(v == 2);
  REQUIRE(g.join_within(30s));
  CHECK(result == status::ok);
}

TEST_CASE_TEMPLATE_DEFINE("a stop request cancels a blocked pop and a blocked push", Family,
                          queue_contract_15) {
  queue_of<Family, int> q(1);
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

TEST_CASE_TEMPLATE_DEFINE("a stop requested before the call cancels only when the call would block",
                          Family, queue_contract_16) {
  queue_of<Family, int> q(1);
  std::stop_source stop;
  stop.request_stop();
  int v = 0;
  CHECK(q.pop(v, stop.get_token()) == status::cancelled);
  CHECK(q.push(5, stop.get_token()) == status::ok);  // room: no wait, no cancel
  CHECK(q.push(6, stop.get_token()) == status::cancelled);
  CHECK(q.pop(v, stop.get_token()) == status::ok);
  CHECK(v == 5);
}

TEST_CASE_TEMPLATE_DEFINE("size and empty follow pushes and pops", Family, queue_contract_17) {
  queue_of<Family, int> q(3);
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

TEST_CASE_TEMPLATE_DEFINE("a consumer blocked on an empty queue uses next to no CPU", Family,
                          queue_contract_18) {
  queue_of<Family, int> q(4);
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

}  // namespace test_support::contract

#define SPINDLE_QUEUE_CONTRACT(family)                  \
  namespace test_support::contract {                    \
  TEST_CASE_TEMPLATE_INVOKE(queue_contract_1, family);  \
  TEST_CASE_TEMPLATE_INVOKE(queue_contract_2, family);  \
  TEST_CASE_TEMPLATE_INVOKE(queue_contract_3, family);  \
  TEST_CASE_TEMPLATE_INVOKE(queue_contract_4, family);  \
  TEST_CASE_TEMPLATE_INVOKE(queue_contract_5, family);  \
  TEST_CASE_TEMPLATE_INVOKE(queue_contract_6, family);  \
  TEST_CASE_TEMPLATE_INVOKE(queue_contract_7, family);  \
  TEST_CASE_TEMPLATE_INVOKE(queue_contract_8, family);  \
  TEST_CASE_TEMPLATE_INVOKE(queue_contract_9, family);  \
  TEST_CASE_TEMPLATE_INVOKE(queue_contract_10, family); \
  TEST_CASE_TEMPLATE_INVOKE(queue_contract_11, family); \
  TEST_CASE_TEMPLATE_INVOKE(queue_contract_12, family); \
  TEST_CASE_TEMPLATE_INVOKE(queue_contract_13, family); \
  TEST_CASE_TEMPLATE_INVOKE(queue_contract_14, family); \
  TEST_CASE_TEMPLATE_INVOKE(queue_contract_15, family); \
  TEST_CASE_TEMPLATE_INVOKE(queue_contract_16, family); \
  TEST_CASE_TEMPLATE_INVOKE(queue_contract_17, family); \
  TEST_CASE_TEMPLATE_INVOKE(queue_contract_18, family); \
  } /* namespace test_support::contract */              \
  static_assert(true, "")
