#include <doctest/doctest.h>

#include <spindle/errors.hpp>
#include <spindle/status.hpp>
#include <spindle/version.hpp>

#include <string>

using spindle::status;

TEST_CASE("to_string names every status") {
  CHECK(std::string(spindle::to_string(status::ok)) == "ok");
  CHECK(std::string(spindle::to_string(status::empty)) == "empty");
  CHECK(std::string(spindle::to_string(status::full)) == "full");
  CHECK(std::string(spindle::to_string(status::closed)) == "closed");
  CHECK(std::string(spindle::to_string(status::timeout)) == "timeout");
  CHECK(std::string(spindle::to_string(status::cancelled)) == "cancelled");
}

TEST_CASE("to_string is usable at compile time") {
  static_assert(spindle::to_string(status::full)[0] == 'f');
}

TEST_CASE("every spindle exception derives from spindle::error and says what happened") {
  spindle::closed_error c;
  spindle::broken_promise b;
  spindle::timeout_error t;
  const spindle::error* all[] = {&c, &b, &t};
  for (const auto* e : all) CHECK(std::string(e->what()).find("spindle") != std::string::npos);
  CHECK(std::string(c.what()).find("closed") != std::string::npos);
  CHECK(std::string(b.what()).find("broken promise") != std::string::npos);
  CHECK(std::string(t.what()).find("timed out") != std::string::npos);
  CHECK_THROWS_AS(throw spindle::closed_error("thread_pool::submit: pool is shut down"),
                  spindle::error);
}

TEST_CASE("the version macros and the constexpr version agree") {
  static_assert(spindle::version.major == SPINDLE_VERSION_MAJOR);
  static_assert(spindle::version.minor == SPINDLE_VERSION_MINOR);
  static_assert(spindle::version.patch == SPINDLE_VERSION_PATCH);
}
