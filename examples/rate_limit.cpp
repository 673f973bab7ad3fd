// examples/rate_limit.cpp - pacing calls with a sliding window and with a token bucket.
//
// Shows: 15 calls through a limiter of 5 calls per 2 s (sliding_window_log: exact), then 15
// calls through a token bucket of 3 tokens/s with capacity 5 (a burst of 5, then one call every
// 1/3 s). Each line prints when the call ran, relative to the start.
//
// By default the limiters read a spindle::manual_clock in auto-advance mode: a limiter's sleep
// moves the simulated clock instead of waiting, so the example finishes at once while printing
// the real schedule. Run it with `--real` to watch the same schedule on std::chrono::steady_clock
// in real time (about 4 s + 3.3 s).
#include <chrono>
#include <cstdio>
#include <cstring>
#include <spindle/clock.hpp>
#include <spindle/rate_limit.hpp>
#include <string>

namespace {

using seconds_d = std::chrono::duration<double>;

template <class Clock, class Limiter>
void run_calls(const char* title, Limiter& limiter, const Clock& clock) {
  std::printf("%s\n", title);
  const auto start = clock.now();
  for (int call = 1; call <= 15; ++call) {
    limiter.acquire();  // blocks (or, simulated, moves the clock) until the call may run
    std::printf("  call %2d runs at %6.3f s\n", call, seconds_d(clock.now() - start).count());
  }
}

template <class Clock>
void demo(const Clock& clock) {
  using namespace std::chrono_literals;
  spindle::sliding_window_log<Clock> window(
      5, std::chrono::duration_cast<typename Clock::duration>(2s), clock);
  run_calls("sliding_window_log: 5 calls per 2 s", window, clock);

  spindle::token_bucket<Clock> bucket(3.0, 5, clock);
  run_calls("token_bucket: 3 per second, capacity 5", bucket, clock);

  // A caller that must not wait asks how long until it may try again.
  if (!bucket.try_acquire())
    std::printf("try_acquire refused; retry after %.3f s\n",
                seconds_d(bucket.retry_after()).count());
}

}  // namespace

int main(int argc, char** argv) {
  const bool real = argc > 1 && std::strcmp(argv[1], "--real") == 0;
  if (real) {
    std::printf("real time (std::chrono::steady_clock)\n");
    demo(std::chrono::steady_clock{});
  } else {
    std::printf("simulated time (manual_clock, auto-advance; run with --real to wait)\n");
    spindle::manual_clock clock;
    clock.set_auto_advance(true);
    demo(clock);
  }
  return 0;
}
