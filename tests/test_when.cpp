// Tests for spindle/when.hpp: when_all, when_any, as_completed.
#include <doctest/doctest.h>

#include <spindle/future.hpp>
#include <spindle/thread_pool.hpp>

#include <chrono>
#include <iterator>
#include <ranges>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "support/lifetime.hpp"

using namespace std::chrono_literals;
using spindle::future;
using spindle::promise;

namespace {
std::vector<future<int>> futures_of(std::vector<promise<int>>& ps) {
  std::vector<future<int>> fs;
  for (auto& p : ps) fs.push_back(p.get_future());
  return fs;
}
std::exception_ptr error(const char* what) {
  return std::make_exception_ptr(std::runtime_error(what));
}
}  // namespace

static_assert(std::ranges::input_range<spindle::completion_range<int>>);

TEST_CASE("when_all of a vector is ready only when every input is, with values in order") {
  std::vector<promise<int>> ps(3);
  auto all = spindle::when_all(futures_of(ps));
  ps[2].set_value(30);
  ps[0].set_value(10);
  CHECK_FALSE(all.ready());
  ps[1].set_value(20);
  REQUIRE(all.ready());
  CHECK(all.get() == std::vector<int>{10, 20, 30});
}

TEST_CASE("when_all of an empty vector is ready at once") {
  auto all = spindle::when_all(std::vector<future<int>>{});
  REQUIRE(all.ready());
  CHECK(all.get().empty());
}

TEST_CASE("when_all holds the exception of the first failed input by position") {
  std::vector<promise<int>> ps(3);
  auto all = spindle::when_all(futures_of(ps));
  ps[2].set_exception(error("third"));  // fails first in time
  ps[1].set_exception(error("second"));  // fails first by position
  ps[0].set_value(1);
  CHECK_THROWS_WITH_AS(all.get(), "second", std::runtime_error);
}

TEST_CASE("when_all of future<void> waits for all and reports failure") {
  std::vector<promise<void>> ps(2);
  std::vector<future<void>> fs;
  for (auto& p : ps) fs.push_back(p.get_future());
  auto all = spindle::when_all(std::move(fs));
  ps[0].set_value();
  CHECK_FALSE(all.ready());
  ps[1].set_value();
  all.get();

  std::vector<future<void>> gs;
  gs.push_back(spindle::make_ready_future());
  gs.push_back(spindle::make_exceptional_future<void>(error("v")));
  CHECK_THROWS_AS(spindle::when_all(std::move(gs)).get(), std::runtime_error);
}

TEST_CASE("when_all of futures of different types yields a tuple") {
  promise<std::string> ps;
  auto all = spindle::when_all(spindle::make_ready_future(1), ps.get_future(),
                               spindle::make_ready_future(2.5));
  CHECK_FALSE(all.ready());
  ps.set_value("two");
  auto [a, b, c] = all.get();
  CHECK(a == 1);
  CHECK(b == "two");
  CHECK(c == 2.5);
}

TEST_CASE("variadic when_all holds the first failed input's exception by position") {
  promise<int> p0;
  promise<int> p1;
  auto all = spindle::when_all(p0.get_future(), p1.get_future());
  p1.set_exception(std::make_exception_ptr(std::out_of_range("one")));
  p0.set_exception(std::make_exception_ptr(std::length_error("zero")));
  CHECK_THROWS_AS(all.get(), std::length_error);
}

TEST_CASE("combinators reject invalid input futures with std::invalid_argument") {
  std::vector<future<int>> fs(2);
  CHECK_THROWS_WITH_AS(spindle::when_all(std::move(fs)), doctest::Contains("when_all"),
                       std::invalid_argument);
  std::vector<future<int>> gs(1);
  CHECK_THROWS_AS(spindle::when_any(std::move(gs)), std::invalid_argument);
  std::vector<future<int>> hs(1);
  CHECK_THROWS_AS(spindle::as_completed(std::move(hs)), std::invalid_argument);
  CHECK_THROWS_WITH_AS(spindle::when_any(std::vector<future<int>>{}),
                       doctest::Contains("when_any"), std::invalid_argument);
  CHECK_THROWS_AS(spindle::when_all(future<int>{}, spindle::make_ready_future(1)),
                  std::invalid_argument);
}

TEST_CASE("when_any reports the first input to finish and hands back every future") {
  std::vector<promise<int>> ps(3);
  auto any = spindle::when_any(futures_of(ps));
  CHECK_FALSE(any.ready());
  ps[1].set_value(11);
  REQUIRE(any.ready());
  ps[0].set_value(10);
  auto r = any.get();
  CHECK(r.index == 1);
  REQUIRE(r.futures.size() == 3);
  CHECK(r.futures[1].ready());
  CHECK(r.futures[1].get() == 11);
  CHECK(r.futures[0].get() == 10);
  CHECK_FALSE(r.futures[2].ready());  // finishes later
  ps[2].set_value(12);
  CHECK(r.futures[2].get() == 12);
}

TEST_CASE("when_any counts a failure as finishing") {
  std::vector<promise<int>> ps(2);
  auto any = spindle::when_any(futures_of(ps));
  ps[0].set_exception(error("first"));
  auto r = any.get();
  CHECK(r.index == 0);
  CHECK_THROWS_AS(r.futures[0].get(), std::runtime_error);
  ps[1].set_value(1);
  CHECK(r.futures[1].get() == 1);
}

TEST_CASE("when_any of an already-ready input is ready at once") {
  std::vector<future<int>> fs;
  promise<int> never;
  fs.push_back(never.get_future());
  fs.push_back(spindle::make_ready_future(5));
  auto r = spindle::when_any(std::move(fs)).get();
  CHECK(r.index == 1);
  CHECK(r.futures[1].get() == 5);
}  // `never` is destroyed here: futures[0] becomes broken_promise, nothing leaks

TEST_CASE("as_completed yields futures in the order they finish") {
  std::vector<promise<int>> ps(3);
  auto range = spindle::as_completed(futures_of(ps));
  CHECK(range.size() == 3);
  ps[2].set_value(2);
  ps[0].set_value(0);
  ps[1].set_exception(error("one"));
  std::vector<int> order;
  int failures = 0;
  for (auto f : range) {
    CHECK(f.ready());
    try {
      order.push_back(f.get());
    } catch (const std::runtime_error&) {
      ++failures;
      order.push_back(-1);
    }
  }
  CHECK(order == std::vector<int>{2, 0, -1});
  CHECK(failures == 1);
}

TEST_CASE("as_completed of nothing is an empty range") {
  auto range = spindle::as_completed(std::vector<future<int>>{});
  CHECK(range.begin() == range.end());
}

TEST_CASE("as_completed blocks for inputs finishing on a pool and yields each once") {
  spindle::thread_pool pool(2);
  std::vector<future<int>> fs;
  for (int i = 0; i < 100; ++i) fs.push_back(pool.submit([i] { return i; }));
  long sum = 0;
  int count = 0;
  for (auto f : spindle::as_completed(std::move(fs))) {
    sum += f.get();
    ++count;
  }
  CHECK(count == 100);
  CHECK(sum == 4950);
}

TEST_CASE("combinators destroy every value exactly once") {
  test_support::tracked::registry reg;
  {
    std::vector<future<test_support::tracked>> a;
    a.push_back(spindle::make_ready_future(test_support::tracked(&reg, 1)));
    a.push_back(spindle::make_ready_future(test_support::tracked(&reg, 2)));
    auto v = spindle::when_all(std::move(a)).get();
    CHECK(v[1].value() == 2);
    std::vector<future<test_support::tracked>> b;
    b.push_back(spindle::make_ready_future(test_support::tracked(&reg, 3)));
    auto r = spindle::when_any(std::move(b)).get();
    CHECK(r.futures[0].get().value() == 3);
  }
  CHECK(reg.alive == 0);
  CHECK(reg.errors == 0);
}
