// bench/bench_patterns.cpp - the composition patterns against their peers, same workload, one run:
//   1. a 3-stage pipeline (parse, square, sum) over --items strings: spindle::pipeline vs
//      tbb::parallel_pipeline and a single-thread loop;
//   2. sum of squares over 40 x --items uint32: spindle::map_reduce vs tbb::parallel_reduce,
//      std::transform_reduce(std::execution::par) and a single thread;
//   3. word count over a generated text of 20 x --items bytes: spindle::map_reduce vs tbb
//      (per-thread maps) and a single thread;
//   4. actor ping-pong, --items / 5 messages: spindle::actor (own threads, and on a thread_pool)
//      vs CAF 0.17 (when built with SPINDLE_BENCH_HAVE_CAF and linked with -lcaf_core).
// Defaults (--items 5000000): 5M items, 200M uint32, 100 MB of text, 1M messages.
// Every result is validated (count and checksum) before it is reported.
#include <spindle/actor.hpp>
#include <spindle/map_reduce.hpp>
#include <spindle/pipeline.hpp>
#include <spindle/thread_pool.hpp>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <future>
#include <numeric>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "harness.hpp"

#if SPINDLE_BENCH_HAVE_TBB
#include <execution>  // std::execution::par (libstdc++ runs it on TBB)
#include <tbb/blocked_range.h>
#include <tbb/enumerable_thread_specific.h>
#include <tbb/global_control.h>
#include <tbb/parallel_for.h>
#include <tbb/parallel_pipeline.h>
#include <tbb/parallel_reduce.h>
#endif

#if SPINDLE_BENCH_HAVE_CAF
#include <caf/all.hpp>
#endif

namespace {

const unsigned cores = std::max(1u, std::thread::hardware_concurrency());

// Runs each implementation once per round, round after round, so that load from other processes
// (this machine is shared) falls on all of them alike; reports the median of each.
class contenders {
 public:
  void add(std::string name, std::function<double()> once, bool ours = false) {
    list_.push_back({std::move(name), std::move(once), ours, {}});
  }
  void run(int runs, bench::table& t) {
    for (int r = 0; r < runs; ++r)
      for (auto& e : list_) e.results.push_back(e.once());
    for (auto& e : list_) t.add(e.name, bench::median(e.results), e.ours);
  }

 private:
  struct entry {
    std::string name;
    std::function<double()> once;
    bool ours;
    std::vector<double> results;
  };
  std::vector<entry> list_;
};

// ---------------------------------------------------------------------------------------------
// 1. pipeline: parse a decimal string, square it, sum the squares.

std::uint64_t parse(std::string_view s) {
  std::uint64_t v = 0;
  std::from_chars(s.data(), s.data() + s.size(), v);
  return v;
}

void bench_pipeline(const bench::args& a) {
  const std::uint64_t n = a.items;
  std::vector<std::string> storage(n);
  std::uint64_t want = 0;
  for (std::uint64_t i = 0; i < n; ++i) {
    storage[i] = std::to_string(i % 100000);
    want += (i % 100000) * (i % 100000);
  }
  std::vector<std::string_view> input(storage.begin(), storage.end());
  bench::table t("pipeline parse -> square -> sum, " + std::to_string(n) + " items", "M items/s");
  contenders impls;

  impls.add("spindle::pipeline (1 worker per stage)", [&] {
    std::uint64_t sum = 0;
    auto t0 = bench::clock::now();
    auto p = spindle::pipeline<std::string_view>({.capacity = 4096, .batch = 256})
                 .stage(parse)
                 .stage([](std::uint64_t x) { return x * x; })
                 .sink([&](std::uint64_t x) { sum += x; })
                 .run(input);
    p.wait();
    double s = bench::seconds_since(t0);
    bench::validate(sum == want, "spindle pipeline sum");
    return double(n) / s / 1e6;
  }, true);

#if SPINDLE_BENCH_HAVE_TBB
  impls.add("tbb::parallel_pipeline", [&] {
    std::uint64_t sum = 0;
    std::size_t next = 0;
    auto t0 = bench::clock::now();
    tbb::parallel_pipeline(
        4 * cores,
        tbb::make_filter<void, std::string_view>(
            tbb::filter_mode::serial_in_order,
            [&](tbb::flow_control& fc) -> std::string_view {
              if (next == input.size()) {
                fc.stop();
                return {};
              }
              return input[next++];
            }) &
            tbb::make_filter<std::string_view, std::uint64_t>(tbb::filter_mode::parallel, &parse) &
            tbb::make_filter<std::uint64_t, std::uint64_t>(tbb::filter_mode::parallel,
                                                           [](std::uint64_t x) { return x * x; }) &
            tbb::make_filter<std::uint64_t, void>(tbb::filter_mode::serial_in_order,
                                                  [&](std::uint64_t x) { sum += x; }));
    double s = bench::seconds_since(t0);
    bench::validate(sum == want, "tbb pipeline sum");
    return double(n) / s / 1e6;
  });
#endif

  impls.add("single thread loop", [&] {
    auto t0 = bench::clock::now();
    std::uint64_t sum = 0;
    for (auto s : input) {
      std::uint64_t x = parse(s);
      sum += x * x;
    }
    double s = bench::seconds_since(t0);
    bench::validate(sum == want, "single-thread sum");
    return double(n) / s / 1e6;
  });
  impls.run(a.runs, t);
  t.print();
}

// ---------------------------------------------------------------------------------------------
// 2. sum of squares over uint32.

void bench_sum_squares(const bench::args& a, spindle::thread_pool& pool) {
  const std::uint64_t n = a.items * 40;
  std::vector<std::uint32_t> v(n);
  for (std::uint64_t i = 0; i < n; ++i) v[i] = static_cast<std::uint32_t>(i * 2654435761u) >> 12;
  std::uint64_t want = 0;
  for (auto x : v) want += std::uint64_t(x) * x;
  auto sq = [](std::uint32_t x) { return std::uint64_t(x) * x; };
  bench::table t("sum of squares, " + std::to_string(n) + " uint32", "G elements/s");
  contenders impls;

  impls.add("spindle::map_reduce", [&] {
    auto t0 = bench::clock::now();
    auto r = spindle::map_reduce(pool, v, sq, std::uint64_t{0}, std::plus<>{});
    double s = bench::seconds_since(t0);
    bench::validate(r == want, "spindle map_reduce sum of squares");
    return double(n) / s / 1e9;
  }, true);

#if SPINDLE_BENCH_HAVE_TBB
  impls.add("tbb::parallel_reduce", [&] {
    auto t0 = bench::clock::now();
    auto r = tbb::parallel_reduce(
        tbb::blocked_range<std::size_t>(0, v.size()), std::uint64_t{0},
        [&](const tbb::blocked_range<std::size_t>& br, std::uint64_t acc) {
          for (std::size_t i = br.begin(); i != br.end(); ++i) acc += sq(v[i]);
          return acc;
        },
        std::plus<>{});
    double s = bench::seconds_since(t0);
    bench::validate(r == want, "tbb parallel_reduce");
    return double(n) / s / 1e9;
  });

  impls.add("std::transform_reduce(par)", [&] {
    auto t0 = bench::clock::now();
    auto r = std::transform_reduce(std::execution::par, v.begin(), v.end(), std::uint64_t{0},
                                   std::plus<>{}, sq);
    double s = bench::seconds_since(t0);
    bench::validate(r == want, "transform_reduce(par)");
    return double(n) / s / 1e9;
  });
#endif

  impls.add("single thread loop", [&] {
    auto t0 = bench::clock::now();
    std::uint64_t r = 0;
    for (auto x : v) r += sq(x);
    double s = bench::seconds_since(t0);
    bench::validate(r == want, "single-thread sum of squares");
    return double(n) / s / 1e9;
  });
  impls.run(a.runs, t);
  t.print();
}

// ---------------------------------------------------------------------------------------------
// 3. word count.

using word_counts = std::unordered_map<std::string_view, std::uint64_t>;

void count_words(std::string_view text, word_counts& c) {
  std::size_t i = 0;
  const std::size_t n = text.size();
  while (i < n) {
    while (i < n && (text[i] == ' ' || text[i] == '\n')) ++i;
    std::size_t b = i;
    while (i < n && text[i] != ' ' && text[i] != '\n') ++i;
    if (i > b) ++c[text.substr(b, i - b)];
  }
}

word_counts merge(word_counts a, word_counts b) {
  if (a.size() < b.size()) std::swap(a, b);
  for (auto& [w, k] : b) a[w] += k;
  return a;
}

void bench_word_count(const bench::args& a, spindle::thread_pool& pool) {
  const std::size_t bytes = a.items * 20;
  // A vocabulary of 10000 words of 3..10 letters, drawn with a skewed distribution.
  std::vector<std::string> vocab;
  std::uint64_t rng = 88172645463325252ull;
  auto next = [&] {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
  };
  for (int i = 0; i < 10000; ++i) {
    std::string w(3 + next() % 8, 'a');
    for (auto& ch : w) ch = static_cast<char>('a' + next() % 26);
    vocab.push_back(w);
  }
  std::string text;
  text.reserve(bytes + 16);
  std::uint64_t words = 0;
  while (text.size() < bytes) {
    std::uint64_t r = next();
    std::size_t idx = (r % 100 < 80) ? (r >> 8) % 200 : (r >> 8) % vocab.size();
    text += vocab[idx];
    text += (++words % 12 == 0) ? '\n' : ' ';
  }
  // Documents: pieces of about 1 MB, cut at whitespace.
  std::vector<std::string_view> docs;
  std::string_view all(text);
  const std::size_t piece = std::max<std::size_t>(1, std::min<std::size_t>(1 << 20, bytes / 64));
  for (std::size_t b = 0; b < all.size();) {
    std::size_t e = std::min(all.size(), b + piece);
    while (e < all.size() && all[e] != ' ' && all[e] != '\n') ++e;
    docs.push_back(all.substr(b, e - b));
    b = e;
  }
  const double mb = double(text.size()) / 1e6;
  auto total_words = [](const word_counts& c) {
    std::uint64_t s = 0;
    for (auto& [w, k] : c) s += k;
    return s;
  };
  bench::table t("word count, " + std::to_string(text.size() / 1000000) + " MB, " +
                     std::to_string(docs.size()) + " documents",
                 "MB/s");
  contenders impls;

  word_counts reference;
  impls.add("single thread", [&] {
    auto t0 = bench::clock::now();
    word_counts c;
    count_words(all, c);
    double s = bench::seconds_since(t0);
    bench::validate(total_words(c) == words, "single-thread word count");
    reference = std::move(c);
    return mb / s;
  });

  impls.add("spindle::map_reduce", [&] {
    auto t0 = bench::clock::now();
    auto c = spindle::map_reduce(
        pool, docs,
        [](std::string_view d) {
          word_counts m;
          m.reserve(16384);  // about the distinct words of one document: no rehash while counting
          count_words(d, m);
          return m;
        },
        word_counts{}, merge);
    double s = bench::seconds_since(t0);
    bench::validate(total_words(c) == words && c == reference, "spindle word count");
    return mb / s;
  }, true);

#if SPINDLE_BENCH_HAVE_TBB
  impls.add("tbb::parallel_for + per-thread maps", [&] {
    auto t0 = bench::clock::now();
    tbb::enumerable_thread_specific<word_counts> local;
    tbb::parallel_for(tbb::blocked_range<std::size_t>(0, docs.size()),
                      [&](const tbb::blocked_range<std::size_t>& br) {
                        auto& m = local.local();
                        for (std::size_t i = br.begin(); i != br.end(); ++i) count_words(docs[i], m);
                      });
    word_counts c;
    for (auto& m : local) c = merge(std::move(c), std::move(m));
    double s = bench::seconds_since(t0);
    bench::validate(total_words(c) == words && c == reference, "tbb word count");
    return mb / s;
  });
#endif
  impls.run(a.runs, t);
  t.print();
}

// ---------------------------------------------------------------------------------------------
// 4. actor ping-pong: one message in flight, bounced between two actors.

double spindle_ping_pong(std::uint64_t n, spindle::thread_pool* pool) {
  std::promise<void> done;
  spindle::actor<std::uint64_t>* ping_ptr = nullptr;
  spindle::actor<std::uint64_t>* pong_ptr = nullptr;
  auto pong_fn = [&](std::uint64_t x) { ping_ptr->send(x + 1); };
  auto ping_fn = [&](std::uint64_t x) {
    if (x >= n) {
      done.set_value();
      return;
    }
    pong_ptr->send(x + 1);
  };
  auto make = [&](auto h) {
    return pool ? std::make_unique<spindle::actor<std::uint64_t>>(*pool, h)
                : std::make_unique<spindle::actor<std::uint64_t>>(h);
  };
  auto pong = make(pong_fn);
  auto ping = make(ping_fn);
  pong_ptr = pong.get();
  ping_ptr = ping.get();
  auto t0 = bench::clock::now();
  ping->send(0);
  done.get_future().wait();
  double s = bench::seconds_since(t0);
  ping->stop();
  pong->stop();
  return double(n) / s / 1e6;
}

#if SPINDLE_BENCH_HAVE_CAF
caf::behavior caf_pong(caf::event_based_actor* self) {
  return {[=](std::uint64_t x) {
    self->send(caf::actor_cast<caf::actor>(self->current_sender()), x + 1);
  }};
}
caf::behavior caf_ping(caf::event_based_actor* self, caf::actor pong, std::uint64_t n,
                       std::promise<void>* done) {
  return {[=](std::uint64_t x) {
    if (x >= n) {
      done->set_value();
      self->quit();
      return;
    }
    self->send(pong, x + 1);
  }};
}

double caf_ping_pong(std::uint64_t n) {
  caf::actor_system_config cfg;
  cfg.set("scheduler.max-threads", static_cast<std::size_t>(cores));
  caf::actor_system sys(cfg);
  std::promise<void> done;
  auto pong = sys.spawn(caf_pong);
  auto ping = sys.spawn(caf_ping, pong, n, &done);
  auto t0 = bench::clock::now();
  caf::anon_send(ping, std::uint64_t{0});
  done.get_future().wait();
  double s = bench::seconds_since(t0);
  caf::anon_send_exit(pong, caf::exit_reason::user_shutdown);
  return double(n) / s / 1e6;
}
#endif

void bench_ping_pong(const bench::args& a, spindle::thread_pool& pool) {
  const std::uint64_t n = std::max<std::uint64_t>(1000, a.items / 5);
  bench::table t("actor ping-pong, " + std::to_string(n) + " messages", "M messages/s");
  // The row compared with CAF is the same design as CAF's: event-based actors on a pool.
  double on_pool = bench::median_of(a.runs, [&] { return spindle_ping_pong(n, &pool); });
  t.add("spindle::actor (on a thread_pool)", on_pool, true);
  double own = bench::median_of(a.runs, [&] { return spindle_ping_pong(n, nullptr); });
  t.add("spindle::actor (own threads)", own);
#if SPINDLE_BENCH_HAVE_CAF
  double caf_rate = bench::median_of(a.runs, [&] { return caf_ping_pong(n); });
  t.add("CAF 0.17 event_based_actor", caf_rate);
#endif
  t.print();
}

}  // namespace

int main(int argc, char** argv) {
  bench::args a(argc, argv, {.items = 5'000'000, .runs = 5});
  std::printf("bench_patterns: %u cores, items %llu, runs %d%s\n", cores,
              static_cast<unsigned long long>(a.items), a.runs, a.smoke ? " (smoke)" : "");
#if SPINDLE_BENCH_HAVE_TBB
  tbb::global_control limit(tbb::global_control::max_allowed_parallelism, cores);
#endif
  spindle::thread_pool pool(cores);
  bench_pipeline(a);
  bench_sum_squares(a, pool);
  bench_word_count(a, pool);
  bench_ping_pong(a, pool);
  return 0;
}
