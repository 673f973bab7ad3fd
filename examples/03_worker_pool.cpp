// Worker pool: a thread_pool runs independent jobs (here: counting primes below several limits);
// as_completed hands back each future as soon as its job finishes, so results are used in
// completion order rather than submission order. Then a worker_pool drains a channel of jobs.
#include <spindle/bounded_queue.hpp>
#include <spindle/future.hpp>
#include <spindle/thread_pool.hpp>
#include <spindle/worker_pool.hpp>

#include <atomic>
#include <cstdio>
#include <utility>
#include <vector>

static int count_primes(int limit) {
  int n = 0;
  for (int i = 2; i < limit; ++i) {
    bool prime = true;
    for (int d = 2; d * d <= i && prime; ++d) prime = i % d != 0;
    n += prime;
  }
  return n;
}

int main() {
  spindle::thread_pool pool(2);
  std::vector<spindle::future<std::pair<int, int>>> jobs;
  for (int limit : {40000, 1000, 20000, 5000})
    jobs.push_back(pool.submit([limit] { return std::pair{limit, count_primes(limit)}; }));

  int total = 0;
  for (auto&& f : spindle::as_completed(std::move(jobs))) {
    auto [limit, primes] = f.get();
    std::printf("primes below %5d: %d\n", limit, primes);
    total += primes;
  }

  // The same work fed through a channel to a worker_pool of two threads.
  spindle::bounded_queue<int> limits(8);
  std::atomic<int> channel_total{0};
  spindle::worker_pool workers(limits, 2, [&](int limit) { channel_total += count_primes(limit); });
  for (int limit : {40000, 1000, 20000, 5000}) limits.push(limit);
  limits.close();
  workers.join();

  std::printf("total %d, through the worker_pool %d\n", total, channel_total.load());
  return total == channel_total.load() ? 0 : 1;
}
