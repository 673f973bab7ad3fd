// redis_cache: cache-aside with stampede protection. Sixteen threads miss the same key at once;
// exactly one of them runs the slow "database query", the others are woken when its value is
// stored (over pub/sub, not by polling), and every caller gets the same value. A second round
// is served from the cache; a missing row is remembered by the negative cache.
//
//   redis_cache redis://127.0.0.1:6379
#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <optional>
#include <spindle/redis/cache.hpp>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: redis_cache redis://host:port\n");
    return 2;
  }
  try {
    auto opts = spindle::redis::options::from_url(argv[1]);
    spindle::redis::cache<std::string> users("example:users", opts,
                                             {.ttl_jitter = 0.1, .negative_ttl = 30s});
    users.invalidate("42");  // a fresh start for the demo
    std::atomic<int> queries{0};
    auto query_db = [&] {  // the expensive call the cache protects
      queries.fetch_add(1);
      std::this_thread::sleep_for(200ms);  // a slow query
      return std::string("Ada Lovelace");
    };

    std::vector<std::string> got(16);
    std::vector<std::thread> callers;
    for (auto& slot : got)
      callers.emplace_back([&] { slot = users.get_or_compute("42", 60s, query_db); });
    for (auto& t : callers) t.join();
    bool same = true;
    for (auto& v : got) same = same && v == "Ada Lovelace";
    std::printf("16 concurrent misses: %d database query, all got \"%s\": %s\n", queries.load(),
                got[0].c_str(), same ? "yes" : "no");

    users.get_or_compute("42", 60s, query_db);  // a hit: no query
    auto none = users.get_or_compute("404", 60s, [&]() -> std::optional<std::string> {
      queries.fetch_add(1);
      return std::nullopt;  // no such user
    });
    users.get_or_compute("404", 60s, [&]() -> std::optional<std::string> {
      queries.fetch_add(1);  // not called: the nullopt is cached for 30 s
      return std::nullopt;
    });
    users.invalidate("404");
    auto s = users.stats();
    std::printf("after a hit and two lookups of a missing user: %d queries in all, user 404 %s\n",
                queries.load(), none ? "found" : "not found");
    std::printf("stats: computed %llu, waited %llu, hits %llu\n",
                static_cast<unsigned long long>(s.computed),
                static_cast<unsigned long long>(s.waited),
                static_cast<unsigned long long>(s.hits));
    return queries.load() == 2 && same ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "redis_cache: %s\n", e.what());
    return 1;
  }
}
