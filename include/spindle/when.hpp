// spindle/when.hpp - combinators over futures: when_all, when_any, as_completed.
//
// Defines:
//   when_all(std::vector<future<T>>)   future<std::vector<T>>, ready when every input is; on
//                                      failure it holds the exception of the first failed input
//                                      by position (not by time).
//   when_all(future<T>...)             future<std::tuple<T...>>, the same rule.
//   when_any(std::vector<future<T>>)   future<when_any_result<T>>: the index of the first input
//                                      to finish (value or error) and all the futures.
//   as_completed(std::vector<future<T>>)  an input range yielding the futures in the order they
//                                      finish; each yielded future is ready.
//
// Each combinator consumes its inputs. No lock is held while user code runs (none runs here).
// Included by <spindle/future.hpp>.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <iterator>
#include <memory>  // std::shared_ptr for the combinators' shared bookkeeping
#include <mutex>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "future.hpp"

namespace spindle {

namespace detail {

template <class T>
struct when_all_vector_state {
  std::vector<future<T>> inputs;
  std::atomic<std::size_t> remaining;
  producer<std::vector<T>> out;

  void finish() noexcept {
    for (auto& f : inputs) {
      auto* s = future_access::state(f);
      if (s->has_exception()) {
        out.set_exception(s->exception());
        return;
      }
    }
    out.fulfil([&] {
      std::vector<T> values;
      values.reserve(inputs.size());
      for (auto& f : inputs) values.push_back(std::move(future_access::state(f)->value()));
      return values;
    });
  }
};

}  // namespace detail

/// A future of every input's value, in input order. Ready when all inputs are; if any failed, it
/// holds the exception of the first failed input by position. Consumes the inputs. Throws
/// std::invalid_argument if an input is invalid. Allocates.
template <class T>
  requires(!std::is_void_v<T>)
future<std::vector<T>> when_all(std::vector<future<T>> inputs) {
  for (std::size_t i = 0; i < inputs.size(); ++i)
    if (!inputs[i].valid())
      throw std::invalid_argument("spindle::when_all: input " + std::to_string(i) + " is invalid");
  auto [p, out] = detail::make_pair<std::vector<T>>();
  if (inputs.empty()) {
    p.fulfil([] { return std::vector<T>{}; });
    return std::move(out);
  }
  auto st = std::make_shared<detail::when_all_vector_state<T>>();
  st->remaining.store(inputs.size(), std::memory_order_relaxed);
  st->out = std::move(p);
  st->inputs = std::move(inputs);
  for (auto& f : st->inputs) {
    detail::future_access::state(f)->set_continuation([st]() noexcept {
      // acq_rel: the last decrement sees every other input's result (each published before
      // its own decrement); pairs with the other continuations' decrements.
      if (st->remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) st->finish();
    });
  }
  return std::move(out);
}

/// when_all for future<void>: a future<void> ready when every input is. Same error rule.
inline future<void> when_all(std::vector<future<void>> inputs) {
  std::vector<future<int>> as_int;
  as_int.reserve(inputs.size());
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].valid())
      throw std::invalid_argument("spindle::when_all: input " + std::to_string(i) + " is invalid");
    as_int.push_back(inputs[i].then([] { return 0; }));
  }
  return when_all(std::move(as_int)).then([](std::vector<int>) {});
}

namespace detail {

template <class... T>
struct when_all_tuple_state {
  std::tuple<future<T>...> inputs;
  std::atomic<std::size_t> remaining{sizeof...(T)};
  producer<std::tuple<T...>> out;

  void finish() noexcept {
    std::exception_ptr first;
    std::apply(
        [&](auto&... f) {
          ((first == nullptr && future_access::state(f)->has_exception()
                ? void(first = future_access::state(f)->exception())
                : void()),
           ...);
        },
        inputs);
    if (first) {
      out.set_exception(first);
      return;
    }
    out.fulfil([&] {
      return std::apply(
          [](auto&... f) {
            return std::tuple<T...>(std::move(future_access::state(f)->value())...);
          },
          inputs);
    });
  }
};

}  // namespace detail

/// A future of a tuple of the inputs' values. Same rules as the vector form. T must not be void.
template <class... T>
future<std::tuple<T...>> when_all(future<T>... inputs) {
  static_assert((!std::is_void_v<T> && ...),
                "spindle::when_all(future<T>...): a future<void> has no value for the tuple; "
                "use f.then([] { return 0; }) or the vector form");
  if (!(inputs.valid() && ...))
    throw std::invalid_argument("spindle::when_all: an input is invalid");
  auto [p, out] = detail::make_pair<std::tuple<T...>>();
  if constexpr (sizeof...(T) == 0) {
    p.fulfil([] { return std::tuple<>{}; });
  } else {
    auto st = std::make_shared<detail::when_all_tuple_state<T...>>();
    st->out = std::move(p);
    st->inputs = std::tuple<future<T>...>(std::move(inputs)...);
    std::apply(
        [&](auto&... f) {
          (detail::future_access::state(f)->set_continuation([st]() noexcept {
            // acq_rel: as in the vector form.
            if (st->remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) st->finish();
          }),
           ...);
        },
        st->inputs);
  }
  return std::move(out);
}

/// The result of when_any: futures[index] is ready (the first to finish).
template <class T>
struct when_any_result {
  std::size_t index;
  std::vector<future<T>> futures;
};

namespace detail {

template <class T>
struct when_any_state {
  std::atomic<bool> fired{false};
  std::vector<future<T>> outputs;
  producer<when_any_result<T>> out;
};

// Forwards the result of `from` into `to`.
template <class T>
void forward_result(shared_state<T>* from, producer<T>& to) noexcept {
  if (from->has_exception()) {
    to.set_exception(from->exception());
  } else if constexpr (std::is_void_v<T>) {
    to.fulfil([] {});
  } else {
    to.fulfil([&]() -> T { return std::move(from->value()); });
  }
}

}  // namespace detail

/// A future of the index of the first input to finish (with a value or an error) and all the
/// futures (the inputs' results, forwarded: the ones not yet finished finish later).
/// Consumes the inputs. Throws std::invalid_argument if `inputs` is empty or holds an invalid
/// future. Allocates one extra state per input.
template <class T>
future<when_any_result<T>> when_any(std::vector<future<T>> inputs) {
  if (inputs.empty()) throw std::invalid_argument("spindle::when_any: no input futures");
  for (std::size_t i = 0; i < inputs.size(); ++i)
    if (!inputs[i].valid())
      throw std::invalid_argument("spindle::when_any: input " + std::to_string(i) + " is invalid");
  auto [p, out] = detail::make_pair<when_any_result<T>>();
  auto st = std::make_shared<detail::when_any_state<T>>();
  st->out = std::move(p);
  std::vector<detail::producer<T>> forwards;
  forwards.reserve(inputs.size());
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    auto [fp, ff] = detail::make_pair<T>();
    forwards.push_back(std::move(fp));
    st->outputs.push_back(std::move(ff));
  }
  // Every output exists before the first continuation can fire.
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    auto src = detail::future_access::take(inputs[i]);
    auto* raw = src.get();
    raw->set_continuation([raw, i, st, fwd = std::move(forwards[i])]() mutable noexcept {
      detail::forward_result(raw, fwd);
      // acq_rel: only one input wins; the winner alone moves `outputs`.
      if (!st->fired.exchange(true, std::memory_order_acq_rel)) {
        auto outputs = std::move(st->outputs);
        st->out.fulfil([&] { return when_any_result<T>{i, std::move(outputs)}; });
      }
    });
  }
  return std::move(out);
}

namespace detail {

template <class T>
struct completion_state {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<future<T>> inputs;     // guarded by mu once continuations are attached
  std::vector<std::size_t> order;    // guarded by mu: indexes in completion order
  std::size_t taken = 0;             // guarded by mu: how many were yielded
};

}  // namespace detail

/// The range returned by as_completed(): an input range of future<T>, each ready, in the order
/// they finished. Dereferencing yields the future (moved out: dereference once per position);
/// begin() and ++ block until the next input finishes. Not thread-safe (one consumer).
template <class T>
class completion_range {
 public:
  class iterator {
   public:
    using value_type = future<T>;
    using difference_type = std::ptrdiff_t;
    using iterator_concept = std::input_iterator_tag;

    iterator() = default;

    /// The next finished future (ready). Blocks until it exists.
    future<T> operator*() const {
      std::unique_lock lock(st_->mu);
      st_->cv.wait(lock, [&] { return st_->order.size() > st_->taken; });
      return std::move(st_->inputs[st_->order[st_->taken]]);
    }
    iterator& operator++() {
      std::lock_guard lock(st_->mu);
      ++st_->taken;
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& it, std::default_sentinel_t) {
      std::lock_guard lock(it.st_->mu);
      return it.st_->taken == it.st_->inputs.size();
    }

   private:
    friend class completion_range;
    explicit iterator(detail::completion_state<T>* st) : st_(st) {}
    detail::completion_state<T>* st_ = nullptr;
  };

  iterator begin() { return iterator(st_.get()); }
  std::default_sentinel_t end() const noexcept { return {}; }
  /// The number of futures the range yields.
  std::size_t size() const noexcept { return n_; }

 private:
  template <class U>
  friend completion_range<U> as_completed(std::vector<future<U>> inputs);
  completion_range(std::shared_ptr<detail::completion_state<T>> st, std::size_t n)
      : st_(std::move(st)), n_(n) {}

  std::shared_ptr<detail::completion_state<T>> st_;
  std::size_t n_;
};

/// An input range yielding the inputs in completion order (see completion_range). Consumes the
/// inputs. Throws std::invalid_argument if an input is invalid. Allocates.
template <class T>
completion_range<T> as_completed(std::vector<future<T>> inputs) {
  for (std::size_t i = 0; i < inputs.size(); ++i)
    if (!inputs[i].valid())
      throw std::invalid_argument("spindle::as_completed: input " + std::to_string(i) +
                                  " is invalid");
  auto st = std::make_shared<detail::completion_state<T>>();
  std::size_t n = inputs.size();
  st->order.reserve(n);
  // Each input is forwarded to a fresh future that the range yields, so the inputs' own
  // continuation slots can hold the bookkeeping.
  std::vector<detail::producer<T>> forwards;
  forwards.reserve(n);
  {
    std::lock_guard lock(st->mu);
    for (std::size_t i = 0; i < n; ++i) {
      auto [fp, ff] = detail::make_pair<T>();
      forwards.push_back(std::move(fp));
      st->inputs.push_back(std::move(ff));
    }
  }
  for (std::size_t i = 0; i < n; ++i) {
    auto src = detail::future_access::take(inputs[i]);
    auto* raw = src.get();
    raw->set_continuation([raw, i, st, fwd = std::move(forwards[i])]() mutable noexcept {
      detail::forward_result(raw, fwd);
      {
        std::lock_guard lock(st->mu);
        st->order.push_back(i);  // reserved above: never allocates, never throws
      }
      st->cv.notify_one();
    });
  }
  return completion_range<T>(std::move(st), n);
}

}  // namespace spindle
