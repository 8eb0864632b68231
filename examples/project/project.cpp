// The hierarchical project in C++: the same teams as project.swarm.json, built
// with the troupe API. Three levels of teams:
//
//   project (hierarchical: the lead plans over engineering and marketing)
//   +- engineering (hierarchical, a fixed plan: api, then ui)
//   |  +- backend (evaluator_optimizer: coder and reviewer)
//   |  +- frontend_dev
//   +- marketing (pipeline: copywriter, editor)
//
//   ./project_example ["goal"]

#include <string>

#include "../common/report.hpp"
#include "runtime/runtime.hpp"
#include "supervisors/pipeline.hpp"
#include "supervisors/teams.hpp"

int main(int argc, char** argv) {
  troupe::log_to_stderr(); // stdout is the example's own output
  std::string dir = TROUPE_EXAMPLE_DIR;
  std::string goal = argc > 1 ? argv[1]
                              : "Ship online table booking for the restaurant app";
  troupe::timeline chart;
  troupe::runtime_config cfg;
  // TROUPE_MODEL=openai:gpt-4o-mini (or anthropic:...) runs it on a real model.
  cfg.model_override = troupe::model_override_from_env();
  cfg.trace_path = "project-trace.jsonl";
  cfg.trace_listeners.push_back(chart.listener());
  cfg.default_model = "scripted:" + dir + "/project.script.json";
  troupe::runtime rt{cfg};

  auto agent = [&](std::string name, std::string prompt) {
    troupe::agent_spec spec;
    spec.name = name;
    spec.system_prompt = std::move(prompt);
    spec.max_steps = 3;
    return rt.spawn_agent(std::move(spec));
  };

  // Level 3: the backend team loops until the reviewer passes the code.
  troupe::evaluator_optimizer_config backend;
  backend.name = "backend";
  backend.generator = agent("coder", "You write the backend code. Address "
                                     "every piece of review feedback.");
  backend.evaluator = agent("reviewer", "You review code. Reply {\"pass\": "
                                        "true|false, \"feedback\": \"...\"}.");
  backend.max_rounds = 3;
  backend.tracer = rt.tracer();
  auto backend_team =
    rt.adopt(troupe::spawn_evaluator_optimizer(rt.system(), std::move(backend)));

  // Level 2: engineering runs the backend team, then the frontend developer.
  troupe::orchestrator_config engineering;
  engineering.name = "engineering";
  engineering.plan = troupe::team_plan{{
    {"api", "backend", "Build the API for: {{goal}}", {}},
    {"ui", "frontend", "Build the web page for: {{goal}}", {"api"}},
  }};
  engineering.workers["backend"] = {{"backend", backend_team}};
  engineering.workers["frontend"] = {
    {"frontend_dev",
     agent("frontend_dev", "You build the web page on top of the API you are given.")}};
  engineering.tracer = rt.tracer();
  auto engineering_team =
    rt.adopt(troupe::spawn_orchestrator(rt.system(), std::move(engineering)));

  // Level 2: marketing drafts, then edits.
  auto marketing_team = rt.adopt(troupe::spawn_pipeline(
    rt.system(), "marketing",
    {{"copywriter", agent("copywriter", "You draft announcements.")},
     {"editor", agent("editor", "You edit a draft into its final form.")}},
    rt.tracer()));

  // Level 1: the lead plans over the two teams; the pm writes the report.
  troupe::orchestrator_config project;
  project.name = "project";
  project.planner = agent("lead", "You lead the project. Reply with a JSON "
                                  "plan over the roles you are given.");
  project.workers["engineering"] = {{"engineering", engineering_team}};
  project.workers["marketing"] = {{"marketing", marketing_team}};
  project.synthesizer = agent("pm", "You write the project report from the "
                                    "teams' results.");
  project.tracer = rt.tracer();
  auto team = rt.adopt(troupe::spawn_orchestrator(rt.system(), std::move(project)));

  auto result = rt.run(team, goal);
  rt.flush_trace();
  return troupe_examples::report(result, chart);
}
