// bench/bench_executor.cpp - thread_pool and future against asio, tbb, a mutex pool and the
// standard library.
//
// Workloads (every implementation runs the same one, in the same process, results validated):
//   1. post N empty tasks, then wait for all           (tasks/s)
//   2. submit N tasks returning an int, get every future (tasks/s)
//   3. submit one task and get its result, repeated    (round trip, median and p99 in us)
//   4. promise set_value + future get, one thread and across two threads (pairs/s)
//   5. a 10-step `then` chain built, fulfilled and read (chains/s)
//
//   bench_executor [--items N] [--runs K] [--smoke]
#if defined(SPINDLE_BENCH_HAVE_BOOST_THREAD)
#define BOOST_THREAD_VERSION 4  // future::then with launch::sync
#include <boost/thread/future.hpp>
#endif
#if defined(SPINDLE_BENCH_HAVE_ASIO)
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#endif
#if defined(SPINDLE_BENCH_HAVE_TBB)
#include <oneapi/tbb/global_control.h>
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

// tbb::task_group::run calls its task through a const reference.
struct const_callable_task {
  mutable std::packaged_task<std::uint64_t()> pt;
  void operator()() const { pt(); }
};

double rate(std::uint64_t n, bench::clock::time_point t0) {
  return static_cast<double>(n) / bench::seconds_since(t0) / 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  bench::args a(argc, argv, {.items = 1'000'000, .runs = 5});
  const std::size_t threads = spindle::thread_pool::default_threads();
  const std::uint64_t n = a.items;
  std::printf("bench_executor: %llu items, median of %d runs, %zu worker threads\n",
              static_cast<unsigned long long>(n), a.runs, threads);
#if defined(SPINDLE_BENCH_HAVE_TBB)
  tbb::global_control tbb_threads(tbb::global_control::max_allowed_parallelism, threads);
#endif

  // 1. post + wait ---------------------------------------------------------------------------
  {
    bench::table t("1. post " + std::to_string(n) + " empty tasks, then wait", "M tasks/s");
    t.add("spindle::thread_pool::post", bench::median_of(a.runs, [&] {
            spindle::thread_pool pool(threads);
            auto t0 = bench::clock::now();
            for (std::uint64_t i = 0; i < n; ++i) pool.post([] { count_one(); });
            pool.wait_idle();
            double r = rate(n, t0);
            bench::validate(take_count() == n, "spindle post count");
            return r;
          }), true);
#if defined(SPINDLE_BENCH_HAVE_TBB)
    t.add("tbb::task_group::run", bench::median_of(a.runs, [&] {
            tbb::task_group g;
            auto t0 = bench::clock::now();
            for (std::uint64_t i = 0; i < n; ++i) g.run([] { count_one(); });
            g.wait();
            double r = rate(n, t0);
            bench::validate(take_count() == n, "tbb count");
            return r;
          }));
#endif
#if defined(SPINDLE_BENCH_HAVE_ASIO)
    t.add("boost::asio::thread_pool (asio::post)", bench::median_of(a.runs, [&] {
            boost::asio::thread_pool pool(threads);
            auto t0 = bench::clock::now();
            for (std::uint64_t i = 0; i < n; ++i) boost::asio::post(pool, [] { count_one(); });
            pool.join();
            double r = rate(n, t0);
            bench::validate(take_count() == n, "asio count");
            return r;
          }));
#endif
    t.add("mutex + condition_variable pool", bench::median_of(a.runs, [&] {
            mutex_pool pool(threads);
            auto t0 = bench::clock::now();
            for (std::uint64_t i = 0; i < n; ++i) pool.post([] { count_one(); });
            pool.wait_idle();
            double r = rate(n, t0);
            bench::validate(take_count() == n, "mutex pool count");
            return r;
          }));
    t.print();
  }

  // 2. submit + future -------------------------------------------------------------------------
  {
    const std::uint64_t want = n * (n - 1) / 2;
    bench::table t("2. submit " + std::to_string(n) + " tasks returning an int, get every future",
                   "M tasks/s");
    t.add("spindle::thread_pool::submit", bench::median_of(a.runs, [&] {
            spindle::thread_pool pool(threads);
            std::vector<spindle::future<std::uint64_t>> fs;
            fs.reserve(n);
            auto t0 = bench::clock::now();
            for (std::uint64_t i = 0; i < n; ++i) fs.push_back(pool.submit([i] { return i; }));
            std::uint64_t s = 0;
            for (auto& f : fs) s += f.get();
            double r = rate(n, t0);
            bench::validate(s == want, "spindle submit sum");
            return r;
          }), true);
#if defined(SPINDLE_BENCH_HAVE_TBB)
    t.add("tbb::task_group + std::packaged_task", bench::median_of(a.runs, [&] {
            tbb::task_group g;
            std::vector<std::future<std::uint64_t>> fs;
            fs.reserve(n);
            auto t0 = bench::clock::now();
            for (std::uint64_t i = 0; i < n; ++i) {
              std::packaged_task<std::uint64_t()> pt([i] { return i; });
              fs.push_back(pt.get_future());
              g.run(const_callable_task{std::move(pt)});
            }
            std::uint64_t s = 0;
            for (auto& f : fs) s += f.get();
            double r = rate(n, t0);
            g.wait();
            bench::validate(s == want, "tbb submit sum");
            return r;
          }));
#endif
#if defined(SPINDLE_BENCH_HAVE_ASIO)
    t.add("asio::thread_pool + std::packaged_task", bench::median_of(a.runs, [&] {
            boost::asio::thread_pool pool(threads);
            std::vector<std::future<std::uint64_t>> fs;
            fs.reserve(n);
            auto t0 = bench::clock::now();
            for (std::uint64_t i = 0; i < n; ++i) {
              std::packaged_task<std::uint64_t()> pt([i] { return i; });
              fs.push_back(pt.get_future());
              boost::asio::post(pool, std::move(pt));
            }
            std::uint64_t s = 0;
            for (auto& f : fs) s += f.get();
            double r = rate(n, t0);
            pool.join();
            bench::validate(s == want, "asio submit sum");
            return r;
          }));
#endif
    t.print();
  }

  // 3. round trip latency ----------------------------------------------------------------------
  {
    const std::uint64_t trips = a.smoke ? 1000 : 20000;
    bench::table med("3a. submit one task, get its result: median", "us", false);
    bench::table p99("3b. submit one task, get its result: p99", "us", false);
    auto measure = [&](auto&& one) {
      std::vector<double> us;
      us.reserve(trips);
      for (std::uint64_t i = 0; i < trips; ++i) {
        auto t0 = bench::clock::now();
        bench::validate(one(i) == i + 1, "round trip value");
        us.push_back(bench::seconds_since(t0) * 1e6);
      }
      return std::pair{bench::quantile(us, 0.5), bench::quantile(us, 0.99)};
    };
    {
      spindle::thread_pool pool(threads);
      auto [m, p] = measure([&](std::uint64_t i) { return pool.submit([i] { return i + 1; }).get(); });
      med.add("spindle::thread_pool::submit + get", m, true);
      p99.add("spindle::thread_pool::submit + get", p, true);
    }
#if defined(SPINDLE_BENCH_HAVE_TBB)
    {
      tbb::task_group g;
      auto [m, p] = measure([&](std::uint64_t i) {
        std::packaged_task<std::uint64_t()> pt([i] { return i + 1; });
        auto f = pt.get_future();
        g.run(const_callable_task{std::move(pt)});
        return f.get();
      });
      g.wait();
      med.add("tbb::task_group + std::packaged_task", m);
      p99.add("tbb::task_group + std::packaged_task", p);
    }
#endif
#if defined(SPINDLE_BENCH_HAVE_ASIO)
    {
      boost::asio::thread_pool pool(threads);
      auto [m, p] = measure([&](std::uint64_t i) {
        std::packaged_task<std::uint64_t()> pt([i] { return i + 1; });
        auto f = pt.get_future();
        boost::asio::post(pool, std::move(pt));
        return f.get();
      });
      pool.join();
      med.add("asio::thread_pool + std::packaged_task", m);
      p99.add("asio::thread_pool + std::packaged_task", p);
    }
#endif
    med.print();
    p99.print();
  }

  // 4. promise/future set + get ----------------------------------------------------------------
  {
    const std::uint64_t want = n * (n - 1) / 2;
    bench::table one("4a. promise set_value + future get, one thread", "M pairs/s");
    one.add("spindle::promise/future", bench::median_of(a.runs, [&] {
              std::uint64_t s = 0;
              auto t0 = bench::clock::now();
              for (std::uint64_t i = 0; i < n; ++i) {
                spindle::promise<std::uint64_t> p;
                auto f = p.get_future();
                p.set_value(i);
                s += f.get();
              }
              double r = rate(n, t0);
              bench::validate(s == want, "spindle promise sum");
              return r;
            }), true);
    one.add("std::promise/future", bench::median_of(a.runs, [&] {
              std::uint64_t s = 0;
              auto t0 = bench::clock::now();
              for (std::uint64_t i = 0; i < n; ++i) {
                std::promise<std::uint64_t> p;
                auto f = p.get_future();
                p.set_value(i);
                s += f.get();
              }
              double r = rate(n, t0);
              bench::validate(s == want, "std promise sum");
              return r;
            }));
#if defined(SPINDLE_BENCH_HAVE_BOOST_THREAD)
    one.add("boost::promise/future", bench::median_of(a.runs, [&] {
              std::uint64_t s = 0;
              auto t0 = bench::clock::now();
              for (std::uint64_t i = 0; i < n; ++i) {
                boost::promise<std::uint64_t> p;
                auto f = p.get_future();
                p.set_value(i);
                s += f.get();
              }
              double r = rate(n, t0);
              bench::validate(s == want, "boost promise sum");
              return r;
            }));
#endif
    one.print();

    // Across threads: this thread makes the pairs and reads the futures in order; another
    // thread sets the values in order, as fast as it can.
    bench::table two("4b. promise set_value on one thread, future get on another", "M pairs/s");
    auto cross = [&](auto tag) {
      using P = typename decltype(tag)::first_type;
      using F = typename decltype(tag)::second_type;
      return bench::median_of(a.runs, [&] {
        std::vector<P> ps(n);
        std::vector<F> fs;
        fs.reserve(n);
        auto t0 = bench::clock::now();
        for (auto& p : ps) fs.push_back(p.get_future());
        std::thread setter([&] {
          for (std::uint64_t i = 0; i < n; ++i) ps[i].set_value(i);
        });
        std::uint64_t s = 0;
        for (auto& f : fs) s += f.get();
        double r = rate(n, t0);
        setter.join();
        bench::validate(s == want, "cross-thread promise sum");
        return r;
      });
    };
    two.add("spindle::promise/future",
            cross(std::pair<spindle::promise<std::uint64_t>, spindle::future<std::uint64_t>>{}),
            true);
    two.add("std::promise/future",
            cross(std::pair<std::promise<std::uint64_t>, std::future<std::uint64_t>>{}));
    two.print();
  }

  // 5. then chain ------------------------------------------------------------------------------
  {
    const std::uint64_t chains = a.smoke ? 1000 : n / 4;
    bench::table t("5. a 10-step then chain: build, fulfil, get", "k chains/s");
    t.add("spindle::future::then (inline)", bench::median_of(a.runs, [&] {
            std::uint64_t s = 0;
            auto t0 = bench::clock::now();
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
            double r = rate(chains, t0) * 1e3;
            bench::validate(s == chains * (chains - 1) / 2 + 10 * chains, "spindle chain sum");
            return r;
          }), true);
#if defined(SPINDLE_BENCH_HAVE_BOOST_THREAD)
    t.add("boost::future::then (launch::sync)", bench::median_of(a.runs, [&] {
            std::uint64_t s = 0;
            using bf = boost::future<std::uint64_t>;
            using step_fn = std::uint64_t (*)(bf);
            step_fn step = [](bf x) { return x.get() + 1; };
            auto t0 = bench::clock::now();
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
            double r = rate(chains, t0) * 1e3;
            bench::validate(s == chains * (chains - 1) / 2 + 10 * chains, "boost chain sum");
            return r;
          }));
#endif
    t.print();
  }
  return 0;
}
