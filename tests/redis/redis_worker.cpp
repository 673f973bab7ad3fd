// redis_worker: the helper process of the cross-process Redis tests.
//
//   redis_worker <port> <queue> produce <n>          pushes "item-0" .. "item-<n-1>", exits 0
//   redis_worker <port> <queue> consume <tag> ack    pops, logs to <queue>:log:<tag> and adds to
//                                                    the set <queue>:done, acks; exits 0 once the
//                                                    queue is closed and drained. A value that
//                                                    starts with "poison" is nacked instead (a
//                                                    failing handler). A failed ack is reported
//                                                    on stderr and the worker goes on.
//   redis_worker <port> <queue> consume <tag> hold   pops 5 items, logs them, never acks, then
//                                                    waits to be killed
//   redis_worker <port> <key> limit tb|sw <tries>    tries a token_bucket (rate 0.01/s, burst 50)
//                                                    or sliding_window (30 per 60 s) on <key>
//                                                    <tries> times; INCRBY <key>:granted
// A <queue> name starting with "s:" uses redis::stream instead (the name after the prefix).
// Visibility timeout 300 ms, poll interval 20 ms.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <spindle/redis/queue.hpp>
#include <spindle/redis/rate_limit.hpp>
#include <spindle/redis/stream.hpp>
#include <string>
#include <thread>

namespace redis = spindle::redis;
using namespace std::chrono_literals;

namespace {
// Runs f, retrying for up to ~20 s while the server is away (a restart in a fault test).
template <class F>
void retrying(F f) {
  for (int i = 0;; ++i) {
    try {
      f();
      return;
    } catch (const redis::error&) {
      if (i == 400) throw;
      std::this_thread::sleep_for(50ms);  // the server restarts: nothing to wait on
    }
  }
}

template <class Q>
int consume(Q& q, const redis::options& o, const std::string& name, const std::string& tag,
            bool hold) {
  redis::connection log(o);
  typename Q::delivery d;
  int held = 0;
  for (;;) {
    auto s = q.pop_delivery(d);
    if (s != spindle::status::ok) return 0;
    retrying([&] { log.command("RPUSH", name + ":log:" + tag, d.value); });
    if (hold) {
      if (++held == 5)
        for (;;) ::pause();  // holding items until SIGKILL
      continue;
    }
    if (d.value.rfind("poison", 0) == 0) {
      try {
        q.nack(d);
      } catch (const redis::error& e) {  // the lease expires, the item comes back
        std::fprintf(stderr, "redis_worker: nack of %s threw: %s\n", d.value.c_str(), e.what());
      }
      continue;
    }
    retrying([&] { log.command("SADD", name + ":done", d.value); });
    try {
      if (!q.ack(d)) std::fprintf(stderr, "redis_worker: ack of %s failed\n", d.value.c_str());
    } catch (const redis::error& e) {  // a server restart: the item may come back (duplicate)
      std::fprintf(stderr, "redis_worker: ack of %s threw: %s\n", d.value.c_str(), e.what());
    }
  }
}

template <class Q>
int run(Q& q, const redis::options& o, const std::string& name, const std::string& mode, int argc,
        char** argv) {
  if (mode == "produce") {
    int n = std::atoi(argv[4]);
    for (int i = 0; i < n; ++i)
      if (q.push("item-" + std::to_string(i)) != spindle::status::ok) return 3;
    return 0;
  }
  if (mode != "consume" || argc < 6) return 2;
  return consume(q, o, name, argv[4], std::string(argv[5]) == "hold");
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr,
                 "usage: redis_worker <port> <queue> produce <n> | consume <tag> ack|hold\n");
    return 2;
  }
  try {
    redis::options o{.port = static_cast<std::uint16_t>(std::atoi(argv[1])),
                     .connect_timeout = 5s,
                     .io_timeout = 10s};
    std::string name = argv[2], mode = argv[3];
    if (mode == "limit" && argc >= 6) {
      int tries = std::atoi(argv[5]), granted = 0;
      if (std::string(argv[4]) == "tb") {
        redis::token_bucket tb(name, o, 0.01, 50);
        for (int i = 0; i < tries; ++i) granted += tb.try_acquire() ? 1 : 0;
      } else {
        redis::sliding_window sw(name, o, 30, 60s);
        for (int i = 0; i < tries; ++i) granted += sw.try_acquire() ? 1 : 0;
      }
      redis::connection(o).command("INCRBY", name + ":granted", granted);
      return 0;
    }
    if (name.rfind("s:", 0) == 0) {
      redis::stream<std::string> s(name.substr(2), o,
                                   {.visibility_timeout = 300ms, .poll_interval = 20ms});
      return run(s, o, name.substr(2), mode, argc, argv);
    }
    redis::queue<std::string> q(name, o, {.visibility_timeout = 300ms, .poll_interval = 20ms});
    return run(q, o, name, mode, argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "redis_worker: %s\n", e.what());
    return 1;
  }
}
