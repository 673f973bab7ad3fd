// bench_redis - the RESP client against hiredis and redis-benchmark, on a redis-server started
// on loopback for the run.
//
// Workloads (same server, same key, LLEN validates every run):
//   1. synchronous round trips: LPUSH one item per round trip (--items, default 100k)
//   2. pipelined 64 deep: LPUSH, 64 commands per write (10x --items, default 1M)
//   redis-benchmark runs the same LPUSH with -c 1 (-P 1 and -P 64) as a subprocess.
//   3. reliable queue end to end (--items / 5 jobs, default 20k): one producer thread pushes,
//      1 or 2 consumer threads pop, process and ack. spindle::redis::queue (pop_delivery + ack;
//      ack_and_pop_delivery, worker_pool's loop; the channel interface pop(T&), which acks a
//      thread's previous value on its next pop; and push_all in batches of 64 with consumers
//      prefetching 16) against hiredis doing the classic pattern: LPUSH (one per round trip, or
//      64 pipelined); BLMOVE to a per-consumer processing list; LREM to ack. Validated: job
//      count, checksum of the payloads, nothing left ready, in flight or pending.
//   5. stream end to end (--items / 5 entries): one producer thread pushes, one consumer pops
//      and acks. spindle::redis::stream through pop_delivery + ack, and through pop(T&), whose
//      ack travels in the next pop's script, against hiredis doing XADD; XREADGROUP (COUNT 1,
//      BLOCK 20 ms); XACK + XDEL pipelined (spindle's ack deletes the entry too). Validated:
//      count, checksum, nothing left in the stream or pending.
//   4. limiter try_acquire (--items / 5 calls per run, in 10 alternating rounds):
//      spindle::redis::token_bucket against hiredis calling EVALSHA of the same token-bucket Lua
//      script; every call must be granted.
#include <spindle/redis.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>  // strtod
#include <cstring>  // strncmp
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

// ---- reliable queue ------------------------------------------------------------------------

// What a queue run must add up to: n jobs with payloads 0..n-1.
struct job_tally {
  std::atomic<std::uint64_t> done{0};
  std::atomic<std::uint64_t> sum{0};
  std::atomic<std::int64_t> end_ns{0};  // steady clock, when the n-th job was processed

  // Records one processed job; returns true for the n-th.
  bool record(std::uint64_t payload, std::uint64_t n) {
    sum.fetch_add(payload, std::memory_order_relaxed);
    if (done.fetch_add(1, std::memory_order_acq_rel) + 1 != n) return false;
    end_ns.store(bench::clock::now().time_since_epoch().count(), std::memory_order_release);
    return true;
  }
  double rate(bench::clock::time_point t0, std::uint64_t n) const {
    auto end = bench::clock::time_point(bench::clock::duration(end_ns.load()));
    return static_cast<double>(n) / std::chrono::duration<double>(end - t0).count();
  }
  void check(std::uint64_t n, const std::string& what) const {
    bench::validate(done.load() == n, what + ": job count");
    bench::validate(sum.load() == n * (n - 1) / 2, what + ": payload checksum");
  }
};

enum class consume { delivery, fused, channel };

// How a spindle queue run pushes and pops.
struct queue_mode {
  consume how = consume::delivery;
  std::size_t push_batch = 1;  // > 1: push_all of this many per call
  std::size_t prefetch = 1;    // queue_options::prefetch
};

// One producer pushes n jobs while `consumers` threads pop and ack them; returns jobs/s.
double spindle_queue(std::uint16_t port, std::uint64_t n, int consumers, queue_mode m, int run) {
  using namespace std::chrono_literals;
  using q_t = redis::queue<std::uint64_t>;
  std::string name = "bench:q:" + std::to_string(consumers) + ":" +
                     std::to_string(static_cast<int>(m.how)) + ":" +
                     std::to_string(m.push_batch) + ":" + std::to_string(m.prefetch) + ":" +
                     std::to_string(run);
  q_t q(name, {.port = port}, {.poll_interval = 20ms, .prefetch = m.prefetch});
  q.destroy();
  job_tally t;
  auto t0 = bench::clock::now();
  std::vector<std::thread> ts;
  for (int c = 0; c < consumers; ++c)
    ts.emplace_back([&] {
      if (m.how == consume::delivery) {
        q_t::delivery d;
        while (q.pop_delivery(d) == spindle::status::ok) {
          bench::validate(q.ack(d), "spindle queue ack");
          if (t.record(d.value, n)) q.close();
        }
      } else if (m.how == consume::fused) {  // worker_pool's loop: the ack rides on the next pop
        q_t::delivery d;
        spindle::status s = q.pop_delivery(d);
        while (s == spindle::status::ok) {
          if (t.record(d.value, n)) q.close();
          s = q.ack_and_pop_delivery(d);
        }
      } else {
        std::uint64_t v = 0;
        while (q.pop(v) == spindle::status::ok)
          if (t.record(v, n)) q.close();  // the next pop acks v, then sees closed
      }
    });
  if (m.push_batch <= 1) {
    for (std::uint64_t i = 0; i < n; ++i)
      bench::validate(q.push(i) == spindle::status::ok, "spindle queue push");
  } else {
    std::vector<std::uint64_t> batch;
    batch.reserve(m.push_batch);
    for (std::uint64_t i = 0; i < n; i += m.push_batch) {
      batch.clear();
      for (std::uint64_t j = i; j < std::min<std::uint64_t>(n, i + m.push_batch); ++j)
        batch.push_back(j);
      bench::validate(q.push_all(batch) == spindle::status::ok, "spindle queue push_all");
    }
  }
  for (auto& th : ts) th.join();
  double rate = t.rate(t0, n);
  t.check(n, "spindle queue");
  bench::validate(q.size() == 0 && q.in_flight() == 0 && q.pending() == 0,
                  "spindle queue: left ready, in flight or pending");
  q.destroy();
  return rate;
}

#ifdef SPINDLE_BENCH_HAVE_HIREDIS
// The classic reliable queue: LPUSH; BLMOVE ready -> processing list of this consumer; LREM.
double hiredis_queue(std::uint16_t port, redis::connection& c, std::uint64_t n, int consumers,
                     std::uint64_t push_depth = 1) {
  const std::string ready = "bench:hq:ready";
  const std::string proc = "bench:hq:proc:";
  c.command("DEL", ready, proc + "0", proc + "1");
  job_tally t;
  std::atomic<bool> stop{false};
  auto t0 = bench::clock::now();
  std::vector<std::thread> ts;
  for (int k = 0; k < consumers; ++k)
    ts.emplace_back([&, k] {
      redisContext* h = hiredis_connect(port);
      std::string mine = proc + std::to_string(k);
      while (!stop.load(std::memory_order_acquire)) {  // pairs with the release below
        auto* r = static_cast<redisReply*>(
            redisCommand(h, "BLMOVE %s %s RIGHT LEFT 0.02", ready.c_str(), mine.c_str()));
        bench::validate(r != nullptr && r->type != REDIS_REPLY_ERROR, "hiredis BLMOVE");
        if (r->type == REDIS_REPLY_NIL) {
          freeReplyObject(r);
          continue;
        }
        std::string job(r->str, r->len);
        freeReplyObject(r);
        auto* a = static_cast<redisReply*>(
            redisCommand(h, "LREM %s 1 %b", mine.c_str(), job.data(), job.size()));
        bench::validate(a != nullptr && a->type == REDIS_REPLY_INTEGER && a->integer == 1,
                        "hiredis LREM ack");
        freeReplyObject(a);
        if (t.record(std::stoull(job), n)) stop.store(true, std::memory_order_release);
      }
      redisFree(h);
    });
  redisContext* p = hiredis_connect(port);
  for (std::uint64_t i = 0; i < n; i += push_depth) {  // push_depth LPUSH per write
    std::uint64_t k = std::min<std::uint64_t>(push_depth, n - i);
    for (std::uint64_t j = 0; j < k; ++j) {
      std::string v = std::to_string(i + j);
      redisAppendCommand(p, "LPUSH %s %b", ready.c_str(), v.data(), v.size());
    }
    for (std::uint64_t j = 0; j < k; ++j) {
      void* r = nullptr;
      bench::validate(redisGetReply(p, &r) == REDIS_OK, "hiredis getReply");
      hiredis_check(r);
    }
  }
  redisFree(p);
  for (auto& th : ts) th.join();
  double rate = t.rate(t0, n);
  t.check(n, "hiredis queue");
  bench::validate(c.command("LLEN", ready).integer() == 0 &&
                      c.command("LLEN", proc + "0").integer() == 0 &&
                      c.command("LLEN", proc + "1").integer() == 0,
                  "hiredis queue: left ready or in flight");
  return rate;
}
#endif

// ---- stream --------------------------------------------------------------------------------

// One producer pushes n entries while one consumer pops and acks them; returns entries/s.
double spindle_stream(std::uint16_t port, std::uint64_t n, bool fused, int run) {
  using namespace std::chrono_literals;
  using s_t = redis::stream<std::uint64_t>;
  s_t s("bench:s:" + std::to_string(fused) + ":" + std::to_string(run), {.port = port},
        {.poll_interval = 20ms});
  s.destroy();
  job_tally t;
  auto t0 = bench::clock::now();
  std::thread consumer([&] {
    if (fused) {
      std::uint64_t v = 0;
      while (s.pop(v) == spindle::status::ok)
        if (t.record(v, n)) s.close();  // the next pop acks v, then sees closed
    } else {
      s_t::delivery d;
      while (s.pop_delivery(d) == spindle::status::ok) {
        bench::validate(s.ack(d), "spindle stream ack");
        if (t.record(d.value, n)) s.close();
      }
    }
  });
  for (std::uint64_t i = 0; i < n; ++i)
    bench::validate(s.push(i) == spindle::status::ok, "spindle stream push");
  consumer.join();
  double rate = t.rate(t0, n);
  t.check(n, "spindle stream");
  bench::validate(s.size() == 0 && s.pending() == 0, "spindle stream: left entries or pending");
  s.destroy();
  return rate;
}

#ifdef SPINDLE_BENCH_HAVE_HIREDIS
// XADD; XREADGROUP COUNT 1 BLOCK 20; XACK + XDEL pipelined.
double hiredis_stream(std::uint16_t port, redis::connection& c, std::uint64_t n) {
  const std::string key = "bench:hs";
  c.command("DEL", key);
  c.command("XGROUP", "CREATE", key, "g", "0", "MKSTREAM");
  job_tally t;
  auto t0 = bench::clock::now();
  std::thread consumer([&] {
    redisContext* h = hiredis_connect(port);
    while (t.done.load(std::memory_order_acquire) < n) {
      auto* r = static_cast<redisReply*>(
          redisCommand(h, "XREADGROUP GROUP g c COUNT 1 BLOCK 20 STREAMS %s >", key.c_str()));
      bench::validate(r != nullptr && r->type != REDIS_REPLY_ERROR, "hiredis XREADGROUP");
      if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) {  // nil on timeout
        freeReplyObject(r);
        continue;
      }
      const redisReply* entry = r->element[0]->element[1]->element[0];
      std::string id(entry->element[0]->str, entry->element[0]->len);
      const redisReply* fields = entry->element[1];
      std::uint64_t v = std::stoull(std::string(fields->element[1]->str, fields->element[1]->len));
      freeReplyObject(r);
      redisAppendCommand(h, "XACK %s g %b", key.c_str(), id.data(), id.size());
      redisAppendCommand(h, "XDEL %s %b", key.c_str(), id.data(), id.size());
      for (int k = 0; k < 2; ++k) {
        void* a = nullptr;
        bench::validate(redisGetReply(h, &a) == REDIS_OK, "hiredis XACK/XDEL");
        hiredis_check(a);
      }
      t.record(v, n);
    }
    redisFree(h);
  });
  redisContext* p = hiredis_connect(port);
  for (std::uint64_t i = 0; i < n; ++i) {
    std::string v = std::to_string(i);
    hiredis_check(redisCommand(p, "XADD %s * v %b", key.c_str(), v.data(), v.size()));
  }
  redisFree(p);
  consumer.join();
  double rate = t.rate(t0, n);
  t.check(n, "hiredis stream");
  bench::validate(c.command("XLEN", key).integer() == 0 &&
                      c.command("XPENDING", key, "g")[0].integer() == 0,
                  "hiredis stream: left entries or pending");
  c.command("DEL", key);
  return rate;
}
#endif

// ---- token bucket --------------------------------------------------------------------------

// A bucket that never runs dry during the run, so every call must be granted.
constexpr double tb_rate = 1e9;
constexpr std::uint64_t tb_burst = 1'000'000'000;

double spindle_bucket(std::uint16_t port, std::uint64_t n, int run) {
  redis::token_bucket tb("bench:tb:s" + std::to_string(run), {.port = port}, tb_rate, tb_burst);
  bench::validate(tb.try_acquire(), "spindle token_bucket first grant");  // connects, loads
  std::uint64_t granted = 0;
  auto t0 = bench::clock::now();
  for (std::uint64_t i = 0; i < n; ++i) granted += tb.try_acquire() ? 1 : 0;
  double rate = static_cast<double>(n) / bench::seconds_since(t0);
  bench::validate(granted == n, "spindle token_bucket grants");
  return rate;
}

#ifdef SPINDLE_BENCH_HAVE_HIREDIS
// hiredis running EVALSHA of the same Lua token bucket (prelude + body) that spindle loads.
double hiredis_bucket(redisContext* h, std::uint64_t n, int run) {
  std::string src =
      std::string(redis::detail::lua_prelude) + std::string(redis::detail::lua_token_bucket);
  auto* l = static_cast<redisReply*>(redisCommand(h, "SCRIPT LOAD %b", src.data(), src.size()));
  bench::validate(l != nullptr && l->type == REDIS_REPLY_STRING, "hiredis SCRIPT LOAD");
  std::string sha(l->str, l->len);
  freeReplyObject(l);
  std::string key = "{bench:tb:h" + std::to_string(run) + "}:tb";
  std::string rate = redis::codec<double>::encode(tb_rate);
  std::string burst = std::to_string(tb_burst);
  std::uint64_t granted = 0;
  auto t0 = bench::clock::now();
  for (std::uint64_t i = 0; i < n; ++i) {
    auto* r = static_cast<redisReply*>(redisCommand(h, "EVALSHA %s 1 %s %s %s 1", sha.c_str(),
                                                    key.c_str(), rate.c_str(), burst.c_str()));
    bench::validate(r != nullptr && r->type == REDIS_REPLY_INTEGER, "hiredis EVALSHA");
    granted += r->integer == 0 ? 1 : 0;
    freeReplyObject(r);
  }
  double rps = static_cast<double>(n) / bench::seconds_since(t0);
  bench::validate(granted == n, "hiredis token bucket grants");
  return rps;
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
  // Reliable queue and limiter, runs alternating likewise.
  std::uint64_t n_jobs = a.smoke ? 1'000 : std::max<std::uint64_t>(a.items / 5, 1);
  std::printf("reliable queue: %llu jobs per run; token bucket: %llu calls per run\n",
              static_cast<unsigned long long>(n_jobs), static_cast<unsigned long long>(n_jobs));
  // Rows: per-item push with three ways to consume; batched push with prefetching consumers;
  // hiredis with per-item and pipelined LPUSH.
  const queue_mode modes[] = {{consume::delivery},        {consume::fused},
                              {consume::channel},         {consume::channel, 1, 16},
                              {consume::channel, 64, 1},  {consume::fused, 64, 16},
                              {consume::channel, 64, 16}};
  constexpr int n_modes = sizeof modes / sizeof modes[0];
  std::vector<double> sq[2][n_modes], hq[2], hp[2], s_tb, h_tb, ss_plain, ss_fused, hs;
  for (int r = 0; r < a.runs; ++r) {
    for (int k = 0; k < 2; ++k) {
      for (int m = 0; m < n_modes; ++m)
        sq[k][m].push_back(spindle_queue(srv.port(), n_jobs, k + 1, modes[m], r) / 1e3);
#ifdef SPINDLE_BENCH_HAVE_HIREDIS
      hq[k].push_back(hiredis_queue(srv.port(), c, n_jobs, k + 1) / 1e3);
      hp[k].push_back(hiredis_queue(srv.port(), c, n_jobs, k + 1, 64) / 1e3);
#endif
    }
    ss_plain.push_back(spindle_stream(srv.port(), n_jobs, false, r) / 1e3);
    ss_fused.push_back(spindle_stream(srv.port(), n_jobs, true, r) / 1e3);
#ifdef SPINDLE_BENCH_HAVE_HIREDIS
    hs.push_back(hiredis_stream(srv.port(), c, n_jobs) / 1e3);
#endif
    // The limiter pair alternates in 10 rounds of n/10 calls, in both orders, so that load
    // from other processes falls on both alike; the figure is the median round.
    std::uint64_t per_round = std::max<std::uint64_t>(n_jobs / 10, 1);
    for (int round = 0; round < 10; ++round) {
      int id = r * 10 + round;
      if (round % 2 == 0) s_tb.push_back(spindle_bucket(srv.port(), per_round, id) / 1e3);
#ifdef SPINDLE_BENCH_HAVE_HIREDIS
      h_tb.push_back(hiredis_bucket(h, per_round, id) / 1e3);
#endif
      if (round % 2 == 1) s_tb.push_back(spindle_bucket(srv.port(), per_round, id) / 1e3);
    }
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
  for (int k = 0; k < 2; ++k) {
    bench::table q("reliable queue push/pop/ack end to end, 1 producer, " + std::to_string(k + 1) +
                       (k == 0 ? " consumer" : " consumers"),
                   "k jobs/s");
    q.add("spindle queue push, pop_delivery + ack", bench::median(sq[k][0]));
    q.add("spindle push, ack_and_pop_delivery (fused)", bench::median(sq[k][1]));
    q.add("spindle push, pop(T&) acked by next pop", bench::median(sq[k][2]), true);
    q.add("spindle push, pop(T&), prefetch 16", bench::median(sq[k][3]));
    q.add("spindle push_all 64, pop(T&)", bench::median(sq[k][4]));
    q.add("spindle push_all 64, fused ack, prefetch 16", bench::median(sq[k][5]));
    q.add("spindle push_all 64, pop(T&), prefetch 16", bench::median(sq[k][6]));
    if (!hq[k].empty()) q.add("hiredis LPUSH / BLMOVE / LREM", bench::median(hq[k]));
    if (!hp[k].empty()) q.add("hiredis LPUSH x64 pipelined / BLMOVE / LREM", bench::median(hp[k]));
    q.print();
  }
  bench::table st("stream push/pop/ack end to end, 1 producer, 1 consumer", "k entries/s");
  st.add("spindle stream push, pop_delivery + ack", bench::median(ss_plain));
  st.add("spindle stream push, pop(T&), fused ack", bench::median(ss_fused), true);
  if (!hs.empty()) st.add("hiredis XADD / XREADGROUP / XACK+XDEL", bench::median(hs));
  st.print();
  bench::table tb("limiter try_acquire, 1 thread, always granted", "k calls/s");
  tb.add("spindle::redis::token_bucket", bench::median(s_tb), true);
  if (!h_tb.empty()) tb.add("hiredis EVALSHA, same Lua script", bench::median(h_tb));
  tb.print();
  return 0;
}
