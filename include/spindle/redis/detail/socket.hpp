// spindle/redis/detail/socket.hpp - a TCP or Unix-domain socket with connect and I/O deadlines.
//
// Connect is non-blocking with a poll() deadline; afterwards the socket is blocking with
// SO_RCVTIMEO/SO_SNDTIMEO set to the I/O timeout (two system calls per round trip, as in a plain
// blocking client), and every read and write also checks an overall deadline. On TCP,
// TCP_NODELAY is set, and set_keepalive() turns on keepalive probes and TCP_USER_TIMEOUT so a
// dead path is noticed by the kernel even while the socket is idle. SIGPIPE is never raised
// (MSG_NOSIGNAL). Failures throw redis::error and close the socket; messages name the host or
// path and the system's reason, never anything sent or received.
#pragma once

#include <fcntl.h>
#include <netdb.h>        // getaddrinfo
#include <netinet/in.h>
#include <netinet/tcp.h>  // TCP_NODELAY
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>     // timeval
#include <sys/un.h>       // sockaddr_un
#include <unistd.h>

#include <algorithm>  // min, max
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>  // strerror
#include <string>
#include <utility>  // exchange

#include "spindle/deadline.hpp"
#include "spindle/redis/error.hpp"

namespace spindle::redis::detail {

/// One TCP connection. Move-only; the destructor closes it. Not thread-safe.
class socket {
 public:
  using clock = std::chrono::steady_clock;

  socket() = default;
  socket(const socket&) = delete;
  socket& operator=(const socket&) = delete;
  socket(socket&& o) noexcept : fd_(std::exchange(o.fd_, -1)), tcp_(o.tcp_), io_timeout_(o.io_timeout_) {}
  socket& operator=(socket&& o) noexcept {
    if (this != &o) {
      close();
      fd_ = std::exchange(o.fd_, -1);
      tcp_ = o.tcp_;
      io_timeout_ = o.io_timeout_;
    }
    return *this;
  }
  ~socket() { close(); }

  bool is_open() const noexcept { return fd_ >= 0; }
  int fd() const noexcept { return fd_; }

  void close() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  /// Connects to host:port within `connect_timeout` (0: no limit; name resolution itself is not
  /// bounded). Then sets TCP_NODELAY and the I/O timeout. Throws redis::error.
  void connect(const std::string& host, std::uint16_t port,
               std::chrono::milliseconds connect_timeout, std::chrono::milliseconds io_timeout) {
    close();
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    std::string port_s = std::to_string(port);
    int rc = ::getaddrinfo(host.c_str(), port_s.c_str(), &hints, &res);
    if (rc != 0)
      throw error("redis: cannot resolve " + host + ": " + ::gai_strerror(rc));
    std::string last = "no address";
    auto deadline = spindle::detail::time_after<clock>(connect_timeout);
    for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
      int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                        ai->ai_protocol);
      if (fd < 0) {
        last = std::strerror(errno);
        continue;
      }
      if (try_connect(fd, ai, connect_timeout, deadline, last)) {
        fd_ = fd;
        break;
      }
      ::close(fd);
    }
    ::freeaddrinfo(res);
    if (fd_ < 0)
      throw error("redis: cannot connect to " + host + ":" + port_s + ": " + last);
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    tcp_ = true;
    int flags = ::fcntl(fd_, F_GETFL);
    ::fcntl(fd_, F_SETFL, flags & ~O_NONBLOCK);
    set_io_timeout(io_timeout);
  }

  /// Connects to the Unix-domain socket at `path` within `connect_timeout` (0: no limit), then
  /// sets the I/O timeout. Throws redis::error (also for a path too long for sockaddr_un).
  void connect_unix(const std::string& path, std::chrono::milliseconds connect_timeout,
                    std::chrono::milliseconds io_timeout) {
    close();
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof a.sun_path)
      throw error("redis: unix socket path of " + std::to_string(path.size()) +
                  " bytes: must be 1 to " + std::to_string(sizeof a.sun_path - 1));
    path.copy(a.sun_path, path.size());
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) fail("socket");
    addrinfo ai{};
    ai.ai_addr = reinterpret_cast<sockaddr*>(&a);
    ai.ai_addrlen = sizeof a;
    std::string last;
    if (!try_connect(fd, &ai, connect_timeout,
                     spindle::detail::time_after<clock>(connect_timeout), last)) {
      ::close(fd);
      throw error("redis: cannot connect to unix socket " + path + ": " + last);
    }
    fd_ = fd;
    tcp_ = false;
    int flags = ::fcntl(fd_, F_GETFL);
    ::fcntl(fd_, F_SETFL, flags & ~O_NONBLOCK);
    set_io_timeout(io_timeout);
  }

  /// On a TCP socket, sets SO_KEEPALIVE with probes after `idle` of silence, every idle / 3
  /// (at least 1 s) after that, 3 of them; and TCP_USER_TIMEOUT to idle + 3 intervals, so
  /// unacknowledged writes fail within the same time. Does nothing for 0 or a Unix socket.
  /// Never throws (a kernel without an option keeps its default).
  void set_keepalive(std::chrono::seconds idle) noexcept {
    if (fd_ < 0 || !tcp_ || idle.count() <= 0) return;
    int on = 1;
    int idle_s = static_cast<int>(std::min<std::int64_t>(idle.count(), 32767));
    int interval = std::max(1, idle_s / 3);
    int count = 3;
    ::setsockopt(fd_, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
    ::setsockopt(fd_, IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof idle_s);
    ::setsockopt(fd_, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
    ::setsockopt(fd_, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
#ifdef TCP_USER_TIMEOUT
    unsigned user_ms = static_cast<unsigned>(idle_s + count * interval) * 1000u;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_ms, sizeof user_ms);
#endif
  }

  /// Sets how long one read or write may wait (0: no limit). Throws redis::error.
  void set_io_timeout(std::chrono::milliseconds t) {
    io_timeout_ = t;
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(t.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((t.count() % 1000) * 1000);
    if (::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
        ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0)
      fail("setsockopt");
  }
  std::chrono::milliseconds io_timeout() const noexcept { return io_timeout_; }

  /// Writes all of [data, data+n). Throws redis::error (and closes) on failure or timeout.
  void write_all(const char* data, std::size_t n) {
    auto deadline = spindle::detail::time_after<clock>(io_timeout_);
    while (n > 0) {
      ssize_t w = ::send(fd_, data, n, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) fail_timeout("write");
        fail("write");
      }
      data += w;
      n -= static_cast<std::size_t>(w);
      if (n > 0 && io_timeout_.count() > 0 && clock::now() > deadline) fail_timeout("write");
    }
  }

  /// Reads at least one byte into [data, data+n); returns the count. `deadline` bounds the whole
  /// reply being read (time_point::max(): none). Throws redis::error (and closes) on EOF, error
  /// or timeout.
  std::size_t read_some(char* data, std::size_t n, clock::time_point deadline) {
    for (;;) {
      if (clock::now() > deadline) fail_timeout("read");
      ssize_t r = ::recv(fd_, data, n, 0);
      if (r > 0) return static_cast<std::size_t>(r);
      if (r == 0) {
        close();
        throw error("redis: connection closed by the server");
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) fail_timeout("read");
      fail("read");
    }
  }

  /// True if the peer has closed or reset the connection (checked without blocking); a socket
  /// with unread data counts as alive. Never throws.
  bool peer_closed() const noexcept {
    if (fd_ < 0) return true;
    char c;
    ssize_t r = ::recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r > 0) return false;
    if (r == 0) return true;
    return !(errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
  }

 private:
  static bool try_connect(int fd, addrinfo* ai, std::chrono::milliseconds timeout,
                          clock::time_point deadline, std::string& last) {
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) return true;
    if (errno != EINPROGRESS) {
      last = std::strerror(errno);
      return false;
    }
    for (;;) {
      int wait_ms = -1;
      if (timeout.count() > 0) {
        auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - clock::now());
        if (left.count() <= 0) {
          last = "connect timed out";
          return false;
        }
        wait_ms = static_cast<int>(left.count());
      }
      pollfd p{fd, POLLOUT, 0};
      int rc = ::poll(&p, 1, wait_ms);
      if (rc < 0 && errno == EINTR) continue;
      if (rc < 0) {
        last = std::strerror(errno);
        return false;
      }
      if (rc == 0) continue;  // the deadline check above ends the loop
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        last = std::strerror(err);
        return false;
      }
      return true;
    }
  }

  [[noreturn]] void fail(const char* what) {
    std::string m = std::string("redis: ") + what + " failed: " + std::strerror(errno);
    close();
    throw error(m);
  }
  [[noreturn]] void fail_timeout(const char* what) {
    close();
    throw error(std::string("redis: ") + what + " timed out after " +
                std::to_string(io_timeout_.count()) + " ms");
  }

  int fd_ = -1;
  bool tcp_ = false;
  std::chrono::milliseconds io_timeout_{0};
};

}  // namespace spindle::redis::detail
