// redis_invalidation: cache invalidation across two processes over pub/sub. Both processes keep
// an in-process copy of a cached value (the second level, served without a round trip). When
// the parent replaces the value, the child's copy is dropped at once - not when its 60-second
// local TTL runs out - and its next read sees the new value.
//
//   redis_invalidation redis://127.0.0.1:6379
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <future>
#include <spindle/redis/cache.hpp>
#include <string>

using namespace std::chrono_literals;
namespace redis = spindle::redis;

namespace {
const redis::cache_options local_level{.local_capacity = 100, .local_ttl = 60s};

int child(const redis::options& opts) {
  std::promise<void> invalidated;
  auto heard = invalidated.get_future();
  auto o = local_level;
  o.on_invalidate = [&](const std::string& key) {  // only the parent's set() invalidates
    if (key == "greeting") invalidated.set_value();
  };
  redis::cache<std::string> c("example:inv", opts, o);
  redis::connection signal(opts);
  signal.command("BLPOP", "example:inv:written", 10);  // the parent cached "hello"
  auto before = c.get_or_compute("greeting", 60s, [] { return std::string("?"); });
  c.get_or_compute("greeting", 60s, [] { return std::string("?"); });  // a local hit
  signal.command("RPUSH", "example:inv:ready", "1");
  if (heard.wait_for(10s) != std::future_status::ready) return 1;
  auto after = c.get_or_compute("greeting", 60s, [] { return std::string("?"); });
  std::printf("child: before \"%s\" (local hits %llu), invalidated, after \"%s\"\n",
              before.c_str(), static_cast<unsigned long long>(c.stats().local_hits),
              after.c_str());
  return before == "hello" && after == "world" ? 0 : 1;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: redis_invalidation redis://host:port\n");
    return 2;
  }
  try {
    auto opts = redis::options::from_url(argv[1]);
    redis::connection(opts).command("DEL", "example:inv:written", "example:inv:ready",
                                    "{example:inv:greeting}:v");  // a fresh demo, unannounced
    std::fflush(stdout);
    pid_t pid = ::fork();  // before any thread exists; each process makes its own cache
    if (pid < 0) return 1;
    if (pid == 0) {
      int rc = 1;
      try {
        rc = child(opts);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "redis_invalidation (child): %s\n", e.what());
      }
      std::fflush(stdout);
      std::_Exit(rc);
    }

    redis::cache<std::string> c("example:inv", opts, local_level);
    redis::connection signal(opts);
    c.get_or_compute("greeting", 60s, [] { return std::string("hello"); });  // computed once
    signal.command("RPUSH", "example:inv:written", "1");
    signal.command("BLPOP", "example:inv:ready", 10);  // the child holds "hello" locally
    c.set("greeting", "world", 60s);                    // stores and publishes the invalidation
    std::printf("parent: replaced \"hello\" by \"world\"\n");
    std::fflush(stdout);
    int st = 0;
    ::waitpid(pid, &st, 0);
    bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    std::printf("%s\n", ok ? "the child saw the new value at once" : "the child failed");
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "redis_invalidation: %s\n", e.what());
    return 1;
  }
}
