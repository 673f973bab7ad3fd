// spindle/redis/error.hpp - the exceptions of the Redis transport.
//
// redis::error        an I/O failure (connect, read, write, timeout) or a protocol violation
//                     (a malformed or oversized reply). After it, the connection that threw is
//                     closed; its next command reconnects.
// redis::server_error an error reply from the server (-ERR, -WRONGTYPE, -NOAUTH, ...). The
//                     connection stays usable. code() is the server's code, also when the error
//                     was met during the connect handshake (AUTH, HELLO, SELECT, CLIENT SETNAME),
//                     so that LOADING or BUSY on a reconnect reads as transient().
//
// No message ever contains a credential: the transport withholds a server text that may echo
// one (see connection.hpp).
#pragma once

#include <string>
#include <cstddef>
#include <string_view>

#include "spindle/errors.hpp"

namespace spindle::redis {

/// An I/O or protocol failure of the Redis transport.
class error : public spindle::error {
 public:
  using spindle::error::error;
};

/// An error reply sent by the server; what() is the server's message ("ERR unknown command ...")
/// or, for a handshake step, "redis: SELECT failed: LOADING ...".
class server_error : public error {
 public:
  /// what() is `message`; code() its first word.
  explicit server_error(const std::string& message) : error(message) {}
  /// what() is `message`; code() is `code` (the server's code when `message` adds context
  /// before it). Allocates.
  server_error(std::string_view code, const std::string& message)
      : error(message), code_(code.substr(0, 23)) {}

  /// The error's code: the server's first word ("ERR", "WRONGTYPE", "NOSCRIPT", "LOADING", ...).
  /// Never allocates.
  std::string_view code() const noexcept {
    if (!code_.empty()) return code_.view();
    std::string_view m(what());
    return m.substr(0, m.find(' '));
  }

  /// True for the codes of a state that passes by itself: LOADING, BUSY, TRYAGAIN, MASTERDOWN,
  /// CLUSTERDOWN. Never allocates.
  bool transient() const noexcept {
    auto c = code();
    return c == "LOADING" || c == "BUSY" || c == "TRYAGAIN" || c == "MASTERDOWN" ||
           c == "CLUSTERDOWN";
  }

 private:
  // A fixed buffer: copying an exception must not throw.
  struct small_code {
    char text[24] = {};
    std::size_t n = 0;
    small_code() = default;
    explicit small_code(std::string_view s) : n(s.size()) { s.copy(text, n); }
    bool empty() const noexcept { return n == 0; }
    std::string_view view() const noexcept { return {text, n}; }
  };
  small_code code_;
};

}  // namespace spindle::redis
