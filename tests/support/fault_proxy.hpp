// tests/support/fault_proxy.hpp - a fault-injecting TCP proxy for the Redis tests: it sits
// between a client and redis-server on 127.0.0.1 and loses replies, cuts them, delays them,
// blackholes the path or drops every connection, on command.
//
//   test_support::redis_server srv;
//   spindle::test::fault_proxy proxy("127.0.0.1", srv.port());
//   spindle::redis::connection c({.port = proxy.port(), .io_timeout = 500ms});
//   proxy.drop_reply_of("INCR");     // the next INCR runs on the server, its reply never arrives
//   CHECK_THROWS_AS(c.command("INCR", "n"), spindle::redis::error);   // connection dropped
//
// How it works: one accept thread; per client connection one connection to the target and two
// threads, client->server ("up") and server->client ("down"). The up thread forwards whole RESP
// frames only, and before forwarding a command it records, in that connection's FIFO of pending
// commands, the command's name and the fault armed for it (decided at that moment: a fault armed
// later does not reach a command already forwarded). The down thread splits the server's bytes
// into RESP reply frames and pairs each one with the front of the FIFO, so pipelined commands
// keep their order and a fault hits exactly the reply of its command. Pushes (RESP3 '>') and
// attributes ('|') pair with no command. A connection that sends SUBSCRIBE, PSUBSCRIBE,
// SSUBSCRIBE or MONITOR stops pairing (its replies no longer match commands one to one): from
// then on it forwards everything and no reply fault applies to it.
//
// Faults and their meaning as a client sees them:
//   drop_reply_of  the command ran (the proxy waited for its whole reply), the reply never
//                  arrives, the connection drops: "a lost reply".
//   cut_mid_reply  half of the reply arrives, then the connection drops.
//   blackhole      nothing moves either way and connections stay open: a dead network path.
//                  Bytes already read are held, not lost; when it is lifted they move on in
//                  order, as TCP would after the path recovers. For a path that never recovers,
//                  call disconnect_all() before blackhole(false).
//   delay          every chunk from the server waits `d` before it is forwarded.
//   disconnect_all every live connection closes now, as a server restart looks to clients.
//
// If the target refuses the proxy's connection, the client's connection is accepted and closed
// at once (the client sees the connection close, not ECONNREFUSED). Loopback only: the target
// must be 127.x.x.x or "localhost"; the proxy listens on a free 127.0.0.1 port.
//
// Every public member function is thread-safe. Lifetime: the destructor closes every connection
// (shutdown(2) wakes the blocked threads) and joins every thread; no thread is ever detached.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>  // TCP_NODELAY
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <charconv>  // from_chars
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace spindle::test {

namespace detail {

inline constexpr std::size_t incomplete = static_cast<std::size_t>(-1);

// Length field of a RESP header line; throws std::runtime_error if it is not an integer.
inline long long resp_length(std::string_view line) {
  long long n = 0;
  auto [p, ec] = std::from_chars(line.data(), line.data() + line.size(), n);
  if (ec != std::errc{} || p != line.data() + line.size() || n < -1)
    throw std::runtime_error("fault_proxy: bad RESP length");
  return n;
}

// End offset of the RESP frame that starts at `pos` in `b`, or `incomplete` if more bytes are
// needed. Knows RESP2 and RESP3 (simple lines + - : _ , # ( ; bulk $ = ! incl. -1; aggregates
// * ~ > incl. -1, % | counting pairs, nested up to 64 deep). A line that starts with anything
// else is an inline command (client side) ending at '\n'. Throws std::runtime_error on a
// malformed frame.
inline std::size_t resp_frame_end(std::string_view b, std::size_t pos, int depth = 0) {
  if (depth > 64) throw std::runtime_error("fault_proxy: RESP nesting too deep");
  if (pos >= b.size()) return incomplete;
  char t = b[pos];
  auto nl = b.find('\n', pos);
  if (nl == std::string_view::npos) return incomplete;
  std::size_t next = nl + 1;
  std::string_view line = b.substr(pos + 1, nl - pos - 1);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  switch (t) {
    case '+': case '-': case ':': case '_': case ',': case '#': case '(':
      return next;
    case '$': case '=': case '!': {
      long long n = resp_length(line);
      if (n < 0) return next;
      auto end = next + static_cast<std::size_t>(n) + 2;
      return end <= b.size() ? end : incomplete;
    }
    case '*': case '~': case '>': case '%': case '|': {
      long long n = resp_length(line);
      if (n < 0) return next;
      if (t == '%' || t == '|') n *= 2;
      for (long long i = 0; i < n; ++i) {
        next = resp_frame_end(b, next, depth + 1);
        if (next == incomplete) return incomplete;
      }
      return next;
    }
    default:
      return next;  // inline command
  }
}

// The upper-cased command name of one complete client frame: the first element of a RESP array
// of bulk strings, or the first word of an inline command. "" if there is none.
inline std::string resp_command_name(std::string_view frame) {
  std::string name;
  if (!frame.empty() && frame[0] == '*') {
    auto nl = frame.find('\n');
    if (nl == std::string_view::npos || nl + 1 >= frame.size() || frame[nl + 1] != '$') return "";
    auto nl2 = frame.find('\n', nl + 1);
    if (nl2 == std::string_view::npos) return "";
    std::string_view len = frame.substr(nl + 2, nl2 - nl - 2);
    if (!len.empty() && len.back() == '\r') len.remove_suffix(1);
    long long n = resp_length(len);
    if (n < 0 || nl2 + 1 + static_cast<std::size_t>(n) > frame.size()) return "";
    name = frame.substr(nl2 + 1, static_cast<std::size_t>(n));
  } else {
    auto end = frame.find_first_of(" \t\r\n");
    name = frame.substr(0, end);
  }
  for (char& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return name;
}

inline std::string upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

inline bool send_all(int fd, const char* p, std::size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

}  // namespace detail

/// A fault-injecting TCP proxy in front of a Redis server. See the header comment.
class fault_proxy {
 public:
  /// Listens on a free 127.0.0.1 port and forwards every accepted connection to
  /// target_host:target_port. Throws std::invalid_argument if target_host is not a loopback
  /// IPv4 address or "localhost", std::runtime_error if it cannot listen.
  fault_proxy(std::string target_host, std::uint16_t target_port) {
    if (target_host == "localhost") target_host = "127.0.0.1";
    target_.sin_family = AF_INET;
    target_.sin_port = htons(target_port);
    if (::inet_pton(AF_INET, target_host.c_str(), &target_.sin_addr) != 1 ||
        (ntohl(target_.sin_addr.s_addr) >> 24) != 127)
      throw std::invalid_argument("fault_proxy: target '" + target_host +
                                  "' is not a loopback IPv4 address");
    lfd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (lfd_ < 0 || ::bind(lfd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::listen(lfd_, 64) != 0 ||
        ::getsockname(lfd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      if (lfd_ >= 0) ::close(lfd_);
      throw std::runtime_error("fault_proxy: cannot listen on 127.0.0.1");
    }
    port_ = ntohs(a.sin_port);
    accept_thread_ = std::thread([this] { accept_loop(); });
  }

  fault_proxy(const fault_proxy&) = delete;
  fault_proxy& operator=(const fault_proxy&) = delete;

  /// Closes every connection and joins every thread. Bounded: shutdown(2) wakes each blocked
  /// recv/send/accept and the condition variable wakes each blackhole or delay wait.
  ~fault_proxy() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
      for (auto& l : links_) close_locked(*l);
    }
    cv_.notify_all();
    ::shutdown(lfd_, SHUT_RDWR);  // wakes accept() (Linux: it returns EINVAL)
    accept_thread_.join();
    std::vector<std::unique_ptr<link>> all;
    {
      std::lock_guard lock(mu_);
      all.swap(links_);
    }
    for (auto& l : all) join(*l);
    ::close(lfd_);
  }

  /// The port clients connect to (on 127.0.0.1).
  std::uint16_t port() const noexcept { return port_; }

  /// Arms `times` more losses of the reply of `command_name` (case-insensitive): the next such
  /// commands are forwarded and run, their replies are discarded and the client connection is
  /// closed. Applies to commands forwarded after the call. Throws std::invalid_argument if
  /// times < 1.
  void drop_reply_of(std::string command_name, int times = 1) {
    arm(drop_, "drop_reply_of", std::move(command_name), times);
  }

  /// Arms `times` more cuts of the reply of `command_name` (case-insensitive): the first half of
  /// its bytes is forwarded, then the client connection is closed. Applies to commands forwarded
  /// after the call. Throws std::invalid_argument if times < 1.
  void cut_mid_reply(std::string command_name, int times = 1) {
    arm(cut_, "cut_mid_reply", std::move(command_name), times);
  }

  /// While on, nothing is forwarded either way; connections stay open and new ones are
  /// accepted. Bytes already read are held and forwarded, in order, once it is turned off.
  void blackhole(bool on) {
    {
      std::lock_guard lock(mu_);
      blackhole_ = on;
    }
    cv_.notify_all();
  }

  /// Delays each server->client chunk by `d` (0: no delay). Throws std::invalid_argument if
  /// d < 0.
  void delay(std::chrono::milliseconds d) {
    if (d.count() < 0)
      throw std::invalid_argument("fault_proxy::delay: negative delay " +
                                  std::to_string(d.count()) + " ms");
    std::lock_guard lock(mu_);
    delay_ = d;
  }

  /// Closes every live connection now (clients see the connection close, as on a server
  /// restart). New connections are accepted as before. On return connections() == 0 unless a
  /// client connected again meanwhile.
  void disconnect_all() {
    {
      std::lock_guard lock(mu_);
      for (auto& l : links_) close_locked(*l);
    }
    cv_.notify_all();
    reap();
  }

  /// Removes every fault: armed drops and cuts, blackhole (held bytes move on) and delay.
  void clear() {
    {
      std::lock_guard lock(mu_);
      drop_.clear();
      cut_.clear();
      blackhole_ = false;
      delay_ = std::chrono::milliseconds(0);
    }
    cv_.notify_all();
  }

  /// Live client connections: accepted by the proxy and not yet closed by either side or by it.
  std::size_t connections() const {
    std::lock_guard lock(mu_);
    return live_locked();
  }

  /// Waits until connections() == n, at most `limit`; returns whether it got there. (A client's
  /// connect() returns before the proxy has accepted: use this, or send a command, before
  /// counting on a connection being live here.)
  bool wait_connections(std::size_t n, std::chrono::milliseconds limit) const {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, limit, [&] { return live_locked() == n; });
  }

  /// How many commands named `command_name` (case-insensitive) were forwarded to the server,
  /// over all connections so far.
  std::size_t commands_seen(std::string command_name) const {
    std::lock_guard lock(mu_);
    auto it = seen_.find(detail::upper(std::move(command_name)));
    return it == seen_.end() ? 0 : it->second;
  }

 private:
  enum class fate { forward, drop, cut };

  // One client connection and its connection to the target. The fds are closed only after both
  // threads are joined, so a shutdown(2) never hits a reused descriptor.
  struct link {
    int cfd = -1;
    int sfd = -1;
    bool closed = false;        // guarded by mu_
    bool untracked = false;     // guarded by mu_: replies no longer pair with commands
    std::deque<fate> pending;   // guarded by mu_: fates of forwarded commands awaiting replies
    int running = 2;            // guarded by mu_: its threads not yet finished
    std::thread up, down;
  };

  void arm(std::map<std::string, int>& table, const char* fn, std::string name, int times) {
    if (times < 1)
      throw std::invalid_argument(std::string("fault_proxy::") + fn + ": times " +
                                  std::to_string(times) + " is not >= 1");
    std::lock_guard lock(mu_);
    table[detail::upper(std::move(name))] += times;
  }

  // Requires mu_.
  std::size_t live_locked() const {
    std::size_t n = 0;
    for (auto& l : links_) n += l->closed ? 0 : 1;
    return n;
  }

  // Requires mu_. Shuts both sockets down, which wakes the link's threads.
  void close_locked(link& l) {
    if (l.closed) return;
    l.closed = true;
    ::shutdown(l.cfd, SHUT_RDWR);
    ::shutdown(l.sfd, SHUT_RDWR);
  }

  void close_link(link& l) {
    {
      std::lock_guard lock(mu_);
      close_locked(l);
    }
    cv_.notify_all();
  }

  static void join(link& l) {
    if (l.up.joinable()) l.up.join();
    if (l.down.joinable()) l.down.join();
    ::close(l.cfd);
    ::close(l.sfd);
  }

  // Joins and frees the links whose threads have both finished.
  void reap() {
    std::vector<std::unique_ptr<link>> done;
    {
      std::lock_guard lock(mu_);
      for (auto it = links_.begin(); it != links_.end();) {
        if ((*it)->running == 0) {
          done.push_back(std::move(*it));
          it = links_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (auto& l : done) join(*l);
  }

  // Blocks while the blackhole is on; false once the link is closed.
  bool wait_flowing(link& l) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return !blackhole_ || l.closed; });
    return !l.closed;
  }

  void finished(link& l) {
    close_link(l);
    std::lock_guard lock(mu_);
    --l.running;
  }

  void accept_loop() {
    for (;;) {
      int cfd = ::accept4(lfd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (cfd < 0) {
        std::lock_guard lock(mu_);
        if (stopping_) return;
        if (errno == EINTR || errno == ECONNABORTED) continue;
        return;  // unexpected: stop accepting (clients then fail to connect, tests fail)
      }
      reap();
      int sfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (sfd < 0 ||
          ::connect(sfd, reinterpret_cast<const sockaddr*>(&target_), sizeof target_) != 0) {
        if (sfd >= 0) ::close(sfd);
        ::close(cfd);  // target down: the client sees its connection close
        continue;
      }
      int one = 1;
      ::setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      ::setsockopt(sfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      std::lock_guard lock(mu_);
      if (stopping_) {
        ::close(cfd);
        ::close(sfd);
        return;
      }
      auto l = std::make_unique<link>();
      l->cfd = cfd;
      l->sfd = sfd;
      link& ref = *l;
      links_.push_back(std::move(l));
      // The threads block on mu_ (held here) before touching the link; std::thread's
      // constructor throwing (no resources) would end the test run, which is what we want.
      ref.up = std::thread([this, &ref] { run_up(ref); });
      ref.down = std::thread([this, &ref] { run_down(ref); });
      cv_.notify_all();  // wait_connections()
    }
  }

  // Client -> server: forwards whole command frames, recording each one's fate first (so that
  // its reply, which can only come after the forward, finds it in the FIFO).
  void run_up(link& l) {
    std::string buf;
    char tmp[16 * 1024];
    try {
      while (wait_flowing(l)) {
        ssize_t n = ::recv(l.cfd, tmp, sizeof tmp, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        buf.append(tmp, static_cast<std::size_t>(n));
        if (!wait_flowing(l)) break;  // held while blackholed
        std::size_t pos = 0;
        for (;;) {
          auto end = detail::resp_frame_end(buf, pos);
          if (end == detail::incomplete) break;
          record(l, detail::resp_command_name(std::string_view(buf).substr(pos, end - pos)));
          pos = end;
        }
        if (pos > 0 && !detail::send_all(l.sfd, buf.data(), pos)) break;
        buf.erase(0, pos);
      }
    } catch (const std::exception&) {  // malformed frame: drop the connection
    }
    finished(l);
  }

  // Counts the command and queues its fate (consuming one armed fault, drop before cut).
  void record(link& l, const std::string& name) {
    std::lock_guard lock(mu_);
    ++seen_[name];
    if (name == "SUBSCRIBE" || name == "PSUBSCRIBE" || name == "SSUBSCRIBE" ||
        name == "MONITOR") {
      l.untracked = true;
      l.pending.clear();
    }
    if (l.untracked) return;
    fate f = fate::forward;
    for (auto [table, what] : {std::pair{&drop_, fate::drop}, std::pair{&cut_, fate::cut}}) {
      auto it = table->find(name);
      if (it != table->end()) {
        if (--it->second == 0) table->erase(it);
        f = what;
        break;
      }
    }
    l.pending.push_back(f);
  }

  // Server -> client: forwards whole reply frames, each paired with its command's fate.
  void run_down(link& l) {
    std::string buf, out;
    char tmp[16 * 1024];
    try {
      while (wait_flowing(l)) {
        ssize_t n = ::recv(l.sfd, tmp, sizeof tmp, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        buf.append(tmp, static_cast<std::size_t>(n));
        if (!wait_flowing(l)) break;  // held while blackholed
        {
          std::unique_lock lock(mu_);
          auto d = delay_;
          if (d.count() > 0 && cv_.wait_for(lock, d, [&] { return l.closed; })) break;
        }
        std::size_t pos = 0;
        fate f = fate::forward;
        out.clear();
        for (;;) {
          auto end = detail::resp_frame_end(buf, pos);
          if (end == detail::incomplete) break;
          f = take_fate(l, buf[pos]);
          if (f == fate::cut) out.append(buf, pos, (end - pos) / 2);
          if (f != fate::forward) break;
          out.append(buf, pos, end - pos);
          pos = end;
        }
        if (!out.empty() && !detail::send_all(l.cfd, out.data(), out.size())) break;
        if (f != fate::forward) break;  // the reply was lost or cut: drop the connection
        buf.erase(0, pos);
      }
    } catch (const std::exception&) {  // malformed reply: drop the connection
    }
    finished(l);
  }

  // The fate of the reply frame whose type byte is `type`: pushes and attributes pair with no
  // command; a reply with no pending command (untracked link) is forwarded.
  fate take_fate(link& l, char type) {
    std::lock_guard lock(mu_);
    if (type == '>' || type == '|' || l.untracked || l.pending.empty()) return fate::forward;
    fate f = l.pending.front();
    l.pending.pop_front();
    return f;
  }

  sockaddr_in target_{};
  std::uint16_t port_ = 0;
  int lfd_ = -1;
  std::thread accept_thread_;

  mutable std::mutex mu_;  // one lock for all state below and each link's guarded fields
  // Notified when the blackhole is lifted, a link opens or closes, or on stopping.
  mutable std::condition_variable cv_;
  bool stopping_ = false;                     // guarded by mu_
  bool blackhole_ = false;                    // guarded by mu_
  std::chrono::milliseconds delay_{0};        // guarded by mu_
  std::map<std::string, int> drop_;           // guarded by mu_: name -> armed count
  std::map<std::string, int> cut_;            // guarded by mu_: name -> armed count
  std::map<std::string, std::size_t> seen_;   // guarded by mu_: name -> forwarded count
  std::vector<std::unique_ptr<link>> links_;  // guarded by mu_
};

}  // namespace spindle::test

namespace test_support {
using spindle::test::fault_proxy;  // the house namespace of tests/support
}  // namespace test_support
