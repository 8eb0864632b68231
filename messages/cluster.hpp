#pragma once

// The cluster protocol: node actor <-> node actor.
//
//   cl_hello_atom, node_info        -> std::vector<node_info>  a joiner greets
//                                      a member; the reply is every node the
//                                      member knows, itself first
//   cl_beat_atom, name, version     (one way) a heartbeat, every interval
//   cl_update_atom, node_info       (one way) a member's listing changed
//   cl_leave_atom, name             (one way) a member leaves on purpose
//
// A node_info is a member's whole directory entry: where it listens, what it
// can do, and the actor handles of the agents and tools it hosts. Handles
// travel as CAF proxies, so an agent found in the directory is called with the
// same run_task as a local one.

#include <cstdint>
#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/atom.hpp>

#include "messages/define.hpp"
#include "messages/json_value.hpp"
#include "messages/model.hpp"
#include "messages/run.hpp"
#include "messages/tool.hpp"

namespace troupe {

/// A tool a node hosts, as callers elsewhere need it.
struct tool_listing {
  /// What the model sees: name, description, JSON Schema of the arguments.
  tool_spec spec;
  std::string version;
  /// The front of the tool's guards on its node (retrier, breaker, limiter,
  /// adapter): calls go through them there.
  tool_actor actor;
  /// How long a caller waits for one call through its guards.
  int64_t call_timeout_ms = 0;
  /// How callers make idempotency keys: "call", "run" or "global", and the
  /// argument fields the key is made of (empty = all).
  std::string idempotency_scope = "call";
  std::vector<std::string> idempotency_fields;
  /// Calls of a read-only tool are not recorded in its node's ledger.
  bool read_only = false;
  /// What the tool can do ("math", "search"...), for look-ups.
  std::vector<std::string> capabilities;
};
TROUPE_WIRE_MESSAGE(tool_listing, spec, version, actor, call_timeout_ms,
                    idempotency_scope, idempotency_fields, read_only,
                    capabilities)

/// An agent (or a team) a node hosts.
struct agent_listing {
  std::string name;
  std::vector<std::string> capabilities;
  runnable_actor actor;
};
TROUPE_WIRE_MESSAGE(agent_listing, name, capabilities, actor)

/// One member of a cluster, as the others know it.
struct node_info {
  /// Unique in the cluster.
  std::string name;
  /// host:port where it accepts peers; empty for a client that only submits
  /// work (peers then reach it over the connection it opened).
  std::string address;
  std::vector<std::string> capabilities;
  std::vector<agent_listing> agents;
  std::vector<tool_listing> tools;
  /// Its node actor.
  caf::actor node;
  /// Grows with every change of its listing, so a stale update is ignored.
  uint64_t version = 0;
  int64_t started_ns = 0;
};
TROUPE_WIRE_MESSAGE(node_info, name, address, capabilities, agents, tools, node,
               version, started_ns)

/// What happened to a member.
enum class cluster_event_kind : uint8_t {
  joined,
  /// Its listing changed (agents or tools added).
  updated,
  /// It said goodbye.
  left,
  /// Its connection broke or it fell silent past the heartbeat timeout.
  failed,
};
TROUPE_JSON_ENUM(cluster_event_kind,
                 {{cluster_event_kind::joined, "joined"},
                  {cluster_event_kind::updated, "updated"},
                  {cluster_event_kind::left, "left"},
                  {cluster_event_kind::failed, "failed"}})

/// Text name of a cluster event kind.
const char* to_string(cluster_event_kind x);

/// A membership change, as subscribers of a node actor see it.
struct cluster_event {
  cluster_event_kind kind = cluster_event_kind::joined;
  std::string node;
  /// Why, for failed and left ("connection lost: ...", "silent for 5000 ms").
  std::string detail;
  int64_t time_ns = 0;
};
TROUPE_MESSAGE(cluster_event, kind, node, detail, time_ns)

/// What a node needs to host an agent another node asks it to spawn (the
/// argument of CAF's remote spawn of "troupe.agent"): the agent's spec as
/// JSON, and the asking node's tracer, budget and approval gate, so that the
/// agent's spans, spending and approvals stay with the run that uses it.
struct remote_agent_args {
  json_value spec;
  /// Handles on the asking node; empty ones are replaced by the host's own.
  caf::actor tracer;
  caf::actor budget;
  caf::actor approvals;
  /// The asking node's name: the agent stops when that node leaves or fails.
  std::string origin;
};
TROUPE_WIRE_MESSAGE(remote_agent_args, spec, tracer, budget, approvals, origin)

using cl_hello_atom = caf::atom_constant<caf::atom("cl_hello")>;
using cl_beat_atom = caf::atom_constant<caf::atom("cl_beat")>;
using cl_update_atom = caf::atom_constant<caf::atom("cl_update")>;
using cl_leave_atom = caf::atom_constant<caf::atom("cl_leave")>;

} // namespace troupe
