// spindle/pipeline.hpp - a pipeline of stages joined by bounded queues, each stage with its own
// worker threads.
//
//   auto p = spindle::pipeline<In>({.capacity = 64})
//              .stage(f1, {.workers = 4, .ordered = true})  // In -> A, or In -> std::optional<A>
//              .stage(f2)                                    // A -> B
//              .sink(f3);                                    // B -> void: starts the pipeline
//   p.push(x);  p.close();  p.wait();                        // wait() rethrows a stage exception
//   auto q = spindle::pipeline<In>().stage(f).sink(g).run(source);  // feed from a channel/range
//
// Guarantees:
// - Every item pushed before close() reaches the sink, unless a stage filters it (a stage that
//   returns std::optional drops the item on nullopt), a stage throws, or the pipeline is
//   cancelled.
// - Order: a stage with one worker keeps the order of its input; an `ordered` stage keeps it with
//   any number of workers: a worker that finishes a batch out of turn waits for its turn, so at
//   most `workers - 1` finished batches wait and a slow item holds back the stage's intake
//   (back-pressure; memory stays bounded). With one sink worker and only ordered (or
//   single-worker) stages, the sink sees the input order.
// - Visibility: everything a stage did to an item before returning it is visible to the next
//   stage's call on that item (the queues hand items over under a mutex).
// - Hand-offs are batched: an idle stage takes what is queued, up to `batch` items, in one lock;
//   a busy stage lets items accumulate, so the per-item cost of a hand-off shrinks under load,
//   while a lone item is never held back waiting for a batch to fill. No allocation per item:
//   batch buffers are recycled between the stages. An idle stage polls its queue briefly (up to
//   detail::batch_queue::max_spin polls of detail::adaptive_spin, fewer while polling keeps
//   failing) before it sleeps on a condition variable, so a slowly fed stage does not burn a core.
// - End of stream: close() (or the end of run()'s source) closes the first queue; each stage,
//   when its last worker has drained its input, closes the next queue.
// - Errors: the first exception a stage throws is kept; the pipeline then stops taking input
//   (push returns `closed` and never blocks), discards what is queued without calling stages,
//   and wait() rethrows it. Later exceptions are dropped.
// - Cancellation: a stop request on pipeline_options::stop (or cancel()) does the same without an
//   error; wait() then returns status::cancelled.
// - Lifetime: the running pipeline owns its threads. Its destructor closes the input and waits;
//   an exception that nobody retrieved with wait() is then dropped.
// - User code (stage functions) never runs under an internal lock.
#pragma once

#include <algorithm>
#include <atomic>
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "channel.hpp"
#include "detail/wait.hpp"
#include "status.hpp"

namespace spindle {

/// Options of a whole pipeline.
struct pipeline_options {
  /// Items each queue between two stages holds (the input queue too). >= 1.
  std::size_t capacity = 1024;
  /// The most items one hand-off moves. The effective batch is min(batch, capacity / 4), >= 1.
  std::size_t batch = 128;
  /// A stop request cancels the pipeline (see cancel()).
  std::stop_token stop = {};
};

/// Options of one stage.
struct stage_options {
  /// Threads running this stage. >= 1.
  std::size_t workers = 1;
  /// Emit in input order even with many workers. Meaningless for a sink.
  bool ordered = false;
};

namespace detail {

/// A bounded FIFO of batches: the queue between two stages. Items are pushed one by one (they
/// join the last batch while it has room and is not yet taken) or as a batch; consumers take a
/// whole batch. Batches live in a ring of vectors that are recycled by swapping, so the steady
/// state never allocates. Thread-safe. Lock order: mu_ only.
template <class T>
class batch_queue {
 public:
  batch_queue(std::size_t capacity, std::size_t batch)
      : capacity_(capacity), batch_(batch), ring_(capacity) {}

  /// Appends one item. Blocks while full when `block`; returns ok | full | closed. `v` is moved
  /// from only on ok.
  status push(T& v, bool block) {
    std::unique_lock lock(mu_);
    while (!closed_ && items_ >= capacity_) {
      if (!block) return status::full;
      ++push_waiters_;
      not_full_.wait(lock);
      --push_waiters_;
    }
    if (closed_) return status::closed;
    if (count_ > 0 && ring_[slot(count_ - 1)].size() < batch_) {
      ring_[slot(count_ - 1)].push_back(std::move(v));
    } else {
      auto& b = ring_[slot(count_)];
      if (b.capacity() == 0) b.reserve(batch_);
      b.push_back(std::move(v));
      ++count_;
    }
    ++items_;
    has_items_.store(true, std::memory_order_relaxed);  // relaxed: see has_items_
    wake_pop(lock);
    return status::ok;
  }

  /// Appends a whole batch (non-empty) and hands back a recycled, empty buffer in `b`. Blocks
  /// while the batch does not fit (an oversized batch is taken once the queue is empty). Returns
  /// ok | closed (`b` untouched on closed).
  status push_batch(std::vector<T>& b) {
    std::unique_lock lock(mu_);
    while (!closed_ && items_ > 0 && items_ + b.size() > capacity_) {
      ++push_waiters_;
      not_full_.wait(lock);
      --push_waiters_;
    }
    if (closed_) return status::closed;
    items_ += b.size();
    ring_[slot(count_)].swap(b);
    ++count_;
    b.clear();
    has_items_.store(true, std::memory_order_relaxed);  // relaxed: see has_items_
    wake_pop(lock);
    return status::ok;
  }

  /// Takes the oldest batch into `out` (whose old contents are discarded and whose buffer is
  /// recycled). Blocks while empty. Returns false once closed and drained; `seq` is the batch's
  /// position in pop order (0, 1, 2, ...).
  bool pop_batch(std::vector<T>& out, std::uint64_t& seq) {
    out.clear();
    // Spin briefly before taking the lock to sleep, the next batch is often microseconds away,
    // but only as long as spinning pays (detail::adaptive_spin, the one spin policy with a
    // budget between min_spin and max_spin polls that shrinks while the consumer sleeps anyway,
    // so a stage fed more slowly than its spin stops burning a core on it). Correct with 0
    // polls: the count under mu_ decides.
    // relaxed: has_items_ is a hint; the count under mu_ is the truth.
    const auto spun = spin_.spin([this] { return has_items_.load(std::memory_order_relaxed); });
    std::unique_lock lock(mu_);
    bool slept = false;
    while (count_ == 0) {
      if (closed_) return false;
      ++pop_waiters_;
      not_empty_.wait(lock);
      --pop_waiters_;
      slept = true;
    }
    spin_.learn(spun, slept);
    out.swap(ring_[head_]);
    head_ = (head_ + 1) % ring_.size();
    --count_;
    has_items_.store(count_ > 0, std::memory_order_relaxed);  // relaxed: see has_items_
    items_ -= out.size();
    seq = pop_seq_++;
    if (push_waiters_ > 0) {
      lock.unlock();
      not_full_.notify_all();
    }
    return true;
  }

  /// Consumers asleep in pop_batch() now, and the pauses the next one spins first (for tests).
  std::size_t sleeping_consumers() {
    std::lock_guard lock(mu_);
    return pop_waiters_;
  }
  int spin_budget() const noexcept { return static_cast<int>(spin_.budget()); }
  static constexpr int max_spin = 2000;  // polls: tens of microseconds
  static constexpr int min_spin = 16;    // a short probe, so that a faster feed is noticed

  /// Closes the queue: pushes fail, pops drain then fail. Idempotent.
  void close() {
    {
      std::lock_guard lock(mu_);
      closed_ = true;
      has_items_.store(true, std::memory_order_relaxed);  // ends spinning consumers' wait
    }
    not_empty_.notify_all();
    not_full_.notify_all();
  }

 private:

  std::size_t slot(std::size_t i) const { return (head_ + i) % ring_.size(); }
  void wake_pop(std::unique_lock<std::mutex>& lock) {
    if (pop_waiters_ > 0) {
      lock.unlock();
      not_empty_.notify_one();
    }
  }

  const std::size_t capacity_;
  const std::size_t batch_;
  std::mutex mu_;
  std::condition_variable not_empty_;  // consumers wait here
  std::condition_variable not_full_;   // producers wait here
  std::vector<std::vector<T>> ring_;    // guarded by mu_; `count_` batches from `head_`
  std::size_t head_ = 0;               // guarded by mu_
  std::size_t count_ = 0;              // guarded by mu_: batches queued
  std::size_t items_ = 0;              // guarded by mu_: items queued
  std::uint64_t pop_seq_ = 0;          // guarded by mu_
  std::size_t push_waiters_ = 0;       // guarded by mu_
  std::size_t pop_waiters_ = 0;        // guarded by mu_
  bool closed_ = false;                // guarded by mu_
  // A relaxed hint, written under mu_, read without it by a consumer deciding whether to keep
  // spinning; the handover itself happens under mu_.
  std::atomic<bool> has_items_{false};
  // See pop_batch(). Pauses only, no yields (yield_every 0), as this queue spun before it used
  // the one policy: a stage's consumers sleep once the budget shrinks anyway. With the default
  // yields, one interleaved series on a loaded machine measured the batched 3-stage pipeline
  // lower (medians 20.5 vs 26.4 M items/s); pauses only measured level with the old loop.
  detail::adaptive_spin spin_{min_spin, max_spin, 0};
};

/// What every stage and queue of a pipeline shares: the error, the cancellation, the threads.
class pipeline_core {
 public:
  struct node {
    virtual ~node() = default;
    virtual void start(pipeline_core&) {}
    virtual void close() {}  // queues: close, so that every started worker drains and ends
  };

  explicit pipeline_core(pipeline_options o) : opts_(std::move(o)) {}
  pipeline_core(const pipeline_core&) = delete;
  pipeline_core& operator=(const pipeline_core&) = delete;
  ~pipeline_core() { join(); }

  const pipeline_options& options() const noexcept { return opts_; }
  std::size_t batch() const noexcept {
    std::size_t b = opts_.capacity / 4;
    if (b > opts_.batch) b = opts_.batch;
    return b == 0 ? 1 : b;
  }

  template <class N>
  N& add(std::unique_ptr<N> n) {
    N& ref = *n;
    nodes_.push_back(std::move(n));
    return ref;
  }

  /// Starts every stage's workers and hooks the user's stop token. Called once, by sink().
  /// If a thread fails to start, the workers already started are stopped (every queue closed,
  /// the pipeline cancelled) and joined, and std::system_error naming the pipeline is thrown:
  /// a clear exception, never a destructor waiting on queues nobody closes.
  void start() {
    try {
      for (auto& n : nodes_) n->start(*this);
    } catch (const std::system_error& e) {
      abort_start();
      throw std::system_error(e.code(), "spindle::pipeline::sink: a stage thread failed to start (" +
                                            std::to_string(threads_.size()) +
                                            " started, now stopped)");
    } catch (...) {
      abort_start();
      throw;
    }
    on_stop_.emplace(opts_.stop, [this] { cancel(); });
  }

  void spawn(std::function<void()> f) { threads_.emplace_back(std::move(f)); }

  /// Whether stages should drop items instead of processing them (after an error or a stop).
  bool discarding() const noexcept {
    // relaxed: a hint to stop work early; the queues' mutexes order the data itself.
    return discard_.load(std::memory_order_relaxed);
  }

  void fail(std::exception_ptr e) {
    {
      std::lock_guard lock(mu_);
      if (!error_) error_ = std::move(e);
    }
    stop_intake();
  }

  void cancel() {
    {
      std::lock_guard lock(mu_);
      cancelled_ = true;
    }
    stop_intake();
  }

  std::stop_token internal_stop() const noexcept { return internal_.get_token(); }

  void join() {
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }

  /// Joins, then rethrows the first error or reports a cancellation.
  status result() {
    join();
    std::lock_guard lock(mu_);
    if (error_) std::rethrow_exception(error_);
    return cancelled_ ? status::cancelled : status::ok;
  }

  std::function<void()> close_input;  // set by the builder: closes the first queue

 private:
  void abort_start() {
    cancel();
    for (auto& n : nodes_) n->close();
    join();
  }

  void stop_intake() {
    // relaxed: see discarding().
    discard_.store(true, std::memory_order_relaxed);
    internal_.request_stop();
    if (close_input) close_input();
  }

  pipeline_options opts_;
  std::vector<std::unique_ptr<node>> nodes_;  // queues and stages, in pipeline order
  std::vector<std::thread> threads_;          // touched only by the owner (start, join)
  std::atomic<bool> discard_{false};
  std::stop_source internal_;
  std::mutex mu_;
  std::exception_ptr error_;  // guarded by mu_
  bool cancelled_ = false;    // guarded by mu_
  std::optional<std::stop_callback<std::function<void()>>> on_stop_;
};

template <class T>
struct queue_node : pipeline_core::node {
  queue_node(std::size_t cap, std::size_t batch) : q(cap, batch) {}
  void close() override { q.close(); }
  batch_queue<T> q;
};

template <class R>
struct stage_result {
  using type = R;
  static constexpr bool filters = false;
};
template <class R>
struct stage_result<std::optional<R>> {
  using type = R;
  static constexpr bool filters = true;
};

/// One stage: `workers` threads that pop batches from `in`, call `f` on each item, and push the
/// results to `out` (B = void: a sink, no output).
template <class A, class B, class F>
class stage_node : public pipeline_core::node {
 public:
  stage_node(F f, stage_options o, batch_queue<A>* in, batch_queue<B>* out)
      : f_(std::move(f)), opts_(o), in_(in), out_(out) {}

  void start(pipeline_core& core) override {
    active_.store(opts_.workers, std::memory_order_relaxed);  // before the threads exist
    for (std::size_t i = 0; i < opts_.workers; ++i) core.spawn([this, &core] { run(core); });
  }

 private:
  using raw_result = std::invoke_result_t<F&, A&&>;

  void run(pipeline_core& core) {
    std::vector<A> in;
    std::vector<B> out;
    std::uint64_t seq = 0;
    while (in_->pop_batch(in, seq)) {
      if (!core.discarding()) {
        try {
          for (auto& x : in) {
            if (core.discarding()) break;
            if constexpr (stage_result<raw_result>::filters) {
              auto r = std::invoke(f_, std::move(x));
              if (r) out.push_back(std::move(*r));
            } else {
              out.push_back(std::invoke(f_, std::move(x)));
            }
          }
        } catch (...) {
          core.fail(std::current_exception());
        }
      }
      if (core.discarding()) out.clear();
      if (opts_.ordered && opts_.workers > 1) {
        emit_ordered(seq, out);
      } else if (!out.empty()) {
        out_->push_batch(out);  // closed only after a failure: the items are dropped
        out.clear();
      }
    }
    // acq_rel: the last worker to leave closes the next queue after every other worker's
    // pushes; pairs with the other workers' decrements.
    if (active_.fetch_sub(1, std::memory_order_acq_rel) == 1) out_->close();
  }

  // Invariant (back-pressure): a worker that finishes a batch out of turn waits for its turn
  // instead of parking the batch and taking more input, so at most workers - 1 finished
  // batches wait (one per worker) and a slow item holds back the stage's intake: the queue
  // before it fills and its producers block. Attacked by "an ordered stage waiting for a slow
  // first item holds back its intake (back-pressure)" (the old parking buffer grew without
  // bound: 100,000 items taken while item 0 was held).
  void emit_ordered(std::uint64_t seq, std::vector<B>& out) {
    std::unique_lock lock(emit_mu_);
    turn_.wait(lock, [&] { return next_ == seq; });
    push_out(out);  // blocks while the next queue is full; the others wait for their turn anyway
    ++next_;
    lock.unlock();
    turn_.notify_all();
  }

  void push_out(std::vector<B>& b) {
    if (!b.empty()) out_->push_batch(b);  // closed only after a failure: the items are dropped
    b.clear();
  }

  F f_;
  stage_options opts_;
  batch_queue<A>* in_;
  batch_queue<B>* out_;
  std::atomic<std::size_t> active_{0};
  std::mutex emit_mu_;  // ordered stages: held while emitting; never while calling f_
  std::condition_variable turn_;  // ordered stages: workers wait here for next_ == their seq
  std::uint64_t next_ = 0;        // guarded by emit_mu_: the batch whose turn it is to emit
};

/// The sink: `workers` threads calling `f` on every item.
template <class B, class F>
class sink_node : public pipeline_core::node {
 public:
  sink_node(F f, stage_options o, batch_queue<B>* in) : f_(std::move(f)), opts_(o), in_(in) {}

  void start(pipeline_core& core) override {
    for (std::size_t i = 0; i < opts_.workers; ++i) core.spawn([this, &core] { run(core); });
  }

 private:
  void run(pipeline_core& core) {
    std::vector<B> in;
    std::uint64_t seq = 0;
    while (in_->pop_batch(in, seq)) {
      if (core.discarding()) continue;
      try {
        for (auto& x : in) {
          if (core.discarding()) break;
          std::invoke(f_, std::move(x));
        }
      } catch (...) {
        core.fail(std::current_exception());
      }
    }
  }

  F f_;
  stage_options opts_;
  batch_queue<B>* in_;
};

/// What running_pipeline::run() accepts: a range, a channel lvalue, or a channel handle
/// (any_channel), which is copied. Not an rvalue channel that is not a handle.
template <class S>
concept pipeline_source = std::is_lvalue_reference_v<S> || !channel<std::remove_cvref_t<S>> ||
                          is_any_channel<std::remove_cvref_t<S>>::value;

inline void check_workers(const char* fn, std::size_t workers) {
  if (workers == 0)
    throw std::invalid_argument(std::string(fn) + ": workers must be >= 1 (got 0)");
}

}  // namespace detail

/// A started pipeline taking items of type In (returned by pipeline::sink()). Move-only.
/// push/try_push/close/cancel are thread-safe; wait() is for one thread (the owner).
template <class In>
class running_pipeline {
 public:
  using value_type = In;

  running_pipeline(running_pipeline&&) noexcept = default;
  running_pipeline& operator=(running_pipeline&&) = delete;
  /// Closes the input and waits for the stages (an unretrieved exception is dropped).
  ~running_pipeline() {
    if (core_) {
      close();
      core_->join();
    }
  }

  /// Feeds one item. Blocks while the first queue is full. Returns ok | closed (after close(),
  /// an error or a cancellation; `v` is then not moved from). Never allocates once the queue's
  /// buffers are warm. Thread-safe.
  status push(In&& v) { return head_->push(v, true); }
  /// As push(In&&), copying `v`.
  status push(const In& v)
    requires std::copy_constructible<In>
  {
    In c = v;
    return head_->push(c, true);
  }
  /// Feeds one item if there is room. Never blocks. Returns ok | full | closed. Thread-safe.
  status try_push(In&& v) { return head_->push(v, false); }

  /// Ends the input: stages finish what is queued, then stop. Idempotent. Thread-safe.
  void close() { head_->close(); }

  /// Stops the pipeline without an error: input closed, queued items dropped. Idempotent.
  /// Thread-safe.
  void cancel() { core_->cancel(); }

  /// Blocks until every stage has finished. Rethrows the first stage exception; otherwise
  /// returns ok, or cancelled after a stop request. Call close() first (or use run()), else it
  /// waits for someone else to.
  status wait() { return core_->result(); }

  /// Feeds every item of `source` from a new thread until it is closed and drained, then closes
  /// the input; returns at once. A channel is popped with the pipeline's stop token, so a
  /// cancellation or error stops the feeding. `source` must outlive wait(). Allocates a thread.
  ///
  /// For a range (anything that is not a channel): feeds it on the calling thread in batches,
  /// closes the input, and returns when every item is queued.
  ///
  /// A channel is kept by reference, so it must be an lvalue; a handle (any_channel<In>) is
  /// copied and may be a temporary. An rvalue channel that is not a handle is refused at
  /// compile time (it would be destroyed while the feeding thread still pops from it). Throws
  /// std::invalid_argument if a single-consumer channel (spsc_queue) is already fed by this
  /// pipeline (two feeders would pop it at once).
  template <class S>
    requires detail::pipeline_source<S>
  running_pipeline& run(S&& source) & {
    feed(std::forward<S>(source));
    return *this;
  }
  template <class S>
    requires detail::pipeline_source<S>
  running_pipeline run(S&& source) && {
    feed(std::forward<S>(source));
    return std::move(*this);
  }

 private:
  template <class, class>
  friend class pipeline;

  running_pipeline(std::unique_ptr<detail::pipeline_core> core, detail::batch_queue<In>* head)
      : core_(std::move(core)), head_(head) {}

  template <class S>
  void feed(S&& source) {
    using Src = std::remove_cvref_t<S>;
    if constexpr (channel<Src>) {
      if constexpr (std::same_as<typename Src::value_type, In>) {
        // Several feeders popping one single-consumer channel would corrupt it.
        if (!multi_consumer(source)) {
          any_channel<In> h(source);
          for (const auto& f : single_fed_)
            if (f == h)
              throw std::invalid_argument(
                  "spindle::running_pipeline::run: this single-consumer channel (spsc_queue) is "
                  "already fed by this pipeline; a second feeder would pop it concurrently");
          single_fed_.push_back(h);
        }
      }
      auto feeder = [head = head_, st = core_->internal_stop()](auto& src) {
        In v{};
        while (src.pop(v, st) == status::ok)
          if (head->push(v, true) != status::ok) break;
        head->close();
      };
      if constexpr (detail::is_any_channel<Src>::value) {
        core_->spawn([feeder, src = Src(source)]() mutable { feeder(src); });  // a handle: copied
      } else {
        core_->spawn([feeder, src = &source] { feeder(*src); });  // an lvalue: outlives wait()
      }
    } else {
      std::vector<In> b;
      const std::size_t n = core_->batch();
      b.reserve(n);
      for (auto&& x : source) {
        b.push_back(std::forward<decltype(x)>(x));
        if (b.size() == n) {
          if (head_->push_batch(b) != status::ok) break;
        }
      }
      if (!b.empty()) head_->push_batch(b);
      close();
    }
  }

  std::unique_ptr<detail::pipeline_core> core_;
  detail::batch_queue<In>* head_;
  std::vector<any_channel<In>> single_fed_;  // single-consumer channels run() feeds from
};

/// A pipeline being built: its input type In and the output type Out of its last stage. Each
/// stage() returns a builder with the new output type; sink() starts the threads and returns the
/// running_pipeline. A builder is used once (stage() and sink() move from it).
template <class In, class Out = In>
class pipeline {
 public:
  /// An empty pipeline (its first stage reads In). Allocates. Throws std::invalid_argument if
  /// capacity or batch is 0.
  explicit pipeline(pipeline_options opts = {})
    requires std::same_as<In, Out>
  {
    if (opts.capacity == 0)
      throw std::invalid_argument("spindle::pipeline: capacity must be >= 1 (got 0)");
    if (opts.batch == 0)
      throw std::invalid_argument("spindle::pipeline: batch must be >= 1 (got 0)");
    core_ = std::make_unique<detail::pipeline_core>(std::move(opts));
    auto& qn = core_->add(std::make_unique<detail::queue_node<In>>(core_->options().capacity,
                                                                   core_->batch()));
    head_ = &qn.q;
    tail_ = &qn.q;
    core_->close_input = [q = head_] { q->close(); };
  }

  /// Adds a stage `f`: Out -> B, or Out -> std::optional<B> (nullopt drops the item). Returns
  /// the builder of the longer pipeline. Throws std::invalid_argument if workers is 0.
  template <class F>
  auto stage(F f, stage_options opts = {}) {
    static_assert(std::is_invocable_v<F&, Out&&>, "spindle::pipeline::stage: f(Out) must be valid");
    using raw = std::invoke_result_t<F&, Out&&>;
    using B = typename detail::stage_result<raw>::type;
    static_assert(!std::is_void_v<B>, "spindle::pipeline::stage: f returns void; use sink(f)");
    detail::check_workers("spindle::pipeline::stage", opts.workers);
    auto& qn = core_->add(
        std::make_unique<detail::queue_node<B>>(core_->options().capacity, core_->batch()));
    core_->add(std::make_unique<detail::stage_node<Out, B, F>>(std::move(f), opts, tail_, &qn.q));
    return pipeline<In, B>(std::move(core_), head_, &qn.q);
  }

  /// Adds the sink `f`: Out -> void (one worker unless `opts` says otherwise) and starts every
  /// stage. Returns the running pipeline. Allocates (threads). Throws std::invalid_argument if
  /// workers is 0.
  template <class F>
  running_pipeline<In> sink(F f, stage_options opts = {}) {
    static_assert(std::is_invocable_v<F&, Out&&>, "spindle::pipeline::sink: f(Out) must be valid");
    detail::check_workers("spindle::pipeline::sink", opts.workers);
    core_->add(std::make_unique<detail::sink_node<Out, F>>(std::move(f), opts, tail_));
    core_->start();
    return running_pipeline<In>(std::move(core_), head_);
  }

 private:
  template <class, class>
  friend class pipeline;

  pipeline(std::unique_ptr<detail::pipeline_core> core, detail::batch_queue<In>* head,
           detail::batch_queue<Out>* tail)
      : core_(std::move(core)), head_(head), tail_(tail) {}

  std::unique_ptr<detail::pipeline_core> core_;
  detail::batch_queue<In>* head_ = nullptr;
  detail::batch_queue<Out>* tail_ = nullptr;
};

}  // namespace spindle
