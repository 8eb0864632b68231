// The debate panel in C++: the same team as debate.swarm.json, built with the
// troupe API. Three debaters answer in parallel, rebut each other once, and a
// judge decides and explains.
//
//   ./debate_example ["question"]

#include <string>

#include "../common/report.hpp"
#include "runtime/runtime.hpp"
#include "supervisors/teams.hpp"

int main(int argc, char** argv) {
  troupe::log_to_stderr(); // stdout is the example's own output
  std::string dir = TROUPE_EXAMPLE_DIR;
  std::string goal = argc > 1 ? argv[1]
                              : "Should our company move to a four-day work week?";
  troupe::timeline chart;
  troupe::runtime_config cfg;
  // TROUPE_MODEL=openai:gpt-4o-mini (or anthropic:...) runs it on a real model.
  cfg.model_override = troupe::model_override_from_env();
  cfg.trace_path = "debate-trace.jsonl";
  cfg.trace_listeners.push_back(chart.listener());
  cfg.default_model = "scripted:" + dir + "/debate.script.json";
  troupe::runtime rt{cfg};

  auto agent = [&](std::string name, std::string prompt) {
    troupe::agent_spec spec;
    spec.name = name;
    spec.system_prompt = std::move(prompt);
    spec.max_steps = 2;
    return troupe::team_member{name, rt.spawn_agent(std::move(spec))};
  };

  troupe::debate_config panel;
  panel.name = "panel";
  panel.debaters = {
    agent("optimist", "You argue for the proposal with evidence. Keep it to two sentences."),
    agent("skeptic", "You argue against the proposal with evidence. Keep it to two sentences."),
    agent("economist", "You weigh the proposal by its costs and benefits. Keep it to two sentences."),
  };
  panel.rounds = 1;
  panel.judge = agent("judge", "You read the debaters' final answers, decide, "
                               "and explain your decision.")
                  .runner;
  panel.tracer = rt.tracer();
  auto team = rt.adopt(troupe::spawn_debate(rt.system(), std::move(panel)));

  auto result = rt.run(team, goal);
  rt.flush_trace();
  return troupe_examples::report(result, chart);
}
