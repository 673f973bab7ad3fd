// spindle/redis/resp.hpp - RESP2/RESP3 values, the command encoder and the incremental parser.
//
// No I/O here: the connection writes what encode_command() produced, and feeds what it reads to
// a `parser`, which hands out complete replies.
//
//   std::string out;
//   spindle::redis::encode_command(out, "SET", key, 42);   // *3\r\n$3\r\nSET\r\n...
//   spindle::redis::parser p;
//   p.feed(bytes);                                           // any split, down to single bytes
//   while (auto r = p.next()) use(*r);
//
// Guarantees: the parser accepts exactly RESP2 and RESP3 (streamed strings "$?" excepted, which
// Redis never sends); anything else throws redis::error. Lengths over the configured `limits`
// throw before anything is allocated for them; an aggregate's storage grows only as its elements
// arrive, so memory stays proportional to the bytes fed, and one reply's values and memory stay
// within limits::max_reply_elements and max_reply_memory (checked when an aggregate's header
// arrives, before its elements are read). After a throw the parser is unusable until reset().
// RESP3 attributes ("|") are parsed and dropped. Error messages quote no byte of a reply's
// payload (only lengths and the offending type byte). Numbers are read and written with
// std::from_chars / std::to_chars: the C locale in force (a comma-decimal one included) changes
// nothing.
#pragma once

#include <algorithm>
#include <charconv>  // to_chars, from_chars
#include <cmath>     // HUGE_VAL
#include <concepts>
#include <cstdint>
#include <cstring>  // memchr
#include <optional>
#include <ranges>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "spindle/redis/error.hpp"
#include "spindle/redis/options.hpp"

namespace spindle::redis {

/// The type of a reply. RESP2 produces the first six; RESP3 (HELLO 3) may produce any.
enum class type {
  simple_string,  ///< +OK
  bulk_string,    ///< $3 foo
  error,          ///< -ERR ... or !N blob error
  integer,        ///< :42
  nil,            ///< $-1, *-1, or RESP3 _
  array,          ///< *N
  map,            ///< %N: elements() holds key, value, key, value, ...
  set,            ///< ~N
  push,           ///< >N: out-of-band data (pub/sub messages, invalidations)
  double_number,  ///< ,3.14 (str() keeps the text)
  boolean,        ///< #t / #f
  verbatim,       ///< =N txt:... (str() is the text, format() the three-letter format)
  big_number,     ///< (1234567890123456789012 (str() keeps the digits)
};

/// The name of `t` ("bulk_string", ...). Never allocates. Thread-safe.
constexpr const char* to_string(type t) noexcept {
  constexpr const char* names[] = {"simple_string", "bulk_string", "error",   "integer", "nil",
                                   "array",         "map",         "set",     "push",
                                   "double_number", "boolean",     "verbatim", "big_number"};
  auto i = static_cast<std::size_t>(t);
  return i < std::size(names) ? names[i] : "unknown";
}

namespace detail {

// The whole of `s` as a double, in the C locale's syntax whatever the locale in force ("3.5",
// "-1e-3", "inf", "+inf", "-inf", "nan"); false otherwise. Never allocates.
inline bool parse_double(std::string_view s, double& v) noexcept {
  if (s.starts_with('+')) s.remove_prefix(1);
  if (s.empty() || s[0] == '+' || s[0] == ' ') return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec == std::errc::result_out_of_range) {  // over DBL_MAX or under the smallest denormal
    v = s[0] == '-' ? -HUGE_VAL : HUGE_VAL;
    bool tiny = false;
    for (char c : s) {
      if (c == 'e' || c == 'E') {
        tiny = s.find("e-") != std::string_view::npos || s.find("E-") != std::string_view::npos;
        break;
      }
    }
    if (tiny) v = s[0] == '-' ? -0.0 : 0.0;
    return true;
  }
  return ec == std::errc() && p == s.data() + s.size();
}

}  // namespace detail

/// One RESP value. A value type: copyable, movable, comparable by content.
class reply {
 public:
  reply() = default;  // nil

  static reply make_string(type t, std::string s) {
    reply r;
    r.type_ = t;
    r.str_ = std::move(s);
    return r;
  }
  static reply make_integer(std::int64_t v) {
    reply r;
    r.type_ = type::integer;
    r.int_ = v;
    return r;
  }

  type kind() const noexcept { return type_; }
  /// Same as kind(); the name the contract uses.
  type get_type() const noexcept { return type_; }
  bool is_nil() const noexcept { return type_ == type::nil; }
  bool is_error() const noexcept { return type_ == type::error; }
  bool is_string() const noexcept {
    return type_ == type::simple_string || type_ == type::bulk_string || type_ == type::verbatim;
  }
  bool is_integer() const noexcept { return type_ == type::integer; }
  bool is_aggregate() const noexcept {
    return type_ == type::array || type_ == type::map || type_ == type::set ||
           type_ == type::push;
  }

  /// The text of a string, error, double, big number or verbatim reply. Throws redis::error for
  /// other types (the message names the type).
  const std::string& str() const {
    if (is_aggregate() || type_ == type::integer || type_ == type::nil || type_ == type::boolean)
      throw error(std::string("redis::reply::str: reply is ") + to_string(type_));
    return str_;
  }
  /// The integer of an integer reply, or of a string reply holding a decimal integer. Throws
  /// redis::error otherwise.
  std::int64_t integer() const {
    if (type_ == type::integer) return int_;
    if (type_ == type::bulk_string || type_ == type::simple_string || type_ == type::big_number) {
      std::int64_t v = 0;
      auto [p, ec] = std::from_chars(str_.data(), str_.data() + str_.size(), v);
      if (ec == std::errc() && p == str_.data() + str_.size() && !str_.empty()) return v;
    }
    throw error(std::string("redis::reply::integer: reply is ") + to_string(type_));
  }
  /// The value of a double reply (or of a string holding one). Throws redis::error otherwise.
  double number() const {
    if (type_ == type::integer) return static_cast<double>(int_);
    if (type_ == type::double_number || type_ == type::bulk_string ||
        type_ == type::simple_string) {
      double v = 0;
      if (detail::parse_double(str_, v)) return v;
    }
    throw error(std::string("redis::reply::number: reply is ") + to_string(type_));
  }
  /// The value of a boolean reply. Throws redis::error for other types.
  bool boolean() const {
    if (type_ != type::boolean)
      throw error(std::string("redis::reply::boolean: reply is ") + to_string(type_));
    return int_ != 0;
  }
  /// The format of a verbatim string ("txt", "mkd"); empty for other types.
  std::string_view format() const noexcept {
    return type_ == type::verbatim ? std::string_view(fmt_, 3) : std::string_view();
  }
  /// The elements of an array, set, push or map (maps: key, value, key, value, ...). Throws
  /// redis::error for other types.
  const std::vector<reply>& elements() const {
    if (!is_aggregate())
      throw error(std::string("redis::reply::elements: reply is ") + to_string(type_));
    return elems_;
  }
  /// Same as elements(); the name the contract uses.
  const std::vector<reply>& array() const { return elements(); }
  /// Number of elements of an aggregate (map: pairs count twice); 0 for other types.
  std::size_t size() const noexcept { return is_aggregate() ? elems_.size() : 0; }
  /// Element i of an aggregate. Throws redis::error if not an aggregate or out of range.
  const reply& operator[](std::size_t i) const {
    const auto& e = elements();
    if (i >= e.size()) throw error("redis::reply::operator[]: index out of range");
    return e[i];
  }

  friend bool operator==(const reply& a, const reply& b) {
    return a.type_ == b.type_ && a.int_ == b.int_ && a.str_ == b.str_ && a.elems_ == b.elems_;
  }

 private:
  friend class parser;
  type type_ = type::nil;
  std::int64_t int_ = 0;         // integer, boolean
  char fmt_[3] = {0, 0, 0};      // verbatim format
  std::string str_;              // strings, error, double, big number
  std::vector<reply> elems_;     // aggregates
};

// ---------------------------------------------------------------------------------------------
// Encoder

namespace detail {

template <class A>
concept string_like = std::convertible_to<const A&, std::string_view>;

template <class A>
concept arg_range = !string_like<A> && std::ranges::sized_range<const A> &&
                    string_like<std::ranges::range_value_t<const A>>;

template <class A>
concept scalar_arg = string_like<A> || (std::is_arithmetic_v<A> && !std::is_same_v<A, bool> &&
                                        !std::is_same_v<A, char>);

inline void append_number_line(std::string& out, char prefix, std::size_t n) {
  char buf[24];
  buf[0] = prefix;
  auto r = std::to_chars(buf + 1, buf + sizeof buf - 2, n);
  *r.ptr++ = '\r';
  *r.ptr++ = '\n';
  out.append(buf, static_cast<std::size_t>(r.ptr - buf));
}

inline void append_bulk(std::string& out, std::string_view s) {
  append_number_line(out, '$', s.size());
  out.append(s);
  out.append("\r\n", 2);
}

template <class A>
std::size_t arg_count(const A& a) {
  if constexpr (arg_range<A>)
    return static_cast<std::size_t>(std::ranges::size(a));
  else
    return 1;
}

template <class A>
void append_arg(std::string& out, const A& a) {
  if constexpr (string_like<A>) {
    append_bulk(out, std::string_view(a));
  } else if constexpr (arg_range<A>) {
    for (const auto& e : a) append_bulk(out, std::string_view(e));
  } else if constexpr (std::is_integral_v<A>) {
    char buf[24];
    auto r = std::to_chars(buf, buf + sizeof buf, a);
    append_bulk(out, std::string_view(buf, static_cast<std::size_t>(r.ptr - buf)));
  } else {
    static_assert(std::is_floating_point_v<A>, "redis command arguments are strings, numbers "
                                                "or sized ranges of strings");
    char buf[64];
    auto r = std::to_chars(buf, buf + sizeof buf, a);  // shortest round-trip form
    append_bulk(out, std::string_view(buf, static_cast<std::size_t>(r.ptr - buf)));
  }
}

}  // namespace detail

/// Whether A can be a command argument: a string (anything convertible to std::string_view), a
/// number (not bool or char), or a sized range of strings (each element one argument).
template <class A>
concept command_arg = detail::scalar_arg<std::remove_cvref_t<A>> ||
                      detail::arg_range<std::remove_cvref_t<A>>;

/// Appends one command, as a RESP array of bulk strings, to `out`. Arguments are binary-safe
/// (embedded NULs, CR, LF are fine). Numbers are written in decimal (doubles in shortest
/// round-trip form). Allocates only as `out` grows.
template <command_arg... A>
void encode_command(std::string& out, const A&... args) {
  std::size_t n = (std::size_t{0} + ... + detail::arg_count(args));
  detail::append_number_line(out, '*', n);
  (detail::append_arg(out, args), ...);
}

// ---------------------------------------------------------------------------------------------
// Parser

/// The incremental RESP parser: feed bytes in any split, take complete replies out.
///
/// Not thread-safe (one per connection). Memory: the unparsed bytes, plus the replies under
/// construction; never more than what was fed (times a constant) and what `limits` allow.
class parser {
 public:
  explicit parser(struct limits l = {}) : limits_(l) {}

  /// Appends `bytes` to the input. Allocates as the buffer grows.
  void feed(std::string_view bytes) {
    if (bytes.empty()) return;
    std::memcpy(prepare(bytes.size()), bytes.data(), bytes.size());
    commit(bytes.size());
  }

  /// Room for at least `n` more bytes of input: write into it, then commit() what was written.
  /// Saves a copy when reading from a socket. Allocates as the buffer grows.
  char* prepare(std::size_t n) {
    compact();
    if (buf_.size() - end_ < n) buf_.resize(end_ + std::max(n, buf_.size() - pos_));
    return buf_.data() + end_;
  }
  /// Marks `n` bytes after the last prepare() as input. Requires n <= the size prepared.
  void commit(std::size_t n) noexcept { end_ += n; }

  /// The next complete reply, if the input holds one. Throws redis::error on malformed input or
  /// a length over the limits; the parser must then be reset().
  std::optional<reply> next() {
    reply r;
    if (next(r)) return r;
    return std::nullopt;
  }

  /// Moves the next complete reply into `out` and returns true, or returns false if the input
  /// does not hold one yet. Throws like next().
  bool next(reply& out) {
    if (failed_) throw error("redis::parser: used after a protocol error (reset() first)");
    try {
      return step(out);
    } catch (...) {
      failed_ = true;
      throw;
    }
  }

  /// Bytes fed but not yet consumed by a complete or partial reply.
  std::size_t buffered() const noexcept { return end_ - pos_; }

  /// Forgets all input and state. Never throws.
  void reset() noexcept {
    buf_.clear();
    pos_ = end_ = 0;
    stack_.clear();
    failed_ = false;
    scanned_ = 0;
  }

  const struct limits& get_limits() const noexcept { return limits_; }

 private:
  struct frame {
    reply value;
    std::size_t remaining;
    bool attribute;
  };

  // Drops consumed bytes once they are the larger part of the buffer.
  void compact() {
    if (pos_ == 0) return;
    if (pos_ == end_) {
      if (buf_.size() > (std::size_t{1} << 20)) std::string().swap(buf_);  // after a huge reply
      pos_ = end_ = 0;
    } else if (pos_ >= 4096 && pos_ * 2 >= end_) {
      std::memmove(buf_.data(), buf_.data() + pos_, end_ - pos_);
      end_ -= pos_;
      pos_ = 0;
    }
  }

  [[noreturn]] static void fail(const std::string& why) {
    throw error("redis::parser: " + why);
  }

  // The reply budget (limits::max_reply_elements, max_reply_memory): `n` more values, charged
  // when their aggregate's header arrives, before any of them is read or stored.
  void charge_values(std::size_t n) {
    if (n > limits_.max_reply_elements - std::min(reply_values_, limits_.max_reply_elements))
      fail("reply has more than max_reply_elements (" +
           std::to_string(limits_.max_reply_elements) + ") values");
    reply_values_ += n;
    charge_memory(n > SIZE_MAX / sizeof(reply) ? SIZE_MAX : n * sizeof(reply));
  }
  // `n` bytes of string storage (short strings live inside the reply: free).
  void charge_bytes(std::size_t n) {
    if (n > 15) charge_memory(n);
  }
  void charge_memory(std::size_t n) {
    if (limits_.max_reply_memory == 0) return;
    if (n > limits_.max_reply_memory - std::min(reply_bytes_, limits_.max_reply_memory))
      fail("reply needs more than max_reply_memory (" + std::to_string(limits_.max_reply_memory) +
           " bytes)");
    reply_bytes_ += n;
  }

  // Finds the line starting at pos_ (after its type byte). Returns false if incomplete.
  //
  // Invariant: each byte of a line is scanned for CR once however the line arrives (scanned_
  // remembers how far the last call got), so a 16 MiB status line fed 16 KiB at a time costs
  // linear, not quadratic, time. Attacked by "a 100 KiB status reply fed byte by byte parses"
  // in test_resp.cpp.
  bool line(std::string_view& out, std::size_t& next_pos) {
    const char* base = buf_.data();
    std::size_t from = pos_ + 1 + scanned_;
    std::size_t limit = limits_.max_line_length;
    const void* cr = from < end_ ? std::memchr(base + from, '\r', end_ - from) : nullptr;
    if (cr == nullptr) {
      if (end_ - pos_ > limit + 3) fail("line longer than max_line_length");
      scanned_ = end_ - pos_ - 1;
      return false;
    }
    std::size_t i = static_cast<std::size_t>(static_cast<const char*>(cr) - base);
    if (i - pos_ - 1 > limit) fail("line longer than max_line_length");
    if (i + 1 >= end_) {
      scanned_ = i - pos_ - 1;  // the CR again next time, to check its LF
      return false;
    }
    scanned_ = 0;
    if (base[i + 1] != '\n') fail("CR not followed by LF");
    out = std::string_view(base + pos_ + 1, i - pos_ - 1);
    next_pos = i + 2;
    return true;
  }

  static std::int64_t parse_int(std::string_view s, const char* what) {
    std::int64_t v = 0;
    const char* b = s.data();
    const char* e = b + s.size();
    if (b != e && *b == '+') ++b;  // tolerated sign
    auto [p, ec] = std::from_chars(b, e, v);
    if (b == e || ec != std::errc() || p != e) fail(std::string("bad ") + what);
    return v;
  }

  // Parses one value at pos_. Returns 0: incomplete; 1: a scalar in `leaf`; 2: an aggregate
  // started (pushed on the stack); an empty aggregate is returned as a scalar.
  int parse_one(reply& leaf) {
    if (pos_ >= end_) return 0;
    char t = buf_[pos_];
    if (std::memchr("+-:_#,($!=*%~>|", t, 15) == nullptr || t == '\0')
      fail(std::string("unknown type byte 0x") + "0123456789abcdef"[(t >> 4) & 0xf] +
           "0123456789abcdef"[t & 0xf]);
    std::string_view ln;
    std::size_t after = 0;
    if (!line(ln, after)) return 0;
    switch (t) {
      case '+':
      case '-':
        charge_bytes(ln.size());
        leaf = reply::make_string(t == '+' ? type::simple_string : type::error, std::string(ln));
        pos_ = after;
        return 1;
      case ':':
        leaf = reply::make_integer(parse_int(ln, "integer"));
        pos_ = after;
        return 1;
      case '_':
        if (!ln.empty()) fail("bad null");
        leaf = reply();
        pos_ = after;
        return 1;
      case '#':
        if (ln != "t" && ln != "f") fail("bad boolean");
        leaf = reply();
        leaf.type_ = type::boolean;
        leaf.int_ = ln == "t";
        pos_ = after;
        return 1;
      case ',': {
        double unused = 0;
        if (!detail::parse_double(ln, unused)) fail("bad double");
        charge_bytes(ln.size());
        leaf = reply::make_string(type::double_number, std::string(ln));
        pos_ = after;
        return 1;
      }
      case '(': {
        std::string_view d = ln;
        if (!d.empty() && (d[0] == '-' || d[0] == '+')) d.remove_prefix(1);
        if (d.empty() || d.find_first_not_of("0123456789") != std::string_view::npos)
          fail("bad big number");
        charge_bytes(ln.size());
        leaf = reply::make_string(type::big_number, std::string(ln));
        pos_ = after;
        return 1;
      }
      case '$':
      case '!':
      case '=': {
        if (ln == "?") fail("streamed strings are not supported");
        std::int64_t n = parse_int(ln, "bulk length");
        if (n == -1 && t == '$') {
          leaf = reply();
          pos_ = after;
          return 1;
        }
        if (n < 0) fail("negative bulk length");
        if (static_cast<std::uint64_t>(n) > limits_.max_bulk_length)
          fail("bulk length " + std::to_string(n) + " over max_bulk_length");
        auto len = static_cast<std::size_t>(n);
        if (end_ - after < len + 2) return 0;  // wait for the body; nothing allocated yet
        charge_bytes(len);
        if (buf_[after + len] != '\r' || buf_[after + len + 1] != '\n')
          fail("bulk string not terminated by CRLF");
        std::string_view body(buf_.data() + after, len);
        if (t == '=') {
          if (len < 4 || body[3] != ':') fail("bad verbatim string");
          leaf = reply::make_string(type::verbatim, std::string(body.substr(4)));
          std::memcpy(leaf.fmt_, body.data(), 3);
        } else {
          leaf = reply::make_string(t == '$' ? type::bulk_string : type::error, std::string(body));
        }
        pos_ = after + len + 2;
        return 1;
      }
      case '*':
      case '%':
      case '~':
      case '>':
      case '|': {
        std::int64_t n = parse_int(ln, "aggregate length");
        if (n == -1 && t == '*') {
          leaf = reply();
          pos_ = after;
          return 1;
        }
        if (n < 0) fail("negative aggregate length");
        if (static_cast<std::uint64_t>(n) > limits_.max_array_length)
          fail("aggregate length " + std::to_string(n) + " over max_array_length");
        if (stack_.size() + 1 > limits_.max_depth) fail("nesting deeper than max_depth");
        auto count = static_cast<std::size_t>(n);
        type k = t == '*' ? type::array : t == '%' || t == '|' ? type::map
                : t == '~' ? type::set : type::push;
        if (t == '%' || t == '|') count *= 2;
        charge_values(count);
        pos_ = after;
        reply agg;
        agg.type_ = k;
        if (count == 0) {
          if (t == '|') return 3;  // an empty attribute: nothing to drop
          leaf = std::move(agg);
          return 1;
        }
        agg.elems_.reserve(std::min<std::size_t>(count, 64));  // grows as elements arrive
        stack_.push_back(frame{std::move(agg), count, t == '|'});
        return 2;
      }
      default:
        fail("unknown type byte");
    }
  }

  bool step(reply& out) {
    for (;;) {
      if (stack_.empty()) {  // a new top-level value: its own budget (itself counts once)
        reply_values_ = 1;
        reply_bytes_ = sizeof(reply);
      }
      reply leaf;
      int r = parse_one(leaf);
      if (r == 0) return false;
      if (r == 2 || r == 3) continue;
      // A value is complete: hand it up until an aggregate is still open.
      for (;;) {
        if (stack_.empty()) {
          out = std::move(leaf);
          return true;
        }
        frame& top = stack_.back();
        top.value.elems_.push_back(std::move(leaf));
        if (--top.remaining != 0) break;
        bool attr = top.attribute;
        leaf = std::move(top.value);
        stack_.pop_back();
        if (attr) break;  // attributes annotate the next value; we drop them
      }
    }
  }

  struct limits limits_;
  std::string buf_;           // input; [pos_, end_) not yet consumed
  std::size_t pos_ = 0;
  std::size_t end_ = 0;
  std::vector<frame> stack_;  // open aggregates, outermost first
  std::size_t scanned_ = 0;   // bytes after pos_'s type byte known to hold no CR
  std::size_t reply_values_ = 0;  // values of the reply under construction (budget)
  std::size_t reply_bytes_ = 0;   // its approximate memory (budget)
  bool failed_ = false;
};

}  // namespace spindle::redis
