// libFuzzer target for the RESP parser: any bytes, fed in pieces whose sizes come from the input,
// must give replies or redis::error, never a crash, hang, leak or unbounded allocation.
//
//   CXX=clang++ meson setup build-fuzz -Dfuzz=enabled && ninja -C build-fuzz tests/redis/fuzz_resp
//   build-fuzz/tests/redis/fuzz_resp -max_total_time=60 -rss_limit_mb=1024 -max_len=4096
#include <spindle/redis/resp.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace redis = spindle::redis;
  if (size == 0) return 0;
  // Small limits so that the fuzzer reaches them; the first byte picks the piece size.
  redis::parser p(redis::limits{.max_bulk_length = 1024, .max_array_length = 64,
                                .max_depth = 8, .max_line_length = 128,
                                .max_reply_elements = 256, .max_reply_memory = 16384});
  std::size_t piece = 1 + data[0] % 16;
  std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    for (std::size_t i = 0; i < in.size(); i += piece) {
      p.feed(in.substr(i, piece));
      while (auto r = p.next()) {
        if (r->is_aggregate()) (void)r->elements().size();
        if (r->is_string()) (void)r->str().size();
        if (r->kind() == redis::type::double_number) (void)r->number();  // from_chars
      }
    }
  } catch (const redis::error&) {
  }
  return 0;
}
