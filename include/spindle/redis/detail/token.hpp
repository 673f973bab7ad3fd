// spindle/redis/detail/token.hpp - what the Redis patterns that hold something on the server
// (redis::distributed_lock, redis::cache's compute lock) share: a random owner token, the one
// compare-and-delete script that releases only what the caller holds, and the stop-aware wait
// between two tries.
#pragma once

#include <unistd.h>  // getpid: mixed into the seed so forked processes draw different tokens

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>  // this_thread::get_id: part of the seed
#include <functional>  // std::hash of the thread id

#include "spindle/clock.hpp"
#include "spindle/deadline.hpp"

namespace spindle::redis::detail {

/// 64 random bits from this thread's generator, seeded from std::random_device, the thread and
/// the process id, so two processes (even forked ones) or two threads never share a sequence.
/// Never allocates after the first call on a thread. Thread-safe.
inline std::uint64_t random_u64() {
  thread_local std::mt19937_64 gen = [] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd(), static_cast<unsigned>(::getpid()),
                      static_cast<unsigned>(std::hash<std::thread::id>{}(std::this_thread::get_id()))};
    return std::mt19937_64(seq);
  }();
  return gen();
}

/// 128 random bits as 32 hex digits: a lock owner's token. Allocates (the string). Thread-safe.
inline std::string random_token() {
  static constexpr char hex[] = "0123456789abcdef";
  std::string s(32, '0');
  for (int half = 0; half < 2; ++half) {
    std::uint64_t v = random_u64();
    for (int i = 0; i < 16; ++i) s[half * 16 + i] = hex[(v >> (4 * i)) & 0xf];
  }
  return s;
}

// KEYS: lock. ARGV: token. Deletes the lock only if it still holds `token` (the seed's
// compare-and-delete: a holder whose lease ran out never deletes its successor's lock).
// Returns 1 if deleted, 0 if the lock is gone or someone else's.
inline constexpr std::string_view lua_release_if_owner = R"lua(
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
)lua";

/// Sleeps until the next try of a lock held by someone else: `hint` (how long the server says
/// the lock still lives), capped at `most`, at least 1 ms, and never past `until`. Returns
/// false if a stop was requested on `st`. Never spins.
inline bool wait_next_try(std::chrono::milliseconds hint, std::chrono::milliseconds most,
                          std::chrono::steady_clock::time_point until, const std::stop_token& st) {
  using namespace std::chrono;
  auto d = std::clamp(hint, milliseconds(1), std::max(most, milliseconds(1)));
  auto t = std::min(spindle::detail::saturating_add(steady_clock::now(), d), until);
  return spindle::sleep_until(steady_clock{}, t, st);
}

}  // namespace spindle::redis::detail
