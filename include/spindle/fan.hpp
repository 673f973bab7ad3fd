// spindle/fan.hpp - fan_out, broadcast, fan_in: move items between channels.
//
//   spindle::fan_out(source, sinks);   // each item to one sink, round-robin, skipping full sinks
//   spindle::broadcast(source, sinks); // a copy of each item to every sink
//   spindle::fan_in(sources, sink);    // merge many sources into one sink
//
// `source`/`sink` are channels (anything modelling spindle::channel, or an any_channel<T>);
// `sinks`/`sources` are ranges of pointers to channels of one type (std::vector<C*>), or of
// any_channel<T> (which mixes in-process and Redis channels in one vector).
//
// Guarantees:
// - Each call blocks until its sources are closed and drained (or `stop` is requested), then
//   closes its sinks: end of stream flows downstream. It returns the number of items it moved.
// - Close propagates upstream too: when every sink is closed, fan_out and broadcast close the
//   source (producers then see `closed` instead of blocking forever); fan_in closes its sources
//   when the sink is closed.
// - No item is lost while a sink is open: an item leaves the source only to be pushed, and a
//   failed push leaves it in hand (the channel contract: a failed push does not move from it).
//   An item popped when every sink has just closed is dropped: fan_out counts it out of its
//   result; broadcast, which returns the items it took from the source, counts it in.
// - fan_out and fan_in preserve each source's order per sink; broadcast gives every sink the
//   source's order.
// - No busy-wait, no polling: when every sink is full, fan_out blocks in the next sink's push
//   (with `stop`: its stop-aware push) until that sink takes the item; it does not look at the
//   others meanwhile. fan_in and broadcast block the same way.
// - An exception from a channel propagates to the caller (fan_in: the first one, after every
//   forwarding thread has stopped); sinks are then not closed.
#pragma once

#include <algorithm>  // std::max
#include <atomic>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <exception>
#include <iterator>
#include <memory>  // std::to_address
#include <mutex>
#include <ranges>
#include <stdexcept>  // std::invalid_argument
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "channel.hpp"
#include "status.hpp"

namespace spindle {

/// Options of fan_out, broadcast and fan_in.
struct fan_options {
  /// A stop request ends the call early: it stops taking items and closes its sinks.
  std::stop_token stop = {};
  /// Only for sinks without a stop-aware push (push(T&&, std::stop_token); the in-process
  /// queues and any_channel have one): how long one push_for waits before the call looks at
  /// `stop` again (at least 1 ms). Other sinks block in the kernel until room, close or stop.
  std::chrono::milliseconds retry_interval{1};
};

namespace detail {

/// The channel a range element designates: *p for a pointer, the element itself otherwise.
template <class X>
decltype(auto) chan_of(X& x) {
  if constexpr (std::is_pointer_v<std::remove_cvref_t<X>>) {
    return *x;
  } else {
    return (x);
  }
}

template <class R>
using chan_elem_t = std::remove_reference_t<decltype(chan_of(
    std::declval<std::ranges::range_reference_t<R>&>()))>;

/// Whether `c` has a blocking push that a stop request ends (push(T&&, stop_token)).
template <class C, class T>
concept stoppable_push = requires(C& c, T&& v, std::stop_token st) {
  { c.push(std::move(v), st) } -> std::same_as<status>;
};

/// Pushes `v` into `c`, blocking while full until a stop request on `st`. Returns
/// ok | closed | cancelled; `v` is moved from only on ok. Blocks without polling when `c` has a
/// stop-aware push (the in-process queues, any_channel) or no stop is possible; otherwise it
/// waits in push_for slices of `interval` (at least 1 ms), looking at `st` between them.
template <class C, class T>
status push_watching(C& c, T& v, const std::stop_token& st, std::chrono::milliseconds interval) {
  if (!st.stop_possible()) return c.push(std::move(v));
  if constexpr (stoppable_push<C, T>) {
    return c.push(std::move(v), st);
  } else {
    const auto slice = std::max(interval, std::chrono::milliseconds(1));  // never a busy loop
    for (;;) {
      if (st.stop_requested()) return status::cancelled;
      status s = c.push_for(std::move(v), slice);
      if (s != status::timeout) return s;
    }
  }
}

}  // namespace detail

/// Moves each item of `source` to one of `sinks`, round-robin; a full sink is skipped while
/// another has room (when all are full, the call blocks on the next one in the rotation), a
/// closed sink is dropped from the rotation. Blocks until `source` is
/// closed and drained (or a stop is requested), then closes every sink; returns the items moved.
/// If every sink closes first, it closes `source` and returns. Allocates once (the rotation).
/// Throws std::invalid_argument if `sinks` is empty.
template <class Source, class Sinks>
std::size_t fan_out(Source&& source, Sinks&& sinks, fan_options opts = {}) {
  using T = typename std::remove_cvref_t<Source>::value_type;
  std::vector<std::remove_cvref_t<std::ranges::range_reference_t<Sinks>>> live(
      std::ranges::begin(sinks), std::ranges::end(sinks));
  if (live.empty()) throw std::invalid_argument("spindle::fan_out: sinks is empty (size 0)");
  auto close_all = [&] {
    for (auto&& s : sinks) detail::chan_of(s).close();
  };
  std::size_t moved = 0;
  std::size_t next = 0;
  T v{};
  for (;;) {
    status ps = opts.stop.stop_possible() ? source.pop(v, opts.stop) : source.pop(v);
    if (ps != status::ok) break;
    bool placed = false;
    while (!placed) {
      if (live.empty()) {
        source.close();
        close_all();
        return moved;
      }
      // One pass of try_push from the round-robin position.
      bool removed = false;
      for (std::size_t k = 0; k < live.size(); ++k) {
        std::size_t i = (next + k) % live.size();
        status s = detail::chan_of(live[i]).try_push(std::move(v));
        if (s == status::ok) {
          next = i + 1;
          placed = true;
          break;
        }
        if (s == status::closed) {
          live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
          removed = true;
          break;
        }
      }
      if (placed || removed) continue;
      // Every sink is full: block on the round-robin one until it takes the item (no polling
      // of the others: a blocked call uses no CPU), is closed, or a stop is requested.
      std::size_t i = next % live.size();
      status s = detail::push_watching(detail::chan_of(live[i]), v, opts.stop,
                                       opts.retry_interval);
      if (s == status::ok) {
        next = i + 1;
        placed = true;
      } else if (s == status::closed) {
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
      } else {  // cancelled
        close_all();
        return moved;
      }
    }
    ++moved;
  }
  close_all();
  return moved;
}

/// Copies each item of `source` to every sink (the last open sink gets it moved); a closed sink
/// is dropped. Blocks while a sink is full (the slowest sink sets the pace). Blocks until
/// `source` is closed and drained (or a stop is requested), then closes every sink; returns the
/// items taken from `source`. If every sink closes first, it closes `source` and returns.
/// Requires a copyable value type. Allocates once (the sink list). Throws std::invalid_argument
/// if `sinks` is empty (it would take items for no one).
template <class Source, class Sinks>
std::size_t broadcast(Source&& source, Sinks&& sinks, fan_options opts = {}) {
  using T = typename std::remove_cvref_t<Source>::value_type;
  static_assert(std::copy_constructible<T>, "spindle::broadcast copies items: T must be copyable");
  std::vector<std::remove_cvref_t<std::ranges::range_reference_t<Sinks>>> live(
      std::ranges::begin(sinks), std::ranges::end(sinks));
  if (live.empty()) throw std::invalid_argument("spindle::broadcast: sinks is empty (size 0)");
  auto close_all = [&] {
    for (auto&& s : sinks) detail::chan_of(s).close();
  };
  std::size_t taken = 0;
  T v{};
  for (;;) {
    status ps = opts.stop.stop_possible() ? source.pop(v, opts.stop) : source.pop(v);
    if (ps != status::ok) break;
    ++taken;
    for (std::size_t i = 0; i < live.size();) {
      bool last = i + 1 == live.size();
      T copy = last ? std::move(v) : v;
      status s = detail::push_watching(detail::chan_of(live[i]), copy, opts.stop,
                                       opts.retry_interval);
      if (s == status::cancelled) {
        close_all();
        return taken;
      }
      if (s == status::closed) {
        if (last) v = std::move(copy);  // not moved from on closed: keep it for no one
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
        continue;
      }
      ++i;
    }
    if (live.empty()) {
      source.close();
      break;
    }
  }
  close_all();
  return taken;
}

/// Merges every source into `sink`: one forwarding thread per source (the calling thread serves
/// the first). Blocks until every source is closed and drained (or a stop is requested), then
/// closes `sink`; returns the items moved. If `sink` closes first, it closes every source and
/// returns. Each source's order is kept in the sink. Allocates (one thread per extra source).
/// Rethrows the first exception a channel threw, after every forwarding thread has stopped.
/// Throws std::invalid_argument if several sources feed a single-producer sink, or one
/// single-consumer source is listed twice (see multi_producer_v in channel.hpp), and
/// std::system_error if a forwarding thread fails to start (the others are stopped first).
template <class Sources, class Sink>
std::size_t fan_in(Sources&& sources, Sink&& sink, fan_options opts = {}) {
  using S = detail::chan_elem_t<Sources>;
  using T = typename S::value_type;
  std::vector<S*> srcs;
  for (auto&& s : sources) srcs.push_back(&detail::chan_of(s));
  if (srcs.empty()) {
    sink.close();
    return 0;
  }
  // One forwarding thread per source: several push to the sink, each pops its own source.
  if (srcs.size() > 1 && !multi_producer(sink))
    throw std::invalid_argument("spindle::fan_in: " + std::to_string(srcs.size()) +
                                " sources into a single-producer sink (spsc_queue); use a "
                                "multi-producer sink");
  for (std::size_t i = 0; i < srcs.size(); ++i)
    for (std::size_t j = i + 1; j < srcs.size(); ++j)
      if (srcs[i] == srcs[j] && !multi_consumer(*srcs[i]))
        throw std::invalid_argument("spindle::fan_in: sources " + std::to_string(i) + " and " +
                                    std::to_string(j) + " are one single-consumer channel");
  std::stop_source stop;
  std::stop_callback forward_stop(opts.stop, [&stop] { stop.request_stop(); });
  std::atomic<std::size_t> moved{0};
  std::atomic<bool> sink_closed{false};
  std::mutex error_mu;
  std::exception_ptr error;  // guarded by error_mu

  auto forward = [&](S& src) {
    try {
      std::stop_token st = stop.get_token();
      T v{};
      std::size_t n = 0;
      while (src.pop(v, st) == status::ok) {
        status s = detail::push_watching(sink, v, st, opts.retry_interval);
        if (s == status::closed) {
          // relaxed: read only after the joins below, which order it.
          sink_closed.store(true, std::memory_order_relaxed);
          stop.request_stop();
          break;
        }
        if (s != status::ok) break;
        ++n;
      }
      moved.fetch_add(n, std::memory_order_relaxed);  // read after the joins
    } catch (...) {
      {
        std::lock_guard lock(error_mu);
        if (!error) error = std::current_exception();
      }
      stop.request_stop();
    }
  };

  {
    std::vector<std::jthread> threads;
    threads.reserve(srcs.size() - 1);
    try {
      for (std::size_t i = 1; i < srcs.size(); ++i)
        threads.emplace_back([&forward, s = srcs[i]] { forward(*s); });
    } catch (const std::system_error& e) {
      // A thread failed to start: stop the forwarders already running (they wait on `stop`,
      // not on the jthreads' own tokens), join them, and say so. Nothing is closed.
      stop.request_stop();
      const std::size_t started = threads.size();
      threads.clear();  // joins
      throw std::system_error(e.code(), "spindle::fan_in: forwarding thread " +
                                            std::to_string(started + 1) + " of " +
                                            std::to_string(srcs.size() - 1) +
                                            " failed to start (the others were stopped)");
    }
    forward(*srcs[0]);
  }  // joins every forwarding thread
  if (error) std::rethrow_exception(error);
  if (sink_closed.load(std::memory_order_relaxed)) {
    for (S* s : srcs) s->close();
  }
  sink.close();
  return moved.load(std::memory_order_relaxed);
}

}  // namespace spindle
