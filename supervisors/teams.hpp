#pragma once

// Team patterns. Every team answers the run protocol (run_task -> run_result)
// and publishes the same events as an agent, so a team stands wherever an
// agent can: as a worker, a stage, a debater or a judge of another team.
// Hierarchies are teams whose members are teams; there is no depth limit.
//
//   orchestrator_worker  planner -> plan (subtasks, roles, dependencies)
//                        -> subtasks run as a DAG, as parallel as the
//                           dependencies allow; a failed subtask is retried on
//                           another member of its role up to a limit, its
//                           dependents are skipped, the others continue
//                        -> synthesizer merges the results
//   map_reduce           split the input into items -> map them in parallel
//                        over a pool of mappers -> reducer merges
//   debate               N debaters answer in parallel -> optional rebuttal
//                        rounds, each seeing the others' answers -> judge
//   evaluator_optimizer  generator -> evaluator -> again with the feedback,
//                        until the evaluator passes or the round bound
//   pipeline             (supervisors/pipeline.hpp) stage by stage
//
// Members are plain runnables: agents (supervised ones restart on a crash and
// retry the run), or teams. A member that fails, crashes past its retries or
// does not answer in time fails that part of the run, never the team actor.
// The spawn functions check their configuration and throw
// std::invalid_argument naming the team and what is wrong.

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <caf/fwd.hpp>

#include "messages/json_value.hpp"
#include "messages/run.hpp"
#include "messages/trace.hpp"

namespace troupe {

/// A named member of a team.
struct team_member {
  std::string name;
  runnable_actor runner;
};

/// One subtask of a plan.
struct plan_subtask {
  std::string id;
  /// The worker role that runs it.
  std::string role;
  std::string goal;
  /// Ids of the subtasks whose results it needs.
  std::vector<std::string> depends_on;
};

/// A plan: what a planner returns (as JSON, {"subtasks": [{"id", "role",
/// "goal", "depends_on": [...]}]}) or what a swarm file fixes in advance.
struct team_plan {
  std::vector<plan_subtask> subtasks;
};

/// Parses a plan from JSON. Throws std::invalid_argument naming the bad field.
team_plan parse_plan(const json& doc);

/// Checks a plan against the roles a team has: unique non-empty ids, known
/// roles, known dependencies, no cycle, at most `max_subtasks`. Throws
/// std::invalid_argument naming the subtask and what is wrong (for a cycle,
/// the subtasks on it).
void check_plan(const team_plan& plan, const std::vector<std::string>& roles,
                size_t max_subtasks);

/// An orchestrator-worker team.
struct orchestrator_config {
  std::string name;
  /// Returns the plan as structured output. Optional when `plan` is given.
  runnable_actor planner;
  /// A fixed plan, used when there is no planner. "{{goal}}" in a subtask's
  /// goal is replaced by the team's goal.
  team_plan plan;
  /// Workers by role; several members of a role share its subtasks (the
  /// least busy gets the next one) and take over a failed one.
  std::map<std::string, std::vector<team_member>> workers;
  /// Merges the results. Without one the answer lists them.
  runnable_actor synthesizer;
  /// Attempts per subtask (1 = no retry); a retry goes to another member of
  /// the role when it has one.
  int32_t max_attempts = 2;
  /// Subtasks running at once; 0 = as many as the dependencies allow.
  int32_t max_parallel = 0;
  /// A plan with more subtasks is rejected.
  int32_t max_subtasks = 1000;
  /// How often the planner is asked again after a plan was rejected (the
  /// rejection is fed back to it).
  int32_t plan_retries = 1;
  tracer_actor tracer;
};

runnable_actor spawn_orchestrator(caf::actor_system& sys,
                                  orchestrator_config cfg);

/// Splits a map_reduce run's input into items.
using split_fn = std::function<std::vector<std::string>(const run_task&)>;

/// A map-reduce team.
struct map_reduce_config {
  std::string name;
  /// Splits the input; by default the context's "items" array when it has
  /// one, else the goal's non-empty lines.
  split_fn split;
  /// Optional: an agent whose answer (a JSON array of strings) is the split;
  /// it takes precedence over `split`.
  runnable_actor splitter;
  /// The pool of mappers: each item goes to the least busy one.
  std::vector<team_member> mappers;
  /// Merges the mapped results; without one the answer lists them.
  runnable_actor reducer;
  /// Attempts per item (a retry goes to another mapper).
  int32_t max_attempts = 2;
  /// Items mapped at once; 0 = all.
  int32_t max_parallel = 0;
  /// An input with more items is rejected.
  int32_t max_items = 100000;
  tracer_actor tracer;
};

runnable_actor spawn_map_reduce(caf::actor_system& sys, map_reduce_config cfg);

/// A debate.
struct debate_config {
  std::string name;
  /// At least two.
  std::vector<team_member> debaters;
  /// Rebuttal rounds after the first answers (0 = none).
  int32_t rounds = 0;
  /// Decides and explains; required.
  runnable_actor judge;
  tracer_actor tracer;
};

runnable_actor spawn_debate(caf::actor_system& sys, debate_config cfg);

/// An evaluator-optimizer loop.
struct evaluator_optimizer_config {
  std::string name;
  runnable_actor generator;
  /// Answers a verdict: JSON {"pass": bool, "feedback": "..."} (alone or
  /// inside the text), or text that begins with PASS or FAIL.
  runnable_actor evaluator;
  /// Generate-evaluate rounds before the team gives up (status max_steps,
  /// with the last candidate as its answer).
  int32_t max_rounds = 3;
  tracer_actor tracer;
};

runnable_actor spawn_evaluator_optimizer(caf::actor_system& sys,
                                         evaluator_optimizer_config cfg);

} // namespace troupe
