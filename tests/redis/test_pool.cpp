// Tests of spindle/redis/pool.hpp against a real redis-server: threads sharing a pool, a blocked
// command not blocking others, the acquire timeout, and recovery of broken connections.
#include <spindle/redis/pool.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <string>

#include "support/redis_server.hpp"
#include "support/threads.hpp"

namespace redis = spindle::redis;
using namespace std::chrono_literals;
using test_support::redis_server;

namespace {
using test_support::local_options;
}  // namespace

TEST_CASE("a pool refuses zero connections") {
  CHECK_THROWS_AS(redis::pool(redis::options{}, {.max_connections = 0}), std::invalid_argument);
}

TEST_CASE("threads sharing a pool never exceed max_connections and lose no increment") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::pool p(local_options(srv.port()), {.max_connections = 2});
  constexpr int threads = 4, per_thread = 300;
  test_support::start_gate gate;
  test_support::thread_group g;
  std::atomic<std::int64_t> sum{0};
  for (int t = 0; t < threads; ++t)
    g.spawn([&] {
      gate.wait();
      for (int i = 0; i < per_thread; ++i)
        sum.fetch_add(p.command("INCR", "n").integer(), std::memory_order_relaxed);
    });
  gate.open();
  REQUIRE(g.join_within(60s));
  constexpr std::int64_t n = threads * per_thread;
  CHECK(p.command("GET", "n").integer() == n);
  CHECK(sum.load() == n * (n + 1) / 2);  // every INCR result seen exactly once
  CHECK(p.size() <= 2);
}

TEST_CASE("a command blocked on one pooled connection does not block another thread's") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::pool p(local_options(srv.port()), {.max_connections = 2});
  test_support::thread_group g;
  std::atomic<bool> popped{false};
  g.spawn([&] {
    auto r = p.command("BLPOP", "jobs", 20);  // waits until the push below
    popped.store(r[1].str() == "job", std::memory_order_relaxed);
  });
  // The second connection serves pushes while the first is blocked (LPUSH wakes the BLPOP).
  CHECK(p.command("LPUSH", "jobs", "job").integer() >= 0);
  REQUIRE(g.join_within(30s));
  CHECK(popped.load());
}

TEST_CASE("acquire_for returns nullopt while every connection is leased, then succeeds") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::pool p(local_options(srv.port()), {.max_connections = 1, .acquire_timeout = 50ms});
  {
    auto held = p.acquire();
    CHECK_FALSE(p.acquire_for(10ms).has_value());
    CHECK_THROWS_AS(p.acquire(), redis::error);
    CHECK(held->command("PING").str() == "PONG");
  }
  auto again = p.acquire_for(1s);
  REQUIRE(again.has_value());
  CHECK((*again)->command("PING").str() == "PONG");
}

TEST_CASE("a lease given back with unread replies is reset before its next use") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::pool p(local_options(srv.port()), {.max_connections = 1});
  {
    auto l = p.acquire();
    l->append("SET", "a", "1");
    l->append("GET", "a");  // never read
  }
  auto l = p.acquire();
  CHECK(l->pending() == 0);
  CHECK(l->command("ECHO", "mine").str() == "mine");
}

TEST_CASE("a failed connect gives its slot back") {
  if (!redis_server::available()) return;
  std::uint16_t port = 0;
  {
    redis_server srv;  // learn a port, then free it
    port = srv.port();
  }
  redis::pool p(local_options(port), {.max_connections = 1});
  CHECK_THROWS_AS(p.command("PING"), redis::error);
  CHECK(p.size() == 0);
  CHECK_THROWS_AS(p.command("PING"), redis::error);  // not "no connection free"
}
