// Tests for spindle/worker_pool.hpp, over bounded_queue (and any channel).
#include <doctest/doctest.h>

#include <spindle/bounded_queue.hpp>
#include <spindle/spsc_queue.hpp>
#include <spindle/worker_pool.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/threads.hpp"

using namespace std::chrono_literals;
using spindle::bounded_queue;
using spindle::status;
using spindle::worker_pool;

static_assert(spindle::channel<bounded_queue<int>>);

TEST_CASE("a worker_pool handles every item exactly once, then join returns after close") {
  bounded_queue<int> q(64);
  std::atomic<long> sum{0};
  std::atomic<long> count{0};
  worker_pool pool(q, 3, [&](int x) {
    sum.fetch_add(x, std::memory_order_relaxed);
    count.fetch_add(1, std::memory_order_relaxed);
  });
  CHECK(pool.size() == 3);
  for (int i = 1; i <= 10000; ++i) REQUIRE(q.push(i) == status::ok);
  q.close();
  test_support::thread_group g;
  g.spawn([&] { pool.join(); });
  REQUIRE(g.join_within(60s));
  CHECK(count.load() == 10000);
  CHECK(sum.load() == 10000L * 10001 / 2);
  auto s = pool.stats();
  CHECK(s.processed == 10000);
  CHECK(s.failed == 0);
  CHECK(pool.last_error() == nullptr);
  pool.join();  // idempotent
}

TEST_CASE("a handler exception is counted, reported to on_error, and the worker goes on") {
  bounded_queue<int> q(16);
  std::mutex mu;
  std::vector<std::exception_ptr> errors;
  std::atomic<int> ok{0};
  worker_pool pool(
      q, 2,
      [&](int x) {
        if (x % 10 == 0) throw std::runtime_error("bad item");
        ok.fetch_add(1, std::memory_order_relaxed);
      },
      {.on_error = [&](std::exception_ptr e) {
        std::lock_guard lock(mu);
        errors.push_back(e);
      }});
  for (int i = 1; i <= 100; ++i) REQUIRE(q.push(i) == status::ok);
  q.close();
  pool.join();
  auto s = pool.stats();
  CHECK(s.processed == 90);
  CHECK(s.failed == 10);
  CHECK(ok.load() == 90);
  std::lock_guard lock(mu);
  CHECK(errors.size() == 10);
  CHECK_THROWS_WITH_AS(std::rethrow_exception(pool.last_error()), "bad item", std::runtime_error);
}

TEST_CASE("without on_error, a failure is still counted and kept as last_error") {
  bounded_queue<int> q(4);
  worker_pool pool(q, 1, [](int) { throw std::logic_error("nobody listens"); });
  REQUIRE(q.push(1) == status::ok);
  q.close();
  pool.join();
  CHECK(pool.stats().failed == 1);
  CHECK(pool.stats().processed == 0);
  CHECK(pool.last_error() != nullptr);
}

TEST_CASE("stop ends the workers early and leaves the remaining items in the source") {
  bounded_queue<int> q(128);
  test_support::start_gate gate;
  std::atomic<int> handled{0};
  worker_pool pool(q, 1, [&](int) {
    gate.wait();
    handled.fetch_add(1, std::memory_order_relaxed);
  });
  for (int i = 0; i < 100; ++i) REQUIRE(q.push(i) == status::ok);
  pool.stop();
  gate.open();
  test_support::thread_group g;
  g.spawn([&] { pool.join(); });
  REQUIRE(g.join_within(60s));
  CHECK(handled.load() <= 1);  // at most the item in hand
  CHECK(q.size() >= 99);
  CHECK_FALSE(q.closed());  // stop() does not close the source
}

TEST_CASE("stop wakes workers blocked on an empty, open source") {
  bounded_queue<int> q(4);
  worker_pool pool(q, 2, [](int) {});
  pool.stop();
  test_support::thread_group g;
  g.spawn([&] { pool.join(); });
  REQUIRE(g.join_within(60s));
  CHECK(pool.stats().processed == 0);
}

TEST_CASE("the destructor stops and joins a pool on an open source") {
  bounded_queue<int> q(4);
  test_support::thread_group g;
  g.spawn([&] { worker_pool pool(q, 2, [](int) {}); });
  REQUIRE(g.join_within(60s));
}

TEST_CASE("a worker_pool of zero workers is refused with std::invalid_argument") {
  bounded_queue<int> q(4);
  CHECK_THROWS_WITH_AS(worker_pool(q, 0, [](int) {}), doctest::Contains("workers must be >= 1"),
                       std::invalid_argument);
}

TEST_CASE("move-only items are moved to the handler") {
  bounded_queue<std::unique_ptr<int>> q(8);
  std::atomic<int> sum{0};
  worker_pool pool(q, 2, [&](std::unique_ptr<int> p) { sum.fetch_add(*p); });
  for (int i = 1; i <= 10; ++i) REQUIRE(q.push(std::make_unique<int>(i)) == status::ok);
  q.close();
  pool.join();
  CHECK(sum.load() == 55);
  CHECK(pool.stats().processed == 10);
}

namespace {
// A minimal mutex-based channel: worker_pool takes any type that models spindle::channel.
template <class T>
class locked_channel {
 public:
  using value_type = T;
  status push(T&& v) { return try_push(std::move(v)); }
  status push(const T& v) { return try_push(T(v)); }
  status try_push(const T& v) { return try_push(T(v)); }
  status try_push(T&& v) {
    {
      std::lock_guard lock(mu_);
      if (closed_) return status::closed;
      items_.push_back(std::move(v));
    }
    cv_.notify_one();
    return status::ok;
  }
  template <class D>
  status push_for(T&& v, D) { return try_push(std::move(v)); }
  status pop(T& out) { return pop(out, std::stop_token{}); }
  status pop(T& out, std::stop_token st) {
    std::unique_lock lock(mu_);
    std::condition_variable_any& cv = cv_;
    if (!cv.wait(lock, st, [&] { return !items_.empty() || closed_; })) return status::cancelled;
    if (items_.empty()) return status::closed;
    out = std::move(items_.front());
    items_.erase(items_.begin());
    return status::ok;
  }
  status try_pop(T& out) {
    std::lock_guard lock(mu_);
    if (items_.empty()) return closed_ ? status::closed : status::empty;
    out = std::move(items_.front());
    items_.erase(items_.begin());
    return status::ok;
  }
  template <class D>
  status pop_for(T& out, D) { return try_pop(out); }
  std::optional<T> pop() {
    T v;
    if (pop(v) == status::ok) return v;
    return std::nullopt;
  }
  void close() {
    {
      std::lock_guard lock(mu_);
      closed_ = true;
    }
    cv_.notify_all();
  }
  bool closed() const {
    std::lock_guard lock(mu_);
    return closed_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable_any cv_;
  std::vector<T> items_;
  bool closed_ = false;
};
static_assert(spindle::channel<locked_channel<int>>);
}  // namespace

TEST_CASE("a worker_pool consumes any channel, not only bounded_queue") {
  locked_channel<int> ch;
  std::atomic<long> sum{0};
  worker_pool pool(ch, 2, [&](int x) { sum.fetch_add(x, std::memory_order_relaxed); });
  for (int i = 1; i <= 1000; ++i) REQUIRE(ch.push(i) == status::ok);
  ch.close();
  pool.join();
  CHECK(sum.load() == 500500);
  CHECK(pool.stats().processed == 1000);
}

namespace {
// An acknowledging channel that also offers the fused ack_and_pop_delivery (as redis::queue
// does); it records which path acknowledged each delivery.
class fused_channel : public locked_channel<int> {
 public:
  struct delivery {
    int value = 0;
    int id = 0;
  };
  std::mutex mu;
  std::vector<int> fused, separate, nacked;  // guarded by mu: ids per path

  status pop_delivery(delivery& d, std::stop_token st) {
    status s = pop(d.value, st);
    d.id = d.value;
    return s;
  }
  status ack_and_pop_delivery(delivery& d, std::stop_token st) {
    {
      std::lock_guard lock(mu);
      fused.push_back(d.id);
    }
    return pop_delivery(d, st);
  }
  bool ack(const delivery& d) {
    std::lock_guard lock(mu);
    separate.push_back(d.id);
    return true;
  }
  bool nack(const delivery& d) {
    std::lock_guard lock(mu);
    nacked.push_back(d.id);
    return true;
  }
};
static_assert(spindle::channel<fused_channel>);
static_assert(spindle::detail::fused_ack_channel<fused_channel>);
}  // namespace

TEST_CASE("over a fused-ack channel, acks ride on the next pop and a throwing handler nacks") {
  fused_channel ch;
  worker_pool pool(ch, 2, [&](int x) {
    if (x == 7) throw std::runtime_error("poison");
  });
  for (int i = 1; i <= 100; ++i) REQUIRE(ch.push(i) == status::ok);
  ch.close();
  pool.join();
  std::lock_guard lock(ch.mu);
  CHECK(ch.separate.empty());  // every ack went with a pop (the last ones with the closed pop)
  CHECK(ch.fused.size() == 99);
  CHECK(ch.nacked == std::vector<int>{7});
  std::vector<int> acked = ch.fused;
  std::sort(acked.begin(), acked.end());
  CHECK(std::adjacent_find(acked.begin(), acked.end()) == acked.end());  // each once
  CHECK(std::find(acked.begin(), acked.end(), 7) == acked.end());
}

TEST_CASE("over a fused-ack channel, a worker that stops acks its last delivery at once") {
  fused_channel ch;
  std::atomic<worker_pool<fused_channel>*> self{nullptr};
  worker_pool pool(ch, 1, [&](int) {
    self.load(std::memory_order_acquire)->stop();  // pairs with the release store below
  });
  self.store(&pool, std::memory_order_release);
  REQUIRE(ch.push(1) == status::ok);
  REQUIRE(ch.push(2) == status::ok);
  pool.join();
  std::lock_guard lock(ch.mu);
  CHECK(ch.separate == std::vector<int>{1});
  CHECK(ch.fused.empty());
  CHECK(pool.stats().processed == 1);
}

TEST_CASE("a worker_pool of several workers refuses a single-consumer channel, naming the count") {
  // The old pool accepted worker_pool(spsc, 4, h): four threads popped one spsc_queue and
  // corrupted the heap ("double free or corruption").
  spindle::spsc_queue<int> q(8);
  bool threw = false;
  try {
    spindle::worker_pool pool(q, 4, [](int) {});
  } catch (const std::invalid_argument& e) {
    threw = true;
    CHECK(std::string(e.what()).find("spindle::worker_pool: 4 workers") != std::string::npos);
  }
  CHECK(threw);
  spindle::any_channel<int> erased(q);  // the same through type erasure, known at run time
  CHECK_THROWS_AS(spindle::worker_pool(erased, 2, [](int) {}), std::invalid_argument);
  // One worker is fine.
  std::atomic<int> sum{0};
  spindle::worker_pool one(q, 1, [&](int x) { sum.fetch_add(x); });
  for (int i = 1; i <= 10; ++i) REQUIRE(q.push(i) == spindle::status::ok);
  q.close();
  one.join();
  CHECK(sum.load() == 55);
}

// ---- hostile tests (red team) ----

TEST_CASE("join from inside a handler throws std::logic_error instead of hanging") {
  // Attacks "join() rethrows nothing / blocks until every worker has exited": from a handler it
  // would wait for its own worker (and for the others, blocked on an open source). It hung;
  // with the source closed it threw std::system_error from joining itself.
  bounded_queue<int> q(8);
  std::mutex mu;
  std::condition_variable cv;
  std::string what;  // guarded by mu: the exception join() threw, by type
  bool returned = false;
  worker_pool<bounded_queue<int>>* self = nullptr;
  worker_pool pool(q, 2, [&](int) {
    std::string got = "nothing";
    try {
      self->join();
    } catch (const std::logic_error&) {
      got = "logic_error";
    } catch (const std::exception& e) {
      got = std::string("other: ") + e.what();
    }
    std::lock_guard lock(mu);
    what = got;
    returned = true;
    cv.notify_all();
  });
  self = &pool;
  REQUIRE(q.push(1) == status::ok);
  {
    std::unique_lock lock(mu);
    if (!cv.wait_for(lock, 10s, [&] { return returned; })) {
      lock.unlock();
      q.close();  // unblocks the other worker, so the hung join() ends and the test can report
      lock.lock();
      cv.wait(lock, [&] { return returned; });
      FAIL("join() from a handler hung (released by closing the source): " << what);
    }
  }
  CHECK(what == "logic_error");
  q.close();
  pool.join();
  CHECK(pool.stats().processed == 1);
}
