// spindle/detail/queue_facade.hpp - the channel operations both in-process queues share.
//
// queue_facade<Derived, T> turns a queue's two non-blocking primitives into the whole channel
// contract (channel.hpp): push/try_push/push_for and their stop_token forms, pop/try_pop/pop_for,
// and the optional-returning pop(). Derived provides, and befriends the facade for:
//
//   template <class Construct> status push_once(const Construct&);  // ok | full | closed
//   template <class Consume>   status pop_once(const Consume&);     // ok | empty | closed
//   wake_all_event_count not_full_, not_empty_;
//   spin_budget spin_;  // detail::queue_spin(the queue_options it was made with)
//
// push_once calls construct(detail::storage<T>&) to build the item in its slot; pop_once calls
// consume(T&) to move it out. A blocking form tries, spins briefly, then sleeps on the event
// count the other side notifies (detail::blocking_call). Which threads may call what is the queue's
// own contract (bounded_queue: any thread; spsc_queue: one producer, one consumer).
#pragma once

#include <chrono>
#include <optional>
#include <stop_token>
#include <type_traits>
#include <utility>

#include "../status.hpp"
#include "ring.hpp"

namespace spindle::detail {

template <class Derived, class T>
class queue_facade {
 public:
  using value_type = T;

  // ---- push ------------------------------------------------------------------------------------

  /// Appends a copy of `v`. Blocks while full. Returns ok | closed. Never allocates (beyond T's
  /// copy).
  status push(const T& v) { return push_wait(copier{v}, nullptr, nullptr); }

  /// Appends `v`, moving from it only on ok. Blocks while full. Returns ok | closed; on closed
  /// `v` is not moved from. Never allocates.
  status push(T&& v) { return push_wait(mover{v}, nullptr, nullptr); }

  /// As push(), but a stop request on `st` ends the wait. Returns ok | closed | cancelled.
  status push(T&& v, std::stop_token st) { return push_wait(mover{v}, &st, nullptr); }
  status push(const T& v, std::stop_token st) { return push_wait(copier{v}, &st, nullptr); }

  /// Appends `v` if there is room now. Never blocks. Returns ok | full | closed; `v` is moved
  /// from only on ok. Never allocates.
  status try_push(T&& v) { return self().push_once(mover{v}); }
  status try_push(const T& v) { return self().push_once(copier{v}); }

  /// As push(), waiting at most `d`. Returns ok | timeout | closed; `v` is moved from only on ok.
  template <class Rep, class Period>
  status push_for(T&& v, std::chrono::duration<Rep, Period> d) {
    const auto deadline = time_after<wait_clock>(d);  // saturates: max() means never
    return push_wait(mover{v}, nullptr, &deadline);
  }
  template <class Rep, class Period>
  status push_for(const T& v, std::chrono::duration<Rep, Period> d) {
    const auto deadline = time_after<wait_clock>(d);  // saturates: max() means never
    return push_wait(copier{v}, nullptr, &deadline);
  }

  // ---- pop -------------------------------------------------------------------------------------

  /// Moves the oldest item into `out`. Blocks while empty. Returns ok | closed (closed only once
  /// closed and drained; `out` is then untouched). Never allocates.
  status pop(T& out) { return pop_wait(assign{out}, nullptr, nullptr); }

  /// As pop(out), but a stop request on `st` ends the wait. Returns ok | closed | cancelled.
  /// An item that is already there is returned even if a stop was requested.
  status pop(T& out, std::stop_token st) { return pop_wait(assign{out}, &st, nullptr); }

  /// Moves the oldest item into `out` if there is one now. Never blocks. Returns
  /// ok | empty | closed (closed and drained). Never allocates.
  status try_pop(T& out) { return self().pop_once(assign{out}); }

  /// As pop(out), waiting at most `d`. Returns ok | timeout | closed.
  template <class Rep, class Period>
  status pop_for(T& out, std::chrono::duration<Rep, Period> d) {
    const auto deadline = time_after<wait_clock>(d);  // saturates: max() means never
    return pop_wait(assign{out}, nullptr, &deadline);
  }

  /// Pops the oldest item, blocking while empty; nullopt once closed and drained.
  std::optional<T> pop() {
    std::optional<T> out;
    pop_wait(emplace{out}, nullptr, nullptr);
    return out;
  }

 protected:
  queue_facade() = default;
  ~queue_facade() = default;

  // How an item enters a slot (construct) or leaves it (consume).
  struct mover {
    T& v;
    void operator()(storage<T>& s) const noexcept { s.construct(std::move(v)); }
  };
  struct copier {
    const T& v;
    void operator()(storage<T>& s) const noexcept(std::is_nothrow_copy_constructible_v<T>) {
      s.construct(v);
    }
  };
  struct assign {
    T& out;
    void operator()(T& v) const noexcept { out = std::move(v); }
  };
  struct emplace {
    std::optional<T>& out;
    void operator()(T& v) const noexcept { out.emplace(std::move(v)); }
  };

 private:
  Derived& self() noexcept { return static_cast<Derived&>(*this); }

  template <class Construct>
  status push_wait(const Construct& construct, const std::stop_token* st,
                   const wait_clock::time_point* deadline) {
    Derived& q = self();
    return blocking_call([&] { return q.push_once(construct); }, status::full, q.not_full_,
                         q.spin_, st, deadline);
  }

  template <class Consume>
  status pop_wait(const Consume& consume, const std::stop_token* st,
                  const wait_clock::time_point* deadline) {
    Derived& q = self();
    return blocking_call([&] { return q.pop_once(consume); }, status::empty, q.not_empty_,
                         q.spin_, st, deadline);
  }
};

}  // namespace spindle::detail
