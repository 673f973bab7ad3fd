// tests/support/lifetime.hpp - an element type that records every live object.
//
// tracked counts constructions, copies, moves and destructions in a registry, and checks on each
// use that the object is alive (not destroyed, not moved-from where that matters). A test creates
// a tracked::registry, runs, and checks registry.alive() == 0 at the end: no leak, no double
// destruction.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstdio>

namespace test_support {

class tracked {
 public:
  struct registry {
    std::atomic<long> alive{0};
    std::atomic<long> constructed{0};
    std::atomic<long> copies{0};
    std::atomic<long> moves{0};
    std::atomic<long> destroyed{0};
    std::atomic<long> errors{0};  // use after destruction, double destruction
  };

  static constexpr std::uint32_t live_magic = 0x5eed5eedu;
  static constexpr std::uint32_t dead_magic = 0xdeaddeadu;

  tracked() : tracked(nullptr, 0) {}
  tracked(registry* r, std::uint64_t v) : reg_(r), value_(v) { born(); }
  tracked(const tracked& o) : reg_(o.reg_), value_(o.value_) {
    o.check();
    born();
    if (reg_) reg_->copies.fetch_add(1, std::memory_order_relaxed);
  }
  tracked(tracked&& o) noexcept : reg_(o.reg_), value_(o.value_) {
    o.check();
    o.moved_from_ = true;
    born();
    if (reg_) reg_->moves.fetch_add(1, std::memory_order_relaxed);
  }
  tracked& operator=(const tracked& o) {
    check();
    o.check();
    rebind(o.reg_);
    value_ = o.value_;
    moved_from_ = false;
    if (reg_) reg_->copies.fetch_add(1, std::memory_order_relaxed);
    return *this;
  }
  tracked& operator=(tracked&& o) noexcept {
    check();
    o.check();
    rebind(o.reg_);
    value_ = o.value_;
    moved_from_ = false;
    o.moved_from_ = true;
    if (reg_) reg_->moves.fetch_add(1, std::memory_order_relaxed);
    return *this;
  }
  ~tracked() {
    check();
    magic_ = dead_magic;
    if (reg_) {
      reg_->alive.fetch_sub(1, std::memory_order_relaxed);
      reg_->destroyed.fetch_add(1, std::memory_order_relaxed);
    }
  }

  std::uint64_t value() const {
    check();
    return value_;
  }
  bool moved_from() const { return moved_from_; }

 private:
  void born() {
    if (reg_) {
      reg_->alive.fetch_add(1, std::memory_order_relaxed);
      reg_->constructed.fetch_add(1, std::memory_order_relaxed);
    }
  }
  void rebind(registry* r) {
    if (r == reg_) return;
    if (reg_) reg_->alive.fetch_sub(1, std::memory_order_relaxed);
    reg_ = r;
    if (reg_) reg_->alive.fetch_add(1, std::memory_order_relaxed);
  }
  void check() const {
    if (magic_ != live_magic) {
      if (reg_) reg_->errors.fetch_add(1, std::memory_order_relaxed);
      std::fprintf(stderr, "tracked: use of a dead object\n");
      std::abort();
    }
  }

  std::uint32_t magic_ = live_magic;
  bool moved_from_ = false;
  registry* reg_;
  std::uint64_t value_;
};

}  // namespace test_support
