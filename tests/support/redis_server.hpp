// tests/support/redis_server.hpp - a real redis-server for tests, on a free 127.0.0.1 port in
// a temporary directory.
//
//   if (!test_support::redis_server::available()) return;   // skips (or fails under CI=...)
//   test_support::redis_server srv({.appendonly = true});
//   spindle::redis::connection c({.port = srv.port()});
//   srv.restart();                                           // same port, same dir (AOF kept)
//
// available(): true if redis-server exists ($SPINDLE_REDIS_SERVER, else /usr/bin/redis-server,
// else redis-server on PATH). If it does not and the environment variable CI is set, it throws
// (the test fails loudly: CI must never skip these tests); otherwise it prints a visible SKIPPED
// line and returns false.
//
// The server runs as a child process that dies with the thread that created it
// (PR_SET_PDEATHSIG): create the fixture on the test's main thread. The destructor kills it and
// removes the directory.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>  // PR_SET_PDEATHSIG
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <spindle/redis/options.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace test_support {

/// Options for a client of the fixture's server on 127.0.0.1:`port`, with timeouts generous
/// enough for a loaded 2-core CI machine. The one definition every Redis test uses.
inline spindle::redis::options local_options(std::uint16_t port) {
  using namespace std::chrono_literals;
  return spindle::redis::options{.port = port, .connect_timeout = 5s, .io_timeout = 10s};
}

/// How the fixture starts redis-server.
struct redis_server_config {
  bool appendonly = false;              ///< appendonly yes, appendfsync always
  std::string requirepass{};            ///< empty: none
  std::vector<std::string> extra{};     ///< more arguments, e.g. {"--maxmemory", "10mb"}
};

class redis_server {
 public:
  using config = redis_server_config;

  /// The redis-server binary, or "" if none.
  static std::string binary() {
    if (const char* e = std::getenv("SPINDLE_REDIS_SERVER"); e != nullptr && *e != '\0')
      return ::access(e, X_OK) == 0 ? e : "";
    if (::access("/usr/bin/redis-server", X_OK) == 0) return "/usr/bin/redis-server";
    if (const char* path = std::getenv("PATH")) {
      std::stringstream ss(path);
      std::string dir;
      while (std::getline(ss, dir, ':')) {
        std::string p = dir + "/redis-server";
        if (!dir.empty() && ::access(p.c_str(), X_OK) == 0) return p;
      }
    }
    return "";
  }

  /// See the header comment. Thread-safe.
  static bool available() {
    if (!binary().empty()) return true;
    if (const char* ci = std::getenv("CI"); ci != nullptr && *ci != '\0')
      throw std::runtime_error(
          "redis-server not found and CI is set: the Redis tests must run in CI "
          "(apt-get install redis-server, or set SPINDLE_REDIS_SERVER)");
    std::fprintf(stderr, "SKIPPED: redis-server not found; Redis tests did not run\n");
    return false;
  }

  explicit redis_server(config c = {}) : cfg_(std::move(c)), bin_(binary()) {
    if (bin_.empty()) throw std::runtime_error("redis_server: redis-server not found");
    char tmpl[] = "/tmp/spindle-redis-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) throw std::runtime_error("redis_server: mkdtemp failed");
    dir_ = tmpl;
    for (int attempt = 0; attempt < 20; ++attempt) {
      port_ = free_port();
      if (launch(std::chrono::seconds(10))) return;
    }
    std::filesystem::remove_all(dir_);
    throw std::runtime_error("redis_server: could not start redis-server (see its log)");
  }

  redis_server(const redis_server&) = delete;
  redis_server& operator=(const redis_server&) = delete;

  ~redis_server() {
    kill();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::uint16_t port() const noexcept { return port_; }
  const std::string& dir() const noexcept { return dir_; }
  bool running() const noexcept { return pid_ > 0; }

  /// Kills the server at once (SIGKILL) and reaps it.
  void kill() { stop_with(SIGKILL); }
  /// Stops the server gracefully (SIGTERM: it flushes the AOF) and reaps it.
  void stop() { stop_with(SIGTERM); }
  /// Starts it again on the same port and directory. Throws std::runtime_error on failure.
  void start() {
    if (pid_ > 0) return;
    // The port may be briefly unavailable after the old server; retry for a bounded time.
    for (int attempt = 0; attempt < 50; ++attempt)
      if (launch(std::chrono::seconds(10))) return;
    throw std::runtime_error("redis_server: restart on port " + std::to_string(port_) + " failed");
  }
  /// stop() (or kill() if `graceful` is false), then start().
  void restart(bool graceful = true) {
    graceful ? stop() : kill();
    start();
  }

  /// The server's log, for failure messages.
  std::string log() const {
    std::ifstream f(dir_ + "/redis.log");
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }

 private:
  static std::uint16_t free_port() {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t len = sizeof a;
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      if (fd >= 0) ::close(fd);
      throw std::runtime_error("redis_server: no free port");
    }
    ::close(fd);
    return ntohs(a.sin_port);
  }

  static bool can_connect(std::uint16_t port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    if (ok) {  // PING: answered once the server has loaded its data
      const char ping[] = "*1\r\n$4\r\nPING\r\n";
      char buf[64] = {};
      ok = ::send(fd, ping, sizeof ping - 1, MSG_NOSIGNAL) == sizeof ping - 1 &&
           ::recv(fd, buf, sizeof buf - 1, 0) > 0 &&
           (std::strncmp(buf, "+PONG", 5) == 0 || std::strncmp(buf, "-NOAUTH", 7) == 0);
    }
    ::close(fd);
    return ok;
  }

  // Starts redis-server on port_; true once it answers, false if it exited (port taken).
  bool launch(std::chrono::seconds limit) {
    std::vector<std::string> args = {bin_,
                                     "--port", std::to_string(port_),
                                     "--bind", "127.0.0.1",
                                     "--dir", dir_,
                                     "--logfile", dir_ + "/redis.log",
                                     "--daemonize", "no",
                                     "--save", "",
                                     "--protected-mode", "no",
                                     "--appendonly", cfg_.appendonly ? "yes" : "no",
                                     "--appendfsync", "always"};
    if (!cfg_.requirepass.empty()) {
      args.push_back("--requirepass");
      args.push_back(cfg_.requirepass);
    }
    for (const auto& e : cfg_.extra) args.push_back(e);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t parent = ::getpid();
    pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("redis_server: fork failed");
    if (pid == 0) {  // child: only async-signal-safe calls until exec
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    pid_ = pid;
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      int st = 0;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {  // exited: port taken, bad config
        pid_ = -1;
        return false;
      }
      if (can_connect(port_)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));  // polling a child process
    }
    kill();
    return false;
  }

  void stop_with(int sig) {
    if (pid_ <= 0) return;
    ::kill(pid_, sig);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (;;) {
      int st = 0;
      pid_t r = ::waitpid(pid_, &st, WNOHANG);
      if (r == pid_ || r < 0) break;
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &st, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));  // polling a child process
    }
    pid_ = -1;
  }

  config cfg_;
  std::string bin_;
  std::string dir_;
  std::uint16_t port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace test_support
