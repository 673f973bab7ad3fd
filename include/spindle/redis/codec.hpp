// spindle/redis/codec.hpp - how a value of T becomes the bytes stored in Redis, and back.
//
//   spindle::redis::codec<int>::encode(42)       == "42"
//   spindle::redis::codec<int>::decode("42")     == 42
//
// Provided for std::string (the bytes as they are) and arithmetic types (decimal text; doubles
// in shortest round-trip form, so decode(encode(x)) == x). Users specialise codec<T> for their
// own types: a struct with static `std::string encode(const T&)` and
// `T decode(std::string_view)`. decode() throws redis::error on bytes it cannot read; its
// message gives the payload's length, never its bytes (payloads may be personal data).
// Numbers use std::to_chars / std::from_chars: the C locale in force changes nothing.
#pragma once

#include <charconv>  // to_chars, from_chars
#include <concepts>
#include <string>
#include <string_view>
#include <type_traits>

#include "spindle/redis/error.hpp"

namespace spindle::redis {

/// The codec of T; specialise it for your types. The primary template is left undefined.
template <class T, class Enable = void>
struct codec;

/// What queue<T, Codec> and stream<T, Codec> need of a codec.
template <class C, class T>
concept codec_for = requires(const T& v, std::string_view s) {
  { C::encode(v) } -> std::convertible_to<std::string>;
  { C::decode(s) } -> std::convertible_to<T>;
};

/// Bytes as they are. Allocates.
template <>
struct codec<std::string> {
  static std::string encode(const std::string& v) { return v; }
  static std::string decode(std::string_view s) { return std::string(s); }
};

/// bool as "1" / "0" (decode also accepts "true" / "false").
template <>
struct codec<bool> {
  static std::string encode(bool v) { return v ? "1" : "0"; }
  static bool decode(std::string_view s) {
    if (s == "1" || s == "true") return true;
    if (s == "0" || s == "false") return false;
    throw error("redis::codec<bool>::decode: not a bool (" + std::to_string(s.size()) +
                " bytes, not quoted)");
  }
};

/// Integers and floating-point numbers as decimal text. Allocates (small-string).
template <class T>
struct codec<T, std::enable_if_t<std::is_arithmetic_v<T> && !std::is_same_v<T, bool>>> {
  static std::string encode(T v) {
    char buf[64];
    auto r = std::to_chars(buf, buf + sizeof buf, v);
    return std::string(buf, r.ptr);
  }
  static T decode(std::string_view s) {
    T v{};
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || ec != std::errc() || p != s.data() + s.size())
      throw error("redis::codec::decode: not a number of the requested type (" +
                  std::to_string(s.size()) + " bytes, not quoted)");
    return v;
  }
};

}  // namespace spindle::redis
