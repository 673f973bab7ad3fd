// Tests for <spindle/actor.hpp>.
#include <spindle/actor.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#include <csignal>
#include <cstdio>
#include <sys/wait.h>
#include <unistd.h>

#include <spindle/thread_pool.hpp>

#include "support/lifetime.hpp"
#include "support/threads.hpp"

using namespace std::chrono_literals;
using spindle::status;

TEST_CASE("an actor on its own thread handles every message in send order") {
  std::vector<int> seen;
  {
    spindle::actor<int> a([&](int x) { seen.push_back(x); }, {.mailbox_capacity = 8});
    for (int i = 0; i < 1000; ++i) REQUIRE(a.send(i) == status::ok);
  }  // the destructor stops: queued messages are handled first
  REQUIRE(seen.size() == 1000);
  bool in_order = true;
  for (int i = 0; i < 1000; ++i) in_order = in_order && seen[std::size_t(i)] == i;
  CHECK(in_order);
}

TEST_CASE("many senders: every message arrives once, FIFO per sender") {
  constexpr int senders = 4, per = 2000;
  std::vector<int> last(senders, -1);
  bool fifo = true;
  long sum = 0;
  int count = 0;
  spindle::actor<std::pair<int, int>> a([&](std::pair<int, int> m) {
    if (m.second <= last[std::size_t(m.first)]) fifo = false;
    last[std::size_t(m.first)] = m.second;
    sum += m.second;
    ++count;
  }, {.mailbox_capacity = 16});
  test_support::start_gate gate;
  test_support::thread_group g;
  for (int s = 0; s < senders; ++s)
    g.spawn([&, s] {
      gate.wait();
      for (int i = 0; i < per; ++i) REQUIRE(a.send({s, i}) == status::ok);
    });
  gate.open();
  REQUIRE(g.join_within(20s));
  a.stop();
  CHECK(fifo);
  CHECK(count == senders * per);
  CHECK(sum == long(senders) * per * (per - 1) / 2);
}

TEST_CASE("ask runs inside the actor after the messages queued before it") {
  long total = 0;
  spindle::actor<int> a([&](int x) { total += x; });
  for (int i = 1; i <= 100; ++i) REQUIRE(a.send(i) == status::ok);
  auto f = a.ask([&] { return total; });
  CHECK(f.get() == 5050);
  auto v = a.ask([] {});
  v.get();
}

TEST_CASE("ask delivers an exception of its function to the future") {
  spindle::actor<int> a([](int) {});
  auto f = a.ask([]() -> int { throw std::domain_error("no answer"); });
  // Stop first so the actor thread has released its side of the future before get() (TSan does
  // not see libstdc++'s atomic exception_ptr reference count).
  a.stop();
  CHECK_THROWS_WITH_AS(f.get(), "no answer", std::domain_error);
}

TEST_CASE("after stop, send returns closed and ask's future holds closed_error") {
  spindle::actor<int> a([](int) {});
  a.stop();
  a.stop();  // idempotent
  CHECK(a.send(1) == status::closed);
  CHECK(a.try_send(1) == status::closed);
  auto f = a.ask([] { return 1; });
  CHECK_THROWS_AS(f.get(), spindle::closed_error);
}

TEST_CASE("try_send reports full and send blocks while the mailbox is full") {
  test_support::start_gate entered, release;
  std::atomic<int> handled{0};
  spindle::actor<int> a([&](int x) {
    if (x == 0) {
      entered.open();
      release.wait();
    }
    ++handled;
  }, {.mailbox_capacity = 2});
  REQUIRE(a.send(0) == status::ok);
  entered.wait();  // the handler holds message 0; the mailbox is empty
  CHECK(a.try_send(1) == status::ok);
  CHECK(a.try_send(2) == status::ok);
  CHECK(a.try_send(3) == status::full);
  test_support::thread_group g;
  g.spawn([&] { CHECK(a.send(3) == status::ok); });  // blocks until the handler moves on
  release.open();
  REQUIRE(g.join_within(10s));
  a.stop();
  CHECK(handled.load() == 4);
}

TEST_CASE("a handler exception goes to on_error and the actor goes on") {
  std::vector<std::string> errors;
  int ok = 0;
  {
    spindle::actor<int> a([&](int x) {
      if (x % 2) throw std::runtime_error("odd " + std::to_string(x));
      ++ok;
    }, {.on_error = [&](std::exception_ptr e) {
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        errors.push_back(ex.what());
      }
    }});
    for (int i = 0; i < 6; ++i) REQUIRE(a.send(i) == status::ok);
  }
  CHECK(ok == 3);
  CHECK(errors == std::vector<std::string>{"odd 1", "odd 3", "odd 5"});
}

namespace {
// Runs `body` in a child process and returns how it ended (waitpid status): for behaviour that
// ends the process (std::terminate) or, on broken code, hangs (the child is killed after 20 s).
template <class Body>
int in_child(Body body) {
  std::fflush(nullptr);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::signal(SIGABRT, SIG_DFL);  // not doctest's crash report: the parent checks the signal
    ::alarm(20);                    // a hang ends as SIGALRM
    body();
    ::_exit(0);
  }
  int st = 0;
  REQUIRE(::waitpid(pid, &st, 0) == pid);
  return st;
}
}  // namespace

TEST_CASE("without on_error a handler exception terminates the program, with a message") {
  // Attacks lost exceptions: the old default counted the exception and dropped it unseen.
  int st = in_child([] {
    ::close(2);  // the message goes to stderr; keep the test output clean
    spindle::actor<int> a([](int x) {
      if (x == 1) throw std::runtime_error("one");
    });
    for (int i = 0; i < 3; ++i) (void)a.send(i);
    a.stop();
  });
  CHECK(WIFSIGNALED(st));
  CHECK(WTERMSIG(st) == SIGABRT);
}

TEST_CASE("an exception thrown by on_error itself terminates the program") {
  int st = in_child([] {
    ::close(2);
    spindle::thread_pool pool(1);
    spindle::actor<int> a(pool, [](int) { throw std::runtime_error("handler"); },
                          {.on_error = [](std::exception_ptr) { throw std::logic_error("on_error"); }});
    (void)a.send(1);
    a.stop();
  });
  CHECK(WIFSIGNALED(st));
  CHECK(WTERMSIG(st) == SIGABRT);
}

TEST_CASE("failures counts the handler exceptions handed to on_error") {
  std::atomic<int> seen{0};
  spindle::actor<int> a([](int x) {
    if (x == 1) throw std::runtime_error("one");
  }, {.on_error = [&](std::exception_ptr) { ++seen; }});
  for (int i = 0; i < 3; ++i) REQUIRE(a.send(i) == status::ok);
  a.stop();
  CHECK(a.failures() == 1);
  CHECK(seen.load() == 1);
}

TEST_CASE("a handler that sends to an actor and then asks it gets the answer") {
  // Attacks run-next: b's turn, deferred onto the sending worker, waited for the handler that
  // waits for b's answer. Workers are idle, so nothing may stand in the way.
  int failed_at = -1;
  for (int rep = 0; rep < 50 && failed_at < 0; ++rep) {
    spindle::thread_pool pool(2);
    int b_handled = 0;  // b's state: touched only inside b
    spindle::actor<int> b(pool, [&](int) { ++b_handled; });
    std::atomic<bool> answered{false};
    spindle::actor<int> a(pool, [&](int) {
      REQUIRE(b.send(1) == status::ok);
      auto f = b.ask([&] { return b_handled; });
      answered = f.wait_for(5s) == status::ok && f.get() == 1;
    });
    REQUIRE(a.send(0) == status::ok);
    a.stop();
    b.stop();
    if (!answered.load()) failed_at = rep;
  }
  CHECK(failed_at == -1);
}

TEST_CASE("a handler that sends to one actor and asks a third, which asks the first, gets the answer") {
  int failed_at = -1;
  for (int rep = 0; rep < 50 && failed_at < 0; ++rep) {
    spindle::thread_pool pool(3);
    spindle::actor<int> b(pool, [](int) {});
    spindle::actor<int> c(pool, [](int) {});
    std::atomic<bool> answered{false};
    spindle::actor<int> a(pool, [&](int) {
      REQUIRE(b.send(1) == status::ok);
      auto f = c.ask([&] { return b.ask([] { return 5; }).get(); });
      answered = f.wait_for(5s) == status::ok && f.get() == 5;
    });
    REQUIRE(a.send(0) == status::ok);
    a.stop();
    c.stop();
    b.stop();
    if (!answered.load()) failed_at = rep;
  }
  CHECK(failed_at == -1);
}

TEST_CASE("stop from a task of the actor's own one-thread pool throws at once instead of hanging") {
  // In a child: the old code hung for ever (stop waited for a turn queued behind its caller).
  int st = in_child([] {
    spindle::thread_pool pool(1);
    std::atomic<int> handled{0};
    spindle::actor<int> a(pool, [&](int) { ++handled; });
    auto f = pool.submit([&] {
      (void)a.send(1);  // a's turn is now queued behind this task
      try {
        a.stop();
        return 0;
      } catch (const std::logic_error& e) {
        return std::string(e.what()).find("actor::stop") != std::string::npos ? 1 : 2;
      }
    });
    int r = f.get();
    a.stop();  // from outside: handles the message
    ::_exit(r == 1 && handled.load() == 1 ? 0 : 3);
  });
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 0);
}

TEST_CASE("stop from a task of a many-thread pool handles the queue and returns") {
  spindle::thread_pool pool(2);
  std::atomic<int> handled{0};
  spindle::actor<int> a(pool, [&](int) { ++handled; });
  auto f = pool.submit([&] {
    for (int i = 0; i < 100; ++i) (void)a.send(i);
    a.stop();
    return handled.load();
  });
  REQUIRE(f.wait_for(60s) == status::ok);
  CHECK(f.get() == 100);
}

TEST_CASE("stop from inside the handler closes the mailbox without deadlock") {
  int handled = 0;
  spindle::actor<int>* self = nullptr;
  spindle::actor<int> a([&](int) {
    ++handled;
    self->stop();
  });
  self = &a;
  REQUIRE(a.send(1) == status::ok);
  auto f = a.ask([] { return 0; });  // queued before or refused after the stop
  try {
    f.get();
  } catch (const spindle::closed_error&) {
  }
  a.stop();
  CHECK(handled == 1);
  CHECK(a.send(2) == status::closed);
}

TEST_CASE("an actor on an executor never runs two handlers at once and loses nothing") {
  spindle::thread_pool pool(2);
  std::atomic<int> in_flight{0};
  std::atomic<bool> overlap{false};
  long sum = 0;
  {
    spindle::actor<int> a(pool, [&](int x) {
      if (in_flight.fetch_add(1) != 0) overlap = true;
      sum += x;
      in_flight.fetch_sub(1);
    }, {.mailbox_capacity = 8, .batch = 4});
    test_support::start_gate gate;
    test_support::thread_group g;
    for (int s = 0; s < 3; ++s)
      g.spawn([&] {
        gate.wait();
        for (int i = 1; i <= 1000; ++i) REQUIRE(a.send(i) == status::ok);
      });
    gate.open();
    REQUIRE(g.join_within(20s));
    auto f = a.ask([&] { return sum; });
    CHECK(f.get() == 3L * 500500);
  }
  CHECK_FALSE(overlap.load());
}

TEST_CASE("actors sharing an executor take turns") {
  // A FIFO executor run by the test thread: the order of turns is exactly the actors' doing.
  struct fifo_executor {
    std::deque<std::function<void()>> tasks;
    void post(std::function<void()> f) { tasks.push_back(std::move(f)); }
    void run_all() {
      while (!tasks.empty()) {
        auto f = std::move(tasks.front());
        tasks.pop_front();
        f();
      }
    }
  } ex;
  int a_handled = 0;
  int a_seen_by_b = -1;
  spindle::actor<int> a(ex, [&](int) { ++a_handled; }, {.mailbox_capacity = 2000, .batch = 16});
  spindle::actor<int> b(ex, [&](int) { a_seen_by_b = a_handled; });
  for (int i = 0; i < 1000; ++i) REQUIRE(a.send(i) == status::ok);
  REQUIRE(b.send(0) == status::ok);
  ex.run_all();
  CHECK(a_handled == 1000);
  CHECK(a_seen_by_b == 16);  // a yielded after one turn of 16 messages; b ran next
  a.stop();
  b.stop();
}

TEST_CASE("a handler flooding an idle actor on the same pool does not deadlock") {
  spindle::thread_pool pool(2);  // b needs a second worker while a's handler blocks the first
  std::atomic<int> b_handled{0};
  spindle::actor<int> b(pool, [&](int) { ++b_handled; }, {.mailbox_capacity = 4});
  spindle::actor<int> a(pool, [&](int n) {
    for (int i = 0; i < n; ++i) REQUIRE(b.send(i) == status::ok);  // more than b holds
  });
  REQUIRE(a.send(100) == status::ok);
  a.stop();
  b.stop();
  CHECK(b_handled.load() == 100);
}

TEST_CASE("a handler may wait on ask to another actor on the same pool") {
  spindle::thread_pool pool(2);
  spindle::actor<int> b(pool, [](int) {});
  int answer = 0;
  spindle::actor<int> a(pool, [&](int) { answer = b.ask([] { return 42; }).get(); });
  REQUIRE(a.send(1) == status::ok);
  a.stop();
  CHECK(answer == 42);
}

TEST_CASE("ping-pong between two actors on a one-thread pool completes and counts every hop") {
  spindle::thread_pool pool(1);
  constexpr int hops = 5000;
  spindle::actor<int>* ping_ptr = nullptr;
  spindle::actor<int>* pong_ptr = nullptr;
  spindle::promise<int> done;
  auto finished = done.get_future();
  spindle::actor<int> pong(pool, [&](int x) { ping_ptr->send(x + 1); });
  spindle::actor<int> ping(pool, [&](int x) {
    if (x >= hops) {
      done.set_value(x);
      return;
    }
    pong_ptr->send(x + 1);
  });
  ping_ptr = &ping;
  pong_ptr = &pong;
  std::atomic<bool> other_ran{false};
  REQUIRE(ping.send(0) == status::ok);
  pool.post([&] { other_ran = true; });  // not starved by the chain of hand-offs
  REQUIRE(finished.wait_for(20s) == status::ok);
  CHECK(finished.get() == hops);
  ping.stop();
  pong.stop();
  pool.wait_idle();
  CHECK(other_ran.load());
}

TEST_CASE("an actor on an executor handles its queue at stop and ask works there") {
  spindle::thread_pool pool(2);
  int total = 0;
  spindle::actor<int> a(pool, [&](int x) { total += x; });
  for (int i = 0; i < 10; ++i) REQUIRE(a.send(i) == status::ok);
  CHECK(a.ask([&] { return total; }).get() == 45);
  a.stop();
  CHECK(a.send(1) == status::closed);
  CHECK_THROWS_AS(a.ask([] { return 0; }).get(), spindle::closed_error);
}

TEST_CASE("messages are moved, never leaked") {
  test_support::tracked::registry reg;
  {
    std::uint64_t sum = 0;
    spindle::actor<test_support::tracked> a([&](test_support::tracked t) { sum += t.value(); },
                                            {.mailbox_capacity = 4});
    for (std::uint64_t i = 0; i < 100; ++i)
      REQUIRE(a.send(test_support::tracked(&reg, i)) == status::ok);
    a.stop();
    CHECK(sum == 4950);
    CHECK(reg.copies.load() == 0);
  }
  CHECK(reg.alive.load() == 0);
  CHECK(reg.errors.load() == 0);
}

TEST_CASE("bad options throw std::invalid_argument naming the value") {
  CHECK_THROWS_WITH_AS(spindle::actor<int>([](int) {}, {.mailbox_capacity = 0}),
                       doctest::Contains("mailbox_capacity must be >= 1 (got 0)"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(spindle::actor<int>([](int) {}, {.batch = 0}),
                       doctest::Contains("batch must be >= 1 (got 0)"), std::invalid_argument);
}

namespace {
// Several threads ask (and send) while another stops the actor: every future becomes ready,
// with the answer if its ask was queued before the stop and closed_error if after; none hangs,
// and the answers that came are exactly the asks the actor ran.
template <class MakeActor>
void check_asks_racing_stop(MakeActor make) {
  for (int round = 0; round < 40; ++round) {
    CAPTURE(round);
    std::atomic<int> ran{0};
    auto a = make([&](int) {});
    std::vector<std::vector<spindle::future<int>>> futures(3);
    test_support::thread_group g;
    for (int t = 0; t < 3; ++t) {
      g.spawn([&, t] {
        for (int i = 0; i < 50; ++i) {
          (void)a->send(i);
          futures[static_cast<std::size_t>(t)].push_back(a->ask([&ran, i] {
            ran.fetch_add(1);
            return i;
          }));
        }
      });
    }
    g.spawn([&] {
      std::this_thread::yield();
      a->stop();
    });
    REQUIRE(g.join_within(30s));
    int answered = 0, refused = 0;
    for (auto& v : futures) {
      for (std::size_t i = 0; i < v.size(); ++i) {
        REQUIRE(v[i].wait_for(30s) == status::ok);
        try {
          const int got = v[i].get();
          CHECK(got == static_cast<int>(i));
          ++answered;
        } catch (const spindle::closed_error&) {
          ++refused;
        }
      }
    }
    CHECK(answered + refused == 150);
    CHECK(answered == ran.load());
    a.reset();  // the destructor after stop: idempotent
  }
}
}  // namespace

TEST_CASE("asks racing stop all become ready: answered if queued before the stop, closed_error "
          "after; never a hang (own thread and executor)") {
  check_asks_racing_stop([](auto h) {
    return std::make_unique<spindle::actor<int>>(h, spindle::actor_options{.mailbox_capacity = 2});
  });
  spindle::thread_pool pool(2);
  check_asks_racing_stop([&](auto h) {
    return std::make_unique<spindle::actor<int>>(
        pool, h, spindle::actor_options{.mailbox_capacity = 1, .batch = 1});
  });
}

TEST_CASE("stop from inside an ask function closes the mailbox; asks queued behind it are still "
          "answered, later ones get closed_error") {
  spindle::thread_pool pool(2);
  for (int mode = 0; mode < 2; ++mode) {
    CAPTURE(mode);
    std::unique_ptr<spindle::actor<int>> a;
    if (mode == 0) {
      a = std::make_unique<spindle::actor<int>>([](int) {});
    } else {
      a = std::make_unique<spindle::actor<int>>(pool, [](int) {});
    }
    spindle::promise<void> gate;
    auto opened = gate.get_future();
    auto blocker = a->ask([&] { opened.wait(); return 0; });  // holds the actor while we queue
    auto stopper = a->ask([&] { a->stop(); return 1; });
    auto behind = a->ask([] { return 2; });
    gate.set_value();
    CHECK(stopper.get() == 1);
    CHECK(behind.get() == 2);  // queued before the stop: handled
    auto after = a->ask([] { return 3; });
    CHECK_THROWS_AS(after.get(), spindle::closed_error);
    CHECK(blocker.get() == 0);
    a.reset();
  }
}
