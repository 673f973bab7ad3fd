// spindle/detail/any_channel.hpp - any_channel<T>: a type-erased reference to any channel of T.
//
// Included at the end of <spindle/channel.hpp>, after the concept; users include that header.
// It includes channel.hpp itself so that it also compiles alone (#pragma once ends the cycle:
// whichever of the two comes first, the concept is defined before any_channel uses it).
//
// any_channel<T> stores a pointer to a channel and a pointer to a static table of functions; it
// is as cheap to copy as two pointers and forwards every channel operation, so in-process queues
// and Redis channels of one value type can sit in one std::vector<any_channel<T>> (fan_out,
// fan_in, broadcast). It models spindle::channel.
//
// Lifetime: any_channel does not own its target; the target must outlive every use. Thread-safety
// is the target's: an any_channel adds no state of its own.
#pragma once

#include <chrono>
#include <concepts>
#include <memory>  // std::addressof
#include <optional>
#include <stop_token>
#include <type_traits>
#include <utility>

#include "../channel.hpp"
#include "../clock.hpp"  // detail::saturating_ceil
#include "../status.hpp"

namespace spindle {

template <class T>
class any_channel;

namespace detail {

template <class X>
struct is_any_channel : std::false_type {};
template <class U>
struct is_any_channel<any_channel<U>> : std::true_type {};

/// What any_channel needs of its target: a channel of exactly T.
template <class C, class T>
concept erasable_channel = channel<C> && std::same_as<typename C::value_type, T>;

template <class T>
struct any_channel_vtable {
  status (*push_copy)(void*, const T&);
  status (*push_move)(void*, T&&);
  status (*try_push_copy)(void*, const T&);
  status (*try_push_move)(void*, T&&);
  status (*push_for)(void*, T&&, std::chrono::nanoseconds);
  status (*push_stop)(void*, T&&, std::stop_token);
  status (*pop)(void*, T&);
  status (*pop_stop)(void*, T&, std::stop_token);
  status (*try_pop)(void*, T&);
  status (*pop_for)(void*, T&, std::chrono::nanoseconds);
  void (*close)(void*);
  bool (*closed)(const void*);
  bool multi_producer;  // the target's multi_producer_v
  bool multi_consumer;  // the target's multi_consumer_v
};

template <class C, class T>
inline constexpr any_channel_vtable<T> any_channel_vtable_for = {
    [](void* c, const T& v) -> status {
      if constexpr (std::copy_constructible<T>) {
        return static_cast<C*>(c)->push(v);
      } else {
        (void)c, (void)v;
        return status::closed;  // unreachable: any_channel hides copy-push for move-only T
      }
    },
    [](void* c, T&& v) -> status { return static_cast<C*>(c)->push(std::move(v)); },
    [](void* c, const T& v) -> status {
      if constexpr (std::copy_constructible<T>) {
        return static_cast<C*>(c)->try_push(v);
      } else {
        (void)c, (void)v;
        return status::closed;
      }
    },
    [](void* c, T&& v) -> status { return static_cast<C*>(c)->try_push(std::move(v)); },
    [](void* c, T&& v, std::chrono::nanoseconds d) -> status {
      return static_cast<C*>(c)->push_for(std::move(v), d);
    },
    [](void* c, T&& v, std::stop_token st) -> status {
      C& ch = *static_cast<C*>(c);
      if constexpr (requires { { ch.push(std::move(v), st) } -> std::same_as<status>; }) {
        return ch.push(std::move(v), std::move(st));
      } else {
        // A target without a stop-aware push (a Redis channel, whose push rarely waits):
        // push_for slices of 10 ms, looking at the stop request between them.
        for (;;) {
          if (st.stop_requested()) return status::cancelled;
          status s = ch.push_for(std::move(v), std::chrono::milliseconds(10));
          if (s != status::timeout) return s;
        }
      }
    },
    [](void* c, T& out) -> status { return static_cast<C*>(c)->pop(out); },
    [](void* c, T& out, std::stop_token st) -> status {
      return static_cast<C*>(c)->pop(out, std::move(st));
    },
    [](void* c, T& out) -> status { return static_cast<C*>(c)->try_pop(out); },
    [](void* c, T& out, std::chrono::nanoseconds d) -> status {
      return static_cast<C*>(c)->pop_for(out, d);
    },
    [](void* c) { static_cast<C*>(c)->close(); },
    [](const void* c) -> bool { return static_cast<bool>(static_cast<const C*>(c)->closed()); },
    multi_producer_v<C>,
    multi_consumer_v<C>,
};

}  // namespace detail

/// A non-owning, type-erased reference to a channel of T (see the header comment). Copies refer
/// to the same channel. Every operation forwards to the target with the target's contract
/// (blocking, statuses, thread-safety); the forwarding itself never allocates.
template <class T>
class any_channel {
 public:
  using value_type = T;

  /// Refers to `c`, which must outlive every use of this any_channel.
  template <class C>
    requires(!detail::is_any_channel<std::remove_cv_t<C>>::value &&
             detail::erasable_channel<C, T>)
  any_channel(C& c) noexcept  // NOLINT: implicit, so a channel converts where one is expected
      : target_(static_cast<void*>(std::addressof(c))), vt_(&detail::any_channel_vtable_for<C, T>) {}

  /// Refers to `*c` (convenient for vectors of pointers). `c` must not be null.
  template <class C>
    requires(!detail::is_any_channel<std::remove_cv_t<C>>::value &&
             detail::erasable_channel<C, T>)
  any_channel(C* c) noexcept  // NOLINT: implicit
      : any_channel(*c) {}

  /// Blocks while full. Returns ok | closed (on closed `v` is not copied).
  status push(const T& v)
    requires std::copy_constructible<T>
  {
    return vt_->push_copy(target_, v);
  }
  /// Blocks while full. Returns ok | closed (on closed `v` is not moved from).
  status push(T&& v) { return vt_->push_move(target_, std::move(v)); }
  /// Blocks while full; a stop request on `st` ends the wait. Returns ok | closed | cancelled
  /// (`v` moved from only on ok). Targets without a stop-aware push are pushed in push_for
  /// slices of 10 ms, looking at `st` between them.
  status push(T&& v, std::stop_token st) {
    return vt_->push_stop(target_, std::move(v), std::move(st));
  }
  /// Never blocks. Returns ok | full | closed.
  status try_push(const T& v)
    requires std::copy_constructible<T>
  {
    return vt_->try_push_copy(target_, v);
  }
  /// Never blocks. Returns ok | full | closed (`v` untouched unless ok).
  status try_push(T&& v) { return vt_->try_push_move(target_, std::move(v)); }
  /// Blocks while full, at most `d` (saturating: duration::max() means no limit). Returns
  /// ok | timeout | closed.
  template <class Rep, class Period>
  status push_for(T&& v, std::chrono::duration<Rep, Period> d) {
    return vt_->push_for(target_, std::move(v), detail::saturating_ceil<std::chrono::nanoseconds>(d));
  }
  /// Blocks while empty. Returns ok | closed (closed only once drained).
  status pop(T& out) { return vt_->pop(target_, out); }
  /// Blocks while empty. Returns ok | closed | cancelled.
  status pop(T& out, std::stop_token st) { return vt_->pop_stop(target_, out, std::move(st)); }
  /// Never blocks. Returns ok | empty | closed.
  status try_pop(T& out) { return vt_->try_pop(target_, out); }
  /// Blocks while empty, at most `d` (saturating: duration::max() means no limit). Returns
  /// ok | timeout | closed.
  template <class Rep, class Period>
  status pop_for(T& out, std::chrono::duration<Rep, Period> d) {
    return vt_->pop_for(target_, out, detail::saturating_ceil<std::chrono::nanoseconds>(d));
  }
  /// The next value, or nullopt once closed and drained. Blocks while empty.
  std::optional<T> pop()
    requires std::default_initializable<T>
  {
    T v{};
    if (pop(v) == status::ok) return std::optional<T>(std::move(v));
    return std::nullopt;
  }
  /// Closes the target. Idempotent.
  void close() { vt_->close(target_); }
  /// Whether the target is closed.
  bool closed() const { return vt_->closed(target_); }

  /// Whether several threads may push to the target at once (see multi_producer_v). What
  /// spindle::multi_producer(any_channel) answers.
  bool target_multi_producer() const noexcept { return vt_->multi_producer; }
  /// Whether several threads may pop from the target at once (see multi_consumer_v).
  bool target_multi_consumer() const noexcept { return vt_->multi_consumer; }

  /// Whether two any_channels refer to the same channel.
  friend bool operator==(const any_channel& a, const any_channel& b) noexcept {
    return a.target_ == b.target_;
  }

 private:
  void* target_;
  const detail::any_channel_vtable<T>* vt_;
};

}  // namespace spindle
