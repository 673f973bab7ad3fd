// Tests of spindle/redis/keyed_rate_limit.hpp against a real redis-server: independent keys,
// limits held under contention from threads with their own objects, the fixed window's expiry,
// timed and cancelled waits, retry_after, and that every key a limiter writes expires.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <spindle/redis/keyed_rate_limit.hpp>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "support/redis_server.hpp"
#include "support/threads.hpp"

namespace redis = spindle::redis;
using namespace std::chrono_literals;
using spindle::status;
using test_support::redis_server;

namespace {
using test_support::local_options;
}  // namespace

TEST_CASE("keyed limiters refuse bad arguments with std::invalid_argument") {
  CHECK_THROWS_AS(redis::keyed_fixed_window("", {}, 1, 1s), std::invalid_argument);
  CHECK_THROWS_AS(redis::keyed_fixed_window("k", {}, 0, 1s), std::invalid_argument);
  CHECK_THROWS_AS(redis::keyed_fixed_window("k", {}, 1, 0ms), std::invalid_argument);
  CHECK_THROWS_AS(redis::keyed_sliding_window("k", {}, 1, -1ms), std::invalid_argument);
  CHECK_THROWS_AS(redis::keyed_token_bucket("k", {}, 0.0, 1), std::invalid_argument);
  CHECK_THROWS_AS(redis::keyed_token_bucket("k", {}, 1.0, 0), std::invalid_argument);
  redis::keyed_fixed_window fw("k", {}, 2, 1s);  // connects lazily: no server needed here
  CHECK_FALSE(fw.try_acquire("ip", 3));
  CHECK_THROWS_AS(fw.acquire("ip", 3), std::invalid_argument);
  CHECK_THROWS_AS(fw.acquire_for("ip", 3, 1s), std::invalid_argument);
  CHECK_THROWS_AS(fw.retry_after("ip", 3), std::invalid_argument);
}

TEST_CASE("each key has its own limit: one key's traffic never uses another's room") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::keyed_fixed_window fw("fw", local_options(srv.port()), 3, 60s);
  redis::keyed_sliding_window sw("sw", local_options(srv.port()), 3, 60s);
  redis::keyed_token_bucket tb("tb", local_options(srv.port()), 0.001, 3);
  for (const char* key : {"10.0.0.1", "10.0.0.2", ""}) {
    CHECK(fw.try_acquire(key, 2));
    CHECK(fw.try_acquire(key));
    CHECK_FALSE(fw.try_acquire(key));
    CHECK(sw.try_acquire(key, 3));
    CHECK_FALSE(sw.try_acquire(key));
    CHECK(tb.try_acquire(key, 3));
    CHECK_FALSE(tb.try_acquire(key));
  }
}

TEST_CASE("a fixed window counts at most limit per window, expires with it, and names the wait") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::keyed_fixed_window fw("win", local_options(srv.port()), 2, 1000ms);
  CHECK(fw.retry_after("a") == 0ms);
  CHECK(fw.try_acquire("a", 2));
  CHECK_FALSE(fw.try_acquire("a"));
  auto w = fw.retry_after("a");
  CHECK(w > 0ms);
  CHECK(w <= 1000ms);
  redis::connection c(local_options(srv.port()));
  auto ttl = c.command("PTTL", "{win:a}:fw").integer();
  CHECK(ttl > 0);  // INCR and PEXPIRE in one script: never a counter without expiry
  CHECK(ttl <= 1000);
  CHECK(fw.acquire_for("a", 2, 10s) == status::ok);  // the next window
  CHECK(fw.acquire_for("a", 1, 10ms) == status::timeout);
}

TEST_CASE("threads with their own keyed limiters on one key never exceed its limit together") {
  if (!redis_server::available()) return;
  redis_server srv;
  std::atomic<int> fw_granted{0}, sw_granted{0}, tb_granted{0}, other{0};
  test_support::start_gate gate;
  test_support::thread_group g;
  for (int t = 0; t < 4; ++t)
    g.spawn([&] {
      redis::keyed_fixed_window fw("c", local_options(srv.port()), 30, 60s);
      redis::keyed_sliding_window sw("c", local_options(srv.port()), 20, 60s);
      redis::keyed_token_bucket tb("c", local_options(srv.port()), 0.01, 25);
      gate.wait();
      for (int i = 0; i < 40; ++i) {
        if (fw.try_acquire("user-1")) fw_granted.fetch_add(1, std::memory_order_relaxed);
        if (sw.try_acquire("user-1")) sw_granted.fetch_add(1, std::memory_order_relaxed);
        if (tb.try_acquire("user-1")) tb_granted.fetch_add(1, std::memory_order_relaxed);
        if (i % 10 == 0 && fw.try_acquire("user-2")) other.fetch_add(1);
      }
    });
  gate.open();
  REQUIRE(g.join_within(60s));
  CHECK(fw_granted.load() == 30);
  CHECK(sw_granted.load() == 20);
  CHECK(tb_granted.load() == 25);  // 0.01/s adds no whole token within the test
  CHECK(other.load() == 16);       // user-2 was never short of room
}

TEST_CASE("keyed waits: a sliding window and a token bucket wait for room and time out early") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::keyed_sliding_window sw("w", local_options(srv.port()), 2, 100ms);
  redis::keyed_token_bucket tb("w", local_options(srv.port()), 20.0, 2);  // a token per 50 ms
  CHECK(sw.try_acquire("k", 2));
  sw.acquire("k");  // once the first grants leave the window
  CHECK(sw.acquire_until("k", 2, std::chrono::steady_clock::now() + 10s) == status::ok);
  CHECK(tb.try_acquire("k", 2));
  CHECK(tb.retry_after("k", 2) > 0ms);
  CHECK(tb.acquire_for("k", 2, 1ms) == status::timeout);  // 100 ms away: at once
  CHECK(tb.acquire_for("k", 2, std::chrono::hours::max()) == status::ok);
}

TEST_CASE("a waiting keyed acquire ends promptly with cancelled on a stop request") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::keyed_fixed_window fw("s", local_options(srv.port()), 1, 1000s);
  CHECK(fw.try_acquire("k"));
  std::stop_source s1, s2;
  auto a = std::async(std::launch::async, [&] { return fw.acquire("k", 1, s1.get_token()); });
  auto b = std::async(std::launch::async,
                      [&] { return fw.acquire_for("k", 1, 2000s, s2.get_token()); });
  s1.request_stop();
  s2.request_stop();
  REQUIRE(a.wait_for(10s) == std::future_status::ready);
  REQUIRE(b.wait_for(10s) == std::future_status::ready);
  CHECK(a.get() == status::cancelled);
  CHECK(b.get() == status::cancelled);
}

TEST_CASE("every key a keyed limiter writes expires, so one-off keys leave nothing behind") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::keyed_fixed_window fw("e", local_options(srv.port()), 5, 30s);
  redis::keyed_sliding_window sw("e", local_options(srv.port()), 5, 30s);
  redis::keyed_token_bucket tb("e", local_options(srv.port()), 1.0, 5);
  for (int i = 0; i < 50; ++i) {
    auto key = "ip-" + std::to_string(i);
    CHECK(fw.try_acquire(key));
    CHECK(sw.try_acquire(key));
    CHECK(tb.try_acquire(key));
  }
  redis::connection c(local_options(srv.port()));
  auto keys = c.command("KEYS", "*").elements();
  CHECK(keys.size() == 200);  // fw, sw, sw:seq, tb per key
  for (const auto& k : keys) CHECK(c.command("PTTL", k.str()).integer() > 0);
}
