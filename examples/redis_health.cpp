// redis_health: the health report of a Redis queue and a Redis stream, as a monitoring job
// would print it. Some work is ready, some held by a worker, some dead-lettered; the report
// says how much, who holds it and for how long, in a few read-only round trips that never
// block and change nothing.
//
//   redis_health redis://127.0.0.1:6379
#include <chrono>
#include <cstdio>
#include <exception>
#include <spindle/redis/queue.hpp>
#include <spindle/redis/stream.hpp>
#include <string>

using namespace std::chrono_literals;
namespace redis = spindle::redis;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: redis_health redis://host:port\n");
    return 2;
  }
  try {
    auto opts = redis::options::from_url(argv[1]);
    redis::queue<int> jobs("example:jobs", opts, {.max_deliveries = 1, .poll_interval = 20ms});
    redis::stream<int> events("example:events", opts,
                              {.group = "audit", .max_deliveries = 1, .poll_interval = 20ms});
    jobs.destroy();  // a fresh demo
    events.destroy();

    for (int i = 1; i <= 6; ++i) jobs.push(i);
    redis::queue<int>::delivery j1, j2, j3;
    jobs.try_pop_delivery(j1);  // held
    jobs.try_pop_delivery(j2);  // held
    jobs.try_pop_delivery(j3);
    jobs.nack(j3);  // max_deliveries 1: dead-lettered

    for (int i = 1; i <= 5; ++i) events.push(i);
    redis::stream<int>::delivery e1, e2, e3;
    events.try_pop_delivery(e1);
    events.ack(e1);
    events.try_pop_delivery(e2);  // held
    events.try_pop_delivery(e3);
    events.nack(e3);  // dead-lettered

    auto q = jobs.health();
    std::printf("queue %s: ready %llu, held %llu, dead %llu, pending %llu\n", jobs.name().c_str(),
                static_cast<unsigned long long>(q.ready), static_cast<unsigned long long>(q.held),
                static_cast<unsigned long long>(q.dead_letters),
                static_cast<unsigned long long>(q.pending));
    for (const auto& c : q.consumers)
      std::printf("  consumer holds %llu, lease %s\n", static_cast<unsigned long long>(c.held),
                  c.lease_left && *c.lease_left > 0ms ? "live" : "expired or gone");
    std::printf("  oldest ready: job id %llu, %llu pushed after it, waiting %s\n",
                static_cast<unsigned long long>(q.oldest_ready_id),
                static_cast<unsigned long long>(q.ids_since_oldest_ready),
                !q.oldest_ready_age ? "(unknown)"
                : *q.oldest_ready_age < 1min ? "< 1 min" : ">= 1 min");

    auto s = events.health();
    std::printf("stream %s: %llu entries, %llu dead\n", events.name().c_str(),
                static_cast<unsigned long long>(s.length),
                static_cast<unsigned long long>(s.dead_letters));
    bool ok = q.ready == 3 && q.held == 2 && q.dead_letters == 1 && s.groups.size() == 1;
    for (const auto& g : s.groups) {
      std::printf("  group %s: lag %s, pending %llu, oldest pending idle %s\n", g.name.c_str(),
                  g.lag ? std::to_string(*g.lag).c_str() : "unknown",
                  static_cast<unsigned long long>(g.pending),
                  g.oldest_pending_idle ? "< 1 min" : "-");
      for (const auto& c : g.consumers)
        std::printf("    consumer holds %llu, idle %s\n",
                    static_cast<unsigned long long>(c.pending), c.idle < 1min ? "< 1 min" : "-");
      ok = ok && g.pending == 1 && g.lag.value_or(2) == 2;
    }
    events.ack(e2);
    jobs.ack(j1);
    jobs.ack(j2);
    jobs.destroy();
    events.destroy();
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "redis_health: %s\n", e.what());
    return 1;
  }
}
