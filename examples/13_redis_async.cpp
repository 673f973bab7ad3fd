// 13_redis_async: fetch 1,000 keys one after another, then all at once, on one connection.
//
//   13_redis_async redis://127.0.0.1:6379
//
// The course's asyncio.gather comparison, in C++ threads and futures. Sequentially, each GET
// waits for its reply before the next one is sent: 1,000 round trips. Concurrently, all 1,000
// GETs are issued before any is awaited: spindle::redis::async_client writes whatever queued
// while its previous write was in flight in one write (automatic pipelining), so the batch
// costs a few round trips, and spindle::when_all gathers the replies in key order.
#include <chrono>
#include <cstdio>
#include <exception>
#include <spindle/future.hpp>
#include <spindle/redis/async_client.hpp>
#include <string>
#include <vector>

namespace {

constexpr int keys = 1000;

std::string key(int i) { return "example:async:" + std::to_string(i); }
std::string value(int i) { return "value-" + std::to_string(i); }

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::printf("usage: 13_redis_async redis://host:port  (needs a Redis server)\n");
    return 0;
  }
  try {
    spindle::redis::async_client c(spindle::redis::options::from_url(argv[1]));
    std::vector<spindle::future<spindle::redis::reply>> sets;
    for (int i = 0; i < keys; ++i) sets.push_back(c.command("SET", key(i), value(i)));
    spindle::when_all(std::move(sets)).get();

    // Sequential: one round trip per key.
    auto t0 = std::chrono::steady_clock::now();
    int right = 0;
    for (int i = 0; i < keys; ++i) right += c.call("GET", key(i)).str() == value(i);
    double sequential = ms_since(t0);

    // Concurrent: issue every GET, then gather.
    t0 = std::chrono::steady_clock::now();
    std::vector<spindle::future<spindle::redis::reply>> gets;
    for (int i = 0; i < keys; ++i) gets.push_back(c.command("GET", key(i)));
    auto replies = spindle::when_all(std::move(gets)).get();
    double concurrent = ms_since(t0);
    for (int i = 0; i < keys; ++i)
      right += replies[static_cast<std::size_t>(i)].str() == value(i);

    std::printf("sequential: %d GETs in %.2f ms\n", keys, sequential);
    std::printf("concurrent: %d GETs in %.2f ms (%.1fx faster)\n", keys, concurrent,
                sequential / concurrent);
    std::printf("%d of %d replies right\n", right, 2 * keys);
    return right == 2 * keys ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "13_redis_async: %s\n", e.what());
    return 1;
  }
}
