// bench/harness.hpp - the one method every spindle benchmark follows.
//
//   bench::args a(argc, argv, {.items = 10'000'000});      // --items N --runs K --warmup W --smoke
//   bench::suite t(a, "bounded_queue 1P1C", "M items/s", 1e-6);
//   t.add("spindle::bounded_queue", [&] { ...; return bench::sample{n, wall, cpu}; }, true);
//   t.add("moodycamel + tokens, pre-sized", [&] { ... });
//   t.run();                                                // warm-up, interleaved runs, table
//
// The method (bench/RESULTS.md, "How to read these tables", says the same for readers):
//   - Warm-up: --warmup rounds (default 1) of every row run first and are thrown away (page
//     faults, thread creation, CPU frequency, the allocator's first arenas).
//   - Interleaving: round r runs every row once, rows in turn, then round r + 1; the first row
//     of a round rotates, so that no row always runs first or last. Load from other processes
//     then falls on every row alike, and one row's drift cannot pass for a difference.
//   - At least 5 recorded rounds by default (--runs K); each row prints min, median and max of
//     its rounds, and the ratio column divides medians.
//   - A round of a row lasts at least --min-time seconds (default 0.25) of timed work: a short
//     workload is repeated, same size and fresh state, and its operations and times summed.
//   - Every round of every row returns a sample {ops, wall seconds, CPU seconds}; the row's
//     callable must validate its own result (bench::validate: counts and checksums computed
//     from what was actually received, so that they can fail) before it returns.
//   - CPU time per operation (the whole process's CPU, every thread: spinning shows up here,
//     clock_gettime(CLOCK_PROCESS_CPUTIME_ID)) is printed beside the wall-clock rate.
//   - --smoke: tiny sizes, no warm-up, one round (CI runs every bench this way: seconds).
//   - Benches are built with NDEBUG (bench/meson.build) so that header-only peers' asserts
//     are compiled out, as in their users' release builds.
#pragma once

#include <pthread.h>  // pthread_setaffinity_np
#include <sched.h>    // cpu_set_t
#include <time.h>     // clock_gettime

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <unistd.h>  // _exit
#include <vector>

namespace bench {

struct sizes {
  std::uint64_t items = 1'000'000;
  int runs = 5;
};

/// Command line: --items N, --runs K (recorded rounds, >= 1), --warmup W (discarded rounds),
/// --min-time S (a row's round repeats its workload until S seconds of it were timed),
/// --smoke (tiny sizes, one round, no warm-up, no repetition: CI checks that it runs).
struct args {
  std::uint64_t items;
  int runs;
  int warmup = 1;
  double min_time = 0.25;
  bool smoke = false;

  args(int argc, char** argv, sizes defaults) : items(defaults.items), runs(defaults.runs) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--items" && i + 1 < argc) {
        items = std::strtoull(argv[++i], nullptr, 10);
      } else if (a == "--runs" && i + 1 < argc) {
        runs = std::atoi(argv[++i]);
      } else if (a == "--warmup" && i + 1 < argc) {
        warmup = std::atoi(argv[++i]);
      } else if (a == "--min-time" && i + 1 < argc) {
        min_time = std::strtod(argv[++i], nullptr);
      } else if (a == "--smoke") {
        smoke = true;
      } else {
        std::fprintf(stderr, "usage: %s [--items N] [--runs K] [--warmup W] [--min-time S] [--smoke]\n",
                     argv[0]);
        std::exit(2);
      }
    }
    if (smoke) {
      items = std::min<std::uint64_t>(items, 10'000);
      runs = 1;
      warmup = 0;
      min_time = 0;
    }
    if (items < 1) items = 1;
    if (runs < 1) runs = 1;
    if (warmup < 0) warmup = 0;
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

/// Lets the calling thread run on every CPU again.
inline void unpin() {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (unsigned i = 0; i < std::max(1u, std::thread::hardware_concurrency()); ++i)
    CPU_SET(i, &set);
  pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
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

/// CPU seconds used so far by every thread of this process.
inline double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

/// One round of one row: `ops` operations took `wall` seconds and `cpu` CPU seconds of this
/// process (NaN when unknown, e.g. work done by a subprocess).
struct sample {
  double ops = 0;
  double wall = 0;
  double cpu = std::nan("");
};

/// Wall clock and process CPU clock started together; stop(ops) reads both.
class stopwatch {
 public:
  stopwatch() : cpu0_(process_cpu_seconds()), t0_(clock::now()) {}
  sample stop(double ops) const {
    double wall = seconds_since(t0_);
    return {ops, wall, process_cpu_seconds() - cpu0_};
  }
  clock::time_point start() const { return t0_; }
  double cpu_start() const { return cpu0_; }

 private:
  double cpu0_;
  clock::time_point t0_;
};

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

/// Stops the benchmark with a message if a result is wrong: a fast wrong answer is no answer.
inline void validate(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "VALIDATION FAILED: %s\n", what.c_str());
    std::fflush(stdout);
    std::exit(1);
  }
}

/// Ends the process with a message if the bench has not finished within `seconds` (a row that
/// hangs, e.g. a deadlocked nested get(), is reported instead of blocking CI forever).
inline void watchdog(double seconds, std::string what) {
  std::thread([seconds, what = std::move(what)] {
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    std::fprintf(stderr, "TIMED OUT after %.0f s: %s\n", seconds, what.c_str());
    std::fflush(stdout);
    std::fflush(stderr);
    ::_exit(3);
  }).detach();
}

/// One table of one workload. Rows are added with a callable that runs the workload once,
/// validates it and returns its sample; run() warms up, runs the rounds interleaved and prints.
///
/// The ratio column ("spindle vs") is spindle's median over the peer's median (throughput) or
/// the peer's over spindle's (latency): above 1, spindle is ahead.
///
/// `unit` names the value printed, `scale` converts: for a rate (higher is better) the value is
/// ops / wall * scale (scale 1e-6 gives M ops/s); for a latency table (higher_is_better false)
/// it is wall / ops * scale (scale 1e9 gives ns per op).
class suite {
 public:
  suite(const args& a, std::string title, std::string unit, double scale,
        bool higher_is_better = true)
      : a_(a), title_(std::move(title)), unit_(std::move(unit)), scale_(scale),
        higher_(higher_is_better) {}

  /// `ours` marks the row the ratio column compares with (the last such row added).
  void add(std::string name, std::function<sample()> once, bool ours = false) {
    rows_.push_back({std::move(name), std::move(once), ours, {}, {}, {}});
  }

  /// A peer row whose ratio is read against the spindle row named `against` (added before):
  /// for tables that hold several like-for-like pairs (one at a time, batched, ...).
  void add_peer(std::string name, std::function<sample()> once, std::string against) {
    rows_.push_back({std::move(name), std::move(once), false, {}, {}, std::move(against)});
  }

  /// A line printed under the table (what a row measures, why a row is missing).
  void note(std::string n) { notes_.push_back(std::move(n)); }

  void run() {
    const int rounds = a_.warmup + a_.runs;
    const std::size_t n = rows_.size();
    for (int r = 0; r < rounds; ++r)
      for (std::size_t k = 0; k < n; ++k) {
        auto& row = rows_[(k + static_cast<std::size_t>(r)) % n];
        sample s = row.once();
        unpin();
        // A short workload is repeated (same size, fresh state) until min_time seconds of it
        // were timed, so that no row's figure rests on a few milliseconds.
        for (int rep = 1; s.wall > 0 && s.wall < a_.min_time && rep < 10000; ++rep) {
          sample more = row.once();
          unpin();
          s.ops += more.ops;
          s.wall += more.wall;
          s.cpu += more.cpu;
        }
        if (r < a_.warmup) continue;
        row.values.push_back(value(s));
        if (s.ops > 0 && !std::isnan(s.cpu)) row.cpu_us.push_back(s.cpu / s.ops * 1e6);
      }
    print();
  }

  /// The median of row `name` after run(), or 0.
  double median_of(const std::string& name) const {
    for (const auto& r : rows_)
      if (r.name == name) return median(r.values);
    return 0;
  }

 private:
  double value(const sample& s) const {
    if (s.wall <= 0 || s.ops <= 0) return 0;
    return higher_ ? s.ops / s.wall * scale_ : s.wall / s.ops * scale_;
  }

  void print() const {
    const row* us = nullptr;
    for (const auto& r : rows_)
      if (r.ours) us = &r;
    std::printf("\n### %s\n", title_.c_str());
    std::printf("(%s; median of %d rounds after %d warm-up, rows interleaved, each round >= %g s; "
                "CPU = process CPU time per op, all threads)\n\n",
                higher_ ? "higher is better" : "lower is better", a_.runs, a_.warmup,
                a_.min_time);
    std::printf("| %-56s | %10s | %10s | %10s | %10s | %10s |\n", "implementation",
                ("median " + unit_).c_str(), "min", "max", "CPU us/op", "spindle vs");
    std::printf("|%s|%s|%s|%s|%s|%s|\n", std::string(58, '-').c_str(),
                std::string(12, '-').c_str(), std::string(12, '-').c_str(),
                std::string(12, '-').c_str(), std::string(12, '-').c_str(),
                std::string(12, '-').c_str());
    for (const auto& r : rows_) {
      const row* ref = us;
      if (!r.against.empty())
        for (const auto& o : rows_)
          if (o.name == r.against) ref = &o;
      const double ref_med = ref ? median(ref->values) : 0;
      double med = median(r.values);
      double lo = r.values.empty() ? 0 : *std::min_element(r.values.begin(), r.values.end());
      double hi = r.values.empty() ? 0 : *std::max_element(r.values.begin(), r.values.end());
      char ratio[32] = "-";
      if (ref != nullptr && &r != ref && med > 0 && ref_med > 0)
        std::snprintf(ratio, sizeof ratio, "%.3gx", higher_ ? ref_med / med : med / ref_med);
      char cpu[32] = "n/a";
      if (!r.cpu_us.empty()) std::snprintf(cpu, sizeof cpu, "%.4g", median(r.cpu_us));
      std::printf("| %-56s | %10.4g | %10.4g | %10.4g | %10s | %10s |\n", r.name.c_str(), med, lo,
                  hi, cpu, ratio);
    }
    for (const auto& n : notes_) std::printf("\n- %s", n.c_str());
    if (!notes_.empty()) std::printf("\n");
    std::fflush(stdout);
  }

  struct row {
    std::string name;
    std::function<sample()> once;
    bool ours;
    std::vector<double> values;
    std::vector<double> cpu_us;
    std::string against;  // the spindle row this peer's ratio is read against; empty: ours
  };
  const args& a_;
  std::string title_;
  std::string unit_;
  double scale_;
  bool higher_;
  std::vector<row> rows_;
  std::vector<std::string> notes_;
};

/// Legacy (kept for benches not yet on bench::suite, e.g. a new file written in parallel): runs
/// `once` (which returns a rate) `runs` times, one row at a time; returns the median. New rows
/// use bench::suite, which warms up and interleaves.
template <class F>
double median_of(int runs, F once) {
  std::vector<double> r;
  for (int i = 0; i < runs; ++i) r.push_back(once());
  return median(r);
}

/// Legacy table of medians (see median_of); bench::suite prints min/median/max and CPU time.
class table {
 public:
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

/// True if options type O has a `spin` knob (spindle's thread_pool_options, actor_options): the
/// "spin 0" rows exist only where it does.
template <class O>
constexpr bool has_spin_knob = requires(O o) { o.spin = 0; };

/// Default options of type O; with `sleep`, idle threads sleep at once (spin 0) where O can.
template <class O>
O options_sleeping(bool sleep = true) {
  O o{};
  if constexpr (has_spin_knob<O>)
    if (sleep) o.spin = 0;
  return o;
}

/// Keeps the optimizer from deleting a computation whose result is otherwise unused.
template <class T>
inline void do_not_optimize(const T& v) {
  asm volatile("" : : "g"(&v) : "memory");
}

}  // namespace bench
