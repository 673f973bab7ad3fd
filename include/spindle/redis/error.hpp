// spindle/redis/error.hpp - the exceptions of the Redis transport.
//
// redis::error        an I/O failure (connect, read, write, timeout) or a protocol violation
//                     (a malformed or oversized reply). After it, the connection that threw is
//                     closed; its next command reconnects.
// redis::server_error an error reply from the server (-ERR, -WRONGTYPE, -NOAUTH, ...). The
//                     connection stays usable.
//
// No message ever contains a password.
#pragma once

#include <string>
#include <string_view>

#include "spindle/errors.hpp"

namespace spindle::redis {

/// An I/O or protocol failure of the Redis transport.
class error : public spindle::error {
 public:
  using spindle::error::error;
};

/// An error reply sent by the server; what() is the server's message ("ERR unknown command ...").
class server_error : public error {
 public:
  explicit server_error(const std::string& message) : error(message) {}

  /// The error's code: its first word ("ERR", "WRONGTYPE", "NOSCRIPT", ...). Never allocates.
  std::string_view code() const noexcept {
    std::string_view m(what());
    return m.substr(0, m.find(' '));
  }
};

}  // namespace spindle::redis
