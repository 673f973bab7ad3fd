// bench_redis - the RESP client against hiredis and redis-benchmark, on a redis-server started
// on loopback for the run.
//
// Workloads (same server, same key, LLEN validates every run):
//   1. synchronous round trips: LPUSH one item per round trip (--items, default 100k)
//   2. pipelined 64 deep: LPUSH, 64 commands per write (10x --items, default 1M)
//   redis-benchmark runs the same LPUSH with -c 1 (-P 1 and -P 64) as a subprocess.
#include <spindle/redis.hpp>

#include <cstdio>
#include <cstdlib>  // strtod
#include <cstring>  // strncmp
#include <string>
#include <vector>

#include "../tests/support/redis_server.hpp"
#include "harness.hpp"

#ifdef SPINDLE_BENCH_HAVE_HIREDIS
#include <hiredis/hiredis.h>
#endif

namespace redis = spindle::redis;

namespace {

constexpr int depth = 64;
const char* const key = "bench:list";

std::int64_t llen(redis::connection& c) { return c.command("LLEN", key).integer(); }

double spindle_sync(redis::connection& c, std::uint64_t n) {
  c.command("DEL", key);
  auto t0 = bench::clock::now();
  for (std::uint64_t i = 0; i < n; ++i) c.command("LPUSH", key, "value");
  double rate = static_cast<double>(n) / bench::seconds_since(t0);
  bench::validate(llen(c) == static_cast<std::int64_t>(n), "spindle sync LLEN");
  return rate;
}

double spindle_pipelined(redis::connection& c, std::uint64_t n) {
  c.command("DEL", key);
  auto t0 = bench::clock::now();
  for (std::uint64_t i = 0; i < n; i += depth) {
    std::uint64_t k = std::min<std::uint64_t>(depth, n - i);
    for (std::uint64_t j = 0; j < k; ++j) c.append("LPUSH", key, "value");
    for (std::uint64_t j = 0; j < k; ++j) (void)c.read();
  }
  double rate = static_cast<double>(n) / bench::seconds_since(t0);
  bench::validate(llen(c) == static_cast<std::int64_t>(n), "spindle pipelined LLEN");
  return rate;
}

#ifdef SPINDLE_BENCH_HAVE_HIREDIS
redisContext* hiredis_connect(std::uint16_t port) {
  redisContext* h = redisConnect("127.0.0.1", port);
  bench::validate(h != nullptr && h->err == 0, "hiredis connect");
  return h;
}

void hiredis_check(void* r) {
  auto* rep = static_cast<redisReply*>(r);
  bench::validate(rep != nullptr && rep->type != REDIS_REPLY_ERROR, "hiredis reply");
  freeReplyObject(rep);
}

double hiredis_sync(redisContext* h, redis::connection& c, std::uint64_t n) {
  c.command("DEL", key);
  auto t0 = bench::clock::now();
  for (std::uint64_t i = 0; i < n; ++i) hiredis_check(redisCommand(h, "LPUSH %s %s", key, "value"));
  double rate = static_cast<double>(n) / bench::seconds_since(t0);
  bench::validate(llen(c) == static_cast<std::int64_t>(n), "hiredis sync LLEN");
  return rate;
}

double hiredis_pipelined(redisContext* h, redis::connection& c, std::uint64_t n) {
  c.command("DEL", key);
  auto t0 = bench::clock::now();
  for (std::uint64_t i = 0; i < n; i += depth) {
    std::uint64_t k = std::min<std::uint64_t>(depth, n - i);
    for (std::uint64_t j = 0; j < k; ++j) redisAppendCommand(h, "LPUSH %s %s", key, "value");
    for (std::uint64_t j = 0; j < k; ++j) {
      void* r = nullptr;
      bench::validate(redisGetReply(h, &r) == REDIS_OK, "hiredis getReply");
      hiredis_check(r);
    }
  }
  double rate = static_cast<double>(n) / bench::seconds_since(t0);
  bench::validate(llen(c) == static_cast<std::int64_t>(n), "hiredis pipelined LLEN");
  return rate;
}
#endif

// Runs redis-benchmark for LPUSH with one client; returns requests/s, or 0 if it is missing.
double redis_benchmark(std::uint16_t port, std::uint64_t n, int pipeline) {
  std::string cmd = "redis-benchmark -h 127.0.0.1 -p " + std::to_string(port) +
                    " -c 1 -P " + std::to_string(pipeline) + " -n " + std::to_string(n) +
                    " -t lpush --csv 2>/dev/null";
  FILE* f = ::popen(cmd.c_str(), "r");
  if (f == nullptr) return 0;
  char line[512];
  double rps = 0;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    // "LPUSH","970873.81",...
    if (std::strncmp(line, "\"LPUSH\",\"", 9) == 0) rps = std::strtod(line + 9, nullptr);
  }
  ::pclose(f);
  return rps;
}

}  // namespace

int main(int argc, char** argv) {
  bench::args a(argc, argv, {.items = 100'000, .runs = 3});
  if (test_support::redis_server::binary().empty()) {
    std::printf("bench_redis: redis-server not found; nothing to measure\n");
    return 0;
  }
  std::uint64_t n_sync = a.smoke ? 2'000 : a.items;
  std::uint64_t n_pipe = a.smoke ? 20'000 : a.items * 10;
  test_support::redis_server srv;
  redis::connection c({.port = srv.port()});
  std::printf("bench_redis: redis-server on 127.0.0.1:%u, %llu sync / %llu pipelined LPUSH, "
              "median of %d runs\n",
              srv.port(), static_cast<unsigned long long>(n_sync),
              static_cast<unsigned long long>(n_pipe), a.runs);

  // Runs alternate between implementations so that drift on a shared machine hits all alike.
  std::vector<double> s_sync, s_pipe, h_sync, h_pipe, b_sync, b_pipe;
#ifdef SPINDLE_BENCH_HAVE_HIREDIS
  redisContext* h = hiredis_connect(srv.port());
#endif
  for (int r = 0; r < a.runs; ++r) {
    s_sync.push_back(spindle_sync(c, n_sync) / 1e3);
#ifdef SPINDLE_BENCH_HAVE_HIREDIS
    h_sync.push_back(hiredis_sync(h, c, n_sync) / 1e3);
#endif
    b_sync.push_back(redis_benchmark(srv.port(), n_sync, 1) / 1e3);
    s_pipe.push_back(spindle_pipelined(c, n_pipe) / 1e3);
#ifdef SPINDLE_BENCH_HAVE_HIREDIS
    h_pipe.push_back(hiredis_pipelined(h, c, n_pipe) / 1e3);
#endif
    b_pipe.push_back(redis_benchmark(srv.port(), n_pipe, 64) / 1e3);
  }
#ifdef SPINDLE_BENCH_HAVE_HIREDIS
  redisFree(h);
#endif
  bench::table sync("LPUSH, synchronous round trips, 1 connection", "k ops/s");
  bench::table pipe("LPUSH, pipelined 64 deep, 1 connection", "k ops/s");
  sync.add("spindle::redis::connection", bench::median(s_sync), true);
  pipe.add("spindle::redis::connection", bench::median(s_pipe), true);
  if (!h_sync.empty()) sync.add("hiredis", bench::median(h_sync));
  if (!h_pipe.empty()) pipe.add("hiredis", bench::median(h_pipe));
  if (bench::median(b_sync) > 0) sync.add("redis-benchmark -c 1 -P 1", bench::median(b_sync));
  if (bench::median(b_pipe) > 0) pipe.add("redis-benchmark -c 1 -P 64", bench::median(b_pipe));
  sync.print();
  pipe.print();
  return 0;
}
