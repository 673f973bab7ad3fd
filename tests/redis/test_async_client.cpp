// Tests of spindle/redis/async_client.hpp against a real redis-server: many threads on one
// connection, futures and when_all, per-call timeouts and cancellation whose late replies go to
// no one, connection breaks (CLIENT KILL, io_timeout, a killed server), refused commands, RESP3
// pushes, back-pressure, close(), and an idle client that does not spin.
#include <spindle/redis/async_client.hpp>

#include <doctest/doctest.h>
#include <sys/resource.h>  // getrusage

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "support/fault_proxy.hpp"
#include "support/redis_server.hpp"
#include "support/threads.hpp"

namespace redis = spindle::redis;
using namespace std::chrono_literals;
using test_support::redis_server;

namespace {

using test_support::local_options;

// DEBUG SLEEP keeps a command in flight for a known time.
redis_server::config debug_server() { return {.extra = {"--enable-debug-command", "yes"}}; }

std::string key(int t, int i) { return "k:" + std::to_string(t) + ":" + std::to_string(i); }
std::string value(int t, int i) { return "v" + std::to_string(t * 100000 + i); }

// The exception a ready future holds, as text; "" if it holds a value.
template <class F>
std::string failure(F& f) {
  try {
    f.get();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

std::chrono::nanoseconds process_cpu() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return std::chrono::seconds(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         std::chrono::microseconds(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

}  // namespace

TEST_CASE("bad options and an unreachable server are refused when the client is made") {
  CHECK_THROWS_AS(redis::async_client(redis::options{}, {.max_in_flight = 0}),
                  std::invalid_argument);
  CHECK_THROWS_AS(redis::async_client(redis::options{}, {.max_queued_bytes = 0}),
                  std::invalid_argument);
  if (!redis_server::available()) return;
  std::uint16_t port;
  {
    redis_server srv;
    port = srv.port();
  }  // the server is gone: nothing listens on port
  CHECK_THROWS_AS(redis::async_client(local_options(port)), redis::error);
}

TEST_CASE("a command's future holds its reply; an error reply fails only that command") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::async_client c(local_options(srv.port()));
  CHECK(c.command("SET", "k", 42).get().str() == "OK");
  CHECK(c.command("GET", "k").get().integer() == 42);
  auto bad = c.command("LPUSH", "k", "x");  // WRONGTYPE
  auto good = c.command("INCR", "k");
  CHECK_THROWS_AS(bad.get(), redis::server_error);
  CHECK(good.get().integer() == 43);
  CHECK(c.command("GET", "missing").get().is_nil());
  CHECK(c.call("GET", "k").integer() == 43);  // the blocking form
  CHECK_THROWS_AS(c.call("LPUSH", "k", "x"), redis::server_error);
  CHECK_THROWS_AS(c.call("BLPOP", "k", 0), std::invalid_argument);
  CHECK(c.connects() == 1);
}

TEST_CASE("many threads on one client each get their own replies") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::async_client c(local_options(srv.port()));
  constexpr int threads = 8, per_thread = 400;
  test_support::start_gate gate;
  test_support::thread_group g;
  std::atomic<int> wrong{0}, ok{0};
  for (int t = 0; t < threads; ++t)
    g.spawn([&, t] {
      gate.wait();
      for (int i = 0; i < per_thread; ++i) {
        // A third wait at once, a third are gathered, a third use call(): all interleave.
        if (i % 3 == 2) {
          c.call("SET", key(t, i), value(t, i));
          (c.call("GET", key(t, i)).str() == value(t, i) ? ok : wrong).fetch_add(1);
        } else if (i % 3 == 0) {
          c.command("SET", key(t, i), value(t, i)).get();
          auto r = c.command("GET", key(t, i)).get();
          (r.str() == value(t, i) ? ok : wrong).fetch_add(1);
        } else {
          auto s = c.command("SET", key(t, i), value(t, i));
          auto r = c.command("GET", key(t, i));
          auto n = c.command("STRLEN", key(t, i));
          s.get();
          bool same = r.get().str() == value(t, i) &&
                      n.get().integer() == static_cast<std::int64_t>(value(t, i).size());
          (same ? ok : wrong).fetch_add(1);
        }
      }
    });
  gate.open();
  REQUIRE(g.join_within(60s));
  CHECK(wrong.load() == 0);
  CHECK(ok.load() == threads * per_thread);
  CHECK(c.in_flight() == 0);
  CHECK(c.connects() == 1);
}

TEST_CASE("when_all gathers a thousand GETs issued before any is awaited") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::async_client c(local_options(srv.port()));
  constexpr int n = 1000;
  for (int i = 0; i < n; ++i) c.command("SET", key(0, i), value(0, i));
  std::vector<spindle::future<redis::reply>> fs;
  for (int i = 0; i < n; ++i) fs.push_back(c.command("GET", key(0, i)));
  auto all = spindle::when_all(std::move(fs)).get();
  REQUIRE(all.size() == n);
  for (int i = 0; i < n; ++i) CHECK(all[static_cast<std::size_t>(i)].str() == value(0, i));
  CHECK(c.writes() <= static_cast<std::size_t>(2 * n));  // one write per batch, never more
}

TEST_CASE("then() chains on a reply and an error skips the chain") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::async_client c(local_options(srv.port()));
  c.command("SET", "n", 5).get();
  auto doubled = c.command("GET", "n").then([](redis::reply r) { return r.integer() * 2; });
  CHECK(doubled.get() == 10);
  auto skipped = c.command("NOSUCHCOMMAND").then([](redis::reply) { return 1; });
  CHECK_THROWS_AS(skipped.get(), redis::server_error);
}

TEST_CASE("a timed-out command fails at its deadline and its late reply goes to no one") {
  if (!redis_server::available()) return;
  redis_server srv(debug_server());
  redis::async_client c(local_options(srv.port()));
  c.command("SET", "k", "mine").get();
  for (int round = 0; round < 5; ++round) {
    auto slow = c.command_for(20ms, "DEBUG", "SLEEP", "0.1");
    auto next = c.command("GET", "k");  // queued behind the slow one
    CHECK(slow.wait_for(5s) == spindle::status::ok);
    CHECK_THROWS_AS(slow.get(), spindle::timeout_error);
    CHECK(next.get().str() == "mine");  // not the +OK of DEBUG SLEEP
  }
  CHECK(c.in_flight() == 0);
  // duration::max() is no limit; a zero or negative timeout fails at once, sending nothing.
  CHECK(c.command_for(std::chrono::hours::max(), "PING").get().str() == "PONG");
  auto zero = c.command_for(0ms, "SET", "k", "zero");
  CHECK_THROWS_AS(zero.get(), spindle::timeout_error);
  auto negative = c.command_for(-5s, "SET", "k", "negative");
  CHECK_THROWS_AS(negative.get(), spindle::timeout_error);
  CHECK(c.command("GET", "k").get().str() == "mine");
}

TEST_CASE("a cancelled command fails at once with cancelled_error and its reply goes to no one") {
  if (!redis_server::available()) return;
  redis_server srv(debug_server());
  redis::async_client c(local_options(srv.port()));
  c.command("SET", "k", "mine").get();
  for (int round = 0; round < 5; ++round) {
    std::stop_source stop;
    auto slow = c.command(stop.get_token(), "DEBUG", "SLEEP", "0.2");
    auto next = c.command("GET", "k");
    stop.request_stop();
    REQUIRE(slow.wait_for(150ms) == spindle::status::ok);  // before DEBUG SLEEP could answer
    CHECK_THROWS_AS(slow.get(), redis::cancelled_error);
    CHECK(next.get().str() == "mine");
  }
  std::stop_source already;
  already.request_stop();
  auto never = c.command(already.get_token(), "SET", "k", "overwritten");
  CHECK_THROWS_AS(never.get(), redis::cancelled_error);
  CHECK(c.command("GET", "k").get().str() == "mine");  // it was never sent
}

TEST_CASE("a broken connection fails every command in flight, resends none, and reconnects") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::async_client c(local_options(srv.port()));
  redis::connection admin(local_options(srv.port()));
  constexpr int n = 3000;
  for (int i = 0; i < n; ++i) admin.append("SET", key(1, i), value(1, i));
  for (int i = 0; i < n; ++i) admin.read();
  int answered = 0, failed = 0;
  for (int round = 0; round < 5; ++round) {
    auto id = c.command("CLIENT", "ID").get().integer();
    std::vector<spindle::future<redis::reply>> fs;
    for (int i = 0; i < n; ++i) {
      fs.push_back(c.command("INCR", "counter:" + std::to_string(round)));
      if (i == n / 4) admin.command("CLIENT", "KILL", "ID", id);  // mid-flood
    }
    std::int64_t last = 0;
    for (auto& f : fs) {
      try {
        auto v = f.get().integer();
        CHECK(v > last);  // replies in order, each to its own command
        last = v;
        ++answered;
      } catch (const redis::error& e) {
        CHECK(std::string(e.what()).find("may or may not have run") != std::string::npos);
        ++failed;
      }
    }
    // The server ran each INCR at most once (none re-sent behind the caller's back), and at
    // least those answered; the replies lost with the connection fail their futures.
    auto ran = admin.command("GET", "counter:" + std::to_string(round)).integer();
    CHECK(ran >= last);
    CHECK(ran <= n);
    CHECK(c.command("GET", key(1, 7)).get().str() == value(1, 7));  // the next one reconnects
  }
  CHECK(failed > 0);
  CHECK(answered > 0);
  CHECK(c.connects() >= 2);
}

TEST_CASE("no reply within io_timeout breaks the connection; the late reply goes to no one") {
  if (!redis_server::available()) return;
  redis_server srv(debug_server());
  auto o = local_options(srv.port());
  o.io_timeout = 100ms;
  redis::async_client c(o);
  c.command("SET", "k", "mine").get();
  redis::connection admin(local_options(srv.port()));
  auto slow = c.command("DEBUG", "SLEEP", "0.3");
  auto behind = c.command("GET", "k");
  CHECK_THROWS_AS(slow.get(), redis::error);
  std::string why = failure(behind);
  CHECK(why.find("io_timeout") != std::string::npos);
  admin.command("PING");  // answered once DEBUG SLEEP is over
  CHECK(c.command("GET", "k").get().str() == "mine");
  CHECK(c.connects() == 2);
}

TEST_CASE("a killed server fails what is in flight; the next command after restart reconnects") {
  if (!redis_server::available()) return;
  redis_server srv(debug_server());
  redis::async_client c(local_options(srv.port()));
  auto slow = c.command("DEBUG", "SLEEP", "2");
  REQUIRE(c.in_flight() == 1);
  srv.kill();
  CHECK_THROWS_AS(slow.get(), redis::error);
  auto down = c.command("PING");  // nobody listens: fails, saying it was not sent
  CHECK(failure(down).find("not sent") != std::string::npos);
  srv.start();
  CHECK(c.command("PING").get().str() == "PONG");
}

TEST_CASE("an idle connection closed by the server is replaced without failing a command") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::async_client c(local_options(srv.port()));
  redis::connection admin(local_options(srv.port()));
  for (int round = 0; round < 20; ++round) {
    auto id = c.command("CLIENT", "ID").get().integer();
    admin.command("CLIENT", "KILL", "ID", id);
    CHECK(c.command("PING").get().str() == "PONG");
  }
  CHECK(c.connects() == 21);
}

TEST_CASE("blocking, subscribing and state-changing commands are refused with a clear error") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::async_client c(local_options(srv.port()));
  for (auto cmd : {"BLPOP", "blpop", "BRPOP", "BZPOPMIN", "WAIT", "SUBSCRIBE", "psubscribe",
                   "MONITOR", "MULTI", "WATCH", "SELECT", "AUTH", "HELLO", "QUIT"}) {
    try {
      c.command(cmd, "x", "0");
      FAIL("not refused: " << cmd);
    } catch (const std::invalid_argument& e) {
      CHECK(std::string(e.what()).find(cmd) != std::string::npos);
    }
  }
  CHECK_THROWS_AS(c.command("XREAD", "block", 0, "STREAMS", "s", "$"), std::invalid_argument);
  CHECK_THROWS_AS(c.command("CLIENT", "REPLY", "OFF"), std::invalid_argument);
  std::vector<std::string> none;
  CHECK_THROWS_AS(c.command(none), std::invalid_argument);
  // Their non-blocking relatives go through.
  CHECK(c.command("XREAD", "COUNT", 1, "STREAMS", "s", "0").get().is_nil());
  CHECK(c.command("LPOP", "x").get().is_nil());
  CHECK(c.in_flight() == 0);
}

TEST_CASE("RESP3 push frames go to the handler, never to a command") {
  if (!redis_server::available()) return;
  redis_server srv;
  std::mutex mu;
  std::condition_variable cv;
  std::vector<redis::reply> pushes;
  auto o = local_options(srv.port());
  o.protocol = 3;
  redis::async_client c(o, {.on_push = [&](redis::reply r) {
                              std::lock_guard lk(mu);
                              pushes.push_back(std::move(r));
                              cv.notify_all();
                            }});
  redis::connection other(local_options(srv.port()));
  CHECK(c.command("CLIENT", "TRACKING", "ON").get().str() == "OK");
  for (int round = 0; round < 3; ++round) {
    std::string k = "tracked:" + std::to_string(round);
    c.command("GET", k).get();      // the server now tracks k for this client
    other.command("SET", k, "x");  // -> an invalidation push to this client
    CHECK(c.command("PING").get().str() == "PONG");  // a push between replies changes nothing
    std::unique_lock lk(mu);
    auto want = static_cast<std::size_t>(round + 1);
    REQUIRE(cv.wait_for(lk, 10s, [&] { return pushes.size() == want; }));
    CHECK(pushes.back().kind() == redis::type::push);
    CHECK(pushes.back()[0].str() == "invalidate");
  }
}

TEST_CASE("an idle client uses almost no CPU") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::async_client c(local_options(srv.port()), {.default_timeout = 10s});
  c.command("PING").get();
  auto before = process_cpu();
  std::this_thread::sleep_for(200ms);  // measuring idleness, not synchronising
  auto used = process_cpu() - before;
  CHECK(used < 20ms);
  CHECK(c.command("PING").get().str() == "PONG");
}

TEST_CASE("a flood of callers never has more than max_in_flight commands in flight") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::async_client c(local_options(srv.port()), {.max_in_flight = 8});
  constexpr int threads = 16, per_thread = 200;
  test_support::start_gate gate;
  test_support::thread_group g;
  std::atomic<int> over{0}, wrong{0};
  for (int t = 0; t < threads; ++t)
    g.spawn([&, t] {
      gate.wait();
      std::vector<spindle::future<redis::reply>> fs;
      for (int i = 0; i < per_thread; ++i) {
        fs.push_back(c.command("ECHO", value(t, i)));  // blocks while 8 are in flight
        if (c.in_flight() > 8) over.fetch_add(1);
      }
      for (int i = 0; i < per_thread; ++i)
        if (fs[static_cast<std::size_t>(i)].get().str() != value(t, i)) wrong.fetch_add(1);
    });
  gate.open();
  REQUIRE(g.join_within(60s));
  CHECK(over.load() == 0);
  CHECK(wrong.load() == 0);
}

TEST_CASE("a full client: try_command returns nullopt, a timed or stopped wait for room gives up") {
  if (!redis_server::available()) return;
  redis_server srv(debug_server());
  redis::async_client c(local_options(srv.port()), {.max_in_flight = 2});
  auto a = c.command("DEBUG", "SLEEP", "1");
  auto b = c.command("DEBUG", "SLEEP", "0");
  CHECK_FALSE(c.try_command("SET", "k", "try").has_value());
  auto timed = c.command_for(20ms, "SET", "k", "timed");
  CHECK_THROWS_AS(timed.get(), spindle::timeout_error);
  std::stop_source stop;
  std::jthread stopper([&] {
    while (c.in_flight() < 2) std::this_thread::yield();  // (already full)
    stop.request_stop();
  });
  auto stopped = c.command(stop.get_token(), "SET", "k", "stopped");
  CHECK_THROWS_AS(stopped.get(), redis::cancelled_error);
  a.get();
  b.get();
  CHECK(c.command("GET", "k").get().is_nil());  // none of the three was sent
}

TEST_CASE("close answers every command already issued; later commands throw closed_error") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::async_client c(local_options(srv.port()));
  std::vector<spindle::future<redis::reply>> fs;
  for (int i = 0; i < 500; ++i) fs.push_back(c.command("INCR", "n"));
  c.close();
  c.close();  // idempotent
  for (int i = 0; i < 500; ++i) CHECK(fs[static_cast<std::size_t>(i)].get().integer() == i + 1);
  CHECK_THROWS_AS(c.command("PING"), spindle::closed_error);
}

TEST_CASE("close waits for a slow reply asleep, not spinning") {
  if (!redis_server::available()) return;
  redis_server srv(debug_server());
  redis::async_client c(local_options(srv.port()));
  auto slow = c.command("DEBUG", "SLEEP", "0.5");
  auto before = process_cpu();
  c.close();  // drains: waits for the reply
  auto used = process_cpu() - before;
  CHECK(slow.get().str() == "OK");
  CHECK(used < 30ms);  // about 1 ms when asleep; 100-500 ms when spinning
}

TEST_CASE("a continuation may issue the next command from the I/O thread") {
  if (!redis_server::available()) return;
  redis_server srv(debug_server());
  redis::async_client c(local_options(srv.port()));
  c.command("SET", "a", "b").get();
  c.command("SET", "b", "c").get();
  for (int round = 0; round < 3; ++round) {
    spindle::promise<std::string> done;
    auto out = done.get_future();
    std::atomic<bool> on_io{false}, call_refused{false};
    const auto test_thread = std::this_thread::get_id();
    c.command("DEBUG", "SLEEP", "0.05");  // usually still in flight when then() attaches below
    c.command("GET", "a").then([&](redis::reply r) {
      on_io = std::this_thread::get_id() != test_thread;  // else then() ran it inline
      if (on_io) {
        try {
          c.call("PING");  // would wait for the I/O thread, which is this thread
        } catch (const std::logic_error&) {
          call_refused = true;
        }
      }
      c.command("GET", r.str()).then([&](redis::reply r2) { done.set_value(r2.str()); });
    });
    REQUIRE(out.wait_for(10s) == spindle::status::ok);
    CHECK(out.get() == "c");
    CHECK(call_refused.load() == on_io.load());
  }
}

TEST_CASE("a lost reply fails its command and those behind it; none is re-sent") {
  if (!redis_server::available()) return;
  redis_server srv;
  spindle::test::fault_proxy proxy("127.0.0.1", srv.port());
  redis::async_client c(local_options(proxy.port()));
  redis::connection direct(local_options(srv.port()));
  for (int round = 1; round <= 5; ++round) {
    proxy.drop_reply_of("INCR");
    auto before = c.command("PING");
    auto lost = c.command("INCR", "n");
    std::vector<spindle::future<redis::reply>> behind;
    for (int i = 0; i < 50; ++i)
      behind.push_back(c.command("ECHO", value(round, i)).then([round, i](redis::reply r) {
        if (r.str() != value(round, i)) throw std::logic_error("another command's reply");
        return r;
      }));
    CHECK(before.get().str() == "PONG");
    CHECK(failure(lost).find("may or may not have run") != std::string::npos);
    for (int i = 0; i < 50; ++i) {  // in flight at the drop: failed; queued after it: answered
      auto& f = behind[static_cast<std::size_t>(i)];
      std::string why = failure(f);  // "" when answered (with the right value: checked below)
      CHECK((why.empty() || why.find("may or may not have run") != std::string::npos));
    }
    CHECK(direct.command("GET", "n").integer() == round);  // it ran once, never again
    CHECK(c.command("GET", "n").get().integer() == round);  // the next command reconnects
  }
  CHECK(c.connects() >= 6);
}

TEST_CASE("a reply cut in the middle fails its command with a connection error") {
  if (!redis_server::available()) return;
  redis_server srv;
  spindle::test::fault_proxy proxy("127.0.0.1", srv.port());
  redis::async_client c(local_options(proxy.port()));
  c.command("SET", "big", std::string(100000, 'x')).get();
  proxy.cut_mid_reply("GET");
  auto cut = c.command("GET", "big");
  CHECK_THROWS_AS(cut.get(), redis::error);
  CHECK(c.command("STRLEN", "big").get().integer() == 100000);
}

TEST_CASE("a blackholed path fails what is in flight after io_timeout, then recovers") {
  if (!redis_server::available()) return;
  redis_server srv;
  spindle::test::fault_proxy proxy("127.0.0.1", srv.port());
  auto o = local_options(proxy.port());
  o.io_timeout = 200ms;
  o.connect_timeout = 200ms;
  redis::async_client c(o);
  c.command("SET", "k", "mine").get();
  proxy.blackhole(true);
  auto stuck = c.command("GET", "k");
  CHECK(failure(stuck).find("io_timeout") != std::string::npos);
  proxy.disconnect_all();  // the path never recovers for that connection
  proxy.blackhole(false);
  CHECK(c.command("GET", "k").get().str() == "mine");
}

TEST_CASE("a slow path: a timed-out command's late reply goes to no one") {
  if (!redis_server::available()) return;
  redis_server srv;
  spindle::test::fault_proxy proxy("127.0.0.1", srv.port());
  redis::async_client c(local_options(proxy.port()));
  c.command("SET", "k", "mine").get();
  proxy.delay(100ms);
  auto late = c.command_for(10ms, "ECHO", "late");
  auto next = c.command("GET", "k");
  CHECK_THROWS_AS(late.get(), spindle::timeout_error);
  CHECK(next.get().str() == "mine");
  proxy.delay(0ms);
  CHECK(c.command("ECHO", "now").get().str() == "now");
  CHECK(c.connects() == 1);
}

TEST_CASE("every connection dropped while idle: the next command reconnects and succeeds") {
  if (!redis_server::available()) return;
  redis_server srv;
  spindle::test::fault_proxy proxy("127.0.0.1", srv.port());
  redis::async_client c(local_options(proxy.port()));
  for (int round = 0; round < 10; ++round) {
    CHECK(c.command("PING").get().str() == "PONG");
    proxy.disconnect_all();
  }
  CHECK(c.command("PING").get().str() == "PONG");
}

#ifdef SPINDLE_REDIS_ASYNC_EXAMPLE
#include "support/process.hpp"

TEST_CASE("the example fetches 1,000 keys sequentially and concurrently and prints both times") {
  if (!redis_server::available()) return;
  redis_server srv;
  test_support::child ex(
      {SPINDLE_REDIS_ASYNC_EXAMPLE, "redis://127.0.0.1:" + std::to_string(srv.port())});
  auto r = ex.finish(60s);
  CHECK(r.exited(0));
  CHECK(r.out.find("sequential: 1000 GETs in") != std::string::npos);
  CHECK(r.out.find("concurrent: 1000 GETs in") != std::string::npos);
  CHECK(r.out.find("2000 of 2000 replies right") != std::string::npos);
}
#endif

// ---- hostile tests (red team) ----

TEST_CASE("command_for(duration::max()) has no limit even when default_timeout is set") {
  // Attacks "duration::max() means no limit": the client read max() as "no timeout given" and
  // applied async_options::default_timeout to it.
  if (!redis_server::available()) return;
  redis_server srv(debug_server());
  redis::async_client c(local_options(srv.port()), {.default_timeout = 50ms});
  auto defaulted = c.command("DEBUG", "SLEEP", "0.3");  // no timeout given: the default applies
  CHECK_THROWS_AS(defaulted.get(), spindle::timeout_error);
  auto unlimited = c.command_for(std::chrono::hours::max(), "DEBUG", "SLEEP", "0.3");
  CHECK(unlimited.get().str() == "OK");
  auto never = c.command_for(spindle::deadline<>::never().remaining(), "DEBUG", "SLEEP", "0.3");
  CHECK(never.get().str() == "OK");
  CHECK(c.command("PING").get().str() == "PONG");
}

TEST_CASE("cancelling 300 commands stuck on a blackholed path fails each at once; no reply strays") {
  if (!redis_server::available()) return;
  redis_server srv;
  spindle::test::fault_proxy proxy("127.0.0.1", srv.port());
  redis::async_client c(local_options(proxy.port()));
  c.command("SET", "k", "mine").get();
  for (int round = 0; round < 3; ++round) {
    proxy.blackhole(true);
    std::stop_source stop;
    std::vector<spindle::future<redis::reply>> fs;
    for (int i = 0; i < 300; ++i)
      fs.push_back(c.command(stop.get_token(), "SET", "k", "cancelled" + std::to_string(i)));
    auto gets = c.command("GET", "k");  // not cancelled: behind the 300
    stop.request_stop();
    int cancelled = 0;
    for (auto& f : fs) {
      REQUIRE(f.wait_for(10s) == spindle::status::ok);  // does not hang (bound: 10 s)
      try {
        f.get();
      } catch (const redis::cancelled_error&) {
        ++cancelled;
      }
    }
    CHECK(cancelled == 300);
    CHECK(c.in_flight() == 301);  // they keep their places until the replies come
    proxy.blackhole(false);  // the SETs were sent: they run, their replies are discarded
    CHECK(gets.get().str() == "cancelled299");
    CHECK(c.command("SET", "k", "mine").get().str() == "OK");
    CHECK(c.in_flight() == 0);
  }
}

TEST_CASE("max_in_flight 1: threads racing commands, timeouts and stops only ever get their own reply") {
  // Attacks slot reuse under cancellation: with one slot, every command reuses the slot (and its
  // stop callback, timer and cancel flag) of the one before it, while other threads request
  // stop and deadlines pass at any moment.
  if (!redis_server::available()) return;
  redis_server srv;
  redis::async_client c(local_options(srv.port()), {.max_in_flight = 1});
  constexpr int threads = 6, per_thread = 300;
  test_support::start_gate gate;
  test_support::thread_group g;
  std::atomic<int> wrong{0}, ok{0}, gave_up{0};
  for (int t = 0; t < threads; ++t)
    g.spawn([&, t] {
      gate.wait();
      for (int i = 0; i < per_thread; ++i) {
        spindle::future<redis::reply> f;
        std::stop_source stop;
        std::jthread stopper;
        switch (i % 3) {
          case 0:
            f = c.command("ECHO", value(t, i));
            break;
          case 1:
            f = c.command_for(std::chrono::microseconds(50 + 37 * (i % 7)), "ECHO", value(t, i));
            break;
          default:
            stopper = std::jthread([&stop] { stop.request_stop(); });  // races the command
            f = c.command(stop.get_token(), "ECHO", value(t, i));
            break;
        }
        if (f.wait_for(30s) != spindle::status::ok) {
          wrong.fetch_add(1000);  // a hang
          continue;
        }
        try {
          if (f.get().str() == value(t, i))
            ok.fetch_add(1);
          else
            wrong.fetch_add(1);
        } catch (const spindle::timeout_error&) {
          gave_up.fetch_add(1);
          if (i % 3 == 0) wrong.fetch_add(1);  // a neighbour's timeout leaked into this slot
        } catch (const redis::cancelled_error&) {
          gave_up.fetch_add(1);
          if (i % 3 == 0) wrong.fetch_add(1);  // a neighbour's stop leaked into this slot
        }
      }
    });
  gate.open();
  REQUIRE(g.join_within(120s));
  CHECK(wrong.load() == 0);
  CHECK(ok.load() + gave_up.load() == threads * per_thread);
  CHECK(c.command("PING").get().str() == "PONG");
  CHECK(c.in_flight() == 0);
}

TEST_CASE("destroying a client with commands stuck on a blackholed path returns and fails them") {
  // Attacks "the destructor ... reads every reply owed (bounded by io_timeout when it is set)":
  // with the path blackholed, destruction must still end, and every future must be fulfilled.
  if (!redis_server::available()) return;
  redis_server srv;
  spindle::test::fault_proxy proxy("127.0.0.1", srv.port());
  auto o = local_options(proxy.port());
  o.io_timeout = 200ms;
  std::vector<spindle::future<redis::reply>> fs;
  {
    redis::async_client c(o, {.max_in_flight = 64});
    c.command("PING").get();
    proxy.blackhole(true);
    for (int i = 0; i < 64; ++i) fs.push_back(c.command("INCR", "n"));
    fs.push_back(c.command_for(10ms, "INCR", "n"));  // waits for room, then gives up
  }  // the destructor: bounded by io_timeout
  REQUIRE(fs.size() == 65);
  for (auto& f : fs) REQUIRE(f.ready());
  for (std::size_t i = 0; i < 64; ++i)
    CHECK(failure(fs[i]).find("io_timeout") != std::string::npos);
  CHECK_THROWS_AS(fs[64].get(), spindle::timeout_error);
}

TEST_CASE("max_queued_bytes 1 still admits and answers every command, one per write") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::async_client c(local_options(srv.port()), {.max_queued_bytes = 1});
  std::vector<spindle::future<redis::reply>> fs;
  for (int i = 0; i < 200; ++i) fs.push_back(c.command("ECHO", value(0, i)));
  for (int i = 0; i < 200; ++i) CHECK(fs[static_cast<std::size_t>(i)].get().str() == value(0, i));
  CHECK(c.try_command("PING").has_value());
}

TEST_CASE("a continuation on the I/O thread may cancel other commands and close the client") {
  // Stop callbacks then run on the I/O thread itself, inside a fulfilment; close() from there
  // only refuses new commands, and the destructor joins. Nothing may hang or be lost.
  if (!redis_server::available()) return;
  redis_server srv(debug_server());
  for (int round = 0; round < 3; ++round) {
    std::vector<spindle::future<redis::reply>> fs;
    spindle::future<void> tail;
    std::stop_source stop;
    {
      redis::async_client c(local_options(srv.port()));
      c.command("PING").get();
      const std::size_t w0 = c.writes();
      auto first = c.command("DEBUG", "SLEEP", "0.3");
      tail = std::move(first).then([&](redis::reply r) {
        CHECK(r.str() == "OK");
        stop.request_stop();  // the INCRs: cancelled from the I/O thread
        c.close();            // refuses new commands; does not join itself
        CHECK_THROWS_AS(c.command("PING"), spindle::closed_error);
      });
      // The rest goes in a later write, so the server answers `first` alone (it flushes its
      // replies once per read) and the INCRs' replies come after `second`'s sleep.
      for (int i = 0; i < 100000 && c.writes() == w0; ++i) std::this_thread::yield();
      try {
        auto second = c.command("DEBUG", "SLEEP", "0.3");
        for (int i = 0; i < 100; ++i) fs.push_back(c.command(stop.get_token(), "INCR", "n"));
      } catch (const spindle::closed_error&) {
        // this thread stalled past `first`'s reply: the client closed under it (valid)
      }
      REQUIRE(tail.wait_for(30s) == spindle::status::ok);
    }  // joins: every reply owed is read first
    tail.get();
    // Each INCR is either cancelled or answered: a stop that comes after its reply was read is
    // too late (call_options). Usually all are cancelled (their replies come after `second`'s
    // 0.3 s sleep), but an I/O thread descheduled that long reads them with `first`'s reply.
    int cancelled = 0, answered = 0;
    for (auto& f : fs) {
      REQUIRE(f.ready());
      try {
        const redis::reply v = f.get();  // outside CHECK: CHECK would catch the cancellation
        CHECK(v.integer() >= 1);
        ++answered;
      } catch (const redis::cancelled_error&) {
        ++cancelled;
      }
    }
    MESSAGE("round " << round << ": " << cancelled << " cancelled, " << answered << " answered");
    CHECK(cancelled + answered == static_cast<int>(fs.size()));
  }
}
