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
redis::options local(std::uint16_t port) {
  return redis::options{.port = port, .connect_timeout = 5s, .io_timeout = 10s};
}

template <class P>
bool eventually(P pred, std::chrono::milliseconds limit = 10s) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(5ms);  // polling Redis state with a bounded deadline
  }
  return pred();
}

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
  redis::topic t(local(srv.port()));
  CHECK(t.publish("news", "nobody") == 0);
  std::mutex mu;
  std::vector<std::string> got;
  auto sub = t.subscribe({"news"}, [&](const redis::message& m) {
    std::lock_guard lock(mu);
    got.push_back(m.channel + "=" + m.payload);
  });
  redis::connection c(local(srv.port()));
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
  redis::topic t(local(srv.port()));
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
  redis::topic t(local(srv.port()));
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
  redis::topic t(local(srv.port()));
  redis::connection c(local(srv.port()));
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
  redis::topic t(local(srv.port()));
  redis::connection c(local(srv.port()));
  auto sub = t.subscribe({"r"}, [](const redis::message&) {});
  REQUIRE(eventually([&] { return numsub(c, "r") == 1; }));
  c.command("CLIENT", "KILL", "TYPE", "pubsub");
  REQUIRE(eventually([&] { return sub.subscribed() >= 2 && numsub(c, "r") == 1; }));
  CHECK(t.publish("r", "after") == 1);
  CHECK(eventually([&] { return sub.received() == 1; }));
}
