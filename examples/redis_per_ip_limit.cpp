// redis_per_ip_limit: one limiter object, one limit per client IP, shared by every process.
// Requests from three clients arrive; each IP may make 5 requests per 10 seconds (a fixed
// window: the course's INCR + EXPIRE, made atomic). A refused request gets a Retry-After figure.
// A waiting acquire_for shows the same limiter used to slow a batch job down instead.
//
//   redis_per_ip_limit redis://127.0.0.1:6379
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <map>
#include <spindle/redis/keyed_rate_limit.hpp>
#include <string>
#include <utility>
#include <vector>

using namespace std::chrono_literals;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: redis_per_ip_limit redis://host:port\n");
    return 2;
  }
  try {
    auto opts = spindle::redis::options::from_url(argv[1]);
    spindle::redis::connection(opts).command("DEL", "{example:api:10.0.0.1}:fw",
                                             "{example:api:10.0.0.2}:fw",
                                             "{example:api:10.0.0.3}:fw");  // a fresh demo
    spindle::redis::keyed_fixed_window per_ip("example:api", opts, 5, 10s);

    // (client, requests it sends)
    std::vector<std::pair<std::string, int>> traffic{
        {"10.0.0.1", 3}, {"10.0.0.2", 8}, {"10.0.0.3", 12}};
    std::map<std::string, std::pair<int, int>> seen;  // accepted, refused
    for (auto& [ip, n] : traffic)
      for (int i = 0; i < n; ++i) {
        if (per_ip.try_acquire(ip))
          ++seen[ip].first;
        else
          ++seen[ip].second;
      }
    bool ok = true;
    for (auto& [ip, n] : traffic) {
      auto [acc, ref] = seen[ip];
      auto retry = per_ip.retry_after(ip);
      std::printf("%-9s sent %2d: %d accepted, %2d refused (HTTP 429)", ip.c_str(), n, acc, ref);
      if (ref > 0)
        std::printf(", Retry-After %lld ms", static_cast<long long>(retry.count()));
      std::printf("\n");
      ok = ok && acc == std::min(n, 5) && ref == n - acc;
    }

    // A caller that would rather wait a little than be refused:
    auto st = per_ip.acquire_for("10.0.0.3", 1, 50ms);
    std::printf("10.0.0.3 waiting at most 50 ms: %s\n", spindle::to_string(st));
    ok = ok && st == spindle::status::timeout;  // its window has about 10 s left
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "redis_per_ip_limit: %s\n", e.what());
    return 1;
  }
}
