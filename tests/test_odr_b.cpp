#include <cstring>
#include <spindle/spindle.hpp>

int odr_b_status_name_length() {
  return static_cast<int>(std::strlen(spindle::to_string(spindle::status::closed)));
}
