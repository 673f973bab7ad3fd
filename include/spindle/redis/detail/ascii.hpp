// spindle/redis/detail/ascii.hpp - ASCII helpers for Redis command names (which are ASCII and
// case-insensitive). No allocation, no locale.
#pragma once

#include <cstddef>
#include <string_view>

namespace spindle::redis::detail {

/// True if `a` and `b` are equal ignoring ASCII case. Never allocates; locale-independent.
inline bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'a' && x <= 'z') x = static_cast<char>(x - 'a' + 'A');
    if (y >= 'a' && y <= 'z') y = static_cast<char>(y - 'a' + 'A');
    if (x != y) return false;
  }
  return true;
}

}  // namespace spindle::redis::detail
