// tests/support/comma_locale.hpp - switch the process to a locale whose decimal point is a comma,
// for tests that prove number formatting and parsing ignore the locale.
//
//   test_support::comma_locale loc;            // setlocale(LC_ALL, <comma locale>), or nothing
//   if (!loc.active()) return;                 // printed a visible SKIPPED line
//   ... parse "3.5" ...                        // the destructor restores the "C" locale
//
// Tries installed locales first (de_DE.UTF-8, fr_FR.UTF-8, ...); if none is installed and
// localedef and the de_DE source exist, compiles one once into /tmp/spindle-comma-locale
// (about 5 s, shared by later runs; written to a temporary directory and renamed, so concurrent
// test processes never see half a locale) and points LOCPATH at it. Not thread-safe: create it
// on the test's main thread while no other thread formats numbers.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <clocale>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace test_support {

class comma_locale {
 public:
  comma_locale() {
    for (const char* name : candidates)
      if (try_set(name)) return;
    if (generate())
      for (const char* name : candidates)
        if (try_set(name)) return;
    std::fprintf(stderr,
                 "SKIPPED: no comma-decimal locale installed and none could be generated "
                 "(localedef -i de_DE -f UTF-8); the locale case did not run\n");
  }
  comma_locale(const comma_locale&) = delete;
  comma_locale& operator=(const comma_locale&) = delete;
  ~comma_locale() { std::setlocale(LC_ALL, "C"); }

  bool active() const noexcept { return active_; }

 private:
  static constexpr const char* dir = "/tmp/spindle-comma-locale";

  static constexpr const char* candidates[] = {"de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8",
                                                "fr_FR.utf8",  "de_DE",      "fr_FR"};

  bool try_set(const char* name) {
    if (std::setlocale(LC_ALL, name) == nullptr) return false;
    if (std::strcmp(std::localeconv()->decimal_point, ",") == 0) return active_ = true;
    std::setlocale(LC_ALL, "C");
    return false;
  }

  static bool run(const std::string& cmd) {
    int rc = std::system(cmd.c_str());
    return rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0;
  }

  static bool generate() {
    std::string target = std::string(dir) + "/de_DE.UTF-8";
    if (::access((target + "/LC_NUMERIC").c_str(), R_OK) != 0) {
      if (!run("command -v localedef >/dev/null 2>&1")) return false;
      std::string tmp = std::string(dir) + ".tmp." + std::to_string(::getpid());
      // localedef exits 1 on mere warnings: the LC_NUMERIC check below decides.
      (void)run("mkdir -p " + tmp + "; localedef -i de_DE -f UTF-8 " + tmp +
                "/de_DE.UTF-8 >/dev/null 2>&1; mkdir -p " + dir + "; mv -T " + tmp +
                "/de_DE.UTF-8 " + target + " 2>/dev/null; rm -rf " + tmp);
      if (::access((target + "/LC_NUMERIC").c_str(), R_OK) != 0) return false;
    }
    ::setenv("LOCPATH", dir, 1);  // glibc reads it at each setlocale()
    return true;
  }

  bool active_ = false;
};

}  // namespace test_support
