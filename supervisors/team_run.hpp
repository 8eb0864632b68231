#pragma once

// What every team shares when it answers the run protocol: one run's identity,
// its invoke_agent span, its events, and the merged result of its members. A
// team's coordinator keeps a team_base in its state and a team_run per run.

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <caf/scheduled_actor.hpp>
#include <caf/typed_response_promise.hpp>

#include "actors/events.hpp"
#include "actors/span_recorder.hpp"
#include "messages/json_value.hpp"
#include "messages/run.hpp"

namespace troupe {

struct team_run;

/// The part of a team coordinator's state that every pattern has.
struct team_base {
  std::string team;
  /// "pipeline", "orchestrator_worker", "debate"...
  std::string pattern;
  span_recorder trace;
  event_hub events;
  /// The runs not yet answered, so that a team that stops or crashes answers
  /// them (as an agent does) instead of leaving their callers to time out.
  std::vector<std::weak_ptr<team_run>> open;
};

/// One run of a team.
struct team_run {
  run_task task;
  caf::typed_response_promise<run_result> promise;
  run_result result;
  /// The team's invoke_agent span: the parent of its members' runs.
  std::string span;
  /// The team's budget account for this run: its members' runs sit in it.
  std::string budget_account;
  bool closed = false;
};

/// Gives the task a run id and trace id when it has none, opens the team's
/// span (with `attrs` added to its attributes) and publishes run_started.
std::shared_ptr<team_run> open_team_run(team_base& st, run_task task,
                                        caf::typed_response_promise<run_result> rp,
                                        json attrs = json::object());

/// Ends the run once: sets status and error, ends the span, publishes the
/// outcome and answers the caller. Later calls do nothing.
void close_team_run(team_base& st, team_run& run, run_status status,
                    std::string error);

/// Makes the team answer its open runs when it stops: an exit message ends
/// them as cancelled (user_shutdown) or failed, "team 'x' stopped: ...", and
/// an exception escaping a handler ends them as failed, "team 'x' crashed:
/// ...", before the team quits.
void close_runs_on_exit(caf::scheduled_actor* self, team_base& st);

/// The task a member gets: the team's identity, budget and deadline, the
/// team's span as parent, the team's budget account as the member's parent
/// account (so the team's limits cap its members together), and its own goal
/// and context.
run_task member_task(const team_run& run, std::string goal,
                     json context = json::object());

/// How long the team waits for a member: what is left of the deadline, or
/// ten minutes when the task names none.
std::chrono::milliseconds member_timeout(const run_task& task);

/// Adds a member's usage and steps to the team's result.
void absorb(run_result& team, run_result& member);

/// Finds the JSON value in a model's answer: the whole text, or else the
/// first fenced ```json block, or else the text from the first '{' or '['
/// to the last matching '}' or ']'. Returns null when there is none.
json extract_json(const std::string& text);

} // namespace troupe
