// Tests of the structures on Redis Cluster: queue and stream built on a redis::cluster (their
// pool pinned to the slot of their {name} tag, pool.hpp), queues on all three primaries, a
// primary SIGKILLed during a worker_pool run over one queue per primary (conservation), the
// limiters (single-key: pinned; per-key: routed per call), the lock, check_and_set, and the
// cache (routed per key).
//
// One cluster (3 primaries + 3 replicas, tests/support/redis_cluster.hpp) is shared by the
// cases; it is started on first use. Each case uses its own names.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <spindle/redis/cache.hpp>
#include <spindle/redis/cluster.hpp>
#include <spindle/redis/keyed_rate_limit.hpp>
#include <spindle/redis/lock.hpp>
#include <spindle/redis/queue.hpp>
#include <spindle/redis/rate_limit.hpp>
#include <spindle/redis/stream.hpp>
#include <spindle/redis/transaction.hpp>
#include <spindle/worker_pool.hpp>
#include <string>
#include <thread>
#include <vector>

#include "support/redis_cluster.hpp"
#include "support/threads.hpp"

namespace redis = spindle::redis;
using namespace std::chrono_literals;
using spindle::status;
using test_support::eventually;
using test_support::redis_cluster;
using test_support::direct;
using test_support::shared_cluster;

namespace {

// A structure name `prefix`N whose {tag} slot the primary `owner` serves.
std::string name_on(redis::cluster& c, const redis::node_address& owner,
                    const std::string& prefix) {
  for (int i = 0; i < 100000; ++i) {
    std::string n = prefix + std::to_string(i);
    if (c.primary_for_key("{" + n + "}") == owner) return n;
  }
  FAIL("no name found for " << owner.str());
  return {};
}

// Waits until `replicas` replicas of the primary of `tag`'s slot have every write made there so
// far. WAIT counts up to the last write of its own connection: hence the SET first (the
// replication stream is ordered, so it covers the writes other connections made before).
void replicate(redis::cluster& c, const std::string& tag, int replicas = 1) {
  redis::batch b;
  b.add("SET", tag + ":replicated", 1).add("WAIT", replicas, 5000);
  auto rs = c.pipeline(b);
  REQUIRE(rs.at(1).integer() >= replicas);
}

// Pushes v, trying again (at most 100 times, 50 ms apart) while the push fails: during a
// failover a push fails until the replica is promoted (never resent blindly by spindle; here the
// test knows a duplicate would be seen).
template <class C>
status push_retrying(C& ch, int v) {
  for (int attempt = 0;; ++attempt) {
    try {
      return ch.push(v);
    } catch (const redis::error&) {
      if (attempt == 100) throw;
      std::this_thread::sleep_for(50ms);
    }
  }
}

// Moves `slot`, with its keys, from the primary src to dst (importing side first, as the
// specification orders it), then tells every primary the new owner.
void move_slot(redis::cluster& c, std::uint16_t slot, const redis::node_address& src,
               const redis::node_address& dst) {
  auto s = direct(src), d = direct(dst);
  auto src_id = s.command("CLUSTER", "MYID").str(), dst_id = d.command("CLUSTER", "MYID").str();
  REQUIRE(d.command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id).str() == "OK");
  REQUIRE(s.command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id).str() == "OK");
  for (;;) {
    auto keys = s.command("CLUSTER", "GETKEYSINSLOT", slot, 100);
    if (keys.size() == 0) break;
    std::vector<std::string> ks;
    for (const auto& k : keys.elements()) ks.push_back(k.str());
    REQUIRE(s.command("MIGRATE", dst.host, dst.port, "", 0, 5000, "KEYS", ks).str() == "OK");
  }
  REQUIRE(d.command("CLUSTER", "SETSLOT", slot, "NODE", dst_id).str() == "OK");
  REQUIRE(s.command("CLUSTER", "SETSLOT", slot, "NODE", dst_id).str() == "OK");
  for (const auto& p : c.primaries())
    if (!(p == src) && !(p == dst))
      REQUIRE(direct(p).command("CLUSTER", "SETSLOT", slot, "NODE", dst_id).str() == "OK");
}

}  // namespace

TEST_CASE("a queue and a stream on a cluster push, pop and ack on the primary of their slot") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  redis::cluster c(cl->url());
  redis::queue<int> q("cs-q", c, {.poll_interval = 20ms});
  redis::stream<int> s("cs-s", c, {.poll_interval = 20ms});
  q.destroy();
  s.destroy();
  for (int i = 0; i < 10; ++i) {
    REQUIRE(q.push(i) == status::ok);
    REQUIRE(s.push(100 + i) == status::ok);
  }
  // The keys are on the primary of the slot, and on no other primary.
  auto owner_q = c.primary_for_key("{cs-q}");
  auto owner_s = c.primary_for_key("{cs-s}");
  CHECK(direct(owner_q).command("LLEN", "{cs-q}:ready").integer() == 10);
  CHECK(direct(owner_s).command("XLEN", "{cs-s}:stream").integer() == 10);
  int sum = 0;
  for (int i = 0; i < 10; ++i) {
    redis::queue<int>::delivery d;
    REQUIRE(q.pop_delivery_for(d, 5s) == status::ok);
    CHECK(q.ack(d));
    sum += d.value;
    redis::stream<int>::delivery e;
    REQUIRE(s.pop_delivery_for(e, 5s) == status::ok);
    CHECK(s.ack(e));
    sum += e.value;
  }
  CHECK(sum == 45 + 1045);
  CHECK(q.pending() == 0);
  CHECK(s.in_flight() == 0);
  q.close();
  s.close();
  int v = 0;
  CHECK(q.pop_for(v, 5s) == status::closed);
  CHECK(s.pop_for(v, 5s) == status::closed);
}

TEST_CASE("queues whose names hash to all three primaries each live on their own primary") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  redis::cluster c(cl->url());
  auto primaries = c.primaries();
  REQUIRE(primaries.size() == 3);
  std::vector<std::unique_ptr<redis::queue<int>>> qs;
  for (const auto& p : primaries) {
    qs.push_back(std::make_unique<redis::queue<int>>(name_on(c, p, "spread"), c,
                                                     redis::queue_options{.poll_interval = 20ms}));
    qs.back()->destroy();
  }
  // A blocked pop on each queue, woken by a push from another object (through the signal list).
  test_support::thread_group g;
  std::vector<int> got(3, -1);
  for (std::size_t i = 0; i < 3; ++i)
    g.spawn([&, i] {
      int v = 0;
      if (qs[i]->pop_for(v, 10s) == status::ok) got[i] = v;
    });
  for (std::size_t i = 0; i < 3; ++i) {
    redis::queue<int> producer(qs[i]->name(), c);
    REQUIRE(producer.push(static_cast<int>(i) + 7) == status::ok);
  }
  REQUIRE(g.join_within(15s));
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(got[i] == static_cast<int>(i) + 7);
    // Each queue's keys are on its own primary, and on no other.
    auto slot = redis::key_slot("{" + qs[i]->name() + "}");
    for (std::size_t j = 0; j < 3; ++j)
      CHECK((direct(primaries[j]).command("CLUSTER", "COUNTKEYSINSLOT", slot).integer() > 0) ==
            (i == j));
  }
}

TEST_CASE("a queue whose slot moves to another primary follows it: MOVED, map refresh, go on") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  redis::cluster c(cl->url());
  redis::queue<int> q("cs-moving", c, {.poll_interval = 20ms});
  q.destroy();
  for (int i = 0; i < 6; ++i) REQUIRE(q.push(i) == status::ok);
  int v = -1;
  REQUIRE(q.pop_for(v, 5s) == status::ok);  // the pool holds connections to the old primary
  CHECK(v == 0);
  const auto slot = redis::key_slot("{cs-moving}");
  auto src = c.primary_for_key("{cs-moving}");
  redis::node_address dst;
  for (const auto& p : c.primaries())
    if (!(p == src)) dst = p;
  move_slot(c, slot, src, dst);
  // The old primary answers MOVED; the pool reads the map again and goes to the new one. A
  // blocking pop rides over it; a push (not blocking) may fail once with the MOVED reply.
  for (int i = 1; i < 6; ++i) {
    REQUIRE(q.pop_for(v, 10s) == status::ok);
    CHECK(v == i);
  }
  status st = status::closed;
  for (int attempt = 0; attempt < 2 && st != status::ok; ++attempt) {
    try {
      st = q.push(6);
    } catch (const redis::server_error& e) {
      CHECK(e.code() == "MOVED");
    }
  }
  CHECK(st == status::ok);
  REQUIRE(q.pop_for(v, 5s) == status::ok);
  CHECK(v == 6);
  CHECK(c.primary_for_key("{cs-moving}") == dst);
  CHECK(direct(dst).command("EXISTS", "{cs-moving}:seq").integer() == 1);
  CHECK(q.ack_last());
  CHECK(q.pending() == 0);
  move_slot(c, slot, dst, src);  // as it was, for the cases that follow
  CHECK(cl->wait_ok(10s));
}

TEST_CASE("single-key limiters on a cluster keep their one key in the slot of {name}") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  redis::cluster c(cl->url());
  for (const auto& p : c.primaries()) {  // one limiter of each kind on each primary
    auto tb_name = name_on(c, p, "tb"), sw_name = name_on(c, p, "sw");
    c.command("DEL", "{" + tb_name + "}:tb");
    c.command("DEL", "{" + sw_name + "}:sw", "{" + sw_name + "}:sw:seq");
    redis::token_bucket tb(tb_name, c, 0.001, 3);
    redis::sliding_window sw(sw_name, c, 2, 60s);
    for (int i = 0; i < 3; ++i) CHECK(tb.try_acquire());
    CHECK_FALSE(tb.try_acquire());
    CHECK(sw.try_acquire());
    CHECK(sw.try_acquire());
    CHECK_FALSE(sw.try_acquire());
    CHECK(sw.retry_after() > 0ms);
    CHECK(direct(p).command("EXISTS", "{" + tb_name + "}:tb").integer() == 1);
    CHECK(direct(p).command("ZCARD", "{" + sw_name + "}:sw").integer() == 2);
  }
}

TEST_CASE("a keyed limiter on a cluster routes each call to the primary of its key's slot") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  redis::cluster c(cl->url());
  const std::string name = "per-user";
  // Users whose {per-user:user} tags land on each of the three primaries.
  std::vector<std::string> users;
  std::set<std::uint16_t> ports;
  for (int i = 0; users.size() < 12; ++i) {
    std::string u = "u" + std::to_string(i);
    auto at = c.primary_for_key("{" + name + ":" + u + "}");
    ports.insert(at.port);
    users.push_back(u);
    c.command("DEL", "{" + name + ":" + u + "}:fw");
  }
  REQUIRE(ports.size() == 3);
  redis::keyed_fixed_window per_user(name, c, 2, 60s);
  redis::keyed_token_bucket buckets(name + "-tb", c, 0.001, 1);
  for (const auto& u : users) {
    CHECK(per_user.try_acquire(u));
    CHECK(per_user.try_acquire(u));
    CHECK_FALSE(per_user.try_acquire(u));  // each key has its own room, on its own node
    CHECK(per_user.retry_after(u) > 0ms);
    CHECK(buckets.try_acquire(u));
    CHECK_FALSE(buckets.try_acquire(u));
    std::string key = "{" + name + ":" + u + "}:fw";
    auto owner = c.primary_for_key(key);
    CHECK(direct(owner).command("GET", key).str() == "2");
    for (const auto& p : c.primaries())  // and on no other node
      if (!(p == owner))
        CHECK(direct(p).command("CLUSTER", "COUNTKEYSINSLOT", redis::key_slot(key)).integer() ==
              0);
  }
}

TEST_CASE("a distributed lock on a cluster excludes, fences and releases on its slot's primary") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  redis::cluster c(cl->url());
  c.command("DEL", "{cs-lock}:lock", "{cs-lock}:lock:fence");
  redis::distributed_lock a("cs-lock", c, {.lease = 2s});
  redis::distributed_lock b("cs-lock", c, {.lease = 2s});
  auto h = a.try_lock();
  REQUIRE(h);
  CHECK_FALSE(b.try_lock());
  auto owner = c.primary_for_key("{cs-lock}");
  CHECK(direct(owner).command("EXISTS", "{cs-lock}:lock").integer() == 1);
  CHECK(h->release());
  auto h2 = b.try_lock();
  REQUIRE(h2);
  CHECK(h2->fence() > h->fence());
  CHECK(h2->release());
}

TEST_CASE("check_and_set on a pool pinned to a cluster slot commits, and watches what it read") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  redis::cluster c(cl->url());
  c.command("SET", "{cs-acct}:a", 100);
  redis::pool p(c, "{cs-acct}", {.max_connections = 2});
  int interfered = 0;
  auto r = redis::check_and_set(p, {"{cs-acct}:a"}, [&](redis::connection& conn) {
    auto bal = conn.command("GET", "{cs-acct}:a").integer();
    if (interfered++ == 0) c.command("INCR", "{cs-acct}:a");  // another client: a retry
    redis::transaction tx;
    tx.add("SET", "{cs-acct}:a", bal - 10).add("INCRBY", "{cs-acct}:b", 10);
    return std::optional<redis::transaction>(std::move(tx));
  });
  CHECK(r.outcome == redis::cas_outcome::committed);
  CHECK(r.attempts == 2);
  CHECK(c.command("GET", "{cs-acct}:a").str() == "91");
  // A key of another slot is refused by the node (it does not own it): a clear server error.
  auto other = name_on(c, c.primaries().at(0) == c.primary_for_key("{cs-acct}")
                              ? c.primaries().at(1)
                              : c.primaries().at(0),
                       "cs-other");
  CHECK_THROWS_AS(redis::check_and_set(p, {"{" + other + "}:a"},
                                       [](redis::connection&) {
                                         return std::optional<redis::transaction>{};
                                       }),
                  redis::server_error);
}

TEST_CASE("a cache on a cluster computes each key once on its slot's primary and invalidates") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  redis::cluster c(cl->url());
  std::atomic<int> dropped{0};  // invalidations of k3 that b heard
  redis::cache<int> a("cs-cache", c, {.local_capacity = 100, .local_ttl = 60s});
  redis::cache<int> b("cs-cache", c,
                      {.local_capacity = 100,
                       .local_ttl = 60s,
                       .on_invalidate = [&](const std::string& k) {
                         if (k == "k3") dropped.fetch_add(1);
                       }});
  std::set<std::uint16_t> ports;
  std::atomic<int> computed{0};
  for (int i = 0; i < 12; ++i) {
    std::string k = "k" + std::to_string(i);
    a.invalidate(k);
    ports.insert(c.primary_for_key("{cs-cache:" + k + "}").port);
    CHECK(a.get_or_compute(k, 60s, [&] { return computed.fetch_add(1), i; }) == i);
    CHECK(b.get_or_compute(k, 60s, [&] { return computed.fetch_add(1), -1; }) == i);
    CHECK(direct(c.primary_for_key("{cs-cache:" + k + "}"))
              .command("EXISTS", "{cs-cache:" + k + "}:v")
              .integer() == 1);
  }
  CHECK(ports.size() == 3);  // the keys spread over every primary
  CHECK(computed.load() == 12);
  CHECK(a.invalidate("k3"));  // b hears it through the subscription and drops its local copy
  CHECK(eventually([&] { return dropped.load() == 2; }));  // the loop's, then this one
  CHECK(b.get_or_compute("k3", 60s, [] { return 33; }) == 33);
}

TEST_CASE(
    "a primary SIGKILLed during a worker_pool run over one queue per primary: its replica takes "
    "over, nothing is lost, only in-flight items are delivered twice, within a bounded time") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  auto o = redis::cluster_options::from_url(cl->url());
  o.node.connect_timeout = 2s;
  o.node.io_timeout = 5s;
  redis::cluster c(o);
  auto primaries = c.primaries();
  REQUIRE(primaries.size() == 3);
  constexpr int per_queue = 300, after = 30;
  constexpr std::size_t workers = 2;
  const redis::queue_options qo{.visibility_timeout = 5s, .poll_interval = 50ms,
                                .retry_window = 1s};
  std::vector<std::unique_ptr<redis::queue<int>>> qs;
  for (const auto& p : primaries) {
    qs.push_back(std::make_unique<redis::queue<int>>(name_on(c, p, "fo"), c, qo));
    qs.back()->destroy();
  }
  // Every item is pushed and replicated before the kill: a failover may lose what its replica
  // never got (asynchronous replication), which this test does not measure.
  for (std::size_t k = 0; k < 3; ++k) {
    std::vector<int> items;
    for (int i = 0; i < per_queue; ++i) items.push_back(static_cast<int>(k) * 10000 + i);
    REQUIRE(qs[k]->push_all(items) == status::ok);
    replicate(c, "{" + qs[k]->name() + "}");
  }
  const std::size_t victim_q = 1;
  auto victim = primaries[victim_q];
  auto victim_index = cl->index_of(victim.port);
  REQUIRE(victim_index < cl->size());
  // An empty queue and an empty stream on the victim, each with a pop parked in a long block
  // (BLPOP on {name}:signal, XREADGROUP BLOCK) at the kill: both must get what is pushed after
  // the failover.
  redis::queue<int> idle_q(name_on(c, victim, "fo-idle-q"), c,
                           {.poll_interval = 1s, .retry_window = 1s});
  redis::stream<int> idle_s(name_on(c, victim, "fo-idle-s"), c,
                            {.poll_interval = 1s, .retry_window = 1s});
  idle_q.destroy();
  idle_s.destroy();
  std::atomic<int> idle_q_got{-1}, idle_s_got{-1};
  test_support::thread_group idle;
  idle.spawn([&] {
    for (int i = 0; i < 60 && idle_q_got.load() < 0; ++i) {  // bounded: each pop blocks <= 1 s
      int v = 0;
      try {
        if (idle_q.pop_for(v, 1s) == status::ok) idle_q_got.store(v);
      } catch (const redis::error&) {  // past its retry window during the failover: again
      }
    }
  });
  idle.spawn([&] {
    for (int i = 0; i < 60 && idle_s_got.load() < 0; ++i) {
      redis::stream<int>::delivery d;
      try {
        if (idle_s.pop_delivery_for(d, 1s) == status::ok) {
          idle_s.ack(d);
          idle_s_got.store(d.value);
        }
      } catch (const redis::error&) {
      }
    }
  });

  std::mutex mu;
  std::map<int, int> seen;  // guarded by mu: item -> times handled
  std::atomic<int> handled{0}, errors{0};
  std::atomic<bool> killed{false};
  std::atomic<int> victim_after_kill{0};
  std::vector<std::unique_ptr<spindle::worker_pool<redis::queue<int>>>> pools;
  for (std::size_t k = 0; k < 3; ++k)
    pools.push_back(std::make_unique<spindle::worker_pool<redis::queue<int>>>(
        *qs[k], workers,
        [&, k](int v) {
          std::this_thread::sleep_for(1ms);  // pacing: the kill lands mid-run
          {
            std::lock_guard lock(mu);
            ++seen[v];
          }
          handled.fetch_add(1);
          if (k == victim_q && killed.load()) victim_after_kill.fetch_add(1);
        },
        spindle::worker_pool_options{
            .on_error = [&](std::exception_ptr) { errors.fetch_add(1); }}));

  REQUIRE(eventually([&] { return handled.load() >= per_queue; }, 30s));
  {  // both idle pops parked on the victim (polling the server, bounded)
    auto v = direct(victim);
    CHECK(eventually(
        [&] {
          auto info = v.command("INFO", "clients").str();
          auto at = info.find("blocked_clients:");
          return at != std::string::npos && std::stoi(info.substr(at + 16)) >= 2;
        },
        10s, 1ms));
  }
  auto t_kill = std::chrono::steady_clock::now();
  cl->kill(victim_index);
  killed.store(true);
  // The victim's queue goes on on the promoted replica; then a second batch, pushed after the
  // failover, reaches the new primary and wakes the blocked pops.
  bool resumed = eventually([&] { return victim_after_kill.load() > 0; }, 30s);
  auto resumed_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - t_kill);
  CHECK(resumed);
  for (std::size_t k = 0; k < 3; ++k)
    for (int i = 0; i < after; ++i)
      REQUIRE(push_retrying(*qs[k], static_cast<int>(k) * 10000 + per_queue + i) == status::ok);
  REQUIRE(push_retrying(idle_q, 77) == status::ok);
  REQUIRE(push_retrying(idle_s, 88) == status::ok);
  CHECK(idle.join_within(30s));
  CHECK(idle_q_got.load() == 77);
  CHECK(idle_s_got.load() == 88);
  auto all_seen = [&] {
    std::lock_guard lock(mu);
    return seen.size() == static_cast<std::size_t>(3 * (per_queue + after));
  };
  bool done = eventually(all_seen, 60s, 20ms);
  auto total_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - t_kill);
  for (auto& q : qs) q->close();
  for (auto& p : pools) p->join();
  int duplicates = 0, victim_dups = 0;
  {
    std::lock_guard lock(mu);
    for (auto [v, n] : seen) {
      duplicates += n - 1;
      if (v / 10000 == static_cast<int>(victim_q)) victim_dups += n - 1;
    }
  }
  MESSAGE("victim's queue resumed " << resumed_ms.count() << " ms after the SIGKILL; all "
                                    << 3 * (per_queue + after) << " items handled "
                                    << total_ms.count() << " ms after it; " << duplicates
                                    << " duplicate(s), " << errors.load()
                                    << " pop error(s) reported; cluster refreshes "
                                    << c.stats().refreshes);
  CHECK(done);
  {
    std::lock_guard lock(mu);
    for (std::size_t k = 0; k < 3; ++k)
      for (int i = 0; i < per_queue + after; ++i)
        CHECK(seen.count(static_cast<int>(k) * 10000 + i) == 1);  // nothing lost
    CHECK(seen.size() == static_cast<std::size_t>(3 * (per_queue + after)));  // nothing foreign
  }
  // Duplicates only on the victim's queue, and only of what was in flight there at the kill:
  // each worker's item in hand plus acks the replica had not received (a few milliseconds of
  // work at most; bounded generously here).
  CHECK(duplicates == victim_dups);
  CHECK(victim_dups <= 20);
  CHECK(total_ms < 60s);
  CHECK(!(c.primary_for_key("{" + qs[victim_q]->name() + "}") == victim));
  pools.clear();
  qs.clear();
  cl->restart(victim_index);
  CHECK(cl->wait_ok(20s));
}
