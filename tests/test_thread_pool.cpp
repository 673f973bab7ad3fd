// Tests for spindle/thread_pool.hpp.
#include <doctest/doctest.h>

#include <spindle/thread_pool.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <semaphore>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include "support/allocations.hpp"
#include "support/threads.hpp"

using namespace std::chrono_literals;
using spindle::thread_pool;

using test_support::allocations;

TEST_CASE("a pool has the number of workers it was given") {
  thread_pool pool(3);
  CHECK(pool.size() == 3);
  CHECK_FALSE(pool.in_worker());
  thread_pool def;
  CHECK(def.size() >= 1);
}

TEST_CASE("a pool of zero threads is refused with std::invalid_argument") {
  CHECK_THROWS_WITH_AS(thread_pool(0), doctest::Contains("threads must be >= 1, got 0"),
                       std::invalid_argument);
}

TEST_CASE("submit returns a future of the task's value") {
  thread_pool pool(2);
  auto f = pool.submit([] { return 6 * 7; });
  CHECK(f.get() == 42);
  auto g = pool.submit([](int a, int b) { return a - b; }, 10, 3);
  CHECK(g.get() == 7);
  auto v = pool.submit([] {});
  v.get();
}

TEST_CASE("submit accepts move-only tasks and arguments") {
  thread_pool pool(2);
  auto p = std::make_unique<int>(5);
  auto f = pool.submit([p = std::move(p)] { return *p; });
  CHECK(f.get() == 5);
  auto g = pool.submit([](std::unique_ptr<int> q) { return *q + 1; }, std::make_unique<int>(9));
  CHECK(g.get() == 10);
}

TEST_CASE("an exception in a submitted task reaches its future") {
  thread_pool pool(2);
  auto f = pool.submit([]() -> int { throw std::runtime_error("task failed"); });
  CHECK_THROWS_WITH_AS(f.get(), "task failed", std::runtime_error);
  CHECK(pool.submit([] { return 1; }).get() == 1);  // the pool goes on
}

TEST_CASE("an exception escaping a posted task goes to on_error and the pool goes on") {
  std::mutex mu;
  std::vector<std::exception_ptr> errors;
  thread_pool pool(2, {.on_error = [&](std::exception_ptr e) {
                         std::lock_guard lock(mu);
                         errors.push_back(e);
                       }});
  pool.post([] { throw std::runtime_error("posted"); });
  pool.post([] { throw 7; });
  pool.wait_idle();
  std::lock_guard lock(mu);
  REQUIRE(errors.size() == 2);
  CHECK(pool.submit([] { return 3; }).get() == 3);
}

TEST_CASE("wait_idle returns once every posted task has run") {
  thread_pool pool(2);
  std::atomic<long> sum{0};
  for (int i = 1; i <= 10000; ++i) pool.post([&sum, i] { sum.fetch_add(i, std::memory_order_relaxed); });
  pool.wait_idle();
  CHECK(sum.load() == 10000L * 10001 / 2);
  CHECK(pool.pending() == 0);
  pool.wait_idle();  // idle already: returns at once
}

TEST_CASE("tasks start in submission order on a single worker") {
  thread_pool pool(1);
  std::vector<int> order;  // only the one worker writes it
  for (int i = 0; i < 100; ++i) pool.post([&order, i] { order.push_back(i); });
  pool.wait_idle();
  REQUIRE(order.size() == 100);
  for (int i = 0; i < 100; ++i) CHECK(order[static_cast<std::size_t>(i)] == i);
}

TEST_CASE("the task queue keeps FIFO order and every task across blocks, drains and refills") {
  // Attacks detail::task_fifo directly (its block boundaries, the reset of an emptied block,
  // the free list): an uneven push/pop pattern against a std::deque model, with tasks that own
  // a counted object, so a lost, duplicated or leaked task shows.
  using spindle::detail::task;
  using spindle::detail::task_fifo;
  constexpr std::size_t B = task_fifo::block_tasks;
  static int live = 0;  // one thread
  struct owned {
    int id;
    explicit owned(int i) : id(i) { ++live; }
    ~owned() { --live; }
  };
  int last_run = -1;
  {
    task_fifo q;
    std::deque<int> model;
    int next = 0;
    std::uint32_t rng = 12345;
    auto pop_one = [&] {
      task t;
      q.pop_into(t);
      t();
      CHECK(last_run == model.front());
      model.pop_front();
    };
    // Bursts of pushes then pops of uneven lengths: around, exactly on and across boundaries.
    for (int round = 0; round < 60; ++round) {
      rng = rng * 1664525u + 1013904223u;
      const std::size_t pushes = (rng >> 8) % (3 * B) + (round % 3 == 0 ? B : 0);
      for (std::size_t i = 0; i < pushes; ++i) {
        auto o = std::make_unique<owned>(next);
        q.push(task([o = std::move(o), &last_run] { last_run = o->id; }));
        model.push_back(next++);
      }
      REQUIRE(q.size() == model.size());
      rng = rng * 1664525u + 1013904223u;
      std::size_t pops = round % 4 == 0 ? model.size() : (rng >> 8) % (model.size() + 1);
      for (std::size_t i = 0; i < pops; ++i) pop_one();
      REQUIRE(q.size() == model.size());
      CHECK(q.empty() == model.empty());
      CHECK(live == static_cast<int>(model.size()));
    }
    // Once the queue has been at a length, reaching it again allocates nothing.
    while (!model.empty()) pop_one();
    long before = allocations;
    for (std::size_t i = 0; i < 2 * B + 1; ++i) q.push(task([] {}));
    CHECK(allocations - before == 0);
    for (std::size_t i = 0; i < 2 * B + 1; ++i) {
      task t;
      q.pop_into(t);
    }
    for (std::size_t i = 0; i < B + 7; ++i) {  // left queued: the destructor releases them
      auto o = std::make_unique<owned>(next++);
      q.push(task([o = std::move(o)] {}));
    }
  }
  CHECK(live == 0);
}

TEST_CASE("post and submit after shutdown throw spindle::closed_error") {
  thread_pool pool(2);
  pool.shutdown();
  CHECK_THROWS_WITH_AS(pool.post([] {}), doctest::Contains("thread_pool::post"),
                       spindle::closed_error);
  CHECK_THROWS_AS(pool.submit([] { return 1; }), spindle::closed_error);
  pool.shutdown();  // idempotent
}

TEST_CASE("the destructor runs every queued task before it returns") {
  std::atomic<int> ran{0};
  {
    thread_pool pool(2);
    for (int i = 0; i < 5000; ++i) pool.post([&] { ran.fetch_add(1, std::memory_order_relaxed); });
  }
  CHECK(ran.load() == 5000);
}

TEST_CASE("tasks that submit tasks during shutdown all run, nothing is dropped") {
  std::atomic<int> ran{0};
  thread_pool pool(2);
  // Each seed task spawns a chain of 50 follow-ups, most of them after shutdown() began.
  struct chain {
    thread_pool* pool;
    std::atomic<int>* ran;
    int left;
    void operator()() const {
      ran->fetch_add(1, std::memory_order_relaxed);
      if (left > 0) pool->post(chain{pool, ran, left - 1});
    }
  };
  test_support::start_gate gate;
  pool.post([&gate] { gate.wait(); });  // holds one worker until shutdown() is under way
  for (int i = 0; i < 20; ++i) pool.post(chain{&pool, &ran, 50});
  test_support::thread_group g;
  g.spawn([&] { pool.shutdown(); });
  gate.open();
  REQUIRE(g.join_within(60s));
  CHECK(ran.load() == 20 * 51);
}

TEST_CASE("shutdown from another thread while tasks are queued drains them") {
  std::atomic<int> ran{0};
  thread_pool pool(1);
  test_support::start_gate gate;
  pool.post([&gate] { gate.wait(); });
  for (int i = 0; i < 100; ++i) pool.post([&] { ran.fetch_add(1, std::memory_order_relaxed); });
  test_support::thread_group g;
  g.spawn([&] { pool.shutdown(); });
  g.spawn([&] { pool.shutdown(); });  // a concurrent second shutdown also waits for the join
  gate.open();
  REQUIRE(g.join_within(60s));
  CHECK(ran.load() == 100);
}

TEST_CASE("wait_idle and shutdown from inside a worker throw std::logic_error") {
  thread_pool pool(2);
  auto f = pool.submit([&pool] { pool.wait_idle(); });
  CHECK_THROWS_WITH_AS(f.get(), doctest::Contains("wait_idle"), std::logic_error);
  auto g = pool.submit([&pool] { pool.shutdown(); });
  CHECK_THROWS_WITH_AS(g.get(), doctest::Contains("shutdown"), std::logic_error);
  CHECK(pool.submit([&pool] { return pool.in_worker(); }).get());
}

TEST_CASE("a blocking get inside a worker runs the awaited task itself if it has not started") {
  thread_pool pool(1);  // one worker: the inner task can only run if the get() runs it
  auto outer = pool.submit([&pool] {
    auto inner = pool.submit([] { return 20; });
    return inner.get() + 1;
  });
  REQUIRE(outer.wait_for(60s) == spindle::status::ok);
  CHECK(outer.get() == 21);
}

TEST_CASE("nested blocking gets on every worker finish (recursive fan-out)") {
  thread_pool pool(2);
  struct fib {
    thread_pool* pool;
    int operator()(int n) const {
      if (n < 2) return n;
      auto a = pool->submit(*this, n - 1);
      auto b = pool->submit(*this, n - 2);
      return a.get() + b.get();
    }
  };
  auto f = pool.submit(fib{&pool}, 15);
  REQUIRE(f.wait_for(60s) == spindle::status::ok);
  CHECK(f.get() == 610);
}

TEST_CASE("posting a small task does not allocate") {
  thread_pool pool(2);
  std::atomic<int> ran{0};
  pool.post([&] { ran.fetch_add(1, std::memory_order_relaxed); });  // warm up
  pool.wait_idle();
  long before = allocations;
  for (int i = 0; i < 500; ++i) pool.post([&ran] { ran.fetch_add(1, std::memory_order_relaxed); });
  long during = allocations - before;
  pool.wait_idle();
  CHECK(during == 0);
  CHECK(ran.load() == 501);
}

TEST_CASE("submit allocates only the future's shared state") {
  thread_pool pool(1);
  pool.submit([] { return 0; }).get();  // warm up
  long before = allocations;
  auto f = pool.submit([] { return 1; });
  long during = allocations - before;
  CHECK(f.get() == 1);
  CHECK(during == 1);
}

TEST_CASE("submitters on several threads lose no task") {
  thread_pool pool(2);
  std::atomic<long> sum{0};
  test_support::start_gate gate;
  test_support::thread_group g;
  for (int t = 0; t < 3; ++t)
    g.spawn([&] {
      gate.wait();
      for (int i = 1; i <= 2000; ++i) pool.post([&sum, i] { sum.fetch_add(i, std::memory_order_relaxed); });
    });
  gate.open();
  REQUIRE(g.join_within(60s));
  pool.wait_idle();
  CHECK(sum.load() == 3L * 2000 * 2001 / 2);
}

TEST_CASE("workers that went to sleep wake for each new task") {
  thread_pool pool(2, {.spin = 64});
  pool.submit([] {}).get();
  pool.wait_idle();
  // With a short spin the workers sleep between these tasks: no wake-up may be lost.
  for (int i = 0; i < 50; ++i) CHECK(pool.submit([i] { return i; }).get() == i);
}

// ---------------------------------------------------------------------------------------------
// Hostile tests of the work-conserving invariant (see the top of thread_pool.hpp). Each waits
// with a generous bound instead of forever, so that a stranded task fails the test instead of
// hanging it; each repeats its pattern and stops at the first failure.

namespace {
// N parties meet here; arrive_and_wait_for() returns false if the others did not all come in
// time (a std::latch would hang the test instead).
class rendezvous {
 public:
  explicit rendezvous(int n) : left_(n) {}
  bool arrive_and_wait_for(std::chrono::milliseconds limit) {
    std::unique_lock lock(mu_);
    if (--left_ == 0) cv_.notify_all();
    return cv_.wait_for(lock, limit, [&] { return left_ <= 0; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int left_;
};
}  // namespace

TEST_CASE("N tasks meeting at a rendezvous on a fresh pool of N workers all meet (1000 pools)") {
  // Attacks: a post that skips the wake-up because a worker spins, and a spinner that takes one
  // task and wakes nobody: the other tasks then sit queued while workers sleep. Each pool lives
  // in a fresh child process, where the workers start slowly (copy-on-write faults) and the
  // posts meet them in every state: the old code stranded tasks in 4 of 300 such children.
  constexpr int n = 4;
#if defined(__SANITIZE_THREAD__)
  constexpr int reps = 200;  // a child under ThreadSanitizer costs ~50 ms
#else
  constexpr int reps = 1000;
#endif
  int failed_at = -1;
  for (int rep = 0; rep < reps && failed_at < 0; ++rep) {
    std::fflush(nullptr);
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      // The child waits for the tasks before the pool's destructor, whose shutdown wakes every
      // worker and would hide a stranded task; a stuck child exits without destroying it.
      auto* pool = new thread_pool(n);
      auto meet = std::make_shared<rendezvous>(n);
      auto all_met = std::make_shared<rendezvous>(n + 1);  // the tasks and this thread
      for (int i = 0; i < n; ++i)
        pool->post([meet, all_met] {
          if (meet->arrive_and_wait_for(5s)) all_met->arrive_and_wait_for(5s);
        });
      if (!all_met->arrive_and_wait_for(5s)) ::_exit(1);
      delete pool;
      ::_exit(0);
    }
    int st = 0;
    REQUIRE(::waitpid(pid, &st, 0) == pid);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) failed_at = rep;
  }
  CHECK(failed_at == -1);
}

TEST_CASE("a task that waits for a later task of the same burst is never stuck behind it") {
  // Attacks private runs: with the workers busy, post T0 (waits on a semaphore), T1 (releases
  // it) and six empty tasks; a worker that claims T0 and T1 in one run blocks in T0 while T1,
  // queued behind it in that run, can never run, although the other worker is idle.
  int failed_at = -1;
  for (int rep = 0; rep < 200 && failed_at < 0; ++rep) {
    thread_pool pool(2);
    test_support::start_gate gate;
    std::atomic<int> busy{0};
    for (int i = 0; i < 2; ++i)
      pool.post([&] {
        busy.fetch_add(1);
        gate.wait();
      });
    while (busy.load() != 2) std::this_thread::yield();
    std::binary_semaphore sem(0);
    std::atomic<bool> acquired{false};
    pool.post([&] { acquired = sem.try_acquire_for(5s); });
    pool.post([&] { sem.release(); });
    for (int i = 0; i < 6; ++i) pool.post([] {});
    gate.open();
    pool.wait_idle();
    if (!acquired.load()) failed_at = rep;
  }
  CHECK(failed_at == -1);
}

namespace {
// A lock that a test can try for a bounded time, even from the thread that holds it (where a
// std::mutex would be undefined behaviour).
struct flag_lock {
  std::atomic<bool> held{false};
  void lock() { held.store(true); }
  void unlock() { held.store(false); }
  bool try_lock_for(std::chrono::milliseconds limit) {
    auto end = std::chrono::steady_clock::now() + limit;
    bool expected = false;
    while (!held.compare_exchange_weak(expected, true)) {
      expected = false;
      if (std::chrono::steady_clock::now() > end) return false;
      std::this_thread::yield();
    }
    return true;
  }
};
}  // namespace

TEST_CASE("get on a worker never runs an unrelated task that needs a lock the caller holds") {
  // Attacks helping: a get() that runs queued tasks on its own stack runs `u`, which needs the
  // lock its caller holds until get() returns.
  int failed_at = -1;
  for (int rep = 0; rep < 20 && failed_at < 0; ++rep) {
    thread_pool pool(1);
    flag_lock m;
    std::atomic<bool> u_locked{false};
    auto outer = pool.submit([&] {
      m.lock();
      pool.post([&] {
        u_locked = m.try_lock_for(2s);
        if (u_locked) m.unlock();
      });
      int v = pool.submit([] { return 1; }).get();
      m.unlock();
      return v;
    });
    CHECK(outer.get() == 1);
    pool.wait_idle();
    if (!u_locked.load()) failed_at = rep;
  }
  CHECK(failed_at == -1);
}

TEST_CASE("get on a worker never runs an unrelated task that waits for what the caller does next") {
  // Attacks helping: `u` waits for a promise the outer task sets after its get() returns.
  int failed_at = -1;
  for (int rep = 0; rep < 20 && failed_at < 0; ++rep) {
    thread_pool pool(1);
    spindle::promise<void> after;
    auto after_f = after.get_future();
    std::atomic<bool> u_saw{false};
    auto outer = pool.submit([&] {
      pool.post([&] { u_saw = after_f.wait_for(2s) == spindle::status::ok; });
      int v = pool.submit([] { return 2; }).get();
      after.set_value();
      return v;
    });
    CHECK(outer.get() == 2);
    pool.wait_idle();
    if (!u_saw.load()) failed_at = rep;
  }
  CHECK(failed_at == -1);
}

TEST_CASE("a one-thread pool runs nested submit and get, however deep, without other tasks") {
  // get() on the only worker runs the awaited task itself (it has not started): nested 200 deep,
  // with an unrelated task queued before each inner one that must not run inside the get().
  thread_pool pool(1);
  std::atomic<int> unrelated_inside{0};
  std::atomic<int> depth_now{0};
  struct nest {
    thread_pool* pool;
    std::atomic<int>* unrelated_inside;
    std::atomic<int>* depth_now;
    int operator()(int n) const {
      if (n == 0) return 0;
      depth_now->fetch_add(1);
      pool->post([u = unrelated_inside, d = depth_now] {
        if (d->load() != 0) u->fetch_add(1);  // ran while a get() was waiting
      });
      int r = pool->submit(*this, n - 1).get() + 1;
      depth_now->fetch_sub(1);
      return r;
    }
  };
  auto f = pool.submit(nest{&pool, &unrelated_inside, &depth_now}, 200);
  REQUIRE(f.wait_for(60s) == spindle::status::ok);
  CHECK(f.get() == 200);
  pool.wait_idle();
  CHECK(unrelated_inside.load() == 0);
}

TEST_CASE("a pool destroyed by one of its own tasks does not terminate the program") {
  // Run in a child process: the old behaviour was std::terminate (a throwing destructor).
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::atomic<int> ran{0};
    std::atomic<bool> done{false};
    auto* pool = new thread_pool(2);
    for (int i = 0; i < 100; ++i) pool->post([&ran] { ran.fetch_add(1); });
    pool->post([pool, &done] {
      delete pool;  // closes the pool; the queued tasks still run
      done = true;
    });
    for (int i = 0; i < 2000 && !(done.load() && ran.load() == 100); ++i)
      std::this_thread::sleep_for(5ms);  // a bound, not synchronisation: the child reports
    ::_exit(done.load() && ran.load() == 100 ? 0 : 3);
  }
  int st = 0;
  REQUIRE(::waitpid(pid, &st, 0) == pid);
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 0);
}

// ---- hostile tests (red team) ----

TEST_CASE("shutdown racing posts from other threads: every accepted post runs, every other throws closed_error") {
  // Attacks shutdown steps 1-2: no window where a post is accepted but its task dropped.
  for (int round = 0; round < 200; ++round) {
    std::atomic<int> accepted{0}, ran{0}, refused{0};
    auto pool = std::make_unique<thread_pool>(2, spindle::thread_pool_options{.spin = 0});
    test_support::start_gate gate;
    test_support::thread_group posters;
    for (int t = 0; t < 3; ++t)
      posters.spawn([&] {
        gate.wait();
        for (int i = 0; i < 2000; ++i) {
          try {
            pool->post([&ran] { ran.fetch_add(1, std::memory_order_relaxed); });
            accepted.fetch_add(1, std::memory_order_relaxed);
          } catch (const spindle::closed_error&) {
            refused.fetch_add(1, std::memory_order_relaxed);
            return;
          }
        }
      });
    gate.open();
    pool->shutdown();
    REQUIRE(posters.join_within(60s));
    pool.reset();
    REQUIRE(ran.load() == accepted.load());
  }
}

TEST_CASE("wait_idle sees a chain of tasks each posting the next as one piece of work") {
  // Attacks wait_idle's "no task is queued or running": the count never touches 0 between a
  // task and the one it posts, so wait_idle cannot return in the middle of the chain.
  thread_pool pool(2);
  for (int round = 0; round < 50; ++round) {
    std::atomic<int> left{1000};
    struct link {
      thread_pool* pool;
      std::atomic<int>* left;
      void operator()() const {
        if (left->fetch_sub(1) > 1) pool->post(*this);
      }
    };
    pool.post(link{&pool, &left});
    pool.wait_idle();
    REQUIRE(left.load() == 0);
  }
}

TEST_CASE("get on a worker of one pool for a future of another never runs that task itself") {
  // Attacks "only for a future that submit() of this pool returned": the task must run on its
  // own pool's worker even when that worker is busy and this one waits.
  thread_pool a(1), b(1);
  std::binary_semaphore hold_b{0};
  b.post([&hold_b] { hold_b.acquire(); });  // b's only worker is busy
  auto inner = b.submit([&b] { return b.in_worker(); });
  auto outer = a.submit([&inner] { return inner.get(); });  // a's worker blocks; must not run it
  CHECK(outer.wait_for(50ms) == spindle::status::timeout);
  hold_b.release();
  REQUIRE(outer.wait_for(60s) == spindle::status::ok);
  CHECK(outer.get());  // ran on b's worker
}

TEST_CASE("when_all and when_any over futures of two pools and a promise deliver every value") {
  thread_pool a(2), b(1);
  for (int round = 0; round < 200; ++round) {
    spindle::promise<int> p;
    std::vector<spindle::future<int>> fs;
    fs.push_back(a.submit([round] { return round; }));
    fs.push_back(b.submit([round] { return round + 1; }));
    fs.push_back(p.get_future());
    fs.push_back(a.submit([] { return 0; }).then(b, [](int v) { return v + 7; }));
    auto all = spindle::when_all(std::move(fs));
    std::vector<spindle::future<int>> gs;
    gs.push_back(b.submit([] { return 1; }));
    gs.push_back(a.submit([]() -> int { throw std::runtime_error("x"); }));
    auto any = spindle::when_any(std::move(gs));
    std::thread setter([&p, round] { p.set_value(round + 2); });
    auto v = all.get();
    setter.join();
    REQUIRE(v == std::vector<int>{round, round + 1, round + 2, 7});
    auto r = any.get();
    REQUIRE(r.index < 2);
    for (auto& f : r.futures) f.wait();
  }
}

TEST_CASE("a pool of an absurd number of threads is refused with a message naming the count") {
  // Attacks "clear exceptions naming the function and value": SIZE_MAX threads threw
  // std::length_error("vector::reserve").
  const std::size_t huge = std::numeric_limits<std::size_t>::max();
  const std::string got = "got " + std::to_string(huge);
  CHECK_THROWS_WITH_AS(thread_pool pool(huge),
                       doctest::Contains("spindle::thread_pool: threads must be <= "),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(thread_pool pool(huge), doctest::Contains(got.c_str()),
                       std::invalid_argument);
}
