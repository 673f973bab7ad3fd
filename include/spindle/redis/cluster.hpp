// spindle/redis/cluster.hpp - a client for Redis Cluster: each command goes to the primary that
// owns its keys' slot.
//
//   spindle::redis::cluster c("redis+cluster://127.0.0.1:7000,127.0.0.1:7001");
//   c.command("SET", "{user:42}:name", "ada");           // to the primary of that slot
//   auto v = c.command("GET", "{user:42}:name").str();
//   auto rs = c.pipeline(spindle::redis::batch()         // one slot: one node, one round trip
//                            .add("INCR", "{user:42}:visits").add("WAIT", 1, 100));
//   c.eval_script(lua_source, {"{q}:ready", "{q}:busy"}, {"5"});   // EVALSHA, loaded per node
//
// Routing. The slot of a key is CRC16(key or its {hash tag}) mod 16384 (detail/slot.hpp). The
// slot map (which primary serves which slots) is read with CLUSTER SHARDS (CLUSTER SLOTS on
// servers before 7) from a seed at construction, again when a reply says the map is stale
// (MOVED, CLUSTERDOWN, an unreachable primary) and every `refresh_interval`. The keys of a
// command are found from a table of common commands (detail/command_keys.hpp: EVAL's numkeys,
// XREAD's STREAMS, ...), else by asking a node with COMMAND GETKEYS (one more round trip).
// Commands without keys go to the primaries in turn. Reads go to primaries (no READONLY
// replicas), so a client reads its own writes.
//
// Guarantees:
// - A command (or a pipeline) whose keys hash to more than one slot is refused before anything
//   is sent: server_error with code() "CROSSSLOT".
// - A reply that means "not run here" is handled and never seen by the caller: MOVED (the map is
//   patched for that slot, refreshed, and the command sent to the new owner), ASK (ASKING then
//   the command, on the importing node, for this command only), and TRYAGAIN, CLUSTERDOWN,
//   LOADING, MASTERDOWN (sent again with capped exponential backoff, `backoff_initial` doubling
//   up to `backoff_max`, while the caller's time budget lasts, `retry_timeout` by default). When
//   the budget runs out, the last such reply is returned (pipeline) or thrown (command).
// - A primary that cannot be reached (connection refused during a failover) is retried the same
//   way, after a map refresh: nothing was sent to it.
// - Never resent blindly: if the connection fails after a command was written, the command may
//   or may not have run, and it is NOT sent again (outcome_unknown_error), unless every command
//   concerned only reads (GET, LRANGE, EVAL_RO, ...; the table's read-only flag).
// - EVALSHA through eval_script(): a NOSCRIPT reply loads the script (SCRIPT LOAD) on the node
//   that answered, then runs it there again; each node gets the script when it first needs it.
//
// Thread-safe: share one cluster between threads. Each node has its own pool of connections
// (`connections_per_node`), so a blocked command (BLPOP) holds one connection of one node. The
// map is an immutable snapshot swapped under a mutex; one thread at a time refreshes it while
// the others go on with the old one. Lifetime: the destructor closes every connection; replies
// already returned stay valid.
//
// Sharded pub/sub: SPUBLISH goes through command() (routed by the channel's slot); SSUBSCRIBE on
// the connection that connect_for_key(channel) opens to the channel's primary. redis::topic on a
// cluster (topic.hpp) does both and subscribes again on the new owner when a channel's slot moves.
//
// The structures: queue, stream, token_bucket, sliding_window and distributed_lock take a
// cluster& and pin their pool to the slot of their {name} tag (pool(cluster&, route_key): a
// failed command or connect marks the map stale; the next connection goes to the slot's current
// primary). The keyed limiters and the cache route each call by its {name:key} slot
// (eval_script, pipeline). Their cluster constructors refuse a name that starts with '}' (its
// keys would have an empty hash tag and spread over slots: CROSSSLOT). README.md, "On a Redis
// Cluster", says what a failover can lose.
//
// Not yet: replicas for reads, MULTI/EXEC across a slot migration (a transaction in a pipeline
// works while its slot stays put), and a slot migrating under a pinned pool (ASK and TRYAGAIN
// are not followed there: the structure's commands fail, its blocking pops retry, until the
// migration ends and MOVED names the owner).
#pragma once

#include <poll.h>  // noticing a peer gone from an idle pooled connection

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>  // from_chars: slots and ports in redirects
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>  // this_thread::sleep_for: backoff between attempts
#include <utility>
#include <vector>

#include "spindle/deadline.hpp"
#include "spindle/redis/connection.hpp"
#include "spindle/redis/detail/command_keys.hpp"
#include "spindle/redis/detail/slot.hpp"
#include "spindle/redis/error.hpp"
#include "spindle/redis/options.hpp"
#include "spindle/redis/pool.hpp"
#include "spindle/redis/resp.hpp"

namespace spindle::redis {

/// The cluster slot (0 .. 16383) of `key`: CRC16 of its {hash tag} or of all of it. Never
/// allocates.
constexpr std::uint16_t key_slot(std::string_view key) noexcept { return detail::key_slot(key); }

namespace detail {
/// Throws std::invalid_argument naming `what` and `name` if the structure name `name` starts
/// with '}': its keys "{name}:..." (or "{name:key}:...") would have an empty hash tag, so a
/// cluster would hash each whole key and one script's keys would land in different slots
/// (CROSSSLOT on every call). '{' and '}' elsewhere in a name keep a tag, and one slot.
inline void check_tag_name(const char* what, std::string_view name) {
  if (!name.empty() && name.front() == '}')
    throw std::invalid_argument(std::string(what) + ": name '" + std::string(name) +
                                "' starts with '}', so its keys have no hash tag on a cluster");
}
}  // namespace detail

/// A command was written to a node and the connection failed before its reply came back: it may
/// or may not have run. The cluster client does not send it again (see cluster.hpp).
class outcome_unknown_error : public error {
 public:
  using error::error;
};

/// One node of a cluster.
struct node_address {
  std::string host;
  std::uint16_t port = 0;
  /// "host:port". Allocates.
  std::string str() const { return host + ":" + std::to_string(port); }
  friend bool operator==(const node_address&, const node_address&) = default;
};

namespace detail {

/// Which primary serves each slot: the map the cluster client routes by. Immutable once built.
struct slot_map {
  static constexpr std::uint16_t no_owner = 0xFFFF;
  std::vector<node_address> primaries;
  std::array<std::uint16_t, cluster_slots> owner;  // index into primaries, or no_owner
  std::size_t covered = 0;                         // slots with an owner
};

inline std::shared_ptr<slot_map> empty_map() {
  auto m = std::make_shared<slot_map>();
  m->owner.fill(slot_map::no_owner);
  return m;
}

inline void assign(slot_map& m, std::int64_t lo, std::int64_t hi, const node_address& a) {
  if (lo < 0 || hi >= cluster_slots || lo > hi)
    throw error("redis::cluster: slot range out of bounds in the map");
  auto it = std::find(m.primaries.begin(), m.primaries.end(), a);
  if (it == m.primaries.end()) it = m.primaries.insert(m.primaries.end(), a);
  auto idx = static_cast<std::uint16_t>(it - m.primaries.begin());
  for (auto s = lo; s <= hi; ++s) {
    if (m.owner[static_cast<std::size_t>(s)] == slot_map::no_owner) ++m.covered;
    m.owner[static_cast<std::size_t>(s)] = idx;
  }
}

// A field of a RESP3 map or of a RESP2 flat [name, value, ...] array; nullptr if absent.
inline const reply* field(const reply& m, std::string_view name) {
  const auto& e = m.elements();
  for (std::size_t i = 0; i + 1 < e.size(); i += 2)
    if (e[i].is_string() && e[i].str() == name) return &e[i + 1];
  return nullptr;
}

// CLUSTER SHARDS: [{slots: [lo, hi, ...], nodes: [{ip, endpoint, port, role, health}, ...]}]
// (RESP3 maps or RESP2 flat arrays). `asked`: the node that answered (its host stands in for an
// unknown endpoint). Throws redis::error on a malformed reply.
inline std::shared_ptr<slot_map> from_shards(const reply& r, const node_address& asked) {
  auto m = empty_map();
  for (const auto& shard : r.elements()) {
    const reply* slots = field(shard, "slots");
    const reply* nodes = field(shard, "nodes");
    if (slots == nullptr || nodes == nullptr || slots->size() == 0) continue;
    // The primary: role master, preferring a healthy one (a failed old primary may still be
    // listed as master next to the replica promoted in its place).
    const reply* best = nullptr;
    int best_rank = -1;
    for (const auto& n : nodes->elements()) {
      const reply* role = field(n, "role");
      if (role == nullptr || role->str() != "master") continue;
      const reply* health = field(n, "health");
      int rank = health == nullptr ? 1 : health->str() == "online" ? 2 : 0;
      if (rank > best_rank) best = &n, best_rank = rank;
    }
    if (best == nullptr) continue;
    node_address a;
    const reply* endpoint = field(*best, "endpoint");
    const reply* ip = field(*best, "ip");
    if (endpoint != nullptr && endpoint->is_string() && !endpoint->str().empty() &&
        endpoint->str() != "?")
      a.host = endpoint->str();
    else if (ip != nullptr && ip->is_string() && !ip->str().empty())
      a.host = ip->str();
    else
      a.host = asked.host;
    const reply* port = field(*best, "port");
    if (port == nullptr) port = field(*best, "tls-port");
    if (port == nullptr) continue;
    auto pn = port->integer();
    if (pn <= 0 || pn > 65535) throw error("redis::cluster: bad port in CLUSTER SHARDS");
    a.port = static_cast<std::uint16_t>(pn);
    const auto& s = slots->elements();
    for (std::size_t i = 0; i + 1 < s.size(); i += 2)
      assign(*m, s[i].integer(), s[i + 1].integer(), a);
  }
  return m;
}

// CLUSTER SLOTS (servers before Redis 7): [[lo, hi, [host, port, id, ...], replicas...], ...].
// Throws redis::error on a malformed reply.
inline std::shared_ptr<slot_map> from_slots(const reply& r, const node_address& asked) {
  auto m = empty_map();
  for (const auto& range : r.elements()) {
    if (range.size() < 3) continue;
    const reply& primary = range[2];
    if (primary.size() < 2) continue;
    node_address a;
    a.host = primary[0].is_string() && !primary[0].str().empty() && primary[0].str() != "?"
                 ? primary[0].str()
                 : asked.host;
    auto pn = primary[1].integer();
    if (pn <= 0 || pn > 65535) throw error("redis::cluster: bad port in CLUSTER SLOTS");
    a.port = static_cast<std::uint16_t>(pn);
    assign(*m, range[0].integer(), range[1].integer(), a);
  }
  return m;
}

}  // namespace detail

/// Cluster client settings. Use with designated initializers.
struct cluster_options {
  std::vector<node_address> seeds{};  ///< any nodes of the cluster; one answering is enough
  /// Credentials, timeouts, protocol and limits for every node (host, port and db are ignored).
  options node{};
  std::size_t connections_per_node = 8;  ///< each node's pool size, >= 1
  /// How long command() and pipeline() keep retrying TRYAGAIN / CLUSTERDOWN / LOADING /
  /// MASTERDOWN replies and unreachable primaries (a failover) before giving up. The _for forms
  /// take the budget per call.
  std::chrono::milliseconds retry_timeout{10000};
  std::chrono::milliseconds backoff_initial{10};      ///< first pause between attempts
  std::chrono::milliseconds backoff_max{250};         ///< cap of the doubling pause
  std::chrono::milliseconds refresh_interval{30000};  ///< periodic map refresh; 0: none
  std::size_t max_redirects = 16;  ///< MOVED/ASK in a row for one command before failing

  /// Parses "redis+cluster://[[user]:pass@]host:port[,host:port...][/0]": the seeds, and the
  /// credentials for every node. Throws std::invalid_argument naming the URL (password shown as
  /// "***"). Allocates.
  static cluster_options from_url(std::string_view url);
};

/// Counters for tests and monitoring; each is approximate under concurrency.
struct cluster_stats {
  std::uint64_t moved = 0;      ///< MOVED replies followed
  std::uint64_t ask = 0;        ///< ASK replies followed
  std::uint64_t retries = 0;    ///< pauses before another attempt (TRYAGAIN, CLUSTERDOWN, ...)
  std::uint64_t refreshes = 0;  ///< slot maps read
  std::uint64_t unknown = 0;    ///< outcome_unknown_error thrown
};

/// A Redis Cluster client. See the header comment for routing, guarantees and thread safety.
class cluster {
 public:
  /// Reads the slot map from the first seed that answers. Throws std::invalid_argument for bad
  /// options, redis::error if no seed answers with a map. Allocates.
  explicit cluster(cluster_options o) : cfg_(std::move(o)) {
    if (cfg_.seeds.empty()) throw std::invalid_argument("redis::cluster: no seed nodes");
    if (cfg_.connections_per_node == 0)
      throw std::invalid_argument("redis::cluster: connections_per_node is 0");
    if (cfg_.node.db != 0)
      throw std::invalid_argument("redis::cluster: db " + std::to_string(cfg_.node.db) +
                                  " (a cluster has only db 0)");
    std::string why;
    auto m = read_map(why);
    if (!m) throw error("redis::cluster: no seed gave a slot map: " + why);
    std::lock_guard lock(mu_);
    map_ = std::move(m);
    last_refresh_ = std::chrono::steady_clock::now();
  }
  /// Same as cluster(cluster_options::from_url(url)).
  explicit cluster(std::string_view url) : cluster(cluster_options::from_url(url)) {}

  cluster(const cluster&) = delete;
  cluster& operator=(const cluster&) = delete;

  /// Sends one command to the primary of its keys' slot and returns the reply, following
  /// redirects and retrying within retry_timeout (see the header comment). Throws server_error
  /// for an error reply (code() "CROSSSLOT" if the keys span slots: nothing sent),
  /// outcome_unknown_error if the connection failed after sending a command that writes,
  /// redis::error if no node could be reached within the budget, std::invalid_argument for a
  /// command that changes the connection (MULTI, SUBSCRIBE, SELECT, ...). Allocates.
  /// Thread-safe.
  template <command_arg... A>
  reply command(const A&... args) {
    return command_for(cfg_.retry_timeout, args...);
  }

  /// command() with its own retry budget (saturating: duration::max() means no limit).
  /// Thread-safe.
  template <class Rep, class Period, command_arg... A>
  reply command_for(std::chrono::duration<Rep, Period> budget, const A&... args) {
    batch b;
    b.add(args...);
    auto r =
        run(b, spindle::detail::saturating_ceil<std::chrono::milliseconds>(budget), "command", true)
            .replies;
    if (r.at(0).is_error()) throw server_error(r[0].str());
    return std::move(r[0]);
  }

  /// Sends every command of `b` to the one primary of their slot, in one write, and returns the
  /// replies in order (error replies in the vector, not thrown). Every key of every command must
  /// hash to one slot (commands without keys, like WAIT, go along), else server_error CROSSSLOT
  /// before anything is sent. MULTI/EXEC may be used inside. Commands redirected by ASK or
  /// MOVED during a slot migration are sent again, in their order, after the others ran.
  /// Throws like command(). Allocates. Thread-safe.
  std::vector<reply> pipeline(const batch& b) { return pipeline_for(cfg_.retry_timeout, b); }

  /// pipeline() with its own retry budget (saturating, as command_for). Thread-safe.
  template <class Rep, class Period>
  std::vector<reply> pipeline_for(std::chrono::duration<Rep, Period> budget, const batch& b) {
    if (b.empty()) return {};
    return run(b, spindle::detail::saturating_ceil<std::chrono::milliseconds>(budget), "pipeline",
               false)
        .replies;
  }

  /// Runs the Lua script `source` with `keys` (all in one slot) and `args` by EVALSHA on the
  /// primary of the keys' slot; on NOSCRIPT, loads it on the node that answered and runs it
  /// again there. Throws like command(). Allocates. Thread-safe.
  reply eval_script(const std::string& source, const std::vector<std::string>& keys,
                    const std::vector<std::string>& args = {}) {
    std::string sha;
    {
      std::lock_guard lock(mu_);
      if (auto it = shas_.find(source); it != shas_.end()) sha = it->second;
    }
    for (int attempt = 0;; ++attempt) {
      if (!sha.empty()) {
        batch b;
        b.add("EVALSHA", sha, keys.size(), keys, args);
        auto res = run(b, cfg_.retry_timeout, "eval_script", true);
        reply& r = res.replies.at(0);
        if (!r.is_error()) return std::move(r);
        if (attempt >= 3 || code_of(r) != "NOSCRIPT") throw server_error(r.str());
        sha = command_on(res.node, "SCRIPT", "LOAD", source).str();  // on the node that needs it
      } else {
        // First use: load it on the keys' node (EVALSHA needs the SHA1, which SCRIPT LOAD gives).
        batch b;
        b.add("EVALSHA", "0", keys.size(), keys, args);
        auto slot = slot_of(b, "eval_script").slot;
        sha = command_on(
                  slot >= 0 ? primary_for_slot(static_cast<std::uint16_t>(slot)) : any_primary(),
                  "SCRIPT", "LOAD", source)
                  .str();
      }
      std::lock_guard lock(mu_);
      shas_[source] = sha;
    }
  }

  /// Sends one command to the node at `at`, without routing, redirects or retries (CLUSTER
  /// commands, SCRIPT LOAD on one node, tests). Throws like connection::command(). Thread-safe.
  template <command_arg... A>
  reply command_on(const node_address& at, const A&... args) {
    auto l = pool_for(at).acquire();
    return l->command(args...);
  }

  /// A new connection (not pooled: the caller owns it) to the primary that owns `key`'s slot,
  /// e.g. for SSUBSCRIBE to a sharded pub/sub channel named `key` (SPUBLISH goes through
  /// command()). When the slot moves, the server ends the subscription (an sunsubscribe
  /// message); the caller connects again. Throws like connection's constructor. Thread-safe.
  connection connect_for_key(std::string_view key) const {
    auto at = primary_for_key(key);
    options o = cfg_.node;
    o.host = at.host;
    o.port = at.port;
    o.db = 0;
    return connection(std::move(o));
  }

  /// The primary that owns `slot` in the current map. Throws redis::error if none does.
  /// Thread-safe.
  node_address primary_for_slot(std::uint16_t slot) const {
    auto m = snapshot();
    auto idx = m->owner.at(slot);
    if (idx == no_owner)
      throw error("redis::cluster: slot " + std::to_string(slot) + " has no primary in the map");
    return m->primaries[idx];
  }
  /// The primary that owns `key`'s slot in the current map. Thread-safe.
  node_address primary_for_key(std::string_view key) const {
    return primary_for_slot(key_slot(key));
  }
  /// The primaries of the current map. Allocates. Thread-safe.
  std::vector<node_address> primaries() const { return snapshot()->primaries; }

  /// Reads the slot map now (from the known primaries, then the seeds, then replicas). Throws
  /// redis::error if no node gives one (the old map stays). Thread-safe.
  void refresh() {
    std::string why;
    if (!refresh_now(why)) throw error("redis::cluster::refresh: no node gave a slot map: " + why);
  }

  /// The options this cluster was made with.
  const cluster_options& config() const noexcept { return cfg_; }

  /// Counters (approximate). Thread-safe.
  cluster_stats stats() const noexcept {
    return {moved_.load(std::memory_order_relaxed), ask_.load(std::memory_order_relaxed),
            retries_.load(std::memory_order_relaxed), refreshes_.load(std::memory_order_relaxed),
            unknown_.load(std::memory_order_relaxed)};
  }

 private:
  friend class pool;  // pool(cluster&, route_key, pool_options): route_for
  using slot_map = detail::slot_map;
  static constexpr std::uint16_t no_owner = detail::slot_map::no_owner;

  // A pool pinned to one slot (pool.hpp): its connections go to the slot's current primary;
  // a failure marks the map stale, and the next target() reads it again.
  class slot_route final : public detail::pool_route {
   public:
    slot_route(cluster& c, std::uint16_t slot) : c_(c), slot_(slot) {}
    options target() override {
      c_.maybe_refresh();
      auto at = c_.primary_for_slot(slot_);
      options o = c_.cfg_.node;
      o.host = std::move(at.host);
      o.port = at.port;
      o.db = 0;
      return o;
    }
    void failed() noexcept override {
      try {
        c_.mark_stale();
      } catch (...) {  // std::system_error from the mutex: the next failure marks it
      }
    }

   private:
    cluster& c_;
    std::uint16_t slot_;
  };

  std::unique_ptr<detail::pool_route> route_for(std::string_view key) {
    return std::make_unique<slot_route>(*this, key_slot(key));
  }
  static constexpr std::chrono::milliseconds max_acquire_wait = std::chrono::hours(24);

  // The commands of a batch as argument lists (views into `parsed`), and their common slot.
  struct routing {
    std::vector<reply> parsed;
    std::vector<std::vector<std::string_view>> cmds;
    int slot = -1;  // -1: no keys
    bool readonly = true;
  };

  struct result {
    std::vector<reply> replies;
    node_address node;  // where the last attempt went
  };

  // ---- slot of a batch ---------------------------------------------------------------------

  // Decodes `b` (RESP arrays of bulk strings: the same bytes the encoder wrote) into argument
  // lists, finds every key, and checks they share one slot. Throws server_error CROSSSLOT,
  // std::invalid_argument for a refused command.
  routing slot_of(const batch& b, const char* what, bool single = false) {
    routing rt;
    parser p;
    p.feed(b.bytes());
    reply r;
    while (p.next(r)) rt.parsed.push_back(std::move(r));
    rt.cmds.reserve(rt.parsed.size());
    std::vector<std::size_t> pos;
    std::uint16_t first_slot = 0;
    std::size_t first_cmd = 0, first_pos = 0;
    bool have = false;
    for (std::size_t c = 0; c < rt.parsed.size(); ++c) {
      auto& args = rt.cmds.emplace_back();
      for (const auto& a : rt.parsed[c].elements()) args.push_back(a.str());
      if (args.empty())
        throw std::invalid_argument(std::string("redis::cluster::") + what + ": empty command");
      const auto* spec = detail::find_command(args[0]);
      std::vector<std::string> asked;  // keys named by COMMAND GETKEYS
      std::vector<std::string_view> keys;
      pos.clear();
      if (spec != nullptr) {
        using scope = detail::command_keys::scope;
        if (spec->where == scope::session || (single && spec->where == scope::transaction))
          throw std::invalid_argument(
              std::string("redis::cluster::") + what + ": " + std::string(spec->name) +
              " changes the connection; not routable on a cluster" +
              (spec->where == scope::transaction ? " (use pipeline() with MULTI ... EXEC)" : ""));
        rt.readonly = rt.readonly && spec->readonly;
        detail::find_keys(*spec, args, pos);
        for (auto i : pos) keys.push_back(args[i]);
      } else {
        rt.readonly = false;
        asked = keys_from_server(args);
        for (std::size_t i = 0; i < asked.size(); ++i) {
          keys.push_back(asked[i]);
          pos.push_back(i + 1);  // a position is only used in messages
        }
      }
      for (std::size_t k = 0; k < keys.size(); ++k) {
        auto s = key_slot(keys[k]);
        if (!have) {
          have = true;
          first_slot = s;
          first_cmd = c;
          first_pos = pos[k];
        } else if (s != first_slot) {
          throw server_error(
              std::string("CROSSSLOT redis::cluster::") + what + ": keys hash to different " +
              "slots (command " + std::to_string(first_cmd + 1) + " argument " +
              std::to_string(first_pos) + ": slot " + std::to_string(first_slot) + "; command " +
              std::to_string(c + 1) + " " + std::string(args[0].substr(0, 32)) + " argument " +
              std::to_string(pos[k]) + ": slot " + std::to_string(s) + "); nothing was sent");
        }
      }
    }
    rt.slot = have ? first_slot : -1;
    return rt;
  }

  // Keys of a command the table does not know, by COMMAND GETKEYS on some primary. A command
  // without keys (or one the server does not know: it will say so itself) has none.
  std::vector<std::string> keys_from_server(const std::vector<std::string_view>& args) {
    std::vector<std::string> keys;
    try {
      auto l = pool_for(any_primary()).acquire();
      auto r = l->command("COMMAND", "GETKEYS", args);
      for (const auto& k : r.elements()) keys.push_back(k.str());
    } catch (const server_error&) {  // "no key arguments", "Invalid command specified"
      keys.clear();
    }
    return keys;
  }

  // ---- the routing loop ---------------------------------------------------------------------

  static bool retry_later(std::string_view code) noexcept {
    return code == "TRYAGAIN" || code == "CLUSTERDOWN" || code == "LOADING" || code == "MASTERDOWN";
  }

  static std::string_view code_of(const reply& r) {
    std::string_view m = r.str();
    return m.substr(0, m.find(' '));
  }

  // "MOVED 3999 127.0.0.1:6381" / "ASK 3999 :6381" (empty host: the node that answered).
  static node_address redirect_target(const reply& r, const node_address& from) {
    std::string_view m = r.str();
    auto sp = m.rfind(' ');
    auto colon = m.rfind(':');
    if (sp == std::string_view::npos || colon == std::string_view::npos || colon < sp)
      throw error("redis::cluster: malformed redirect reply");
    node_address a;
    a.host = std::string(m.substr(sp + 1, colon - sp - 1));
    if (a.host.empty()) a.host = from.host;
    unsigned port = 0;
    auto ps = m.substr(colon + 1);
    auto [p, ec] = std::from_chars(ps.data(), ps.data() + ps.size(), port);
    if (ec != std::errc() || port == 0 || port > 65535)
      throw error("redis::cluster: malformed redirect reply");
    a.port = static_cast<std::uint16_t>(port);
    return a;
  }

  // True when an idle pooled connection's peer has gone (EOF or reset waiting on the socket),
  // so that reconnecting first keeps "nothing was sent" knowable.
  static bool peer_gone(const connection& c) {
    if (!c.is_connected()) return true;
    if (c.pending() != 0 || c.buffered() != 0) return false;
    pollfd p{c.native_handle(), POLLIN, 0};
    return ::poll(&p, 1, 0) > 0;  // an idle RESP2/3 connection gets no bytes unasked
  }

  // Invariant: a command is written at most once unless it is read-only or the reply said it
  // did not run (MOVED, ASK, TRYAGAIN, CLUSTERDOWN, LOADING, MASTERDOWN). An I/O failure
  // before the write (pool connect, reconnect of a dead idle connection) is "nothing sent";
  // after it, "unknown". Attacked by "a primary killed during a run of writes" in
  // tests/redis/test_cluster.cpp.
  result run(const batch& b, std::chrono::milliseconds budget, const char* what, bool single) {
    routing rt = slot_of(b, what, single);
    const std::size_t n = rt.cmds.size();
    const auto until = spindle::detail::time_after<std::chrono::steady_clock>(budget);
    std::vector<reply> out(n);
    std::vector<std::size_t> todo(n);
    for (std::size_t i = 0; i < n; ++i) todo[i] = i;
    std::optional<node_address> ask;
    bool whole = true;  // todo is all of b, unredirected: send b's own bytes
    std::size_t redirects = 0;
    auto pause = cfg_.backoff_initial;
    std::string unreachable;  // why the last attempt could not reach its node
    node_address target;
    for (;;) {
      maybe_refresh();
      bool waiting = false;
      if (ask) {
        target = *ask;
      } else if (rt.slot >= 0) {
        auto m = snapshot();
        auto idx = m->owner[static_cast<std::size_t>(rt.slot)];
        if (idx == no_owner) {
          unreachable = "slot " + std::to_string(rt.slot) + " has no primary in the map";
          mark_stale();
          waiting = true;
        } else {
          target = m->primaries[idx];
        }
      } else {
        target = any_primary();
      }
      std::vector<reply> rs;
      if (!waiting) {
        batch again;
        if (!whole || ask) {
          for (auto i : todo) {
            if (ask) again.add("ASKING");
            again.add(rt.cmds[i]);
          }
        }
        bool sent = false;
        try {
          // (a cap: condition_variable::wait_for overflows on the largest durations)
          auto l = pool_for(target).acquire_for(std::min(remaining(until), max_acquire_wait));
          if (!l) throw error("no connection of the pool free in time");
          if (peer_gone(**l)) {
            // Invariant: reconnecting here, before the command is written, is what lets a
            // refused connection count as "nothing sent" (else the connection reconnects inside
            // pipeline() and a refusal reads as an unknown outcome: 1800+ of 2000 writes in
            // "a primary SIGKILLed during a run of writes" without it). A node being killed may
            // still complete a TCP handshake (the kernel's backlog) and reset it just after: the
            // PING keeps "nothing was sent" true then (without it, 2 unknown outcomes in 2 runs
            // of 3 of that test, which allows 1).
            (*l)->reconnect();
            batch ping;
            ping.add("PING");
            auto pong = (*l)->pipeline(ping);  // an error reply (LOADING) is returned, not thrown
            if (pong.at(0).is_error())
              throw error("it answered PING with " + std::string(code_of(pong[0])));
          }
          sent = true;
          rs = (*l)->pipeline(whole && !ask ? b : again);
        } catch (const server_error&) {
          throw;  // AUTH/HELLO refused: a configuration error, not a routing one
        } catch (const error& e) {
          if (sent && !rt.readonly) {
            unknown_.fetch_add(1, std::memory_order_relaxed);
            mark_stale();
            throw outcome_unknown_error(
                std::string("redis::cluster::") + what + ": the connection to " + target.str() +
                " failed after sending " + std::string(rt.cmds[todo[0]][0].substr(0, 32)) +
                (todo.size() > 1 ? " and " + std::to_string(todo.size() - 1) + " more" : "") +
                ": it may or may not have run; not sent again (" + e.what() + ")");
          }
          unreachable = target.str() + ": " + e.what();
          mark_stale();
          ask.reset();
          waiting = true;
        }
      }
      if (!waiting) {
        whole = false;
        std::vector<std::size_t> next;
        std::optional<node_address> next_ask;
        bool moved = false, later = false;
        std::size_t k = 0;
        for (auto i : todo) {
          if (ask) ++k;  // ASKING's +OK
          reply& r = rs.at(k++);
          auto code = r.is_error() ? code_of(r) : std::string_view();
          if (code == "MOVED") {
            patch(r, target);
            moved = true;
            next.push_back(i);
          } else if (code == "ASK") {
            next_ask = redirect_target(r, target);
            next.push_back(i);
          } else {
            if (retry_later(code)) {
              later = true;
              next.push_back(i);
              if (code == "CLUSTERDOWN") mark_stale();
            }
            out[i] = std::move(r);  // kept if the budget runs out
          }
        }
        if (next.empty()) return {std::move(out), target};
        todo = std::move(next);
        if (moved) moved_.fetch_add(1, std::memory_order_relaxed);
        if (next_ask) ask_.fetch_add(1, std::memory_order_relaxed);
        ask = next_ask;
        if (moved || next_ask) {
          if (++redirects > cfg_.max_redirects)
            throw error(std::string("redis::cluster::") + what + ": more than " +
                        std::to_string(cfg_.max_redirects) + " redirects in a row (last to " +
                        target.str() + ")");
          if (!later) continue;
        }
        unreachable.clear();
      }
      // Pause before the next attempt, within the budget.
      auto left = remaining(until);
      if (left <= std::chrono::milliseconds::zero()) {
        if (!unreachable.empty())
          throw error(std::string("redis::cluster::") + what + ": gave up after " +
                      std::to_string(budget.count()) + " ms; nothing was sent (" + unreachable +
                      ")");
        return {std::move(out), target};  // the last TRYAGAIN/CLUSTERDOWN/... replies
      }
      retries_.fetch_add(1, std::memory_order_relaxed);
      std::this_thread::sleep_for(std::min(pause, left));
      pause = std::min(pause * 2, cfg_.backoff_max);
    }
  }

  static std::chrono::milliseconds remaining(std::chrono::steady_clock::time_point until) {
    auto now = std::chrono::steady_clock::now();
    if (now >= until) return std::chrono::milliseconds::zero();
    return std::chrono::ceil<std::chrono::milliseconds>(until - now);
  }

  // ---- slot map ---------------------------------------------------------------------------

  std::shared_ptr<const slot_map> snapshot() const {
    std::lock_guard lock(mu_);
    return map_;
  }

  node_address any_primary() {
    auto m = snapshot();
    if (m->primaries.empty()) return cfg_.seeds.front();
    auto i = rr_.fetch_add(1, std::memory_order_relaxed);
    return m->primaries[i % m->primaries.size()];
  }

  pool& pool_for(const node_address& a) {
    std::lock_guard lock(mu_);
    auto& p = pools_[a.str()];
    if (!p) {
      options o = cfg_.node;
      o.host = a.host;
      o.port = a.port;
      o.db = 0;
      p = std::make_unique<pool>(o, pool_options{.max_connections = cfg_.connections_per_node});
    }
    return *p;  // pools are never erased while the cluster lives: the reference stays valid
  }

  void mark_stale() {
    std::lock_guard lock(mu_);
    stale_ = true;
  }

  // MOVED: this slot now belongs to the named node; patch the map at once, read it all soon.
  void patch(const reply& moved, const node_address& from) {
    std::string_view m = moved.str();
    auto a = m.find(' ') + 1, b = m.find(' ', a);
    unsigned slot = detail::cluster_slots;
    std::from_chars(m.data() + a, m.data() + b, slot);
    if (slot >= detail::cluster_slots) throw error("redis::cluster: malformed MOVED reply");
    auto to = redirect_target(moved, from);
    std::lock_guard lock(mu_);
    auto copy = std::make_shared<slot_map>(*map_);
    auto it = std::find(copy->primaries.begin(), copy->primaries.end(), to);
    if (it == copy->primaries.end()) it = copy->primaries.insert(copy->primaries.end(), to);
    if (copy->owner[slot] == no_owner) ++copy->covered;
    copy->owner[slot] = static_cast<std::uint16_t>(it - copy->primaries.begin());
    map_ = std::move(copy);
    stale_ = true;
  }

  void maybe_refresh() {
    {
      std::lock_guard lock(mu_);
      auto now = std::chrono::steady_clock::now();
      bool due = cfg_.refresh_interval.count() > 0 && now - last_refresh_ >= cfg_.refresh_interval;
      if (refreshing_ || (!stale_ && !due)) return;
    }
    std::string why;
    refresh_now(why);  // failure: the old map stays; the caller's attempt will tell
  }

  // One thread reads the map; others return at once and use the current one.
  bool refresh_now(std::string& why) {
    {
      std::lock_guard lock(mu_);
      if (refreshing_) return true;
      refreshing_ = true;
    }
    std::shared_ptr<const slot_map> m;
    try {
      m = read_map(why);
    } catch (...) {
      std::lock_guard lock(mu_);
      refreshing_ = false;
      throw;
    }
    std::lock_guard lock(mu_);
    refreshing_ = false;
    last_refresh_ = std::chrono::steady_clock::now();
    if (!m) return false;
    map_ = std::move(m);
    stale_ = false;
    return true;
  }

  // Asks the known primaries, then the seeds, for CLUSTER SHARDS (CLUSTER SLOTS before Redis 7).
  std::shared_ptr<const slot_map> read_map(std::string& why) {
    std::vector<node_address> candidates;
    if (auto m = snapshot()) candidates = m->primaries;
    for (const auto& s : cfg_.seeds)
      if (std::find(candidates.begin(), candidates.end(), s) == candidates.end())
        candidates.push_back(s);
    for (const auto& at : candidates) {
      try {
        auto l = pool_for(at).acquire_for(cfg_.node.connect_timeout);
        if (!l) continue;
        if (peer_gone(**l)) (*l)->reconnect();
        std::shared_ptr<slot_map> m;
        try {
          m = detail::from_shards((*l)->command("CLUSTER", "SHARDS"), at);
        } catch (const server_error&) {  // before Redis 7: no SHARDS
          m = detail::from_slots((*l)->command("CLUSTER", "SLOTS"), at);
        }
        refreshes_.fetch_add(1, std::memory_order_relaxed);
        if (m->covered == 0) {
          why = at.str() + " serves no slots";
          continue;
        }
        return m;
      } catch (const error& e) {
        why = at.str() + ": " + e.what();
      }
    }
    return nullptr;
  }

  const cluster_options cfg_;
  mutable std::mutex mu_;
  std::shared_ptr<const slot_map> map_;                   // guarded by mu_
  std::map<std::string, std::unique_ptr<pool>> pools_;    // guarded by mu_; never erased
  std::map<std::string, std::string, std::less<>> shas_;  // guarded by mu_: source -> SHA1
  bool stale_ = false;                                    // guarded by mu_
  bool refreshing_ = false;                               // guarded by mu_
  std::chrono::steady_clock::time_point last_refresh_{};  // guarded by mu_
  std::atomic<std::size_t> rr_{0};  // relaxed: spreads keyless commands, orders nothing
  std::atomic<std::uint64_t> moved_{0}, ask_{0}, retries_{0}, refreshes_{0},
      unknown_{0};  // relaxed counters
};

inline pool::pool(cluster& c, std::string_view route_key, pool_options po)
    : pool(c.route_for(route_key), po) {}

inline cluster_options cluster_options::from_url(std::string_view url) {
  auto fail = [&](const std::string& why) {
    return std::invalid_argument("redis::cluster_options::from_url: " + why + " in '" +
                                 detail::redact_url(url) + "'");
  };
  constexpr std::string_view scheme = "redis+cluster://";
  if (!url.starts_with(scheme)) throw fail("scheme is not redis+cluster://");
  std::string_view rest = url.substr(scheme.size());
  auto slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? "" : rest.substr(slash + 1);
  if (auto q = path.find('?'); q != std::string_view::npos) path = path.substr(0, q);
  if (!path.empty() && path != "0") throw fail("a cluster has only db 0");
  auto at = authority.rfind('@');
  std::string userinfo =
      at == std::string_view::npos ? std::string() : std::string(authority.substr(0, at + 1));
  std::string_view hosts = at == std::string_view::npos ? authority : authority.substr(at + 1);
  cluster_options out;
  for (std::size_t start = 0; start <= hosts.size();) {
    auto comma = hosts.find(',', start);
    std::string_view h =
        hosts.substr(start, comma == std::string_view::npos ? comma : comma - start);
    if (h.empty()) throw fail("empty host");
    options o;
    try {
      o = options::from_url("redis://" + userinfo + std::string(h));
    } catch (const std::invalid_argument&) {  // its message would show the URL we made
      throw fail("bad host[:port] '" + std::string(h) + "'");
    }
    out.seeds.push_back({o.host, o.port});
    out.node.username = o.username;
    out.node.password = o.password;
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return out;
}

}  // namespace spindle::redis
