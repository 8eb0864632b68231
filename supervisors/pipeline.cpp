#include "supervisors/pipeline.hpp"

#include <algorithm>
#include <set>
#include <stdexcept>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "actors/span_recorder.hpp"
#include "messages/errors.hpp"
#include "runtime/clock.hpp"

namespace troupe {

namespace {

/// How long a stage may take when the task names no deadline.
constexpr auto default_stage_timeout = std::chrono::minutes{10};

struct pipeline_state {
  static inline const char* name = "troupe.pipeline";
  std::string team;
  std::vector<pipeline_stage> stages;
  span_recorder trace;
};

using pipeline_ptr = runnable_actor::stateful_pointer<pipeline_state>;

/// One run through the stages.
struct pipeline_run {
  run_task task;
  caf::typed_response_promise<run_result> promise;
  run_result result;
  std::string span;
};

std::chrono::milliseconds stage_timeout(const run_task& task) {
  if (task.budget.deadline_ms <= 0)
    return default_stage_timeout;
  return std::chrono::milliseconds{
    std::max<int64_t>(task.budget.deadline_ms - now_ms(), 1)};
}

void finish(pipeline_ptr self, std::shared_ptr<pipeline_run> run,
            run_status status, std::string error) {
  auto& r = run->result;
  r.status = status;
  r.error = std::move(error);
  r.ended_ns = now_ns();
  self->state.trace.end(
    run->task.ref.trace_id, run->span,
    [&] {
      return json{{"troupe.run.status", to_string(status)},
                  {"troupe.run.steps", r.steps.size()},
                  {"gen_ai.usage.input_tokens", r.usage.input_tokens},
                  {"gen_ai.usage.output_tokens", r.usage.output_tokens}};
    },
    status == run_status::complete ? "" : r.error);
  run->promise.deliver(std::move(r));
}

void run_stage(pipeline_ptr self, std::shared_ptr<pipeline_run> run,
               size_t index, std::string input) {
  auto& st = self->state;
  if (index == st.stages.size()) {
    run->result.answer = std::move(input);
    finish(self, run, run_status::complete, "");
    return;
  }
  const auto& stage = st.stages[index];
  run_task task = run->task;
  task.goal = std::move(input);
  task.ref.span_id = run->span;
  json context = json::object();
  context["pipeline_goal"] = run->task.goal;
  context["pipeline_stage"] = stage.name;
  task.context = std::move(context);
  auto name = stage.name;
  self->request(stage.runner, stage_timeout(run->task), std::move(task))
    .then(
      [self, run, index, name](run_result& r) {
        auto& out = run->result;
        out.usage += r.usage;
        for (auto& step : r.steps)
          out.steps.push_back(std::move(step));
        if (r.status != run_status::complete) {
          out.answer = r.answer;
          finish(self, run, r.status,
                 "stage " + std::to_string(index + 1) + " ('" + name
                   + "') ended " + to_string(r.status) + ": " + r.error);
          return;
        }
        run_stage(self, run, index + 1, std::move(r.answer));
      },
      [self, run, index, name](caf::error& err) {
        finish(self, run, run_status::failed,
               "stage " + std::to_string(index + 1) + " ('" + name
                 + "') gave no result: " + error_text(err));
      });
}

runnable_actor::behavior_type pipeline(pipeline_ptr self, std::string team,
                                       std::vector<pipeline_stage> stages,
                                       tracer_actor tracer) {
  self->state.team = std::move(team);
  self->state.stages = std::move(stages);
  self->state.trace = span_recorder{std::move(tracer)};
  return {
    [self](run_task& task) -> caf::result<run_result> {
      auto& st = self->state;
      if (task.ref.run_id.empty())
        task.ref.run_id = "run-" + random_hex(8);
      if (task.ref.trace_id.empty())
        task.ref.trace_id = new_trace_id();
      auto run = std::make_shared<pipeline_run>();
      run->promise = self->make_response_promise<run_result>();
      run->result.run_id = task.ref.run_id;
      run->result.agent = st.team;
      run->result.started_ns = now_ns();
      run->span = st.trace.start(task.ref.trace_id, task.ref.span_id,
                                 "invoke_agent " + st.team, [&] {
                                   return json{
                                     {"gen_ai.operation.name", "invoke_agent"},
                                     {"gen_ai.agent.name", st.team},
                                     {"troupe.team.pattern", "pipeline"},
                                     {"troupe.run.id", task.ref.run_id},
                                     {"troupe.team.stages", st.stages.size()}};
                                 });
      auto goal = task.goal;
      run->task = std::move(task);
      auto promise = run->promise;
      run_stage(self, run, 0, std::move(goal));
      return promise;
    },
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
