// Tests of spindle/redis/resp.hpp: the encoder and the incremental parser, with no server.
#include <spindle/redis/resp.hpp>

#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <vector>

#include "support/comma_locale.hpp"

using spindle::redis::parser;
using spindle::redis::reply;
using spindle::redis::type;
namespace redis = spindle::redis;

namespace {

// Parses `in` fed in one piece; requires exactly one reply.
reply parse_whole(std::string_view in, redis::limits l = {}) {
  parser p(l);
  p.feed(in);
  auto r = p.next();
  REQUIRE(r.has_value());
  CHECK_FALSE(p.next().has_value());
  CHECK(p.buffered() == 0);
  return *r;
}

// Parses `in` fed one byte at a time; every prefix is incomplete, the whole is one reply.
reply parse_bytewise(std::string_view in) {
  parser p;
  for (std::size_t i = 0; i + 1 < in.size(); ++i) {
    p.feed(in.substr(i, 1));
    REQUIRE_FALSE(p.next().has_value());
  }
  p.feed(in.substr(in.size() - 1));
  auto r = p.next();
  REQUIRE(r.has_value());
  return *r;
}

// Every two-piece split of `in` gives the same reply as the whole.
void check_all_splits(std::string_view in) {
  reply whole = parse_whole(in);
  for (std::size_t cut = 0; cut <= in.size(); ++cut) {
    parser p;
    p.feed(in.substr(0, cut));
    auto first = p.next();
    if (cut < in.size()) {
      REQUIRE_FALSE(first.has_value());
      p.feed(in.substr(cut));
      first = p.next();
    }
    REQUIRE(first.has_value());
    CHECK(*first == whole);
  }
  CHECK(parse_bytewise(in) == whole);
}

std::string encoded(auto&&... args) {
  std::string out;
  redis::encode_command(out, args...);
  return out;
}

}  // namespace

TEST_CASE("RESP2 scalars parse whole and byte by byte") {
  for (auto in : {"+OK\r\n", "-ERR bad thing\r\n", ":-42\r\n", "$5\r\nhello\r\n", "$0\r\n\r\n",
                  "$-1\r\n", "*-1\r\n"})
    check_all_splits(in);
  CHECK(parse_whole("+OK\r\n").kind() == type::simple_string);
  CHECK(parse_whole("+OK\r\n").str() == "OK");
  CHECK(parse_whole("-ERR bad thing\r\n").is_error());
  CHECK(parse_whole("-ERR bad thing\r\n").str() == "ERR bad thing");
  CHECK(parse_whole(":-42\r\n").integer() == -42);
  CHECK(parse_whole(":9223372036854775807\r\n").integer() == INT64_MAX);
  CHECK(parse_whole("$5\r\nhello\r\n").str() == "hello");
  CHECK(parse_whole("$0\r\n\r\n").str().empty());
  CHECK(parse_whole("$-1\r\n").is_nil());
  CHECK(parse_whole("*-1\r\n").is_nil());
}

TEST_CASE("a bulk string is binary-safe: NUL, CR and LF inside come through") {
  std::string body("a\0b\r\nc", 6);
  std::string in = "$6\r\n" + body + "\r\n";
  check_all_splits(in);
  CHECK(parse_whole(in).str() == body);
}

TEST_CASE("RESP2 arrays parse nested and empty, at every split") {
  std::string in = "*3\r\n:1\r\n*2\r\n$1\r\na\r\n$-1\r\n*0\r\n";
  check_all_splits(in);
  reply r = parse_whole(in);
  REQUIRE(r.kind() == type::array);
  REQUIRE(r.size() == 3);
  CHECK(r[0].integer() == 1);
  CHECK(r[1][0].str() == "a");
  CHECK(r[1][1].is_nil());
  CHECK(r[2].kind() == type::array);
  CHECK(r[2].size() == 0);
}

TEST_CASE("RESP3 types parse: map, set, push, double, boolean, null, verbatim, big number, "
          "blob error") {
  std::vector<std::string> ins = {
      "%2\r\n+a\r\n:1\r\n+b\r\n#t\r\n", "~2\r\n:1\r\n:2\r\n",
      ">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n", ",3.25\r\n", ",inf\r\n", ",-inf\r\n",
      "#f\r\n", "_\r\n", "=15\r\ntxt:Some string\r\n", "(3492890328409238509324850943850943825024385\r\n",
      "!21\r\nSYNTAX invalid syntax\r\n"};
  for (const auto& in : ins) check_all_splits(in);
  reply m = parse_whole(ins[0]);
  REQUIRE(m.kind() == type::map);
  REQUIRE(m.size() == 4);
  CHECK(m[0].str() == "a");
  CHECK(m[1].integer() == 1);
  CHECK(m[3].boolean());
  CHECK(parse_whole(ins[1]).kind() == type::set);
  CHECK(parse_whole(ins[2]).kind() == type::push);
  CHECK(parse_whole(ins[2])[2].str() == "x");
  CHECK(parse_whole(ins[3]).number() == 3.25);
  CHECK(parse_whole(ins[4]).number() > 1e308);
  CHECK(parse_whole(ins[5]).number() < -1e308);
  CHECK_FALSE(parse_whole(ins[6]).boolean());
  CHECK(parse_whole(ins[7]).is_nil());
  reply v = parse_whole(ins[8]);
  CHECK(v.kind() == type::verbatim);
  CHECK(v.str() == "Some string");
  CHECK(v.format() == "txt");
  CHECK(parse_whole(ins[9]).kind() == type::big_number);
  CHECK(parse_whole(ins[9]).str() == "3492890328409238509324850943850943825024385");
  CHECK(parse_whole(ins[10]).is_error());
  CHECK(parse_whole(ins[10]).str() == "SYNTAX invalid syntax");
}

TEST_CASE("RESP3 attributes are parsed and dropped, at top level and inside an array") {
  check_all_splits("|1\r\n+key\r\n+val\r\n:7\r\n");
  CHECK(parse_whole("|1\r\n+key\r\n+val\r\n:7\r\n").integer() == 7);
  reply r = parse_whole("*2\r\n|0\r\n:1\r\n|1\r\n+k\r\n*1\r\n:0\r\n:2\r\n");
  REQUIRE(r.size() == 2);
  CHECK(r[0].integer() == 1);
  CHECK(r[1].integer() == 2);
}

TEST_CASE("several replies in one feed come out in order, and a partial one waits") {
  parser p;
  p.feed("+a\r\n:2\r\n$1\r\nc\r\n*2\r\n:1");
  CHECK(p.next()->str() == "a");
  CHECK(p.next()->integer() == 2);
  CHECK(p.next()->str() == "c");
  CHECK_FALSE(p.next().has_value());
  p.feed("\r\n:2\r\n");
  auto r = p.next();
  REQUIRE(r.has_value());
  CHECK(r->size() == 2);
  CHECK_FALSE(p.next().has_value());
}

TEST_CASE("many replies fed through prepare and commit keep memory compacted") {
  parser p;
  std::size_t got = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string in = ":" + std::to_string(i) + "\r\n";
    char* w = p.prepare(in.size());
    std::memcpy(w, in.data(), in.size());
    p.commit(in.size());
    while (auto r = p.next()) {
      CHECK(r->integer() == static_cast<std::int64_t>(got));
      ++got;
    }
  }
  CHECK(got == 20000);
  CHECK(p.buffered() == 0);
}

TEST_CASE("the encoder writes binary-safe bulk strings, numbers and ranges as one array") {
  CHECK(encoded("SET", "k", "v") == "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
  std::string bin("x\0\r\ny", 5);
  CHECK(encoded("SET", bin) == "*2\r\n$3\r\nSET\r\n$5\r\n" + bin + "\r\n");
  CHECK(encoded("INCRBY", "n", -12) == "*3\r\n$6\r\nINCRBY\r\n$1\r\nn\r\n$3\r\n-12\r\n");
  CHECK(encoded("X", 0.5) == "*2\r\n$1\r\nX\r\n$3\r\n0.5\r\n");
  std::vector<std::string> keys = {"a", "b"};
  CHECK(encoded("DEL", keys) == "*3\r\n$3\r\nDEL\r\n$1\r\na\r\n$1\r\nb\r\n");
  CHECK(encoded("PING", std::string_view()) == "*2\r\n$4\r\nPING\r\n$0\r\n\r\n");
  // What the encoder writes, the parser reads back as the same strings.
  reply r = parse_whole(encoded("SET", bin, 42, keys));
  REQUIRE(r.size() == 5);
  CHECK(r[1].str() == bin);
  CHECK(r[2].str() == "42");
  CHECK(r[4].str() == "b");
}

TEST_CASE("a bulk length over max_bulk_length throws before the body arrives") {
  parser p(redis::limits{.max_bulk_length = 10});
  p.feed("$11\r\n");
  CHECK_THROWS_AS(p.next(), redis::error);
  parser q(redis::limits{.max_bulk_length = 10});
  q.feed("$10\r\n0123456789\r\n");
  CHECK(q.next()->str() == "0123456789");
  parser huge;  // the default limit is 512 MiB
  huge.feed("$99999999999\r\n");
  CHECK_THROWS_AS(huge.next(), redis::error);
}

TEST_CASE("an aggregate length over max_array_length throws, for arrays, maps, sets and "
          "pushes") {
  for (auto in : {"*5\r\n", "%5\r\n", "~5\r\n", ">5\r\n", "|5\r\n"}) {
    parser p(redis::limits{.max_array_length = 4});
    p.feed(in);
    CHECK_THROWS_AS(p.next(), redis::error);
  }
  parser ok(redis::limits{.max_array_length = 4});
  ok.feed("*4\r\n:1\r\n:2\r\n:3\r\n:4\r\n");
  CHECK(ok.next()->size() == 4);
}

TEST_CASE("a declared length within the limits allocates only as elements arrive") {
  parser p;  // 16M elements allowed by default; nothing is reserved for them up front
  p.feed("*16000000\r\n:1\r\n");
  CHECK_FALSE(p.next().has_value());
  p.feed("*1000000\r\n");
  CHECK_FALSE(p.next().has_value());
}

TEST_CASE("nesting deeper than max_depth throws") {
  std::string deep;
  for (int i = 0; i < 5; ++i) deep += "*1\r\n";
  deep += ":1\r\n";
  parser p(redis::limits{.max_depth = 4});
  p.feed(deep);
  CHECK_THROWS_AS(p.next(), redis::error);
  parser ok(redis::limits{.max_depth = 5});
  ok.feed(deep);
  CHECK(ok.next().has_value());
  parser dflt;  // a hostile stream of "*1" never grows the stack past the default depth
  for (int i = 0; i < 1000; ++i) dflt.feed("*1\r\n");
  CHECK_THROWS_AS(dflt.next(), redis::error);
}

TEST_CASE("a line longer than max_line_length throws, even before its CRLF arrives") {
  parser p(redis::limits{.max_line_length = 16});
  p.feed("+" + std::string(100, 'a'));
  CHECK_THROWS_AS(p.next(), redis::error);
  parser q(redis::limits{.max_line_length = 16});
  q.feed("+" + std::string(16, 'a') + "\r\n");
  CHECK(q.next()->str().size() == 16);
}

TEST_CASE("malformed input throws redis::error") {
  for (std::string in : std::vector<std::string>{"?\r\n", std::string("\0\r\n", 3), ":12a\r\n", ":\r\n", ":99999999999999999999\r\n",
        "+OK\rX", "$3\r\nabcX\r\n", "$-2\r\n", "*-2\r\n", "%-1\r\n", "#x\r\n", ",abc\r\n",
        "(12x\r\n", "=3\r\nabc\r\n", "=5\r\ntxtXa\r\n", "_x\r\n", "$?\r\n", "$\r\n",
        "*1\r\n?\r\n"}) {
    CAPTURE(in);
    parser p;
    p.feed(in);
    CHECK_THROWS_AS(p.next(), redis::error);
  }
}

TEST_CASE("after a protocol error the parser refuses to go on until reset") {
  parser p;
  p.feed("?\r\n+OK\r\n");
  CHECK_THROWS_AS(p.next(), redis::error);
  CHECK_THROWS_AS(p.next(), redis::error);
  p.reset();
  p.feed("+OK\r\n");
  CHECK(p.next()->str() == "OK");
}

TEST_CASE("reply accessors throw redis::error on the wrong type") {
  reply i = parse_whole(":1\r\n");
  CHECK_THROWS_AS(i.str(), redis::error);
  CHECK_THROWS_AS(i.elements(), redis::error);
  CHECK_THROWS_AS(i.boolean(), redis::error);
  reply s = parse_whole("$2\r\nab\r\n");
  CHECK_THROWS_AS(s.integer(), redis::error);
  CHECK(parse_whole("$2\r\n12\r\n").integer() == 12);
  reply a = parse_whole("*1\r\n:1\r\n");
  CHECK_THROWS_AS(a[1], redis::error);
  CHECK_THROWS_AS(a.str(), redis::error);
  CHECK(std::string(redis::to_string(type::bulk_string)) == "bulk_string");
}

// ------------------------------------------------------------------------------ issue 14 / 13.7

TEST_CASE("numbers parse and encode the same in a comma-decimal locale") {
  test_support::comma_locale loc;
  if (!loc.active()) return;
  CHECK(parse_whole(",3.5\r\n").number() == 3.5);
  CHECK(parse_whole(",-1.25e-3\r\n").number() == -1.25e-3);
  CHECK(parse_whole(",inf\r\n").number() > 1e308);
  CHECK(parse_whole("$4\r\n2.25\r\n").number() == 2.25);
  CHECK(parse_bytewise(",0.5\r\n").number() == 0.5);
  std::string out;
  redis::encode_command(out, "INCRBYFLOAT", "k", 0.5);
  CHECK(out == "*3\r\n$11\r\nINCRBYFLOAT\r\n$1\r\nk\r\n$3\r\n0.5\r\n");
  parser p;
  p.feed(",3,5\r\n");  // the locale's own form is not RESP
  CHECK_THROWS_AS(p.next(), redis::error);
}

TEST_CASE("a 100 KiB status reply (a Lua script's) parses, fed whole or 1 KiB at a time") {
  std::string big(100 * 1024, 'a');
  std::string in = "+" + big + "\r\n";
  CHECK(parse_whole(in).str() == big);
  parser p;
  for (std::size_t i = 0; i < in.size(); i += 1024) {
    CHECK_FALSE(p.next().has_value());
    p.feed(std::string_view(in).substr(i, 1024));
  }
  auto r = p.next();
  REQUIRE(r.has_value());
  CHECK(r->str().size() == big.size());
}

TEST_CASE("a 100 KiB status reply fed byte by byte parses") {
  // Invariant of parser::line(): each byte scanned once; quadratic rescanning would take
  // ~5e9 byte comparisons here and trip the test's time limit.
  std::string in = "-" + std::string(100 * 1024, 'e') + "\r\n";
  parser p;
  for (char c : in) {
    REQUIRE_FALSE(p.next().has_value());
    p.feed(std::string_view(&c, 1));
  }
  auto r = p.next();
  REQUIRE(r.has_value());
  CHECK(r->str().size() == 100 * 1024);
}

TEST_CASE("a reply over max_reply_elements throws at its header, naming the limit") {
  // 3 arrays of 400: each within max_array_length, together over the budget of 1000 values.
  std::string in = "*3\r\n";
  for (int a = 0; a < 3; ++a) {
    in += "*400\r\n";
    for (int i = 0; i < 400; ++i) in += ":1\r\n";
  }
  parser p(redis::limits{.max_reply_elements = 1000});
  p.feed(in);
  try {
    (void)p.next();
    FAIL("no exception");
  } catch (const redis::error& e) {
    CHECK(std::string(e.what()).find("max_reply_elements") != std::string::npos);
  }
  parser ok(redis::limits{.max_reply_elements = 1204});  // 1 + 3 + 1200
  ok.feed(in);
  CHECK(ok.next()->size() == 3);
  // The budget is per reply: two replies of 700 values each pass a budget of 1000.
  std::string two;
  for (int r = 0; r < 2; ++r) {
    two += "*699\r\n";
    for (int i = 0; i < 699; ++i) two += ":1\r\n";
  }
  parser each(redis::limits{.max_reply_elements = 1000});
  each.feed(two);
  CHECK(each.next()->size() == 699);
  CHECK(each.next()->size() == 699);
}

TEST_CASE("a reply over max_reply_memory throws before its elements arrive") {
  parser p(redis::limits{.max_reply_memory = 1 << 20});
  p.feed("*6000000\r\n");  // 6 M small elements: ~480 MB in the client
  try {
    (void)p.next();
    FAIL("no exception");
  } catch (const redis::error& e) {
    CHECK(std::string(e.what()).find("max_reply_memory") != std::string::npos);
  }
  parser strings(redis::limits{.max_reply_memory = 1000});
  strings.feed("*2\r\n$600\r\n" + std::string(600, 'x') + "\r\n$600\r\n" +
               std::string(600, 'y') + "\r\n");
  CHECK_THROWS_AS(strings.next(), redis::error);
}

TEST_CASE("parser errors quote no payload byte") {
  const std::string secret = "personal-data-4711";
  for (const std::string& in : std::vector<std::string>{"$" + std::to_string(secret.size()) + "\r\n" + secret + "XX",
                         "," + secret + "\r\n", ":" + secret + "\r\n",
                         "(" + secret + "\r\n", "#" + secret + "\r\n",
                         "*1\r\n" + secret + "\r\n"}) {
    parser p;
    p.feed(in);
    try {
      (void)p.next();
      FAIL("no exception");
    } catch (const redis::error& e) {
      CHECK(std::string(e.what()).find("4711") == std::string::npos);
    }
  }
}
