// Actors: a calculator that keeps a running total and a logger that prints lines, each with its
// own mailbox and one message at a time (no locks around their state). The calculator sends log
// lines to the logger; ask() reads the calculator's total from inside it. The logger runs on a
// thread_pool instead of its own thread.
#include <spindle/actor.hpp>
#include <spindle/thread_pool.hpp>

#include <cstdio>
#include <string>

struct op {
  char kind;  // '+', '-', '*'
  long value;
};

int main() {
  spindle::thread_pool pool(2);
  int lines = 0;
  spindle::actor<std::string> logger(pool, [&](std::string line) {
    ++lines;
    std::printf("log: %s\n", line.c_str());
  });

  long total = 0;  // touched only inside the calculator
  spindle::actor<op> calculator([&](op o) {
    if (o.kind == '+') total += o.value;
    if (o.kind == '-') total -= o.value;
    if (o.kind == '*') total *= o.value;
    logger.send(std::string(1, o.kind) + " " + std::to_string(o.value) + " -> " +
                std::to_string(total));
  });

  calculator.send({'+', 5});
  calculator.send({'*', 4});
  calculator.send({'-', 3});
  long result = calculator.ask([&] { return total; }).get();  // after the three ops
  calculator.stop();  // handles what is queued, then joins
  logger.stop();
  std::printf("total = %ld after %d log lines\n", result, lines);
  return result == 17 ? 0 : 1;
}
