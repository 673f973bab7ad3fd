// Stress test for spindle/thread_pool.hpp: a million tasks from several threads, some of them
// posted by tasks, with a conservation check (count and checksum), then a shutdown race.
#include <doctest/doctest.h>

#include <spindle/thread_pool.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <vector>

#include "support/threads.hpp"

using namespace std::chrono_literals;
using spindle::thread_pool;

namespace {
constexpr std::uint64_t total_tasks = 1'000'000;  // a few seconds even under TSan on 2 cores
}  // namespace

TEST_CASE("a million tasks from three producers and from tasks all run exactly once") {
  thread_pool pool(2);
  constexpr int producers = 3;
  const std::uint64_t per_producer = total_tasks / producers / 2;  // half posted by tasks
  std::atomic<std::uint64_t> count{0};
  std::atomic<std::uint64_t> checksum{0};
  test_support::start_gate gate;
  test_support::thread_group g;
  for (int p = 0; p < producers; ++p) {
    g.spawn([&, p] {
      gate.wait();
      for (std::uint64_t i = 0; i < per_producer; ++i) {
        std::uint64_t id = (static_cast<std::uint64_t>(p) << 40) | i;
        pool.post([&pool, &count, &checksum, id] {
          count.fetch_add(1, std::memory_order_relaxed);
          checksum.fetch_add(id, std::memory_order_relaxed);
          pool.post([&count, &checksum, id] {  // a task posting a task
            count.fetch_add(1, std::memory_order_relaxed);
            checksum.fetch_add(id ^ 0x5555, std::memory_order_relaxed);
          });
        });
      }
    });
  }
  gate.open();
  REQUIRE(g.join_within(300s));
  pool.wait_idle();
  std::uint64_t want_sum = 0;
  for (int p = 0; p < producers; ++p)
    for (std::uint64_t i = 0; i < per_producer; ++i) {
      std::uint64_t id = (static_cast<std::uint64_t>(p) << 40) | i;
      want_sum += id + (id ^ 0x5555);
    }
  CHECK(count.load() == 2 * producers * per_producer);
  CHECK(checksum.load() == want_sum);
}

TEST_CASE("submit and future get under contention deliver every result") {
  thread_pool pool(2);
  constexpr int producers = 2;
  const int per = static_cast<int>(total_tasks / 20);
  std::atomic<std::uint64_t> sum{0};
  test_support::start_gate gate;
  test_support::thread_group g;
  for (int p = 0; p < producers; ++p)
    g.spawn([&] {
      gate.wait();
      std::vector<spindle::future<int>> fs;
      fs.reserve(64);
      for (int i = 0; i < per; ++i) {
        fs.push_back(pool.submit([i] { return i; }));
        if (fs.size() == 64) {
          for (auto& f : fs) sum.fetch_add(static_cast<std::uint64_t>(f.get()));
          fs.clear();
        }
      }
      for (auto& f : fs) sum.fetch_add(static_cast<std::uint64_t>(f.get()));
    });
  gate.open();
  REQUIRE(g.join_within(300s));
  CHECK(sum.load() == producers * static_cast<std::uint64_t>(per) * (per - 1) / 2);
}

TEST_CASE("shutdown racing with self-posting tasks loses nothing, repeatedly") {
  for (int round = 0; round < 50; ++round) {
    std::atomic<int> ran{0};
    {
      thread_pool pool(2);
      for (int i = 0; i < 50; ++i)
        pool.post([&pool, &ran] {
          ran.fetch_add(1, std::memory_order_relaxed);
          for (int k = 0; k < 10; ++k) pool.post([&ran] { ran.fetch_add(1, std::memory_order_relaxed); });
        });
      // the destructor shuts down while tasks still post
    }
    REQUIRE(ran.load() == 50 * 11);
  }
}
