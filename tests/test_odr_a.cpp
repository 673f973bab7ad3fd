// Two translation units include the umbrella header and are linked into one program: every
// inline variable and function must be defined identically, and nothing may be defined twice.
#include <doctest/doctest.h>
#include <spindle/spindle.hpp>

int odr_b_status_name_length();

TEST_CASE("two translation units that include spindle.hpp link into one program") {
  CHECK(std::string(spindle::to_string(spindle::status::closed)).size() ==
        static_cast<std::size_t>(odr_b_status_name_length()));
}
