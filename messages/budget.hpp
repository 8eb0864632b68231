#pragma once

// The budget protocol (its actor arrives with the guardrails):
//   agent -> budget: budget_reserve -> budget_grant | budget_denied
//                    budget_charge (settles a reservation with real usage)
//                    budget_release (gives an unused reservation back)
// Budgets nest (run < team < global); a charge counts against every ancestor.

#include <cstdint>
#include <string>

#include "messages/common.hpp"

namespace troupe {

/// Hard limits of a run; 0 means unlimited.
struct budget_limits {
  int64_t max_steps = 0;
  int64_t max_input_tokens = 0;
  int64_t max_output_tokens = 0;
  double max_cost_usd = 0;
  /// Unix time in milliseconds.
  int64_t deadline_ms = 0;
};
TROUPE_MESSAGE(budget_limits, max_steps, max_input_tokens, max_output_tokens,
               max_cost_usd, deadline_ms)

/// Asks to set aside an estimate before a model call.
struct budget_reserve {
  run_ref ref;
  std::string reservation_id;
  std::string model;
  int64_t steps = 0;
  token_usage estimate;
  double cost_usd = 0;
};
TROUPE_MESSAGE(budget_reserve, ref, reservation_id, model, steps, estimate,
               cost_usd)

/// Settles a reservation with what the call really used.
struct budget_charge {
  run_ref ref;
  std::string reservation_id;
  std::string model;
  int64_t steps = 0;
  token_usage usage;
  double cost_usd = 0;
};
TROUPE_MESSAGE(budget_charge, ref, reservation_id, model, steps, usage,
               cost_usd)

/// Returns an unused reservation.
struct budget_release {
  run_ref ref;
  std::string reservation_id;
};
TROUPE_MESSAGE(budget_release, ref, reservation_id)

/// The reservation was granted; `remaining` is what is left after it.
struct budget_grant {
  std::string reservation_id;
  budget_limits remaining;
  /// True once usage crossed the warning share.
  bool warning = false;
};
TROUPE_MESSAGE(budget_grant, reservation_id, remaining, warning)

/// The reservation was refused; `reason` names the exhausted limit.
struct budget_denied {
  std::string reservation_id;
  std::string reason;
};
TROUPE_MESSAGE(budget_denied, reservation_id, reason)

} // namespace troupe
