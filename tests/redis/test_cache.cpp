// Tests of spindle/redis/cache.hpp against a real redis-server: one computation for 50
// concurrent misses over 4 processes, waiters woken by notification (not by re-reading), a dead
// computer's lock taken over, a throwing fn, the negative cache, TTL jitter, and invalidation of
// the in-process level over pub/sub.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <optional>
#include <spindle/redis/cache.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/process.hpp"
#include "support/redis_server.hpp"
#include "support/threads.hpp"

#ifndef SPINDLE_PATTERN_WORKER
#error "SPINDLE_PATTERN_WORKER (the path of tests/redis/pattern_worker) must be defined"
#endif

namespace redis = spindle::redis;
using namespace std::chrono_literals;
using test_support::redis_server;

namespace {

using test_support::local_options;

using test_support::eventually;

}  // namespace

TEST_CASE("cache refuses bad options and bad ttls with std::invalid_argument") {
  CHECK_THROWS_AS(redis::cache<int>("", {}), std::invalid_argument);
  CHECK_THROWS_AS(redis::cache<int>("c", {}, {.lock_lease = 1ms}), std::invalid_argument);
  CHECK_THROWS_AS(redis::cache<int>("c", {}, {.ttl_jitter = 1.0}), std::invalid_argument);
  CHECK_THROWS_AS(redis::cache<int>("c", {}, {.recheck = 0ms}), std::invalid_argument);
  if (!redis_server::available()) return;
  redis_server srv;
  redis::cache<int> c("c", local_options(srv.port()));
  CHECK_THROWS_AS(c.get_or_compute("k", 0ms, [] { return 1; }), std::invalid_argument);
  CHECK_THROWS_AS(c.set("k", 1, 0ms), std::invalid_argument);
}

TEST_CASE("a miss computes and stores the value; a hit does not call fn") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::cache<int> c("basic", local_options(srv.port()), {.ttl_jitter = 0.0});
  int calls = 0;
  CHECK(c.get_or_compute("k", 10s, [&] { return ++calls * 7; }) == 7);
  CHECK(c.get_or_compute("k", 10s, [&] { return ++calls * 7; }) == 7);
  CHECK(calls == 1);
  CHECK(c.stats().computed == 1);
  CHECK(c.stats().hits == 1);
  redis::connection conn(local_options(srv.port()));
  auto ttl = conn.command("PTTL", c.value_key("k")).integer();
  CHECK(ttl > 0);
  CHECK(ttl <= 10000);
  CHECK(conn.command("EXISTS", "{basic:k}:l").integer() == 0);  // the compute lock is gone
}

TEST_CASE("50 concurrent misses over 4 processes call fn once, and all get its value") {
  if (!redis_server::available()) return;
  redis_server srv;
  const int per[4] = {13, 13, 12, 12};
  std::vector<std::unique_ptr<test_support::child>> cs;
  for (int n : per)
    cs.push_back(std::make_unique<test_support::child>(std::vector<std::string>{
        SPINDLE_PATTERN_WORKER, std::to_string(srv.port()), "cache", "xc", std::to_string(n)}));
  redis::connection conn(local_options(srv.port()));
  auto count = [&](const char* k) {
    auto r = conn.command("GET", k);
    return r.is_nil() ? 0 : r.integer();
  };
  // fn blocks until "go": every caller arrives while the one computation is under way.
  REQUIRE(eventually([&] { return count("{xc}:arrived") == 50 && count("{xc}:calls") >= 1; }, 20s,
                     1ms));
  conn.command("RPUSH", "{xc}:go", "1");
  int values = 0;
  for (auto& c : cs) {
    auto r = c->finish(60s);
    INFO("worker stderr: " << r.err);
    CHECK(r.exited(0));
    std::istringstream in(r.out);
    for (std::string line; std::getline(in, line); ++values) CHECK(line == "computed");
  }
  CHECK(values == 50);
  CHECK(count("{xc}:calls") == 1);
}

TEST_CASE("waiters are woken by the computer's notification, not by their periodic re-read") {
  if (!redis_server::available()) return;
  redis_server srv;
  // recheck 60 s: a waiter that relied on re-reading would outlast the bound below.
  redis::cache<std::string> c("wake", local_options(srv.port()),
                              {.lock_lease = 60s, .recheck = 60s});
  std::promise<void> go;
  auto released = go.get_future().share();
  std::atomic<int> calls{0};
  auto call = [&] {
    return c.get_or_compute("k", 10s, [&] {
      calls.fetch_add(1);
      released.wait();
      return std::string("v");
    });
  };
  std::vector<std::future<std::string>> fs;
  for (int i = 0; i < 8; ++i) fs.push_back(std::async(std::launch::async, call));
  REQUIRE(eventually([&] { return calls.load() == 1 && c.waiting() == 7; }, 20s, 1ms));
  auto start = std::chrono::steady_clock::now();
  go.set_value();
  for (auto& f : fs) {
    REQUIRE(f.wait_for(20s) == std::future_status::ready);
    CHECK(f.get() == "v");
  }
  CHECK(std::chrono::steady_clock::now() - start < 20s);  // far below the 60 s re-read
  CHECK(calls.load() == 1);
  CHECK(c.stats().computed == 1);
  CHECK(c.stats().waited + c.stats().hits == 7);  // hits: a lookup still in flight at "go"
}

TEST_CASE("a computer that died holding the lock is taken over once its lock expires") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::cache<int> c("dead", local_options(srv.port()), {.recheck = 60s});
  redis::connection conn(local_options(srv.port()));
  conn.command("SET", "{dead:k}:l", "a-dead-process", "PX", 200);  // it never fills nor releases
  auto f = std::async(std::launch::async, [&] { return c.get_or_compute("k", 10s, [] { return 5; }); });
  REQUIRE(f.wait_for(20s) == std::future_status::ready);  // 60 s recheck: the PTTL woke it
  CHECK(f.get() == 5);
  CHECK(c.stats().waited == 1);
  CHECK(c.stats().computed == 1);
}

TEST_CASE("a throwing fn releases the lock, caches nothing, and the next caller computes") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::cache<int> c("throw", local_options(srv.port()), {.recheck = 60s});
  CHECK_THROWS_AS(c.get_or_compute("k", 10s, []() -> int { throw std::runtime_error("db down"); }),
                  std::runtime_error);
  redis::connection conn(local_options(srv.port()));
  CHECK(conn.command("EXISTS", "{throw:k}:l").integer() == 0);
  CHECK(conn.command("EXISTS", c.value_key("k")).integer() == 0);
  CHECK(c.get_or_compute("k", 10s, [] { return 3; }) == 3);

  // A waiter behind a failing computer is woken (not after 60 s) and computes itself.
  std::promise<void> go;
  auto released = go.get_future().share();
  std::atomic<int> calls{0};
  auto failing = std::async(std::launch::async, [&] {
    return c.get_or_compute("k2", 10s, [&]() -> int {
      calls.fetch_add(1);
      released.wait();
      throw std::runtime_error("db down");
    });
  });
  REQUIRE(eventually([&] { return calls.load() == 1; }, 20s, 1ms));
  auto waiter = std::async(std::launch::async, [&] {
    return c.get_or_compute("k2", 10s, [&] { return calls.fetch_add(1) + 100; });
  });
  REQUIRE(eventually([&] { return c.waiting() == 1; }, 20s, 1ms));
  go.set_value();
  CHECK_THROWS_AS(failing.get(), std::runtime_error);
  REQUIRE(waiter.wait_for(20s) == std::future_status::ready);
  CHECK(waiter.get() == 101);
}

TEST_CASE("the negative cache remembers a nullopt for negative_ttl, and only when asked") {
  if (!redis_server::available()) return;
  redis_server srv;
  int calls = 0;
  auto missing = [&]() -> std::optional<int> {
    ++calls;
    return std::nullopt;
  };
  redis::cache<int> neg("neg", local_options(srv.port()), {.negative_ttl = 10s});
  CHECK_FALSE(neg.get_or_compute("row", 10s, missing).has_value());
  CHECK_FALSE(neg.get_or_compute("row", 10s, missing).has_value());
  CHECK(calls == 1);
  // A T-returning call does not take a cached nullopt for a value: it computes.
  CHECK(neg.get_or_compute("row", 10s, [] { return 9; }) == 9);

  calls = 0;
  redis::cache<int> plain("plain", local_options(srv.port()));
  CHECK_FALSE(plain.get_or_compute("row", 10s, missing).has_value());
  CHECK_FALSE(plain.get_or_compute("row", 10s, missing).has_value());
  CHECK(calls == 2);
}

TEST_CASE("ttl jitter spreads expiries below the ttl asked, never above it") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::cache<int> c("jit", local_options(srv.port()), {.ttl_jitter = 0.5});
  redis::connection conn(local_options(srv.port()));
  std::int64_t lo = 1 << 30, hi = 0;
  for (int i = 0; i < 30; ++i) {
    c.get_or_compute(std::to_string(i), 100s, [] { return 1; });
    auto t = conn.command("PTTL", c.value_key(std::to_string(i))).integer();
    lo = std::min(lo, t);
    hi = std::max(hi, t);
  }
  CHECK(lo >= 49000);
  CHECK(hi <= 100000);
  CHECK(hi - lo > 5000);  // 30 draws over 50 s: all within 5 s has probability ~1e-25
}

TEST_CASE("invalidate drops the value and every object's local copy over pub/sub") {
  if (!redis_server::available()) return;
  redis_server srv;
  // Two objects, as two processes would have (each has its own subscription).
  redis::cache<std::string> a("inv", local_options(srv.port()),
                              {.local_capacity = 16, .local_ttl = 60s});
  redis::cache<std::string> b("inv", local_options(srv.port()),
                              {.local_capacity = 16, .local_ttl = 60s});
  CHECK(a.get_or_compute("k", 60s, [] { return std::string("v1"); }) == "v1");
  CHECK(b.get_or_compute("k", 60s, [] { return std::string("never"); }) == "v1");
  CHECK(b.get_or_compute("k", 60s, [] { return std::string("never"); }) == "v1");
  CHECK(b.stats().local_hits == 1);
  CHECK(b.local_size() == 1);
  CHECK(a.invalidate("k"));
  REQUIRE(eventually([&] { return b.local_size() == 0; }, 20s, 1ms));
  CHECK(b.get_or_compute("k", 60s, [] { return std::string("v2"); }) == "v2");
  CHECK(a.get_or_compute("k", 60s, [] { return std::string("never"); }) == "v2");
  CHECK_FALSE(a.invalidate("absent"));
}

TEST_CASE("the local level evicts its oldest entry at capacity and expires after local_ttl") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::cache<int> c("cap", local_options(srv.port()), {.local_capacity = 2, .local_ttl = 60s});
  for (int i = 0; i < 3; ++i) c.get_or_compute(std::to_string(i), 60s, [i] { return i; });
  CHECK(c.local_size() == 2);
  c.get_or_compute("0", 60s, [] { return -1; });  // evicted locally: read from Redis
  CHECK(c.stats().local_hits == 0);
  CHECK(c.stats().hits == 1);
  c.get_or_compute("2", 60s, [] { return -1; });
  CHECK(c.stats().local_hits == 1);
}

TEST_CASE("set replaces the value everywhere: other objects drop their local copy and hear of it") {
  if (!redis_server::available()) return;
  redis_server srv;
  std::promise<void> heard[2];
  std::atomic<int> calls{0};
  redis::cache<std::string> a("set", local_options(srv.port()));
  redis::cache<std::string> b(
      "set", local_options(srv.port()),
      {.local_capacity = 16, .local_ttl = 60s, .on_invalidate = [&](const std::string& k) {
         int i = calls.fetch_add(1);
         if (k == "k" && i < 2) heard[i].set_value();
       }});
  a.set("k", "v1", 60s);
  REQUIRE(heard[0].get_future().wait_for(20s) == std::future_status::ready);
  CHECK(b.get_or_compute("k", 60s, [] { return std::string("never"); }) == "v1");
  CHECK(b.local_size() == 1);
  a.set("k", "v2", 60s);
  REQUIRE(heard[1].get_future().wait_for(20s) == std::future_status::ready);
  CHECK(b.local_size() == 0);  // dropped before on_invalidate ran
  CHECK(b.get_or_compute("k", 60s, [] { return std::string("never"); }) == "v2");
}

TEST_CASE("after its subscription reconnects, a cache drops its whole local level "
          "(invalidations sent meanwhile were lost)") {
  if (!redis_server::available()) return;
  redis_server srv;
  std::atomic<int> heard_other{0};
  redis::cache<std::string> a("re", local_options(srv.port()));
  redis::cache<std::string> b(
      "re", local_options(srv.port()),
      {.local_capacity = 16, .local_ttl = 60s, .on_invalidate = [&](const std::string& k) {
         if (k == "other") heard_other.fetch_add(1);
       }});
  CHECK(b.get_or_compute("k", 60s, [] { return std::string("v1"); }) == "v1");
  CHECK(b.local_size() == 1);
  srv.restart();  // no persistence: the value is gone, and so is any message sent meanwhile
  // Until b hears a.invalidate("other"), its subscription is not back yet.
  REQUIRE(eventually(
      [&] {
        try {
          a.invalidate("other");
        } catch (const redis::error&) {  // a's connection noticing the restart
        }
        return heard_other.load() > 0;
      },
      20s, 1ms));
  CHECK(b.get_or_compute("k", 60s, [] { return std::string("v2"); }) == "v2");
}

TEST_CASE("get_or_compute_for gives up waiting on timeout or a stop request, without calling fn") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::cache<int> c("for", local_options(srv.port()), {.recheck = 60s});
  redis::connection conn(local_options(srv.port()));
  conn.command("SET", "{for:k}:l", "someone-computing", "PX", 60000);
  int calls = 0;
  auto fn = [&] { return ++calls; };
  CHECK_FALSE(c.get_or_compute_for("k", 10s, fn, 20ms).has_value());
  std::stop_source src;
  auto f = std::async(std::launch::async, [&] {
    return c.get_or_compute_for("k", 10s, fn, std::chrono::hours::max(), src.get_token());
  });
  REQUIRE(eventually([&] { return c.waiting() == 1; }, 20s, 1ms));
  src.request_stop();
  REQUIRE(f.wait_for(20s) == std::future_status::ready);  // not the 60 s recheck
  CHECK_FALSE(f.get().has_value());
  CHECK(calls == 0);
  conn.command("DEL", "{for:k}:l");
  auto v = c.get_or_compute_for("k", 10s, fn, std::chrono::nanoseconds::max());
  REQUIRE(v.has_value());
  CHECK(*v == 1);
  auto neg = c.get_or_compute_for("n", 10s, [] { return std::optional<int>{}; }, 1s);
  REQUIRE(neg.has_value());         // an answer came...
  CHECK_FALSE(neg->has_value());    // ...and it is "no such value"
}
