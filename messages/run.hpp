#pragma once

// The run protocol: anyone -> agent or team.
//   run_task{goal, principal, budget, ...} -> run_result{status, answer, steps, usage, error}
// Teams answer the same protocol as agents, so teams nest.

#include <cstdint>
#include <string>
#include <vector>

#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include "messages/budget.hpp"
#include "messages/common.hpp"
#include "messages/model.hpp"
#include "messages/tool.hpp"

namespace troupe {

/// How a run ended.
enum class run_status : uint8_t {
  /// The model gave a final answer.
  complete,
  /// The step limit was reached before a final answer.
  max_steps,
  /// An unrecoverable error (the model endpoint failed, the agent crashed...).
  failed,
  /// A guardrail stopped the run (budget, deadline, breaker).
  halted,
  /// Someone cancelled the run.
  cancelled,
};

TROUPE_JSON_ENUM(run_status, {{run_status::complete, "complete"},
                                          {run_status::max_steps, "max_steps"},
                                          {run_status::failed, "failed"},
                                          {run_status::halted, "halted"},
                                          {run_status::cancelled, "cancelled"}})

/// Text name of a status, as in JSON and traces.
const char* to_string(run_status x);

/// Asks an agent or a team to pursue a goal.
struct run_task {
  run_ref ref;
  std::string goal;
  budget_limits budget;
  /// Overrides the agent's own step limit when > 0 (the smaller one wins).
  int32_t max_steps = 0;
  /// Extra input for the run (structured context, a subtask's inputs).
  json_value context;
};
TROUPE_MESSAGE(run_task, ref, goal, budget, max_steps, context)

/// What one step did: the model's reply and the tool calls it led to.
struct step_record {
  int32_t index = 0;
  chat_message reply;
  token_usage usage;
  std::vector<tool_result> tool_results;
  /// What the runtime told the model instead of running something (a malformed
  /// reply, an unknown tool...).
  std::vector<std::string> observations;
  int64_t started_ns = 0;
  int64_t ended_ns = 0;
};
TROUPE_MESSAGE(step_record, index, reply, usage, tool_results, observations,
               started_ns, ended_ns)

/// The outcome of a run.
struct run_result {
  std::string run_id;
  std::string agent;
  run_status status = run_status::failed;
  std::string answer;
  std::vector<step_record> steps;
  token_usage usage;
  /// Why the run did not complete; empty when it did.
  std::string error;
  int64_t started_ns = 0;
  int64_t ended_ns = 0;
};
TROUPE_MESSAGE(run_result, run_id, agent, status, answer, steps, usage, error,
               started_ns, ended_ns)

/// Anything that runs tasks: an agent or a team.
using runnable_actor =
  caf::typed_actor<caf::replies_to<run_task>::with<run_result>>;

} // namespace troupe
