// spindle/version.hpp - the library version, as macros and as a constexpr value.
#pragma once

#define SPINDLE_VERSION_MAJOR 0
#define SPINDLE_VERSION_MINOR 1
#define SPINDLE_VERSION_PATCH 0

namespace spindle {

struct version_info {
  int major;
  int minor;
  int patch;
};

/// The version of the headers in use.
inline constexpr version_info version{SPINDLE_VERSION_MAJOR, SPINDLE_VERSION_MINOR,
                                      SPINDLE_VERSION_PATCH};

}  // namespace spindle
