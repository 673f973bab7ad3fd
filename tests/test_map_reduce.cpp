// Tests for <spindle/map_reduce.hpp>.
#include <spindle/map_reduce.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <cstdint>
#include <forward_list>
#include <functional>
#include <list>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include <spindle/errors.hpp>
#include <spindle/future.hpp>
#include <spindle/thread_pool.hpp>

namespace {

// An executor that refuses every task, as a shut-down pool does.
struct refusing_executor {
  std::size_t size() const { return 4; }
  template <class F>
  void post(F&&) {
    throw spindle::closed_error("refusing_executor::post: closed");
  }
};

// An executor that runs each task at once on the caller.
struct inline_executor {
  std::size_t size() const { return 3; }
  template <class F>
  void post(F&& f) {
    f();
  }
};

// [lo, hi) as a vector (std::views::iota trips clang 14 with libstdc++ 12).
std::vector<int> iota(int lo, int hi) {
  std::vector<int> v(std::size_t(hi - lo));
  std::iota(v.begin(), v.end(), lo);
  return v;
}

struct no_default {
  explicit no_default(int v) : value(v) {}
  int value;
};

}  // namespace

TEST_CASE("map_reduce equals the sequential left fold for an associative, non-commutative reduce") {
  spindle::thread_pool pool(2);
  std::vector<int> v(1000);
  std::iota(v.begin(), v.end(), 0);
  auto map = [](int x) { return std::to_string(x) + ","; };
  auto concat = [](std::string a, const std::string& b) { return std::move(a) + b; };
  std::string want = "<";
  for (int x : v) want = concat(want, map(x));
  for (std::size_t chunk : {0, 1, 3, 7, 64, 999, 1000, 5000}) {
    CAPTURE(chunk);
    CHECK(spindle::map_reduce(pool, v, map, std::string("<"), concat, chunk) == want);
  }
}

TEST_CASE("map_reduce sums squares and keeps every element exactly once") {
  spindle::thread_pool pool(2);
  std::vector<std::uint32_t> v(200000);
  std::iota(v.begin(), v.end(), 1u);
  std::uint64_t want = 0;
  for (auto x : v) want += std::uint64_t(x) * x;
  auto got = spindle::map_reduce(
      pool, v, [](std::uint32_t x) { return std::uint64_t(x) * x; }, std::uint64_t{0},
      std::plus<>{});
  CHECK(got == want);
}

namespace {
// The sequential left fold from init, as the generic path computes it.
template <class T, class V, class Map, class Reduce>
T sequential_fold(const std::vector<V>& v, Map map, T init, Reduce reduce) {
  T acc = init;
  for (const V& x : v) acc = reduce(acc, map(x));
  return acc;
}

// map_reduce over every length 0..40 and a few long ones, with chunks that leave remainders
// inside and across the 8 lanes, against the sequential fold.
template <class T, class V, class Map, class Reduce>
void check_integer_sum(spindle::thread_pool& pool, V (*value)(std::size_t), Map map, T init,
                       Reduce reduce) {
  for (std::size_t n : {0, 1, 2, 7, 8, 9, 15, 16, 17, 23, 40, 1000, 1003, 4099}) {
    std::vector<V> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = value(i);
    const T want = sequential_fold(v, map, init, reduce);
    for (std::size_t chunk : {0, 1, 3, 7, 8, 9, 17, 64, 5000}) {
      CAPTURE(n);
      CAPTURE(chunk);
      CHECK(spindle::map_reduce(pool, v, map, init, reduce, chunk) == want);
    }
  }
}
}  // namespace

TEST_CASE("an integer sum equals the sequential fold for every length, chunk and integer type, "
          "wrap-around included") {
  // Attacks fold_chunk's shortcut (8 accumulators side by side for integer sums): a lane lost,
  // counted twice, or summed in a wider or narrower type than the fold's would change these.
  spindle::thread_pool pool(3);
  // uint64 sums of squares of large uint32 values: wraps modulo 2^64 many times.
  check_integer_sum<std::uint64_t, std::uint32_t>(
      pool, [](std::size_t i) { return std::uint32_t(0xffffffffu - i * 2654435761u); },
      [](std::uint32_t x) { return std::uint64_t(x) * x; }, std::uint64_t{12345}, std::plus<>{});
  // uint8_t result, int map: every step of the fold truncates modulo 256.
  check_integer_sum<std::uint8_t, int>(
      pool, [](std::size_t i) { return int(i * 37 % 1000) - 300; }, [](int x) { return x * 3; },
      std::uint8_t{200}, std::plus<>{});
  check_integer_sum<std::uint8_t, int>(
      pool, [](std::size_t i) { return int(i * 37 % 1000) - 300; }, [](int x) { return x * 3; },
      std::uint8_t{200}, std::plus<std::uint8_t>{});
  // Signed: negative and positive terms, no overflow (the fold's own overflow would be UB).
  check_integer_sum<std::int64_t, int>(
      pool, [](std::size_t i) { return i % 2 == 0 ? int(i) * 100003 : -int(i) * 99991; },
      [](int x) { return std::int64_t(x) * 7; }, std::int64_t{-5}, std::plus<std::int64_t>{});
  // int result from a wider map: the fold narrows each step modulo 2^32.
  check_integer_sum<std::int32_t, std::int64_t>(
      pool, [](std::size_t i) { return std::int64_t(i) * 1000000007; },
      [](std::int64_t x) { return x % 1000; }, std::int32_t{0}, std::plus<>{});
}

TEST_CASE("map_reduce of an empty range returns init") {
  spindle::thread_pool pool(2);
  std::vector<int> none;
  CHECK(spindle::map_reduce(pool, none, [](int x) { return x; }, 42, std::plus<>{}) == 42);
}

TEST_CASE("map_reduce rethrows the first exception of map and the pool stays usable") {
  spindle::thread_pool pool(2);
  auto r = iota(0, 10000);
  auto bad = [](int x) {
    if (x == 7777) throw std::runtime_error("map failed at 7777");
    return x;
  };
  CHECK_THROWS_WITH_AS(spindle::map_reduce(pool, r, bad, 0, std::plus<>{}, 100),
                       "map failed at 7777", std::runtime_error);
  CHECK(spindle::map_reduce(pool, r, [](int x) { return x; }, 0L,
                            [](long a, long b) { return a + b; }) == 9999L * 10000 / 2);
}

TEST_CASE("map_reduce runs over a forward range that is not random access") {
  spindle::thread_pool pool(2);
  std::forward_list<int> fl;
  for (int i = 0; i < 500; ++i) fl.push_front(i);
  CHECK(spindle::map_reduce(pool, fl, [](int x) { return x; }, 0, std::plus<>{}, 7) ==
        499 * 500 / 2);
}

TEST_CASE("map_reduce called from inside a pool task finishes even on a one-thread pool") {
  spindle::thread_pool pool(1);
  auto f = pool.submit([&pool] {
    return spindle::map_reduce(pool, iota(0, 1000), [](int x) { return x; }, 0,
                               std::plus<>{});
  });
  CHECK(f.get() == 999 * 1000 / 2);
}

TEST_CASE("map_reduce runs every chunk on the caller when the executor refuses work") {
  refusing_executor ex;
  CHECK(spindle::map_reduce(ex, iota(1, 101), [](int x) { return x; }, 0,
                            std::plus<>{}) == 5050);
  inline_executor in;
  CHECK(spindle::map_reduce(in, iota(1, 101), [](int x) { return x; }, 0,
                            std::plus<>{}) == 5050);
}

TEST_CASE("parallel_for calls f once for every element") {
  spindle::thread_pool pool(2);
  std::vector<int> v(10000, 1);
  spindle::parallel_for(pool, v, [](int& x) { x += 1; });
  CHECK(std::accumulate(v.begin(), v.end(), 0) == 20000);
  std::list<int> l(100, 5);
  std::atomic<int> sum{0};
  spindle::parallel_for(pool, l, [&](int x) { sum += x; }, 3);
  CHECK(sum.load() == 500);
  std::vector<int> none;
  spindle::parallel_for(pool, none, [](int) { FAIL("called on an empty range"); });
}

TEST_CASE("parallel_for rethrows an exception of f and skips the chunks not yet started") {
  spindle::thread_pool pool(2);
  std::atomic<int> calls{0};
  CHECK_THROWS_WITH_AS(spindle::parallel_for(pool, iota(0, 100000),
                                             [&](int x) {
                                               ++calls;
                                               if (x == 0) throw std::invalid_argument("zero");
                                             },
                                             1000),
                       "zero", std::invalid_argument);
  CHECK(calls.load() < 100000);
}

TEST_CASE("parallel_map keeps the order of the range") {
  spindle::thread_pool pool(2);
  std::vector<std::string> words{"a", "bb", "ccc", "dddd", "eeeee", "", "gg"};
  auto lengths = spindle::parallel_map(pool, words, [](const std::string& w) { return w.size(); }, 2);
  CHECK(lengths == std::vector<std::size_t>{1, 2, 3, 4, 5, 0, 2});
  auto big = spindle::parallel_map(pool, iota(0, 50000), [](int x) { return 2 * x; });
  REQUIRE(big.size() == 50000);
  bool ok = true;
  for (int i = 0; i < 50000; ++i) ok = ok && big[std::size_t(i)] == 2 * i;
  CHECK(ok);
}

TEST_CASE("parallel_map builds results that have no default constructor") {
  spindle::thread_pool pool(2);
  auto out = spindle::parallel_map(pool, iota(0, 100), [](int x) { return no_default(x); });
  REQUIRE(out.size() == 100);
  CHECK(out.front().value == 0);
  CHECK(out.back().value == 99);
}

TEST_CASE("parallel_map rethrows an exception of f") {
  spindle::thread_pool pool(2);
  CHECK_THROWS_AS(spindle::parallel_map(pool, iota(0, 100),
                                        [](int x) -> int {
                                          if (x == 50) throw std::out_of_range("50");
                                          return x;
                                        }),
                  std::out_of_range);
}

TEST_CASE("a chunk of SIZE_MAX (or any size above the range's) is one chunk, not a hang") {
  // The old code cast the chunk to the range's difference type (-1) and walked backwards.
  spindle::thread_pool pool(2);
  std::vector<int> v(1000);
  std::iota(v.begin(), v.end(), 1);
  constexpr std::size_t huge = static_cast<std::size_t>(-1);
  CHECK(spindle::map_reduce(pool, v, [](int x) { return static_cast<long>(x); }, 0L,
                            std::plus<long>{}, huge) == 500500);
  std::atomic<long> sum{0};
  spindle::parallel_for(pool, v, [&](int x) { sum.fetch_add(x); }, huge);
  CHECK(sum.load() == 500500);
  auto doubled = spindle::parallel_map(pool, v, [](int x) { return 2 * x; }, huge);
  REQUIRE(doubled.size() == v.size());
  CHECK(doubled.back() == 2000);
  std::list<int> l(v.begin(), v.end());  // not random access
  CHECK(spindle::map_reduce(pool, l, [](int x) { return static_cast<long>(x); }, 0L,
                            std::plus<long>{}, huge - 1) == 500500);
}

namespace {
// map_reduce over `range` with every chunk size that matters (1, 7, 8, 9, SIZE_MAX and the
// default), checked against the sequential left fold: the same value, and map called exactly
// once per element.
template <class T, class Range, class Map, class Reduce>
void check_against_left_fold(spindle::thread_pool& pool, const Range& range, Map map, T init,
                             Reduce reduce) {
  T want = init;
  for (const auto& x : range) want = static_cast<T>(reduce(want, map(x)));
  const auto n = static_cast<std::size_t>(std::ranges::distance(range));
  for (std::size_t chunk : {std::size_t{0}, std::size_t{1}, std::size_t{2}, std::size_t{7},
                            std::size_t{8}, std::size_t{9}, SIZE_MAX}) {
    CAPTURE(chunk);
    CAPTURE(n);
    std::atomic<std::size_t> calls{0};
    auto counted = [&](const auto& x) {
      calls.fetch_add(1, std::memory_order_relaxed);
      return map(x);
    };
    const T got = spindle::map_reduce(pool, range, counted, init, reduce, chunk);
    CHECK(got == want);
    CHECK(calls.load() == n);
  }
}

template <class T, class V, class Map, class Reduce>
void check_all_containers(spindle::thread_pool& pool, const std::vector<V>& v, Map map, T init,
                          Reduce reduce) {
  check_against_left_fold(pool, v, map, init, reduce);
  check_against_left_fold(pool, std::list<V>(v.begin(), v.end()), map, init, reduce);
  check_against_left_fold(pool, std::forward_list<V>(v.begin(), v.end()), map, init, reduce);
}
}  // namespace

TEST_CASE("an int sum whose chunks would overflow where the left fold does not has no signed "
          "overflow (UBSan)") {
  // The left fold init + x0 + x1 + ... stays in range at every step, but a chunk's own sum
  // (x0 + x1 = -4e9) does not, nor does init + that chunk's wrapped sum. Signed overflow is
  // undefined behaviour: under -fsanitize=undefined this aborted; elsewhere it happened to
  // wrap back. Random-access ranges (the 8-lane shortcut) and lists alike.
  spindle::thread_pool pool(2);
  const int big = 2000000000;
  const std::vector<int> v{-big, -big, big, big, -big, -big, big, big, -big, -big, big};
  auto id = [](int x) { return x; };
  check_all_containers(pool, v, id, big, std::plus<>{});
  check_all_containers(pool, v, id, big, std::plus<int>{});
  // The same with a long long map into an int result: narrowed modulo 2^32 each step.
  check_all_containers(pool, v, [](int x) { return static_cast<long long>(x); }, big,
                       std::plus<>{});
}

TEST_CASE("integer sums of narrow, signed, bool and char maps equal the left fold, map called "
          "once per element, on every range kind, chunk and length") {
  spindle::thread_pool pool(3);
  for (std::size_t n : {0, 1, 2, 8, 9, 17, 100}) {
    CAPTURE(n);
    std::vector<int> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<int>(i * 2654435761u % 1000) - 500;
    // int8 result: every step wraps modulo 256.
    check_all_containers(pool, v, [](int x) { return static_cast<std::int8_t>(x); },
                         std::int8_t{-100}, std::plus<>{});
    check_all_containers(pool, v, [](int x) { return x * 3; }, std::int8_t{100},
                         std::plus<std::int8_t>{});
    // uint16 result from a signed map: wraps modulo 2^16, negative terms included.
    check_all_containers(pool, v, [](int x) { return x * 1000; }, std::uint16_t{65000},
                         std::plus<>{});
    // a map narrower than the result (char) and one returning bool (counted, not summed as
    // 8 lanes: bool is excluded from the shortcut).
    check_all_containers(pool, v, [](int x) { return static_cast<signed char>(x); }, 7,
                         std::plus<>{});
    check_all_containers(pool, v, [](int x) { return x > 0; }, 0, std::plus<>{});
    check_all_containers(pool, v, [](int x) { return x > 0; }, std::size_t{0}, std::plus<>{});
    // a wider unsigned result from a signed map, and a lambda reduce (no shortcut).
    check_all_containers(pool, v, [](int x) { return x; }, std::uint64_t{3}, std::plus<>{});
    check_all_containers(pool, v, [](int x) { return x; }, 11,
                         [](int a, int b) { return a + b; });
  }
}
