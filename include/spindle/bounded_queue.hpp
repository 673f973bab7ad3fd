// spindle/bounded_queue.hpp - bounded_queue<T>: a multi-producer multi-consumer channel of fixed
// capacity.
//
// Primary operations: push / try_push / push_for, pop / try_pop / pop_for (and the stop_token
// forms), close(). bounded_queue models spindle::channel (see channel.hpp for the contract).
//
//   spindle::bounded_queue<int> q(1024);
//   std::jthread producer([&] { for (int i = 0; i < 100; ++i) q.push(i); q.close(); });
//   while (auto v = q.pop()) use(*v);          // ends once closed and drained
//
// Guarantees:
// - Capacity is fixed at construction; the slots are allocated once, and no operation allocates
//   afterwards. T needs a noexcept move constructor, move assignment and destructor.
// - The fast path takes no lock: a ring of slots, each with a sequence number that says whose
//   turn it is (Vyukov's bounded MPMC design). A producer claims a position with one CAS on the
//   tail, a consumer with one CAS on the head; they meet only in the slot they hand over.
//   It is not lock-free in the strict sense: a producer preempted between claiming a position
//   and publishing its item holds that position up, and consumers reaching it report `empty`
//   (or wait) until it resumes, even when later positions already hold items; likewise a
//   preempted consumer holds up the producer of that slot's next lap.
// - Blocking calls spin briefly (detail::spin_until, the one spin policy; queue_options tunes
//   it), then sleep in the kernel (detail::wake_all_event_count, a futex): a thread blocked on
//   an empty or full queue uses no CPU while it waits.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>  // std::unique_ptr
#include <optional>
#include <stop_token>
#include <type_traits>
#include <utility>

#include "detail/config.hpp"
#include "detail/queue_facade.hpp"
#include "detail/ring.hpp"
#include "detail/wait.hpp"
#include "status.hpp"

namespace spindle {

/// A multi-producer multi-consumer FIFO of fixed capacity.
///
/// Ordering: FIFO per producer (items one thread pushes are popped in the order it pushed them).
/// Items of different producers are popped in the order their pushes claimed positions (the CAS
/// on the tail). The queue is not linearizable: a push claims its position before it publishes
/// the item, so while it is in progress try_pop() may return `empty` although pushes that
/// claimed later positions have already returned ok, and size() counts items still being
/// pushed.
///
/// Visibility: everything a thread did before a push() that returns ok is visible to the thread
/// whose pop() returns that item.
///
/// Close: close() is idempotent and wakes every blocked caller. Pushes that claimed a position
/// before close() succeed and their items can still be popped; every push after it returns
/// `closed` and leaves its argument untouched. Pops return `closed` only once the queue is closed
/// and drained: closing never loses an item.
///
/// Lifetime: the destructor destroys the items still queued. Requires that no thread is inside
/// a member function: destroying the queue while a caller is blocked in it, or has not yet
/// returned, is undefined behaviour (the destructor does not wake or wait for anyone). close()
/// wakes the blocked callers, but one caller's return does not mean the others have left: a
/// thread that saw `closed` may return while the closing thread is still inside close(), or a
/// producer still inside the wake-up that ends its push. Join (or otherwise synchronise with)
/// every thread that used the queue, the closer included, before destroying it.
template <class T>
class bounded_queue : public detail::queue_facade<bounded_queue<T>, T> {
  using facade = detail::queue_facade<bounded_queue<T>, T>;
  friend facade;

 public:
  using value_type = T;
  /// Any number of threads push and pop at once (see channel.hpp: multi_producer_v).
  static constexpr bool multi_producer = true;
  static constexpr bool multi_consumer = true;

  /// Makes an empty queue with room for `capacity` items; `options` tunes how blocking calls
  /// wait. Allocates the slots, once. Throws std::invalid_argument if capacity is 0.
  explicit bounded_queue(std::size_t capacity, queue_options options = {})
      : spin_(detail::queue_spin(options)),
        index_((detail::check_capacity("spindle::bounded_queue", capacity), capacity)),
        slots_(std::make_unique<slot[]>(capacity)) {
    detail::check_element<T>();
    for (std::size_t i = 0; i < capacity; ++i)
      slots_[i].seq.store(2 * i, std::memory_order_relaxed);  // before any other thread sees *this
  }

  bounded_queue(const bounded_queue&) = delete;
  bounded_queue& operator=(const bounded_queue&) = delete;

  /// Destroys the items still queued. Requires that no thread uses the queue any more.
  ~bounded_queue() {
    std::uint64_t head = head_.load(std::memory_order_relaxed);
    std::uint64_t tail = tail_.load(std::memory_order_relaxed) & ~detail::closed_bit;
    for (; head != tail; ++head) slots_[index_(head)].item.destroy();
  }

  // push, try_push, push_for, pop, try_pop, pop_for and pop() come from detail::queue_facade
  // (each documented there); which threads may call them is said in the class comment.
  // ---- state -----------------------------------------------------------------------------------

  /// Closes the queue: later pushes return closed; pops drain what is left, then return closed.
  /// Wakes every blocked caller. Idempotent. Never allocates. Thread-safe.
  void close() noexcept {
    // relaxed: the bit's only job is to make later claims fail, which the RMW's atomicity
    // guarantees; the wake-up below is ordered by wake_all_event_count's fences.
    tail_.fetch_or(detail::closed_bit, std::memory_order_relaxed);
    not_empty_.notify();
    not_full_.notify();
  }

  /// Whether close() was called. Thread-safe.
  bool closed() const noexcept {
    // acquire: pairs with nothing in particular; a caller that sees true sees the queue closed.
    return (tail_.load(std::memory_order_acquire) & detail::closed_bit) != 0;
  }

  /// The capacity given at construction. Thread-safe.
  std::size_t capacity() const noexcept { return index_.capacity(); }

  /// The number of queued items, approximate under concurrency (exact when quiescent). Includes
  /// items whose push is still in progress. Thread-safe.
  std::size_t size() const noexcept {
    std::uint64_t head = head_.load(std::memory_order_relaxed);
    std::uint64_t tail = tail_.load(std::memory_order_relaxed) & ~detail::closed_bit;
    if (tail <= head) return 0;
    std::uint64_t n = tail - head;
    return n > capacity() ? capacity() : static_cast<std::size_t>(n);
  }

  /// Whether the queue looks empty (approximate under concurrency). Thread-safe.
  bool empty() const noexcept { return size() == 0; }

 private:
  // Slots are packed, not padded to a cache line each: a producer running ahead of the
  // consumers fills several slots per line, so a hand-off moves fewer lines (measured faster
  // here at 1P1C to 4P4C than one slot per line; see bench/RESULTS.md).
  struct slot {
    // The turn, in units of two so that it works for a capacity of 1: 2*pos when free for the
    // producer of position pos, 2*pos + 1 once its item is there, 2*(pos + capacity) once a
    // consumer took it (the producer turn of the next lap).
    std::atomic<std::uint64_t> seq{0};
    detail::storage<T> item;
  };
  static_assert(sizeof(slot) % alignof(slot) == 0, "slots tile the array without gaps");

  using copier = typename facade::copier;
  using mover = typename facade::mover;

  // One attempt to push. A copy that may throw is made before a position is claimed, so a
  // throwing copy constructor leaves the queue as it was.
  template <class Construct>
  status push_once(const Construct& construct) {
    if constexpr (std::is_same_v<Construct, copier> && !std::is_nothrow_copy_constructible_v<T>) {
      if (!room_now()) return closed() ? status::closed : status::full;
      T copy(construct.v);
      return push_once(mover{copy});
    } else {
      status s = claim_and_push(construct);
      if (s == status::ok) not_empty_.notify();
      return s;
    }
  }

  // Whether the next position's slot is free (a hint for the throwing-copy path).
  bool room_now() const noexcept {
    std::uint64_t tail = tail_.load(std::memory_order_relaxed);
    if (tail & detail::closed_bit) return false;
    // acquire: pairs with the release in pop_once() that freed the slot.
    return slots_[index_(tail)].seq.load(std::memory_order_acquire) == 2 * tail;
  }

  template <class Construct>
  status claim_and_push(const Construct& construct) noexcept {
    std::uint64_t tail = tail_.load(std::memory_order_relaxed);
    for (;;) {
      if (tail & detail::closed_bit) return status::closed;
      slot& s = slots_[index_(tail)];
      // acquire: pairs with the release in pop_once() that handed the slot back, so the
      // consumer's read of the old item happens before we overwrite it.
      std::uint64_t seq = s.seq.load(std::memory_order_acquire);
      auto diff = static_cast<std::int64_t>(seq - 2 * tail);
      if (diff == 0) {
        // relaxed: the claim only needs atomicity; the slot's seq carries the data. Fails if
        // another producer claimed `tail` or close() set the closed bit.
        if (tail_.compare_exchange_weak(tail, tail + 1, std::memory_order_relaxed,
                                        std::memory_order_relaxed)) {
          construct(s.item);
          // release: publishes the item; pairs with the acquire in pop_once().
          s.seq.store(2 * tail + 1, std::memory_order_release);
          return status::ok;
        }
      } else if (diff < 0) {
        // The slot still holds the item of the previous lap: full, unless the tail moved.
        std::uint64_t now = tail_.load(std::memory_order_relaxed);
        if (now == tail) return status::full;
        tail = now;
      } else {
        tail = tail_.load(std::memory_order_relaxed);  // another producer got there first
      }
    }
  }

  template <class Consume>
  status pop_once(const Consume& consume) noexcept {
    std::uint64_t head = head_.load(std::memory_order_relaxed);
    for (;;) {
      slot& s = slots_[index_(head)];
      // acquire: pairs with the release in claim_and_push() that published the item.
      std::uint64_t seq = s.seq.load(std::memory_order_acquire);
      auto diff = static_cast<std::int64_t>(seq - (2 * head + 1));
      if (diff == 0) {
        // relaxed: the claim only needs atomicity; the slot's seq carries the data.
        if (head_.compare_exchange_weak(head, head + 1, std::memory_order_relaxed,
                                        std::memory_order_relaxed)) {
          T& v = *s.item.get();
          consume(v);
          s.item.destroy();
          // release: hands the slot to the producer of the next lap; pairs with the acquire in
          // claim_and_push().
          s.seq.store(2 * (head + capacity()), std::memory_order_release);
          not_full_.notify();
          return status::ok;
        }
      } else if (diff < 0) {
        std::uint64_t now = head_.load(std::memory_order_relaxed);
        if (now != head) {
          head = now;
          continue;
        }
        // Nothing published at `head`. Closed and drained only if no push claimed `head`:
        // the closed bit freezes the tail, so a tail equal to head stays equal.
        std::uint64_t tail = tail_.load(std::memory_order_relaxed);
        if ((tail & detail::closed_bit) && (tail & ~detail::closed_bit) == head)
          return status::closed;
        return status::empty;  // or a push between its claim and its publication
      } else {
        head = head_.load(std::memory_order_relaxed);  // another consumer got there first
      }
    }
  }

  // Producers write tail_, consumers head_; each on its own cache-line pair so that the two
  // sides do not false-share. The event counts are read by every successful operation and
  // written only when a thread goes to sleep.
  alignas(detail::false_sharing_range) std::atomic<std::uint64_t> tail_{0};  // next push | closed
  alignas(detail::false_sharing_range) std::atomic<std::uint64_t> head_{0};  // next pop
  // Consumers sleep on not_empty_, producers on not_full_.
  alignas(detail::false_sharing_range) detail::wake_all_event_count not_empty_;
  alignas(detail::false_sharing_range) detail::wake_all_event_count not_full_;
  alignas(detail::false_sharing_range) const detail::spin_budget spin_;  // from queue_options
  const detail::ring_index index_;
  const std::unique_ptr<slot[]> slots_;
};

}  // namespace spindle
