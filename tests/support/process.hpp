// tests/support/process.hpp - runs a program as a child process for tests of whole programs:
// its standard output and error go to files, and every wait on it is bounded.
//
//   test_support::child c({"/bin/echo", "hi"});      // starts it (posix_spawn, PATH not searched)
//   auto r = c.finish(10s);                          // waits at most 10 s, else SIGKILL
//   CHECK(r.exited(0));  CHECK(r.out == "hi\n");
//
// child_options::stderr_fd hands the child an open descriptor as its stderr instead (a pty, say).
// The destructor kills a child still running and removes the capture files.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace test_support {

/// How a finished child ended, and what it wrote.
struct run_result {
  int status = -1;       ///< as waitpid reports it; -1 if it was killed for running too long
  std::string out, err;  ///< its standard output and error (err empty if stderr_fd was given)
  bool exited(int code) const {
    return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == code;
  }
};

struct child_options {
  int stderr_fd = -1;  ///< >= 0: the child's stderr (the caller keeps its own copy)
};

class child {
 public:
  /// Starts argv[0] with the arguments argv[1...]. Throws std::runtime_error if it cannot.
  explicit child(const std::vector<std::string>& argv, child_options o = {}) {
    static int serial = 0;
    std::string base =
        "/tmp/spindle-child-" + std::to_string(::getpid()) + "-" + std::to_string(serial++);
    out_path_ = base + ".out";
    err_path_ = base + ".err";
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (o.stderr_fd >= 0) {
      posix_spawn_file_actions_adddup2(&fa, o.stderr_fd, 2);
    } else {
      posix_spawn_file_actions_addopen(&fa, 2, err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                       0600);
    }
    std::vector<char*> args;
    std::vector<std::string> copy = argv;
    for (auto& a : copy) args.push_back(a.data());
    args.push_back(nullptr);
    int rc = ::posix_spawn(&pid_, args[0], &fa, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) throw std::runtime_error("child: cannot start " + argv.at(0));
  }

  child(const child&) = delete;
  child& operator=(const child&) = delete;

  ~child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      int st = 0;
      ::waitpid(pid_, &st, 0);
    }
    std::remove(out_path_.c_str());
    std::remove(err_path_.c_str());
  }

  pid_t pid() const noexcept { return pid_; }

  /// Waits for the child at most `limit`; kills it if it is still running then (status -1).
  run_result finish(std::chrono::milliseconds limit) {
    run_result r;
    auto deadline = std::chrono::steady_clock::now() + limit;
    int st = 0;
    while (pid_ > 0) {
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        r.status = st;
        pid_ = -1;
      } else if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &st, 0);
        pid_ = -1;
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));  // polling a child, bounded
      }
    }
    r.out = slurp(out_path_);
    r.err = slurp(err_path_);
    return r;
  }

 private:
  static std::string slurp(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }

  pid_t pid_ = -1;
  std::string out_path_, err_path_;
};

/// Runs argv to completion (at most `limit`) and returns what it did.
inline run_result run(const std::vector<std::string>& argv,
                      std::chrono::milliseconds limit = std::chrono::seconds(120)) {
  child c(argv);
  return c.finish(limit);
}

}  // namespace test_support
