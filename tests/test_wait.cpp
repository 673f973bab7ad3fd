#include <doctest/doctest.h>

#include <spindle/detail/wait.hpp>

#include <atomic>
#include <chrono>
#include <thread>

#include "support/threads.hpp"

using namespace std::chrono_literals;
using spindle::detail::event_count;

namespace {
// The waiter side of the event_count protocol, for a flag.
void wait_for_flag(event_count& ec, const std::atomic<bool>& flag) {
  while (!flag.load(std::memory_order_acquire)) {
    auto key = ec.prepare_wait();
    if (flag.load(std::memory_order_acquire)) {
      ec.cancel_wait();
      break;
    }
    ec.wait(key);
  }
}
}  // namespace

TEST_CASE("event_count wakes a sleeping waiter once the condition is set") {
  event_count ec;
  std::atomic<bool> flag{false};
  test_support::thread_group g;
  g.spawn([&] { wait_for_flag(ec, flag); });
  flag.store(true, std::memory_order_release);
  ec.notify_all();
  CHECK(g.join_within(30s));
  CHECK(ec.waiters() == 0);
}

TEST_CASE("event_count loses no wake-up over many hand-offs between two threads") {
  event_count ping, pong;
  std::atomic<int> turn{0};
  constexpr int rounds = 20000;
  test_support::thread_group g;
  g.spawn([&] {
    for (int i = 0; i < rounds; ++i) {
      while (turn.load(std::memory_order_acquire) != 2 * i + 1) {
        auto k = pong.prepare_wait();
        if (turn.load(std::memory_order_acquire) == 2 * i + 1) {
          pong.cancel_wait();
          break;
        }
        pong.wait(k);
      }
      turn.store(2 * i + 2, std::memory_order_release);
      ping.notify_one();
    }
  });
  for (int i = 0; i < rounds; ++i) {
    turn.store(2 * i + 1, std::memory_order_release);
    pong.notify_one();
    while (turn.load(std::memory_order_acquire) != 2 * i + 2) {
      auto k = ping.prepare_wait();
      if (turn.load(std::memory_order_acquire) == 2 * i + 2) {
        ping.cancel_wait();
        break;
      }
      ping.wait(k);
    }
  }
  CHECK(g.join_within(60s));
  CHECK(turn.load() == 2 * rounds);
}

TEST_CASE("event_count wait_until returns false when the deadline passes without a notify") {
  event_count ec;
  auto key = ec.prepare_wait();
  CHECK_FALSE(ec.wait_until(key, event_count::clock::now() + 1ms));
  CHECK(ec.waiters() == 0);
  key = ec.prepare_wait();
  CHECK_FALSE(ec.wait_until(key, event_count::clock::now() - 1s));  // already past
}

TEST_CASE("event_count wait_until returns true when notified before the deadline") {
  event_count ec;
  auto key = ec.prepare_wait();
  ec.notify_one();  // the epoch moves: the wait returns at once
  CHECK(ec.wait_until(key, event_count::clock::now() + 1h));
}

TEST_CASE("event_count wait with a stop token returns when a stop is requested") {
  event_count ec;
  std::stop_source stop;
  test_support::thread_group g;
  std::atomic<bool> stopped{false};
  g.spawn([&] {
    auto st = stop.get_token();
    while (!st.stop_requested()) {
      auto k = ec.prepare_wait();
      ec.wait(k, st);
    }
    stopped = true;
  });
  stop.request_stop();
  CHECK(g.join_within(30s));
  CHECK(stopped.load());
}

TEST_CASE("notify with no waiter does nothing and costs no epoch change") {
  event_count ec;
  ec.notify_all();
  auto k = ec.prepare_wait();
  ec.cancel_wait();
  ec.notify_one();
  CHECK(ec.prepare_wait() == k);
  ec.cancel_wait();
}

using spindle::detail::wait_set;

TEST_CASE("wait_set loses no wake-up over many hand-offs between two threads") {
  wait_set ping, pong;
  std::atomic<int> turn{0};
  constexpr int rounds = 20000;
  auto await = [](wait_set& ws, std::atomic<int>& t, int want) {
    while (t.load(std::memory_order_acquire) != want) {
      auto k = ws.prepare_wait();
      if (t.load(std::memory_order_acquire) == want) {
        ws.cancel_wait(k);
        break;
      }
      ws.wait(k);
    }
  };
  test_support::thread_group g;
  g.spawn([&] {
    for (int i = 0; i < rounds; ++i) {
      await(pong, turn, 2 * i + 1);
      turn.store(2 * i + 2, std::memory_order_release);
      ping.notify();
    }
  });
  for (int i = 0; i < rounds; ++i) {
    turn.store(2 * i + 1, std::memory_order_release);
    pong.notify();
    await(ping, turn, 2 * i + 2);
  }
  CHECK(g.join_within(60s));
  CHECK(turn.load() == 2 * rounds);
}

TEST_CASE("wait_set notify clears the registrations of the epoch it ends") {
  wait_set ws;
  auto k = ws.prepare_wait();
  CHECK(ws.waiters() == 1);
  ws.notify();
  CHECK(ws.waiters() == 0);  // the next notify costs a load, not a wake-up call
  ws.wait(k);                // the epoch moved: returns at once
  ws.cancel_wait(k);         // a stale key changes nothing
  CHECK(ws.waiters() == 0);
}

TEST_CASE("wait_set wait_until returns false at the deadline and withdraws the waiter") {
  wait_set ws;
  auto k = ws.prepare_wait();
  CHECK_FALSE(ws.wait_until(k, wait_set::clock::now() + 1ms));
  CHECK(ws.waiters() == 0);
}

TEST_CASE("wait_set wait with a stop token returns when a stop is requested") {
  wait_set ws;
  std::stop_source stop;
  test_support::thread_group g;
  g.spawn([&] {
    auto st = stop.get_token();
    while (!st.stop_requested()) ws.wait(ws.prepare_wait(), st);
  });
  stop.request_stop();
  CHECK(g.join_within(30s));
  CHECK(ws.waiters() == 0);
}
