// bench/bench_executor.cpp - thread_pool and future against tbb, asio, a mutex pool and the
// standard library, like for like.
//
// Every table follows harness.hpp's method (warm-up, rows interleaved, min / median / max,
// process CPU time per operation, every round validated). Equal resources: every pool has
// `threads` workers (default: the CPUs); TBB runs in a task_arena of `threads` workers plus the
// calling thread's reserved slot (the caller runs tasks only inside wait(), as spindle's
// get() on a worker does); asio::thread_pool has `threads` threads.
//
// Spinning and sleeping: spindle's idle workers poll for a while before they sleep
// (thread_pool_options::spin, default 2048) and its future::get() polls briefly before it
// sleeps; std::future (tbb, asio, the mutex pool) sleeps at once. So every table that
// has a spindle row also has "spindle, spin 0": workers that sleep as soon as they find no work
// (get() has no switch: its brief poll stays in that row, and the row says so). The CPU column
// shows what spinning costs.
//
// Workloads:
//   1. post N empty tasks, then wait for all                         (M tasks/s)
//   2. submit N tasks returning an int, get every future             (M tasks/s)
//   3. submit one task and get its result, repeated                  (us per round trip)
//   4. promise set_value + future get, one thread and across two     (M pairs/s)
//   5. a 10-step `then` chain built, fulfilled and read              (k chains/s)
//   6. nested fork-join: fib(n) with a task per call above a cutoff, joined from inside the pool
//      (spindle: submit + get() on a worker, as a user writes it; tbb::task_group run + wait),
//      and the same recursion on one thread                         (M tasks/s)
//
//   bench_executor [--items N] [--runs K] [--warmup W] [--smoke]
#if defined(SPINDLE_BENCH_HAVE_BOOST_THREAD)
#define BOOST_THREAD_VERSION 4  // future::then with launch::sync
#include <boost/thread/future.hpp>
#endif
#if defined(SPINDLE_BENCH_HAVE_ASIO)
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_future.hpp>
#endif
#if defined(SPINDLE_BENCH_HAVE_TBB)
#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/task_arena.h>
#include <oneapi/tbb/task_group.h>
#endif

#include <spindle/future.hpp>
#include <spindle/thread_pool.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <queue>
#include <thread>
#include <vector>

#include "harness.hpp"

namespace {

// Per-thread counters so that "empty" tasks can be counted without a shared atomic.
struct alignas(128) slot_counter {
  std::uint64_t n = 0;
};
constexpr int max_threads = 256;
slot_counter counters[max_threads];
std::atomic<int> next_slot{0};
inline std::uint64_t& my_counter() {
  thread_local int slot = next_slot.fetch_add(1, std::memory_order_relaxed) % max_threads;
  return counters[slot].n;
}
inline void count_one() { ++my_counter(); }
// Call only when every task has finished (a join or wait gives the happens-before).
std::uint64_t take_count() {
  std::uint64_t s = 0;
  for (auto& c : counters) {
    s += c.n;
    c.n = 0;
  }
  return s;
}

// The naive peer: one std::queue of std::function behind a mutex and a condition variable.
class mutex_pool {
 public:
  explicit mutex_pool(std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) threads_.emplace_back([this] { run(); });
  }
  ~mutex_pool() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  void post(std::function<void()> f) {
    {
      std::lock_guard lock(mu_);
      q_.push(std::move(f));
      ++pending_;
    }
    cv_.notify_one();
  }
  void wait_idle() {
    std::unique_lock lock(mu_);
    idle_.wait(lock, [&] { return pending_ == 0; });
  }

 private:
  void run() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !q_.empty(); });
      if (q_.empty()) return;
      auto f = std::move(q_.front());
      q_.pop();
      lock.unlock();
      f();
      lock.lock();
      if (--pending_ == 0) idle_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_, idle_;
  std::queue<std::function<void()>> q_;
  std::size_t pending_ = 0;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

// std::function needs a copyable callable; a packaged_task is move-only.
template <class R>
struct shared_task {
  std::shared_ptr<std::packaged_task<R()>> pt;
  void operator()() const { (*pt)(); }
};

// tbb::task_group::run calls its task through a const reference.
struct const_callable_task {
  mutable std::packaged_task<std::uint64_t()> pt;
  void operator()() const { pt(); }
};

// spindle's pool with idle workers that sleep at once, where the option exists.
spindle::thread_pool_options sleeping() {
  return bench::options_sleeping<spindle::thread_pool_options>();
}
const char* const sleeping_label = bench::has_spin_knob<spindle::thread_pool_options>
                                       ? "spindle, spin 0 (idle workers sleep at once)"
                                       : "spindle (no spin switch: as above)";

std::uint64_t fib_serial(int n) {
  return n < 2 ? static_cast<std::uint64_t>(n) : fib_serial(n - 1) + fib_serial(n - 2);
}

// Calls of the fork-join recursion at or above the cutoff: one task each (the validation
// counts them too).
std::uint64_t fork_count(int n, int cutoff) {
  return n < cutoff ? 0 : 1 + fork_count(n - 1, cutoff) + fork_count(n - 2, cutoff);
}

std::atomic<std::uint64_t> forks{0};

// The fork-join recursion as a spindle user writes it: submit the left child, compute the right
// one here, get() the left (on a worker, get() runs queued tasks while it waits).
std::uint64_t fib_spindle(spindle::thread_pool& pool, int n, int cutoff) {
  if (n < cutoff) return fib_serial(n);
  forks.fetch_add(1, std::memory_order_relaxed);
  auto left = pool.submit([&pool, n, cutoff] { return fib_spindle(pool, n - 1, cutoff); });
  std::uint64_t right = fib_spindle(pool, n - 2, cutoff);
  return left.get() + right;
}

#if defined(SPINDLE_BENCH_HAVE_TBB)
std::uint64_t fib_tbb(int n, int cutoff) {
  if (n < cutoff) return fib_serial(n);
  forks.fetch_add(1, std::memory_order_relaxed);
  std::uint64_t left = 0;
  tbb::task_group g;
  g.run([&] { left = fib_tbb(n - 1, cutoff); });
  std::uint64_t right = fib_tbb(n - 2, cutoff);
  g.wait();
  return left + right;
}
#endif

// The same recursion on the calling thread, counting its forks like the others.
std::uint64_t fib_one_thread(int n, int cutoff) {
  if (n < cutoff) return fib_serial(n);
  forks.fetch_add(1, std::memory_order_relaxed);
  return fib_one_thread(n - 1, cutoff) + fib_one_thread(n - 2, cutoff);
}

}  // namespace

int main(int argc, char** argv) {
  bench::args a(argc, argv, {.items = 1'000'000, .runs = 5});
  const std::size_t threads = spindle::thread_pool::default_threads();
  const std::uint64_t n = a.items;
  std::printf("bench_executor: %llu items, %d rounds + %d warm-up, %zu worker threads per pool\n",
              static_cast<unsigned long long>(n), a.runs, a.warmup, threads);
  bench::watchdog(a.smoke ? 240 : 1800, "bench_executor (a row hangs?)");
#if defined(SPINDLE_BENCH_HAVE_TBB)
  // `threads` workers plus one slot reserved for the calling thread.
  tbb::global_control tbb_threads(tbb::global_control::max_allowed_parallelism, threads + 1);
  tbb::task_arena arena(static_cast<int>(threads) + 1, 1);
  arena.initialize();
#endif
  const std::string tbb_label = "tbb::task_group in an arena of " + std::to_string(threads) +
                                " workers + caller";

  // 1. post + wait ---------------------------------------------------------------------------
  {
    bench::suite t(a, "1. post " + std::to_string(n) + " empty tasks, then wait", "M tasks/s",
                   1e-6);
    auto post_and_wait = [&](auto& pool, const char* who) {  // pool: post(f), wait_idle()
      bench::stopwatch sw;
      for (std::uint64_t i = 0; i < n; ++i) pool.post([] { count_one(); });
      pool.wait_idle();
      auto s = sw.stop(static_cast<double>(n));
      bench::validate(take_count() == n, std::string(who) + ": tasks run");
      return s;
    };
    auto spindle_post = [&](spindle::thread_pool_options o) {
      spindle::thread_pool pool(threads, std::move(o));
      return post_and_wait(pool, "spindle post");
    };
    t.add("spindle::thread_pool::post", [&] { return spindle_post({}); }, true);
    t.add(sleeping_label, [&] { return spindle_post(sleeping()); });
#if defined(SPINDLE_BENCH_HAVE_TBB)
    t.add(tbb_label + ", run", [&] {
      tbb::task_group g;
      bench::stopwatch sw;
      arena.execute([&] {
        for (std::uint64_t i = 0; i < n; ++i) g.run([] { count_one(); });
        g.wait();
      });
      auto s = sw.stop(static_cast<double>(n));
      bench::validate(take_count() == n, "tbb count");
      return s;
    });
#endif
#if defined(SPINDLE_BENCH_HAVE_ASIO)
    t.add("boost::asio::thread_pool, asio::post", [&] {
      boost::asio::thread_pool pool(threads);
      bench::stopwatch sw;
      for (std::uint64_t i = 0; i < n; ++i) boost::asio::post(pool, [] { count_one(); });
      pool.join();
      auto s = sw.stop(static_cast<double>(n));
      bench::validate(take_count() == n, "asio count");
      return s;
    });
#endif
    t.add("mutex + condition_variable pool (std::function)", [&] {
      mutex_pool pool(threads);
      return post_and_wait(pool, "mutex pool post");
    });
    t.run();
  }

  // 2. submit + future -------------------------------------------------------------------------
  {
    const std::uint64_t want = n * (n - 1) / 2;
    bench::suite t(a, "2. submit " + std::to_string(n) + " tasks returning an int, get every future",
                   "M tasks/s", 1e-6);
    auto spindle_submit = [&](spindle::thread_pool_options o) {
      spindle::thread_pool pool(threads, std::move(o));
      std::vector<spindle::future<std::uint64_t>> fs;
      fs.reserve(n);
      bench::stopwatch sw;
      for (std::uint64_t i = 0; i < n; ++i) fs.push_back(pool.submit([i] { return i; }));
      std::uint64_t s = 0;
      for (auto& f : fs) s += f.get();
      auto r = sw.stop(static_cast<double>(n));
      bench::validate(s == want, "spindle submit sum");
      return r;
    };
    t.add("spindle::thread_pool::submit, future::get", [&] { return spindle_submit({}); }, true);
    t.add(sleeping_label, [&] { return spindle_submit(sleeping()); });
#if defined(SPINDLE_BENCH_HAVE_TBB)
    t.add(tbb_label + " + std::packaged_task", [&] {
      tbb::task_group g;
      std::vector<std::future<std::uint64_t>> fs;
      fs.reserve(n);
      bench::stopwatch sw;
      arena.execute([&] {
        for (std::uint64_t i = 0; i < n; ++i) {
          std::packaged_task<std::uint64_t()> pt([i] { return i; });
          fs.push_back(pt.get_future());
          g.run(const_callable_task{std::move(pt)});
        }
      });
      std::uint64_t s = 0;
      for (auto& f : fs) s += f.get();
      auto r = sw.stop(static_cast<double>(n));
      arena.execute([&] { g.wait(); });
      bench::validate(s == want, "tbb submit sum");
      return r;
    });
#endif
#if defined(SPINDLE_BENCH_HAVE_ASIO)
    t.add("asio::thread_pool, post(use_future(f))", [&] {
      boost::asio::thread_pool pool(threads);
      std::vector<std::future<std::uint64_t>> fs;
      fs.reserve(n);
      bench::stopwatch sw;
      for (std::uint64_t i = 0; i < n; ++i)
        fs.push_back(boost::asio::post(pool, boost::asio::use_future([i] { return i; })));
      std::uint64_t s = 0;
      for (auto& f : fs) s += f.get();
      auto r = sw.stop(static_cast<double>(n));
      pool.join();
      bench::validate(s == want, "asio submit sum");
      return r;
    });
#endif
    t.add("mutex + condition_variable pool + std::packaged_task", [&] {
      mutex_pool pool(threads);
      std::vector<std::future<std::uint64_t>> fs;
      fs.reserve(n);
      bench::stopwatch sw;
      for (std::uint64_t i = 0; i < n; ++i) {
        auto pt = std::make_shared<std::packaged_task<std::uint64_t()>>([i] { return i; });
        fs.push_back(pt->get_future());
        pool.post(shared_task<std::uint64_t>{std::move(pt)});
      }
      std::uint64_t s = 0;
      for (auto& f : fs) s += f.get();
      auto r = sw.stop(static_cast<double>(n));
      bench::validate(s == want, "mutex pool submit sum");
      return r;
    });
    t.run();
  }

  // 3. round trip latency ----------------------------------------------------------------------
  {
    const std::uint64_t trips = a.smoke ? 1000 : 20000;
    bench::suite t(a, "3. submit one task from outside the pool and get its result (mean of " +
                          std::to_string(trips) + ")",
                   "us", 1e6, false);
    auto measure = [&](auto&& one) {
      std::uint64_t s = 0;
      bench::stopwatch sw;
      for (std::uint64_t i = 0; i < trips; ++i) s += one(i);
      auto r = sw.stop(static_cast<double>(trips));
      bench::validate(s == trips * (trips + 1) / 2, "round trip values");
      return r;
    };
    auto spindle_trip = [&](spindle::thread_pool_options o) {
      spindle::thread_pool pool(threads, std::move(o));
      return measure([&](std::uint64_t i) { return pool.submit([i] { return i + 1; }).get(); });
    };
    t.add("spindle submit + get (workers and get() spin)", [&] { return spindle_trip({}); }, true);
    t.add(std::string(sleeping_label) + "; get() polls briefly",
          [&] { return spindle_trip(sleeping()); });
#if defined(SPINDLE_BENCH_HAVE_TBB)
    t.add(tbb_label + " + std::future (sleeps)", [&] {
      tbb::task_group g;
      auto r = measure([&](std::uint64_t i) {
        std::packaged_task<std::uint64_t()> pt([i] { return i + 1; });
        auto f = pt.get_future();
        arena.execute([&] { g.run(const_callable_task{std::move(pt)}); });
        return f.get();
      });
      arena.execute([&] { g.wait(); });
      return r;
    });
    t.add("tbb arena: run + wait (the caller may run the task)", [&] {
      tbb::task_group g;
      return measure([&](std::uint64_t i) {
        std::uint64_t v = 0;
        arena.execute([&] {
          g.run([&v, i] { v = i + 1; });
          g.wait();
        });
        return v;
      });
    });
#endif
#if defined(SPINDLE_BENCH_HAVE_ASIO)
    t.add("asio::thread_pool, post(use_future(f)) + get", [&] {
      boost::asio::thread_pool pool(threads);
      auto r = measure([&](std::uint64_t i) {
        return boost::asio::post(pool, boost::asio::use_future([i] { return i + 1; })).get();
      });
      pool.join();
      return r;
    });
#endif
    t.add("mutex + condition_variable pool + std::packaged_task", [&] {
      mutex_pool pool(threads);
      return measure([&](std::uint64_t i) {
        auto pt = std::make_shared<std::packaged_task<std::uint64_t()>>([i] { return i + 1; });
        auto f = pt->get_future();
        pool.post(shared_task<std::uint64_t>{std::move(pt)});
        return f.get();
      });
    });
    t.run();
  }

  // 4. promise/future set + get ----------------------------------------------------------------
  {
    const std::uint64_t want = n * (n - 1) / 2;
    bench::suite one(a, "4a. promise set_value + future get, one thread", "M pairs/s", 1e-6);
    auto same_thread = [&](auto tag) {
      using P = typename decltype(tag)::first_type;
      return [&, n] {
        std::uint64_t s = 0;
        bench::stopwatch sw;
        for (std::uint64_t i = 0; i < n; ++i) {
          P p;
          auto f = p.get_future();
          p.set_value(i);
          s += f.get();
        }
        auto r = sw.stop(static_cast<double>(n));
        bench::validate(s == want, "promise sum");
        return r;
      };
    };
    using sp = std::pair<spindle::promise<std::uint64_t>, spindle::future<std::uint64_t>>;
    using stdp = std::pair<std::promise<std::uint64_t>, std::future<std::uint64_t>>;
    one.add("spindle::promise/future", same_thread(sp{}), true);
    one.add("std::promise/future", same_thread(stdp{}));
#if defined(SPINDLE_BENCH_HAVE_BOOST_THREAD)
    using bp = std::pair<boost::promise<std::uint64_t>, boost::future<std::uint64_t>>;
    one.add("boost::promise/future", same_thread(bp{}));
#endif
    one.run();

    // Across threads: this thread makes the pairs and reads the futures in order; another
    // thread sets the values in order, as fast as it can.
    bench::suite two(a, "4b. promise set_value on one thread, future get on another",
                     "M pairs/s", 1e-6);
    auto cross = [&](auto tag) {
      using P = typename decltype(tag)::first_type;
      using F = typename decltype(tag)::second_type;
      return [&, n] {
        std::vector<P> ps(n);
        std::vector<F> fs;
        fs.reserve(n);
        bench::stopwatch sw;
        for (auto& p : ps) fs.push_back(p.get_future());
        std::thread setter([&] {
          for (std::uint64_t i = 0; i < n; ++i) ps[i].set_value(i);
        });
        std::uint64_t s = 0;
        for (auto& f : fs) s += f.get();
        auto r = sw.stop(static_cast<double>(n));
        setter.join();
        bench::validate(s == want, "cross-thread promise sum");
        return r;
      };
    };
    two.add("spindle::promise/future (get() polls briefly)", cross(sp{}), true);
    two.add("std::promise/future", cross(stdp{}));
    two.run();
  }

  // 5. then chain ------------------------------------------------------------------------------
  {
    const std::uint64_t chains = a.smoke ? 1000 : n / 4;
    const std::uint64_t want = chains * (chains - 1) / 2 + 10 * chains;
    bench::suite t(a, "5. a 10-step then chain: build, fulfil, get", "k chains/s", 1e-3);
    t.add("spindle::future::then (inline)", [&] {
      std::uint64_t s = 0;
      bench::stopwatch sw;
      for (std::uint64_t i = 0; i < chains; ++i) {
        spindle::promise<std::uint64_t> p;
        auto f = p.get_future();
        auto g = std::move(f).then([](std::uint64_t x) { return x + 1; })
                     .then([](std::uint64_t x) { return x + 1; })
                     .then([](std::uint64_t x) { return x + 1; })
                     .then([](std::uint64_t x) { return x + 1; })
                     .then([](std::uint64_t x) { return x + 1; })
                     .then([](std::uint64_t x) { return x + 1; })
                     .then([](std::uint64_t x) { return x + 1; })
                     .then([](std::uint64_t x) { return x + 1; })
                     .then([](std::uint64_t x) { return x + 1; })
                     .then([](std::uint64_t x) { return x + 1; });
        p.set_value(i);
        s += g.get();
      }
      auto r = sw.stop(static_cast<double>(chains));
      bench::validate(s == want, "spindle chain sum");
      return r;
    }, true);
#if defined(SPINDLE_BENCH_HAVE_BOOST_THREAD)
    t.add("boost::future::then (launch::sync)", [&] {
      std::uint64_t s = 0;
      using bf = boost::future<std::uint64_t>;
      using step_fn = std::uint64_t (*)(bf);
      step_fn step = [](bf x) { return x.get() + 1; };
      bench::stopwatch sw;
      for (std::uint64_t i = 0; i < chains; ++i) {
        boost::promise<std::uint64_t> p;
        auto g = p.get_future()
                     .then(boost::launch::sync, step_fn{step})
                     .then(boost::launch::sync, step_fn{step})
                     .then(boost::launch::sync, step_fn{step})
                     .then(boost::launch::sync, step_fn{step})
                     .then(boost::launch::sync, step_fn{step})
                     .then(boost::launch::sync, step_fn{step})
                     .then(boost::launch::sync, step_fn{step})
                     .then(boost::launch::sync, step_fn{step})
                     .then(boost::launch::sync, step_fn{step})
                     .then(boost::launch::sync, step_fn{step});
        p.set_value(i);
        s += g.get();
      }
      auto r = sw.stop(static_cast<double>(chains));
      bench::validate(s == want, "boost chain sum");
      return r;
    });
#endif
    t.run();
  }

  // 6. nested fork-join ------------------------------------------------------------------------
  // Two grains: fine (leaves of fib(cutoff - 1), about 0.1 us of work per task) and coarse.
  const std::pair<int, int> grains[] = {{a.smoke ? 18 : 25, 4}, {a.smoke ? 20 : 32, 14}};
  for (auto [fib_n, cutoff] : grains) {
    const std::uint64_t want = fib_serial(fib_n);
    const std::uint64_t tasks = fork_count(fib_n, cutoff);
    bench::suite t(a, "6. nested fork-join: fib(" + std::to_string(fib_n) + "), a task per call with n >= " +
                          std::to_string(cutoff) + " (" + std::to_string(tasks) + " tasks)",
                   "M tasks/s", 1e-6);
    auto check = [&](std::uint64_t got, const char* who) {
      bench::validate(got == want, std::string(who) + ": fib value");
      bench::validate(forks.exchange(0) == tasks, std::string(who) + ": number of tasks");
    };
    auto spindle_fj = [&](spindle::thread_pool_options o) {
      spindle::thread_pool pool(threads, std::move(o));
      forks.store(0);
      bench::stopwatch sw;
      std::uint64_t got = pool.submit([&] { return fib_spindle(pool, fib_n, cutoff); }).get();
      auto r = sw.stop(static_cast<double>(tasks));
      check(got, "spindle fork-join");
      return r;
    };
    t.add("spindle: submit child, get() it on the worker", [&] { return spindle_fj({}); }, true);
    t.add(sleeping_label, [&] { return spindle_fj(sleeping()); });
#if defined(SPINDLE_BENCH_HAVE_TBB)
    t.add(tbb_label + ": run child, wait", [&] {
      forks.store(0);
      bench::stopwatch sw;
      std::uint64_t got = 0;
      arena.execute([&] { got = fib_tbb(fib_n, cutoff); });
      auto r = sw.stop(static_cast<double>(tasks));
      check(got, "tbb fork-join");
      return r;
    });
#endif
    t.add("one thread, the same recursion", [&] {
      forks.store(0);
      bench::stopwatch sw;
      std::uint64_t got = fib_one_thread(fib_n, cutoff);
      auto r = sw.stop(static_cast<double>(tasks));
      check(got, "one-thread fork-join");
      return r;
    });
    t.note("the tbb row's caller runs tasks too (it sits in the arena's reserved slot); "
           "spindle's root is submitted to the pool, so the caller only waits.");
    t.run();
  }
  return 0;
}
