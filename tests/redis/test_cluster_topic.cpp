// Tests of spindle/redis/topic.hpp on a Redis Cluster (sharded pub/sub): channels on every
// primary through one subscription, patterns refused, channels added and removed, a channel's
// slot migrated to another primary and a channel's primary SIGKILLed: the subscription follows
// and messages published after the move arrive.
//
// One cluster (3 primaries + 3 replicas, tests/support/redis_cluster.hpp) is shared by the
// cases; each case uses its own channel names.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <functional>  // ref: a handler that records into an inbox
#include <map>
#include <memory>
#include <mutex>
#include <spindle/redis/topic.hpp>
#include <string>
#include <vector>

#include "support/redis_cluster.hpp"
#include "support/threads.hpp"

namespace redis = spindle::redis;
using namespace std::chrono_literals;
using test_support::eventually;
using test_support::redis_cluster;
using test_support::direct;
using test_support::shared_cluster;

namespace {

// Subscribers of sharded `channel` on node `a` (PUBSUB SHARDNUMSUB asks that node only).
std::int64_t shard_subscribers(const redis::node_address& a, const std::string& channel) {
  return direct(a).command("PUBSUB", "SHARDNUMSUB", channel)[1].integer();
}

// Connections on node `a` that belong to a subscription: their last command is one a
// subscriber sends (the fixture's and the cluster client's connections send others).
int subscriber_connections(const redis::node_address& a) {
  auto list = direct(a).command("CLIENT", "LIST").str();
  int n = 0;
  for (const char* cmd : {"cmd=ssubscribe ", "cmd=sunsubscribe ", "cmd=ping "})
    for (auto at = list.find(cmd); at != std::string::npos; at = list.find(cmd, at + 1)) ++n;
  return n;
}

// A channel named `prefix`N whose slot the primary `owner` serves.
std::string channel_on(redis::cluster& c, const redis::node_address& owner,
                       const std::string& prefix) {
  for (int i = 0; i < 100000; ++i) {
    std::string ch = prefix + std::to_string(i);
    if (c.primary_for_key(ch) == owner) return ch;
  }
  FAIL("no channel found for " << owner.str());
  return {};
}

// Moves the (keyless) `slot` from src to dst the way redis-cli --cluster reshard does:
// IMPORTING on dst, MIGRATING on src, then NODE dst on dst, src and the other primaries.
void move_slot(const std::vector<redis::node_address>& primaries, std::uint16_t slot,
               const redis::node_address& src, const redis::node_address& dst) {
  auto src_id = direct(src).command("CLUSTER", "MYID").str();
  auto dst_id = direct(dst).command("CLUSTER", "MYID").str();
  REQUIRE(direct(dst).command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id).str() == "OK");
  REQUIRE(direct(src).command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id).str() == "OK");
  REQUIRE(direct(dst).command("CLUSTER", "SETSLOT", slot, "NODE", dst_id).str() == "OK");
  REQUIRE(direct(src).command("CLUSTER", "SETSLOT", slot, "NODE", dst_id).str() == "OK");
  for (const auto& p : primaries)
    if (!(p == src) && !(p == dst))
      REQUIRE(direct(p).command("CLUSTER", "SETSLOT", slot, "NODE", dst_id).str() == "OK");
}

// Messages received by a handler, by channel.
struct inbox {
  std::mutex mu;
  std::map<std::string, std::vector<std::string>> got;  // guarded by mu
  void operator()(const redis::message& m) {
    std::lock_guard lock(mu);
    got[m.channel].push_back(m.payload);
  }
  std::vector<std::string> of(const std::string& ch) {
    std::lock_guard lock(mu);
    return got[ch];
  }
};

}  // namespace

TEST_CASE("a topic on a cluster refuses patterns with std::invalid_argument naming the call") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  auto c = std::make_shared<redis::cluster>(cl->url());
  redis::topic t(c);
  auto says = [](auto f, const char* fn) {
    try {
      f();
      FAIL("accepted a pattern on a cluster: " << fn);
    } catch (const std::invalid_argument& e) {
      CHECK(std::string(e.what()).find(fn) != std::string::npos);
      CHECK(std::string(e.what()).find("PSUBSCRIBE") != std::string::npos);
    }
  };
  says([&] { (void)t.psubscribe({"ev.*"}, [](const redis::message&) {}); }, "topic::psubscribe");
  says([&] { (void)t.listen({"a"}, {"ev.*"}); }, "topic::listen");
  auto sub = t.listen({"refuse"}, {});
  says([&] { sub.add_patterns({"ev.*"}); }, "subscription::add_patterns");
  says([&] { sub.remove_patterns({"ev.*"}); }, "subscription::remove_patterns");
  CHECK(sub.wait_subscribed_for(10s));  // the subscription itself goes on
  CHECK_THROWS_AS(redis::topic(std::shared_ptr<redis::cluster>()), std::invalid_argument);
  CHECK_THROWS_AS(redis::subscription(c, {}, [](const redis::message&) {}),
                  std::invalid_argument);
}

TEST_CASE(
    "one subscription to channels on all three primaries holds one connection per primary and "
    "receives every message in order") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  auto c = std::make_shared<redis::cluster>(cl->url());
  redis::topic t(c);
  auto primaries = c->primaries();
  REQUIRE(primaries.size() == 3);
  std::vector<std::string> channels;
  for (const auto& p : primaries) {  // two channels per primary: still one connection each
    channels.push_back(channel_on(*c, p, "all-a"));
    channels.push_back(channel_on(*c, p, "all-b"));
  }
  CHECK(t.publish(channels[0], "nobody") == 0);
  inbox in;
  auto sub = t.subscribe(channels, std::ref(in));
  REQUIRE(sub.wait_subscribed_for(10s));
  CHECK(sub.subscribed() == 6);
  for (const auto& p : primaries) CHECK(subscriber_connections(p) == 1);
  for (std::size_t i = 0; i < channels.size(); ++i)
    CHECK(shard_subscribers(primaries[i / 2], channels[i]) == 1);
  for (int n = 0; n < 20; ++n)
    for (const auto& ch : channels) CHECK(t.publish(ch, std::to_string(n)) == 1);
  REQUIRE(eventually([&] { return sub.received() == 120; }));
  for (const auto& ch : channels) {
    auto got = in.of(ch);
    REQUIRE(got.size() == 20);
    for (int n = 0; n < 20; ++n) CHECK(got[static_cast<std::size_t>(n)] == std::to_string(n));
  }
  CHECK(sub.failures() == 0);
  CHECK(sub.reconnects() == 0);
}

TEST_CASE("sharded channels are added and removed on a running buffered subscription") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  auto c = std::make_shared<redis::cluster>(cl->url());
  redis::topic t(c);
  auto primaries = c->primaries();
  auto a = channel_on(*c, primaries[0], "chg"), b = channel_on(*c, primaries[1], "chg"),
       d = channel_on(*c, primaries[2], "chg");
  auto sub = t.listen({a}, {});
  REQUIRE(sub.wait_subscribed_for(10s));
  sub.add_channels({b, d});
  REQUIRE(sub.wait_subscribed_for(10s));
  CHECK(t.publish(b, "1") == 1);
  CHECK(t.publish(d, "2") == 1);
  sub.remove_channels({a, b});
  REQUIRE(sub.wait_subscribed_for(10s));
  CHECK(t.publish(a, "gone") == 0);
  CHECK(t.publish(b, "gone") == 0);
  CHECK(t.publish(d, "3") == 1);
  // The primaries left without a channel have no connection from it any more.
  CHECK(subscriber_connections(primaries[2]) == 1);
  REQUIRE(eventually([&] {
    return subscriber_connections(primaries[0]) == 0 && subscriber_connections(primaries[1]) == 0;
  }));
  sub.add_channels({a});  // and it comes back
  REQUIRE(sub.wait_subscribed_for(10s));
  CHECK(t.publish(a, "4") == 1);
  std::vector<std::string> got;
  redis::message m;
  while (got.size() < 4 && sub.pop_for(m, 10s) == spindle::status::ok)
    got.push_back(m.payload);
  CHECK(got == std::vector<std::string>{"1", "2", "3", "4"});
  CHECK(sub.pop_for(m, 20ms) == spindle::status::timeout);
  CHECK(sub.failures() == 0);
}

TEST_CASE("a RESP3 subscription on a cluster receives sharded messages and answers PINGs") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  auto o = redis::cluster_options::from_url(cl->url());
  o.node.protocol = 3;
  auto c = std::make_shared<redis::cluster>(o);
  redis::topic t(c);
  std::vector<std::string> channels;
  for (const auto& p : c->primaries()) channels.push_back(channel_on(*c, p, "resp3-"));
  auto sub = t.listen(channels, {}, {.ping_interval = 10ms, .ping_timeout = 5s});
  REQUIRE(sub.wait_subscribed_for(10s));
  redis::message m;
  CHECK(sub.pop_for(m, 100ms) == spindle::status::timeout);  // pings meanwhile: all answered
  for (const auto& ch : channels) CHECK(t.publish(ch, ch) == 1);
  for (std::size_t i = 0; i < channels.size(); ++i) {
    REQUIRE(sub.pop_for(m, 10s) == spindle::status::ok);
    CHECK(m.payload == m.channel);
    CHECK(m.pattern.empty());
  }
  CHECK(sub.failures() == 0);
}

TEST_CASE("stop ends a cluster subscription at once and closes its connection to every primary") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  auto c = std::make_shared<redis::cluster>(cl->url());
  redis::topic t(c);
  std::vector<std::string> channels;
  for (const auto& p : c->primaries()) channels.push_back(channel_on(*c, p, "stop-"));
  auto sub = t.subscribe(channels, [](const redis::message&) {});
  REQUIRE(sub.wait_subscribed_for(10s));
  test_support::thread_group g;
  g.spawn([&] {
    sub.stop();
    sub.join();
  });
  REQUIRE(g.join_within(10s));
  for (const auto& p : c->primaries())
    CHECK(eventually([&] { return subscriber_connections(p) == 0; }));
  CHECK_FALSE(sub.wait_subscribed_for(0ms));
}

TEST_CASE(
    "a channel whose slot migrates to another primary is subscribed there, and messages "
    "published after the move arrive") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  auto c = std::make_shared<redis::cluster>(cl->url());
  redis::topic t(c);
  auto primaries = c->primaries();
  const std::string ch = "{moving}news";
  const auto slot = redis::key_slot(ch);
  // A channel on another primary, whose connection the moves must not disturb.
  auto home = c->primary_for_slot(slot);
  std::string still;
  for (const auto& p : primaries)
    if (!(p == home)) still = channel_on(*c, p, "still");
  inbox in;
  std::atomic<int> reconnected{0};
  auto sub = t.subscribe({ch, still}, std::ref(in),
                         {.on_reconnect = [&] { reconnected.fetch_add(1); }});
  REQUIRE(sub.wait_subscribed_for(10s));
  CHECK(t.publish(ch, "before") == 1);
  constexpr int moves = 4;  // there and back again, twice, over all three primaries
  for (int i = 0; i < moves; ++i) {
    CAPTURE(i);
    auto src = c->primary_for_slot(slot);
    auto dst = primaries[static_cast<std::size_t>(i + 1) % primaries.size()];
    if (dst == src) dst = primaries[static_cast<std::size_t>(i + 2) % primaries.size()];
    move_slot(primaries, slot, src, dst);
    // The server ends the subscription on src (sunsubscribe); the topic must find dst.
    REQUIRE(eventually([&] { return reconnected.load() == i + 1; }, 20s));
    REQUIRE(sub.wait_subscribed_for(10s));
    CHECK(shard_subscribers(dst, ch) == 1);
    CHECK(shard_subscribers(src, ch) == 0);
    CHECK(t.publish(ch, "after " + std::to_string(i)) == 1);
    CHECK(t.publish(still, std::to_string(i)) == 1);
  }
  REQUIRE(eventually([&] { return sub.received() == 1 + 2 * moves; }));
  auto got = in.of(ch);
  REQUIRE(got.size() == 1 + moves);
  CHECK(got[0] == "before");
  for (int i = 0; i < moves; ++i)
    CHECK(got[static_cast<std::size_t>(i) + 1] == "after " + std::to_string(i));
  CHECK(in.of(still).size() == moves);
  CHECK(sub.failures() == 0);  // a move is no failure: nothing reconnected
  CHECK(sub.reconnects() == moves);
}

TEST_CASE(
    "a subscription made with a stale slot map is answered MOVED and subscribes on the new "
    "owner, with no failure") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  auto c = std::make_shared<redis::cluster>(cl->url());  // its map is read now
  redis::topic t(c);
  const std::string ch = "{stale}news";
  const auto slot = redis::key_slot(ch);
  auto src = c->primary_for_slot(slot);
  redis::node_address dst;
  for (const auto& p : c->primaries())
    if (!(p == src)) dst = p;
  move_slot(c->primaries(), slot, src, dst);  // behind the client's back: its map says src
  REQUIRE(c->primary_for_slot(slot) == src);
  inbox in;
  auto sub = t.subscribe({ch}, std::ref(in));
  REQUIRE(sub.wait_subscribed_for(10s));
  CHECK(shard_subscribers(dst, ch) == 1);
  CHECK(t.publish(ch, "found") == 1);
  REQUIRE(eventually([&] { return in.of(ch).size() == 1; }));
  CHECK(sub.failures() == 0);  // MOVED is a move, not a failure: no reconnect delay either
  CHECK(sub.subscribed() == 1);
}

TEST_CASE(
    "a channel whose primary is SIGKILLed is subscribed on the promoted replica, and messages "
    "published after the failover arrive") {
  auto* cl = shared_cluster();
  if (cl == nullptr) return;
  auto o = redis::cluster_options::from_url(cl->url());
  o.node.connect_timeout = 1s;
  o.retry_timeout = 30s;  // publish waits out the failover
  auto c = std::make_shared<redis::cluster>(o);
  redis::topic t(c);
  const std::string ch = "{failover}news";
  auto victim = c->primary_for_key(ch);
  auto victim_index = cl->index_of(victim.port);
  REQUIRE(victim_index < cl->size());
  std::string other = channel_on(*c, victim == c->primaries()[0] ? c->primaries()[1]
                                                                    : c->primaries()[0],
                                 "bystander");
  inbox in;
  std::atomic<int> reconnected{0}, errors{0};
  auto sub = t.subscribe({ch, other}, std::ref(in),
                         {.on_error = [&](std::exception_ptr) { errors.fetch_add(1); },
                          .reconnect_delay = 20ms,
                          .max_reconnect_delay = 200ms,
                          .ping_interval = 200ms,
                          .ping_timeout = 1000ms,
                          .on_reconnect = [&] { reconnected.fetch_add(1); }});
  REQUIRE(sub.wait_subscribed_for(10s));
  CHECK(t.publish(ch, "before") == 1);
  REQUIRE(eventually([&] { return sub.received() == 1; }));
  cl->kill(victim_index);
  REQUIRE(eventually([&] { return reconnected.load() >= 1; }, 30s));
  REQUIRE(sub.wait_subscribed_for(10s));
  auto promoted = c->primary_for_key(ch);
  CHECK(!(promoted == victim));
  CHECK(shard_subscribers(promoted, ch) == 1);
  CHECK(t.publish(ch, "after") == 1);
  CHECK(t.publish(other, "bystander") == 1);
  REQUIRE(eventually([&] { return in.of(ch).size() == 2 && in.of(other).size() == 1; }));
  CHECK(in.of(ch) == std::vector<std::string>{"before", "after"});
  CHECK(errors.load() >= 1);  // the lost connection was reported
  MESSAGE("failover: " << sub.failures() << " failure(s), " << sub.reconnects()
                       << " resubscription(s)");
  cl->restart(victim_index);  // it comes back as a replica; the cluster is whole again
  CHECK(cl->wait_ok(20s));
}
