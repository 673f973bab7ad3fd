// redis_lock: a distributed lock whose fencing tokens protect a resource from a stale holder.
// Holder A takes the lock with a short lease and "pauses" (a GC pause, a swapped-out process)
// past it; B then takes the lock and writes. When A wakes up it still believes it holds the
// lock, but the resource, which remembers the highest fence it accepted, refuses A's write, and
// A's release cannot delete B's lock.
//
//   redis_lock redis://127.0.0.1:6379
#include <cstdio>
#include <exception>
#include <future>
#include <mutex>
#include <spindle/redis/lock.hpp>
#include <string>
#include <thread>

using namespace std::chrono_literals;

// The protected resource: it checks fences (it would be a database row or a file server).
class storage {
 public:
  bool write(std::uint64_t fence, const std::string& data) {
    std::lock_guard lock(mu_);
    if (fence <= highest_) return false;  // a stale holder
    highest_ = fence;
    data_ = data;
    return true;
  }
  std::string read() {
    std::lock_guard lock(mu_);
    return data_;
  }

 private:
  std::mutex mu_;
  std::uint64_t highest_ = 0;  // guarded by mu_
  std::string data_;           // guarded by mu_
};

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: redis_lock redis://host:port\n");
    return 2;
  }
  try {
    auto opts = spindle::redis::options::from_url(argv[1]);
    storage store;
    std::promise<void> b_wrote;
    auto b_wrote_f = b_wrote.get_future();
    // No renewal: A's lease really runs out while it is paused.
    spindle::redis::distributed_lock lock_a("example:invoice", opts, {.lease = 100ms, .renew = false});
    spindle::redis::distributed_lock lock_b("example:invoice", opts, {.lease = 10s});

    auto a = lock_a.lock_for(5s);
    if (!a) return 1;
    std::printf("A holds the lock with fence %llu, then pauses\n",
                static_cast<unsigned long long>(a->fence()));

    std::thread b_thread([&] {
      auto b = lock_b.lock_for(5s);  // succeeds once A's lease has run out
      if (!b) return;
      bool ok = store.write(b->fence(), "written by B");
      std::printf("B holds the lock with fence %llu; its write %s\n",
                  static_cast<unsigned long long>(b->fence()), ok ? "is accepted" : "is refused");
      b_wrote.set_value();
    });
    b_wrote_f.wait();  // A "wakes up" after B wrote

    bool a_ok = store.write(a->fence(), "written by A");
    bool a_released = a->release();
    std::printf("A wakes up: its write %s, its release %s\n",
                a_ok ? "is ACCEPTED (unsafe!)" : "is refused (stale fence)",
                a_released ? "deleted a lock (unsafe!)" : "finds the lock no longer its own");
    b_thread.join();
    std::printf("the resource holds: \"%s\"\n", store.read().c_str());
    return !a_ok && !a_released && store.read() == "written by B" ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "redis_lock: %s\n", e.what());
    return 1;
  }
}
