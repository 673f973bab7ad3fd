// Tests of spindle/redis/lock.hpp against a real redis-server: mutual exclusion between threads
// and between processes, fences that only grow, a stale holder (paused past its lease) whose
// release fails and whose fence a checking resource refuses, lease renewal and its failure
// callback, stop tokens and saturating timeouts.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <spindle/redis/lock.hpp>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "support/process.hpp"
#include "support/redis_server.hpp"
#include "support/threads.hpp"

#ifndef SPINDLE_PATTERN_WORKER
#error "SPINDLE_PATTERN_WORKER (the path of tests/redis/pattern_worker) must be defined"
#endif

namespace redis = spindle::redis;
using namespace std::chrono_literals;
using test_support::redis_server;

namespace {

using test_support::local_options;

// A resource that checks fences (Kleppmann): it remembers the highest fence it accepted and
// refuses writes carrying a lower or equal one.
class fenced_store {
 public:
  bool write(std::uint64_t fence, int value) {
    std::lock_guard lock(mu_);
    if (fence <= max_fence_) return false;
    max_fence_ = fence;
    value_ = value;
    return true;
  }
  int value() {
    std::lock_guard lock(mu_);
    return value_;
  }

 private:
  std::mutex mu_;
  std::uint64_t max_fence_ = 0;  // guarded by mu_
  int value_ = 0;                // guarded by mu_
};

}  // namespace

TEST_CASE("distributed_lock refuses bad options with std::invalid_argument") {
  CHECK_THROWS_AS(redis::distributed_lock("", {}), std::invalid_argument);
  CHECK_THROWS_AS(redis::distributed_lock("m", {}, {.lease = 5ms}), std::invalid_argument);
  CHECK_THROWS_AS(redis::distributed_lock("m", {}, {.lease = 100ms, .renew_every = 100ms}),
                  std::invalid_argument);
  CHECK_THROWS_AS(redis::distributed_lock("m", {}, {.max_retry_delay = 0ms}),
                  std::invalid_argument);
  redis::distributed_lock ok("m", {}, {.lease = 10ms});  // connects lazily
}

TEST_CASE("try_lock takes a free lock once, and each acquisition draws a greater fence") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::distributed_lock m("t", local_options(srv.port()), {.renew = false});
  CHECK(m.last_fence() == 0);
  auto a = m.try_lock();
  REQUIRE(a);
  CHECK(a->fence() == 1);
  CHECK(a->token().size() == 32);
  CHECK_FALSE(m.try_lock());
  CHECK(a->release());
  CHECK_FALSE(a->release());  // idempotent: the second says it no longer held it
  CHECK(a->lost());
  auto b = m.try_lock();
  REQUIRE(b);
  CHECK(b->fence() == 2);
  CHECK(b->token() != a->token());
  CHECK(m.last_fence() == 2);
}

TEST_CASE("a held_lock releases its lock when destroyed, and a moved guard releases once") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::distributed_lock m("d", local_options(srv.port()), {.renew = false});
  {
    auto a = m.try_lock();
    REQUIRE(a);
    redis::held_lock moved = std::move(*a);
    CHECK_FALSE(m.try_lock());
  }
  CHECK(m.try_lock());
}

TEST_CASE("threads racing for one lock never overlap, and fences grow in critical-section order") {
  if (!redis_server::available()) return;
  redis_server srv;
  constexpr int threads = 8, rounds = 25;
  redis::distributed_lock m("race", local_options(srv.port()),
                            {.lease = 10s, .renew = false, .max_retry_delay = 2ms},
                            {.max_connections = threads});
  std::atomic<int> inside{0}, overlaps{0};
  std::vector<std::uint64_t> fences;  // written only inside the lock
  test_support::start_gate gate;
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&] {
      gate.wait();
      for (int i = 0; i < rounds; ++i) {
        auto h = m.lock_for(60s);
        if (!h) {
          overlaps.fetch_add(1000);
          return;
        }
        if (inside.fetch_add(1) != 0) overlaps.fetch_add(1);
        fences.push_back(h->fence());
        inside.fetch_sub(1);
        if (!h->release()) overlaps.fetch_add(1);
      }
    });
  gate.open();
  for (auto& t : ts) t.join();
  CHECK(overlaps.load() == 0);
  REQUIRE(fences.size() == threads * rounds);
  for (std::size_t i = 1; i < fences.size(); ++i) CHECK(fences[i] == fences[i - 1] + 1);
}

TEST_CASE("four processes racing for one lock lose no update and never see a fence go back") {
  if (!redis_server::available()) return;
  redis_server srv;
  constexpr int procs = 4, rounds = 30;
  std::vector<std::unique_ptr<test_support::child>> cs;
  for (int p = 0; p < procs; ++p)
    cs.push_back(std::make_unique<test_support::child>(std::vector<std::string>{
        SPINDLE_PATTERN_WORKER, std::to_string(srv.port()), "lock", "xp", std::to_string(rounds)}));
  for (auto& c : cs) {
    auto r = c->finish(120s);
    INFO("worker stderr: " << r.err);
    CHECK(r.exited(0));
  }
  redis::connection c(local_options(srv.port()));
  CHECK(c.command("GET", "{xp}:counter").integer() == procs * rounds);
  CHECK(c.command("GET", "{xp}:lock:fence").integer() == procs * rounds);
}

TEST_CASE("a holder stalled past its lease cannot release its successor's lock, and a resource "
          "checking fences refuses its write") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::distributed_lock m("stale", local_options(srv.port()), {.lease = 50ms, .renew = false});
  fenced_store store;
  auto stale = m.try_lock();
  REQUIRE(stale);
  // The stale holder "pauses": it does nothing while its lease runs out and B takes the lock
  // (with a lease that outlasts the test, however slow the machine).
  redis::distributed_lock m_b("stale", local_options(srv.port()), {.lease = 60s, .renew = false});
  auto b = m_b.lock_for(10s);
  REQUIRE(b);
  CHECK(b->fence() > stale->fence());
  CHECK(b->extend(60s));
  CHECK(store.write(b->fence(), 2));
  // The stale holder wakes up and acts on its old belief.
  CHECK_FALSE(store.write(stale->fence(), 1));
  CHECK(store.value() == 2);
  CHECK_FALSE(stale->extend(10s));
  CHECK(stale->lost());
  CHECK_FALSE(stale->release());
  CHECK_FALSE(m.try_lock());  // B's lock survived the stale release
  CHECK(b->release());
}

TEST_CASE("renewal keeps a lock past its lease while the holder lives") {
  if (!redis_server::available()) return;
  redis_server srv;
  std::atomic<int> lost{0};
  redis::distributed_lock m("renew", local_options(srv.port()),
                            {.lease = 1s, .on_lost = [&](std::uint64_t) { lost.fetch_add(1); }});
  auto h = m.try_lock();
  REQUIRE(h);
  redis::distributed_lock other("renew", local_options(srv.port()), {.renew = false});
  // Two and a half leases, tried every few ms. (The lease leaves 2/3 of a second of slack for
  // a late renewal: a 100 ms lease was lost under ASan on a busy 2-core machine.)
  CHECK_FALSE(other.lock_for(2500ms));
  CHECK_FALSE(h->lost());
  CHECK(h->release());
  CHECK(lost.load() == 0);  // a release is not a loss
}

TEST_CASE("renewal that finds the lock taken calls on_lost once and marks the guard lost") {
  if (!redis_server::available()) return;
  redis_server srv;
  std::promise<std::uint64_t> fired;
  std::atomic<int> calls{0};
  redis::distributed_lock m("steal", local_options(srv.port()),
                            {.lease = 100ms, .on_lost = [&](std::uint64_t f) {
                               if (calls.fetch_add(1) == 0) fired.set_value(f);
                             }});
  auto h = m.try_lock();
  REQUIRE(h);
  redis::connection c(local_options(srv.port()));
  c.command("SET", "{steal}:lock", "someone-else", "PX", 10000);  // as if it expired and was taken
  auto f = fired.get_future();
  REQUIRE(f.wait_for(10s) == std::future_status::ready);
  CHECK(f.get() == h->fence());
  CHECK(h->lost());
  CHECK_FALSE(h->release());
  CHECK(c.command("GET", "{steal}:lock").str() == "someone-else");
  CHECK(calls.load() == 1);
}

TEST_CASE("renewal that cannot reach the server within the lease calls on_lost") {
  if (!redis_server::available()) return;
  redis_server srv;
  std::promise<void> fired;
  redis::distributed_lock m("gone", {.port = srv.port(), .connect_timeout = 200ms,
                                     .io_timeout = 200ms},
                            {.lease = 200ms, .on_lost = [&](std::uint64_t) { fired.set_value(); }});
  auto h = m.try_lock();
  REQUIRE(h);
  srv.kill();
  auto f = fired.get_future();
  REQUIRE(f.wait_for(20s) == std::future_status::ready);
  CHECK(h->lost());
  CHECK_THROWS_AS(h->release(), redis::error);  // the server is gone; the lease ends on its own
}

TEST_CASE("a waiting lock() returns nullopt promptly on a stop request, also with hours::max()") {
  if (!redis_server::available()) return;
  redis_server srv;
  redis::distributed_lock m("stop", local_options(srv.port()),
                            {.lease = 10s, .renew = false, .max_retry_delay = 1000ms});
  auto h = m.try_lock();
  REQUIRE(h);
  std::stop_source src1, src2;
  auto a = std::async(std::launch::async, [&] { return m.lock(src1.get_token()).has_value(); });
  auto b = std::async(std::launch::async, [&] {
    return m.lock_for(std::chrono::hours::max(), src2.get_token()).has_value();
  });
  src1.request_stop();
  src2.request_stop();
  REQUIRE(a.wait_for(10s) == std::future_status::ready);
  REQUIRE(b.wait_for(10s) == std::future_status::ready);
  CHECK_FALSE(a.get());
  CHECK_FALSE(b.get());
  CHECK_FALSE(m.lock_for(20ms));  // times out
  CHECK(h->release());
  CHECK(m.lock_for(std::chrono::nanoseconds::max()));  // saturates; free: at once
}
