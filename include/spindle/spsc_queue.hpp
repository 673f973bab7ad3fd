// spindle/spsc_queue.hpp - spsc_queue<T>: a single-producer single-consumer channel of fixed
// capacity, the fastest hand-off between two threads.
//
// Primary operations: push / try_push / push_for, pop / try_pop / pop_for (and the stop_token
// forms), close(). spsc_queue models spindle::channel (see channel.hpp for the contract), with
// one requirement more: at most one thread pushes and at most one thread pops at any time.
//
//   spindle::spsc_queue<int> q(1024);
//   std::jthread producer([&] { for (int i = 0; i < 100; ++i) q.push(i); q.close(); });
//   while (auto v = q.pop()) use(*v);          // ends once closed and drained
//
// Guarantees:
// - Capacity is fixed at construction; the slots are allocated once, and no operation allocates
//   afterwards. T needs a noexcept move constructor, move assignment and destructor.
// - Wait-free push and pop (no loop that another thread can prolong): each slot carries a turn
//   number, so the producer and the consumer look only at the slot they hand over, never at
//   each other's index (no index cache line bounces between them per item).
//   The store-load orderings the fast path needs (push's busy flag against close(); the
//   wake-up check in wake_all_event_count::notify()) are fence_light(): with membarrier(2)
//   (Linux >= 4.14, PRIVATE_EXPEDITED) only a compiler barrier, and close() and the sleep
//   path pay a system call instead; without membarrier each is a full fence (x86: mfence or a
//   locked instruction). No CAS or other read-modify-write on the fast path either way.
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

/// A single-producer single-consumer FIFO of fixed capacity.
///
/// Requires: at most one thread in the push functions and at most one thread in the pop
/// functions at any time (they may be different threads over the queue's life if the hand-over
/// is synchronised). close(), closed(), size(), capacity() may be called from any thread.
///
/// Ordering: FIFO. Visibility: everything the producer did before a push() that returns ok is
/// visible to the consumer once its pop() returns that item.
///
/// Close: close() is idempotent and wakes both sides. It waits for a push already in progress
/// (a few instructions: the push never blocks inside that window), so a push that returns ok
/// before close() returns has its item poppable; a push after it returns `closed` and leaves
/// its argument untouched. Pops return `closed` only once closed and drained.
///
/// Lifetime: the destructor destroys the items still queued. Requires that no thread is inside
/// a member function: destroying the queue while a caller is blocked in it, or has not yet
/// returned, is undefined behaviour (the destructor does not wake or wait for anyone). close()
/// wakes the blocked callers, but one caller's return does not mean the others have left: a
/// thread that saw `closed` may return while the closing thread is still inside close(), or a
/// producer still inside the wake-up that ends its push. Join (or otherwise synchronise with)
/// every thread that used the queue, the closer included, before destroying it.
template <class T>
class spsc_queue : public detail::queue_facade<spsc_queue<T>, T> {
  using facade = detail::queue_facade<spsc_queue<T>, T>;
  friend facade;

 public:
  using value_type = T;
  /// One thread pushes and one pops at a time (see channel.hpp: multi_producer_v): worker_pool,
  /// fan_in and pipelines refuse it where they would use several.
  static constexpr bool multi_producer = false;
  static constexpr bool multi_consumer = false;

  /// Makes an empty queue with room for `capacity` items; `options` tunes how blocking calls
  /// wait. Allocates the slots, once. Throws std::invalid_argument if capacity is 0.
  explicit spsc_queue(std::size_t capacity, queue_options options = {})
      : spin_(detail::queue_spin(options)),
        index_((detail::check_capacity("spindle::spsc_queue", capacity), capacity)),
        slots_(std::make_unique<slot[]>(capacity)) {
    detail::check_element<T>();
    for (std::size_t i = 0; i < capacity; ++i)
      slots_[i].seq.store(2 * i, std::memory_order_relaxed);  // before any other thread sees *this
  }

  spsc_queue(const spsc_queue&) = delete;
  spsc_queue& operator=(const spsc_queue&) = delete;

  /// Destroys the items still queued. Requires that no thread uses the queue any more.
  ~spsc_queue() {
    std::uint64_t head = head_.load(std::memory_order_relaxed);
    std::uint64_t tail = tail_.load(std::memory_order_relaxed);
    for (; head != tail; ++head) slots_[index_(head)].item.destroy();
  }

  // push, try_push, push_for, pop, try_pop, pop_for and pop() come from detail::queue_facade
  // (each documented there); which threads may call them is said in the class comment.
  // ---- state (any thread) ----------------------------------------------------------------------

  /// Closes the queue: later pushes return closed; pops drain what is left, then return closed.
  /// Wakes both sides. Idempotent. Never allocates. Thread-safe.
  /// Waits (briefly: at most one push in progress) for a push that saw the queue open to finish.
  void close() noexcept {
    std::uint32_t expected = open;
    // seq_cst: one closer wins; the heavy fence below orders this store before the load of
    // busy_ (the asymmetric Dekker pair with the light fence in push_once()).
    if (state_.compare_exchange_strong(expected, closing, std::memory_order_seq_cst)) {
      detail::fence_heavy();
      // acquire: pairs with the release that ends a push, so its item is published before we
      // seal. A push that starts from now on sees `closing` and touches nothing.
      detail::spin_then_yield_until([this] { return busy_.load(std::memory_order_acquire) == 0; },
                                    spin_);
      // release: pairs with the acquire in pop_once(); a consumer that sees `sealed` sees every
      // item published before it.
      state_.store(sealed, std::memory_order_release);
    } else {
      // Another close() is sealing: return only once it has (close() means closed).
      // acquire: as above; the sealer's items are visible once `sealed` is seen.
      detail::spin_then_yield_until(
          [this] { return state_.load(std::memory_order_acquire) == sealed; }, spin_);
    }
    not_empty_.notify();
    not_full_.notify();
  }

  /// Whether close() was called. Thread-safe.
  bool closed() const noexcept { return state_.load(std::memory_order_acquire) != open; }

  /// The capacity given at construction. Thread-safe.
  std::size_t capacity() const noexcept { return index_.capacity(); }

  /// The number of queued items, approximate under concurrency. Thread-safe.
  std::size_t size() const noexcept {
    std::uint64_t head = head_.load(std::memory_order_relaxed);
    std::uint64_t tail = tail_.load(std::memory_order_relaxed);
    return tail <= head ? 0 : static_cast<std::size_t>(tail - head);
  }

  /// Whether the queue looks empty (approximate under concurrency). Thread-safe.
  bool empty() const noexcept { return size() == 0; }

 private:
  using copier = typename facade::copier;
  using mover = typename facade::mover;

  // Whether the slot of position `tail` is free (producer only).
  bool room(std::uint64_t tail) const noexcept {
    // acquire: pairs with the release in pop_once() that handed the slot back, so the
    // consumer's read of the old item happens before we overwrite it.
    return slots_[index_(tail)].seq.load(std::memory_order_acquire) == 2 * tail;
  }

  template <class Construct>
  status push_once(const Construct& construct) {
    if constexpr (std::is_same_v<Construct, copier> && !std::is_nothrow_copy_constructible_v<T>) {
      // A copy that may throw is made outside the busy window below, so close() never waits
      // on an exception. It is made only when there is room.
      if (state_.load(std::memory_order_relaxed) != open) return status::closed;
      if (!room(tail_.load(std::memory_order_relaxed))) return status::full;  // only we write it
      T copy(construct.v);
      return push_once(mover{copy});
    } else {
      // relaxed: a quick exit once close() is visible; the check that counts is below.
      if (state_.load(std::memory_order_relaxed) != open) return status::closed;
      // relaxed store + light fence: busy_ is ordered before the re-check of state_; pairs with
      // the heavy fence in close() (asymmetric Dekker). Either close() sees us busy and waits
      // for this push, or we see it closing and publish nothing.
      busy_.store(1, std::memory_order_relaxed);
      detail::fence_light();
      if (state_.load(std::memory_order_relaxed) != open) {
        busy_.store(0, std::memory_order_relaxed);
        return status::closed;
      }
      // relaxed: only this thread writes the tail.
      std::uint64_t tail = tail_.load(std::memory_order_relaxed);
      if (!room(tail)) {
        busy_.store(0, std::memory_order_relaxed);
        return status::full;
      }
      slot& s = slots_[index_(tail)];
      construct(s.item);  // noexcept here
      // release: publishes the item; pairs with the acquire in pop_once().
      s.seq.store(2 * tail + 1, std::memory_order_release);
      // relaxed: the tail is only a count, for size() and the destructor.
      tail_.store(tail + 1, std::memory_order_relaxed);
      // release: pairs with the acquire in close(): a sealed queue includes this item.
      busy_.store(0, std::memory_order_release);
      not_empty_.notify();
      return status::ok;
    }
  }

  template <class Consume>
  status pop_once(const Consume& consume) noexcept {
    // relaxed: only this thread writes the head.
    std::uint64_t head = head_.load(std::memory_order_relaxed);
    slot& s = slots_[index_(head)];
    // acquire: pairs with the release in push_once() that published the item.
    if (s.seq.load(std::memory_order_acquire) != 2 * head + 1) {
      // acquire: pairs with the release in close(); once sealed, no push is in progress, so
      // a slot still empty on the re-check below stays empty.
      if (state_.load(std::memory_order_acquire) != sealed) return status::empty;
      if (s.seq.load(std::memory_order_acquire) != 2 * head + 1) return status::closed;
    }
    consume(*s.item.get());
    s.item.destroy();
    // release: hands the slot to the next lap's push; pairs with the acquire in room().
    s.seq.store(2 * (head + capacity()), std::memory_order_release);
    // relaxed: the head is only a count, for size() and the destructor.
    head_.store(head + 1, std::memory_order_relaxed);
    not_full_.notify();
    return status::ok;
  }

  static constexpr std::uint32_t open = 0, closing = 1, sealed = 2;

  // The turn of a slot, in units of two: 2*pos when free for the push of position pos,
  // 2*pos + 1 once its item is there, 2*(pos + capacity) once popped. The two sides meet only
  // in the slots they hand over, never on each other's index.
  struct slot {
    std::atomic<std::uint64_t> seq{0};
    detail::storage<T> item;
  };

  // The producer's line: the tail (written by it, read only by size()) and its busy flag.
  alignas(detail::false_sharing_range) std::atomic<std::uint64_t> tail_{0};  // next push
  std::atomic<std::uint32_t> busy_{0};  // 1 while a push that saw the queue open runs
  // The consumer's line: the head (written by it, read only by size()).
  alignas(detail::false_sharing_range) std::atomic<std::uint64_t> head_{0};  // next pop
  // Read by every push, written only by close(): stays shared in every cache.
  // open | closing | sealed
  alignas(detail::false_sharing_range) std::atomic<std::uint32_t> state_{open};
  // The consumer sleeps on not_empty_, the producer on not_full_.
  alignas(detail::false_sharing_range) detail::wake_all_event_count not_empty_;
  alignas(detail::false_sharing_range) detail::wake_all_event_count not_full_;
  alignas(detail::false_sharing_range) const detail::spin_budget spin_;  // from queue_options
  const detail::ring_index index_;
  const std::unique_ptr<slot[]> slots_;
};

}  // namespace spindle
