// Tests of spindle/redis/connection.hpp and options.hpp: against a real redis-server (the
// fixture in support/redis_server.hpp) and against a fake server on loopback that sends
// malformed, truncated and oversized replies.
#include <spindle/redis/connection.hpp>
#include <spindle/redis/options.hpp>

#include <doctest/doctest.h>
#include <netinet/tcp.h>  // TCP_USER_TIMEOUT
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "support/comma_locale.hpp"
#include "support/redis_server.hpp"

namespace redis = spindle::redis;
using namespace std::chrono_literals;
using test_support::redis_server;

namespace {

// A server on 127.0.0.1 that answers each accepted connection with one script: it reads one
// command, sends `reply` (possibly malformed or incomplete), then closes or holds the socket.
class fake_server {
 public:
  struct script {
    std::string reply;
    bool close_after = true;
  };

  explicit fake_server(std::vector<script> scripts) : scripts_(std::move(scripts)) {
    lfd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    REQUIRE(::bind(lfd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(lfd_, 8) == 0);
    REQUIRE(::getsockname(lfd_, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { run(); });
  }
  ~fake_server() {
    stop_.store(true, std::memory_order_relaxed);  // polled by run() within 20 ms
    thread_.join();
    for (int fd : held_) ::close(fd);
    ::close(lfd_);
  }
  std::uint16_t port() const { return port_; }
  int commands_seen() const { return seen_.load(std::memory_order_relaxed); }

 private:
  bool wait_readable(int fd) {
    while (!stop_.load(std::memory_order_relaxed)) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 20) > 0) return true;
    }
    return false;
  }

  void run() {
    for (const auto& s : scripts_) {
      if (!wait_readable(lfd_)) return;
      int fd = ::accept4(lfd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) return;
      redis::parser p;  // reads exactly one command
      bool got = false;
      while (!got && wait_readable(fd)) {
        char buf[4096];
        ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) break;
        p.feed(std::string_view(buf, static_cast<std::size_t>(n)));
        got = p.next().has_value();
      }
      if (got) seen_.fetch_add(1, std::memory_order_relaxed);
      if (got && !s.reply.empty())
        (void)::send(fd, s.reply.data(), s.reply.size(), MSG_NOSIGNAL);
      if (s.close_after)
        ::close(fd);
      else
        held_.push_back(fd);
    }
  }

  std::vector<script> scripts_;
  int lfd_ = -1;
  std::uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> seen_{0};
  std::vector<int> held_;  // touched by run() only, then by the destructor after join
  std::thread thread_;
};

using test_support::local_options;

}  // namespace

// ------------------------------------------------------------------------------ options

TEST_CASE("from_url reads user, password, host, port and db") {
  auto o = redis::options::from_url("redis://app:s3cret@example.com:6380/4");
  CHECK(o.username == "app");
  CHECK(o.password == "s3cret");
  CHECK(o.host == "example.com");
  CHECK(o.port == 6380);
  CHECK(o.db == 4);
}

TEST_CASE("from_url keeps defaults for what the URL leaves out") {
  auto o = redis::options::from_url("redis://localhost");
  CHECK(o.host == "localhost");
  CHECK(o.port == 6379);
  CHECK(o.db == 0);
  CHECK(o.username.empty());
  CHECK(o.password.empty());
  auto p = redis::options::from_url("redis://:pw@[::1]:7000");
  CHECK(p.host == "::1");
  CHECK(p.port == 7000);
  CHECK(p.password == "pw");
  CHECK(p.username.empty());
  auto q = redis::options::from_url("redis://u%40x:p%3Aw@h/2");
  CHECK(q.username == "u@x");
  CHECK(q.password == "p:w");
  CHECK(q.db == 2);
}

TEST_CASE("from_url rejects bad URLs with std::invalid_argument that hides the password") {
  for (const char* url : {"http://h", "redis://u:topsecret@h:0", "redis://u:topsecret@h:99999",
                          "redis://u:topsecret@h:12x", "redis://u:topsecret@h/x",
                          "redis://u:topsecret@h/-1", "redis://u:top%zzsecret@h"}) {
    CAPTURE(url);
    try {
      (void)redis::options::from_url(url);
      FAIL("no exception");
    } catch (const std::invalid_argument& e) {
      std::string m = e.what();
      CHECK(m.find("from_url") != std::string::npos);
      CHECK(m.find("topsecret") == std::string::npos);
      CHECK(m.find("top%zzsecret") == std::string::npos);
    }
  }
}

// ------------------------------------------------------------------------------ real server

TEST_CASE("commands return strings, integers, nil and arrays") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::connection c(local_options(srv.port()));
  CHECK(c.command("PING").str() == "PONG");
  CHECK(c.command("SET", "k", "v").str() == "OK");
  CHECK(c.command("GET", "k").str() == "v");
  CHECK(c.command("GET", "missing").is_nil());
  CHECK(c.command("INCRBY", "n", 41).integer() == 41);
  CHECK(c.command("INCR", "n").integer() == 42);
  c.command("RPUSH", "l", "a", "b", "c");
  auto r = c.command("LRANGE", "l", 0, -1);
  REQUIRE(r.kind() == redis::type::array);
  REQUIRE(r.size() == 3);
  CHECK(r[2].str() == "c");
  std::vector<std::string> keys = {"k", "n", "l"};
  CHECK(c.command("DEL", keys).integer() == 3);
}

TEST_CASE("an error reply throws server_error and the connection stays usable") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::connection c(local_options(srv.port()));
  c.command("SET", "s", "x");
  try {
    c.command("LPUSH", "s", "y");
    FAIL("no exception");
  } catch (const redis::server_error& e) {
    CHECK(e.code() == "WRONGTYPE");
  }
  CHECK_THROWS_AS(c.command("NOSUCHCOMMAND"), redis::server_error);
  CHECK(c.command("GET", "s").str() == "x");
  CHECK(c.connects() == 1);
}

TEST_CASE("arguments are binary-safe: every byte value, NUL in keys, empty strings") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::connection c(local_options(srv.port()));
  std::string all;
  for (int i = 0; i < 256; ++i) all += static_cast<char>(i);
  std::string key("k\0ey\r\n", 6);
  c.command("SET", key, all);
  CHECK(c.command("GET", key).str() == all);
  CHECK(c.command("STRLEN", key).integer() == 256);
  c.command("SET", "empty", "");
  CHECK(c.command("GET", "empty").str().empty());
  std::string big(1 << 20, 'z');  // larger than one socket read
  big[12345] = '\0';
  c.command("SET", "big", big);
  CHECK(c.command("GET", "big").str() == big);
}

TEST_CASE("append then read pipelines commands and replies come back in order") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::connection c(local_options(srv.port()));
  constexpr int n = 5000;
  for (int i = 0; i < n; ++i) c.append("INCR", "counter");
  CHECK(c.pending() == n);
  CHECK_THROWS_AS(c.command("PING"), std::logic_error);
  for (int i = 1; i <= n; ++i) REQUIRE(c.read().integer() == i);
  CHECK(c.pending() == 0);
  CHECK(c.command("GET", "counter").integer() == n);
}

TEST_CASE("pipeline returns every reply, error replies included, in order") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::connection c(local_options(srv.port()));
  redis::batch b;
  b.add("SET", "a", 1).add("INCR", "a").add("HSET", "a", "f", "v").add("GET", "a");
  auto rs = c.pipeline(b);
  REQUIRE(rs.size() == 4);
  CHECK(rs[0].str() == "OK");
  CHECK(rs[1].integer() == 2);
  CHECK(rs[2].is_error());
  CHECK(rs[3].str() == "2");
  CHECK(c.pipeline(redis::batch()).empty());
  // An error in read() throws, but the stream stays in step.
  c.append("HSET", "a", "f", "v");
  c.append("GET", "a");
  CHECK_THROWS_AS(c.read(), redis::server_error);
  CHECK(c.read().str() == "2");
}

TEST_CASE("read with nothing pending waits for unsolicited replies such as pub/sub messages") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::connection sub(local_options(srv.port()));
  auto ack = sub.command("SUBSCRIBE", "news");
  REQUIRE(ack.size() == 3);
  CHECK(ack[0].str() == "subscribe");
  redis::connection pub(local_options(srv.port()));
  CHECK(pub.command("PUBLISH", "news", std::string("x\0y", 3)).integer() == 1);
  auto m = sub.read();
  REQUIRE(m.size() == 3);
  CHECK(m[0].str() == "message");
  CHECK(m[2].str() == std::string("x\0y", 3));
}

TEST_CASE("AUTH with a password: refused without it or with a wrong one, the message never "
          "holds the password") {
  if (!redis_server::available()) return;
  redis_server srv({.requirepass = "pa55-word"});
  redis::connection anon(local_options(srv.port()));
  CHECK_THROWS_AS(anon.command("PING"), redis::server_error);
  auto wrong = local_options(srv.port());
  wrong.password = "wrong-secret";
  try {
    redis::connection c(wrong);
    FAIL("no exception");
  } catch (const redis::server_error& e) {
    std::string m = e.what();
    CHECK(m.find("AUTH") != std::string::npos);
    CHECK(m.find("wrong-secret") == std::string::npos);
  }
  auto right = local_options(srv.port());
  right.password = "pa55-word";
  redis::connection c(right);
  CHECK(c.command("PING").str() == "PONG");
}

TEST_CASE("AUTH with an ACL user and password, also from a URL") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::connection admin(local_options(srv.port()));
  admin.command("ACL", "SETUSER", "alice", "on", ">alice-pw", "~*", "&*", "+@all");
  auto o = redis::options::from_url("redis://alice:alice-pw@127.0.0.1:" +
                                    std::to_string(srv.port()));
  redis::connection c(o);
  CHECK(c.command("ACL", "WHOAMI").str() == "alice");
  o.password = "not-alices";
  try {
    redis::connection bad(o);
    FAIL("no exception");
  } catch (const redis::server_error& e) {
    CHECK(std::string(e.what()).find("not-alices") == std::string::npos);
  }
}

TEST_CASE("SELECT on connect picks the database, and from_url sets it") {
  if (!redis_server::available()) return;
  redis_server srv;
  auto o = local_options(srv.port());
  o.db = 3;
  redis::connection c3(o);
  c3.command("SET", "where", "three");
  redis::connection c0(local_options(srv.port()));
  CHECK(c0.command("GET", "where").is_nil());
  redis::connection u(redis::options::from_url("redis://127.0.0.1:" +
                                               std::to_string(srv.port()) + "/3"));
  CHECK(u.command("GET", "where").str() == "three");
  auto bad = local_options(srv.port());
  bad.db = 100000;
  CHECK_THROWS_AS(redis::connection{bad}, redis::server_error);
}

TEST_CASE("protocol 3 sends HELLO 3 and replies carry RESP3 types") {
  if (!redis_server::available()) return;
  redis_server srv({.requirepass = "pw3"});
  auto o = local_options(srv.port());
  o.protocol = 3;
  o.password = "pw3";
  redis::connection c(o);
  c.command("HSET", "h", "f", "v");
  auto m = c.command("HGETALL", "h");
  REQUIRE(m.kind() == redis::type::map);
  CHECK(m[0].str() == "f");
  CHECK(m[1].str() == "v");
  CHECK(c.command("GET", "nothing").is_nil());
  o.protocol = 4;
  CHECK_THROWS_AS(redis::connection{o}, std::invalid_argument);
}

TEST_CASE("after the server restarts, the next command reconnects and the data is kept") {
  if (!redis_server::available()) return;
  redis_server srv({.appendonly = true});
  auto o = local_options(srv.port());
  o.db = 2;
  redis::connection c(o);
  c.command("SET", "durable", "yes");
  srv.restart();
  CHECK(c.command("GET", "durable").str() == "yes");  // reconnected, AUTH/SELECT re-run
  CHECK(c.connects() == 2);
}

TEST_CASE("a command on a socket broken mid-flight throws, and the next one reconnects") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::connection c(local_options(srv.port()));
  c.append("SET", "x", 1);
  srv.kill();  // the server dies with a command buffered, before it is sent
  CHECK_THROWS_AS(c.read(), redis::error);
  CHECK_FALSE(c.is_connected());
  CHECK_THROWS_AS(c.command("PING"), redis::error);  // no server: connect refused
  srv.start();
  CHECK(c.command("PING").str() == "PONG");
}

TEST_CASE("a connection killed by the server is replaced on the next command") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::connection victim(local_options(srv.port()));
  auto id = victim.command("CLIENT", "ID").integer();
  redis::connection admin(local_options(srv.port()));
  CHECK(admin.command("CLIENT", "KILL", "ID", id).integer() == 1);
  try {
    victim.command("PING");  // either noticed before sending (reconnects) or throws
  } catch (const redis::error&) {
  }
  CHECK(victim.command("PING").str() == "PONG");
  CHECK(victim.connects() == 2);
}

TEST_CASE("io_timeout bounds a blocked command; the connection recovers afterwards") {
  if (!redis_server::available()) return;
  redis_server srv;
  auto o = local_options(srv.port());
  o.io_timeout = 100ms;
  redis::connection c(o);
  try {
    c.command("BLPOP", "never", 30);  // blocks 30 s on the server
    FAIL("no exception");
  } catch (const redis::error& e) {
    CHECK(std::string(e.what()).find("timed out") != std::string::npos);
  }
  CHECK(c.command("PING").str() == "PONG");
}

TEST_CASE("connecting to a closed port throws redis::error") {
  std::uint16_t port = 0;
  {
    fake_server f({});  // binds a port; once destroyed nothing listens there
    port = f.port();
  }
  CHECK_THROWS_AS(redis::connection{local_options(port)}, redis::error);
}

// ------------------------------------------------------------------------------ fake server

TEST_CASE("a server that never answers trips io_timeout") {
  fake_server f({{.reply = "", .close_after = false}});
  auto o = local_options(f.port());
  o.io_timeout = 100ms;
  redis::connection c(o);
  CHECK_THROWS_AS(c.command("PING"), redis::error);
  CHECK_FALSE(c.is_connected());
}

TEST_CASE("malformed replies throw redis::error and the next command reconnects") {
  std::vector<fake_server::script> scripts;
  for (const char* bad : {"?garbage\r\n", ":12x\r\n", "$3\r\nabcXY", "+OK\rZ", "*2\r\n:1\r\n!\r\n",
                          "=2\r\nab\r\n"})
    scripts.push_back({.reply = bad, .close_after = false});
  scripts.push_back({.reply = "+PONG\r\n", .close_after = false});
  fake_server f(scripts);
  redis::connection c(local_options(f.port()));
  for (std::size_t i = 0; i + 1 < scripts.size(); ++i) {
    CAPTURE(scripts[i].reply);
    CHECK_THROWS_AS(c.command("PING"), redis::error);
    CHECK_FALSE(c.is_connected());
  }
  CHECK(c.command("PING").str() == "PONG");
  CHECK(c.connects() == scripts.size());
}

TEST_CASE("a reply truncated by the server closing throws redis::error") {
  fake_server f({{.reply = "$10\r\nabc", .close_after = true},
                 {.reply = "*3\r\n:1\r\n:2\r\n", .close_after = true},
                 {.reply = "+OK", .close_after = true}});
  redis::connection c(local_options(f.port()));
  for (int i = 0; i < 3; ++i) {
    try {
      c.command("GET", "k");
      FAIL("no exception");
    } catch (const redis::error& e) {
      CHECK(std::string(e.what()).find("closed") != std::string::npos);
    }
  }
}

TEST_CASE("oversized replies throw at once, before the body is received or allocated") {
  fake_server f({{.reply = "$99999999999\r\n", .close_after = false},
                 {.reply = "*2147483647\r\n", .close_after = false},
                 {.reply = "*" + std::string(2000, '9') + "\r\n", .close_after = false},
                 {.reply = "+" + std::string(100000, 'a'), .close_after = false}});
  auto o = local_options(f.port());
  o.limits.max_array_length = 1000;
  o.limits.max_line_length = 64 * 1024;  // the default (16 MiB) would wait for the rest
  redis::connection c(o);
  CHECK_THROWS_AS(c.command("GET", "k"), redis::error);  // bulk over 512 MiB
  CHECK_THROWS_AS(c.command("GET", "k"), redis::error);  // array over max_array_length
  CHECK_THROWS_AS(c.command("GET", "k"), redis::error);  // a length past int64
  CHECK_THROWS_AS(c.command("GET", "k"), redis::error);  // line over max_line_length
  CHECK(f.commands_seen() == 4);
}

TEST_CASE("deep nesting from a server throws instead of exhausting the stack") {
  std::string deep;
  for (int i = 0; i < 100000; ++i) deep += "*1\r\n";
  fake_server f({{.reply = deep, .close_after = false}});
  redis::connection c(local_options(f.port()));
  CHECK_THROWS_AS(c.command("GET", "k"), redis::error);
}

// ------------------------------------------------------------------------------ issue 14

namespace {

// A password that a message could leak whole or in part: checked by its distinctive pieces.
const std::string secret = "hunter2-Zq9@x/k";

void check_no_secret(const std::string& m, const std::string& pw = secret) {
  CAPTURE(m);
  for (std::size_t i = 0; i + 4 <= pw.size(); ++i) CHECK(m.find(pw.substr(i, 4)) == std::string::npos);
}

// Runs `f`, which must throw something derived from std::exception; returns its what().
template <class F>
std::string what_of(F f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  FAIL("no exception");
  return {};
}

}  // namespace

TEST_CASE("no from_url message holds a credential, whatever the URL form") {
  const std::string pw = "hunter2secret";
  for (const std::string& url : std::vector<std::string>{
           "redis://" + pw + "@host:99999/0", "redis://u:" + pw + "@h:0", "redis://:" + pw + "@::1",
        "redis://u:hunt@r2secret@h:12x", "redis://u:hunter2/secret@h/x",
        "redis://u:hunter2?secret@h/-1", "redis://u:" + pw + "%zz@h", "redis://" + pw + "@h?db=x",
        "redis://u:" + pw + "@h?password=" + pw, "redis://u:" + pw + "@h?" + pw,
        "redis://u:" + pw + "@h?client_name=" + pw + "&client_name=" + pw,
        "rediss://u:" + pw + "@h", "http://u:" + pw + "@h", pw + "@h", "unix://:" + pw + "@rel",
        "redis://u:" + pw + "@bad host"}) {
    CAPTURE(url);
    std::string m = what_of([&] { (void)redis::options::from_url(url); });
    CHECK(m.find("from_url") != std::string::npos);
    CHECK(m.find("hunter2") == std::string::npos);
    CHECK(m.find("2secret") == std::string::npos);
    CHECK(m.find("secret") == std::string::npos);
  }
}

TEST_CASE("from_url refuses a bare IPv6 address and takes it in brackets") {
  for (const char* url : {"redis://::1", "redis://::1:6379", "redis://fe80::1/2"}) {
    CAPTURE(url);
    std::string m = what_of([&] { (void)redis::options::from_url(url); });
    CHECK(m.find("brackets") != std::string::npos);
  }
  auto o = redis::options::from_url("redis://[::1]");
  CHECK(o.host == "::1");
  CHECK(o.port == 6379);
  CHECK_THROWS_AS((void)redis::options::from_url("redis://[zz]:1"), std::invalid_argument);
}

TEST_CASE("from_url parses and validates query parameters, and refuses unknown ones") {
  auto o = redis::options::from_url(
      "redis://h:7000?db=2&protocol=3&io_timeout=2s&connect_timeout=250&client_name=w%2D1");
  CHECK(o.host == "h");
  CHECK(o.port == 7000);
  CHECK(o.db == 2);
  CHECK(o.protocol == 3);
  CHECK(o.io_timeout == 2s);
  CHECK(o.connect_timeout == 250ms);
  CHECK(o.client_name == "w-1");
  auto p = redis::options::from_url("redis://host?db=2");
  CHECK(p.host == "host");
  CHECK(p.db == 2);
  CHECK(redis::options::from_url("redis://h/3?io_timeout=150ms").io_timeout == 150ms);
  for (const char* bad : {"redis://h?db=x", "redis://h?db=-1", "redis://h?protocol=4",
                          "redis://h?io_timeout=1h", "redis://h?timeout=5", "redis://h?db=1&db=2",
                          "redis://h/1?db=2", "redis://h?", "redis://h?db", "redis://h?&",
                          "redis://h?client_name=a%20b%0A"}) {
    CAPTURE(bad);
    CHECK_THROWS_AS((void)redis::options::from_url(bad), std::invalid_argument);
  }
  std::string m = what_of([] { (void)redis::options::from_url("redis://h?tiemout=5"); });
  CHECK(m.find("unknown query parameter 'tiemout'") != std::string::npos);
}

TEST_CASE("from_url takes a password holding a raw '@', '/' or '?'") {
  auto o = redis::options::from_url("redis://u:p@ss/w?rd@h:7001/4");
  CHECK(o.username == "u");
  CHECK(o.password == "p@ss/w?rd");
  CHECK(o.host == "h");
  CHECK(o.port == 7001);
  CHECK(o.db == 4);
  auto u = redis::options::from_url("unix://:pw@/run/redis%20x.sock?db=1");
  CHECK(u.unix_path == "/run/redis x.sock");
  CHECK(u.password == "pw");
  CHECK(u.db == 1);
}

TEST_CASE("a HELLO the server does not know (Redis 5, renamed) never shows the password") {
  // Redis 5 and Redis 7 with HELLO renamed echo the arguments, AUTH's included.
  for (const std::string& text : std::vector<std::string>{
           "-ERR unknown command `HELLO`, with args beginning with: `3`, `AUTH`, `default`, `" +
            secret + "`, \r\n",
        "-ERR unknown command 'HELLO', with args beginning with: '3' 'AUTH' 'default' '" +
            secret + "' \r\n",
        "-ERR " + secret + "\r\n",                      // a server that echoes its input
        "-ERR unknown " + secret.substr(0, 7) + "\r\n",  // or a piece of it
        "-" + secret + " is not a code\r\n"}) {
    CAPTURE(text);
    fake_server f({{.reply = text, .close_after = false}});
    auto o = local_options(f.port());
    o.protocol = 3;
    o.password = secret;
    o.username = "";
    std::string m = what_of([&] { redis::connection c(o); });
    check_no_secret(m);
    CHECK(m.find("HELLO failed") != std::string::npos);
  }
  fake_server echo({{.reply = "-ERR AUTH " + secret + "\r\n", .close_after = false}});
  auto o = local_options(echo.port());
  o.password = secret;
  try {
    redis::connection c(o);
    FAIL("no exception");
  } catch (const redis::server_error& e) {
    check_no_secret(e.what());
    CHECK(e.code() == "ERR");
  }
}

TEST_CASE("a renamed HELLO on a real server fails with protocol 3, never showing the password") {
  if (!redis_server::available()) return;
  redis_server srv({.requirepass = secret, .extra = {"--rename-command", "HELLO", ""}});
  auto o = local_options(srv.port());
  o.password = secret;
  o.protocol = 3;
  std::string m = what_of([&] { redis::connection c(o); });
  check_no_secret(m);
  CHECK(m.find("Redis 6") != std::string::npos);
  o.protocol = 2;
  redis::connection c(o);  // RESP2 needs no HELLO
  CHECK(c.command("PING").str() == "PONG");
}

TEST_CASE("no failure of a real connection shows the password: auth, refused, timeout, URL") {
  if (!redis_server::available()) return;
  redis_server srv({.requirepass = "the-right-one"});
  std::vector<std::string> messages;
  auto o = local_options(srv.port());
  o.password = secret;
  messages.push_back(what_of([&] { redis::connection c(o); }));  // WRONGPASS
  o.username = "nobody";
  messages.push_back(what_of([&] { redis::connection c(o); }));
  o.protocol = 3;
  messages.push_back(what_of([&] { redis::connection c(o); }));
  o.username = "";
  messages.push_back(what_of([&] { redis::connection c(o); }));
  std::uint16_t closed = 0;
  {
    fake_server f({});
    closed = f.port();
  }
  auto refused = local_options(closed);
  refused.password = secret;
  messages.push_back(what_of([&] { redis::connection c(refused); }));
  fake_server silent({{.reply = "", .close_after = false}});
  auto slow = local_options(silent.port());
  slow.password = secret;
  slow.io_timeout = 100ms;
  messages.push_back(what_of([&] { redis::connection c(slow); }));
  auto right = local_options(srv.port());
  right.password = "the-right-one";
  redis::connection ok(right);
  // A command that echoes its arguments, given the password: the reply's text is withheld.
  messages.push_back(what_of([&] { ok.command("NOSUCHCOMMAND", "x-the-right-one"); }));
  check_no_secret(messages.back(), "the-right-one");
  CHECK(ok.command("PING").str() == "PONG");
  for (const auto& m : messages) check_no_secret(m);
  try {
    redis::connection c(redis::options::from_url("redis://" + secret + "@127.0.0.1:" +
                                                 std::to_string(srv.port())));
    FAIL("no exception");
  } catch (const redis::server_error& e) {
    check_no_secret(e.what());
    CHECK(e.code() == "WRONGPASS");
  }
}

TEST_CASE("RESP3 push frames never become the reply of a command") {
  if (!redis_server::available()) return;
  redis_server srv;
  std::vector<redis::reply> pushes;
  auto o = local_options(srv.port());
  o.protocol = 3;
  o.on_push = [&](const redis::reply& r) { pushes.push_back(r); };
  redis::connection c(o);
  redis::connection other(local_options(srv.port()));
  other.command("SET", "a", "1");
  other.command("SET", "b", "value-of-b");
  c.command("CLIENT", "TRACKING", "on");
  CHECK(c.command("GET", "a").str() == "1");  // now tracked
  other.command("SET", "a", "2");              // the server pushes "invalidate [a]" to c
  CHECK(c.command("GET", "b").str() == "value-of-b");
  CHECK(c.command("PING").str() == "PONG");
  REQUIRE(c.pushes() >= 1);
  REQUIRE(!pushes.empty());
  CHECK(pushes[0][0].str() == "invalidate");
  // A pub/sub message on a RESP3 command connection: SUBSCRIBE's confirmation is its reply,
  // the messages go to on_push.
  auto ack = c.command("SUBSCRIBE", "news");
  CHECK(ack[0].str() == "subscribe");
  CHECK(other.command("PUBLISH", "news", "m1").integer() == 1);
  CHECK(c.command("GET", "b").str() == "value-of-b");
  CHECK(c.command("PING").str() == "PONG");
  CHECK(pushes.back()[0].str() == "message");
  CHECK(pushes.back()[2].str() == "m1");
  // Without a handler they are dropped and counted.
  o.on_push = {};
  redis::connection d(o);
  d.command("SUBSCRIBE", "news");
  other.command("PUBLISH", "news", "m2");
  CHECK(d.command("ECHO", "x").str() == "x");
  CHECK(d.pushes() == 1);
}

TEST_CASE("a handshake error keeps the server's code, so LOADING and BUSY read as transient") {
  fake_server f({{.reply = "-LOADING Redis is loading the dataset in memory\r\n",
                  .close_after = false},
                 {.reply = "-BUSY Redis is busy running a script.\r\n", .close_after = false}});
  auto o = local_options(f.port());
  o.db = 1;  // the first command is SELECT
  try {
    redis::connection c(o);
    FAIL("no exception");
  } catch (const redis::server_error& e) {
    CHECK(e.code() == "LOADING");
    CHECK(e.transient());
    CHECK(std::string(e.what()).find("SELECT") != std::string::npos);
  }
  o.password = secret;  // the first command is AUTH
  try {
    redis::connection c(o);
    FAIL("no exception");
  } catch (const redis::server_error& e) {
    CHECK(e.code() == "BUSY");
    CHECK(e.transient());
    check_no_secret(e.what());
  }
}

TEST_CASE("client_name names the connection in CLIENT LIST, in RESP2 and RESP3 and from a URL") {
  if (!redis_server::available()) return;
  redis_server srv({.requirepass = "pw"});
  for (int protocol : {2, 3}) {
    auto o = local_options(srv.port());
    o.password = "pw";
    o.protocol = protocol;
    o.client_name = "worker-" + std::to_string(protocol);
    redis::connection c(o);
    CHECK(c.command("CLIENT", "GETNAME").str() == o.client_name);
    CHECK(c.command("CLIENT", "LIST").str().find("name=" + o.client_name) != std::string::npos);
    c.reconnect();  // the name comes back with every connect
    CHECK(c.command("CLIENT", "GETNAME").str() == o.client_name);
  }
  redis::connection u(redis::options::from_url(
      "redis://:pw@127.0.0.1:" + std::to_string(srv.port()) + "?client_name=from-url"));
  CHECK(u.command("CLIENT", "GETNAME").str() == "from-url");
  auto bad = local_options(srv.port());
  bad.password = "pw";
  bad.client_name = "has space";
  CHECK_THROWS_AS(redis::connection{bad}, redis::server_error);
}

TEST_CASE("a 100 KiB status reply from a Lua script is read") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::connection c(local_options(srv.port()));
  auto r = c.command("EVAL", "return {ok = string.rep('a', 102400)}", 0);
  CHECK(r.kind() == redis::type::simple_string);
  CHECK(r.str().size() == 102400);
}

TEST_CASE("a reply over the budget fails clearly and the connection recovers") {
  std::string many = "*3000\r\n";
  for (int i = 0; i < 3000; ++i) many += ":1\r\n";
  fake_server f({{.reply = many, .close_after = false}, {.reply = "+OK\r\n", .close_after = false}});
  auto o = local_options(f.port());
  o.limits.max_reply_elements = 1000;
  redis::connection c(o);
  std::string m = what_of([&] { c.command("LRANGE", "k", 0, -1); });
  CHECK(m.find("max_reply_elements") != std::string::npos);
  CHECK(c.command("PING").str() == "OK");
}

TEST_CASE("numbers go to and come from the server intact in a comma-decimal locale") {
  if (!redis_server::available()) return;
  test_support::comma_locale loc;
  if (!loc.active()) return;
  redis_server srv;
  for (int protocol : {2, 3}) {
    auto o = local_options(srv.port());
    o.protocol = protocol;
    redis::connection c(o);
    c.command("DEL", "f");
    CHECK(c.command("INCRBYFLOAT", "f", 1.5).number() == 1.5);
    CHECK(c.command("INCRBYFLOAT", "f", 0.25).number() == 1.75);
    c.command("ZADD", "z", 2.5, "m");
    CHECK(c.command("ZSCORE", "z", "m").number() == 2.5);
    CHECK(c.command("BLPOP", "nothing", 0.05).is_nil());  // a fractional timeout
  }
}

TEST_CASE("a unix:// URL reaches a server on a Unix-domain socket") {
  if (!redis_server::available()) return;
  std::string path = "/tmp/spindle-test-" + std::to_string(::getpid()) + ".sock";
  redis_server srv({.extra = {"--unixsocket", path, "--unixsocketperm", "700"}});
  redis::connection c(redis::options::from_url("unix://" + path + "?db=2"));
  c.command("SET", "k", "v");
  redis::connection tcp(local_options(srv.port()));
  tcp.command("SELECT", 2);
  CHECK(tcp.command("GET", "k").str() == "v");
  ::unlink(path.c_str());
}

TEST_CASE("every TCP socket has keepalive and TCP_USER_TIMEOUT set") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::connection c(local_options(srv.port()));
  int on = 0;
  socklen_t len = sizeof on;
  REQUIRE(::getsockopt(c.native_handle(), SOL_SOCKET, SO_KEEPALIVE, &on, &len) == 0);
  CHECK(on == 1);
  unsigned user = 0;
  len = sizeof user;
  REQUIRE(::getsockopt(c.native_handle(), IPPROTO_TCP, TCP_USER_TIMEOUT, &user, &len) == 0);
  CHECK(user == (15 + 3 * 5) * 1000);
  auto off = local_options(srv.port());
  off.keepalive = 0s;
  redis::connection d(off);
  len = sizeof on;
  REQUIRE(::getsockopt(d.native_handle(), SOL_SOCKET, SO_KEEPALIVE, &on, &len) == 0);
  CHECK(on == 0);
}
