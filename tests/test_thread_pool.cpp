// Tests for spindle/thread_pool.hpp.
#include <doctest/doctest.h>

#include <spindle/thread_pool.hpp>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <vector>

#include "support/allocations.hpp"
#include "support/threads.hpp"

using namespace std::chrono_literals;
using spindle::thread_pool;

using test_support::allocations;

TEST_CASE("a pool has the number of workers it was given") {
  thread_pool pool(3);
  CHECK(pool.size() == 3);
  CHECK_FALSE(pool.in_worker());
  thread_pool def;
  CHECK(def.size() >= 1);
}

TEST_CASE("a pool of zero threads is refused with std::invalid_argument") {
  CHECK_THROWS_WITH_AS(thread_pool(0), doctest::Contains("threads must be >= 1, got 0"),
                       std::invalid_argument);
}

TEST_CASE("submit returns a future of the task's value") {
  thread_pool pool(2);
  auto f = pool.submit([] { return 6 * 7; });
  CHECK(f.get() == 42);
  auto g = pool.submit([](int a, int b) { return a - b; }, 10, 3);
  CHECK(g.get() == 7);
  auto v = pool.submit([] {});
  v.get();
}

TEST_CASE("submit accepts move-only tasks and arguments") {
  thread_pool pool(2);
  auto p = std::make_unique<int>(5);
  auto f = pool.submit([p = std::move(p)] { return *p; });
  CHECK(f.get() == 5);
  auto g = pool.submit([](std::unique_ptr<int> q) { return *q + 1; }, std::make_unique<int>(9));
  CHECK(g.get() == 10);
}

TEST_CASE("an exception in a submitted task reaches its future") {
  thread_pool pool(2);
  auto f = pool.submit([]() -> int { throw std::runtime_error("task failed"); });
  CHECK_THROWS_WITH_AS(f.get(), "task failed", std::runtime_error);
  CHECK(pool.submit([] { return 1; }).get() == 1);  // the pool goes on
}

TEST_CASE("an exception escaping a posted task goes to on_error and the pool goes on") {
  std::mutex mu;
  std::vector<std::exception_ptr> errors;
  thread_pool pool(2, {.on_error = [&](std::exception_ptr e) {
                         std::lock_guard lock(mu);
                         errors.push_back(e);
                       }});
  pool.post([] { throw std::runtime_error("posted"); });
  pool.post([] { throw 7; });
  pool.wait_idle();
  std::lock_guard lock(mu);
  REQUIRE(errors.size() == 2);
  CHECK(pool.submit([] { return 3; }).get() == 3);
}

TEST_CASE("wait_idle returns once every posted task has run") {
  thread_pool pool(2);
  std::atomic<long> sum{0};
  for (int i = 1; i <= 10000; ++i) pool.post([&sum, i] { sum.fetch_add(i, std::memory_order_relaxed); });
  pool.wait_idle();
  CHECK(sum.load() == 10000L * 10001 / 2);
  CHECK(pool.pending() == 0);
  pool.wait_idle();  // idle already: returns at once
}

TEST_CASE("tasks start in submission order on a single worker") {
  thread_pool pool(1);
  std::vector<int> order;  // only the one worker writes it
  for (int i = 0; i < 100; ++i) pool.post([&order, i] { order.push_back(i); });
  pool.wait_idle();
  REQUIRE(order.size() == 100);
  for (int i = 0; i < 100; ++i) CHECK(order[static_cast<std::size_t>(i)] == i);
}

TEST_CASE("post and submit after shutdown throw spindle::closed_error") {
  thread_pool pool(2);
  pool.shutdown();
  CHECK_THROWS_WITH_AS(pool.post([] {}), doctest::Contains("thread_pool::post"),
                       spindle::closed_error);
  CHECK_THROWS_AS(pool.submit([] { return 1; }), spindle::closed_error);
  pool.shutdown();  // idempotent
}

TEST_CASE("the destructor runs every queued task before it returns") {
  std::atomic<int> ran{0};
  {
    thread_pool pool(2);
    for (int i = 0; i < 5000; ++i) pool.post([&] { ran.fetch_add(1, std::memory_order_relaxed); });
  }
  CHECK(ran.load() == 5000);
}

TEST_CASE("tasks that submit tasks during shutdown all run, nothing is dropped") {
  std::atomic<int> ran{0};
  thread_pool pool(2);
  // Each seed task spawns a chain of 50 follow-ups, most of them after shutdown() began.
  struct chain {
    thread_pool* pool;
    std::atomic<int>* ran;
    int left;
    void operator()() const {
      ran->fetch_add(1, std::memory_order_relaxed);
      if (left > 0) pool->post(chain{pool, ran, left - 1});
    }
  };
  test_support::start_gate gate;
  pool.post([&gate] { gate.wait(); });  // holds one worker until shutdown() is under way
  for (int i = 0; i < 20; ++i) pool.post(chain{&pool, &ran, 50});
  test_support::thread_group g;
  g.spawn([&] { pool.shutdown(); });
  gate.open();
  REQUIRE(g.join_within(60s));
  CHECK(ran.load() == 20 * 51);
}

TEST_CASE("shutdown from another thread while tasks are queued drains them") {
  std::atomic<int> ran{0};
  thread_pool pool(1);
  test_support::start_gate gate;
  pool.post([&gate] { gate.wait(); });
  for (int i = 0; i < 100; ++i) pool.post([&] { ran.fetch_add(1, std::memory_order_relaxed); });
  test_support::thread_group g;
  g.spawn([&] { pool.shutdown(); });
  g.spawn([&] { pool.shutdown(); });  // a concurrent second shutdown also waits for the join
  gate.open();
  REQUIRE(g.join_within(60s));
  CHECK(ran.load() == 100);
}

TEST_CASE("wait_idle and shutdown from inside a worker throw std::logic_error") {
  thread_pool pool(2);
  auto f = pool.submit([&pool] { pool.wait_idle(); });
  CHECK_THROWS_WITH_AS(f.get(), doctest::Contains("wait_idle"), std::logic_error);
  auto g = pool.submit([&pool] { pool.shutdown(); });
  CHECK_THROWS_WITH_AS(g.get(), doctest::Contains("shutdown"), std::logic_error);
  CHECK(pool.submit([&pool] { return pool.in_worker(); }).get());
}

TEST_CASE("a blocking get inside a worker runs queued tasks instead of deadlocking") {
  thread_pool pool(1);  // one worker: the inner task can only run if the outer one helps
  auto outer = pool.submit([&pool] {
    auto inner = pool.submit([] { return 20; });
    return inner.get() + 1;
  });
  REQUIRE(outer.wait_for(60s) == spindle::status::ok);
  CHECK(outer.get() == 21);
}

TEST_CASE("nested blocking gets on every worker finish (recursive fan-out)") {
  thread_pool pool(2);
  struct fib {
    thread_pool* pool;
    int operator()(int n) const {
      if (n < 2) return n;
      auto a = pool->submit(*this, n - 1);
      auto b = pool->submit(*this, n - 2);
      return a.get() + b.get();
    }
  };
  auto f = pool.submit(fib{&pool}, 15);
  REQUIRE(f.wait_for(60s) == spindle::status::ok);
  CHECK(f.get() == 610);
}

TEST_CASE("posting a small task does not allocate") {
  thread_pool pool(2);
  std::atomic<int> ran{0};
  pool.post([&] { ran.fetch_add(1, std::memory_order_relaxed); });  // warm up
  pool.wait_idle();
  long before = allocations;
  for (int i = 0; i < 500; ++i) pool.post([&ran] { ran.fetch_add(1, std::memory_order_relaxed); });
  long during = allocations - before;
  pool.wait_idle();
  CHECK(during == 0);
  CHECK(ran.load() == 501);
}

TEST_CASE("submit allocates only the future's shared state") {
  thread_pool pool(1);
  pool.submit([] { return 0; }).get();  // warm up
  long before = allocations;
  auto f = pool.submit([] { return 1; });
  long during = allocations - before;
  CHECK(f.get() == 1);
  CHECK(during == 1);
}

TEST_CASE("submitters on several threads lose no task") {
  thread_pool pool(2);
  std::atomic<long> sum{0};
  test_support::start_gate gate;
  test_support::thread_group g;
  for (int t = 0; t < 3; ++t)
    g.spawn([&] {
      gate.wait();
      for (int i = 1; i <= 2000; ++i) pool.post([&sum, i] { sum.fetch_add(i, std::memory_order_relaxed); });
    });
  gate.open();
  REQUIRE(g.join_within(60s));
  pool.wait_idle();
  CHECK(sum.load() == 3L * 2000 * 2001 / 2);
}

TEST_CASE("workers that went to sleep wake for each new task") {
  thread_pool pool(2, {.spin = 64});
  pool.submit([] {}).get();
  pool.wait_idle();
  // With a short spin the workers sleep between these tasks: no wake-up may be lost.
  for (int i = 0; i < 50; ++i) CHECK(pool.submit([i] { return i; }).get() == i);
}
