// spindle/redis/detail/command_keys.hpp - where the keys of a Redis command are, for routing a
// command to the cluster node that owns its slot without asking the server.
//
// A table of the commands spindle and most applications use (the key positions of Redis' own
// command table: first/last/step, or a numkeys argument as in EVAL, or the STREAMS keyword of
// XREAD), each with whether it only reads (safe to send again after an I/O failure) and whether
// it changes the state of the connection itself (MULTI, SUBSCRIBE, ...: meaningless when each
// command may go to another connection). A command missing from the table is asked about with
// COMMAND GETKEYS by the caller. No I/O, no allocation except find_keys' output.
#pragma once

#include <algorithm>  // is_sorted, lower_bound
#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "ascii.hpp"  // iequals

namespace spindle::redis::detail {

struct command_keys {
  enum class how : std::uint8_t {
    none,     ///< no key (PING, TIME, WAIT, ...)
    range,    ///< keys at first, first+step, ... up to last (< 0: counted from the end, -1 last)
    numkeys,  ///< argument `last` is the number of keys that follow it; `first` a fixed key or 0
    streams,  ///< XREAD/XREADGROUP: after STREAMS (searched from `first`), half of the rest
  };
  enum class scope : std::uint8_t {
    any,          ///< a plain command
    transaction,  ///< MULTI/EXEC/DISCARD/WATCH/UNWATCH: only inside one pipeline
    session,      ///< changes or takes over the connection (SUBSCRIBE, SELECT, ...): refused
  };
  std::string_view name;  ///< upper case
  how kind = how::none;
  std::int8_t first = 0, last = 0, step = 1;
  bool readonly = false;
  scope where = scope::any;
};

namespace keys_table {
using k = command_keys;
constexpr k r(std::string_view n, std::int8_t f, std::int8_t l, std::int8_t s = 1) {
  return {n, k::how::range, f, l, s, false};
}
constexpr k ro(std::string_view n, std::int8_t f, std::int8_t l, std::int8_t s = 1) {
  return {n, k::how::range, f, l, s, true};
}
constexpr k nk(std::string_view n, std::int8_t fixed, std::int8_t at, bool rd = false) {
  return {n, k::how::numkeys, fixed, at, 1, rd};
}
constexpr k none(std::string_view n, bool rd = false, k::scope sc = k::scope::any) {
  return {n, k::how::none, 0, 0, 1, rd, sc};
}
constexpr auto tx = k::scope::transaction;
constexpr auto ss = k::scope::session;

// Sorted by name (checked below), looked up by binary search.
inline constexpr std::array table = {
    r("APPEND", 1, 1),         none("ASKING", false, ss),  ro("BITCOUNT", 1, 1),
    r("BITOP", 2, -1),         r("BLMOVE", 1, 2),          nk("BLMPOP", 0, 2),
    r("BLPOP", 1, -2),         r("BRPOP", 1, -2),          r("BRPOPLPUSH", 1, 2),
    nk("BZMPOP", 0, 2),        r("BZPOPMAX", 1, -2),       r("BZPOPMIN", 1, -2),
    none("CLIENT"),            none("CLUSTER"),            none("COMMAND", true),
    none("CONFIG"),            r("COPY", 1, 2),            none("DBSIZE", true),
    r("DECR", 1, 1),           r("DECRBY", 1, 1),          r("DEL", 1, -1),
    none("DISCARD", false, tx), ro("DUMP", 1, 1),          none("ECHO", true),
    nk("EVAL", 0, 2),          nk("EVALSHA", 0, 2),        nk("EVALSHA_RO", 0, 2, true),
    nk("EVAL_RO", 0, 2, true), none("EXEC", false, tx),    ro("EXISTS", 1, -1),
    r("EXPIRE", 1, 1),         r("EXPIREAT", 1, 1),        nk("FCALL", 0, 2),
    nk("FCALL_RO", 0, 2, true), none("FLUSHALL"),          none("FLUSHDB"),
    ro("GET", 1, 1),           ro("GETBIT", 1, 1),         r("GETDEL", 1, 1),
    r("GETEX", 1, 1),          ro("GETRANGE", 1, 1),       r("GETSET", 1, 1),
    r("HDEL", 1, 1),           none("HELLO", false, ss),   ro("HEXISTS", 1, 1),
    ro("HGET", 1, 1),          ro("HGETALL", 1, 1),        r("HINCRBY", 1, 1),
    r("HINCRBYFLOAT", 1, 1),   ro("HKEYS", 1, 1),          ro("HLEN", 1, 1),
    ro("HMGET", 1, 1),         r("HMSET", 1, 1),           ro("HRANDFIELD", 1, 1),
    ro("HSCAN", 1, 1),         r("HSET", 1, 1),            r("HSETNX", 1, 1),
    ro("HSTRLEN", 1, 1),       ro("HVALS", 1, 1),          r("INCR", 1, 1),
    r("INCRBY", 1, 1),         r("INCRBYFLOAT", 1, 1),     none("INFO", true),
    ro("LINDEX", 1, 1),        r("LINSERT", 1, 1),         ro("LLEN", 1, 1),
    r("LMOVE", 1, 2),          nk("LMPOP", 0, 1),          r("LPOP", 1, 1),
    ro("LPOS", 1, 1),          r("LPUSH", 1, 1),           r("LPUSHX", 1, 1),
    ro("LRANGE", 1, 1),        r("LREM", 1, 1),            r("LSET", 1, 1),
    r("LTRIM", 1, 1),          ro("MEMORY", 2, 2),         ro("MGET", 1, -1),
    none("MONITOR", false, ss), r("MSET", 1, -1, 2),       r("MSETNX", 1, -1, 2),
    none("MULTI", false, tx),  ro("OBJECT", 2, 2),         r("PERSIST", 1, 1),
    r("PEXPIRE", 1, 1),        r("PEXPIREAT", 1, 1),       r("PFADD", 1, 1),
    ro("PFCOUNT", 1, -1),      r("PFMERGE", 1, -1),        none("PING", true),
    r("PSETEX", 1, 1),         none("PSUBSCRIBE", false, ss), ro("PTTL", 1, 1),
    none("PUBLISH"),           none("PUNSUBSCRIBE", false, ss), none("QUIT", false, ss),
    none("READONLY", false, ss), none("READWRITE", false, ss), r("RENAME", 1, 2),
    r("RENAMENX", 1, 2),       none("RESET", false, ss),   r("RESTORE", 1, 1),
    r("RPOP", 1, 1),           r("RPOPLPUSH", 1, 2),       r("RPUSH", 1, 1),
    r("RPUSHX", 1, 1),         r("SADD", 1, 1),            ro("SCARD", 1, 1),
    none("SCRIPT"),            ro("SDIFF", 1, -1),         r("SDIFFSTORE", 1, -1),
    none("SELECT", false, ss), r("SET", 1, 1),             r("SETBIT", 1, 1),
    r("SETEX", 1, 1),          r("SETNX", 1, 1),           r("SETRANGE", 1, 1),
    ro("SINTER", 1, -1),       nk("SINTERCARD", 0, 1, true), r("SINTERSTORE", 1, -1),
    ro("SISMEMBER", 1, 1),     ro("SMEMBERS", 1, 1),       ro("SMISMEMBER", 1, 1),
    r("SMOVE", 1, 2),          r("SORT", 1, 1),            ro("SORT_RO", 1, 1),
    r("SPOP", 1, 1),           r("SPUBLISH", 1, 1),        ro("SRANDMEMBER", 1, 1),
    r("SREM", 1, 1),           ro("SSCAN", 1, 1),          none("SSUBSCRIBE", false, ss),
    ro("STRLEN", 1, 1),        none("SUBSCRIBE", false, ss), ro("SUNION", 1, -1),
    r("SUNIONSTORE", 1, -1),   none("SUNSUBSCRIBE", false, ss), none("TIME", true),
    r("TOUCH", 1, -1),         ro("TTL", 1, 1),            ro("TYPE", 1, 1),
    r("UNLINK", 1, -1),        none("UNSUBSCRIBE", false, ss), none("UNWATCH", false, tx),
    none("WAIT", false),       k{"WATCH", k::how::range, 1, -1, 1, false, tx},
    r("XACK", 1, 1),           r("XADD", 1, 1),            r("XAUTOCLAIM", 1, 1),
    r("XCLAIM", 1, 1),         r("XDEL", 1, 1),            r("XGROUP", 2, 2),
    ro("XINFO", 2, 2),         ro("XLEN", 1, 1),           ro("XPENDING", 1, 1),
    ro("XRANGE", 1, 1),        k{"XREAD", k::how::streams, 1, 0, 1, true},
    k{"XREADGROUP", k::how::streams, 4, 0, 1, false},       ro("XREVRANGE", 1, 1),
    r("XSETID", 1, 1),         r("XTRIM", 1, 1),           r("ZADD", 1, 1),
    ro("ZCARD", 1, 1),         ro("ZCOUNT", 1, 1),         nk("ZDIFF", 0, 1, true),
    nk("ZDIFFSTORE", 1, 2),    r("ZINCRBY", 1, 1),         nk("ZINTER", 0, 1, true),
    nk("ZINTERCARD", 0, 1, true), nk("ZINTERSTORE", 1, 2), ro("ZLEXCOUNT", 1, 1),
    nk("ZMPOP", 0, 1),         ro("ZMSCORE", 1, 1),        r("ZPOPMAX", 1, 1),
    r("ZPOPMIN", 1, 1),        ro("ZRANDMEMBER", 1, 1),    ro("ZRANGE", 1, 1),
    ro("ZRANGEBYLEX", 1, 1),   ro("ZRANGEBYSCORE", 1, 1),  r("ZRANGESTORE", 1, 2),
    ro("ZRANK", 1, 1),         r("ZREM", 1, 1),            r("ZREMRANGEBYLEX", 1, 1),
    r("ZREMRANGEBYRANK", 1, 1), r("ZREMRANGEBYSCORE", 1, 1), ro("ZREVRANGE", 1, 1),
    ro("ZREVRANGEBYLEX", 1, 1), ro("ZREVRANGEBYSCORE", 1, 1), ro("ZREVRANK", 1, 1),
    ro("ZSCAN", 1, 1),         ro("ZSCORE", 1, 1),         nk("ZUNION", 0, 1, true),
    nk("ZUNIONSTORE", 1, 2),
};
static_assert(std::is_sorted(table.begin(), table.end(),
                             [](const k& a, const k& b) { return a.name < b.name; }),
              "keys_table::table must stay sorted by name (binary search)");
}  // namespace keys_table

/// The table entry of command `name` (any case), or nullptr if the table does not know it.
/// Never allocates.
inline const command_keys* find_command(std::string_view name) noexcept {
  char up[24];
  if (name.empty() || name.size() > sizeof up) return nullptr;
  for (std::size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    up[i] = (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c;
  }
  std::string_view u(up, name.size());
  const auto& t = keys_table::table;
  auto it = std::lower_bound(t.begin(), t.end(), u,
                             [](const command_keys& e, std::string_view v) { return e.name < v; });
  return it != t.end() && it->name == u ? &*it : nullptr;
}


/// Appends to `out` the argument positions of the keys of `args` (args[0] is the command) as
/// `spec` places them. Positions past the end are ignored, and a numkeys that is not a number
/// or exceeds the arguments yields no keys from it (the server refuses such a command itself).
/// Allocates only as `out` grows.
inline void find_keys(const command_keys& spec, const std::vector<std::string_view>& args,
                      std::vector<std::size_t>& out) {
  const auto n = static_cast<long>(args.size());
  switch (spec.kind) {
    case command_keys::how::none:
      return;
    case command_keys::how::range: {
      long last = spec.last < 0 ? n + spec.last : spec.last;
      for (long i = spec.first; i <= last && i < n; i += spec.step)
        out.push_back(static_cast<std::size_t>(i));
      return;
    }
    case command_keys::how::numkeys: {
      if (spec.first > 0 && spec.first < n) out.push_back(static_cast<std::size_t>(spec.first));
      if (spec.last >= n) return;
      long count = 0;
      for (char c : args[static_cast<std::size_t>(spec.last)]) {
        if (c < '0' || c > '9' || count > n) return;
        count = count * 10 + (c - '0');
      }
      if (count > n - spec.last - 1) return;  // more keys than arguments: the server refuses it
      for (long i = spec.last + 1; i <= spec.last + count; ++i)
        out.push_back(static_cast<std::size_t>(i));
      return;
    }
    case command_keys::how::streams: {
      for (long i = spec.first; i < n; ++i) {  // after GROUP g c for XREADGROUP
        if (!iequals(args[static_cast<std::size_t>(i)], "STREAMS")) continue;
        long rest = n - i - 1;
        for (long j = i + 1; j <= i + rest / 2; ++j) out.push_back(static_cast<std::size_t>(j));
        return;
      }
      return;
    }
  }
}

}  // namespace spindle::redis::detail
