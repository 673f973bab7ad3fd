// spindle/detail/config.hpp - feature checks, SPINDLE_ASSERT, cache-line constants.
// No user switches: nothing here changes a type's layout between translation units.
#pragma once

#include <cassert>
#include <cstddef>

#define SPINDLE_ASSERT(cond) assert(cond)

#if defined(__SANITIZE_THREAD__)
#define SPINDLE_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SPINDLE_TSAN 1
#endif
#endif

namespace spindle::detail {

/// The size of a cache line on the targets we build for (x86-64, aarch64).
/// std::hardware_destructive_interference_size is not used: g++ warns that it may change
/// between compiler flags, which would change layouts between translation units.
inline constexpr std::size_t cache_line = 64;

/// The span two hot atomics are kept apart by: x86's adjacent-line prefetcher pulls cache lines
/// in pairs, so two lines apart is what stops false sharing there.
inline constexpr std::size_t false_sharing_range = 128;

}  // namespace spindle::detail
