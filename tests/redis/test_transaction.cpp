// Tests of spindle/redis/transaction.hpp against a real redis-server: replies in order, a
// command refused while queueing runs nothing, a runtime error does not roll back, no reader
// sees half a transaction, check_and_set loses no update under contention, gives up after
// max_attempts, and never leaves a WATCH behind (abort, throw).
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <spindle/redis/transaction.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/redis_server.hpp"
#include "support/threads.hpp"

namespace redis = spindle::redis;
using namespace std::chrono_literals;
using test_support::redis_server;

namespace {
using test_support::local_options;

// True if `c` carries no WATCH: a key changed by another client does not abort its EXEC.
bool unwatched(redis::connection& c, redis::connection& other, const std::string& key) {
  other.command("SET", key, "changed");
  redis::transaction tx;
  tx.add("PING");
  auto rs = redis::exec_watched(c, tx);
  return rs.has_value();
}
}  // namespace

TEST_CASE("exec runs the commands in one block and returns their replies in order") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::connection c(local_options(srv.port()));
  redis::transaction tx;
  tx.add("SET", "a", 1).add("INCR", "a").add("GET", "a");
  CHECK(tx.size() == 3);
  auto rs = redis::exec(c, tx);
  REQUIRE(rs.size() == 3);
  CHECK(rs[0].str() == "OK");
  CHECK(rs[1].integer() == 2);
  CHECK(rs[2].str() == "2");
  CHECK(redis::exec(c, redis::transaction{}).empty());
}

TEST_CASE("a command refused while queueing runs nothing and names its position") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::connection c(local_options(srv.port()));
  redis::transaction tx;
  tx.add("SET", "a", 1).add("SET", "b");  // wrong arity: refused at queue time
  try {
    redis::exec(c, tx);
    FAIL("no exception");
  } catch (const redis::server_error& e) {
    CHECK(std::string(e.what()).find("command 2 of 2") != std::string::npos);
    CHECK(e.code() == "ERR");
  }
  CHECK(c.command("EXISTS", "a").integer() == 0);  // nothing ran
  CHECK(c.command("PING").str() == "PONG");        // the connection is in step
}

TEST_CASE("a command failing while running leaves its error reply; the others took effect") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::connection c(local_options(srv.port()));
  c.command("SET", "s", "text");
  redis::transaction tx;
  tx.add("INCR", "s").add("SET", "t", "x");
  auto rs = redis::exec(c, tx);
  REQUIRE(rs.size() == 2);
  CHECK(rs[0].is_error());
  CHECK(rs[1].str() == "OK");
  CHECK(c.command("GET", "t").str() == "x");  // Redis does not roll back
}

TEST_CASE("no reader sees half a transaction") {
  if (!redis_server::available()) return;
  redis_server srv;
  std::atomic<bool> done{false};
  std::atomic<int> torn{0}, reads{0};
  test_support::thread_group g;
  g.spawn([&] {
    redis::connection c(local_options(srv.port()));
    for (int i = 0; i < 300; ++i) {
      redis::transaction tx;
      tx.add("INCR", "{p}:a").add("INCR", "{p}:b");
      redis::exec(c, tx);
    }
    done = true;
  });
  g.spawn([&] {
    redis::connection c(local_options(srv.port()));
    while (!done) {
      auto r = c.command("MGET", "{p}:a", "{p}:b");
      auto a = r[0].is_nil() ? 0 : r[0].integer(), b = r[1].is_nil() ? 0 : r[1].integer();
      if (a != b) torn.fetch_add(1);
      reads.fetch_add(1);
    }
  });
  REQUIRE(g.join_within(60s));
  CHECK(torn.load() == 0);
  MESSAGE("reads during the transactions: " << reads.load());
}

TEST_CASE("check_and_set refuses bad arguments with std::invalid_argument") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::connection c(local_options(srv.port()));
  auto f = [](redis::connection&) { return std::optional<redis::transaction>{}; };
  CHECK_THROWS_AS(redis::check_and_set(c, {}, f), std::invalid_argument);
  CHECK_THROWS_AS(redis::check_and_set(c, {"k"}, f, {.max_attempts = 0}), std::invalid_argument);
}

TEST_CASE("check_and_set increments from many threads lose no update") {
  if (!redis_server::available()) return;
  redis_server srv;
  constexpr int threads = 6, rounds = 30;
  redis::pool p(local_options(srv.port()), {.max_connections = threads});
  std::atomic<int> attempts{0}, failed{0};
  test_support::start_gate gate;
  test_support::thread_group g;
  for (int t = 0; t < threads; ++t)
    g.spawn([&] {
      gate.wait();
      for (int i = 0; i < rounds; ++i) {
        auto r = redis::check_and_set(
            p, {"n"},
            [](redis::connection& c) {
              auto v = c.command("GET", "n");  // read under WATCH, write in the block
              redis::transaction tx;
              tx.add("SET", "n", (v.is_nil() ? 0 : v.integer()) + 1);
              return std::optional<redis::transaction>(std::move(tx));
            },
            {.max_attempts = 1000, .max_backoff = 2ms});
        attempts.fetch_add(r.attempts);
        if (r.outcome != redis::cas_outcome::committed) failed.fetch_add(1);
      }
    });
  gate.open();
  REQUIRE(g.join_within(120s));
  CHECK(failed.load() == 0);
  CHECK(redis::connection(local_options(srv.port())).command("GET", "n").integer() ==
        threads * rounds);
  MESSAGE("attempts for " << threads * rounds << " commits: " << attempts.load());
}

TEST_CASE("check_and_set gives up as contended after max_attempts, having written nothing") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::connection c(local_options(srv.port())), other(local_options(srv.port()));
  int runs = 0;
  auto r = redis::check_and_set(
      c, {"w"},
      [&](redis::connection&) {
        ++runs;
        other.command("INCR", "w");  // another client changes the watched key every time
        redis::transaction tx;
        tx.add("SET", "w", "mine");
        return std::optional<redis::transaction>(std::move(tx));
      },
      {.max_attempts = 3, .max_backoff = 0ms});
  CHECK(r.outcome == redis::cas_outcome::contended);
  CHECK(r.attempts == 3);
  CHECK(runs == 3);
  CHECK(c.command("GET", "w").str() == "3");
}

TEST_CASE("check_and_set leaves no WATCH behind when f aborts or throws") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::connection c(local_options(srv.port())), other(local_options(srv.port()));
  auto r = redis::check_and_set(c, {"k"}, [](redis::connection& conn) {
    conn.command("GET", "k");
    return std::optional<redis::transaction>{};
  });
  CHECK(r.outcome == redis::cas_outcome::aborted);
  CHECK(r.attempts == 1);
  CHECK(unwatched(c, other, "k"));
  CHECK_THROWS_AS(redis::check_and_set(c, {"k"},
                                       [](redis::connection&) -> std::optional<redis::transaction> {
                                         throw std::runtime_error("f failed");
                                       }),
                  std::runtime_error);
  CHECK(unwatched(c, other, "k"));
}
