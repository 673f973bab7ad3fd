// spindle/map_reduce.hpp - data parallelism over a range on an executor: map_reduce,
// parallel_for, parallel_map.
//
//   spindle::thread_pool pool;
//   auto sum = spindle::map_reduce(pool, values, [](auto x) { return std::uint64_t(x) * x; },
//                                  std::uint64_t{0}, std::plus<>{});
//   spindle::parallel_for(pool, items, [](auto& x) { x.update(); });
//   auto lengths = spindle::parallel_map(pool, words, [](const std::string& w) { return w.size(); });
//
// The range is cut into chunks of consecutive elements. The calling thread and up to
// `workers - 1` helper tasks posted to the executor take chunks from a shared counter until none
// is left, so there is one task per worker, not per element or per chunk, and a busy pool only
// slows the call down: the caller alone can finish it (calling from inside a pool task is safe).
//
// Guarantees:
// - map_reduce is deterministic for any associative `reduce`: each chunk is folded left to right,
//   and the chunk results are folded in chunk order, not completion order, so the result equals
//   the sequential left fold reduce(...reduce(reduce(init, map(x0)), map(x1))..., map(xn)).
//   An integer sum (integral T and map results, reduce std::plus) is computed in T's unsigned
//   type, within a chunk by 8 independent accumulators, which the compiler vectorizes: the same
//   result, since integer addition (modulo 2^N once converted back to T) is associative and
//   commutative, and no signed overflow where the left fold has none (a chunk's own sum may
//   leave T's range when the running total from init does not).
// - parallel_map keeps the order of the range.
// - Everything the calls did is visible to the caller when the function returns.
// - An exception from `map`, `reduce` or `f` stops the remaining chunks from starting and is
//   rethrown to the caller (the first one; later ones are dropped) once every started chunk ends.
// - If the executor refuses work (post throws, e.g. after shutdown), the caller runs every chunk.
// - Allocates: the chunk bookkeeping (once per call) and the helper tasks.
//
// Executors: any type with post(F) (thread_pool among them); size() gives the worker count
// where the type has it, else std::thread::hardware_concurrency().
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/wait.hpp"

namespace spindle {

namespace detail {

template <class E>
std::size_t executor_width(E& ex) {
  std::size_t n = 0;
  if constexpr (requires { { ex.size() } -> std::convertible_to<std::size_t>; }) {
    n = static_cast<std::size_t>(ex.size());
  } else {
    n = std::thread::hardware_concurrency();
  }
  return n == 0 ? 1 : n;
}

/// Chunks per worker when the caller does not choose: enough to even out uneven chunks, few
/// enough that the per-chunk cost (one atomic increment) is nothing.
inline constexpr std::size_t chunks_per_worker = 8;

/// The chunk size to use: `chunk`, clamped to the range's size (a chunk larger than the range
/// is one chunk; SIZE_MAX once became -1 as the range's difference type and never ended), or a
/// pick when 0.
inline std::size_t pick_chunk(std::size_t n, std::size_t width, std::size_t chunk) {
  if (chunk != 0) return std::min(chunk, std::max<std::size_t>(n, 1));
  std::size_t want = width * chunks_per_worker;
  return std::max<std::size_t>(1, (n + want - 1) / want);
}

/// Shared by the caller and the helper tasks; helpers keep it alive with a shared_ptr, so a
/// helper that starts after the call has returned only finds no chunk left.
struct chunk_state {
  std::atomic<std::size_t> next{0};    // the next chunk to claim
  std::atomic<std::size_t> done{0};    // chunks finished (or skipped after an error)
  std::atomic<bool> failed{false};
  wake_one_event_count finished;       // the caller sleeps here until done == chunks
  std::mutex mu;
  std::exception_ptr error;            // guarded by mu
};

template <class Body>
void take_chunks(chunk_state& s, std::size_t chunks, Body* body) {
  std::size_t did = 0;
  for (;;) {
    // relaxed: the counter only hands out indices; results are published by `done` below.
    std::size_t i = s.next.fetch_add(1, std::memory_order_relaxed);
    if (i >= chunks) break;
    // relaxed: an early-out hint after an error; the error itself travels under mu.
    if (!s.failed.load(std::memory_order_relaxed)) {
      try {
        (*body)(i);
      } catch (...) {
        {
          std::lock_guard lock(s.mu);
          if (!s.error) s.error = std::current_exception();
        }
        s.failed.store(true, std::memory_order_relaxed);
      }
    }
    ++did;
  }
  if (did == 0) return;
  // acq_rel: release publishes this thread's chunk results; pairs with the acquire load in
  // run_chunks(). The acquire half orders the notify after the other threads' results.
  if (s.done.fetch_add(did, std::memory_order_acq_rel) + did == chunks) s.finished.notify_all();
}

/// Runs body(i) for every i in [0, chunks) on the caller and up to width - 1 helpers.
template <class E, class Body>
void run_chunks(E& ex, std::size_t chunks, Body& body) {
  if (chunks == 0) return;
  if (chunks == 1) {
    body(std::size_t{0});
    return;
  }
  auto state = std::make_shared<chunk_state>();
  std::size_t helpers = std::min(executor_width(ex), chunks) - 1;
  for (std::size_t h = 0; h < helpers; ++h) {
    try {
      ex.post([state, chunks, b = &body] { take_chunks(*state, chunks, b); });
    } catch (...) {
      break;  // the executor refuses work: the caller takes the remaining chunks
    }
  }
  take_chunks(*state, chunks, &body);
  // acquire: pairs with the acq_rel increments in take_chunks(); makes every chunk's results
  // visible here.
  auto all_done = [&] { return state->done.load(std::memory_order_acquire) >= chunks; };
  // A short spin (256 polls, not default_spin): the caller has just run chunks itself, so the
  // helpers' last chunks are usually microseconds from done; a longer spin would only delay the
  // sleep. Correct with 0 polls (the loop below decides).
  spin_until(all_done, 256);
  while (!all_done()) {
    auto key = state->finished.prepare_wait();
    if (all_done()) {
      state->finished.cancel_wait();
      break;
    }
    state->finished.wait(key);
  }
  std::exception_ptr error;
  {
    std::lock_guard lock(state->mu);
    // Moved out: the state may be destroyed by a helper thread, and the exception should be
    // released by the thread that handles it.
    error = std::move(state->error);
  }
  if (error) std::rethrow_exception(error);
}

/// The iterators that start each chunk, plus the end: chunks + 1 of them. One pass for
/// non-random-access ranges.
template <class R>
auto chunk_bounds(R& range, std::size_t chunk) {
  using It = std::ranges::iterator_t<R>;
  std::vector<It> bounds;
  auto it = std::ranges::begin(range);
  auto end = std::ranges::end(range);
  bounds.push_back(it);
  while (it != end) {
    std::ranges::advance(it, static_cast<std::ranges::range_difference_t<R>>(chunk), end);
    bounds.push_back(it);
  }
  return bounds;
}

/// Whether fold_chunk may sum a chunk with independent accumulators: T and map's result are
/// integers (not bool) and reduce is std::plus, so the order of the additions cannot change the
/// result (unsigned arithmetic is associative and commutative; the conversions to and from
/// the unsigned type are modulo 2^N, as the sequential fold's conversions are).
template <class T, class Reduce, class M>
inline constexpr bool integer_sum_v =
    std::is_integral_v<T> && !std::is_same_v<T, bool> &&
    std::is_integral_v<std::remove_cvref_t<M>> && !std::is_same_v<std::remove_cvref_t<M>, bool> &&
    (std::is_same_v<Reduce, std::plus<>> || std::is_same_v<Reduce, std::plus<T>>);

/// The left fold reduce(...reduce(map(*first), map(first[1]))..., map(last[-1])) of a non-empty
/// chunk [first, last). The iterators are values, not references into the chunk bounds, so that
/// the compiler sees a plain loop.
/// An integer sum adds in T's unsigned type (no signed overflow; the same value modulo 2^N).
/// Shortcut: an integer sum over a random-access chunk runs 8 accumulators side by side (lane j
/// takes elements j, j + 8, ...), then adds them up: the kernel of pstl's transform_reduce, about
/// 1.4x the single dependency chain per thread here. Invariant: its result equals the sequential
/// left fold, wrap-around included. Attacked by test_map_reduce's "an integer sum equals the
/// sequential fold for every length, chunk and integer type, wrap-around included".
template <class T, class It, class Map, class Reduce>
T fold_chunk(It it, const It last, Map& map, Reduce& reduce) {
  using mapped = std::invoke_result_t<Map&, std::iter_reference_t<It>>;
  if constexpr (integer_sum_v<T, Reduce, mapped> && !std::random_access_iterator<It>) {
    // One accumulator, but unsigned too: a chunk's own sum may overflow T where the left fold
    // from init does not (see sum_partials).
    using U = std::make_unsigned_t<T>;
    U acc = 0;
    for (; it != last; ++it) acc += static_cast<U>(std::invoke(map, *it));
    return static_cast<T>(acc);
  } else if constexpr (integer_sum_v<T, Reduce, mapped>) {
    using U = std::make_unsigned_t<T>;
    constexpr int lanes = 8;
    U acc[lanes] = {};
    const auto n = last - it;
    std::iter_difference_t<It> k = 0;
    for (; n - k >= lanes; k += lanes)
      for (int j = 0; j < lanes; ++j) acc[j] += static_cast<U>(std::invoke(map, it[k + j]));
    for (; k < n; ++k) acc[0] += static_cast<U>(std::invoke(map, it[k]));
    U sum = 0;
    for (U a : acc) sum += a;
    return static_cast<T>(sum);
  } else {
    T acc = std::invoke(map, *it);
    for (++it; it != last; ++it) acc = std::invoke(reduce, std::move(acc), std::invoke(map, *it));
    return acc;
  }
}

/// Folds the chunk results into `init` in chunk order. An integer sum adds modulo 2^N in the
/// unsigned type: a chunk's sum (x0 + x1 alone, without init) may overflow T, and init plus it
/// again, where the left fold init + x0 + x1 + ... never leaves T's range; signed overflow is
/// undefined behaviour, unsigned wraps to the same value. Attacked by test_map_reduce's "an int
/// sum whose chunks would overflow where the left fold does not has no signed overflow".
template <class T, class Reduce>
T sum_partials(T init, std::vector<std::optional<T>>& partial, Reduce& reduce) {
  if constexpr (integer_sum_v<T, Reduce, T>) {
    using U = std::make_unsigned_t<T>;
    auto acc = static_cast<U>(init);
    for (auto& p : partial) acc += static_cast<U>(*p);
    return static_cast<T>(acc);
  } else {
    T result = std::move(init);
    for (auto& p : partial) result = std::invoke(reduce, std::move(result), std::move(*p));
    return result;
  }
}

}  // namespace detail

/// Maps every element of `range` with `map` and folds the results with the associative
/// `reduce`, starting from `init`, on the caller and the executor's workers. `map(x)` must be
/// convertible to T and `reduce(T, T)` to T. `chunk` is the number of elements per chunk
/// (0 picks about 8 chunks per worker). The result is the sequential left fold's for any
/// associative reduce (see the header comment). Blocks until done. Rethrows the first exception
/// of map or reduce. Allocates (bookkeeping). Thread-safe if map and reduce are.
template <class E, std::ranges::forward_range R, class Map, class T, class Reduce>
T map_reduce(E& ex, R&& range, Map map, T init, Reduce reduce, std::size_t chunk = 0) {
  const auto n = static_cast<std::size_t>(std::ranges::distance(range));
  if (n == 0) return init;
  chunk = detail::pick_chunk(n, detail::executor_width(ex), chunk);
  auto bounds = detail::chunk_bounds(range, chunk);
  const std::size_t chunks = bounds.size() - 1;
  std::vector<std::optional<T>> partial(chunks);
  auto body = [&](std::size_t i) {
    partial[i].emplace(detail::fold_chunk<T>(bounds[i], bounds[i + 1], map, reduce));
  };
  detail::run_chunks(ex, chunks, body);
  return detail::sum_partials(std::move(init), partial, reduce);
}

/// Calls f(x) for every element x of `range` (by reference where the range yields references),
/// in parallel on the caller and the executor's workers; blocks until every call returned.
/// `chunk` as in map_reduce. Rethrows the first exception of f (the chunks not yet started are
/// skipped). Allocates (bookkeeping). Thread-safe if f is.
template <class E, std::ranges::forward_range R, class F>
void parallel_for(E& ex, R&& range, F f, std::size_t chunk = 0) {
  const auto n = static_cast<std::size_t>(std::ranges::distance(range));
  if (n == 0) return;
  chunk = detail::pick_chunk(n, detail::executor_width(ex), chunk);
  auto bounds = detail::chunk_bounds(range, chunk);
  auto body = [&](std::size_t i) {
    for (auto it = bounds[i]; it != bounds[i + 1]; ++it) std::invoke(f, *it);
  };
  detail::run_chunks(ex, bounds.size() - 1, body);
}

/// Returns {f(x0), f(x1), ...} for the elements of `range`, in the range's order, computed in
/// parallel on the caller and the executor's workers. `chunk` as in map_reduce. Rethrows the
/// first exception of f. Allocates (the result). Thread-safe if f is.
template <class E, std::ranges::forward_range R, class F>
auto parallel_map(E& ex, R&& range, F f, std::size_t chunk = 0)
    -> std::vector<std::decay_t<std::invoke_result_t<F&, std::ranges::range_reference_t<R>>>> {
  using V = std::decay_t<std::invoke_result_t<F&, std::ranges::range_reference_t<R>>>;
  const auto n = static_cast<std::size_t>(std::ranges::distance(range));
  if (n == 0) return {};
  chunk = detail::pick_chunk(n, detail::executor_width(ex), chunk);
  auto bounds = detail::chunk_bounds(range, chunk);
  if constexpr (std::is_default_constructible_v<V> && std::is_move_assignable_v<V>) {
    std::vector<V> out(n);
    auto body = [&](std::size_t i) {
      std::size_t k = i * chunk;
      for (auto it = bounds[i]; it != bounds[i + 1]; ++it) out[k++] = std::invoke(f, *it);
    };
    detail::run_chunks(ex, bounds.size() - 1, body);
    return out;
  } else {
    std::vector<std::optional<V>> tmp(n);
    auto body = [&](std::size_t i) {
      std::size_t k = i * chunk;
      for (auto it = bounds[i]; it != bounds[i + 1]; ++it) tmp[k++].emplace(std::invoke(f, *it));
    };
    detail::run_chunks(ex, bounds.size() - 1, body);
    std::vector<V> out;
    out.reserve(n);
    for (auto& v : tmp) out.push_back(std::move(*v));
    return out;
  }
}

}  // namespace spindle
