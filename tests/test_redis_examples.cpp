// Runs the Redis pattern examples (examples/redis_*.cpp) against the fixture's redis-server and
// checks that each succeeds and prints what it claims.
#include <doctest/doctest.h>

#include <chrono>
#include <string>

#include "support/process.hpp"
#include "support/redis_server.hpp"

#ifndef SPINDLE_EXAMPLES_DIR
#error "SPINDLE_EXAMPLES_DIR (the build directory of the examples) must be defined by the build"
#endif

using namespace std::chrono_literals;

namespace {
test_support::run_result run_example(const std::string& name,
                                      const test_support::redis_server& srv) {
  test_support::child c({std::string(SPINDLE_EXAMPLES_DIR) + "/" + name,
                         "redis://127.0.0.1:" + std::to_string(srv.port())});
  return c.finish(60s);
}

bool has(const std::string& out, const char* text) { return out.find(text) != std::string::npos; }
}  // namespace

TEST_CASE("the redis examples exit 2 with a usage line when no URL is given") {
  test_support::child c({std::string(SPINDLE_EXAMPLES_DIR) + "/redis_cache"});
  auto r = c.finish(20s);
  CHECK(r.exited(2));
  CHECK(has(r.err, "usage"));
}

TEST_CASE("redis_cache: 16 concurrent misses run one query") {
  if (!test_support::redis_server::available()) return;
  test_support::redis_server srv;
  auto r = run_example("redis_cache", srv);
  INFO(r.out << r.err);
  CHECK(r.exited(0));
  CHECK(has(r.out, "16 concurrent misses: 1 database query, all got \"Ada Lovelace\": yes"));
}

TEST_CASE("redis_lock: the stale holder's write and release are refused") {
  if (!test_support::redis_server::available()) return;
  test_support::redis_server srv;
  auto r = run_example("redis_lock", srv);
  INFO(r.out << r.err);
  CHECK(r.exited(0));
  CHECK(has(r.out, "its write is refused (stale fence)"));
  CHECK(has(r.out, "the resource holds: \"written by B\""));
}

TEST_CASE("redis_per_ip_limit: each IP gets its own 5 requests") {
  if (!test_support::redis_server::available()) return;
  test_support::redis_server srv;
  auto r = run_example("redis_per_ip_limit", srv);
  INFO(r.out << r.err);
  CHECK(r.exited(0));
  CHECK(has(r.out, "10.0.0.3  sent 12: 5 accepted,  7 refused (HTTP 429), Retry-After"));
}

TEST_CASE("redis_invalidation: the other process sees the new value at once") {
  if (!test_support::redis_server::available()) return;
  test_support::redis_server srv;
  auto r = run_example("redis_invalidation", srv);
  INFO(r.out << r.err);
  CHECK(r.exited(0));
  CHECK(has(r.out, "child: before \"hello\""));
  CHECK(has(r.out, "after \"world\""));
}

TEST_CASE("redis_event_log: two groups read every event, then a paged replay from an offset") {
  if (!test_support::redis_server::available()) return;
  test_support::redis_server srv;
  auto r = run_example("redis_event_log", srv);
  INFO(r.out << r.err);
  CHECK(r.exited(0));
  CHECK(has(r.out, "group billing  read 5 events, 0 pending"));
  CHECK(has(r.out, "group shipping read 5 events, 0 pending"));
  CHECK(has(r.out, "entries still in the log: 5"));
  CHECK(has(r.out, "order 2 cancelled"));
  CHECK(has(r.out, "replayed 3 events in 2 pages"));
}

TEST_CASE("redis_health: a queue and a stream report their ready, held and dead work") {
  if (!test_support::redis_server::available()) return;
  test_support::redis_server srv;
  auto r = run_example("redis_health", srv);
  INFO(r.out << r.err);
  CHECK(r.exited(0));
  CHECK(has(r.out, "queue example:jobs: ready 3, held 2, dead 1, pending 5"));
  CHECK(has(r.out, "consumer holds 2, lease live"));
  CHECK(has(r.out, "oldest ready: job id 4, 2 pushed after it, waiting < 1 min"));
  CHECK(has(r.out, "stream example:events: 5 entries, 1 dead"));
  CHECK((has(r.out, "group audit: lag 2, pending 1") ||
         has(r.out, "group audit: lag unknown, pending 1")));  // Redis 6.2 reports no lag
  CHECK(has(r.out, "consumer holds 1, idle < 1 min"));
}
