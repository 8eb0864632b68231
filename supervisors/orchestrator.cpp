// The coordinator behind orchestrator_worker and map_reduce: a plan (from a
// planner, a fixed plan, or a split input) runs as a DAG over pools of
// members, then a synthesizer (or reducer) merges the results.

#include <algorithm>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>
#include <spdlog/spdlog.h>

#include "messages/errors.hpp"
#include "runtime/clock.hpp"
#include "supervisors/team_run.hpp"
#include "supervisors/teams.hpp"

namespace troupe {

namespace {

/// The role map_reduce gives its items.
constexpr const char* map_role = "map";

enum class sub_phase { waiting, running, done, failed, skipped };

const char* to_string(sub_phase x) {
  switch (x) {
    case sub_phase::waiting:
      return "waiting";
    case sub_phase::running:
      return "running";
    case sub_phase::done:
      return "complete";
    case sub_phase::failed:
      return "failed";
    case sub_phase::skipped:
      return "skipped";
  }
  return "unknown";
}

struct sub_state {
  plan_subtask spec;
  sub_phase phase = sub_phase::waiting;
  int32_t attempts = 0;
  size_t deps_left = 0;
  std::vector<size_t> dependents;
  /// Index of the member that ran the latest attempt (in its role's pool).
  size_t member = 0;
  std::string member_name;
  std::string answer;
  std::string error;
  int64_t started_ns = 0;
  int64_t ended_ns = 0;
};

/// One run through the DAG.
struct dag_run {
  std::shared_ptr<team_run> run;
  std::vector<sub_state> subs;
  std::deque<size_t> ready;
  size_t running = 0;
  size_t settled = 0;
  json plan_json = json::array();
  /// Subtask id to its place in subs.
  std::map<std::string, size_t> index;
};

/// The members of one role, least busy first.
struct pool {
  std::vector<team_member> members;
  /// Subtasks in flight per member, over every run of the team.
  std::vector<int32_t> load;
  /// (load, member) for every member: the first is the least busy, so a
  /// launch costs O(log members) however large the pool.
  std::set<std::pair<int32_t, size_t>> by_load;

  void init() {
    load.assign(members.size(), 0);
    by_load.clear();
    for (size_t k = 0; k < members.size(); ++k)
      by_load.emplace(0, k);
  }

  void add_load(size_t k, int32_t delta) {
    by_load.erase({load[k], k});
    load[k] += delta;
    by_load.emplace(load[k], k);
  }

  /// The least busy member, other than `avoid` when there is another.
  size_t pick(std::optional<size_t> avoid) const {
    auto it = by_load.begin();
    if (avoid && it->second == *avoid && members.size() > 1)
      ++it;
    return it->second;
  }
};

struct coordinator_state : team_base {
  static inline const char* name = "troupe.coordinator";
  bool map_reduce = false;
  runnable_actor planner;
  team_plan fixed_plan;
  runnable_actor splitter;
  split_fn split;
  std::map<std::string, pool> roles;
  std::vector<std::string> role_names;
  runnable_actor synthesizer;
  int32_t max_attempts = 2;
  int32_t max_parallel = 0;
  int32_t max_subtasks = 1000;
  int32_t plan_retries = 1;
};

using coord_ptr = runnable_actor::stateful_pointer<coordinator_state>;
using dag_ptr = std::shared_ptr<dag_run>;

void dispatch(coord_ptr self, dag_ptr dag);

std::string replace_all(std::string s, const std::string& from,
                        const std::string& to) {
  for (size_t pos = 0; (pos = s.find(from, pos)) != std::string::npos;
       pos += to.size())
    s.replace(pos, from.size(), to);
  return s;
}

json plan_to_json(const team_plan& plan) {
  auto out = json::array();
  for (const auto& s : plan.subtasks)
    out.push_back(json{{"id", s.id},
                       {"role", s.role},
                       {"goal", s.goal},
                       {"depends_on", s.depends_on}});
  return out;
}

void fail(coord_ptr self, team_run& run, std::string why) {
  close_team_run(self->state, run, run_status::failed, std::move(why));
}

json detail_of(coord_ptr self, const dag_run& dag) {
  auto subs = json::array();
  for (const auto& s : dag.subs) {
    json j{{"id", s.spec.id},
           {"role", s.spec.role},
           {"status", to_string(s.phase)},
           {"attempts", s.attempts},
           {"member", s.member_name},
           {"started_ns", s.started_ns},
           {"ended_ns", s.ended_ns}};
    if (!s.error.empty())
      j["error"] = s.error;
    subs.push_back(std::move(j));
  }
  return json{{"pattern", self->state.pattern},
              {"plan", dag.plan_json},
              {"subtasks", std::move(subs)}};
}

/// Everything has settled: merge.
void synthesize(coord_ptr self, dag_ptr dag) {
  auto& st = self->state;
  auto& run = *dag->run;
  std::string results;
  std::vector<std::string> failures;
  auto failed_json = json::array();
  size_t done = 0;
  size_t failed = 0;
  size_t skipped = 0;
  for (const auto& s : dag->subs) {
    auto label = "[" + s.spec.id + (st.map_reduce ? "" : " (" + s.spec.role + ")")
                 + "]";
    if (s.phase == sub_phase::done) {
      ++done;
      results += label + " " + s.answer + "\n";
    } else {
      results += label + " FAILED: " + s.error + "\n";
      failures.push_back(s.spec.id + ": " + s.error);
      ++(s.phase == sub_phase::skipped ? skipped : failed);
      failed_json.push_back(s.spec.id);
    }
  }
  run.result.detail = detail_of(self, *dag);
  std::string which;
  for (size_t i = 0; i < failures.size() && i < 5; ++i)
    which += (i == 0 ? "" : "; ") + failures[i];
  if (failures.size() > 5)
    which += "; ...";
  if (done == 0) {
    fail(self, run, "every subtask failed: " + which);
    return;
  }
  std::string partial;
  if (!failures.empty()) {
    partial = "partial failure: " + std::to_string(failed) + " of "
              + std::to_string(dag->subs.size()) + " subtask(s) failed";
    if (skipped > 0)
      partial += " and " + std::to_string(skipped) + " were skipped";
    partial += ": " + which;
  }
  if (!st.synthesizer) {
    run.result.answer = results;
    close_team_run(st, run, run_status::complete, partial);
    return;
  }
  auto goal = run.task.goal + "\n\nResults:\n" + results;
  auto task = member_task(run, std::move(goal),
                          json{{"team", st.team},
                               {"merge", st.map_reduce ? "reduce" : "synthesize"},
                               {"failed", std::move(failed_json)}});
  auto what = st.map_reduce ? "reducer" : "synthesizer";
  self->request(st.synthesizer, member_timeout(run.task), std::move(task))
    .then(
      [self, dag, partial, what](run_result& r) {
        auto& run = *dag->run;
        absorb(run.result, r);
        run.result.answer = r.answer;
        if (r.status != run_status::complete) {
          close_team_run(self->state, run, r.status,
                         std::string{what} + " ended " + to_string(r.status)
                           + ": " + r.error);
          return;
        }
        close_team_run(self->state, run, run_status::complete, partial);
      },
      [self, dag, what](caf::error& err) {
        fail(self, *dag->run,
             std::string{what} + " gave no result: " + error_text(err));
      });
}

void settle(coord_ptr self, dag_ptr dag) {
  if (dag->settled == dag->subs.size())
    synthesize(self, dag);
  else
    dispatch(self, dag);
}

/// Marks a subtask's dependents (and theirs) skipped.
void skip_dependents(coord_ptr self, dag_run& dag, size_t i) {
  std::vector<size_t> todo{i};
  while (!todo.empty()) {
    auto k = todo.back();
    todo.pop_back();
    for (auto d : dag.subs[k].dependents) {
      auto& dep = dag.subs[d];
      if (dep.phase != sub_phase::waiting)
        continue;
      dep.phase = sub_phase::skipped;
      dep.error = "skipped: it depends on '" + dag.subs[k].spec.id
                  + "', which did not complete";
      ++dag.settled;
      self->state.trace.event(dag.run->task.ref.trace_id, dag.run->span,
                              "team.subtask.skipped", [&] {
                                return json{{"troupe.subtask.id", dep.spec.id},
                                            {"troupe.subtask.error", dep.error}};
                              });
      todo.push_back(d);
    }
  }
}

void attempt_ended(coord_ptr self, dag_ptr dag, size_t i, bool ok,
                   std::string answer_or_error) {
  auto& st = self->state;
  auto& s = dag->subs[i];
  st.roles.at(s.spec.role).add_load(s.member, -1);
  --dag->running;
  s.ended_ns = now_ns();
  if (dag->run->closed)
    return;
  const auto& trace_id = dag->run->task.ref.trace_id;
  if (ok) {
    s.phase = sub_phase::done;
    s.answer = std::move(answer_or_error);
    s.error.clear();
    ++dag->settled;
    for (auto d : s.dependents)
      if (--dag->subs[d].deps_left == 0 && dag->subs[d].phase == sub_phase::waiting)
        dag->ready.push_back(d);
    st.trace.event(trace_id, dag->run->span, "team.subtask.complete", [&] {
      return json{{"troupe.subtask.id", s.spec.id},
                  {"troupe.subtask.member", s.member_name},
                  {"troupe.subtask.attempts", s.attempts}};
    });
  } else {
    s.error = std::move(answer_or_error);
    if (s.attempts < st.max_attempts) {
      spdlog::warn("team {}: subtask {} failed on {} (attempt {} of {}): {}",
                   st.team, s.spec.id, s.member_name, s.attempts,
                   st.max_attempts, s.error);
      st.trace.event(trace_id, dag->run->span, "team.subtask.retry", [&] {
        return json{{"troupe.subtask.id", s.spec.id},
                    {"troupe.subtask.member", s.member_name},
                    {"troupe.subtask.attempt", s.attempts},
                    {"troupe.subtask.error", s.error}};
      });
      s.phase = sub_phase::waiting;
      dag->ready.push_front(i);
    } else {
      s.phase = sub_phase::failed;
      s.error = "failed after " + std::to_string(s.attempts)
                + " attempt(s), last on '" + s.member_name + "': " + s.error;
      ++dag->settled;
      st.trace.event(trace_id, dag->run->span, "team.subtask.failed", [&] {
        return json{{"troupe.subtask.id", s.spec.id},
                    {"troupe.subtask.error", s.error}};
      });
      skip_dependents(self, *dag, i);
    }
  }
  settle(self, dag);
}

void launch(coord_ptr self, dag_ptr dag, size_t i) {
  auto& st = self->state;
  auto& run = *dag->run;
  auto& s = dag->subs[i];
  auto& p = st.roles.at(s.spec.role);
  // A retry goes to another member than the one that just failed it.
  s.member = p.pick(s.attempts > 0 ? std::optional<size_t>{s.member}
                                   : std::nullopt);
  s.member_name = p.members[s.member].name;
  p.add_load(s.member, 1);
  ++dag->running;
  ++s.attempts;
  s.phase = sub_phase::running;
  if (s.started_ns == 0)
    s.started_ns = now_ns();
  auto goal = s.spec.goal;
  if (!s.spec.depends_on.empty()) {
    goal += "\n\nResults you build on:";
    for (const auto& d : s.spec.depends_on)
      goal += "\n[" + d + "] " + dag->subs[dag->index.at(d)].answer;
  }
  json context = st.map_reduce
                   ? json{{"team", st.team}, {"item", s.spec.id}}
                   : json{{"team", st.team},
                          {"team_goal", run.task.goal},
                          {"subtask", s.spec.id},
                          {"role", s.spec.role}};
  if (s.attempts > 1)
    context["attempt"] = s.attempts;
  st.trace.event(run.task.ref.trace_id, run.span, "team.subtask.start", [&] {
    return json{{"troupe.subtask.id", s.spec.id},
                {"troupe.subtask.role", s.spec.role},
                {"troupe.subtask.member", s.member_name},
                {"troupe.subtask.attempt", s.attempts}};
  });
  self
    ->request(p.members[s.member].runner, member_timeout(run.task),
              member_task(run, std::move(goal), std::move(context)))
    .then(
      [self, dag, i](run_result& r) {
        absorb(dag->run->result, r);
        if (r.status == run_status::complete)
          attempt_ended(self, dag, i, true, std::move(r.answer));
        else
          attempt_ended(self, dag, i, false,
                        std::string{"ended "} + to_string(r.status) + ": "
                          + r.error);
      },
      [self, dag, i](caf::error& err) {
        attempt_ended(self, dag, i, false, "no result: " + error_text(err));
      });
}

void dispatch(coord_ptr self, dag_ptr dag) {
  auto limit = self->state.max_parallel;
  while (!dag->ready.empty() && !dag->run->closed
         && (limit <= 0 || dag->running < static_cast<size_t>(limit))) {
    auto i = dag->ready.front();
    dag->ready.pop_front();
    launch(self, dag, i);
  }
}

void start_dag(coord_ptr self, std::shared_ptr<team_run> run, team_plan plan) {
  auto dag = std::make_shared<dag_run>();
  dag->run = std::move(run);
  dag->plan_json = plan_to_json(plan);
  auto& index = dag->index;
  for (size_t i = 0; i < plan.subtasks.size(); ++i) {
    index.emplace(plan.subtasks[i].id, i);
    sub_state s;
    s.spec = std::move(plan.subtasks[i]);
    dag->subs.push_back(std::move(s));
  }
  for (size_t i = 0; i < dag->subs.size(); ++i) {
    auto& s = dag->subs[i];
    s.deps_left = s.spec.depends_on.size();
    for (const auto& d : s.spec.depends_on)
      dag->subs[index.at(d)].dependents.push_back(i);
    if (s.deps_left == 0)
      dag->ready.push_back(i);
  }
  auto& st = self->state;
  st.trace.event(dag->run->task.ref.trace_id, dag->run->span, "team.plan",
                 [&] { return json{{"troupe.plan", dag->plan_json}}; });
  dispatch(self, dag);
}

void ask_planner(coord_ptr self, std::shared_ptr<team_run> run,
                 int32_t attempt, std::string rejection) {
  auto& st = self->state;
  auto goal = run->task.goal;
  if (!rejection.empty())
    goal += "\n\nYour previous plan was rejected: " + rejection
            + "\nReply with a corrected plan.";
  json context{{"team", st.team}, {"roles", st.role_names}};
  if (attempt > 1)
    context["attempt"] = attempt;
  self
    ->request(st.planner, member_timeout(run->task),
              member_task(*run, std::move(goal), std::move(context)))
    .then(
      [self, run, attempt](run_result& r) {
        auto& st = self->state;
        absorb(run->result, r);
        if (r.status != run_status::complete) {
          close_team_run(st, *run, r.status,
                         std::string{"planner ended "} + to_string(r.status)
                           + ": " + r.error);
          return;
        }
        team_plan plan;
        std::string why;
        try {
          auto doc = extract_json(r.answer);
          if (doc.is_null())
            throw std::invalid_argument("the answer holds no JSON plan");
          plan = parse_plan(doc);
          check_plan(plan, st.role_names, static_cast<size_t>(st.max_subtasks));
        } catch (const std::exception& e) {
          why = e.what();
        }
        if (why.empty()) {
          start_dag(self, run, std::move(plan));
          return;
        }
        st.trace.event(run->task.ref.trace_id, run->span, "team.plan.rejected",
                       [&] { return json{{"troupe.plan.error", why},
                                         {"troupe.plan.attempt", attempt}}; });
        if (attempt <= st.plan_retries) {
          spdlog::warn("team {}: plan rejected (attempt {}): {}", st.team,
                       attempt, why);
          ask_planner(self, run, attempt + 1, why);
          return;
        }
        close_team_run(st, *run, run_status::failed,
                       "the planner's plan was rejected after "
                         + std::to_string(attempt) + " attempt(s): " + why);
      },
      [self, run](caf::error& err) {
        close_team_run(self->state, *run, run_status::failed,
                       "planner gave no result: " + error_text(err));
      });
}

team_plan items_plan(const std::vector<std::string>& items) {
  team_plan plan;
  plan.subtasks.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i)
    plan.subtasks.push_back({"item-" + std::to_string(i + 1), map_role, items[i], {}});
  return plan;
}

void start_map(coord_ptr self, std::shared_ptr<team_run> run,
               std::vector<std::string> items) {
  auto& st = self->state;
  if (items.empty()) {
    close_team_run(st, *run, run_status::failed,
                   "nothing to map: the input split into no items");
    return;
  }
  if (items.size() > static_cast<size_t>(st.max_subtasks)) {
    close_team_run(st, *run, run_status::failed,
                   "the input split into " + std::to_string(items.size())
                     + " items, more than the limit of "
                     + std::to_string(st.max_subtasks));
    return;
  }
  start_dag(self, std::move(run), items_plan(items));
}

/// The default split: the context's "items" (strings kept, other values as
/// JSON text), else the goal's non-empty lines.
std::vector<std::string> default_split(const run_task& task) {
  std::vector<std::string> items;
  const auto& ctx = task.context.value;
  if (ctx.is_object() && ctx.contains("items") && ctx["items"].is_array()) {
    for (const auto& x : ctx["items"])
      items.push_back(x.is_string() ? x.get<std::string>() : safe_dump(x));
    return items;
  }
  size_t pos = 0;
  const auto& g = task.goal;
  while (pos <= g.size()) {
    auto end = g.find('\n', pos);
    if (end == std::string::npos)
      end = g.size();
    auto line = g.substr(pos, end - pos);
    auto first = line.find_first_not_of(" \t\r");
    if (first != std::string::npos) {
      auto last = line.find_last_not_of(" \t\r");
      items.push_back(line.substr(first, last - first + 1));
    }
    pos = end + 1;
  }
  return items;
}

void ask_splitter(coord_ptr self, std::shared_ptr<team_run> run) {
  auto& st = self->state;
  self
    ->request(st.splitter, member_timeout(run->task),
              member_task(*run, run->task.goal,
                          json{{"team", st.team}, {"split", true}}))
    .then(
      [self, run](run_result& r) {
        auto& st = self->state;
        absorb(run->result, r);
        if (r.status != run_status::complete) {
          close_team_run(st, *run, r.status,
                         std::string{"splitter ended "} + to_string(r.status)
                           + ": " + r.error);
          return;
        }
        auto doc = extract_json(r.answer);
        if (!doc.is_array()) {
          close_team_run(st, *run, run_status::failed,
                         "the splitter's answer is not a JSON array of items: "
                           + r.answer.substr(0, 200));
          return;
        }
        std::vector<std::string> items;
        for (const auto& x : doc)
          items.push_back(x.is_string() ? x.get<std::string>() : safe_dump(x));
        start_map(self, run, std::move(items));
      },
      [self, run](caf::error& err) {
        close_team_run(self->state, *run, run_status::failed,
                       "splitter gave no result: " + error_text(err));
      });
}

void start(coord_ptr self, std::shared_ptr<team_run> run) {
  auto& st = self->state;
  if (st.map_reduce) {
    if (st.splitter) {
      ask_splitter(self, std::move(run));
      return;
    }
    std::vector<std::string> items;
    try {
      items = st.split ? st.split(run->task) : default_split(run->task);
    } catch (...) {
      // A user's split function may throw anything; only this run fails.
      close_team_run(st, *run, run_status::failed,
                     "splitting the input failed: "
                       + exception_text(std::current_exception()));
      return;
    }
    start_map(self, std::move(run), std::move(items));
    return;
  }
  if (st.planner) {
    ask_planner(self, std::move(run), 1, "");
    return;
  }
  auto plan = st.fixed_plan;
  for (auto& s : plan.subtasks)
    s.goal = replace_all(std::move(s.goal), "{{goal}}", run->task.goal);
  start_dag(self, std::move(run), std::move(plan));
}

runnable_actor::behavior_type coordinator(coord_ptr self,
                                          std::shared_ptr<coordinator_state> init) {
  auto& st = self->state;
  static_cast<coordinator_state&>(st) = std::move(*init);
  close_runs_on_exit(self, st);
  return {
    [self](run_task& task) -> caf::result<run_result> {
      auto& st = self->state;
      auto rp = self->make_response_promise<run_result>();
      auto run = open_team_run(st, std::move(task), rp);
      start(self, std::move(run));
      return rp;
    },
    subscribe_handler(self),
    unsubscribe_handler(self),
  };
}

[[noreturn]] void bad_team(const std::string& team, const std::string& what) {
  throw std::invalid_argument("team '" + team + "': " + what);
}

void check_member(const std::string& team, const std::string& what,
                  const team_member& m) {
  if (m.name.empty())
    bad_team(team, what + " has no name");
  if (!m.runner)
    bad_team(team, what + " '" + m.name + "' has no runner");
}

void check_limits(const std::string& team, int32_t max_attempts,
                  int32_t max_parallel, int32_t max_subtasks,
                  const char* subtasks_name) {
  if (max_attempts < 1)
    bad_team(team, "max_attempts must be at least 1");
  if (max_parallel < 0)
    bad_team(team, "max_parallel must not be negative");
  if (max_subtasks < 1)
    bad_team(team, std::string{subtasks_name} + " must be at least 1");
}

} // namespace

runnable_actor spawn_orchestrator(caf::actor_system& sys,
                                  orchestrator_config cfg) {
  const auto& team = cfg.name;
  if (team.empty())
    throw std::invalid_argument("an orchestrator team needs a name");
  check_limits(team, cfg.max_attempts, cfg.max_parallel, cfg.max_subtasks,
               "max_subtasks");
  if (cfg.plan_retries < 0)
    bad_team(team, "plan_retries must not be negative");
  if (cfg.workers.empty())
    bad_team(team, "has no workers");
  auto st = std::make_shared<coordinator_state>();
  std::set<std::string> names;
  for (auto& [role, members] : cfg.workers) {
    if (role.empty())
      bad_team(team, "a worker role has an empty name");
    if (members.empty())
      bad_team(team, "role '" + role + "' has no members");
    for (const auto& m : members) {
      check_member(team, "a worker of role '" + role + "'", m);
      if (!names.insert(m.name).second)
        bad_team(team, "member name '" + m.name + "' is used twice");
    }
    st->role_names.push_back(role);
    pool p;
    p.members = std::move(members);
    p.init();
    st->roles.emplace(role, std::move(p));
  }
  if (!cfg.planner) {
    if (cfg.plan.subtasks.empty())
      bad_team(team, "needs a planner or a fixed plan");
    try {
      check_plan(cfg.plan, st->role_names, static_cast<size_t>(cfg.max_subtasks));
    } catch (const std::exception& e) {
      bad_team(team, std::string{"plan: "} + e.what());
    }
  }
  st->team = team;
  st->pattern = "orchestrator_worker";
  st->trace = span_recorder{std::move(cfg.tracer)};
  st->planner = std::move(cfg.planner);
  st->fixed_plan = std::move(cfg.plan);
  st->synthesizer = std::move(cfg.synthesizer);
  st->max_attempts = cfg.max_attempts;
  st->max_parallel = cfg.max_parallel;
  st->max_subtasks = cfg.max_subtasks;
  st->plan_retries = cfg.plan_retries;
  return sys.spawn(coordinator, std::move(st));
}

runnable_actor spawn_map_reduce(caf::actor_system& sys, map_reduce_config cfg) {
  const auto& team = cfg.name;
  if (team.empty())
    throw std::invalid_argument("a map_reduce team needs a name");
  check_limits(team, cfg.max_attempts, cfg.max_parallel, cfg.max_items,
               "max_items");
  if (cfg.mappers.empty())
    bad_team(team, "has no mappers");
  std::set<std::string> names;
  for (const auto& m : cfg.mappers) {
    check_member(team, "a mapper", m);
    if (!names.insert(m.name).second)
      bad_team(team, "mapper name '" + m.name + "' is used twice");
  }
  auto st = std::make_shared<coordinator_state>();
  st->team = team;
  st->pattern = "map_reduce";
  st->map_reduce = true;
  st->trace = span_recorder{std::move(cfg.tracer)};
  st->splitter = std::move(cfg.splitter);
  st->split = std::move(cfg.split);
  pool p;
  p.members = std::move(cfg.mappers);
  p.init();
  st->roles.emplace(map_role, std::move(p));
  st->role_names.push_back(map_role);
  st->synthesizer = std::move(cfg.reducer);
  st->max_attempts = cfg.max_attempts;
  st->max_parallel = cfg.max_parallel;
  st->max_subtasks = cfg.max_items;
  return sys.spawn(coordinator, std::move(st));
}

} // namespace troupe
