// bench_redis_async - redis::async_client (many commands in flight on one connection) against
// spindle's synchronous pool and hiredis, on a redis-server started for the run.
//
//   bench_redis_async [--items N] [--runs K] [--smoke]
//
// 1. Callers: 1, 8 and 64 threads each doing SET key value, then GET key (checked), N commands
//    in all per configuration:
//      - async_client: one client (one connection) shared by every thread; each call waits for
//        its reply, so the batching comes only from other threads: call() (sleeps on a
//        semaphore) and command(...).get() (spindle::future's wait, which spins first);
//      - redis::pool with one connection per thread (max_connections = threads);
//      - hiredis, one redisContext per thread (if found).
//    One warm-up run of each, then K rounds, each running every implementation once
//    (interleaved, so drifts of the shared machine hit all alike); min / median / max.
// 2. One caller issuing 1,000 commands (SET, GET pairs) before waiting for them, against
//    redis-benchmark -t set,get -P 16 with -c 1 and with its default 50 clients.
// Every reply is validated; a wrong one stops the benchmark.
#include <spindle/redis/async_client.hpp>
#include <spindle/redis/connection.hpp>
#include <spindle/redis/pool.hpp>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "../tests/support/redis_server.hpp"
#include "harness.hpp"

#ifdef SPINDLE_BENCH_HAVE_HIREDIS
#include <hiredis/hiredis.h>
#endif

namespace redis = spindle::redis;

namespace {

std::string key_of(int t, std::uint64_t i) {
  return "b:" + std::to_string(t) + ":" + std::to_string(i % 1000);
}
std::string value_of(int t, std::uint64_t i) { return std::to_string(t * 1000003 + i); }

// Runs `per_thread(t, ops)` on `threads` threads released together; returns commands/s.
double run_threads(int threads, std::uint64_t commands,
                   const std::function<void(int, std::uint64_t)>& per_thread) {
  std::uint64_t pairs = commands / 2 / static_cast<std::uint64_t>(threads);
  std::vector<std::thread> ts;
  std::atomic<bool> go{false};
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&, t] {
      go.wait(false, std::memory_order_acquire);  // start gate (sleeps)
      per_thread(t, pairs);
    });
  auto t0 = bench::clock::now();
  go.store(true, std::memory_order_release);
  go.notify_all();
  for (auto& th : ts) th.join();
  return static_cast<double>(2 * pairs * static_cast<std::uint64_t>(threads)) /
         bench::seconds_since(t0);
}

double async_callers(redis::async_client& c, int threads, std::uint64_t n) {
  return run_threads(threads, n, [&](int t, std::uint64_t pairs) {
    for (std::uint64_t i = 0; i < pairs; ++i) {
      auto k = key_of(t, i), v = value_of(t, i);
      c.command("SET", k, v).get();
      bench::validate(c.command("GET", k).get().str() == v, "async_client GET");
    }
  });
}

double async_call_callers(redis::async_client& c, int threads, std::uint64_t n) {
  return run_threads(threads, n, [&](int t, std::uint64_t pairs) {
    for (std::uint64_t i = 0; i < pairs; ++i) {
      auto k = key_of(t, i), v = value_of(t, i);
      c.call("SET", k, v);
      bench::validate(c.call("GET", k).str() == v, "async_client call GET");
    }
  });
}

double pool_callers(redis::pool& p, int threads, std::uint64_t n) {
  return run_threads(threads, n, [&](int t, std::uint64_t pairs) {
    for (std::uint64_t i = 0; i < pairs; ++i) {
      auto k = key_of(t, i), v = value_of(t, i);
      p.command("SET", k, v);
      bench::validate(p.command("GET", k).str() == v, "pool GET");
    }
  });
}

#ifdef SPINDLE_BENCH_HAVE_HIREDIS
double hiredis_callers(std::uint16_t port, int threads, std::uint64_t n) {
  std::vector<redisContext*> hs;
  for (int t = 0; t < threads; ++t) {
    hs.push_back(redisConnect("127.0.0.1", port));
    bench::validate(hs.back() != nullptr && hs.back()->err == 0, "hiredis connect");
  }
  double rate = run_threads(threads, n, [&](int t, std::uint64_t pairs) {
    redisContext* h = hs[static_cast<std::size_t>(t)];
    for (std::uint64_t i = 0; i < pairs; ++i) {
      auto k = key_of(t, i), v = value_of(t, i);
      auto* s = static_cast<redisReply*>(
          redisCommand(h, "SET %b %b", k.data(), k.size(), v.data(), v.size()));
      bench::validate(s != nullptr && s->type == REDIS_REPLY_STATUS, "hiredis SET");
      freeReplyObject(s);
      auto* g = static_cast<redisReply*>(redisCommand(h, "GET %b", k.data(), k.size()));
      bench::validate(g != nullptr && g->type == REDIS_REPLY_STRING &&
                          std::string(g->str, g->len) == v,
                      "hiredis GET");
      freeReplyObject(g);
    }
  });
  for (auto* h : hs) redisFree(h);
  return rate;
}
#endif

// One caller, `depth` commands issued before any is awaited; returns commands/s.
double one_caller_in_flight(redis::async_client& c, std::uint64_t n, std::size_t depth) {
  std::vector<spindle::future<redis::reply>> fs;
  fs.reserve(depth);
  auto t0 = bench::clock::now();
  std::uint64_t done = 0;
  while (done < n) {
    for (std::size_t j = 0; j < depth / 2; ++j) {
      auto k = key_of(0, j);
      fs.push_back(c.command("SET", k, value_of(0, done + j)));
      fs.push_back(c.command("GET", k));
    }
    for (std::size_t j = 0; j < fs.size(); j += 2) {
      fs[j].get();
      bench::validate(fs[j + 1].get().str() == value_of(0, done + j / 2), "in-flight GET");
    }
    done += fs.size();
    fs.clear();
  }
  return static_cast<double>(done) / bench::seconds_since(t0);
}

// redis-benchmark -t set,get -P 16: the combined rate of its SET and GET runs (n of each over
// the total time), or 0 if it is missing.
double redis_benchmark(std::uint16_t port, std::uint64_t n, int clients) {
  std::string cmd = "redis-benchmark -h 127.0.0.1 -p " + std::to_string(port) + " -c " +
                    std::to_string(clients) + " -P 16 -n " + std::to_string(n) +
                    " -t set,get --csv 2>/dev/null";
  FILE* f = ::popen(cmd.c_str(), "r");
  if (f == nullptr) return 0;
  char line[512];
  double set = 0, get = 0;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::strncmp(line, "\"SET\",\"", 7) == 0) set = std::strtod(line + 7, nullptr);
    if (std::strncmp(line, "\"GET\",\"", 7) == 0) get = std::strtod(line + 7, nullptr);
  }
  ::pclose(f);
  return set > 0 && get > 0 ? 2 / (1 / set + 1 / get) : 0;
}

struct spread {
  std::vector<double> v;
  void add(double x) { v.push_back(x); }
  double min() const { return *std::min_element(v.begin(), v.end()); }
  double max() const { return *std::max_element(v.begin(), v.end()); }
  double median() const { return bench::median(v); }
  std::string text() const {
    char b[96];
    std::snprintf(b, sizeof b, "min %.1f  max %.1f", min() / 1e3, max() / 1e3);
    return b;
  }
};

}  // namespace

int main(int argc, char** argv) {
  bench::args a(argc, argv, {.items = 40'000, .runs = 5});
  if (test_support::redis_server::binary().empty()) {
    std::printf("bench_redis_async: redis-server not found; nothing to measure\n");
    return 0;
  }
  const std::uint64_t n = a.smoke ? 2'000 : a.items;
  test_support::redis_server srv;
  const redis::options o{.port = srv.port()};
  redis::async_client client(o, {.max_in_flight = 4096});
  std::printf("bench_redis_async: redis-server on 127.0.0.1:%u, %llu commands (SET+GET) per "
              "configuration, %d interleaved runs after a warm-up; %u hardware threads\n",
              static_cast<unsigned>(srv.port()), static_cast<unsigned long long>(n), a.runs,
              std::thread::hardware_concurrency());

  for (int threads : {1, 8, 64}) {
    redis::pool pool(o, {.max_connections = static_cast<std::size_t>(threads)});
    spread as, cs, ps, hs;
    for (int run = -1; run < a.runs; ++run) {  // run -1: warm-up, not recorded
      double x = async_callers(client, threads, n);
      double w = async_call_callers(client, threads, n);
      double y = pool_callers(pool, threads, n);
      double z = 0;
#ifdef SPINDLE_BENCH_HAVE_HIREDIS
      z = hiredis_callers(srv.port(), threads, n);
#endif
      if (run < 0) continue;
      as.add(x);
      cs.add(w);
      ps.add(y);
      if (z > 0) hs.add(z);
    }
    bench::table t(std::to_string(threads) + " caller thread(s), SET+GET, each call awaited "
                                              "(median; k commands/s)",
                   "k cmd/s");
    t.add("async_client call() (1 connection)  " + cs.text(), cs.median() / 1e3, true);
    t.add("async_client command().get()  " + as.text(), as.median() / 1e3);
    t.add("redis::pool (" + std::to_string(threads) + " connections)  " + ps.text(),
          ps.median() / 1e3);
    if (!hs.v.empty())
      t.add("hiredis (" + std::to_string(threads) + " connections)  " + hs.text(),
            hs.median() / 1e3);
    t.print();
  }

  spread one, b1, b50;
  const std::uint64_t m = a.smoke ? 4'000 : n * 10;
  for (int run = -1; run < a.runs; ++run) {
    double x = one_caller_in_flight(client, m, 1000);
    double y = a.smoke ? 0 : redis_benchmark(srv.port(), m / 2, 1);
    double z = a.smoke ? 0 : redis_benchmark(srv.port(), m / 2, 50);
    if (run < 0) continue;
    one.add(x);
    if (y > 0) b1.add(y);
    if (z > 0) b50.add(z);
  }
  bench::table t("1 caller, 1,000 commands (SET+GET) in flight before waiting (median; k cmd/s)",
                 "k cmd/s");
  t.add("async_client  " + one.text(), one.median() / 1e3, true);
  if (!b1.v.empty()) t.add("redis-benchmark -c 1 -P 16  " + b1.text(), b1.median() / 1e3);
  if (!b50.v.empty()) t.add("redis-benchmark -c 50 -P 16  " + b50.text(), b50.median() / 1e3);
  t.print();
  std::printf("async_client writes: %zu for all commands above (automatic pipelining)\n",
              client.writes());
  return 0;
}
