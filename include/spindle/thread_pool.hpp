// spindle/thread_pool.hpp - a fixed set of worker threads running submitted tasks.
//
// Defines:
//   thread_pool           post(f) (fire and forget), submit(f, args...) -> future, wait_idle(),
//                         shutdown(), size(), in_worker(), pending().
//   thread_pool_options   on_error (where an exception escaping a post()ed task goes), spin.
//
// Design: one FIFO of tasks for the whole pool, guarded by one mutex; idle workers take tasks
// from it one at a time and sleep on a condition variable when it is empty. Nothing is claimed
// in runs, nothing is kept private to a worker, no task is run on another task's stack except
// the one a get() waits for (see "Blocking from inside a worker"). The one lock makes the pool
// slower than a work-stealing design under heavy contention (bench/RESULTS.md has the figures);
// what it buys is the invariant below, which follows from a few lines of code.
//
// Invariant (work conservation): every queued task is reachable by every idle worker, and no
// worker sleeps while a task is runnable. Why it holds:
//   - every task is in the one queue until a worker takes it, and a worker takes one task at a
//     time, as its next task (no private batch, no deferred "run next" slot);
//   - a worker goes to sleep only after it saw the queue empty, under mu_, and it counts itself
//     in sleepers_ under the same lock hold (condition_variable::wait releases mu_ atomically);
//   - each push, under mu_, reads sleepers_ and, if any worker sleeps, wakes one (notify_one
//     after unlocking). So each task pushed while some worker sleeps has a woken worker of its
//     own, which re-checks the queue under mu_ before it may sleep again; a worker that wakes
//     spuriously re-checks too. Spinning before sleeping is only a latency shortcut: a spinning
//     worker is not counted in sleepers_, posts never skip a wake-up because of it.
//   Invariant tests: "N tasks meeting at a rendezvous on a fresh pool of N workers all meet",
//   "a task that waits for a later task of the same burst is never stuck behind it".
//
// Guarantees:
//   - Tasks are taken from the queue in the order they were queued (one FIFO, ordered by the
//     lock), so with one worker they start in that order; the exception is a task that a get()
//     on a worker runs early (below).
//   - Visibility: everything a thread did before post()/submit() is visible to the task.
//   - No allocation per task for callables of 48 bytes or less (submit: 40 bytes of callable
//     and arguments, plus the future's shared state); the queue grows in blocks of 256 tasks and
//     never shrinks (drained blocks are reused).
//   - Tasks may be move-only. Tasks may post/submit more tasks, also during shutdown: those run
//     too. Nothing submitted is dropped.
//   - No exception is lost: submit() stores it in the future; an exception escaping a post()ed
//     task goes to options.on_error, or, if there is none, is printed and std::terminate() is
//     called (as for an exception escaping a std::thread). An exception thrown by on_error
//     itself is printed and std::terminate() is called.
//   - Idle workers sleep in the kernel (after options.spin polls): no polling timer.
//
// Blocking from inside a worker: future::get()/wait() on a worker of this pool, for a future
// that submit() of this pool returned, runs the awaited task itself if no worker has started it
// yet (it is then skipped when its queue entry comes up); otherwise, and for every other future,
// it blocks the worker in the kernel, as std::future does. It never runs any other task. So a
// one-thread pool can run nested submit() + get(), and a get() never runs unrelated work while
// its caller holds a lock or owes a promise. A future made from submit() futures by then(),
// when_all() or when_any() is not a submit() future: waiting for it on a worker blocks that
// worker while its inputs wait in the queue (on a one-thread pool, for ever); get() each
// submit() future instead, or attach the rest with then(). A get() that waits for a task that is itself
// blocked (on a promise nobody else sets, on a lock its caller holds) blocks, as it would on any
// thread. wait_idle() and shutdown() on a worker throw std::logic_error (they would wait for the
// calling task itself).
//
// Shutdown (shutdown() or the destructor), in order:
//   1. post()/submit() from threads that are not workers of this pool throw spindle::closed_error;
//   2. every task already queued runs, and so does every task that running tasks post;
//   3. when no task is queued or running, the workers exit and are joined.
// Destroying the pool from one of its own tasks is allowed: the destructor then closes the pool
// (step 1) and returns at once without joining; the workers finish steps 2 and 3 by themselves
// and exit (they are detached; the pool's internals live until the last one exits). The
// caller's task must not touch the pool object afterwards.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
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
  /// How many times an idle worker polls for work before it sleeps (see detail::spin_until;
  /// 0 sleeps at once). A latency knob only: correctness never depends on it.
  unsigned spin = detail::default_spin;
};

namespace detail {

/// A FIFO of tasks in a linked list of fixed blocks of `block_tasks` slots. Not thread-safe:
/// thread_pool guards it with its mutex. Growing past the peak allocates one block and moves
/// nothing; a drained block goes to a free list and is reused, never freed before the FIFO, so
/// once the queue has reached its peak length nothing is allocated.
/// Why blocks and not a ring over one vector: doubling a ring moves every queued task and
/// first-touches (page-faults) a buffer twice as large, all under the pool's mutex, while every
/// worker waits; with a fast producer (bench/bench_executor "post", a queue of ~270k tasks) that
/// cost the pool more than half its throughput.
class task_fifo {
 public:
  static constexpr std::size_t block_tasks = 256;  // 16 KiB of tasks: one malloc, no mmap

  task_fifo() = default;
  task_fifo(const task_fifo&) = delete;
  task_fifo& operator=(const task_fifo&) = delete;
  ~task_fifo() {
    free_all(head_);
    free_all(free_);
  }

  /// Makes room for `n` tasks in total without a further allocation.
  void reserve(std::size_t n) {
    std::size_t have = 0;
    for (block* b = free_; b != nullptr; b = b->next) have += block_tasks;
    if (tail_ != nullptr) have += block_tasks - tail_i_;
    for (; have < n; have += block_tasks) {
      block* b = new block;
      b->next = free_;
      free_ = b;
    }
  }
  bool empty() const noexcept { return count_ == 0; }
  std::size_t size() const noexcept { return count_; }
  /// Appends `t`. Strong guarantee: if allocating a block throws, `t` and the FIFO are unchanged.
  void push(task&& t) {
    if (tail_ == nullptr || tail_i_ == block_tasks) {
      block* b = free_;
      if (b != nullptr) {
        free_ = b->next;
        b->next = nullptr;
      } else {
        b = new block;
      }
      (tail_ != nullptr ? tail_->next : head_) = b;
      tail_ = b;
      tail_i_ = 0;
    }
    tail_->slots[tail_i_++] = std::move(t);
    ++count_;
  }
  /// Moves the oldest task into `out`. Requires !empty().
  void pop_into(task& out) noexcept {
    out = std::move(head_->slots[head_i_++]);
    --count_;
    if (head_i_ == block_tasks || count_ == 0) {
      if (count_ == 0 && head_ == tail_) {
        head_i_ = tail_i_ = 0;  // empty: start the one block over instead of moving on
        return;
      }
      block* b = head_;  // drained
      head_ = b->next;
      head_i_ = 0;
      if (head_ == nullptr) tail_ = nullptr;
      b->next = free_;
      free_ = b;
    }
  }

 private:
  struct block {
    task slots[block_tasks];  // moved-from (empty) outside [head_i_, tail_i_)
    block* next = nullptr;
  };
  static void free_all(block* b) noexcept {
    while (b != nullptr) delete std::exchange(b, b->next);
  }
  block* head_ = nullptr;  // oldest block (nullptr if none)
  block* tail_ = nullptr;  // newest block; pushes go to slots[tail_i_]
  block* free_ = nullptr;  // drained blocks kept for reuse
  std::size_t head_i_ = 0;
  std::size_t tail_i_ = 0;
  std::size_t count_ = 0;
};

/// Everything the workers use. Shared (std::shared_ptr) by the thread_pool object and each
/// worker thread, so that a pool destroyed by one of its own tasks stays alive for its workers.
class pool_core {
 public:
  explicit pool_core(thread_pool_options o) : opts_(std::move(o)) { queue_.reserve(1024); }

  /// Queues `t`; throws closed_error after close() unless `from_worker`.
  void push(task& t, bool from_worker) {
    std::lock_guard lock(mu_);
    if (closing_ && !from_worker)
      throw closed_error("spindle::thread_pool::post: the pool is shut down");
    queue_.push(std::move(t));
    // relaxed: a hint for spinning workers, which then take mu_ (the real hand-over).
    queued_hint_.store(queue_.size(), std::memory_order_relaxed);
    // relaxed: only written under mu_ (a load and a store, no read-modify-write); pending()
    // is approximate, and wait_idle() reads it under mu_.
    pending_.store(pending_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    // Invariant: see the header (each push wakes a sleeper if any). The notify happens under
    // mu_: once mu_ is released a worker may run the task just queued, and if that task
    // destroys the pool, the last worker to exit frees this core; so the pushing thread
    // touches nothing of the core after unlocking. Attacked by "a pool destroyed by one of its
    // own tasks does not terminate the program" (TSan saw the notify after unlock race the free).
    if (sleepers_ != 0) work_cv_.notify_one();
  }

  /// The worker loop. `self` keeps this core alive while the thread runs.
  static void run_worker(std::shared_ptr<pool_core> self) {
    pool_core& c = *self;
    current_pool() = &c;
    task t;
    bool finished = false;  // a task ran since the last take(): take() counts it done
    while (c.take(t, finished)) {
      c.run_task(t);
      finished = true;
    }
    current_pool() = nullptr;
  }

  /// Blocks until no task is queued or running.
  void wait_idle() {
    std::unique_lock lock(mu_);
    // relaxed: written under mu_, which orders the tasks' effects before this read.
    idle_cv_.wait(lock, [&] { return pending_.load(std::memory_order_relaxed) == 0; });
  }

  /// Step 1 of shutdown: refuse outside posts from now on; wake the workers so that they exit
  /// once nothing is queued or running.
  void close() {
    {
      std::lock_guard lock(mu_);
      closing_ = true;
    }
    work_cv_.notify_all();
  }

  std::size_t pending() const noexcept { return pending_.load(std::memory_order_relaxed); }

  /// The pool core whose worker the calling thread is (nullptr if none).
  static const void*& current_pool() noexcept { return current_pool_token(); }

  std::vector<std::thread> threads;  // set by thread_pool; joined or detached under join_mu
  std::mutex join_mu;

 private:
  // Counts the previous task done if `finished` (under the same lock hold, so a task costs one
  // lock hold on the worker side), then takes the next task into `t`; false once closed and
  // nothing is queued or running.
  bool take(task& t, bool finished) {
    std::unique_lock lock(mu_);
    if (finished) {
      const std::size_t left = pending_.load(std::memory_order_relaxed) - 1;  // see push()
      pending_.store(left, std::memory_order_relaxed);
      if (left == 0) {
        idle_cv_.notify_all();                // wait_idle()
        if (closing_) work_cv_.notify_all();  // the workers may exit now
      }
    }
    for (;;) {
      if (!queue_.empty()) {
        queue_.pop_into(t);
        queued_hint_.store(queue_.size(), std::memory_order_relaxed);  // relaxed: see push()
        return true;
      }
      if (closing_ && pending_.load(std::memory_order_relaxed) == 0) {
        lock.unlock();
        work_cv_.notify_all();  // the others may exit too
        return false;
      }
      if (opts_.spin != 0) {
        // Shortcut (latency only): poll before sleeping. Invariant: a spinner is not counted in
        // sleepers_, so no post skips a wake-up because of it (tested by the rendezvous test).
        lock.unlock();
        bool seen = spin_until(
            [&] { return queued_hint_.load(std::memory_order_relaxed) != 0; }, opts_.spin);
        lock.lock();
        if (seen || !queue_.empty() ||
            (closing_ && pending_.load(std::memory_order_relaxed) == 0))
          continue;
      }
      ++sleepers_;
      work_cv_.wait(lock);
      --sleepers_;
    }
  }

  void run_task(task& t) noexcept {
    std::exception_ptr error;
    try {
      t();
    } catch (...) {
      error = std::current_exception();
    }
    t.reset();
    if (error) report(std::move(error));  // outside the catch block: see producer::fulfil()
  }

  void report(std::exception_ptr e) noexcept {
    if (opts_.on_error) {
      try {
        opts_.on_error(e);
        return;
      } catch (...) {
        std::fprintf(stderr, "spindle::thread_pool: on_error threw; terminating\n");
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

  const thread_pool_options opts_;
  std::mutex mu_;
  std::condition_variable work_cv_;  // idle workers sleep here
  std::condition_variable idle_cv_;  // wait_idle() sleeps here
  task_fifo queue_;                  // guarded by mu_
  std::size_t sleepers_ = 0;         // guarded by mu_: workers blocked in work_cv_
  bool closing_ = false;             // guarded by mu_
  // Relaxed copy of queue_.size() for spinners; on its own cache line, so that spinning does
  // not pull the mutex's line away from the thread that holds it.
  alignas(false_sharing_range) std::atomic<std::size_t> queued_hint_{0};
  alignas(false_sharing_range) std::atomic<std::size_t> pending_{0};  // queued + running;
                                                                      // written under mu_
};

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

  /// Starts `threads` workers with `options`. Throws std::invalid_argument if threads == 0 or
  /// more than a std::vector can hold; std::system_error if a thread cannot be started (the
  /// workers already started are shut down first).
  /// Allocates (the core and a queue of 1024 tasks).
  thread_pool(std::size_t threads, thread_pool_options options) {
    if (threads == 0)
      throw std::invalid_argument("spindle::thread_pool: threads must be >= 1, got 0");
    // More than a vector of threads can hold (the reserve below threw a bare length_error).
    const std::size_t most = std::vector<std::thread>().max_size();
    if (threads > most)
      throw std::invalid_argument("spindle::thread_pool: threads must be <= " +
                                  std::to_string(most) + ", got " + std::to_string(threads));
    core_ = std::make_shared<detail::pool_core>(std::move(options));
    core_->threads.reserve(threads);
    try {
      for (std::size_t i = 0; i < threads; ++i)
        core_->threads.emplace_back(&detail::pool_core::run_worker, core_);
    } catch (...) {
      shutdown();
      throw;
    }
  }

  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;

  /// shutdown(): runs every task already submitted (and those they submit), then joins. From
  /// one of this pool's own tasks: closes the pool and returns without joining (see the header).
  ~thread_pool() {
    if (in_worker()) {
      core_->close();
      std::lock_guard lock(core_->join_mu);
      for (auto& t : core_->threads)
        if (t.joinable()) t.detach();
      return;
    }
    shutdown();
  }

  /// Queues `f` to run on a worker. Throws spindle::closed_error after shutdown() (except from
  /// this pool's own workers). Never allocates for callables of 48 bytes or less once the queue
  /// has grown to its peak. Thread-safe.
  template <class F>
  void post(F&& f) {
    static_assert(std::is_invocable_v<std::decay_t<F>&>,
                  "spindle::thread_pool::post: f must be callable with no arguments");
    detail::task t(std::forward<F>(f));
    core_->push(t, in_worker());
  }

  /// Queues f(args...) and returns the future of its result (or exception). Throws
  /// spindle::closed_error after shutdown() (except from this pool's workers). Allocates the
  /// future's shared state; f and args live in it without a further allocation if they take
  /// 40 bytes or less. A get() on a worker of this pool may run the task itself if it has not
  /// started (see the header). Thread-safe.
  template <class F, class... A>
  auto submit(F&& f, A&&... a) -> future<std::invoke_result_t<F, A...>> {
    using R = std::invoke_result_t<F, A...>;
    auto [p, fut] = detail::make_pair<R>();
    detail::shared_state<R>* s = p.get();
    if constexpr (sizeof...(A) == 0) {
      s->set_job([p = std::move(p), f = std::forward<F>(f)]() mutable { p.fulfil(std::move(f)); },
                 core_.get());
    } else {
      s->set_job([p = std::move(p), f = std::forward<F>(f),
                  args = std::make_tuple(std::forward<A>(a)...)]() mutable {
        p.fulfil([&]() -> R { return std::apply(std::move(f), std::move(args)); });
      }, core_.get());
    }
    s->add_ref();  // the queue entry's reference
    detail::state_ref<R> entry(s);
    try {
      post([entry = std::move(entry)] { entry->run_job(); });
    } catch (...) {
      s->drop_job();  // refused: the job (and its producer) goes, the future holds nothing
      throw;
    }
    return std::move(fut);
  }

  /// Blocks until no task is queued or running. Throws std::logic_error if called from a worker
  /// of this pool. Thread-safe.
  void wait_idle() {
    if (in_worker())
      throw std::logic_error(
          "spindle::thread_pool::wait_idle: called from a worker of this pool (it would wait "
          "for its own task)");
    core_->wait_idle();
  }

  /// Stops taking tasks from other threads, runs every queued task (and those they post), and
  /// joins the workers. Idempotent; concurrent calls all return after the join. Throws
  /// std::logic_error if called from a worker of this pool. Thread-safe.
  void shutdown() {
    if (in_worker())
      throw std::logic_error(
          "spindle::thread_pool::shutdown: called from a worker of this pool (it would join "
          "itself)");
    core_->close();
    std::lock_guard lock(core_->join_mu);
    for (auto& t : core_->threads)
      if (t.joinable()) t.join();
  }

  /// The number of worker threads. Never blocks. Thread-safe.
  std::size_t size() const noexcept { return core_->threads.size(); }

  /// True if the calling thread is a worker of this pool. Thread-safe.
  bool in_worker() const noexcept { return detail::pool_core::current_pool() == core_.get(); }

  /// Tasks queued or running now. Approximate under concurrency. Never blocks. Thread-safe.
  std::size_t pending() const noexcept { return core_->pending(); }

 private:
  std::shared_ptr<detail::pool_core> core_;
};

}  // namespace spindle
