// spindle/redis.hpp - the Redis transport: includes every Redis header, nothing else.
//
// spindle::redis: options and from_url, redis::error / server_error, the RESP encoder and
// incremental parser, connection (commands, pipelining, AUTH/SELECT, reconnect), pool (connections
// shared by threads), async_client (many commands in flight on one connection, as futures),
// codec<T>, cluster (Redis Cluster routing).
// Needs only POSIX sockets and a Redis server (6 or later for ACL users and RESP3).
#pragma once

#include "spindle/redis/async_client.hpp"  // automatic pipelining, futures, timeouts, cancel
#include "spindle/redis/cluster.hpp"  // Redis Cluster routing: slots, MOVED/ASK, failover
#include "spindle/redis/codec.hpp"
#include "spindle/redis/connection.hpp"
#include "spindle/redis/error.hpp"
#include "spindle/redis/options.hpp"
#include "spindle/redis/pool.hpp"
#include "spindle/redis/resp.hpp"
#include "spindle/redis/queue.hpp"       // reliable list queue (processing list, ack, leases)
#include "spindle/redis/rate_limit.hpp"  // token_bucket, sliding_window (Lua, server TIME)
#include "spindle/redis/keyed_rate_limit.hpp"  // per-key fixed/sliding window, token bucket
#include "spindle/redis/stream.hpp"      // stream with consumer group, claim, dead-letter
#include "spindle/redis/topic.hpp"       // publish, subscribe, psubscribe
#include "spindle/redis/cache.hpp"       // cache-aside with stampede protection, local level
#include "spindle/redis/lock.hpp"        // distributed_lock: fencing tokens, lease renewal
#include "spindle/redis/transaction.hpp"  // MULTI/EXEC checked, WATCH check-and-set loop
