// spindle/redis/detail/limit.hpp - what the Redis rate limiters share (the single-key ones of
// rate_limit.hpp and the per-key ones of keyed_rate_limit.hpp): one Lua script per algorithm,
// each with a dry-run mode for retry_after(), and the one blocking loop with a deadline and a
// stop token.
//
// Every script reads the server's clock (TIME) or lets the server time keys out (PTTL), and
// returns 0 when the n grants were taken (or, dry, could be), else the milliseconds until they
// could be if nobody else took any. A dry run never changes the limiter's state.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "spindle/clock.hpp"
#include "spindle/deadline.hpp"
#include "spindle/redis/cluster.hpp"
#include "spindle/redis/codec.hpp"
#include "spindle/redis/detail/scripts.hpp"
#include "spindle/redis/options.hpp"
#include "spindle/redis/pool.hpp"
#include "spindle/status.hpp"

namespace spindle::redis::detail {

// Token bucket. KEYS: hash {t: tokens, ts: last refill, server ms}. ARGV: rate per second,
// burst, n, dry (1/0). Idle keys expire once the bucket would be full again (plus a second).
inline constexpr std::string_view lua_limit_token_bucket = R"lua(
local now = now_ms()
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(v[1])
local ts = tonumber(v[2])
if tokens == nil or ts == nil then tokens = burst; ts = now end
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate / 1000); ts = now end
if tokens < n then return math.max(1, math.ceil((n - tokens) * 1000 / rate)) end
if ARGV[4] == '1' then return 0 end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens - n), 'ts', ts)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return 0
)lua";

// Exact sliding window log. KEYS: log zset, sequence. ARGV: limit, window ms, n, dry (1/0).
// Idle keys expire after the window (plus a second).
inline constexpr std::string_view lua_limit_sliding_window = R"lua(
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
if ARGV[4] == '1' then return 0 end
for i = 1, n do
  local id = redis.call('INCR', KEYS[2])
  redis.call('ZADD', KEYS[1], now, id)
end
redis.call('PEXPIRE', KEYS[1], window + 1000)
redis.call('PEXPIRE', KEYS[2], window + 1000)
return 0
)lua";

// Fixed window (the seed's INCR + EXPIRE, made atomic: a crash between the two can no longer
// leave a counter without expiry). KEYS: counter. ARGV: limit, window ms, n, dry (1/0).
// The window starts with its first grant and lasts `window` (server time: the key's expiry).
inline constexpr std::string_view lua_limit_fixed_window = R"lua(
local limit = tonumber(ARGV[1])
local n = tonumber(ARGV[3])
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
if c + n > limit then
  local t = redis.call('PTTL', KEYS[1])
  if t < 1 then t = 1 end
  return t
end
if ARGV[4] == '1' then return 0 end
if redis.call('INCRBY', KEYS[1], n) == n then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
)lua";

enum class limit_algorithm { token_bucket, sliding_window, fixed_window };

/// One Redis limiter's parameters, connections and script; the keys are chosen per call by a
/// prefix ("{name}" for a single-key limiter, "{name:key}" for a per-key one). Thread-safe.
class limit_core {
 public:
  /// `what` names the class in error messages. For token_bucket, `rate` is per second and
  /// `most` the burst; otherwise `most` is the limit per `window`. Throws std::invalid_argument
  /// on a bad parameter. Connects lazily. Allocates.
  limit_core(const char* what, limit_algorithm a, std::string_view name, options o,
             pool_options po, double rate, std::uint64_t most, std::chrono::milliseconds window)
      : limit_core(what, a, name, rate, most, window) {
    pool_ = std::make_unique<pool>(std::move(o), po);
  }

  /// On a Redis Cluster. A non-empty `route_key` pins the pool to its slot (a single-key
  /// limiter: every key it touches shares that tag); an empty one routes each call by its keys
  /// through cluster::eval_script (a per-key limiter: keys spread over the slots). `c` must
  /// outlive the object. Throws like the other constructor, and std::invalid_argument for a
  /// name starting with '}' (its keys would have no hash tag).
  limit_core(const char* what, limit_algorithm a, std::string_view name, cluster& c,
             std::string_view route_key, pool_options po, double rate, std::uint64_t most,
             std::chrono::milliseconds window)
      : limit_core(what, a, name, rate, most, window) {
    check_tag_name(what, name);
    if (route_key.empty()) {
      cluster_ = &c;
      source_ = std::string(lua_prelude) + std::string(body(a));  // script_'s source
    } else {
      pool_ = std::make_unique<pool>(c, route_key, po);
    }
  }

  const std::string& name() const noexcept { return name_; }
  /// The burst (token bucket) or the limit per window.
  std::uint64_t most() const noexcept { return most_; }

  /// Throws std::invalid_argument naming `fn` if n exceeds the capacity (never satisfiable).
  void check_n(const char* fn, std::uint64_t n) const {
    if (n > most_)
      throw std::invalid_argument(std::string(what_) + "::" + fn + ": n = " + std::to_string(n) +
                                  " exceeds " +
                                  (algo_ == limit_algorithm::token_bucket ? "burst " : "limit ") +
                                  std::to_string(most_));
  }

  /// One script call under `prefix`: 0 if granted (dry: if it would be), else ms to wait.
  std::int64_t run(const std::string& prefix, std::uint64_t n, bool dry) {
    if (n == 0) return 0;
    std::vector<std::string> keys;
    std::string a1;
    switch (algo_) {
      case limit_algorithm::token_bucket:
        keys = {prefix + ":tb"};
        a1 = codec<double>::encode(rate_);
        break;
      case limit_algorithm::sliding_window:
        keys = {prefix + ":sw", prefix + ":sw:seq"};
        a1 = std::to_string(most_);
        break;
      case limit_algorithm::fixed_window:
        keys = {prefix + ":fw"};
        a1 = std::to_string(most_);
        break;
    }
    std::string a2 = algo_ == limit_algorithm::token_bucket ? std::to_string(most_)
                                                            : std::to_string(window_.count());
    std::vector<std::string> args{a1, a2, std::to_string(n), dry ? "1" : "0"};
    if (cluster_ != nullptr)  // EVALSHA on the keys' primary, loaded there on NOSCRIPT
      return cluster_->eval_script(source_, keys, args).integer();
    auto c = pool_->acquire();
    return script_.run(*c, keys, args).integer();
  }

  /// Takes n under `prefix`, sleeping the time the server names between tries (at most 1 s, so
  /// room freed by others is not missed for long) until `until` or a stop on `st`.
  /// Returns ok | timeout | cancelled; timeout at once when the room cannot come by `until`
  /// even if nobody else takes any. Throws std::invalid_argument if n exceeds the capacity.
  status acquire_until(const char* fn, const std::string& prefix, std::uint64_t n,
                       std::chrono::steady_clock::time_point until, const std::stop_token& st) {
    using namespace std::chrono;
    check_n(fn, n);
    for (;;) {
      const std::int64_t w = run(prefix, n, false);
      if (w == 0) return status::ok;
      if (st.stop_requested()) return status::cancelled;
      const auto now = steady_clock::now();
      const auto wait = milliseconds(w);
      if (until <= now || (until != steady_clock::time_point::max() && wait > until - now))
        return status::timeout;
      auto t = std::min(spindle::detail::saturating_add(now, std::min(wait, milliseconds(1000))),
                        until);
      if (!spindle::sleep_until(steady_clock{}, t, st)) return status::cancelled;
    }
  }

  /// How long until n could be taken under `prefix` if nobody else took any; zero if now.
  /// Changes nothing. Throws std::invalid_argument if n exceeds the capacity.
  std::chrono::milliseconds retry_after(const char* fn, const std::string& prefix, std::uint64_t n) {
    check_n(fn, n);
    return std::chrono::milliseconds(run(prefix, n, true));
  }

 private:
  static std::string_view body(limit_algorithm a) noexcept {
    return a == limit_algorithm::token_bucket     ? lua_limit_token_bucket
           : a == limit_algorithm::sliding_window ? lua_limit_sliding_window
                                                  : lua_limit_fixed_window;
  }

  // Checks the parameters; the public constructors then choose where the scripts run.
  limit_core(const char* what, limit_algorithm a, std::string_view name, double rate,
             std::uint64_t most, std::chrono::milliseconds window)
      : what_(what),
        algo_(a),
        name_(name),
        rate_(rate),
        most_(most),
        window_(window),
        script_(body(a)) {
    const bool tb = a == limit_algorithm::token_bucket;
    if (name.empty()) throw std::invalid_argument(std::string(what) + ": empty name");
    if (tb && !(rate > 0))
      throw std::invalid_argument(std::string(what) + ": rate_per_second must be > 0, got " +
                                  std::to_string(rate));
    if (most == 0)
      throw std::invalid_argument(std::string(what) + (tb ? ": burst" : ": limit") +
                                  " must be >= 1, got 0");
    if (!tb && window.count() <= 0)
      throw std::invalid_argument(std::string(what) + ": window must be > 0 ms, got " +
                                  std::to_string(window.count()));
  }

  const char* what_;
  limit_algorithm algo_;
  std::string name_;
  double rate_;
  std::uint64_t most_;
  std::chrono::milliseconds window_;
  std::unique_ptr<pool> pool_;  // one server, or pinned to one cluster slot; else null
  cluster* cluster_ = nullptr;  // routed per call (per-key limiter on a cluster); else null
  std::string source_;          // with cluster_: the script's source for eval_script
  script script_;
};

}  // namespace spindle::redis::detail
