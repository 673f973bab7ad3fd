// spindle/redis/connection.hpp - one connection to a Redis server: commands and pipelining.
//
//   spindle::redis::connection c({.port = 6379, .password = "secret", .db = 1});
//   c.command("SET", "k", 42);                       // throws server_error on -ERR
//   auto v = c.command("GET", "k").str();            // "42"
//   c.append("INCR", "n"); c.append("INCR", "n");    // pipelining: one write, then
//   c.read(); c.read();                              // one reply per append, in order
//   auto rs = c.pipeline(spindle::redis::batch().add("PING").add("GET", "k"));
//
// Guarantees: replies come back in command order. Arguments are binary-safe. On connect the
// client sends HELLO 3 (protocol 3) or AUTH (password set), then SELECT (db != 0).
// An I/O or protocol failure throws redis::error and closes the socket; the next command
// reconnects (and re-runs AUTH/SELECT). A command whose write or read failed may or may not have
// run on the server: the client never retries it by itself. Before a command on a connection
// idle for a while, a peer that has closed the socket (a server restart) is noticed and the
// client reconnects first, so that command does not fail.
//
// Not thread-safe: one connection per thread (or a pool). Lifetime: the destructor closes the
// socket; replies already returned stay valid.
#pragma once

#include <chrono>
#include <cstddef>
#include <stdexcept>  // logic_error
#include <string>
#include <utility>
#include <vector>

#include "spindle/redis/detail/socket.hpp"
#include "spindle/redis/error.hpp"
#include "spindle/redis/options.hpp"
#include "spindle/redis/resp.hpp"

namespace spindle::redis {

/// A batch of commands, encoded once, for connection::pipeline(). Allocates as it grows.
class batch {
 public:
  /// Adds one command. Returns *this. Allocates.
  template <command_arg... A>
  batch& add(const A&... args) {
    encode_command(bytes_, args...);
    ++count_;
    return *this;
  }
  std::size_t size() const noexcept { return count_; }
  bool empty() const noexcept { return count_ == 0; }
  void clear() noexcept {
    bytes_.clear();
    count_ = 0;
  }
  /// The encoded commands (RESP arrays, back to back).
  const std::string& bytes() const noexcept { return bytes_; }

 private:
  std::string bytes_;
  std::size_t count_ = 0;
};

/// One connection to one server. See the header comment for its guarantees.
class connection {
 public:
  /// Connects at once (and authenticates, selects the db). Throws redis::error if the server
  /// cannot be reached, redis::server_error if AUTH/HELLO/SELECT is refused; the message never
  /// contains the password. Allocates.
  explicit connection(options o = {}) : opts_(std::move(o)), parser_(opts_.limits) { connect(); }

  connection(connection&&) noexcept = default;
  connection& operator=(connection&&) noexcept = default;

  /// Sends one command and returns its reply. Reconnects first if the socket is closed.
  /// Throws redis::server_error for an error reply (the connection stays usable), redis::error
  /// on I/O or protocol failure, std::logic_error if pipelined replies are still unread.
  template <command_arg... A>
  reply command(const A&... args) {
    if (pending_ != 0)
      throw std::logic_error("redis::connection::command: " + std::to_string(pending_) +
                             " pipelined replies not read yet");
    prepare_send();
    encode_command(out_, args...);
    pending_ = 1;
    return read();
  }

  /// Buffers one command; nothing is sent until read(), flush() or pipeline(). Allocates as the
  /// buffer grows. Reconnects first if the socket is closed and nothing is pending.
  template <command_arg... A>
  void append(const A&... args) {
    if (pending_ == 0) prepare_send();
    encode_command(out_, args...);
    ++pending_;
  }

  /// Sends what append() buffered. Throws redis::error on I/O failure.
  void flush() {
    if (out_.empty()) return;
    guard g{*this};
    sock_.write_all(out_.data(), out_.size());
    out_.clear();
    g.ok = true;
  }

  /// Flushes, then returns the next reply. Throws redis::server_error if it is an error reply
  /// (it is consumed: the connection stays in step), redis::error on I/O or protocol failure or
  /// when io_timeout passes. With nothing pending, waits for an unsolicited reply (pub/sub).
  reply read() {
    reply r = read_reply();
    if (r.is_error()) throw server_error(r.str());
    return r;
  }

  /// Like read(), but an error reply is returned, not thrown.
  reply read_reply() {
    flush();
    guard g{*this};
    reply r;
    auto deadline = opts_.io_timeout.count() > 0 ? detail::socket::clock::now() + opts_.io_timeout
                                                 : detail::socket::clock::time_point::max();
    while (!parser_.next(r)) {
      constexpr std::size_t chunk = 16 * 1024;
      char* p = parser_.prepare(chunk);
      parser_.commit(sock_.read_some(p, chunk, deadline));
    }
    if (pending_ > 0) --pending_;
    last_io_ = detail::socket::clock::now();
    g.ok = true;
    return r;
  }

  /// Sends every command of `b` in one write and returns their replies in order. Error replies
  /// are returned in the vector, not thrown; I/O failures throw redis::error. Allocates.
  std::vector<reply> pipeline(const batch& b) {
    if (pending_ != 0)
      throw std::logic_error("redis::connection::pipeline: " + std::to_string(pending_) +
                             " pipelined replies not read yet");
    std::vector<reply> out;
    if (b.empty()) return out;
    prepare_send();
    out_.append(b.bytes());
    pending_ = b.size();
    out.reserve(b.size());
    for (std::size_t i = 0; i < b.size(); ++i) out.push_back(read_reply());
    return out;
  }

  /// Replies owed to append()ed commands and not read yet.
  std::size_t pending() const noexcept { return pending_; }
  /// True if the socket is open (the server may still have gone away unnoticed).
  bool is_connected() const noexcept { return sock_.is_open(); }
  /// Closes the socket, forgetting pending replies; the next command reconnects. Never throws.
  void close() noexcept {
    sock_.close();
    parser_.reset();
    out_.clear();
    pending_ = 0;
  }
  /// Closes and connects again now. Throws like the constructor.
  void reconnect() {
    close();
    connect();
  }
  /// The options it was made with.
  const options& get_options() const noexcept { return opts_; }
  /// The socket's file descriptor, or -1 (for poll()-based waiting by the caller).
  int native_handle() const noexcept { return sock_.fd(); }
  /// Bytes received but not yet returned as replies: when not 0, read() may return without
  /// touching the socket (so poll() on native_handle() is not enough to know a reply waits).
  std::size_t buffered() const noexcept { return parser_.buffered(); }
  /// How many times it has connected (1 after construction; more after reconnects).
  std::size_t connects() const noexcept { return connects_; }

 private:
  // Closes the connection unless the operation it guards completed.
  struct guard {
    connection& c;
    bool ok = false;
    ~guard() {
      if (!ok) c.close();
    }
  };

  void prepare_send() {
    using namespace std::chrono_literals;
    if (!sock_.is_open()) {
      connect();
    } else if (detail::socket::clock::now() - last_io_ > 200us && sock_.peer_closed()) {
      reconnect();  // the server closed an idle connection (restart, timeout): nothing is lost
    }
  }

  void connect() {
    close();
    sock_.connect(opts_.host, opts_.port, opts_.connect_timeout, opts_.io_timeout);
    ++connects_;
    last_io_ = detail::socket::clock::now();
    try {
      if (opts_.protocol == 3) {
        if (opts_.password.empty())
          handshake("HELLO", "HELLO", "3");
        else
          handshake("HELLO", "HELLO", "3", "AUTH",
                    opts_.username.empty() ? std::string("default") : opts_.username,
                    opts_.password);
      } else if (opts_.protocol != 2) {
        throw std::invalid_argument("redis::connection: protocol " +
                                    std::to_string(opts_.protocol) + " is not 2 or 3");
      } else if (!opts_.password.empty()) {
        if (opts_.username.empty())
          handshake("AUTH", "AUTH", opts_.password);
        else
          handshake("AUTH", "AUTH", opts_.username, opts_.password);
      }
      if (opts_.db != 0) handshake("SELECT", "SELECT", opts_.db);
    } catch (...) {
      close();
      throw;
    }
  }

  template <class... A>
  void handshake(const char* what, const A&... args) {
    encode_command(out_, args...);
    pending_ = 1;
    reply r = read_reply();
    if (r.is_error())  // the server's message names no password
      throw server_error(std::string("redis: ") + what + " failed: " + r.str());
  }

  options opts_;
  detail::socket sock_;
  parser parser_;
  std::string out_;           // encoded commands not yet written
  std::size_t pending_ = 0;   // replies owed
  std::size_t connects_ = 0;
  detail::socket::clock::time_point last_io_{};
};

}  // namespace spindle::redis
