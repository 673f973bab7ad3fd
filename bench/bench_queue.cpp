// bench_queue: spindle's bounded_queue and spsc_queue against the peers installed here.
//
// Workload (the same for every implementation, in one run): uint64 items, capacity 1024,
// --items items (default 10M) split evenly over P producers and C consumers, 1P1C, 2P2C, 4P4C;
// throughput is the median of --runs runs (default 5). Round-trip latency: two threads bounce
// one item through a pair of queues. Every run is validated (count and checksum). The rows of a
// table run in turn, run after run, so that load from other processes disturbs them alike.
//
// Placement: headline figures pin producers and consumers to different cores (every hand-off
// crosses cores); the same workload with every thread on one core is reported beside them.
//
// Peers (each only where its headers were found): tbb::concurrent_bounded_queue,
// boost::lockfree::queue (capacity 1024; it cannot block, so its threads spin, then yield),
// moodycamel::BlockingConcurrentQueue (unbounded!, with and without tokens), a mutex and
// condition-variable ring; for SPSC: boost::lockfree::spsc_queue (spins) and
// moodycamel::BlockingReaderWriterQueue.
//
//   bench_queue [--items N] [--runs K] [--smoke]
#include <spindle/bounded_queue.hpp>
#include <spindle/spsc_queue.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <functional>
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

// ---- adapters: q.producer() and q.consumer() give per-thread handles with push(v) / pop() ----

template <class Self>
struct shared_handles {  // for queues without per-thread tokens: the handle is the queue
  Self& producer() { return static_cast<Self&>(*this); }
  Self& consumer() { return static_cast<Self&>(*this); }
};

struct spindle_mpmc : shared_handles<spindle_mpmc> {
  spindle::bounded_queue<std::uint64_t> q{capacity};
  void push(std::uint64_t v) { q.push(v); }
  std::uint64_t pop() {
    std::uint64_t v = 0;
    q.pop(v);
    return v;
  }
};

struct spindle_spsc : shared_handles<spindle_spsc> {
  spindle::spsc_queue<std::uint64_t> q{capacity};
  void push(std::uint64_t v) { q.push(v); }
  std::uint64_t pop() {
    std::uint64_t v = 0;
    q.pop(v);
    return v;
  }
};

// The textbook blocking queue: a ring under one mutex, two condition variables.
struct mutex_queue : shared_handles<mutex_queue> {
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
  std::uint64_t pop() {
    std::unique_lock lock(mu);
    not_empty.wait(lock, [&] { return count > 0; });
    std::uint64_t v = ring[head];
    head = (head + 1) % capacity;
    --count;
    lock.unlock();
    not_full.notify_one();
    return v;
  }
};

#if defined(SPINDLE_BENCH_HAVE_TBB)
struct tbb_queue : shared_handles<tbb_queue> {
  tbb::concurrent_bounded_queue<std::uint64_t> q;
  tbb_queue() { q.set_capacity(capacity); }
  void push(std::uint64_t v) { q.push(v); }
  std::uint64_t pop() {
    std::uint64_t v = 0;
    q.pop(v);
    return v;
  }
};
#endif

#if defined(SPINDLE_BENCH_HAVE_BOOST_LOCKFREE)
struct boost_queue : shared_handles<boost_queue> {
  boost::lockfree::queue<std::uint64_t, boost::lockfree::capacity<capacity>> q;
  void push(std::uint64_t v) {
    for (backoff b; !q.push(v);) b.pause();
  }
  std::uint64_t pop() {
    std::uint64_t v = 0;
    for (backoff b; !q.pop(v);) b.pause();
    return v;
  }
};

struct boost_spsc : shared_handles<boost_spsc> {
  boost::lockfree::spsc_queue<std::uint64_t, boost::lockfree::capacity<capacity>> q;
  void push(std::uint64_t v) {
    for (backoff b; !q.push(v);) b.pause();
  }
  std::uint64_t pop() {
    std::uint64_t v = 0;
    for (backoff b; !q.pop(v);) b.pause();
    return v;
  }
};
#endif

#if defined(SPINDLE_BENCH_HAVE_MOODYCAMEL)
struct moody_queue : shared_handles<moody_queue> {
  moodycamel::BlockingConcurrentQueue<std::uint64_t> q;
  void push(std::uint64_t v) { q.enqueue(v); }
  std::uint64_t pop() {
    std::uint64_t v = 0;
    q.wait_dequeue(v);
    return v;
  }
};

struct moody_tokens {
  moodycamel::BlockingConcurrentQueue<std::uint64_t> q;
  struct prod {
    moodycamel::BlockingConcurrentQueue<std::uint64_t>& q;
    moodycamel::ProducerToken t;
    void push(std::uint64_t v) { q.enqueue(t, v); }
  };
  struct cons {
    moodycamel::BlockingConcurrentQueue<std::uint64_t>& q;
    moodycamel::ConsumerToken t;
    std::uint64_t pop() {
      std::uint64_t v = 0;
      q.wait_dequeue(t, v);
      return v;
    }
  };
  prod producer() { return prod{q, moodycamel::ProducerToken(q)}; }
  cons consumer() { return cons{q, moodycamel::ConsumerToken(q)}; }
};
#endif

#if defined(SPINDLE_BENCH_HAVE_RWQUEUE)
struct moody_rw : shared_handles<moody_rw> {
  moodycamel::BlockingReaderWriterQueue<std::uint64_t> q{capacity};
  void push(std::uint64_t v) {
    for (backoff b; !q.try_enqueue(v);) b.pause();  // try_enqueue: never allocates (bounded)
  }
  std::uint64_t pop() {
    std::uint64_t v = 0;
    q.wait_dequeue(v);
    return v;
  }
};
#endif

// ---- workloads -------------------------------------------------------------------------------

// Items per second (millions) for P producers and C consumers moving n items; validated.
template <class Q>
double throughput(int producers, int consumers, std::uint64_t n, bench::placement where) {
  Q q;
  const std::uint64_t per_p = n / static_cast<std::uint64_t>(producers);
  const std::uint64_t per_c = n / static_cast<std::uint64_t>(consumers);
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::atomic<std::uint64_t> sum{0}, count{0};
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
      std::uint64_t s = 0;
      for (std::uint64_t i = 0; i < per_c; ++i) s += h.pop();
      sum.fetch_add(s);
      count.fetch_add(per_c);
    });
  while (ready.load() != producers + consumers) std::this_thread::yield();
  auto t0 = bench::clock::now();
  go.store(true, std::memory_order_release);
  for (auto& t : threads) t.join();
  double secs = bench::seconds_since(t0);
  bench::validate(count.load() == n, "item count");
  bench::validate(sum.load() == n * (n + 1) / 2, "item checksum");
  return static_cast<double>(n) / secs / 1e6;
}

// Mean round-trip time (ns) of one item bounced between two threads through two queues.
template <class Q>
double round_trip_ns(std::uint64_t rounds, bench::placement where) {
  Q ping, pong;
  std::uint64_t echoed = 0;
  std::thread echo([&] {
    bench::place(where, 1, 0);
    auto&& in = ping.consumer();
    auto&& out = pong.producer();
    for (std::uint64_t i = 0; i < rounds; ++i) {
      std::uint64_t v = in.pop();
      echoed += v;
      out.push(v + 1);
    }
  });
  bench::place(where, 0, 0);
  auto&& out = ping.producer();
  auto&& in = pong.consumer();
  std::uint64_t check = 0;
  auto t0 = bench::clock::now();
  for (std::uint64_t i = 0; i < rounds; ++i) {
    out.push(i);
    check += in.pop();
  }
  double secs = bench::seconds_since(t0);
  echo.join();
  std::uint64_t expect = rounds * (rounds - 1) / 2;
  bench::validate(echoed == expect && check == expect + rounds, "round-trip checksum");
  return secs * 1e9 / static_cast<double>(rounds);
}

void unpin() {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (unsigned i = 0; i < std::max(1u, std::thread::hardware_concurrency()); ++i)
    CPU_SET(i, &set);
  pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

// One table: its rows run in turn, run after run (not all runs of one row, then the next), so
// that load from other processes on this shared machine disturbs every row alike.
class interleaved {
 public:
  interleaved(const bench::args& a, std::string title, std::string unit, bool higher = true)
      : a_(a), title_(std::move(title)), unit_(std::move(unit)), higher_(higher) {}

  void add(std::string name, std::function<double()> once, bool ours = false) {
    rows_.push_back({std::move(name), std::move(once), ours, {}});
  }

  void run_and_print() {
    for (int r = 0; r < a_.runs; ++r)
      for (auto& row : rows_) {
        row.results.push_back(row.once());
        unpin();
      }
    bench::table t(title_, unit_, higher_);
    for (auto& row : rows_) t.add(row.name, bench::median(row.results), row.ours);
    t.print();
  }

 private:
  struct row {
    std::string name;
    std::function<double()> once;
    bool ours;
    std::vector<double> results;
  };
  const bench::args& a_;
  std::string title_, unit_;
  bool higher_;
  std::vector<row> rows_;
};

struct suite {
  const bench::args& a;

  template <class Q>
  void add_rate(interleaved& t, const char* name, int p, int c, bench::placement where,
                bool ours = false) {
    std::uint64_t n = a.items - a.items % static_cast<std::uint64_t>(p * c);
    t.add(name, [=] { return throughput<Q>(p, c, n, where); }, ours);
  }

  template <class Q>
  void add_latency(interleaved& t, const char* name, bench::placement where, bool ours = false) {
    std::uint64_t rounds = a.smoke ? 1000 : 20'000;
    t.add(name, [=] { return round_trip_ns<Q>(rounds, where); }, ours);
  }

  void mpmc(int p, int c, bench::placement where) {
    std::string title = "bounded_queue " + std::to_string(p) + "P" + std::to_string(c) + "C, " +
                        bench::to_string(where);
    interleaved t(a, title, "M items/s");
    add_rate<spindle_mpmc>(t, "spindle::bounded_queue", p, c, where, true);
#if defined(SPINDLE_BENCH_HAVE_TBB)
    add_rate<tbb_queue>(t, "tbb::concurrent_bounded_queue", p, c, where);
#endif
#if defined(SPINDLE_BENCH_HAVE_BOOST_LOCKFREE)
    add_rate<boost_queue>(t, "boost::lockfree::queue (spins)", p, c, where);
#endif
    add_rate<mutex_queue>(t, "mutex + condition_variable ring", p, c, where);
#if defined(SPINDLE_BENCH_HAVE_MOODYCAMEL)
    add_rate<moody_queue>(t, "moodycamel::BlockingCQ (unbounded)", p, c, where);
    add_rate<moody_tokens>(t, "moodycamel::BlockingCQ + tokens (unbounded)", p, c, where);
#endif
    t.run_and_print();
  }

  void spsc(bench::placement where) {
    interleaved t(a, std::string("spsc_queue 1P1C, ") + bench::to_string(where), "M items/s");
    add_rate<spindle_spsc>(t, "spindle::spsc_queue", 1, 1, where, true);
    add_rate<spindle_mpmc>(t, "spindle::bounded_queue", 1, 1, where);
#if defined(SPINDLE_BENCH_HAVE_BOOST_LOCKFREE)
    add_rate<boost_spsc>(t, "boost::lockfree::spsc_queue (spins)", 1, 1, where);
#endif
#if defined(SPINDLE_BENCH_HAVE_RWQUEUE)
    add_rate<moody_rw>(t, "moodycamel::BlockingReaderWriterQueue", 1, 1, where);
#endif
    t.run_and_print();
  }

  void latency(bench::placement where) {
    interleaved t(a, std::string("round trip, ") + bench::to_string(where), "ns", false);
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
    add_latency<moody_queue>(t, "moodycamel::BlockingCQ (unbounded)", where);
#endif
    t.run_and_print();
  }
};

}  // namespace

int main(int argc, char** argv) {
  bench::args a(argc, argv, {.items = 10'000'000, .runs = 5});
  std::printf("bench_queue: %llu items, capacity %zu, median of %d run(s), %u CPUs\n",
              static_cast<unsigned long long>(a.items), capacity, a.runs,
              std::thread::hardware_concurrency());
  suite s{a};
  for (auto where : {bench::placement::split, bench::placement::same_core}) {
    s.mpmc(1, 1, where);
    s.mpmc(2, 2, where);
    s.mpmc(4, 4, where);
    s.spsc(where);
    s.latency(where);
  }
  return 0;
}
