// pattern_worker: the helper process of the cross-process tests of the Redis patterns.
//
//   pattern_worker <port> lock <name> <iterations>
//       takes distributed_lock <name> <iterations> times; inside, increments {<name>}:counter by
//       a non-atomic GET then SET, and checks its fence against the resource {<name>}:maxfence
//       (which must only grow); exits 0, or 3 when a fence was refused, 4 when a release failed.
//   pattern_worker <port> cache <name> <threads>
//       <threads> threads each INCR {<name>}:arrived, then call cache<string>::get_or_compute on
//       key "k"; the compute function INCRs {<name>}:calls and blocks until {<name>}:go holds an
//       element (BLPOP, so the test decides when the computation ends). Prints one line per
//       thread: the value it got. Exits 0.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <spindle/redis/cache.hpp>
#include <spindle/redis/lock.hpp>
#include <string>
#include <thread>
#include <vector>

namespace redis = spindle::redis;
using namespace std::chrono_literals;

namespace {

int run_lock(const redis::options& o, const std::string& name, int iterations) {
  redis::distributed_lock m(name, o, {.lease = 10s, .renew = false, .max_retry_delay = 5ms});
  redis::connection c(o);
  const std::string counter = "{" + name + "}:counter", maxfence = "{" + name + "}:maxfence";
  for (int i = 0; i < iterations; ++i) {
    auto held = m.lock_for(60s);
    if (!held) return 5;
    auto seen = c.command("GET", maxfence);
    if (!seen.is_nil() && static_cast<std::uint64_t>(seen.integer()) >= held->fence()) return 3;
    c.command("SET", maxfence, std::to_string(held->fence()));
    auto v = c.command("GET", counter);
    long n = v.is_nil() ? 0 : static_cast<long>(v.integer());
    c.command("SET", counter, std::to_string(n + 1));  // lost updates if two held it at once
    if (!held->release()) return 4;
  }
  return 0;
}

int run_cache(const redis::options& o, const std::string& name, int threads) {
  redis::cache<std::string> cache(name, o, {.lock_lease = 30s, .recheck = 30s});
  std::mutex mu;
  std::vector<std::string> got;
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&] {
      redis::connection c(o);
      c.command("INCR", "{" + name + "}:arrived");
      auto v = cache.get_or_compute("k", 60s, [&] {
        c.command("INCR", "{" + name + "}:calls");
        c.command("BLPOP", "{" + name + "}:go", 30);
        return std::string("computed");
      });
      std::lock_guard lock(mu);
      got.push_back(v);
    });
  for (auto& t : ts) t.join();
  for (auto& v : got) std::printf("%s\n", v.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: pattern_worker <port> lock|cache <name> <n>\n");
    return 2;
  }
  try {
    redis::options o{.port = static_cast<std::uint16_t>(std::atoi(argv[1])),
                     .connect_timeout = 5s, .io_timeout = 40s};
    std::string mode = argv[2], name = argv[3];
    int n = std::atoi(argv[4]);
    if (mode == "lock") return run_lock(o, name, n);
    if (mode == "cache") return run_cache(o, name, n);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pattern_worker: %s\n", e.what());
    return 1;
  }
}
