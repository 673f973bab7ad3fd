// Tests of spindle/redis/codec.hpp: round trips for strings and arithmetic types, errors on bad
// bytes, and a user specialisation.
#include <spindle/redis/codec.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <limits>
#include <string>

#include "support/comma_locale.hpp"

namespace redis = spindle::redis;

namespace {
struct point {
  int x, y;
};
}  // namespace

template <>
struct spindle::redis::codec<point> {
  static std::string encode(const point& p) {
    return codec<int>::encode(p.x) + "," + codec<int>::encode(p.y);
  }
  static point decode(std::string_view s) {
    auto comma = s.find(',');
    if (comma == std::string_view::npos) throw redis::error("codec<point>: no comma");
    return {codec<int>::decode(s.substr(0, comma)), codec<int>::decode(s.substr(comma + 1))};
  }
};

static_assert(redis::codec_for<redis::codec<std::string>, std::string>);
static_assert(redis::codec_for<redis::codec<double>, double>);
static_assert(redis::codec_for<redis::codec<point>, point>);

TEST_CASE("strings round-trip byte for byte") {
  std::string s("a\0b\xff", 4);
  CHECK(redis::codec<std::string>::decode(redis::codec<std::string>::encode(s)) == s);
}

TEST_CASE("integers round-trip at their extremes") {
  using i64 = redis::codec<std::int64_t>;
  using u64 = redis::codec<std::uint64_t>;
  CHECK(i64::encode(-42) == "-42");
  CHECK(i64::decode(i64::encode(std::numeric_limits<std::int64_t>::min())) ==
        std::numeric_limits<std::int64_t>::min());
  CHECK(u64::decode(u64::encode(std::numeric_limits<std::uint64_t>::max())) ==
        std::numeric_limits<std::uint64_t>::max());
  CHECK(redis::codec<short>::decode("123") == 123);
}

TEST_CASE("doubles round-trip exactly") {
  using d = redis::codec<double>;
  for (double v : {0.1, -1e300, 3.141592653589793, 5e-324}) CHECK(d::decode(d::encode(v)) == v);
  CHECK(redis::codec<float>::decode("0.5") == 0.5f);
}

TEST_CASE("bools encode as 1 and 0") {
  CHECK(redis::codec<bool>::encode(true) == "1");
  CHECK(redis::codec<bool>::decode("0") == false);
  CHECK(redis::codec<bool>::decode("true") == true);
  CHECK_THROWS_AS(redis::codec<bool>::decode("yes"), redis::error);
}

TEST_CASE("decoding bytes that are not a number of the type throws redis::error") {
  CHECK_THROWS_AS(redis::codec<int>::decode(""), redis::error);
  CHECK_THROWS_AS(redis::codec<int>::decode("12x"), redis::error);
  CHECK_THROWS_AS(redis::codec<int>::decode("99999999999"), redis::error);
  CHECK_THROWS_AS(redis::codec<unsigned>::decode("-1"), redis::error);
  CHECK_THROWS_AS(redis::codec<double>::decode("abc"), redis::error);
}

TEST_CASE("a user specialisation is used like the built-in ones") {
  auto s = redis::codec<point>::encode({3, -4});
  CHECK(s == "3,-4");
  auto p = redis::codec<point>::decode(s);
  CHECK(p.x == 3);
  CHECK(p.y == -4);
  CHECK_THROWS_AS(redis::codec<point>::decode("34"), redis::error);
}

TEST_CASE("decode errors give the payload's length, never its bytes") {
  for (std::string_view bad : {"secret-payload-4711", "4711x", "x4711"}) {
    for (int which = 0; which < 3; ++which) {
      try {
        if (which == 0) (void)redis::codec<int>::decode(bad);
        if (which == 1) (void)redis::codec<double>::decode(bad);
        if (which == 2) (void)redis::codec<bool>::decode(bad);
        FAIL("no exception");
      } catch (const redis::error& e) {
        std::string m = e.what();
        CHECK(m.find("4711") == std::string::npos);
        CHECK(m.find(std::to_string(bad.size()) + " bytes") != std::string::npos);
      }
    }
  }
}

TEST_CASE("doubles round-trip in a comma-decimal locale") {
  test_support::comma_locale loc;
  if (!loc.active()) return;
  CHECK(redis::codec<double>::encode(0.5) == "0.5");
  CHECK(redis::codec<double>::decode("2.25") == 2.25);
  CHECK_THROWS_AS(redis::codec<double>::decode("2,25"), redis::error);
}
