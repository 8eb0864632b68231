#pragma once

// One agent spread over several nodes. It answers the run protocol like the
// agent itself, so teams use it as a member unchanged:
//
//   caller --run_task--> replicated --run_task--> the least busy live replica
//
// A replica is lost when its actor goes down (its node's connection broke)
// or when the node actor reports its node failed or left (a silent node).
// The runs it held are sent again, unchanged, to a live replica: the same
// run id, goal and context, and the same agent name, so their tool calls
// make the same idempotency keys and a call the lost node completed is
// answered from the ledger of the tool's node instead of running again.
// Each move is a "cluster.reassign" trace event and a warning on the result.
// When no replica is left, the run fails naming every node and why it was
// lost.

#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include "messages/run.hpp"
#include "messages/trace.hpp"

namespace troupe {

/// One copy of the agent, on a node.
struct agent_replica {
  std::string node;
  runnable_actor actor;
};

struct replicated_config {
  /// The agent's name (the replicas' own).
  std::string name;
  std::vector<agent_replica> replicas;
  /// This runtime's node actor, for failed and left nodes; optional.
  caf::actor node;
  tracer_actor tracer;
};

/// Throws std::invalid_argument when there is no replica or one has no actor.
runnable_actor spawn_replicated_agent(caf::actor_system& sys,
                                      replicated_config cfg);

} // namespace troupe
