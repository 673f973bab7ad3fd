// Tests of spindle/redis/stream.hpp against a real redis-server: channel statuses, close seen by
// another object, a dead consumer's pending entries claimed by another, acks after a claim
// failing, nack and dead-lettering, MAXLEN trimming, worker_pool acknowledgement, and a
// cross-process run with a consumer killed by SIGKILL.
#include <doctest/doctest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <limits>
#include <map>
#include <set>
#include <spindle/channel.hpp>
#include <spindle/redis/queue.hpp>
#include <spindle/redis/stream.hpp>
#include <spindle/worker_pool.hpp>
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

static_assert(spindle::channel<redis::stream<std::string>>);
static_assert(spindle::detail::acknowledging_channel<redis::stream<int>>);
static_assert(spindle::detail::fused_ack_channel<redis::stream<int>>);  // worker_pool fuses acks

extern char** environ;

namespace {
using test_support::local_options;

using test_support::eventually;
}  // namespace

TEST_CASE("a stream refuses an empty name or group and zero timeouts") {
  CHECK_THROWS_AS(redis::stream<int>("", {}), std::invalid_argument);
  CHECK_THROWS_AS(redis::stream<int>("s", {}, {.group = ""}), std::invalid_argument);
  CHECK_THROWS_AS(redis::stream<int>("s", {}, {.visibility_timeout = 0ms}), std::invalid_argument);
  CHECK_THROWS_AS(redis::stream<int>("s", {}, {.poll_interval = 0ms}), std::invalid_argument);
}

TEST_CASE("stream push and pop deliver in order with ok, empty, timeout, closed, cancelled") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::stream<std::string> s("st", local_options(srv.port()), {.poll_interval = 20ms});
  std::string v;
  CHECK(s.try_pop(v) == status::empty);
  CHECK(s.pop_for(v, 30ms) == status::timeout);
  std::stop_source stopped;
  stopped.request_stop();
  CHECK(s.pop(v, stopped.get_token()) == status::cancelled);
  CHECK(s.push(std::string("a")) == status::ok);
  std::string b = "b";
  CHECK(s.try_push(b) == status::ok);
  CHECK(s.push_for(std::string("c"), 10ms) == status::ok);
  CHECK(s.pop(v) == status::ok);
  CHECK(v == "a");
  CHECK(s.try_pop(v) == status::ok);
  CHECK(v == "b");
  CHECK(s.in_flight() == 1);  // pending until this thread's next pop
  s.close();
  CHECK(s.closed());
  CHECK(s.push(std::string("x")) == status::closed);
  CHECK(s.pop_for(v, 1s) == status::ok);
  CHECK(v == "c");
  CHECK(s.pop(v) == status::closed);
  CHECK_FALSE(s.pop().has_value());
  CHECK(s.in_flight() == 0);
  CHECK(s.pending() == 0);
  CHECK(s.size() == 3);  // acked entries stay in the log until the retention policy trims them
  CHECK(s.trim() == 3);  // every group (the only one) acknowledged them
  CHECK(s.size() == 0);
}

namespace {
// Scripts the server has run (EVALSHA calls), from INFO commandstats.
long evalsha_calls(redis::connection& c) {
  std::string info = c.command("INFO", "commandstats").str();
  auto at = info.find("cmdstat_evalsha:calls=");
  if (at == std::string::npos) return 0;
  return std::stol(info.substr(at + 22));
}
}  // namespace

TEST_CASE("pop(T&) and ack_and_pop_delivery ack the previous entry in the next pop's script") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::connection c(local_options(srv.port()));
  redis::stream<std::string> s("fused", local_options(srv.port()), {.poll_interval = 20ms});
  for (int i = 0; i < 6; ++i) REQUIRE(s.push("e" + std::to_string(i)) == status::ok);
  std::string v;
  REQUIRE(s.pop(v) == status::ok);  // loads the script
  CHECK(v == "e0");
  const long before = evalsha_calls(c);
  REQUIRE(s.pop(v) == status::ok);  // acks e0 in the same script
  CHECK(v == "e1");
  CHECK(s.in_flight() == 1);
  CHECK(s.ack_last());  // a separate settle script
  CHECK(s.in_flight() == 0);
  redis::stream<std::string>::delivery d;
  REQUIRE(s.pop_delivery(d) == status::ok);
  CHECK(d.value == "e2");
  REQUIRE(s.ack_and_pop_delivery(d) == status::ok);  // acks e2, pops e3
  CHECK(d.value == "e3");
  CHECK(s.in_flight() == 1);
  CHECK(evalsha_calls(c) - before == 4);  // pop, settle, pop, pop: no settle before a pop
  CHECK(s.pending() == 1);                // e0..e2 acked (kept in the log), e3 held
  // An entry no longer held (another consumer claimed it) is skipped, never acked for them.
  redis::stream<std::string> other("fused", local_options(srv.port()),
                                   {.visibility_timeout = 1ms, .poll_interval = 20ms});
  redis::stream<std::string>::delivery taken;
  REQUIRE(eventually([&] {
    return other.try_pop_delivery(taken) == status::ok && taken.value == "e3";
  }));
  REQUIRE(s.ack_and_pop_delivery(d) == status::ok);  // the fused ack of e3 is skipped
  CHECK(d.value != "e3");
  CHECK(other.ack(taken));  // still held by `other`: its own ack succeeds
}

TEST_CASE("close by one stream object ends a blocked pop of another") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::stream<int> a("sc", local_options(srv.port()), {.poll_interval = 20ms});
  redis::stream<int> b("sc", local_options(srv.port()), {.poll_interval = 20ms});
  std::atomic<int> result{-1};
  test_support::thread_group g;
  g.spawn([&] {
    int v = 0;
    result.store(static_cast<int>(b.pop(v)), std::memory_order_release);
  });
  a.close();
  REQUIRE(g.join_within(10s));
  CHECK(result.load(std::memory_order_acquire) == static_cast<int>(status::closed));
}

TEST_CASE("after close, a stream pop waits while another consumer holds an entry") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::stream<int> a("sheld", local_options(srv.port()), {.poll_interval = 20ms});
  redis::stream<int> b("sheld", local_options(srv.port()), {.poll_interval = 20ms});
  REQUIRE(a.push(1) == status::ok);
  REQUIRE(a.push(2) == status::ok);
  redis::stream<int>::delivery d1, d2;
  REQUIRE(a.try_pop_delivery(d1) == status::ok);
  REQUIRE(a.try_pop_delivery(d2) == status::ok);
  a.close();
  redis::stream<int>::delivery e;
  CHECK(b.try_pop_delivery(e) == status::empty);  // not closed: a holds 1 and 2
  CHECK(b.pop_delivery_for(e, 100ms) == status::timeout);
  CHECK(b.pending() == 2);
  // a nack brings 2 back: the waiting consumer gets it
  std::atomic<int> result{-1};
  test_support::thread_group g;
  g.spawn([&] { result.store(static_cast<int>(b.pop_delivery(e)), std::memory_order_release); });
  CHECK(a.nack(d2));
  REQUIRE(g.join_within(10s));
  REQUIRE(result.load(std::memory_order_acquire) == static_cast<int>(status::ok));
  CHECK(e.value == 2);
  CHECK(e.deliveries == 2);
  CHECK(b.ack(e));
  // an ack of the last held entry ends the wait with closed
  test_support::thread_group h;
  result.store(-1);
  h.spawn([&] {
    redis::stream<int>::delivery f;
    result.store(static_cast<int>(b.pop_delivery(f)), std::memory_order_release);
  });
  CHECK(a.ack(d1));
  REQUIRE(h.join_within(10s));
  CHECK(result.load(std::memory_order_acquire) == static_cast<int>(status::closed));
  CHECK(b.pending() == 0);
}

TEST_CASE("a dead consumer's pending entry is claimed by another and the old ack fails") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::stream_options so{.visibility_timeout = 150ms, .poll_interval = 20ms};
  redis::stream<int> live("claim", local_options(srv.port()), so);
  redis::stream<int>::delivery d;
  auto dead = std::make_unique<redis::stream<int>>("claim", local_options(srv.port()), so);
  CHECK(live.push(7) == status::ok);
  REQUIRE(dead->try_pop_delivery(d) == status::ok);
  CHECK(d.deliveries == 1);
  std::string dead_id = dead->consumer_id();
  dead.reset();  // its heartbeat stops: the entry goes stale after 150 ms
  redis::stream<int>::delivery e;
  REQUIRE(live.pop_delivery_for(e, 5s) == status::ok);
  CHECK(e.value == 7);
  CHECK(e.id == d.id);
  CHECK(e.deliveries == 2);
  redis::stream<int> zombie("claim", local_options(srv.port()), so);  // cannot ack another's entry
  CHECK_FALSE(zombie.ack(d));
  CHECK(live.ack(e));
  CHECK_FALSE(live.ack(e));
}

TEST_CASE("a live consumer's heartbeat keeps its entries from being claimed") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::stream_options so{.visibility_timeout = 100ms, .poll_interval = 20ms};
  redis::stream<int> a("hb", local_options(srv.port()), so);
  redis::stream<int> b("hb", local_options(srv.port()), so);
  CHECK(a.push(1) == status::ok);
  redis::stream<int>::delivery d, e;
  REQUIRE(a.try_pop_delivery(d) == status::ok);
  CHECK(b.pop_delivery_for(e, 400ms) == status::timeout);
  CHECK(a.ack(d));
}

TEST_CASE("stream nack redelivers and dead-letters after max_deliveries") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::stream<std::string> s("sd", local_options(srv.port()),
                               {.max_deliveries = 3, .poll_interval = 20ms});
  CHECK(s.push(std::string("p")) == status::ok);
  redis::stream<std::string>::delivery d;
  for (std::uint32_t n = 1; n <= 3; ++n) {
    REQUIRE(s.try_pop_delivery(d) == status::ok);
    CHECK(d.deliveries == n);
    CHECK(s.nack(d));
  }
  CHECK(s.try_pop_delivery(d) == status::empty);
  CHECK(s.dead_letter_size() == 1);
}

TEST_CASE("a stream with max_length trims the oldest entries") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::stream<int> s("trim", local_options(srv.port()), {.max_length = 3, .poll_interval = 20ms});
  for (int i = 0; i < 10; ++i) CHECK(s.push(i) == status::ok);
  CHECK(s.size() == 3);
  int v = -1;
  CHECK(s.try_pop(v) == status::ok);
  CHECK(v == 7);
}

TEST_CASE("a second consumer group sees every entry the first one acknowledged") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::stream<int> a("groups", local_options(srv.port()), {.group = "a", .poll_interval = 20ms});
  redis::stream<int> b("groups", local_options(srv.port()), {.group = "b", .poll_interval = 20ms});
  redis::stream<int>::delivery d;
  CHECK(b.try_pop_delivery(d) == status::empty);  // creates group b before the pushes
  for (int i = 0; i < 5; ++i) REQUIRE(a.push(i) == status::ok);
  for (int i = 0; i < 5; ++i) {
    REQUIRE(a.try_pop_delivery(d) == status::ok);
    CHECK(d.value == i);
    CHECK(a.ack(d));
  }
  CHECK(a.trim() == 0);  // group b has not read them: nothing may go
  for (int i = 0; i < 5; ++i) {
    REQUIRE(b.try_pop_delivery(d) == status::ok);
    CHECK(d.value == i);
    CHECK(b.ack(d));
  }
  CHECK(b.trim() == 5);  // now every group acknowledged them
  CHECK(a.size() == 0);
}

TEST_CASE("an entry whose reply was lost is not renewed by its consumer's heartbeat: another "
          "claims it") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  redis::stream_options so{.visibility_timeout = 300ms, .poll_interval = 20ms};
  redis::stream<int> s("lost", o, so);
  redis::stream<int>::delivery d;
  REQUIRE(s.push(1) == status::ok);
  REQUIRE(s.push(2) == status::ok);
  REQUIRE(s.try_pop_delivery(d) == status::ok);  // starts s's heartbeat; s holds 1
  CHECK(d.value == 1);
  // Entry 2 is read as s, but the reply never reaches s (an I/O error or io_timeout).
  redis::connection r(o);
  r.command("XREADGROUP", "GROUP", so.group, s.consumer_id(), "COUNT", 1, "STREAMS",
            "{lost}:stream", ">");
  redis::stream<int> other("lost", o, so);
  redis::stream<int>::delivery e;
  REQUIRE(other.pop_delivery_for(e, 3s) == status::ok);  // claimed once idle 300 ms
  CHECK(e.value == 2);
  CHECK(e.deliveries == 2);
  CHECK(other.ack(e));
  CHECK(other.pop_delivery_for(e, 600ms) == status::timeout);  // 1 stays renewed by s
  CHECK(s.ack(d));
  CHECK(s.pending() == 0);
}

TEST_CASE("a blocked read whose reply was lost on the way (the server delivered the entry) is "
          "retried and the entry comes back to the same pop, counted twice") {
  if (!redis_server::available()) return;
  redis_server srv;
  spindle::test::fault_proxy proxy("127.0.0.1", srv.port());
  // poll_interval 1 s: one XREADGROUP BLOCK is in flight when the entry arrives, so the dropped
  // reply is the one carrying it (not an empty timeout reply).
  redis::stream_options so{.visibility_timeout = 300ms, .poll_interval = 1s};
  redis::stream<int> s("lostblock", local_options(proxy.port()), so);
  redis::connection r(local_options(srv.port()));
  redis::stream<int>::delivery d;
  CHECK(s.try_pop_delivery(d) == status::empty);  // creates the group, loads the scripts
  proxy.drop_reply_of("XREADGROUP");
  status got = status::closed;
  std::thread popper([&] { got = s.pop_delivery_for(d, 10s); });
  REQUIRE(eventually([&] { return proxy.commands_seen("XREADGROUP") >= 1; }, 5s));
  redis::stream<int> producer("lostblock", local_options(srv.port()), so);
  REQUIRE(producer.push(2) == status::ok);
  popper.join();
  // The server handed entry 2 to s's consumer; the reply was lost and the connection dropped.
  // The pop retried; once the entry was idle past visibility_timeout it claimed it back.
  REQUIRE(got == status::ok);
  CHECK(d.value == 2);
  CHECK(d.deliveries == 2);
  CHECK(s.ack(d));
  CHECK(s.pending() == 0);
}

TEST_CASE("stream entries from redis-cli: a bare v is delivered, an undecodable or v-less one "
          "dead-lettered at once with its reason") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  redis::stream<int> s("sfor", o, {.poll_interval = 20ms});
  redis::stream<int>::delivery d;
  CHECK(s.try_pop_delivery(d) == status::empty);  // creates the group
  const std::string cli =
      (std::filesystem::path(redis_server::binary()).parent_path() / "redis-cli").string();
  const std::string port = std::to_string(srv.port());
  for (auto fields : {std::vector<std::string>{"v", "oops"}, {"data", "1"}, {"v", "5"}}) {
    std::vector<std::string> argv{cli, "-p", port, "XADD", "{sfor}:stream", "*"};
    argv.insert(argv.end(), fields.begin(), fields.end());
    REQUIRE(test_support::run(argv, 10s).exited(0));
  }
  REQUIRE(s.try_pop_delivery(d) == status::ok);
  CHECK(d.value == 5);
  CHECK(d.deliveries == 1);
  CHECK(s.ack(d));
  CHECK(s.dead_letter_size() == 2);
  CHECK(s.pending() == 0);
  redis::connection r(o);
  auto dead = r.command("XRANGE", "{sfor}:stream:dead", "-", "+");
  REQUIRE(dead.size() == 2);
  std::set<std::string> reasons;
  for (const auto& e : dead.elements())
    for (std::size_t i = 0; i + 1 < e[1].size(); i += 2)
      if (e[1][i].str() == "reason") reasons.insert(e[1][i + 1].str());
  CHECK(reasons == std::set<std::string>{"undecodable payload", "entry without a v field"});
}

TEST_CASE("short-lived stream consumers that hold nothing leave the group") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  for (int i = 0; i < 50; ++i) {
    redis::stream<int> s("churn", o, {.poll_interval = 20ms});
    REQUIRE(s.push(i) == status::ok);
    int v = -1;
    REQUIRE(s.try_pop(v) == status::ok);
    CHECK(s.ack_last());
  }
  redis::connection r(o);
  CHECK(r.command("XINFO", "CONSUMERS", "{churn}:stream", "spindle").size() == 0);
}

TEST_CASE("a queue and a stream of the same name share no key") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  redis::queue<int> q("same", o, {.max_deliveries = 1, .poll_interval = 20ms});
  redis::stream<int> s("same", o, {.max_deliveries = 1, .poll_interval = 20ms});
  REQUIRE(q.push(1) == status::ok);
  REQUIRE(s.push(2) == status::ok);
  redis::queue<int>::delivery qd;
  redis::stream<int>::delivery sd;
  REQUIRE(q.try_pop_delivery(qd) == status::ok);
  REQUIRE(s.try_pop_delivery(sd) == status::ok);
  CHECK(q.nack(qd));  // both dead-lettered
  CHECK(s.nack(sd));
  CHECK(q.dead_letter_size() == 1);
  CHECK(s.dead_letter_size() == 1);
  q.close();
  CHECK_FALSE(s.closed());
  CHECK(s.push(3) == status::ok);
}

TEST_CASE("worker_pool over a stream acks and dead-letters a poison entry") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::stream<int> s("wp", local_options(srv.port()),
                       {.max_deliveries = 2, .poll_interval = 20ms});
  constexpr int n = 40;
  for (int i = 0; i < n; ++i) REQUIRE(s.push(i) == status::ok);
  std::atomic<int> sum{0};
  spindle::worker_pool wp(s, 2, [&](int v) {
    if (v == 5) throw std::runtime_error("poison");
    sum.fetch_add(v, std::memory_order_relaxed);
  });
  REQUIRE(eventually([&] { return wp.stats().processed == n - 1 && s.dead_letter_size() == 1; }));
  s.close();
  wp.join();
  CHECK(wp.stats().failed == 2);
  CHECK(sum.load() == n * (n - 1) / 2 - 5);
}

// ---- reading the log, dead letters, health (issue 16 item 5) ----------------------------------

TEST_CASE("read_range pages through the log in order without a consumer group") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::stream<int> s("log", local_options(srv.port()), {.poll_interval = 20ms});
  for (int i = 0; i < 25; ++i) REQUIRE(s.push(i) == status::ok);
  std::vector<int> seen;
  std::string from = "-";
  int pages = 0;
  for (; !from.empty(); ++pages) {
    auto p = s.read_range(from, "+", 10);
    CHECK(p.items.size() <= 10);
    for (const auto& r : p.items) {
      REQUIRE(r.value.has_value());
      CHECK(r.error.empty());
      seen.push_back(*r.value);
    }
    from = p.next;
  }
  CHECK(pages == 3);  // 10, 10, 5
  REQUIRE(seen.size() == 25);
  for (int i = 0; i < 25; ++i) CHECK(seen[static_cast<std::size_t>(i)] == i);
  CHECK(s.health().groups.empty());  // reading the log created no group
}

TEST_CASE("read_range replays from an offset, inclusive or exclusive, and backwards") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::stream<std::string> s("off", local_options(srv.port()), {.poll_interval = 20ms});
  for (auto v : {"a", "b", "c", "d"}) REQUIRE(s.push(std::string(v)) == status::ok);
  auto all = s.read_range();
  REQUIRE(all.items.size() == 4);
  CHECK(all.next.empty());
  const std::string b = all.items[1].id;
  auto inclusive = s.read_range(b);
  REQUIRE(inclusive.items.size() == 3);
  CHECK(*inclusive.items[0].value == "b");
  auto exclusive = s.read_range("(" + b);
  REQUIRE(exclusive.items.size() == 2);
  CHECK(*exclusive.items[0].value == "c");
  auto upto = s.read_range("-", b);
  REQUIRE(upto.items.size() == 2);
  CHECK(*upto.items[1].value == "b");
  auto back = s.read_range_reverse("+", "-", 3);
  REQUIRE(back.items.size() == 3);
  CHECK(*back.items[0].value == "d");
  CHECK(*back.items[2].value == "b");
  CHECK(back.next == "(" + b);
  auto rest = s.read_range_reverse(back.next, "-", 3);
  REQUIRE(rest.items.size() == 1);
  CHECK(*rest.items[0].value == "a");
  CHECK(rest.next.empty());
}

TEST_CASE("read_range of an empty or missing stream, or past its end, is an empty last page") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::stream<int> s("none", local_options(srv.port()), {.poll_interval = 20ms});
  auto p = s.read_range();
  CHECK(p.items.empty());
  CHECK(p.next.empty());
  CHECK(s.read_dead_letters().items.empty());
  REQUIRE(s.push(1) == status::ok);
  auto last = s.read_range_reverse("+", "-", 1);
  REQUIRE(last.items.size() == 1);
  CHECK_FALSE(last.next.empty());  // a full page: the caller asks once more
  auto past = s.read_range("(" + last.items[0].id);
  CHECK(past.items.empty());
  CHECK(past.next.empty());
  CHECK(s.read_range("9999999999999-0", "+").items.empty());
  CHECK(s.read_range("+", "-").items.empty());  // an inverted range is empty, not an error
}

TEST_CASE("read_range refuses count 0 and empty bounds, clamps a huge count, reports bad ids") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::stream<int> s("bad", local_options(srv.port()), {.poll_interval = 20ms});
  CHECK_THROWS_AS(s.read_range("-", "+", 0), std::invalid_argument);
  CHECK_THROWS_AS(s.read_range_reverse("+", "-", 0), std::invalid_argument);
  CHECK_THROWS_AS(s.read_dead_letters("-", "+", 0), std::invalid_argument);
  CHECK_THROWS_AS(s.read_range("", "+"), std::invalid_argument);
  CHECK_THROWS_AS(s.read_range("-", ""), std::invalid_argument);
  try {
    s.read_range("-", "+", 0);
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("read_range: count must be >= 1, got 0") != std::string::npos);
  }
  for (int i = 0; i < 3; ++i) REQUIRE(s.push(i) == status::ok);
  auto p = s.read_range("-", "+", std::numeric_limits<std::size_t>::max());
  CHECK(p.items.size() == 3);  // clamped to max_read_count, not sent as a huge COUNT
  CHECK(p.next.empty());
  CHECK_THROWS_AS(s.read_range("not-an-id", "+"), redis::server_error);
  CHECK(s.read_range().items.size() == 3);  // the connection is still in step
}

TEST_CASE("read_range reports entries that do not decode instead of dropping them") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  redis::stream<int> s("rfor", o, {.poll_interval = 20ms});
  const std::string cli =
      (std::filesystem::path(redis_server::binary()).parent_path() / "redis-cli").string();
  const std::string port = std::to_string(srv.port());
  for (auto fields : {std::vector<std::string>{"v", "oops"}, {"data", "1", "who", "cli"},
                      {"who", "cli", "v", "5", "extra", "x"}}) {
    std::vector<std::string> argv{cli, "-p", port, "XADD", "{rfor}:stream", "*"};
    argv.insert(argv.end(), fields.begin(), fields.end());
    REQUIRE(test_support::run(argv, 10s).exited(0));
  }
  auto p = s.read_range();
  REQUIRE(p.items.size() == 3);
  CHECK_FALSE(p.items[0].value.has_value());
  CHECK(p.items[0].error == "undecodable payload");
  CHECK_FALSE(p.items[1].value.has_value());
  CHECK(p.items[1].error == "entry without a v field");
  REQUIRE(p.items[2].value.has_value());  // foreign fields beside v are ignored
  CHECK(*p.items[2].value == 5);
  CHECK(p.items[2].error.empty());
}

TEST_CASE("read_dead_letters returns each letter with its id, group, deliveries and reason") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  redis::stream<int> s("rdl", o, {.group = "g1", .max_deliveries = 2, .poll_interval = 20ms});
  REQUIRE(s.push(41) == status::ok);
  redis::stream<int>::delivery d;
  for (int i = 0; i < 2; ++i) {
    REQUIRE(s.try_pop_delivery(d) == status::ok);
    CHECK(s.nack(d));
  }
  redis::connection(o).command("XADD", "{rdl}:stream", "*", "v", "not a number");
  CHECK(s.try_pop_delivery(d) == status::empty);  // the poison one is dead-lettered at once
  auto p = s.read_dead_letters();
  REQUIRE(p.items.size() == 2);
  const auto& a = p.items[0];
  CHECK(a.original_id == d.id);
  CHECK(a.group == "g1");
  CHECK(a.deliveries == 2);
  CHECK(a.reason == "max_deliveries");
  CHECK(a.payload == "41");
  REQUIRE(a.value.has_value());
  CHECK(*a.value == 41);
  const auto& b = p.items[1];
  CHECK(b.reason == "undecodable payload");
  CHECK(b.payload == "not a number");
  CHECK_FALSE(b.value.has_value());
  CHECK(b.deliveries == 1);
  auto one = s.read_dead_letters("-", "+", 1);  // pages like read_range
  REQUIRE(one.items.size() == 1);
  CHECK(s.read_dead_letters(one.next).items.size() == 1);
}

TEST_CASE("stream health reports lag, pending, the oldest pending entry and each consumer") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  redis::stream_options so{.group = "g1", .max_deliveries = 1, .poll_interval = 20ms};
  redis::stream<int> a("hl", o, so);
  redis::stream<int> b("hl", o, so);
  redis::stream_options so2 = so;
  so2.group = "g2";
  redis::stream<int> other("hl", o, so2);
  auto empty = a.health();
  CHECK(empty.length == 0);
  CHECK(empty.groups.empty());  // no group yet: health creates nothing
  CHECK(redis::connection(o).command("EXISTS", "{hl}:stream").integer() == 0);
  for (int i = 0; i < 5; ++i) REQUIRE(a.push(i) == status::ok);
  redis::stream<int>::delivery d1, d2, d3, d4;
  REQUIRE(a.try_pop_delivery(d1) == status::ok);
  REQUIRE(a.try_pop_delivery(d2) == status::ok);
  REQUIRE(b.try_pop_delivery(d3) == status::ok);
  CHECK(b.ack(d3));
  REQUIRE(b.try_pop_delivery(d4) == status::ok);
  CHECK(b.nack(d4));  // max_deliveries 1: dead-lettered
  CHECK(other.try_pop_delivery(d3) == status::ok);
  auto h = a.health();
  CHECK(h.length == 5);
  CHECK(h.dead_letters == 1);
  CHECK_FALSE(h.closed);
  REQUIRE(h.groups.size() == 2);
  const auto& g1 = h.groups[0].name == "g1" ? h.groups[0] : h.groups[1];
  const auto& g2 = h.groups[0].name == "g1" ? h.groups[1] : h.groups[0];
  CHECK(g1.pending == 2);  // d1, d2 held by a
  CHECK(g1.oldest_pending_id == d1.id);
  CHECK(g1.oldest_pending_deliveries == 1);
  REQUIRE(g1.oldest_pending_idle.has_value());
  REQUIRE(g1.oldest_pending_age.has_value());
  CHECK(*g1.oldest_pending_idle < 60s);
  CHECK(*g1.oldest_pending_age < 60s);
  CHECK(g1.last_delivered_id == d4.id);
  // Redis 7 reports lag; 6.2 does not (then it is unknown, never made up).
  const std::string info = redis::connection(o).command("INFO", "server").str();
  const bool has_lag = info.find("redis_version:6.") == std::string::npos;
  CHECK(g1.lag.has_value() == has_lag);
  CHECK(g1.lag.value_or(1) == 1);
  std::map<std::string, std::uint64_t> held;
  for (const auto& c : g1.consumers) held[c.name] = c.pending;
  CHECK(held[a.consumer_id()] == 2);
  CHECK(held[b.consumer_id()] == 0);
  CHECK(g2.pending == 1);
  CHECK(g2.lag.has_value() == has_lag);
  CHECK(g2.lag.value_or(4) == 4);
  REQUIRE(g2.consumers.size() == 1);
  CHECK(g2.consumers[0].name == other.consumer_id());
  CHECK(a.ack(d1));
  CHECK(a.ack(d2));
  auto after = a.health();
  for (const auto& g : after.groups)
    if (g.name == "g1") {
      CHECK(g.pending == 0);
      CHECK(g.oldest_pending_id.empty());
      CHECK_FALSE(g.oldest_pending_idle.has_value());
    }
  a.close();
  CHECK(a.health().closed);
}

TEST_CASE("stream health of a group deleted under it, and of a key of another type") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::options o = local_options(srv.port());
  redis::stream<int> s("hg", o, {.group = "g", .poll_interval = 20ms});
  REQUIRE(s.push(1) == status::ok);
  redis::stream<int>::delivery d;
  REQUIRE(s.try_pop_delivery(d) == status::ok);
  redis::connection c(o);
  c.command("XGROUP", "DESTROY", "{hg}:stream", "g");
  auto h = s.health();
  CHECK(h.length == 1);
  CHECK(h.groups.empty());
  c.command("DEL", "{hg}:stream");
  c.command("SET", "{hg}:stream", "not a stream");
  CHECK_THROWS_AS(s.health(), redis::server_error);  // WRONGTYPE, not a made-up report
  CHECK_THROWS_AS(s.read_range(), redis::server_error);
  c.command("DEL", "{hg}:stream");
}

#ifdef SPINDLE_REDIS_WORKER
TEST_CASE("stream: two consumer processes, one killed holding entries: nothing lost") {
  if (!redis_server::available()) return;
  redis_server srv;
  const std::string port = std::to_string(srv.port());
  constexpr int n = 200;
  redis::connection c(local_options(srv.port()));
  auto spawn = [&](std::vector<std::string> args) {
    args.insert(args.begin(), SPINDLE_REDIS_WORKER);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = -1;
    REQUIRE(::posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ) == 0);
    return pid;
  };
  auto reap = [&](pid_t pid, int& st) {
    return eventually([&] { return ::waitpid(pid, &st, WNOHANG) == pid; }, 30s);
  };
  pid_t victim = spawn({port, "s:xs", "consume", "victim", "hold"});
  pid_t producer = spawn({port, "s:xs", "produce", std::to_string(n)});
  REQUIRE(eventually([&] { return c.command("LLEN", "xs:log:victim").integer() >= 5; }));
  ::kill(victim, SIGKILL);
  int st = 0;
  REQUIRE(reap(victim, st));
  pid_t survivor = spawn({port, "s:xs", "consume", "survivor", "ack"});
  REQUIRE(reap(producer, st));
  CHECK((WIFEXITED(st) && WEXITSTATUS(st) == 0));
  REQUIRE(eventually([&] { return c.command("SCARD", "xs:done").integer() == n; }, 30s));
  c.command("SET", "{xs}:stream:closed", "1");  // what close() sets
  REQUIRE(reap(survivor, st));
  CHECK((WIFEXITED(st) && WEXITSTATUS(st) == 0));
  std::map<std::string, int> count;
  auto list1 = c.command("LRANGE", "xs:log:survivor", 0, -1);
  for (const auto& r : list1.elements()) ++count[r.str()];
  CHECK(count.size() == std::size_t{n});
  for (const auto& [item, k] : count) CHECK(k == 1);
  auto list2 = c.command("LRANGE", "xs:log:victim", 0, -1);
  for (const auto& r : list2.elements()) CHECK(count.count(r.str()) == 1);
}
#endif
