// bench_redis - the RESP client, reliable queue, stream and limiter against hiredis and
// redis-benchmark, on a redis-server started on loopback for the run (tests/support).
//
// Method: harness.hpp (warm-up, rows interleaved, min / median / max, CPU per op of this process:
// the client side only). Every round is validated: LLEN after LPUSH (redis-benchmark's rows too);
// for the queue and the stream, the job count and payload checksum of what consumers received,
// and nothing left ready, in flight or pending; every limiter call granted.
//
// Like for like: each spindle mode has a hiredis peer making the same round trips per job,
// tagged alike in the table and compared in pairs:
//   [2 trips/job]   spindle push, pop_delivery + ack  |  LPUSH; BLMOVE, then LREM
//   [1 trip/job]    spindle pop(T&) / ack_and_pop     |  LPUSH; LREM(previous) + BLMOVE, one write
//   [push 64, ...]  spindle push_all 64               |  one LPUSH carrying 64 values
//   [fetch 16]      spindle prefetch 16, deferred ack |  LREMs of the last batch + 16 LMOVE, one
//                                                     |  write (BLMOVE only when none was ready)
//   stream [2 trips/entry] pop_delivery + ack         |  XREADGROUP, then XACK
//   stream [1 trip/entry]  pop(T&), fused ack         |  XACK(previous) + XREADGROUP
//
// Cluster against single server: GET/SET round trips through redis::cluster on a 3-primary
// cluster (tests/support/redis_cluster.hpp, no replicas, like the single server) beside
// redis::pool on the single server, same run, same client threads (1 and 4), keys without hash
// tag spread over every slot and so over the 3 primaries; and the reliable queue end to end over
// 3 queues at once (one producer and one consumer each, pop(T&)), one queue per primary on the
// cluster, the same 3 queues on the single server. Skipped, with the reason printed, when no
// cluster can be started (redis-cli missing).
//
// Sizes: --items (default 100k) synchronous LPUSH, 10x pipelined, and GET/SET pairs; --items / 5
// jobs or entries per queue and stream run; --items / 10 limiter calls.
#include <spindle/redis.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>  // strtod
#include <cstring>  // strncmp
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "../tests/support/redis_cluster.hpp"
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

bench::sample spindle_sync(redis::connection& c, std::uint64_t n) {
  c.command("DEL", key);
  bench::stopwatch sw;
  for (std::uint64_t i = 0; i < n; ++i) c.command("LPUSH", key, "value");
  bench::sample rate = sw.stop(static_cast<double>(n));
  bench::validate(llen(c) == static_cast<std::int64_t>(n), "spindle sync LLEN");
  return rate;
}

bench::sample spindle_pipelined(redis::connection& c, std::uint64_t n) {
  c.command("DEL", key);
  bench::stopwatch sw;
  for (std::uint64_t i = 0; i < n; i += depth) {
    std::uint64_t k = std::min<std::uint64_t>(depth, n - i);
    for (std::uint64_t j = 0; j < k; ++j) c.append("LPUSH", key, "value");
    for (std::uint64_t j = 0; j < k; ++j) (void)c.read();
  }
  bench::sample rate = sw.stop(static_cast<double>(n));
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

bench::sample hiredis_sync(redisContext* h, redis::connection& c, std::uint64_t n) {
  c.command("DEL", key);
  bench::stopwatch sw;
  for (std::uint64_t i = 0; i < n; ++i) hiredis_check(redisCommand(h, "LPUSH %s %s", key, "value"));
  bench::sample rate = sw.stop(static_cast<double>(n));
  bench::validate(llen(c) == static_cast<std::int64_t>(n), "hiredis sync LLEN");
  return rate;
}

bench::sample hiredis_pipelined(redisContext* h, redis::connection& c, std::uint64_t n) {
  c.command("DEL", key);
  bench::stopwatch sw;
  for (std::uint64_t i = 0; i < n; i += depth) {
    std::uint64_t k = std::min<std::uint64_t>(depth, n - i);
    for (std::uint64_t j = 0; j < k; ++j) redisAppendCommand(h, "LPUSH %s %s", key, "value");
    for (std::uint64_t j = 0; j < k; ++j) {
      void* r = nullptr;
      bench::validate(redisGetReply(h, &r) == REDIS_OK, "hiredis getReply");
      hiredis_check(r);
    }
  }
  bench::sample rate = sw.stop(static_cast<double>(n));
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
  // Wall seconds from t0 to the n-th job processed.
  double seconds(bench::clock::time_point t0) const {
    auto end = bench::clock::time_point(bench::clock::duration(end_ns.load()));
    return std::chrono::duration<double>(end - t0).count();
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

std::atomic<int> unique_run{0};  // fresh Redis key names for every run

// One producer pushes n jobs while `consumers` threads pop and ack them.
bench::sample spindle_queue(std::uint16_t port, std::uint64_t n, int consumers, queue_mode m) {
  const int run = unique_run.fetch_add(1);
  using namespace std::chrono_literals;
  using q_t = redis::queue<std::uint64_t>;
  std::string name = "bench:q:" + std::to_string(consumers) + ":" +
                     std::to_string(static_cast<int>(m.how)) + ":" +
                     std::to_string(m.push_batch) + ":" + std::to_string(m.prefetch) + ":" +
                     std::to_string(run);
  q_t q(name, {.port = port}, {.poll_interval = 20ms, .prefetch = m.prefetch});
  q.destroy();
  job_tally t;
  bench::stopwatch sw;
  auto t0 = sw.start();
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
  bench::sample s = sw.stop(static_cast<double>(n));
  s.wall = t.seconds(t0);
  t.check(n, "spindle queue");
  bench::validate(q.size() == 0 && q.in_flight() == 0 && q.pending() == 0,
                  "spindle queue: left ready, in flight or pending");
  q.destroy();
  return s;
}

#ifdef SPINDLE_BENCH_HAVE_HIREDIS
// How the hiredis reliable queue (the classic LPUSH; BLMOVE ready -> this consumer's processing
// list; LREM to ack) pushes and consumes: the peer of each spindle mode.
enum class hq_mode {
  two_trips,  // LPUSH per job; BLMOVE, then LREM: two round trips per job (pop_delivery + ack)
  fused,      // LPUSH per job; LREM of the previous job and BLMOVE in one write: one round trip
              // per job (spindle's ack_and_pop_delivery / pop(T&))
  batched,    // one LPUSH of 64 values per round trip (push_all 64); LREMs of the previous batch
              // and 16 LMOVEs in one write, BLMOVE only when that finds nothing: one round trip
              // per 16 jobs (prefetch 16 with deferred acks)
  push64,     // one LPUSH of 64 values per round trip; BLMOVE then LREM (push_all 64, prefetch 1)
};

void hiredis_read_replies(redisContext* h, int k, std::vector<redisReply*>& out) {
  out.clear();
  for (int i = 0; i < k; ++i) {
    void* r = nullptr;
    bench::validate(redisGetReply(h, &r) == REDIS_OK && r != nullptr, "hiredis getReply");
    auto* rep = static_cast<redisReply*>(r);
    bench::validate(rep->type != REDIS_REPLY_ERROR, "hiredis reply");
    out.push_back(rep);
  }
}

// One producer pushes n jobs while `consumers` threads pop and ack them; returns the sample.
bench::sample hiredis_queue(std::uint16_t port, redis::connection& c, std::uint64_t n,
                            int consumers, hq_mode mode) {
  const std::string ready = "bench:hq:ready";
  const std::string proc = "bench:hq:proc:";
  c.command("DEL", ready, proc + "0", proc + "1");
  job_tally t;
  std::atomic<bool> stop{false};
  bench::stopwatch sw;
  auto t0 = sw.start();
  std::vector<std::thread> ts;
  for (int k = 0; k < consumers; ++k)
    ts.emplace_back([&, k] {
      redisContext* h = hiredis_connect(port);
      const std::string mine = proc + std::to_string(k);
      std::vector<std::string> held;  // jobs taken and processed, not yet acked
      std::vector<redisReply*> reps;
      auto ack_check = [&](redisReply* a) {
        bench::validate(a->type == REDIS_REPLY_INTEGER && a->integer == 1, "hiredis LREM ack");
      };
      auto process = [&](const std::string& job) {
        if (t.record(std::stoull(job), n)) stop.store(true, std::memory_order_release);
      };
      while (!stop.load(std::memory_order_acquire)) {  // pairs with the release in process
        const bool fused = mode == hq_mode::fused || mode == hq_mode::batched;
        if (fused)  // the acks of what this consumer processed ride on this write
          for (const auto& job : held)
            redisAppendCommand(h, "LREM %s 1 %b", mine.c_str(), job.data(), job.size());
        const int acks = fused ? static_cast<int>(held.size()) : 0;
        int fetches = 1;
        if (mode == hq_mode::batched) {
          fetches = 16;
          for (int f = 0; f < fetches; ++f)
            redisAppendCommand(h, "LMOVE %s %s RIGHT LEFT", ready.c_str(), mine.c_str());
        } else {
          redisAppendCommand(h, "BLMOVE %s %s RIGHT LEFT 0.02", ready.c_str(), mine.c_str());
        }
        hiredis_read_replies(h, acks + fetches, reps);
        for (int a = 0; a < acks; ++a) ack_check(reps[static_cast<std::size_t>(a)]);
        if (fused) held.clear();
        std::vector<std::string> got;
        for (std::size_t f = static_cast<std::size_t>(acks); f < reps.size(); ++f)
          if (reps[f]->type == REDIS_REPLY_STRING) got.emplace_back(reps[f]->str, reps[f]->len);
        for (auto* r : reps) freeReplyObject(r);
        if (got.empty() && mode == hq_mode::batched) {  // nothing ready: block, as spindle does
          redisAppendCommand(h, "BLMOVE %s %s RIGHT LEFT 0.02", ready.c_str(), mine.c_str());
          hiredis_read_replies(h, 1, reps);
          if (reps[0]->type == REDIS_REPLY_STRING) got.emplace_back(reps[0]->str, reps[0]->len);
          freeReplyObject(reps[0]);
        }
        for (const auto& job : got) {
          process(job);
          if (fused) {
            held.push_back(job);
          } else {  // ack at once: a second round trip
            auto* a = static_cast<redisReply*>(
                redisCommand(h, "LREM %s 1 %b", mine.c_str(), job.data(), job.size()));
            bench::validate(a != nullptr, "hiredis LREM");
            ack_check(a);
            freeReplyObject(a);
          }
        }
      }
      for (const auto& job : held)  // the last acks
        redisAppendCommand(h, "LREM %s 1 %b", mine.c_str(), job.data(), job.size());
      hiredis_read_replies(h, static_cast<int>(held.size()), reps);
      for (auto* r : reps) {
        ack_check(r);
        freeReplyObject(r);
      }
      redisFree(h);
    });
  redisContext* p = hiredis_connect(port);
  const std::uint64_t per_push =
      (mode == hq_mode::batched || mode == hq_mode::push64) ? 64 : 1;
  std::vector<std::string> vals;
  std::vector<const char*> argv;
  std::vector<std::size_t> lens;
  for (std::uint64_t i = 0; i < n; i += per_push) {  // one LPUSH of up to 64 values per trip
    std::uint64_t k = std::min<std::uint64_t>(per_push, n - i);
    vals.assign({"LPUSH", ready});
    for (std::uint64_t j = 0; j < k; ++j) vals.push_back(std::to_string(i + j));
    argv.clear();
    lens.clear();
    for (const auto& v : vals) {
      argv.push_back(v.data());
      lens.push_back(v.size());
    }
    hiredis_check(redisCommandArgv(p, static_cast<int>(argv.size()), argv.data(), lens.data()));
  }
  redisFree(p);
  for (auto& th : ts) th.join();
  bench::sample s = sw.stop(static_cast<double>(n));
  s.wall = t.seconds(t0);
  t.check(n, "hiredis queue");
  bench::validate(c.command("LLEN", ready).integer() == 0 &&
                      c.command("LLEN", proc + "0").integer() == 0 &&
                      c.command("LLEN", proc + "1").integer() == 0,
                  "hiredis queue: left ready or in flight");
  return s;
}
#endif

// ---- stream --------------------------------------------------------------------------------

// One producer pushes n entries while one consumer pops and acks them.
bench::sample spindle_stream(std::uint16_t port, std::uint64_t n, bool fused) {
  using namespace std::chrono_literals;
  using s_t = redis::stream<std::uint64_t>;
  const int run = unique_run.fetch_add(1);
  s_t s("bench:s:" + std::to_string(fused) + ":" + std::to_string(run), {.port = port},
        {.poll_interval = 20ms});
  s.destroy();
  job_tally t;
  bench::stopwatch sw;
  auto t0 = sw.start();
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
  bench::sample r = sw.stop(static_cast<double>(n));
  r.wall = t.seconds(t0);
  t.check(n, "spindle stream");
  // The stream is a log (ack is XACK; the heartbeat trims what every group acknowledged, so some
  // entries may still be there): nothing may be pending, and no entry beyond the n pushed.
  bench::validate(s.pending() == 0 && s.size() <= n, "spindle stream: pending or extra entries");
  s.destroy();
  return r;
}

#ifdef SPINDLE_BENCH_HAVE_HIREDIS
// XADD; XREADGROUP (COUNT 1, BLOCK 20 ms); XACK. The same commands as spindle's stream: its ack is
// XACK only (the stream is a log; entries stay until a retention policy trims them).
// fused = false: XACK after the read, two round trips per entry (spindle's pop_delivery + ack).
// fused = true: the previous entry's XACK rides on the next XREADGROUP's write, one round trip
// per entry (spindle's pop(T&) with its fused ack).
bench::sample hiredis_stream(std::uint16_t port, redis::connection& c, std::uint64_t n,
                             bool fused) {
  const std::string key = "bench:hs";
  c.command("DEL", key);
  c.command("XGROUP", "CREATE", key, "g", "0", "MKSTREAM");
  job_tally t;
  bench::stopwatch sw;
  auto t0 = sw.start();
  std::thread consumer([&] {
    redisContext* h = hiredis_connect(port);
    std::string held;  // id of the entry processed and not yet acked (fused)
    std::vector<redisReply*> reps;
    auto append_ack = [&](const std::string& id) {
      redisAppendCommand(h, "XACK %s g %b", key.c_str(), id.data(), id.size());
    };
    auto check_acks = [&](std::size_t at) {
      bench::validate(reps[at]->type == REDIS_REPLY_INTEGER && reps[at]->integer == 1,
                      "hiredis XACK");
    };
    while (t.done.load(std::memory_order_acquire) < n) {
      const int acks = held.empty() ? 0 : 1;
      if (!held.empty()) append_ack(held);
      held.clear();
      redisAppendCommand(h, "XREADGROUP GROUP g c COUNT 1 BLOCK 20 STREAMS %s >", key.c_str());
      hiredis_read_replies(h, acks + 1, reps);
      if (acks) check_acks(0);
      redisReply* r = reps.back();
      if (r->type == REDIS_REPLY_ARRAY && r->elements > 0) {  // nil on timeout
        const redisReply* entry = r->element[0]->element[1]->element[0];
        std::string id(entry->element[0]->str, entry->element[0]->len);
        const redisReply* fields = entry->element[1];
        std::uint64_t v =
            std::stoull(std::string(fields->element[1]->str, fields->element[1]->len));
        if (fused) {
          held = id;
        } else {
          for (auto* x : reps) freeReplyObject(x);
          reps.clear();
          append_ack(id);
          hiredis_read_replies(h, 1, reps);
          check_acks(0);
        }
        t.record(v, n);
      }
      for (auto* x : reps) freeReplyObject(x);
      reps.clear();
    }
    if (!held.empty()) {  // the last ack
      append_ack(held);
      hiredis_read_replies(h, 1, reps);
      check_acks(0);
      for (auto* x : reps) freeReplyObject(x);
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
  bench::sample r = sw.stop(static_cast<double>(n));
  r.wall = t.seconds(t0);
  t.check(n, "hiredis stream");
  // A log, like spindle's: every entry stays, none is pending.
  bench::validate(c.command("XLEN", key).integer() == static_cast<std::int64_t>(n) &&
                      c.command("XPENDING", key, "g")[0].integer() == 0,
                  "hiredis stream: pending or missing entries");
  c.command("DEL", key);
  return r;
}
#endif

// ---- token bucket --------------------------------------------------------------------------

// A bucket that never runs dry during the run, so every call must be granted.
constexpr double tb_rate = 1e9;
constexpr std::uint64_t tb_burst = 1'000'000'000;

bench::sample spindle_bucket(std::uint16_t port, std::uint64_t n) {
  const int run = unique_run.fetch_add(1);
  redis::token_bucket tb("bench:tb:s" + std::to_string(run), {.port = port}, tb_rate, tb_burst);
  bench::validate(tb.try_acquire(), "spindle token_bucket first grant");  // connects, loads
  std::uint64_t granted = 0;
  bench::stopwatch sw;
  for (std::uint64_t i = 0; i < n; ++i) granted += tb.try_acquire() ? 1 : 0;
  bench::sample r = sw.stop(static_cast<double>(n));
  bench::validate(granted == n, "spindle token_bucket grants");
  return r;
}

#ifdef SPINDLE_BENCH_HAVE_HIREDIS
// hiredis running EVALSHA of the same Lua token bucket (prelude + body) that spindle loads.
bench::sample hiredis_bucket(redisContext* h, std::uint64_t n) {
  const int run = unique_run.fetch_add(1);
  std::string src =
      std::string(redis::detail::lua_prelude) + std::string(redis::detail::lua_limit_token_bucket);
  auto* l = static_cast<redisReply*>(redisCommand(h, "SCRIPT LOAD %b", src.data(), src.size()));
  bench::validate(l != nullptr && l->type == REDIS_REPLY_STRING, "hiredis SCRIPT LOAD");
  std::string sha(l->str, l->len);
  freeReplyObject(l);
  std::string key = "{bench:tb:h" + std::to_string(run) + "}:tb";
  std::string rate = redis::codec<double>::encode(tb_rate);
  std::string burst = std::to_string(tb_burst);
  std::uint64_t granted = 0;
  bench::stopwatch sw;
  for (std::uint64_t i = 0; i < n; ++i) {
    auto* r = static_cast<redisReply*>(redisCommand(h, "EVALSHA %s 1 %s %s %s 1 0", sha.c_str(),
                                                    key.c_str(), rate.c_str(), burst.c_str()));
    bench::validate(r != nullptr && r->type == REDIS_REPLY_INTEGER, "hiredis EVALSHA");
    granted += r->integer == 0 ? 1 : 0;
    freeReplyObject(r);
  }
  bench::sample s = sw.stop(static_cast<double>(n));
  bench::validate(granted == n, "hiredis token bucket grants");
  return s;
}
#endif

// Runs redis-benchmark for LPUSH with one client (it pushes to the key "mylist"); validated by
// that list's length afterwards (n, or up to pipeline - 1 more: it sends whole pipelines). CPU time: unknown (another process).
bench::sample redis_benchmark(std::uint16_t port, redis::connection& c, std::uint64_t n,
                              int pipeline) {
  c.command("DEL", "mylist");
  std::string cmd = "redis-benchmark -h 127.0.0.1 -p " + std::to_string(port) +
                    " -c 1 -P " + std::to_string(pipeline) + " -n " + std::to_string(n) +
                    " -t lpush --csv 2>/dev/null";
  FILE* f = ::popen(cmd.c_str(), "r");
  bench::validate(f != nullptr, "redis-benchmark: popen");
  char line[512];
  double rps = 0;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    // "LPUSH","970873.81",...
    if (std::strncmp(line, "\"LPUSH\",\"", 9) == 0) rps = std::strtod(line + 9, nullptr);
  }
  ::pclose(f);
  bench::validate(rps > 0, "redis-benchmark: no LPUSH figure in its output");
  // With -P k it sends whole pipelines: up to k - 1 commands more than asked.
  const auto len = c.command("LLEN", "mylist").integer();
  bench::validate(len >= static_cast<std::int64_t>(n) && len < static_cast<std::int64_t>(n) + pipeline,
                  "redis-benchmark: LLEN mylist after its run");
  c.command("DEL", "mylist");
  return {static_cast<double>(n), static_cast<double>(n) / rps, std::nan("")};
}

// ---- GET/SET: a cluster against the single server ---------------------------------------------

// n SET + GET pairs over `threads` client threads sharing one client `c` (redis::pool on the
// single server, redis::cluster on the cluster: both lend each call a connection of a pool per
// node). Keys "bench:kv:<i>" (no hash tag: spread over every slot); each round writes its own
// values. Validated: every GET returned what its thread's SET of this round wrote.
template <class Client>
bench::sample get_set(Client& c, std::uint64_t n, int threads) {
  const std::string round = std::to_string(unique_run.fetch_add(1)) + ":";
  std::atomic<std::uint64_t> matched{0};
  std::atomic<bool> failed{false};
  bench::stopwatch sw;
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&, t] {
      std::uint64_t ok = 0;
      try {
        for (auto i = static_cast<std::uint64_t>(t); i < n; i += static_cast<std::uint64_t>(threads)) {
          std::string k = "bench:kv:" + std::to_string(i), v = round + std::to_string(i);
          c.command("SET", k, v);
          ok += c.command("GET", k).str() == v ? 1 : 0;
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "GET/SET: %s\n", e.what());
        failed.store(true);
      }
      matched.fetch_add(ok);
    });
  for (auto& th : ts) th.join();
  bench::sample r = sw.stop(2.0 * static_cast<double>(n));
  bench::validate(!failed.load() && matched.load() == n, "GET/SET: a GET did not return its SET");
  return r;
}

// The reliable queue end to end over `names.size()` queues at once: for each queue one producer
// pushes n / queues jobs and one consumer pops them with pop(T&) (the ack rides on the next pop:
// one round trip per job). `make(name)` builds a queue on the single server or on the cluster;
// the names are the same for both, chosen so that on the cluster each queue's {name} lives on
// a different primary. Validated per queue: count and payload checksum, nothing left ready, in
// flight or pending.
template <class Make>
bench::sample queues_end_to_end(Make make, const std::vector<std::string>& names, std::uint64_t n) {
  using q_t = redis::queue<std::uint64_t>;
  const std::uint64_t per = n / names.size();
  std::vector<std::unique_ptr<q_t>> qs;
  for (const auto& name : names) {
    qs.push_back(make(name));  // the same name every run (its slot is chosen): destroy() first
    qs.back()->destroy();
  }
  std::vector<job_tally> tallies(names.size());
  bench::stopwatch sw;
  std::vector<std::thread> ts;
  for (std::size_t k = 0; k < qs.size(); ++k) {
    ts.emplace_back([&, k] {  // the consumer of queue k
      std::uint64_t v = 0;
      while (qs[k]->pop(v) == spindle::status::ok)
        if (tallies[k].record(v, per)) qs[k]->close();
    });
    ts.emplace_back([&, k] {  // the producer of queue k
      for (std::uint64_t i = 0; i < per; ++i)
        bench::validate(qs[k]->push(i) == spindle::status::ok, "queues: push");
    });
  }
  for (auto& th : ts) th.join();
  bench::sample r = sw.stop(static_cast<double>(per * qs.size()));
  for (std::size_t k = 0; k < qs.size(); ++k) {
    tallies[k].check(per, "queues");
    bench::validate(qs[k]->size() == 0 && qs[k]->in_flight() == 0 && qs[k]->pending() == 0,
                    "queues: left ready, in flight or pending");
    qs[k]->destroy();
  }
  return r;
}

// A 3-primary cluster without replicas, or null with the reason in `why`.
std::unique_ptr<test_support::redis_cluster> start_cluster(std::string& why) {
  try {
    if (!test_support::redis_cluster::available()) {
      why = "redis-cli not found";
      return nullptr;
    }
    return std::make_unique<test_support::redis_cluster>(
        test_support::redis_cluster_config{.primaries = 3, .replicas_per_primary = 0});
  } catch (const std::exception& e) {  // CI without redis-cli, or a cluster that did not form
    why = e.what();
    why = why.substr(0, why.find('\n'));
    return nullptr;
  }
}

bool have_redis_benchmark() {
  return std::system("command -v redis-benchmark >/dev/null 2>&1") == 0;
}

}  // namespace

int main(int argc, char** argv) {
  bench::args a(argc, argv, {.items = 100'000, .runs = 5});
  if (test_support::redis_server::binary().empty()) {
    std::printf("bench_redis: redis-server not found; nothing to measure\n");
    return 0;
  }
  bench::watchdog(a.smoke ? 240 : 1800, "bench_redis");
  const std::uint64_t n_sync = a.smoke ? 2'000 : a.items;
  const std::uint64_t n_pipe = a.smoke ? 20'000 : a.items * 10;
  const std::uint64_t n_jobs = a.smoke ? 1'000 : std::max<std::uint64_t>(a.items / 5, 1);
  test_support::redis_server srv;
  redis::connection c({.port = srv.port()});
  const std::uint16_t port = srv.port();
  std::printf("bench_redis: redis-server on 127.0.0.1:%u; %llu sync / %llu pipelined LPUSH; "
              "%llu jobs or entries per queue/stream run; %d rounds + %d warm-up\n",
              port, static_cast<unsigned long long>(n_sync),
              static_cast<unsigned long long>(n_pipe), static_cast<unsigned long long>(n_jobs),
              a.runs, a.warmup);
  std::printf("CPU us/op: this process only (the client side; redis-server's CPU is not "
              "counted, redis-benchmark's is unknown)\n");
  const bool rb = have_redis_benchmark();
#ifdef SPINDLE_BENCH_HAVE_HIREDIS
  redisContext* h = hiredis_connect(port);
#endif

  {
    bench::suite t(a, "LPUSH, synchronous round trips, 1 connection", "k ops/s", 1e-3);
    t.add("spindle::redis::connection", [&] { return spindle_sync(c, n_sync); }, true);
#ifdef SPINDLE_BENCH_HAVE_HIREDIS
    t.add("hiredis", [&] { return hiredis_sync(h, c, n_sync); });
#endif
    if (rb) t.add("redis-benchmark -c 1 -P 1", [&] { return redis_benchmark(port, c, n_sync, 1); });
    t.run();
  }
  {
    bench::suite t(a, "LPUSH, pipelined 64 deep, 1 connection", "k ops/s", 1e-3);
    t.add("spindle::redis::connection", [&] { return spindle_pipelined(c, n_pipe); }, true);
#ifdef SPINDLE_BENCH_HAVE_HIREDIS
    t.add("hiredis", [&] { return hiredis_pipelined(h, c, n_pipe); });
#endif
    if (rb)
      t.add("redis-benchmark -c 1 -P 64", [&] { return redis_benchmark(port, c, n_pipe, 64); });
    t.run();
  }

  // Reliable queue: each spindle mode beside the hiredis peer that makes the same round trips.
  for (int k = 1; k <= 2; ++k) {
    bench::suite t(a,
                   "reliable queue push/pop/ack end to end, 1 producer, " + std::to_string(k) +
                       (k == 1 ? " consumer" : " consumers"),
                   "k jobs/s", 1e-3);
    const std::string two = "[2 trips/job] spindle push, pop_delivery + ack";
    const std::string one = "[1 trip/job] spindle push, ack_and_pop_delivery (fused)";
    const std::string chan = "[1 trip/job] spindle push, pop(T&) acked by the next pop";
    const std::string p64 = "[push 64, 2 trips/job] spindle push_all 64, pop_delivery + ack";
    const std::string bat = "[push 64, fetch 16] spindle push_all 64, pop(T&), prefetch 16";
    const std::string batf = "[push 64, fetch 16] spindle push_all 64, fused ack, prefetch 16";
    t.add(two, [&, k] { return spindle_queue(port, n_jobs, k, {consume::delivery}); });
    t.add(one, [&, k] { return spindle_queue(port, n_jobs, k, {consume::fused}); });
    t.add(chan, [&, k] { return spindle_queue(port, n_jobs, k, {consume::channel}); }, true);
    t.add(p64, [&, k] { return spindle_queue(port, n_jobs, k, {consume::delivery, 64, 1}); });
    t.add(bat, [&, k] { return spindle_queue(port, n_jobs, k, {consume::channel, 64, 16}); });
    t.add(batf, [&, k] { return spindle_queue(port, n_jobs, k, {consume::fused, 64, 16}); });
#ifdef SPINDLE_BENCH_HAVE_HIREDIS
    t.add_peer("[2 trips/job] hiredis LPUSH / BLMOVE / LREM",
               [&, k] { return hiredis_queue(port, c, n_jobs, k, hq_mode::two_trips); }, two);
    t.add_peer("[1 trip/job] hiredis LPUSH / LREM(prev) + BLMOVE pipelined",
               [&, k] { return hiredis_queue(port, c, n_jobs, k, hq_mode::fused); }, chan);
    t.add_peer("[push 64, 2 trips/job] hiredis LPUSH of 64 / BLMOVE / LREM",
               [&, k] { return hiredis_queue(port, c, n_jobs, k, hq_mode::push64); }, p64);
    t.add_peer("[push 64, fetch 16] hiredis LPUSH of 64 / LREMs + 16 LMOVE pipelined",
               [&, k] { return hiredis_queue(port, c, n_jobs, k, hq_mode::batched); }, bat);
#endif
    t.note("a hiredis row's ratio is read against the spindle row with the same [tag]: the "
           "same round trips per job on both sides.");
    t.run();
  }

  {
    bench::suite t(a, "stream push/pop/ack end to end, 1 producer, 1 consumer", "k entries/s",
                   1e-3);
    const std::string two = "[2 trips/entry] spindle stream push, pop_delivery + ack";
    const std::string one = "[1 trip/entry] spindle stream push, pop(T&), fused ack";
    t.add(two, [&] { return spindle_stream(port, n_jobs, false); });
    t.add(one, [&] { return spindle_stream(port, n_jobs, true); }, true);
#ifdef SPINDLE_BENCH_HAVE_HIREDIS
    t.add_peer("[2 trips/entry] hiredis XADD / XREADGROUP / XACK",
               [&] { return hiredis_stream(port, c, n_jobs, false); }, two);
    t.add_peer("[1 trip/entry] hiredis XADD / XACK(prev) + XREADGROUP pipelined",
               [&] { return hiredis_stream(port, c, n_jobs, true); }, one);
#endif
    t.note("a hiredis row's ratio is read against the spindle row with the same [tag].");
    t.run();
  }

  {
    const std::uint64_t calls = std::max<std::uint64_t>(n_jobs / 2, 1);
    bench::suite t(a, "limiter try_acquire, 1 thread, always granted", "k calls/s", 1e-3);
    t.add("spindle::redis::token_bucket", [&] { return spindle_bucket(port, calls); }, true);
#ifdef SPINDLE_BENCH_HAVE_HIREDIS
    t.add("hiredis EVALSHA, same Lua script", [&] { return hiredis_bucket(h, calls); });
#endif
    t.run();
  }

  // GET/SET: the 3-primary cluster against the single server, same client threads.
  std::string why;
  auto t_start = std::chrono::steady_clock::now();
  if (auto cl = start_cluster(why)) {
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::steady_clock::now() - t_start)
                  .count();
    for (int threads : {1, 4}) {
      redis::pool single({.port = port},
                         {.max_connections = static_cast<std::size_t>(threads)});
      auto co = redis::cluster_options::from_url(cl->url());
      co.connections_per_node = static_cast<std::size_t>(threads);
      redis::cluster cluster(co);
      std::map<std::string, std::uint64_t> spread;  // keys per primary
      for (std::uint64_t i = 0; i < n_sync; ++i)
        ++spread[cluster.primary_for_key("bench:kv:" + std::to_string(i)).str()];
      bench::validate(spread.size() == 3, "GET/SET: keys on fewer than 3 primaries");
      bench::suite t(a,
                     "GET/SET synchronous round trips, " + std::to_string(threads) +
                         (threads == 1 ? " client thread" : " client threads") +
                         ": 3-primary cluster vs single server",
                     "k ops/s", 1e-3);
      t.add("spindle::redis::pool, single server",
            [&, threads] { return get_set(single, n_sync, threads); });
      t.add("spindle::redis::cluster, 3 primaries",
            [&, threads] { return get_set(cluster, n_sync, threads); }, true);
      std::string keys;
      for (const auto& [node, count] : spread)
        keys += (keys.empty() ? "" : ", ") + node + " " + std::to_string(count);
      t.note("keys per primary: " + keys + "; cluster of 3 primaries, no replicas, started in " +
             std::to_string(ms) + " ms; one op = one SET or one GET");
      t.note("ratio: the cluster's median over the single server's. All servers share this "
             "machine's cores with the client.");
      t.run();
    }
    {
      // The reliable queue over 3 queues at once, one per primary on the cluster.
      auto co = redis::cluster_options::from_url(cl->url());
      redis::cluster cluster(co);
      std::vector<std::string> names;
      std::map<std::string, bool> taken;  // primaries given a queue
      for (int i = 0; names.size() < 3 && i < 1000; ++i) {
        std::string name = "bench:cq" + std::to_string(i);
        auto owner = cluster.primary_for_key("{" + name + "}").str();
        if (!taken[owner]) {
          taken[owner] = true;
          names.push_back(name);
        }
      }
      bench::validate(names.size() == 3, "queues: no name found for every primary");
      using q_t = redis::queue<std::uint64_t>;
      auto on_single = [&](const std::string& name) {
        return std::make_unique<q_t>(name, redis::options{.port = port},
                                     redis::queue_options{.poll_interval = std::chrono::milliseconds(20)});
      };
      auto on_cluster = [&](const std::string& name) {
        return std::make_unique<q_t>(name, cluster, redis::queue_options{.poll_interval = std::chrono::milliseconds(20)});
      };
      bench::suite t(a,
                     "reliable queue push/pop/ack end to end, 3 queues at once (1 producer + 1 "
                     "consumer each): 3-primary cluster vs single server",
                     "k jobs/s", 1e-3);
      t.add("[1 trip/job] spindle queues on the single server",
            [&] { return queues_end_to_end(on_single, names, n_jobs); });
      t.add("[1 trip/job] spindle queues on the cluster, one per primary",
            [&] { return queues_end_to_end(on_cluster, names, n_jobs); }, true);
      t.note("queues " + names[0] + ", " + names[1] + ", " + names[2] +
             " (one per primary on the cluster); pop(T&), the ack riding on the next pop");
      t.note("ratio: the cluster's median over the single server's. All servers share this "
             "machine's cores with the client.");
      t.run();
    }
  } else {
    std::printf("\nGET/SET on a cluster: skipped (%s)\n", why.c_str());
  }
#ifdef SPINDLE_BENCH_HAVE_HIREDIS
  redisFree(h);
#endif
  return 0;
}
