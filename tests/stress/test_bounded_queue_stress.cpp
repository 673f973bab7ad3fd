// Contention stress for bounded_queue: many producers and consumers, every push and pop form,
// small and large capacities, close() racing with pushes. Each run checks conservation (count and
// checksum of what went in against what came out) and FIFO per producer. Bounded in iterations.
#include <doctest/doctest.h>

#include <spindle/bounded_queue.hpp>
#include <spindle/detail/config.hpp>  // SPINDLE_TSAN: smaller runs under ThreadSanitizer

#include <atomic>
#include <chrono>
#include <cstdint>
#include <stop_token>
#include <thread>
#include <vector>

#include "support/lifetime.hpp"
#include "support/threads.hpp"

using namespace std::chrono_literals;
using spindle::bounded_queue;
using spindle::status;
using test_support::tracked;

namespace {

#if defined(SPINDLE_TSAN)
constexpr std::uint64_t items_per_producer = 5'000;
#else
constexpr std::uint64_t items_per_producer = 100'000;
#endif

// An item: producer number in the high bits, sequence number in the low bits.
constexpr std::uint64_t item(std::uint64_t producer, std::uint64_t i) { return producer << 40 | i; }

// Pushes with the form picked by i, retrying the non-blocking and timed forms.
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

// Pops with the form picked by i; returns ok or closed.
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

struct totals {
  std::atomic<std::uint64_t> count{0}, sum{0};
  std::atomic<bool> order_ok{true};
};

void run_mpmc(std::size_t capacity, int producers, int consumers) {
  CAPTURE(capacity);
  // Tiny rings hand over nearly every item through a wake-up: fewer items keep the run short.
  const std::uint64_t items_per_producer =
      capacity < 16 ? ::items_per_producer / 8 : ::items_per_producer;
  CAPTURE(producers);
  CAPTURE(consumers);
  bounded_queue<std::uint64_t> q(capacity);
  std::stop_source never;  // the stop_token forms, never stopped
  totals t;
  test_support::start_gate gate;
  test_support::thread_group ps, cs;
  for (int p = 0; p < producers; ++p)
    ps.spawn([&, p] {
      gate.wait();
      for (std::uint64_t i = 0; i < items_per_producer; ++i)
        if (push_any(q, item(static_cast<std::uint64_t>(p), i), i + static_cast<std::uint64_t>(p),
                     never.get_token()) != status::ok)
          t.order_ok = false;
    });
  for (int c = 0; c < consumers; ++c)
    cs.spawn([&, c] {
      gate.wait();
      std::vector<std::uint64_t> next(static_cast<std::size_t>(producers), 0);
      std::uint64_t v = 0, count = 0, sum = 0;
      for (std::uint64_t i = static_cast<std::uint64_t>(c);
           pop_any(q, v, i, never.get_token()) == status::ok; ++i) {
        auto p = static_cast<std::size_t>(v >> 40);
        std::uint64_t seq = v & ((std::uint64_t{1} << 40) - 1);
        if (seq < next[p]) t.order_ok = false;  // FIFO per producer, as seen by one consumer
        next[p] = seq + 1;
        ++count;
        sum += v;
      }
      t.count += count;
      t.sum += sum;
    });
  gate.open();
  REQUIRE(ps.join_within(120s));
  q.close();
  REQUIRE(cs.join_within(120s));
  std::uint64_t expect = 0;
  for (int p = 0; p < producers; ++p)
    for (std::uint64_t i = 0; i < items_per_producer; ++i)
      expect += item(static_cast<std::uint64_t>(p), i);
  CHECK(t.count.load() == items_per_producer * static_cast<std::uint64_t>(producers));
  CHECK(t.sum.load() == expect);
  CHECK(t.order_ok.load());
}

}  // namespace

TEST_CASE("four producers and four consumers conserve every item through a large queue") {
  run_mpmc(1024, 4, 4);
}

TEST_CASE("four producers and four consumers conserve every item through tiny queues") {
  run_mpmc(1, 4, 4);
  run_mpmc(2, 4, 4);
  run_mpmc(7, 4, 4);
}

TEST_CASE("unbalanced producers and consumers conserve every item") {
  run_mpmc(16, 1, 6);
  run_mpmc(16, 6, 1);
}

TEST_CASE("close racing with busy producers loses no item that a push reported ok") {
  for (int round = 0; round < 20; ++round) {
    bounded_queue<std::uint64_t> q(8);
    std::atomic<std::uint64_t> pushed_count{0}, pushed_sum{0}, popped_count{0}, popped_sum{0};
    std::atomic<std::uint64_t> seen{0};
    test_support::start_gate gate;
    test_support::thread_group ps, cs;
    std::stop_source never;
    for (std::uint64_t p = 0; p < 3; ++p)
      ps.spawn([&, p] {
        gate.wait();
        for (std::uint64_t i = 0;; ++i) {
          std::uint64_t v = item(p, i);
          if (push_any(q, v, i, never.get_token()) != status::ok) break;
          pushed_count += 1;
          pushed_sum += v;
        }
      });
    for (std::uint64_t c = 0; c < 3; ++c)
      cs.spawn([&, c] {
        gate.wait();
        std::uint64_t v = 0;
        for (std::uint64_t i = c; pop_any(q, v, i, never.get_token()) == status::ok; ++i) {
          popped_count += 1;
          popped_sum += v;
          seen.fetch_add(1, std::memory_order_release);
        }
      });
    gate.open();
    // Close once traffic is flowing: a bounded wait on progress, not a sleep.
    auto limit = std::chrono::steady_clock::now() + 30s;
    while (seen.load(std::memory_order_acquire) < 200 + 50 * static_cast<std::uint64_t>(round) &&
           std::chrono::steady_clock::now() < limit)
      std::this_thread::yield();
    q.close();
    REQUIRE(ps.join_within(60s));
    REQUIRE(cs.join_within(60s));
    CHECK(popped_count.load() == pushed_count.load());
    CHECK(popped_sum.load() == pushed_sum.load());
  }
}

TEST_CASE("tracked elements are neither leaked nor destroyed twice under contention") {
  tracked::registry reg;
  {
    bounded_queue<tracked> q(5);
    std::stop_source never;
    std::atomic<std::uint64_t> sum{0};
    test_support::start_gate gate;
    test_support::thread_group ps, cs;
    constexpr std::uint64_t n = items_per_producer / 10;
    for (std::uint64_t p = 0; p < 3; ++p)
      ps.spawn([&, p] {
        gate.wait();
        for (std::uint64_t i = 0; i < n; ++i)
          push_any(q, tracked(&reg, item(p, i)), i, never.get_token());
      });
    for (std::uint64_t c = 0; c < 3; ++c)
      cs.spawn([&, c] {
        gate.wait();
        tracked out(&reg, 0);
        for (std::uint64_t i = c; pop_any(q, out, i, never.get_token()) == status::ok; ++i)
          sum += out.value();
      });
    gate.open();
    REQUIRE(ps.join_within(120s));
    q.close();
    REQUIRE(cs.join_within(120s));
    std::uint64_t expect = 0;
    for (std::uint64_t p = 0; p < 3; ++p)
      for (std::uint64_t i = 0; i < n; ++i) expect += item(p, i);
    CHECK(sum.load() == expect);
  }
  CHECK(reg.alive.load() == 0);
  CHECK(reg.errors.load() == 0);
}

TEST_CASE("stop requests cancel blocked consumers while producers keep every item") {
  bounded_queue<std::uint64_t> q(4);
  std::stop_source stop;
  std::atomic<std::uint64_t> popped{0}, cancelled{0};
  test_support::thread_group cs;
  for (int c = 0; c < 4; ++c)
    cs.spawn([&] {
      std::uint64_t v = 0;
      for (;;) {
        status s = q.pop(v, stop.get_token());
        if (s == status::ok) {
          ++popped;
        } else {
          if (s == status::cancelled) ++cancelled;
          break;
        }
      }
    });
  constexpr std::uint64_t n = 2000;
  for (std::uint64_t i = 0; i < n; ++i) REQUIRE(q.push_for(i, 60s) == status::ok);
  // Wait (bounded) until the consumers took everything, then stop them.
  auto limit = std::chrono::steady_clock::now() + 60s;
  while (popped.load() < n && std::chrono::steady_clock::now() < limit) std::this_thread::yield();
  stop.request_stop();
  REQUIRE(cs.join_within(60s));
  CHECK(popped.load() == n);
  CHECK(cancelled.load() == 4);
}
