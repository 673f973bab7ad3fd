// spindle/redis/options.hpp - how to reach a Redis server, and what a reply may contain.
//
//   auto o = spindle::redis::options::from_url("redis://app:secret@127.0.0.1:6379/2?protocol=3");
//   auto u = spindle::redis::options::from_url("unix://:secret@/run/redis.sock?db=1");
//   spindle::redis::options p{.port = 6380, .io_timeout = std::chrono::seconds(1)};
//
// Defines limits, options, options::from_url.
//
// `limits` bounds what the parser accepts from a server: a reply over a limit throws
// redis::error, naming the limit, before anything is allocated for the part over it.
//
// Guarantees: no exception message of from_url (or of anything else in the Redis transport)
// contains a credential: the user info of a URL is shown as "***", query values are not shown.
// Numbers are parsed with std::from_chars, so the C locale in force changes nothing.
#pragma once

#include <charconv>  // from_chars
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>  // std::function: on_push, called once per push frame
#include <stdexcept>
#include <string>
#include <string_view>

#include "spindle/redis/error.hpp"

namespace spindle::redis {

class reply;

/// What the RESP parser accepts. Defaults fit every reply Redis sends in ordinary use.
struct limits {
  std::size_t max_bulk_length = 512u * 1024 * 1024;  ///< bytes in one bulk string (Redis' own cap)
  std::size_t max_array_length = 16u * 1024 * 1024;  ///< elements of one array, set, push (map: pairs)
  std::size_t max_depth = 64;                        ///< nesting of aggregates
  /// Bytes of one simple string, error, number or length line. Redis writes its own status and
  /// error lines short, but a Lua script may return a status reply of any size
  /// (`return {ok = big}`): 16 MiB lets those through. Scanning for the line end is linear in
  /// the line's size, however it arrives.
  std::size_t max_line_length = 16u * 1024 * 1024;
  /// Values (scalars and aggregates, at every depth) in one reply. A reply of n small elements
  /// costs about n * sizeof(reply) (~80 bytes) in the client however few bytes it took on the
  /// wire: this bounds that, and `max_reply_memory` bounds the total.
  std::size_t max_reply_elements = 64u * 1024 * 1024;
  /// Approximate client memory of one reply under construction: sizeof(reply) per value plus
  /// the bytes of its strings. 0: no limit.
  std::size_t max_reply_memory = std::size_t{1} << 31;
};

/// Connection settings. Use with designated initializers; every field has a default.
struct options {
  std::string host = "127.0.0.1";  ///< a name, an IPv4 address or an IPv6 address (no brackets)
  std::uint16_t port = 6379;
  std::string username{};  ///< ACL user; empty: the default user (AUTH with the password only)
  std::string password{};  ///< empty: no AUTH. Never appears in an exception message.
  int db = 0;            ///< SELECT on connect when not 0
  std::chrono::milliseconds connect_timeout{2000};  ///< 0: no limit
  /// Longest wait for the socket; 0: no limit. One reply must also arrive within it, checked
  /// after each read, so a reply trickling in byte by byte fails within twice this time.
  /// Blocking commands (BLPOP, XREAD BLOCK) need a block time shorter than this.
  std::chrono::milliseconds io_timeout{5000};
  int protocol = 2;                            ///< 2: RESP2; 3: HELLO 3 on connect (RESP3 replies)
  struct limits limits {};
  /// CLIENT SETNAME on connect (HELLO ... SETNAME with protocol 3), so that CLIENT LIST shows
  /// who holds the connection; empty: none. Redis refuses spaces and newlines in it.
  std::string client_name{};
  /// A Unix-domain socket path; when not empty, host and port are not used.
  std::string unix_path{};
  /// TCP keepalive: probes start after this much idle time, every third of it after that, and
  /// the kernel drops the connection after 3 unanswered probes; TCP_USER_TIMEOUT drops it once
  /// written data stays unacknowledged for idle + 3 intervals. 0: neither is set.
  std::chrono::seconds keepalive{15};
  /// RESP3 push frames (client-tracking invalidations, pub/sub messages on a command connection)
  /// that arrive while a command waits for its reply: passed here, on the thread running the
  /// command, outside any lock of the library; empty: dropped (connection::pushes() counts
  /// them). Never taken as the reply to a command. An exception it throws propagates from the
  /// command, after the connection was closed (the reply in flight is lost with it).
  std::function<void(const reply&)> on_push = {};

  /// Parses a URL; fields it does not give keep their defaults.
  ///   redis://[[user]:pass@]host[:port][/db][?params]   ("tcp://" too; host may be "[v6addr]";
  ///                                                     a bare IPv6 address is refused)
  ///   redis://secret@host                                 (a password alone, as redis-cli takes)
  ///   unix://[[user]:pass@]/path/to/socket[?params]
  /// params, separated by '&': db=N, protocol=2|3, connect_timeout=N, io_timeout=N (N in
  /// milliseconds, or with a unit: 500ms, 2s), client_name=name. An unknown or repeated
  /// parameter, or a bad value, is refused. User, password and parameter values are
  /// percent-decoded; the last '@' ends the user info, so a password may hold a raw '@' or '/',
  /// while a parameter value must escape its '@' as %40. rediss:// (TLS) is refused.
  /// Throws std::invalid_argument naming from_url, what is wrong and the URL with its user info
  /// replaced by "***" and its parameter values left out. Allocates.
  static options from_url(std::string_view url);
};

namespace detail {

// The URL for an error message: everything between the scheme and the last '@' (the user info,
// which may itself hold '@', '/', '?') becomes "***", and parameter values are left out.
inline std::string redact_url(std::string_view url) {
  auto scheme = url.find("://");
  std::size_t start = scheme == std::string_view::npos ? 0 : scheme + 3;
  std::string out(url.substr(0, start));
  std::string_view rest = url.substr(start);
  if (auto at = rest.rfind('@'); at != std::string_view::npos) {
    out += "***@";
    rest.remove_prefix(at + 1);
  }
  auto q = rest.find('?');
  out += rest.substr(0, q);
  if (q == std::string_view::npos) return out;
  std::string_view query = rest.substr(q + 1);
  out += '?';
  while (!query.empty()) {  // keys only
    auto amp = query.find('&');
    std::string_view kv = query.substr(0, amp);
    if (auto eq = kv.find('='); eq != std::string_view::npos)
      out.append(kv.substr(0, eq)).append("=...");
    else
      out += "...";  // not key=value: possibly anything
    if (amp == std::string_view::npos) break;
    out += '&';
    query.remove_prefix(amp + 1);
  }
  return out;
}

inline int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Decodes %XX escapes; false on a malformed escape.
inline bool percent_decode(std::string_view in, std::string& out) {
  out.clear();
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out += in[i];
      continue;
    }
    if (i + 2 >= in.size()) return false;
    int hi = hex_value(in[i + 1]), lo = hex_value(in[i + 2]);
    if (hi < 0 || lo < 0) return false;
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return true;
}

// The whole of `s` as a decimal number of type T; false otherwise. Locale-independent.
template <class T>
bool parse_decimal(std::string_view s, T& v) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return !s.empty() && ec == std::errc() && p == s.data() + s.size();
}

// "250", "250ms" or "2s" as milliseconds (>= 0); false otherwise.
inline bool parse_millis(std::string_view s, std::chrono::milliseconds& out) {
  std::int64_t scale = 1;
  if (s.ends_with("ms")) {
    s.remove_suffix(2);
  } else if (s.ends_with('s')) {
    s.remove_suffix(1);
    scale = 1000;
  }
  std::int64_t v = 0;
  if (!parse_decimal(s, v) || v < 0 || v > INT64_MAX / 1000) return false;
  out = std::chrono::milliseconds(v * scale);
  return true;
}

inline bool valid_host_name(std::string_view h) {
  if (h.empty() || h.size() > 253) return false;
  for (char c : h)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '.' || c == '-' || c == '_'))
      return false;
  return true;
}

inline bool valid_v6(std::string_view h) {
  if (h.empty() || h.find(':') == std::string_view::npos) return false;
  for (char c : h)
    if (!(hex_value(c) >= 0 || c == ':' || c == '.' || c == '%')) return false;
  return true;
}

}  // namespace detail

inline options options::from_url(std::string_view url) {
  auto fail = [&](const std::string& why) {
    return std::invalid_argument("redis::options::from_url: " + why + " in '" +
                                 detail::redact_url(url) + "'");
  };
  options o;
  std::string_view rest = url;
  bool unix_socket = false;
  if (rest.starts_with("redis://")) {
    rest.remove_prefix(8);
  } else if (rest.starts_with("tcp://")) {
    rest.remove_prefix(6);
  } else if (rest.starts_with("unix://")) {
    rest.remove_prefix(7);
    unix_socket = true;
  } else if (rest.starts_with("rediss://")) {
    throw fail("TLS (rediss://) is not supported");
  } else {
    throw fail("scheme is not redis://, tcp:// or unix://");
  }
  // User info: up to the last '@' (a password may hold '@', '/', ':' or '?').
  if (auto at = rest.rfind('@'); at != std::string_view::npos) {
    std::string_view userinfo = rest.substr(0, at);
    rest.remove_prefix(at + 1);
    auto colon = userinfo.find(':');
    std::string_view user = userinfo.substr(0, colon);
    std::string_view pass = colon == std::string_view::npos ? "" : userinfo.substr(colon + 1);
    if (colon == std::string_view::npos) {  // "redis://secret@host": a password alone (redis-cli)
      pass = user;
      user = {};
    }
    if (!detail::percent_decode(user, o.username) || !detail::percent_decode(pass, o.password))
      throw fail("bad percent-escape in the user info");
  }
  std::string_view query;
  bool has_query = false;
  if (auto q = rest.find('?'); q != std::string_view::npos) {
    query = rest.substr(q + 1);
    rest = rest.substr(0, q);
    has_query = true;
  }
  bool db_in_path = false;
  if (unix_socket) {
    if (!rest.starts_with('/')) throw fail("unix:// needs an absolute socket path");
    if (!detail::percent_decode(rest, o.unix_path)) throw fail("bad percent-escape in the path");
  } else {
    auto slash = rest.find('/');
    std::string_view authority = rest.substr(0, slash);
    std::string_view path = slash == std::string_view::npos ? "" : rest.substr(slash + 1);
    std::string_view host = authority, port;
    bool port_given = false;
    if (authority.starts_with('[')) {
      auto close = authority.find(']');
      if (close == std::string_view::npos) throw fail("unterminated [ in the host");
      host = authority.substr(1, close - 1);
      if (!detail::valid_v6(host)) throw fail("bad IPv6 address between [ ]");
      std::string_view after = authority.substr(close + 1);
      if (!after.empty()) {
        if (after[0] != ':') throw fail("junk after ]");
        port = after.substr(1);
        port_given = true;
      }
    } else {
      if (auto colon = authority.find(':'); colon != std::string_view::npos) {
        if (authority.find(':', colon + 1) != std::string_view::npos)
          throw fail("an IPv6 address needs brackets (redis://[::1]:6379)");
        host = authority.substr(0, colon);
        port = authority.substr(colon + 1);
        port_given = true;
      }
      if (!host.empty() && !detail::valid_host_name(host)) throw fail("bad host name");
    }
    if (!host.empty()) o.host = std::string(host);
    if (port_given) {
      unsigned v = 0;
      if (!detail::parse_decimal(port, v) || v == 0 || v > 65535) throw fail("bad port");
      o.port = static_cast<std::uint16_t>(v);
    }
    if (!path.empty()) {
      int db = 0;
      if (!detail::parse_decimal(path, db) || db < 0) throw fail("bad db number in the path");
      o.db = db;
      db_in_path = true;
    }
  }
  if (has_query && query.empty()) throw fail("empty query after '?'");
  unsigned seen = 0;  // one bit per known parameter: a repeated one is refused
  while (has_query) {
    auto amp = query.find('&');
    std::string_view kv = query.substr(0, amp);
    auto eq = kv.find('=');
    std::string_view key = kv.substr(0, eq);
    std::string value;
    if (eq == std::string_view::npos || !detail::percent_decode(kv.substr(eq + 1), value))
      throw fail("a query parameter is not key=value (values %-escaped)");  // key not shown
    static constexpr std::string_view known[] = {"db", "protocol", "connect_timeout",
                                                 "io_timeout", "client_name"};
    unsigned bit = 0;
    while (bit < std::size(known) && known[bit] != key) ++bit;
    if (bit == std::size(known))
      throw fail("unknown query parameter '" + std::string(key.substr(0, 32)) +
                 "' (known: db, protocol, connect_timeout, io_timeout, client_name)");
    if ((seen & (1u << bit)) != 0 || (bit == 0 && db_in_path))
      throw fail("query parameter '" + std::string(key) + "' given twice");
    seen |= 1u << bit;
    bool ok = true;
    switch (bit) {
      case 0:
        ok = detail::parse_decimal(std::string_view(value), o.db) && o.db >= 0;
        break;
      case 1:
        ok = detail::parse_decimal(std::string_view(value), o.protocol) &&
             (o.protocol == 2 || o.protocol == 3);
        break;
      case 2:
        ok = detail::parse_millis(value, o.connect_timeout);
        break;
      case 3:
        ok = detail::parse_millis(value, o.io_timeout);
        break;
      default:
        ok = !value.empty() && value.find_first_of(" \r\n") == std::string::npos;
        o.client_name = std::move(value);
        break;
    }
    if (!ok) throw fail("bad value of query parameter '" + std::string(key) + "'");
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return o;
}

}  // namespace spindle::redis
