// Tests of spindle/redis/transaction.hpp against a real redis-server: replies in order, a
// command refused while queueing runs nothing, a runtime error does not roll back, no reader
// sees half a transaction, check_and_set loses no update under contention, gives up after
// max_attempts, and never leaves a WATCH behind (abort, throw); the _for / _until forms stop at
// their deadline (never sleeping a backoff past it), make one attempt for a zero or past one,
// saturate for duration::max(), and bound the wait for a pooled connection.
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

// ---- deadlines: exec_for / exec_until, check_and_set_for / _until ----------------------------

namespace {
// f for check_and_set that another client always beats: it changes the watched key "w" after
// the read, so every EXEC finds its WATCH broken.
auto always_contended(redis::connection& other, int& runs) {
  return [&other, &runs](redis::connection&) {
    ++runs;
    other.command("INCR", "w");
    redis::transaction tx;
    tx.add("SET", "w", "mine");
    return std::optional<redis::transaction>(std::move(tx));
  };
}
}  // namespace

TEST_CASE("check_and_set_for gives up with timeout at its deadline, having written nothing") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::connection c(local_options(srv.port())), other(local_options(srv.port()));
  int runs = 0;
  // A backoff far longer than the deadline: the pause is cut at the deadline, never slept out
  // (a random pause up to 10 s ends before 2 s one time in five: three rounds).
  for (int round = 0; round < 3; ++round) {
    auto start = std::chrono::steady_clock::now();
    auto r = redis::check_and_set_for(c, {"w"}, always_contended(other, runs), 50ms,
                                      {.max_attempts = 1000000, .max_backoff = 10s});
    auto took = std::chrono::steady_clock::now() - start;
    CHECK(r.outcome == redis::cas_outcome::timeout);
    CHECK(r.attempts >= 1);
    CHECK(r.replies.empty());
    CHECK(took < 2s);  // generous for a 50 ms deadline
  }
  CHECK(c.command("GET", "w").str() == std::to_string(runs));  // only the other client wrote
  CHECK(unwatched(c, other, "w"));
}

TEST_CASE("check_and_set_for with a zero or past deadline makes exactly one attempt") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::connection c(local_options(srv.port())), other(local_options(srv.port()));
  int runs = 0;
  auto r = redis::check_and_set_for(c, {"w"}, always_contended(other, runs), 0ms);
  CHECK(r.outcome == redis::cas_outcome::timeout);
  CHECK(r.attempts == 1);
  auto past = std::chrono::steady_clock::now() - 1h;
  r = redis::check_and_set_until(c, {"w"}, always_contended(other, runs), past);
  CHECK(r.outcome == redis::cas_outcome::timeout);
  CHECK(r.attempts == 1);
  r = redis::check_and_set_for(
      c, {"free"},
      [](redis::connection&) {
        redis::transaction tx;
        tx.add("SET", "free", "1");
        return std::optional<redis::transaction>(std::move(tx));
      },
      -5s);
  CHECK(r.outcome == redis::cas_outcome::committed);  // uncontended: the one attempt commits
  CHECK(r.attempts == 1);
  CHECK(c.command("GET", "free").str() == "1");
}

TEST_CASE("check_and_set_for with duration::max() or hours::max() has no deadline") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::connection c(local_options(srv.port())), other(local_options(srv.port()));
  int runs = 0;
  auto r = redis::check_and_set_for(c, {"w"}, always_contended(other, runs),
                                    std::chrono::nanoseconds::max(),
                                    {.max_attempts = 3, .max_backoff = 1ms});
  CHECK(r.outcome == redis::cas_outcome::contended);  // max_attempts, not a deadline, ended it
  CHECK(r.attempts == 3);
  r = redis::check_and_set_for(c, {"w"}, always_contended(other, runs), std::chrono::hours::max(),
                               {.max_attempts = 2, .max_backoff = 1ms});
  CHECK(r.outcome == redis::cas_outcome::contended);
  CHECK(r.attempts == 2);
}

TEST_CASE("check_and_set_for and _until refuse bad arguments, naming themselves") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::connection c(local_options(srv.port()));
  redis::pool p(local_options(srv.port()));
  auto f = [](redis::connection&) { return std::optional<redis::transaction>{}; };
  auto never = std::chrono::steady_clock::time_point::max();
  CHECK_THROWS_AS(redis::check_and_set_for(c, {}, f, 1s), std::invalid_argument);
  CHECK_THROWS_AS(redis::check_and_set_until(p, {}, f, never), std::invalid_argument);
  CHECK_THROWS_AS(redis::check_and_set_for(p, {"k"}, f, 1s, {.max_attempts = 0}),
                  std::invalid_argument);
  try {
    redis::check_and_set_for(c, {"k"}, f, 1s, {.max_attempts = -2});
    FAIL("no exception");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()) ==
          "redis::check_and_set_for: max_attempts must be >= 1, got -2");
  }
}

TEST_CASE("the pool forms wait for a connection until the deadline, then report it") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::pool p(local_options(srv.port()), {.max_connections = 1});
  redis::transaction tx;
  tx.add("INCR", "n");
  auto set_k = [](redis::connection&) {
    redis::transaction t;
    t.add("SET", "k", "v");
    return std::optional<redis::transaction>(std::move(t));
  };
  {
    auto busy = p.acquire();  // the only connection
    CHECK_FALSE(redis::exec_for(p, tx, 20ms).has_value());
    CHECK_FALSE(redis::exec_until(p, tx, std::chrono::steady_clock::now() - 1s).has_value());
    auto r = redis::check_and_set_for(p, {"k"}, set_k, 20ms);
    CHECK(r.outcome == redis::cas_outcome::timeout);
    CHECK(r.attempts == 0);
    CHECK(busy->command("EXISTS", "n", "k").integer() == 0);  // nothing was sent
  }
  auto rs = redis::exec_for(p, tx, 5s);
  REQUIRE(rs.has_value());
  REQUIRE(rs->size() == 1);
  CHECK((*rs)[0].integer() == 1);
  rs = redis::exec_for(p, tx, std::chrono::hours::max());  // saturates: the pool's acquire()
  REQUIRE(rs.has_value());
  CHECK((*rs)[0].integer() == 2);
  auto r = redis::check_and_set_for(p, {"k"}, set_k, std::chrono::milliseconds::max());
  CHECK(r.outcome == redis::cas_outcome::committed);
  CHECK(p.acquire()->command("GET", "k").str() == "v");
}
