// Tests of spindle/redis/rate_limit.hpp against a real redis-server: grants and refusals,
// waiting acquire, bad arguments, NOSCRIPT reload, idle expiry, and two processes (and threads)
// sharing one key never exceeding the limit together.
#include <doctest/doctest.h>
#include <spawn.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <future>
#include <stop_token>
#include <spindle/rate_limit.hpp>
#include <spindle/redis/rate_limit.hpp>
#include <string>
#include <thread>
#include <vector>

#include "support/redis_server.hpp"
#include "support/threads.hpp"

namespace redis = spindle::redis;
using namespace std::chrono_literals;
using test_support::redis_server;

static_assert(spindle::rate_limiter<redis::token_bucket>);
static_assert(spindle::rate_limiter<redis::sliding_window>);

extern char** environ;

namespace {
using test_support::local_options;
}  // namespace

TEST_CASE("redis limiters refuse bad arguments with std::invalid_argument") {
  CHECK_THROWS_AS(redis::token_bucket("", {}, 1.0, 1), std::invalid_argument);
  CHECK_THROWS_AS(redis::token_bucket("k", {}, 0.0, 1), std::invalid_argument);
  CHECK_THROWS_AS(redis::token_bucket("k", {}, 1.0, 0), std::invalid_argument);
  CHECK_THROWS_AS(redis::sliding_window("", {}, 1, 1s), std::invalid_argument);
  CHECK_THROWS_AS(redis::sliding_window("k", {}, 0, 1s), std::invalid_argument);
  CHECK_THROWS_AS(redis::sliding_window("k", {}, 1, 0ms), std::invalid_argument);
  redis::token_bucket tb("k", {}, 1.0, 2);  // connects lazily: no server needed here
  CHECK_FALSE(tb.try_acquire(3));
  CHECK_THROWS_AS(tb.acquire(3), std::invalid_argument);
  redis::sliding_window sw("k", {}, 2, 1s);
  CHECK_FALSE(sw.try_acquire(3));
  CHECK_THROWS_AS(sw.acquire(3), std::invalid_argument);
}

TEST_CASE("a redis token bucket starts full, refuses when empty, and refills by server time") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::token_bucket tb("tb", local_options(srv.port()), 100.0, 5);
  CHECK(tb.try_acquire(5));
  CHECK_FALSE(tb.try_acquire());
  tb.acquire();  // waits about 10 ms for one token
  tb.acquire(2);
  redis::connection c(local_options(srv.port()));
  auto ttl = c.command("PTTL", "{tb}:tb").integer();
  CHECK(ttl > 0);  // expires when idle
  CHECK(ttl <= 1050);
}

TEST_CASE("a redis sliding window grants at most limit per window and waits for room") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::sliding_window sw("sw", local_options(srv.port()), 3, 100ms);
  CHECK(sw.try_acquire(2));
  CHECK(sw.try_acquire());
  CHECK_FALSE(sw.try_acquire());
  sw.acquire();  // once the first grants leave the window
  redis::connection c(local_options(srv.port()));
  CHECK(c.command("PTTL", "{sw}:sw").integer() > 0);
}

TEST_CASE("redis limiters reload their script after SCRIPT FLUSH (NOSCRIPT)") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::token_bucket tb("flush", local_options(srv.port()), 1.0, 10);
  redis::sliding_window sw("flush", local_options(srv.port()), 10, 10s);
  CHECK(tb.try_acquire());
  CHECK(sw.try_acquire());
  redis::connection(local_options(srv.port())).command("SCRIPT", "FLUSH");
  CHECK(tb.try_acquire());
  CHECK(sw.try_acquire());
}

TEST_CASE("threads with their own limiter objects on one key never exceed the limit") {
  if (!redis_server::available()) return;
  redis_server srv;
  std::atomic<int> tb_granted{0}, sw_granted{0};
  test_support::start_gate gate;
  test_support::thread_group g;
  for (int t = 0; t < 3; ++t)
    g.spawn([&] {
      redis::token_bucket tb("shared", local_options(srv.port()), 0.01, 40);
      redis::sliding_window sw("shared", local_options(srv.port()), 25, 60s);
      gate.wait();
      for (int i = 0; i < 60; ++i) {
        if (tb.try_acquire()) tb_granted.fetch_add(1, std::memory_order_relaxed);
        if (sw.try_acquire()) sw_granted.fetch_add(1, std::memory_order_relaxed);
      }
    });
  gate.open();
  REQUIRE(g.join_within(30s));
  CHECK(tb_granted.load() == 40);  // refill of 0.01/s adds no whole token within the test
  CHECK(sw_granted.load() == 25);
}

#ifdef SPINDLE_REDIS_WORKER
TEST_CASE("two processes sharing one key together never exceed the limit") {
  if (!redis_server::available()) return;
  redis_server srv;
  for (std::string kind : {"tb", "sw"}) {
    std::string key = "proc-" + kind;
    std::vector<pid_t> pids;
    for (int p = 0; p < 2; ++p) {
      std::vector<std::string> all{
          SPINDLE_REDIS_WORKER, std::to_string(srv.port()), key, "limit", kind, "150"};
      std::vector<char*> argv;
      for (auto& a : all) argv.push_back(a.data());
      argv.push_back(nullptr);
      pid_t pid = -1;
      REQUIRE(::posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ) == 0);
      pids.push_back(pid);
    }
    for (pid_t pid : pids) {
      int st = 0;
      bool done = false;
      auto deadline = std::chrono::steady_clock::now() + 30s;
      while (!done && std::chrono::steady_clock::now() < deadline) {
        done = ::waitpid(pid, &st, WNOHANG) == pid;
        if (!done) std::this_thread::sleep_for(5ms);  // polling a child process
      }
      REQUIRE(done);
      CHECK((WIFEXITED(st) && WEXITSTATUS(st) == 0));
    }
    auto granted =
        redis::connection(local_options(srv.port())).command("GET", key + ":granted").integer();
    CHECK(granted == (kind == "tb" ? 50 : 30));
  }
}
#endif

TEST_CASE("redis limiters' timed acquire returns timeout at once when room cannot come in time") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::token_bucket tb("tf", local_options(srv.port()), 1.0, 1);  // one token per second
  redis::sliding_window sw("tf", local_options(srv.port()), 1, 60s);
  CHECK(tb.try_acquire());
  CHECK(sw.try_acquire());
  auto start = std::chrono::steady_clock::now();
  CHECK(tb.acquire_for(1, 50ms) == spindle::status::timeout);
  CHECK(sw.acquire_for(1, 5s) == spindle::status::timeout);  // room only in a minute
  CHECK(tb.acquire_until(1, std::chrono::steady_clock::now()) == spindle::status::timeout);
  CHECK(std::chrono::steady_clock::now() - start < 2s);  // did not sleep the 5 s away
  CHECK(tb.acquire_for(1, 5s) == spindle::status::ok);     // the token comes within a second
  CHECK(tb.acquire_for(0, 0ms) == spindle::status::ok);    // nothing asked, nothing to wait for
}

TEST_CASE("redis limiters' retry_after names the wait and takes nothing") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::token_bucket tb("ra", local_options(srv.port()), 10.0, 2);  // a token per 100 ms
  redis::sliding_window sw("ra", local_options(srv.port()), 2, 60s);
  CHECK(tb.retry_after() == 0ms);
  CHECK(tb.retry_after(2) == 0ms);
  CHECK(tb.retry_after(2) == 0ms);  // a dry run: the two tokens are still there
  CHECK(tb.try_acquire(2));
  auto w = tb.retry_after(1);
  CHECK(w > 0ms);
  CHECK(w <= 100ms);
  CHECK(sw.try_acquire(2));
  auto ws = sw.retry_after();
  CHECK(ws > 58s);
  CHECK(ws <= 61s);
  CHECK_THROWS_AS(tb.retry_after(3), std::invalid_argument);
  CHECK_THROWS_AS(sw.retry_after(3), std::invalid_argument);
  CHECK_THROWS_AS(tb.acquire_for(3, 1s), std::invalid_argument);
  CHECK_THROWS_AS(sw.acquire_until(3, std::chrono::steady_clock::now()), std::invalid_argument);
}

TEST_CASE("a waiting redis acquire ends promptly with cancelled on a stop request, also with "
          "an unlimited acquire_for") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::token_bucket tb("st", local_options(srv.port()), 0.001, 1);  // the next token in 1000 s
  redis::sliding_window sw("st", local_options(srv.port()), 1, 1000s);
  CHECK(tb.try_acquire());
  CHECK(sw.try_acquire());
  std::stop_source s1, s2;
  auto a = std::async(std::launch::async, [&] { return tb.acquire(1, s1.get_token()); });
  auto b = std::async(std::launch::async, [&] {
    return sw.acquire_for(1, std::chrono::hours::max(), s2.get_token());
  });
  s1.request_stop();
  s2.request_stop();
  REQUIRE(a.wait_for(10s) == std::future_status::ready);
  REQUIRE(b.wait_for(10s) == std::future_status::ready);
  CHECK(a.get() == spindle::status::cancelled);
  CHECK(b.get() == spindle::status::cancelled);
  redis::token_bucket fresh("st2", local_options(srv.port()), 1.0, 1);
  CHECK(fresh.acquire_for(1, std::chrono::nanoseconds::max()) == spindle::status::ok);
}
