// Tests for spindle/detail/function.hpp: move_function, the small-buffer callable of the pool.
#include <doctest/doctest.h>

#include <spindle/detail/function.hpp>

#include <array>
#include <cstdlib>
#include <memory>
#include <new>
#include <string>

#include "support/allocations.hpp"
#include "support/lifetime.hpp"

using spindle::detail::move_function;
using spindle::detail::task;
using test_support::tracked;

using test_support::allocations;

TEST_CASE("a default-constructed move_function is empty") {
  task t;
  CHECK_FALSE(static_cast<bool>(t));
}

TEST_CASE("a small callable is stored without allocating and called") {
  int hits = 0;
  long before = allocations;
  task t([&hits] { ++hits; });
  CHECK(allocations == before);
  REQUIRE(static_cast<bool>(t));
  t();
  t();
  CHECK(hits == 2);
}

TEST_CASE("a callable of exactly the buffer size is stored inline") {
  struct big48 {
    std::array<char, 40> pad{};
    int* hits;
    void operator()() { ++*hits; }
  };
  static_assert(sizeof(big48) == 48);
  static_assert(task::fits_inline<big48>);
  int hits = 0;
  long before = allocations;
  task t(big48{{}, &hits});
  CHECK(allocations == before);
  t();
  CHECK(hits == 1);
}

TEST_CASE("a large callable is kept on the heap and still works") {
  struct big {
    std::array<char, 200> pad{};
    int* hits;
    void operator()() { ++*hits; }
  };
  static_assert(!task::fits_inline<big>);
  int hits = 0;
  long before = allocations;
  task t(big{{}, &hits});
  CHECK(allocations == before + 1);
  task u(std::move(t));  // moving a heap callable moves the pointer only
  CHECK(allocations == before + 1);
  u();
  CHECK(hits == 1);
  CHECK_FALSE(static_cast<bool>(t));
}

TEST_CASE("a move-only callable is accepted and moved, never copied") {
  auto p = std::make_unique<int>(7);
  move_function<int()> f([p = std::move(p)] { return *p; });
  move_function<int()> g(std::move(f));
  CHECK_FALSE(static_cast<bool>(f));
  CHECK(g() == 7);
  move_function<int()> h;
  h = std::move(g);
  CHECK(h() == 7);
}

TEST_CASE("arguments and results pass through") {
  move_function<std::string(const std::string&, int)> f(
      [](const std::string& s, int n) { return s + std::to_string(n); });
  CHECK(f("x", 3) == "x3");
}

TEST_CASE("every stored callable is destroyed exactly once, inline or on the heap") {
  tracked::registry reg;
  {
    task a([t = tracked(&reg, 1)] { (void)t.value(); });
    task b(std::move(a));
    b();
    task c;
    c = std::move(b);
    c.reset();
    CHECK_FALSE(static_cast<bool>(c));
    struct big {
      std::array<char, 100> pad{};
      tracked t;
      void operator()() { (void)t.value(); }
    };
    task d(big{{}, tracked(&reg, 2)});
    d();
    task e(std::move(d));
    e = task([t = tracked(&reg, 3)] {});  // the heap callable is destroyed on assignment
  }
  CHECK(reg.alive == 0);
  CHECK(reg.errors == 0);
}

TEST_CASE("an exception from the callable propagates to the caller") {
  task t([] { throw std::runtime_error("boom"); });
  CHECK_THROWS_AS(t(), std::runtime_error);
}
