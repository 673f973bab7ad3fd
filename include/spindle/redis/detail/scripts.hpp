// spindle/redis/detail/scripts.hpp - the Lua scripts of the Redis channels and limiters, and
// a small runner that calls them by EVALSHA (loading them on first use and again on NOSCRIPT).
//
// Every script that needs the time reads the server's clock (TIME), so client clock skew does not
// matter. The wire formats of redis::queue and redis::stream are documented in README.md
// ("Wire format of queue and stream") and below.
#pragma once

#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "spindle/redis/connection.hpp"
#include "spindle/redis/error.hpp"

namespace spindle::redis::detail {

// Shared Lua prelude: server time in ms, and what redis::queue's scripts share.
//
// Every redis::queue script takes the same KEYS (queue_keys below, in this order), so that each
// one declares every key it may touch:
//   1 consumers (zset: consumer -> lease expiry ms)   2 proc (this consumer's processing list)
//   3 ready   4 dead   5 pending   6 closed   7 seq   8 signal   9 known   10 reasons
//   11 push-times (zset: second of server time -> first id pushed in it; health's ages)
// Recovery appends the processing lists it empties.
//
// The lease protocol (detail/lease.hpp has the client side):
//   - An envelope enters a processing list only in lua_queue_fetch, which first checks that the
//     consumer's lease is live and renews it; a fetch that finds it gone or expired moves nothing
//     and answers -2 (lost). The consumer then takes it again with lua_queue_take, which first
//     requeues whatever its processing list still holds (those deliveries are forfeit).
//   - `known` is the set of consumers that took a lease and may hold a processing list; a sweep
//     (lua_queue_expired + lua_queue_recover) requeues the lists of known consumers whose lease is
//     expired or missing, so no list is left behind when a lease entry vanishes (failover).
//   - Whatever adds to the ready list pushes a token on `signal` (at most 64 kept): idle
//     consumers block on it (BLPOP) and then fetch with the fenced script; nobody blocks on the
//     ready list itself.
//
// Envelopes: "<id>:<previous deliveries>:<payload>" (ids and counts in decimal). A ready item that
// is not an envelope (a bare payload pushed by another client) is wrapped by the fetch as a first
// delivery (a fresh id from seq, counted in pending). Dead letters: "<id>:<deliveries made>:
// <payload>", with the reason in the hash `reasons` (id -> text).
inline constexpr std::string_view lua_prelude = R"lua(
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function lease_live(consumers, me, now)
  local s = redis.call('ZSCORE', consumers, me)
  return s and tonumber(s) >= now
end
local function signal(key, n)
  if n <= 0 then return end
  for i = 1, math.min(n, 64) do redis.call('LPUSH', key, '1') end
  redis.call('LTRIM', key, 0, 63)
end
local function dead_letter(id, made, payload, reason)
  redis.call('LPUSH', KEYS[4], id .. ':' .. made .. ':' .. payload)
  redis.call('HSET', KEYS[10], id, reason)
  redis.call('DECR', KEYS[5])
end
local function requeue_one(e, max)
  local id, d, rest = string.match(e, '^(%d+):(%d+):(.*)$')
  if not id then
    redis.call('RPUSH', KEYS[3], e)
    return 1
  end
  local made = tonumber(d) + 1
  if max > 0 and made >= max then
    dead_letter(id, made, rest, 'max_deliveries')
    return 2
  end
  redis.call('RPUSH', KEYS[3], id .. ':' .. made .. ':' .. rest)
  return 1
end
-- Envelopes ARGV[first..] (in hand-out order) never handed out: from this consumer's processing
-- list back to the pop end of the ready list, count unchanged. Returns how many.
local function give_back(first)
  local n = 0
  for i = #ARGV, first, -1 do
    if redis.call('LREM', KEYS[2], -1, ARGV[i]) == 1 then
      redis.call('RPUSH', KEYS[3], ARGV[i])
      n = n + 1
    end
  end
  signal(KEYS[8], n)
  return n
end
local function requeue_all(proc, max)
  local n = 0
  while true do
    local e = redis.call('LPOP', proc)
    if not e then break end
    if requeue_one(e, max) == 1 then n = n + 1 end
  end
  signal(KEYS[8], n)
  return n
end
)lua";

// redis::queue keeps `pending` = items in the ready list + items in every processing list (pushed,
// not yet acked or dead-lettered). Every script that adds or removes an item keeps it; moves
// between the lists (fetch, requeue) leave it alone. Pops return closed only once the queue is
// closed and pending is 0: nothing ready and nothing held that could still be requeued.

// ARGV: max_length (0: none), payload... Pushes as many payloads as there is room for, in order
// (the first is popped first). Returns how many were pushed (0: full), or -1 closed.
inline constexpr std::string_view lua_queue_push = R"lua(
if redis.call('EXISTS', KEYS[6]) == 1 then return -1 end
local n = #ARGV - 1
local max = tonumber(ARGV[1])
if max > 0 then
  local room = max - redis.call('LLEN', KEYS[3])
  if room < n then n = math.max(room, 0) end
end
if n == 0 then return 0 end
local last = redis.call('INCRBY', KEYS[7], n)
local es = {}
for i = 1, n do es[i] = (last - n + i) .. ':0:' .. ARGV[i + 1] end
redis.call('LPUSH', KEYS[3], unpack(es))
redis.call('INCRBY', KEYS[5], n)
signal(KEYS[8], n)
-- Push-time marks: the first id pushed in each second of server time (the newest 4096 seconds
-- that saw a push). Ids grow in push order, so an item was pushed in the second of the last
-- mark at or below its id: health() reports the oldest ready item's age from it.
local sec = redis.call('TIME')[1]
local newest = redis.call('ZRANGE', KEYS[11], -1, -1)
if newest[1] ~= sec then
  redis.call('ZADD', KEYS[11], last - n + 1, sec)
  if redis.call('ZCARD', KEYS[11]) > 4096 then redis.call('ZREMRANGEBYRANK', KEYS[11], 0, 0) end
end
return n
)lua";

// ARGV: consumer, n, visibility ms, envelope to ack...
// If the lease is gone or expired: returns {-2, 0} and changes nothing (the caller takes the
// lease again with lua_queue_take). Else renews the lease, acks the envelopes, then moves up to
// n items from the ready list to the processing list (wrapping bare payloads). Returns {code,
// acked, envelope...}: code 1 (the envelopes follow, the first popped first), 0 nothing ready,
// -1 closed and nothing pending anywhere; acked: how many of the envelopes were removed.
inline constexpr std::string_view lua_queue_fetch = R"lua(
local now = now_ms()
if not lease_live(KEYS[1], ARGV[1], now) then return {-2, 0} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
local acked = 0
for i = 4, #ARGV do acked = acked + redis.call('LREM', KEYS[2], -1, ARGV[i]) end
if acked > 0 then redis.call('DECRBY', KEYS[5], acked) end
local out = {1, acked}
for i = 1, tonumber(ARGV[2]) do
  local e = redis.call('LMOVE', KEYS[3], KEYS[2], 'RIGHT', 'LEFT')
  if not e then break end
  if not string.match(e, '^%d+:%d+:') then
    e = redis.call('INCR', KEYS[7]) .. ':0:' .. e
    redis.call('LSET', KEYS[2], 0, e)
    redis.call('INCR', KEYS[5])
  end
  out[#out + 1] = e
end
if #out > 2 then return out end
if redis.call('EXISTS', KEYS[6]) == 1 and tonumber(redis.call('GET', KEYS[5]) or '0') <= 0 then
  return {-1, acked}
end
return {0, acked}
)lua";

// ARGV: consumer, visibility ms, max deliveries, envelope never handed out...
// Takes the lease (first use, or after it was lost): the envelopes never handed out go back to
// the pop end of the ready list unchanged, in that order; whatever else the processing list
// holds is requeued as forfeit deliveries (count + 1); then the lease is set and the consumer
// is known. Returns how many items went back.
inline constexpr std::string_view lua_queue_take = R"lua(
local now = now_ms()
local back = give_back(4)
local n = requeue_all(KEYS[2], tonumber(ARGV[3]))
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('SADD', KEYS[9], ARGV[1])
return back + n
)lua";

// ARGV: consumer, visibility ms. Renews a live lease; returns 0, or -1 (nothing changed) if the
// lease is gone or expired (the caller then takes it again with lua_queue_take).
inline constexpr std::string_view lua_queue_heartbeat = R"lua(
local now = now_ms()
if not lease_live(KEYS[1], ARGV[1], now) then return -1 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 0
)lua";

// Returns up to 64 consumers whose lease expired and up to 16 known consumers without a lease
// entry (the first half of recovery; the second, lua_queue_recover, is given their processing
// lists as KEYS).
inline constexpr std::string_view lua_queue_expired = R"lua(
local out = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now_ms(), 'LIMIT', 0, 64)
for _, c in ipairs(redis.call('SRANDMEMBER', KEYS[9], 16)) do
  if not redis.call('ZSCORE', KEYS[1], c) then out[#out + 1] = c end
end
return out
)lua";

// KEYS: queue_keys, then proc of consumer 1, proc of consumer 2, ...
// ARGV: max deliveries, consumer 1, consumer 2, ...
// Requeues the processing list of each consumer whose lease is (still) expired or missing and
// forgets it (lease and known); a consumer that renewed or took its lease since
// lua_queue_expired is left alone. Returns the count of requeued items.
inline constexpr std::string_view lua_queue_recover = R"lua(
local now = now_ms()
local n = 0
for i = 2, #ARGV do
  if not lease_live(KEYS[1], ARGV[i], now) then
    n = n + requeue_all(KEYS[10 + i], tonumber(ARGV[1]))
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('SREM', KEYS[9], ARGV[i])
  end
end
return n
)lua";

// ARGV: consumer, envelope, mode (ack | nack | dead), max deliveries, reason (dead).
// Returns 1 acked / requeued, 2 dead-lettered, 0 not in the processing list, -1 lease gone or
// expired (nothing changed).
inline constexpr std::string_view lua_queue_settle = R"lua(
if not lease_live(KEYS[1], ARGV[1], now_ms()) then return -1 end
local removed = redis.call('LREM', KEYS[2], -1, ARGV[2])
if removed == 0 then return 0 end
if ARGV[3] == 'ack' then
  redis.call('DECR', KEYS[5])
  return 1
end
if ARGV[3] == 'dead' then
  local id, d, rest = string.match(ARGV[2], '^(%d+):(%d+):(.*)$')
  dead_letter(id, tonumber(d) + 1, rest, ARGV[5])
  return 2
end
local r = requeue_one(ARGV[2], tonumber(ARGV[4]))
if r == 1 then signal(KEYS[8], 1) end
return r
)lua";

// ARGV: consumer, envelope... (in the order they would have been handed out). Gives back
// envelopes never handed out (prefetched, or moved by a fetch whose reply was lost): moved to
// the pop end of the ready list in that order, delivery count unchanged. Only while the lease
// holds (else they are, or will be, requeued by recovery). Returns how many, -1 lease lost.
inline constexpr std::string_view lua_queue_give_back = R"lua(
if not lease_live(KEYS[1], ARGV[1], now_ms()) then return -1 end
return give_back(2)
)lua";

// ARGV: consumer. Leaves: drops the lease and forgets the consumer if nothing is held.
inline constexpr std::string_view lua_queue_leave = R"lua(
if redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('SREM', KEYS[9], ARGV[1])
  return 1
end
return 0
)lua";

// ---- redis::stream. KEYS of every stream script: stream, dead-letter stream, closed.
// Entries carry field v (payload) and optionally d (deliveries before the entry was added; 0 or
// absent for a first delivery); an entry's delivery count is d plus the group's count for it
// (XPENDING). Dead letters: {v, id (the original id), group, deliveries (made), reason}.
// Acknowledging is XACK only: the stream is a log that every group reads in full; retention is
// separate (lua_stream_trim, XADD MAXLEN / MINID).

inline constexpr std::string_view lua_stream_prelude = R"lua(
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function field(fields, name)
  for i = 1, #fields, 2 do if fields[i] == name then return fields[i + 1] end end
  return nil
end
local function pending_count(s, g, id)
  local p = redis.call('XPENDING', s, g, id, id, 1)
  if #p == 0 then return nil, nil end
  return p[1][2], tonumber(p[1][4])
end
local function dead_letter(g, id, payload, made, reason)
  redis.call('XADD', KEYS[2], '*', 'v', payload or '', 'id', id, 'group', g,
             'deliveries', made, 'reason', reason)
  redis.call('XACK', KEYS[1], g, id)
end
)lua";

// ARGV: payload, max length (0: none; XADD MAXLEN, exact), max age ms (0: none; then XTRIM
// MINID of the server time less the age). Returns 1 pushed, -1 closed.
inline constexpr std::string_view lua_stream_push = R"lua(
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
if tonumber(ARGV[2]) > 0 then
  redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], '*', 'v', ARGV[1])
else
  redis.call('XADD', KEYS[1], '*', 'v', ARGV[1])
end
local age = tonumber(ARGV[3])
if age > 0 then redis.call('XTRIM', KEYS[1], 'MINID', (now_ms() - age) .. '-0') end
return 1
)lua";

// ARGV: group, consumer, min idle ms, max deliveries, cursor, then the ids of this consumer's
// handled deliveries to ack first (XACK of each one it still holds; one it no longer holds is
// skipped, as an ack of it would fail).
// Claims a stale delivery (idle for min idle: its holder died, stalled, or never received it;
// dead-lettering those past max deliveries), else reads a new one.
// Returns {1, id, payload (nil if the entry has no v field), deliveries, cursor}, {0, cursor}
// none, {-1, cursor} closed and drained: nothing new and no entry pending in the group.
inline constexpr std::string_view lua_stream_pop = R"lua(
local s, g, me = KEYS[1], ARGV[1], ARGV[2]
local max = tonumber(ARGV[4])
local cursor = ARGV[5]
for i = 6, #ARGV do
  if pending_count(s, g, ARGV[i]) == me then redis.call('XACK', s, g, ARGV[i]) end
end
for i = 1, 16 do
  local r = redis.call('XAUTOCLAIM', s, g, me, ARGV[3], cursor, 'COUNT', 1)
  cursor = r[1]
  local e = r[2][1]
  if e then
    local id, fields = e[1], e[2]
    local _, count = pending_count(s, g, id)
    local total = tonumber(field(fields, 'd') or 0) + (count or 1)
    if max > 0 and total > max then
      dead_letter(g, id, field(fields, 'v'), total - 1, 'max_deliveries')
    else
      return {1, id, field(fields, 'v') or false, total, cursor}
    end
  elseif cursor == '0-0' then
    break
  end
end
local r = redis.call('XREADGROUP', 'GROUP', g, me, 'COUNT', 1, 'STREAMS', s, '>')
if r and #r[1][2] > 0 then
  local e = r[1][2][1]
  return {1, e[1], field(e[2], 'v') or false, tonumber(field(e[2], 'd') or 0) + 1, cursor}
end
if redis.call('EXISTS', KEYS[3]) == 1 and redis.call('XPENDING', s, g)[1] == 0 then
  return {-1, cursor}
end
return {0, cursor}
)lua";

// ARGV: group, consumer, id, mode (ack | nack | dead), max deliveries, reason (dead), visibility
// ms. ack: XACK. nack: the entry stays pending but becomes claimable at once (its idle time is
// set past the visibility timeout; the claim counts the next delivery), or is dead-lettered once
// it reached max deliveries. dead: dead-lettered with the reason.
// Returns 1 acked / requeued, 2 dead-lettered, -1 not held by this consumer (claimed by
// another after the lease expired, or already settled).
inline constexpr std::string_view lua_stream_settle = R"lua(
local s, g, me, id = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local owner, count = pending_count(s, g, id)
if owner ~= me then return -1 end
if ARGV[4] == 'ack' then
  redis.call('XACK', s, g, id)
  return 1
end
local e = redis.call('XRANGE', s, id, id)
local fields = {}
if #e > 0 then fields = e[1][2] end
local total = tonumber(field(fields, 'd') or 0) + count
local max = tonumber(ARGV[5])
if ARGV[4] == 'dead' or #e == 0 or (max > 0 and total >= max) then
  local reason = ARGV[6]
  if ARGV[4] ~= 'dead' then reason = 'max_deliveries' end
  if #e == 0 then reason = 'trimmed' end
  dead_letter(g, id, field(fields, 'v'), total, reason)
  return 2
end
redis.call('XCLAIM', s, g, me, 0, id, 'IDLE', tonumber(ARGV[7]) + 1, 'JUSTID')
return 1
)lua";

// ARGV: group, consumer, visibility ms, id... (the deliveries this object handed out and has
// not settled). Renews those that this consumer still holds (XCLAIM JUSTID resets the idle
// time without counting a delivery) and nothing else: an entry in its PEL that it never handed
// out (a lost reply) goes stale and is claimed. Then deletes consumers of the group that hold
// nothing and were idle longer than the visibility timeout (a live one is re-created by its
// next read). Returns how many deliveries were renewed.
inline constexpr std::string_view lua_stream_heartbeat = R"lua(
local s, g, me = KEYS[1], ARGV[1], ARGV[2]
local ids = {}
for i = 4, #ARGV do
  if pending_count(s, g, ARGV[i]) == me then ids[#ids + 1] = ARGV[i] end
end
local n = #ids
-- In chunks: unpack() fails past Lua's C stack (8000 values), and a consumer may hold more.
for first = 1, n, 1000 do
  local args = {s, g, me, 0}
  for j = first, math.min(first + 999, n) do args[#args + 1] = ids[j] end
  args[#args + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(args))
end
local vis = tonumber(ARGV[3])
local cs = redis.call('XINFO', 'CONSUMERS', s, g)
for i = 1, math.min(#cs, 256) do
  local c = cs[i]
  local name, pending, idle = field(c, 'name'), tonumber(field(c, 'pending')), tonumber(field(c, 'idle'))
  if name ~= me and pending == 0 and idle > vis then
    redis.call('XGROUP', 'DELCONSUMER', s, g, name)
  end
end
return n
)lua";

// ARGV: group, consumer. Leaves: deletes this consumer from the group if it holds nothing.
// Returns 1 deleted, 0 kept (its entries are claimed by others after the visibility timeout).
inline constexpr std::string_view lua_stream_leave = R"lua(
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
)lua";

// Read-only: the figures of stream<...>::health() in one round trip. KEYS: stream, dead,
// closed. Returns {length, dead letters, closed (0/1), server time ms, group...}, each group
// {name, lag (-1: unknown - Redis < 7, or XINFO cannot tell), pending, last delivered id,
// oldest pending id ('' if none), its idle ms (-1 if none), its delivery count, {consumer
// name, pending, idle ms, ...}}. A missing stream has no group.
inline constexpr std::string_view lua_stream_health = R"lua(
local s = KEYS[1]
local out = {redis.call('XLEN', s), redis.call('XLEN', KEYS[2]), redis.call('EXISTS', KEYS[3]),
             now_ms()}
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', s)
if not ok then return out end
for i = 1, #groups do
  local gi = groups[i]
  local g = field(gi, 'name')
  local lag = field(gi, 'lag')
  if not lag then lag = -1 end
  local summary = redis.call('XPENDING', s, g)
  local oldest, idle, count = '', -1, 0
  if tonumber(summary[1]) > 0 then
    oldest = summary[2]
    local p = redis.call('XPENDING', s, g, oldest, oldest, 1)
    if #p > 0 then idle, count = p[1][3], p[1][4] end
  end
  local flat = {}
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', s, g)) do
    flat[#flat + 1] = field(c, 'name')
    flat[#flat + 1] = field(c, 'pending')
    flat[#flat + 1] = field(c, 'idle')
  end
  out[#out + 1] = {g, lag, summary[1], field(gi, 'last-delivered-id'), oldest, idle, count, flat}
end
return out
)lua";

// Trims the entries that every group of the stream has acknowledged: below the oldest pending
// entry of each group, or up to and including its last delivered id when none is pending
// (XTRIM MINID). Returns how many entries were trimmed.
inline constexpr std::string_view lua_stream_trim = R"lua(
local function less(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok or #groups == 0 then return 0 end
local bound = nil
for _, gi in ipairs(groups) do
  local g = field(gi, 'name')
  local b = field(gi, 'last-delivered-id')
  if tonumber(field(gi, 'pending')) > 0 then
    b = redis.call('XPENDING', KEYS[1], g)[2]
  else
    local ms, seq = string.match(b, '^(%d+)-(%d+)$')
    b = ms .. '-' .. (tonumber(seq) + 1)
  end
  if bound == nil or less(b, bound) then bound = b end
end
if bound == '0-0' then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', bound)
)lua";

/// True for error replies that pass by themselves (a server loading its data after a restart,
/// a busy script, a cluster slot moving): blocking loops retry those like I/O failures.
inline bool transient(const server_error& e) noexcept {
  auto c = e.code();
  return c == "LOADING" || c == "BUSY" || c == "TRYAGAIN" || c == "MASTERDOWN";
}

/// One Lua script, called by EVALSHA; loaded (SCRIPT LOAD) on first use and again when the
/// server answers NOSCRIPT (after a restart or SCRIPT FLUSH). Thread-safe.
class script {
 public:
  /// Prepends `prelude` (helper functions) to `body`. Allocates.
  explicit script(std::string_view body, std::string_view prelude = lua_prelude)
      : source_(std::string(prelude) + std::string(body)) {}

  /// Runs the script with `keys` then `args`. Throws redis::server_error for script errors,
  /// redis::error on I/O failure. Allocates.
  reply run(connection& c, const std::vector<std::string>& keys,
            const std::vector<std::string>& args) {
    std::string sha = get_sha(c, false);
    try {
      return c.command("EVALSHA", sha, keys.size(), keys, args);
    } catch (const server_error& e) {
      if (e.code() != "NOSCRIPT") throw;
    }
    sha = get_sha(c, true);
    return c.command("EVALSHA", sha, keys.size(), keys, args);
  }

 private:
  std::string get_sha(connection& c, bool reload) {
    {
      std::lock_guard lock(mu_);
      if (!reload && !sha_.empty()) return sha_;
    }
    std::string sha = c.command("SCRIPT", "LOAD", source_).str();  // no lock held across I/O
    std::lock_guard lock(mu_);
    sha_ = sha;
    return sha;
  }

  const std::string source_;
  std::mutex mu_;
  std::string sha_;  // guarded by mu_
};

}  // namespace spindle::redis::detail
