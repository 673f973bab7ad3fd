// Thread start-up failures (issue 12, item 12): pthread_create is interposed in this test
// program so that the n-th thread creation fails with EAGAIN, as it does when a process runs
// out of threads or memory. Each call that starts threads must then stop what it started and
// throw a clear exception, never hang waiting on inputs nobody closes.
#include <dlfcn.h>
#include <pthread.h>

#include <doctest/doctest.h>

#include <spindle/bounded_queue.hpp>
#include <spindle/fan.hpp>
#include <spindle/pipeline.hpp>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "support/threads.hpp"

using namespace std::chrono_literals;
using spindle::status;

// The sanitizers intercept pthread_create themselves; interposing it there would hide threads
// from them. Under a sanitizer the cases below are skipped.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SPINDLE_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SPINDLE_TEST_SANITIZED 1
#endif
#endif
#ifndef SPINDLE_TEST_SANITIZED
#define SPINDLE_TEST_SANITIZED 0
#endif

namespace {
std::atomic<int> creations_left{-1};  // -1: no limit; n >= 0: n more creations succeed
constexpr bool sanitized = SPINDLE_TEST_SANITIZED != 0;
}  // namespace

#if !SPINDLE_TEST_SANITIZED
extern "C" int pthread_create(pthread_t* thread, const pthread_attr_t* attr,
                              void* (*start)(void*), void* arg) noexcept {
  using fn = int (*)(pthread_t*, const pthread_attr_t*, void* (*)(void*), void*);
  static const fn real = [] {
    void* sym = dlsym(RTLD_NEXT, "pthread_create");
    fn f = nullptr;
    std::memcpy(&f, &sym, sizeof f);
    return f;
  }();
  int left = creations_left.load();
  while (left >= 0) {
    if (left == 0) return EAGAIN;
    if (creations_left.compare_exchange_weak(left, left - 1)) break;
  }
  return real(thread, attr, start, arg);
}
#endif

namespace {
// Lets `n` more threads start, then fails every creation until destroyed.
struct fail_threads_after {
  explicit fail_threads_after(int n) { creations_left.store(n); }
  ~fail_threads_after() { creations_left.store(-1); }
};

}  // namespace

TEST_CASE("the interposed pthread_create fails on demand" * doctest::skip(sanitized)) {
  {
    fail_threads_after limit(0);
    CHECK_THROWS_AS(std::thread([] {}), std::system_error);
  }
  std::thread t([] {});
  t.join();
}

TEST_CASE("fan_in stops its started forwarders and throws when a thread fails to start" *
          doctest::skip(sanitized)) {
  auto qs = std::make_shared<std::vector<std::unique_ptr<spindle::bounded_queue<int>>>>();
  for (int i = 0; i < 4; ++i) qs->push_back(std::make_unique<spindle::bounded_queue<int>>(8));
  auto sink = std::make_shared<spindle::bounded_queue<int>>(64);
  std::string what;
  bool threw = false;
  test_support::thread_group g;  // the caller runs on a thread started before the limit
  g.spawn([&, qs, sink] {
    std::vector<spindle::bounded_queue<int>*> srcs;
    for (auto& q : *qs) srcs.push_back(q.get());
    fail_threads_after limit(1);  // the first forwarding thread starts, the second does not
    try {
      spindle::fan_in(srcs, *sink);
    } catch (const std::system_error& e) {
      threw = true;
      what = e.what();
    }
  });
  REQUIRE(g.join_within(20s));  // the old code joined a forwarder blocked on an open source
  CHECK(threw);
  CHECK(what.find("spindle::fan_in") != std::string::npos);
  CHECK(what.find("failed to start") != std::string::npos);
}

TEST_CASE("pipeline start-up stops its started workers and throws when a thread fails to start" *
          doctest::skip(sanitized)) {
  std::string what;
  bool threw = false;
  test_support::thread_group g;
  g.spawn([&] {
    fail_threads_after limit(3);  // two workers of the first stage and one of the second
    try {
      auto p = spindle::pipeline<int>({.capacity = 16})
                   .stage([](int x) { return x + 1; }, {.workers = 2})
                   .stage([](int x) { return x * 2; }, {.workers = 2, .ordered = true})
                   .sink([](int) {});
    } catch (const std::system_error& e) {
      threw = true;
      what = e.what();
    }
  });
  REQUIRE(g.join_within(20s));  // the old code's destructor joined workers on open queues
  CHECK(threw);
  CHECK(what.find("spindle::pipeline") != std::string::npos);
  // Threads start again once the limit is gone: a later pipeline works.
  long sum = 0;
  auto p = spindle::pipeline<int>().stage([](int x) { return x; }).sink([&](int x) { sum += x; });
  for (int i = 1; i <= 10; ++i) REQUIRE(p.push(int{i}) == status::ok);
  p.close();
  CHECK(p.wait() == status::ok);
  CHECK(sum == 55);
}
