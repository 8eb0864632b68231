#pragma once

// One readable line for each trace record of a guardrail at work: a policy
// decision, an approval, a retry, a breaker transition, a wait in a limiter,
// a confidence route, a warning. `troupe run` prints them as progress, and
// the examples print them to show what the guardrails did.

#include <string>

#include "messages/json_value.hpp"

namespace troupe {

/// The line for a trace record (as trace listeners get it), or "" when the
/// record is not a guardrail event.
std::string describe_guardrail_event(const json& record);

} // namespace troupe
