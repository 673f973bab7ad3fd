// spindle/errors.hpp - the exception hierarchy.
//
// Every exception spindle throws for its own reasons derives from spindle::error, itself a
// std::runtime_error. Bad arguments throw std::invalid_argument (a std::logic_error), as the
// standard library does; misuse from inside a worker throws std::logic_error.
#pragma once

#include <stdexcept>
#include <string>

namespace spindle {

/// The base of every spindle exception.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// An operation on something closed or shut down (submit after shutdown(), for example).
class closed_error : public error {
 public:
  closed_error() : error("spindle: closed") {}
  using error::error;
};

/// A promise was destroyed without a value or an exception; its future throws this.
class broken_promise : public error {
 public:
  broken_promise() : error("spindle: broken promise (destroyed without a value)") {}
  using error::error;
};

/// A deadline passed before a result came.
class timeout_error : public error {
 public:
  timeout_error() : error("spindle: timed out") {}
  using error::error;
};

}  // namespace spindle
