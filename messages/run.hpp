#pragma once

// The run protocol: anyone -> agent or team.
//   run_task{goal, principal, budget, ...} -> run_result{status, answer, steps, usage, error}
// Teams answer the same protocol as agents, so teams nest.

#include <cstdint>
#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/atom.hpp>
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
  /// The budget accounts this run sits in, outermost first (below the
  /// global root): a team adds its own before handing work to members.
  std::vector<budget_scope> budget_scopes;
};
TROUPE_MESSAGE(run_task, ref, goal, budget, max_steps, context, budget_scopes)

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
  /// What the model call cost, in nano-dollars (from the price table).
  int64_t cost_nusd = 0;
};
TROUPE_MESSAGE(step_record, index, reply, usage, tool_results, observations,
               started_ns, ended_ns, cost_nusd)

/// The outcome of a run.
struct run_result {
  std::string run_id;
  std::string agent;
  run_status status = run_status::failed;
  std::string answer;
  std::vector<step_record> steps;
  token_usage usage;
  /// Why the run did not complete; empty when it did, except for a team that
  /// completed although some of its subtasks failed (a partial failure): then
  /// it names them.
  std::string error;
  int64_t started_ns = 0;
  int64_t ended_ns = 0;
  /// What a team did besides its steps (its plan, each subtask's outcome, a
  /// debate's answers...); null for an agent.
  json_value detail;
  /// What the model calls cost, in nano-dollars (from the price table).
  int64_t cost_nusd = 0;
  /// Guardrail warnings raised during the run (budget share crossed, a loop
  /// suspected...), in order.
  std::vector<std::string> warnings;
};
TROUPE_MESSAGE(run_result, run_id, agent, status, answer, steps, usage, error,
               started_ns, ended_ns, detail, cost_nusd, warnings)

/// What happened in a run, as its subscribers see it.
enum class event_kind : uint8_t {
  /// A run began (after waiting in the queue, if it did).
  run_started,
  /// An agent finished one step (a model call and the tools it asked for).
  step_completed,
  /// A run ended with status complete.
  task_completed,
  /// A run ended with any other status.
  task_failed,
  /// A guardrail warns: a budget share crossed, a loop suspected (see detail).
  warning,
  /// An agent paused for a human's approval (detail names the action).
  awaiting_approval,
};

TROUPE_JSON_ENUM(event_kind,
                 {{event_kind::run_started, "run_started"},
                  {event_kind::step_completed, "step_completed"},
                  {event_kind::task_completed, "task_completed"},
                  {event_kind::task_failed, "task_failed"},
                  {event_kind::warning, "warning"},
                  {event_kind::awaiting_approval, "awaiting_approval"}})

/// Text name of an event kind, as in JSON.
const char* to_string(event_kind x);

/// A set of event kinds, for subscribing.
using event_mask = uint32_t;

/// The mask of one kind.
constexpr event_mask mask_of(event_kind x) {
  return event_mask{1} << static_cast<uint32_t>(x);
}

/// Every kind.
constexpr event_mask all_events = 0x3F;

/// One event of an agent or a team, sent to its subscribers.
struct agent_event {
  /// The agent or team that emitted it.
  std::string source;
  event_kind kind = event_kind::run_started;
  std::string run_id;
  std::string trace_id;
  /// The step that completed (step_completed), or the steps taken so far.
  int32_t step = 0;
  /// For task_completed and task_failed: how the run ended, its answer and why.
  run_status status = run_status::complete;
  std::string answer;
  std::string error;
  int64_t time_ns = 0;
  /// For warning and awaiting_approval: what happened, in one line.
  std::string detail;
};
TROUPE_MESSAGE(agent_event, source, kind, run_id, trace_id, step, status,
               answer, error, time_ns, detail)

/// Subscribes an actor (an event_sink) to a runnable's events of the kinds in
/// the mask: (ev_subscribe_atom, caf::actor, event_mask). Subscribing again
/// replaces the mask.
using ev_subscribe_atom = caf::atom_constant<caf::atom("ev_sub")>;

/// Ends a subscription: (ev_unsubscribe_atom, caf::actor).
using ev_unsubscribe_atom = caf::atom_constant<caf::atom("ev_unsub")>;

/// Whoever receives events.
using event_sink = caf::typed_actor<caf::reacts_to<agent_event>>;

/// Anything that runs tasks: an agent or a team. Every runnable also publishes
/// its events to subscribers, so an observer or another agent is woken by them
/// instead of polling.
using runnable_actor =
  caf::typed_actor<caf::replies_to<run_task>::with<run_result>,
                   caf::reacts_to<ev_subscribe_atom, caf::actor, event_mask>,
                   caf::reacts_to<ev_unsubscribe_atom, caf::actor>>;

} // namespace troupe
