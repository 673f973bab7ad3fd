// 12_redis_workers: one worker_pool shape over an in-process queue or a reliable Redis queue.
//
//   12_redis_workers                          runs in-process over a bounded_queue
//   12_redis_workers redis://127.0.0.1:6379   runs over spindle::redis::queue "example:jobs"
//                                             (other processes could push and pop it too)
//
// The producer pushes jobs, worker_pool handles them with 4 threads, close() lets the pool drain
// and join. Over Redis, each job is acknowledged only after the handler returns; a throwing
// handler gets the job redelivered, then dead-lettered after max_deliveries.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <spindle/bounded_queue.hpp>
#include <spindle/redis/queue.hpp>
#include <spindle/worker_pool.hpp>
#include <string>

namespace {

constexpr int jobs = 200;

// The same code for any channel of int: produce, consume with a worker_pool, report.
template <class Channel>
long run(Channel& q) {
  std::atomic<long> sum{0};
  spindle::worker_pool pool(q, 4, [&](int job) {
    sum.fetch_add(job * job, std::memory_order_relaxed);  // "work"
  });
  for (int i = 1; i <= jobs; ++i)
    if (q.push(i) != spindle::status::ok) break;
  q.close();    // every process sees it; workers drain what is left, then stop
  pool.join();  // returns once the queue is closed and drained
  auto st = pool.stats();
  std::printf("processed %llu jobs, %llu failed, sum of squares %ld\n",
              static_cast<unsigned long long>(st.processed),
              static_cast<unsigned long long>(st.failed), sum.load());
  return sum.load();
}

}  // namespace

int main(int argc, char** argv) {
  const long expected = static_cast<long>(jobs) * (jobs + 1) * (2 * jobs + 1) / 6;
  try {
    if (argc < 2) {
      std::printf("no redis URL given: in-process bounded_queue\n");
      spindle::bounded_queue<int> q(64);
      return run(q) == expected ? 0 : 1;
    }
    auto opts = spindle::redis::options::from_url(argv[1]);
    spindle::redis::queue<int> q("example:jobs", opts,
                                 {.visibility_timeout = std::chrono::seconds(5)});
    q.destroy();  // a fresh queue for the demo (a real deployment keeps it)
    std::printf("redis queue %s on %s:%u\n", q.name().c_str(), opts.host.c_str(),
                static_cast<unsigned>(opts.port));
    long sum = run(q);
    return sum == expected ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "12_redis_workers: %s\n", e.what());
    return 1;
  }
}
