// A program that uses spindle as an installed or embedded package would: include the umbrella
// header, use a part of it, and print the result. Built by the three packaging tests.
#include <spindle/spindle.hpp>

#include <chrono>
#include <cstdio>
#include <string>

int main() {
  spindle::manual_clock clock;
  clock.advance(std::chrono::seconds(2));
  std::string s = spindle::to_string(spindle::status::closed);
  auto secs = std::chrono::duration_cast<std::chrono::seconds>(clock.now().time_since_epoch());
  std::printf("spindle %d.%d.%d: %s after %llds\n", spindle::version.major, spindle::version.minor,
              spindle::version.patch, s.c_str(), static_cast<long long>(secs.count()));
  return s == "closed" && secs.count() == 2 ? 0 : 1;
}
