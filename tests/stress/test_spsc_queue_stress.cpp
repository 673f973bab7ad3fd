// Stress for spsc_queue: one producer and one consumer at full speed through small and large
// rings, every push and pop form, close() racing with the producer, lifetime-tracked elements.
// Each run checks conservation (count, checksum) and exact FIFO order. Bounded in iterations.
#include <doctest/doctest.h>

#include <spindle/detail/config.hpp>  // SPINDLE_TSAN: smaller runs under ThreadSanitizer
#include <spindle/spsc_queue.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <stop_token>
#include <thread>

#include "support/lifetime.hpp"
#include "support/threads.hpp"

using namespace std::chrono_literals;
using spindle::spsc_queue;
using spindle::status;
using test_support::tracked;

namespace {

#if defined(SPINDLE_TSAN)
constexpr std::uint64_t items = 20'000;
#else
constexpr std::uint64_t items = 200'000;
#endif

template <class Q, class V>
status push_any(Q& q, V v, std::uint64_t i, std::stop_token st) {
  switch (i % 4) {
    case 0:
      return q.push(std::move(v));
    case 1:
      for (;;) {
        status s = q.try_push(std::move(v));
        if (s != status::full) return s;
        std::this_thread::yield();
      }
    case 2:
      for (;;) {
        status s = q.push_for(std::move(v), 1ms);
        if (s != status::timeout) return s;
      }
    default:
      return q.push(std::move(v), st);
  }
}

template <class Q, class V>
status pop_any(Q& q, V& out, std::uint64_t i, std::stop_token st) {
  switch (i % 5) {
    case 0:
      return q.pop(out);
    case 1:
      for (;;) {
        status s = q.try_pop(out);
        if (s != status::empty) return s;
        std::this_thread::yield();
      }
    case 2:
      for (;;) {
        status s = q.pop_for(out, 1ms);
        if (s != status::timeout) return s;
      }
    case 3: {
      auto v = q.pop();
      if (!v) return status::closed;
      out = std::move(*v);
      return status::ok;
    }
    default:
      return q.pop(out, st);
  }
}

void run_spsc(std::size_t capacity, std::uint64_t pusher_stride, std::uint64_t popper_stride) {
  CAPTURE(capacity);
  // Tiny rings hand over nearly every item through a wake-up: fewer items keep the run short.
  const std::uint64_t items = capacity < 16 ? ::items / 8 : ::items;
  spsc_queue<std::uint64_t> q(capacity);
  std::stop_source never;
  std::uint64_t count = 0, sum = 0;
  bool order_ok = true, push_ok = true;
  test_support::start_gate gate;
  test_support::thread_group producer, consumer;
  producer.spawn([&] {
    gate.wait();
    for (std::uint64_t i = 0; i < items; ++i)
      if (push_any(q, i, i / pusher_stride, never.get_token()) != status::ok) push_ok = false;
    q.close();
  });
  consumer.spawn([&] {
    gate.wait();
    std::uint64_t v = 0;
    for (std::uint64_t i = 0; pop_any(q, v, i / popper_stride, never.get_token()) == status::ok;
         ++i) {
      if (v != count) order_ok = false;
      ++count;
      sum += v;
    }
  });
  gate.open();
  REQUIRE(producer.join_within(120s));
  REQUIRE(consumer.join_within(120s));
  CHECK(push_ok);
  CHECK(order_ok);
  CHECK(count == items);
  CHECK(sum == items * (items - 1) / 2);
}

}  // namespace

TEST_CASE("one producer and one consumer conserve every item, in order, through any ring size") {
  for (std::size_t cap : {1u, 2u, 3u, 64u, 1024u}) run_spsc(cap, 1, 1);
}

TEST_CASE("long runs of one push form and one pop form conserve every item") {
  run_spsc(16, 1000, 777);
  run_spsc(1024, 5000, 3000);
}

TEST_CASE("close racing with a busy producer loses no item that a push reported ok") {
  for (int round = 0; round < 50; ++round) {
    spsc_queue<std::uint64_t> q(8);
    std::atomic<std::uint64_t> pushed_count{0}, pushed_sum{0}, seen{0};
    std::uint64_t popped_count = 0, popped_sum = 0;
    std::stop_source never;
    test_support::start_gate gate;
    test_support::thread_group producer, consumer;
    producer.spawn([&] {
      gate.wait();
      for (std::uint64_t i = 1;; ++i) {
        if (push_any(q, i, i, never.get_token()) != status::ok) break;
        pushed_count.fetch_add(1, std::memory_order_relaxed);
        pushed_sum.fetch_add(i, std::memory_order_relaxed);
      }
    });
    consumer.spawn([&] {
      gate.wait();
      std::uint64_t v = 0;
      for (std::uint64_t i = 0; pop_any(q, v, i, never.get_token()) == status::ok; ++i) {
        ++popped_count;
        popped_sum += v;
        seen.fetch_add(1, std::memory_order_release);
      }
    });
    gate.open();
    auto limit = std::chrono::steady_clock::now() + 30s;
    while (seen.load(std::memory_order_acquire) < 100 + 20 * static_cast<std::uint64_t>(round) &&
           std::chrono::steady_clock::now() < limit)
      std::this_thread::yield();
    q.close();
    REQUIRE(producer.join_within(60s));
    REQUIRE(consumer.join_within(60s));
    CHECK(popped_count == pushed_count.load());
    CHECK(popped_sum == pushed_sum.load());
  }
}

TEST_CASE("tracked elements are neither leaked nor destroyed twice at full speed") {
  tracked::registry reg;
  {
    spsc_queue<tracked> q(3);
    std::stop_source never;
    std::uint64_t sum = 0;
    constexpr std::uint64_t n = items / 10;
    test_support::start_gate gate;
    test_support::thread_group producer, consumer;
    producer.spawn([&] {
      gate.wait();
      for (std::uint64_t i = 0; i < n; ++i) push_any(q, tracked(&reg, i), i, never.get_token());
      q.close();
    });
    consumer.spawn([&] {
      gate.wait();
      tracked out(&reg, 0);
      for (std::uint64_t i = 0; pop_any(q, out, i, never.get_token()) == status::ok; ++i)
        sum += out.value();
    });
    gate.open();
    REQUIRE(producer.join_within(120s));
    REQUIRE(consumer.join_within(120s));
    CHECK(sum == n * (n - 1) / 2);
  }
  CHECK(reg.alive.load() == 0);
  CHECK(reg.errors.load() == 0);
}
