// The research swarm in C++: the same team as research.swarm.json, built with
// the troupe API. A planner splits the question into subtasks; three
// researchers and an analyst run them as a DAG (the analyst waits for the cost
// and savings findings); a synthesizer writes the brief.
//
//   ./research_example ["question"]

#include <string>

#include "../common/report.hpp"
#include "runtime/builtin_tools.hpp"
#include "runtime/runtime.hpp"
#include "supervisors/teams.hpp"

int main(int argc, char** argv) {
  troupe::log_to_stderr(); // stdout is the example's own output
  std::string dir = TROUPE_EXAMPLE_DIR;
  std::string goal = argc > 1 ? argv[1]
                              : "Should we replace the office gas boiler with "
                                "a heat pump?";
  troupe::timeline chart;
  troupe::runtime_config cfg;
  // TROUPE_MODEL=openai:gpt-4o-mini (or anthropic:...) runs it on a real model.
  cfg.model_override = troupe::model_override_from_env();
  cfg.trace_path = "research-trace.jsonl";
  cfg.trace_listeners.push_back(chart.listener());
  cfg.default_model = "scripted:" + dir + "/research.script.json";
  troupe::runtime rt{cfg};
  rt.tools().add(troupe::calculator_tool());
  rt.tools().add(troupe::kv_lookup_tool(dir + "/knowledge.json"));

  auto agent = [&](std::string name, std::string prompt,
                   std::vector<std::string> tools = {}) {
    troupe::agent_spec spec;
    spec.name = name;
    spec.system_prompt = std::move(prompt);
    spec.tools = std::move(tools);
    spec.max_steps = 4;
    return troupe::team_member{name, rt.spawn_agent(std::move(spec))};
  };

  troupe::orchestrator_config team;
  team.name = "research";
  team.planner = agent("planner",
                       "You plan research. Reply with a JSON plan: "
                       "{\"subtasks\": [{\"id\", \"role\", \"goal\", "
                       "\"depends_on\"}]}, using only the roles you are given.")
                   .runner;
  for (auto name : {"researcher_1", "researcher_2", "researcher_3"})
    team.workers["researcher"].push_back(
      agent(name,
            "You research one topic. Look facts up in the knowledge base "
            "(kv_lookup) and report them plainly.",
            {"kv_lookup"}));
  team.workers["analyst"] = {agent(
    "analyst", "You turn findings into numbers. Use the calculator for every figure.",
    {"calculator"})};
  team.synthesizer = agent("synthesizer",
                           "You merge the team's results into a short brief "
                           "with a recommendation.")
                       .runner;
  team.tracer = rt.tracer();
  auto research = rt.adopt(troupe::spawn_orchestrator(rt.system(), std::move(team)));

  auto result = rt.run(research, goal);
  rt.flush_trace();
  return troupe_examples::report(result, chart);
}
