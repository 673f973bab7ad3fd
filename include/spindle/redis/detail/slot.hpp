// spindle/redis/detail/slot.hpp - Redis Cluster key slots: CRC16 (XMODEM) of the key, or of its
// hash tag, modulo 16384, as the Redis Cluster specification defines them.
//
//   detail::crc16("123456789") == 0x31C3              // the specification's test vector
//   detail::key_slot("{user1000}.following") == detail::key_slot("user1000")
//
// Hash tag: if the key holds a '{' and, after it, a '}' with at least one byte between them,
// only the bytes between the first '{' and the first '}' after it are hashed. "{}" and "{"
// alone do not make a tag (the whole key is hashed). Binary-safe; no allocation; constexpr.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace spindle::redis::detail {

/// Number of hash slots of a Redis Cluster.
inline constexpr std::uint16_t cluster_slots = 16384;

inline constexpr std::array<std::uint16_t, 256> crc16_table = [] {
  std::array<std::uint16_t, 256> t{};
  for (unsigned i = 0; i < 256; ++i) {
    unsigned crc = i << 8;
    for (int bit = 0; bit < 8; ++bit) crc = (crc & 0x8000u) ? (crc << 1) ^ 0x1021u : crc << 1;
    t[i] = static_cast<std::uint16_t>(crc);
  }
  return t;
}();

/// CRC16-CCITT in the XMODEM variant (polynomial 0x1021, initial value 0, no reflection, no
/// final xor): the checksum Redis Cluster uses. Never allocates.
constexpr std::uint16_t crc16(std::string_view bytes) noexcept {
  std::uint16_t crc = 0;
  for (char ch : bytes) {
    auto b = static_cast<unsigned char>(ch);
    crc = static_cast<std::uint16_t>((crc << 8) ^ crc16_table[((crc >> 8) ^ b) & 0xFFu]);
  }
  return crc;
}

/// The part of `key` that is hashed: its hash tag if it has a non-empty one, else all of it.
constexpr std::string_view hash_tag(std::string_view key) noexcept {
  auto open = key.find('{');
  if (open == std::string_view::npos) return key;
  auto close = key.find('}', open + 1);
  if (close == std::string_view::npos || close == open + 1) return key;
  return key.substr(open + 1, close - open - 1);
}

/// The cluster slot (0 .. 16383) of `key`. Never allocates.
constexpr std::uint16_t key_slot(std::string_view key) noexcept {
  return static_cast<std::uint16_t>(crc16(hash_tag(key)) & (cluster_slots - 1));
}

static_assert(crc16("123456789") == 0x31C3, "the Redis Cluster specification's test vector");
static_assert(key_slot("{user1000}.following") == key_slot("{user1000}.followers"));
static_assert(hash_tag("foo{}{bar}") == "foo{}{bar}" && hash_tag("foo{{bar}}zap") == "{bar" &&
              hash_tag("foo{bar}{zap}") == "bar");

}  // namespace spindle::redis::detail
