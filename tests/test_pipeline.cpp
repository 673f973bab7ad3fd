// Tests for <spindle/pipeline.hpp>.
#include <spindle/pipeline.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <spindle/bounded_queue.hpp>
#include <spindle/spsc_queue.hpp>

#include "support/lifetime.hpp"
#include "support/threads.hpp"

using namespace std::chrono_literals;
using spindle::status;

namespace {

// Uneven work so that workers of one stage finish out of order.
std::uint64_t churn(std::uint64_t x) {
  std::uint64_t h = x * 0x9e3779b97f4a7c15ull;
  for (std::uint64_t i = 0; i < (x % 7) * 50; ++i) h = h * 6364136223846793005ull + 1;
  return h;
}

}  // namespace

TEST_CASE("a pipeline carries every item through its stages to the sink") {
  constexpr std::uint64_t n = 20000;
  std::uint64_t sum = 0, count = 0;
  auto p = spindle::pipeline<std::uint64_t>({.capacity = 64})
               .stage([](std::uint64_t x) { return x * 2; }, {.workers = 2})
               .stage([](std::uint64_t x) { return std::to_string(x); })
               .sink([&](std::string s) {
                 sum += std::stoull(s);
                 ++count;
               });
  for (std::uint64_t i = 0; i < n; ++i) REQUIRE(p.push(i) == status::ok);
  p.close();
  CHECK(p.wait() == status::ok);
  CHECK(count == n);
  CHECK(sum == n * (n - 1));
  CHECK(p.push(1) == status::closed);
}

TEST_CASE("an ordered stage with many workers emits in input order") {
  constexpr std::uint64_t n = 5000;
  std::vector<std::uint64_t> seen;
  auto p = spindle::pipeline<std::uint64_t>({.capacity = 32, .batch = 4})
               .stage([](std::uint64_t x) { return std::pair{x, churn(x)}; },
                      {.workers = 4, .ordered = true})
               .stage([](std::pair<std::uint64_t, std::uint64_t> v) { return v.first; },
                      {.workers = 3, .ordered = true})
               .sink([&](std::uint64_t x) { seen.push_back(x); });
  for (std::uint64_t i = 0; i < n; ++i) REQUIRE(p.push(i) == status::ok);
  p.close();
  CHECK(p.wait() == status::ok);
  REQUIRE(seen.size() == n);
  std::vector<std::uint64_t> want(n);
  std::iota(want.begin(), want.end(), 0);
  CHECK(seen == want);
}

TEST_CASE("a stage returning std::optional drops the items it returns nullopt for") {
  std::vector<int> seen;
  auto p = spindle::pipeline<int>()
               .stage([](int x) -> std::optional<int> {
                 if (x % 3 == 0) return std::nullopt;
                 return x;
               }, {.workers = 3, .ordered = true})
               .sink([&](int x) { seen.push_back(x); });
  for (int i = 0; i < 30; ++i) REQUIRE(p.push(i) == status::ok);
  p.close();
  CHECK(p.wait() == status::ok);
  std::vector<int> want;
  for (int i = 0; i < 30; ++i)
    if (i % 3 != 0) want.push_back(i);
  CHECK(seen == want);
}

TEST_CASE("the first stage exception stops intake, drains, and is rethrown by wait") {
  std::atomic<int> sunk{0};
  auto p = spindle::pipeline<int>({.capacity = 8})
               .stage([](int x) {
                 if (x == 100) throw std::runtime_error("bad item 100");
                 return x;
               }, {.workers = 2})
               .sink([&](int) { ++sunk; });
  // Push until the pipeline refuses: after the error push returns closed and never blocks.
  int pushed = 0;
  while (pushed < 1000000 && p.push(pushed) == status::ok) ++pushed;
  CHECK(pushed < 1000000);
  CHECK(p.push(1) == status::closed);
  CHECK(p.try_push(1) == status::closed);
  CHECK_THROWS_WITH_AS(p.wait(), "bad item 100", std::runtime_error);
  CHECK(sunk.load() < pushed);
}

TEST_CASE("a sink exception reaches wait") {
  auto p = spindle::pipeline<int>()
               .stage([](int x) { return x + 1; })
               .sink([](int x) {
                 if (x == 3) throw std::logic_error("sink refused 3");
               });
  for (int i = 0; i < 10; ++i) (void)p.push(i);
  p.close();
  CHECK_THROWS_WITH_AS(p.wait(), "sink refused 3", std::logic_error);
}

TEST_CASE("a stop request cancels the pipeline and wait reports cancelled") {
  std::stop_source ss;
  test_support::start_gate entered, release;
  std::atomic<int> sunk{0};
  auto p = spindle::pipeline<int>({.capacity = 4, .stop = ss.get_token()})
               .stage([&](int x) {
                 if (x == 0) {
                   entered.open();
                   release.wait();
                 }
                 return x;
               })
               .sink([&](int) { ++sunk; });
  REQUIRE(p.push(0) == status::ok);
  entered.wait();  // the stage holds item 0
  for (int i = 1; i <= 4; ++i) REQUIRE(p.push(i) == status::ok);
  ss.request_stop();
  CHECK(p.push(9) == status::closed);
  release.open();
  CHECK(p.wait() == status::cancelled);
  CHECK(sunk.load() <= 1);  // items queued behind the stop are dropped
}

TEST_CASE("cancel stops a pipeline whose input was never closed") {
  auto p = spindle::pipeline<int>().stage([](int x) { return x; }).sink([](int) {});
  REQUIRE(p.push(1) == status::ok);
  p.cancel();
  CHECK(p.wait() == status::cancelled);
}

TEST_CASE("try_push reports full when the first queue has no room") {
  test_support::start_gate entered, release;
  auto p = spindle::pipeline<int>({.capacity = 2})
               .stage([&](int x) {
                 if (x == 0) {
                   entered.open();
                   release.wait();
                 }
                 return x;
               })
               .sink([](int) {});
  REQUIRE(p.push(0) == status::ok);
  entered.wait();
  CHECK(p.try_push(1) == status::ok);
  CHECK(p.try_push(2) == status::ok);
  CHECK(p.try_push(3) == status::full);
  release.open();
  p.close();
  CHECK(p.wait() == status::ok);
}

TEST_CASE("run feeds a pipeline from a channel until the channel is closed") {
  spindle::bounded_queue<int> source(16);
  std::atomic<long> sum{0};
  std::atomic<int> count{0};
  auto p = spindle::pipeline<int>()
               .stage([](int x) { return x * 3; }, {.workers = 2})
               .sink([&](int x) {
                 sum += x;
                 ++count;
               })
               .run(source);
  for (int i = 0; i < 1000; ++i) REQUIRE(source.push(i) == status::ok);
  source.close();
  CHECK(p.wait() == status::ok);
  CHECK(count.load() == 1000);
  CHECK(sum.load() == 3L * 999 * 1000 / 2);
}

TEST_CASE("run over a range feeds every element, then ends the stream") {
  std::vector<int> input(3000);
  std::iota(input.begin(), input.end(), 1);
  std::vector<int> seen;
  auto p = spindle::pipeline<int>({.capacity = 16})
               .stage([](int x) { return x; }, {.workers = 2, .ordered = true})
               .sink([&](int x) { seen.push_back(x); })
               .run(input);
  CHECK(p.wait() == status::ok);
  CHECK(seen == input);
}

TEST_CASE("run stops feeding a channel when the pipeline is cancelled") {
  spindle::bounded_queue<int> source(4);  // never closed
  auto p = spindle::pipeline<int>().stage([](int x) { return x; }).sink([](int) {}).run(source);
  REQUIRE(source.push(1) == status::ok);
  p.cancel();
  CHECK(p.wait() == status::cancelled);
}

TEST_CASE("a pipeline moves items without leaking or copying them") {
  test_support::tracked::registry reg;
  {
    std::uint64_t sum = 0;
    auto p = spindle::pipeline<test_support::tracked>({.capacity = 8})
                 .stage([](test_support::tracked t) { return t; }, {.workers = 2, .ordered = true})
                 .sink([&](test_support::tracked t) { sum += t.value(); });
    for (std::uint64_t i = 0; i < 500; ++i)
      REQUIRE(p.push(test_support::tracked(&reg, i)) == status::ok);
    p.close();
    CHECK(p.wait() == status::ok);
    CHECK(sum == 499 * 500 / 2);
    CHECK(reg.copies.load() == 0);
  }
  CHECK(reg.alive.load() == 0);
  CHECK(reg.errors.load() == 0);
}

TEST_CASE("the destructor of a running pipeline closes it and waits") {
  std::atomic<int> sunk{0};
  {
    auto p = spindle::pipeline<int>().stage([](int x) { return x; }).sink([&](int) { ++sunk; });
    for (int i = 0; i < 100; ++i) REQUIRE(p.push(i) == status::ok);
  }
  CHECK(sunk.load() == 100);
}

TEST_CASE("bad options throw std::invalid_argument naming the function and the value") {
  CHECK_THROWS_WITH_AS(spindle::pipeline<int>({.capacity = 0}),
                       doctest::Contains("capacity must be >= 1 (got 0)"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(spindle::pipeline<int>().stage([](int x) { return x; }, {.workers = 0}),
                       doctest::Contains("spindle::pipeline::stage"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(spindle::pipeline<int>().sink([](int) {}, {.workers = 0}),
                       doctest::Contains("spindle::pipeline::sink"), std::invalid_argument);
}

TEST_CASE("a stage queue fed more slowly than its consumer spins stops spinning before it sleeps") {
  using queue = spindle::detail::batch_queue<int>;
  queue q(16, 4);
  CHECK(q.spin_budget() == queue::max_spin);
  std::atomic<int> popped{0};
  std::thread consumer([&] {
    std::vector<int> out;
    std::uint64_t seq = 0;
    while (q.pop_batch(out, seq)) popped.fetch_add(static_cast<int>(out.size()));
  });
  // Each item comes only once the consumer sleeps: every spin was in vain, so each halves the
  // budget, down to the floor.
  auto wait_for = [](auto pred) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!pred() && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
    return pred();
  };
  for (int i = 0; i < 12; ++i) {
    REQUIRE(wait_for([&] { return q.sleeping_consumers() == 1; }));
    int v = i;
    REQUIRE(q.push(v, true) == spindle::status::ok);
    REQUIRE(wait_for([&] { return popped.load() == i + 1; }));
  }
  CHECK(q.spin_budget() == queue::min_spin);  // 2000 halved 12 times, held at the floor
  q.close();
  consumer.join();
  CHECK(popped.load() == 12);
}

// ---------------------------------------------------------------------------------------------
// Hostile edges (issue 12, items 3, 4, 12)

TEST_CASE("an ordered stage waiting for a slow first item holds back its intake (back-pressure)") {
  // Capacity 64, 4 ordered workers, item 0 blocked: the old stage parked every other finished
  // batch without bound, so the feeder never met a full queue (all 100,000 items went in).
  constexpr int total = 100000;
  std::atomic<bool> release{false};
  std::atomic<int> processed{0};
  std::vector<int> seen;
  auto p = spindle::pipeline<int>({.capacity = 64})
               .stage(
                   [&](int x) {
                     if (x == 0) release.wait(false);
                     processed.fetch_add(1, std::memory_order_relaxed);
                     return x;
                   },
                   {.workers = 4, .ordered = true})
               .sink([&](int x) { seen.push_back(x); });
  int pushed = 0;
  // Push until the input stays full for a while (back-pressure), or everything went in.
  auto full_since = std::chrono::steady_clock::now();
  bool was_full = false;
  while (pushed < total) {
    if (p.try_push(int{pushed}) == status::ok) {
      ++pushed;
      was_full = false;
      continue;
    }
    auto now = std::chrono::steady_clock::now();
    if (!was_full) {
      was_full = true;
      full_since = now;
    } else if (now - full_since > 300ms) {
      break;  // held back: the bound holds
    }
    std::this_thread::yield();
  }
  CAPTURE(pushed);
  CAPTURE(processed.load());
  // Input queue (64) + one batch per worker (4 x 16) + slack for the hand-off in flight.
  CHECK(pushed <= 64 + 4 * 16 + 16);
  CHECK(processed.load() <= 4 * 16);
  release.store(true);
  release.notify_all();
  p.close();
  CHECK(p.wait() == status::ok);
  REQUIRE(seen.size() == static_cast<std::size_t>(pushed));
  for (int i = 0; i < pushed; ++i) REQUIRE(seen[static_cast<std::size_t>(i)] == i);
}

TEST_CASE("run(any_channel<T>(q)) keeps the handle by value, not a pointer to the temporary") {
  // The old feeder thread popped through a pointer to the destroyed temporary (ASan:
  // stack-use-after-scope). Overwriting the stack after run() returns makes it visible.
  spindle::bounded_queue<int> q(8);
  std::atomic<long> sum{0};
  auto p = spindle::pipeline<int>().stage([](int x) { return x * 2; }).sink([&](int x) {
    sum.fetch_add(x);
  });
  p.run(spindle::any_channel<int>(q));
  {
    volatile char scrub[4096];  // reuses the temporary's stack slot
    for (auto& c : scrub) c = static_cast<char>(0xA5);
  }
  for (int i = 1; i <= 1000; ++i) REQUIRE(q.push(i) == status::ok);
  q.close();
  CHECK(p.wait() == status::ok);
  CHECK(sum.load() == 1000L * 1001);
}

namespace {
template <class P, class S>
concept can_run = requires(P& p, S&& s) { p.run(std::forward<S>(s)); };
}  // namespace

TEST_CASE("run refuses an rvalue channel that is not a handle, at compile time") {
  using running = spindle::running_pipeline<int>;
  static_assert(can_run<running, spindle::bounded_queue<int>&>);
  static_assert(can_run<running, spindle::any_channel<int>>);
  static_assert(can_run<running, spindle::any_channel<int>&>);
  static_assert(can_run<running, std::vector<int>>);  // a range is fed before run() returns
  static_assert(!can_run<running, spindle::bounded_queue<int>>);
  static_assert(!can_run<running, spindle::bounded_queue<int>&&>);
  CHECK(true);
}

TEST_CASE("run refuses to feed one pipeline twice from a single-consumer channel") {
  // Two feeder threads would pop one spsc_queue at once.
  spindle::spsc_queue<int> s(8);
  std::atomic<long> sum{0};
  auto p = spindle::pipeline<int>().stage([](int x) { return x; }).sink([&](int x) {
    sum.fetch_add(x);
  });
  p.run(s);
  CHECK_THROWS_AS(p.run(spindle::any_channel<int>(s)), std::invalid_argument);
  for (int i = 1; i <= 10; ++i) REQUIRE(s.push(i) == status::ok);
  s.close();
  CHECK(p.wait() == status::ok);
  CHECK(sum.load() == 55);
}

namespace {
enum class pipeline_end { close, cancel, fail };

// Three threads push distinct ids into a pipeline (capacity `cap`, an ordered 3-worker stage
// that drops every 5th id, one sink worker) while the main thread closes, cancels, or lets a
// stage throw, somewhere in the stream. Checks: no hang; no id reaches the sink twice or
// without a successful push; each pusher's ids reach the sink in push order; after close every
// pushed id that the stage keeps arrives; after cancel or failure every later push returns
// closed at once.
void check_pipeline_end(std::size_t cap, pipeline_end end, int round) {
  constexpr int per_pusher = 200;
  constexpr int pushers = 3;
  constexpr int ids = per_pusher * pushers;
  const int trigger = round * 37 % ids;
  std::vector<std::atomic<int>> pushed(static_cast<std::size_t>(ids));
  std::vector<int> seen;  // only the one sink worker touches it
  std::atomic<int> pushes_ok{0};
  std::atomic<bool> thrown{false};
  auto p = spindle::pipeline<int>({.capacity = cap, .batch = 2})
               .stage(
                   [&](int x) -> std::optional<int> {
                     if (end == pipeline_end::fail && x == trigger) {
                       thrown.store(true);
                       throw std::runtime_error("stage fails at the trigger");
                     }
                     churn(static_cast<std::uint64_t>(x));
                     if (x % 5 == 0) return std::nullopt;
                     return x;
                   },
                   {.workers = 3, .ordered = true})
               .sink([&](int x) { seen.push_back(x); });
  test_support::thread_group g;
  for (int t = 0; t < pushers; ++t) {
    g.spawn([&, t] {
      for (int k = 0; k < per_pusher; ++k) {
        const int id = t * per_pusher + k;
        const status s = p.push(int{id});
        if (s == status::ok) {
          pushed[static_cast<std::size_t>(id)].store(1);
          pushes_ok.fetch_add(1);
        } else {
          CHECK(s == status::closed);
        }
      }
    });
  }
  if (end != pipeline_end::fail) {
    while (pushes_ok.load() < trigger) std::this_thread::yield();  // bounded by the pushers
    if (end == pipeline_end::close) p.close();
    if (end == pipeline_end::cancel) p.cancel();
  }
  REQUIRE(g.join_within(60s));
  p.close();  // every pusher is done
  status result = status::ok;
  bool rethrown = false;
  try {
    result = p.wait();
  } catch (const std::runtime_error&) {
    rethrown = true;
  }
  CHECK(rethrown == thrown.load());
  if (end == pipeline_end::cancel) CHECK(result == status::cancelled);
  if (end != pipeline_end::close) CHECK(p.push(int{-1}) == status::closed);
  std::vector<int> times(static_cast<std::size_t>(ids), 0);
  std::vector<int> last(static_cast<std::size_t>(pushers), -1);
  for (int x : seen) {
    REQUIRE(x >= 0);
    REQUIRE(x < ids);
    ++times[static_cast<std::size_t>(x)];
    CHECK(pushed[static_cast<std::size_t>(x)].load() == 1);
    CHECK(x % 5 != 0);
    CHECK(x > last[static_cast<std::size_t>(x / per_pusher)]);  // per-pusher order kept
    last[static_cast<std::size_t>(x / per_pusher)] = x;
  }
  int lost = 0;
  for (int id = 0; id < ids; ++id) {
    CHECK(times[static_cast<std::size_t>(id)] <= 1);
    if (end == pipeline_end::close && pushed[static_cast<std::size_t>(id)].load() == 1 &&
        id % 5 != 0 && times[static_cast<std::size_t>(id)] == 0)
      ++lost;
  }
  CHECK(lost == 0);
}
}  // namespace

TEST_CASE("close, cancel or a stage exception racing three pushers: nothing duplicated or "
          "invented, nothing lost on close, order kept, no hang (capacity 1 and 2)") {
  for (std::size_t cap : {1, 2}) {
    for (auto end : {pipeline_end::close, pipeline_end::cancel, pipeline_end::fail}) {
      for (int round = 0; round < 8; ++round) {
        CAPTURE(cap);
        CAPTURE(static_cast<int>(end));
        CAPTURE(round);
        check_pipeline_end(cap, end, round);
      }
    }
  }
}
