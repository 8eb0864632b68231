#include "supervisors/team_run.hpp"

#include <algorithm>
#include <array>

#include <spdlog/spdlog.h>

#include "messages/errors.hpp"
#include "runtime/clock.hpp"

namespace troupe {

namespace {

/// How long a member may take when the task names no deadline.
constexpr auto default_member_timeout = std::chrono::minutes{10};

} // namespace

std::shared_ptr<team_run> open_team_run(team_base& st, run_task task,
                                        caf::typed_response_promise<run_result> rp,
                                        json attrs) {
  if (task.ref.run_id.empty())
    task.ref.run_id = "run-" + random_hex(8);
  if (task.ref.trace_id.empty())
    task.ref.trace_id = new_trace_id();
  auto run = std::make_shared<team_run>();
  run->promise = std::move(rp);
  run->result.run_id = task.ref.run_id;
  run->result.agent = st.team;
  run->result.started_ns = now_ns();
  run->span = st.trace.start(task.ref.trace_id, task.ref.span_id,
                             "invoke_agent " + st.team, [&] {
                               json a{{"gen_ai.operation.name", "invoke_agent"},
                                      {"gen_ai.agent.name", st.team},
                                      {"troupe.team.pattern", st.pattern},
                                      {"troupe.run.id", task.ref.run_id},
                                      {"troupe.principal", task.ref.principal}};
                               if (attrs.is_object())
                                 a.update(attrs);
                               return a;
                             });
  if (st.events.wants(event_kind::run_started))
    st.events.publish(started_event(st.team, task));
  run->budget_account = task.ref.run_id + "/" + st.team;
  run->task = std::move(task);
  // Forget the runs already answered before remembering this one, so the
  // list stays as long as the runs in flight.
  auto& open = st.open;
  open.erase(std::remove_if(open.begin(), open.end(),
                            [](const std::weak_ptr<team_run>& w) {
                              auto r = w.lock();
                              return !r || r->closed;
                            }),
             open.end());
  open.push_back(run);
  return run;
}

namespace {

void close_open_runs(team_base& st, run_status status, const std::string& why) {
  auto open = std::move(st.open);
  st.open.clear();
  for (auto& weak : open)
    if (auto run = weak.lock())
      close_team_run(st, *run, status, why);
}

} // namespace

void close_runs_on_exit(caf::scheduled_actor* self, team_base& st) {
  self->set_exit_handler([self, &st](caf::exit_msg& msg) {
    auto why = "team '" + st.team + "' stopped: " + error_text(msg.reason);
    auto status = msg.reason == caf::exit_reason::user_shutdown
                    ? run_status::cancelled
                    : run_status::failed;
    close_open_runs(st, status, why);
    self->quit(msg.reason);
  });
  self->set_exception_handler(
    [&st](caf::scheduled_actor*, std::exception_ptr& eptr) -> caf::error {
      auto why = "team '" + st.team + "' crashed: " + exception_text(eptr);
      spdlog::error("{}", why);
      close_open_runs(st, run_status::failed, why);
      return make_error(errc::crashed, why);
    });
}

void close_team_run(team_base& st, team_run& run, run_status status,
                    std::string error) {
  if (run.closed)
    return;
  run.closed = true;
  auto& r = run.result;
  r.status = status;
  r.error = std::move(error);
  r.ended_ns = now_ns();
  st.trace.end(
    run.task.ref.trace_id, run.span,
    [&] {
      return json{{"troupe.run.status", to_string(status)},
                  {"troupe.run.steps", r.steps.size()},
                  {"gen_ai.usage.input_tokens", r.usage.input_tokens},
                  {"gen_ai.usage.output_tokens", r.usage.output_tokens}};
    },
    status == run_status::complete ? "" : r.error);
  st.events.publish(finished_event(st.team, r, run.task.ref.trace_id));
  run.promise.deliver(std::move(r));
}

run_task member_task(const team_run& run, std::string goal, json context) {
  run_task task;
  task.ref = run.task.ref;
  task.ref.span_id = run.span.empty() ? run.task.ref.span_id : run.span;
  task.budget = run.task.budget;
  task.budget_scopes = run.task.budget_scopes;
  task.budget_scopes.push_back({run.budget_account, run.task.budget});
  task.max_steps = run.task.max_steps;
  task.goal = std::move(goal);
  task.context = std::move(context);
  return task;
}

std::chrono::milliseconds member_timeout(const run_task& task) {
  if (task.budget.deadline_ms <= 0)
    return default_member_timeout;
  return std::chrono::milliseconds{
    std::max<int64_t>(task.budget.deadline_ms - now_ms(), 1)};
}

void absorb(run_result& team, run_result& member) {
  team.usage += member.usage;
  for (auto& step : member.steps)
    team.steps.push_back(std::move(step));
  member.steps.clear();
}

namespace {

json parse_or_null(const std::string& text) {
  auto j = json::parse(text, nullptr, false);
  return j.is_discarded() ? json{} : j;
}

} // namespace

json extract_json(const std::string& text) {
  if (auto whole = parse_or_null(text); !whole.is_null())
    return whole;
  auto fence = text.find("```json");
  if (fence != std::string::npos) {
    auto start = fence + 7;
    auto end = text.find("```", start);
    if (end != std::string::npos)
      if (auto j = parse_or_null(text.substr(start, end - start)); !j.is_null())
        return j;
  }
  // An object or an array, whichever opens first: "Items: [{...}]" is the
  // array, not the object inside it.
  auto brackets = std::array{std::pair{'{', '}'}, std::pair{'[', ']'}};
  if (text.find('[') < text.find('{'))
    std::swap(brackets[0], brackets[1]);
  for (auto [open, close] : brackets) {
    auto first = text.find(open);
    auto last = text.rfind(close);
    if (first != std::string::npos && last != std::string::npos && last > first)
      if (auto j = parse_or_null(text.substr(first, last - first + 1));
          !j.is_null())
        return j;
  }
  return {};
}

} // namespace troupe
