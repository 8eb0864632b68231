// The evaluator-optimizer team: generate, evaluate, and generate again with
// the evaluator's feedback until it passes or the round bound is reached.

#include <algorithm>
#include <cctype>
#include <optional>
#include <stdexcept>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "messages/errors.hpp"
#include "supervisors/team_run.hpp"
#include "supervisors/teams.hpp"

namespace troupe {

namespace {

struct evo_state : team_base {
  static inline const char* name = "troupe.evaluator_optimizer";
  runnable_actor generator;
  runnable_actor evaluator;
  int32_t max_rounds = 3;
};

using evo_ptr = runnable_actor::stateful_pointer<evo_state>;

struct evo_run {
  std::shared_ptr<team_run> run;
  int32_t round = 0;
  std::string candidate;
  std::string feedback;
  json history = json::array();
};

using evo_run_ptr = std::shared_ptr<evo_run>;

struct verdict {
  bool pass = false;
  std::string feedback;
};

std::string trim(const std::string& s) {
  auto first = s.find_first_not_of(" \t\r\n:-.");
  if (first == std::string::npos)
    return {};
  auto last = s.find_last_not_of(" \t\r\n");
  return s.substr(first, last - first + 1);
}

bool starts_with_word(const std::string& text, const char* word) {
  size_t n = std::char_traits<char>::length(word);
  if (text.size() < n)
    return false;
  for (size_t i = 0; i < n; ++i)
    if (std::toupper(static_cast<unsigned char>(text[i])) != word[i])
      return false;
  return text.size() == n || !std::isalnum(static_cast<unsigned char>(text[n]));
}

/// The text after a leading verdict word (PASS, PASSED, FAIL, FAILED), with
/// markdown emphasis and a "Verdict:" label allowed before it.
std::optional<verdict> leading_word(std::string text) {
  while (!text.empty() && (text[0] == '*' || text[0] == '_' || text[0] == '#'))
    text = trim(text.substr(1));
  if (starts_with_word(text, "VERDICT"))
    text = trim(text.substr(7));
  while (!text.empty() && (text[0] == '*' || text[0] == '_'))
    text = trim(text.substr(1));
  for (auto [word, pass] : {std::pair{"PASSED", true}, std::pair{"PASS", true},
                            std::pair{"FAILED", false}, std::pair{"FAIL", false}}) {
    if (!starts_with_word(text, word))
      continue;
    auto rest = text.substr(std::char_traits<char>::length(word));
    while (!rest.empty() && (rest[0] == '*' || rest[0] == '_'))
      rest = rest.substr(1);
    return verdict{pass, trim(rest)};
  }
  return std::nullopt;
}

verdict read_verdict(const std::string& answer) {
  // A leading verdict word wins over JSON quoted later in the text.
  if (auto v = leading_word(trim(answer)))
    return *v;
  auto doc = extract_json(answer);
  if (doc.is_object() && doc.contains("pass") && doc["pass"].is_boolean()) {
    verdict v;
    v.pass = doc["pass"].get<bool>();
    if (doc.contains("feedback") && doc["feedback"].is_string())
      v.feedback = doc["feedback"].get<std::string>();
    return v;
  }
  return {false, "the evaluator's verdict was unreadable (expected {\"pass\": "
                 "true|false, \"feedback\": \"...\"} or text beginning with "
                 "PASS or FAIL): "
                   + answer.substr(0, 200)};
}

void generate(evo_ptr self, evo_run_ptr e);

void finish(evo_ptr self, evo_run_ptr e, run_status status, std::string error) {
  auto& run = *e->run;
  run.result.answer = e->candidate;
  run.result.detail = json{{"pattern", "evaluator_optimizer"},
                           {"rounds", e->round},
                           {"history", e->history}};
  close_team_run(self->state, run, status, std::move(error));
}

void evaluate(evo_ptr self, evo_run_ptr e) {
  auto& st = self->state;
  auto& run = *e->run;
  auto goal = "Task:\n" + run.task.goal + "\n\nCandidate answer:\n" + e->candidate
              + "\n\nDoes the candidate accomplish the task? Reply with a verdict.";
  auto task = member_task(run, std::move(goal),
                          json{{"team", st.team}, {"evaluate", true},
                               {"round", e->round}});
  self->request(st.evaluator, member_timeout(run.task), std::move(task))
    .then(
      [self, e](run_result& r) {
        auto& st = self->state;
        absorb(e->run->result, r);
        if (r.status != run_status::complete) {
          finish(self, e, r.status,
                 std::string{"evaluator ended "} + to_string(r.status) + ": "
                   + r.error);
          return;
        }
        auto v = read_verdict(r.answer);
        e->feedback = v.feedback;
        e->history.push_back(json{{"round", e->round},
                                  {"candidate", e->candidate},
                                  {"pass", v.pass},
                                  {"feedback", v.feedback}});
        st.trace.event(e->run->task.ref.trace_id, e->run->span,
                       "team.evaluation", [&] {
                         return json{{"troupe.eval.round", e->round},
                                     {"troupe.eval.pass", v.pass},
                                     {"troupe.eval.feedback", v.feedback}};
                       });
        if (v.pass) {
          finish(self, e, run_status::complete, "");
        } else if (e->round >= st.max_rounds) {
          finish(self, e, run_status::max_steps,
                 "the evaluator did not pass the answer in "
                   + std::to_string(e->round) + " round(s); last feedback: "
                   + v.feedback);
        } else {
          generate(self, e);
        }
      },
      [self, e](caf::error& err) {
        finish(self, e, run_status::failed,
               "evaluator gave no result: " + error_text(err));
      });
}

void generate(evo_ptr self, evo_run_ptr e) {
  auto& st = self->state;
  auto& run = *e->run;
  ++e->round;
  auto goal = run.task.goal;
  if (e->round > 1)
    goal += "\n\nYour previous answer:\n" + e->candidate
            + "\n\nThe evaluator's feedback:\n" + e->feedback
            + "\n\nImprove the answer (round " + std::to_string(e->round) + ").";
  auto task = member_task(run, std::move(goal),
                          json{{"team", st.team}, {"round", e->round}});
  self->request(st.generator, member_timeout(run.task), std::move(task))
    .then(
      [self, e](run_result& r) {
        absorb(e->run->result, r);
        if (r.status != run_status::complete) {
          finish(self, e, r.status,
                 std::string{"generator ended "} + to_string(r.status) + ": "
                   + r.error);
          return;
        }
        e->candidate = std::move(r.answer);
        evaluate(self, e);
      },
      [self, e](caf::error& err) {
        finish(self, e, run_status::failed,
               "generator gave no result: " + error_text(err));
      });
}

runnable_actor::behavior_type evaluator_optimizer(evo_ptr self,
                                                  std::shared_ptr<evo_state> init) {
  self->state = std::move(*init);
  close_runs_on_exit(self, self->state);
  return {
    [self](run_task& task) -> caf::result<run_result> {
      auto rp = self->make_response_promise<run_result>();
      auto e = std::make_shared<evo_run>();
      e->run = open_team_run(self->state, std::move(task), rp,
                             json{{"troupe.eval.max_rounds",
                                   self->state.max_rounds}});
      generate(self, e);
      return rp;
    },
    subscribe_handler(self),
    unsubscribe_handler(self),
  };
}

} // namespace

runnable_actor spawn_evaluator_optimizer(caf::actor_system& sys,
                                         evaluator_optimizer_config cfg) {
  auto bad = [&](const std::string& what) {
    throw std::invalid_argument("team '" + cfg.name + "': " + what);
  };
  if (cfg.name.empty())
    throw std::invalid_argument("an evaluator_optimizer team needs a name");
  if (!cfg.generator)
    bad("needs a generator");
  if (!cfg.evaluator)
    bad("needs an evaluator");
  if (cfg.max_rounds < 1)
    bad("max_rounds must be at least 1");
  auto st = std::make_shared<evo_state>();
  st->team = cfg.name;
  st->pattern = "evaluator_optimizer";
  st->trace = span_recorder{std::move(cfg.tracer)};
  st->generator = std::move(cfg.generator);
  st->evaluator = std::move(cfg.evaluator);
  st->max_rounds = cfg.max_rounds;
  return sys.spawn(evaluator_optimizer, std::move(st));
}

} // namespace troupe
