// tests/support/redis_cluster.hpp - a real Redis Cluster for tests: N primaries with R replicas
// each (default 3 + 3) of redis-server on free 127.0.0.1 ports, each in its own temporary
// directory, joined by `redis-cli --cluster create ... --cluster-replicas R --cluster-yes`.
//
//   if (!test_support::redis_cluster::available()) return;  // as redis_server::available()
//   test_support::redis_cluster cl;              // ready: cluster_state:ok everywhere
//   spindle::redis::cluster c(cl.url());         // redis+cluster://127.0.0.1:p1,...
//   cl.kill(i);  cl.wait_ok(10s);  cl.restart(i);  // SIGKILL one node, bring it back
//
// Every node runs with cluster-node-timeout `node_timeout` (default 1000 ms: a failover takes a
// few seconds), cluster-replica-validity-factor 0 (a replica always may take over), appendonly
// no, no RDB snapshots, and diskless replication without delay (replicas sync at once).
//
// Bounded: the constructor throws std::runtime_error (with the nodes' logs) if the cluster is
// not ready within `start_limit`; every wait has a limit. The nodes die with the thread that
// made the fixture (PR_SET_PDEATHSIG, as redis_server). The destructor kills every node and
// removes the directories. Not thread-safe: use it from the test's main thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "spindle/redis/cluster.hpp"  // node_address
#include "spindle/redis/connection.hpp"
#include "support/process.hpp"
#include "support/redis_server.hpp"

namespace test_support {

struct redis_cluster_config {
  std::size_t primaries = 3;
  std::size_t replicas_per_primary = 1;
  std::chrono::milliseconds node_timeout{1000};
  std::chrono::milliseconds start_limit{25000};
};

class redis_cluster {
 public:
  using config = redis_cluster_config;

  /// redis-server and redis-cli are both needed; see redis_server::available().
  static bool available() {
    if (!redis_server::available()) return false;
    if (!cli().empty()) return true;
    if (const char* ci = std::getenv("CI"); ci != nullptr && *ci != '\0')
      throw std::runtime_error("redis-cli not found and CI is set: the cluster tests must run");
    std::fprintf(stderr, "SKIPPED: redis-cli not found; Redis Cluster tests did not run\n");
    return false;
  }

  explicit redis_cluster(config c = {}) : cfg_(c) {
    if (cfg_.primaries < 3) throw std::invalid_argument("redis_cluster: needs 3 primaries or more");
    auto start = std::chrono::steady_clock::now();
    std::size_t n = cfg_.primaries * (1 + cfg_.replicas_per_primary);
    for (std::size_t i = 0; i < n; ++i)
      nodes_.push_back(std::make_unique<redis_server>(redis_server_config{
          .extra = {"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", std::to_string(cfg_.node_timeout.count()),
                    "--cluster-replica-validity-factor", "0", "--repl-diskless-sync", "yes",
                    "--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1"}}));
    std::vector<std::string> argv = {cli(), "--cluster", "create"};
    for (auto& s : nodes_) argv.push_back("127.0.0.1:" + std::to_string(s->port()));
    argv.insert(argv.end(),
                {"--cluster-replicas", std::to_string(cfg_.replicas_per_primary), "--cluster-yes"});
    auto left = cfg_.start_limit - std::chrono::duration_cast<std::chrono::milliseconds>(
                                       std::chrono::steady_clock::now() - start);
    auto r = run(argv, left);
    if (!r.exited(0))
      throw std::runtime_error("redis_cluster: redis-cli --cluster create failed:\n" + r.out +
                               r.err + logs());
    left = cfg_.start_limit - std::chrono::duration_cast<std::chrono::milliseconds>(
                                  std::chrono::steady_clock::now() - start);
    if (!wait_ok(left))
      throw std::runtime_error("redis_cluster: not ready within " +
                               std::to_string(cfg_.start_limit.count()) + " ms:\n" + logs());
  }

  redis_cluster(const redis_cluster&) = delete;
  redis_cluster& operator=(const redis_cluster&) = delete;
  ~redis_cluster() = default;  // each redis_server kills its node and removes its directory

  std::size_t size() const noexcept { return nodes_.size(); }
  std::uint16_t port(std::size_t i) const { return nodes_.at(i)->port(); }
  redis_server& node(std::size_t i) { return *nodes_.at(i); }
  bool running(std::size_t i) const { return nodes_.at(i)->running(); }

  /// "redis+cluster://127.0.0.1:p1,127.0.0.1:p2,..." over every running node.
  std::string url() const {
    std::string u = "redis+cluster://";
    bool first = true;
    for (auto& s : nodes_) {
      if (!s->running()) continue;
      if (!first) u += ',';
      u += "127.0.0.1:" + std::to_string(s->port());
      first = false;
    }
    return u;
  }

  /// SIGKILLs node i (no shutdown, no goodbye to the other nodes).
  void kill(std::size_t i) { nodes_.at(i)->kill(); }
  /// Starts node i again on its port and directory: it rejoins with its nodes.conf (an old
  /// primary whose replica took over comes back as a replica).
  void restart(std::size_t i) { nodes_.at(i)->start(); }

  /// Index of the running node that answers on `port`, or size() if none.
  std::size_t index_of(std::uint16_t port) const {
    for (std::size_t i = 0; i < nodes_.size(); ++i)
      if (nodes_[i]->port() == port) return i;
    return nodes_.size();
  }

  /// A connection to node i (plain, no routing).
  spindle::redis::connection connect(std::size_t i) const {
    return spindle::redis::connection({.port = port(i),
                                       .connect_timeout = std::chrono::seconds(2),
                                       .io_timeout = std::chrono::seconds(5)});
  }

  /// Waits until every running node says cluster_state:ok with all 16384 slots ok, knows every
  /// running node, and every replica's link to its primary is up. Returns false after `limit`.
  bool wait_ok(std::chrono::milliseconds limit) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
      if (ready()) return true;
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));  // polling servers, bounded
    }
  }

  /// The nodes' logs, for failure messages.
  std::string logs() const {
    std::string all;
    for (auto& s : nodes_) {
      std::string l = s->log();
      if (l.size() > 3000) l = l.substr(l.size() - 3000);
      all += "--- node :" + std::to_string(s->port()) + "\n" + l;
    }
    return all;
  }

 private:
  static std::string cli() {
    if (::access("/usr/bin/redis-cli", X_OK) == 0) return "/usr/bin/redis-cli";
    std::string server = redis_server::binary();
    auto slash = server.rfind('/');
    if (slash != std::string::npos) {
      std::string p = server.substr(0, slash) + "/redis-cli";
      if (::access(p.c_str(), X_OK) == 0) return p;
    }
    return "";
  }

  static std::string field(const std::string& info, const std::string& name) {
    auto at = info.find(name + ":");
    if (at == std::string::npos) return "";
    auto end = info.find_first_of("\r\n", at);
    return info.substr(at + name.size() + 1, end - at - name.size() - 1);
  }

  bool ready() const {
    std::size_t up = 0;
    for (auto& s : nodes_) up += s->running() ? 1 : 0;
    try {
      for (std::size_t i = 0; i < nodes_.size(); ++i) {
        if (!nodes_[i]->running()) continue;
        auto c = connect(i);
        std::string info = c.command("CLUSTER", "INFO").str();
        if (field(info, "cluster_state") != "ok" || field(info, "cluster_slots_ok") != "16384" ||
            field(info, "cluster_slots_pfail") != "0" || field(info, "cluster_slots_fail") != "0")
          return false;
        std::string repl = c.command("INFO", "replication").str();
        if (field(repl, "role") == "slave" && field(repl, "master_link_status") != "up")
          return false;
        // Every running node is known and not flagged failing.
        std::string nodes = c.command("CLUSTER", "NODES").str();
        std::size_t healthy = 0;
        for (std::size_t pos = 0; pos < nodes.size();) {
          auto eol = nodes.find('\n', pos);
          std::string line = nodes.substr(pos, eol == std::string::npos ? eol : eol - pos);
          pos = eol == std::string::npos ? nodes.size() : eol + 1;
          // <id> <ip:port@cport> <flags> <primary> <ping> <pong> <epoch> <link> <slots...>
          std::vector<std::string> tok;
          for (std::size_t b = 0; b < line.size() && tok.size() < 8;) {
            auto e = line.find(' ', b);
            tok.push_back(line.substr(b, e == std::string::npos ? e : e - b));
            b = e == std::string::npos ? line.size() : e + 1;
          }
          if (tok.size() == 8 && tok[2].find("fail") == std::string::npos && tok[7] == "connected")
            ++healthy;
        }
        if (healthy < up) return false;
      }
    } catch (const std::exception&) {
      return false;  // a node still starting or just killed
    }
    return true;
  }

  config cfg_;
  std::vector<std::unique_ptr<redis_server>> nodes_;
};

/// The one cluster (3 primaries, 3 replicas) a test binary shares between its cases, started on
/// first use; null when redis-server or redis-cli is missing (then available() printed SKIPPED,
/// or threw under CI). A case that kills a node must bring it back (restart, wait_ok) before it
/// ends. Not thread-safe: call it from the test's main thread.
inline redis_cluster* shared_cluster() {
  static std::unique_ptr<redis_cluster> cl;
  if (!cl) {
    if (!redis_cluster::available()) return nullptr;
    cl = std::make_unique<redis_cluster>();
  }
  return cl.get();
}

/// A connection straight to one node (no routing): CLUSTER commands, checks of what one node
/// holds. io_timeout 10 s: generous for a loaded CI machine.
inline spindle::redis::connection direct(const spindle::redis::node_address& a) {
  return spindle::redis::connection({.host = a.host, .port = a.port,
                                     .io_timeout = std::chrono::seconds(10)});
}

}  // namespace test_support
