// bench/bench_patterns.cpp - the composition patterns against their peers, like for like
// (harness.hpp's method: warm-up, rows interleaved, min / median / max, CPU time per item):
//   1. a 3-stage pipeline (parse, square, sum) over --items strings, on 4 threads each side:
//      spindle::pipeline (the caller feeds, one thread per stage) vs tbb::parallel_pipeline in an
//      arena of 3 workers + the caller; batched on both sides (spindle hands off 256 items at a
//      time, TBB's tokens carry chunks of 256) and one item per hand-off on both sides; and the
//      single-thread loop, which needs no hand-off at all;
//   2. sum of squares over 40 x --items uint32: spindle::map_reduce on a pool of `cores` workers
//      vs tbb::parallel_reduce and std::transform_reduce(std::execution::par) (libstdc++ runs it
//      on TBB) in an arena of `cores` workers + the caller, and a single thread;
//   3. word count over a generated text of 20 x --items bytes: spindle::map_reduce vs tbb
//      (per-thread maps) and a single thread, every map reserving the same 16384 buckets;
//   4. actor ping-pong, --items / 5 messages: spindle::actor (on a thread_pool, and on its own
//      threads; spinning as shipped and with spin 0) vs CAF 0.17 (when found), each validated
//      by the number of messages both actors handled and the last value.
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
#include <tbb/task_arena.h>
#endif

#if SPINDLE_BENCH_HAVE_CAF
#include <caf/all.hpp>
#endif

namespace {

const unsigned cores = std::max(1u, std::thread::hardware_concurrency());

#if SPINDLE_BENCH_HAVE_TBB
// TBB gets as many workers as spindle's pool, plus the caller's reserved slot (the caller works
// inside TBB's algorithms; spindle's caller only waits): set up in main().
tbb::task_arena* arena = nullptr;
#endif

// ---------------------------------------------------------------------------------------------
// 1. pipeline: parse a decimal string, square it, sum the squares.

std::uint64_t parse(std::string_view s) {
  std::uint64_t v = 0;
  std::from_chars(s.data(), s.data() + s.size(), v);
  return v;
}

constexpr std::size_t chunk = 256;  // items per hand-off in the batched table, both sides

void bench_pipeline(const bench::args& a, bool batched) {
  const std::uint64_t n = a.items;
  std::vector<std::string> storage(n);
  std::uint64_t want = 0;
  for (std::uint64_t i = 0; i < n; ++i) {
    storage[i] = std::to_string(i % 100000);
    want += (i % 100000) * (i % 100000);
  }
  std::vector<std::string_view> input(storage.begin(), storage.end());
  bench::suite t(a,
                 std::string("pipeline parse -> square -> sum, ") + std::to_string(n) + " items, " +
                     (batched ? "256 items per hand-off" : "one item per hand-off") +
                     ", 4 threads",
                 "M items/s", 1e-6);
  const std::size_t batch = batched ? chunk : 1;

  t.add(std::string("spindle::pipeline, batch ") + std::to_string(batch) +
            ", 1 thread per stage + feeding caller",
        [&, batch] {
          std::uint64_t sum = 0, count = 0;
          bench::stopwatch sw;
          auto p = spindle::pipeline<std::string_view>({.capacity = 4096, .batch = batch})
                       .stage(parse)
                       .stage([](std::uint64_t x) { return x * x; })
                       .sink([&](std::uint64_t x) {
                         sum += x;
                         ++count;
                       })
                       .run(input);
          p.wait();
          auto r = sw.stop(static_cast<double>(n));
          bench::validate(sum == want && count == n, "spindle pipeline sum and count");
          return r;
        },
        true);

#if SPINDLE_BENCH_HAVE_TBB
  if (batched) {
    // A token carries a chunk of 256 inputs; its squares go to a buffer of the token's slot.
    // Slot reuse is safe: with `tokens` live tokens and an in-order last filter, chunk k +
    // tokens enters only after chunk k has left the last filter.
    const std::size_t tokens = 4 * cores;
    t.add("tbb::parallel_pipeline, tokens carry 256-item chunks, arena 3 + caller", [&, tokens] {
      struct piece {
        std::size_t begin = 0, end = 0;
        std::uint64_t* out = nullptr;
      };
      std::vector<std::uint64_t> buffers(tokens * chunk);
      std::uint64_t sum = 0, count = 0;
      std::size_t next = 0, k = 0;
      bench::stopwatch sw;
      arena->execute([&] {
        tbb::parallel_pipeline(
            tokens,
            tbb::make_filter<void, piece>(
                tbb::filter_mode::serial_in_order,
                [&](tbb::flow_control& fc) -> piece {
                  if (next == input.size()) {
                    fc.stop();
                    return {};
                  }
                  piece p{next, std::min(input.size(), next + chunk),
                          buffers.data() + (k++ % tokens) * chunk};
                  next = p.end;
                  return p;
                }) &
                tbb::make_filter<piece, piece>(tbb::filter_mode::parallel,
                                               [&](piece p) {
                                                 for (std::size_t i = p.begin; i < p.end; ++i)
                                                   p.out[i - p.begin] = parse(input[i]);
                                                 return p;
                                               }) &
                tbb::make_filter<piece, piece>(tbb::filter_mode::parallel,
                                               [](piece p) {
                                                 for (std::size_t i = 0; i < p.end - p.begin; ++i)
                                                   p.out[i] *= p.out[i];
                                                 return p;
                                               }) &
                tbb::make_filter<piece, void>(tbb::filter_mode::serial_in_order, [&](piece p) {
                  for (std::size_t i = 0; i < p.end - p.begin; ++i) {
                    sum += p.out[i];
                    ++count;
                  }
                }));
      });
      auto r = sw.stop(static_cast<double>(n));
      bench::validate(sum == want && count == n, "tbb chunked pipeline sum and count");
      return r;
    });
  } else {
    t.add("tbb::parallel_pipeline, one item per token, arena 3 + caller", [&] {
      std::uint64_t sum = 0, count = 0;
      std::size_t next = 0;
      bench::stopwatch sw;
      arena->execute([&] {
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
                tbb::make_filter<std::string_view, std::uint64_t>(tbb::filter_mode::parallel,
                                                                  &parse) &
                tbb::make_filter<std::uint64_t, std::uint64_t>(
                    tbb::filter_mode::parallel, [](std::uint64_t x) { return x * x; }) &
                tbb::make_filter<std::uint64_t, void>(tbb::filter_mode::serial_in_order,
                                                      [&](std::uint64_t x) {
                                                        sum += x;
                                                        ++count;
                                                      }));
      });
      auto r = sw.stop(static_cast<double>(n));
      bench::validate(sum == want && count == n, "tbb pipeline sum and count");
      return r;
    });
  }
#endif

  t.add("single thread loop (no hand-off)", [&] {
    bench::stopwatch sw;
    std::uint64_t sum = 0, count = 0;
    for (auto s : input) {
      std::uint64_t x = parse(s);
      sum += x * x;
      ++count;
    }
    auto r = sw.stop(static_cast<double>(n));
    bench::validate(sum == want && count == n, "single-thread sum and count");
    return r;
  });
  t.note("spindle: the caller feeds the range, each of the 3 stages has its own thread; tbb: an "
         "arena of 3 workers plus the caller, 4 * cores tokens in flight.");
  t.run();
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
  bench::suite t(a, "sum of squares, " + std::to_string(n) + " uint32", "G elements/s", 1e-9);

  t.add("spindle::map_reduce, pool of " + std::to_string(cores) + " workers", [&] {
    bench::stopwatch sw;
    auto r = spindle::map_reduce(pool, v, sq, std::uint64_t{0}, std::plus<>{});
    auto s = sw.stop(static_cast<double>(n));
    bench::validate(r == want, "spindle map_reduce sum of squares");
    return s;
  }, true);

#if SPINDLE_BENCH_HAVE_TBB
  t.add("tbb::parallel_reduce, arena " + std::to_string(cores) + " + caller", [&] {
    bench::stopwatch sw;
    std::uint64_t r = 0;
    arena->execute([&] {
      r = tbb::parallel_reduce(
          tbb::blocked_range<std::size_t>(0, v.size()), std::uint64_t{0},
          [&](const tbb::blocked_range<std::size_t>& br, std::uint64_t acc) {
            for (std::size_t i = br.begin(); i != br.end(); ++i) acc += sq(v[i]);
            return acc;
          },
          std::plus<>{});
    });
    auto s = sw.stop(static_cast<double>(n));
    bench::validate(r == want, "tbb parallel_reduce");
    return s;
  });

  t.add("std::transform_reduce(par), same arena", [&] {
    bench::stopwatch sw;
    std::uint64_t r = 0;
    arena->execute([&] {
      r = std::transform_reduce(std::execution::par, v.begin(), v.end(), std::uint64_t{0},
                                std::plus<>{}, sq);
    });
    auto s = sw.stop(static_cast<double>(n));
    bench::validate(r == want, "transform_reduce(par)");
    return s;
  });
#endif

  t.add("single thread loop", [&] {
    bench::stopwatch sw;
    std::uint64_t r = 0;
    for (auto x : v) r += sq(x);
    auto s = sw.stop(static_cast<double>(n));
    bench::validate(r == want, "single-thread sum of squares");
    return s;
  });
  t.run();
}

// ---------------------------------------------------------------------------------------------
// 3. word count.

using word_counts = std::unordered_map<std::string_view, std::uint64_t>;
constexpr std::size_t word_reserve = 16384;  // every map, every implementation: no rehash while counting

word_counts reserved_map() {
  word_counts m;
  m.reserve(word_reserve);
  return m;
}

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
  auto total_words = [](const word_counts& c) {
    std::uint64_t s = 0;
    for (auto& [w, k] : c) s += k;
    return s;
  };
  // The reference: counted once, before any timing, on this thread.
  word_counts reference = reserved_map();
  count_words(all, reference);
  bench::validate(total_words(reference) == words, "reference word count");

  bench::suite t(a,
                 "word count, " + std::to_string(text.size() / 1000000) + " MB, " +
                     std::to_string(docs.size()) + " documents, every map reserves " +
                     std::to_string(word_reserve),
                 "MB/s", 1e-6);
  const double n_bytes = static_cast<double>(text.size());

  t.add("single thread, one map", [&] {
    bench::stopwatch sw;
    word_counts c = reserved_map();
    count_words(all, c);
    auto s = sw.stop(n_bytes);
    bench::validate(total_words(c) == words && c == reference, "single-thread word count");
    return s;
  });

  t.add("spindle::map_reduce, a map per document", [&] {
    bench::stopwatch sw;
    auto c = spindle::map_reduce(
        pool, docs,
        [](std::string_view d) {
          word_counts m = reserved_map();
          count_words(d, m);
          return m;
        },
        word_counts{}, merge);
    auto s = sw.stop(n_bytes);
    bench::validate(total_words(c) == words && c == reference, "spindle word count");
    return s;
  }, true);

#if SPINDLE_BENCH_HAVE_TBB
  t.add("tbb::parallel_for + per-thread maps, arena " + std::to_string(cores) + " + caller", [&] {
    bench::stopwatch sw;
    word_counts c;
    arena->execute([&] {
      tbb::enumerable_thread_specific<word_counts> local([] { return reserved_map(); });
      tbb::parallel_for(tbb::blocked_range<std::size_t>(0, docs.size()),
                        [&](const tbb::blocked_range<std::size_t>& br) {
                          auto& m = local.local();
                          for (std::size_t i = br.begin(); i != br.end(); ++i)
                            count_words(docs[i], m);
                        });
      for (auto& m : local) c = merge(std::move(c), std::move(m));
    });
    auto s = sw.stop(n_bytes);
    bench::validate(total_words(c) == words && c == reference, "tbb word count");
    return s;
  });
#endif
  t.run();
}

// ---------------------------------------------------------------------------------------------
// 4. actor ping-pong: one message in flight, bounced between two actors.

// What both actors handled: validated after each run.
struct pong_tally {
  std::atomic<std::uint64_t> handled{0};
  std::atomic<std::uint64_t> last{0};
  void check(std::uint64_t n, const std::string& who) const {
    // Messages 0, 1, ..., n: ping handles the even ones, pong the odd ones, and ping stops at n.
    bench::validate(last.load() == n, who + ": last value");
    bench::validate(handled.load() == n + 1, who + ": messages handled by both actors");
  }
};

auto actor_opts(bool sleep) { return bench::options_sleeping<spindle::actor_options>(sleep); }
auto pool_opts(bool sleep) { return bench::options_sleeping<spindle::thread_pool_options>(sleep); }
constexpr bool has_actor_spin = bench::has_spin_knob<spindle::actor_options>;
constexpr bool has_pool_spin = bench::has_spin_knob<spindle::thread_pool_options>;

// n must be even (ping sees every even value and stops at n).
bench::sample spindle_ping_pong(std::uint64_t n, spindle::thread_pool* pool, bool sleep) {
  std::promise<void> done;
  pong_tally tally;
  spindle::actor<std::uint64_t>* ping_ptr = nullptr;
  spindle::actor<std::uint64_t>* pong_ptr = nullptr;
  auto pong_fn = [&](std::uint64_t x) {
    tally.handled.fetch_add(1, std::memory_order_relaxed);
    ping_ptr->send(x + 1);
  };
  auto ping_fn = [&](std::uint64_t x) {
    tally.handled.fetch_add(1, std::memory_order_relaxed);
    if (x >= n) {
      tally.last.store(x);
      done.set_value();
      return;
    }
    pong_ptr->send(x + 1);
  };
  auto make = [&](auto h) {
    return pool ? std::make_unique<spindle::actor<std::uint64_t>>(*pool, h, actor_opts(sleep))
                : std::make_unique<spindle::actor<std::uint64_t>>(h, actor_opts(sleep));
  };
  auto pong = make(pong_fn);
  auto ping = make(ping_fn);
  pong_ptr = pong.get();
  ping_ptr = ping.get();
  bench::stopwatch sw;
  ping->send(0);
  done.get_future().wait();
  auto s = sw.stop(static_cast<double>(n));
  ping->stop();
  pong->stop();
  tally.check(n, "spindle ping-pong");
  return s;
}

#if SPINDLE_BENCH_HAVE_CAF
caf::behavior caf_pong(caf::event_based_actor* self, pong_tally* tally) {
  return {[=](std::uint64_t x) {
    tally->handled.fetch_add(1, std::memory_order_relaxed);
    self->send(caf::actor_cast<caf::actor>(self->current_sender()), x + 1);
  }};
}
caf::behavior caf_ping(caf::event_based_actor* self, caf::actor pong, std::uint64_t n,
                       std::promise<void>* done, pong_tally* tally) {
  return {[=](std::uint64_t x) {
    tally->handled.fetch_add(1, std::memory_order_relaxed);
    if (x >= n) {
      tally->last.store(x);
      done->set_value();
      self->quit();
      return;
    }
    self->send(pong, x + 1);
  }};
}

bench::sample caf_ping_pong(std::uint64_t n) {
  caf::actor_system_config cfg;
  cfg.set("scheduler.max-threads", static_cast<std::size_t>(cores));
  caf::actor_system sys(cfg);
  std::promise<void> done;
  pong_tally tally;
  auto pong = sys.spawn(caf_pong, &tally);
  auto ping = sys.spawn(caf_ping, pong, n, &done, &tally);
  bench::stopwatch sw;
  caf::anon_send(ping, std::uint64_t{0});
  done.get_future().wait();
  auto s = sw.stop(static_cast<double>(n));
  caf::anon_send_exit(pong, caf::exit_reason::user_shutdown);
  tally.check(n, "CAF ping-pong");
  return s;
}
#endif

void bench_ping_pong(const bench::args& a) {
  std::uint64_t n = std::max<std::uint64_t>(1000, a.items / 5);
  n -= n % 2;
  bench::suite t(a, "actor ping-pong, " + std::to_string(n) + " messages", "M messages/s", 1e-6);
  // The row compared with CAF is the same design as CAF's: event-based actors on a pool of
  // `cores` threads (CAF's scheduler.max-threads).
  t.add("spindle::actor on a thread_pool of " + std::to_string(cores) + " (spins when idle)",
        [&] {
          spindle::thread_pool pool(cores, pool_opts(false));
          return spindle_ping_pong(n, &pool, false);
        },
        true);
  t.add(has_pool_spin
            ? "spindle::actor on a thread_pool, pool spin 0 (sleeps)"
            : "spindle::actor on a thread_pool (no spin switch)",
        [&] {
          spindle::thread_pool pool(cores, pool_opts(true));
          return spindle_ping_pong(n, &pool, true);
        });
  t.add("spindle::actor on own threads (spins when idle)",
        [&] { return spindle_ping_pong(n, nullptr, false); });
  t.add(has_actor_spin ? "spindle::actor on own threads, spin 0 (sleeps)"
                                               : "spindle::actor on own threads (no spin switch)",
        [&] { return spindle_ping_pong(n, nullptr, true); });
#if SPINDLE_BENCH_HAVE_CAF
  t.add("CAF 0.17 event_based_actor, max-threads " + std::to_string(cores),
        [&] { return caf_ping_pong(n); });
#else
  t.note("CAF not found at build time: no CAF row.");
#endif
  t.note("pools and actor systems are built and torn down outside the timed region, every round.");
  t.run();
}

}  // namespace

int main(int argc, char** argv) {
  bench::args a(argc, argv, {.items = 5'000'000, .runs = 5});
  std::printf("bench_patterns: %u cores, items %llu, %d rounds + %d warm-up%s\n", cores,
              static_cast<unsigned long long>(a.items), a.runs, a.warmup,
              a.smoke ? " (smoke)" : "");
  bench::watchdog(a.smoke ? 240 : 1800, "bench_patterns");
#if SPINDLE_BENCH_HAVE_TBB
  tbb::global_control limit(tbb::global_control::max_allowed_parallelism,
                           std::max<std::size_t>(cores + 1, 4));
  tbb::task_arena pipeline_arena(4, 1);  // 3 workers + the caller: spindle's 3 stages + feeder
  tbb::task_arena pool_arena(static_cast<int>(cores) + 1, 1);
  arena = &pipeline_arena;
  bench_pipeline(a, true);
  bench_pipeline(a, false);
  arena = &pool_arena;
#else
  bench_pipeline(a, true);
  bench_pipeline(a, false);
#endif
  {
    spindle::thread_pool pool(cores);
    bench_sum_squares(a, pool);
    bench_word_count(a, pool);
  }
  bench_ping_pong(a);
  return 0;
}
