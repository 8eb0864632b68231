#include "supervisors/pipeline.hpp"

#include <algorithm>
#include <set>
#include <stdexcept>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "messages/errors.hpp"
#include "supervisors/team_run.hpp"

namespace troupe {

namespace {

struct pipeline_state : team_base {
  static inline const char* name = "troupe.pipeline";
  std::vector<pipeline_stage> stages;
};

using pipeline_ptr = runnable_actor::stateful_pointer<pipeline_state>;
using run_ptr = std::shared_ptr<team_run>;

void run_stage(pipeline_ptr self, run_ptr run, size_t index, std::string input) {
  auto& st = self->state;
  if (index == st.stages.size()) {
    run->result.answer = std::move(input);
    close_team_run(st, *run, run_status::complete, "");
    return;
  }
  const auto& stage = st.stages[index];
  // The work done so far, should this stage end without an answer of its own.
  auto done_so_far = index > 0 ? input : std::string{};
  auto task = member_task(*run, std::move(input),
                          json{{"pipeline_goal", run->task.goal},
                               {"pipeline_stage", stage.name}});
  auto name = stage.name;
  self->request(stage.runner, member_timeout(run->task), std::move(task))
    .then(
      [self, run, index, name, done_so_far](run_result& r) {
        absorb(run->result, r);
        if (r.status != run_status::complete) {
          run->result.answer = r.answer.empty() ? done_so_far : r.answer;
          close_team_run(self->state, *run, r.status,
                         "stage " + std::to_string(index + 1) + " ('" + name
                           + "') ended " + to_string(r.status) + ": " + r.error);
          return;
        }
        run_stage(self, run, index + 1, std::move(r.answer));
      },
      [self, run, index, name, done_so_far](caf::error& err) {
        run->result.answer = done_so_far;
        close_team_run(self->state, *run, run_status::failed,
                       "stage " + std::to_string(index + 1) + " ('" + name
                         + "') gave no result: " + error_text(err));
      });
}

runnable_actor::behavior_type pipeline(pipeline_ptr self, std::string team,
                                       std::vector<pipeline_stage> stages,
                                       tracer_actor tracer) {
  auto& st = self->state;
  st.team = std::move(team);
  st.pattern = "pipeline";
  st.stages = std::move(stages);
  st.trace = span_recorder{std::move(tracer)};
  close_runs_on_exit(self, st);
  return {
    [self](run_task& task) -> caf::result<run_result> {
      auto& st = self->state;
      auto rp = self->make_response_promise<run_result>();
      auto run = open_team_run(st, std::move(task), rp,
                               json{{"troupe.team.stages", st.stages.size()}});
      run_stage(self, run, 0, run->task.goal);
      return rp;
    },
    subscribe_handler(self),
    unsubscribe_handler(self),
  };
}

} // namespace

runnable_actor spawn_pipeline(caf::actor_system& sys, std::string name,
                              std::vector<pipeline_stage> stages,
                              tracer_actor tracer) {
  if (stages.empty())
    throw std::invalid_argument("pipeline '" + name + "' has no stages");
  std::set<std::string> seen;
  for (size_t i = 0; i < stages.size(); ++i) {
    if (!stages[i].runner)
      throw std::invalid_argument("pipeline '" + name + "': stage "
                                  + std::to_string(i + 1) + " ('"
                                  + stages[i].name + "') has no runner");
    if (!seen.insert(stages[i].name).second)
      throw std::invalid_argument("pipeline '" + name + "': stage name '"
                                  + stages[i].name + "' is used twice");
  }
  return sys.spawn(pipeline, std::move(name), std::move(stages),
                   std::move(tracer));
}

} // namespace troupe
