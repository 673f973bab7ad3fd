// spindle/redis/async_client.hpp - many commands in flight on one connection, shared by threads.
//
//   spindle::redis::async_client c({.port = 6379});
//   auto f = c.command("GET", "k");                       // returns at once: a future<reply>
//   std::vector<spindle::future<spindle::redis::reply>> fs;
//   for (auto& k : keys) fs.push_back(c.command("GET", k));
//   auto all = spindle::when_all(std::move(fs)).get();    // asyncio.gather
//   auto g = c.command_for(std::chrono::milliseconds(50), "INCR", "n");   // per-call timeout
//   auto h = c.command(stop_source.get_token(), "GET", "k");              // cancellable
//   auto v = c.call("GET", "k");                          // blocking: waits without spinning
//
// How it works: callers encode their command and append it to one buffer (a short lock); one
// I/O thread writes whatever has queued since its previous write in a single send (automatic
// pipelining, as Lettuce, ioredis and fred do), reads replies, and fulfils the callers' futures
// in command order. The I/O thread sleeps in poll() when there is nothing to write or read.
//
// Guarantees:
//   - Order: commands go to the server in the order their command() calls took the client's
//     lock (per thread: call order); reply i fulfils command i. A reply is never given to
//     another caller: a cancelled or timed-out command keeps its place until its reply arrives,
//     which is then discarded.
//   - Failure: when the connection breaks (EOF, reset, protocol error, or no byte for
//     options::io_timeout while replies are owed), every command already handed to the I/O
//     thread fails with redis::error saying it may or may not have run. It is never re-sent.
//     Commands queued after the break go out on a new connection, opened by the I/O thread when
//     it next has something to send (so the next command reconnects); if that connect fails,
//     they fail with redis::error saying they were not sent. A server that closes an idle
//     connection is noticed at once (the I/O thread watches the socket), so nothing fails.
//   - An error reply (-ERR ...) fails that command's future with redis::server_error; the
//     connection goes on.
//   - Refused with std::invalid_argument (synchronously, nothing sent): blocking commands (BLPOP,
//     BRPOP, BLMOVE, BLMPOP, BRPOPLPUSH, BZPOPMIN/MAX, BZMPOP, WAIT, WAITAOF, XREAD/XREADGROUP
//     with BLOCK), which would stall every caller behind them; SUBSCRIBE and friends, MONITOR,
//     SYNC and CLIENT REPLY, which break reply matching; MULTI/EXEC/WATCH, SELECT, AUTH, HELLO,
//     RESET and QUIT, which change state every caller shares. Use redis::connection or
//     redis::pool for those, redis::topic for Pub/Sub.
//   - RESP3 push frames (options::protocol = 3; CLIENT TRACKING invalidations, for example) go
//     to async_options::on_push on the I/O thread, never to a command.
//   - Back-pressure: at most async_options::max_in_flight commands are admitted and unanswered
//     (cancelled and timed-out ones count until their reply is read), and callers wait while
//     the bytes queued for the next write exceed max_queued_bytes. command() blocks for room;
//     command_for()/command(stop_token) stop waiting at their deadline or stop request;
//     try_command() never blocks. Memory is bounded by those two limits.
//   - Visibility: everything a caller did before command() happens before the continuation or
//     the get() that sees the command's result.
//
// Threads: every public member function is thread-safe. Futures are fulfilled on the I/O
// thread: then() continuations run there, so they must be short and must never wait for
// another future of this client (the I/O thread would wait for itself: use
// then(executor, f) for such work). A command issued from the I/O thread never blocks for
// room: when the client is full it returns a future holding redis::error; call() there
// throws std::logic_error. A caller that waits at once for each reply should use call(): it
// sleeps on a semaphore, where future::get() spins first (costly with many such threads).
//
// Lifetime: close() (and the destructor) refuses new commands, lets the I/O thread write what
// is queued and read every reply owed (bounded by io_timeout when it is set), then joins it.
// Futures already returned stay valid and are all fulfilled. The client must not be destroyed
// from its own I/O thread (inside a continuation).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>  // INT_MAX
#include <condition_variable>
#include <cstdint>
#include <cstring>  // strerror
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <semaphore>  // binary_semaphore: call() sleeps without spinning
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "spindle/deadline.hpp"
#include "spindle/errors.hpp"
#include "spindle/future.hpp"
#include "spindle/redis/connection.hpp"
#include "spindle/redis/detail/async_commands.hpp"
#include "spindle/redis/error.hpp"
#include "spindle/redis/options.hpp"
#include "spindle/redis/resp.hpp"

namespace spindle::redis {

/// A command whose caller asked to stop (its std::stop_token) before the reply came. Its reply,
/// if one comes, is read and discarded.
class cancelled_error : public spindle::error {
 public:
  cancelled_error() : spindle::error("spindle::redis: cancelled") {}
  using spindle::error::error;
};

/// Settings of an async_client; use with designated initializers.
struct async_options {
  /// Commands admitted and not yet answered, at most (>= 1). Callers wait for room.
  std::size_t max_in_flight = 1024;
  /// Encoded bytes waiting for the I/O thread's next write, at most (>= 1); a command is always
  /// admitted into an empty buffer, whatever its size.
  std::size_t max_queued_bytes = std::size_t{4} << 20;
  /// A timeout for every command that does not give one; 0: none.
  std::chrono::milliseconds default_timeout{0};
  /// Receives RESP3 push frames, on the I/O thread. Exceptions it throws are counted
  /// (async_client::push_errors()) and otherwise ignored. Empty: pushes are dropped.
  std::function<void(reply)> on_push{};
};

/// How one command waits: a timeout (unset: async_options::default_timeout, if any;
/// duration::max(): none, whatever the default; the wait for room counts) and a stop token.
/// Either outcome fails the future (timeout_error, cancelled_error) at once and discards the
/// reply when it comes. One that comes after the reply was read is too late: the future gets
/// the reply (the replies of one read are delivered in order, so a continuation of an earlier
/// one that requests stop does not cancel the later ones read with it).
struct call_options {
  std::optional<std::chrono::nanoseconds> timeout{};
  std::stop_token stop{};
};

/// One connection, many callers, replies as futures. See the header comment for its guarantees.
class async_client {
 public:
  using clock = std::chrono::steady_clock;

  /// Connects at once (AUTH, SELECT, HELLO as redis::connection does) and starts the I/O thread.
  /// Throws std::invalid_argument if max_in_flight or max_queued_bytes is 0, redis::error if the
  /// server cannot be reached (redis::server_error if it refuses the handshake), std::system_error
  /// if no thread or eventfd can be made. Allocates.
  explicit async_client(options o = {}, async_options ao = {})
      : opts_(std::move(o)), aopts_(std::move(ao)), parser_(opts_.limits) {
    if (aopts_.max_in_flight == 0)
      throw std::invalid_argument("redis::async_client: max_in_flight is 0");
    if (aopts_.max_queued_bytes == 0)
      throw std::invalid_argument("redis::async_client: max_queued_bytes is 0");
    slots_ = std::make_unique<slot[]>(aopts_.max_in_flight);
    conn_.emplace(opts_);  // throws if unreachable: the caller learns it now
    make_nonblocking();
    connects_.store(1, std::memory_order_relaxed);
    efd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd_ < 0)
      throw std::system_error(errno, std::generic_category(), "redis::async_client: eventfd");
    io_ = std::thread([this] { run(); });
    io_id_ = io_.get_id();
  }

  async_client(const async_client&) = delete;
  async_client& operator=(const async_client&) = delete;

  /// close(): every command already issued is answered (or fails), then the I/O thread joins.
  ~async_client() {
    close();
    ::close(efd_);
  }

  /// Sends one command; the future holds its reply, or redis::server_error for an error reply,
  /// or redis::error if the connection broke (see the header comment). Blocks while the client
  /// is full. Throws std::invalid_argument for a refused command, spindle::closed_error after
  /// close(). Allocates (the future's state, the reply). Thread-safe.
  template <command_arg... A>
  future<reply> command(const A&... args) {
    return command(call_options{}, args...);
  }

  /// As command(args...), but a stop request fails the future with cancelled_error at once
  /// (while waiting for room too). Thread-safe.
  template <command_arg... A>
  future<reply> command(std::stop_token stop, const A&... args) {
    return command(call_options{.stop = std::move(stop)}, args...);
  }

  /// As command(args...), but the future fails with spindle::timeout_error once `timeout` has
  /// passed without a reply (the wait for room counts). duration::max() means no limit (also
  /// when async_options::default_timeout is set); a timeout <= 0 fails at once and sends nothing.
  /// Thread-safe.
  template <class Rep, class Period, command_arg... A>
  future<reply> command_for(std::chrono::duration<Rep, Period> timeout, const A&... args) {
    using ns = std::chrono::nanoseconds;
    return command(call_options{.timeout = spindle::detail::saturating_ceil<ns>(timeout)}, args...);
  }

  /// As command(args...) with both a timeout and a stop token. Thread-safe.
  template <command_arg... A>
  future<reply> command(const call_options& how, const A&... args) {
    const std::string& buf = encode(args...);
    const auto at = deadline_of(how.timeout);
    if (how.stop.stop_requested()) return failed(cancelled_error());
    if (how.timeout && *how.timeout <= std::chrono::nanoseconds::zero())
      return failed(timeout_error("redis::async_client::command: timeout " +
                                  std::to_string(how.timeout->count()) + " ns; not sent"));
    promise<reply> p;
    future<reply> f = p.get_future();
    switch (admit(buf, at, how.stop, false, target{std::move(p), nullptr})) {
      case admitted::ok:
        return f;
      case admitted::timeout:
        return failed(timeout_error(
            "redis::async_client::command: no room within the call's timeout; not sent"));
      case admitted::cancelled:
        return failed(cancelled_error());
      case admitted::full:
        break;
    }
    return failed(error("redis::async_client::command: the client is full (" +
                        std::to_string(aopts_.max_in_flight) +
                        " in flight) and the caller is its own I/O thread, which cannot wait "
                        "for room"));
  }

  /// As command(args...), but returns nullopt at once instead of waiting for room. Throws like
  /// command(). Thread-safe.
  template <command_arg... A>
  std::optional<future<reply>> try_command(const A&... args) {
    const std::string& buf = encode(args...);
    const auto at = deadline_of(std::nullopt);
    promise<reply> p;
    future<reply> f = p.get_future();
    if (admit(buf, at, {}, true, target{std::move(p), nullptr}) != admitted::ok)
      return std::nullopt;
    return f;
  }

  /// Sends one command and waits for its reply, sleeping without spinning: the blocking form
  /// for callers that wait at once (many threads each awaiting one command). Returns the reply;
  /// throws redis::server_error for an error reply, redis::error if the connection broke, and
  /// like command() otherwise; std::logic_error on the I/O thread (it would wait for itself).
  /// async_options::default_timeout does not apply (io_timeout bounds the wait). Never allocates
  /// beyond the reply. Thread-safe.
  template <command_arg... A>
  reply call(const A&... args) {
    if (std::this_thread::get_id() == io_id_)
      throw std::logic_error("redis::async_client::call: called on the client's I/O thread, "
                             "which would wait for itself (use command().then())");
    const std::string& buf = encode(args...);
    waiter w;
    admit(buf, clock::time_point::max(), {}, false, target{std::nullopt, &w});
    w.ready.acquire();
    if (w.error) std::rethrow_exception(w.error);
    return std::move(w.value);
  }

  /// Refuses new commands (they throw spindle::closed_error; callers waiting for room wake and
  /// throw it), lets every command already admitted be sent and answered, then joins the I/O
  /// thread. Idempotent. Called from the I/O thread (a continuation), it only refuses new
  /// commands; the destructor joins. Thread-safe.
  void close() {
    {
      std::lock_guard lk(mu_);
      closed_ = true;
    }
    space_cv_.notify_all();
    wake();
    if (std::this_thread::get_id() == io_id_) return;
    std::lock_guard j(join_mu_);
    if (io_.joinable()) io_.join();
  }

  /// Commands admitted and not yet answered (cancelled and timed-out ones included).
  /// Approximate. Thread-safe.
  std::size_t in_flight() const {
    std::lock_guard lk(mu_);
    return static_cast<std::size_t>(tail_ - head_);
  }
  /// How many times it has connected (1 after construction). Thread-safe.
  std::size_t connects() const noexcept { return connects_.load(std::memory_order_relaxed); }
  /// How many times on_push threw. Thread-safe.
  std::size_t push_errors() const noexcept { return push_errors_.load(std::memory_order_relaxed); }
  /// How many writes the I/O thread has made (each carries every command queued since the
  /// previous one). Thread-safe.
  std::size_t writes() const noexcept { return writes_.load(std::memory_order_relaxed); }
  /// The options it was made with.
  const options& get_options() const noexcept { return opts_; }

 private:
  // A blocked call(): the I/O thread stores the result and releases `ready`.
  struct waiter {
    std::binary_semaphore ready{0};
    reply value;
    std::exception_ptr error;
  };

  // Where one command's result goes: its promise, or a waiting call().
  struct target {
    std::optional<promise<reply>> p;
    waiter* w = nullptr;
    void set(reply r) {
      if (w == nullptr) {
        if (r.is_error())
          p->set_exception(std::make_exception_ptr(server_error(r.str())));
        else
          p->set_value(std::move(r));
        return;
      }
      if (r.is_error())
        w->error = std::make_exception_ptr(server_error(r.str()));
      else
        w->value = std::move(r);
      w->ready.release();
    }
    void fail(std::exception_ptr e) {
      if (w == nullptr) {
        p->set_exception(std::move(e));
        return;
      }
      w->error = std::move(e);
      w->ready.release();
    }
  };

  enum class admitted { ok, full, timeout, cancelled };

  // Sets the cancel flag of one slot and wakes the I/O thread; runs in the thread that
  // requests stop (or inline in the stop_callback constructor, under mu_: it takes no lock).
  struct canceller {
    async_client* c;
    std::atomic<bool>* flag;
    void operator()() const noexcept {
      flag->store(true, std::memory_order_release);  // pairs with the acquire in scan_cancels()
      c->cancels_.fetch_add(1, std::memory_order_release);  // pairs with the exchange in run()
      c->wake();
    }
  };

  // One admitted command. Written by its caller under mu_ before the I/O thread takes it (the
  // take is under mu_ too); afterwards only the I/O thread touches it, except `cancel`.
  struct slot {
    target result;
    std::atomic<bool> cancel{false};
    bool done = false;  // a result was given (reply, timeout, cancel); I/O thread only
    std::optional<std::stop_callback<canceller>> on_stop;
  };

  struct finished {
    target t;
    reply r;
  };

  struct timer {
    clock::time_point at;
    std::uint64_t seq;
    bool operator>(const timer& o) const noexcept { return at > o.at; }
  };

  // Encodes into this thread's scratch buffer and checks the command. Throws
  // std::invalid_argument for a refused command.
  template <class... A>
  static const std::string& encode(const A&... args) {
    static thread_local std::string buf;
    buf.clear();
    encode_command(buf, args...);
    std::string_view name;
    if (const char* why = detail::async_refusal(buf, name))
      throw std::invalid_argument("redis::async_client::command: " + std::string(name) + " " +
                                  why);
    return buf;
  }

  // The deadline of a command: its own timeout if it gave one (duration::max(): none), else
  // default_timeout. Attacked by "command_for(duration::max()) has no limit even when
  // default_timeout is set" (max() used to mean "not given", so the default cut it short).
  clock::time_point deadline_of(std::optional<std::chrono::nanoseconds> given) const {
    std::chrono::nanoseconds timeout = std::chrono::nanoseconds::max();
    if (given)
      timeout = *given;
    else if (aopts_.default_timeout.count() > 0)
      timeout = aopts_.default_timeout;
    return timeout == std::chrono::nanoseconds::max()
               ? clock::time_point::max()
               : spindle::detail::saturating_add(clock::now(), timeout);
  }

  template <class T>
  static future<reply> failed(T e) {
    promise<reply> p;
    auto f = p.get_future();
    p.set_exception(std::make_exception_ptr(std::move(e)));
    return f;
  }

  // Waits for room (unless `trying`, or on the I/O thread: then `full`), then queues the
  // encoded command with its result target. Throws spindle::closed_error once closed.
  admitted admit(const std::string& buf, clock::time_point at, const std::stop_token& stop,
                 bool trying, target&& t) {
    std::unique_lock lk(mu_);
    if (closed_) throw closed_error("redis::async_client::command: the client is closed");
    if (!has_room(buf.size())) {
      if (trying || std::this_thread::get_id() == io_id_) return admitted::full;
      ++waiters_;
      auto ready = [&] { return closed_ || has_room(buf.size()); };
      bool ok = at == clock::time_point::max() ? space_cv_.wait(lk, stop, ready)
                                               : space_cv_.wait_until(lk, stop, at, ready);
      --waiters_;
      if (closed_) throw closed_error("redis::async_client::command: the client is closed");
      if (!ok) return stop.stop_requested() ? admitted::cancelled : admitted::timeout;
    }
    // What may throw (allocation) comes first, so a throw leaves the queue as it was.
    if (at != clock::time_point::max() && new_timers_.size() == new_timers_.capacity())
      new_timers_.reserve(2 * new_timers_.size() + 16);
    out_.append(buf);
    const std::uint64_t seq = tail_++;
    slot& s = slots_[seq % aopts_.max_in_flight];
    s.result = std::move(t);
    if (at != clock::time_point::max()) new_timers_.push_back(timer{at, seq});
    if (stop.stop_possible()) s.on_stop.emplace(stop, canceller{this, &s.cancel});
    const bool sleeping = std::exchange(sleeping_, false);
    lk.unlock();
    if (sleeping) wake();
    return admitted::ok;
  }

  // Requires mu_.
  bool has_room(std::size_t bytes) const noexcept {
    return tail_ - head_ < aopts_.max_in_flight &&
           (out_.empty() || out_.size() + bytes <= aopts_.max_queued_bytes);
  }

  void wake() noexcept {
    std::uint64_t one = 1;
    [[maybe_unused]] auto r = ::write(efd_, &one, sizeof one);  // cannot block: EFD_NONBLOCK
  }

  void make_nonblocking() {
    int fd = conn_->native_handle();
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  }

  // ---- the I/O thread ----------------------------------------------------------------------

  void run() noexcept {
    std::vector<timer> fresh;
    for (;;) {
      // Invariant: cancel flags are collected before the take below, so every slot whose
      // stop_callback fired before this exchange is below taken_ when scan_cancels() runs;
      // a later one bumps cancels_ again. Attacked by "a cancelled command fails at once ...".
      const bool cancels = cancels_.exchange(0, std::memory_order_acquire) > 0;
      bool exit = false, was_idle = false;
      {
        std::lock_guard lk(mu_);
        if (!out_.empty()) {
          was_idle = taken_ == io_head_;
          // Automatic pipelining. Invariant: everything queued since the previous take goes
          // out in order, behind what is still unwritten, so reply i answers command i.
          // Attacked by "many threads on one client each get their own replies".
          if (wpos_ == wbuf_.size()) {
            wbuf_.clear();
            wpos_ = 0;
            wbuf_.swap(out_);
          } else {
            wbuf_.append(out_);
            out_.clear();
          }
          if (taken_ == io_head_) last_progress_ = clock::now();
          taken_ = tail_;
          if (waiters_ > 0) space_cv_.notify_all();
        }
        fresh.swap(new_timers_);
        exit = closed_ && taken_ == tail_ && io_head_ == taken_;
      }
      for (const auto& t : fresh) {
        timers_.push_back(t);
        std::push_heap(timers_.begin(), timers_.end(), std::greater<>{});
      }
      fresh.clear();
      if (exit) break;
      if (cancels) scan_cancels();
      // A server that closed the idle connection (restart, CLIENT KILL, timeout) is noticed
      // before the new batch is written, so the batch goes to a new connection, not lost.
      // Attacked by "an idle connection closed by the server is replaced without failing".
      if (was_idle && conn_ && peer_closed()) {
        conn_.reset();
        parser_.reset();
      }
      bool progressed = false;
      if (wpos_ < wbuf_.size()) {
        if (!conn_) reconnect();
        if (conn_) progressed |= write_some();
      }
      if (conn_) progressed |= read_some();
      const auto now = clock::now();
      expire_timers(now);
      if (conn_ && io_head_ != taken_ && opts_.io_timeout.count() > 0 &&
          now - last_progress_ > opts_.io_timeout) {
        broken("no reply within io_timeout (" + std::to_string(opts_.io_timeout.count()) +
               " ms)");
        progressed = true;
      }
      if (!progressed) sleep(now);
    }
    conn_.reset();
  }

  // Sleeps in poll() until the socket or the eventfd is ready, or the next timer is due.
  void sleep(clock::time_point now) {
    auto until = timers_.empty() ? clock::time_point::max() : timers_.front().at;
    if (conn_ && io_head_ != taken_ && opts_.io_timeout.count() > 0)
      until = std::min(until, last_progress_ + opts_.io_timeout);
    {
      std::lock_guard lk(mu_);
      if (!out_.empty()) return;  // work arrived (close() wakes the poll below)
      sleeping_ = true;
    }
    // Invariant: a caller that queues after the check above sees sleeping_ and writes the
    // eventfd, and a stop callback always writes it, so poll() cannot sleep through new work.
    // Attacked by "an idle client uses almost no CPU" (no spinning) and every round-trip test.
    int ms = -1;
    if (until != clock::time_point::max()) {
      auto left = std::chrono::ceil<std::chrono::milliseconds>(until - now).count();
      ms = static_cast<int>(std::clamp<long long>(left, 0, INT_MAX));
    }
    pollfd fds[2] = {{efd_, POLLIN, 0}, {-1, 0, 0}};
    if (conn_) {
      fds[1].fd = conn_->native_handle();
      fds[1].events = static_cast<short>(POLLIN | (wpos_ < wbuf_.size() ? POLLOUT : 0));
    }
    ::poll(fds, 2, ms);
    {
      std::lock_guard lk(mu_);
      sleeping_ = false;
    }
    if (fds[0].revents & POLLIN) {
      std::uint64_t v;
      [[maybe_unused]] auto r = ::read(efd_, &v, sizeof v);
    }
  }

  void reconnect() {
    try {
      conn_.emplace(opts_);
      make_nonblocking();
      parser_.reset();
      connects_.fetch_add(1, std::memory_order_relaxed);
      last_progress_ = clock::now();
    } catch (const std::exception& e) {
      conn_.reset();
      fail_taken(std::string("redis::async_client: cannot connect (") + e.what() +
                 "); the command was not sent");
    }
  }

  bool peer_closed() const noexcept {
    char c;
    ssize_t r = ::recv(conn_->native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r >= 0) return r == 0;
    return !(errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
  }

  bool write_some() {
    for (;;) {
      ssize_t w = ::send(conn_->native_handle(), wbuf_.data() + wpos_, wbuf_.size() - wpos_,
                         MSG_NOSIGNAL);
      if (w >= 0) {
        wpos_ += static_cast<std::size_t>(w);
        writes_.fetch_add(1, std::memory_order_relaxed);
        last_progress_ = clock::now();
        if (wpos_ == wbuf_.size()) {
          wpos_ = 0;
          wbuf_.clear();
          if (wbuf_.capacity() > (std::size_t{1} << 20)) std::string().swap(wbuf_);
        }
        return true;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
      broken(std::string("write failed: ") + std::strerror(errno));
      return true;
    }
  }

  bool read_some() {
    bool any = false;
    for (;;) {
      constexpr std::size_t chunk = 64 * 1024;
      char* p = parser_.prepare(chunk);
      ssize_t r = ::recv(conn_->native_handle(), p, chunk, 0);
      if (r > 0) {
        parser_.commit(static_cast<std::size_t>(r));
        any = true;
        if (static_cast<std::size_t>(r) < chunk) break;
        continue;
      }
      if (r == 0) {
        broken("connection closed by the server");
        return true;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      broken(std::string("read failed: ") + std::strerror(errno));
      return true;
    }
    if (!any) return false;
    last_progress_ = clock::now();
    bool lost = false;
    try {
      reply r;
      while (parser_.next(r)) {
        if (r.kind() == type::push) {
          deliver_push(std::move(r));
        } else if (io_head_ == taken_) {
          lost = true;
          break;
        } else {
          take_result(std::move(r));
        }
        r = reply();
      }
    } catch (const error& e) {
      finish_results();
      broken(e.what());
      return true;
    }
    finish_results();
    if (lost) broken("a reply came with no command waiting for it");
    return true;
  }

  // Moves the oldest owed command's promise, with its reply, to done_, and frees its slot.
  void take_result(reply r) {
    slot& s = slots_[io_head_ % aopts_.max_in_flight];
    if (!s.done) done_.push_back(finished{std::move(s.result), std::move(r)});
    free_slot(s);
    ++io_head_;
  }

  // Publishes the freed slots, then fulfils the promises in command order outside every lock.
  // Invariant: in_flight() and room for new callers never lag a fulfilled future, so a caller
  // that saw its reply sees its slot free. Attacked by "a timed-out command fails at its
  // deadline and its late reply goes to no one" (in_flight() == 0 afterwards).
  void finish_results() {
    publish_head();
    for (auto& d : done_) d.t.set(std::move(d.r));
    done_.clear();
  }

  void deliver_push(reply r) {
    if (!aopts_.on_push) return;
    try {
      aopts_.on_push(std::move(r));
    } catch (...) {
      push_errors_.fetch_add(1, std::memory_order_relaxed);
    }
  }

  void free_slot(slot& s) {
    s.on_stop.reset();  // waits for a stop callback running right now (it takes no lock)
    s.result = target{};
    s.done = false;
    s.cancel.store(false, std::memory_order_relaxed);  // published by mu_ in publish_head()
  }

  void publish_head() {
    if (published_ == io_head_) return;
    published_ = io_head_;
    std::lock_guard lk(mu_);
    head_ = io_head_;
    if (waiters_ > 0) space_cv_.notify_all();
  }

  // Fails every command handed to the I/O thread and not answered, and closes the socket.
  void broken(const std::string& why) {
    conn_.reset();
    parser_.reset();
    fail_taken("redis::async_client: connection lost before the reply (" + why +
               "); the command may or may not have run and is not re-sent");
  }

  void fail_taken(const std::string& message) {
    wbuf_.clear();
    wpos_ = 0;
    std::vector<target> owed;  // fulfilled after the slots are published (see above)
    while (io_head_ != taken_) {
      slot& s = slots_[io_head_ % aopts_.max_in_flight];
      if (!s.done) owed.push_back(std::move(s.result));
      free_slot(s);
      ++io_head_;
    }
    publish_head();
    for (auto& t : owed) t.fail(std::make_exception_ptr(error(message)));
  }

  void scan_cancels() {
    for (std::uint64_t q = io_head_; q != taken_; ++q) {
      slot& s = slots_[q % aopts_.max_in_flight];
      if (!s.done && s.cancel.load(std::memory_order_acquire)) {
        s.done = true;
        s.result.fail(std::make_exception_ptr(cancelled_error(
            "redis::async_client: cancelled; the reply will be read and discarded")));
      }
    }
  }

  void expire_timers(clock::time_point now) {
    while (!timers_.empty() && timers_.front().at <= now) {
      std::pop_heap(timers_.begin(), timers_.end(), std::greater<>{});
      const timer t = timers_.back();
      timers_.pop_back();
      if (t.seq < io_head_ || t.seq >= taken_) continue;  // answered already
      slot& s = slots_[t.seq % aopts_.max_in_flight];
      if (!s.done) {
        s.done = true;
        s.result.fail(std::make_exception_ptr(timeout_error(
            "redis::async_client: no reply within the call's timeout; the reply will be read "
            "and discarded")));
      }
    }
    // Timers of answered commands wait in the heap until they are due; keep it bounded.
    if (timers_.size() > 2 * aopts_.max_in_flight + 64) {
      std::erase_if(timers_, [&](const timer& t) { return t.seq < io_head_; });
      std::make_heap(timers_.begin(), timers_.end(), std::greater<>{});
    }
  }

  const options opts_;
  const async_options aopts_;
  std::unique_ptr<slot[]> slots_;  // ring of max_in_flight; slot of seq q is q % max_in_flight

  // Lock order: mu_ only (join_mu_ is taken alone, never with mu_).
  mutable std::mutex mu_;
  std::condition_variable_any space_cv_;  // room freed, or closed
  std::string out_;                       // guarded by mu_: encoded commands not yet taken
  std::vector<timer> new_timers_;         // guarded by mu_: deadlines of commands not yet taken
  std::uint64_t tail_ = 0;                // guarded by mu_: next command's seq
  std::uint64_t head_ = 0;                // guarded by mu_: oldest unanswered seq (published)
  std::size_t waiters_ = 0;               // guarded by mu_: callers waiting for room
  bool sleeping_ = false;                 // guarded by mu_: the I/O thread is (about to be) in poll
  bool closed_ = false;                   // guarded by mu_

  std::atomic<std::uint64_t> cancels_{0};  // stop callbacks fired since the last scan
  std::atomic<std::size_t> connects_{0};
  std::atomic<std::size_t> push_errors_{0};
  std::atomic<std::size_t> writes_{0};

  // The I/O thread's own state (the constructor sets it up before the thread starts).
  std::optional<connection> conn_;
  parser parser_;
  std::string wbuf_;  // taken commands; [wpos_, size) not yet written
  std::size_t wpos_ = 0;
  std::uint64_t io_head_ = 0;  // oldest unanswered seq
  std::uint64_t taken_ = 0;    // commands below this seq are in wbuf_ or written
  std::uint64_t published_ = 0;  // io_head_ as last copied to head_
  std::vector<timer> timers_;  // min-heap on `at`
  std::vector<finished> done_;  // replies read, promises not yet fulfilled (reused)
  clock::time_point last_progress_{};

  int efd_ = -1;
  std::mutex join_mu_;
  std::thread io_;
  std::thread::id io_id_{};
};

}  // namespace spindle::redis
