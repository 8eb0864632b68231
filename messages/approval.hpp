#pragma once

// The approval protocol: agents and humans -> the approval gate
// (actors/approval_gate.hpp).
//   agent -> gate: approval_request -> approval_decision (when a human decides
//                  or the request's time-to-live runs out)
//   human -> gate: (apr_list_atom) -> std::vector<approval_request>
//                  (apr_decide_atom, approval_decision) -> approval_request
//                  (the request decided; an error when there is none pending)
//   observer -> gate: (apr_watch_atom, caf::actor): new requests are sent to it

#include <cstdint>
#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/atom.hpp>
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include "messages/common.hpp"
#include "messages/json_value.hpp"

namespace troupe {

/// What a human decided, or that nobody did in time.
enum class approval_verdict : uint8_t { approve, deny, expired };

TROUPE_JSON_ENUM(approval_verdict,
                             {{approval_verdict::approve, "approve"},
                              {approval_verdict::deny, "deny"},
                              {approval_verdict::expired, "expired"}})

/// An action waiting for a human.
struct approval_request {
  std::string request_id;
  run_ref ref;
  std::string agent;
  /// The tool or operation to approve.
  std::string action;
  json_value args;
  /// Why approval is needed (the policy rule).
  std::string reason;
  /// The agent's recent steps, for context.
  json_value recent_steps;
  int64_t created_ms = 0;
  int64_t ttl_ms = 0;
};
TROUPE_MESSAGE(approval_request, request_id, ref, agent, action, args, reason,
               recent_steps, created_ms, ttl_ms)

/// The answer to an approval_request.
struct approval_decision {
  std::string request_id;
  approval_verdict verdict = approval_verdict::deny;
  std::string who;
  std::string note;
  int64_t decided_ms = 0;
};
TROUPE_MESSAGE(approval_decision, request_id, verdict, who, note, decided_ms)

/// Lists the pending requests, oldest first.
using apr_list_atom = caf::atom_constant<caf::atom("apr_list")>;

/// A human's decision on a pending request.
using apr_decide_atom = caf::atom_constant<caf::atom("apr_decide")>;

/// Subscribes an actor to new requests (it receives each approval_request).
using apr_watch_atom = caf::atom_constant<caf::atom("apr_watch")>;

/// The approval gate.
using approval_gate_actor = caf::typed_actor<
  caf::replies_to<approval_request>::with<approval_decision>,
  caf::replies_to<apr_list_atom>::with<std::vector<approval_request>>,
  caf::replies_to<apr_decide_atom, approval_decision>::with<approval_request>,
  caf::reacts_to<apr_watch_atom, caf::actor>>;

} // namespace troupe
