// spindle/thread_pool.hpp - a fixed set of worker threads running submitted tasks.
//
// Defines:
//   thread_pool           post(f) (fire and forget), submit(f, args...) -> future, wait_idle(),
//                         shutdown(), size().
//   thread_pool_options   on_error (where an exception escaping a post()ed task goes), spin.
//
// Design: every thread that posts (each worker, and each outside thread, up to 64 of them) owns
// a single-producer multi-consumer ring of 1024 small-buffer tasks (64 bytes each). Posting is a
// slot write and two fences, no lock and no read-modify-write. Workers take runs of up to 16
// tasks (a 1/N share of what is queued, so a short queue spreads over the workers) from their
// own ring first, then from the others, with one CAS per run, and run them with no lock held.
// A full ring (or a 65th posting thread) spills to a mutex-protected overflow queue. An idle
// worker spins briefly (yielding now and then), then sleeps on an event_count; a post wakes a
// sleeper only when no worker is spinning. Counts of tasks pushed (per ring) and completed (per
// worker) give pending() without a shared counter.
//
// Guarantees:
//   - Tasks one thread posts start in the order it posted them, as long as its ring (1024
//     tasks) does not overflow; tasks of different threads have no order between them.
//   - Visibility: everything a thread did before post()/submit() is visible to the task.
//   - No allocation per task for callables of 48 bytes or less (submit: 40 bytes of callable
//     and arguments, plus the future's shared state); the first post from a thread allocates
//     its ring, and the overflow queue grows geometrically and never shrinks.
//   - Tasks may be move-only. Tasks may post/submit more tasks, also during shutdown: those run
//     too. Nothing submitted is dropped.
//   - No exception is lost: submit() stores it in the future; an exception escaping a post()ed
//     task goes to options.on_error, or, if there is none, is printed and std::terminate() is
//     called (as for an exception escaping a std::thread).
//   - Blocking from inside a worker: future::get()/wait() on a worker runs this pool's queued
//     tasks while it waits (it helps); wait_idle() and shutdown() on a worker throw
//     std::logic_error (they would wait for the calling task itself).
//
// Shutdown (shutdown() or the destructor), in order:
//   1. post()/submit() from threads that are not workers of this pool throw spindle::closed_error;
//   2. every task already queued runs, and so does every task that running tasks post;
//   3. when no task is queued or running, the workers exit and are joined.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdio>      // std::fprintf for an unhandled task exception
#include <exception>
#include <functional>  // std::function (options), std::invoke
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/config.hpp"
#include "detail/function.hpp"
#include "detail/future_state.hpp"
#include "detail/wait.hpp"
#include "errors.hpp"
#include "future.hpp"

namespace spindle {

/// Runtime knobs of a thread_pool.
struct thread_pool_options {
  /// Receives every exception that escapes a post()ed task (submit() puts them in the future).
  /// Runs on the worker thread, with no lock held. If empty, the exception is printed and
  /// std::terminate() is called.
  std::function<void(std::exception_ptr)> on_error = {};
  /// How many times an idle worker polls for work (with a pause instruction, yielding the core
  /// every 64 polls) before it sleeps.
  unsigned spin = 2048;
};

namespace detail {

/// A single-producer multi-consumer ring of tasks, with Vyukov's per-slot sequence numbers: the
/// producer writes a slot only once the consumer of its previous lap has moved the task out.
/// Consumers claim a run of positions with one CAS on head_. Never allocates after construction.
class task_ring {
 public:
  static constexpr std::uint64_t capacity = 1024;

  task_ring() : slots_(new slot[capacity]) {
    for (std::uint64_t i = 0; i < capacity; ++i) slots_[i].seq.store(i, std::memory_order_relaxed);
  }

  /// Producer only. Moves `t` in and returns true, or returns false (t untouched) if full.
  bool try_push(task& t) noexcept {
    std::uint64_t pos = tail_local_;
    slot& s = slots_[pos & (capacity - 1)];
    // acquire: pairs with the release in take(); the previous lap's task has been moved out.
    if (s.seq.load(std::memory_order_acquire) != pos) return false;
    s.t = std::move(t);
    // release: publishes the task to the consumer of this position; pairs with take()'s acquire
    // of tail_ (which this store precedes).
    s.seq.store(pos + 1, std::memory_order_release);
    tail_local_ = pos + 1;
    // release: publishes the task and the count; pairs with the acquire in take() and pushed().
    tail_.store(pos + 1, std::memory_order_release);
    return true;
  }

  /// Any thread. Moves up to `max` tasks (a 1/share part of those queued, at least one) into
  /// out[] and returns how many.
  std::size_t take(task* out, std::size_t max, std::size_t share) noexcept {
    std::uint64_t h = head_.load(std::memory_order_relaxed);
    for (;;) {
      // acquire: pairs with the release in try_push(); the slots below tail_ are written.
      std::uint64_t t = tail_.load(std::memory_order_acquire);
      if (h >= t) return 0;
      std::uint64_t k = std::min<std::uint64_t>(max, std::max<std::uint64_t>(1, (t - h) / share));
      // acq_rel on success: claims [h, h + k) exclusively; relaxed on failure (h is reloaded).
      if (head_.compare_exchange_weak(h, h + k, std::memory_order_acq_rel,
                                      std::memory_order_relaxed)) {
        for (std::uint64_t i = 0; i < k; ++i) {
          slot& s = slots_[(h + i) & (capacity - 1)];
          out[i] = std::move(s.t);
          // release: hands the emptied slot back; pairs with the acquire in try_push().
          s.seq.store(h + i + capacity, std::memory_order_release);
        }
        return static_cast<std::size_t>(k);
      }
    }
  }

  /// Tasks ever pushed. acquire: pairs with try_push(); a count that includes a task comes after
  /// the task was published.
  std::uint64_t pushed() const noexcept { return tail_.load(std::memory_order_acquire); }

  /// A hint (relaxed): true if something may be queued.
  bool maybe_nonempty() const noexcept {
    return head_.load(std::memory_order_relaxed) != tail_.load(std::memory_order_relaxed);
  }

  /// Set by the producing thread around its check of closing and its push (see shutdown()).
  std::atomic<std::uint32_t> busy{0};

 private:
  struct alignas(false_sharing_range) slot {
    task t;
    std::atomic<std::uint64_t> seq{0};
  };

  alignas(false_sharing_range) std::atomic<std::uint64_t> head_{0};  // consumers
  alignas(false_sharing_range) std::atomic<std::uint64_t> tail_{0};  // producer writes
  std::uint64_t tail_local_ = 0;                                     // producer only
  std::unique_ptr<slot[]> slots_;
};
static_assert(sizeof(task) <= false_sharing_range - sizeof(std::uint64_t),
              "a ring slot (task + sequence) must fit its padding");

}  // namespace detail

/// A pool of worker threads. See the header comment for ordering, shutdown and errors.
class thread_pool {
 public:
  /// The default number of workers: the hardware concurrency, at least 1.
  static std::size_t default_threads() noexcept {
    return std::max(1u, std::thread::hardware_concurrency());
  }

  /// Starts `threads` workers. Throws std::invalid_argument if threads == 0. Allocates.
  explicit thread_pool(std::size_t threads = default_threads())
      : thread_pool(threads, thread_pool_options{}) {}

  /// Starts `threads` workers with `options`. Throws std::invalid_argument if threads == 0.
  /// Allocates (a 128 KiB task ring per worker, and later per posting thread).
  thread_pool(std::size_t threads, thread_pool_options options)
      : opts_(std::move(options)), id_(next_id()) {
    if (threads == 0)
      throw std::invalid_argument("spindle::thread_pool: threads must be >= 1, got 0");
    max_rings_ = threads + external_rings;
    rings_ = std::make_unique<std::atomic<detail::task_ring*>[]>(max_rings_);
    workers_.reserve(threads);
    for (std::size_t i = 0; i < threads; ++i) {
      workers_.push_back(std::make_unique<worker>());
      workers_.back()->pool = this;
      workers_.back()->ring = add_ring();
    }
    overflow_.reserve(64);
    try {
      for (auto& w : workers_) w->thread = std::thread([this, p = w.get()] { run_worker(*p); });
    } catch (...) {
      shutdown();
      throw;
    }
  }

  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;

  /// shutdown(): runs every task already submitted (and those they submit), then joins.
  ~thread_pool() { shutdown(); }

  /// Queues `f` to run on a worker. Throws spindle::closed_error after shutdown() (except from
  /// this pool's own workers). Never allocates for callables of 48 bytes or less (the first
  /// post from a thread allocates that thread's ring). Thread-safe.
  template <class F>
  void post(F&& f) {
    static_assert(std::is_invocable_v<std::decay_t<F>&>,
                  "spindle::thread_pool::post: f must be callable with no arguments");
    detail::task t(std::forward<F>(f));
    if (current() == this) {
      worker& w = *current_worker();
      if (w.ring == nullptr || !w.ring->try_push(t)) push_overflow(t, true);
    } else {
      detail::task_ring* r = ring_of_this_thread();
      bool pushed = false;
      if (r != nullptr) {
        r->busy.store(1, std::memory_order_relaxed);
        // Orders busy = 1 before the load of closing_; pairs with the fence in shutdown()
        // (whichever comes second sees the other: no task slips past a shutdown).
        detail::seq_cst_fence();
        if (closing_.load(std::memory_order_relaxed)) {
          r->busy.store(0, std::memory_order_relaxed);
          throw closed_error("spindle::thread_pool::post: the pool is shut down");
        }
        pushed = r->try_push(t);
        // release: shutdown() sees the push once it sees busy == 0.
        r->busy.store(0, std::memory_order_release);
      }
      if (!pushed) push_overflow(t, false);
    }
    wake_one_if_idle();
  }

  /// Queues f(args...) and returns the future of its result (or exception). Throws
  /// spindle::closed_error after shutdown() (except from this pool's workers). Allocates the
  /// future's shared state; the task itself is stored inline if f and args take 40 bytes or
  /// less. Thread-safe.
  template <class F, class... A>
  auto submit(F&& f, A&&... a) -> future<std::invoke_result_t<F, A...>> {
    using R = std::invoke_result_t<F, A...>;
    auto [p, fut] = detail::make_pair<R>();
    if constexpr (sizeof...(A) == 0) {
      post([p = std::move(p), f = std::forward<F>(f)]() mutable { p.fulfil(std::move(f)); });
    } else {
      post([p = std::move(p), f = std::forward<F>(f),
            args = std::make_tuple(std::forward<A>(a)...)]() mutable {
        p.fulfil([&]() -> R { return std::apply(std::move(f), std::move(args)); });
      });
    }
    return std::move(fut);
  }

  /// Blocks until no task is queued or running. Throws std::logic_error if called from a worker
  /// of this pool. Thread-safe.
  void wait_idle() {
    if (current() == this)
      throw std::logic_error(
          "spindle::thread_pool::wait_idle: called from a worker of this pool (it would wait "
          "for its own task)");
    while (pending() != 0) {
      auto key = idle_ec_.prepare_wait();
      if (pending() == 0) {
        idle_ec_.cancel_wait();
        break;
      }
      idle_ec_.wait(key);
    }
  }

  /// Stops taking tasks from other threads, runs every queued task (and those they post), and
  /// joins the workers. Idempotent; concurrent calls all return after the join. Throws
  /// std::logic_error if called from a worker of this pool. Thread-safe.
  void shutdown() {
    if (current() == this)
      throw std::logic_error(
          "spindle::thread_pool::shutdown: called from a worker of this pool (it would join "
          "itself)");
    {
      std::lock_guard lock(mu_);  // the overflow path checks closing_ under mu_
      closing_.store(true, std::memory_order_relaxed);
    }
    // Pairs with the fence in post(): a post that missed closing_ has busy set; wait it out.
    detail::seq_cst_fence();
    std::size_t n = n_rings_.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < n; ++i) {
      detail::task_ring* r = rings_[i].load(std::memory_order_acquire);
      // acquire: pairs with the release of busy in post(); its push is visible afterwards.
      while (r->busy.load(std::memory_order_acquire) != 0) std::this_thread::yield();
    }
    // Every accepted outside post is now pushed: the workers may exit once nothing is pending.
    // release: pairs with the acquire loads in run_worker().
    draining_.store(true, std::memory_order_release);
    work_ec_.notify_all();
    std::lock_guard join_lock(join_mu_);
    for (auto& w : workers_)
      if (w->thread.joinable()) w->thread.join();
  }

  /// The number of worker threads. Never blocks. Thread-safe.
  std::size_t size() const noexcept { return workers_.size(); }

  /// True if the calling thread is a worker of this pool. Thread-safe.
  bool in_worker() const noexcept { return current() == this; }

  /// Tasks queued or running now. Approximate under concurrency (never below the true count at
  /// the start of the call). Never blocks. Thread-safe.
  std::size_t pending() const noexcept {
    // Completions first, then pushes: a task is pushed before it completes, so the difference
    // never goes negative and is 0 only if at some moment nothing was queued or running.
    std::uint64_t done = 0;
    for (const auto& w : workers_) done += w->completed.load(std::memory_order_acquire);
    std::uint64_t pushed = overflow_pushed_.load(std::memory_order_acquire);
    std::size_t n = n_rings_.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < n; ++i)
      pushed += rings_[i].load(std::memory_order_acquire)->pushed();
    return static_cast<std::size_t>(pushed - done);
  }

 private:
  static constexpr std::size_t batch_max = 16;
  static constexpr std::size_t external_rings = 64;  // posting threads with a ring of their own

  // A growable FIFO of tasks for when a ring is full (or there are too many posting threads).
  // Guarded by mu_ (as a member of the pool).
  class overflow_queue {
   public:
    void reserve(std::size_t n) {
      if (n > buf_.size()) grow(n);
    }
    bool empty() const noexcept { return count_ == 0; }
    std::size_t size() const noexcept { return count_; }
    void push(detail::task&& t) {
      if (count_ == buf_.size()) grow(std::max<std::size_t>(64, buf_.size() * 2));
      buf_[(head_ + count_) & (buf_.size() - 1)] = std::move(t);
      ++count_;
    }
    void pop_into(detail::task& out) noexcept {
      out = std::move(buf_[head_]);
      head_ = (head_ + 1) & (buf_.size() - 1);
      --count_;
    }

   private:
    void grow(std::size_t want) {
      std::size_t cap = 64;
      while (cap < want) cap *= 2;
      std::vector<detail::task> next(cap);
      for (std::size_t i = 0; i < count_; ++i)
        next[i] = std::move(buf_[(head_ + i) & (buf_.size() - 1)]);
      buf_ = std::move(next);
      head_ = 0;
    }
    std::vector<detail::task> buf_;  // capacity is a power of two
    std::size_t head_ = 0;
    std::size_t count_ = 0;
  };

  struct alignas(detail::false_sharing_range) worker {
    std::thread thread;
    detail::task batch[batch_max];            // owned by the worker thread
    std::size_t head = 0;                     // next batch slot to run (worker thread only)
    std::size_t tail = 0;                     // end of the batch (worker thread only)
    std::size_t scan = 0;                     // where the next ring scan starts (worker only)
    detail::task_ring* ring = nullptr;        // what this worker posts goes here first
    thread_pool* pool = nullptr;
    // Written by the worker only; release: a count that includes a task comes after its
    // effects. Pairs with the acquire in pending().
    alignas(detail::false_sharing_range) std::atomic<std::uint64_t> completed{0};
  };

  static std::uint64_t next_id() noexcept {
    static std::atomic<std::uint64_t> ids{0};
    return ids.fetch_add(1, std::memory_order_relaxed) + 1;  // relaxed: only uniqueness matters
  }
  static thread_pool*& current() noexcept {
    static thread_local thread_pool* p = nullptr;
    return p;
  }
  static worker*& current_worker() noexcept {
    static thread_local worker* w = nullptr;
    return w;
  }

  // Registers a new ring (under reg_mu_ or in the constructor); nullptr if the table is full.
  detail::task_ring* add_ring() {
    std::size_t n = n_rings_.load(std::memory_order_relaxed);
    if (n == max_rings_) return nullptr;
    owned_rings_.push_back(std::make_unique<detail::task_ring>());
    detail::task_ring* r = owned_rings_.back().get();
    rings_[n].store(r, std::memory_order_relaxed);
    // release: publishes the ring (and its slot) to scanners; pairs with their acquire loads.
    n_rings_.store(n + 1, std::memory_order_release);
    return r;
  }

  // The ring of the calling (non-worker) thread in this pool; registers one on first use.
  detail::task_ring* ring_of_this_thread() {
    struct entry {
      std::uint64_t pool = 0;
      detail::task_ring* ring = nullptr;
    };
    static thread_local entry cache[4];
    static thread_local unsigned victim = 0;
    for (auto& e : cache)
      if (e.pool == id_) return e.ring;
    detail::task_ring* r = nullptr;
    {
      std::lock_guard lock(reg_mu_);
      auto me = std::this_thread::get_id();
      for (auto& [tid, ring] : by_thread_)
        if (tid == me) r = ring;
      if (r == nullptr) {
        r = add_ring();
        if (r != nullptr) by_thread_.emplace_back(me, r);
      }
    }
    if (r != nullptr) cache[victim++ % 4] = {id_, r};
    return r;
  }

  void push_overflow(detail::task& t, bool from_worker) {
    {
      std::lock_guard lock(mu_);
      if (!from_worker && closing_.load(std::memory_order_relaxed))
        throw closed_error("spindle::thread_pool::post: the pool is shut down");
      overflow_.push(std::move(t));
      overflow_size_.store(overflow_.size(), std::memory_order_relaxed);
      // release: pairs with the acquire in pending().
      overflow_pushed_.fetch_add(1, std::memory_order_release);
    }
  }

  // After a push: wakes a sleeping worker unless one is awake and looking for work.
  void wake_one_if_idle() noexcept {
    // Orders the push before the loads below; pairs with the fence in event_count's
    // prepare_wait() (a worker about to sleep re-checks the queues after it) and with the one
    // after a spinner leaves spinning_.
    detail::seq_cst_fence();
    if (spinning_.load(std::memory_order_relaxed) == 0 && work_ec_.waiters() != 0)
      work_ec_.notify_one();
  }

  // Fills out[] with up to `max` tasks: own ring, other rings, overflow. Returns how many.
  std::size_t find_work(worker& w, detail::task* out, std::size_t max) {
    const std::size_t share = workers_.size();
    if (w.ring != nullptr)
      if (std::size_t k = w.ring->take(out, max, share)) return k;
    std::size_t n = n_rings_.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < n; ++i) {
      detail::task_ring* r = rings_[(w.scan + i) % n].load(std::memory_order_acquire);
      if (r == w.ring) continue;
      if (std::size_t k = r->take(out, max, share)) {
        w.scan = (w.scan + i) % n;
        return k;
      }
    }
    if (overflow_size_.load(std::memory_order_relaxed) != 0) {
      std::lock_guard lock(mu_);
      std::size_t k = std::min(max, std::max<std::size_t>(1, overflow_.size() / share));
      k = std::min(k, overflow_.size());
      for (std::size_t i = 0; i < k; ++i) overflow_.pop_into(out[i]);
      overflow_size_.store(overflow_.size(), std::memory_order_relaxed);
      return k;
    }
    return 0;
  }

  // A hint (relaxed): true if any queue may hold a task.
  bool work_maybe_queued() const noexcept {
    if (overflow_size_.load(std::memory_order_relaxed) != 0) return true;
    std::size_t n = n_rings_.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < n; ++i)
      if (rings_[i].load(std::memory_order_acquire)->maybe_nonempty()) return true;
    return false;
  }

  void run_task(detail::task& t) noexcept {
    std::exception_ptr error;
    try {
      t();
    } catch (...) {
      error = std::current_exception();
    }
    t.reset();
    if (error) report(std::move(error));  // outside the catch block: see producer::fulfil()
  }

  static void count_done(worker& w) noexcept {
    // release: see worker::completed. Single writer, so load + store is enough.
    w.completed.store(w.completed.load(std::memory_order_relaxed) + 1, std::memory_order_release);
  }

  void report(std::exception_ptr e) noexcept {
    if (opts_.on_error) {
      try {
        opts_.on_error(e);
        return;
      } catch (...) {
        std::fprintf(stderr, "spindle::thread_pool: on_error threw\n");
        std::terminate();
      }
    }
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      std::fprintf(stderr, "spindle::thread_pool: a posted task threw: %s\n", ex.what());
    } catch (...) {
      std::fprintf(stderr, "spindle::thread_pool: a posted task threw a non-std exception\n");
    }
    std::terminate();
  }

  // Runs one queued task for a worker blocked in future::wait(): its own batch first (the
  // awaited task may be there), then the queues. Returns false if none was queued.
  static bool help(void* ctx) {
    auto& w = *static_cast<worker*>(ctx);
    thread_pool& self = *w.pool;
    if (w.head < w.tail) {
      self.run_task(w.batch[w.head++]);
      count_done(w);
      return true;
    }
    detail::task t;
    if (self.find_work(w, &t, 1) == 0) return false;
    self.run_task(t);
    count_done(w);
    return true;
  }

  void run_worker(worker& w) {
    current() = this;
    current_worker() = &w;
    detail::current_helper() = {&w, &thread_pool::help};
    for (;;) {
      std::size_t n = find_work(w, w.batch, batch_max);
      if (n != 0) {
        w.head = 0;
        w.tail = n;
        if (n == batch_max) wake_one_if_idle();  // plenty queued: get another worker going
        while (w.head < w.tail) {
          run_task(w.batch[w.head++]);  // a helper inside may advance w.head too
          count_done(w);
        }
        continue;
      }
      // Nothing found. Tell wait_idle() (cheap when nobody waits), then exit, spin or sleep.
      idle_ec_.notify_all();
      if (draining_.load(std::memory_order_acquire) && pending() == 0) break;
      // seq_cst: a post() that reads spinning_ after our increment relies on us to find its
      // task; pairs with the fence in wake_one_if_idle().
      spinning_.fetch_add(1, std::memory_order_seq_cst);
      bool seen = false;
      for (unsigned k = 0; k < opts_.spin; ++k) {
        if (work_maybe_queued()) {
          seen = true;
          break;
        }
        if ((k & 63) == 63) {
          std::this_thread::yield();  // on a busy machine, let the posting thread run
        } else {
          detail::cpu_relax();
        }
      }
      // seq_cst: leaving the spinners before prepare_wait()'s fence and re-check below; a post
      // that saw us spinning did not wake anyone, so we must see its task.
      spinning_.fetch_sub(1, std::memory_order_seq_cst);
      if (seen) continue;
      auto key = work_ec_.prepare_wait();
      if (work_maybe_queued() || draining_.load(std::memory_order_acquire)) {
        work_ec_.cancel_wait();
        if (draining_.load(std::memory_order_acquire) && pending() != 0) {
          // Draining: others still run tasks that may post more. Sleep briefly on the queue
          // instead of spinning; a post or the last completion wakes us.
          auto k2 = work_ec_.prepare_wait();
          if (!work_maybe_queued() && pending() != 0)
            work_ec_.wait_until(k2, detail::event_count::clock::now() + std::chrono::milliseconds(1));
          else
            work_ec_.cancel_wait();
        }
        continue;
      }
      work_ec_.wait(key);
    }
    work_ec_.notify_all();  // the others may exit now too
    idle_ec_.notify_all();
    detail::current_helper() = {};
    current_worker() = nullptr;
    current() = nullptr;
  }

  thread_pool_options opts_;
  const std::uint64_t id_;  // unique per pool object, so thread-local caches never go stale
  std::vector<std::unique_ptr<worker>> workers_;

  // The rings: slots [0, n_rings_) are set once and never change until destruction.
  std::size_t max_rings_ = 0;
  std::unique_ptr<std::atomic<detail::task_ring*>[]> rings_;
  std::atomic<std::size_t> n_rings_{0};
  std::mutex reg_mu_;                                           // registers rings
  std::vector<std::unique_ptr<detail::task_ring>> owned_rings_;  // guarded by reg_mu_ (after
                                                                 // construction)
  std::vector<std::pair<std::thread::id, detail::task_ring*>> by_thread_;  // guarded by reg_mu_

  // Lock order: each mutex alone; none is held while another is taken.
  std::mutex mu_;
  overflow_queue overflow_;                      // guarded by mu_
  std::atomic<std::size_t> overflow_size_{0};    // relaxed hint, written under mu_
  std::atomic<std::uint64_t> overflow_pushed_{0};  // written under mu_; see pending()
  std::atomic<bool> closing_{false};             // written under mu_
  std::atomic<bool> draining_{false};            // set by shutdown() once closing_ is seen

  alignas(detail::false_sharing_range) std::atomic<std::uint32_t> spinning_{0};
  detail::event_count work_ec_;  // idle workers sleep here
  detail::event_count idle_ec_;  // wait_idle() sleeps here
  std::mutex join_mu_;           // serialises joins in shutdown()
};

}  // namespace spindle
