// Hostile-user tests of the Redis structures: each case attacks one promise of a header with the
// input or the fault a careless or malicious user would bring - a pool asked to wait
// duration::max(), a poison entry on a stream or queue whose pool has one connection, a stream
// whose last entry has the largest id there is, lost replies of ack and nack, structure names
// and limiter keys full of braces, colons and NUL bytes, on one server and on a cluster.
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

TEST_CASE("a stream pop that meets a poison entry does not wait for a second pooled connection") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  // One connection: a pop holding it while dead-lettering the poison entry on another would
  // wait for itself (acquire_timeout, 10 s) and then throw.
  redis::stream<int> s("hs-poison", o, {.poll_interval = 20ms, .max_connections = 1});
  redis::stream<int>::delivery d;
  REQUIRE(s.try_pop_delivery(d) == status::empty);  // creates the group
  redis::connection r(o);
  for (int round = 0; round < 3; ++round) {
    // The claim-or-read script hands out the poison entry, then the good one.
    r.command("XADD", "{hs-poison}:stream", "*", "v", "oops");
    r.command("XADD", "{hs-poison}:stream", "*", "v", std::to_string(round));
    auto t0 = std::chrono::steady_clock::now();
    if (round == 0) {
      REQUIRE(s.try_pop_delivery(d) == status::ok);  // never blocks: must not wait 10 s either
    } else {
      REQUIRE(s.pop_delivery_for(d, 30s) == status::ok);
    }
    CHECK(since(t0) < no_hang);
    CHECK(d.value == round);
    CHECK(s.ack(d));
    CHECK(s.dead_letter_size() == static_cast<std::size_t>(round + 1));
  }
  // A blocked pop that then receives a poison entry from XREADGROUP dead-letters it too.
  std::thread late([&] {
    redis::connection w(o);
    std::this_thread::sleep_for(100ms);  // not synchronisation: either order passes
    w.command("XADD", "{hs-poison}:stream", "*", "v", "bad");
    w.command("XADD", "{hs-poison}:stream", "*", "v", "9");
  });
  auto t0 = std::chrono::steady_clock::now();
  REQUIRE(s.pop_delivery_for(d, 30s) == status::ok);
  late.join();
  CHECK(since(t0) < no_hang);
  CHECK(d.value == 9);
  CHECK(s.ack(d));
  CHECK(s.dead_letter_size() == 4);
  CHECK(s.pending() == 0);
}

TEST_CASE("a queue pop that meets a poison payload with one pooled connection dead-letters it "
          "at once") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  redis::queue<int> q("hs-qpoison", o, {.poll_interval = 20ms, .max_connections = 1});
  q.destroy();
  redis::connection r(o);
  r.command("LPUSH", "{hs-qpoison}:ready", "oops");  // a foreign producer's bare payload
  REQUIRE(q.push(3) == status::ok);
  redis::queue<int>::delivery d;
  auto t0 = std::chrono::steady_clock::now();
  REQUIRE(q.try_pop_delivery(d) == status::ok);
  CHECK(since(t0) < no_hang);
  CHECK(d.value == 3);
  CHECK(q.ack(d));
  CHECK(q.dead_letter_size() == 1);
  CHECK(q.pending() == 0);
}

TEST_CASE("a stream consumer holding 8200 deliveries keeps every one renewed by its heartbeat") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  redis::stream_options so{.visibility_timeout = 600ms, .poll_interval = 20ms};
  redis::stream<int> a("hs-many", o, so);
  redis::stream<int> b("hs-many", o, so);
  redis::stream<int>::delivery d, e;
  REQUIRE(a.try_pop_delivery(d) == status::empty);  // creates the group
  constexpr int n = 8200;  // past Lua's 8000-value unpack() limit
  redis::connection r(o);
  redis::batch adds;
  for (int i = 0; i < n; ++i) adds.add("XADD", "{hs-many}:stream", "*", "v", i);
  r.pipeline(adds);
  std::vector<redis::stream<int>::delivery> held;
  held.reserve(n);
  for (int i = 0; i < n; ++i) {
    REQUIRE(a.try_pop_delivery(d) == status::ok);
    held.push_back(d);
  }
  // Three leases long: a's heartbeat (every 200 ms) must keep all of them from going stale.
  CHECK(b.pop_delivery_for(e, 1800ms) == status::timeout);
  std::size_t acked = 0;
  for (const auto& h : held) acked += a.ack(h) ? 1 : 0;
  CHECK(acked == static_cast<std::size_t>(n));
}

TEST_CASE("read_range pages to the end of a stream whose last entry has the largest id") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  redis::stream<std::string> s("hs-maxid", o, {.poll_interval = 20ms});
  redis::connection r(o);
  const std::string largest = "18446744073709551615-18446744073709551615";
  r.command("XADD", "{hs-maxid}:stream", "0-1", "v", std::string("a\0:b", 4));
  r.command("XADD", "{hs-maxid}:stream", "7-0", "v", "(");
  r.command("XADD", "{hs-maxid}:stream", largest, "v", "z");
  // Forwards in pages of one: every page is full, the last ends at the largest id.
  std::vector<std::string> ids, values;
  std::string from = "-";
  for (int pages = 0; !from.empty(); ++pages) {
    REQUIRE(pages < 10);
    auto p = s.read_range(from, "+", 1);
    for (const auto& e : p.items) {
      ids.push_back(e.id);
      REQUIRE(e.value.has_value());
      values.push_back(*e.value);
    }
    from = p.next;
  }
  CHECK(ids == std::vector<std::string>{"0-1", "7-0", largest});
  CHECK(values == std::vector<std::string>{std::string("a\0:b", 4), "(", "z"});
  // Backwards down to the smallest id there is.
  ids.clear();
  from = "+";
  for (int pages = 0; !from.empty(); ++pages) {
    REQUIRE(pages < 10);
    auto p = s.read_range_reverse(from, "-", 1);
    for (const auto& e : p.items) ids.push_back(e.id);
    from = p.next;
  }
  CHECK(ids == std::vector<std::string>{largest, "7-0", "0-1"});
  // Bounds given the wrong way round are an empty page, not an error.
  auto none = s.read_range("+", "-");
  CHECK(none.items.empty());
  CHECK(none.next.empty());
  CHECK_THROWS_AS(s.read_range("(", "+"), redis::server_error);  // malformed: said, not hung
}

TEST_CASE("a queue ack or nack whose reply was lost settles once: no loss, no extra delivery") {
  if (!redis_server::available()) return;
  redis_server srv;
  spindle::test::fault_proxy proxy("127.0.0.1", srv.port());
  redis::options o = local_options(proxy.port());
  redis::queue<int> q("hs-lost", o, {.poll_interval = 20ms, .max_connections = 1});
  q.destroy();
  for (int i = -1; i < 2; ++i) REQUIRE(q.push(i) == status::ok);
  redis::queue<int>::delivery d;
  REQUIRE(q.try_pop_delivery(d) == status::ok);
  REQUIRE(d.value == -1);
  REQUIRE(q.ack(d));  // loads the settle script: the dropped reply below is its run, not NOSCRIPT
  REQUIRE(q.try_pop_delivery(d) == status::ok);
  REQUIRE(d.value == 0);
  proxy.drop_reply_of("EVALSHA");  // the ack script runs; its reply never arrives
  CHECK_THROWS_AS(q.ack(d), redis::error);
  // The ack took effect: item 0 is gone for good, item 1 comes next, once.
  REQUIRE(q.try_pop_delivery(d) == status::ok);
  CHECK(d.value == 1);
  CHECK(d.deliveries == 1);
  proxy.drop_reply_of("EVALSHA");  // the nack script runs: item 1 requeued with its count
  CHECK_THROWS_AS(q.nack(d), redis::error);
  REQUIRE(q.try_pop_delivery(d) == status::ok);
  CHECK(d.value == 1);
  CHECK(d.deliveries == 2);  // one redelivery, not two
  CHECK(q.ack(d));
  CHECK(q.try_pop_delivery(d) == status::empty);
  CHECK(q.pending() == 0);
  CHECK(q.dead_letter_size() == 0);
}

TEST_CASE("keyed limiter keys with braces, colons, NUL bytes or 64 KiB each get their own room") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  // Each key is one that could alias another's Redis key or hash tag if the prefix were
  // built carelessly: "a}" tags as "hs-k:a" like "a"; "a}:sw" ends like a's own key.
  const std::vector<std::string> keys{"a",   "a}",  "a}:sw", "}a", "{a}",  "a:sw", "",
                                      ":",   "}{",  std::string("\0a", 2),
                                      std::string("a\0", 2), std::string(65536, 'k')};
  redis::keyed_sliding_window sw("hs-k", o, 2, 60s);
  redis::keyed_fixed_window fw("hs-k", o, 2, 60s);
  redis::keyed_token_bucket tb("hs-k", o, 0.001, 2);
  for (const auto& k : keys) {
    CAPTURE(k.size());
    CHECK(sw.try_acquire(k));
    CHECK(fw.try_acquire(k));
    CHECK(tb.try_acquire(k));
  }
  for (const auto& k : keys) {
    CAPTURE(k.size());
    CHECK(sw.try_acquire(k));
    CHECK_FALSE(sw.try_acquire(k));
    CHECK(fw.try_acquire(k));
    CHECK_FALSE(fw.try_acquire(k));
    CHECK(tb.try_acquire(k));
    CHECK_FALSE(tb.try_acquire(k));
    CHECK(sw.retry_after(k) > 0ms);
  }
}

TEST_CASE("structures on a cluster refuse a name starting with '}', whose keys have no hash tag") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  redis::cluster c(cl->url());
  // "{}x}:ready" has an empty tag: each whole key is hashed, so one script's keys span slots.
  CHECK(redis::key_slot("{}x}:ready") != redis::key_slot("{}x}:seq"));
  auto names_it = [](auto&& make, const std::string& what) {
    CAPTURE(what);
    try {
      make();
      FAIL("constructed");
    } catch (const std::invalid_argument& e) {
      CHECK(std::string(e.what()).find(what) != std::string::npos);
      CHECK(std::string(e.what()).find("}x") != std::string::npos);
    }
  };
  names_it([&] { redis::queue<int> q("}x", c); }, "redis::queue");
  names_it([&] { redis::stream<int> s("}x", c); }, "redis::stream");
  names_it([&] { redis::distributed_lock l("}x", c); }, "redis::distributed_lock");
  names_it([&] { redis::token_bucket t("}x", c, 1.0, 1); }, "redis::token_bucket");
  names_it([&] { redis::sliding_window w("}x", c, 1, 1s); }, "redis::sliding_window");
  names_it([&] { redis::keyed_sliding_window w("}x", c, 1, 1s); }, "redis::keyed_sliding_window");
  names_it([&] { (void)std::make_unique<redis::cache<int>>("}x", c); }, "redis::cache");
}

TEST_CASE("on a cluster, names and keys with braces inside keep every key of a call in one slot") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  redis::cluster c(cl->url());
  // "hs}q" tags as "hs", "x{y" as "x{y": every key of the queue still shares one slot.
  for (std::string name : {"hs}q", "x{y", "{hs-q}"}) {
    CAPTURE(name);
    redis::queue<int> q(name, c, {.poll_interval = 20ms});
    q.destroy();
    REQUIRE(q.push(5) == status::ok);
    redis::queue<int>::delivery d;
    REQUIRE(q.pop_delivery_for(d, 5s) == status::ok);
    CHECK(d.value == 5);
    CHECK(q.ack(d));
    CHECK(q.pending() == 0);
    auto h = q.health();
    CHECK(h.ready == 0);
    q.destroy();
  }
  redis::keyed_sliding_window sw("hs-ck", c, 1, 60s);
  for (std::string k : {"a", "a}", "}a", "{a}", "a}:sw"}) {
    CAPTURE(k);
    CHECK(sw.try_acquire(k));
    CHECK_FALSE(sw.try_acquire(k));
  }
}
