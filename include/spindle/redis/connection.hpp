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
// client sends HELLO 3 [AUTH ..] [SETNAME ..] (protocol 3), or AUTH (password set) and
// CLIENT SETNAME (client_name set), then SELECT (db != 0).
// An I/O or protocol failure throws redis::error and closes the socket; the next command
// reconnects (and re-runs the handshake). A command whose write or read failed may or may not
// have run on the server: the client never retries it by itself. Before a command on a
// connection idle for a while, a peer that has closed the socket (a server restart) is noticed
// and the client reconnects first, so that command does not fail.
//
// RESP3 push frames (client tracking, pub/sub on a command connection) are never taken as the
// reply to a command: one that arrives while a reply is owed goes to options::on_push (or is
// dropped and counted by pushes()) and reading goes on. Exception: the confirmations of the
// SUBSCRIBE family are push frames in RESP3 and are the reply of their command. With nothing
// owed, read() returns whatever arrives, push frames included (a subscriber's loop).
//
// Credentials: no message of this header contains the password or the user name. A handshake
// step fails with redis::server_error whose code() is the server's (LOADING, BUSY, WRONGPASS,
// NOPERM, ...), whose what() names the step, and which carries the server's text only when it
// cannot hold the credential: a text that quotes (Redis' "unknown command 'HELLO', with args
// beginning with: ..." echoes AUTH's arguments) or holds any 4 consecutive bytes of the
// password or the user name is withheld. The error reply of any other command is withheld too
// when it holds such a piece (a command that echoes its arguments, given the password).
//
// Not thread-safe: one connection per thread (or a pool). Lifetime: the destructor closes the
// socket; replies already returned stay valid.
#pragma once

#include <chrono>
#include <cstddef>
#include <algorithm>  // min
#include <stdexcept>  // logic_error, invalid_argument
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "spindle/deadline.hpp"
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
    require_in_step("command");
    prepare_send();
    encode_command(out_, args...);
    pending_ = 1;
    return read();
  }

  /// Sends one command whose replies are read as unsolicited ones, by read() with nothing owed:
  /// SUBSCRIBE and its family, PING in subscribed mode. No reply is owed for it (pending() is
  /// unchanged). Requires pending() == 0, else throws std::logic_error. Reconnects first if the
  /// socket is closed. Throws redis::error on I/O failure. Allocates as the buffer grows.
  template <command_arg... A>
  void send(const A&... args) {
    require_in_step("send");
    prepare_send();
    encode_command(out_, args...);
    flush();
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
    if (r.is_error()) {
      const std::string& text = r.str();
      if (!holds_credential(text)) throw server_error(text);
      std::string_view code = std::string_view(text).substr(0, text.find(' '));
      if (holds_credential(code)) code = "ERR";
      throw server_error(code, std::string(code) + " (the server's text is withheld: it holds "
                                                   "a piece of the credential)");
    }
    return r;
  }

  /// Like read(), but an error reply is returned, not thrown. While a reply is owed, push
  /// frames go to options::on_push (or are dropped) and reading goes on, within the same
  /// io_timeout.
  reply read_reply() {
    flush();
    guard g{*this};
    reply r;
    auto deadline = opts_.io_timeout.count() > 0
                        ? spindle::detail::time_after<detail::socket::clock>(opts_.io_timeout)
                        : detail::socket::clock::time_point::max();
    for (;;) {
      while (!parser_.next(r)) {
        constexpr std::size_t chunk = 16 * 1024;
        char* p = parser_.prepare(chunk);
        parser_.commit(sock_.read_some(p, chunk, deadline));
      }
      // Invariant: a push frame is the reply of nothing unless it confirms a SUBSCRIBE-family
      // command; routing it away keeps every later reply in step. Attacked by "RESP3 push
      // frames never become the reply of a command" in test_connection.cpp.
      if (pending_ == 0 || r.kind() != type::push || is_subscribe_confirmation(r)) break;
      ++pushes_;
      if (opts_.on_push) opts_.on_push(r);
    }
    if (pending_ > 0) --pending_;
    last_io_ = detail::socket::clock::now();
    g.ok = true;
    return r;
  }

  /// Sends every command of `b` in one write and returns their replies in order. Error replies
  /// are returned in the vector, not thrown; I/O failures throw redis::error. Allocates.
  std::vector<reply> pipeline(const batch& b) {
    require_in_step("pipeline");
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
  /// Push frames met while a reply was owed (passed to on_push or dropped). Never throws.
  std::size_t pushes() const noexcept { return pushes_; }

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

  // Throws std::logic_error naming `fn` if pipelined replies are still owed.
  void require_in_step(const char* fn) const {
    if (pending_ != 0)
      throw std::logic_error(std::string("redis::connection::") + fn + ": " +
                             std::to_string(pending_) + " pipelined replies not read yet");
  }

  static bool is_subscribe_confirmation(const reply& r) {
    if (r.size() == 0 || !r[0].is_string()) return false;
    const std::string& k = r[0].str();
    return k == "subscribe" || k == "psubscribe" || k == "ssubscribe" || k == "unsubscribe" ||
           k == "punsubscribe" || k == "sunsubscribe";
  }

  void connect() {
    close();
    if (opts_.protocol != 2 && opts_.protocol != 3)
      throw std::invalid_argument("redis::connection: protocol " +
                                  std::to_string(opts_.protocol) + " is not 2 or 3");
    if (!opts_.unix_path.empty()) {
      sock_.connect_unix(opts_.unix_path, opts_.connect_timeout, opts_.io_timeout);
    } else {
      sock_.connect(opts_.host, opts_.port, opts_.connect_timeout, opts_.io_timeout);
      sock_.set_keepalive(opts_.keepalive);
    }
    ++connects_;
    last_io_ = detail::socket::clock::now();
    try {
      const std::string user = opts_.username.empty() ? std::string("default") : opts_.username;
      if (opts_.protocol == 3) {
        std::vector<std::string_view> hello{"HELLO", "3"};
        if (!opts_.password.empty()) hello.insert(hello.end(), {"AUTH", user, opts_.password});
        if (!opts_.client_name.empty()) hello.insert(hello.end(), {"SETNAME", opts_.client_name});
        handshake("HELLO", "; protocol 3 needs a server that has HELLO (Redis 6 or later)", hello);
      } else {
        if (!opts_.password.empty()) {
          if (opts_.username.empty())
            handshake("AUTH", "", "AUTH", opts_.password);
          else
            handshake("AUTH", "", "AUTH", opts_.username, opts_.password);
        }
        if (!opts_.client_name.empty())
          handshake("CLIENT SETNAME", "", "CLIENT", "SETNAME", opts_.client_name);
      }
      if (opts_.db != 0) handshake("SELECT", "", "SELECT", opts_.db);
    } catch (...) {
      close();
      throw;
    }
  }

  // Whether `text` holds 4 consecutive bytes (or all, if shorter) of the password or, when a
  // password is set, of the user name.
  bool holds_credential(std::string_view text) const {
    if (opts_.password.empty()) return false;
    for (const std::string* secret : {&opts_.password, &opts_.username}) {
      std::string_view s = *secret;
      if (s.empty()) continue;
      std::size_t w = std::min<std::size_t>(4, s.size());
      for (std::size_t i = 0; i + w <= s.size(); ++i)
        if (text.find(s.substr(i, w)) != std::string_view::npos) return true;
    }
    return false;
  }

  // Whether the server's text of a failed handshake step may be shown: not if it quotes
  // arguments or holds a piece of a credential (see the header comment).
  bool safe_to_show(std::string_view text) const {
    return text.find_first_of("'`\"") == std::string_view::npos && !holds_credential(text);
  }

  template <class... A>
  void handshake(const char* step, const char* hint, const A&... args) {
    encode_command(out_, args...);
    pending_ = 1;
    reply r = read_reply();
    if (!r.is_error()) return;
    std::string_view text = r.str();
    std::string_view code = text.substr(0, text.find(' '));
    std::string m = std::string("redis: ") + step + " failed: ";
    if (safe_to_show(text)) {
      m += text;
    } else {
      std::string c(safe_to_show(code) ? code : std::string_view("(code withheld)"));
      code = safe_to_show(code) ? code : std::string_view();
      m += c + " (the server's text is withheld: it may echo the credential)";
    }
    m += hint;
    throw server_error(code, m);
  }

  options opts_;
  detail::socket sock_;
  parser parser_;
  std::string out_;           // encoded commands not yet written
  std::size_t pending_ = 0;   // replies owed
  std::size_t connects_ = 0;
  std::size_t pushes_ = 0;    // push frames routed away from a reply
  detail::socket::clock::time_point last_io_{};
};

}  // namespace spindle::redis
