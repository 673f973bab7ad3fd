// bench_queue: spindle's bounded_queue and spsc_queue against the peers installed here.
//
// Workload (the same for every implementation, in one run): uint64 items, capacity 1024,
// --items items (default 2M) split evenly over P producers and C consumers, 1P1C, 2P2C, 4P4C;
// min / median / max of --runs rounds (default 5) after a warm-up round, rows interleaved
// (bench::suite, harness.hpp). Round-trip latency: two threads bounce one item through a pair
// of queues. Every run is validated from what the consumers actually popped: the number of
// successful pops, the sum and the sum of squares of the values (a lost, duplicated or invented
// item changes them).
//
// Placement: headline figures pin producers and consumers to different cores (every hand-off
// crosses cores); the same workload with every thread on one core is reported beside them.
//
// Peers (each only where its headers were found): tbb::concurrent_bounded_queue,
// boost::lockfree::queue (capacity 1024; it cannot block, so its threads spin, then yield),
// moodycamel::BlockingConcurrentQueue in its documented best configuration (producer and
// consumer tokens, pre-sized for capacity 1024 and P producers; unbounded: it never makes a
// producer wait) and without tokens; a mutex and condition-variable ring; for
// SPSC: boost::lockfree::spsc_queue (spins) and moodycamel::BlockingReaderWriterQueue.
//
//   bench_queue [--items N] [--runs K] [--warmup W] [--smoke]
#include <spindle/bounded_queue.hpp>
#include <spindle/spsc_queue.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "harness.hpp"

#if defined(SPINDLE_BENCH_HAVE_TBB)
#include <tbb/concurrent_queue.h>
#endif
#if defined(SPINDLE_BENCH_HAVE_BOOST_LOCKFREE)
#include <boost/lockfree/queue.hpp>
#include <boost/lockfree/spsc_queue.hpp>
#endif
#if defined(SPINDLE_BENCH_HAVE_MOODYCAMEL)
#include <concurrentqueue/blockingconcurrentqueue.h>
#endif
#if __has_include(<readerwriterqueue/readerwriterqueue.h>)
#include <readerwriterqueue/readerwriterqueue.h>
#define SPINDLE_BENCH_HAVE_RWQUEUE 1
#endif

namespace {

constexpr std::size_t capacity = 1024;

// A spin that backs off to yield: what a caller of a non-blocking queue has to write.
struct backoff {
  int n = 0;
  void pause() {
    if (++n < 64) {
      spindle::detail::cpu_relax();
    } else {
      std::this_thread::yield();
    }
  }
};

// ---- adapters: q.producer() and q.consumer() give per-thread handles with push(v) and
// bool pop(v) (false: the queue returned no item, which the validation counts as a loss) ------

template <class Self>
struct shared_handles {  // for queues without per-thread tokens: the handle is the queue
  Self& producer() { return static_cast<Self&>(*this); }
  Self& consumer() { return static_cast<Self&>(*this); }
};

struct spindle_mpmc : shared_handles<spindle_mpmc> {
  explicit spindle_mpmc(int) {}
  spindle::bounded_queue<std::uint64_t> q{capacity};
  void push(std::uint64_t v) { bench::validate(q.push(v) == spindle::status::ok, "spindle push"); }
  bool pop(std::uint64_t& v) { return q.pop(v) == spindle::status::ok; }
};

struct spindle_spsc : shared_handles<spindle_spsc> {
  explicit spindle_spsc(int) {}
  spindle::spsc_queue<std::uint64_t> q{capacity};
  void push(std::uint64_t v) { bench::validate(q.push(v) == spindle::status::ok, "spsc push"); }
  bool pop(std::uint64_t& v) { return q.pop(v) == spindle::status::ok; }
};

// The textbook blocking queue: a ring under one mutex, two condition variables.
struct mutex_queue : shared_handles<mutex_queue> {
  explicit mutex_queue(int) {}
  std::mutex mu;
  std::condition_variable not_empty, not_full;
  std::vector<std::uint64_t> ring = std::vector<std::uint64_t>(capacity);
  std::size_t head = 0, count = 0;  // guarded by mu
  void push(std::uint64_t v) {
    std::unique_lock lock(mu);
    not_full.wait(lock, [&] { return count < capacity; });
    ring[(head + count) % capacity] = v;
    ++count;
    lock.unlock();
    not_empty.notify_one();
  }
  bool pop(std::uint64_t& v) {
    std::unique_lock lock(mu);
    not_empty.wait(lock, [&] { return count > 0; });
    v = ring[head];
    head = (head + 1) % capacity;
    --count;
    lock.unlock();
    not_full.notify_one();
    return true;
  }
};

#if defined(SPINDLE_BENCH_HAVE_TBB)
struct tbb_queue : shared_handles<tbb_queue> {
  tbb::concurrent_bounded_queue<std::uint64_t> q;
  explicit tbb_queue(int) { q.set_capacity(capacity); }
  void push(std::uint64_t v) { q.push(v); }
  bool pop(std::uint64_t& v) {
    q.pop(v);
    return true;
  }
};
#endif

#if defined(SPINDLE_BENCH_HAVE_BOOST_LOCKFREE)
struct boost_queue : shared_handles<boost_queue> {
  explicit boost_queue(int) {}
  boost::lockfree::queue<std::uint64_t, boost::lockfree::capacity<capacity>> q;
  void push(std::uint64_t v) {
    for (backoff b; !q.push(v);) b.pause();
  }
  bool pop(std::uint64_t& v) {
    for (backoff b; !q.pop(v);) b.pause();
    return true;
  }
};

struct boost_spsc : shared_handles<boost_spsc> {
  explicit boost_spsc(int) {}
  boost::lockfree::spsc_queue<std::uint64_t, boost::lockfree::capacity<capacity>> q;
  void push(std::uint64_t v) {
    for (backoff b; !q.push(v);) b.pause();
  }
  bool pop(std::uint64_t& v) {
    for (backoff b; !q.pop(v);) b.pause();
    return true;
  }
};
#endif

#if defined(SPINDLE_BENCH_HAVE_MOODYCAMEL)
using moody_q = moodycamel::BlockingConcurrentQueue<std::uint64_t>;

struct moody_queue : shared_handles<moody_queue> {  // no tokens, default size: the simplest use
  explicit moody_queue(int) {}
  moody_q q;
  void push(std::uint64_t v) { bench::validate(q.enqueue(v), "moodycamel enqueue"); }
  bool pop(std::uint64_t& v) {
    q.wait_dequeue(v);
    return true;
  }
};

// The documented best configuration: a token per producer and per consumer, the queue pre-sized
// for `capacity` items and P explicit producers. Unbounded: enqueue allocates a block when the
// pre-sized ones are full, so its producers never wait for room, which no bounded row can do.
// (A bounded emulation with try_enqueue is not offered: an explicit producer whose block index
// must grow cannot enqueue without allocating, and its try_enqueue then fails forever even on an
// empty queue; seen here as a hang at 2P2C.)
struct moody_tokens {
  moody_q q;
  explicit moody_tokens(int producers) : q(capacity, static_cast<std::size_t>(producers), 0) {}
  struct prod {
    moody_q& q;
    moodycamel::ProducerToken t;
    void push(std::uint64_t v) { bench::validate(q.enqueue(t, v), "moodycamel enqueue"); }
  };
  struct cons {
    moody_q& q;
    moodycamel::ConsumerToken t;
    bool pop(std::uint64_t& v) {
      q.wait_dequeue(t, v);
      return true;
    }
  };
  prod producer() { return prod{q, moodycamel::ProducerToken(q)}; }
  cons consumer() { return cons{q, moodycamel::ConsumerToken(q)}; }
};
#endif

#if defined(SPINDLE_BENCH_HAVE_RWQUEUE)
struct moody_rw : shared_handles<moody_rw> {
  explicit moody_rw(int) {}
  moodycamel::BlockingReaderWriterQueue<std::uint64_t> q{capacity};
  void push(std::uint64_t v) {
    for (backoff b; !q.try_enqueue(v);) b.pause();  // try_enqueue: never allocates (bounded)
  }
  bool pop(std::uint64_t& v) {
    q.wait_dequeue(v);
    return true;
  }
};
#endif

// ---- workloads -------------------------------------------------------------------------------

// What consumers actually received, summed over all of them.
struct received {
  std::atomic<std::uint64_t> count{0}, sum{0}, squares{0};
  void add(std::uint64_t c, std::uint64_t s, std::uint64_t q) {
    count.fetch_add(c);
    sum.fetch_add(s);
    squares.fetch_add(q);
  }
  // Values 1..n, each exactly once (sums mod 2^64, computed the same way).
  void check(std::uint64_t n, const char* who) const {
    std::uint64_t s = 0, q = 0;
    for (std::uint64_t v = 1; v <= n; ++v) {
      s += v;
      q += v * v;
    }
    std::string w(who);
    bench::validate(count.load() == n, w + ": number of items popped");
    bench::validate(sum.load() == s, w + ": sum of the items popped");
    bench::validate(squares.load() == q, w + ": sum of squares of the items popped");
  }
};

// P producers and C consumers moving n items (values 1..n); validated from what was popped.
template <class Q>
bench::sample throughput(int producers, int consumers, std::uint64_t n, bench::placement where,
                         const char* who) {
  Q q(producers);
  const std::uint64_t per_p = n / static_cast<std::uint64_t>(producers);
  const std::uint64_t per_c = n / static_cast<std::uint64_t>(consumers);
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  received got;
  std::vector<std::thread> threads;
  auto wait_go = [&] {
    ready.fetch_add(1);
    for (backoff b; !go.load(std::memory_order_acquire);) b.pause();
  };
  for (int p = 0; p < producers; ++p)
    threads.emplace_back([&, p] {
      bench::place(where, 0, static_cast<unsigned>(p));
      auto&& h = q.producer();
      wait_go();
      const std::uint64_t base = static_cast<std::uint64_t>(p) * per_p + 1;
      for (std::uint64_t i = 0; i < per_p; ++i) h.push(base + i);
    });
  for (int c = 0; c < consumers; ++c)
    threads.emplace_back([&, c] {
      bench::place(where, 1, static_cast<unsigned>(c));
      auto&& h = q.consumer();
      wait_go();
      std::uint64_t k = 0, s = 0, sq = 0;
      for (std::uint64_t i = 0; i < per_c; ++i) {
        std::uint64_t v = 0;
        if (!h.pop(v)) continue;
        ++k;
        s += v;
        sq += v * v;
      }
      got.add(k, s, sq);
    });
  while (ready.load() != producers + consumers) std::this_thread::yield();
  bench::stopwatch sw;
  go.store(true, std::memory_order_release);
  for (auto& t : threads) t.join();
  bench::sample r = sw.stop(static_cast<double>(n));
  got.check(n, who);
  return r;
}

// Round trips of one item bounced between two threads through two queues.
template <class Q>
bench::sample round_trips(std::uint64_t rounds, bench::placement where) {
  Q ping(1), pong(1);
  std::uint64_t echoed = 0;
  std::thread echo([&] {
    bench::place(where, 1, 0);
    auto&& in = ping.consumer();
    auto&& out = pong.producer();
    for (std::uint64_t i = 0; i < rounds; ++i) {
      std::uint64_t v = 0;
      if (!in.pop(v)) break;
      echoed += v;
      out.push(v + 1);
    }
  });
  bench::place(where, 0, 0);
  auto&& out = ping.producer();
  auto&& in = pong.consumer();
  std::uint64_t check = 0;
  bench::stopwatch sw;
  for (std::uint64_t i = 0; i < rounds; ++i) {
    out.push(i);
    std::uint64_t v = 0;
    if (in.pop(v)) check += v;
  }
  bench::sample r = sw.stop(static_cast<double>(rounds));
  echo.join();
  std::uint64_t expect = rounds * (rounds - 1) / 2;
  bench::validate(echoed == expect && check == expect + rounds, "round-trip checksum");
  return r;
}

struct tables {
  const bench::args& a;

  template <class Q>
  void add_rate(bench::suite& t, const char* name, int p, int c, bench::placement where,
                bool ours = false) {
    std::uint64_t n = a.items - a.items % static_cast<std::uint64_t>(p * c);
    t.add(name, [=] { return throughput<Q>(p, c, n, where, name); }, ours);
  }

  template <class Q>
  void add_latency(bench::suite& t, const char* name, bench::placement where, bool ours = false) {
    std::uint64_t rounds = a.smoke ? 1000 : 20'000;
    t.add(name, [=] { return round_trips<Q>(rounds, where); }, ours);
  }

  void mpmc(int p, int c, bench::placement where) {
    std::string title = "bounded_queue " + std::to_string(p) + "P" + std::to_string(c) + "C, " +
                        bench::to_string(where);
    bench::suite t(a, title, "M items/s", 1e-6);
    add_rate<spindle_mpmc>(t, "spindle::bounded_queue", p, c, where, true);
#if defined(SPINDLE_BENCH_HAVE_MOODYCAMEL)
    add_rate<moody_tokens>(t, "moodycamel + tokens, pre-sized (unbounded)", p, c, where);
    add_rate<moody_queue>(t, "moodycamel, no tokens, enqueue (unbounded)", p, c, where);
#endif
#if defined(SPINDLE_BENCH_HAVE_TBB)
    add_rate<tbb_queue>(t, "tbb::concurrent_bounded_queue", p, c, where);
#endif
#if defined(SPINDLE_BENCH_HAVE_BOOST_LOCKFREE)
    add_rate<boost_queue>(t, "boost::lockfree::queue (spins)", p, c, where);
#endif
    add_rate<mutex_queue>(t, "mutex + condition_variable ring", p, c, where);
    t.note("capacity 1024 for every bounded row; moodycamel is unbounded (pre-sized for 1024 "
           "items and P producer tokens, it grows instead of making producers wait).");
    t.note("waiting: spindle's blocking calls poll briefly, then sleep on a futex (no switch to "
           "sleep at once); moodycamel's semaphore polls briefly too; tbb and the mutex ring "
           "sleep at once; boost::lockfree cannot block (its threads spin, then yield).");
    t.run();
  }

  void spsc(bench::placement where) {
    bench::suite t(a, std::string("spsc_queue 1P1C, ") + bench::to_string(where), "M items/s",
                   1e-6);
    add_rate<spindle_spsc>(t, "spindle::spsc_queue", 1, 1, where, true);
    add_rate<spindle_mpmc>(t, "spindle::bounded_queue", 1, 1, where);
#if defined(SPINDLE_BENCH_HAVE_BOOST_LOCKFREE)
    add_rate<boost_spsc>(t, "boost::lockfree::spsc_queue (spins)", 1, 1, where);
#endif
#if defined(SPINDLE_BENCH_HAVE_RWQUEUE)
    add_rate<moody_rw>(t, "moodycamel::BlockingReaderWriterQueue", 1, 1, where);
#endif
    t.run();
  }

  void latency(bench::placement where) {
    bench::suite t(a, std::string("round trip, ") + bench::to_string(where), "ns", 1e9, false);
    add_latency<spindle_spsc>(t, "spindle::spsc_queue", where, true);
    add_latency<spindle_mpmc>(t, "spindle::bounded_queue", where);
#if defined(SPINDLE_BENCH_HAVE_TBB)
    add_latency<tbb_queue>(t, "tbb::concurrent_bounded_queue", where);
#endif
#if defined(SPINDLE_BENCH_HAVE_BOOST_LOCKFREE)
    add_latency<boost_queue>(t, "boost::lockfree::queue (spins)", where);
    add_latency<boost_spsc>(t, "boost::lockfree::spsc_queue (spins)", where);
#endif
    add_latency<mutex_queue>(t, "mutex + condition_variable ring", where);
#if defined(SPINDLE_BENCH_HAVE_MOODYCAMEL)
    add_latency<moody_tokens>(t, "moodycamel + tokens, pre-sized (unbounded)", where);
#endif
    t.run();
  }
};

}  // namespace

int main(int argc, char** argv) {
  bench::args a(argc, argv, {.items = 2'000'000, .runs = 5});
  std::printf("bench_queue: %llu items, capacity %zu, %d rounds + %d warm-up, %u CPUs\n",
              static_cast<unsigned long long>(a.items), capacity, a.runs, a.warmup,
              std::thread::hardware_concurrency());
  bench::watchdog(a.smoke ? 240 : 1800, "bench_queue");
  tables s{a};
  // Headline: every hand-off crosses cores. On one core (below) only the cheap tables.
  s.mpmc(1, 1, bench::placement::split);
  s.mpmc(2, 2, bench::placement::split);
  s.mpmc(4, 4, bench::placement::split);
  s.spsc(bench::placement::split);
  s.latency(bench::placement::split);
  s.mpmc(1, 1, bench::placement::same_core);
  s.spsc(bench::placement::same_core);
  return 0;
}
