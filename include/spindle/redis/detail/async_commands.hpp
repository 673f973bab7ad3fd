// spindle/redis/detail/async_commands.hpp - which commands a shared, pipelined connection refuses.
//
// Used by redis::async_client only. It looks at a command as encode_command() wrote it (a RESP
// array of bulk strings), so it sees exactly what would be sent.
#pragma once

#include <array>
#include <cstddef>
#include <string_view>

#include "ascii.hpp"  // iequals

namespace spindle::redis::detail {

/// Calls f(arg) for each argument of one encoded command, in order, until f returns false.
/// Requires `enc` to be one command written by encode_command().
template <class F>
void for_each_encoded_arg(std::string_view enc, F f) {
  auto line_end = enc.find("\r\n");
  if (enc.empty() || enc[0] != '*' || line_end == std::string_view::npos) return;
  std::size_t pos = line_end + 2;
  while (pos < enc.size() && enc[pos] == '$') {
    auto eol = enc.find("\r\n", pos);
    if (eol == std::string_view::npos) return;
    std::size_t len = 0;
    for (std::size_t i = pos + 1; i < eol; ++i)
      len = len * 10 + static_cast<std::size_t>(enc[i] - '0');
    std::string_view arg = enc.substr(eol + 2, len);
    if (!f(arg)) return;
    pos = eol + 2 + len + 2;
  }
}

/// Why a shared connection must not carry the encoded command `enc`, or nullptr if it may.
/// Blocking commands would stall every caller queued behind them; subscriptions, MONITOR and
/// CLIENT REPLY change what the server sends back, so replies would no longer match commands
/// in order; MULTI/WATCH/SELECT/AUTH/HELLO/RESET/QUIT change the state every caller shares.
inline const char* async_refusal(std::string_view enc, std::string_view& name) {
  name = {};
  bool block_arg = false, reply_arg = false;
  std::size_t index = 0;
  for_each_encoded_arg(enc, [&](std::string_view a) {
    if (index++ == 0) {
      name = a;
      return true;
    }
    if (iequals(a, "BLOCK")) block_arg = true;
    if (index == 2 && iequals(a, "REPLY")) reply_arg = true;
    return true;
  });
  if (name.empty()) return "an empty command";
  static constexpr std::array<std::string_view, 10> blocking = {
      "BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP",
      "BZPOPMIN", "BZPOPMAX", "BZMPOP", "WAIT", "WAITAOF"};
  for (auto b : blocking)
    if (iequals(name, b))
      return "blocks the shared connection for every caller behind it (use redis::connection "
             "or redis::pool for blocking commands)";
  if ((iequals(name, "XREAD") || iequals(name, "XREADGROUP")) && block_arg)
    return "with BLOCK blocks the shared connection for every caller behind it (use "
           "redis::connection or redis::pool, or drop BLOCK)";
  static constexpr std::array<std::string_view, 9> pushing = {
      "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE",
      "SUNSUBSCRIBE", "MONITOR", "SYNC", "PSYNC"};
  for (auto p : pushing)
    if (iequals(name, p))
      return "turns the connection into a message stream (use redis::topic, which subscribes on "
             "a dedicated connection)";
  if (iequals(name, "CLIENT") && reply_arg)
    return "REPLY would break the matching of replies to commands";
  static constexpr std::array<std::string_view, 10> stateful = {
      "MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH", "SELECT", "AUTH", "HELLO", "RESET", "QUIT"};
  for (auto s : stateful)
    if (iequals(name, s))
      return "changes the state that every caller of the shared connection sees (use "
             "redis::connection; set db and credentials in redis::options)";
  return nullptr;
}

}  // namespace spindle::redis::detail
