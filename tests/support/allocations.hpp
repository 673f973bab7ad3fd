// tests/support/allocations.hpp - counts the heap allocations the calling thread makes, by
// replacing the global operator new/delete with malloc/free-based versions.
//
// A replacement of operator new must exist once per program: include this header in exactly one
// translation unit of a test executable (each test file is its own executable).
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>

namespace test_support {
/// Allocations made by this thread so far.
inline thread_local long allocations = 0;
}  // namespace test_support

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(std::size_t n) {
  ++test_support::allocations;
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
