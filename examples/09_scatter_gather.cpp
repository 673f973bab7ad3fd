// Scatter-gather: ask N price services for a quote under a deadline. gather_first takes the
// first answer and asks the others to stop; gather_all waits for every answer (or the deadline)
// and keeps the best; a service that fails or is too slow does not spoil the result.
#include <spindle/scatter_gather.hpp>
#include <spindle/thread_pool.hpp>

#include <chrono>
#include <cstdio>
#include <functional>
#include <stdexcept>
#include <stop_token>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using service = std::function<double(std::stop_token)>;

// A service that answers `price` after `delay`, giving up early if asked to stop.
static service quote(double price, std::chrono::milliseconds delay) {
  return [=](std::stop_token st) {
    auto until = std::chrono::steady_clock::now() + delay;
    while (std::chrono::steady_clock::now() < until) {
      if (st.stop_requested()) throw std::runtime_error("cancelled");
      std::this_thread::sleep_for(1ms);
    }
    return price;
  };
}

int main() {
  spindle::thread_pool pool(4);
  std::vector<service> services{
      quote(12.5, 20ms), quote(9.75, 5ms), quote(11.0, 10ms),
      [](std::stop_token) -> double { throw std::runtime_error("service down"); },
      quote(7.0, 10000ms),  // too slow: misses the deadline
  };

  double first = spindle::gather_first(pool, services, 1000ms);
  std::printf("first response: %.2f\n", first);

  auto all = spindle::gather_all(pool, services, 1000ms);
  double best = 1e9;
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (all[i]) {
      std::printf("service %zu: %.2f\n", i, all[i].value());
      if (all[i].value() < best) best = all[i].value();
    } else {
      std::printf("service %zu: %s\n", i, all[i].timed_out() ? "timed out" : "failed");
    }
  }
  std::printf("best price among all responses: %.2f\n", best);
  return best == 9.75 ? 0 : 1;
}
