// spindle/redis/options.hpp - how to reach a Redis server, and what a reply may contain.
//
//   auto o = spindle::redis::options::from_url("redis://app:secret@127.0.0.1:6379/2");
//   spindle::redis::options p{.port = 6380, .io_timeout = std::chrono::seconds(1)};
//
// `limits` bounds what the parser accepts from a server: a reply over a limit throws
// redis::error before anything is allocated for it.
#pragma once

#include <charconv>  // from_chars
#include <stdexcept>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "spindle/redis/error.hpp"

namespace spindle::redis {

/// What the RESP parser accepts. Defaults fit every reply Redis sends in ordinary use.
struct limits {
  std::size_t max_bulk_length = 512u * 1024 * 1024;  ///< bytes in one bulk string (Redis' own cap)
  std::size_t max_array_length = 16u * 1024 * 1024;  ///< elements of one array, set, push (map: pairs)
  std::size_t max_depth = 64;                        ///< nesting of aggregates
  std::size_t max_line_length = 64u * 1024;          ///< simple string, error, number lines
};

/// Connection settings. Use with designated initializers; every field has a default.
struct options {
  std::string host = "127.0.0.1";
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

  /// Parses "redis://[[user]:pass@]host[:port][/db]" (host may be "[v6addr]"); fields the URL
  /// does not give keep their defaults. Also accepts "tcp://". Percent-escapes in user and
  /// password are decoded. Throws std::invalid_argument naming the URL with any password
  /// replaced by "***". Allocates.
  static options from_url(std::string_view url);
};

namespace detail {

inline std::string redact_url(std::string_view url) {
  auto scheme = url.find("://");
  auto start = scheme == std::string_view::npos ? 0 : scheme + 3;
  auto at = url.find('@', start);
  if (at == std::string_view::npos) return std::string(url);
  auto colon = url.find(':', start);
  if (colon == std::string_view::npos || colon > at) return std::string(url);
  return std::string(url.substr(0, colon + 1)) + "***" + std::string(url.substr(at));
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

}  // namespace detail

inline options options::from_url(std::string_view url) {
  auto fail = [&](const char* why) {
    return std::invalid_argument(std::string("redis::options::from_url: ") + why + " in '" +
                                 detail::redact_url(url) + "'");
  };
  options o;
  std::string_view rest = url;
  if (rest.starts_with("redis://")) {
    rest.remove_prefix(8);
  } else if (rest.starts_with("tcp://")) {
    rest.remove_prefix(6);
  } else {
    throw fail("scheme is not redis://");
  }
  auto slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? "" : rest.substr(slash + 1);
  auto at = authority.rfind('@');
  if (at != std::string_view::npos) {
    std::string_view userinfo = authority.substr(0, at);
    authority.remove_prefix(at + 1);
    auto colon = userinfo.find(':');
    std::string_view user = userinfo.substr(0, colon);
    std::string_view pass = colon == std::string_view::npos ? "" : userinfo.substr(colon + 1);
    if (colon == std::string_view::npos) {  // "redis://secret@host": a password alone (redis-cli)
      pass = user;
      user = {};
    }
    if (!detail::percent_decode(user, o.username) || !detail::percent_decode(pass, o.password))
      throw fail("bad percent-escape");
  }
  std::string_view host = authority, port;
  if (authority.starts_with('[')) {
    auto close = authority.find(']');
    if (close == std::string_view::npos) throw fail("unterminated [ in host");
    host = authority.substr(1, close - 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') throw fail("junk after ]");
      port = after.substr(1);
    }
  } else if (auto colon = authority.rfind(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
  }
  if (!host.empty()) o.host = std::string(host);
  if (!port.empty()) {
    unsigned v = 0;
    auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), v);
    if (ec != std::errc() || p != port.data() + port.size() || v == 0 || v > 65535)
      throw fail("bad port");
    o.port = static_cast<std::uint16_t>(v);
  }
  if (auto q = path.find('?'); q != std::string_view::npos) path = path.substr(0, q);
  if (!path.empty()) {
    int db = 0;
    auto [p, ec] = std::from_chars(path.data(), path.data() + path.size(), db);
    if (ec != std::errc() || p != path.data() + path.size() || db < 0) throw fail("bad db number");
    o.db = db;
  }
  return o;
}

}  // namespace spindle::redis
