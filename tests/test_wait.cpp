#include <doctest/doctest.h>

#include <spindle/detail/ring.hpp>  // queue_spin
#include <spindle/detail/wait.hpp>

#include <atomic>
#include <chrono>
#include <thread>
#include <type_traits>

#include "support/threads.hpp"

using namespace std::chrono_literals;
using spindle::detail::wake_one_event_count;

namespace {
// The waiter side of the wake_one_event_count protocol, for a flag.
void wait_for_flag(wake_one_event_count& ec, const std::atomic<bool>& flag) {
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

TEST_CASE("wake_one_event_count wakes a sleeping waiter once the condition is set") {
  wake_one_event_count ec;
  std::atomic<bool> flag{false};
  test_support::thread_group g;
  g.spawn([&] { wait_for_flag(ec, flag); });
  flag.store(true, std::memory_order_release);
  ec.notify_all();
  CHECK(g.join_within(30s));
  CHECK(ec.waiters() == 0);
}

TEST_CASE("wake_one_event_count loses no wake-up over many hand-offs between two threads") {
  wake_one_event_count ping, pong;
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

TEST_CASE("wake_one_event_count wait_until returns false when the deadline passes without a notify") {
  wake_one_event_count ec;
  auto key = ec.prepare_wait();
  CHECK_FALSE(ec.wait_until(key, wake_one_event_count::clock::now() + 1ms));
  CHECK(ec.waiters() == 0);
  key = ec.prepare_wait();
  CHECK_FALSE(ec.wait_until(key, wake_one_event_count::clock::now() - 1s));  // already past
}

TEST_CASE("wake_one_event_count wait_until returns true when notified before the deadline") {
  wake_one_event_count ec;
  auto key = ec.prepare_wait();
  ec.notify_one();  // the epoch moves: the wait returns at once
  CHECK(ec.wait_until(key, wake_one_event_count::clock::now() + 1h));
}

TEST_CASE("wake_one_event_count wait with a stop token returns when a stop is requested") {
  wake_one_event_count ec;
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
  wake_one_event_count ec;
  ec.notify_all();
  auto k = ec.prepare_wait();
  ec.cancel_wait();
  ec.notify_one();
  CHECK(ec.prepare_wait() == k);
  ec.cancel_wait();
}

using spindle::detail::wake_all_event_count;

TEST_CASE("wake_all_event_count loses no wake-up over many hand-offs between two threads") {
  wake_all_event_count ping, pong;
  std::atomic<int> turn{0};
  constexpr int rounds = 20000;
  auto await = [](wake_all_event_count& ws, std::atomic<int>& t, int want) {
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

TEST_CASE("wake_all_event_count notify clears the registrations of the epoch it ends") {
  wake_all_event_count ws;
  auto k = ws.prepare_wait();
  CHECK(ws.waiters() == 1);
  ws.notify();
  CHECK(ws.waiters() == 0);  // the next notify costs a load, not a wake-up call
  ws.wait(k);                // the epoch moved: returns at once
  ws.cancel_wait(k);         // a stale key changes nothing
  CHECK(ws.waiters() == 0);
}

TEST_CASE("wake_all_event_count wait_until returns false at the deadline and withdraws the waiter") {
  wake_all_event_count ws;
  auto k = ws.prepare_wait();
  CHECK_FALSE(ws.wait_until(k, wake_all_event_count::clock::now() + 1ms));
  CHECK(ws.waiters() == 0);
}

TEST_CASE("wake_all_event_count wait with a stop token returns when a stop is requested") {
  wake_all_event_count ws;
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

TEST_CASE("spin_until stops polling as soon as the condition holds, and gives up after the budget") {
  int polls = 0;
  CHECK(spindle::detail::spin_until([&] { return ++polls == 5; }, 100));
  CHECK(polls == 5);
  polls = 0;
  CHECK_FALSE(spindle::detail::spin_until([&] { return ++polls < 0; }, 100));
  CHECK(polls == 101);  // 100 polls and the final answer
  CHECK_FALSE(spindle::detail::spin_until([] { return false; }, 0));
}

TEST_CASE("respin_until waits before each poll and stops at its budget, with or without yields") {
  int polls = 0;
  CHECK_FALSE(spindle::detail::respin_until([&] { return ++polls < 0; },
                                            spindle::detail::spin_budget{10, 4}));
  CHECK(polls == 10);  // no poll before the first wait: the caller has just polled
  polls = 0;
  CHECK_FALSE(spindle::detail::respin_until([&] { return ++polls < 0; },
                                            spindle::detail::spin_budget{50, 1}));
  CHECK(polls == 50);  // every wait a yield
  polls = 0;
  CHECK(spindle::detail::respin_until([&] { return ++polls == 3; },
                                      spindle::detail::spin_budget{10, 0}));  // 0: never yields
  CHECK(polls == 3);
  polls = 0;
  CHECK_FALSE(spindle::detail::spin_until([&] { return ++polls < 0; },
                                          spindle::detail::spin_budget{0, 0}));
  CHECK(polls == 1);  // a zero budget still answers once
}

TEST_CASE("queue_options become a spin budget once, with the yields spread evenly and saturating") {
  using spindle::detail::queue_spin;
  auto d = queue_spin(spindle::queue_options{});
  CHECK(d.polls == 1024 + 16);
  CHECK(d.yield_every == 1024 / 16 + 1);
  auto none = queue_spin({.spin = 0, .yields = 0});
  CHECK(none.polls == 0);
  CHECK(none.yield_every == 0);
  auto huge = queue_spin({.spin = UINT32_MAX, .yields = UINT32_MAX});
  CHECK(huge.polls == UINT_MAX);  // the sum saturates instead of wrapping to a tiny budget
  CHECK(huge.yield_every == 2);
}

TEST_CASE("adaptive_spin halves its budget when the waiter slept anyway and doubles it when a spin paid") {
  spindle::detail::adaptive_spin a(16, 2000);
  CHECK(a.budget() == 2000);
  auto r = a.spin([] { return true; });  // ready at once: nothing learnt
  CHECK_FALSE(r.spun);
  a.learn(r, false);
  CHECK(a.budget() == 2000);
  for (int i = 0; i < 12; ++i) a.learn(a.spin([] { return false; }), true);
  CHECK(a.budget() == 16);  // held at the floor
  int polls = 0;
  r = a.spin([&] { return ++polls == 5; });  // came during the spin
  CHECK(r.spun);
  CHECK(polls == 5);
  a.learn(r, false);
  CHECK(a.budget() == 32);
  for (int i = 0; i < 12; ++i) {
    int k = 0;
    a.learn(a.spin([&] { return ++k == 2; }), false);
  }
  CHECK(a.budget() == 2000);  // held at the ceiling
}

TEST_CASE("ring_index maps positions with a mask for powers of two (1 included) and a modulo otherwise") {
  for (std::size_t cap : {1u, 2u, 3u, 7u, 8u, 1000u, 1024u}) {
    CAPTURE(cap);
    spindle::detail::ring_index index(cap);
    CHECK(index.capacity() == cap);
    for (std::uint64_t pos : {0ull, 1ull, 2ull, 7ull, 1023ull, 1024ull, 123456789ull,
                              (1ull << 62) + 5, ~0ull >> 1}) {
      CAPTURE(pos);
      CHECK(index(pos) == pos % cap);
    }
  }
}
