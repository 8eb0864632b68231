#pragma once

// The approval protocol (its actor, the approval gate, arrives with the guardrails):
//   agent -> gate: approval_request -> approval_decision
//   human (CLI, HTTP) -> gate: approval_decision

#include <cstdint>
#include <string>

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

} // namespace troupe
