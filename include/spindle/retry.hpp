// spindle/retry.hpp - retry a call with exponential backoff.
//
// Defines:
//   retry_policy                 initial delay, multiplier, max_delay cap, max_attempts, jitter,
//                                retry_on predicate, on_retry hook (designated initializers).
//   retry(policy, f [, deadline] [, stop_token])
//                                calls f until it returns; retries the exceptions that retry_on
//                                accepts, sleeping the backoff between attempts; rethrows the
//                                last error when attempts, the deadline or the stop run out.
//   retry_if<E...>()             a retry_on predicate: retry exceptions of type E... only.
//   backoff_delay(policy, k)     the k-th backoff delay before jitter (k = 1 for the first retry).
//
//   auto body = spindle::retry({.initial = 50ms, .max_attempts = 4,
//                               .retry_on = spindle::retry_if<io_error>()},
//                              [&] { return fetch(url); });
//
// Guarantees: f runs at most max_attempts times, always at least once (even if the stop or the
// deadline has already come: the caller gets f's own outcome). Backoff sleeps are on the
// deadline's Clock (manual_clock in tests) and end promptly on a stop request. An attempt never
// starts after the deadline: when the next backoff would end past it, retry gives up at once.
// No exception is swallowed: the one that ends the retrying is rethrown as is.
#pragma once

#include <chrono>
#include <cmath>  // std::isfinite, std::pow
#include <cstdint>
#include <exception>
#include <functional>
#include <random>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <type_traits>
#include <utility>

#include "clock.hpp"
#include "deadline.hpp"
#include "status.hpp"

namespace spindle {

/// How retry() spaces and bounds its attempts. The k-th retry (k = 1, 2, ...) waits
/// min(max_delay, initial * multiplier^(k-1)), then jitter shortens it by a random fraction.
struct retry_policy {
  /// The delay before the first retry.
  std::chrono::nanoseconds initial = std::chrono::milliseconds(100);
  /// Each delay is the previous one times this (>= 1).
  double multiplier = 2.0;
  /// The cap on any delay.
  std::chrono::nanoseconds max_delay = std::chrono::seconds(30);
  /// Calls of f in all, the first included (>= 1).
  std::uint32_t max_attempts = 5;
  /// In [0, 1]: each delay d becomes d * (1 - jitter * u), u uniform in [0, 1). 0: no jitter;
  /// 1: "full jitter" (uniform in [0, d)). Spreads out clients that failed together.
  double jitter = 0.0;
  /// The seed of the jitter's random generator; 0 draws one from std::random_device.
  std::uint64_t jitter_seed = 0;
  /// Which exceptions are retried; empty: every exception. Called with the exception thrown.
  std::function<bool(const std::exception_ptr&)> retry_on = {};
  /// Called before each backoff sleep with the failed attempt's number (1-based), its
  /// exception and the delay about to be slept. Empty: nothing.
  std::function<void(std::uint32_t, const std::exception_ptr&, std::chrono::nanoseconds)> on_retry =
      {};
};

namespace detail {
template <class E>
bool holds(const std::exception_ptr& ep) {
  try {
    std::rethrow_exception(ep);
  } catch (const E&) {
    return true;
  } catch (...) {
    return false;
  }
}

// What retry() returns: f(std::stop_token) if f takes a stop token, else f().
template <class F, bool = std::is_invocable_v<F&, std::stop_token>>
struct retry_result {
  using type = std::invoke_result_t<F&, std::stop_token>;
};
template <class F>
struct retry_result<F, false> {
  using type = std::invoke_result_t<F&>;
};
}  // namespace detail

/// A retry_on predicate that accepts exceptions of the types E... (or derived from them) only.
template <class... E>
std::function<bool(const std::exception_ptr&)> retry_if() {
  static_assert(sizeof...(E) > 0, "retry_if needs at least one exception type");
  return [](const std::exception_ptr& ep) { return (detail::holds<E>(ep) || ...); };
}

namespace detail {

inline void check_policy(const retry_policy& p) {
  auto bad = [](const std::string& what) {
    throw std::invalid_argument("spindle::retry: " + what);
  };
  if (p.max_attempts == 0) bad("max_attempts must be >= 1, got 0");
  if (!std::isfinite(p.multiplier) || p.multiplier < 1.0)
    bad("multiplier must be finite and >= 1, got " + std::to_string(p.multiplier));
  if (p.initial.count() < 0)
    bad("initial must be >= 0, got " + std::to_string(p.initial.count()) + "ns");
  if (p.max_delay.count() < 0)
    bad("max_delay must be >= 0, got " + std::to_string(p.max_delay.count()) + "ns");
  if (!(p.jitter >= 0.0 && p.jitter <= 1.0))
    bad("jitter must be in [0, 1], got " + std::to_string(p.jitter));
}

}  // namespace detail

/// The delay before retry number `k` (k >= 1), without jitter:
/// min(max_delay, initial * multiplier^(k-1)). Never overflows. Never allocates.
inline std::chrono::nanoseconds backoff_delay(const retry_policy& p, std::uint32_t k) {
  // initial 0 is 0 for every k: 0 * multiplier^(k-1) would be 0 * inf = NaN once the power
  // overflows (k ~ 1025 for a multiplier of 2). Attacked by "backoff_delay with initial 0
  // stays 0 however many retries (multiplier^k overflows)".
  if (k == 0 || p.initial.count() == 0) return std::chrono::nanoseconds::zero();
  const double d =
      static_cast<double>(p.initial.count()) * std::pow(p.multiplier, static_cast<double>(k - 1));
  const auto cap = static_cast<double>(p.max_delay.count());
  if (!(d < cap)) return p.max_delay;  // also catches inf
  return std::chrono::nanoseconds(static_cast<std::int64_t>(d));
}

/// Calls `f` (as f(), or f(std::stop_token) if it takes one) until it returns, and returns its
/// result. When f throws an exception that policy.retry_on accepts, sleeps the backoff delay on
/// the deadline's clock and calls it again, at most policy.max_attempts calls in all.
/// Rethrows the last exception when: retry_on rejects it; the attempts are used up; the next
/// attempt would start after `dl`; or a stop is requested on `st` (checked before each sleep,
/// and the sleep ends promptly on the request).
/// Throws std::invalid_argument (before calling f) if the policy is malformed.
/// Allocates nothing itself (the policy's std::function members are the caller's).
/// Thread-safe in that separate calls share nothing; f runs on the calling thread.
template <clock Clock, class F>
auto retry(const retry_policy& policy, F&& f, const deadline<Clock>& dl, std::stop_token st = {}) ->
    typename detail::retry_result<std::remove_reference_t<F>>::type {
  detail::check_policy(policy);
  std::uint64_t seed = policy.jitter_seed;
  if (policy.jitter > 0 && seed == 0) seed = std::random_device{}();
  std::mt19937_64 rng(seed);  // used only when jitter > 0
  std::uniform_real_distribution<double> unit(0.0, 1.0);

  for (std::uint32_t attempt = 1;; ++attempt) {
    std::exception_ptr error;
    try {
      if constexpr (std::is_invocable_v<F&, std::stop_token>) {
        return f(st);
      } else {
        return f();
      }
    } catch (...) {
      error = std::current_exception();
    }
    if (attempt >= policy.max_attempts) std::rethrow_exception(error);
    if (policy.retry_on && !policy.retry_on(error)) std::rethrow_exception(error);
    if (st.stop_requested()) std::rethrow_exception(error);

    auto delay = backoff_delay(policy, attempt);
    if (policy.jitter > 0) {
      // Only a shorter delay is taken: near nanoseconds::max() the product rounds up to 2^63,
      // which does not fit in int64 (attacked by "jitter on a huge delay never makes it
      // negative or longer than the delay").
      const double shorter = static_cast<double>(delay.count()) * (1.0 - policy.jitter * unit(rng));
      if (shorter < static_cast<double>(delay.count()))
        delay = std::chrono::nanoseconds(static_cast<std::int64_t>(shorter));
    }
    const auto now = dl.clock().now();
    const auto wait = detail::saturating_ceil<typename Clock::duration>(delay);
    if (!dl.is_never() && (now >= dl.when() || wait > dl.when() - now))
      std::rethrow_exception(error);  // the next attempt would start past the deadline
    if (policy.on_retry) policy.on_retry(attempt, error, delay);
    const auto wake = detail::saturating_add(now, wait);  // the one saturating computation
    if (sleep_until(dl, wake, st) != status::ok) std::rethrow_exception(error);
  }
}

/// retry() on the steady clock with no deadline, honouring `st`.
template <class F>
auto retry(const retry_policy& policy, F&& f, std::stop_token st = {}) {
  return retry(policy, std::forward<F>(f), deadline<>::never(), std::move(st));
}

}  // namespace spindle
