// Tests of spindle/redis/topic.hpp against a real redis-server: publish counts receivers,
// subscribe and psubscribe deliver in order, a handler exception reaches on_error, stop and a
// stop token end a subscription promptly, and a killed connection is resubscribed.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <spindle/redis/topic.hpp>
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

using test_support::eventually;

std::int64_t numsub(redis::connection& c, const std::string& ch) {
  return c.command("PUBSUB", "NUMSUB", ch)[1].integer();
}
}  // namespace

TEST_CASE("a subscription refuses no channels and an empty handler") {
  CHECK_THROWS_AS(redis::subscription({}, {}, {}, [](const redis::message&) {}),
                  std::invalid_argument);
  CHECK_THROWS_AS(redis::subscription({}, {"c"}, {}, nullptr), std::invalid_argument);
}

TEST_CASE("publish reaches a subscriber in order and counts receivers") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::topic t(local_options(srv.port()));
  CHECK(t.publish("news", "nobody") == 0);
  std::mutex mu;
  std::vector<std::string> got;
  auto sub = t.subscribe({"news"}, [&](const redis::message& m) {
    std::lock_guard lock(mu);
    got.push_back(m.channel + "=" + m.payload);
  });
  redis::connection c(local_options(srv.port()));
  REQUIRE(eventually([&] { return numsub(c, "news") == 1; }));
  for (int i = 0; i < 20; ++i) CHECK(t.publish("news", std::to_string(i)) == 1);
  REQUIRE(eventually([&] { return sub.received() == 20; }));
  std::lock_guard lock(mu);
  for (int i = 0; i < 20; ++i)
    CHECK(got[static_cast<std::size_t>(i)] == "news=" + std::to_string(i));
}

TEST_CASE("psubscribe delivers matching channels with their pattern") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::topic t(local_options(srv.port()));
  std::mutex mu;
  std::vector<redis::message> got;
  auto sub = t.psubscribe({"ev.*"}, [&](const redis::message& m) {
    std::lock_guard lock(mu);
    got.push_back(m);
  });
  REQUIRE(eventually([&] { return sub.subscribed() == 1; }));
  CHECK(t.publish("ev.a", "1") == 1);
  CHECK(t.publish("other", "2") == 0);
  REQUIRE(eventually([&] { return sub.received() == 1; }));
  std::lock_guard lock(mu);
  CHECK(got[0].pattern == "ev.*");
  CHECK(got[0].channel == "ev.a");
  CHECK(got[0].payload == "1");
}

TEST_CASE("a handler exception goes to on_error and the subscription goes on") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::topic t(local_options(srv.port()));
  std::atomic<int> errors{0};
  auto sub = t.subscribe(
      {"c"},
      [](const redis::message& m) {
        if (m.payload == "bad") throw std::runtime_error("x");
      },
      {.on_error = [&](std::exception_ptr) { errors.fetch_add(1, std::memory_order_relaxed); }});
  REQUIRE(eventually([&] { return sub.subscribed() == 1; }));
  t.publish("c", "bad");
  t.publish("c", "good");
  REQUIRE(eventually([&] { return sub.received() == 2; }));
  CHECK(errors.load() == 1);
  CHECK(sub.errors() == 1);
}

TEST_CASE("stop and a stop token end a subscription promptly while idle") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::topic t(local_options(srv.port()));
  redis::connection c(local_options(srv.port()));
  auto a = t.subscribe({"idle"}, [](const redis::message&) {});
  std::stop_source src;
  auto b = t.subscribe(
      {"idle"}, [](const redis::message&) {}, {}, src.get_token());
  REQUIRE(eventually([&] { return numsub(c, "idle") == 2; }));
  test_support::thread_group g;
  g.spawn([&] {
    a.stop();
    a.join();
    src.request_stop();
    b.join();  // each returns within about 50 ms
  });
  REQUIRE(g.join_within(10s));
  CHECK(eventually([&] { return numsub(c, "idle") == 0; }));
}

TEST_CASE("a subscription resubscribes after its connection is killed") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::topic t(local_options(srv.port()));
  redis::connection c(local_options(srv.port()));
  auto sub = t.subscribe({"r"}, [](const redis::message&) {});
  REQUIRE(eventually([&] { return numsub(c, "r") == 1; }));
  c.command("CLIENT", "KILL", "TYPE", "pubsub");
  REQUIRE(eventually([&] { return sub.subscribed() >= 2 && numsub(c, "r") == 1; }));
  CHECK(t.publish("r", "after") == 1);
  CHECK(eventually([&] { return sub.received() == 1; }));
}

// ------------------------------------------------------------------------------ issue 14

TEST_CASE("wait_subscribed_for returns once the server confirmed, so the first publish counts") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::topic t(local_options(srv.port()));
  for (int round = 0; round < 20; ++round) {  // no eventually(): the first publish must count
    std::string ch = "first-" + std::to_string(round);
    auto sub = t.subscribe({ch, ch + "b"}, [](const redis::message&) {});
    REQUIRE(sub.wait_subscribed_for(10s));
    CHECK(t.publish(ch, "x") == 1);
    CHECK(sub.subscribed() == 2);  // one confirmation per channel
  }
}

TEST_CASE("channels and patterns are added and removed on a running subscription") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::topic t(local_options(srv.port()));
  auto sub = t.listen({"a"}, {});
  REQUIRE(sub.wait_subscribed_for(10s));
  sub.add_channels({"b", "c"});
  sub.add_patterns({"p.*"});
  REQUIRE(sub.wait_subscribed_for(10s));
  CHECK(t.publish("b", "1") == 1);
  CHECK(t.publish("p.x", "2") == 1);
  sub.remove_channels({"a", "b"});
  sub.remove_patterns({"p.*"});
  REQUIRE(sub.wait_subscribed_for(10s));
  CHECK(t.publish("a", "gone") == 0);
  CHECK(t.publish("p.x", "gone") == 0);
  CHECK(t.publish("c", "3") == 1);
  sub.remove_channels({"c"});  // none left: the connection leaves subscribed mode
  REQUIRE(sub.wait_subscribed_for(10s));
  CHECK(t.publish("c", "gone") == 0);
  sub.add_channels({"d"});  // and comes back
  REQUIRE(sub.wait_subscribed_for(10s));
  CHECK(t.publish("d", "4") == 1);
  std::vector<std::string> got;
  redis::message m;
  while (got.size() < 4 && sub.pop_for(m, 10s) == spindle::status::ok)
    got.push_back(m.channel + "=" + m.payload + "/" + m.pattern);
  CHECK(got == std::vector<std::string>{"b=1/", "p.x=2/p.*", "c=3/", "d=4/"});
  CHECK_FALSE(sub.try_pop(m));
}

TEST_CASE("pop_for takes buffered messages in order, times out when none, closed after stop") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::topic t(local_options(srv.port()));
  auto sub = t.listen({"q"}, {}, {.max_buffered = 5});
  REQUIRE(sub.wait_subscribed_for(10s));
  redis::message m;
  CHECK(sub.pop_for(m, 20ms) == spindle::status::timeout);
  for (int i = 0; i < 8; ++i) CHECK(t.publish("q", std::to_string(i)) == 1);
  REQUIRE(eventually([&] { return sub.received() == 8; }));
  CHECK(sub.dropped() == 3);  // the oldest went
  for (int i = 3; i < 8; ++i) {
    REQUIRE(sub.pop_for(m, 10s) == spindle::status::ok);
    CHECK(m.payload == std::to_string(i));
  }
  // A pop waiting without limit is woken by stop and returns closed.
  test_support::thread_group g;
  std::atomic<int> result{-1};
  g.spawn([&] {
    redis::message x;
    result.store(static_cast<int>(sub.pop_for(x, std::chrono::hours::max())));
  });
  sub.stop();
  REQUIRE(g.join_within(10s));
  CHECK(result.load() == static_cast<int>(spindle::status::closed));
}

TEST_CASE("a subscription the server refuses calls on_error and backs off exponentially") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::connection admin(local_options(srv.port()));
  admin.command("ACL", "SETUSER", "reader", "on", ">reader-pw", "resetchannels", "&allowed",
                "+@all", "~*");
  auto o = local_options(srv.port());
  o.username = "reader";
  o.password = "reader-pw";
  std::mutex mu;
  std::vector<std::chrono::steady_clock::time_point> when;
  std::vector<std::string> codes;
  redis::topic t(local_options(srv.port()));
  redis::subscription sub(
      o, {"forbidden"}, {},
      redis::subscription_options{.on_error =
           [&](std::exception_ptr e) {
             std::lock_guard lock(mu);
             when.push_back(std::chrono::steady_clock::now());
             try {
               std::rethrow_exception(e);
             } catch (const redis::server_error& se) {
               codes.emplace_back(se.code());
             } catch (...) {
               codes.emplace_back("other");
             }
           },
       .reconnect_delay = 20ms,
       .max_reconnect_delay = 160ms});
  REQUIRE(eventually([&] {
    std::lock_guard lock(mu);
    return when.size() >= 7;
  }));
  {
    std::lock_guard lock(mu);
    for (const auto& c : codes) CHECK(c == "NOPERM");
    // Each gap is at least the delay before it (waits never end early): 20, 40, 80, 160, 160.
    auto delay = 20ms;
    for (std::size_t i = 0; i + 1 < 6; ++i) {
      CAPTURE(i);
      CHECK(when[i + 1] - when[i] >= delay);
      delay = std::min<std::chrono::milliseconds>(delay * 2, 160ms);
    }
  }
  CHECK(sub.failures() >= 7);
  sub.remove_channels({"forbidden"});
  sub.add_channels({"allowed"});
  REQUIRE(sub.wait_subscribed_for(10s));
  CHECK(t.publish("allowed", "at last") == 1);
  REQUIRE(eventually([&] { return sub.received() == 1; }));
}

TEST_CASE("on_reconnect is called once resubscribed after the connection is killed") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::topic t(local_options(srv.port()));
  redis::connection c(local_options(srv.port()));
  std::atomic<int> reconnected{0};
  std::atomic<int> errors{0};
  auto sub = t.subscribe({"r"}, [](const redis::message&) {},
                         {.on_error = [&](std::exception_ptr) { errors.fetch_add(1); },
                          .on_reconnect = [&] { reconnected.fetch_add(1); }});
  REQUIRE(sub.wait_subscribed_for(10s));
  CHECK(reconnected.load() == 0);
  sub.add_channels({"added"});
  sub.add_patterns({"pat.*"});
  sub.remove_channels({"never-there"});
  REQUIRE(sub.wait_subscribed_for(10s));
  c.command("CLIENT", "KILL", "TYPE", "pubsub");
  REQUIRE(eventually([&] { return reconnected.load() == 1; }));
  CHECK(sub.reconnects() == 1);
  CHECK(errors.load() >= 1);  // the broken connection was reported
  CHECK(sub.wait_subscribed_for(10s));
  CHECK(t.publish("r", "after") == 1);
  CHECK(t.publish("added", "after") == 1);  // what was added is subscribed again
  CHECK(t.publish("pat.x", "after") == 1);
}

TEST_CASE("a RESP3 subscription receives messages and answers PINGs") {
  if (!redis_server::available()) return;
  redis_server srv;
  auto o = local_options(srv.port());
  o.protocol = 3;
  redis::topic t(o);
  auto sub = t.listen({"r3"}, {"p3.*"}, {.ping_interval = 10ms, .ping_timeout = 5s});
  REQUIRE(sub.wait_subscribed_for(10s));
  redis::message m;
  CHECK(sub.pop_for(m, 100ms) == spindle::status::timeout);  // pings meanwhile: all answered
  CHECK(t.publish("r3", "x") == 1);
  CHECK(t.publish("p3.a", "y") == 1);
  REQUIRE(sub.pop_for(m, 10s) == spindle::status::ok);
  CHECK(m.payload == "x");
  REQUIRE(sub.pop_for(m, 10s) == spindle::status::ok);
  CHECK(m.pattern == "p3.*");
  CHECK(sub.failures() == 0);
}

#if __has_include("support/fault_proxy.hpp")
#include "support/fault_proxy.hpp"

TEST_CASE("a blackholed subscription notices, reconnects and receives again") {
  if (!redis_server::available()) return;
  redis_server srv;
  spindle::test::fault_proxy proxy("127.0.0.1", srv.port());
  redis::topic t(local_options(srv.port()));  // publishes straight to the server
  std::mutex mu;
  std::vector<std::string> errors, got;
  std::atomic<int> reconnected{0};
  redis::options via{.port = proxy.port(), .connect_timeout = 500ms, .io_timeout = 500ms};
  redis::subscription sub(
      via, {"live"}, {},
      [&](const redis::message& m) {
        std::lock_guard lock(mu);
        got.push_back(m.payload);
      },
      {.on_error =
           [&](std::exception_ptr e) {
             std::lock_guard lock(mu);
             try {
               std::rethrow_exception(e);
             } catch (const std::exception& x) {
               errors.emplace_back(x.what());
             }
           },
       .reconnect_delay = 20ms,
       .max_reconnect_delay = 200ms,
       .ping_interval = 100ms,
       .ping_timeout = 300ms,
       .on_reconnect = [&] { reconnected.fetch_add(1); }});
  REQUIRE(sub.wait_subscribed_for(10s));
  CHECK(t.publish("live", "before") == 1);
  REQUIRE(eventually([&] { return sub.received() == 1; }));
  proxy.blackhole(true);
  // Without PINGs nothing ever happens here: the server keeps counting the dead subscriber.
  REQUIRE(eventually([&] { return sub.failures() >= 2; }, 10s));
  {
    std::lock_guard lock(mu);
    REQUIRE(!errors.empty());
    CHECK(errors[0].find("PING") != std::string::npos);
  }
  CHECK_FALSE(sub.wait_subscribed_for(0ms));
  proxy.blackhole(false);
  REQUIRE(eventually([&] { return reconnected.load() >= 1; }, 20s));
  REQUIRE(sub.wait_subscribed_for(10s));
  REQUIRE(eventually([&] {
    (void)t.publish("live", "after");
    std::lock_guard lock(mu);
    return !got.empty() && got.back() == "after";
  }));
}
#endif
