// spindle/status.hpp - the outcome of a channel operation.
//
// Expected outcomes (a full queue, a closed channel, a timed-out wait) are values of `status`,
// never exceptions. Exceptions are kept for bad input and misuse (see errors.hpp).
#pragma once

namespace spindle {

/// The outcome of a push, pop or wait.
enum class status {
  ok,         ///< the operation happened
  empty,      ///< try_pop found nothing to take
  full,       ///< try_push found no room
  closed,     ///< the channel is closed (for pops: closed and drained)
  timeout,    ///< a _for wait ran out of time
  cancelled,  ///< a stop_token asked the wait to stop
};

/// The name of `s` ("ok", "empty", ...). Never allocates. Thread-safe.
constexpr const char* to_string(status s) noexcept {
  switch (s) {
    case status::ok:
      return "ok";
    case status::empty:
      return "empty";
    case status::full:
      return "full";
    case status::closed:
      return "closed";
    case status::timeout:
      return "timeout";
    case status::cancelled:
      return "cancelled";
  }
  return "unknown";
}

}  // namespace spindle
