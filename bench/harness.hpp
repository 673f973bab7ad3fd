// bench/harness.hpp - what every spindle benchmark shares: command-line sizes, thread pinning,
// median-of-N timing, result validation, latency percentiles, and a table with ratios to peers.
//
//   bench::args a(argc, argv, {.items = 10'000'000});   // --items N --runs K --smoke
//   bench::table t("bounded_queue 1P1C", "M items/s");
//   t.add("spindle", median_rate, /*ours=*/true);
//   t.add("tbb::concurrent_bounded_queue", tbb_rate);
//   t.print();                                          // ratio column: spindle / peer
#pragma once

#include <pthread.h>  // pthread_setaffinity_np
#include <sched.h>    // cpu_set_t

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace bench {

struct sizes {
  std::uint64_t items = 1'000'000;
  int runs = 5;
};

/// Command line: --items N, --runs K, --smoke (tiny sizes, one run: CI checks that it runs).
struct args {
  std::uint64_t items;
  int runs;
  bool smoke = false;

  args(int argc, char** argv, sizes defaults) : items(defaults.items), runs(defaults.runs) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--items" && i + 1 < argc) {
        items = std::strtoull(argv[++i], nullptr, 10);
      } else if (a == "--runs" && i + 1 < argc) {
        runs = std::atoi(argv[++i]);
      } else if (a == "--smoke") {
        smoke = true;
      } else {
        std::fprintf(stderr, "usage: %s [--items N] [--runs K] [--smoke]\n", argv[0]);
        std::exit(2);
      }
    }
    if (smoke) {
      items = std::min<std::uint64_t>(items, 10'000);
      runs = 1;
    }
    if (runs < 1) runs = 1;
  }
};

/// Pins the calling thread to `cpu` (modulo the CPUs available). Returns false if refused.
inline bool pin_to_cpu(unsigned cpu) {
  unsigned n = std::max(1u, std::thread::hardware_concurrency());
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu % n, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof(set), &set) == 0;
}

/// Where a benchmark's threads run.
enum class placement {
  none,         ///< the scheduler decides
  split,        ///< producers on even CPUs, consumers on odd CPUs: every hand-off crosses cores
  same_core,    ///< every thread on CPU 0
};

inline const char* to_string(placement p) {
  switch (p) {
    case placement::none:
      return "unpinned";
    case placement::split:
      return "pinned, producers and consumers on different cores";
    case placement::same_core:
      return "pinned, all threads on one core";
  }
  return "?";
}

/// Pins a producer (role 0) or consumer (role 1) thread number `i` according to `p`.
inline void place(placement p, int role, unsigned i) {
  if (p == placement::split) pin_to_cpu(2 * i + static_cast<unsigned>(role));
  if (p == placement::same_core) pin_to_cpu(0);
}

using clock = std::chrono::steady_clock;

inline double seconds_since(clock::time_point t0) {
  return std::chrono::duration<double>(clock::now() - t0).count();
}

/// Median of `v` (v is reordered).
inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

/// The q-th quantile (0..1) of `v` (v is reordered).
inline double quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  auto i = static_cast<std::size_t>(q * static_cast<double>(v.size() - 1));
  return v[i];
}

/// Runs `once` (which returns a rate, higher is better) `runs` times; returns the median.
template <class F>
double median_of(int runs, F once) {
  std::vector<double> r;
  for (int i = 0; i < runs; ++i) r.push_back(once());
  return median(r);
}

/// Stops the benchmark with a message if a result is wrong: a fast wrong answer is no answer.
inline void validate(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "VALIDATION FAILED: %s\n", what.c_str());
    std::exit(1);
  }
}

/// A table of one workload: one row per implementation, with the ratio of ours to each peer.
class table {
 public:
  /// `higher_is_better`: throughput (true) or latency (false); ratios read "x times better".
  table(std::string title, std::string unit, bool higher_is_better = true)
      : title_(std::move(title)), unit_(std::move(unit)), higher_(higher_is_better) {}

  void add(std::string name, double value, bool ours = false) {
    rows_.push_back({std::move(name), value, ours});
  }

  void print() const {
    const row* us = nullptr;
    for (const auto& r : rows_)
      if (r.ours) us = &r;
    std::printf("\n%s\n", title_.c_str());
    std::printf("| %-44s | %14s | %12s |\n", "implementation", unit_.c_str(), "spindle vs");
    std::printf("|%s|%s|%s|\n", std::string(46, '-').c_str(), std::string(16, '-').c_str(),
                std::string(14, '-').c_str());
    for (const auto& r : rows_) {
      char ratio[32] = "-";
      if (us != nullptr && !r.ours && r.value > 0 && us->value > 0)
        std::snprintf(ratio, sizeof ratio, "%.2fx",
                      higher_ ? us->value / r.value : r.value / us->value);
      std::printf("| %-44s | %14.3f | %12s |\n", r.name.c_str(), r.value, ratio);
    }
    std::fflush(stdout);
  }

 private:
  struct row {
    std::string name;
    double value;
    bool ours;
  };
  std::string title_;
  std::string unit_;
  bool higher_;
  std::vector<row> rows_;
};

/// Keeps the optimizer from deleting a computation whose result is otherwise unused.
template <class T>
inline void do_not_optimize(const T& v) {
  asm volatile("" : : "g"(&v) : "memory");
}

}  // namespace bench
