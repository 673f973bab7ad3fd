// Tests of spindle/redis/cluster.hpp: key slots against the specification and a real cluster,
// routing to every primary, cross-slot refusal, a slot migrated under the client (ASK, TRYAGAIN,
// MOVED), scripts loaded per node, and a primary SIGKILLed during a run of writes.
//
// One cluster (3 primaries + 3 replicas, tests/support/redis_cluster.hpp) is shared by the
// cases that need one; it is started on first use. Each case uses its own hash tags.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <spindle/redis/cluster.hpp>
#include <string>
#include <thread>
#include <vector>

#include "support/redis_cluster.hpp"
#include "support/threads.hpp"

namespace redis = spindle::redis;
using namespace std::chrono_literals;
using test_support::redis_cluster;
using test_support::direct;
using test_support::shared_cluster;

namespace {

// A plain connection to the node at `a`.
std::string node_id(const redis::node_address& a) {
  return direct(a).command("CLUSTER", "MYID").str();
}

// A key with tag `prefix`N whose slot the primary `owner` serves.
std::string key_on(redis::cluster& c, const redis::node_address& owner, const std::string& prefix) {
  for (int i = 0; i < 100000; ++i) {
    std::string k = "{" + prefix + std::to_string(i) + "}";
    if (c.primary_for_key(k) == owner) return k;
  }
  FAIL("no key found for " << owner.str());
  return {};
}

// Starts moving `slot` from src to dst (the specification's order: importing side first).
void begin_migration(std::uint16_t slot, const redis::node_address& src,
                     const redis::node_address& dst) {
  auto src_id = node_id(src), dst_id = node_id(dst);
  CHECK(direct(dst).command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id).str() == "OK");
  CHECK(direct(src).command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id).str() == "OK");
}

// Moves `key` (whose slot is migrating) from src to dst.
void migrate_key(const std::string& key, const redis::node_address& src,
                 const redis::node_address& dst) {
  CHECK(direct(src).command("MIGRATE", dst.host, dst.port, "", 0, 5000, "KEYS", key).str() == "OK");
}

// Hands `slot` to dst: dst first, then src, then the other primaries.
void end_migration(redis::cluster& c, std::uint16_t slot, const redis::node_address& src,
                   const redis::node_address& dst) {
  auto dst_id = node_id(dst);
  CHECK(direct(dst).command("CLUSTER", "SETSLOT", slot, "NODE", dst_id).str() == "OK");
  CHECK(direct(src).command("CLUSTER", "SETSLOT", slot, "NODE", dst_id).str() == "OK");
  for (const auto& p : c.primaries())
    if (!(p == src) && !(p == dst))
      CHECK(direct(p).command("CLUSTER", "SETSLOT", slot, "NODE", dst_id).str() == "OK");
}

// A primary other than `p`.
redis::node_address other_primary(redis::cluster& c, const redis::node_address& p) {
  for (const auto& q : c.primaries())
    if (!(q == p)) return q;
  FAIL("one primary only");
  return {};
}

}  // namespace

TEST_CASE("key_slot follows the cluster specification: CRC16 XMODEM and the first {tag}") {
  CHECK(redis::detail::crc16("123456789") == 0x31C3);  // the specification's test vector
  CHECK(redis::key_slot("123456789") == (0x31C3 & 16383));
  CHECK(redis::key_slot("{user1000}.following") == redis::key_slot("user1000"));
  CHECK(redis::key_slot("foo{}{bar}") == redis::key_slot("foo{}{bar}"));  // empty tag: whole key
  CHECK(redis::detail::hash_tag("foo{}{bar}") == "foo{}{bar}");
  CHECK(redis::detail::hash_tag("foo{{bar}}zap") == "{bar");
  CHECK(redis::detail::hash_tag("foo{bar}{zap}") == "bar");
  CHECK(redis::detail::hash_tag("{") == "{");
  CHECK(redis::detail::hash_tag("}{x") == "}{x");
  CHECK(redis::key_slot("") == 0);
}

TEST_CASE("from_url reads the seeds and credentials; bad URLs throw without the password") {
  auto o = redis::cluster_options::from_url(
      "redis+cluster://app:s3cret@10.0.0.1:7000,h2:7001,[::1]:7002");
  REQUIRE(o.seeds.size() == 3);
  CHECK(o.seeds[0] == redis::node_address{"10.0.0.1", 7000});
  CHECK(o.seeds[1] == redis::node_address{"h2", 7001});
  CHECK(o.seeds[2] == redis::node_address{"::1", 7002});
  CHECK(o.node.username == "app");
  CHECK(o.node.password == "s3cret");
  CHECK(redis::cluster_options::from_url("redis+cluster://h").seeds.at(0).port == 6379);
  for (const char* bad : {"redis://h:1", "redis+cluster://:s3cret@h:1,,h:2",
                          "redis+cluster://:s3cret@h:99999", "redis+cluster://:s3cret@h:1/3"}) {
    try {
      redis::cluster_options::from_url(bad);
      FAIL("accepted " << bad);
    } catch (const std::invalid_argument& e) {
      CHECK(std::string(e.what()).find("from_url") != std::string::npos);
      CHECK(std::string(e.what()).find("s3cret") == std::string::npos);
    }
  }
  CHECK_THROWS_AS(redis::cluster(redis::cluster_options{}), std::invalid_argument);
}

TEST_CASE("the key table finds the keys of EVAL, XREADGROUP, MSET, BLPOP and ZUNIONSTORE") {
  auto keys = [](std::vector<std::string_view> args) {
    std::vector<std::size_t> pos;
    const auto* spec = redis::detail::find_command(args[0]);
    REQUIRE(spec != nullptr);
    redis::detail::find_keys(*spec, args, pos);
    return pos;
  };
  using v = std::vector<std::size_t>;
  CHECK(keys({"evalsha", "abc", "2", "k1", "k2", "arg"}) == v{3, 4});
  CHECK(keys({"EVAL", "return 1", "0", "notakey"}).empty());
  CHECK(keys({"EVAL", "return 1", "9", "k1"}).empty());  // malformed: the server says so
  CHECK(keys({"EVAL", "return 1", "x", "k1"}).empty());
  CHECK(keys({"XREADGROUP", "GROUP", "streams", "c", "COUNT", "1", "STREAMS", "s1", "s2", ">",
              ">"}) == v{7, 8});
  CHECK(keys({"XREAD", "STREAMS", "s1", "0"}) == v{2});
  CHECK(keys({"MSET", "a", "1", "b", "2"}) == v{1, 3});
  CHECK(keys({"BLPOP", "a", "b", "5"}) == v{1, 2});
  CHECK(keys({"ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"}) == v{1, 3, 4});
  CHECK(keys({"PING"}).empty());
  CHECK(redis::detail::find_command("NOSUCHCOMMAND") == nullptr);
  CHECK(redis::detail::find_command("get")->readonly);
  CHECK_FALSE(redis::detail::find_command("SET")->readonly);
}

TEST_CASE("key_slot agrees with CLUSTER KEYSLOT of the real cluster for 3000 keys") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  auto c = cl->connect(0);
  std::vector<std::string> keys;
  for (int i = 0; i < 2000; ++i) keys.push_back("key:" + std::to_string(i));
  for (int i = 0; i < 500; ++i) keys.push_back("{tag" + std::to_string(i) + "}:x");
  for (int i = 0; i < 500; ++i) {  // binary, odd braces, empty tags, long keys
    std::string k;
    for (int j = 0; j <= i % 40; ++j) k += static_cast<char>((i * 31 + j * 7) % 256);
    k += (i % 3 == 0) ? "{}" : (i % 3 == 1) ? "{" : "}{";
    if (i % 5 == 0) k += std::string(300, 'z');
    keys.push_back(k);
  }
  redis::batch b;
  for (const auto& k : keys) b.add("CLUSTER", "KEYSLOT", k);
  auto rs = c.pipeline(b);
  REQUIRE(rs.size() == keys.size());
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < keys.size(); ++i)
    if (rs[i].integer() != redis::key_slot(keys[i])) ++wrong;
  CHECK(wrong == 0);
}

TEST_CASE("CLUSTER SHARDS (RESP2 and RESP3) and CLUSTER SLOTS give the same slot map") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  redis::node_address at{"127.0.0.1", cl->port(0)};
  auto c2 = direct(at);
  redis::connection c3({.port = at.port, .protocol = 3});
  auto shards = redis::detail::from_shards(c2.command("CLUSTER", "SHARDS"), at);
  auto shards3 = redis::detail::from_shards(c3.command("CLUSTER", "SHARDS"), at);
  auto slots = redis::detail::from_slots(c2.command("CLUSTER", "SLOTS"), at);
  CHECK(shards->covered == 16384);
  CHECK(shards->primaries.size() == 3);
  std::size_t differ = 0;
  for (std::size_t s = 0; s < 16384; ++s) {
    auto a = shards->primaries[shards->owner[s]], b = shards3->primaries[shards3->owner[s]],
         d = slots->primaries[slots->owner[s]];
    differ += (a == b && a == d) ? 0 : 1;
  }
  CHECK(differ == 0);
  CHECK_THROWS_AS(redis::detail::from_slots(c2.command("ECHO", "x"), at), redis::error);
}

TEST_CASE("commands reach all three primaries, each key on the node that owns its slot") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  redis::cluster c(cl->url());
  auto primaries = c.primaries();
  REQUIRE(primaries.size() == 3);
  for (const auto& p : primaries) {
    std::string k = key_on(c, p, "route");
    CHECK(c.command("SET", k, p.str()).str() == "OK");
    CHECK(c.command("GET", k).str() == p.str());
    // The key is on that node itself (a plain connection would get MOVED anywhere else).
    auto d = direct(p);
    CHECK(d.command("GET", k).str() == p.str());
    CHECK(d.command("CLUSTER", "KEYSLOT", k).integer() == redis::key_slot(k));
  }
  CHECK(c.command("PING").str() == "PONG");  // no key: any primary
  // Budgets saturate: the largest durations mean no limit, and nothing overflows.
  CHECK(c.command_for(std::chrono::hours::max(), "PING").str() == "PONG");
  CHECK(c.command_for(std::chrono::nanoseconds::max(), "GET", key_on(c, primaries[0], "route"))
            .str() == primaries[0].str());
  CHECK(c.pipeline_for(std::chrono::milliseconds::max(), redis::batch().add("PING")).size() == 1);
  CHECK(c.command("ObJeCt", "ENCODING", key_on(c, primaries[1], "route")).str() == "embstr");
  CHECK(c.stats().moved == 0);
  CHECK(c.stats().ask == 0);
}

TEST_CASE("a command the table does not know is routed by COMMAND GETKEYS") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  redis::cluster c(cl->url());
  auto primaries = c.primaries();
  for (const auto& p : primaries) {
    std::string k = key_on(c, p, "getkeys");
    CHECK(c.command("HINCRBY", k, "f", 2).integer() == 2);  // in the table
    CHECK(c.command("HGET", k, "f").integer() == 2);
    CHECK(c.command("GEOADD", k + "g", 13.36, 38.11, "palermo").integer() == 1);  // not in it
    CHECK(direct(p).command("GEOPOS", k + "g", "palermo").size() == 1);
  }
  CHECK(c.stats().moved == 0);
}

TEST_CASE("commands whose keys span slots are refused before anything is sent") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  redis::cluster c(cl->url());
  REQUIRE(redis::key_slot("cross:a") != redis::key_slot("cross:b"));
  try {
    c.command("MSET", "cross:a", 1, "cross:b", 2);
    FAIL("MSET across slots was accepted");
  } catch (const redis::server_error& e) {
    CHECK(e.code() == "CROSSSLOT");
    CHECK(std::string(e.what()).find("nothing was sent") != std::string::npos);
  }
  CHECK(c.command("EXISTS", "cross:a").integer() == 0);  // not even the first key was written
  CHECK(c.command("EXISTS", "cross:b").integer() == 0);
  CHECK_THROWS_AS(c.command("EVAL", "redis.call('SET', KEYS[1], 1) redis.call('SET', KEYS[2], 1)",
                            2, "cross:a", "cross:b"),
                  redis::server_error);
  CHECK(c.command("EXISTS", "cross:a").integer() == 0);
  // A pipeline: one slot or nothing.
  redis::batch b;
  b.add("SET", "cross:a", 1).add("SET", "cross:b", 2);
  CHECK_THROWS_AS(c.pipeline(b), redis::server_error);
  CHECK(c.command("EXISTS", "cross:a").integer() == 0);
  // Same tag, same slot: accepted.
  CHECK(c.command("MSET", "{cross}a", 1, "{cross}b", 2).str() == "OK");
  CHECK(c.command("MGET", "{cross}a", "{cross}b")[1].str() == "2");
  // Connection-state commands have no meaning when each command may use another connection.
  CHECK_THROWS_AS(c.command("MULTI"), std::invalid_argument);
  CHECK_THROWS_AS(c.command("SUBSCRIBE", "ch"), std::invalid_argument);
  CHECK_THROWS_AS(c.command("SELECT", 1), std::invalid_argument);
}

TEST_CASE("a pipeline on one slot runs on its primary in order, transactions and WAIT included") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  redis::cluster c(cl->url());
  redis::batch b;
  b.add("DEL", "{pipe}n").add("INCR", "{pipe}n").add("INCR", "{pipe}n").add("WAIT", 1, 2000);
  b.add("MULTI").add("INCR", "{pipe}n").add("GET", "{pipe}n").add("EXEC");
  auto rs = c.pipeline(b);
  REQUIRE(rs.size() == 8);
  CHECK(rs[1].integer() == 1);
  CHECK(rs[2].integer() == 2);
  CHECK(rs[3].integer() == 1);  // the primary's replica acknowledged the writes
  REQUIRE(rs[7].size() == 2);
  CHECK(rs[7][0].integer() == 3);
  CHECK(rs[7][1].str() == "3");
  CHECK(c.pipeline(redis::batch()).empty());
}

TEST_CASE("sharded pub/sub: SPUBLISH is routed by the channel's slot to its SSUBSCRIBErs") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  redis::cluster c(cl->url());
  for (const auto& p : c.primaries()) {
    std::string channel = key_on(c, p, "news");
    auto sub = c.connect_for_key(channel);
    CHECK(sub.get_options().port == p.port);
    auto ack = sub.command("SSUBSCRIBE", channel);
    CHECK(ack[0].str() == "ssubscribe");
    CHECK(c.command("SPUBLISH", channel, "hello " + p.str()).integer() == 1);
    auto msg = sub.read();
    REQUIRE(msg.size() == 3);
    CHECK(msg[0].str() == "smessage");
    CHECK(msg[1].str() == channel);
    CHECK(msg[2].str() == "hello " + p.str());
  }
  CHECK(c.command("SPUBLISH", "{nobody}", "x").integer() == 0);
}

TEST_CASE("eval_script loads the script on each node that answers NOSCRIPT, then runs it there") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  redis::cluster c(cl->url());
  const std::string src = "return redis.call('INCRBY', KEYS[1], ARGV[1])";
  for (const auto& p : c.primaries()) direct(p).command("SCRIPT", "FLUSH");
  auto primaries = c.primaries();
  std::string sha;
  for (int round = 0; round < 2; ++round)
    for (const auto& p : primaries) {
      std::string k = key_on(c, p, "script");
      CHECK(c.eval_script(src, {k}, {"5"}).integer() == 5 * (round + 1));
    }
  sha = direct(primaries[0]).command("SCRIPT", "LOAD", src).str();
  for (const auto& p : primaries)  // every primary has it now, loaded when it needed it
    CHECK(direct(p).command("SCRIPT", "EXISTS", sha)[0].integer() == 1);
  // Flushed behind the client's back: NOSCRIPT, reloaded, no error seen.
  for (const auto& p : primaries) direct(p).command("SCRIPT", "FLUSH");
  CHECK(c.eval_script(src, {key_on(c, primaries[2], "script")}, {"1"}).integer() == 11);
}

TEST_CASE(
    "a slot migrated during a run: ASK, then TRYAGAIN within the budget, then MOVED, and "
    "the caller sees no redirect") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  redis::cluster c(cl->url());
  const std::string a = "{mig}:a", b = "{mig}:b", n = "{mig}:new";
  const auto slot = redis::key_slot(a);
  auto src = c.primary_for_slot(slot), dst = other_primary(c, src);
  auto wo = redis::cluster_options::from_url(cl->url());
  wo.refresh_interval = 1ms;
  redis::cluster watcher(wo);
  CHECK(c.command("SET", a, "A").str() == "OK");
  CHECK(c.command("SET", b, "B").str() == "OK");
  begin_migration(slot, src, dst);
  migrate_key(a, src, dst);
  auto d = direct(dst);

  // a is on dst now: src answers ASK, the client asks dst. b is still on src. A new key goes to
  // dst (src does not have it: ASK).
  CHECK(c.command("GET", a).str() == "A");
  CHECK(c.command("GET", b).str() == "B");
  CHECK(c.command("SET", n, "N").str() == "OK");
  CHECK(d.command("ASKING").str() == "OK");
  CHECK(d.command("GET", n).str() == "N");
  CHECK(c.stats().ask >= 2);
  CHECK(c.stats().moved == 0);

  // A multi-key command over a half-migrated slot gets TRYAGAIN: retried until the budget ends,
  // then returned as the error it is.
  auto t0 = std::chrono::steady_clock::now();
  auto before = c.stats().retries;
  try {
    c.command_for(300ms, "MGET", a, b);
    FAIL("MGET over a half-migrated slot succeeded");
  } catch (const redis::server_error& e) {
    CHECK(e.code() == "TRYAGAIN");
  }
  CHECK(c.stats().retries > before);
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);

  // Finish the migration: every key to dst, the slot assigned to dst everywhere.
  migrate_key(b, src, dst);
  end_migration(c, slot, src, dst);
  // The client's map still says src: MOVED, map patched and refreshed, no error.
  CHECK(c.command("GET", b).str() == "B");
  CHECK(c.stats().moved >= 1);
  CHECK(c.primary_for_slot(slot) == dst);
  CHECK(c.command("MGET", a, b, n)[2].str() == "N");  // the multi-key command works again
  auto m = c.stats().moved;
  CHECK(c.command("GET", a).str() == "A");
  CHECK(c.stats().moved == m);  // the map is right now: no more redirects

  // A client made now reads the new map at once.
  redis::cluster fresh(cl->url());
  CHECK(fresh.primary_for_slot(slot) == dst);
  // One made before the migration, idle during it, learns the new owner by its periodic refresh
  // (before any MOVED).
  CHECK(watcher.primary_for_slot(slot) == src);
  CHECK(watcher.command("PING").str() == "PONG");
  CHECK(watcher.primary_for_slot(slot) == dst);
  CHECK(watcher.stats().moved == 0);
}

TEST_CASE(
    "threads sharing one cluster lose and repeat no INCR while its slot moves to another "
    "primary (ASK, then MOVED)") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  redis::cluster c(cl->url());
  const std::string hot = "{hot}:n", cold = "{hot}:cold";
  const auto slot = redis::key_slot(hot);
  auto src = c.primary_for_slot(slot), dst = other_primary(c, src);
  c.command("DEL", hot);
  c.command("SET", cold, 1);  // stays on src until moved: the slot is half-migrated meanwhile

  constexpr int threads = 4;
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::int64_t> results;  // every INCR's reply; guarded by mu
  std::vector<std::string> errors;    // guarded by mu
  bool moved_all = false;             // guarded by mu
  int after_move = 0;                 // INCRs since the slot was handed over; guarded by mu
  test_support::start_gate gate;
  test_support::thread_group g;
  for (int t = 0; t < threads; ++t)
    g.spawn([&] {
      gate.wait();
      for (int i = 0; i < 100000; ++i) {
        try {
          auto v = c.command("INCR", hot).integer();
          std::lock_guard lock(mu);
          results.push_back(v);
          if (moved_all && ++after_move >= 200) break;
        } catch (const std::exception& e) {
          std::lock_guard lock(mu);
          errors.push_back(e.what());
          break;
        }
        cv.notify_all();
      }
      cv.notify_all();
    });
  gate.open();
  auto wait_for = [&](auto pred) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, 20s, [&] { return pred() || !errors.empty(); });
  };
  REQUIRE(wait_for([&] { return results.size() >= 200; }));
  begin_migration(slot, src, dst);
  migrate_key(hot, src, dst);
  auto asks = c.stats().ask;
  std::size_t mark = 0;
  {
    std::lock_guard lock(mu);
    mark = results.size();
  }
  // Hold the half-migrated state until the threads have gone through ASK a while.
  REQUIRE(wait_for([&] { return results.size() >= mark + 200; }));
  CHECK(c.stats().ask > asks);
  migrate_key(cold, src, dst);
  end_migration(c, slot, src, dst);
  {
    std::lock_guard lock(mu);
    moved_all = true;
  }
  REQUIRE(g.join_within(60s));
  CHECK(errors.empty());
  if (!errors.empty()) MESSAGE("first error: " << errors.front());
  // Conservation: the replies are exactly 1..N, each once, and the counter is N.
  std::sort(results.begin(), results.end());
  bool exact = true;
  for (std::size_t i = 0; i < results.size(); ++i)
    exact = exact && results[i] == static_cast<std::int64_t>(i + 1);
  CHECK(exact);
  CHECK(c.command("GET", hot).integer() == static_cast<std::int64_t>(results.size()));
  CHECK(c.primary_for_slot(slot) == dst);
  MESSAGE(results.size() << " INCRs by " << threads << " threads; ask " << c.stats().ask
                         << ", moved " << c.stats().moved << ", refreshes " << c.stats().refreshes);
}

TEST_CASE(
    "a primary SIGKILLed during a run of writes: the in-flight command fails clearly, "
    "writes go on after the failover, and every replicated write survives") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  auto o = redis::cluster_options::from_url(cl->url());
  o.node.io_timeout = 20s;  // longer than the parked BLPOP below
  redis::cluster c(o);
  const std::string list = "{failover}:list";
  auto victim = c.primary_for_key(list);
  auto victim_index = cl->index_of(victim.port);
  REQUIRE(victim_index < cl->size());
  c.command("DEL", list);

  std::mutex mu;
  std::condition_variable cv;
  int written = 0;                        // guarded by mu
  std::set<int> acked;                    // RPUSH answered; guarded by mu
  std::set<int> replicated;               // and WAIT said the replica has it; guarded by mu
  std::set<int> unknown;                  // outcome_unknown_error; guarded by mu
  std::vector<std::string> other_errors;  // guarded by mu
  std::chrono::steady_clock::time_point first_after_kill{};
  std::atomic<bool> killed{false};
  constexpr int after_kill = 20;
  int ok_after_kill = 0;

  test_support::thread_group g;
  // A reader: commands that only read are sent again after an I/O failure, so it never sees one.
  std::atomic<bool> writer_done{false};
  std::atomic<int> reads{0};
  std::string read_error;
  g.spawn([&] {
    while (!writer_done.load()) {
      try {
        c.command_for(20s, "LLEN", list);
        reads.fetch_add(1);
      } catch (const std::exception& e) {
        read_error = e.what();
        return;
      }
    }
  });
  // A blocked pop in flight on the victim: it must fail clearly, never hang or come back.
  std::string blocked_outcome;
  g.spawn([&] {
    try {
      c.command("BLPOP", "{failover}:never", 15);
      blocked_outcome = "returned";
    } catch (const redis::outcome_unknown_error&) {
      blocked_outcome = "unknown";
    } catch (const std::exception& e) {
      blocked_outcome = std::string("other: ") + e.what();
    }
  });
  g.spawn([&] {
    for (int i = 0; i < 2000; ++i) {
      redis::batch b;
      b.add("RPUSH", list, i).add("WAIT", 1, 100);
      try {
        auto rs = c.pipeline_for(20s, b);
        std::lock_guard lock(mu);
        if (!rs.at(0).is_error()) acked.insert(i);
        if (!rs.at(0).is_error() && !rs.at(1).is_error() && rs[1].integer() >= 1)
          replicated.insert(i);
        if (rs.at(0).is_error()) other_errors.push_back(rs[0].str());
        ++written;
        if (killed.load() && ++ok_after_kill == 1)
          first_after_kill = std::chrono::steady_clock::now();
      } catch (const redis::outcome_unknown_error&) {
        std::lock_guard lock(mu);
        unknown.insert(i);
      } catch (const std::exception& e) {
        std::lock_guard lock(mu);
        other_errors.push_back(e.what());
        break;
      }
      cv.notify_all();
      std::lock_guard lock(mu);
      if (ok_after_kill >= after_kill) break;
    }
    writer_done.store(true);
    cv.notify_all();
  });

  {  // 20 writes in, and the BLPOP parked on the victim, then SIGKILL it.
    std::unique_lock lock(mu);
    REQUIRE(cv.wait_for(lock, 20s, [&] { return written >= 20; }));
  }
  auto v = direct(victim);
  for (int i = 0; i < 400; ++i) {  // polling the server, bounded
    auto info = v.command("INFO", "clients").str();
    if (info.find("blocked_clients:1") != std::string::npos) break;
    std::this_thread::sleep_for(10ms);
  }
  auto t_kill = std::chrono::steady_clock::now();
  cl->kill(victim_index);  // returns once the process is gone (SIGKILL, reaped)
  killed.store(true);
  REQUIRE(g.join_within(60s));
  auto failover_ms =
      ok_after_kill == 0
          ? std::chrono::milliseconds(-1)
          : std::chrono::duration_cast<std::chrono::milliseconds>(first_after_kill - t_kill);
  MESSAGE("writes resumed " << failover_ms.count() << " ms after the SIGKILL; " << unknown.size()
                            << " write(s) of unknown outcome; client stats: moved "
                            << c.stats().moved << ", retries " << c.stats().retries
                            << ", refreshes " << c.stats().refreshes);
  CHECK(other_errors.empty());
  if (!other_errors.empty()) MESSAGE("first error: " << other_errors.front());
  CHECK(blocked_outcome == "unknown");
  CHECK(read_error.empty());
  CHECK(reads.load() > 0);
  CHECK(ok_after_kill >= after_kill);
  CHECK(unknown.size() <= 1);  // at most the write in flight at the kill
  CHECK(!(c.primary_for_key(list) == victim));

  // Conservation: every write the replica acknowledged (WAIT) survived the failover, once;
  // nothing is there that was not written (never resent: no duplicates). A write acknowledged
  // by the primary alone may be lost: Redis replicates asynchronously.
  auto items = c.command("LRANGE", list, 0, -1).elements();
  std::map<int, int> seen;
  for (const auto& r : items) ++seen[static_cast<int>(r.integer())];
  for (int i : replicated) CHECK(seen.count(i) == 1);
  for (auto [i, count] : seen) {
    CHECK(count == 1);
    CHECK((acked.count(i) == 1 || unknown.count(i) == 1));
  }

  // The old primary comes back as a replica; the cluster is whole again for the next cases.
  cl->restart(victim_index);
  CHECK(cl->wait_ok(20s));
}
