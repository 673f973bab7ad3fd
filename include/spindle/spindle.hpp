// spindle/spindle.hpp - the umbrella header: includes every in-process part of spindle.
// (The Redis transport has its own umbrella, <spindle/redis.hpp>.)
#pragma once

#include "version.hpp"
#include "status.hpp"
#include "errors.hpp"
#include "channel.hpp"
#include "clock.hpp"
#include "bounded_queue.hpp"
#include "spsc_queue.hpp"
#include "deadline.hpp"
#include "rate_limit.hpp"
#include "retry.hpp"
#include "future.hpp"
#include "when.hpp"
#include "thread_pool.hpp"
#include "worker_pool.hpp"
#include "fan.hpp"
#include "pipeline.hpp"
#include "map_reduce.hpp"
#include "actor.hpp"
#include "scatter_gather.hpp"
