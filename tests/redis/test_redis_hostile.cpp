// Hostile-user tests of the Redis structures: each case attacks one promise of a header with the
// input or the fault a careless or malicious user would bring - a pool asked to wait
// duration::max(), a poison entry on a stream whose pool has one connection, a stream whose
// last entry has the largest id there is, lost replies of ack and nack, structure names and
// limiter keys full of braces, colons and NUL bytes, on one server and on a cluster.
//
// The cluster cases share one cluster (3 primaries + 3 replicas, tests/support/redis_cluster.hpp)
// started on first use; each case uses its own names.
#include <doctest/doctest.h>

#include <chrono>
#include <future>
#include <memory>
#include <optional>
#include <set>
#include <spindle/redis/cache.hpp>
#include <spindle/redis/cluster.hpp>
#include <spindle/redis/keyed_rate_limit.hpp>
#include <spindle/redis/lock.hpp>
#include <spindle/redis/pool.hpp>
#include <spindle/redis/queue.hpp>
#include <spindle/redis/rate_limit.hpp>
#include <spindle/redis/stream.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/fault_proxy.hpp"
#include "support/redis_cluster.hpp"
#include "support/redis_server.hpp"

namespace redis = spindle::redis;
using namespace std::chrono_literals;
using spindle::status;
using test_support::local_options;
using test_support::redis_server;
using test_support::shared_cluster;

namespace {
// What a "does not hang" bound allows: far above the work, far below the 10 s acquire_timeout
// a starved pool waits before it throws.
constexpr auto no_hang = 5s;

inline std::chrono::steady_clock::duration since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::steady_clock::now() - t0;
}
}  // namespace

TEST_CASE("pool::acquire_for(duration::max()) waits for a connection, never fails at once") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::pool p(local_options(srv.port()), {.max_connections = 1});
  auto wait_max = [&](auto forever) {
    std::optional<redis::pool::lease> held(p.acquire());  // the only connection
    auto waiter = std::async(std::launch::async, [&] {
      auto l = p.acquire_for(forever);
      return l.has_value() && (*l)->command("PING").str() == "PONG";
    });
    // Still waiting while the connection is leased (an overflowed deadline gives up at once).
    CHECK(waiter.wait_for(300ms) == std::future_status::timeout);
    held.reset();
    REQUIRE(waiter.wait_for(no_hang) == std::future_status::ready);
    CHECK(waiter.get());
  };
  wait_max(std::chrono::milliseconds::max());
  wait_max(std::chrono::hours::max());
  wait_max(std::chrono::duration<double>::max());
  CHECK(p.acquire_for(std::chrono::nanoseconds(1)).has_value());  // one is free: at once
}
