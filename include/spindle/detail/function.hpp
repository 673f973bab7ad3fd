// spindle/detail/function.hpp - a move-only callable with a small buffer.
//
// Defines:
//   move_function<R(Args...), Capacity>   owns any callable invocable as R(Args...), including
//                                         move-only ones. Callables of at most Capacity bytes
//                                         (and nothrow-movable, suitably aligned) live inside the
//                                         object: storing them never allocates. Larger ones are
//                                         kept on the heap (one allocation).
//   task                                  move_function<void()> of 64 bytes: the unit of work of
//                                         thread_pool.
//
// Unlike std::function it accepts move-only callables and never copies; unlike
// std::move_only_function (C++23) it is available in C++20 and its inline size is fixed here, so
// a thread pool can promise "no allocation per task" for small tasks.
#pragma once

#include <cstddef>
#include <functional>  // std::invoke
#include <new>         // placement new, std::launder
#include <type_traits>
#include <utility>

namespace spindle::detail {

template <class Signature, std::size_t Capacity = 48>
class move_function;

/// See the header comment. Not thread-safe (a value type, like std::function).
template <class R, class... Args, std::size_t Capacity>
class move_function<R(Args...), Capacity> {
  static_assert(Capacity >= sizeof(void*), "move_function: the buffer must hold a pointer");

 public:
  /// An empty function; calling it is undefined. Never allocates.
  move_function() noexcept = default;

  /// Takes ownership of `f`. Never allocates if fits_inline<F>; otherwise allocates once.
  template <class F, class D = std::decay_t<F>>
    requires(!std::is_same_v<D, move_function> && std::is_invocable_r_v<R, D&, Args...> &&
             std::is_constructible_v<D, F>)
  move_function(F&& f) {  // NOLINT: implicit, like std::function
    if constexpr (fits_inline<D>) {
      ::new (static_cast<void*>(buf_)) D(std::forward<F>(f));
      ops_ = &inline_ops<D>;
    } else {
      ::new (static_cast<void*>(buf_)) D*(new D(std::forward<F>(f)));
      ops_ = &heap_ops<D>;
    }
  }

  move_function(move_function&& o) noexcept : ops_(o.ops_) {
    if (ops_ != nullptr) {
      ops_->relocate(o.buf_, buf_);
      o.ops_ = nullptr;
    }
  }

  move_function& operator=(move_function&& o) noexcept {
    if (this != &o) {
      reset();
      if (o.ops_ != nullptr) {
        o.ops_->relocate(o.buf_, buf_);
        ops_ = o.ops_;
        o.ops_ = nullptr;
      }
    }
    return *this;
  }

  move_function(const move_function&) = delete;
  move_function& operator=(const move_function&) = delete;

  ~move_function() { reset(); }

  /// Destroys the held callable, if any. Never allocates.
  void reset() noexcept {
    if (ops_ != nullptr) {
      auto* ops = ops_;
      ops_ = nullptr;
      ops->destroy(buf_);
    }
  }

  /// True if a callable is held.
  explicit operator bool() const noexcept { return ops_ != nullptr; }

  /// Calls the held callable. Requires a callable to be held.
  R operator()(Args... args) { return ops_->invoke(buf_, std::forward<Args>(args)...); }

  /// True if a callable of type F is stored without allocating.
  template <class F>
  static constexpr bool fits_inline = sizeof(F) <= Capacity &&
                                      alignof(F) <= alignof(std::max_align_t) &&
                                      std::is_nothrow_move_constructible_v<F>;

 private:
  struct ops_table {
    R (*invoke)(void* buf, Args&&... args);
    void (*relocate)(void* from, void* to) noexcept;  // move-construct at `to`, destroy `from`
    void (*destroy)(void* buf) noexcept;
  };

  template <class F>
  static F* inline_ptr(void* buf) noexcept {
    return std::launder(static_cast<F*>(buf));
  }
  template <class F>
  static F*& heap_ptr(void* buf) noexcept {
    return *std::launder(static_cast<F**>(buf));
  }

  template <class F>
  static constexpr ops_table inline_ops = {
      [](void* buf, Args&&... args) -> R {
        return std::invoke(*inline_ptr<F>(buf), std::forward<Args>(args)...);
      },
      [](void* from, void* to) noexcept {
        F* src = inline_ptr<F>(from);
        ::new (to) F(std::move(*src));
        src->~F();
      },
      [](void* buf) noexcept { inline_ptr<F>(buf)->~F(); },
  };

  template <class F>
  static constexpr ops_table heap_ops = {
      [](void* buf, Args&&... args) -> R {
        return std::invoke(*heap_ptr<F>(buf), std::forward<Args>(args)...);
      },
      [](void* from, void* to) noexcept { ::new (to) F*(heap_ptr<F>(from)); },
      [](void* buf) noexcept { delete heap_ptr<F>(buf); },
  };

  const ops_table* ops_ = nullptr;
  alignas(std::max_align_t) unsigned char buf_[Capacity];
};

/// The unit of work of thread_pool: 64 bytes, callables up to 48 bytes stored inline.
using task = move_function<void(), 48>;
static_assert(sizeof(task) == 64, "a task is one cache line");

}  // namespace spindle::detail
