// Futures: submit work to a thread_pool, chain continuations with then(), combine with
// when_all(), and handle errors: an exception skips the continuations and reaches get().
#include <spindle/future.hpp>
#include <spindle/thread_pool.hpp>

#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

int main() {
  spindle::thread_pool pool(2);

  // A chain: parse, then double, then format.
  auto text = pool.submit([] { return std::stoi("21"); })
                  .then([](int x) { return x * 2; })
                  .then([](int x) { return "answer = " + std::to_string(x); });
  std::printf("%s\n", text.get().c_str());

  // An error skips the continuations and is rethrown by get().
  auto failed = pool.submit([]() -> int { throw std::runtime_error("sensor offline"); })
                    .then([](int x) { return x + 1; });
  try {
    failed.get();
  } catch (const std::exception& e) {
    std::printf("error handled: %s\n", e.what());
  }

  // A promise fulfilled by hand, and when_all over several futures.
  spindle::promise<int> p;
  auto from_promise = p.get_future();
  std::vector<spindle::future<int>> parts;
  for (int i = 1; i <= 4; ++i) parts.push_back(pool.submit([i] { return i * i; }));
  parts.push_back(std::move(from_promise));
  p.set_value(100);
  int sum = 0;
  for (int v : spindle::when_all(std::move(parts)).get()) sum += v;
  std::printf("sum of squares 1..4 plus 100 = %d\n", sum);
  return sum == 130 ? 0 : 1;
}
