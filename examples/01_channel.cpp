// Channels: the vocabulary every spindle queue shares. A bounded_queue of capacity 2 shows each
// outcome a channel reports (ok, full, empty, timeout, cancelled, closed) and that close() loses
// nothing: what was pushed before it is still popped, then pops report closed.
#include <spindle/bounded_queue.hpp>

#include <chrono>
#include <cstdio>
#include <optional>
#include <stop_token>
#include <string>

using spindle::status;
using namespace std::chrono_literals;

int main() {
  spindle::bounded_queue<std::string> q(2);
  std::string s = "first";
  std::printf("push(first)        -> %s\n", spindle::to_string(q.push(s)));
  std::printf("try_push(second)   -> %s\n", spindle::to_string(q.try_push(std::string("second"))));
  std::string third = "third";
  std::printf("try_push(third)    -> %s (the value is untouched: \"%s\")\n",
              spindle::to_string(q.try_push(std::move(third))), third.c_str());
  std::printf("push_for(third,1ms)-> %s\n", spindle::to_string(q.push_for(std::move(third), 1ms)));

  q.close();  // no more pushes; what is queued stays poppable
  std::printf("push after close   -> %s\n", spindle::to_string(q.push(std::string("late"))));

  std::string out;
  while (q.pop(out) == status::ok) std::printf("pop                -> ok \"%s\"\n", out.c_str());
  std::printf("pop when drained   -> %s\n", spindle::to_string(q.pop(out)));

  spindle::bounded_queue<int> open(1);
  int v = 0;
  std::printf("try_pop on empty   -> %s\n", spindle::to_string(open.try_pop(v)));
  std::printf("pop_for(1ms)       -> %s\n", spindle::to_string(open.pop_for(v, 1ms)));
  std::stop_source stop;
  stop.request_stop();
  std::printf("pop(stop requested)-> %s\n", spindle::to_string(open.pop(v, stop.get_token())));
  std::optional<int> none = (open.close(), open.pop());
  std::printf("pop() after close  -> %s\n", none ? "a value" : "nullopt");
  return 0;
}
