// spindle/rate_limit.hpp - rate limiters and a concurrency limiter.
//
// Defines:
//   rate_limiter<L>                the concept: bool try_acquire(n = 1); void acquire(n = 1).
//   token_bucket<Clock>            starts full, refills at `rate` per second up to `burst`;
//                                  lock-free (one atomic updated by compare-and-swap).
//   sliding_window_log<Clock>      exact: never more than `limit` admissions in any window of
//                                  length `window`; admits whenever fewer were admitted in the
//                                  trailing window. O(limit) memory at most.
//   sliding_window_counter<Clock>  approximate, O(1) memory: windows aligned to the clock's epoch,
//                                  the previous window's count weighted by its overlap.
//   concurrency_limiter            caps concurrent calls with RAII permits (a semaphore).
//
// Every rate limiter has try_acquire(n) (never blocks), acquire(n) (blocks until admitted),
// acquire(n, stop_token) -> ok | cancelled, acquire_for(n, d) / acquire_until(n, t) -> ok |
// timeout (a timed acquire returns timeout at once when the tokens cannot come by then), and
// retry_after(n): how long until n would be admitted if nobody else took any (a Retry-After
// figure). Time is read from the Clock policy: manual_clock makes every test deterministic.
//
// Fairness: blocked acquirers sleep until their tokens are due, then try again; they are not
// queued, so a stream of small try_acquire() calls may keep overtaking a large acquire(n).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>  // std::isfinite
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>  // the largest wait a duration holds
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "clock.hpp"
#include "detail/config.hpp"
#include "detail/wait.hpp"
#include "status.hpp"

namespace spindle {

/// What every rate limiter offers (in-process and Redis-backed alike).
template <class L>
concept rate_limiter = requires(L& l, std::uint64_t n) {
  { l.try_acquire(n) } -> std::same_as<bool>;
  { l.try_acquire() } -> std::same_as<bool>;
  l.acquire(n);
  l.acquire();
};

namespace detail {

[[noreturn]] inline void throw_invalid(const char* fn, const std::string& what) {
  throw std::invalid_argument(std::string("spindle::") + fn + ": " + what);
}

/// One attempt of a blocked acquirer: admitted, or refused at clock reading `now` with `wait`
/// until the tokens would be there if nobody else took any.
template <class Clock>
struct attempt {
  bool admitted;
  typename Clock::time_point now;
  typename Clock::duration wait;
};

/// The blocking loop every rate limiter shares. `try_once()` returns an attempt<Clock>; a
/// refusal and its wait come from one reading of the limiter's state and of the clock. Sleeps
/// on the clock (never spins); a deadline of time_point::max() never passes.
template <class Clock, class Try>
status acquire_loop(const Clock& clock, typename Clock::time_point until, const std::stop_token& st,
                    Try try_once) {
  for (;;) {
    const attempt<Clock> a = try_once();
    if (a.admitted) return status::ok;
    if (st.stop_requested()) return status::cancelled;
    if (a.wait <= Clock::duration::zero()) continue;  // tokens came in between; try again
    // Cannot come in time. A deadline of time_point::max() is no deadline: a wait that
    // saturated to "never" (a vanishing rate, a window near duration::max()) is longer than
    // the time left before it, and returning timeout there made acquire(n) return having taken
    // nothing. Attacked by "acquire without a time limit sleeps when the wait saturates to
    // never, instead of returning as if admitted".
    if (until != Clock::time_point::max() && (until < a.now || a.wait > until - a.now))
      return status::timeout;
    if (!sleep_until(clock, saturating_add(a.now, a.wait), st)) return status::cancelled;
  }
}

/// Throws std::invalid_argument unless n <= most (a request that could never be satisfied).
inline void check_count(const char* fn, std::uint64_t n, std::uint64_t most, const char* what) {
  if (n > most)
    throw_invalid(fn, "n = " + std::to_string(n) + " exceeds " + what + " = " +
                          std::to_string(most) + " (it could never be satisfied)");
}

/// The blocking forms every rate limiter offers, written once on top of Derived's
/// acquire_until(n, until, stop_token) and its clock_ (Derived befriends this base).
template <class Derived, class Clock>
class limiter_waits {
 public:
  /// Takes `n`, waiting until they can be had; sleeps on the clock while waiting (never spins).
  /// Throws std::invalid_argument if n exceeds the limiter's capacity. Thread-safe.
  void acquire(std::uint64_t n = 1) {
    (void)self().acquire_until(n, Clock::time_point::max(), {});
  }

  /// As acquire(n); returns ok, or cancelled if a stop is requested on `st` first (nothing is
  /// taken then). Wakes promptly on the stop request.
  status acquire(std::uint64_t n, std::stop_token st) {
    return self().acquire_until(n, Clock::time_point::max(), st);
  }

  /// As acquire(n), waiting at most `d`: ok | timeout | cancelled. Returns timeout at once when
  /// the room cannot come within `d` even if nobody else takes any. Saturates: duration::max()
  /// of any duration type (and deadline<>::never().remaining()) waits without a time limit.
  template <class Rep, class Period>
  status acquire_for(std::uint64_t n, std::chrono::duration<Rep, Period> d,
                     std::stop_token st = {}) {
    return self().acquire_until(n, saturating_add(self().clock_.now(), d), st);
  }

 protected:
  limiter_waits() = default;
  ~limiter_waits() = default;

  /// The one acquire path of the limiters that decide under their mutex (the two sliding
  /// windows): the clock is read, the request admitted or its wait computed, all in one
  /// critical section, so the wait is computed for the very state and time the refusal saw.
  /// (Two critical sections let a stale clock reading roll a window back after another thread
  /// had rolled it forward, wiping its admissions: the hostile tests "... never admits more than
  /// limit ... while a timed acquire races ..." attack this.) Derived provides mu_, clock_,
  /// admit_locked(n, now) and wait_locked(n, now).
  status locked_acquire_until(std::uint64_t n, typename Clock::time_point until,
                              const std::stop_token& st) {
    Derived& d = self();
    return acquire_loop(d.clock_, until, st, [&] {
      std::lock_guard lock(d.mu_);
      const auto now = d.clock_.now();
      if (d.admit_locked(n, now)) return attempt<Clock>{true, now, {}};
      return attempt<Clock>{false, now, d.wait_locked(n, now)};
    });
  }

 private:
  Derived& self() noexcept { return static_cast<Derived&>(*this); }
};

}  // namespace detail

/// A token bucket: holds up to `burst` tokens, starts full, gains `rate` tokens per second.
/// try_acquire(n) takes n tokens if there are n.
///
/// Guarantees: over any interval of length T, at most burst + rate * T tokens are taken (the
/// rate as held in fixed point, below). Each successful take is one compare-and-swap on a single
/// atomic (the level at which the bucket would be empty), so concurrent callers never take more
/// than the bucket holds, and a refusal is correct at the moment the caller read the clock (the
/// state is loaded before the clock is read). No mutex; never allocates after construction.
/// Visibility: taking a token orders no other memory (a permission, not a message).
///
/// Arithmetic is integer and exact: one token is 2^shift units, and the units generated by
/// time t are G(t) = floor(ns(t) * num / den) (ns since construction), where num / den is the
/// rate in units per nanosecond, held to 61 significant bits for rates from 1 to 4e18 tokens/s
/// with any burst up to 2^30, and to at least 45 for rates >= 1e-3 with bursts up to 2^40.
/// State and G are kept modulo 2^64: a bucket taken from at least once every 2^64 units stays
/// exact for the life of the process at any rate (a unit is a token above ~5e8 tokens/s; 2^64
/// units are over 1000 years up to 5e8/s, 58 years at 1e10/s, 213 days at 1e12/s, 4.6 s at
/// 4e18/s). A reading of the state taken before the clock is never in debt on a monotonic
/// clock, so one that looks in debt has wrapped (idle over 2^63 units) and is full. After
/// longer idleness the bucket reads as holding min(burst, idle units mod 2^64): full, except
/// just past a multiple of 2^64 units, where it may look partly full (it refills within
/// burst / rate); never in debt. The clock must be monotonic (steady_clock, manual_clock): on
/// one that steps back (system_clock) the bucket reads as full after a step back. A rate too
/// small to represent with its burst (below about
/// 1e-29 tokens/s with burst 1) never refills: waits for it saturate ("never").
template <clock Clock = std::chrono::steady_clock>
class token_bucket : public detail::limiter_waits<token_bucket<Clock>, Clock> {
  friend detail::limiter_waits<token_bucket<Clock>, Clock>;

 public:
  using clock_type = Clock;
  using duration = typename Clock::duration;
  using time_point = typename Clock::time_point;

  /// Whether reading the clock never throws (then neither does try_acquire()).
  static constexpr bool nothrow_clock = noexcept(std::declval<const Clock&>().now());

  /// A full bucket of `burst` tokens refilled at `rate_per_second`.
  /// Throws std::invalid_argument if the rate is not finite, <= 0 or above 4e18, or if burst is
  /// 0 or above 2^61. Allocates nothing (a manual_clock copy shares its state).
  token_bucket(double rate_per_second, std::uint64_t burst, Clock clock = {})
      : rate_(check_rate(rate_per_second)),
        burst_(check_burst(burst)),
        shift_(pick_shift(rate_, burst_)),
        den_shift_(pick_den_shift(std::ldexp(rate_, shift_))),
        num_(static_cast<std::uint64_t>(std::llround(std::ldexp(rate_, shift_ + den_shift_)))),
        den_(std::uint64_t{1000000000} << den_shift_),
        burst_units_(burst_ << shift_),
        clock_(std::move(clock)),
        origin_(clock_.now()) {
    // relaxed: construction; whoever shares the bucket with other threads publishes it.
    zero_.store(std::uint64_t{0} - burst_units_, std::memory_order_relaxed);  // full
  }

  token_bucket(const token_bucket&) = delete;
  token_bucket& operator=(const token_bucket&) = delete;

  /// Takes `n` tokens if the bucket holds n; returns whether it did. Always false if n > burst;
  /// always true if n == 0. Never blocks, never allocates. Thread-safe (lock-free).
  bool try_acquire(std::uint64_t n = 1) noexcept(nothrow_clock) {
    if (n == 0) return true;
    if (n > burst_) return false;
    return take(n << shift_);
  }

  // acquire(n), acquire(n, stop_token) and acquire_for(n, d, stop_token) come from
  // detail::limiter_waits, on top of acquire_until().

  /// As acquire(n), waiting until `until` at the latest: ok | timeout | cancelled.
  /// Throws std::invalid_argument if n > burst.
  status acquire_until(std::uint64_t n, time_point until, std::stop_token st = {}) {
    check_n("token_bucket::acquire", n);
    if (n == 0) return status::ok;
    const std::uint64_t cost = n << shift_;
    return detail::acquire_loop(clock_, until, st, [&] {
      if (take(cost)) return detail::attempt<Clock>{true, {}, {}};
      const auto [now, wait] = wait_for_cost(cost);
      return detail::attempt<Clock>{false, now, wait};
    });
  }

  /// The tokens in the bucket now (fractional; capped at burst). Approximate under concurrency.
  /// Never blocks. Thread-safe.
  double available() const noexcept(nothrow_clock) {
    // acquire: the state before the clock, as in take(): a level below zero is a wrap (full).
    const std::uint64_t zero = zero_.load(std::memory_order_acquire);
    const std::uint64_t level = units_at(clock_.now()) - zero;
    return std::ldexp(static_cast<double>(level > burst_units_ ? burst_units_ : level), -shift_);
  }

  /// How long until `n` tokens will be in the bucket if nobody else takes any: zero if they are
  /// there now, duration::max() if never (a rate too small to represent). A Retry-After figure.
  /// Throws std::invalid_argument if n > burst. Thread-safe.
  duration retry_after(std::uint64_t n = 1) const {
    check_n("token_bucket::retry_after", n);
    if (n == 0) return duration::zero();
    return wait_for_cost(n << shift_).second;
  }

  /// Tokens per second (as given to the constructor).
  double rate() const noexcept { return rate_; }
  /// The capacity.
  std::uint64_t burst() const noexcept { return burst_; }
  /// The clock the bucket reads.
  const Clock& clock() const noexcept { return clock_; }

 private:
  __extension__ using u128 = unsigned __int128;  // ns * num overflows 64 bits

  static double check_rate(double r) {
    if (!std::isfinite(r) || r <= 0 || r > 4e18)
      detail::throw_invalid("token_bucket", "rate_per_second must be finite, > 0 and <= 4e18, got " +
                                                std::to_string(r));
    return r;
  }
  static std::uint64_t check_burst(std::uint64_t b) {
    if (b == 0) detail::throw_invalid("token_bucket", "burst must be >= 1, got 0");
    if (b > (std::uint64_t{1} << 61))
      detail::throw_invalid("token_bucket", "burst must be <= 2^61, got " + std::to_string(b));
    return b;
  }
  // Units per token: as many as make rate * 2^shift about 2^28 units per second (so that G
  // wraps no sooner than in centuries), while burst * 2^shift stays below 2^62.
  static int pick_shift(double rate, std::uint64_t burst) {
    int shift = 0;
    while (shift < 62 && std::ldexp(rate, shift + 1) < 0x1p29 &&
           (burst << (shift + 1)) >> (shift + 1) == burst &&
           (burst << (shift + 1)) <= (std::uint64_t{1} << 62))
      ++shift;
    return shift;
  }
  // num = units_per_second * 2^den_shift, den = 1e9 * 2^den_shift (< 2^64, so den_shift <= 34),
  // with num as large as fits below 2^62: the rate's precision.
  static int pick_den_shift(double units_per_second) {
    int m = 34;
    while (m > 0 && std::ldexp(units_per_second, m) >= 0x1p62) --m;
    return m;
  }
  void check_n(const char* fn, std::uint64_t n) const {
    detail::check_count(fn, n, burst_, "burst");
  }

  // G(t) modulo 2^64: the units generated since origin_ (wrapping is harmless, only differences
  // of nearby values are used).
  std::uint64_t units_at(time_point t) const noexcept {
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(t - origin_).count();
    if (ns <= 0) return 0;
    return static_cast<std::uint64_t>(static_cast<u128>(ns) * num_ / den_);
  }

  // Where the empty level goes after taking `cost` at `now`: a bucket fuller than burst is
  // capped first. Differences are taken modulo 2^64. `fresh`: `now` was read after `zero` was
  // loaded; then the level cannot be below zero on a monotonic clock (the take that wrote
  // `zero` read the clock first and left a level >= 0), so a level that looks below zero has
  // wrapped past 2^63 units untouched, and the bucket is full (one unsigned compare covers both
  // cases). A stale `now` (after a failed CAS) may be legitimately behind: read as signed.
  // Invariant: attacked by "token_bucket at extreme rates is full after sitting idle past 2^63
  // units, not empty".
  std::uint64_t after_take(std::uint64_t zero, std::uint64_t now, std::uint64_t cost,
                           bool fresh) const {
    const std::uint64_t level = now - zero;
    const bool full = fresh ? level > burst_units_
                            : static_cast<std::int64_t>(level) >
                                  static_cast<std::int64_t>(burst_units_);
    return (full ? now - burst_units_ : zero) + cost;
  }

  // Takes `cost` units now. The clock is read after the state is loaded, so every take that
  // `zero` reflects read the clock no later than we did: a refusal is right at the time we read
  // it, even if this thread was preempted in between. After a failed CAS (`zero` reloaded,
  // perhaps newer than our reading) a take still goes ahead on the old reading (an earlier time
  // only means fewer tokens), but a refusal re-reads the clock first.
  bool take(std::uint64_t cost) noexcept(nothrow_clock) {
    // acquire: pairs with the release of the CAS below; the writer's clock read happens before
    // ours, so on a monotonic clock its `now` is <= ours.
    std::uint64_t zero = zero_.load(std::memory_order_acquire);
    std::uint64_t now = units_at(clock_.now());
    bool fresh = true;  // `now` was read after `zero` was loaded
    for (;;) {
      const std::uint64_t next = after_take(zero, now, cost, fresh);
      if (static_cast<std::int64_t>(next - now) > 0) {  // not enough tokens: no write at all
        if (fresh) return false;
        now = units_at(clock_.now());
        fresh = true;
        continue;
      }
      // acq_rel on success: release publishes that our clock read came first (partner: the
      // acquire loads here); acquire on failure: the reloaded `zero` is read like the first.
      if (zero_.compare_exchange_weak(zero, next, std::memory_order_acq_rel,
                                      std::memory_order_acquire))
        return true;
      fresh = false;
    }
  }

  // The clock reading t, and how long from t until `cost` units are there: exact, integer
  // throughout, saturating at duration::max() (never) instead of overflowing.
  std::pair<time_point, duration> wait_for_cost(std::uint64_t cost) const
      noexcept(nothrow_clock) {
    // acquire: the state before the clock, as in take() (a snapshot; the caller re-checks with
    // take()).
    const std::uint64_t zero = zero_.load(std::memory_order_acquire);
    const time_point t = clock_.now();
    const auto ns = std::max<std::int64_t>(
        0, std::chrono::duration_cast<std::chrono::nanoseconds>(t - origin_).count());
    const u128 scaled = static_cast<u128>(ns) * num_;  // = G(t) * den_ + rem
    const auto now = static_cast<std::uint64_t>(scaled / den_);
    const auto rem = static_cast<std::uint64_t>(scaled % den_);
    const std::uint64_t due = after_take(zero, now, cost, true);
    const auto short_by = static_cast<std::int64_t>(due - now);
    if (short_by <= 0) return {t, duration::zero()};
    if (num_ == 0) return {t, duration::max()};
    // The least w with (ns + w) * num_ >= (G(t) + short_by) * den_.
    const u128 w = (static_cast<u128>(short_by) * den_ - rem + num_ - 1) / num_;
    constexpr auto most = static_cast<u128>(std::chrono::nanoseconds::max().count());
    const auto wait = detail::saturating_ceil<duration>(
        std::chrono::nanoseconds(static_cast<std::int64_t>(w >= most ? most : w)));
    return {t, std::max(wait, duration(1))};
  }

  const double rate_;
  const std::uint64_t burst_;
  const int shift_;               // one token is 2^shift_ units
  const int den_shift_;           // den_ = 1e9 << den_shift_
  const std::uint64_t num_;       // units per ns = num_ / den_
  const std::uint64_t den_;
  const std::uint64_t burst_units_;
  [[no_unique_address]] const Clock clock_;
  const time_point origin_;
  // The level (in units, modulo 2^64) at which the bucket was or will be empty: the tokens at
  // time t are min(burst, (G(t) - zero_) / 2^shift_). On its own cache line: it is the only
  // written word.
  alignas(detail::false_sharing_range) std::atomic<std::uint64_t> zero_{0};
  char pad_[detail::false_sharing_range - sizeof(std::atomic<std::uint64_t>)] = {};

  static_assert(std::atomic<std::uint64_t>::is_always_lock_free,
                "token_bucket relies on a lock-free CAS");
};

/// An exact sliding-window limiter: admits n at time t only if the admissions in (t - window, t]
/// plus n stay within `limit`, so no window of length `window` (half-open) ever holds more than
/// `limit`, and a request is admitted whenever the trailing window has room for it.
///
/// Keeps a log of (time, count) entries, at most `limit` of them; memory grows to the peak
/// number of distinct admission times in one window (Allocates only while growing). A mutex
/// guards the log; the clock is read under it so that the log stays in time order.
template <clock Clock = std::chrono::steady_clock>
class sliding_window_log : public detail::limiter_waits<sliding_window_log<Clock>, Clock> {
  friend detail::limiter_waits<sliding_window_log<Clock>, Clock>;

 public:
  using clock_type = Clock;
  using duration = typename Clock::duration;
  using time_point = typename Clock::time_point;

  /// At most `limit` admissions in any window of length `window`.
  /// Throws std::invalid_argument if limit == 0 or window <= 0.
  sliding_window_log(std::uint64_t limit, duration window, Clock clock = {})
      : limit_(limit), window_(window), clock_(std::move(clock)) {
    if (limit == 0) detail::throw_invalid("sliding_window_log", "limit must be >= 1, got 0");
    if (window <= duration::zero())
      detail::throw_invalid("sliding_window_log",
                            "window must be > 0, got " + std::to_string(window.count()) + " ticks");
  }

  sliding_window_log(const sliding_window_log&) = delete;
  sliding_window_log& operator=(const sliding_window_log&) = delete;

  /// Admits `n` now if the trailing window has room for n; returns whether it did. Always false
  /// if n > limit; true if n == 0. Never blocks (beyond a short internal lock). Thread-safe.
  /// Allocates only when the log grows past its largest size so far.
  bool try_acquire(std::uint64_t n = 1) {
    if (n == 0) return true;
    if (n > limit_) return false;
    std::lock_guard lock(mu_);
    return admit_locked(n, clock_.now());
  }

  // acquire(n), acquire(n, stop_token) and acquire_for(n, d, stop_token) come from
  // detail::limiter_waits, on top of acquire_until().

  /// As acquire(n), waiting until `until` at the latest: ok | timeout | cancelled.
  status acquire_until(std::uint64_t n, time_point until, std::stop_token st = {}) {
    check_n("sliding_window_log::acquire", n);
    if (n == 0) return status::ok;
    return this->locked_acquire_until(n, until, st);
  }

  /// How many more could be admitted now. Thread-safe.
  std::uint64_t available() const {
    std::lock_guard lock(mu_);
    expire_locked(clock_.now());
    return limit_ - total_;
  }

  /// How long until `n` would be admitted if nobody else is. Throws std::invalid_argument if
  /// n > limit. Thread-safe.
  duration retry_after(std::uint64_t n = 1) const {
    check_n("sliding_window_log::retry_after", n);
    if (n == 0) return duration::zero();
    std::lock_guard lock(mu_);
    return wait_locked(n, clock_.now());
  }

  std::uint64_t limit() const noexcept { return limit_; }
  duration window() const noexcept { return window_; }

 private:
  struct entry {
    time_point at;
    std::uint64_t count;
  };

  void check_n(const char* fn, std::uint64_t n) const {
    detail::check_count(fn, n, limit_, "limit");
  }

  entry& at_(std::size_t i) const { return log_[(head_ + i) % log_.size()]; }

  // An entry at time s counts at time t while s > t - window, i.e. until t >= s + window.
  void expire_locked(time_point now) const {
    while (size_ > 0 && now - at_(0).at >= window_) {
      total_ -= at_(0).count;
      head_ = (head_ + 1) % log_.size();
      --size_;
    }
  }

  bool admit_locked(std::uint64_t n, time_point now) {
    // Never older than the newest entry: the log stays in time order (under mu_ with a
    // monotonic clock the reading is never older anyway).
    if (size_ > 0 && now < at_(size_ - 1).at) now = at_(size_ - 1).at;
    expire_locked(now);
    if (total_ + n > limit_) return false;
    if (size_ > 0 && at_(size_ - 1).at == now) {
      at_(size_ - 1).count += n;
    } else {
      if (size_ == log_.size()) grow_locked();
      log_[(head_ + size_) % log_.size()] = entry{now, n};
      ++size_;
    }
    total_ += n;
    return true;
  }

  duration wait_locked(std::uint64_t n, time_point now) const {
    expire_locked(now);
    if (total_ + n <= limit_) return duration::zero();
    std::uint64_t must_leave = total_ + n - limit_, left = 0;
    for (std::size_t i = 0; i < size_; ++i) {
      left += at_(i).count;
      // window - (now - at), not at + window - now: no overflow for a window near max()
      // (expire_locked left now - at < window).
      if (left >= must_leave) return window_ - (now - at_(i).at);
    }
    return window_;  // unreachable: n <= limit means the whole log can leave
  }

  // Doubles the ring (at most `limit` entries are ever live: each counts at least one).
  void grow_locked() {
    std::size_t cap = log_.empty() ? 16 : log_.size() * 2;
    if (cap > limit_) cap = static_cast<std::size_t>(limit_);
    if (cap <= size_) cap = size_ + 1;
    std::vector<entry> bigger(cap);
    for (std::size_t i = 0; i < size_; ++i) bigger[i] = at_(i);
    log_.swap(bigger);
    head_ = 0;
  }

  const std::uint64_t limit_;
  const duration window_;
  [[no_unique_address]] const Clock clock_;
  // Mutable: expiring old entries is bookkeeping that const readers (available()) do too.
  mutable std::mutex mu_;
  mutable std::vector<entry> log_;   // guarded by mu_: a ring, oldest at head_
  mutable std::size_t head_ = 0;     // guarded by mu_
  mutable std::size_t size_ = 0;     // guarded by mu_
  mutable std::uint64_t total_ = 0;  // guarded by mu_: the sum of the live entries' counts
};

/// An approximate sliding-window limiter in O(1) memory. Time is cut into windows of length
/// `window` aligned to the clock's epoch; at fraction f of the current window, the estimate of
/// the trailing window is  current + previous * (1 - f)  (the previous window's admissions
/// assumed spread evenly), and n is admitted if estimate + n <= limit. Integer arithmetic, so
/// the decision is exact for the estimate.
///
/// Error bound: each aligned window admits at most `limit`, so any window of length `window`
/// holds at most 2 * limit (reached only when the previous window's admissions all fell at its
/// very end). It admits n whenever previous + current + n <= limit, and it is exact when the
/// previous window's traffic was even. Use sliding_window_log for an exact bound.
template <clock Clock = std::chrono::steady_clock>
class sliding_window_counter : public detail::limiter_waits<sliding_window_counter<Clock>, Clock> {
  friend detail::limiter_waits<sliding_window_counter<Clock>, Clock>;

 public:
  using clock_type = Clock;
  using duration = typename Clock::duration;
  using time_point = typename Clock::time_point;

  /// About `limit` admissions per window of length `window` (see the class comment).
  /// Throws std::invalid_argument if limit == 0 or window <= 0. Never allocates.
  sliding_window_counter(std::uint64_t limit, duration window, Clock clock = {})
      : limit_(limit), window_(window), clock_(std::move(clock)) {
    if (limit == 0) detail::throw_invalid("sliding_window_counter", "limit must be >= 1, got 0");
    if (window <= duration::zero())
      detail::throw_invalid("sliding_window_counter",
                            "window must be > 0, got " + std::to_string(window.count()) + " ticks");
  }

  sliding_window_counter(const sliding_window_counter&) = delete;
  sliding_window_counter& operator=(const sliding_window_counter&) = delete;

  /// Admits `n` now if the estimate has room; returns whether it did. Always false if
  /// n > limit; true if n == 0. Never blocks (beyond a short internal lock); never allocates.
  /// Thread-safe.
  bool try_acquire(std::uint64_t n = 1) {
    if (n == 0) return true;
    if (n > limit_) return false;
    std::lock_guard lock(mu_);
    return admit_locked(n, clock_.now());
  }

  // acquire(n), acquire(n, stop_token) and acquire_for(n, d, stop_token) come from
  // detail::limiter_waits, on top of acquire_until().

  /// As acquire(n), waiting until `until` at the latest: ok | timeout | cancelled.
  status acquire_until(std::uint64_t n, time_point until, std::stop_token st = {}) {
    check_n("sliding_window_counter::acquire", n);
    if (n == 0) return status::ok;
    return this->locked_acquire_until(n, until, st);
  }

  /// The estimated room now (limit minus the weighted estimate, rounded down). Approximate by
  /// design. Thread-safe.
  std::uint64_t available() const {
    std::lock_guard lock(mu_);
    const auto now = roll_locked(clock_.now());
    auto used = weighted_locked(now);  // in limit * window units
    auto cap = static_cast<u128>(limit_) * ticks(window_);
    return used >= cap ? 0 : static_cast<std::uint64_t>((cap - used) / ticks(window_));
  }

  /// How long until `n` would be admitted if nobody else is. Throws std::invalid_argument if
  /// n > limit. Thread-safe.
  duration retry_after(std::uint64_t n = 1) const {
    check_n("sliding_window_counter::retry_after", n);
    if (n == 0) return duration::zero();
    std::lock_guard lock(mu_);
    return wait_locked(n, clock_.now());
  }

  std::uint64_t limit() const noexcept { return limit_; }
  duration window() const noexcept { return window_; }

 private:
  __extension__ using u128 = unsigned __int128;  // counts times window ticks overflow 64 bits

  static u128 ticks(duration d) { return static_cast<u128>(d.count()); }

  void check_n(const char* fn, std::uint64_t n) const {
    detail::check_count(fn, n, limit_, "limit");
  }

  std::int64_t index_of(time_point t) const {
    auto c = static_cast<std::int64_t>(t.time_since_epoch().count());
    auto w = static_cast<std::int64_t>(window_.count());
    return c >= 0 ? c / w : -((-c + w - 1) / w);  // floor division
  }

  time_point start_of(std::int64_t index) const {
    return time_point(duration(static_cast<typename duration::rep>(index * window_.count())));
  }

  // Moves to the window of `now`, never back: returns `now`, or the start of the current window
  // if `now` is older (a reading taken before another thread rolled forward must not wipe the
  // newer window's admissions; under mu_ with a monotonic clock it does not happen).
  time_point roll_locked(time_point now) const {
    auto idx = index_of(now);
    if (idx < index_) return start_of(index_);
    if (idx == index_) return now;
    prev_ = idx == index_ + 1 ? curr_ : 0;
    curr_ = 0;
    index_ = idx;
    return now;
  }

  // (current + previous * (1 - f)) * window, in ticks: exact.
  u128 weighted_locked(time_point now) const {
    auto into = static_cast<u128>((now - start_of(index_)).count());
    return static_cast<u128>(curr_) * ticks(window_) +
           static_cast<u128>(prev_) * (ticks(window_) - into);
  }

  bool admit_locked(std::uint64_t n, time_point now) {
    now = roll_locked(now);
    if (weighted_locked(now) + static_cast<u128>(n) * ticks(window_) >
        static_cast<u128>(limit_) * ticks(window_))
      return false;
    curr_ += n;
    return true;
  }

  // The earliest `into` (ticks into a window) with count * (W - into) <= room * W, or W if none
  // in this window.
  static u128 earliest(std::uint64_t count, std::uint64_t room, u128 w) {
    if (count == 0) return 0;
    u128 allowed = static_cast<u128>(room) * w / count;  // W - into must not exceed this
    return allowed >= w ? 0 : w - allowed;
  }

  duration wait_locked(std::uint64_t n, time_point now) const {
    now = roll_locked(now);
    const u128 w = ticks(window_);
    const auto into = static_cast<u128>((now - start_of(index_)).count());
    // In this window: prev_ weighted, curr_ fixed.
    if (curr_ + n <= limit_) {
      u128 e = earliest(prev_, limit_ - n - curr_, w);
      if (e < w)
        return e <= into ? duration::zero()
                         : duration(static_cast<typename duration::rep>(e - into));
    }
    // The next window: curr_ becomes the weighted previous one.
    u128 e = earliest(curr_, limit_ - n, w);
    if (e >= w) e = w;  // the one after: both counts gone
    // Up to two windows: saturates at duration::max() ("never" to the caller) for windows
    // longer than half of it; a plain cast turned it negative, and acquire re-tried at once,
    // forever. Attacked by "sliding windows as long as duration::max(): ...".
    const u128 wait = w - into + e;
    constexpr auto most = static_cast<u128>(std::numeric_limits<typename duration::rep>::max());
    return duration(static_cast<typename duration::rep>(wait < most ? wait : most));
  }

  const std::uint64_t limit_;
  const duration window_;
  [[no_unique_address]] const Clock clock_;
  // Mutable: rolling to the current window is bookkeeping that const readers do too.
  mutable std::mutex mu_;
  mutable std::int64_t index_ = 0;  // guarded by mu_: the current window's number since the epoch
  mutable std::uint64_t curr_ = 0;  // guarded by mu_: admitted in window index_
  mutable std::uint64_t prev_ = 0;  // guarded by mu_: admitted in window index_ - 1
};

/// Caps the number of calls running at once: acquire() returns a permit, and the call holds it
/// while it runs; at most `n` permits exist at a time. A counting semaphore with RAII.
///
/// Visibility: everything a thread did before its permit was released is visible to the thread
/// whose acquire() takes that permit next. Waiters spin briefly (detail::spin_until), then sleep
/// on a wake_one_event_count (futex): never a busy wait while idle. Not fair: a newcomer may take
/// a permit before a sleeper wakes.
///
/// Lifetime: the limiter must outlive its permits.
class concurrency_limiter {
 public:
  /// A held slot; released by its destructor or release(). Move-only.
  class permit {
   public:
    permit() noexcept = default;
    permit(permit&& o) noexcept : owner_(std::exchange(o.owner_, nullptr)) {}
    permit& operator=(permit&& o) noexcept {
      if (this != &o) {
        release();
        owner_ = std::exchange(o.owner_, nullptr);
      }
      return *this;
    }
    permit(const permit&) = delete;
    permit& operator=(const permit&) = delete;
    ~permit() { release(); }

    /// Gives the slot back now (idempotent). Never blocks. Never allocates.
    void release() noexcept {
      if (owner_ != nullptr) std::exchange(owner_, nullptr)->release_one();
    }
    /// Whether this permit holds a slot.
    bool held() const noexcept { return owner_ != nullptr; }
    explicit operator bool() const noexcept { return held(); }

   private:
    friend class concurrency_limiter;
    explicit permit(concurrency_limiter* owner) noexcept : owner_(owner) {}
    concurrency_limiter* owner_ = nullptr;
  };

  /// At most `n` permits at a time. Throws std::invalid_argument if n == 0.
  explicit concurrency_limiter(std::size_t n) : limit_(n), free_(n) {
    if (n == 0) detail::throw_invalid("concurrency_limiter", "n must be >= 1, got 0");
  }

  concurrency_limiter(const concurrency_limiter&) = delete;
  concurrency_limiter& operator=(const concurrency_limiter&) = delete;

  /// Requires: no permit is outstanding.
  ~concurrency_limiter() { SPINDLE_ASSERT(in_use() == 0); }

  /// A permit, waiting while all are taken. Never allocates. Thread-safe.
  permit acquire() {
    wait_until_taken(no_deadline{}, {});
    return permit(this);
  }

  /// A permit, or nullopt if a stop is requested on `st` first. Thread-safe.
  std::optional<permit> acquire(std::stop_token st) {
    if (!wait_until_taken(no_deadline{}, st)) return std::nullopt;
    return permit(this);
  }

  /// A permit, or nullopt if none came within `d` (real time). Saturates: duration::max() of
  /// any duration type (and deadline<>::never().remaining()) waits without a time limit.
  /// Thread-safe.
  template <class Rep, class Period>
  std::optional<permit> acquire_for(std::chrono::duration<Rep, Period> d, std::stop_token st = {}) {
    const auto until = detail::time_after<detail::wake_one_event_count::clock>(d);  // saturates
    if (!wait_until_taken(until, st)) return std::nullopt;
    return permit(this);
  }

  /// A permit if one is free now, else nullopt. Never blocks. Thread-safe.
  std::optional<permit> try_acquire() noexcept {
    if (!try_take()) return std::nullopt;
    return permit(this);
  }

  /// The cap.
  std::size_t limit() const noexcept { return limit_; }
  /// Permits free now (approximate under concurrency).
  std::size_t available() const noexcept { return free_.load(std::memory_order_relaxed); }
  /// Permits held now (approximate under concurrency).
  std::size_t in_use() const noexcept { return limit_ - available(); }

 private:
  bool try_take() noexcept {
    // relaxed: only a hint for the CAS below.
    std::size_t f = free_.load(std::memory_order_relaxed);
    while (f > 0) {
      // acquire: pairs with the release in release_one(), so the last holder's work is visible.
      if (free_.compare_exchange_weak(f, f - 1, std::memory_order_acquire,
                                      std::memory_order_relaxed))
        return true;
    }
    return false;
  }

  void release_one() noexcept {
    // release: publishes the holder's work; pairs with the acquire CAS in try_take().
    free_.fetch_add(1, std::memory_order_release);
    ec_.notify_one();
  }

  struct no_deadline {};

  // Takes a permit: spins briefly, then sleeps on ec_. Returns false if `until` passes (when it
  // is a time point) or a stop is requested on `st` first.
  template <class Until>
  bool wait_until_taken(Until until, const std::stop_token& st) {
    using clock = detail::wake_one_event_count::clock;
    constexpr bool timed = std::is_same_v<Until, clock::time_point>;
    // A short spin (64 polls, not default_spin): a permit comes back when a call ends, often far
    // later than a queue hand-off; a longer spin would burn the core for nothing. Correct with 0
    // polls (the loop below tries first).
    // Invariant: a call whose deadline has passed, or whose stop is already requested, costs a
    // try, not the spin (as the queues' blocking_wait). Attacked by "concurrency_limiter
    // acquire_for(0) and acquire(st) with a stop requested cost about a try, not a spin".
    bool spin = !st.stop_requested();
    if constexpr (timed) spin = spin && clock::now() < until;
    if (spin ? detail::spin_until([this] { return try_take(); }, 64) : try_take()) return true;
    for (;;) {
      if (try_take()) return true;
      if (st.stop_requested()) return give_up();
      if constexpr (timed) {
        if (clock::now() >= until) return give_up();
      }
      auto key = ec_.prepare_wait();
      if (try_take()) {
        ec_.cancel_wait();
        return true;
      }
      if constexpr (timed) {
        // A stop request wakes the timed sleep too.
        std::stop_callback wake(st, [this] { ec_.notify_all(); });
        if (st.stop_requested()) {
          ec_.cancel_wait();
        } else {
          (void)ec_.wait_until(key, until);
        }
      } else if (st.stop_possible()) {
        ec_.wait(key, st);
      } else {
        ec_.wait(key);
      }
    }
  }

  // A waiter that leaves may have consumed a notify_one meant for another: pass it on.
  bool give_up() noexcept {
    if (available() > 0 && ec_.waiters() > 0) ec_.notify_one();
    return false;
  }

  const std::size_t limit_;
  // Free permits. On its own cache line: every acquire and release writes it.
  alignas(detail::false_sharing_range) std::atomic<std::size_t> free_;
  detail::wake_one_event_count ec_;  // acquirers sleep here while free_ == 0
};

}  // namespace spindle
