// spindle/redis/detail/scripts.hpp - the Lua scripts of the Redis channels and limiters, and
// a small runner that calls them by EVALSHA (loading them on first use and again on NOSCRIPT).
//
// Every script that needs the time reads the server's clock (TIME), so client clock skew does not
// matter. Envelope format of redis::queue: "<id>:<previous deliveries>:<payload>".
#pragma once

#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "spindle/redis/connection.hpp"
#include "spindle/redis/error.hpp"

namespace spindle::redis::detail {

// Shared Lua prelude: server time in ms, and requeue of one processing list (oldest first to
// the pop end of the ready list, or to the dead-letter list once max deliveries are reached; a
// dead letter leaves the queue's count of outstanding items, `pending`).
inline constexpr std::string_view lua_prelude = R"lua(
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function requeue_one(e, ready, dead, max, pending)
  local a = string.find(e, ':', 1, true)
  local b = string.find(e, ':', a + 1, true)
  local d = tonumber(string.sub(e, a + 1, b - 1)) + 1
  local ne = string.sub(e, 1, a) .. d .. string.sub(e, b)
  if max > 0 and d >= max then
    redis.call('LPUSH', dead, ne)
    redis.call('DECR', pending)
    return 2
  end
  redis.call('RPUSH', ready, ne)
  return 1
end
local function requeue_all(proc, ready, dead, max, pending)
  local n = 0
  while true do
    local e = redis.call('LPOP', proc)
    if not e then break end
    requeue_one(e, ready, dead, max, pending)
    n = n + 1
  end
  return n
end
)lua";

// redis::queue keeps `pending` = items in the ready list + items in every processing list (pushed,
// not yet acked or dead-lettered). Every script that adds or removes an item keeps it; moves
// between the lists (pop, BLMOVE, requeue) leave it alone. Pops return closed only once the queue
// is closed and pending is 0: nothing ready and nothing held that could still be requeued.

// KEYS: ready, closed, seq, pending. ARGV: max_length (0: none), payload...
// Pushes as many payloads as there is room for, in order (the first is popped first).
// Returns how many were pushed (0: full), or -1 closed.
inline constexpr std::string_view lua_queue_push = R"lua(
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local n = #ARGV - 1
local max = tonumber(ARGV[1])
if max > 0 then
  local room = max - redis.call('LLEN', KEYS[1])
  if room < n then n = math.max(room, 0) end
end
if n == 0 then return 0 end
local last = redis.call('INCRBY', KEYS[3], n)
local es = {}
for i = 1, n do es[i] = (last - n + i) .. ':0:' .. ARGV[i + 1] end
redis.call('LPUSH', KEYS[1], unpack(es))
redis.call('INCRBY', KEYS[4], n)
return n
)lua";

// KEYS: consumers, proc, ready, closed, pending. ARGV: consumer, n, envelope to ack...
// Acks the envelopes (only while the lease holds, like settle), then moves up to n envelopes
// from the ready list to the processing list: one round trip for a consumer that acks what it
// finished and takes more. Returns {code, acked, envelope...}: code 1 (the envelopes follow, the
// first popped first), 0 nothing ready, -1 closed and nothing pending anywhere; acked: how many
// of the envelopes were removed, -1 if the lease had expired (nothing removed).
inline constexpr std::string_view lua_queue_fetch = R"lua(
local acked = 0
if #ARGV > 2 then
  local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if s and tonumber(s) >= now_ms() then
    for i = 3, #ARGV do acked = acked + redis.call('LREM', KEYS[2], -1, ARGV[i]) end
    if acked > 0 then redis.call('DECRBY', KEYS[5], acked) end
  else
    acked = -1
  end
end
local out = {1, acked}
for i = 1, tonumber(ARGV[2]) do
  local e = redis.call('LMOVE', KEYS[3], KEYS[2], 'RIGHT', 'LEFT')
  if not e then break end
  out[#out + 1] = e
end
if #out > 2 then return out end
if redis.call('EXISTS', KEYS[4]) == 1 and tonumber(redis.call('GET', KEYS[5]) or '0') <= 0 then
  return {-1, acked}
end
return {0, acked}
)lua";

// KEYS: consumers, proc, ready, dead, pending.
// ARGV: consumer, visibility ms, max deliveries, renewal (1: the lease was taken before).
// Renews the lease; if it had expired, the consumer's deliveries are requeued first (they are
// forfeit: its acks now fail). Returns how many were requeued, or -1 if a renewal found the
// lease gone (another consumer recovered it: its deliveries were requeued there).
inline constexpr std::string_view lua_queue_heartbeat = R"lua(
local now = now_ms()
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
local lost = 0
if s and tonumber(s) < now then
  lost = requeue_all(KEYS[2], KEYS[3], KEYS[4], tonumber(ARGV[3]), KEYS[5])
elseif not s and ARGV[4] == '1' then
  lost = -1
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return lost
)lua";

// KEYS: consumers. Returns up to 64 consumers whose lease expired (the first half of recovery;
// the second, lua_queue_recover, is given their processing lists as KEYS).
inline constexpr std::string_view lua_queue_expired = R"lua(
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now_ms(), 'LIMIT', 0, 64)
)lua";

// KEYS: consumers, ready, dead, pending, proc of consumer 1, proc of consumer 2, ...
// ARGV: max deliveries, consumer 1, consumer 2, ...
// Requeues the processing list of each consumer whose lease is (still) expired and drops its
// lease; a consumer renewed or recovered since lua_queue_expired is left alone. Returns the
// count of requeued items.
inline constexpr std::string_view lua_queue_recover = R"lua(
local now = now_ms()
local n = 0
for i = 2, #ARGV do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) < now then
    n = n + requeue_all(KEYS[3 + i], KEYS[2], KEYS[3], tonumber(ARGV[1]), KEYS[4])
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return n
)lua";

// KEYS: consumers, proc, ready, dead, pending. ARGV: consumer, envelope, mode (ack | nack), max.
// Returns 1 acked / requeued, 2 dead-lettered (nack), 0 not in the processing list,
// -1 lease expired (nothing changed).
inline constexpr std::string_view lua_queue_settle = R"lua(
local now = now_ms()
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s or tonumber(s) < now then return -1 end
local removed = redis.call('LREM', KEYS[2], -1, ARGV[2])
if removed == 0 then return 0 end
if ARGV[3] == 'ack' then
  redis.call('DECR', KEYS[5])
  return 1
end
return requeue_one(ARGV[2], KEYS[3], KEYS[4], tonumber(ARGV[4]), KEYS[5])
)lua";

// KEYS: consumers, proc, ready. ARGV: consumer, envelope... (in the order they would have been
// handed out). Gives back prefetched envelopes never handed out: moved to the pop end of the
// ready list in that order, delivery count unchanged (they were never delivered to user code).
// Only while the lease holds (else they are, or will be, requeued by recovery). Returns how many.
inline constexpr std::string_view lua_queue_give_back = R"lua(
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s or tonumber(s) < now_ms() then return -1 end
local n = 0
for i = #ARGV, 2, -1 do
  if redis.call('LREM', KEYS[2], -1, ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[3], ARGV[i])
    n = n + 1
  end
end
return n
)lua";

// KEYS: consumers, proc. ARGV: consumer. Leaves: drops the lease if nothing is held.
inline constexpr std::string_view lua_queue_leave = R"lua(
if redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
)lua";

// Token bucket. KEYS: bucket hash. ARGV: rate per second, burst, n.
// Returns 0 if granted, else the ms until n tokens will be there. Idle keys expire once the
// bucket would be full again (plus a second).
inline constexpr std::string_view lua_token_bucket = R"lua(
local now = now_ms()
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(v[1])
local ts = tonumber(v[2])
if tokens == nil or ts == nil then tokens = burst; ts = now end
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate / 1000); ts = now end
local wait = 0
if tokens >= n then tokens = tokens - n else wait = math.ceil((n - tokens) * 1000 / rate) end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'ts', ts)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return wait
)lua";

// Sliding window log. KEYS: log zset, sequence. ARGV: limit, window ms, n.
// Returns 0 if granted, else the ms until enough entries leave the window. Idle keys expire
// after the window (plus a second).
inline constexpr std::string_view lua_sliding_window = R"lua(
local now = now_ms()
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count + n > limit then
  local idx = count + n - limit - 1
  local e = redis.call('ZRANGE', KEYS[1], idx, idx, 'WITHSCORES')
  local wait = 1
  if e[2] then wait = math.max(1, tonumber(e[2]) + window - now + 1) end
  return wait
end
for i = 1, n do
  local id = redis.call('INCR', KEYS[2])
  redis.call('ZADD', KEYS[1], now, id)
end
redis.call('PEXPIRE', KEYS[1], window + 1000)
redis.call('PEXPIRE', KEYS[2], window + 1000)
return 0
)lua";

// ---- redis::stream. Entries carry fields v (payload) and d (deliveries before this entry was
// (re)added); an entry's delivery count is d plus the group's count for it.

inline constexpr std::string_view lua_stream_prelude = R"lua(
local function field(fields, name)
  for i = 1, #fields, 2 do if fields[i] == name then return fields[i + 1] end end
  return nil
end
local function pending_count(s, g, id)
  local p = redis.call('XPENDING', s, g, id, id, 1)
  if #p == 0 then return nil, nil end
  return p[1][2], tonumber(p[1][4])
end
)lua";

// KEYS: stream, closed. ARGV: payload, maxlen (0: none). Returns 1 pushed, -1 closed.
inline constexpr std::string_view lua_stream_push = R"lua(
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if tonumber(ARGV[2]) > 0 then
  redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], '*', 'v', ARGV[1], 'd', 0)
else
  redis.call('XADD', KEYS[1], '*', 'v', ARGV[1], 'd', 0)
end
return 1
)lua";

// KEYS: stream, dead, closed. ARGV: group, consumer, min idle ms, max deliveries, cursor, then
// the ids of this consumer's handled deliveries to ack first (XACK + XDEL of each one it still
// holds; one it no longer holds is skipped, as an ack of it would fail).
// Claims a stale delivery (dead-lettering those past max deliveries), else reads a new one.
// Returns {1, id, payload, deliveries, cursor}, {0, cursor} none, {-1, cursor} closed and
// drained: nothing new and no entry pending in the group (held by any consumer, live or dead,
// and so possibly requeued by a nack or claimed after its lease).
inline constexpr std::string_view lua_stream_pop = R"lua(
local s, g, me = KEYS[1], ARGV[1], ARGV[2]
local max = tonumber(ARGV[4])
local cursor = ARGV[5]
for i = 6, #ARGV do
  if pending_count(s, g, ARGV[i]) == me then
    redis.call('XACK', s, g, ARGV[i])
    redis.call('XDEL', s, ARGV[i])
  end
end
for i = 1, 16 do
  local r = redis.call('XAUTOCLAIM', s, g, me, ARGV[3], cursor, 'COUNT', 1)
  cursor = r[1]
  local es = r[2]
  if #es > 0 then
    local id, fields = es[1][1], es[1][2]
    local _, count = pending_count(s, g, id)
    local total = tonumber(field(fields, 'd') or 0) + (count or 1)
    if max > 0 and total > max then
      redis.call('XADD', KEYS[2], '*', 'v', field(fields, 'v') or '', 'id', id,
                 'deliveries', total - 1)
      redis.call('XACK', s, g, id)
      redis.call('XDEL', s, id)
    else
      return {1, id, field(fields, 'v') or '', total, cursor}
    end
  elseif cursor == '0-0' then
    break
  end
end
local r = redis.call('XREADGROUP', 'GROUP', g, me, 'COUNT', 1, 'STREAMS', s, '>')
if r and #r[1][2] > 0 then
  local e = r[1][2][1]
  return {1, e[1], field(e[2], 'v') or '', tonumber(field(e[2], 'd') or 0) + 1, cursor}
end
if redis.call('EXISTS', KEYS[3]) == 1 and redis.call('XPENDING', s, g)[1] == 0 then
  return {-1, cursor}
end
return {0, cursor}
)lua";

// KEYS: stream, dead. ARGV: group, consumer, id, mode (ack | nack), max deliveries.
// Returns 1 acked / requeued, 2 dead-lettered, -1 not held by this consumer (claimed by
// another after the lease expired, or already settled).
inline constexpr std::string_view lua_stream_settle = R"lua(
local s, g, me, id = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local owner, count = pending_count(s, g, id)
if owner ~= me then return -1 end
local e = redis.call('XRANGE', s, id, id)
redis.call('XACK', s, g, id)
redis.call('XDEL', s, id)
if ARGV[4] == 'ack' or #e == 0 then return 1 end
local fields = e[1][2]
local total = tonumber(field(fields, 'd') or 0) + count
local max = tonumber(ARGV[5])
if max > 0 and total >= max then
  redis.call('XADD', KEYS[2], '*', 'v', field(fields, 'v') or '', 'id', id, 'deliveries', total)
  return 2
end
redis.call('XADD', s, '*', 'v', field(fields, 'v') or '', 'd', total)
return 1
)lua";

// KEYS: stream. ARGV: group, consumer. Renews this consumer's deliveries (resets their idle
// time without counting a delivery). Returns how many.
inline constexpr std::string_view lua_stream_heartbeat = R"lua(
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1000, ARGV[2])
if #p == 0 then return 0 end
local args = {KEYS[1], ARGV[1], ARGV[2], 0}
for _, e in ipairs(p) do args[#args + 1] = e[1] end
args[#args + 1] = 'JUSTID'
redis.call('XCLAIM', unpack(args))
return #p
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
