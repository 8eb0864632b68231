// The debate team: debaters answer in parallel, rebut each other for a number
// of rounds, and a judge decides.

#include <stdexcept>
#include <set>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>
#include <spdlog/spdlog.h>

#include "messages/errors.hpp"
#include "supervisors/team_run.hpp"
#include "supervisors/teams.hpp"

namespace troupe {

namespace {

struct debate_state : team_base {
  static inline const char* name = "troupe.debate";
  std::vector<team_member> debaters;
  int32_t rounds = 0;
  runnable_actor judge;
};

using debate_ptr = runnable_actor::stateful_pointer<debate_state>;

struct debate_run {
  std::shared_ptr<team_run> run;
  /// Each debater's answers, one per round it answered.
  std::vector<std::vector<std::string>> answers;
  /// Why a debater dropped out; empty while it takes part.
  std::vector<std::string> errors;
  /// Rebuttals that failed ({"debater", "round", "error"}): the debater
  /// keeps its earlier answer, and the result says so.
  json missed_rebuttals = json::array();
  int32_t round = 0;
  size_t pending = 0;
};

using debate_run_ptr = std::shared_ptr<debate_run>;

void start_round(debate_ptr self, debate_run_ptr d);

std::string others_answers(const debate_state& st, const debate_run& d,
                           size_t except) {
  std::string out;
  for (size_t k = 0; k < st.debaters.size(); ++k)
    if (k != except && !d.answers[k].empty())
      out += "\n[" + st.debaters[k].name + "] " + d.answers[k].back();
  return out;
}

void judge(debate_ptr self, debate_run_ptr d) {
  auto& st = self->state;
  auto& run = *d->run;
  auto answers = json::array();
  auto failed = json::array();
  std::string listing;
  for (size_t k = 0; k < st.debaters.size(); ++k) {
    const auto& name = st.debaters[k].name;
    if (d->answers[k].empty()) {
      failed.push_back(json{{"debater", name}, {"error", d->errors[k]}});
      continue;
    }
    answers.push_back(json{{"debater", name}, {"answer", d->answers[k].back()}});
    listing += "\n[" + name + "] " + d->answers[k].back();
  }
  auto history = json::object();
  for (size_t k = 0; k < st.debaters.size(); ++k)
    history[st.debaters[k].name] = d->answers[k];
  run.result.detail = json{{"pattern", "debate"},
                           {"rounds", d->round},
                           {"answers", history},
                           {"failed", failed},
                           {"missed_rebuttals", d->missed_rebuttals}};
  if (answers.empty()) {
    std::string why = "every debater failed:";
    for (const auto& f : failed)
      why += " " + f["debater"].get<std::string>() + ": "
             + f["error"].get<std::string>() + ";";
    close_team_run(st, run, run_status::failed, why);
    return;
  }
  std::string partial;
  if (!failed.empty()) {
    partial = "partial failure: " + std::to_string(failed.size()) + " of "
              + std::to_string(st.debaters.size()) + " debater(s) dropped out:";
    for (const auto& f : failed)
      partial += " " + f["debater"].get<std::string>() + " ("
                 + f["error"].get<std::string>() + ")";
  }
  if (!d->missed_rebuttals.empty()) {
    partial += std::string{partial.empty() ? "partial failure:" : ";"} + " "
               + std::to_string(d->missed_rebuttals.size())
               + " rebuttal(s) failed, the earlier answer kept:";
    for (const auto& m : d->missed_rebuttals)
      partial += " " + m["debater"].get<std::string>() + " in round "
                 + std::to_string(m["round"].get<int32_t>()) + " ("
                 + m["error"].get<std::string>() + ")";
  }
  auto goal = run.task.goal + "\n\nThe debaters answered:" + listing
              + "\n\nDecide which answer is best, and explain why.";
  auto task = member_task(run, std::move(goal),
                          json{{"team", st.team},
                               {"judge", true},
                               {"answers", std::move(answers)}});
  self->request(st.judge, member_timeout(run.task), std::move(task))
    .then(
      [self, d, partial](run_result& r) {
        auto& run = *d->run;
        absorb(run.result, r);
        run.result.answer = r.answer;
        if (r.status != run_status::complete) {
          close_team_run(self->state, run, r.status,
                         std::string{"judge ended "} + to_string(r.status)
                           + ": " + r.error);
          return;
        }
        close_team_run(self->state, run, run_status::complete, partial);
      },
      [self, d](caf::error& err) {
        close_team_run(self->state, *d->run, run_status::failed,
                       "judge gave no result: " + error_text(err));
      });
}

void round_ended(debate_ptr self, debate_run_ptr d) {
  auto& st = self->state;
  if (d->run->closed)
    return;
  size_t alive = 0;
  for (const auto& a : d->answers)
    alive += a.empty() ? 0 : 1;
  st.trace.event(d->run->task.ref.trace_id, d->run->span, "team.debate.round",
                 [&] { return json{{"troupe.debate.round", d->round},
                                   {"troupe.debate.answers", alive}}; });
  if (d->round < st.rounds && alive >= 2) {
    ++d->round;
    start_round(self, d);
    return;
  }
  judge(self, d);
}

void start_round(debate_ptr self, debate_run_ptr d) {
  auto& st = self->state;
  auto& run = *d->run;
  // Rebuttals see the answers of the round before, not each other's new ones.
  // Who takes part: everyone in the opening round, afterwards those with an
  // answer (a debater whose opening failed has dropped out).
  std::vector<bool> asked(st.debaters.size(), false);
  std::vector<std::string> goals(st.debaters.size());
  for (size_t k = 0; k < st.debaters.size(); ++k) {
    asked[k] = d->round == 0 || !d->answers[k].empty();
    if (d->round == 0) {
      goals[k] = run.task.goal;
    } else if (!d->answers[k].empty()) {
      goals[k] = run.task.goal + "\n\nYour answer so far:\n" + d->answers[k].back()
                 + "\n\nThe other debaters answered:" + others_answers(st, *d, k)
                 + "\n\nRebut them or revise your answer (rebuttal round "
                 + std::to_string(d->round) + ").";
    }
  }
  for (size_t k = 0; k < st.debaters.size(); ++k) {
    if (!asked[k])
      continue; // dropped out earlier
    ++d->pending;
    auto task = member_task(run, std::move(goals[k]),
                            json{{"team", st.team},
                                 {"debater", st.debaters[k].name},
                                 {"debate_round", d->round}});
    auto on_error = [self, d, k](std::string why) {
      auto& st = self->state;
      // A debater that fails a rebuttal keeps its earlier answer.
      if (d->answers[k].empty()) {
        d->errors[k] = std::move(why);
        return;
      }
      spdlog::warn("team {}: debater {} failed rebuttal round {}: {}",
                   st.team, st.debaters[k].name, d->round, why);
      d->missed_rebuttals.push_back(json{{"debater", st.debaters[k].name},
                                         {"round", d->round},
                                         {"error", std::move(why)}});
    };
    self->request(st.debaters[k].runner, member_timeout(run.task), std::move(task))
      .then(
        [self, d, k, on_error](run_result& r) {
          absorb(d->run->result, r);
          if (r.status == run_status::complete)
            d->answers[k].push_back(std::move(r.answer));
          else
            on_error(std::string{"ended "} + to_string(r.status) + ": " + r.error);
          if (--d->pending == 0)
            round_ended(self, d);
        },
        [self, d, on_error](caf::error& err) {
          on_error("no result: " + error_text(err));
          if (--d->pending == 0)
            round_ended(self, d);
        });
  }
  if (d->pending == 0)
    round_ended(self, d);
}

runnable_actor::behavior_type debate(debate_ptr self,
                                     std::shared_ptr<debate_state> init) {
  self->state = std::move(*init);
  close_runs_on_exit(self, self->state);
  return {
    [self](run_task& task) -> caf::result<run_result> {
      auto& st = self->state;
      auto rp = self->make_response_promise<run_result>();
      auto d = std::make_shared<debate_run>();
      d->run = open_team_run(st, std::move(task), rp,
                             json{{"troupe.debate.debaters", st.debaters.size()},
                                  {"troupe.debate.rounds", st.rounds}});
      d->answers.resize(st.debaters.size());
      d->errors.resize(st.debaters.size());
      start_round(self, d);
      return rp;
    },
    subscribe_handler(self),
    unsubscribe_handler(self),
  };
}

} // namespace

runnable_actor spawn_debate(caf::actor_system& sys, debate_config cfg) {
  auto bad = [&](const std::string& what) {
    throw std::invalid_argument("team '" + cfg.name + "': " + what);
  };
  if (cfg.name.empty())
    throw std::invalid_argument("a debate team needs a name");
  if (cfg.debaters.size() < 2)
    bad("a debate needs at least two debaters, got "
        + std::to_string(cfg.debaters.size()));
  if (!cfg.judge)
    bad("a debate needs a judge");
  if (cfg.rounds < 0)
    bad("rounds must not be negative");
  std::set<std::string> names;
  for (const auto& m : cfg.debaters) {
    if (m.name.empty())
      bad("a debater has no name");
    if (!m.runner)
      bad("debater '" + m.name + "' has no runner");
    if (!names.insert(m.name).second)
      bad("debater name '" + m.name + "' is used twice");
  }
  auto st = std::make_shared<debate_state>();
  st->team = cfg.name;
  st->pattern = "debate";
  st->trace = span_recorder{std::move(cfg.tracer)};
  st->debaters = std::move(cfg.debaters);
  st->rounds = cfg.rounds;
  st->judge = std::move(cfg.judge);
  return sys.spawn(debate, std::move(st));
}

} // namespace troupe
