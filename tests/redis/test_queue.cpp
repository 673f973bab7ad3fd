// Tests of spindle/redis/queue.hpp against a real redis-server: every channel operation's
// statuses, close seen by another object, lease expiry and recovery, expired-lease acks,
// dead-lettering, backpressure, worker_pool acknowledgement, and a cross-process run in which a
// consumer process is killed with SIGKILL while it holds items.
#include <doctest/doctest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <set>
#include <spindle/channel.hpp>
#include <spindle/redis/queue.hpp>
#include <spindle/worker_pool.hpp>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "support/fault_proxy.hpp"
#include "support/process.hpp"
#include "support/redis_server.hpp"
#include "support/threads.hpp"

namespace redis = spindle::redis;
using namespace std::chrono_literals;
using spindle::status;
using test_support::redis_server;

static_assert(spindle::channel<redis::queue<std::string>>);
static_assert(spindle::channel<redis::queue<int>>);
static_assert(spindle::detail::acknowledging_channel<redis::queue<int>>);

extern char** environ;

namespace {
using test_support::local_options;

// redis-cli next to the redis-server the fixture runs: the foreign producer of the tests.
std::string redis_cli() {
  return (std::filesystem::path(redis_server::binary()).parent_path() / "redis-cli").string();
}

using test_support::eventually;
}  // namespace

TEST_CASE("a queue refuses an empty name and zero timeouts") {
  CHECK_THROWS_AS(redis::queue<int>("", {}), std::invalid_argument);
  CHECK_THROWS_AS(redis::queue<int>("q", {}, {.visibility_timeout = 0ms}), std::invalid_argument);
  CHECK_THROWS_AS(redis::queue<int>("q", {}, {.poll_interval = 0ms}), std::invalid_argument);
}

TEST_CASE("the channels refuse a server older than 6.2 (LMOVE, XAUTOCLAIM)") {
  using redis::detail::version_at_least;
  CHECK_FALSE(version_at_least("6.0.16", 6, 2));
  CHECK_FALSE(version_at_least("5.0.7", 6, 2));
  CHECK(version_at_least("6.2.0", 6, 2));
  CHECK(version_at_least("7.0.15", 6, 2));
  CHECK(version_at_least("10.0.0", 6, 2));
  CHECK_FALSE(version_at_least("", 6, 2));
  CHECK_FALSE(version_at_least("garbage", 6, 2));
}

TEST_CASE("a server whose maxmemory-policy may evict keys is reported; noeviction is not") {
  if (!redis_server::available()) return;
  redis_server lru({.extra = {"--maxmemory-policy", "allkeys-lru"}});
  redis::connection c(local_options(lru.port()));
  std::string w = redis::detail::check_server(c, "redis::queue");
  CHECK(w.find("allkeys-lru") != std::string::npos);
  redis_server plain;
  redis::connection p(local_options(plain.port()));
  CHECK(redis::detail::check_server(p, "redis::queue").empty());
  redis::queue<int> q("lru", local_options(lru.port()));  // works, with the warning on stderr
  REQUIRE(q.push(1) == status::ok);
  int v = 0;
  REQUIRE(q.try_pop(v) == status::ok);
  CHECK(q.ack_last());
}

TEST_CASE("push and pop move values in FIFO order with ok, empty and timeout statuses") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::queue<std::string> q("fifo", local_options(srv.port()), {.poll_interval = 20ms});
  std::string v;
  CHECK(q.try_pop(v) == status::empty);
  CHECK(q.pop_for(v, 30ms) == status::timeout);
  CHECK(q.push(std::string("a")) == status::ok);
  std::string b = "b";
  CHECK(q.try_push(b) == status::ok);
  CHECK(q.push_for(std::string("c\r\n\0x", 5), 100ms) == status::ok);
  CHECK(q.size() == 3);
  CHECK(q.pop(v) == status::ok);
  CHECK(v == "a");
  CHECK(q.try_pop(v) == status::ok);
  CHECK(v == "b");
  CHECK(q.pop_for(v, 1s) == status::ok);
  CHECK(v == std::string("c\r\n\0x", 5));
  CHECK(q.in_flight() == 1);  // the last pop stays pending until this thread pops again
  CHECK(q.ack_last());
  CHECK(q.in_flight() == 0);
  CHECK_FALSE(q.ack_last());
}

TEST_CASE("pop after close drains, then returns closed, and pushes fail with closed") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::queue<int> q("drain", local_options(srv.port()), {.poll_interval = 20ms});
  for (int i = 0; i < 3; ++i) CHECK(q.push(i) == status::ok);
  CHECK_FALSE(q.closed());
  q.close();
  q.close();  // idempotent
  CHECK(q.closed());
  CHECK(q.push(9) == status::closed);
  CHECK(q.try_push(9) == status::closed);
  CHECK(q.push_for(9, 10ms) == status::closed);
  int v = -1;
  for (int i = 0; i < 3; ++i) {
    CHECK(q.pop(v) == status::ok);
    CHECK(v == i);
  }
  CHECK(q.pop(v) == status::closed);
  CHECK(q.try_pop(v) == status::closed);
  CHECK(q.pop_for(v, 10ms) == status::closed);
  CHECK_FALSE(q.pop().has_value());
  CHECK(q.in_flight() == 0);  // the closed pop acknowledged the last value
}

TEST_CASE("close by one object wakes a blocked pop of another object on the same name") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::queue<int> a("shared", local_options(srv.port()), {.poll_interval = 20ms});
  redis::queue<int> b("shared", local_options(srv.port()), {.poll_interval = 20ms});
  std::atomic<int> result{-1};
  redis::queue<int>::delivery got;
  test_support::thread_group g;
  g.spawn([&] { result.store(static_cast<int>(b.pop_delivery(got)), std::memory_order_release); });
  CHECK(a.push(7) == status::ok);
  CHECK(eventually([&] { return a.size() == 0; }));
  a.close();
  REQUIRE(g.join_within(10s));
  // The blocked pop got 7 and ended; b still holds 7, so a sees the queue closed but not
  // finished until b acks.
  int v = 0;
  CHECK(b.closed());
  CHECK(result.load(std::memory_order_acquire) == static_cast<int>(status::ok));
  CHECK(a.try_pop(v) == status::empty);
  CHECK(b.ack(got));
  CHECK(a.try_pop(v) == status::closed);
}

TEST_CASE("a pop with a stop token returns cancelled promptly") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::queue<int> q("cancel", local_options(srv.port()), {.poll_interval = 20ms});
  std::stop_source src;
  std::atomic<int> result{-1};
  test_support::thread_group g;
  g.spawn([&] {
    int v = 0;
    result.store(static_cast<int>(q.pop(v, src.get_token())), std::memory_order_release);
  });
  src.request_stop();
  REQUIRE(g.join_within(10s));
  CHECK(result.load(std::memory_order_acquire) == static_cast<int>(status::cancelled));
  int v = 0;
  std::stop_source stopped;
  stopped.request_stop();
  CHECK(q.pop(v, stopped.get_token()) == status::cancelled);
}

TEST_CASE("max_length gives backpressure: try_push returns full and push_for times out") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::queue<int> q("bounded", local_options(srv.port()),
                      {.max_length = 2, .poll_interval = 10ms});
  CHECK(q.try_push(1) == status::ok);
  CHECK(q.try_push(2) == status::ok);
  CHECK(q.try_push(3) == status::full);
  CHECK(q.push_for(3, 30ms) == status::timeout);
  test_support::thread_group g;
  std::atomic<int> pushed{-1};
  g.spawn([&] { pushed.store(static_cast<int>(q.push(3)), std::memory_order_release); });
  redis::queue<int>::delivery d;
  REQUIRE(q.pop_delivery_for(d, 5s) == status::ok);
  CHECK(q.ack(d));
  REQUIRE(g.join_within(10s));
  CHECK(pushed.load(std::memory_order_acquire) == static_cast<int>(status::ok));
  CHECK(q.size() == 2);
}

TEST_CASE("deliveries carry unique ids and counts, and nack redelivers then dead-letters") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::queue<std::string> q("dlq", local_options(srv.port()),
                              {.max_deliveries = 3, .poll_interval = 20ms});
  CHECK(q.push(std::string("x")) == status::ok);
  CHECK(q.push(std::string("y")) == status::ok);
  redis::queue<std::string>::delivery d, e;
  REQUIRE(q.try_pop_delivery(d) == status::ok);
  REQUIRE(q.try_pop_delivery(e) == status::ok);
  CHECK(d.id != e.id);
  CHECK(d.value == "x");
  CHECK(d.deliveries == 1);
  CHECK(q.ack(e));
  CHECK_FALSE(q.ack(e));  // already acknowledged
  for (std::uint32_t n = 1; n <= 3; ++n) {
    CHECK(d.deliveries == n);
    CHECK(q.nack(d));
    if (n < 3) REQUIRE(q.try_pop_delivery(d) == status::ok);
  }
  CHECK(q.try_pop_delivery(d) == status::empty);
  CHECK(q.dead_letter_size() == 1);
  redis::queue<std::string>::delivery dead;
  REQUIRE(q.try_pop_dead(dead) == status::ok);
  CHECK(dead.value == "x");
  CHECK(q.try_pop_dead(dead) == status::empty);
}

TEST_CASE("a dead consumer's items return after the visibility timeout with a higher count") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::queue<int> q("vis", local_options(srv.port()),
                      {.visibility_timeout = 150ms, .poll_interval = 20ms});
  redis::queue<int>::delivery d;
  {
    redis::queue<int> dead("vis", local_options(srv.port()),
                           {.visibility_timeout = 150ms, .poll_interval = 20ms});
    CHECK(q.push(41) == status::ok);
    REQUIRE(dead.try_pop_delivery(d) == status::ok);
    CHECK(d.value == 41);
    redis::queue<int>::delivery again;
    // `dead` heartbeats while alive, so it keeps the item: a live consumer never loses it.
    CHECK(q.pop_delivery_for(again, 400ms) == status::timeout);
    CHECK(dead.ack(d));
    CHECK(q.push(42) == status::ok);
    REQUIRE(dead.try_pop_delivery(d) == status::ok);
  }  // destroyed holding 42: its heartbeat stops, its lease expires, 42 is recovered
  redis::queue<int>::delivery got;
  REQUIRE(q.pop_delivery_for(got, 5s) == status::ok);
  CHECK(got.value == 42);
  CHECK(got.id == d.id);
  CHECK(got.deliveries == 2);
  CHECK(q.ack(got));
}

TEST_CASE("an ack after the lease expired fails and leaves the redelivery alone") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  redis::queue<int> q("lease", o, {.visibility_timeout = 100ms, .poll_interval = 20ms});
  redis::queue<int> other("lease", o, {.visibility_timeout = 100ms, .poll_interval = 20ms});
  CHECK(q.push(5) == status::ok);
  redis::queue<int>::delivery d;
  REQUIRE(q.try_pop_delivery(d) == status::ok);
  // Expire q's lease by hand (a stalled process whose heartbeat did not run).
  redis::connection c(o);
  c.command("ZADD", "{lease}:consumers", 0, q.consumer_id());
  redis::queue<int>::delivery e;
  REQUIRE(other.pop_delivery_for(e, 5s) == status::ok);  // recovered and redelivered
  CHECK(e.id == d.id);
  CHECK(e.deliveries == 2);
  CHECK_FALSE(q.ack(d));
  CHECK_FALSE(q.nack(d));
  CHECK(other.in_flight() == 1);
  CHECK(other.ack(e));
}

TEST_CASE("after close, a pop waits while another consumer holds a delivery; an ack ends it") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::queue<int> a("held", local_options(srv.port()), {.poll_interval = 20ms});
  redis::queue<int> b("held", local_options(srv.port()), {.poll_interval = 20ms});
  REQUIRE(a.push(1) == status::ok);
  redis::queue<int>::delivery d;
  REQUIRE(a.try_pop_delivery(d) == status::ok);
  a.close();
  int v = 0;
  CHECK(b.try_pop(v) == status::empty);  // not closed: a holds 1, which a nack would requeue
  CHECK(b.pop_for(v, 100ms) == status::timeout);
  CHECK(b.pending() == 1);
  std::atomic<int> result{-1};
  test_support::thread_group g;
  g.spawn([&] {
    int x = 0;
    result.store(static_cast<int>(b.pop(x)), std::memory_order_release);
  });
  CHECK(a.ack(d));
  REQUIRE(g.join_within(10s));  // within poll_interval of the ack
  CHECK(result.load(std::memory_order_acquire) == static_cast<int>(status::closed));
  CHECK(b.try_pop(v) == status::closed);
  CHECK(b.pending() == 0);
}

TEST_CASE("after close, an item nacked by its holder reaches the consumer waiting for it") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::queue<int> a("renack", local_options(srv.port()), {.poll_interval = 20ms});
  redis::queue<int> b("renack", local_options(srv.port()), {.poll_interval = 20ms});
  REQUIRE(a.push(8) == status::ok);
  redis::queue<int>::delivery d;
  REQUIRE(a.try_pop_delivery(d) == status::ok);
  a.close();
  redis::queue<int>::delivery e;
  CHECK(b.pop_delivery_for(e, 100ms) == status::timeout);  // waiting, not closed
  std::atomic<int> result{-1};
  test_support::thread_group g;
  g.spawn([&] { result.store(static_cast<int>(b.pop_delivery(e)), std::memory_order_release); });
  CHECK(a.nack(d));
  REQUIRE(g.join_within(10s));
  REQUIRE(result.load(std::memory_order_acquire) == static_cast<int>(status::ok));
  CHECK(e.value == 8);
  CHECK(e.deliveries == 2);
  CHECK(b.ack(e));
  CHECK(b.try_pop_delivery(e) == status::closed);
  CHECK(a.try_pop_delivery(d) == status::closed);
}

TEST_CASE("after close, a dead holder's item is recovered by the consumer waiting for it") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::queue<int> b("redead", local_options(srv.port()),
                      {.visibility_timeout = 150ms, .poll_interval = 20ms});
  {
    redis::queue<int> a("redead", local_options(srv.port()),
                        {.visibility_timeout = 150ms, .poll_interval = 20ms});
    REQUIRE(a.push(9) == status::ok);
    redis::queue<int>::delivery d;
    REQUIRE(a.try_pop_delivery(d) == status::ok);
    a.close();
  }  // destroyed holding 9: its lease expires
  redis::queue<int>::delivery e;
  REQUIRE(b.pop_delivery_for(e, 5s) == status::ok);
  CHECK(e.value == 9);
  CHECK(e.deliveries == 2);
  CHECK(b.ack(e));
  CHECK(b.try_pop_delivery(e) == status::closed);
}

TEST_CASE("ack_and_pop_delivery acks and pops in one call, and acks before closed or cancelled") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::queue<int> q("fused", local_options(srv.port()), {.poll_interval = 20ms});
  for (int i = 0; i < 3; ++i) REQUIRE(q.push(i) == status::ok);
  redis::queue<int>::delivery d;
  REQUIRE(q.pop_delivery(d) == status::ok);
  CHECK(d.value == 0);
  REQUIRE(q.ack_and_pop_delivery(d) == status::ok);
  CHECK(d.value == 1);
  CHECK(q.in_flight() == 1);  // 0 acked
  CHECK(q.pending() == 2);
  std::stop_source stop;
  stop.request_stop();
  CHECK(q.ack_and_pop_delivery(d, stop.get_token()) == status::cancelled);
  CHECK(q.in_flight() == 0);  // 1 acked although the pop was cancelled
  REQUIRE(q.pop_delivery(d) == status::ok);
  CHECK(d.value == 2);
  q.close();
  CHECK(q.ack_and_pop_delivery(d) == status::closed);
  CHECK(q.in_flight() == 0);
  CHECK(q.pending() == 0);
}

TEST_CASE("push_all pushes in order, in batches, waits while full and stops at close") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::queue<int> q("many", local_options(srv.port()), {.poll_interval = 20ms, .prefetch = 16});
  std::vector<int> items(200);
  for (int i = 0; i < 200; ++i) items[static_cast<std::size_t>(i)] = i;
  std::size_t n = 0;
  CHECK(q.push_all(items, n) == status::ok);  // more than push_batch: four scripts
  CHECK(n == 200);
  CHECK(q.size() == 200);
  CHECK(q.pending() == 200);
  redis::queue<int>::delivery d;
  std::set<std::uint64_t> ids;
  for (int i = 0; i < 200; ++i) {
    REQUIRE(q.try_pop_delivery(d) == status::ok);
    CHECK(d.value == i);
    ids.insert(d.id);
    CHECK(q.ack(d));
  }
  CHECK(ids.size() == 200);

  redis::queue<int> bounded("many-bounded", local_options(srv.port()),
                            {.max_length = 10, .poll_interval = 20ms});
  std::atomic<int> result{-1};
  std::atomic<std::size_t> pushed{0};
  test_support::thread_group g;
  g.spawn([&] {
    std::size_t k = 0;
    result.store(static_cast<int>(bounded.push_all(items, k)), std::memory_order_release);
    pushed.store(k, std::memory_order_release);
  });
  int v = 0;
  for (int i = 0; i < 200; ++i) {
    REQUIRE(bounded.pop_for(v, 5s) == status::ok);
    CHECK(v == i);
    CHECK(bounded.size() <= 10);
  }
  REQUIRE(g.join_within(10s));
  CHECK(result.load(std::memory_order_acquire) == static_cast<int>(status::ok));
  CHECK(pushed.load(std::memory_order_acquire) == 200);
  bounded.close();
  CHECK(bounded.push_all(items, n) == status::closed);
  CHECK(n == 0);
  CHECK(bounded.push_all(std::vector<int>{}) == status::ok);
}

TEST_CASE("prefetch takes several envelopes per fetch, hands them out in order, gives back the "
          "rest on destruction") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::queue<int> q("pf", local_options(srv.port()), {.poll_interval = 20ms});
  std::vector<int> items{0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  REQUIRE(q.push_all(items) == status::ok);
  {
    redis::queue<int> c("pf", local_options(srv.port()), {.poll_interval = 20ms, .prefetch = 4});
    redis::queue<int>::delivery d;
    REQUIRE(c.try_pop_delivery(d) == status::ok);
    CHECK(d.value == 0);
    CHECK(c.in_flight() == 4);  // 1 handed out, 3 buffered, all under c's lease
    CHECK(q.size() == 6);
    for (int i = 1; i <= 2; ++i) {
      REQUIRE(c.ack_and_pop_delivery(d) == status::ok);  // from the buffer: the ack waits
      CHECK(d.value == i);
      CHECK(q.size() == 6);
    }
    CHECK(q.pending() == 10);  // the two fused acks are deferred to the next fetch
    CHECK(c.ack(d));
    CHECK(q.pending() == 9);
  }  // destroyed: deferred acks sent, buffered 3 given back uncounted
  CHECK(q.pending() == 7);
  CHECK(q.size() == 7);
  redis::queue<int>::delivery e;
  REQUIRE(q.try_pop_delivery(e) == status::ok);
  CHECK(e.value == 3);
  CHECK(e.deliveries == 1);
  CHECK(q.ack(e));
}

TEST_CASE("with prefetch, pop(T&) acks are sent with the next fetch and closed comes last") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::queue<int> q("pfc", local_options(srv.port()), {.poll_interval = 20ms, .prefetch = 3});
  std::vector<int> items{0, 1, 2, 3, 4};
  REQUIRE(q.push_all(items) == status::ok);
  q.close();
  int v = -1;
  for (int i = 0; i < 3; ++i) {
    REQUIRE(q.pop(v) == status::ok);
    CHECK(v == i);
  }
  CHECK(q.in_flight() == 3);  // 0 and 1 acked locally, 2 pending: nothing sent yet
  REQUIRE(q.pop(v) == status::ok);  // a fetch: carries the acks of 0, 1, 2
  CHECK(v == 3);
  CHECK(q.in_flight() == 2);
  REQUIRE(q.pop(v) == status::ok);
  CHECK(v == 4);
  CHECK(q.pop(v) == status::closed);
  CHECK(q.in_flight() == 0);
  CHECK(q.pending() == 0);
}

TEST_CASE("a consumer whose lease was recovered by another drops its prefetched envelopes") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  redis::queue<int> c("pflost", o,
                      {.visibility_timeout = 300ms, .poll_interval = 20ms, .prefetch = 4});
  redis::queue<int> other("pflost", o, {.visibility_timeout = 300ms, .poll_interval = 20ms});
  std::vector<int> items{0, 1, 2, 3};
  REQUIRE(other.push_all(items) == status::ok);
  redis::queue<int>::delivery d;
  REQUIRE(c.try_pop_delivery(d) == status::ok);  // 0 handed out, 1-3 buffered
  // c stalls: its lease is expired by hand, and `other` recovers its four deliveries.
  redis::connection r(o);
  r.command("ZADD", "{pflost}:consumers", 0, c.consumer_id());
  CHECK(other.recover() == 4);
  // c's next heartbeat (every 100 ms) finds its lease gone and registers again.
  CHECK(eventually([&] { return !r.command("ZSCORE", "{pflost}:consumers", c.consumer_id())
                                     .is_nil(); }));
  // The stale 1-3 (delivery count 1) were dropped; c's pop fetches the requeued items afresh.
  REQUIRE(c.try_pop_delivery(d) == status::ok);
  CHECK(d.value == 0);
  CHECK(d.deliveries == 2);
  for (int i = 1; i <= 3; ++i) {
    CHECK(c.ack(d));
    REQUIRE(c.try_pop_delivery(d) == status::ok);
    CHECK(d.value == i);
    CHECK(d.deliveries == 2);
  }
  CHECK(c.ack(d));
  CHECK(c.pending() == 0);
}

TEST_CASE("a consumer whose lease is gone moves no item into its processing list before it "
          "holds a lease again") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  redis::connection r(o);
  redis::queue<int> c("nolease", o, {.visibility_timeout = 60s, .poll_interval = 20ms});
  redis::queue<int> producer("nolease", o);
  // Each round the lease entry vanishes (another consumer recovered it, or a failover lost it)
  // while c is idle; c's next pop must take a lease before it moves anything.
  for (int i = 0; i < 20; ++i) {
    REQUIRE(producer.push(i) == status::ok);
    r.command("ZREM", "{nolease}:consumers", c.consumer_id());
    redis::queue<int>::delivery d;
    REQUIRE(c.try_pop_delivery(d) == status::ok);
    CHECK(d.value == i);
    CHECK_FALSE(r.command("ZSCORE", "{nolease}:consumers", c.consumer_id()).is_nil());
    CHECK(c.ack(d));
  }
  CHECK(c.pending() == 0);
}

TEST_CASE("a heartbeat that finds its lease gone requeues what its processing list holds") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  redis::connection r(o);
  redis::queue<int> c("hblost", o, {.visibility_timeout = 300ms, .poll_interval = 20ms});
  REQUIRE(c.push(7) == status::ok);
  redis::queue<int>::delivery d;
  REQUIRE(c.try_pop_delivery(d) == status::ok);
  // The lease entry is lost (a failover) while the processing list survives: the heartbeat
  // (every 100 ms) must give the item back rather than re-create the lease over the list.
  r.command("ZREM", "{hblost}:consumers", c.consumer_id());
  CHECK(eventually([&] { return r.command("LLEN", "{hblost}:ready").integer() == 1; }, 3s));
  CHECK_FALSE(c.ack(d));  // forfeit
  redis::queue<int> other("hblost", o, {.visibility_timeout = 300ms, .poll_interval = 20ms});
  redis::queue<int>::delivery e;
  REQUIRE(other.try_pop_delivery(e) == status::ok);
  CHECK(e.value == 7);
  CHECK(e.deliveries == 2);
  CHECK(other.ack(e));
  CHECK(other.pending() == 0);
}

TEST_CASE("a sweep requeues a processing list that no lease covers") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  redis::connection r(o);
  // A consumer known to the queue whose lease entry is gone (a failover) and who then died.
  r.command("LPUSH", "{sweep}:proc:ghost", "9:0:42");
  r.command("SADD", "{sweep}:known", "ghost");
  r.command("SET", "{sweep}:pending", 1);
  redis::queue<int> c("sweep", o, {.visibility_timeout = 300ms, .poll_interval = 20ms});
  CHECK(c.recover() == 1);
  redis::queue<int>::delivery d;
  REQUIRE(c.try_pop_delivery(d) == status::ok);
  CHECK(d.value == 42);
  CHECK(d.id == 9);
  CHECK(d.deliveries == 2);
  CHECK(c.ack(d));
  CHECK(c.pending() == 0);
  CHECK(r.command("SISMEMBER", "{sweep}:known", "ghost").integer() == 0);
}

TEST_CASE("a bare payload pushed by redis-cli is a first delivery, counted pending") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  redis::queue<std::string> q("foreign", o, {.poll_interval = 20ms});
  REQUIRE(q.push(std::string("ours")) == status::ok);
  auto r = test_support::run({redis_cli(), "-p", std::to_string(srv.port()), "LPUSH",
                              "{foreign}:ready", "hello", "x:y:payload"},
                             10s);
  REQUIRE(r.exited(0));
  redis::queue<std::string>::delivery d;
  std::vector<std::string> got;
  for (int i = 0; i < 3; ++i) {
    REQUIRE(q.pop_delivery_for(d, 5s) == status::ok);
    CHECK(d.deliveries == 1);
    got.push_back(d.value);
    CHECK(q.ack(d));
  }
  CHECK(got == std::vector<std::string>{"ours", "hello", "x:y:payload"});
  CHECK(q.pending() == 0);
  CHECK(q.dead_letter_size() == 0);
}

TEST_CASE("a poison payload in a prefetched batch is dead-lettered alone, with its reason") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  redis::connection r(o);
  // int queue; "oops" does not decode. Pushed as envelopes by a producer in another language.
  r.command("LPUSH", "{poison}:ready", "1:0:10", "2:0:oops", "3:0:30", "4:0:40");
  r.command("SET", "{poison}:pending", 4);
  redis::queue<int> q("poison", o, {.poll_interval = 20ms, .prefetch = 4});
  std::vector<int> got;
  redis::queue<int>::delivery d;
  for (int i = 0; i < 3; ++i) {
    REQUIRE(q.try_pop_delivery(d) == status::ok);
    got.push_back(d.value);
    CHECK(d.deliveries == 1);
    CHECK(q.ack(d));
  }
  CHECK(got == std::vector<int>{10, 30, 40});
  CHECK(q.try_pop_delivery(d) == status::empty);
  REQUIRE(q.dead_letter_size() == 1);
  redis::queue<int>::delivery dead;
  REQUIRE(q.try_pop_dead(dead) == status::ok);
  CHECK(dead.id == 2);
  CHECK(dead.deliveries == 1);
  CHECK(dead.reason == "undecodable payload");
  CHECK(q.pending() == 0);
}

TEST_CASE("a dead letter reports max_deliveries deliveries and the reason") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::queue<std::string> q("dlcount", local_options(srv.port()),
                              {.max_deliveries = 5, .poll_interval = 20ms});
  REQUIRE(q.push(std::string("bad")) == status::ok);
  redis::queue<std::string>::delivery d;
  for (int i = 0; i < 5; ++i) {
    REQUIRE(q.try_pop_delivery(d) == status::ok);
    CHECK(q.nack(d));
  }
  redis::queue<std::string>::delivery dead;
  REQUIRE(q.try_pop_dead(dead) == status::ok);
  CHECK(dead.value == "bad");
  CHECK(dead.deliveries == 5);
  CHECK(dead.reason == "max_deliveries");
  CHECK(q.pending() == 0);
}

TEST_CASE("a poll_interval not shorter than io_timeout is refused") {
  redis::options o{.io_timeout = 100ms};
  CHECK_THROWS_AS(redis::queue<int>("q", o, {.poll_interval = 100ms}), std::invalid_argument);
  CHECK_THROWS_AS(redis::queue<int>("q", o, {.poll_interval = 1s}), std::invalid_argument);
  CHECK_NOTHROW(redis::queue<int>("q", o, {.poll_interval = 99ms}));
  CHECK_NOTHROW(redis::queue<int>("q", {.io_timeout = 0ms}, {.poll_interval = 1s}));
}

TEST_CASE("push_for on a full queue polls at most once per poll_interval once backed off") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  redis::queue<int> q("backoff", o, {.max_length = 1, .poll_interval = 1ms});
  REQUIRE(q.push(1) == status::ok);
  redis::connection r(o);
  r.command("CONFIG", "RESETSTAT");
  CHECK(q.push_for(2, 700ms) == status::timeout);
  std::string stats = r.command("INFO", "commandstats").str();
  auto at = stats.find("cmdstat_evalsha:calls=");
  REQUIRE(at != std::string::npos);
  long calls = std::stol(stats.substr(at + 22));
  MESSAGE("push scripts in 700 ms at poll_interval 1 ms: " << calls);
  // 1 ms per attempt: about 700. The unclamped doubling overflowed after ~64 attempts and then
  // spun without sleeping (tens of thousands).
  CHECK(calls < 1400);
}

TEST_CASE("prefetching threads whose lease keeps vanishing lose nothing and hold nothing") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  redis::connection r(o);
  redis::queue<int> q("churnlease", o,
                      {.visibility_timeout = 300ms, .poll_interval = 5ms, .prefetch = 4});
  constexpr int n = 600;
  std::mutex mu;
  std::set<int> seen;
  test_support::thread_group g;
  for (int t = 0; t < 3; ++t)
    g.spawn([&] {
      redis::queue<int>::delivery d;
      while (q.pop_delivery(d) == status::ok) {
        {
          std::lock_guard lock(mu);
          seen.insert(d.value);
        }
        q.ack(d);  // fails for a delivery whose lease was lost meanwhile: it comes back
      }
    });
  std::vector<int> items(n);
  for (int i = 0; i < n; ++i) items[i] = i;
  REQUIRE(q.push_all(items) == status::ok);
  // The lease entry vanishes again and again while fetches, buffer hand-outs and heartbeats
  // run: every re-take must requeue exactly what the processing list holds, and a fetch
  // racing with it must never leave envelopes behind (the fence; generation of holdings).
  int faults = 0;
  while (faults < 200) {
    r.command("ZREM", "{churnlease}:consumers", q.consumer_id());
    ++faults;
    {
      std::lock_guard lock(mu);
      if (seen.size() == std::size_t{n}) break;
    }
    std::this_thread::sleep_for(1ms);  // the fault's rhythm, not a synchronisation
  }
  REQUIRE(eventually(
      [&] {
        std::lock_guard lock(mu);
        return seen.size() == std::size_t{n};
      },
      20s));
  q.close();
  REQUIRE(g.join_within(20s));  // closed needs pending 0: nothing held for ever
  MESSAGE("lease removals: " << faults);
  CHECK(q.pending() == 0);
  CHECK(q.in_flight() == 0);
  CHECK(q.size() == 0);
}

TEST_CASE("a fetch whose reply was lost gives its item back uncounted: max_deliveries = 1 "
          "does not dead-letter it") {
  if (!redis_server::available()) return;
  redis_server srv;
  spindle::test::fault_proxy proxy("127.0.0.1", srv.port());
  // A long lease: the heartbeat (an EVALSHA too) stays quiet while the fetch's reply is dropped.
  redis::queue<int> q("lostreply", local_options(proxy.port()),
                      {.visibility_timeout = 30s, .max_deliveries = 1});
  redis::connection r(local_options(srv.port()));
  redis::queue<int>::delivery d;
  CHECK(q.try_pop_delivery(d) == status::empty);  // takes the lease, loads the scripts
  REQUIRE(q.push(7) == status::ok);
  // The fetch script runs on the server, moving the item to q's processing list; its reply
  // never arrives (the proxy drops it and the connection).
  proxy.drop_reply_of("EVALSHA");
  CHECK_THROWS_AS((void)q.try_pop_delivery(d), redis::error);
  CHECK(r.command("LLEN", "{lostreply}:ready").integer() == 0);  // stranded in q's list
  CHECK(q.in_flight() == 1);
  REQUIRE(q.try_pop_delivery(d) == status::ok);  // the stranded item was given back first
  CHECK(d.value == 7);
  CHECK(d.deliveries == 1);  // uncounted: the lost delivery reached nobody
  CHECK(q.ack(d));
  CHECK(q.dead_letter_size() == 0);
  CHECK(q.pending() == 0);
}

TEST_CASE("worker_pool acks after the handler and a throwing handler leads to dead letter") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::queue<int> q("pool", local_options(srv.port()),
                      {.max_deliveries = 3, .poll_interval = 20ms});
  constexpr int n = 50;
  for (int i = 0; i < n; ++i) REQUIRE(q.push(i) == status::ok);
  std::atomic<int> sum{0}, poison_calls{0}, errors{0};
  {
    spindle::worker_pool wp(
        q, 3,
        [&](int v) {
          if (v == 13) {
            poison_calls.fetch_add(1, std::memory_order_relaxed);
            throw std::runtime_error("poison");
          }
          sum.fetch_add(v, std::memory_order_relaxed);
        },
        {.on_error = [&](std::exception_ptr) { errors.fetch_add(1, std::memory_order_relaxed); }});
    REQUIRE(eventually([&] { return wp.stats().processed == n - 1 && q.dead_letter_size() == 1; }));
    q.close();
    wp.join();
    CHECK(wp.stats().failed == 3);
  }
  CHECK(sum.load() == n * (n - 1) / 2 - 13);
  CHECK(poison_calls.load() == 3);
  CHECK(errors.load() == 3);
  CHECK(q.in_flight() == 0);
}

TEST_CASE("worker_pool over a Redis queue outlives an outage longer than the retry window") {
  if (!redis_server::available()) return;
  redis_server srv({.appendonly = true});
  redis::queue<int> q("outage", local_options(srv.port()),
                      {.poll_interval = 20ms, .retry_window = 100ms});
  std::atomic<int> handled{0}, errors{0};
  spindle::worker_pool wp(
      q, 2, [&](int) { handled.fetch_add(1, std::memory_order_relaxed); },
      {.on_error = [&](std::exception_ptr) { errors.fetch_add(1, std::memory_order_relaxed); }});
  REQUIRE(q.push(1) == status::ok);
  REQUIRE(eventually([&] { return handled.load() == 1; }));
  srv.kill();
  // Down for several retry windows: each worker's pop throws, is reported, and retried.
  REQUIRE(eventually([&] { return errors.load() >= 4; }));
  srv.start();
  REQUIRE(q.push(2) == status::ok);
  REQUIRE(q.push(3) == status::ok);
  CHECK(eventually([&] { return handled.load() == 3; }, 20s));
  MESSAGE("errors reported during the outage: " << errors.load());
  q.close();
  wp.join();
  CHECK(q.pending() == 0);
}

TEST_CASE("threads sharing a queue lose and duplicate nothing") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::queue<int> q("mt", local_options(srv.port()), {.poll_interval = 20ms});
  constexpr int producers = 2, consumers = 2, per = 200;
  test_support::start_gate gate;
  test_support::thread_group g;
  std::mutex mu;
  std::multiset<int> seen;
  for (int p = 0; p < producers; ++p)
    g.spawn([&, p] {
      gate.wait();
      for (int i = 0; i < per; ++i) REQUIRE(q.push(p * per + i) == status::ok);
    });
  for (int c = 0; c < consumers; ++c)
    g.spawn([&] {
      gate.wait();
      int v = 0;
      while (q.pop(v) == status::ok) {
        std::lock_guard lock(mu);
        seen.insert(v);
      }
    });
  gate.open();
  REQUIRE(eventually(
      [&] {
        std::lock_guard lock(mu);
        return seen.size() == std::size_t{producers * per};
      },
      30s));
  q.close();
  REQUIRE(g.join_within(10s));
  std::set<int> unique(seen.begin(), seen.end());
  CHECK(unique.size() == seen.size());
  CHECK(q.in_flight() == 0);
}

TEST_CASE("a server restart mid-run (appendonly) loses nothing: clients reconnect") {
  if (!redis_server::available()) return;
  redis_server srv({.appendonly = true});
  redis::queue<int> q("restart", local_options(srv.port()), {.poll_interval = 20ms});
  constexpr int n = 100;
  std::mutex mu;
  std::set<int> seen;
  test_support::thread_group g;
  g.spawn([&] {
    int v = 0;
    while (q.pop(v) == status::ok) {
      std::lock_guard lock(mu);
      seen.insert(v);
    }
  });
  for (int i = 0; i < n / 2; ++i) REQUIRE(q.push(i) == status::ok);
  srv.restart();  // the consumer is blocked in BLMOVE or between pops: it retries
  for (int i = n / 2; i < n; ++i) REQUIRE(q.push(i) == status::ok);
  REQUIRE(eventually(
      [&] {
        std::lock_guard lock(mu);
        return seen.size() == std::size_t{n};
      },
      30s));
  q.close();
  REQUIRE(g.join_within(10s));
  CHECK(q.in_flight() == 0);
}

TEST_CASE("queue health reports ready, held per consumer with its lease, dead and the oldest") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  redis::queue_options qo{.max_deliveries = 1, .poll_interval = 20ms};
  redis::queue<int> a("qh", o, qo);
  redis::queue<int> b("qh", o, qo);
  auto empty = a.health();
  CHECK(empty.ready == 0);
  CHECK(empty.held == 0);
  CHECK(empty.pending == 0);
  CHECK(empty.consumers.empty());
  CHECK(empty.oldest_ready_id == 0);
  redis::connection c(o);
  CHECK(c.command("KEYS", "{qh}*").size() == 0);  // health creates nothing
  for (int i = 1; i <= 5; ++i) REQUIRE(a.push(i) == status::ok);  // ids 1..5
  redis::queue<int>::delivery d1, d2, d3;
  REQUIRE(a.try_pop_delivery(d1) == status::ok);
  REQUIRE(a.try_pop_delivery(d2) == status::ok);
  REQUIRE(b.try_pop_delivery(d3) == status::ok);
  CHECK(b.nack(d3));  // max_deliveries 1: dead-lettered
  auto h = a.health();
  CHECK(h.ready == 2);
  CHECK(h.held == 2);
  CHECK(h.dead_letters == 1);
  CHECK(h.pending == 4);
  CHECK_FALSE(h.closed);
  CHECK(h.oldest_ready_id == 4);
  CHECK(h.oldest_ready_deliveries == 0);
  CHECK(h.ids_since_oldest_ready == 1);
  REQUIRE(h.consumers.size() == 2);
  for (const auto& ch : h.consumers) {
    CHECK(ch.held == (ch.id == a.consumer_id() ? 2u : 0u));
    REQUIRE(ch.lease_left.has_value());
    CHECK(*ch.lease_left > 0ms);
    CHECK(*ch.lease_left <= qo.visibility_timeout);
  }
  CHECK(a.ack(d1));
  CHECK(a.nack(d2));  // max_deliveries 1: dead too
  a.close();
  auto after = a.health();
  CHECK(after.held == 0);
  CHECK(after.dead_letters == 2);
  CHECK(after.closed);
}

TEST_CASE("queue health: the oldest ready item's age comes from the push-time marks, a requeued "
          "item keeps its first push's age, and an item older than every mark has none") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  redis::queue<int> q("qage", o, {.poll_interval = 20ms});
  redis::connection c(o);
  CHECK_FALSE(q.health().oldest_ready_age.has_value());  // nothing ready
  for (int i = 1; i <= 3; ++i) REQUIRE(q.push(i) == status::ok);  // ids 1..3, one second or two
  auto h = q.health();
  REQUIRE(h.oldest_ready_age.has_value());
  CHECK(*h.oldest_ready_age >= 0ms);
  CHECK(*h.oldest_ready_age <= 60s);  // generous: "just now", by server time
  // Back-date the marks by an hour: the same items are now an hour old.
  const auto now_s = std::stoll(c.command("TIME")[0].str());
  c.command("DEL", "{qage}:push-times");
  c.command("ZADD", "{qage}:push-times", 1, now_s - 3600);
  h = q.health();
  REQUIRE(h.oldest_ready_age.has_value());
  CHECK(*h.oldest_ready_age >= 3599s);
  CHECK(*h.oldest_ready_age <= 3660s);
  // A newer mark does not make an older item younger; the next push adds its own mark.
  REQUIRE(q.push(4) == status::ok);
  CHECK(c.command("ZCARD", "{qage}:push-times").integer() == 2);
  CHECK(*q.health().oldest_ready_age >= 3599s);
  // Item 1 taken and given back (nack): first in line again, still an hour old.
  redis::queue<int>::delivery d;
  REQUIRE(q.try_pop_delivery(d) == status::ok);
  CHECK(d.value == 1);
  CHECK(q.nack(d));
  h = q.health();
  CHECK(h.oldest_ready_id == 1);
  CHECK(h.oldest_ready_deliveries == 1);
  REQUIRE(h.oldest_ready_age.has_value());
  CHECK(*h.oldest_ready_age >= 3599s);
  // No mark at or below its id (trimmed, or written by an older producer): no age, not a guess.
  c.command("ZREMRANGEBYSCORE", "{qage}:push-times", 0, 1);
  h = q.health();
  CHECK(h.oldest_ready_id == 1);
  CHECK_FALSE(h.oldest_ready_age.has_value());
  q.destroy();
  CHECK(c.command("EXISTS", "{qage}:push-times").integer() == 0);
}

TEST_CASE("queue health: a lost or expired lease, a bare payload first in line, a wrong type") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  redis::queue<std::string> q("qg", o, {.poll_interval = 20ms});
  REQUIRE(q.push(std::string("x")) == status::ok);
  redis::connection c(o);
  // Two consumers that no live object is: one whose lease entry vanished (a failover), one
  // whose lease expired and was not recovered yet (q pops nothing, so nothing sweeps).
  c.command("SADD", "{qg}:known", "ghost", "late");
  c.command("RPUSH", "{qg}:proc:ghost", "90:0:g");
  c.command("RPUSH", "{qg}:proc:late", "91:1:l", "92:0:m");
  c.command("ZADD", "{qg}:consumers", 1000, "late");
  c.command("RPUSH", "{qg}:ready", "bare payload");  // the right end: next to be delivered
  auto h = q.health();
  CHECK(h.ready == 2);
  CHECK(h.held == 3);
  CHECK(h.oldest_ready_id == 0);  // a bare payload has no id until fetched
  CHECK(h.ids_since_oldest_ready == 0);
  std::map<std::string, redis::queue_consumer_health> by_id;
  for (const auto& ch : h.consumers) by_id[ch.id] = ch;
  REQUIRE(by_id.size() == 2);
  CHECK(by_id["ghost"].held == 1);
  CHECK_FALSE(by_id["ghost"].lease_left.has_value());
  CHECK(by_id["late"].held == 2);
  REQUIRE(by_id["late"].lease_left.has_value());
  CHECK(*by_id["late"].lease_left < 0ms);  // expired long ago
  c.command("DEL", "{qg}:ready");
  c.command("SET", "{qg}:ready", "not a list");
  CHECK_THROWS_AS(q.health(), redis::server_error);  // WRONGTYPE, not a made-up report
  c.command("DEL", "{qg}:ready");
  CHECK(q.health().ready == 0);  // the pooled connection is still in step
}

#ifdef SPINDLE_REDIS_WORKER
namespace {
pid_t spawn_worker(const std::vector<std::string>& args) {
  std::vector<std::string> all{SPINDLE_REDIS_WORKER};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  REQUIRE(::posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ) == 0);
  return pid;
}

bool reap_within(pid_t pid, std::chrono::milliseconds limit, int& st) {
  return eventually([&] { return ::waitpid(pid, &st, WNOHANG) == pid; }, limit);
}
}  // namespace

TEST_CASE("two consumer processes, one killed holding items: nothing lost, duplicates only its") {
  if (!redis_server::available()) return;
  redis_server srv;
  const std::string port = std::to_string(srv.port());
  constexpr int n = 300;
  redis::connection c(local_options(srv.port()));
  // the victim takes 5 items at a time and never acks; the survivor processes normally
  pid_t victim = spawn_worker({port, "xp", "consume", "victim", "hold"});
  pid_t producer = spawn_worker({port, "xp", "produce", std::to_string(n)});
  REQUIRE(eventually([&] { return c.command("LLEN", "xp:log:victim").integer() >= 5; }));
  ::kill(victim, SIGKILL);
  int st = 0;
  REQUIRE(reap_within(victim, 10s, st));
  pid_t survivor = spawn_worker({port, "xp", "consume", "survivor", "ack"});
  REQUIRE(reap_within(producer, 30s, st));
  CHECK((WIFEXITED(st) && WEXITSTATUS(st) == 0));
  // the survivor recovers the victim's items after the visibility timeout (300 ms)
  REQUIRE(eventually([&] { return c.command("SCARD", "xp:done").integer() == n; }, 30s));
  c.command("SET", "{xp}:closed", "1");
  REQUIRE(reap_within(survivor, 10s, st));
  CHECK((WIFEXITED(st) && WEXITSTATUS(st) == 0));
  std::set<std::string> victim_items;
  auto list1 = c.command("LRANGE", "xp:log:victim", 0, -1);
  for (const auto& r : list1.elements()) victim_items.insert(r.str());
  std::map<std::string, int> count;
  auto list2 = c.command("LRANGE", "xp:log:survivor", 0, -1);
  for (const auto& r : list2.elements()) ++count[r.str()];
  CHECK(count.size() == std::size_t{n});  // every item processed at least once
  for (const auto& [item, k] : count) {
    CHECK(k == 1);  // the survivor acks each: never redelivered to it
  }
  for (const auto& item : victim_items) CHECK(count.count(item) == 1);  // its holdings recovered
  CHECK(c.command("LLEN", "{xp}:dead").integer() == 0);
}
#endif
