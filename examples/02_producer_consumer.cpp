// Producer-consumer: two producers and two consumers share one bounded_queue. Producers block
// while the queue is full (backpressure); close() ends the stream, and consumers drain what is
// left before pop() reports closed. Prints the count and the checksum of what was consumed.
#include <spindle/bounded_queue.hpp>

#include <atomic>
#include <cstdio>
#include <thread>
#include <vector>

int main() {
  spindle::bounded_queue<int> queue(64);
  constexpr int per_producer = 50000;
  std::atomic<long> sum{0};
  std::atomic<int> count{0};

  std::vector<std::thread> consumers;
  for (int c = 0; c < 2; ++c) {
    consumers.emplace_back([&] {
      int v;
      while (queue.pop(v) == spindle::status::ok) {  // closed only once drained
        sum.fetch_add(v, std::memory_order_relaxed);
        count.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  std::vector<std::thread> producers;
  for (int p = 0; p < 2; ++p) {
    producers.emplace_back([&, p] {
      for (int i = 0; i < per_producer; ++i) queue.push(p * per_producer + i);  // blocks while full
    });
  }
  for (auto& t : producers) t.join();
  queue.close();  // end of stream: consumers finish the queue, then stop
  for (auto& t : consumers) t.join();

  const long n = 2L * per_producer;
  std::printf("consumed %d items, sum %ld (expected %ld)\n", count.load(), sum.load(),
              n * (n - 1) / 2);
  return sum.load() == n * (n - 1) / 2 ? 0 : 1;
}
