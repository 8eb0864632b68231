#pragma once

// The approval gate: where actions that need a human wait for one.
//
//   agent --approval_request--> gate --(pending)--> human lists, decides
//   agent <--approval_decision-- gate <--(apr_decide_atom, decision)-- human
//
// A request waits until a human approves or denies it, or until its
// time-to-live runs out (then the agent gets verdict expired). The gate gives
// each request an id when it has none, stamps created_ms, and tells watchers
// of every new request. Decisions name who decided; deciding a request that
// is not pending (unknown, already decided, expired) is an error naming the id.
// The agent that asked waits in AWAITING_APPROVAL with its whole run state
// kept. The gate can be published on a port (runtime/approvals.hpp) so the
// CLI (`troupe approvals list | approve ID | deny ID --note ...`) reaches it
// from another process.
//
// With a tracer, the gate records "approval.gate.pending" and
// "approval.gate.decided" events in the request's span (ref.trace_id,
// ref.span_id). They are named apart from the agent's own "approval.requested"
// and "approval.decided" in the same span, so a trace never counts one request
// twice; the gate's add who decided and how long the request waited.
// When the gate stops, every pending request is denied ("approval gate
// stopped"): CAF 0.17 would otherwise drop the waiting agents' promises.

#include <chrono>
#include <string>

#include <caf/fwd.hpp>

#include "messages/approval.hpp"
#include "messages/trace.hpp"

namespace troupe {

/// How the gate is set up.
struct approval_gate_config {
  /// Time-to-live of a request that gives none.
  std::chrono::milliseconds default_ttl{std::chrono::minutes{15}};
  /// Requests that may wait at once; more are denied at once.
  size_t max_pending = 10000;
};

/// Spawns an approval gate.
approval_gate_actor spawn_approval_gate(caf::actor_system& sys,
                                        approval_gate_config cfg = {},
                                        tracer_actor tracer = {});

} // namespace troupe
