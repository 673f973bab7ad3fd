// Fan-out/fan-in: one source of jobs is dealt round-robin to three worker queues (fan_out); each
// worker squares its numbers into its own result queue; fan_in merges the results into one
// collector queue. Closing the source flows through: fan_out closes the worker queues, the
// workers close their result queues, fan_in closes the collector.
#include <spindle/bounded_queue.hpp>
#include <spindle/fan.hpp>

#include <cstdio>
#include <deque>
#include <thread>
#include <vector>

int main() {
  constexpr int workers = 3, jobs = 1000;
  spindle::bounded_queue<long> source(32), collector(32);
  std::deque<spindle::bounded_queue<long>> inbox, outbox;  // deque: queues do not move
  for (int i = 0; i < workers; ++i) {
    inbox.emplace_back(8);
    outbox.emplace_back(8);
  }
  std::vector<spindle::bounded_queue<long>*> ins, outs;
  for (int i = 0; i < workers; ++i) {
    ins.push_back(&inbox[i]);
    outs.push_back(&outbox[i]);
  }

  std::vector<std::jthread> threads;
  threads.emplace_back([&] { spindle::fan_out(source, ins); });
  for (int i = 0; i < workers; ++i) {
    threads.emplace_back([&, i] {
      long v;
      while (inbox[i].pop(v) == spindle::status::ok) outbox[i].push(v * v);
      outbox[i].close();
    });
  }
  threads.emplace_back([&] { spindle::fan_in(outs, collector); });
  threads.emplace_back([&] {
    for (long j = 1; j <= jobs; ++j) source.push(j);
    source.close();
  });

  long sum = 0, count = 0, v;
  while (collector.pop(v) == spindle::status::ok) {  // the collector
    sum += v;
    ++count;
  }
  const long want = long(jobs) * (jobs + 1) * (2 * jobs + 1) / 6;
  std::printf("collected %ld results, sum of squares %ld (expected %ld)\n", count, sum, want);
  return sum == want ? 0 : 1;
}
