// redis_event_log: a Redis Stream as an event log. Orders are appended once; two consumer
// groups - billing and shipping - each read every event (acknowledging in one group takes
// nothing from the other). Then an auditor replays the log from an offset, two entries per
// page, without joining any group: replay never loads the whole stream at once.
//
//   redis_event_log redis://127.0.0.1:6379
#include <chrono>
#include <cstdio>
#include <exception>
#include <spindle/redis/stream.hpp>
#include <string>
#include <vector>

using namespace std::chrono_literals;
namespace redis = spindle::redis;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: redis_event_log redis://host:port\n");
    return 2;
  }
  try {
    auto opts = redis::options::from_url(argv[1]);
    // Keep the whole log (no trimming of acknowledged entries): it is the record of truth.
    redis::stream_options keep{.poll_interval = 20ms, .trim_acknowledged = false};
    redis::stream<std::string> log("example:orders", opts, keep);
    log.destroy();  // a fresh demo

    const std::vector<std::string> events{"order 1 placed", "order 2 placed", "order 1 paid",
                                          "order 1 shipped", "order 2 cancelled"};
    for (const auto& e : events) log.push(e);

    // Two groups, one consumer each: each sees all five events.
    bool ok = true;
    for (const char* group : {"billing", "shipping"}) {
      auto so = keep;
      so.group = group;
      redis::stream<std::string> reader("example:orders", opts, so);
      redis::stream<std::string>::delivery d;
      int seen = 0;
      while (reader.try_pop_delivery(d) == spindle::status::ok) {
        ++seen;
        reader.ack(d);
      }
      std::printf("group %-8s read %d events, %zu pending\n", group, seen, reader.pending());
      ok = ok && seen == 5;
    }
    std::printf("entries still in the log: %zu\n", log.size());

    // Replay from an offset: everything after the second event, two per page.
    std::string offset = log.read_range("-", "+", 2).items.back().id;
    std::printf("replay after %s:\n", offset.c_str());
    std::string from = "(" + offset;
    int pages = 0, replayed = 0;
    while (!from.empty()) {
      auto page = log.read_range(from, "+", 2);
      ++pages;
      for (const auto& r : page.items) {
        std::printf("  %s  %s\n", r.id.c_str(), r.value ? r.value->c_str() : r.error.c_str());
        ++replayed;
      }
      from = page.next;
    }
    std::printf("replayed %d events in %d pages\n", replayed, pages);
    ok = ok && replayed == 3 && log.size() == 5;
    log.destroy();
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "redis_event_log: %s\n", e.what());
    return 1;
  }
}
