// Tests of tests/support/fault_proxy.hpp: its RESP frame scanner on split input, then each fault
// against a real redis-server (support/redis_server.hpp) through spindle::redis::connection.
#include <spindle/redis/connection.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <stdexcept>
#include <string>
#include <string_view>

#include "support/fault_proxy.hpp"
#include "support/redis_server.hpp"

namespace redis = spindle::redis;
using namespace std::chrono_literals;
using spindle::test::fault_proxy;
using test_support::redis_server;

namespace {

constexpr auto none = spindle::test::detail::incomplete;

// The frame end of `frame` is its size, and every proper prefix of it is incomplete.
void check_frame(std::string_view frame) {
  CAPTURE(frame);
  CHECK(spindle::test::detail::resp_frame_end(frame, 0) == frame.size());
  for (std::size_t n = 0; n < frame.size(); ++n) {
    // A prefix that ends right after a complete inner line may still be incomplete as a whole.
    CHECK(spindle::test::detail::resp_frame_end(frame.substr(0, n), 0) == none);
  }
}

// Whether a command failed with an I/O or protocol error (not an error reply).
template <class F>
bool io_error(F&& f) {
  try {
    f();
  } catch (const redis::server_error&) {
    return false;
  } catch (const redis::error&) {
    return true;
  }
  return false;
}

}  // namespace

TEST_CASE("the frame scanner finds the end of every RESP2 and RESP3 type and never before it") {
  for (std::string_view f :
       {"+OK\r\n", "-ERR no\r\n", ":42\r\n", "$3\r\nfoo\r\n", "$0\r\n\r\n", "$-1\r\n", "*-1\r\n",
        "*0\r\n", "*2\r\n$1\r\na\r\n:1\r\n", "*2\r\n*1\r\n$-1\r\n*2\r\n+a\r\n-b\r\n", "_\r\n",
        ",3.14\r\n", "#t\r\n", "(12345678901234567890\r\n", "=7\r\ntxt:abc\r\n", "!3\r\nerr\r\n",
        "%1\r\n+k\r\n:1\r\n", "~2\r\n:1\r\n:2\r\n", ">2\r\n+message\r\n$1\r\nx\r\n",
        "|1\r\n+ttl\r\n:3\r\n", "$4\r\na\r\nb\r\n"})
    check_frame(f);
  CHECK(spindle::test::detail::resp_frame_end("+OK\r\n:1\r\n", 0) == 5);
  CHECK(spindle::test::detail::resp_frame_end("+OK\r\n:1\r\n", 5) == 9);
  CHECK_THROWS_AS(spindle::test::detail::resp_frame_end("$x\r\n", 0), std::runtime_error);
  CHECK_THROWS_AS(spindle::test::detail::resp_frame_end("*-2\r\n", 0), std::runtime_error);
  CHECK(spindle::test::detail::resp_command_name("*2\r\n$4\r\nincr\r\n$1\r\nn\r\n") == "INCR");
  CHECK(spindle::test::detail::resp_command_name("ping\r\n") == "PING");
}

TEST_CASE("bad arguments throw std::invalid_argument naming the function and value") {
  CHECK_THROWS_AS(fault_proxy("10.0.0.1", 6379), std::invalid_argument);
  CHECK_THROWS_AS(fault_proxy("example.com", 6379), std::invalid_argument);
  fault_proxy p("localhost", 1);
  CHECK_THROWS_WITH_AS(p.drop_reply_of("GET", 0), doctest::Contains("times 0"),
                       std::invalid_argument);
  CHECK_THROWS_AS(p.cut_mid_reply("GET", -1), std::invalid_argument);
  CHECK_THROWS_AS(p.delay(-1ms), std::invalid_argument);
}

TEST_CASE("without faults commands and pipelines pass through in order and are counted") {
  if (!redis_server::available()) return;
  redis_server srv;
  fault_proxy proxy("127.0.0.1", srv.port());
  redis::connection c({.port = proxy.port(), .io_timeout = 5000ms});
  CHECK(proxy.wait_connections(1, 5s));
  c.command("SET", "k", "v");
  CHECK(c.command("GET", "k").str() == "v");
  redis::batch b;
  for (int i = 0; i < 500; ++i) b.add("INCR", "n");
  auto rs = c.pipeline(b);
  REQUIRE(rs.size() == 500);
  for (int i = 0; i < 500; ++i) CHECK(rs[static_cast<std::size_t>(i)].integer() == i + 1);
  std::string big(200000, 'x');  // many chunks each way
  c.command("SET", "big", big);
  CHECK(c.command("GET", "big").str() == big);
  CHECK(proxy.commands_seen("incr") == 500);
  CHECK(proxy.commands_seen("GET") == 2);
  CHECK(proxy.commands_seen("DEL") == 0);
  CHECK(c.connects() == 1);
}

TEST_CASE("RESP3 replies (HELLO 3 map, pushes) pass through and faults still pair correctly") {
  if (!redis_server::available()) return;
  redis_server srv;
  fault_proxy proxy("127.0.0.1", srv.port());
  redis::connection c({.port = proxy.port(), .protocol = 3});
  CHECK(proxy.commands_seen("HELLO") == 1);
  c.command("HSET", "h", "f", "v");
  CHECK(c.command("HGETALL", "h").is_aggregate());
  proxy.drop_reply_of("HGETALL");
  CHECK(io_error([&] { c.command("HGETALL", "h"); }));
  CHECK(c.command("HGET", "h", "f").str() == "v");  // reconnected with HELLO 3
  CHECK(proxy.commands_seen("HELLO") == 2);
}

TEST_CASE("drop_reply_of: the command runs on the server, its reply is lost, the connection drops") {
  if (!redis_server::available()) return;
  redis_server srv;
  fault_proxy proxy("127.0.0.1", srv.port());
  redis::connection direct({.port = srv.port()});
  redis::connection c({.port = proxy.port(), .io_timeout = 5000ms});
  proxy.drop_reply_of("incr");
  CHECK(c.command("PING").str() == "PONG");  // only the named command is hit
  CHECK(io_error([&] { c.command("INCR", "n"); }));
  CHECK(direct.command("GET", "n").str() == "1");  // it ran before the reply was dropped
  CHECK(c.command("INCR", "n").integer() == 2);    // armed once: the next one passes
  CHECK(c.connects() == 2);

  SUBCASE("times counts occurrences") {
    proxy.drop_reply_of("INCR", 2);
    CHECK(io_error([&] { c.command("INCR", "n"); }));
    CHECK(io_error([&] { c.command("INCR", "n"); }));
    CHECK(c.command("INCR", "n").integer() == 5);
    CHECK(proxy.commands_seen("INCR") == 5);
  }
  SUBCASE("in a pipeline the replies before it arrive and the drop hits exactly its command") {
    proxy.drop_reply_of("INCR");
    for (int i = 0; i < 50; ++i) c.append("GET", "n");
    c.append("INCR", "n");
    c.append("PING");
    for (int i = 0; i < 50; ++i) CHECK(c.read().str() == "2");
    CHECK(io_error([&] { c.read(); }));
    CHECK(direct.command("GET", "n").str() == "3");
  }
}

TEST_CASE("cut_mid_reply: half the reply arrives, then the connection drops") {
  if (!redis_server::available()) return;
  redis_server srv;
  fault_proxy proxy("127.0.0.1", srv.port());
  redis::connection c({.port = proxy.port(), .io_timeout = 5000ms});
  std::string v(10000, 'v');
  c.command("SET", "k", v);
  proxy.cut_mid_reply("GET");
  CHECK(io_error([&] { c.command("GET", "k"); }));
  CHECK(c.command("GET", "k").str() == v);
  proxy.cut_mid_reply("PING");  // a 7-byte simple string, cut after 3
  CHECK(io_error([&] { c.command("PING"); }));
  CHECK(c.command("PING").str() == "PONG");
  CHECK(c.connects() == 3);
}

TEST_CASE("blackhole: a command times out and the connection stays open; held bytes move on") {
  if (!redis_server::available()) return;
  redis_server srv;
  fault_proxy proxy("127.0.0.1", srv.port());
  redis::connection direct({.port = srv.port()});
  redis::connection c({.port = proxy.port(), .io_timeout = 200ms});
  proxy.blackhole(true);
  try {
    c.command("INCR", "n");
    FAIL("the command returned through a blackhole");
  } catch (const redis::error& e) {
    CHECK(std::string_view(e.what()).find("timed out") != std::string_view::npos);
  }
  CHECK(proxy.wait_connections(1, 5s));  // the proxy never saw it time out: nothing moves
  proxy.disconnect_all();           // a path that never recovers: the INCR is lost
  proxy.blackhole(false);
  CHECK(c.command("INCR", "n").integer() == 1);

  redis::connection held({.port = proxy.port(), .io_timeout = 5000ms});
  proxy.blackhole(true);
  held.append("INCR", "n");
  held.flush();
  proxy.clear();  // the path recovers: the INCR and its reply go through late, not lost
  CHECK(held.read().integer() == 2);
  CHECK(direct.command("GET", "n").str() == "2");
}

TEST_CASE("disconnect_all closes every connection and the next command reconnects") {
  if (!redis_server::available()) return;
  redis_server srv;
  fault_proxy proxy("127.0.0.1", srv.port());
  redis::connection a({.port = proxy.port()});
  redis::connection b({.port = proxy.port()});
  CHECK(proxy.wait_connections(2, 5s));
  proxy.disconnect_all();
  CHECK(proxy.connections() == 0);
  // The client notices a closed idle peer before sending (then nothing fails) only once the
  // connection has been idle a little; sooner, the command fails with redis::error and nothing
  // ran. Either way the next command reconnects.
  for (auto* c : {&a, &b}) {
    redis::reply r;
    if (io_error([&] { r = c->command("PING"); })) r = c->command("PING");
    CHECK(r.str() == "PONG");
    CHECK(c->connects() == 2);
  }
  CHECK(proxy.connections() == 2);
  a.close();  // a client closing is seen by the proxy
  CHECK(proxy.wait_connections(1, 5s));
}

TEST_CASE("delay holds each reply back by at least the delay") {
  if (!redis_server::available()) return;
  redis_server srv;
  fault_proxy proxy("127.0.0.1", srv.port());
  redis::connection c({.port = proxy.port()});
  proxy.delay(50ms);
  auto t0 = std::chrono::steady_clock::now();
  CHECK(c.command("PING").str() == "PONG");
  CHECK(std::chrono::steady_clock::now() - t0 >= 50ms);
  proxy.clear();
  CHECK(c.command("PING").str() == "PONG");
}

TEST_CASE("the destructor returns while connections are blackholed or delayed") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::connection c1({.port = srv.port()}), c2({.port = srv.port()});
  auto t0 = std::chrono::steady_clock::now();
  {
    fault_proxy proxy("127.0.0.1", srv.port());
    c1 = redis::connection({.port = proxy.port()});
    c2 = redis::connection({.port = proxy.port()});
    proxy.delay(1h);
    c2.append("PING");
    c2.flush();  // its reply sits in a one-hour delay
    proxy.blackhole(true);
    c1.append("PING");
    c1.flush();  // held by the blackhole
  }
  CHECK(std::chrono::steady_clock::now() - t0 < 10s);  // generous: it does not hang
  CHECK(io_error([&] { c1.read(); }));
  CHECK(io_error([&] { c2.read(); }));
}
