// Process-level fault tests of redis::queue and redis::stream: consumer processes
// (tests/redis/redis_worker) are killed with SIGKILL, stopped past their lease with SIGSTOP and
// resumed, and the redis-server restarts (with and without persistence) while they work; poison
// items (nacked by the worker until dead-lettered) and foreign payloads (pushed by redis-cli) are
// mixed in. Each run checks conservation:
//   - every good id is handled at least once, every poison id is dead-lettered, nothing else is;
//   - an id handled more than once was held by a faulted consumer (killed or stopped), except in
//     the restart runs, where every consumer is faulted;
//   - nothing is left ready, held or pending, and close() ends every worker (exit 0).
// Each run prints its figures (jobs, faults, duplicates, seconds) and is bounded in time
// (visibility 300 ms, poll 20 ms; a run takes a few seconds).
#include <doctest/doctest.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <spindle/redis/queue.hpp>
#include <spindle/redis/stream.hpp>
#include <string>
#include <thread>
#include <vector>

#include "support/process.hpp"
#include "support/redis_server.hpp"

namespace redis = spindle::redis;
using namespace std::chrono_literals;
using spindle::status;
using test_support::redis_server;

#ifdef SPINDLE_REDIS_WORKER
namespace {

using test_support::local_options;

// Polls `pred` until it holds or `limit` passes (waiting on other processes' state).
template <class P>
bool eventually(P pred, std::chrono::milliseconds limit = 30s) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    try {
      if (pred()) return true;
    } catch (const redis::error&) {  // the server is restarting
    }
    std::this_thread::sleep_for(10ms);  // polling Redis state with a bounded deadline
  }
  return pred();
}

std::string redis_cli() {
  return (std::filesystem::path(redis_server::binary()).parent_path() / "redis-cli").string();
}

// One run: a channel `name` (a queue, or a stream if Stream), worker processes, and the tallies.
template <bool Stream>
class fault_run {
 public:
  using channel = std::conditional_t<Stream, redis::stream<std::string>, redis::queue<std::string>>;

  fault_run(redis_server& srv, std::string name)
      : srv_(srv),
        name_(std::move(name)),
        ch_(name_, local_options(srv.port()), opts()),
        log_(local_options(srv.port())) {}

  static auto opts() {
    if constexpr (Stream) {
      return redis::stream_options{.visibility_timeout = 300ms, .poll_interval = 20ms};
    } else {
      return redis::queue_options{.visibility_timeout = 300ms, .poll_interval = 20ms};
    }
  }

  channel& ch() { return ch_; }
  redis::connection& log() { return log_; }

  void spawn(const std::string& tag) {
    std::string arg = Stream ? "s:" + name_ : name_;
    workers_[tag] = std::make_unique<test_support::child>(std::vector<std::string>{
        SPINDLE_REDIS_WORKER, std::to_string(srv_.port()), arg, "consume", tag, "ack"});
  }
  pid_t pid(const std::string& tag) { return workers_.at(tag)->pid(); }
  void kill(const std::string& tag) {
    ::kill(pid(tag), SIGKILL);
    workers_.at(tag)->finish(10s);
    faulted_.insert(tag);
    ++faults_;
  }
  void stop_for(const std::string& tag, std::chrono::milliseconds d) {
    ::kill(pid(tag), SIGSTOP);
    std::this_thread::sleep_for(d);  // the fault itself: stopped past its lease
    ::kill(pid(tag), SIGCONT);
    faulted_.insert(tag);
    ++faults_;
  }
  void fault() { ++faults_; }
  void all_faulted() { all_faulted_ = true; }

  // Pushes good items "item-<i>" for i in [first, first + n), `poison` poison items and
  // `foreign` bare payloads through redis-cli (the foreign producer).
  void push(int first, int n, int poison, int foreign) {
    std::vector<std::string> items;
    for (int i = first; i < first + n; ++i) {
      items.push_back("item-" + std::to_string(i));
      good_.insert(items.back());
      if (poison > 0 && i % (n / poison) == 0 && poisoned_ < poison) {
        items.push_back("poison-" + std::to_string(i));
        bad_.insert(items.back());
        ++poisoned_;
      }
    }
    for (const auto& v : items) REQUIRE(ch_.push(v) == status::ok);
    for (int k = 0; k < foreign; ++k) {
      std::string v = "foreign-" + std::to_string(first + k);
      std::vector<std::string> argv{redis_cli(), "-p", std::to_string(srv_.port())};
      if (Stream) {
        argv.insert(argv.end(), {"XADD", "{" + name_ + "}:stream", "*", "v", v});
      } else {
        argv.insert(argv.end(), {"LPUSH", "{" + name_ + "}:ready", v});
      }
      REQUIRE(test_support::run(argv, 10s).exited(0));
      good_.insert(v);
    }
  }

  long done() { return log_.command("SCARD", name_ + ":done").integer(); }
  bool all_done() { return done() == static_cast<long>(good_.size()); }
  void forget_done() { good_.clear(); }

  // Closes the channel, waits for every live worker to exit 0, and checks conservation.
  void finish(const char* what, std::chrono::steady_clock::time_point started) {
    REQUIRE(eventually([&] { return all_done(); }, 40s));
    REQUIRE(eventually([&] { return ch_.dead_letter_size() == bad_.size(); }, 20s));
    ch_.close();
    for (auto& entry : workers_) {
      const std::string& tag = entry.first;  // named: clang 14 captures no structured binding
      auto& w = entry.second;
      if (faulted_.count(tag) != 0 && w->pid() <= 0) continue;  // killed
      auto r = w->finish(20s);
      INFO("worker " << tag << " stderr: " << r.err);
      CHECK(r.exited(0));
    }
    std::map<std::string, int> count;
    std::map<std::string, std::set<std::string>> by;
    long logged = 0;
    for (auto& [tag, w] : workers_) {
      auto l = log_.command("LRANGE", name_ + ":log:" + tag, 0, -1);
      for (const auto& e : l.elements()) {
        if (e.str().rfind("poison", 0) == 0) continue;
        ++count[e.str()];
        by[e.str()].insert(tag);
        ++logged;
      }
    }
    for (const auto& g : good_) CHECK_MESSAGE(count.count(g) == 1, g << " never handled");
    long dups = 0;
    for (const auto& entry : count) {
      const std::string& item = entry.first;
      const int k = entry.second;
      if (k < 2) continue;
      dups += k - 1;
      if (all_faulted_) continue;
      bool held_by_faulted = false;
      for (const auto& t : by[item]) held_by_faulted |= faulted_.count(t) != 0;
      CHECK_MESSAGE(held_by_faulted, item << " duplicated without a faulted holder");
    }
    CHECK(ch_.pending() == 0);
    CHECK(ch_.dead_letter_size() == bad_.size());
    if constexpr (!Stream) {
      CHECK(ch_.size() == 0);
      auto procs = log_.command("KEYS", "{" + name_ + "}:proc:*");
      for (const auto& p : procs.elements()) CHECK(log_.command("LLEN", p.str()).integer() == 0);
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    std::printf("%s: %zu jobs (%zu poison), %d faults, %ld handled, %ld duplicates, %.1f s\n", what,
                good_.size() + bad_.size(), bad_.size(), faults_, logged, dups, secs);
  }

 private:
  redis_server& srv_;
  std::string name_;
  channel ch_;
  redis::connection log_;
  std::map<std::string, std::unique_ptr<test_support::child>> workers_;
  std::set<std::string> faulted_;
  std::set<std::string> good_, bad_;
  int poisoned_ = 0;
  int faults_ = 0;
  bool all_faulted_ = false;
};

template <bool Stream>
void kill_and_stop(const char* what) {
  redis_server srv;
  auto started = std::chrono::steady_clock::now();
  fault_run<Stream> run(srv, "kf");
  constexpr int n = 1200;
  for (const char* t : {"w0", "w1", "w2"}) run.spawn(t);
  run.push(0, n, 3, 5);
  REQUIRE(eventually([&] { return run.done() >= n / 5; }));
  run.kill("w0");  // SIGKILL mid-run: whatever it held is recovered after 300 ms
  run.spawn("w3");
  REQUIRE(eventually([&] { return run.done() >= 2 * n / 5; }));
  run.stop_for("w1", 1000ms);  // past its lease: others take its items; it resumes
  run.finish(what, started);
}

template <bool Stream>
void restarts(const char* what) {
  redis_server srv({.appendonly = true});
  auto started = std::chrono::steady_clock::now();
  fault_run<Stream> run(srv, "rs");
  run.all_faulted();  // a restart faults every consumer: any in-flight item may come back
  constexpr int n = 1200;
  for (const char* t : {"w0", "w1", "w2"}) run.spawn(t);
  run.push(0, n, 2, 3);
  REQUIRE(eventually([&] { return run.done() >= n / 4; }));
  srv.restart(true);  // graceful: AOF flushed
  run.fault();
  REQUIRE(eventually([&] { return run.done() >= n / 2; }));
  srv.restart(false);  // SIGKILL: appendfsync always, nothing acknowledged is lost
  run.fault();
  run.finish(what, started);
}

template <bool Stream>
void restart_without_persistence(const char* what) {
  redis_server srv;
  auto started = std::chrono::steady_clock::now();
  fault_run<Stream> run(srv, "np");
  run.all_faulted();
  for (const char* t : {"w0", "w1"}) run.spawn(t);
  run.push(0, 300, 0, 0);
  REQUIRE(eventually([&] { return run.all_done(); }));
  // Every key vanishes (leases, lists, counters, the done set): the workers must take new
  // leases, never move items without one, and handle what is pushed afterwards.
  srv.restart(false);
  run.fault();
  run.forget_done();
  run.push(300, 300, 1, 2);
  run.finish(what, started);
}

}  // namespace

TEST_CASE("queue faults: consumers killed (SIGKILL) and stopped past the lease (SIGSTOP/SIGCONT)") {
  if (!redis_server::available()) return;
  kill_and_stop<false>("queue kill+stop");
}

TEST_CASE("stream faults: consumers killed (SIGKILL) and stopped past the lease (SIGSTOP/SIGCONT)") {
  if (!redis_server::available()) return;
  kill_and_stop<true>("stream kill+stop");
}

TEST_CASE("queue faults: redis-server restarts with AOF (graceful, then SIGKILL) mid-run") {
  if (!redis_server::available()) return;
  restarts<false>("queue restarts (AOF)");
}

TEST_CASE("stream faults: redis-server restarts with AOF (graceful, then SIGKILL) mid-run") {
  if (!redis_server::available()) return;
  restarts<true>("stream restarts (AOF)");
}

TEST_CASE("queue faults: redis-server restarts without persistence; workers go on") {
  if (!redis_server::available()) return;
  restart_without_persistence<false>("queue restart (no persistence)");
}

TEST_CASE("stream faults: redis-server restarts without persistence; workers go on") {
  if (!redis_server::available()) return;
  restart_without_persistence<true>("stream restart (no persistence)");
}
#endif
