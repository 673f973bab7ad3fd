// Tests for <spindle/fan.hpp> (fan_out, broadcast, fan_in) and any_channel (<spindle/channel.hpp>).
#include <spindle/fan.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <stop_token>
#include <thread>
#include <vector>

#include <spindle/bounded_queue.hpp>
#include <spindle/spsc_queue.hpp>

#include "support/lifetime.hpp"
#include "support/threads.hpp"

using namespace std::chrono_literals;
using spindle::status;

namespace {

// A small mutex-based channel: the test's own channel type, so fan.hpp is tested against "any
// channel", not one queue.
template <class T>
class test_channel {
 public:
  using value_type = T;
  explicit test_channel(std::size_t cap = 1024) : cap_(cap) {}

  status push(const T& v) { T c = v; return push(std::move(c)); }
  status push(T&& v) { return push_impl(v, nullptr, {}); }
  status try_push(const T& v) { T c = v; return try_push(std::move(c)); }
  status try_push(T&& v) {
    std::lock_guard lock(mu_);
    if (closed_) return status::closed;
    if (q_.size() >= cap_) return status::full;
    q_.push_back(std::move(v));
    not_empty_.notify_one();
    return status::ok;
  }
  template <class Rep, class Per>
  status push_for(T&& v, std::chrono::duration<Rep, Per> d) {
    auto deadline = std::chrono::steady_clock::now() + d;
    return push_impl(v, &deadline, {});
  }
  status pop(T& out) { return pop_impl(out, nullptr, {}); }
  status pop(T& out, std::stop_token st) { return pop_impl(out, nullptr, st); }
  status try_pop(T& out) {
    std::lock_guard lock(mu_);
    if (q_.empty()) return closed_ ? status::closed : status::empty;
    take(out);
    return status::ok;
  }
  template <class Rep, class Per>
  status pop_for(T& out, std::chrono::duration<Rep, Per> d) {
    auto deadline = std::chrono::steady_clock::now() + d;
    return pop_impl(out, &deadline, {});
  }
  std::optional<T> pop() {
    T v{};
    if (pop(v) == status::ok) return v;
    return std::nullopt;
  }
  void close() {
    std::lock_guard lock(mu_);
    closed_ = true;
    not_empty_.notify_all();
    not_full_.notify_all();
  }
  bool closed() const {
    std::lock_guard lock(mu_);
    return closed_;
  }
  std::size_t size() const {
    std::lock_guard lock(mu_);
    return q_.size();
  }
  std::vector<T> drain() {
    std::vector<T> out;
    T v{};
    while (try_pop(v) == status::ok) out.push_back(std::move(v));
    return out;
  }

 private:
  void take(T& out) {
    out = std::move(q_.front());
    q_.pop_front();
    not_full_.notify_one();
  }
  status push_impl(T& v, const std::chrono::steady_clock::time_point* deadline,
                   std::stop_token st) {
    std::unique_lock lock(mu_);
    auto ready = [&] { return closed_ || q_.size() < cap_; };
    if (deadline) {
      if (!not_full_.wait_until(lock, st, *deadline, ready)) return status::timeout;
    } else {
      not_full_.wait(lock, st, ready);
    }
    if (closed_) return status::closed;
    q_.push_back(std::move(v));
    not_empty_.notify_one();
    return status::ok;
  }
  status pop_impl(T& out, const std::chrono::steady_clock::time_point* deadline,
                  std::stop_token st) {
    std::unique_lock lock(mu_);
    auto ready = [&] { return closed_ || !q_.empty(); };
    if (deadline) {
      if (!not_empty_.wait_until(lock, st, *deadline, ready)) return status::timeout;
    } else if (!not_empty_.wait(lock, st, ready)) {
      return status::cancelled;
    }
    if (q_.empty()) return status::closed;
    take(out);
    return status::ok;
  }

  mutable std::mutex mu_;
  std::condition_variable_any not_empty_, not_full_;
  std::deque<T> q_;  // guarded by mu_
  std::size_t cap_;
  bool closed_ = false;  // guarded by mu_
};

// A second channel type (wraps test_channel) so that vectors of any_channel mix two types.
template <class T>
struct other_channel : test_channel<T> {
  using test_channel<T>::test_channel;
};

// A channel whose push throws: exceptions from channels reach the caller.
struct throwing_channel : test_channel<int> {
  status push(int&&) { throw std::runtime_error("push failed"); }
  status push(const int&) { throw std::runtime_error("push failed"); }
  template <class Rep, class Per>
  status push_for(int&&, std::chrono::duration<Rep, Per>) { throw std::runtime_error("push failed"); }
};

static_assert(spindle::channel<test_channel<int>>);
static_assert(spindle::channel<spindle::any_channel<int>>);
static_assert(spindle::channel<spindle::any_channel<test_support::tracked>>);

template <class T>
void fill(test_channel<T>& c, std::uint64_t n) {
  for (std::uint64_t i = 0; i < n; ++i) REQUIRE(c.push(T(i)) == status::ok);
}

}  // namespace

TEST_CASE("any_channel forwards every operation to its target") {
  test_channel<int> q(2);
  spindle::any_channel<int> a(q);
  CHECK(a.push(1) == status::ok);
  const int two = 2;
  CHECK(a.try_push(two) == status::ok);
  CHECK(a.try_push(3) == status::full);
  CHECK(a.push_for(3, 1ms) == status::timeout);
  int v = 0;
  CHECK(a.pop(v) == status::ok);
  CHECK(v == 1);
  CHECK(a.pop_for(v, 1ms) == status::ok);
  CHECK(v == 2);
  CHECK(a.pop_for(v, 1ms) == status::timeout);
  CHECK(a.try_pop(v) == status::empty);
  std::stop_source ss;
  ss.request_stop();
  CHECK(a.pop(v, ss.get_token()) == status::cancelled);
  CHECK(a.push(7) == status::ok);
  CHECK_FALSE(a.closed());
  a.close();
  CHECK(q.closed());
  CHECK(a.closed());
  CHECK(a.push(8) == status::closed);
  CHECK(a.pop() == std::optional<int>(7));
  CHECK(a.pop() == std::nullopt);
  CHECK(a.try_pop(v) == status::closed);
  spindle::any_channel<int> b = a;
  CHECK(b == a);
}

TEST_CASE("any_channel leaves a value untouched when a push fails") {
  test_support::tracked::registry reg;
  {
    test_channel<test_support::tracked> q(1);
    spindle::any_channel<test_support::tracked> a(&q);
    CHECK(a.push(test_support::tracked(&reg, 1)) == status::ok);
    test_support::tracked t(&reg, 2);
    CHECK(a.try_push(std::move(t)) == status::full);
    CHECK_FALSE(t.moved_from());
    q.close();
    CHECK(a.push(std::move(t)) == status::closed);
    CHECK_FALSE(t.moved_from());
  }
  CHECK(reg.alive.load() == 0);
}

TEST_CASE("fan_out deals items round-robin to its sinks and closes them at end of stream") {
  test_channel<int> src;
  test_channel<int> a, b, c;
  fill(src, 9);
  src.close();
  std::vector<test_channel<int>*> sinks{&a, &b, &c};
  CHECK(spindle::fan_out(src, sinks) == 9);
  CHECK(a.drain() == std::vector<int>{0, 3, 6});
  CHECK(b.drain() == std::vector<int>{1, 4, 7});
  CHECK(c.drain() == std::vector<int>{2, 5, 8});
  CHECK(a.closed());
  CHECK(b.closed());
  CHECK(c.closed());
}

TEST_CASE("fan_out skips a full sink while another has room") {
  test_channel<int> src;
  test_channel<int> full(1), roomy;
  REQUIRE(full.push(-1) == status::ok);
  fill(src, 5);
  src.close();
  std::vector<test_channel<int>*> sinks{&full, &roomy};
  CHECK(spindle::fan_out(src, sinks) == 5);
  CHECK(full.drain() == std::vector<int>{-1});
  CHECK(roomy.drain() == std::vector<int>{0, 1, 2, 3, 4});
}

TEST_CASE("fan_out waits while every sink is full and conserves every item") {
  constexpr int n = 2000;
  test_channel<int> src(16);
  test_channel<int> a(2), b(2);
  std::atomic<long> sum{0};
  std::atomic<int> count{0};
  test_support::thread_group g;
  for (auto* sink : {&a, &b}) {
    g.spawn([sink, &sum, &count] {
      int v;
      while (sink->pop(v) == status::ok) {
        sum += v;
        ++count;
      }
    });
  }
  g.spawn([&] {
    for (int i = 0; i < n; ++i) REQUIRE(src.push(i) == status::ok);
    src.close();
  });
  std::vector<test_channel<int>*> sinks{&a, &b};
  CHECK(spindle::fan_out(src, sinks) == n);
  REQUIRE(g.join_within(10s));
  CHECK(count.load() == n);
  CHECK(sum.load() == long(n) * (n - 1) / 2);
}

TEST_CASE("fan_out drops a closed sink from the rotation") {
  test_channel<int> src;
  test_channel<int> a, b;
  a.close();
  fill(src, 3);
  src.close();
  std::vector<spindle::any_channel<int>> sinks{a, b};
  CHECK(spindle::fan_out(src, sinks) == 3);
  CHECK(b.drain() == std::vector<int>{0, 1, 2});
}

TEST_CASE("fan_out with every sink closed closes the source and returns") {
  test_channel<int> src;
  test_channel<int> a;
  a.close();
  fill(src, 2);
  std::vector<test_channel<int>*> sinks{&a};
  CHECK(spindle::fan_out(src, sinks) == 0);
  CHECK(src.closed());
  CHECK(src.push(5) == status::closed);
}

TEST_CASE("fan_out rejects an empty list of sinks") {
  test_channel<int> src;
  std::vector<test_channel<int>*> none;
  CHECK_THROWS_WITH_AS(spindle::fan_out(src, none), doctest::Contains("fan_out"),
                       std::invalid_argument);
}

TEST_CASE("fan_out returns on a stop request and closes its sinks") {
  test_channel<int> src;  // never closed
  test_channel<int> a;
  fill(src, 2);
  std::stop_source ss;
  std::vector<test_channel<int>*> sinks{&a};
  test_support::thread_group g;
  std::atomic<std::size_t> moved{99};
  g.spawn([&] { moved = spindle::fan_out(src, sinks, {.stop = ss.get_token()}); });
  // Both items arrive before the stop: fan_out is then blocked in pop on the open source.
  int v;
  REQUIRE(a.pop_for(v, 10s) == status::ok);
  REQUIRE(a.pop_for(v, 10s) == status::ok);
  ss.request_stop();
  REQUIRE(g.join_within(10s));
  CHECK(moved.load() == 2);
  CHECK(a.closed());
  CHECK_FALSE(src.closed());
}

TEST_CASE("broadcast copies every item to every sink, in order") {
  test_support::tracked::registry reg;
  {
    test_channel<test_support::tracked> src;
    test_channel<test_support::tracked> a, b, c;
    for (std::uint64_t i = 0; i < 5; ++i)
      REQUIRE(src.push(test_support::tracked(&reg, i)) == status::ok);
    src.close();
    std::vector<spindle::any_channel<test_support::tracked>> sinks{a, b, c};
    CHECK(spindle::broadcast(src, sinks) == 5);
    for (auto* s : {&a, &b, &c}) {
      auto items = s->drain();
      REQUIRE(items.size() == 5);
      for (std::uint64_t i = 0; i < 5; ++i) CHECK(items[i].value() == i);
      CHECK(s->closed());
    }
  }
  CHECK(reg.alive.load() == 0);
  CHECK(reg.errors.load() == 0);
}

TEST_CASE("broadcast drops a closed sink and closes the source when none is left") {
  test_channel<int> src;
  test_channel<int> a, b;
  b.close();
  fill(src, 3);
  src.close();
  std::vector<test_channel<int>*> sinks{&a, &b};
  CHECK(spindle::broadcast(src, sinks) == 3);
  CHECK(a.drain() == std::vector<int>{0, 1, 2});

  test_channel<int> src2;
  test_channel<int> c;
  c.close();
  fill(src2, 1);
  std::vector<test_channel<int>*> sinks2{&c};
  CHECK(spindle::broadcast(src2, sinks2) == 1);
  CHECK(src2.closed());
}

TEST_CASE("broadcast returns on a stop request while a sink is full") {
  test_channel<int> src;
  test_channel<int> a(1);
  fill(src, 3);
  src.close();
  std::stop_source ss;
  std::vector<test_channel<int>*> sinks{&a};
  test_support::thread_group g;
  g.spawn([&] { spindle::broadcast(src, sinks, {.stop = ss.get_token()}); });
  // Nobody pops a: it fills with one item and broadcast blocks on the next until the stop.
  ss.request_stop();
  REQUIRE(g.join_within(10s));
  CHECK(a.closed());
  CHECK(a.drain().size() <= 1);
}

TEST_CASE("fan_in merges every source, keeping each source's order and every item") {
  constexpr int sources = 4, per = 2000;
  std::deque<test_channel<int>> srcs;  // deque: channels do not move
  for (int i = 0; i < sources; ++i) srcs.emplace_back(8);
  other_channel<int> sink(16);
  std::vector<spindle::any_channel<int>> ins(srcs.begin(), srcs.end());
  test_support::start_gate gate;
  test_support::thread_group g;
  for (int s = 0; s < sources; ++s) {
    g.spawn([&, s] {
      gate.wait();
      for (int i = 0; i < per; ++i) REQUIRE(srcs[s].push(s * per + i) == status::ok);
      srcs[s].close();
    });
  }
  std::vector<int> last(sources, -1);
  long sum = 0;
  int count = 0;
  bool ordered = true;
  g.spawn([&] {
    int v;
    while (sink.pop(v) == status::ok) {
      int s = v / per;
      if (v <= last[s]) ordered = false;
      last[s] = v;
      sum += v;
      ++count;
    }
  });
  gate.open();
  CHECK(spindle::fan_in(ins, sink) == std::size_t(sources * per));
  REQUIRE(g.join_within(20s));
  CHECK(ordered);
  CHECK(count == sources * per);
  CHECK(sum == long(sources * per) * (sources * per - 1) / 2);
  CHECK(sink.closed());
}

TEST_CASE("fan_in closes its sources when the sink closes") {
  test_channel<int> a, b;
  test_channel<int> sink;
  sink.close();
  REQUIRE(a.push(1) == status::ok);
  REQUIRE(b.push(2) == status::ok);
  std::vector<test_channel<int>*> srcs{&a, &b};
  CHECK(spindle::fan_in(srcs, sink) == 0);
  CHECK(a.closed());
  CHECK(b.closed());
}

TEST_CASE("fan_in returns on a stop request and closes the sink") {
  test_channel<int> a, b;  // never closed
  test_channel<int> sink;
  std::stop_source ss;
  std::vector<test_channel<int>*> srcs{&a, &b};
  test_support::thread_group g;
  g.spawn([&] { spindle::fan_in(srcs, sink, {.stop = ss.get_token()}); });
  REQUIRE(a.push(1) == status::ok);
  int v;
  REQUIRE(sink.pop_for(v, 10s) == status::ok);
  CHECK(v == 1);
  ss.request_stop();
  REQUIRE(g.join_within(10s));
  CHECK(sink.closed());
  CHECK_FALSE(a.closed());
}

TEST_CASE("fan_in rethrows an exception from the sink after stopping every thread") {
  test_channel<int> a, b;
  throwing_channel sink;
  REQUIRE(a.push(1) == status::ok);
  REQUIRE(b.push(2) == status::ok);
  a.close();
  b.close();
  std::vector<test_channel<int>*> srcs{&a, &b};
  CHECK_THROWS_WITH_AS(spindle::fan_in(srcs, sink), "push failed", std::runtime_error);
}

TEST_CASE("fan_in with no sources closes the sink at once") {
  std::vector<test_channel<int>*> none;
  test_channel<int> sink;
  CHECK(spindle::fan_in(none, sink) == 0);
  CHECK(sink.closed());
}

TEST_CASE("fan_out and fan_in mix different channel types through any_channel") {
  spindle::bounded_queue<int> source(8), q(4);
  test_channel<int> t(4);
  other_channel<int> merged(64);
  std::vector<spindle::any_channel<int>> mid{q, t};
  test_support::thread_group g;
  g.spawn([&] { spindle::fan_out(source, mid); });
  g.spawn([&] {
    for (int i = 1; i <= 40; ++i) REQUIRE(source.push(i) == spindle::status::ok);
    source.close();
  });
  long sum = 0;
  int count = 0;
  g.spawn([&] {
    int v;
    while (merged.pop(v) == status::ok) {
      sum += v;
      ++count;
    }
  });
  CHECK(spindle::fan_in(mid, merged) == 40);
  REQUIRE(g.join_within(10s));
  CHECK(count == 40);
  CHECK(sum == 820);
}

TEST_CASE("fan_in refuses a single-producer sink for several sources, and a doubled spsc source") {
  // The old fan_in pushed into an spsc_queue sink from one thread per source (heap corruption).
  spindle::bounded_queue<int> a(4), b(4);
  spindle::spsc_queue<int> sink(8);
  std::vector<spindle::bounded_queue<int>*> two{&a, &b};
  bool threw = false;
  try {
    spindle::fan_in(two, sink);
  } catch (const std::invalid_argument& e) {
    threw = true;
    CHECK(std::string(e.what()).find("spindle::fan_in: 2 sources") != std::string::npos);
  }
  CHECK(threw);
  spindle::any_channel<int> erased(sink);
  CHECK_THROWS_AS(spindle::fan_in(two, erased), std::invalid_argument);
  spindle::spsc_queue<int> s(4);
  std::vector<spindle::spsc_queue<int>*> doubled{&s, &s};
  spindle::bounded_queue<int> out(8);
  CHECK_THROWS_AS(spindle::fan_in(doubled, out), std::invalid_argument);
  // One source into an spsc sink is fine.
  std::vector<spindle::bounded_queue<int>*> one{&a};
  REQUIRE(a.push(5) == spindle::status::ok);
  a.close();
  CHECK(spindle::fan_in(one, sink) == 1);
  int v = 0;
  CHECK(sink.pop(v) == spindle::status::ok);
  CHECK(v == 5);
}

namespace {
// A bounded_queue that counts the push calls it gets: a polling caller shows up as many calls.
struct counting_sink {
  using value_type = int;
  explicit counting_sink(std::size_t cap) : q(cap) {}
  spindle::bounded_queue<int> q;
  std::atomic<int> calls{0};
  status push(const int& v) { return calls++, q.push(v); }
  status push(int&& v) { return calls++, q.push(std::move(v)); }
  status push(int&& v, std::stop_token st) { return calls++, q.push(std::move(v), std::move(st)); }
  status try_push(const int& v) { return calls++, q.try_push(v); }
  status try_push(int&& v) { return calls++, q.try_push(std::move(v)); }
  template <class R, class P>
  status push_for(int&& v, std::chrono::duration<R, P> d) {
    return calls++, q.push_for(std::move(v), d);
  }
  status pop(int& out) { return q.pop(out); }
  status pop(int& out, std::stop_token st) { return q.pop(out, std::move(st)); }
  status try_pop(int& out) { return q.try_pop(out); }
  template <class R, class P>
  status pop_for(int& out, std::chrono::duration<R, P> d) {
    return q.pop_for(out, d);
  }
  std::optional<int> pop() { return q.pop(); }
  void close() { q.close(); }
  bool closed() const { return q.closed(); }
};
static_assert(spindle::channel<counting_sink>);
}  // namespace

TEST_CASE("fan_out, fan_in and broadcast block on full sinks instead of polling them") {
  // The old fan_out woke every retry_interval (1 kHz by default) and busy-looped with
  // retry_interval = 0; fan_in and broadcast polled push_for the same way under a stop token.
  for (int which = 0; which < 3; ++which) {
    CAPTURE(which);
    counting_sink a(1), b(1);
    REQUIRE(a.q.push(0) == status::ok);  // both sinks full
    REQUIRE(b.q.push(0) == status::ok);
    spindle::bounded_queue<int> src(4);
    REQUIRE(src.push(42) == status::ok);
    src.close();
    std::stop_source stop;  // a stop token makes the calls take their watching path
    spindle::fan_options opts{.stop = stop.get_token(), .retry_interval = 0ms};
    std::vector<counting_sink*> sinks{&a, &b};
    std::vector<spindle::bounded_queue<int>*> srcs{&src};
    test_support::thread_group g;
    g.spawn([&] {
      if (which == 0) spindle::fan_out(src, sinks, opts);
      if (which == 1) spindle::broadcast(src, sinks, opts);
      if (which == 2) spindle::fan_in(srcs, a, opts);
    });
    std::this_thread::sleep_for(100ms);  // blocked on full sinks meanwhile
    const int calls = a.calls.load() + b.calls.load();
    CHECK(calls <= 4);  // a try_push per sink, then one blocking push
    int v = 0;
    REQUIRE(a.q.pop(v) == status::ok);  // room: the blocked push completes
    REQUIRE(b.q.pop(v) == status::ok);
    REQUIRE(g.join_within(10s));
  }
}

// ---- hostile tests (red team) ----

TEST_CASE("broadcast rejects an empty list of sinks and takes nothing from the source") {
  // Attacks "no item is lost": with no sink at all, broadcast popped an item, gave it to no one
  // and closed the source (fan_out refuses an empty list; broadcast now does too).
  test_channel<int> src;
  fill(src, 2);
  std::vector<test_channel<int>*> none;
  CHECK_THROWS_WITH_AS(spindle::broadcast(src, none), doctest::Contains("broadcast"),
                       std::invalid_argument);
  CHECK_FALSE(src.closed());
  src.close();
  CHECK(src.drain() == std::vector<int>{0, 1});
}
