// Compile-time proofs that spindle's queues model spindle::channel, for copyable, move-only and
// lifetime-tracked element types. Other channels (Redis queues, streams) add their lines here.
#include <doctest/doctest.h>

#include <spindle/bounded_queue.hpp>
#include <spindle/channel.hpp>
#include <spindle/spsc_queue.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "support/lifetime.hpp"

namespace {

template <template <class> class Q>
constexpr bool models_channel_for_all() {
  return spindle::channel<Q<int>> && spindle::channel<Q<std::uint64_t>> &&
         spindle::channel<Q<std::string>> && spindle::channel<Q<std::unique_ptr<int>>> &&
         spindle::channel<Q<std::vector<int>>> && spindle::channel<Q<test_support::tracked>>;
}

// Not a channel: it has no close().
struct not_a_channel {
  using value_type = int;
  spindle::status push(int&&);
  spindle::status try_pop(int&);
};

}  // namespace

static_assert(models_channel_for_all<spindle::bounded_queue>(),
              "bounded_queue must model spindle::channel");
static_assert(models_channel_for_all<spindle::spsc_queue>(),
              "spsc_queue must model spindle::channel");
static_assert(!spindle::channel<not_a_channel>, "the concept must reject a partial interface");
static_assert(!spindle::channel<int>);

TEST_CASE("bounded_queue and spsc_queue model channel for copyable, move-only and tracked types") {
  CHECK(models_channel_for_all<spindle::bounded_queue>());
  CHECK(models_channel_for_all<spindle::spsc_queue>());
}

TEST_CASE("a type without the whole channel interface does not model channel") {
  CHECK_FALSE(spindle::channel<not_a_channel>);
}

// Channels say whether they take several producers and consumers (issue 12, item 6).
static_assert(spindle::multi_producer_v<spindle::bounded_queue<int>>);
static_assert(spindle::multi_consumer_v<spindle::bounded_queue<int>>);
static_assert(!spindle::multi_producer_v<spindle::spsc_queue<int>>);
static_assert(!spindle::multi_consumer_v<spindle::spsc_queue<int>>);
static_assert(spindle::multi_consumer_v<spindle::any_channel<int>>);  // decided at run time

TEST_CASE("any_channel forwards its target's ends at run time") {
  spindle::spsc_queue<int> s(4);
  spindle::bounded_queue<int> b(4);
  spindle::any_channel<int> as(s), ab(b);
  CHECK_FALSE(spindle::multi_producer(as));
  CHECK_FALSE(spindle::multi_consumer(as));
  CHECK(spindle::multi_producer(ab));
  CHECK(spindle::multi_consumer(ab));
  CHECK_FALSE(spindle::multi_consumer(s));
  CHECK(spindle::multi_consumer(b));
}
