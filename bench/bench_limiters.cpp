// bench/bench_limiters.cpp - try_acquire() throughput of spindle::token_bucket against a
// mutex-protected token bucket (the textbook design), 1 thread and 2 threads contending on
// different cores, on the real steady_clock.
//
// Two workloads, the same for every implementation:
//   admitting   rate 1e9/s, burst 1e6: every call takes a token (a write per call).
//   saturated   rate 1000/s, burst 100: nearly every call is refused (the overload case).
// Validation: admitting admits every call; saturated admits at most burst + rate * elapsed.
// A last table shows the other spindle limiters on the admitting workload, 1 thread.
//
// Method: harness.hpp (warm-up, rows interleaved, min / median / max, CPU time per call).
//
//   bench_limiters [--items N] [--runs K] [--warmup W] [--smoke]   N: calls per run, all threads
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <spindle/rate_limit.hpp>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "harness.hpp"

namespace {

using steady = std::chrono::steady_clock;

// The baseline: tokens and the last refill time under one mutex.
class mutex_token_bucket {
 public:
  mutex_token_bucket(double rate, std::uint64_t burst)
      : rate_(rate), burst_(static_cast<double>(burst)), tokens_(burst_), last_(steady::now()) {}

  bool try_acquire(std::uint64_t n = 1) {
    std::lock_guard lock(mu_);
    auto now = steady::now();
    tokens_ =
        std::min(burst_, tokens_ + std::chrono::duration<double>(now - last_).count() * rate_);
    last_ = now;
    if (tokens_ < static_cast<double>(n)) return false;
    tokens_ -= static_cast<double>(n);
    return true;
  }

 private:
  const double rate_;
  const double burst_;
  std::mutex mu_;
  double tokens_;            // guarded by mu_
  steady::time_point last_;  // guarded by mu_
};

struct workload {
  const char* name;
  double rate;
  std::uint64_t burst;
};

struct outcome {
  bench::sample s;
  std::uint64_t admitted;
};

// `threads` threads (pinned to CPUs 0, 1, ...) call try_acquire() `calls / threads` times each.
template <class Limiter>
outcome run_once(Limiter& limiter, unsigned threads, std::uint64_t calls) {
  std::atomic<bool> go{false};
  std::atomic<unsigned> ready{0};
  std::atomic<std::uint64_t> admitted{0};
  const std::uint64_t per_thread = calls / threads;
  std::vector<std::thread> ts;
  for (unsigned t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      bench::pin_to_cpu(t);
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) {
      }
      std::uint64_t mine = 0;
      for (std::uint64_t i = 0; i < per_thread; ++i) mine += limiter.try_acquire() ? 1 : 0;
      admitted.fetch_add(mine);
    });
  }
  while (ready.load() < threads) {
  }
  bench::stopwatch sw;
  go.store(true, std::memory_order_release);
  for (auto& t : ts) t.join();
  return {sw.stop(static_cast<double>(per_thread * threads)), admitted.load()};
}

template <class Make>
bench::sample once(const workload& w, unsigned threads, const bench::args& a, Make make,
            const std::string& who) {
  auto limiter = make(w);
  const std::uint64_t calls = a.items / threads * threads;
  outcome o = run_once(*limiter, threads, calls);
  if (w.rate >= 1e9) {
    bench::validate(o.admitted == calls, who + " " + w.name + ": every call must be admitted");
  } else {
    // +1 s of slack in the bound: the bucket is built (and starts full) before the clock starts.
    const double bound = static_cast<double>(w.burst) + w.rate * (o.s.wall + 1.0);
    bench::validate(static_cast<double>(o.admitted) <= bound,
                    who + " " + w.name + ": admitted more than burst + rate * elapsed");
    bench::validate(o.admitted >= 1, who + " " + w.name + ": admitted nothing");
  }
  return o.s;
}

auto make_spindle = [](const workload& x) {
  return std::make_unique<spindle::token_bucket<>>(x.rate, x.burst);
};
auto make_mutex = [](const workload& x) {
  return std::make_unique<mutex_token_bucket>(x.rate, x.burst);
};

}  // namespace

int main(int argc, char** argv) {
  bench::args a(argc, argv, {.items = 4'000'000, .runs = 5});
  std::printf("bench_limiters: %llu calls per run, %d rounds, %u CPUs\n",
              static_cast<unsigned long long>(a.items), a.runs,
              std::thread::hardware_concurrency());

  bench::watchdog(a.smoke ? 240 : 1800, "bench_limiters");
  const workload workloads[] = {{"admitting", 1e9, 1'000'000}, {"saturated", 1000.0, 100}};
  for (const auto& w : workloads) {
    for (unsigned threads : {1u, 2u}) {
      std::string title = std::string("try_acquire, ") + w.name + ", " + std::to_string(threads) +
                          (threads == 1 ? " thread" : " threads contending (CPUs 0 and 1)");
      bench::suite t(a, title, "M calls/s", 1e-6);
      t.add("spindle::token_bucket (CAS)",
            [&, threads] { return once(w, threads, a, make_spindle, "token_bucket"); }, true);
      t.add("mutex token bucket (baseline)",
            [&, threads] { return once(w, threads, a, make_mutex, "mutex baseline"); });
      t.run();
    }
  }

  // The other limiters, for scale (mutex-guarded by design; not part of the targets).
  const workload admit = workloads[0];
  const std::uint64_t big = 1ull << 40;
  bench::suite others(a, "other spindle limiters, try_acquire, admitting, 1 thread", "M calls/s",
                      1e-6);
  others.add("spindle::token_bucket (CAS)",
             [&] { return once(admit, 1, a, make_spindle, "token_bucket"); }, true);
  others.add("spindle::sliding_window_counter", [&] {
    return once(
        admit, 1, a,
        [&](const workload&) {
          return std::make_unique<spindle::sliding_window_counter<>>(big,
                                                                     std::chrono::milliseconds(1));
        },
        "sliding_window_counter");
  });
  others.add("spindle::sliding_window_log", [&] {
    return once(
        admit, 1, a,
        [&](const workload&) {
          return std::make_unique<spindle::sliding_window_log<>>(big, std::chrono::milliseconds(1));
        },
        "sliding_window_log");
  });
  others.run();
  return 0;
}
